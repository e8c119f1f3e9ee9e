"""Our resumable checkpoints (`tf.train.Checkpoint`): strict restore and resume, and warm start from them.

They restore all or nothing: a model that does not match gets one `CheckpointMismatchError` naming
what is missing, unused or reshaped, or which variables changed between trainable and frozen.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from common.checkpoints.mapping import CheckpointMismatchError, format_groups, format_shape, shape_of
from common.encoder import BertEncoder

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def make_checkpoint_manager(directory: str, max_to_keep: int = 5, **trackables):
    """A `tf.train.Checkpoint` over `trackables` (model=..., optimizer=..., step=...) and its manager."""
    checkpoint = tf.train.Checkpoint(**trackables)
    return checkpoint, tf.train.CheckpointManager(checkpoint, os.fspath(directory), max_to_keep=max_to_keep)


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager):
    """Restores the newest checkpoint in the manager's directory (all or nothing); returns its path or None."""
    path = manager.latest_checkpoint
    if path:
        restore_checkpoint(checkpoint, path)
    return path


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, allow_unused: bool = False) -> None:
    """Restores `path` into `checkpoint` only if every variable of it has a value of the same shape.

    Matching is tf.train.Checkpoint's own (attribute names from the root). Else one error names the
    variables the checkpoint lacks, its values no variable takes (only under `checkpoint`'s root names;
    `allow_unused=True` accepts all), shape mismatches, and a changed set of trainable variables."""
    _check(_ObjectGraph(path), checkpoint, allow_unused)
    checkpoint.restore(path).expect_partial()


def _is_variable(value) -> bool:
    return isinstance(value, (tf.Variable, keras.Variable))


def _live_children(value) -> dict:
    return {} if _is_variable(value) else dict(tf.train.TrackableView(value).children(value))


class _ObjectGraph:
    """The object graph of a `tf.train.Checkpoint` file: nodes, their named children, their values."""

    def __init__(self, path: str):
        self.path = path
        reader = tf.compat.v1.train.NewCheckpointReader(path)  # load_checkpoint takes ram:// prefixes for folders
        self.shapes = reader.get_variable_to_shape_map()
        if _OBJECT_GRAPH_KEY not in self.shapes:
            raise CheckpointMismatchError(f"{path} is not a tf.train.Checkpoint (no object graph): a Google/TF1 "
                                          f"checkpoint loads with load_google_checkpoint or warm_start")
        self.nodes = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            reader.get_tensor(_OBJECT_GRAPH_KEY)).nodes

    def children(self, node_id: int) -> dict[str, int]:
        return {child.local_name: child.node_id for child in self.nodes[node_id].children}

    def value_key(self, node_id: int | None) -> str | None:
        attributes = [] if node_id is None else self.nodes[node_id].attributes
        return next((a.checkpoint_key for a in attributes if a.name == "VARIABLE_VALUE"), None)

    def node_at(self, path: str) -> int | None:
        node = 0
        for name in filter(None, path.split("/")):
            node = self.children(node).get(name)
            if node is None:
                return None
        return node


def _first_paths(root, children_fn, key_fn, names=None) -> dict:
    """Depth-first, children in their order: key -> (first path reaching it, object)."""
    found, stack = {}, [("", root)]
    while stack:
        path, value = stack.pop()
        if key_fn(value) in found:
            continue
        found[key_fn(value)] = (path, value)
        children = [(name, child) for name, child in children_fn(value).items()
                    if path or names is None or name in names]
        stack += [(f"{path}/{name}" if path else name, child) for name, child in reversed(children)]
    return found


def _trainable_set_lines(graph, live_paths, node_paths, live_variables) -> list[str]:
    """The optimizer's list of trained variables, as recorded and as now (freezing changes it)."""
    lines = []
    for path, value in live_paths.values():
        node = graph.node_at(path) if path.endswith("/_trainable_variables") and not _is_variable(value) else None
        if node is None:
            continue
        recorded = [node_paths.get(child, (f"<node {child}>",))[0] for child in graph.children(node).values()]
        now = [live_paths.get(id(variable), ("?",))[0] for variable in _live_children(value).values()]
        if recorded == now or not now:  # an empty list: the optimizer is not built (reported elsewhere)
            continue
        # Only variables both sides have: added or removed layers are reported as such.
        newly_trained = sorted(set(now) - set(recorded) & {path for path, _ in node_paths.values()})
        newly_frozen = sorted(set(recorded) - set(now) & {path for path, _ in live_variables.values()})
        if newly_trained or newly_frozen:
            lines.append(f"  the set of trainable variables differs from the checkpoint's "
                         f"({path}; freeze_encoder with other settings?):")
            lines += format_groups([("trainable now, frozen in the checkpoint", newly_trained),
                                    ("frozen now, trainable in the checkpoint", newly_frozen)], indent="   ")
    return lines


def _check(graph: _ObjectGraph, root, allow_unused: bool = False) -> None:
    """Raises one `CheckpointMismatchError` unless every variable under `root` has a same-shaped value."""
    # Every live variable by its first path (root children in order: model before optimizer), looked
    # up by the same names in the checkpoint. A path through the optimizer's positional lists would
    # pair a new variable with whatever value sits at its index.
    live_paths = _first_paths(root, _live_children, id)
    live_variables = {key: item for key, item in live_paths.items() if _is_variable(item[1])}
    live_to_key = {key: graph.value_key(graph.node_at(path)) for key, (path, _) in live_variables.items()}
    # Every checkpoint value under the root names we have.
    node_paths = _first_paths(0, graph.children, lambda node: node, names=set(_live_children(root)) - {"save_counter"})
    missing, unused, wrong_shape = [], [], []
    for key, (path, variable) in live_variables.items():
        if live_to_key[key] is None:
            missing.append((path, f"{path} {format_shape(shape_of(variable))}"))
        elif tuple(graph.shapes[live_to_key[key]]) != shape_of(variable):
            wrong_shape.append((path, f"{path}: model {format_shape(shape_of(variable))}, checkpoint "
                                      f"{format_shape(graph.shapes[live_to_key[key]])}"))
    taken = set(live_to_key.values()) | {None}
    if not allow_unused:
        unused = [(path, f"{path} {format_shape(graph.shapes[graph.value_key(node)])}")
                  for node, (path, _) in node_paths.items() if graph.value_key(node) not in taken]
    lines = _trainable_set_lines(graph, live_paths, node_paths, live_variables)

    # Optimizer slots are positional: once the model or its trainable set differs they cannot match
    # either, so they are only counted then.
    def is_optimizer(path: str) -> bool:
        return path.split("/", 1)[0] == "optimizer"

    summarise = bool(lines) or any(not is_optimizer(path) for path, _ in missing + unused + wrong_shape)
    optimizer = _live_children(root).get("optimizer")
    if unused and optimizer is not None and not getattr(optimizer, "built", True):
        lines.append("  the optimizer is not built yet: call optimizer.build(model.trainable_variables) "
                     "before restoring")
    groups = [(title, [text for path, text in sorted(group) if not (summarise and is_optimizer(path))])
              for title, group in (("missing from the checkpoint", missing), ("unused checkpoint values", unused),
                                   ("shape mismatches", wrong_shape))]
    lines += format_groups(groups)
    hidden = len(missing + unused + wrong_shape) - sum(len(items) for _, items in groups)
    if hidden:
        lines.append(f"  (and {hidden} optimizer values that differ because of the above)")
    if lines:
        raise CheckpointMismatchError(f"checkpoint {graph.path} does not match the model:\n" + "\n".join(lines))


# ---- our own checkpoints as a warm start -----------------------------------------------------

def is_object_checkpoint(path: str) -> bool:
    try:
        return _OBJECT_GRAPH_KEY in tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError):
        return False


def load_model_checkpoint(path: str, encoder: BertEncoder, masked_lm_head=None, next_sentence_head=None,
                          other_heads: dict | None = None) -> list[str]:
    """The encoder (+ heads `.masked_lm`, `.next_sentence`, or `other_heads` by attribute, e.g. BertDML's
    `{"output_dense": dense}`) of a `tf.train.Checkpoint(model=...)` whose model has an `.encoder`
    (BertPretrainer, BertClassifier, BertDML, Bert4Rec) or is a bare BertEncoder; all or nothing, the
    optimizer, step and other heads ignored. Returns the restored paths."""
    graph = _ObjectGraph(path)
    model_node = graph.children(0).get("model")
    if model_node is None:
        raise CheckpointMismatchError(f"checkpoint {path} has no 'model' (its objects: "
                                      f"{', '.join(sorted(graph.children(0)))})")
    saved_parts = graph.children(model_node)
    heads = {name: head for name, head in (("masked_lm", masked_lm_head), ("next_sentence", next_sentence_head),
                                           *(other_heads or {}).items()) if head is not None}
    if "encoder" in saved_parts:
        absent = [name for name in heads if name not in saved_parts]
        if absent:
            raise CheckpointMismatchError(f"checkpoint {path} has no {', '.join(absent)} head: its model "
                                          f"holds {', '.join(sorted(saved_parts))}")
        model = tf.train.Checkpoint(encoder=encoder, **heads)
    elif "token_embedding" in saved_parts and not heads:
        model = encoder
    else:
        raise CheckpointMismatchError(
            f"checkpoint {path} holds a bare encoder: no heads to load" if "token_embedding" in saved_parts else
            f"checkpoint {path}: its model has neither an encoder nor embeddings (it holds "
            f"{', '.join(sorted(saved_parts))})")
    root = tf.train.Checkpoint(model=model)
    _check(graph, root, allow_unused=True)
    root.read(path).expect_partial()
    return sorted(path for path, value in _first_paths(root, _live_children, id).values() if _is_variable(value))
