"""Google's TF1 BERT checkpoints (`bert_model.ckpt`, also BERT4Rec's and run_pretraining's `model.ckpt-N`),
read and written with the original variable names, on any `tf.io.gfile` filesystem."""

from __future__ import annotations

import contextlib
import os
import uuid

import tensorflow as tf

from common.checkpoints.mapping import assign_all, google_mappings
from common.config import BertConfig
from common.encoder import BertEncoder
from common.io_utils import isfile

GOOGLE_CONFIG_FILE = "bert_config.json"
GOOGLE_CHECKPOINT_NAME = "bert_model.ckpt"
GOOGLE_VOCAB_FILE = "vocab.txt"


def resolve_google_checkpoint(checkpoint_path: str | os.PathLike) -> str:
    """A checkpoint prefix from a prefix (`.../bert_model.ckpt`) or a folder holding one."""
    checkpoint_path = candidate = os.fspath(checkpoint_path)
    if not tf.io.gfile.exists(checkpoint_path + ".index") and tf.io.gfile.isdir(checkpoint_path):
        # Google's zips have no `checkpoint` state file, so fall back to the conventional name.
        candidate = tf.train.latest_checkpoint(checkpoint_path) or os.path.join(checkpoint_path,
                                                                                 GOOGLE_CHECKPOINT_NAME)
    if not tf.io.gfile.exists(candidate + ".index"):
        raise FileNotFoundError(f"no TensorFlow checkpoint at {checkpoint_path} "
                                f"(expected {candidate}.index and its .data-* shard(s))")
    return candidate


def load_google_checkpoint(checkpoint_path: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
                           next_sentence_head=None, prefix: str = "bert/") -> list[str]:
    """Loads a Google TF1 BERT checkpoint into `encoder` (and the optional MLM / NSP heads), all or
    nothing (`assign_all`); extra tensors (optimizer slots, `global_step`, heads not asked for) are
    ignored. Returns the checkpoint names that were loaded."""
    path = resolve_google_checkpoint(checkpoint_path)
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    return assign_all(google_mappings(encoder, masked_lm_head, next_sentence_head, prefix),
                      reader.get_variable_to_shape_map(), reader.get_tensor, path)


def save_google_checkpoint(encoder: BertEncoder, path: str | os.PathLike, masked_lm_head=None,
                           next_sentence_head=None, prefix: str = "bert/") -> str:
    """Writes the weights under Google's TF1 names so `modeling.py`-era code can restore them.

    Written into a temp folder beside `path` and moved into place with the `.index` file last (any
    old `.index` removed first): readers see the old, the new or no checkpoint, never a mixture.
    """
    path = os.fspath(path) if "://" in os.fspath(path) else os.path.abspath(path)
    tensors = google_mappings(encoder, masked_lm_head, next_sentence_head, prefix)
    directory, basename = os.path.split(path)
    tf.io.gfile.makedirs(directory)
    temp_prefix = os.path.join(directory, f".{basename}.{uuid.uuid4().hex[:12]}.tmp", basename)
    try:
        # SaveV2 writes the TF1 bundle format (`.index` + `.data-*`) with exactly these names.
        tf.raw_ops.SaveV2(prefix=temp_prefix, tensor_names=[t.name for t in tensors],
                          shape_and_slices=[""] * len(tensors), tensors=[tf.constant(t.value()) for t in tensors])
        new_shards = {os.path.basename(shard): shard for shard in tf.io.gfile.glob(temp_prefix + ".data-*")}
        with contextlib.suppress(tf.errors.NotFoundError):
            tf.io.gfile.remove(path + ".index")
        for old_shard in tf.io.gfile.glob(path + ".data-*"):
            if os.path.basename(old_shard) not in new_shards:
                tf.io.gfile.remove(old_shard)
        for name, shard in new_shards.items():
            tf.io.gfile.rename(shard, os.path.join(directory, name), overwrite=True)
        tf.io.gfile.rename(temp_prefix + ".index", path + ".index", overwrite=True)
    finally:
        with contextlib.suppress(tf.errors.NotFoundError):
            tf.io.gfile.rmtree(os.path.dirname(temp_prefix))
    return path


def google_encoder(config: BertConfig, checkpoint_path: str, use_segment_embeddings: bool | None = None,
                   use_pooler: bool | None = None, prefix: str = "bert/") -> BertEncoder:
    """An encoder with a token-type table / pooler where the checkpoint has them (unless told), so
    BERT4Rec's checkpoints (neither) load without flags."""
    names = tf.compat.v1.train.NewCheckpointReader(checkpoint_path).get_variable_to_shape_map()
    if use_segment_embeddings is None:
        use_segment_embeddings = f"{prefix}embeddings/token_type_embeddings" in names
    if use_pooler is None:
        use_pooler = f"{prefix}pooler/dense/kernel" in names
    return BertEncoder(config, use_segment_embeddings=use_segment_embeddings, use_pooler=use_pooler)


def load_google_bert_folder(folder: str | os.PathLike, use_segment_embeddings: bool | None = None,
                            use_pooler: bool | None = None, prefix: str = "bert/"):
    """`bert_config.json` + `bert_model.ckpt` (+ `vocab.txt`) -> (config, loaded encoder, vocab path or None)."""
    folder = os.fspath(folder)
    config = BertConfig.from_json_file(os.path.join(folder, GOOGLE_CONFIG_FILE))
    checkpoint_path = resolve_google_checkpoint(os.path.join(folder, GOOGLE_CHECKPOINT_NAME))
    encoder = google_encoder(config, checkpoint_path, use_segment_embeddings, use_pooler, prefix)
    load_google_checkpoint(checkpoint_path, encoder, prefix=prefix)
    vocab_path = os.path.join(folder, GOOGLE_VOCAB_FILE)
    return config, encoder, vocab_path if isfile(vocab_path) else None

