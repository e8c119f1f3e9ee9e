r"""How far can rollout and attention flow see a perfect last layer through the layers below it?

    python bench/ovt_flow_ceiling.py [--programmes=80 --cause_run=20 --layers=3 --cases=20 --seed=0]

No model: each case is `--programmes` input tokens between [CLS] and [SEP], a contiguous run of
`--cause_run` of them is the cause, the last layer's [CLS] attention is ideal (all of it spread evenly
over the cause, `ovt_explain.attention.last_layer_controls`) and the `--layers - 1` layers below are
chosen families: uniform attention, uniform plus Dirichlet noise (concentration 100 down to 1: the
smaller, the more uneven each row), local attention (weights exp(-distance / width)), a sink on one
programme token, and sinks on [CLS] and [SEP]. Prints precision@5 of rollout and flow (mean over the
cases) with each family's mean row entropy (nats; uniform is ln(n)). It shows what the planted bench
measures with real models: flow ranks the input by how evenly the layers below spread their attention,
unless those layers are uniform, local, or dump it on special tokens. One JSON line.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from common.metrics import precision_at_k
from ovt_explain.attention import last_layer_controls

FLAGS = flags.FLAGS
flags.DEFINE_integer("programmes", 80, "Input tokens between [CLS] and [SEP].")
flags.DEFINE_integer("cause_run", 20, "Length of the cause's contiguous run of tokens.")
flags.DEFINE_integer("layers", 3, "Layers, the ideal last one included.")
flags.DEFINE_integer("cases", 20, "Random cases per family.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("k", 5, "precision@k.")


def families(rng: np.random.Generator) -> dict:
    """Name -> function n -> one layer's attention `[n, n]` (rows sum to 1)."""
    def dirichlet(concentration):
        return lambda n: rng.dirichlet(np.full(n, float(concentration)), size=n)

    def local(width):
        def make(n):
            index = np.arange(n)
            weights = np.exp(-np.abs(index[:, None] - index[None]) / width)
            return weights / weights.sum(1, keepdims=True)
        return make

    def sink_on(columns, share):
        def make(n):
            attention = np.full((n, n), (1 - share) / n)
            for column in columns(n):
                attention[:, column] += share / len(columns(n))
            return attention
        return make

    return {"uniform": lambda n: np.full((n, n), 1.0 / n),
            **{f"dirichlet{c}": dirichlet(c) for c in (100, 20, 5, 1)},
            "local1": local(1.0), "local3": local(3.0),
            "programme_sink": sink_on(lambda n: [1], 0.5),
            "cls_sep_sinks": sink_on(lambda n: [0, n - 1], 0.8)}


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    n = FLAGS.programmes + 2
    positions = np.arange(1, n - 1)
    results = {}
    for name, make in families(rng).items():
        scores = {"rollout": [], "flow": []}
        entropies = []
        for _ in range(FLAGS.cases):
            start = int(rng.integers(0, FLAGS.programmes - FLAGS.cause_run + 1))
            planted = np.zeros(FLAGS.programmes, bool)
            planted[start:start + FLAGS.cause_run] = True
            below = np.stack([make(n) for _ in range(FLAGS.layers)])
            entropies.append(float(-(below * np.log(np.maximum(below, 1e-300))).sum(-1).mean()))
            capacities = 0.5 * below + 0.5 * np.eye(n)[None]  # the last layer's row is replaced below
            controls = last_layer_controls(capacities, positions[planted].tolist(), num_workers=1)
            for method in scores:
                scores[method].append(precision_at_k(controls[f"{method}_ideal"][positions], planted, FLAGS.k))
        results[name] = {"entropy": round(float(np.mean(entropies)), 3),
                         **{f"p@{FLAGS.k}_{m}_ideal": round(float(np.mean(v)), 3) for m, v in scores.items()}}
    print(json.dumps({"bench": "ovt_flow_ceiling", "programmes": FLAGS.programmes, "cause_run": FLAGS.cause_run,
                      "layers": FLAGS.layers, "cases": FLAGS.cases, "seed": FLAGS.seed,
                      "max_entropy": round(float(np.log(n)), 3), "families": results}), flush=True)


if __name__ == "__main__":
    app.run(main)
