"""Viewing logs: reading and writing them, the viewed / not_viewed labelling rule, the programme vocabulary.

A log file is a JSON object `{"user_id": "program_id program_id ...", ...}` (time-ordered programme-slot
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
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
VIEWED, NOT_VIEWED = "viewed", "not_viewed"
LABELS = (NOT_VIEWED, VIEWED)  # label id 1 = viewed


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


def read_logs(path: str | os.PathLike) -> dict[str, list[str]]:
    """`user_id -> [programme ids]` in file order, from a JSON object file or JSON Lines."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise LogFormatError(f"{path}:1:1: empty log file (expected a JSON object or JSON Lines)")
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

def slot_time(program_id: str) -> int:
    """The slot's Unix time: an 11-digit id without its channel digit."""
    if not program_id.isdigit() or len(program_id) < 2:
        raise ValueError(f"programme id {program_id!r} is not a numeric slot id (time + channel digit)")
    return int(program_id[:-1])


@dataclasses.dataclass
class LabelledUser:
    user_id: str
    history: list[str]        # the model's input: programmes before the target's first slot
    label: int                # 1 = viewed, 0 = not_viewed
    watched_share: float      # share of the target's slots the user watched


def label_users(histories: Mapping[str, Sequence[str]], target_slots: Iterable[str],
                min_share: float = 1.0 / 3.0, time_of: Callable[[str], int] = slot_time,
                min_history: int = 1) -> list[LabelledUser]:
    """The paper's rule: `viewed` when a user watched at least `min_share` of the target programme's
    slots; the input is the user's history strictly before the target's first slot (by `time_of`).
    Users with fewer than `min_history` programmes before it are left out."""
    target = set(target_slots)
    if not target:
        raise ValueError("the target programme has no slots")
    start = min(time_of(slot) for slot in target)
    labelled = []
    for user, history in histories.items():
        share = len(target.intersection(history)) / len(target)
        before = [program for program in history if time_of(program) < start]
        if len(before) < min_history:
            continue
        # A small tolerance so "a third" of 3 or 6 slots is reached despite 1/3 not being exact.
        labelled.append(LabelledUser(user, before, int(share + 1e-9 >= min_share), share))
    return labelled


# ---- vocabulary ----------------------------------------------------------------------------------------

def count_programs(histories: Iterable[Sequence[str]]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for history in histories:
        counts.update(history)
    return counts


def build_vocabulary(histories: Iterable[Sequence[str]], min_count: int = 1,
                     max_size: int | None = None) -> list[str]:
    """Special tokens, then programme ids seen at least `min_count` times, most frequent first
    (ties by id); rarer ids become `[UNK]` when encoded."""
    counts = count_programs(histories)
    ranked = sorted((program for program, count in counts.items() if count >= min_count),
                    key=lambda program: (-counts[program], program))
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
