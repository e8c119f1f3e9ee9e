"""Danmaku (bullet comment) corpora: documents of comments, streamed from text or CSV files.

Two layouts:
- `txt`: one comment a line; a blank line ends a document (one video or one live stream). As in Google's
  reader, only blank lines end documents: a document runs on from the end of one file into the next.
- `csv`: the public danmaku dumps, `text,video_seconds,YYYY-MM-DD HH:MM:SS` a line, one document a file.
  The text may itself contain commas, so a line is split at its last two commas. A first line
  whose second field is not a number (a header) is skipped.

Comments keep their file order. `--drop_oov_comments` (the original's choice) drops every comment
whose tokens include `[UNK]` (characters the vocabulary lacks, e.g. emoji); otherwise such
characters stay in as `[UNK]`. Lines that hold no token at all are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Callable, Iterator, Sequence

from common import io_utils
from common.cli import UserError
from common.tokenization import UNK_TOKEN

INPUT_FORMATS = ("txt", "csv")
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


class CorpusError(UserError):
    """A corpus file that cannot be read as the layout says; the message names file and line."""


@dataclasses.dataclass
class CorpusStats:
    files: int = 0
    documents: int = 0
    comments: int = 0  # comments kept
    dropped_oov_comments: int = 0  # dropped by --drop_oov_comments
    oov_comments_kept: int = 0  # kept with [UNK] in them
    empty_lines_skipped: int = 0  # lines with no token (only whitespace / control characters)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def expand_input_files(patterns: str | Sequence[str]) -> list[str]:
    """Comma-separated files or globs (Google's `--input_file` style) -> sorted, de-duplicated paths."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        for part in str(pattern).split(","):
            part = part.strip()
            if not part:
                continue
            matches = io_utils.glob(part) if io_utils.has_magic(part) else [part]
            if not matches or not all(io_utils.isfile(match) for match in matches):
                missing = part if not matches else next(m for m in matches if not io_utils.isfile(m))
                raise CorpusError(f"{missing}: no such input file" if not io_utils.has_magic(part)
                                  else f"{part}: no input file matches this pattern")
            files.extend(matches)
    if not files:
        raise CorpusError("no input files given")
    return list(dict.fromkeys(files))


def _decoded_lines(path: str) -> Iterator[tuple[int, str]]:
    with io_utils.open_file(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(f"{path}:{line_number}: not valid UTF-8 ({error.reason})") from None
            yield line_number, text.rstrip("\r\n")


def read_txt_documents(paths: str | Sequence[str]) -> Iterator[tuple[str, int, list[tuple[int, str]]]]:
    """Yields (file, first line number, [(line number, comment), ...]) per blank-line separated document; a
    document still open at the end of a file continues in the next file (Google's reader)."""
    if isinstance(paths, str):
        paths = [paths]
    document: list[tuple[int, str]] = []
    first_file = None
    for path in paths:
        for line_number, line in _decoded_lines(path):
            if line.strip():
                if not document:
                    first_file = path
                document.append((line_number, line.strip()))
            elif document:
                yield first_file, document[0][0], document
                document = []
    if document:
        yield first_file, document[0][0], document


def parse_csv_line(line: str, path: str, line_number: int) -> tuple[str, float, str] | None:
    """`text,video_seconds,YYYY-MM-DD HH:MM:SS` -> (text, seconds, timestamp); None for a header line."""
    parts = line.rsplit(",", 2)
    if len(parts) != 3:
        raise CorpusError(f"{path}:{line_number}: expected 'text,video_seconds,YYYY-MM-DD HH:MM:SS' "
                          f"(3 comma-separated fields), got {line[:80]!r}")
    text, seconds_field, timestamp = parts[0], parts[1].strip(), parts[2].strip()
    try:
        seconds = float(seconds_field)
    except ValueError:
        if line_number == 1:
            return None  # a header such as "text,video_seconds,time"
        raise CorpusError(f"{path}:{line_number}: video_seconds {seconds_field!r} is not a number") from None
    try:
        datetime.datetime.strptime(timestamp, _TIMESTAMP_FORMAT)
    except ValueError:
        raise CorpusError(f"{path}:{line_number}: timestamp {timestamp!r} is not "
                          f"'YYYY-MM-DD HH:MM:SS'") from None
    return text, seconds, timestamp


def read_csv_documents(path: str) -> Iterator[tuple[str, int, list[tuple[int, str]]]]:
    """One document: every comment of the file, in file order (a CSV file is one video)."""
    document = []
    for line_number, line in _decoded_lines(path):
        if not line.strip():
            continue
        parsed = parse_csv_line(line, path, line_number)
        if parsed is not None and parsed[0].strip():
            document.append((line_number, parsed[0].strip()))
    if document:
        yield path, document[0][0], document


class DanmakuCorpus:
    """Documents (lists of comment strings) from files; iterable many times, picklable (no open files).

    `tokenize` (e.g. `BertTokenizer.tokenize`) decides which comments are empty or out of vocabulary;
    without it every non-blank line is a comment. `stats` describes the last complete iteration.
    """

    def __init__(self, input_files: str | Sequence[str], input_format: str = "txt",
                 tokenize: Callable[[str], list[str]] | None = None, drop_oov_comments: bool = False,
                 unk_token: str = UNK_TOKEN):
        if input_format not in INPUT_FORMATS:
            raise UserError(f"--input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
        if drop_oov_comments and tokenize is None:
            raise ValueError("drop_oov_comments needs a tokenize function (a vocabulary)")
        self.files = expand_input_files(input_files)
        self.input_format = input_format
        self.tokenize = tokenize
        self.drop_oov_comments = drop_oov_comments
        self.unk_token = unk_token
        self.stats = CorpusStats()

    def _documents(self, stats: CorpusStats):
        def counted(paths):
            for path in paths:
                stats.files += 1
                yield path

        if self.input_format == "txt":
            yield from read_txt_documents(counted(self.files))
        else:
            for path in counted(self.files):
                yield from read_csv_documents(path)

    def __iter__(self) -> Iterator[list[str]]:
        stats = CorpusStats()
        for _, _, numbered_comments in self._documents(stats):
            comments = []
            for _, comment in numbered_comments:
                if self.tokenize is not None:
                    tokens = self.tokenize(comment)
                    if not tokens:
                        stats.empty_lines_skipped += 1
                        continue
                    if self.unk_token in tokens:
                        if self.drop_oov_comments:
                            stats.dropped_oov_comments += 1
                            continue
                        stats.oov_comments_kept += 1
                comments.append(comment)
            if comments:
                stats.documents += 1
                stats.comments += len(comments)
                yield comments
        self.stats = stats

    def __call__(self) -> Iterator[list[str]]:
        return iter(self)

    def comments(self) -> Iterator[str]:
        """Every comment (after filtering), e.g. to build a vocabulary."""
        for document in self:
            yield from document
