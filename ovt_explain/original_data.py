"""The original's data steps, streaming: viewing CSV -> `sentence.txt`, programme metadata -> `vocab.txt`,
`sentence.txt` -> labelled `viewed*` / `not_viewed*` files (the scripts `convert_to_sentence`,
`generate_vocab` and `classify_training_data` are thin wrappers).

Memory stays bounded on the paper's 1-5 M users: the CSV is read in byte blocks and parsed with NumPy;
each (user, slot) row is spilled as 12 bytes to one of a few bucket files by the user's order of first
appearance, and each bucket (a contiguous run of output lines) is sorted and written on its own.
"""

from __future__ import annotations

import csv
import os
import tempfile
from typing import Iterator, Sequence

import numpy as np

from common.cli import UserError
from ovt_explain.logs import DEFAULT_THRESHOLD, SPECIAL_TOKENS, classify_ids, viewed_threshold

# The original's defaults (generate_vocab.save_vocab, classify_training_data.main).
VOCAB_START_DATE, VOCAB_END_DATE = "2021/08/01", "2021/08/08"
ORIGINAL_PROGRAM_NAME = "東京2020オリンピック"
ORIGINAL_PROGRAM_SUBTITLE = "◇野球\u3000決勝「日本×アメリカ」（中継）"
ORIGINAL_CATEGORIES = ("viewed_v2", "not_viewed_v2")
TITLE_COLUMN, SUBTITLE_COLUMN, SORTID_COLUMN = "番組名", "サブタイトル", "sortid"

_ROW = np.dtype([("user", "<i8"), ("slot", "<i8")])


class DataFileError(UserError, ValueError):
    """A malformed input file; the message starts with `file:line:`."""


# ---- viewing CSV -> sentence.txt ------------------------------------------------------------------------

def _parse_rows_slowly(block: bytes, path: str, first_line: int) -> tuple[list[bytes], list[int]]:
    """Line by line, for blocks the fast path rejects: blank lines skipped (as pandas), bad ones named."""
    users, slots = [], []
    for offset, raw in enumerate(block.split(b"\n")):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        fields = line.split(b",")
        number = first_line + offset
        if len(fields) != 2:
            raise DataFileError(f"{path}:{number}: expected 2 columns userid,sortid, got {len(fields)}: "
                                f"{line[:80].decode('utf-8', 'replace')!r}")
        try:
            slots.append(int(fields[1]))
        except ValueError:
            raise DataFileError(f"{path}:{number}: sortid {fields[1][:40].decode('utf-8', 'replace')!r} is "
                                f"not an integer") from None
        users.append(fields[0].strip())
    return users, slots


def _csv_blocks(path: str, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines after the header, with the file line number of each block's first line."""
    with open(path, "rb") as handle:
        header = handle.readline()
        if len(header.rstrip(b"\r\n").split(b",")) != 2:
            raise DataFileError(f"{path}:1: expected the header userid,sortid (2 columns), got "
                                f"{header[:80].decode('utf-8', 'replace').strip()!r}")
        line, rest = 2, b""
        while True:
            data = handle.read(block_bytes)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut + 1:]
            yield block, line
            line += block.count(b"\n") + 1
        if rest.strip():
            yield rest, line


def _parse_block(block: bytes, path: str, line: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids as bytes array, slot ids int64) of one block; fast path, then the exact slow one."""
    block = block.replace(b"\r", b"")
    lines = block.count(b"\n") + 1
    parts = block.replace(b"\n", b",").split(b",")
    if len(parts) == 2 * lines:
        try:
            return np.array(parts[0::2]), np.array(parts[1::2]).astype(np.int64)
        except ValueError:
            pass
    users, slots = _parse_rows_slowly(block, path, line)
    return np.array(users, dtype=bytes) if users else np.zeros(0, "S1"), np.asarray(slots, np.int64)


def convert_to_sentences(csv_file: str, sentence_file: str, block_bytes: int = 1 << 24,
                         users_per_bucket: int = 1 << 17, work_dir: str | None = None) -> dict:
    """The original's `convert_to_sentence`: one user a line, their slot ids ascending (numeric) and
    space-separated, users in order of first appearance. Returns {"users", "rows"}."""
    codes: dict[bytes, int] = {}
    rows = 0
    with tempfile.TemporaryDirectory(dir=work_dir or os.path.dirname(os.path.abspath(sentence_file))) as spill:
        buckets: dict[int, object] = {}
        try:
            for block, line in _csv_blocks(csv_file, block_bytes):
                users, slots = _parse_block(block, csv_file, line)
                if not len(users):
                    continue
                unique, first_index, inverse = np.unique(users, return_index=True, return_inverse=True)
                local = np.empty(len(unique), np.int64)
                for position in np.argsort(first_index, kind="stable"):  # new users in order of appearance
                    local[position] = codes.setdefault(bytes(unique[position]), len(codes))
                user_codes = local[inverse.reshape(-1)]
                bucket_of = user_codes // users_per_bucket
                for bucket in np.unique(bucket_of):
                    chosen = bucket_of == bucket
                    records = np.empty(int(chosen.sum()), _ROW)
                    records["user"], records["slot"] = user_codes[chosen], slots[chosen]
                    if bucket not in buckets:
                        buckets[int(bucket)] = open(os.path.join(spill, f"{int(bucket)}.bin"), "wb")
                    records.tofile(buckets[int(bucket)])
                rows += len(users)
        finally:
            for handle in buckets.values():
                handle.close()
        user_count = len(codes)
        del codes
        with open(sentence_file, "w", encoding="utf-8") as out:
            for bucket in sorted(buckets):
                records = np.fromfile(os.path.join(spill, f"{bucket}.bin"), _ROW)
                os.remove(os.path.join(spill, f"{bucket}.bin"))
                order = np.lexsort((records["slot"], records["user"]))
                user, slot = records["user"][order], records["slot"][order]
                del records, order
                values, index = np.unique(slot, return_inverse=True)
                text = np.array([str(v) for v in values.tolist()], dtype=object)[index.reshape(-1)]
                starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]).tolist() + [len(user)]
                out.write("".join(" ".join(text[a:b]) + "\n" for a, b in zip(starts[:-1], starts[1:])))
    return {"users": user_count, "rows": rows}


def convert_to_sentences_original(csv_file: str, sentence_file: str) -> dict:
    """The original's algorithm (rows into a dict of lists, each list sorted, one line per user) with the
    csv module in place of pandas: the reference `bench/ovt_logs_scale.py` times ours against."""
    sentences: dict[str, list[int]] = {}
    rows = 0
    with open(csv_file, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            if not row:
                continue
            sentences.setdefault(row[0], []).append(int(row[1]))
            rows += 1
    for slots in sentences.values():
        slots.sort()
    with open(sentence_file, "w", encoding="utf-8") as out:
        for slots in sentences.values():
            out.write(" ".join(map(str, slots)) + "\n")
    return {"users": len(sentences), "rows": rows}


# ---- programme metadata -> vocab.txt ---------------------------------------------------------------

def _read_metadata(path: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    handle = open(path, newline="", encoding="utf-8-sig")
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise DataFileError(f"{path}:1: empty metadata file (expected a header with {SORTID_COLUMN})") from None

    def rows():
        with handle:
            for row in reader:
                if row:
                    yield reader.line_num, row
    return header, rows()


def _column(header: Sequence[str], name: str, path: str) -> int:
    if name not in header:
        raise DataFileError(f"{path}:1: no column {name!r} in the header ({', '.join(header[:12])})")
    return header.index(name)


def _sortid(row: Sequence[str], index: int, path: str, line: int) -> int:
    try:
        return int(row[index])
    except (ValueError, IndexError):
        raise DataFileError(f"{path}:{line}: sortid {row[index] if index < len(row) else ''!r} is not an "
                            f"integer") from None


def vocabulary_from_metadata(meta_data_file: str, start_date: str = VOCAB_START_DATE,
                             end_date: str = VOCAB_END_DATE) -> list[str]:
    """The original's `save_vocab`: special tokens, then every sortid whose 4th column (broadcast start
    date, compared as text) is in [start_date, end_date), ascending. A repeated sortid is kept once."""
    header, rows = _read_metadata(meta_data_file)
    if len(header) < 4:
        raise DataFileError(f"{meta_data_file}:1: expected the broadcast date as the 4th column, the header "
                            f"has {len(header)} columns")
    slot_index = _column(header, SORTID_COLUMN, meta_data_file)
    slots = set()
    for line, row in rows:
        if len(row) < 4:
            raise DataFileError(f"{meta_data_file}:{line}: {len(row)} columns, expected {len(header)}")
        if start_date <= row[3] < end_date:
            slots.add(_sortid(row, slot_index, meta_data_file, line))
    return list(SPECIAL_TOKENS) + [str(slot) for slot in sorted(slots)]


def save_vocab(meta_data_file: str, output_dir: str, start_date: str = VOCAB_START_DATE,
               end_date: str = VOCAB_END_DATE) -> str:
    """Writes `output_dir/vocab.txt` as the original (no newline after the last token); returns its path."""
    from common.io_utils import atomic_write_text

    vocabulary = vocabulary_from_metadata(meta_data_file, start_date, end_date)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "vocab.txt")
    atomic_write_text(path, "\n".join(vocabulary))
    return path


# ---- sentence.txt -> viewed / not_viewed ----------------------------------------------------------

def target_sort_ids(tv_meta_data_file: str, tv_program_name: str, tv_program_subtitle: str = "") -> list[int]:
    """The target programme's sortids: rows whose title (and subtitle, when given) match, ascending."""
    header, rows = _read_metadata(tv_meta_data_file)
    title = _column(header, TITLE_COLUMN, tv_meta_data_file)
    subtitle = _column(header, SUBTITLE_COLUMN, tv_meta_data_file) if tv_program_subtitle else None
    slot_index = _column(header, SORTID_COLUMN, tv_meta_data_file)
    found = []
    for line, row in rows:
        if row[title:title + 1] == [tv_program_name] and (
                subtitle is None or row[subtitle:subtitle + 1] == [tv_program_subtitle]):
            found.append(_sortid(row, slot_index, tv_meta_data_file, line))
    if not found:
        what = f"{tv_program_name!r}" + (f" / {tv_program_subtitle!r}" if tv_program_subtitle else "")
        raise DataFileError(f"{tv_meta_data_file}: no programme {what} (columns {TITLE_COLUMN}, {SUBTITLE_COLUMN})")
    return sorted(found)


def classify_sentences(sentences_data_file: str, target_ids: Sequence[int], training_data_dir: str,
                       categories: Sequence[str] = ORIGINAL_CATEGORIES,
                       threshold: float = DEFAULT_THRESHOLD) -> dict[str, int]:
    """The original's `classify_training_data`, streaming: each line of `sentence.txt` goes to
    `categories[0]` (viewed) or `categories[1]` (not viewed) as its history before the target
    (`logs.classify_ids`), one a line, `\\n`-separated without a final newline; a category without
    users gets no file (as the original). Returns the user count per category."""
    needed = viewed_threshold(len(target_ids), threshold)
    targets = sorted(target_ids)
    os.makedirs(training_data_dir, exist_ok=True)
    paths = {name: os.path.join(training_data_dir, f"{name}.txt") for name in categories}
    partial = {name: path + ".partial" for name, path in paths.items()}
    counts = {name: 0 for name in categories}
    handles = {name: open(partial[name], "w", encoding="utf-8") for name in categories}
    try:
        with open(sentences_data_file, encoding="utf-8") as source:
            for number, line in enumerate(source, 1):
                try:
                    ids = [int(word) for word in line.split()]
                except ValueError:
                    bad = next(word for word in line.split() if not word.lstrip("-").isdigit())
                    raise DataFileError(f"{sentences_data_file}:{number}: {bad[:40]!r} is not a programme id") \
                        from None
                viewed, history = classify_ids(ids, targets, needed)
                name = categories[0] if viewed else categories[1]
                handles[name].write(("\n" if counts[name] else "") + " ".join(map(str, history)))
                counts[name] += 1
    except BaseException:
        for name, handle in handles.items():
            handle.close()
            os.remove(partial[name])
        raise
    for name, handle in handles.items():
        handle.close()
        if counts[name]:
            os.replace(partial[name], paths[name])
        else:
            os.remove(partial[name])
    return counts
