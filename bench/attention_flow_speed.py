r"""Attention flow speed: `ovt_explain.attention.attention_flow` against the networkx reference.

    python bench/attention_flow_speed.py [--heads=8 --sharpness=3 --skip_reference]

Wall and CPU seconds (all threads) are printed: on a busy machine the CPU time / workers is what an
idle one would take. Targets (issue 7): 12 layers, 64 tokens, full last-layer matrix < 2 s; 128 tokens < 20 s; [CLS] row at
512 tokens < 60 s. The reference (Abnar & Zuidema's layered graph, networkx Edmonds-Karp per pair) runs
on sizes it can finish, beside ours on the same input, with the largest difference. Attention is the
softmax of Gaussian logits (x `--sharpness`) per head, heads averaged, residual added. One JSON line.
"""

from __future__ import annotations

import os

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("heads", 8, "Heads per layer (averaged).")
flags.DEFINE_float("sharpness", 3.0, "Scale of the attention logits: larger = peakier attention.")
flags.DEFINE_bool("skip_reference", False, "Leave out the (slow) networkx reference.")
flags.DEFINE_integer("num_workers", None, "Threads (default: all cores).")


def random_attention(rng, layers: int, tokens: int, heads: int, sharpness: float) -> np.ndarray:
    logits = rng.normal(size=(layers, heads, tokens, tokens)).astype(np.float32) * sharpness
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def main(argv):
    del argv
    from ovt_explain.attention import attention_flow, default_workers, prepare_attention

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    attention_flow(random_attention(rng, 2, 4, 1, 1.0))
    result = {"bench": "attention_flow_speed", "workers": FLAGS.num_workers or default_workers(),
              "heads": FLAGS.heads, "sharpness": FLAGS.sharpness,
              "compile_or_cache_load_s": round(time.perf_counter() - started, 2)}
    for name, layers, tokens, rows, target in (("L12_n64_full", 12, 64, None, 2.0),
                                               ("L12_n128_full", 12, 128, None, 20.0),
                                               ("L12_n512_cls", 12, 512, [0], 60.0)):
        attention = random_attention(rng, layers, tokens, FLAGS.heads, FLAGS.sharpness)
        started, cpu_started = time.perf_counter(), time.process_time()
        flows = attention_flow(attention, rows=rows, num_workers=FLAGS.num_workers)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        assert np.allclose(flows.sum(axis=-1), 1.0)
        result[f"{name}_s"] = round(seconds, 3)
        # CPU seconds of all threads: on a shared machine wall time says more about the neighbours.
        result[f"{name}_cpu_s"] = round(cpu_seconds, 3)
        result[f"{name}_target_s"] = target
    if not FLAGS.skip_reference:
        import runpy

        # The networkx reference of the tests, read from its file (tests/ is no package).
        networkx_flow = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    "tests", "ovt_explain", "ovt_flow_reference.py"))["networkx_flow"]

        for name, layers, tokens, rows in (("L12_n12_full", 12, 12, None), ("L12_n32_cls", 12, 32, [0])):
            attention = random_attention(rng, layers, tokens, FLAGS.heads, FLAGS.sharpness)
            started = time.perf_counter()
            ours = attention_flow(attention, rows=rows, num_workers=FLAGS.num_workers)
            ours_seconds = time.perf_counter() - started
            started = time.perf_counter()
            reference = networkx_flow(prepare_attention(attention), rows)
            reference_seconds = time.perf_counter() - started
            result[f"{name}_s"] = round(ours_seconds, 4)
            result[f"{name}_networkx_s"] = round(reference_seconds, 2)
            result[f"{name}_max_abs_diff"] = float(np.abs(ours - reference).max())
    result["note"] = "2-core CPU shared with other jobs"
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run(main)
