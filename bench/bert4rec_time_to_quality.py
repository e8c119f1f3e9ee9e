"""Benchmark: BERT4Rec pop100 HR@10 and NDCG@10 against wall-clock training minutes (PNG + one JSON line).

For each data set present (ml-100k from ../shared/data; Beauty when `--beauty_file` exists) the main job's
pipeline runs: gen_data_fin with the original's flags for that data set, then training with an evaluation
every `--eval_every_steps` steps through `common.training.Trainer`'s evaluation. The clock counts training only
(evaluation time is measured and left out), so the curve says what a training budget buys.

    python bench/bert4rec_time_to_quality.py [--minutes 10] [--eval_every_steps 200] [--output_dir out/ttq]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from bert4rec import experiment  # noqa: E402
from bert4rec.gen_data_fin import generate  # noqa: E402
from common.distribute import get_strategy  # noqa: E402
from common.io_utils import atomic_write_json  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
# Data-set flags of the original run scripts; training as the main job (batch 64, lr 1e-3) for a CPU budget.
DATASETS = {
    "ml-100k": {"config": "bert_config_ml-100k_64.json", "max_seq_length": 200, "max_predictions_per_seq": 40,
                "masked_lm_prob": 0.2, "prop_sliding_window": 0.5},
    "beauty": {"config": "bert_config_beauty_64.json", "max_seq_length": 50, "max_predictions_per_seq": 30,
               "masked_lm_prob": 0.6, "prop_sliding_window": 0.1},
}


def measure(name: str, data_file: str, work: str, args) -> dict:
    spec = DATASETS[name]
    data_dir = os.path.join(work, name)
    os.makedirs(data_dir)
    shutil.copy(data_file, os.path.join(data_dir, f"{name}.txt"))
    generate(name, data_dir=data_dir, output_dir=data_dir, max_seq_length=spec["max_seq_length"],
             max_predictions_per_seq=spec["max_predictions_per_seq"], masked_lm_prob=spec["masked_lm_prob"],
             mask_prob=1.0, dupe_factor=10, prop_sliding_window=spec["prop_sliding_window"], signature="-ttq",
             pool_size=1, show_progress=False)
    prefix = os.path.join(data_dir, f"{name}-ttq")
    settings = experiment.RunSettings(
        bert_config_file=os.path.join(REPO, "bert4rec", "bert_train", spec["config"]),
        vocab_filename=prefix + ".vocab", user_history_filename=prefix + ".his",
        max_seq_length=spec["max_seq_length"], max_predictions_per_seq=spec["max_predictions_per_seq"])
    points = []
    clock = {"start": 0.0, "evaluating": 0.0}

    def on_evaluation(step: int, results: dict, seconds: float) -> None:
        clock["evaluating"] += seconds
        training_minutes = (time.perf_counter() - clock["start"] - clock["evaluating"]) / 60
        pop100 = results["pop100"]
        points.append({"step": step, "training_minutes": round(training_minutes, 3),
                       "hr@10": round(pop100["hit@10"], 4), "ndcg@10": round(pop100["ndcg@10"], 4),
                       "eval_seconds": round(seconds, 2)})
        print(json.dumps({"dataset": name, **points[-1]}), flush=True)

    # The step budget comes from a short calibration run, so that training itself takes about --minutes.
    _, calibration = experiment.run_training(
        get_strategy("default"), settings, prefix + ".train.tfrecord", os.path.join(work, f"{name}-calibration"),
        batch_size=args.batch_size, num_train_steps=60, num_warmup_steps=6, learning_rate=args.learning_rate,
        save_checkpoints_steps=60, steps_per_execution=10, progress=False)
    num_train_steps = max(args.eval_every_steps,
                          int(calibration.steps_per_second * args.minutes * 60) // args.eval_every_steps
                          * args.eval_every_steps)
    clock["start"] = time.perf_counter()
    _, result = experiment.run_training(
        get_strategy("default"), settings, prefix + ".train.tfrecord", os.path.join(work, f"{name}-model"),
        batch_size=args.batch_size, num_train_steps=num_train_steps, num_warmup_steps=num_train_steps // 10,
        learning_rate=args.learning_rate, save_checkpoints_steps=args.eval_every_steps, steps_per_execution=10,
        progress=False, eval_every_steps=args.eval_every_steps, eval_input_file=prefix + ".test.tfrecord",
        eval_protocols=("pop100",), on_evaluation=on_evaluation)
    return {"steps": result.final_step, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "warmup_steps": num_train_steps // 10, "steps_per_second": round(result.steps_per_second, 2),
            "points": points}


def plot(results: dict, path: str) -> None:
    from common.plotting import new_figure, save_figure

    figure, axes = new_figure(1, 2, size=(11, 4.2))
    for name, result in results.items():
        minutes = [point["training_minutes"] for point in result["points"]]
        for ax, metric in zip(axes, ("hr@10", "ndcg@10")):
            ax.plot(minutes, [point[metric] for point in result["points"]], marker="o", markersize=3, label=name)
    for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
        ax.set_xlabel("training minutes (evaluation time excluded)")
        ax.set_ylabel(f"pop100 {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle("BERT4Rec: quality against training time")
    save_figure(figure, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per data set")
    parser.add_argument("--eval_every_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--ml100k_file", default=os.path.join(SHARED, "ml-100k.txt"))
    parser.add_argument("--beauty_file", default=os.path.join(SHARED, "beauty.txt"))
    parser.add_argument("--output_dir", default="bench_output/bert4rec_time_to_quality")
    args = parser.parse_args()
    files = {name: path for name, path in (("ml-100k", args.ml100k_file), ("beauty", args.beauty_file))
             if os.path.isfile(path)}
    if not files:
        sys.exit(f"error: none of {args.ml100k_file}, {args.beauty_file} exists")
    os.makedirs(args.output_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bert4rec_ttq_")
    try:
        results = {name: measure(name, path, work, args) for name, path in files.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    png = os.path.join(args.output_dir, "time_to_quality.png")
    plot(results, png)
    report = {"bench": "bert4rec_time_to_quality", "cpu_count": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2), "png": png, "results": results}
    atomic_write_json(os.path.join(args.output_dir, "time_to_quality.json"), report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
