"""The original's epoch structure on top of `common.training.train` (the suite's one training loop).

Each epoch is one `train` call that continues the same checkpoint up to `epoch * steps_per_epoch`
steps on that epoch's data, followed by an evaluation, one log line, `log.json`, the loss plot and
the best model. A restarted run resumes after the last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Callable, Mapping

import keras
import tensorflow as tf
from keras import ops

from common.distribute import is_chief
from common.io_utils import atomic_write_json
from common.training import current_learning_rate, train, write_scalars

LOG_FILE = "log.json"
BEST_DIR = "best"


class EpochLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The original's schedule: `learnrate` during epoch 1, lowered by learnrate / epochs after each
    epoch (eta -= rate), constant within an epoch."""

    def __init__(self, initial_learning_rate: float, steps_per_epoch: int, num_epochs: int):
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.num_epochs = int(num_epochs)

    def __call__(self, step):
        finished_epochs = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        return self.initial_learning_rate * ops.maximum(1.0 - finished_epochs / self.num_epochs, 0.0)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "steps_per_epoch": self.steps_per_epoch, "num_epochs": self.num_epochs}


def latest_step(model_dir: str) -> int:
    """The step of the newest checkpoint `train` wrote in `model_dir` (0 when there is none)."""
    path = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
    match = re.search(r"-(\d+)$", path or "")
    return int(match.group(1)) if match else 0


def read_log(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, LOG_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@dataclasses.dataclass
class EpochSettings:
    num_epochs: int
    steps_per_epoch: int
    model_dir: str
    best_metric: str  # a key of the evaluation dict, e.g. "D/loss"
    best_mode: str = "min"
    patience: int | None = None  # epochs without a better `best_metric` before stopping
    plot_keys: tuple[str, ...] = ("T/loss", "D/loss")
    plot: bool = True
    progress: bool = True


def run_epochs(strategy: tf.distribute.Strategy, model: keras.Model, optimizer, loss_fn: Callable,
               dataset_fn: Callable[[int, tf.distribute.InputContext], tf.data.Dataset],
               evaluate_epoch: Callable[[int], Mapping[str, float]], settings: EpochSettings,
               format_line: Callable[[dict], str], print_fn: Callable[[str], None] = print) -> list[dict]:
    """Trains epoch by epoch; returns the log (one dict per epoch, resumed epochs included).

    `dataset_fn(epoch, input_context)` gives exactly `steps_per_epoch` per-replica batches of that
    epoch; `evaluate_epoch(epoch)` returns the evaluation metrics ("D/..." names).
    """
    model_dir = settings.model_dir
    chief = is_chief(strategy)
    os.makedirs(model_dir, exist_ok=True)
    history = [entry for entry in read_log(model_dir)]
    done = latest_step(model_dir) // settings.steps_per_epoch
    history = [entry for entry in history if entry["epoch"] <= done]
    better = (lambda new, old: new < old) if settings.best_mode == "min" else (lambda new, old: new > old)
    best_value = None
    for entry in history:
        if best_value is None or better(entry[settings.best_metric], best_value):
            best_value = entry[settings.best_metric]
    best_checkpoint = tf.train.Checkpoint(model=model)
    best_manager = tf.train.CheckpointManager(best_checkpoint, os.path.join(model_dir, BEST_DIR), max_to_keep=1)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval")) if chief else None
    since_best = 0
    if history and best_value is not None:
        best_epoch = max(e["epoch"] for e in history if e[settings.best_metric] == best_value)
        since_best = history[-1]["epoch"] - best_epoch
    started = time.perf_counter()

    for epoch in range(done + 1, settings.num_epochs + 1):
        if settings.patience is not None and since_best >= settings.patience:
            print_fn(f"early stopping: {settings.best_metric} has not improved for {since_best} epochs")
            break
        train_start = time.perf_counter()
        # The epoch's dataset starts at this epoch's first step: `start_step` needs no skipping.
        epoch_dataset_fn = (lambda context, start_step=0, epoch=epoch: dataset_fn(epoch, context))
        result = train(strategy, model, optimizer, epoch_dataset_fn,
                       loss_fn, num_train_steps=epoch * settings.steps_per_epoch, model_dir=model_dir,
                       save_checkpoints_steps=None, max_checkpoints_to_keep=2,
                       log_every_steps=settings.steps_per_epoch, progress=settings.progress, summary=True)
        train_seconds = time.perf_counter() - train_start
        losses = [loss for _, loss in result.losses]
        rates = last_step_rates(optimizer)
        eval_start = time.perf_counter()
        metrics = dict(evaluate_epoch(epoch))
        eval_seconds = time.perf_counter() - eval_start
        entry = {"epoch": epoch, "T/loss": sum(losses) / max(len(losses), 1), "T/sec": train_seconds,
                 **{f"T/{key}": value for key, value in (getattr(result, "metrics", None) or {}).items()},
                 **metrics, "D/sec": eval_seconds, **rates,
                 "elapsed_time": time.perf_counter() - started}
        history.append(entry)
        print_fn(format_line(entry))
        value = entry[settings.best_metric]
        if best_value is None or better(value, best_value):
            best_value, since_best = value, 0
            if chief:
                path = best_manager.save(checkpoint_number=epoch)
                print_fn(f"saving best model ({settings.best_metric}={value:.6f}) at epoch {epoch}: {path}")
        else:
            since_best += 1
        if chief:
            atomic_write_json(os.path.join(model_dir, LOG_FILE), history)
            write_scalars(writer, epoch * settings.steps_per_epoch,
                          {key: float(val) for key, val in entry.items() if key.startswith(("T/", "D/"))})
            if settings.plot:
                from common.plotting import plot_curves
                curves = {key: [e[key] for e in history] for key in settings.plot_keys if key in entry}
                plot_curves(curves, os.path.join(model_dir, "loss.png"))
    if writer is not None:
        writer.close()
    return history


def last_step_rates(optimizer) -> dict[str, float]:
    """Read from the optimizer after its last step, as the original prints Chainer's: `eta` the
    learning rate, `lr` Adam's bias-correction factor sqrt(1 - b2^t) / (1 - b1^t) (1.0 without)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "step_size_factor"):
        return {"lr": inner.step_size_factor(), "eta": inner.last_learning_rate()}
    return {"lr": 1.0, "eta": current_learning_rate(inner)}


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return max(1, math.ceil(num_examples / global_batch_size))
