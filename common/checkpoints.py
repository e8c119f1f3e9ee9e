"""Checkpoints: our own resumable save/restore (tf.train.Checkpoint), and pretrained weights.

Our checkpoints restore all or nothing (`restore_latest`, `restore_checkpoint`): a model that does
not match gets one `CheckpointMismatchError` naming what is missing, unused or reshaped, or which
variables changed between trainable and frozen. `write_model_folder` / `read_model_folder` keep
what rebuilding a model needs beside its checkpoints.
Pretrained sources (`warm_start` takes any): our own model folders; Google's TF1 BERT checkpoints
(also BERT4Rec's, same names), read and written with the original variable names; keras-hub
presets; Hugging Face BERT folders (safetensors, with the `cls.*` pre-training heads); bert-chainer's
`arrays_bert_model.ckpt.npz`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import os
import shutil
import tempfile
from typing import NamedTuple

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from common.config import BertConfig
from common.encoder import LAYER_NORM_EPSILON, BertEncoder
from common.io_utils import atomic_output, atomic_write_json, read_json


def make_checkpoint_manager(directory: str, max_to_keep: int = 5, **trackables):
    """A `tf.train.Checkpoint` over `trackables` (model=..., optimizer=..., step=...) and its manager."""
    checkpoint = tf.train.Checkpoint(**trackables)
    manager = tf.train.CheckpointManager(checkpoint, os.fspath(directory), max_to_keep=max_to_keep)
    return checkpoint, manager


class CheckpointMismatchError(ValueError):
    """Weights that do not fit the model; the message lists every problem at once."""


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager):
    """Restores the newest checkpoint in the manager's directory; returns its path or None.

    All or nothing: see `restore_checkpoint`.
    """
    path = manager.latest_checkpoint
    if path:
        restore_checkpoint(checkpoint, path)
    return path


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, allow_unused: bool = False) -> None:
    """Restores `path` into `checkpoint` only if every variable of it has a value of the same shape.

    Matching is tf.train.Checkpoint's own: by attribute names from the root. Before anything is
    assigned, a single `CheckpointMismatchError` names the model variables the checkpoint lacks
    ("missing"), the checkpoint values no variable takes ("unused"; only under the root names that
    `checkpoint` has, so `Checkpoint(model=m)` may read a checkpoint of model+optimizer+step;
    `allow_unused=True` accepts every extra value) and shape mismatches. A changed set of trainable
    variables (e.g. `freeze_encoder` with other settings on resume) is reported as such.
    """
    graph = _ObjectGraph(path)
    problems = _compare_with_checkpoint(graph, checkpoint, allow_unused=allow_unused)
    if problems:
        raise CheckpointMismatchError(f"checkpoint {path} does not match the model:\n" + problems)
    checkpoint.restore(path).expect_partial()


_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_VALUE = "VARIABLE_VALUE"
_MAX_LISTED = 30


def _is_variable(value) -> bool:
    return isinstance(value, (tf.Variable, keras.Variable))


def _live_children(value) -> dict:
    if _is_variable(value):
        return {}
    return dict(tf.train.TrackableView(value).children(value))


class _ObjectGraph:
    """The object graph of a `tf.train.Checkpoint` file: nodes, their named children, their values."""

    def __init__(self, path: str):
        self.path = path
        self.reader = tf.train.load_checkpoint(path)
        self.shapes = self.reader.get_variable_to_shape_map()
        if _OBJECT_GRAPH_KEY not in self.shapes:
            raise CheckpointMismatchError(
                f"{path} is not a tf.train.Checkpoint (no object graph): a Google/TF1 checkpoint loads "
                f"with load_google_checkpoint or warm_start")
        self.dtypes = self.reader.get_variable_to_dtype_map()
        self.nodes = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            self.reader.get_tensor(_OBJECT_GRAPH_KEY)).nodes

    def children(self, node_id: int) -> dict[str, int]:
        return {child.local_name: child.node_id for child in self.nodes[node_id].children}

    def value_key(self, node_id: int) -> str | None:
        for attribute in self.nodes[node_id].attributes:
            if attribute.name == _VARIABLE_VALUE:
                return attribute.checkpoint_key
        return None

    def node_at(self, path: str, start: int = 0) -> int | None:
        node = start
        for name in filter(None, path.split("/")):
            node = self.children(node).get(name)
            if node is None:
                return None
        return node


def _first_paths(root, children_fn, key_fn, names=None) -> dict:
    """Depth-first, children in their order: key -> (first path reaching it, object)."""
    found = {}
    stack = [("", root)]
    while stack:
        path, value = stack.pop()
        key = key_fn(value)
        if key in found:
            continue
        found[key] = (path, value)
        children = list(children_fn(value).items())
        if not path and names is not None:
            children = [(name, child) for name, child in children if name in names]
        for name, child in reversed(children):
            stack.append((f"{path}/{name}" if path else name, child))
    return found


def _format_items(items: list[str]) -> list[str]:
    lines = [f"    {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
    return lines


def _compare_with_checkpoint(graph: _ObjectGraph, root, allow_unused: bool = False) -> str:
    """'' when every variable under `root` has a same-shaped value in `graph`; else the problems."""
    # 1. Every live variable by its first path (root children in order: model before optimizer),
    # looked up by the same names in the checkpoint. A path through the optimizer's positional
    # lists would pair a new variable with whatever value sits at its index.
    live_paths = _first_paths(root, _live_children, id)
    live_variables = {key: item for key, item in live_paths.items() if _is_variable(item[1])}
    live_to_node = {key: graph.node_at(path) for key, (path, _) in live_variables.items()}
    used_nodes = set(live_to_node.values())
    # 2. Every checkpoint value under the root names we have.
    root_names = set(_live_children(root)) - {"save_counter"}
    node_paths = _first_paths(0, graph.children, lambda node: node, names=root_names)
    checkpoint_values = {node: path for node, (path, _) in node_paths.items() if graph.value_key(node)}

    def live_path(value) -> str:
        return live_paths.get(id(value), ("?", None))[0]

    missing, unused, wrong_shape = [], [], []
    for key, (path, variable) in live_variables.items():
        node = live_to_node.get(key)
        value_key = None if node is None else graph.value_key(node)
        if value_key is None:
            missing.append((path, f"{path} {_format_shape(_shape(variable))}"))
            continue
        found = tuple(graph.shapes[value_key])
        if found != _shape(variable):
            wrong_shape.append((path, f"{path}: model {_format_shape(_shape(variable))}, "
                                      f"checkpoint {_format_shape(found)}"))
    if not allow_unused:
        for node, path in checkpoint_values.items():
            if node not in used_nodes:
                unused.append((path, f"{path} {_format_shape(graph.shapes[graph.value_key(node)])}"))

    # 3. The optimizer's list of trained variables, as recorded and as now (freezing changes it).
    trainable_lines = []
    for path, value in live_paths.values():
        if not path.endswith("/_trainable_variables") or _is_variable(value):
            continue
        node = graph.node_at(path)
        if node is None:
            continue
        recorded = [node_paths.get(child, (f"<node {child}>",))[0]
                    for child in graph.children(node).values()]
        now = [live_path(variable) for variable in _live_children(value).values()]
        if recorded == now or not now:  # an empty list: the optimizer is not built (reported below)
            continue
        # Only variables both sides have: added or removed layers are reported below as such.
        in_checkpoint = {path for path, _ in node_paths.values()}
        in_model = {path for path, _ in live_variables.values()}
        newly_trained = sorted(set(now) - set(recorded) & in_checkpoint)
        newly_frozen = sorted(set(recorded) - set(now) & in_model)
        if newly_trained or newly_frozen:
            trainable_lines.append(f"  the set of trainable variables differs from the checkpoint's "
                                   f"({path}; freeze_encoder with other settings?):")
            for title, items in (("trainable now, frozen in the checkpoint", newly_trained),
                                 ("frozen now, trainable in the checkpoint", newly_frozen)):
                if items:
                    trainable_lines.append(f"   {title} ({len(items)}):")
                    trainable_lines += _format_items(items)

    # Optimizer slots are positional: once the model or its trainable set differs they cannot
    # match either, so they are only counted then.
    def is_optimizer(path: str) -> bool:
        return path.split("/", 1)[0] == "optimizer"

    model_problems = [group for group in (missing, unused, wrong_shape)
                      if any(not is_optimizer(path) for path, _ in group)]
    summarise_optimizer = bool(model_problems or trainable_lines)
    lines = list(trainable_lines)
    optimizer = _live_children(root).get("optimizer")
    if unused and optimizer is not None and not getattr(optimizer, "built", True):
        lines.append("  the optimizer is not built yet: call optimizer.build(model.trainable_variables) "
                     "before restoring")
    hidden = 0
    for title, group in (("missing from the checkpoint", missing), ("unused checkpoint values", unused),
                         ("shape mismatches", wrong_shape)):
        items = [text for path, text in sorted(group)
                 if not (summarise_optimizer and is_optimizer(path))]
        hidden += len(group) - len(items)
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += _format_items(items)
    if hidden:
        lines.append(f"  (and {hidden} optimizer values that differ because of the above)")
    return "\n".join(lines)



# ==============================================================================================
# Pretrained weights: Google's TF1 BERT checkpoints, keras-hub presets and Hugging Face folders.
# ==============================================================================================

GOOGLE_CONFIG_FILE = "bert_config.json"
GOOGLE_CHECKPOINT_NAME = "bert_model.ckpt"
GOOGLE_VOCAB_FILE = "vocab.txt"


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
    return read_json(path, expect=dict)


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


# ---- Hugging Face heads ----------------------------------------------------------------------

def _hugging_face_head_arrays(folder: str, encoder: BertEncoder, masked_lm_head=None,
                              next_sentence_head=None) -> list[tuple[keras.Variable, np.ndarray, str]]:
    """(variable, value, tensor name) for the asked heads from `model.safetensors`, all checked first.

    Hugging Face's `BertForPreTraining` / `BertForMaskedLM` keep the MLM head as `cls.predictions.*`
    (transform dense + LayerNorm, output bias; the decoder matrix is tied to the word embeddings)
    and the NSP head as `cls.seq_relationship.*`. Linear weights are [out, in]: transposed here.
    """
    path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(path):
        raise CheckpointMismatchError(f"{folder}: the heads load from model.safetensors, which is absent")
    from safetensors import safe_open

    with safe_open(path, framework="np") as handle:
        names = set(handle.keys())
        wanted = []  # (hf name or alternatives, variable, transpose)
        if masked_lm_head is not None:
            if masked_lm_head.token_embedding is not encoder.token_embedding:
                raise ValueError("masked_lm_head must be tied to this encoder's token_embedding "
                                 "(build it with common.heads.masked_lm_head(encoder))")
            wanted += [
                (("cls.predictions.transform.dense.weight",), masked_lm_head._intermediate_dense.kernel, True),
                (("cls.predictions.transform.dense.bias",), masked_lm_head._intermediate_dense.bias, False),
                (("cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.gamma"),
                 masked_lm_head._intermediate_layer_norm.gamma, False),
                (("cls.predictions.transform.LayerNorm.bias", "cls.predictions.transform.LayerNorm.beta"),
                 masked_lm_head._intermediate_layer_norm.beta, False),
                (("cls.predictions.bias", "cls.predictions.decoder.bias"), masked_lm_head._bias, False),
            ]
        if next_sentence_head is not None:
            wanted += [(("cls.seq_relationship.weight",), next_sentence_head.kernel, True),
                       (("cls.seq_relationship.bias",), next_sentence_head.bias, False)]
        problems, loaded = [], []
        for alternatives, variable, transpose in wanted:
            name = next((candidate for candidate in alternatives if candidate in names), None)
            expected = _shape(variable)[::-1] if transpose else _shape(variable)
            if name is None:
                problems.append(f"{alternatives[0]}: missing (expected shape {_format_shape(expected)})")
                continue
            value = handle.get_tensor(name)
            if tuple(value.shape) != expected:
                problems.append(f"{name}: expected {_format_shape(expected)}, found {_format_shape(value.shape)}")
                continue
            loaded.append((variable, (value.T if transpose else value).astype(variable.dtype), name))
    if problems:
        raise CheckpointMismatchError(f"{path} does not match the heads:\n  " + "\n  ".join(problems)
                                      + "\n  (Hugging Face BertModel folders have no heads; "
                                        "BertForPreTraining / BertForMaskedLM folders do)")
    return loaded


def load_hugging_face_folder(folder: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
                             next_sentence_head=None) -> list[str]:
    """Loads a Hugging Face BERT folder (or keras-hub preset, encoder only) into `encoder` (+ heads).

    Everything is checked before anything is assigned. Returns the names of what was loaded.
    The encoder keeps its own `hidden_act`; `load_pretrained_folder` builds one with the folder's.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder}: no config.json (not a Hugging Face / keras-hub folder)")
    raw_config = _read_json(config_path)
    is_hugging_face = "model_type" in raw_config
    heads = []
    if is_hugging_face:
        _check_hugging_face_config(raw_config, config_path)
        hidden_act = raw_config.get("hidden_act", "gelu")
        if _HF_ACTIVATION_ALIASES.get(hidden_act, hidden_act) != encoder.config.hidden_act:
            logging.warning("%s: hidden_act %r, but the encoder computes %r", config_path, hidden_act,
                            encoder.config.hidden_act)
        if masked_lm_head is not None or next_sentence_head is not None:
            heads = _hugging_face_head_arrays(folder, encoder, masked_lm_head, next_sentence_head)
    elif masked_lm_head is not None or next_sentence_head is not None:
        raise CheckpointMismatchError(f"{folder}: a keras-hub backbone preset holds no pre-training heads")
    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    load_keras_hub_backbone(backbone, encoder)
    for variable, value, _ in heads:
        variable.assign(value)
    return [variable.path for variable in encoder.weights] + [name for _, _, name in heads]


# ---- our own checkpoints as a warm start -----------------------------------------------------

def load_model_checkpoint(path: str, encoder: BertEncoder, masked_lm_head=None,
                          next_sentence_head=None) -> list[str]:
    """Restores the encoder (+ heads) of a `tf.train.Checkpoint(model=...)` written by `train()`.

    The saved model is a Keras model whose `.encoder` is the BertEncoder (BertPretrainer,
    BertClassifier, Bert4Rec: heads `.masked_lm`, `.next_sentence`) or a bare BertEncoder. Every
    variable asked for must be in the checkpoint with its shape (else `CheckpointMismatchError`,
    nothing assigned); the optimizer, step and other heads are ignored. Returns the restored paths.
    """
    graph = _ObjectGraph(path)
    model_node = graph.children(0).get("model")
    if model_node is None:
        raise CheckpointMismatchError(f"checkpoint {path} has no 'model' (its objects: "
                                      f"{', '.join(sorted(graph.children(0)))})")
    saved_parts = graph.children(model_node)
    if "encoder" in saved_parts:
        parts = {"encoder": encoder}
        for name, head in (("masked_lm", masked_lm_head), ("next_sentence", next_sentence_head)):
            if head is None:
                continue
            if name not in saved_parts:
                raise CheckpointMismatchError(
                    f"checkpoint {path} has no {name} head: its model holds {', '.join(sorted(saved_parts))}")
            parts[name] = head
        model = tf.train.Checkpoint(**parts)
    elif "token_embedding" in saved_parts:
        if masked_lm_head is not None or next_sentence_head is not None:
            raise CheckpointMismatchError(f"checkpoint {path} holds a bare encoder: no heads to load")
        model = encoder
    else:
        raise CheckpointMismatchError(f"checkpoint {path}: its model has neither an encoder nor embeddings "
                                      f"(it holds {', '.join(sorted(saved_parts))})")
    root = tf.train.Checkpoint(model=model)
    problems = _compare_with_checkpoint(graph, root, allow_unused=True)
    if problems:
        raise CheckpointMismatchError(f"checkpoint {path} does not match the model:\n" + problems)
    root.read(path).expect_partial()
    live = _first_paths(root, _live_children, id)
    return sorted(path for path, value in live.values() if _is_variable(value))


# ---- bert-chainer npz --------------------------------------------------------------------------

CHAINER_NPZ_NAME = "arrays_bert_model.ckpt.npz"

# bert-chainer's convert_tf_checkpoint_to_chainer.py renames Google's tensors by these rules
# (dense kernels become Chainer `W` = kernel transposed, `bias` -> `b`).
_CHAINER_LAYER_PARTS = {
    "attention/self/query/": "attention/query/",
    "attention/self/key/": "attention/key/",
    "attention/self/value/": "attention/value/",
    "attention/output/dense/": "attention_output_dense/",
    "attention/output/LayerNorm/": "attention_output_ln/",
    "intermediate/dense/": "intermediate_dense1/",
    "output/dense/": "intermediate_dense2/",
    "output/LayerNorm/": "intermediate_ln/",
}
_CHAINER_FIXED_NAMES = {
    "bert/embeddings/word_embeddings": "bert/word_embeddings/W",
    "bert/embeddings/token_type_embeddings": "bert/token_type_embeddings/W",
    "bert/embeddings/position_embeddings": "bert/position_embeddings/W",
    "bert/embeddings/LayerNorm/gamma": "bert/post_embedding_ln/gamma",
    "bert/embeddings/LayerNorm/beta": "bert/post_embedding_ln/beta",
    "bert/pooler/dense/kernel": "bert/pooler/W",
    "bert/pooler/dense/bias": "bert/pooler/b",
    "cls/predictions/transform/dense/kernel": "cls/predictions/transform/dense/W",
    "cls/predictions/transform/dense/bias": "cls/predictions/transform/dense/b",
    "cls/predictions/transform/LayerNorm/gamma": "cls/predictions/transform_ln/gamma",
    "cls/predictions/transform/LayerNorm/beta": "cls/predictions/transform_ln/beta",
    "cls/predictions/output_bias": "cls/predictions/output_b",
    "cls/seq_relationship/output_weights": "cls/seq_relationship/output_weights",
    "cls/seq_relationship/output_bias": "cls/seq_relationship/output_b",
}
_LEAF_NAMES = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta"}


def chainer_name(google_name: str) -> tuple[str, bool]:
    """Google tensor name -> (bert-chainer npz name, whether the array is transposed)."""
    transposed = google_name.endswith("/kernel")
    if google_name in _CHAINER_FIXED_NAMES:
        return _CHAINER_FIXED_NAMES[google_name], transposed
    prefix, _, rest = google_name.partition("/encoder/")
    layer, _, part = rest.partition("/")
    directory, _, leaf = part.rpartition("/")
    renamed = _CHAINER_LAYER_PARTS.get(directory + "/")
    if prefix != "bert" or not layer.startswith("layer_") or renamed is None or leaf not in _LEAF_NAMES:
        raise ValueError(f"no bert-chainer name for {google_name!r}")
    return f"bert/encoder/{layer}/{renamed}{_LEAF_NAMES[leaf]}", transposed


def _chainer_mappings(encoder, masked_lm_head=None, next_sentence_head=None):
    """(npz name, transposed, Google mapping) for every variable of the encoder and given heads."""
    result = []
    for mapping in _google_weight_mappings(encoder, masked_lm_head, next_sentence_head):
        name, transposed = chainer_name(mapping.checkpoint_name)
        result.append((name, transposed, mapping))
    return result


def resolve_chainer_npz(path: str | os.PathLike) -> str:
    """The npz from its path or from a folder holding `arrays_bert_model.ckpt.npz`."""
    path = os.fspath(path)
    candidate = os.path.join(path, CHAINER_NPZ_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(candidate):
        raise FileNotFoundError(f"no bert-chainer npz at {path}")
    return candidate


def load_chainer_npz(path: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
                     next_sentence_head=None) -> list[str]:
    """Loads bert-chainer's `arrays_bert_model.ckpt.npz` (Google weights renamed for Chainer).

    All or nothing as `load_google_checkpoint`: missing / wrongly shaped arrays are listed in one
    `CheckpointMismatchError` and nothing is assigned; extra arrays are ignored. Returns npz names.
    """
    path = resolve_chainer_npz(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CheckpointMismatchError(f"{path}: not a readable npz archive ({error})") from None
    with archive:
        available = set(archive.files)
        missing, wrong_shape, values = [], [], []
        for name, transposed, mapping in _chainer_mappings(encoder, masked_lm_head, next_sentence_head):
            expected = mapping.checkpoint_shape[::-1] if transposed else mapping.checkpoint_shape
            if name not in available:
                missing.append(f"{name} (expected shape {_format_shape(expected)})")
                continue
            array = archive[name]
            if tuple(array.shape) != tuple(expected):
                wrong_shape.append(f"{name}: expected {_format_shape(expected)}, found {_format_shape(array.shape)}")
                continue
            if not np.issubdtype(array.dtype, np.floating):
                wrong_shape.append(f"{name}: expected a float array, found {array.dtype}")
                continue
            values.append((name, mapping, mapping.to_variable(array.T if transposed else array)))
    if missing or wrong_shape:
        lines = [f"bert-chainer npz {path} does not match the model:"]
        for title, problems in (("missing arrays", missing), ("shape/dtype mismatches", wrong_shape)):
            if problems:
                lines.append(f"  {title} ({len(problems)}):")
                lines += _format_items(problems)
        if missing:
            lines.append(f"  the npz holds {len(available)} arrays, e.g. {', '.join(sorted(available)[:5])}")
        raise CheckpointMismatchError("\n".join(lines))
    for _, mapping, value in values:
        mapping.variable.assign(value)
    return [name for name, _, _ in values]


def save_chainer_npz(encoder: BertEncoder, path: str | os.PathLike, masked_lm_head=None,
                     next_sentence_head=None) -> str:
    """Writes the weights as bert-chainer's converter would (atomically); returns `path`."""

    path = os.fspath(path)
    arrays = {}
    for name, transposed, mapping in _chainer_mappings(encoder, masked_lm_head, next_sentence_head):
        array = mapping.to_checkpoint(keras.ops.convert_to_numpy(mapping.variable))
        arrays[name] = np.ascontiguousarray(array.T if transposed else array)
    with atomic_output(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


# ---- warm start --------------------------------------------------------------------------------

def _is_object_checkpoint(path: str) -> bool:
    try:
        return _OBJECT_GRAPH_KEY in tf.train.load_checkpoint(path).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError):
        return False


def _warm_start_source(source: str) -> tuple[str, str]:
    """(kind, path): kind is 'model_checkpoint', 'google', 'chainer' or 'hugging_face'."""
    if os.path.isfile(source):
        if source.endswith(".npz"):
            return "chainer", source
        if source.endswith(".index") and _is_object_checkpoint(source[:-len(".index")]):
            return "model_checkpoint", source[:-len(".index")]
        if source.endswith(".index"):
            return "google", source[:-len(".index")]
        raise FileNotFoundError(f"{source}: not a checkpoint (expected a folder, a checkpoint prefix "
                                f"or a bert-chainer .npz)")
    if os.path.isdir(source):
        latest = tf.train.latest_checkpoint(source)
        if latest and _is_object_checkpoint(latest):
            return "model_checkpoint", latest
        if os.path.isfile(os.path.join(source, CHAINER_NPZ_NAME)):
            return "chainer", os.path.join(source, CHAINER_NPZ_NAME)
        if latest or os.path.isfile(os.path.join(source, GOOGLE_CHECKPOINT_NAME + ".index")):
            return "google", resolve_google_checkpoint(source)
        if os.path.isfile(os.path.join(source, "config.json")):
            return "hugging_face", source
        raise FileNotFoundError(
            f"{source}: no checkpoint in this folder: expected our model folder (tf.train.Checkpoint "
            f"files + 'checkpoint'), Google's {GOOGLE_CHECKPOINT_NAME}.index, {CHAINER_NPZ_NAME} or a "
            f"Hugging Face / keras-hub config.json")
    if tf.io.gfile.exists(source + ".index"):
        return ("model_checkpoint" if _is_object_checkpoint(source) else "google"), source
    raise FileNotFoundError(f"no such checkpoint, folder or npz: {source}")


def warm_start(source: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
               next_sentence_head=None) -> str:
    """Initialises `encoder` (and the given heads) from pre-trained weights; returns a log line.

    `source`: one of our model folders or checkpoint prefixes (`tf.train.Checkpoint` written by
    `common.training.train` with `model=` a model whose `.encoder` is the BertEncoder, e.g. a
    BertPretrainer; optimizer and step are ignored), a Google TF1 checkpoint (prefix or folder), a
    Hugging Face / keras-hub folder, or a bert-chainer npz (or a folder holding one).
    Warm start is not resume: the caller keeps its own optimizer, step counter and model_dir.
    All or nothing: on any missing or wrongly shaped weight a `CheckpointMismatchError` lists them
    and nothing is assigned.
    """
    kind, path = _warm_start_source(os.fspath(source))
    if kind == "model_checkpoint":
        names = load_model_checkpoint(path, encoder, masked_lm_head, next_sentence_head)
        what = "model checkpoint"
    elif kind == "google":
        names = load_google_checkpoint(path, encoder, masked_lm_head, next_sentence_head)
        what = "Google checkpoint"
    elif kind == "chainer":
        names = load_chainer_npz(path, encoder, masked_lm_head, next_sentence_head)
        what = "bert-chainer npz"
    else:
        names = load_hugging_face_folder(path, encoder, masked_lm_head, next_sentence_head)
        what = "Hugging Face / keras-hub folder"
    heads = [name for name, head in (("masked-LM head", masked_lm_head),
                                     ("next-sentence head", next_sentence_head)) if head is not None]
    message = (f"warm start from {what} {path}: encoder{''.join(', ' + head for head in heads)} "
               f"({len(names)} tensors)")
    logging.info(message)
    return message


# ---- model folders -----------------------------------------------------------------------------

MODEL_CONFIG_FILE = GOOGLE_CONFIG_FILE
MODEL_VOCAB_FILE = GOOGLE_VOCAB_FILE
MODEL_LABELS_FILE = "labels.json"
MODEL_RUN_CONFIG_FILE = "run_config.json"


class ModelFolder(NamedTuple):
    config: BertConfig
    vocab_path: str | None
    labels: list | None
    run_config: dict | None
    checkpoint_path: str | None  # newest tf.train.Checkpoint in the folder; None before training


def write_model_folder(model_dir: str | os.PathLike, config: BertConfig, vocab_file: str | None = None,
                       labels=None, run_config: dict | None = None) -> str:
    """Writes what rebuilding the model needs beside its checkpoints: `bert_config.json`, a copy
    of the vocabulary as `vocab.txt`, `labels.json` (list), `run_config.json` (flags). Each file is
    written atomically; returns `model_dir`."""

    model_dir = os.fspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    config.to_json_file(os.path.join(model_dir, MODEL_CONFIG_FILE))
    if vocab_file is not None:
        vocab_file = os.fspath(vocab_file)
        target = os.path.join(model_dir, MODEL_VOCAB_FILE)
        if not os.path.exists(target) or not os.path.samefile(vocab_file, target):
            with open(vocab_file, "rb") as source, atomic_output(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
    if labels is not None:
        atomic_write_json(os.path.join(model_dir, MODEL_LABELS_FILE), list(labels))
    if run_config is not None:
        atomic_write_json(os.path.join(model_dir, MODEL_RUN_CONFIG_FILE), dict(run_config))
    return model_dir


def read_model_folder(model_dir: str | os.PathLike) -> ModelFolder:
    """What `write_model_folder` wrote, plus the newest checkpoint (None when there is none)."""
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{model_dir}: no {MODEL_CONFIG_FILE}; not a model folder "
                                f"(written by write_model_folder)")
    config = BertConfig.from_json_file(config_path)
    vocab_path = os.path.join(model_dir, MODEL_VOCAB_FILE)
    labels_path = os.path.join(model_dir, MODEL_LABELS_FILE)
    run_config_path = os.path.join(model_dir, MODEL_RUN_CONFIG_FILE)
    labels = read_json(labels_path) if os.path.isfile(labels_path) else None
    if labels is not None and not isinstance(labels, list):
        raise ValueError(f"{labels_path}:1: expected a JSON list of labels")
    run_config = read_json(run_config_path) if os.path.isfile(run_config_path) else None
    if run_config is not None and not isinstance(run_config, dict):
        raise ValueError(f"{run_config_path}:1: expected a JSON object")
    return ModelFolder(config, vocab_path if os.path.isfile(vocab_path) else None, labels, run_config,
                       tf.train.latest_checkpoint(model_dir))
