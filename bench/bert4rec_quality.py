"""Benchmark: BERT4Rec quality on MovieLens-100k after a fixed wall-clock training budget.

Prints one JSON line: pop100 (the paper's protocol), uni100 and full HR@10 / NDCG@10, beside the steps
run and the seconds spent. Reads ../shared/data/ml-100k.txt (or --data_file). The step count is set
from a short calibration run so that training itself takes about --budget_seconds.

    python bench/bert4rec_quality.py [--budget_seconds 600] [--batch_size 64] [--mixed_precision none]
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bert4rec import experiment  # noqa: E402
from bert4rec.gen_data_fin import generate  # noqa: E402
from common.distribute import get_strategy  # noqa: E402
from common.optimization import set_mixed_precision  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "ml-100k.txt")
CONFIG = os.path.join(REPO, "bert4rec", "bert_train", "bert_config_ml-100k_64.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_file", default=DEFAULT_DATA)
    parser.add_argument("--budget_seconds", type=float, default=600)
    parser.add_argument("--mixed_precision", default="none", choices=["none", "bfloat16", "float16"])
    parser.add_argument("--max_seq_length", type=int, default=200)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=64)  # the main job's: see run_ml-100k.sh
    parser.add_argument("--model", default="bert4rec", choices=["bert4rec", "cross_attention"])
    args = parser.parse_args()
    if not os.path.exists(args.data_file):
        sys.exit(f"{args.data_file}: not found (the shared MovieLens-100k file; see --data_file)")

    work = tempfile.mkdtemp(prefix="bert4rec_quality_")
    try:
        data_dir = os.path.join(work, "data")
        os.makedirs(data_dir)
        shutil.copy(args.data_file, os.path.join(data_dir, "ml-100k.txt"))
        max_predictions = round(args.max_seq_length * 0.2)
        generate("ml-100k", data_dir=data_dir, output_dir=data_dir, max_seq_length=args.max_seq_length,
                 max_predictions_per_seq=max_predictions, masked_lm_prob=0.2, mask_prob=1.0, dupe_factor=10,
                 prop_sliding_window=0.5, signature="-bench", pool_size=1, show_progress=False)
        prefix = os.path.join(data_dir, "ml-100k-bench")
        settings = experiment.RunSettings(
            bert_config_file=CONFIG, vocab_filename=prefix + ".vocab", user_history_filename=prefix + ".his",
            max_seq_length=args.max_seq_length, max_predictions_per_seq=max_predictions, model=args.model)
        set_mixed_precision(args.mixed_precision)
        strategy = get_strategy("default")

        def train(steps, model_dir):
            return experiment.run_training(
                strategy, settings, prefix + ".train.tfrecord", model_dir, batch_size=args.batch_size,
                num_train_steps=steps, num_warmup_steps=max(steps // 10, 1), learning_rate=args.learning_rate,
                save_checkpoints_steps=0, steps_per_execution=10, progress=False)

        # Calibrate: 30 steps after a 10-step warm-up call (which pays for tracing).
        calibration_dir = os.path.join(work, "calibration")
        train(10, calibration_dir)
        start = time.perf_counter()
        train(40, calibration_dir)
        steps_per_second = 30 / (time.perf_counter() - start)
        steps = max(10, int(args.budget_seconds * steps_per_second) // 10 * 10)

        start = time.perf_counter()
        model, result = train(steps, os.path.join(work, "model"))
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        results = experiment.run_evaluation(model, settings, prefix + ".test.tfrecord", progress=False)
        eval_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps({
        "bench": "bert4rec_quality",
        "dataset": "ml-100k",
        "model": args.model,
        "mixed_precision": args.mixed_precision,
        "budget_seconds": args.budget_seconds,
        "steps": result.final_step,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "learning_rate": args.learning_rate,
        **{f"{protocol}_{name}": round(results[protocol][name], 4)
           for protocol in ("pop100", "uni100", "full") for name in ("hit@10", "ndcg@10")},
    }))


if __name__ == "__main__":
    main()
