"""Benchmark: BERT4Rec training throughput, before/after packing the output layer and bucketing by
history length, and evaluation time.

Prints one JSON line. Each shape is timed with three losses, alternating in one process so that all see
the same machine load: "all_slots" (the output layer over every prediction slot, padding included; the
reference), "packed" (`bert4rec_loss(length_buckets=1)`: only slots with weight > 0 reach the output
layer, the batch's trailing padding columns skipped) and "bucketed" (`bert4rec_loss`'s default: the batch
also encoded in groups of similar history length, each cut to its own longest). "speedup" is each of the
last two against all_slots. Full training steps (AdamW, clip 5.0) through `common.training.Trainer`, batch
256, float32.

  ml-1m       length 200, 40 predictions, vocab 3,420 (bert_config_ml-1m_64): every window full, every
              slot filled (the worst case: what is left is the encoder's own cost over full windows).
  ml-1m-fill  the same config with real-looking fill: training windows drawn like MovieLens-1M's as
              gen_data_fin cuts them (6,040 users' lengths from a lognormal, leave-one-out, windows with
              step 100, instances uniform over all windows), masked counts as gen_data_fin draws them
              (masked_lm_prob 0.2, at most 40, 10 random passes + 1 last-item pass).
  beauty      length 50, 30 predictions, vocab 54,546 (bert_config_beauty_64) with real-looking fill:
              window lengths drawn like Beauty's (heavy-tailed, about 8.8 items), masked counts as
              gen_data_fin draws them (masked_lm_prob 0.6): about 5 of 30 slots filled.

Evaluation: pop100, uni100 and full for `--users` synthetic users (ml-1m's vocabulary), and, beside it,
all three for the Beauty-shaped set's 40,226 users x 54,546 ids as bench/bert4rec_eval.py times them
("beauty_eval": the first run with tracing, then again; `--nobeauty_eval` skips it).

`--recbole_python=/path/to/python` also times RecBole's BERT4Rec (a Python with recbole and torch) on the
same shapes and prints its figure beside ours.

    python bench/bert4rec_train.py [--shapes ml-1m,ml-1m-fill,beauty] [--steps 30] [--rounds 2] [--users 6040]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert4rec.evaluation import CandidateSampler, RankingEvaluator  # noqa: E402
from bert4rec.masking import num_to_predict, sliding_step, window_counts  # noqa: E402
from bert4rec.model import Bert4Rec, bert4rec_loss, bert4rec_loss_all_slots  # noqa: E402
from common.config import BertConfig  # noqa: E402
from common.distribute import get_strategy  # noqa: E402
from common.optimization import create_optimizer, set_mixed_precision  # noqa: E402
from common.training import Trainer as LoopTrainer, TrainSettings, skip_consumed_batches  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bert4rec", "bert_train")
BATCH = 256
LOSSES = {"all_slots": bert4rec_loss_all_slots, "packed": functools.partial(bert4rec_loss, length_buckets=1),
          "bucketed": bert4rec_loss}
STEPS_PER_CALL = 5
DISTINCT_BATCHES = 8  # batches cycled through, so that per-batch fill and length vary as in real data


def beauty_like_lengths(rng: np.random.Generator, size: int, max_seq_length: int) -> np.ndarray:
    """Training-side window lengths like Beauty's: users keep >= 5 items (>= 4 before the held-out one),
    mean about 8.8, a long tail cut by the window."""
    return np.minimum(4 + np.floor(rng.lognormal(mean=1.2, sigma=1.0, size=size)).astype(np.int64), max_seq_length)


# MovieLens-1M: 6,040 users, each with >= 20 ratings (at most 2,314), median about 96, mean 163.5 (the
# BERT4Rec paper's Table 1). exp(mu) = 96 and exp(mu + sigma^2 / 2) = 163.5 give sigma = 1.032; the draw
# rounded and clipped to [20, 2314] has median 96 and mean 163 (within 1% of both).
ML1M_USERS, ML1M_MU, ML1M_SIGMA, ML1M_MIN, ML1M_MAX = 6040, np.log(96.0), 1.032, 20, 2314


def ml1m_like_lengths(rng: np.random.Generator, size: int, max_seq_length: int) -> np.ndarray:
    """Training window lengths like MovieLens-1M's as gen_data_fin cuts them: a user's training side is all
    but the last item, cut into windows with step `sliding_step(max_seq_length, 0.5)`, all full but for a
    short sequence's single window; the record file shuffles all windows, so an instance is a uniform draw
    over all windows of all users (long histories weigh more: about half the windows are full)."""
    users = np.clip(np.round(rng.lognormal(ML1M_MU, ML1M_SIGMA, size=ML1M_USERS)), ML1M_MIN, ML1M_MAX)
    train_lengths = users.astype(np.int64) - 1
    counts = window_counts(train_lengths, max_seq_length, sliding_step(max_seq_length, 0.5))
    return rng.choice(np.repeat(np.minimum(train_lengths, max_seq_length), counts), size=size)


# config, max_seq_length, max_predictions, masked_lm_prob (None: every window full, every slot filled),
# window lengths drawn by
SHAPES = {
    "ml-1m": ("bert_config_ml-1m_64.json", 200, 40, None, None),
    "ml-1m-fill": ("bert_config_ml-1m_64.json", 200, 40, 0.2, ml1m_like_lengths),
    "beauty": ("bert_config_beauty_64.json", 50, 30, 0.6, beauty_like_lengths),
}


def synthetic_batch(rng: np.random.Generator, batch: int, vocab_size: int, length: int, predictions: int,
                    masked_lm_prob: float | None, lengths_fn=None) -> dict:
    """Right-padded instances laid out like gen_data_fin's (1 pass in 11 masks only the last item)."""
    num_items = vocab_size - 4
    last_only = np.zeros(batch, dtype=bool)
    if masked_lm_prob is None:
        lengths = np.full(batch, length)
        counts = np.full(batch, predictions)
    else:
        lengths = lengths_fn(rng, batch, length)
        counts = num_to_predict(lengths, masked_lm_prob, predictions)
        last_only = rng.random(batch) < 1 / 11
        counts[last_only] = 1
    columns = np.arange(length)
    real = columns < lengths[:, None]
    input_ids = np.where(real, rng.integers(1, num_items + 1, size=(batch, length)), 0).astype(np.int32)
    keys = np.where(real, rng.random((batch, length)), 2.0)
    positions = np.sort(np.argsort(keys, axis=1)[:, :predictions], axis=1)
    filled = np.arange(predictions) < counts[:, None]
    positions = np.where(filled, positions, 0)
    positions[last_only, 0] = lengths[last_only] - 1
    masked_ids = np.where(filled, np.take_along_axis(input_ids, positions, axis=1), 0)
    rows = np.nonzero(filled)[0]
    input_ids[rows, positions[filled]] = num_items + 1
    return {"info": np.arange(batch, dtype=np.int32)[:, None], "input_ids": input_ids,
            "input_mask": real.astype(np.int32), "masked_lm_positions": positions.astype(np.int32),
            "masked_lm_ids": masked_ids.astype(np.int32), "masked_lm_weights": filled.astype(np.float32)}


def make_batches(shape: str, config: BertConfig) -> list[dict]:
    _, length, predictions, masked_lm_prob, lengths_fn = SHAPES[shape]
    rng = np.random.default_rng(0)
    return [synthetic_batch(rng, BATCH, config.vocab_size, length, predictions, masked_lm_prob, lengths_fn)
            for _ in range(DISTINCT_BATCHES)]


class Trainer:
    """One model + optimizer per (shape, loss); `rate(steps)` times `steps` more training steps."""

    def __init__(self, config: BertConfig, batches: list[dict], loss_name: str, model_dir: str):
        self.strategy = get_strategy("default")
        stacked = {name: np.stack([batch[name] for batch in batches]) for name in batches[0]}
        self.dataset_fn = lambda _: tf.data.Dataset.from_tensor_slices(stacked).repeat()
        with self.strategy.scope():
            self.model = Bert4Rec(config)
            self.optimizer = create_optimizer(1e-4, 1_000_000, 10, weight_decay=0.01, clip_norm=5.0)
        self.step = 0
        self.loop = LoopTrainer(self.strategy, self.model, self.optimizer, LOSSES[loss_name], TrainSettings(
            model_dir=model_dir, num_train_steps=0, steps_per_execution=STEPS_PER_CALL, summary=False,
            progress=False, max_checkpoints_to_keep=1))

    def rate(self, steps: int) -> float:
        """Sequences per second over `steps` more steps (fit leaves its first call out of the rate)."""
        self.step += steps
        self.loop.settings = dataclasses.replace(self.loop.settings, num_train_steps=self.step)
        result = self.loop.fit(skip_consumed_batches(self.dataset_fn))
        return result.steps_per_second * BATCH


def training_rates(shape: str, steps: int, rounds: int) -> dict:
    config = BertConfig.from_json_file(os.path.join(CONFIG_DIR, SHAPES[shape][0]))
    batches = make_batches(shape, config)
    rates = {name: [] for name in LOSSES}
    with tempfile.TemporaryDirectory() as work:
        trainers = {name: Trainer(config, batches, name, os.path.join(work, name)) for name in LOSSES}
        for _ in range(rounds):  # alternate, so all losses see the same load
            for name, trainer in trainers.items():
                rates[name].append(trainer.rate(steps))
    fill = float(np.mean([batch["masked_lm_weights"].mean() for batch in batches]))
    lengths = np.concatenate([batch["input_mask"].sum(1) for batch in batches])
    best = {name: round(max(values), 1) for name, values in rates.items()}
    return {"sequences_per_sec": best, "all_rounds": {k: [round(v, 1) for v in values] for k, values in rates.items()},
            "speedup": {name: round(best[name] / best["all_slots"], 2) for name in ("bucketed", "packed")},
            "filled_slots_per_instance": round(fill * SHAPES[shape][2], 2),
            "mean_length": round(float(lengths.mean()), 1),
            "full_window_fraction": round(float(np.mean(lengths == SHAPES[shape][1])), 3),
            "vocab_size": config.vocab_size, "max_seq_length": SHAPES[shape][1],
            "max_predictions": SHAPES[shape][2]}


# RecBole's BERT4Rec on the same synthetic batches: its own model, CE loss (over every mask slot, padding ones
# weighted 0, as its MaskItemSequence transform lays them out) and an Adam step, on CPU, batch 256.
RECBOLE_SCRIPT = textwrap.dedent("""
    import json, sys, time, types
    import torch
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec
    spec = json.load(sys.stdin)
    torch.set_num_threads(int(spec["threads"]))
    results = {}
    for shape, (num_items, length, predictions, batches) in spec["shapes"].items():
        config = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
                  "ITEM_LIST_LENGTH_FIELD": "item_length", "POSITION_FIELD": "position_id", "NEG_PREFIX": "neg_",
                  "MAX_ITEM_LIST_LENGTH": length, "device": torch.device("cpu"), "n_layers": 2, "n_heads": 2,
                  "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2,
                  "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
                  "mask_ratio": predictions / length, "loss_type": "CE", "ft_ratio": 0.0,
                  "transform": "mask_itemseq", "MASK_ITEM_SEQ": "Mask_item_id_list", "POS_ITEMS": "Pos_item_id",
                  "NEG_ITEMS": "Neg_item_id", "MASK_INDEX": "MASK_INDEX"}

        class Config(dict):
            def __getitem__(self, key):
                return dict.get(self, key)

            def __contains__(self, key):
                return dict.__contains__(self, key)

        dataset = types.SimpleNamespace(num=lambda field: num_items + 1)  # ids 1..num_items, 0 pads
        model = BERT4Rec(Config(config), dataset)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        interactions = [{"Mask_item_id_list": torch.tensor(batch["input_ids"]),
                         "Pos_item_id": torch.tensor(batch["labels"]),
                         "Neg_item_id": torch.zeros(len(batch["labels"]), predictions, dtype=torch.long),
                         "MASK_INDEX": torch.tensor(batch["positions"])} for batch in batches]

        def step(interaction):
            optimizer.zero_grad()
            loss = model.calculate_loss(interaction)
            loss.backward()
            optimizer.step()

        for interaction in interactions[:2]:
            step(interaction)
        start = time.perf_counter()
        for index in range(spec["steps"]):
            step(interactions[index % len(interactions)])
        results[shape] = spec["steps"] * len(batches[0]["labels"]) / (time.perf_counter() - start)
    print(json.dumps(results))
""")


def recbole_rates(python: str, shapes: list[str], steps: int) -> dict:
    """RecBole's training rate (sequences/s) per shape, from `python` (an environment with recbole + torch)."""
    spec = {"steps": steps, "threads": os.cpu_count(), "shapes": {}}
    for shape in shapes:
        config = BertConfig.from_json_file(os.path.join(CONFIG_DIR, SHAPES[shape][0]))
        batches = [{"input_ids": batch["input_ids"].tolist(), "labels": batch["masked_lm_ids"].tolist(),
                    # RecBole marks padding slots with index 0 (so a real target at position 0 is dropped there)
                    "positions": (batch["masked_lm_positions"] * (batch["masked_lm_weights"] > 0)).tolist()}
                   for batch in make_batches(shape, config)[:4]]
        spec["shapes"][shape] = [config.vocab_size - 4, SHAPES[shape][1], SHAPES[shape][2], batches]
    # The spec goes on stdin: as one argument it exceeds Linux's 128 KiB per-argument limit (E2BIG).
    try:
        result = subprocess.run([python, "-c", RECBOLE_SCRIPT], input=json.dumps(spec), capture_output=True,
                                text=True, check=False)
    except OSError as error:  # no such Python, not executable, ...
        return {"error": f"{type(error).__name__}: {error}"}
    if result.returncode != 0:
        return {"error": " ".join(result.stderr.strip().splitlines()[-2:])}
    return {shape: round(rate, 1) for shape, rate in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def evaluation_seconds(users: int) -> dict:
    config = BertConfig.from_json_file(os.path.join(CONFIG_DIR, SHAPES["ml-1m"][0]))
    model = Bert4Rec(config)
    rng = np.random.default_rng(1)
    counts = np.concatenate([[0], rng.zipf(1.3, size=config.vocab_size - 4).clip(1, 10_000), [0, 0, 0]])
    histories = {user: rng.integers(1, config.vocab_size - 3, size=160).tolist() for user in range(users)}
    logits_fn = tf.function(model.next_item_logits, reduce_retracing=True)
    timings = {}
    for protocol in ("pop100", "uni100", "full"):
        evaluator = RankingEvaluator(CandidateSampler(counts, seed=12345, num_items=config.vocab_size - 4),
                                     [protocol], histories)
        start = time.perf_counter()
        for begin in range(0, users, BATCH):
            batch = synthetic_batch(rng, min(BATCH, users - begin), config.vocab_size, 200, 40, None)
            batch["masked_lm_positions"][:, 0] = 199
            user_indices = np.arange(begin, begin + len(batch["input_ids"]))
            evaluator.update(user_indices, batch["masked_lm_ids"][:, 0], logits_fn(batch).numpy())
        timings[protocol] = round(time.perf_counter() - start, 2)
    return timings


def beauty_evaluation_seconds() -> dict:
    """pop100 + uni100 + full for the Beauty-shaped set's 40,226 users x 54,546 ids, as bench/bert4rec_eval.py
    times it (first run with tracing, then again), printed beside the 6,040-user figure above."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bert4rec_eval import time_beauty_evaluation

    work = tempfile.mkdtemp(prefix="bert4rec_train_eval_")
    try:
        summary, _, _, _, timings, _ = time_beauty_evaluation(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"users": summary["users"], "vocab_size": summary["vocab_size"], "protocols": ["pop100", "uni100", "full"],
            "seconds_first": round(timings[0], 1), "seconds_second": round(timings[1], 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="ml-1m,ml-1m-fill,beauty")
    parser.add_argument("--steps", type=int, default=30,
                        help=f"training steps per round (the first {STEPS_PER_CALL} trace and are not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per loss (best one reported)")
    parser.add_argument("--users", type=int, default=6040, help="users evaluated (0: skip evaluation)")
    parser.add_argument("--recbole_python", default=None, help="a Python with recbole + torch: time it too")
    parser.add_argument("--beauty_eval", action=argparse.BooleanOptionalAction, default=True,
                        help="also time pop100 + uni100 + full at Beauty's size (bench/bert4rec_eval.py's figure)")
    args = parser.parse_args()
    shapes = [shape for shape in args.shapes.split(",") if shape]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    keras.utils.set_random_seed(0)
    set_mixed_precision("none")
    report = {"bench": "bert4rec_train", "batch": BATCH, "precision": "float32", "cpu_count": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2),
              "shapes": {shape: training_rates(shape, args.steps, args.rounds) for shape in shapes}}
    if args.recbole_python:
        recbole = recbole_rates(args.recbole_python, shapes, args.steps)
        report["recbole_sequences_per_sec"] = recbole
        for shape in shapes:
            if isinstance(recbole.get(shape), float):
                report["shapes"][shape]["bucketed_vs_recbole"] = round(
                    report["shapes"][shape]["sequences_per_sec"]["bucketed"] / recbole[shape], 2)
    if args.users:
        report["eval_users"] = args.users
        report["eval_seconds"] = evaluation_seconds(args.users)
    if args.beauty_eval:
        report["beauty_eval"] = beauty_evaluation_seconds()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
