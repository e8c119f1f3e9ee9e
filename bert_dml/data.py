"""`label<TAB>text` files -> labels, texts and BERT features; the vocabulary of a from-scratch model.

Every problem with the user's file is one `common.cli.UserError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from common.cli import UserError
from common.tokenization import BertTokenizer, compute_wordpiece_vocabulary

# The original scripts turn rt-polarity's spaced ellipsis into one character before tokenizing.
_ORIGINAL_REPLACEMENTS = ((". . .", "\u2026"),)


@dataclasses.dataclass
class LabeledTexts:
    """The non-blank lines of one file, in order: `labels[i]` and `texts[i]` came from `line_numbers[i]`."""

    path: str
    labels: list[str]
    texts: list[str]
    line_numbers: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def read_labeled_texts(path: str | os.PathLike, encoding: str = "utf-8", require_labels: bool = True,
                       original_replacements: bool = True, max_lines: int | None = None) -> LabeledTexts:
    """Reads `label<TAB>text` lines (blank lines are skipped, as in the original).

    With `require_labels=False` a line without a tab is an unlabeled text (label ""), as the
    original extraction scripts allow. `max_lines`: only the file's first lines (blank ones count).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        "".encode(encoding)
    except LookupError:
        raise UserError(f"unknown --encoding {encoding!r}") from None
    labels, texts, line_numbers = [], [], []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if max_lines is not None and line_number > max_lines:
                break
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as error:
                hint = ("; the file is in another encoding: pass --encoding (the original rt-polarity "
                        "release is --encoding=cp1252)" if encoding.lower().replace("-", "") == "utf8"
                        else "; pass the file's --encoding")
                raise UserError(f"{path}:{line_number}: not valid {encoding} "
                                f"(byte 0x{raw[error.start]:02x} at column {error.start + 1}){hint}") from None
            line = line.rstrip("\r\n")
            if line_number == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a UTF-8 byte-order mark
            if not line.strip():
                continue
            if "\t" in line:
                label, text = line.split("\t", 1)
                label, text = label.strip(), text.strip()
                if not label:
                    raise UserError(f"{path}:{line_number}: empty label before the tab "
                                    "(expected 'label<TAB>text')")
            elif require_labels:
                raise UserError(f"{path}:{line_number}: no tab: expected 'label<TAB>text', "
                                f"found {line[:60]!r}")
            else:
                label, text = "", line
            if "\t" in text:
                raise UserError(f"{path}:{line_number}: more than one tab: expected 'label<TAB>text'")
            if not text:
                raise UserError(f"{path}:{line_number}: empty text after the label {label!r}")
            if original_replacements:
                for old, new in _ORIGINAL_REPLACEMENTS:
                    text = text.replace(old, new)
            labels.append(label)
            texts.append(text)
            line_numbers.append(line_number)
    if not texts:
        raise UserError(f"{path}: no 'label<TAB>text' lines")
    return LabeledTexts(path, labels, texts, line_numbers)


def read_label_file(path: str) -> list[str]:
    """Labels in id order from our `labels.json` (a list) or the original's `labels.bin` (a pickled
    {label: id} dict; read by an unpickler that builds nothing but plain values)."""
    import io
    import json
    import pickle

    if not os.path.isfile(path):
        raise UserError(f"--label {path}: no such file")
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        class _PlainValues(pickle.Unpickler):
            def find_class(self, module, name):
                raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")
        try:
            value = _PlainValues(io.BytesIO(raw)).load()
        except Exception as error:
            raise UserError(f"--label {path}: neither a JSON list of labels nor the original's pickled "
                            f"labels.bin ({error})") from None
    if isinstance(value, dict) and all(isinstance(index, int) for index in value.values()):
        return [str(label) for label, _ in sorted(value.items(), key=lambda item: item[1])]
    if isinstance(value, list):
        return [str(label) for label in value]
    raise UserError(f"--label {path}: expected a list of labels or a {{label: id}} mapping")


def collect_labels(data: LabeledTexts) -> list[str]:
    """The distinct labels in order of first appearance (the original's label ids)."""
    return list(dict.fromkeys(data.labels))


def label_ids(data: LabeledTexts, labels: Sequence[str], strict: bool = True) -> np.ndarray:
    """int32 id of each line's label in `labels`; a label outside it is an error naming the line
    (`strict`), or gets a fresh id after the known ones (enough for grouping, e.g. eval triplets)."""
    index = {label: position for position, label in enumerate(labels)}
    ids = []
    for label, line_number in zip(data.labels, data.line_numbers):
        if label not in index:
            if strict:
                raise UserError(f"{data.path}:{line_number}: label {label!r} is not among the "
                                f"training labels {list(labels)}")
            index[label] = len(index)
        ids.append(index[label])
    return np.asarray(ids, dtype=np.int32)


def build_vocabulary(texts: Sequence[str], vocab_size: int = 8000, lowercase: bool = True,
                     tokenize_chinese_chars: bool = False) -> list[str]:
    """A WordPiece vocabulary learnt from the training texts, for a model trained from scratch.

    As the original's tokenizer, CJK ideographs stay inside their words by default, so pre-segmented
    Japanese (`一般 道路 を 走行 中`) gives word tokens (`道路`); Google's split is `tokenize_chinese_chars`.
    """
    return compute_wordpiece_vocabulary(vocab_size, lines=list(texts), lowercase=lowercase,
                                        tokenize_chinese_chars=tokenize_chinese_chars)


def encode_texts(tokenizer: BertTokenizer, texts: Sequence[str], max_seq_length: int,
                 trailing_sep: bool = True) -> dict[str, np.ndarray]:
    """`[CLS] text [SEP]` features (training), or `[CLS] text` (`trailing_sep=False`: the original's
    extraction scripts), int32 `[n, max_seq_length]`, truncated and zero-padded (batches trim them)."""
    if trailing_sep:
        return tokenizer.encode_batch(list(texts), max_seq_length=max_seq_length)
    features = {key: np.zeros((len(texts), max_seq_length), dtype=np.int32)
                for key in ("input_ids", "input_mask", "segment_ids")}
    for row, text in enumerate(texts):
        ids = tokenizer.convert_tokens_to_ids([tokenizer.cls_token] + tokenizer.tokenize(text))[:max_seq_length]
        features["input_ids"][row, :len(ids)] = ids
        features["input_mask"][row, :len(ids)] = 1
    return features


def trim_to_longest(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the padding columns no row of this batch uses (the original pads each batch to its longest)."""
    length = max(int(features["input_mask"].sum(axis=1).max(initial=0)), 2)
    return {key: value[:, :length] for key, value in features.items()}
