"""Feature files: the original's `label<TAB>f1<TAB>f2...` lines (six decimals), without TensorFlow."""

from __future__ import annotations

import os
from typing import Sequence, TextIO

import numpy as np

from common.cli import UserError


def write_features(handle: TextIO, labels: Sequence[str], features: np.ndarray) -> None:
    """The original's format: `label<TAB>f1<TAB>f2...`, six decimals, one line per item."""
    for label, row in zip(labels, features):
        handle.write(label + "\t" + "\t".join(f"{value:.6f}" for value in row) + "\n")


def read_features(path: str) -> tuple[list[str], np.ndarray]:
    """A features file -> (labels, float32 [n, width]); bad lines are errors naming file and line."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    labels, rows, width = [], [], None
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            label, *values = line.split("\t")
            if not values:
                raise UserError(f"{path}:{line_number}: expected 'label<TAB>f1<TAB>f2...', found no tab")
            try:
                row = [float(value) for value in values]
            except ValueError:
                bad = next(value for value in values if not _is_float(value))
                raise UserError(f"{path}:{line_number}: {bad!r} is not a number") from None
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise UserError(f"{path}:{line_number}: {len(row)} features, but the lines before have {width}")
            labels.append(label)
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: no feature lines")
    return labels, np.asarray(rows, dtype=np.float32)


def _is_float(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False
