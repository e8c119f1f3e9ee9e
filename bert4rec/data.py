"""BERT4Rec data: `user item` interaction files, dataset preparation, the item vocabulary and user histories.

File formats written here (all atomically):
  <name>.txt          one `user item` pair a line, each user's lines in time order (the BERT4Rec/SASRec format).
  <name>.titles.json  {item id in <name>.txt: title}, when the source has titles.
  <...>.vocab         JSON: items in model-id order with their counts, `mask_id`, `vocab_size` (see `Vocab`).
  <...>.his           JSON: {user index: [model item ids of the whole history, test item last]}.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from common.io_utils import atomic_output

RECBOLE_VERSION = "1.2.1"  # its wheel embeds GroupLens MovieLens-100k as `ml-100k.inter`
_RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k"
MOVIELENS_URLS = {
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "ml-20m": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
}
# The original repository publishes its preprocessed `user item` files (ml-1m.txt too, beside GroupLens's zip).
ORIGINAL_DATA_URL = "https://raw.githubusercontent.com/FeiSun/BERT4Rec/master/data/{name}.txt"
ORIGINAL_RELEASE_DATASETS = ("beauty", "steam", "ml-1m")
MIN_ITEM_INTERACTIONS = 5  # SASRec/BERT4Rec drop items (and users) with fewer interactions than this
MIN_USER_INTERACTIONS = 5
DOWNLOAD_TIMEOUT_SECONDS = 30

# Model id layout, as in the original FreqVocab: 0 pads, items are 1..N by descending frequency, then three
# special tokens ([MASK] and two unused ones), and vocab_size counts one more: N + 4 (ml-1m: 3,416 -> 3,420).
PAD_ID = 0
SPECIAL_TOKENS = ("[MASK]", "[pad]", "[NO_USE]")


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


# ----------------------------------------------------------------------------------------------------------
# `user item` files.


class UserSequences:
    """Every user's items in file order: user k is `users[k]` with items `items[offsets[k]:offsets[k + 1]]`."""

    __slots__ = ("users", "offsets", "items")  # a plain class: dataclasses cost import time in the CLI

    def __init__(self, users: np.ndarray, offsets: np.ndarray, items: np.ndarray):
        self.users = users  # int64 [num_users], in order of first appearance
        self.offsets = offsets  # int64 [num_users + 1]
        self.items = items  # int64 [num_interactions]

    def __len__(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, index: int) -> np.ndarray:
        return self.items[self.offsets[index]:self.offsets[index + 1]]


_MAX_FAST_DIGITS = 18  # 10**18 < 2**63: longer tokens go the slow (exact) way
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _parse_user_item_bytes_fast(raw: bytes):
    """Vectorised parse of well-formed files (unsigned decimal pairs); None when anything is unusual.

    The slow parser below defines the semantics (and the error messages); this only makes the common case fast.
    """
    buffer = np.frombuffer(raw, dtype=np.uint8)
    digits = buffer - np.uint8(ord("0"))
    is_digit = digits < 10
    is_newline = buffer == ord("\n")
    if not np.all(is_digit | is_newline | (buffer == ord(" ")) | (buffer == ord("\t")) | (buffer == ord("\r"))):
        return None
    edges = np.diff(np.concatenate([[0], is_digit.view(np.int8), [0]]))
    token_starts, token_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    token_lengths = token_ends - token_starts
    if len(token_starts) == 0 or len(token_starts) % 2 or token_lengths.max() > _MAX_FAST_DIGITS:
        return None
    line_index = np.searchsorted(np.flatnonzero(is_newline), token_starts)  # newlines before a token: its line
    first_line, second_line = line_index[0::2], line_index[1::2]
    if np.any(first_line != second_line) or np.any(np.diff(first_line) <= 0):
        return None  # some line has one token or more than two
    values = np.zeros(len(token_starts), dtype=np.int64)
    for offset in range(int(token_lengths.max())):  # one decimal digit of every token at a time
        has_digit = token_lengths > offset
        next_digit = digits[np.minimum(token_starts + offset, len(digits) - 1)].astype(np.int64)
        values = np.where(has_digit, values * 10 + next_digit, values)
    return values[0::2], values[1::2], first_line + 1


def _parse_user_item_lines(path: str):
    with open(path, "rb") as handle:
        raw = handle.read()
    fast = _parse_user_item_bytes_fast(raw)
    if fast is not None:
        return fast
    users, items, line_numbers = [], [], []
    for line_number, raw_line in enumerate(raw.split(b"\n"), start=1):
        fields = raw_line.split()
        if not fields:
            continue  # blank lines (e.g. a trailing one) carry nothing
        shown = raw_line.decode("utf-8", "replace").strip()
        if len(fields) != 2:
            raise DataError(f"{path}:{line_number}: expected 2 columns `user item`, got {len(fields)}: {shown!r}")
        try:
            user, item = int(fields[0]), int(fields[1])
        except ValueError:
            raise DataError(f"{path}:{line_number}: expected two integers `user item`, got {shown!r}") from None
        if not (_INT64_MIN <= user <= _INT64_MAX and _INT64_MIN <= item <= _INT64_MAX):
            raise DataError(f"{path}:{line_number}: ids must fit in 64 bits, got {shown!r}")
        users.append(user)
        items.append(item)
        line_numbers.append(line_number)
    return users, items, line_numbers


def read_user_item_file(path: str | os.PathLike, min_items_per_user: int = 2) -> UserSequences:
    """Reads `user item` lines (each user's lines in time order) into per-user sequences.

    Raises DataError naming `path:line` for a non-integer token, a wrong column count, an empty file, or a
    user with fewer than `min_items_per_user` items (leave-one-out needs a training item and a test item).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    users, items, line_numbers = _parse_user_item_lines(path)
    if len(users) == 0:
        raise DataError(f"{path}:1: empty file, expected `user item` lines")
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    line_numbers = np.asarray(line_numbers, dtype=np.int64)

    unique_users, first_index, user_codes, counts = np.unique(
        users, return_index=True, return_inverse=True, return_counts=True)
    appearance_rank = np.empty(len(unique_users), dtype=np.int64)
    appearance_rank[np.argsort(first_index, kind="stable")] = np.arange(len(unique_users))
    too_short = np.flatnonzero(counts < min_items_per_user)
    if too_short.size:
        first_bad = too_short[np.argmin(first_index[too_short])]
        count = int(counts[first_bad])
        raise DataError(f"{path}:{int(line_numbers[first_index[first_bad]])}: user {int(unique_users[first_bad])} has "
                        f"{count} item{'s' if count != 1 else ''}; each user needs at least {min_items_per_user}")
    # Group lines by user (users in order of first appearance), keeping each user's file order.
    order = np.argsort(appearance_rank[user_codes], kind="stable")
    ordered_counts = counts[np.argsort(first_index, kind="stable")]
    offsets = np.concatenate([[0], np.cumsum(ordered_counts)]).astype(np.int64)
    return UserSequences(users=users[order][offsets[:-1]], offsets=offsets, items=items[order])


def write_user_item_file(path: str | os.PathLike, user_item_pairs: Iterable[tuple[int, int]]) -> None:
    with atomic_output(path) as handle:
        handle.writelines(f"{user} {item}\n" for user, item in user_item_pairs)


# ----------------------------------------------------------------------------------------------------------
# Converting raw MovieLens ratings.


class Interaction(NamedTuple):
    user: int
    item: int
    timestamp: float


def sequences_from_interactions(interactions: Iterable[Interaction],
                                min_item_interactions: int = MIN_ITEM_INTERACTIONS,
                                min_user_interactions: int = MIN_USER_INTERACTIONS):
    """SASRec's preprocessing (the source of BERT4Rec's data files), every rating as implicit feedback.

    Drops, in one pass over the raw counts, interactions of items and users with too few interactions; renumbers
    users and items 1..N in order of first appearance in the input; sorts each user's items by time, ties broken
    by the raw item id. Returns ([(user, item) pairs, users in order], {raw item id: new item id}).
    """
    interactions = list(interactions)
    item_counts = collections.Counter(interaction.item for interaction in interactions)
    user_counts = collections.Counter(interaction.user for interaction in interactions)
    user_ids: dict[int, int] = {}
    item_ids: dict[int, int] = {}
    per_user: dict[int, list[tuple[float, int]]] = {}
    for interaction in interactions:
        if item_counts[interaction.item] < min_item_interactions or user_counts[interaction.user] < min_user_interactions:
            continue
        user = user_ids.setdefault(interaction.user, len(user_ids) + 1)
        item_ids.setdefault(interaction.item, len(item_ids) + 1)
        per_user.setdefault(user, []).append((interaction.timestamp, interaction.item))
    pairs = [(user, item_ids[raw_item]) for user in sorted(per_user) for _, raw_item in sorted(per_user[user])]
    return pairs, item_ids


def _write_titles(path: str, raw_titles: dict[int, str], item_ids: dict[int, int]) -> None:
    titles = {str(new_id): raw_titles[raw_id] for raw_id, new_id in sorted(item_ids.items(), key=lambda pair: pair[1])
              if raw_id in raw_titles}
    with atomic_output(path) as handle:
        json.dump(titles, handle, indent=0, ensure_ascii=False)
        handle.write("\n")


def _iter_lines(text: str, source: str, skip_header: bool) -> Iterator[tuple[str, int]]:
    for line_number, line in enumerate(text.splitlines(), start=1):
        if (skip_header and line_number == 1) or not line.strip():
            continue
        yield line, line_number


def _parse_interaction(fields: list[str], source: str, line_number: int, expected: str) -> Interaction:
    if len(fields) != 4:
        raise DataError(f"{source}:{line_number}: expected {expected}, got {len(fields)} fields")
    try:
        return Interaction(int(fields[0]), int(fields[1]), float(fields[3]))
    except ValueError:
        raise DataError(f"{source}:{line_number}: expected {expected}, got {fields!r}") from None


def _recbole_interactions(text: str, source: str) -> Iterator[Interaction]:
    for line, line_number in _iter_lines(text, source, skip_header=True):
        yield _parse_interaction(line.split("\t"), source, line_number, "`user_id item_id rating timestamp` (tabs)")


def _recbole_titles(text: str) -> dict[int, str]:
    titles = {}
    for line, _ in _iter_lines(text, "", skip_header=True):
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0].strip().isdigit():
            title, year = fields[1].strip(), fields[2].strip()
            titles[int(fields[0])] = f"{title} ({year})" if year else title
    return titles


def convert_recbole_ml100k(wheel_path: str | os.PathLike, data_dir: str | os.PathLike) -> str:
    """Writes ml-100k.txt (and ml-100k.titles.json) from the `ml-100k.inter`/`.item` files inside a recbole wheel."""
    import zipfile

    wheel_path, data_dir = os.fspath(wheel_path), os.fspath(data_dir)
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            inter_text = wheel.read(_RECBOLE_MEMBER + ".inter").decode("utf-8")
            names = set(wheel.namelist())
            item_text = wheel.read(_RECBOLE_MEMBER + ".item").decode("utf-8") if _RECBOLE_MEMBER + ".item" in names else None
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{wheel_path}: not a recbole wheel with {_RECBOLE_MEMBER}.inter ({error})") from None
    pairs, item_ids = sequences_from_interactions(
        _recbole_interactions(inter_text, f"{wheel_path}!{_RECBOLE_MEMBER}.inter"))
    output_path = os.path.join(data_dir, "ml-100k.txt")
    if item_text is not None:
        _write_titles(os.path.join(data_dir, "ml-100k.titles.json"), _recbole_titles(item_text), item_ids)
    write_user_item_file(output_path, pairs)
    return output_path


def _find_member(archive, basename: str) -> str | None:
    for name in archive.namelist():
        if name.rsplit("/", 1)[-1] == basename:
            return name
    return None


def convert_movielens_zip(zip_path: str | os.PathLike, data_dir: str | os.PathLike, dataset_name: str) -> str:
    """Writes <dataset_name>.txt (+ titles) from a GroupLens ml-1m.zip (`ratings.dat`) or ml-20m.zip (`ratings.csv`)."""
    import zipfile  # imported on demand, like the other converters' modules: keeps the CLI start-up short

    zip_path, data_dir = os.fspath(zip_path), os.fspath(data_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DataError(f"{zip_path}: not a zip file") from None
    with archive:
        dat_member, csv_member = _find_member(archive, "ratings.dat"), _find_member(archive, "ratings.csv")
        if dat_member is not None:  # ml-1m: `UserID::MovieID::Rating::Timestamp`, Latin-1 titles
            source = f"{zip_path}!{dat_member}"
            text = archive.read(dat_member).decode("latin-1")
            interactions = (_parse_interaction(line.split("::"), source, number, "`UserID::MovieID::Rating::Timestamp`")
                            for line, number in _iter_lines(text, source, skip_header=False))
            movies_member = _find_member(archive, "movies.dat")
            raw_titles = {}
            if movies_member is not None:
                for line, _ in _iter_lines(archive.read(movies_member).decode("latin-1"), "", skip_header=False):
                    fields = line.split("::")
                    if len(fields) >= 2 and fields[0].strip().isdigit():
                        raw_titles[int(fields[0])] = fields[1]
        elif csv_member is not None:  # ml-20m: `userId,movieId,rating,timestamp` with a header, UTF-8 titles
            source = f"{zip_path}!{csv_member}"
            text = archive.read(csv_member).decode("utf-8")
            interactions = (_parse_interaction(line.split(","), source, number, "`userId,movieId,rating,timestamp`")
                            for line, number in _iter_lines(text, source, skip_header=True))
            movies_member = _find_member(archive, "movies.csv")
            raw_titles = {}
            if movies_member is not None:
                import csv
                import io

                rows = csv.reader(io.StringIO(archive.read(movies_member).decode("utf-8")))
                next(rows, None)
                for row in rows:
                    if len(row) >= 2 and row[0].strip().isdigit():
                        raw_titles[int(row[0])] = row[1]
        else:
            raise DataError(f"{zip_path}: holds neither ratings.dat nor ratings.csv")
        pairs, item_ids = sequences_from_interactions(interactions)
    if not pairs:
        raise DataError(f"{zip_path}: no user keeps any rating after dropping items/users with fewer than "
                        f"{MIN_ITEM_INTERACTIONS} ratings")
    output_path = os.path.join(data_dir, f"{dataset_name}.txt")
    if raw_titles:
        _write_titles(os.path.join(data_dir, f"{dataset_name}.titles.json"), raw_titles, item_ids)
    write_user_item_file(output_path, pairs)
    return output_path


# ----------------------------------------------------------------------------------------------------------
# Obtaining the raw files.


def default_cache_dir() -> str:
    """Where downloaded source archives live: $BERTSUITE_CACHE, else ~/.cache/bertsuite."""
    return os.environ.get("BERTSUITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bertsuite")


def recbole_wheel_path(cache_dir: str | os.PathLike | None = None) -> str:
    return os.path.join(os.fspath(cache_dir or default_cache_dir()), f"recbole-{RECBOLE_VERSION}-py3-none-any.whl")


def fetch_recbole_wheel(cache_dir: str | os.PathLike | None = None) -> str:
    """The recbole wheel from the package registry (`pip download`, never installed), cached in `cache_dir`."""
    wheel_path = recbole_wheel_path(cache_dir)
    if os.path.isfile(wheel_path):
        return wheel_path
    cache_dir = os.path.dirname(wheel_path)
    os.makedirs(cache_dir, exist_ok=True)
    import subprocess

    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
               f"recbole=={RECBOLE_VERSION}", "-d", cache_dir]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(wheel_path):
        last_lines = " ".join(result.stderr.strip().splitlines()[-2:])
        raise DataError(f"could not fetch MovieLens-100k: `{' '.join(command[1:])}` failed ({last_lines}); put "
                        f"recbole-{RECBOLE_VERSION}-py3-none-any.whl into {cache_dir}, or a ready ml-100k.txt into the data dir")
    return wheel_path


def _download(url: str, path: str) -> None:
    import shutil
    import urllib.request  # imported on demand: it is slow to import and rarely needed

    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, atomic_output(path, "wb") as handle:
        shutil.copyfileobj(response, handle)


def prepare_dataset(dataset_name: str, data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """Path of `<data_dir>/<dataset_name>.txt`, converting it from its source first when it is absent.

    Any existing `<dataset_name>.txt` (e.g. the original repository's Beauty or Steam files) is used as is;
    `ml-100k` comes from the recbole wheel, `ml-1m` / `ml-20m` from GroupLens zips (downloaded when missing).
    """
    data_dir = os.fspath(data_dir)
    text_path = os.path.join(data_dir, f"{dataset_name}.txt")
    if os.path.isfile(text_path):
        return text_path
    if dataset_name == "ml-100k":
        return convert_recbole_ml100k(fetch_recbole_wheel(cache_dir), data_dir)
    if dataset_name in MOVIELENS_URLS:
        url = MOVIELENS_URLS[dataset_name]
        zip_path = os.path.join(data_dir, f"{dataset_name}.zip")
        if not os.path.isfile(zip_path):
            try:
                _download(url, zip_path)
            except OSError as error:  # URLError, timeouts and refused connections are all OSErrors
                also = (f" (the original repository's {ORIGINAL_DATA_URL.format(name=dataset_name)} works as it is)"
                        if dataset_name in ORIGINAL_RELEASE_DATASETS else "")
                raise DataError(f"cannot download {url} ({getattr(error, 'reason', error)}); put {dataset_name}.zip "
                                f"from that address, or a ready {dataset_name}.txt (`user item` lines){also}, into "
                                f"{os.path.abspath(data_dir)}") from None
        return convert_movielens_zip(zip_path, data_dir, dataset_name)
    if dataset_name in ORIGINAL_RELEASE_DATASETS:
        raise DataError(f"{text_path}: no such file; put {dataset_name}.txt into {os.path.abspath(data_dir)}: the "
                        f"original BERT4Rec repository publishes it at {ORIGINAL_DATA_URL.format(name=dataset_name)}")
    raise DataError(f"{text_path}: no such file; put the dataset there as `user item` lines (each user's lines in "
                    f"time order), or use ml-100k, ml-1m, ml-20m, beauty or steam")


# ----------------------------------------------------------------------------------------------------------
# Item vocabulary and histories.


class Vocab:
    """Items by descending frequency (ties: first appearance) as model ids 1..N, then [MASK] etc.

    `item_ids[k - 1]` is the original item id of model id k; `counts[k - 1]` its number of interactions.
    """

    __slots__ = ("item_ids", "counts")

    def __init__(self, item_ids: np.ndarray, counts: np.ndarray):
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    @property
    def special_token_ids(self) -> dict[str, int]:
        return {token: self.num_items + 1 + index for index, token in enumerate(SPECIAL_TOKENS)}

    @property
    def vocab_size(self) -> int:
        return self.num_items + len(SPECIAL_TOKENS) + 1

    @property
    def item_counts(self) -> np.ndarray:
        """Interaction counts indexed by model id over the whole vocabulary (padding and special ids count 0)."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        counts[1:self.num_items + 1] = self.counts
        return counts

    @property
    def item_to_model_id(self) -> dict[int, int]:
        return {int(item): model_id for model_id, item in enumerate(self.item_ids.tolist(), start=1)}

    @property
    def model_id_to_item(self) -> dict[int, int]:
        return {model_id: int(item) for model_id, item in enumerate(self.item_ids.tolist(), start=1)}

    def to_model_ids(self, items) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(self.item_ids, kind="stable")
        sorted_items = self.item_ids[order]
        where = np.clip(np.searchsorted(sorted_items, items), 0, max(len(sorted_items) - 1, 0))
        if items.size and (len(sorted_items) == 0 or np.any(sorted_items[where] != items)):
            unknown = items[sorted_items[where] != items] if len(sorted_items) else items
            raise KeyError(f"items not in the vocabulary: {unknown[:5].tolist()}")
        return (order[where] + 1).astype(np.int64)

    def to_original_items(self, model_ids) -> np.ndarray:
        model_ids = np.asarray(model_ids, dtype=np.int64)
        if model_ids.size and (model_ids.min() < 1 or model_ids.max() > self.num_items):
            raise KeyError(f"model ids outside 1..{self.num_items}: {model_ids[(model_ids < 1) | (model_ids > self.num_items)][:5].tolist()}")
        return self.item_ids[model_ids - 1]

    def to_json(self) -> dict:
        return {"format": "bert4rec-vocab-v1", "num_items": self.num_items, "vocab_size": self.vocab_size,
                "pad_id": PAD_ID, "mask_id": self.mask_id, "special_tokens": self.special_token_ids,
                "items": self.item_ids.tolist(), "counts": self.counts.tolist()}


def build_vocab(sequences: UserSequences) -> Vocab:
    """Counts every interaction (training and test items), like the original FreqVocab over the test histories."""
    unique_items, first_index, counts = np.unique(sequences.items, return_index=True, return_counts=True)
    # Descending count; ties in order of first appearance (Counter.most_common on the per-user histories).
    order = np.lexsort((first_index, -counts))
    return Vocab(item_ids=unique_items[order].astype(np.int64), counts=counts[order].astype(np.int64))


def save_vocab(path: str | os.PathLike, vocab: Vocab) -> None:
    with atomic_output(path) as handle:
        json.dump(vocab.to_json(), handle, separators=(",", ":"))
        handle.write("\n")


def _read_json(path: str | os.PathLike):
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def load_vocab(path: str | os.PathLike) -> Vocab:
    """Reads a `.vocab` written by `save_vocab` (gen_data_fin)."""
    value = _read_json(path)
    if not isinstance(value, dict) or value.get("format") != "bert4rec-vocab-v1":
        raise DataError(f"{os.fspath(path)}:1: not a bert4rec vocabulary (missing format 'bert4rec-vocab-v1')")
    vocab = Vocab(item_ids=np.asarray(value["items"], dtype=np.int64), counts=np.asarray(value["counts"], dtype=np.int64))
    if vocab.vocab_size != value["vocab_size"] or vocab.mask_id != value["mask_id"] or len(vocab.counts) != vocab.num_items:
        raise DataError(f"{os.fspath(path)}:1: inconsistent vocabulary (vocab_size/mask_id/counts disagree with items)")
    return vocab


def save_histories(path: str | os.PathLike, users: np.ndarray, offsets: np.ndarray, model_items: np.ndarray) -> None:
    """{user index: [model ids of the whole history, test item last]} as one compact JSON object, users in order."""
    with atomic_output(path) as handle:
        handle.write("{")
        for index, user in enumerate(users.tolist()):
            separator = "," if index else ""
            handle.write(f'{separator}"{user}":{json.dumps(model_items[offsets[index]:offsets[index + 1]].tolist(), separators=(",", ":"))}')
        handle.write("}\n")


def load_histories(path: str | os.PathLike) -> dict[int, list[int]]:
    """Reads a `.his` file: user index -> model item ids of the whole history (the test item is the last one)."""
    value = _read_json(path)
    if not isinstance(value, dict):
        raise DataError(f"{os.fspath(path)}:1: expected a JSON object user -> item ids")
    return {int(user): [int(item) for item in items] for user, items in value.items()}


def bert4rec_feature_spec(max_seq_length: int, max_predictions_per_seq: int) -> dict:
    """tf.io feature spec of the TFRecords gen_data_fin writes (names and shapes as the original)."""
    import tensorflow as tf  # only readers need TensorFlow

    def fixed(length, dtype=tf.int64):
        return tf.io.FixedLenFeature([length], dtype)

    return {
        "info": fixed(1),
        "input_ids": fixed(max_seq_length),
        "input_mask": fixed(max_seq_length),
        "masked_lm_positions": fixed(max_predictions_per_seq),
        "masked_lm_ids": fixed(max_predictions_per_seq),
        "masked_lm_weights": fixed(max_predictions_per_seq, tf.float32),
    }
