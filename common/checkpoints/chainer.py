"""bert-chainer npz files: `arrays_bert_model.ckpt.npz` (Google's weights renamed for Chainer) and the
models Chainer's `save_npz` writes of BERT + a head (haradatm's `final.model`: `bert/...`, `output/W`, `output/b`)."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf

from common.checkpoints.mapping import CheckpointMismatchError, Tensor, assign_all, google_mappings, same_shape
from common.encoder import BertEncoder
from common.io_utils import atomic_output, isfile

CHAINER_NPZ_NAME = "arrays_bert_model.ckpt.npz"
OUTPUT_HEAD = "output"  # the Chainer link name of the original's BertDML / BertClassifier head (Linear3D)

# bert-chainer's convert_tf_checkpoint_to_chainer.py renames Google's tensors by these rules, in order
# (dense kernels become Chainer `W` = kernel transposed, `bias` -> `b`); the original's head `output` too.
_CHAINER_RENAMES = (("/embeddings/LayerNorm/", "/post_embedding_ln/"), ("/embeddings/", "/"),
                    ("_embeddings", "_embeddings/W"), ("/attention/output/", "/attention_output/"),
                    ("attention_output/dense", "attention_output_dense"), ("/attention/self/", "/attention/"),
                    ("/LayerNorm/", "_ln/"), ("/intermediate/dense/", "/intermediate_dense1/"),
                    ("/output/dense/", "/intermediate_dense2/"), ("/output_ln/", "/intermediate_ln/"),
                    ("/pooler/dense/", "/pooler/"), ("bias", "b"), ("kernel", "W"))


def chainer_name(google_name: str) -> tuple[str, bool]:
    """Google tensor name -> (bert-chainer npz name, whether the array is transposed)."""
    name = google_name
    for old, new in _CHAINER_RENAMES:
        name = name.replace(old, new)
    return name, google_name.endswith("/kernel")


def _tensors(encoder, masked_lm_head=None, next_sentence_head=None, output_head=None) -> list[Tensor]:
    tensors = google_mappings(encoder, masked_lm_head, next_sentence_head)
    if output_head is not None:  # a Keras Dense over the pooled output: Chainer's Linear W is its kernel.T
        tensors += [same_shape(f"{OUTPUT_HEAD}/kernel", output_head.kernel),
                    same_shape(f"{OUTPUT_HEAD}/bias", output_head.bias)]
    return [tensor.renamed(*chainer_name(tensor.name)) for tensor in tensors]


def resolve_chainer_npz(path: str | os.PathLike) -> str:
    """The npz from its path or from a folder holding `arrays_bert_model.ckpt.npz`."""
    path = os.fspath(path)
    candidate = os.path.join(path, CHAINER_NPZ_NAME) if tf.io.gfile.isdir(path) else path
    if not isfile(candidate):
        raise FileNotFoundError(f"no bert-chainer npz at {path}")
    return candidate


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an npz on any filesystem (name -> array)."""
    try:
        with tf.io.gfile.GFile(path, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise CheckpointMismatchError(f"{path}: not a readable npz archive ({error})") from None


def load_chainer_npz(path: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
                     next_sentence_head=None, output_head=None) -> list[str]:
    """Loads a bert-chainer npz into `encoder` (+ MLM / NSP heads, + `output_head`: a Dense for the
    original's `output` link, e.g. BERT-DML's 512-wide projection in `final.model`), all or nothing
    (`assign_all`); extra arrays are ignored. Returns the npz names."""
    path = resolve_chainer_npz(path)
    arrays = read_npz(path)
    return assign_all(_tensors(encoder, masked_lm_head, next_sentence_head, output_head),
                      {name: array.shape for name, array in arrays.items()}, arrays.__getitem__, path,
                      what="bert-chainer npz")


def save_chainer_npz(encoder: BertEncoder, path: str | os.PathLike, masked_lm_head=None,
                     next_sentence_head=None, output_head=None) -> str:
    """Writes the weights as bert-chainer's converter (or Chainer's `save_npz` of BERT + `output`) would."""
    path = os.fspath(path)
    arrays = {t.name: t.value() for t in _tensors(encoder, masked_lm_head, next_sentence_head, output_head)}
    buffer = io.BytesIO()  # np.savez seeks, which remote files cannot
    np.savez(buffer, **arrays)
    with atomic_output(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path
