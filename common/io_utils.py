"""Files that are either whole or absent, on local disks and on `tf.io.gfile` filesystems (gs://, ram://, hdfs://).

Every reader and writer in the suite goes through here. Local paths use the OS directly (no TensorFlow import, so
data writers stay fork-safe and start fast); a path with a scheme (`gs://bucket/x`, `ram://x`) goes through
`tf.io.gfile`. Atomic writes: locally a temp file beside the target and `os.replace`; elsewhere a temp object beside
the target and `tf.io.gfile.rename` (on gs:// a copy then delete: readers never see a half-written object).
"""

from __future__ import annotations

import contextlib
import glob as _glob
import json
import os
import shutil
import tempfile
import uuid

# mkstemp creates files 0600; outputs should get the usual umask-based mode instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def is_remote(path: str | os.PathLike) -> bool:
    """True for a `scheme://` path that only `tf.io.gfile` can reach (`file://` counts as local)."""
    path = os.fspath(path)
    return "://" in path and not path.startswith("file://")


def _local(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def _gfile():
    import tensorflow as tf  # only for remote paths: local I/O never pays for (or forks with) TensorFlow
    return tf.io.gfile


def join(path: str | os.PathLike, *parts: str) -> str:
    return os.path.join(os.fspath(path), *parts)  # posix joining is right for gs:// and ram:// too


def dirname(path: str | os.PathLike) -> str:
    """The folder of `path`; `os.path.abspath` locally (so '' becomes the working directory)."""
    path = os.fspath(path)
    return os.path.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(_local(path)))


def normpath(path: str | os.PathLike) -> str:
    """`os.path.normpath` that keeps a `scheme://` prefix whole (normpath would fold `//` into `/`)."""
    path = os.fspath(path)
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{os.path.normpath(rest) if rest else rest}"
    return os.path.normpath(path)


def exists(path: str | os.PathLike) -> bool:
    return _gfile().exists(os.fspath(path)) if is_remote(path) else os.path.exists(_local(path))


def isdir(path: str | os.PathLike) -> bool:
    return _gfile().isdir(os.fspath(path)) if is_remote(path) else os.path.isdir(_local(path))


def isfile(path: str | os.PathLike) -> bool:
    if is_remote(path):
        gfile = _gfile()
        return gfile.exists(os.fspath(path)) and not gfile.isdir(os.fspath(path))
    return os.path.isfile(_local(path))


def makedirs(path: str | os.PathLike) -> None:
    if is_remote(path):
        _gfile().makedirs(os.fspath(path))
    else:
        os.makedirs(_local(path), exist_ok=True)


def remove(path: str | os.PathLike, missing_ok: bool = False) -> None:
    if missing_ok and not exists(path):
        return
    if is_remote(path):
        _gfile().remove(os.fspath(path))
    else:
        os.remove(_local(path))


def listdir(path: str | os.PathLike) -> list[str]:
    """Entry names (not paths) of a folder, sorted; gfile's trailing '/' on folders removed."""
    if is_remote(path):
        return sorted(name.rstrip("/") for name in _gfile().listdir(os.fspath(path)))
    return sorted(os.listdir(_local(path)))


def has_magic(pattern: str) -> bool:
    return _glob.has_magic(pattern)


def glob(pattern: str | os.PathLike) -> list[str]:
    """Sorted matches of a glob pattern (`*`, `?`, `[...]`) on any filesystem."""
    pattern = os.fspath(pattern)
    if is_remote(pattern):
        return sorted(_gfile().glob(pattern))
    return sorted(_glob.glob(_local(pattern)))


def glob_escape(path: str) -> str:
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{_glob.escape(rest)}"
    return _glob.escape(path)


def open_file(path: str | os.PathLike, mode: str = "r", encoding: str | None = "utf-8"):
    """`open` for local paths, `tf.io.gfile.GFile` otherwise (text modes decode UTF-8 either way)."""
    path = os.fspath(path)
    if not is_remote(path):
        if "b" in mode:
            return open(_local(path), mode)
        return open(_local(path), mode, encoding=encoding, newline="" if "w" in mode or "a" in mode else None)
    return _gfile().GFile(path, mode)


def copy(source: str | os.PathLike, target: str | os.PathLike, overwrite: bool = True) -> None:
    """Copies one file between any two filesystems (atomic at the target)."""
    source, target = os.fspath(source), os.fspath(target)
    if not is_remote(source) and not is_remote(target):
        with atomic_path(target) as temp_path:
            shutil.copyfile(_local(source), temp_path)
        return
    if not overwrite and exists(target):
        raise FileExistsError(target)
    with open_file(source, "rb") as reader, atomic_output(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 22)


def _remote_temp_name(path: str) -> str:
    folder, name = os.path.split(path)
    base, extension = os.path.splitext(name)
    return join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp{extension}")


@contextlib.contextmanager
def _remote_atomic(path: str, make_temp):
    gfile = _gfile()
    folder = os.path.dirname(path)
    if folder and not folder.endswith("://"):
        gfile.makedirs(folder)
    temp_path = _remote_temp_name(path)
    try:
        yield temp_path, make_temp(temp_path)
        gfile.rename(temp_path, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            if gfile.exists(temp_path):
                gfile.remove(temp_path)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temp path for writers that want a local file name (savefig, a C library); the file becomes `path`
    only if the block succeeds. For a remote `path` the temp file is local and is uploaded at the end."""
    path = os.fspath(path)
    if is_remote(path):
        fd, local_temp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
        os.close(fd)
        try:
            yield local_temp
            with open(local_temp, "rb") as reader, atomic_output(path, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 22)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(local_temp)
        return
    path = _local(path)
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
    path = os.fspath(path)
    if is_remote(path):
        gfile_mode = "wb" if "b" in mode else "w"
        with _remote_atomic(path, lambda temp: _gfile().GFile(temp, gfile_mode)) as (_, handle):
            with handle:
                yield handle
        return
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


def read_text(path: str | os.PathLike) -> str:
    with open_file(path, "r") as handle:
        return handle.read()


def read_json(path: str | os.PathLike, error_class: type[Exception] = ValueError, *, expect: type | None = None,
              default=None, missing_ok: bool = False):
    """Parses a JSON file; bad JSON raises `error_class("file:line:column: reason")`.

    `missing_ok` returns `default` for an absent file; `expect` (e.g. dict) checks the top-level type.
    """
    path = os.fspath(path)
    if missing_ok and not exists(path):
        return default
    if not exists(path):
        raise error_class(f"{path}: no such file")
    try:
        with open_file(path, "rb") as handle:
            value = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise error_class(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise error_class(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise error_class(f"{path}: not UTF-8 text (byte {error.start})") from None
    if expect is not None and not isinstance(value, expect):
        raise error_class(f"{path}:1: expected a JSON {expect.__name__}, got {type(value).__name__}")
    return value
