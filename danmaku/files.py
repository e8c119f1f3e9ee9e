"""Names of the sharded TFRecord files between `create_pretraining_data` and `run_pretraining`."""

from __future__ import annotations

import glob
import os

from common.cli import UserError

_RECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tf_record")


def output_prefix_of(output_file: str) -> str:
    """`data/x.tfrecord` -> `data/x` (its shards are `data/x-00000-of-00008.tfrecord`, ...)."""
    for suffix in _RECORD_SUFFIXES:
        if output_file.endswith(suffix):
            return output_file[: -len(suffix)]
    return output_file


def resolve_record_files(input_file: str) -> list[str]:
    """Google's `--input_file` (comma-separated files or globs) -> existing files, sorted.

    A name that is not there but whose shards are (`x.tfrecord` -> `x-*-of-*.tfrecord`) means those
    shards, so the `--output_file` given to create_pretraining_data also works as `--input_file` here.
    """
    files: list[str] = []
    for part in str(input_file).split(","):
        part = part.strip()
        if not part:
            continue
        matches = sorted(glob.glob(part))
        if not matches and not glob.has_magic(part):
            shard_pattern = glob.escape(output_prefix_of(part)) + "-[0-9]*-of-[0-9]*.tfrecord"
            matches = sorted(glob.glob(shard_pattern))
        if not matches:
            raise UserError(f"--input_file: nothing matches {part!r} (nor its shards <name>-00000-of-0000N.tfrecord)")
        files.extend(matches)
    if not files:
        raise UserError("--input_file is empty")
    return list(dict.fromkeys(os.path.normpath(path) for path in files))
