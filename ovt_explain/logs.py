"""Viewing logs: reading and writing them, the viewed / not_viewed labelling rule, the programme vocabulary.

The original's files are plain text: `sentence.txt` and the labelled `viewed*` / `not_viewed*` files hold
one user a line, their slot ids space-separated (an empty line is a user without history); users are
named `L<line number>`. A log file may also be a JSON object `{"user_id": "program_id program_id ...", ...}` (time-ordered programme-slot
ids; the real files end with a trailing comma before `}`, which is accepted), or JSON Lines: one
such object per line (usually one user each). Programme-slot ids are 11 digits: the slot's Unix time
(10 digits, 5-minute slots) followed by a channel digit.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Callable, Iterable, Mapping, Sequence

from common.cli import UserError
from common.io_utils import atomic_output
from common.tokenization import write_vocab

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# The original's generate_vocab order: [UNK] is id 0 and [PAD] id 3.
SPECIAL_TOKENS = (UNK, CLS, SEP, PAD, MASK)
VIEWED, NOT_VIEWED = "viewed", "not_viewed"
LABELS = (VIEWED, NOT_VIEWED)  # the original's label ids: viewed = 0, not_viewed = 1
VIEWED_ID = LABELS.index(VIEWED)
DEFAULT_THRESHOLD = 0.333  # the original's classify_user threshold


class LogFormatError(UserError, ValueError):
    """A malformed log file; the message starts with `file:line:column:`."""


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# A comma followed only by whitespace and the closing brace of the top-level object.
_TRAILING_COMMA = re.compile(r",(\s*)\}\s*$")


def _check_pairs(pairs, text: str, path: str, line_offset: int) -> dict[str, list[str]]:
    """Checks one object's (user, history) pairs; errors point at the offending user's key."""
    histories: dict[str, list[str]] = {}
    cursor = 0
    for user, history in pairs:
        # Keys appear in file order, so each is found after the previous one.
        found = text.find(json.dumps(user, ensure_ascii=False), cursor)
        cursor = found + 1 if found >= 0 else cursor
        problem = None
        if user in histories:
            problem = f"user {user!r} appears twice"
        elif not isinstance(history, str):
            problem = (f"user {user!r}: expected a string of space-separated programme ids, "
                       f"got {_json_type(history)}")
        if problem:
            line, column = _position(text, max(found, 0))
            raise LogFormatError(f"{path}:{line + line_offset}:{column}: {problem}")
        histories[user] = history.split()
    return histories


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so duplicate users are seen (arrays stay lists)."""


def _json_type(value) -> str:
    return {_Pairs: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null", str: "a string"}.get(type(value), type(value).__name__)


def _parse_object(text: str, path: str, line_offset: int = 0):
    try:
        return json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as error:
        raise LogFormatError(f"{path}:{error.lineno + line_offset}:{error.colno}: {error.msg}") from None


def is_plain_text(text: str) -> bool:
    """The original's plain-text layout (one user a line of ids) rather than JSON."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return not first.startswith(("{", "["))


def iter_plain_lines(path: str | os.PathLike) -> Iterable[tuple[int, list[str]]]:
    """(line number, ids) of a plain-text file, every line as Python reads it (empty lines too);
    a token that is not an integer id stops with `file:line:column:`."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            ids = line.split()
            for token in ids:
                if not token.isdigit():
                    column = line.find(token) + 1
                    raise LogFormatError(f"{path}:{number}:{column}: {token[:40]!r} is not a programme id "
                                         f"(plain-text files hold space-separated integer slot ids)")
            yield number, ids


def read_plain_logs(path: str | os.PathLike) -> dict[str, list[str]]:
    """`L<line number> -> [ids]` of a plain-text file (empty lines are users without history)."""
    return {f"L{number}": ids for number, ids in iter_plain_lines(path)}


def read_logs(path: str | os.PathLike) -> dict[str, list[str]]:
    """`user_id -> [programme ids]` in file order, from the original's plain text (users named
    `L<line>`), a JSON object file or JSON Lines."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise LogFormatError(f"{path}:1:1: empty log file (expected plain text, a JSON object or JSON Lines)")
    if not first.startswith(("{", "[")):
        return read_plain_logs(path)
    if path.endswith((".jsonl", ".ndjson")) or (first.startswith("{") and first.endswith("}")
                                                and len([line for line in lines if line.strip()]) > 1):
        return _read_json_lines(lines, path)
    # The trailing comma becomes a space, so line and column numbers of later errors stay right.
    text = _TRAILING_COMMA.sub(lambda match: " " + match.group(1) + "}", text)
    pairs = _parse_object(text, path)
    if not isinstance(pairs, _Pairs):
        raise LogFormatError(f"{path}:1:1: expected a JSON object user_id -> \"program_id ...\", "
                             f"got {_json_type(pairs)}")
    return _check_pairs(pairs, text, path, 0)


def _read_json_lines(lines: Sequence[str], path: str) -> dict[str, list[str]]:
    histories: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pairs = _parse_object(line, path, line_offset=number - 1)
        if not isinstance(pairs, _Pairs):
            raise LogFormatError(f"{path}:{number}:1: expected a JSON object per line, got "
                                 f"{_json_type(pairs)}")
        for user, history in _check_pairs(pairs, line, path, number - 1).items():
            if user in histories:
                raise LogFormatError(f"{path}:{number}:1: user {user!r} appears twice")
            histories[user] = history
    return histories


def read_many_logs(paths: Iterable[str | os.PathLike]) -> dict[str, list[str]]:
    """Several log files merged; a user in two files is an error naming both."""
    merged: dict[str, list[str]] = {}
    source: dict[str, str] = {}
    for path in paths:
        for user, history in read_logs(path).items():
            if user in merged:
                raise LogFormatError(f"{os.fspath(path)}:1:1: user {user!r} also in {source[user]}")
            merged[user], source[user] = history, os.fspath(path)
    return merged


def write_logs(path: str | os.PathLike, histories: Mapping[str, Sequence[str]]) -> None:
    """Writes the JSON object format (one user a line, no trailing comma), atomically."""
    with atomic_output(path) as handle:
        handle.write("{\n")
        items = list(histories.items())
        for index, (user, history) in enumerate(items):
            separator = "," if index + 1 < len(items) else ""
            handle.write(f"  {json.dumps(str(user), ensure_ascii=False)}: "
                         f"{json.dumps(' '.join(history), ensure_ascii=False)}{separator}\n")
        handle.write("}\n")


# ---- labelling ---------------------------------------------------------------------------------------

def viewed_threshold(num_target_slots: int, threshold: float = DEFAULT_THRESHOLD) -> int:
    """The original's rule: watched slots needed for `viewed`, `max(1, int(n * threshold))`."""
    return max(1, int(num_target_slots * threshold))


def classify_ids(ids: Sequence[int], target_ids: Sequence[int], needed: int) -> tuple[bool, list[int]]:
    """(viewed, history) of one user as the original's `classify_user`: viewed when at least `needed`
    distinct target ids were watched; history = the ids numerically below the smallest target id
    (whole-id comparison, in the user's order)."""
    smallest = min(target_ids)
    history = [value for value in ids if value < smallest]
    return len(set(ids).intersection(target_ids)) >= needed, history


@dataclasses.dataclass
class LabelledUser:
    user_id: str
    history: list[str]        # the model's input: ids numerically below the target's smallest id
    label: int                # LABELS index: 0 = viewed, 1 = not_viewed
    watched_share: float      # share of the target's slots the user watched


def label_users(histories: Mapping[str, Sequence[str]], target_slots: Iterable[str],
                threshold: float = DEFAULT_THRESHOLD, min_history: int = 0) -> list[LabelledUser]:
    """The original's rule for every user (`classify_ids`); users with an empty history stay, as in
    the original, unless `min_history` asks for more."""
    target = sorted(set(int(slot) for slot in target_slots))
    if not target:
        raise ValueError("the target programme has no slots")
    needed = viewed_threshold(len(target), threshold)
    labelled = []
    for user, history in histories.items():
        ids = [int(program) for program in history]
        viewed, before = classify_ids(ids, target, needed)
        if len(before) < min_history:
            continue
        share = len(set(ids).intersection(target)) / len(target)
        labelled.append(LabelledUser(user, [str(value) for value in before],
                                     LABELS.index(VIEWED if viewed else NOT_VIEWED), share))
    return labelled


# ---- vocabulary ----------------------------------------------------------------------------------------

def count_programs(histories: Iterable[Sequence[str]]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for history in histories:
        counts.update(history)
    return counts


def build_vocabulary(histories: Iterable[Sequence[str]], min_count: int = 1,
                     max_size: int | None = None) -> list[str]:
    """The original's special tokens (`[UNK] [CLS] [SEP] [PAD] [MASK]`), then the programme ids seen at
    least `min_count` times in ascending order, as the original's vocabulary; rarer ids become `[UNK]`."""
    counts = count_programs(histories)
    ranked = sorted((program for program, count in counts.items() if count >= min_count),
                    key=lambda program: (len(program), program) if program.isdigit() else (0, program))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - len(SPECIAL_TOKENS))]
    return list(SPECIAL_TOKENS) + ranked


def write_program_vocab(histories: Iterable[Sequence[str]], path: str | os.PathLike, min_count: int = 1,
                        max_size: int | None = None) -> list[str]:
    vocabulary = build_vocabulary(histories, min_count, max_size)
    write_vocab(vocabulary, path)
    return vocabulary


def map_unknown(history: Sequence[str], vocab: Mapping[str, int]) -> list[str]:
    return [program if program in vocab else UNK for program in history]
