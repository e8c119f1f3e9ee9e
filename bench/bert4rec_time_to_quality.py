"""Benchmark: BERT4Rec pop100 HR@10 / NDCG@10 against training time, per training recipe (PNG + one JSON line).

Data sets: ml-100k (../shared/data/ml-100k.txt) and a Beauty-shaped synthetic set (`bert4rec.synthetic`,
the paper's Table 1 sizes). With `--split validation` (the default) every user's last item is dropped first,
so the held-out item is the second-to-last one and the test items are never seen: recipes are chosen there.
`--split test` then measures a chosen recipe on the real leave-one-out split.

Each recipe is a run-script setting (batch size, learning rate, steps, warm-up, `--length_buckets`,
`masked_lm_prob`, last-item passes, window length, the model config's dropout), never a change of the
original's defaults. `--seed` seeds training and the evaluation's negatives, as `run.py --random_seed`. The clock counts training
only (evaluation is timed and left out); the machine is shared, so every point also gives the step, the
1-minute load average, and `unloaded_minutes` = sequences trained / the data set's reference rate measured on
a quiet machine of this kind (`reference_steps_per_second` below), the estimate to plan a budget with.

    python bench/bert4rec_time_to_quality.py --datasets ml-100k --recipes main,last5 [--split validation]
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
from bert4rec.synthetic import beauty_like, write_user_item_file  # noqa: E402
from common.distribute import get_strategy  # noqa: E402
from common.io_utils import atomic_write_json  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
# Data-set flags of the original run scripts (ml-100k runs ml-1m's, as run_ml-100k.sh does).
DATASETS = {
    "ml-100k": {"config": "bert_config_ml-100k_64.json", "max_seq_length": 200, "max_predictions_per_seq": 40,
                "masked_lm_prob": 0.2, "prop_sliding_window": 0.5, "reference_steps_per_second": 6.2},
    "beauty-synthetic": {"config": "bert_config_beauty_64.json", "max_seq_length": 50,
                         "max_predictions_per_seq": 30, "masked_lm_prob": 0.6, "prop_sliding_window": 0.1,
                         "reference_steps_per_second": 14.2},
}
# reference_steps_per_second at batch 64 on a quiet 2-core machine: ml-100k the main job's 2,400 steps in 6.6 min
# (README); Beauty-shaped 908 sequences/s (bench/bert4rec_train.py, batch 256) / 64. Other batch sizes: same
# sequences/s assumed.
# Recipes: overrides of the main job's budget setting (run_ml-100k.sh before this bench: batch 64, lr 1e-3,
# 2,400 steps, warm-up 10%). `masked_lm_prob` scales `max_predictions_per_seq` with it.
DROPOUT_0_2 = {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2}
DROPOUT_0_1 = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
RECIPES = {
    "main": {},  # the 64-wide job run_ml-100k.sh ran until session 6 (now DIM=64 NUM_TRAIN_STEPS=2400 ...)
    "last5": {"last_item_passes": 5},
    "mlp0.4": {"masked_lm_prob_scale": 2.0},
    "lr2e-3": {"learning_rate": 2e-3},
    "warmup2%": {"warmup_share": 0.02},
    "batch128": {"batch_size": 128, "learning_rate": 1.4e-3, "steps_scale": 0.5},
    "buckets1": {"length_buckets": 1},
    "dupe40": {"dupe_factor": 40},
    # Sessions 6-7 ran the 128-wide config with ml-1m's dropout 0.2; the config file has 0.1 since session 9.
    "dim128": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 2.35,
               "config_overrides": DROPOUT_0_2},
    "dim128last5": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 2.35,
                    "last_item_passes": 5, "config_overrides": DROPOUT_0_2},
    "dim128lr2e-3": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 2.35,
                     "learning_rate": 2e-3, "config_overrides": DROPOUT_0_2},
    # Dropout 0.1: ml-1m's 0.2 is sized for 400,000 steps (the original's ml-20m and steam_64 configs use 0.1).
    "dim128drop0.1": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 2.35,
                      "config_overrides": DROPOUT_0_1},
    # The most recent 100 items a window (ml-1m's 200 costs twice the attention and padding; the original's
    # Beauty and Steam scripts use 50). run_ml-100k.sh since session 9: this recipe with --steps 1800.
    "dim128drop0.1msl100": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 3.4,
                            "max_seq_length": 100,
                            "config_overrides": DROPOUT_0_1},
    "dim128drop0.1msl50": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 5.9,
                           "max_seq_length": 50,
                           "config_overrides": DROPOUT_0_1},
    "dim128drop0": {"config": "bert_config_ml-100k_128.json", "reference_steps_per_second": 2.35,
                    "config_overrides": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
}
# dim128's reference: run_ml-100k.sh's 1,000 steps of the 128-wide model in 7.1 quiet minutes (session 6);
# dim128drop0.1msl100's: run_ml-100k.sh's 1,800 steps in 8.8 quiet minutes (session 9); dim128drop0.1msl50's:
# its last 1,500 of 3,000 steps alone on the machine (session 9), an estimate.


def drop_last_items(source: str, destination: str) -> None:
    """Writes `source` without each user's last line (the validation split: the second-to-last item is held out)."""
    with open(source, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    last = {line.split()[0]: index for index, line in enumerate(lines)}
    dropped = set(last.values())
    with open(destination, "w", encoding="utf-8") as handle:
        handle.writelines(line for index, line in enumerate(lines) if index not in dropped)


def measure(name: str, data_file: str, recipe_name: str, work: str, args) -> dict:
    spec, recipe = DATASETS[name], RECIPES[recipe_name]
    data_dir = os.path.join(work, f"{name}-{recipe_name}")
    os.makedirs(data_dir)
    if args.split == "validation":
        drop_last_items(data_file, os.path.join(data_dir, f"{name}.txt"))
    else:
        shutil.copy(data_file, os.path.join(data_dir, f"{name}.txt"))
    scale = recipe.get("masked_lm_prob_scale", 1.0)
    max_seq_length = recipe.get("max_seq_length", spec["max_seq_length"])
    masked_lm_prob = spec["masked_lm_prob"] * scale
    # The data set's slots per position, so a shorter window keeps the same share of slots.
    max_predictions = round(spec["max_predictions_per_seq"] * scale * max_seq_length / spec["max_seq_length"])
    generate(name, data_dir=data_dir, output_dir=data_dir, max_seq_length=max_seq_length,
             max_predictions_per_seq=max_predictions, masked_lm_prob=masked_lm_prob, mask_prob=1.0,
             dupe_factor=recipe.get("dupe_factor", 10),
             prop_sliding_window=spec["prop_sliding_window"], signature="-ttq", pool_size=1, show_progress=False,
             last_item_passes=recipe.get("last_item_passes", 1))
    prefix = os.path.join(data_dir, f"{name}-ttq")
    config_file = os.path.join(REPO, "bert4rec", "bert_train", recipe.get("config", spec["config"]))
    if recipe.get("config_overrides"):  # a copy of the config with the recipe's values
        with open(config_file, encoding="utf-8") as handle:
            config = {**json.load(handle), **recipe["config_overrides"]}
        config_file = os.path.join(data_dir, "bert_config.json")
        atomic_write_json(config_file, config)
    settings = experiment.RunSettings(
        bert_config_file=config_file,
        vocab_filename=prefix + ".vocab", user_history_filename=prefix + ".his",
        max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions)
    batch_size = recipe.get("batch_size", args.batch_size)
    learning_rate = recipe.get("learning_rate", args.learning_rate)
    num_train_steps = int(args.steps * recipe.get("steps_scale", 1.0))
    warmup = max(1, int(num_train_steps * recipe.get("warmup_share", 0.1)))
    eval_every = max(1, int(args.eval_every_steps * recipe.get("steps_scale", 1.0)))
    reference_speed = recipe.get("reference_steps_per_second", spec["reference_steps_per_second"])
    points = []
    clock = {"start": 0.0, "evaluating": 0.0}

    def on_evaluation(step: int, results: dict, seconds: float) -> None:
        clock["evaluating"] += seconds
        training_minutes = (time.perf_counter() - clock["start"] - clock["evaluating"]) / 60
        pop100 = results["pop100"]
        points.append({"step": step, "training_minutes": round(training_minutes, 3),
                       "unloaded_minutes": round(step * batch_size / 64 / reference_speed / 60, 2),
                       "hr@10": round(pop100["hit@10"], 4), "ndcg@10": round(pop100["ndcg@10"], 4),
                       "eval_seconds": round(seconds, 2), "load_average_1min": round(os.getloadavg()[0], 2)})
        print(json.dumps({"dataset": name, "recipe": recipe_name, **points[-1]}), flush=True)

    clock["start"] = time.perf_counter()
    _, result = experiment.run_training(
        get_strategy("default"), settings, prefix + ".train.tfrecord", os.path.join(work, f"{name}-{recipe_name}-model"),
        batch_size=batch_size, num_train_steps=num_train_steps, num_warmup_steps=warmup,
        learning_rate=learning_rate, save_checkpoints_steps=num_train_steps, steps_per_execution=10,
        random_seed=args.seed,
        progress=False, eval_every_steps=eval_every, eval_input_file=prefix + ".test.tfrecord",
        eval_protocols=("pop100",), eval_batch_size=256, on_evaluation=on_evaluation,
        length_buckets=recipe.get("length_buckets"))
    return {"recipe": recipe, "seed": args.seed, "steps": result.final_step, "batch_size": batch_size, "learning_rate": learning_rate,
            "warmup_steps": warmup, "masked_lm_prob": masked_lm_prob, "max_seq_length": max_seq_length,
            "max_predictions_per_seq": max_predictions,
            "steps_per_second": round(result.steps_per_second, 2), "points": points}


def plot(results: dict, path: str) -> None:
    from common.plotting import new_figure, save_figure

    figure, axes = new_figure(1, 2, size=(11, 4.2))
    for name, recipes in results.items():
        for recipe_name, result in recipes.items():
            minutes = [point["unloaded_minutes"] for point in result["points"]]
            for ax, metric in zip(axes, ("hr@10", "ndcg@10")):
                ax.plot(minutes, [point[metric] for point in result["points"]], marker="o", markersize=3,
                        label=f"{name} {recipe_name}")
    for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
        ax.set_xlabel("training minutes, unloaded estimate (steps / reference steps/s)")
        ax.set_ylabel(f"pop100 {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle("BERT4Rec: quality against training time")
    save_figure(figure, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,beauty-synthetic")
    parser.add_argument("--recipes", default="main", help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--steps", type=int, default=2400, help="training steps at batch --batch_size")
    parser.add_argument("--eval_every_steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=12345,
                        help="training seed (also the evaluation's negatives, as run.py --random_seed)")
    parser.add_argument("--ml100k_file", default=os.path.join(SHARED, "ml-100k.txt"))
    parser.add_argument("--output_dir", default="bench_output/bert4rec_time_to_quality")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    for recipe in recipes:
        if recipe not in RECIPES:
            sys.exit(f"error: unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    os.makedirs(args.output_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bert4rec_ttq_")
    results = {}
    try:
        for name in args.datasets.split(","):
            if name == "ml-100k":
                if not os.path.isfile(args.ml100k_file):
                    sys.exit(f"error: {args.ml100k_file}: not found")
                data_file = args.ml100k_file
            elif name == "beauty-synthetic":
                data_file = os.path.join(work, "beauty-synthetic.txt")
                write_user_item_file(data_file, *beauty_like(seed=0))
            else:
                sys.exit(f"error: unknown data set {name!r} (known: {', '.join(DATASETS)})")
            results[name] = {recipe: measure(name, data_file, recipe, work, args) for recipe in recipes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    png = os.path.join(args.output_dir, f"time_to_quality_{args.split}.png")
    plot(results, png)
    report = {"bench": "bert4rec_time_to_quality", "split": args.split, "cpu_count": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2), "png": png, "results": results}
    atomic_write_json(os.path.join(args.output_dir, f"time_to_quality_{args.split}.json"), report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
