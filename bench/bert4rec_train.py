"""Benchmark: BERT4Rec training throughput (float32 vs bfloat16) and evaluation time per protocol.

Prints one JSON line. Shape of the measured job (the issue's): batch 256, length 200, vocab 3,420,
hidden 64 (the ml-1m 64 config), 40 masked positions; evaluation of 6,040 users (ml-1m's count).

    python bench/bert4rec_train.py [--steps 60] [--users 6040]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert4rec.evaluation import CandidateSampler, RankingEvaluator  # noqa: E402
from bert4rec.model import Bert4Rec, bert4rec_loss  # noqa: E402
from common.config import BertConfig  # noqa: E402
from common.distribute import get_strategy  # noqa: E402
from common.optimization import create_optimizer, set_mixed_precision  # noqa: E402
from common.training import train  # noqa: E402

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "bert4rec", "bert_train", "bert_config_ml-1m_64.json")
BATCH, LENGTH, PREDICTIONS = 256, 200, 40


def synthetic_batch(rng: np.random.Generator, batch: int, vocab_size: int) -> dict:
    num_items = vocab_size - 4
    input_ids = rng.integers(1, num_items + 1, size=(batch, LENGTH), dtype=np.int32)
    positions = np.sort(rng.permuted(np.tile(np.arange(LENGTH), (batch, 1)), axis=1)[:, :PREDICTIONS], axis=1)
    masked_ids = np.take_along_axis(input_ids, positions, axis=1)
    np.put_along_axis(input_ids, positions, num_items + 1, axis=1)
    return {"info": np.arange(batch, dtype=np.int32)[:, None], "input_ids": input_ids,
            "input_mask": np.ones((batch, LENGTH), np.int32), "masked_lm_positions": positions.astype(np.int32),
            "masked_lm_ids": masked_ids.astype(np.int32),
            "masked_lm_weights": np.ones((batch, PREDICTIONS), np.float32)}


def training_rate(precision: str, steps: int, config: BertConfig) -> float:
    set_mixed_precision(precision)
    strategy = get_strategy("default")
    batch = synthetic_batch(np.random.default_rng(0), BATCH, config.vocab_size)

    def dataset_fn(input_context):
        return tf.data.Dataset.from_tensors(batch).repeat()

    with strategy.scope():
        model = Bert4Rec(config)
        optimizer = create_optimizer(1e-4, 10 * steps, 10, clip_norm=5.0)
    with tempfile.TemporaryDirectory() as model_dir:
        # A warm-up call compiles the step; the measured call reuses it.
        train(strategy, model, optimizer, dataset_fn, bert4rec_loss, 10, model_dir,
              save_checkpoints_steps=0, steps_per_execution=10, summary=False, progress=False)
        start = time.perf_counter()
        train(strategy, model, optimizer, dataset_fn, bert4rec_loss, 10 + steps, model_dir,
              save_checkpoints_steps=0, steps_per_execution=10, summary=False, progress=False)
        seconds = time.perf_counter() - start
    set_mixed_precision("none")
    return steps * BATCH / seconds


def evaluation_seconds(users: int, config: BertConfig) -> dict:
    model = Bert4Rec(config)
    rng = np.random.default_rng(1)
    counts = np.concatenate([[0], rng.zipf(1.3, size=config.vocab_size - 4).clip(1, 10_000), [0, 0, 0]])
    histories = {user: rng.integers(1, config.vocab_size - 3, size=160).tolist() for user in range(users)}
    logits_fn = tf.function(model.next_item_logits)
    timings = {}
    for protocol in ("pop100", "uni100", "full"):
        evaluator = RankingEvaluator(CandidateSampler(counts, seed=12345, num_items=config.vocab_size - 4),
                                     [protocol], histories)
        start = time.perf_counter()
        for begin in range(0, users, BATCH):
            batch = synthetic_batch(rng, min(BATCH, users - begin), config.vocab_size)
            batch["masked_lm_positions"][:, 0] = LENGTH - 1
            user_indices = np.arange(begin, begin + len(batch["input_ids"]))
            evaluator.update(user_indices, batch["masked_lm_ids"][:, 0], logits_fn(batch).numpy())
        timings[protocol] = round(time.perf_counter() - start, 2)
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--users", type=int, default=6040)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    config = BertConfig.from_json_file(CONFIG_FILE)
    float32_rate = training_rate("none", args.steps, config)
    bfloat16_rate = training_rate("bfloat16", args.steps, config)
    print(json.dumps({
        "bench": "bert4rec_train",
        "shape": {"batch": BATCH, "max_seq_length": LENGTH, "max_predictions": PREDICTIONS,
                  "vocab_size": config.vocab_size, "hidden_size": config.hidden_size},
        "train_sequences_per_sec": {"float32": round(float32_rate, 1), "bfloat16": round(bfloat16_rate, 1)},
        "bfloat16_speedup": round(bfloat16_rate / float32_rate, 2),
        "eval_users": args.users,
        "eval_seconds": evaluation_seconds(args.users, config),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
