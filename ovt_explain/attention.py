"""Raw attention, attention rollout and exact attention flow (Abnar & Zuidema, ACL 2020).

All three start from the encoder's per-layer attention probabilities of ONE example: heads averaged,
padding cropped, the residual connection added as 0.5·A + 0.5·I and rows renormalised
(`prepare_attention`), in float64 (the encoder may return bfloat16).

Attention flow treats the layers as a graph: node (l, i) is token i after layer l (l = 0 is the
input), edge (l, i) -> (l-1, j) has capacity A_l[i, j]. The flow of output token u to input token v is
the maximum flow from (L, u) to (0, v); each row is then divided by its sum, as in the original's
`compute_flows`. One max-flow per (u, v) pair is needed; `attention_flow` solves them with a
compiled Dinic on the dense layered graph (numba), pairs spread over the CPU cores.
"""

from __future__ import annotations

import os
from typing import Sequence

import numba
import numpy as np


def _as_float64(array) -> np.ndarray:
    if hasattr(array, "numpy"):
        array = array.numpy()
    array = np.asarray(array)
    # bfloat16 (ml_dtypes) converts through float32; NumPy floats directly.
    if array.dtype.kind != "f" or array.dtype.itemsize < 4:
        array = array.astype(np.float32)
    return array.astype(np.float64)


def prepare_attention(attention, length: int | None = None, add_residual: bool = True) -> np.ndarray:
    """Per-layer attention of one example -> float64 `[layers, n, n]` graph capacities.

    `attention`: a list of per-layer `[heads, n, n]` arrays (as `BertEncoder` returns them for one
    batch row), an array `[layers, heads, n, n]`, or already head-averaged `[layers, n, n]`.
    `length`: the number of real tokens; padded query rows and key columns are cropped.
    `add_residual`: 0.5·A + 0.5·I (the residual connection), then rows renormalised to sum 1.
    """
    if isinstance(attention, (list, tuple)):
        attention = np.stack([_as_float64(layer) for layer in attention])
    attention = _as_float64(attention)
    if attention.ndim == 4:
        attention = attention.mean(axis=1)
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"attention must be [layers, heads, n, n] or [layers, n, n]; got {attention.shape}")
    if length is not None:
        attention = attention[:, :length, :length]
    if add_residual:
        attention = 0.5 * attention + 0.5 * np.eye(attention.shape[-1])[None]
    sums = attention.sum(axis=-1, keepdims=True)
    return np.divide(attention, sums, out=np.zeros_like(attention), where=sums > 0)


def raw_attention(attention, length: int | None = None, add_residual: bool = True) -> np.ndarray:
    """The original's "raw" attention of every layer `[layers, n, n]`: heads averaged plus the identity,
    rows renormalised (= 0.5·A + 0.5·I); `add_residual=False` gives the heads' mean alone."""
    return prepare_attention(attention, length, add_residual=add_residual)


def attention_rollout(attention, length: int | None = None, add_residual: bool = True,
                      all_layers: bool = False) -> np.ndarray:
    """Rollout: Ã_L · ... · Ã_1 with Ã = 0.5·A + 0.5·I renormalised; `[n, n]` (or `[layers, n, n]`,
    entry l being layer l+1's tokens over the input tokens, with `all_layers`)."""
    matrices = prepare_attention(attention, length, add_residual)
    joint = np.empty_like(matrices)
    joint[0] = matrices[0]
    for layer in range(1, len(matrices)):
        joint[layer] = matrices[layer] @ joint[layer - 1]
    return joint if all_layers else joint[-1]


# ---- exact attention flow ------------------------------------------------------------------------
# capacity[l, i, j] is the edge from node (l+1, i) down to node (l, j). The source is (L, u) and the
# sink (0, v): other top-layer nodes never carry flow and other input nodes are dead ends, so the
# search only ever visits the source, the middle layers 1..L-1 and the sink.

@numba.njit(cache=True, nogil=True)
def _max_flow(capacity, source, sink, residual, flow, dist, queue_layer, queue_index, pointer,
              path_layer, path_index):
    layers, n = capacity.shape[0], capacity.shape[1]
    residual[:] = capacity
    flow[:] = 0.0
    total = 0.0
    first_phase = True
    while True:
        # Exact early exit: every edge out of the source or into the sink saturated is a minimum cut,
        # which saves the final search that would only prove it.
        source_open = False
        for j in range(n):
            if residual[layers - 1, source, j] > 0.0:
                source_open = True
                break
        sink_open = False
        for k in range(n):
            if residual[0, k, sink] > 0.0:
                sink_open = True
                break
        if not (source_open and sink_open):
            break
        if first_phase:
            # Nothing flows yet, so the level graph is the layered graph itself: no search needed.
            dist[:] = -1
            dist[layers, source] = 0
            for layer in range(1, layers):
                dist[layer, :] = layers - layer
            dist[0, sink] = layers
            sink_dist = layers
        else:
            # Breadth-first search from the source over the residual graph: distance labels.
            dist[:] = -1
            dist[layers, source] = 0
            queue_layer[0], queue_index[0] = layers, source
            head, tail, sink_dist = 0, 1, -1
            while head < tail:
                layer, index = queue_layer[head], queue_index[head]
                head += 1
                d = dist[layer, index]
                if sink_dist >= 0 and d + 1 >= sink_dist:
                    break
                if layer == 1:
                    if residual[0, index, sink] > 0.0 and dist[0, sink] < 0:
                        dist[0, sink] = d + 1
                        sink_dist = d + 1
                else:
                    for j in range(n):
                        if dist[layer - 1, j] < 0 and residual[layer - 1, index, j] > 0.0:
                            dist[layer - 1, j] = d + 1
                            queue_layer[tail], queue_index[tail] = layer - 1, j
                            tail += 1
                if layer + 1 < layers:
                    # Backward (residual) edges: flow already sent along (layer+1, k) -> (layer, index).
                    for k in range(n):
                        if dist[layer + 1, k] < 0 and flow[layer, k, index] > 0.0:
                            dist[layer + 1, k] = d + 1
                            queue_layer[tail], queue_index[tail] = layer + 1, k
                            tail += 1
        if sink_dist < 0:
            break

        # Blocking flow by depth-first search with current-arc pointers. Arcs 0..n-1 go down to
        # (layer-1, j), arcs n..2n-1 go back up to (layer+1, k).
        pointer[:] = 0
        depth = 0
        path_layer[0], path_index[0] = layers, source
        while True:
            layer, index = path_layer[depth], path_index[depth]
            if layer == 0:
                bottleneck, cut = np.inf, 0
                for p in range(depth):
                    l0, i0, l1, i1 = path_layer[p], path_index[p], path_layer[p + 1], path_index[p + 1]
                    r = residual[l1, i0, i1] if l1 < l0 else flow[l0, i1, i0]
                    if r < bottleneck:
                        bottleneck, cut = r, p
                for p in range(depth):
                    l0, i0, l1, i1 = path_layer[p], path_index[p], path_layer[p + 1], path_index[p + 1]
                    if l1 < l0:
                        residual[l1, i0, i1] -= bottleneck
                        flow[l1, i0, i1] += bottleneck
                    else:
                        flow[l0, i1, i0] -= bottleneck
                        residual[l0, i1, i0] += bottleneck
                total += bottleneck
                # x - x == 0 exactly, so the bottleneck edge is saturated: resume from its tail.
                depth = cut
                continue
            d = dist[layer, index]
            arc = pointer[layer, index]
            found = False
            while arc < 2 * n:
                if arc < n:
                    if layer == 1:
                        if arc <= sink:
                            arc = sink
                            if residual[0, index, sink] > 0.0 and dist[0, sink] == d + 1:
                                found = True
                                next_layer, next_index = 0, sink
                                break
                        arc = n
                        continue
                    j = arc
                    if (dist[layer - 1, j] == d + 1 and d + 1 < sink_dist
                            and residual[layer - 1, index, j] > 0.0):
                        found = True
                        next_layer, next_index = layer - 1, j
                        break
                else:
                    # Backward edges cannot lead one level further in the first phase.
                    if layer + 1 >= layers or first_phase:
                        arc = 2 * n
                        break
                    k = arc - n
                    if dist[layer + 1, k] == d + 1 and d + 1 < sink_dist and flow[layer, k, index] > 0.0:
                        found = True
                        next_layer, next_index = layer + 1, k
                        break
                arc += 1
            pointer[layer, index] = arc
            if found:
                depth += 1
                path_layer[depth], path_index[depth] = next_layer, next_index
            else:
                # Dead end: drop it from this phase and advance the parent's arc.
                dist[layer, index] = -2
                if depth == 0:
                    break
                depth -= 1
                pointer[path_layer[depth], path_index[depth]] += 1
        first_phase = False
    return total


@numba.njit(cache=True, parallel=True)
def _max_flows(capacity, sources, sinks, num_workers):
    layers, n = capacity.shape[0], capacity.shape[1]
    values = np.zeros(len(sources))
    for worker in numba.prange(num_workers):
        residual = np.empty_like(capacity)
        flow = np.empty_like(capacity)
        dist = np.empty((layers + 1, n), np.int64)
        pointer = np.empty((layers + 1, n), np.int64)
        queue_layer = np.empty((layers + 1) * n, np.int64)
        queue_index = np.empty((layers + 1) * n, np.int64)
        path_layer = np.empty(4 * (layers + 1) * n + 2, np.int64)
        path_index = np.empty(4 * (layers + 1) * n + 2, np.int64)
        for pair in range(worker, len(sources), num_workers):
            values[pair] = _max_flow(capacity, sources[pair], sinks[pair], residual, flow, dist,
                                     queue_layer, queue_index, pointer, path_layer, path_index)
    return values


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def max_flow_values(capacities: np.ndarray, sources: Sequence[int], sinks: Sequence[int],
                    num_workers: int | None = None) -> np.ndarray:
    """Unnormalised max-flow from (L, source) to (0, sink) for each pair, capacities `[L, n, n]`."""
    capacities = np.ascontiguousarray(capacities, dtype=np.float64)
    sources = np.asarray(sources, dtype=np.int64)
    sinks = np.asarray(sinks, dtype=np.int64)
    if len(sources) == 0:
        return np.zeros(0)
    workers = min(num_workers or default_workers(), numba.config.NUMBA_NUM_THREADS, len(sources))
    numba.set_num_threads(workers)
    return _max_flows(capacities, sources, sinks, workers)


def attention_flow(attention, rows: Sequence[int] | int | None = None, length: int | None = None,
                   add_residual: bool = True, num_workers: int | None = None) -> np.ndarray:
    """Exact attention flow of the last layer's tokens to the input tokens.

    `attention`: per-head `[layers, heads, n, n]`, head-averaged `[layers, n, n]` or a list of
    per-layer arrays (see `prepare_attention`; `add_residual=False` takes the matrices as the
    capacities unchanged except row normalisation). `rows`: last-layer positions to compute (None:
    all); an int gives one row `[n]`. Returns `[len(rows), n]` (`[n, n]` for all rows), each row the
    max-flow values to every input token divided by their sum.
    """
    capacities = prepare_attention(attention, length, add_residual)
    n = capacities.shape[-1]
    single = isinstance(rows, (int, np.integer))
    row_list = np.arange(n) if rows is None else np.atleast_1d(np.asarray(rows, dtype=np.int64))
    if row_list.size and (row_list.min() < 0 or row_list.max() >= n):
        raise ValueError(f"rows {row_list.tolist()} out of range for {n} tokens")
    sources = np.repeat(row_list, n)
    sinks = np.tile(np.arange(n), len(row_list))
    values = max_flow_values(capacities, sources, sinks, num_workers).reshape(len(row_list), n)
    sums = values.sum(axis=1, keepdims=True)
    values = np.divide(values, sums, out=np.zeros_like(values), where=sums > 0)
    return values[0] if single else values


def attention_flow_all_layers(attention, rows: Sequence[int] | None = None, length: int | None = None,
                              add_residual: bool = True, num_workers: int | None = None) -> np.ndarray:
    """Flow of every layer's tokens to the input tokens, `[layers, len(rows), n]` (entry l: layer l+1),
    as the original draws its flow graph."""
    capacities = prepare_attention(attention, length, add_residual)
    return np.stack([attention_flow(capacities[: layer + 1], rows, add_residual=False,
                                    num_workers=num_workers)
                     for layer in range(len(capacities))])


def token_importance(attention, method: str, row: int = 0, length: int | None = None,
                     num_workers: int | None = None) -> np.ndarray:
    """Importance of each input token for output position `row` (0 = [CLS]) by one method:
    `raw` (last layer's attention), `rollout` or `flow`."""
    if method == "raw":
        return raw_attention(attention, length)[-1, row]
    if method == "rollout":
        return attention_rollout(attention, length)[row]
    if method == "flow":
        return attention_flow(attention, row, length, num_workers=num_workers)
    raise ValueError(f"unknown method {method!r}; expected raw, rollout or flow")


METHODS = ("raw", "rollout", "flow")


def last_layer_controls(capacities: np.ndarray, cause_positions: Sequence[int], row: int = 0,
                        num_workers: int | None = None) -> dict[str, np.ndarray]:
    """How much of rollout and flow the last layer decides, for output position `row` (0 = [CLS]).

    `capacities`: one example's graph `[layers, n, n]` (`prepare_attention`: 0.5·A + 0.5·I, [SEP] last);
    `cause_positions`: the input positions an ideal explanation should rank first. Returns `[n]` float64
    importances:
    - `rollout_blind` / `flow_blind`: the last layer's attention made uniform (a model-randomisation
      check: what the layers below say on their own);
    - `rollout_via_tokens`: rollout of the last layer's row without its `row`, [CLS] and [SEP] entries,
      i.e. without the residual path through `row`'s own lower-layer attention;
    - `rollout_ideal` / `flow_ideal`: the last layer's row replaced by an ideal one, its attention spread
      evenly over `cause_positions` (the residual half stays on `row`): what a last layer that attends
      to the cause alone would show through the layers below, i.e. how far those layers (frozen ones
      included) let rollout and flow see the last layer's choice.
    """
    capacities = np.asarray(capacities, dtype=np.float64)
    n = capacities.shape[-1]
    if not len(cause_positions):
        raise ValueError("cause_positions is empty")
    blind = capacities.copy()
    blind[-1] = 0.5 / n + 0.5 * np.eye(n)
    ideal = capacities.copy()
    ideal[-1, row] = 0.0
    ideal[-1, row, row] = 0.5
    ideal[-1, row, np.asarray(cause_positions)] += 0.5 / len(cause_positions)
    top = capacities[-1, row].copy()
    top[[row, 0, n - 1]] = 0.0
    below = attention_rollout(capacities[:-1], add_residual=False) if len(capacities) > 1 else np.eye(n)
    return {"rollout_blind": attention_rollout(blind, add_residual=False)[row],
            "flow_blind": attention_flow(blind, row, add_residual=False, num_workers=num_workers),
            "rollout_via_tokens": top @ below,
            "rollout_ideal": attention_rollout(ideal, add_residual=False)[row],
            "flow_ideal": attention_flow(ideal, row, add_residual=False, num_workers=num_workers)}
