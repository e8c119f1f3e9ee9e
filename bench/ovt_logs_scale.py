r"""The original's data steps at the paper's scale: viewing CSV -> sentence.txt -> labelled files -> TFRecords.

    python bench/ovt_logs_scale.py [--users=1000000 --slots_per_user=30 --work_dir=/tmp/ovt_logs_scale]

Writes a synthetic viewing CSV (1 M users x 30 slots = 30 M rows; users interleaved within blocks of
10,000, rows in random order there), its programme metadata, then times each step in its own
process (wall and CPU seconds, peak resident memory; wall time on a shared machine is mostly the load): `convert_to_sentences` (ours, streaming),
`save_vocab`, `classify_sentences`, and the pre-training TFRecords (`write_line_examples`, max_seq_length
512, 5 % evaluation). Beside them, on the CSV's first `--sample_rows` rows, the original's algorithm (a dict
of lists, each sorted; the csv module in place of pandas, which is not installed) against ours: the
same-run speed ratio and whether both write the same file. Prints one JSON line.
Target on 2 cores: all steps for 30 M rows within 3 minutes and 2 GB peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = 1627776000  # 2021-08-01 00:00 UTC, 5-minute slots
CHANNELS = 8
DAYS = 7

STEP = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
step = args["step"]
if step == "tfrecords":
    import tensorflow  # imported before the clock starts: its start-up is not the conversion's
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started, started_cpu = time.perf_counter(), cpu()
if step == "convert":
    from ovt_explain.original_data import convert_to_sentences
    result = convert_to_sentences(args["csv"], args["out"])
elif step == "convert_original":
    from ovt_explain.original_data import convert_to_sentences_original
    result = convert_to_sentences_original(args["csv"], args["out"])
elif step == "vocab":
    from ovt_explain.original_data import save_vocab
    result = {"path": save_vocab(args["meta"], args["out"])}
elif step == "classify":
    from ovt_explain.original_data import classify_sentences, target_sort_ids
    target = target_sort_ids(args["meta"], "Target", "")
    result = classify_sentences(args["sentences"], target, args["out"])
elif step == "tfrecords":
    from common.tokenization import load_vocab
    from ovt_explain.mlm_data import plain_text_lines, write_line_examples
    lines, count = plain_text_lines([args["sentences"]])
    result = write_line_examples(lines, count, load_vocab(args["vocab"]), 512, args["out"], 5)
    result.pop("files")
seconds, cpu_seconds = time.perf_counter() - started, cpu() - started_cpu
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_mb, "result": result}))
"""


def run_step(**args) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", STEP, json.dumps(args)], env=env, check=True,
                            capture_output=True, text=True).stdout
    report = json.loads(output.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - started  # with the interpreter's (and TF's) start
    return report


def write_inputs(folder: str, users: int, slots_per_user: int, seed: int) -> tuple[str, str, int]:
    """The viewing CSV and metadata CSV; returns their paths and the row count."""
    rng = np.random.default_rng(seed)
    times = np.arange(DAYS * 288)  # every 5-minute slot of the week
    slot_ids = ((START + 300 * times)[:, None] * 10 + np.arange(1, CHANNELS + 1)[None]).reshape(-1)
    popularity = 1.0 / np.arange(1, len(slot_ids) + 1) ** 0.8
    popularity = popularity[rng.permutation(len(slot_ids))]
    popularity /= popularity.sum()
    # The target: channel 1, the last evening 21:00-22:00 (12 slots).
    target_times = (DAYS - 1) * 288 + 21 * 12 + np.arange(12)
    target = set(((START + 300 * target_times) * 10 + 1).tolist())
    meta = os.path.join(folder, "tv_meta_data.csv")
    with open(meta, "w", encoding="utf-8") as handle:
        handle.write("channel,番組名,サブタイトル,放送日（開始）,開始時刻,sortid\n")
        for slot in sorted(slot_ids.tolist()):
            seconds, channel = divmod(slot, 10)
            stamp = time.strftime("%Y/%m/%d,%H:%M", time.gmtime(seconds))
            title = "Target" if slot in target else f"Show {channel}-{(seconds // 1800) % 48}"
            handle.write(f"Ch{channel},{title},,{stamp},{slot}\n")
    csv_path = os.path.join(folder, "viewing.csv")
    rows = 0
    block = 10_000
    with open(csv_path, "w", encoding="utf-8") as handle:
        handle.write("userid,sortid\n")
        for first in range(0, users, block):
            count = min(block, users - first)
            chosen = rng.choice(len(slot_ids), size=(count, slots_per_user), p=popularity)
            user_of = np.repeat(np.arange(first, first + count), slots_per_user)
            slots = slot_ids[chosen.reshape(-1)]
            # A fifth of the users watch the target's second half (6 of 12 slots: viewed by the 1/3 rule).
            watchers = np.flatnonzero(rng.random(count) < 0.2)
            target_half = np.asarray(sorted(target)[6:], np.int64)
            slots.reshape(count, slots_per_user)[watchers[:, None], np.arange(6)[None]] = target_half[None]
            order = rng.permutation(len(slots))
            handle.write("".join(f"{u:07d},{s}\n" for u, s in zip(user_of[order].tolist(), slots[order].tolist())))
            rows += len(slots)
    return csv_path, meta, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--slots_per_user", type=int, default=30)
    parser.add_argument("--sample_rows", type=int, default=1_000_000)
    parser.add_argument("--work_dir", default="/tmp/ovt_logs_scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    started = time.perf_counter()
    csv_path, meta, rows = write_inputs(args.work_dir, args.users, args.slots_per_user, args.seed)
    setup_seconds = time.perf_counter() - started
    work = args.work_dir
    steps = {
        "convert": run_step(step="convert", csv=csv_path, out=os.path.join(work, "sentence.txt")),
        "vocab": run_step(step="vocab", meta=meta, out=work),
        "classify": run_step(step="classify", meta=meta, sentences=os.path.join(work, "sentence.txt"),
                             out=os.path.join(work, "classify")),
        "tfrecords": run_step(step="tfrecords", sentences=os.path.join(work, "sentence.txt"),
                              vocab=os.path.join(work, "vocab.txt"), out=os.path.join(work, "data")),
    }
    # The original's algorithm beside ours on the CSV's first sample_rows rows.
    sample = os.path.join(work, "sample.csv")
    with open(csv_path, encoding="utf-8") as source, open(sample, "w", encoding="utf-8") as out:
        for index, line in enumerate(source):
            if index > args.sample_rows:
                break
            out.write(line)
    ours = run_step(step="convert", csv=sample, out=os.path.join(work, "sample_ours.txt"))
    original = run_step(step="convert_original", csv=sample, out=os.path.join(work, "sample_original.txt"))
    with open(os.path.join(work, "sample_ours.txt"), "rb") as a, open(os.path.join(work, "sample_original.txt"), "rb") as b:
        identical = a.read() == b.read()
    total = sum(step["seconds"] for step in steps.values())
    total_process = sum(step["process_seconds"] for step in steps.values())
    peak = max(step["peak_mb"] for step in steps.values())
    print(json.dumps({
        "bench": "ovt_logs_scale", "users": args.users, "rows": rows,
        **{f"{name}_s": round(step["seconds"], 1) for name, step in steps.items()},
        **{f"{name}_cpu_s": round(step["cpu_seconds"], 1) for name, step in steps.items()},
        "total_cpu_s": round(sum(step["cpu_seconds"] for step in steps.values()), 1),
        **{f"{name}_peak_mb": round(step["peak_mb"]) for name, step in steps.items()},
        "total_s": round(total, 1), "total_with_process_start_s": round(total_process, 1), "peak_mb": round(peak),
        "classified": steps["classify"]["result"], "tfrecords": steps["tfrecords"]["result"],
        "sample_rows": args.sample_rows, "sample_ours_s": round(ours["seconds"], 2),
        "sample_original_s": round(original["seconds"], 2),
        "sample_speedup": round(original["seconds"] / ours["seconds"], 2),
        "sample_ours_cpu_s": round(ours["cpu_seconds"], 2), "sample_original_cpu_s": round(original["cpu_seconds"], 2),
        "sample_cpu_speedup": round(original["cpu_seconds"] / ours["cpu_seconds"], 2),
        "sample_ours_peak_mb": round(ours["peak_mb"]), "sample_original_peak_mb": round(original["peak_mb"]),
        "sample_identical_output": identical,
        "target_met_wall": bool(total <= 180 and peak <= 2048),
        "target_met_cpu": bool(sum(step["cpu_seconds"] for step in steps.values()) <= 180 and peak <= 2048),
        "setup_s": round(setup_seconds, 1), "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
