"""Checkpoints: our own resumable save/restore (tf.train.Checkpoint), and pretrained weights.

Pretrained sources: Google's TF1 BERT checkpoints (also BERT4Rec's, same names), read and written
with the original variable names; keras-hub presets; Hugging Face BERT folders (safetensors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import shutil
import tempfile
from typing import NamedTuple

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from common.config import BertConfig
from common.encoder import LAYER_NORM_EPSILON, BertEncoder


def make_checkpoint_manager(directory: str, max_to_keep: int = 5, **trackables):
    """A `tf.train.Checkpoint` over `trackables` (model=..., optimizer=..., step=...) and its manager."""
    checkpoint = tf.train.Checkpoint(**trackables)
    manager = tf.train.CheckpointManager(checkpoint, os.fspath(directory), max_to_keep=max_to_keep)
    return checkpoint, manager


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager):
    """Restores the newest checkpoint in the manager's directory; returns its path or None."""
    path = manager.latest_checkpoint
    if path:
        checkpoint.restore(path).expect_partial()
    return path


# ==============================================================================================
# Pretrained weights: Google's TF1 BERT checkpoints, keras-hub presets and Hugging Face folders.
# ==============================================================================================

GOOGLE_CONFIG_FILE = "bert_config.json"
GOOGLE_CHECKPOINT_NAME = "bert_model.ckpt"
GOOGLE_VOCAB_FILE = "vocab.txt"


class CheckpointMismatchError(ValueError):
    """Pretrained weights that do not fit the model; the message lists every problem at once."""


class PretrainedBert(NamedTuple):
    config: BertConfig
    encoder: BertEncoder
    vocab_path: str | None  # WordPiece vocabulary, one token a line; None when the folder has none
    lowercase: bool  # whether the tokenizer must lowercase / strip accents


@dataclasses.dataclass(frozen=True)
class _WeightMapping:
    """One checkpoint tensor <-> one Keras variable; they differ only by a reshape or a transpose."""

    checkpoint_name: str
    variable: keras.Variable
    checkpoint_shape: tuple
    transpose: bool = False

    def to_variable(self, array: np.ndarray) -> np.ndarray:
        array = array.T if self.transpose else array.reshape(tuple(self.variable.shape))
        return array.astype(self.variable.dtype)

    def to_checkpoint(self, array: np.ndarray) -> np.ndarray:
        return array.T if self.transpose else array.reshape(self.checkpoint_shape)


def _shape(variable) -> tuple:
    return tuple(int(size) for size in variable.shape)


def _same_shape(name: str, variable) -> _WeightMapping:
    return _WeightMapping(name, variable, _shape(variable))


def _transformer_block_mappings(block, block_prefix: str) -> list[_WeightMapping]:
    """Google's `layer_i/...` tensors for one keras-hub `TransformerEncoder` (post-LN)."""
    attention = getattr(block, "_self_attention_layer", None)
    if attention is None or not hasattr(block, "_feedforward_intermediate_dense"):
        raise TypeError(f"Google checkpoints map onto keras_hub TransformerEncoder blocks only; "
                        f"block {block.name!r} is a {type(block).__name__}")
    mappings = []
    for part, dense in (("query", attention.query_dense), ("key", attention.key_dense),
                        ("value", attention.value_dense)):
        # EinsumDense keeps heads apart: kernel [hidden, heads, head_size]; Google has [hidden, hidden].
        hidden, heads, head_size = _shape(dense.kernel)
        mappings.append(_WeightMapping(f"{block_prefix}attention/self/{part}/kernel", dense.kernel,
                                       (hidden, heads * head_size)))
        mappings.append(_WeightMapping(f"{block_prefix}attention/self/{part}/bias", dense.bias,
                                       (heads * head_size,)))
    heads, head_size, hidden = _shape(attention.output_dense.kernel)
    mappings += [
        _WeightMapping(f"{block_prefix}attention/output/dense/kernel", attention.output_dense.kernel,
                       (heads * head_size, hidden)),
        _same_shape(f"{block_prefix}attention/output/dense/bias", attention.output_dense.bias),
        _same_shape(f"{block_prefix}attention/output/LayerNorm/gamma", block._self_attention_layer_norm.gamma),
        _same_shape(f"{block_prefix}attention/output/LayerNorm/beta", block._self_attention_layer_norm.beta),
        _same_shape(f"{block_prefix}intermediate/dense/kernel", block._feedforward_intermediate_dense.kernel),
        _same_shape(f"{block_prefix}intermediate/dense/bias", block._feedforward_intermediate_dense.bias),
        _same_shape(f"{block_prefix}output/dense/kernel", block._feedforward_output_dense.kernel),
        _same_shape(f"{block_prefix}output/dense/bias", block._feedforward_output_dense.bias),
        _same_shape(f"{block_prefix}output/LayerNorm/gamma", block._feedforward_layer_norm.gamma),
        _same_shape(f"{block_prefix}output/LayerNorm/beta", block._feedforward_layer_norm.beta),
    ]
    return mappings


def _google_weight_mappings(encoder: BertEncoder, masked_lm_head=None, next_sentence_head=None,
                            prefix: str = "bert/") -> list[_WeightMapping]:
    """Every variable of the encoder (and given heads) with its name and shape in a Google checkpoint."""
    mappings = [_same_shape(f"{prefix}embeddings/word_embeddings", encoder.token_embedding.embeddings)]
    # BERT4Rec-style encoders have no segment table / pooler; their checkpoints have none either.
    if encoder.segment_embedding is not None:
        mappings.append(_same_shape(f"{prefix}embeddings/token_type_embeddings",
                                    encoder.segment_embedding.embeddings))
    mappings += [
        _same_shape(f"{prefix}embeddings/position_embeddings", encoder.position_embedding.position_embeddings),
        _same_shape(f"{prefix}embeddings/LayerNorm/gamma", encoder.embeddings_layer_norm.gamma),
        _same_shape(f"{prefix}embeddings/LayerNorm/beta", encoder.embeddings_layer_norm.beta),
    ]
    for index, block in enumerate(encoder.transformer_layers):
        mappings += _transformer_block_mappings(block, f"{prefix}encoder/layer_{index}/")
    if encoder.pooler_dense is not None:
        mappings += [_same_shape(f"{prefix}pooler/dense/kernel", encoder.pooler_dense.kernel),
                     _same_shape(f"{prefix}pooler/dense/bias", encoder.pooler_dense.bias)]
    if masked_lm_head is not None:
        # Google ties the MLM output matrix to word_embeddings; an untied head has no checkpoint tensor.
        if masked_lm_head.token_embedding is not encoder.token_embedding:
            raise ValueError("masked_lm_head must be tied to this encoder's token_embedding "
                             "(build it with common.heads.masked_lm_head(encoder))")
        mappings += [
            _same_shape("cls/predictions/transform/dense/kernel", masked_lm_head._intermediate_dense.kernel),
            _same_shape("cls/predictions/transform/dense/bias", masked_lm_head._intermediate_dense.bias),
            _same_shape("cls/predictions/transform/LayerNorm/gamma",
                        masked_lm_head._intermediate_layer_norm.gamma),
            _same_shape("cls/predictions/transform/LayerNorm/beta",
                        masked_lm_head._intermediate_layer_norm.beta),
            _same_shape("cls/predictions/output_bias", masked_lm_head._bias),
        ]
    if next_sentence_head is not None:
        # Google stores the NSP matrix as [2, hidden], the transpose of a Keras Dense kernel.
        kernel_shape = _shape(next_sentence_head.kernel)
        mappings += [
            _WeightMapping("cls/seq_relationship/output_weights", next_sentence_head.kernel,
                           kernel_shape[::-1], transpose=True),
            _same_shape("cls/seq_relationship/output_bias", next_sentence_head.bias),
        ]
    return mappings


def _format_shape(shape) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


def resolve_google_checkpoint(checkpoint_path: str | os.PathLike) -> str:
    """A checkpoint prefix from a prefix (`.../bert_model.ckpt`) or a folder holding one."""
    checkpoint_path = os.fspath(checkpoint_path)
    if tf.io.gfile.isdir(checkpoint_path):
        # Google's zips have no `checkpoint` state file, so fall back to the conventional name.
        latest = tf.train.latest_checkpoint(checkpoint_path)
        candidate = latest or os.path.join(checkpoint_path, GOOGLE_CHECKPOINT_NAME)
    else:
        candidate = checkpoint_path
    if not tf.io.gfile.exists(candidate + ".index"):
        raise FileNotFoundError(f"no TensorFlow checkpoint at {checkpoint_path} "
                                f"(expected {candidate}.index and its .data-* shard(s))")
    return candidate


def load_google_checkpoint(checkpoint_path: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
                           next_sentence_head=None, prefix: str = "bert/") -> list[str]:
    """Loads a Google TF1 BERT checkpoint into `encoder` (and the optional MLM / NSP heads).

    Everything is checked before anything is assigned: on any missing or wrongly shaped tensor a
    single `CheckpointMismatchError` lists them all and the model keeps its previous weights.
    Extra tensors (optimizer slots, `global_step`, heads not asked for) are ignored.
    Returns the checkpoint names that were loaded.
    """
    path = resolve_google_checkpoint(checkpoint_path)
    mappings = _google_weight_mappings(encoder, masked_lm_head, next_sentence_head, prefix)
    reader = tf.train.load_checkpoint(path)
    found_shapes = reader.get_variable_to_shape_map()
    found_dtypes = reader.get_variable_to_dtype_map()

    missing, wrong_shape, wrong_dtype = [], [], []
    for mapping in mappings:
        name = mapping.checkpoint_name
        if name not in found_shapes:
            missing.append(f"{name} (expected shape {_format_shape(mapping.checkpoint_shape)})")
        elif tuple(found_shapes[name]) != mapping.checkpoint_shape:
            wrong_shape.append(f"{name}: expected {_format_shape(mapping.checkpoint_shape)}, "
                               f"found {_format_shape(found_shapes[name])}")
        elif not found_dtypes[name].is_floating:
            wrong_dtype.append(f"{name}: expected a float tensor, found {found_dtypes[name].name}")
    if missing or wrong_shape or wrong_dtype:
        lines = [f"checkpoint {path} does not match the model:"]
        for title, problems in (("missing variables", missing), ("shape mismatches", wrong_shape),
                                ("dtype mismatches", wrong_dtype)):
            if problems:
                lines.append(f"  {title} ({len(problems)}):")
                lines += [f"    {problem}" for problem in problems]
        if missing:
            # A wrong `prefix` makes everything missing; showing real names makes that obvious.
            sample = sorted(found_shapes)[:5]
            lines.append(f"  the checkpoint holds {len(found_shapes)} variables, e.g. {', '.join(sample)}")
        raise CheckpointMismatchError("\n".join(lines))

    # Read and convert everything first so no assignment happens unless all tensors are ready.
    values = [mapping.to_variable(np.asarray(reader.get_tensor(mapping.checkpoint_name)))
              for mapping in mappings]
    for mapping, value in zip(mappings, values):
        mapping.variable.assign(value)
    return [mapping.checkpoint_name for mapping in mappings]


def save_google_checkpoint(encoder: BertEncoder, path: str | os.PathLike, masked_lm_head=None,
                           next_sentence_head=None, prefix: str = "bert/") -> str:
    """Writes the weights under Google's TF1 names so `modeling.py`-era code can restore them.

    The checkpoint is written into a temp folder beside `path` and moved into place with the
    `.index` file last (and any old `.index` removed first): readers see the old, the new or no
    checkpoint, never a mixture. Returns `path`.
    """
    path = os.fspath(path)
    mappings = _google_weight_mappings(encoder, masked_lm_head, next_sentence_head, prefix)
    names = [mapping.checkpoint_name for mapping in mappings]
    tensors = [tf.constant(mapping.to_checkpoint(keras.ops.convert_to_numpy(mapping.variable)))
               for mapping in mappings]

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    basename = os.path.basename(path)
    temp_dir = tempfile.mkdtemp(prefix=f".{basename}.", suffix=".tmp", dir=directory)
    try:
        temp_prefix = os.path.join(temp_dir, basename)
        # SaveV2 writes the TF1 bundle format (`.index` + `.data-*`) with exactly these names.
        tf.raw_ops.SaveV2(prefix=temp_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=tensors)
        new_shards = sorted(glob.glob(glob.escape(temp_prefix) + ".data-*"))
        new_shard_names = {os.path.basename(shard) for shard in new_shards}
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + ".index")
        for old_shard in glob.glob(glob.escape(path) + ".data-*"):
            if os.path.basename(old_shard) not in new_shard_names:
                os.remove(old_shard)
        for shard in new_shards:
            os.replace(shard, os.path.join(directory, os.path.basename(shard)))
        os.replace(temp_prefix + ".index", path + ".index")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return path


def _checkpoint_has(path: str, name: str) -> bool:
    return name in tf.train.load_checkpoint(path).get_variable_to_shape_map()


def load_google_bert_folder(folder: str | os.PathLike, use_segment_embeddings: bool | None = None,
                            use_pooler: bool | None = None, prefix: str = "bert/"):
    """`bert_config.json` + `bert_model.ckpt` (+ `vocab.txt`) -> (config, loaded encoder, vocab path).

    `use_segment_embeddings` / `use_pooler` default to what the checkpoint holds, so BERT4Rec's
    checkpoints (no token-type table, no pooler) load without flags. The vocab path is None when
    the folder has no `vocab.txt`.
    """
    folder = os.fspath(folder)
    config = BertConfig.from_json_file(os.path.join(folder, GOOGLE_CONFIG_FILE))
    checkpoint_path = resolve_google_checkpoint(os.path.join(folder, GOOGLE_CHECKPOINT_NAME))
    if use_segment_embeddings is None:
        use_segment_embeddings = _checkpoint_has(checkpoint_path, f"{prefix}embeddings/token_type_embeddings")
    if use_pooler is None:
        use_pooler = _checkpoint_has(checkpoint_path, f"{prefix}pooler/dense/kernel")
    encoder = BertEncoder(config, use_segment_embeddings=use_segment_embeddings, use_pooler=use_pooler)
    load_google_checkpoint(checkpoint_path, encoder, prefix=prefix)
    vocab_path = os.path.join(folder, GOOGLE_VOCAB_FILE)
    return config, encoder, vocab_path if os.path.isfile(vocab_path) else None


def _google_folder_is_lowercase(folder: str) -> bool:
    # Google names its releases `uncased_...` / `cased_...` / `multi_cased_...`; uncased is the default.
    name = os.path.basename(os.path.normpath(folder)).lower()
    return "uncased" in name or "cased" not in name


# ---- keras-hub presets and Hugging Face folders ----------------------------------------------

# Hugging Face activation names that mean one of ours.
_HF_ACTIVATION_ALIASES = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}


def load_keras_hub_backbone(backbone, encoder: BertEncoder) -> None:
    """Copies a `keras_hub.models.BertBackbone`'s weights into `encoder`, layer by layer.

    Both are built from the same keras-hub layer types, so variables pair up by their path inside
    each layer; every pair's shape is checked before anything is assigned.
    """
    layer_pairs = [("token_embedding", encoder.token_embedding),
                   ("position_embedding", encoder.position_embedding),
                   ("embeddings_layer_norm", encoder.embeddings_layer_norm)]
    if encoder.segment_embedding is not None:
        layer_pairs.append(("segment_embedding", encoder.segment_embedding))
    if len(encoder.transformer_layers) != backbone.num_layers:
        raise CheckpointMismatchError(f"backbone has {backbone.num_layers} transformer layers, "
                                      f"the encoder {len(encoder.transformer_layers)}")
    layer_pairs += [(f"transformer_layer_{index}", block) for index, block in enumerate(encoder.transformer_layers)]
    if encoder.pooler_dense is not None:
        layer_pairs.append(("pooled_dense", encoder.pooler_dense))

    def relative_path(variable, layer):
        return variable.path.split(layer.name + "/", 1)[-1]

    pairs, problems = [], []
    for source_name, target_layer in layer_pairs:
        source_layer = backbone.get_layer(source_name)
        sources = {relative_path(variable, source_layer): variable for variable in source_layer.weights}
        for target in target_layer.weights:
            key = relative_path(target, target_layer)
            source = sources.get(key)
            if source is None:
                problems.append(f"{source_name}/{key}: missing in the backbone")
            elif _shape(source) != _shape(target):
                problems.append(f"{source_name}/{key}: expected {_format_shape(_shape(target))}, "
                                f"found {_format_shape(_shape(source))}")
            else:
                pairs.append((target, source))
    if problems:
        raise CheckpointMismatchError("keras-hub backbone does not match the encoder:\n  "
                                      + "\n  ".join(problems))
    values = [keras.ops.convert_to_numpy(source) for _, source in pairs]
    for (target, _), value in zip(pairs, values):
        target.assign(value)


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _check_hugging_face_config(values: dict, source: str) -> None:
    """Refuses HF BERT variants our encoder would compute differently (before any weight is read)."""
    if values.get("model_type") != "bert":
        raise ValueError(f"{source}: model_type {values.get('model_type')!r} is not 'bert'")
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: key 'position_embedding_type' must be 'absolute' "
                         f"(got {values['position_embedding_type']!r})")
    # Our blocks use Google's LayerNorm epsilon; another value would silently change the numerics.
    epsilon = values.get("layer_norm_eps", LAYER_NORM_EPSILON)
    if not math.isclose(epsilon, LAYER_NORM_EPSILON, rel_tol=1e-6):
        raise ValueError(f"{source}: key 'layer_norm_eps' must be {LAYER_NORM_EPSILON} (got {epsilon!r})")


def _backbone_shape(backbone) -> dict:
    """The `bert_config.json` keys a keras-hub `BertBackbone` knows itself."""
    return {
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
    }


def _config_from_hugging_face(values: dict, backbone, source: str) -> BertConfig:
    hidden_act = values.get("hidden_act", "gelu")
    merged = _backbone_shape(backbone)
    merged.update({
        "type_vocab_size": values.get("type_vocab_size", backbone.num_segments),
        "hidden_act": _HF_ACTIVATION_ALIASES.get(hidden_act, hidden_act),
        "hidden_dropout_prob": values.get("hidden_dropout_prob", 0.1),
        "attention_probs_dropout_prob": values.get("attention_probs_dropout_prob", 0.1),
        "initializer_range": values.get("initializer_range", 0.02),
    })
    return BertConfig.from_dict(merged, source=source)


def _config_from_keras_hub(backbone, source: str) -> BertConfig:
    return BertConfig.from_dict({
        **_backbone_shape(backbone),
        # keras-hub's BertBackbone computes the tanh GELU whatever its weights were trained with.
        "hidden_act": "gelu_approximate",
        "hidden_dropout_prob": backbone.dropout,
        "attention_probs_dropout_prob": backbone.dropout,
        "initializer_range": 0.02,
    }, source=source)


def _keras_hub_tokenizer_files(folder: str) -> tuple[str | None, bool]:
    vocab_path = os.path.join(folder, "assets", "tokenizer", "vocabulary.txt")
    tokenizer_file = os.path.join(folder, "tokenizer.json")
    lowercase = True
    if os.path.isfile(tokenizer_file):
        lowercase = bool(_read_json(tokenizer_file).get("config", {}).get("lowercase", True))
    return (vocab_path if os.path.isfile(vocab_path) else None), lowercase


def _hugging_face_tokenizer_files(folder: str) -> tuple[str | None, bool]:
    vocab_path = os.path.join(folder, "vocab.txt")
    tokenizer_config = os.path.join(folder, "tokenizer_config.json")
    # Hugging Face's BertTokenizer lowercases unless told otherwise.
    lowercase = True
    if os.path.isfile(tokenizer_config):
        lowercase = bool(_read_json(tokenizer_config).get("do_lower_case", True))
    return (vocab_path if os.path.isfile(vocab_path) else None), lowercase


def load_pretrained_folder(folder: str | os.PathLike) -> PretrainedBert:
    """A local pretrained BERT folder -> `PretrainedBert(config, encoder, vocab_path, lowercase)`.

    Accepts Google's release layout (`bert_config.json` + `bert_model.ckpt.*`), a keras-hub preset
    (`save_to_preset`) and a Hugging Face BERT folder (`config.json` + `model.safetensors`). The
    encoder follows the source's numerics: Hugging Face's `hidden_act` (exact GELU for "gelu",
    which keras-hub's BertBackbone replaces by the tanh form) and keras-hub's tanh GELU for presets.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such pretrained folder: {folder}")
    if os.path.isfile(os.path.join(folder, GOOGLE_CONFIG_FILE)) and \
            os.path.isfile(os.path.join(folder, GOOGLE_CHECKPOINT_NAME + ".index")):
        config, encoder, vocab_path = load_google_bert_folder(folder)
        return PretrainedBert(config, encoder, vocab_path, _google_folder_is_lowercase(folder))

    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder} is not a pretrained BERT folder: expected {GOOGLE_CONFIG_FILE} + "
                                f"{GOOGLE_CHECKPOINT_NAME}.index (Google) or config.json "
                                f"(keras-hub preset / Hugging Face)")
    raw_config = _read_json(config_path)
    is_hugging_face = "model_type" in raw_config
    if is_hugging_face:
        _check_hugging_face_config(raw_config, config_path)
    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    if is_hugging_face:
        config = _config_from_hugging_face(raw_config, backbone, config_path)
        vocab_path, lowercase = _hugging_face_tokenizer_files(folder)
    else:
        config = _config_from_keras_hub(backbone, config_path)
        vocab_path, lowercase = _keras_hub_tokenizer_files(folder)
    encoder = BertEncoder(config)
    load_keras_hub_backbone(backbone, encoder)
    return PretrainedBert(config, encoder, vocab_path, lowercase)
