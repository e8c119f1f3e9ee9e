"""The one name scheme (`google_mappings`: every variable's Google TF1 tensor, which the other formats
rename) and the one routine every format loads through (`assign_all`: check every tensor, then assign)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import keras
import numpy as np

from common.encoder import BertEncoder

MAX_LISTED = 30


class CheckpointMismatchError(ValueError):
    """Weights that do not fit the model; the message lists every problem at once."""


def shape_of(variable) -> tuple:
    return tuple(int(size) for size in variable.shape)


def format_shape(shape) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


def format_groups(groups: Iterable[tuple[str, list[str]]], indent: str = "  ") -> list[str]:
    """`  title (n):` then at most MAX_LISTED items, for every non-empty group."""
    lines = []
    for title, items in groups:
        if items:
            lines += [f"{indent}{title} ({len(items)}):"] + [f"    {item}" for item in items[:MAX_LISTED]]
            lines += [f"    ... and {len(items) - MAX_LISTED} more"] if len(items) > MAX_LISTED else []
    return lines


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One stored tensor <-> one Keras variable. Google's array differs from the variable by a reshape
    or, with `transpose`, a transpose; a format that stores Google's array transposed says `transposed`."""

    name: str
    variable: keras.Variable
    google_shape: tuple
    transpose: bool = False
    transposed: bool = False

    @property
    def shape(self) -> tuple:
        return self.google_shape[::-1] if self.transposed else self.google_shape

    def renamed(self, name: str, transposed: bool = False) -> "Tensor":
        return dataclasses.replace(self, name=name, transposed=transposed)

    def to_variable(self, array: np.ndarray) -> np.ndarray:
        array = array.T if self.transposed else array
        return (array.T if self.transpose else array.reshape(shape_of(self.variable))).astype(self.variable.dtype)

    def value(self) -> np.ndarray:
        """The variable's value laid out as this format stores it."""
        array = keras.ops.convert_to_numpy(self.variable)
        array = array.T if self.transpose else array.reshape(self.google_shape)
        return np.ascontiguousarray(array.T if self.transposed else array)


def same_shape(name: str, variable) -> Tensor:
    return Tensor(name, variable, shape_of(variable))


def _block_mappings(block, prefix: str) -> list[Tensor]:
    """Google's `layer_i/...` tensors for one keras-hub `TransformerEncoder` (post-LN)."""
    attention = getattr(block, "_self_attention_layer", None)
    if attention is None or not hasattr(block, "_feedforward_intermediate_dense"):
        raise TypeError(f"Google checkpoints map onto keras_hub TransformerEncoder blocks only; "
                        f"block {block.name!r} is a {type(block).__name__}")
    tensors = []
    for part in ("query", "key", "value"):
        dense = getattr(attention, f"{part}_dense")
        # EinsumDense keeps heads apart: kernel [hidden, heads, head_size]; Google has [hidden, hidden].
        hidden, heads, head_size = shape_of(dense.kernel)
        tensors += [Tensor(f"{prefix}attention/self/{part}/kernel", dense.kernel, (hidden, heads * head_size)),
                    Tensor(f"{prefix}attention/self/{part}/bias", dense.bias, (heads * head_size,))]
    heads, head_size, hidden = shape_of(attention.output_dense.kernel)
    tensors.append(Tensor(f"{prefix}attention/output/dense/kernel", attention.output_dense.kernel,
                          (heads * head_size, hidden)))
    named = {"attention/output/dense/": attention.output_dense, "attention/output/LayerNorm/":
             block._self_attention_layer_norm, "intermediate/dense/": block._feedforward_intermediate_dense,
             "output/dense/": block._feedforward_output_dense, "output/LayerNorm/": block._feedforward_layer_norm}
    for part, layer in named.items():
        leaves = ("gamma", "beta") if "LayerNorm" in part else ("bias",) if part.startswith("attention") else \
            ("kernel", "bias")
        tensors += [same_shape(prefix + part + leaf, getattr(layer, leaf)) for leaf in leaves]
    return tensors


def google_mappings(encoder: BertEncoder, masked_lm_head=None, next_sentence_head=None,
                    prefix: str = "bert/") -> list[Tensor]:
    """Every variable of the encoder (and given heads) with its name and shape in a Google checkpoint."""
    # Every format ties the MLM output matrix to word_embeddings: an untied head has no tensor there.
    if masked_lm_head is not None and masked_lm_head.token_embedding is not encoder.token_embedding:
        raise ValueError("masked_lm_head must be tied to this encoder's token_embedding "
                         "(build it with common.heads.masked_lm_head(encoder))")
    named = [("embeddings/word_embeddings", encoder.token_embedding.embeddings)]
    # BERT4Rec-style encoders have no segment table / pooler; their checkpoints have none either.
    if encoder.segment_embedding is not None:
        named.append(("embeddings/token_type_embeddings", encoder.segment_embedding.embeddings))
    named += [("embeddings/position_embeddings", encoder.position_embedding.position_embeddings),
              ("embeddings/LayerNorm/gamma", encoder.embeddings_layer_norm.gamma),
              ("embeddings/LayerNorm/beta", encoder.embeddings_layer_norm.beta)]
    tensors = [same_shape(prefix + name, variable) for name, variable in named]
    for index, block in enumerate(encoder.transformer_layers):
        tensors += _block_mappings(block, f"{prefix}encoder/layer_{index}/")
    if encoder.pooler_dense is not None:
        tensors += [same_shape(f"{prefix}pooler/dense/{leaf}", getattr(encoder.pooler_dense, leaf))
                    for leaf in ("kernel", "bias")]
    if masked_lm_head is not None:
        dense, norm = masked_lm_head._intermediate_dense, masked_lm_head._intermediate_layer_norm
        tensors += [same_shape("cls/predictions/transform/dense/kernel", dense.kernel),
                    same_shape("cls/predictions/transform/dense/bias", dense.bias),
                    same_shape("cls/predictions/transform/LayerNorm/gamma", norm.gamma),
                    same_shape("cls/predictions/transform/LayerNorm/beta", norm.beta),
                    same_shape("cls/predictions/output_bias", masked_lm_head._bias)]
    if next_sentence_head is not None:
        # Google stores the NSP matrix as [2, hidden], the transpose of a Keras Dense kernel.
        tensors += [Tensor("cls/seq_relationship/output_weights", next_sentence_head.kernel,
                           shape_of(next_sentence_head.kernel)[::-1], transpose=True),
                    same_shape("cls/seq_relationship/output_bias", next_sentence_head.bias)]
    return tensors


def assign_all(tensors: list[Tensor], shapes: Mapping[str, tuple], read: Callable[[str], np.ndarray],
               source: str, what: str = "checkpoint", hint: str = "") -> list[str]:
    """Assigns every tensor's value from `read(name)` only if all are present, shaped and float.

    `shapes`: every name the source holds -> its shape. Names no tensor asks for are ignored
    (optimizer slots, heads not asked for). On any problem one `CheckpointMismatchError` lists them
    all and no variable changes. Returns the names read.
    """
    missing = [f"{t.name} (expected shape {format_shape(t.shape)})" for t in tensors if t.name not in shapes]
    wrong = [f"{t.name}: expected {format_shape(t.shape)}, found {format_shape(shapes[t.name])}"
             for t in tensors if t.name in shapes and tuple(shapes[t.name]) != t.shape]
    values = []
    for t in tensors if not missing and not wrong else []:
        array = np.asarray(read(t.name))
        if np.issubdtype(array.dtype, np.floating):
            values.append(t.to_variable(array))
        else:
            wrong.append(f"{t.name}: expected a float tensor, found {array.dtype}")
    if missing or wrong:
        lines = [f"{what} {source} does not match the model:"]
        lines += format_groups([("missing variables", missing), ("shape/dtype mismatches", wrong)])
        if missing:  # a wrong name prefix makes everything missing; real names make that obvious
            lines.append(f"  the {what} holds {len(shapes)} tensors, e.g. {', '.join(sorted(shapes)[:5])}")
        raise CheckpointMismatchError("\n".join(lines + ([f"  ({hint})"] if hint else [])))
    for t, value in zip(tensors, values):
        t.variable.assign(value)
    return [t.name for t in tensors]
