"""Benchmark of BERT4Rec data generation against the original's reference numbers; prints ONE JSON line.

    python bench/bert4rec_gen_data.py [--pool_size=1]

Each case runs `python -m bert4rec.gen_data_fin` as a child process (start-up included), `--repeats` times, and
reports the best and median wall time (the machine is shared, so the best run is the least disturbed one), the
speedup of the best run, and peak resident memory (ru_maxrss of the child and its workers, from wait4):
  * ml-100k: ../shared/data/ml-100k.txt with the ml-1m flags of the original run_ml-1m.sh (200/40/1.0/10/0.2/0.5);
  * beauty-synthetic: 40,000 users shaped like Amazon Beauty (54,542 items, Zipf popularity, at least 5 and on
    average ~8.9 items a user) with the flags of the original run_beauty.sh (50/30/1.0/10/0.6/0.1).
Reference numbers of the original gen_data_fin.py: 10.7 s / 0.76 GB (ml-100k) and 600 s / 1.33 GB (Beauty).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_ML100K = os.path.join(REPO_ROOT, "..", "shared", "data", "ml-100k.txt")

flags.DEFINE_integer("pool_size", 1, "gen_data_fin --pool_size for both cases.")
flags.DEFINE_integer("beauty_users", 40000, "Users in the synthetic Beauty-shaped data set.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic data set.")
flags.DEFINE_integer("repeats", 3, "Runs per case.")
FLAGS = flags.FLAGS

CASES = {
    "ml-100k": {"flags": {"max_seq_length": 200, "max_predictions_per_seq": 40, "mask_prob": 1.0, "dupe_factor": 10,
                          "masked_lm_prob": 0.2, "prop_sliding_window": 0.5},
                "reference_seconds": 10.7, "reference_peak_rss_gb": 0.76},
    "beauty-synthetic": {"flags": {"max_seq_length": 50, "max_predictions_per_seq": 30, "mask_prob": 1.0,
                                   "dupe_factor": 10, "masked_lm_prob": 0.6, "prop_sliding_window": 0.1},
                         "reference_seconds": 600.0, "reference_peak_rss_gb": 1.33},
}
BEAUTY_ITEMS = 54542


def write_beauty_like(path: str, num_users: int, seed: int) -> int:
    """Beauty-shaped `user item` file: lengths 5 + geometric (mean ~8.9), Zipf item popularity; returns lines."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(5 + rng.geometric(1 / 4.9, size=num_users) - 1, 400)
    popularity = 1.0 / np.arange(1, BEAUTY_ITEMS + 1) ** 0.8
    items = rng.choice(np.arange(1, BEAUTY_ITEMS + 1), size=int(lengths.sum()), p=popularity / popularity.sum())
    users = np.repeat(np.arange(1, num_users + 1), lengths)
    with open(path, "w") as handle:
        handle.write("".join(f"{user} {item}\n" for user, item in zip(users.tolist(), items.tolist())))
    return int(lengths.sum())


def run_generation(dataset_name: str, data_dir: str, output_dir: str, case_flags: dict, pool_size: int) -> dict:
    command = [sys.executable, "-m", "bert4rec.gen_data_fin", f"--dataset_name={dataset_name}",
               f"--data_dir={data_dir}", f"--output_dir={output_dir}", f"--pool_size={pool_size}", "--signature=-bench"]
    command += [f"--{name}={value}" for name, value in case_flags.items()]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # wait4 gives this child's own rusage; its ru_maxrss is the maximum over the child and its waited-for workers.
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout = process.stdout.read().decode()
    process.stdout.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    with open(os.path.join(output_dir, f"{dataset_name}-bench.summary.json")) as handle:
        summary = json.load(handle)
    return {"seconds": round(seconds, 3), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "users": summary["users"], "items": summary["items"], "train_instances": summary["train"]["instances"],
            "summary_line": stdout.strip().splitlines()[-1]}


def main(argv):
    del argv
    if not os.path.isfile(SHARED_ML100K):
        raise SystemExit(f"{SHARED_ML100K} is missing (the shared data folder)")
    results = {"bench": "bert4rec_gen_data", "pool_size": FLAGS.pool_size, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bert4rec_bench_") as work_dir:
        data_dir, output_dir = os.path.join(work_dir, "data"), os.path.join(work_dir, "out")
        os.makedirs(data_dir)
        shutil.copy(SHARED_ML100K, os.path.join(data_dir, "ml-100k.txt"))
        write_beauty_like(os.path.join(data_dir, "beauty-synthetic.txt"), FLAGS.beauty_users, FLAGS.seed)
        for name, case in CASES.items():
            runs = [run_generation(name, data_dir, output_dir, case["flags"], FLAGS.pool_size)
                    for _ in range(FLAGS.repeats)]
            seconds = sorted(run["seconds"] for run in runs)
            results[name] = {
                "seconds": seconds[0], "median_seconds": seconds[len(seconds) // 2],
                "peak_rss_gb": max(run["peak_rss_gb"] for run in runs),
                "users": runs[0]["users"], "items": runs[0]["items"], "train_instances": runs[0]["train_instances"],
                "reference_seconds": case["reference_seconds"], "reference_peak_rss_gb": case["reference_peak_rss_gb"],
                "speedup": round(case["reference_seconds"] / seconds[0], 1),
                "median_speedup": round(case["reference_seconds"] / seconds[len(seconds) // 2], 1),
                "flags": case["flags"],
            }
    results["target_speedup"] = 20
    results["meets_target"] = all(results[name]["speedup"] >= 20 for name in CASES)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    app.run(main)
