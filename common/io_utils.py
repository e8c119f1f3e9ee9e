"""Files that are either whole or absent: every writer in the suite goes through here."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

# mkstemp creates files 0600; outputs should get the usual umask-based mode instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temp path beside `path` for writers that want a file name (TFRecord, savefig)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, extension = os.path.splitext(os.path.basename(path))
    fd, temp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{extension}", dir=directory)
    os.close(fd)
    try:
        yield temp_path
        if os.path.exists(temp_path):
            os.chmod(temp_path, _FILE_MODE)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Yields a handle to a temp file beside `path`; renames it onto `path` only if the block succeeds."""
    with atomic_path(path) as temp_path:
        if "b" in mode:
            handle = open(temp_path, mode)
        else:
            handle = open(temp_path, mode, encoding=encoding, newline="")
        with handle:
            yield handle


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, value, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike, error_class: type[Exception] = ValueError, *, expect: type | None = None,
              default=None, missing_ok: bool = False):
    """Parses a JSON file; bad JSON raises `error_class("file:line:column: reason")`.

    `missing_ok` returns `default` for an absent file; `expect` (e.g. dict) checks the top-level type.
    """
    path = os.fspath(path)
    if missing_ok and not os.path.exists(path):
        return default
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise error_class(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise error_class(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise error_class(f"{path}: not UTF-8 text (byte {error.start})") from None
    if expect is not None and not isinstance(value, expect):
        raise error_class(f"{path}:1: expected a JSON {expect.__name__}, got {type(value).__name__}")
    return value
