"""Names of the sharded TFRecord files between `create_pretraining_data` and `run_pretraining`."""

from __future__ import annotations

from common.cli import UserError
from common.tfrecords import expand_file_patterns, output_prefix_of

__all__ = ["output_prefix_of", "resolve_record_files"]


def resolve_record_files(input_file: str) -> list[str]:
    """Google's `--input_file` (comma-separated files or globs) -> existing files, sorted.

    A name that is not there but whose shards are (`x.tfrecord` -> `x-*-of-*.tfrecord`) means those
    shards, so the `--output_file` given to create_pretraining_data also works as `--input_file` here.
    """
    return expand_file_patterns(input_file, shards=True, error_class=UserError, what="--input_file")
