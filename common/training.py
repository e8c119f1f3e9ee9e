"""The one training loop of the suite: `Trainer` owns a run.

`model.fit` fails under MultiWorkerMirroredStrategy on this stack, so every package trains through
`Trainer`: `strategy.run` inside a `tf.function`, exact global-batch losses, resumable
`tf.train.Checkpoint`s that continue the data stream, steps or epochs, periodic evaluation with
callbacks (best checkpoints, early stopping, per-epoch lines), tqdm progress, plain log lines and
TensorBoard scalars.

    settings = TrainSettings(model_dir="out", num_train_steps=1000, save_checkpoints_steps=100)
    trainer = Trainer(strategy, model, optimizer, loss_fn, settings, eval_fn=eval_fn,
                      callbacks=[BestCheckpoint("metrics/accuracy", "max")])
    result = trainer.fit(dataset_fn)      # dataset_fn(input_context, start_step) -> tf.data.Dataset
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
import weakref
from typing import Callable, Mapping, Sequence

import keras
import tensorflow as tf
from absl import logging
from keras import ops
from tensorflow.core.framework import summary_pb2
from tqdm.auto import tqdm

from common.checkpoints import make_checkpoint_manager, restore_latest
from common.distribute import distribute_dataset, is_chief
from common.io_utils import atomic_write_json, read_json
from common.losses import sparse_softmax_cross_entropy
from common.optimization import maybe_wrap_for_loss_scaling

EVAL_HISTORY_FILE = "eval_history.json"
BEST_INFO_FILE = "best.json"
BEST_MODES = ("max", "min")
# Keys of an evaluation record that the Trainer sets; an eval_fn may not return them.
RECORD_KEYS = ("step", "epoch")


@dataclasses.dataclass
class TrainSettings:
    """Everything about a run except the model, optimizer, loss and data.

    Steps mode: `num_train_steps`. Epoch mode: `num_epochs` and `steps_per_epoch` (the run is
    num_epochs * steps_per_epoch steps; checkpoints, evaluation and `on_epoch_end` at every epoch end).
    """

    model_dir: str
    num_train_steps: int | None = None
    num_epochs: int | None = None
    steps_per_epoch: int | None = None
    # Checkpoint every this many steps (None or 0: only at the end, and at every epoch end in epoch mode).
    save_checkpoints_steps: int | None = None
    max_checkpoints_to_keep: int = 5
    # A `step S/N loss ...` line and TensorBoard scalars every this many steps (and at the end).
    log_every_steps: int = 100
    # Steps per tf.function call: amortises Python/dispatch overhead (chunks still end on boundaries).
    steps_per_execution: int = 1
    # Evaluate every this many steps (None: every epoch in epoch mode, else only at the end).
    eval_every_steps: int | None = None
    summary: bool = True  # TensorBoard scalars under model_dir/train and model_dir/eval
    progress: bool = True  # a tqdm bar on the chief

    @property
    def epoch_mode(self) -> bool:
        return self.num_epochs is not None

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch if self.epoch_mode else self.num_train_steps

    def check(self) -> None:
        """ValueError naming the setting that is wrong."""
        if self.epoch_mode == (self.num_train_steps is not None):
            raise ValueError("TrainSettings: give num_train_steps (steps mode) or num_epochs with "
                             f"steps_per_epoch (epoch mode), not both; got num_train_steps={self.num_train_steps}, "
                             f"num_epochs={self.num_epochs}")
        if self.epoch_mode and (self.steps_per_epoch is None or self.steps_per_epoch < 1 or self.num_epochs < 0):
            raise ValueError(f"TrainSettings: epoch mode needs num_epochs >= 0 and steps_per_epoch >= 1, got "
                             f"{self.num_epochs} and {self.steps_per_epoch}")
        if not self.epoch_mode and self.num_train_steps < 0:
            raise ValueError(f"TrainSettings: num_train_steps must be >= 0, got {self.num_train_steps}")
        for name in ("log_every_steps", "steps_per_execution", "max_checkpoints_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSettings: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every_steps", "save_checkpoints_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"TrainSettings: {name} must be >= 1 (or None), got {getattr(self, name)}")


@dataclasses.dataclass
class TrainResult:
    final_step: int
    # (step, loss) for every step run by this call; step counts from 1 (the value after the update).
    losses: list[tuple[int, float]]
    # Measured after the first tf.function call (which includes tracing) when there was more than one.
    steps_per_second: float
    # The last log window's {"loss": mean, "terms": {name: mean}, "metrics": {name: sum / count}}.
    train_metrics: dict = dataclasses.field(default_factory=dict)
    # Every evaluation of the run, resumed ones included: {"step": S, ["epoch": E,] **eval_fn's results}.
    eval_history: list[dict] = dataclasses.field(default_factory=list)
    # Each BestCheckpoint's directory -> its best.json ({"step", "metric", "mode", "value", "record"}).
    best: dict[str, dict] = dataclasses.field(default_factory=dict)
    # True when a callback (EarlyStopping) ended the run before its last step.
    stopped_early: bool = False


LOSS_METRICS_KEY = "metrics"


def split_loss_output(output) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """`(loss_terms, metrics)` from what a `loss_fn` returns, both {name: (sum, normalizer/count)}.

    Accepted: `(loss_sum, normalizer)` (one term named "loss"), or a dict of such pairs (the terms)
    that may also hold `"metrics": {name: (sum, count)}`.
    """
    if isinstance(output, Mapping):
        terms = {name: value for name, value in output.items() if name != LOSS_METRICS_KEY}
        metrics = dict(output.get(LOSS_METRICS_KEY) or {})
    else:
        terms, metrics = {"loss": output}, {}
    if not terms:
        raise ValueError("loss_fn returned no loss term (only metrics)")
    for kind, pairs in (("loss term", terms), ("metric", metrics)):
        for name, pair in pairs.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"loss_fn {kind} {name!r} must be a (sum, count) pair, got {pair!r}")
    clashes = sorted(set(terms) & set(metrics))
    if clashes or ("loss" in terms and len(terms) > 1) or "loss" in metrics:
        raise ValueError(f"loss_fn names clash: terms {sorted(terms)}, metrics {sorted(metrics)} "
                         "(names must differ, and 'loss' is the sum of the terms)")
    return terms, metrics


def _correct(logits, labels):
    """1.0 where the arg-max of `logits` equals the integer label, else 0.0."""
    predictions = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.cast(ops.equal(predictions, ops.cast(labels, "int32")), "float32")


def _masked_lm_terms(outputs, features):
    logits = ops.cast(outputs["masked_lm_logits"], "float32")
    labels = features["masked_lm_ids"]
    weights = ops.cast(features["masked_lm_weights"], "float32")
    per_position = sparse_softmax_cross_entropy(labels, logits)
    correct = _correct(logits, labels)
    return (ops.sum(per_position * weights), ops.sum(weights)), (ops.sum(correct * weights), ops.sum(weights))


def _classification_terms(logits, labels):
    """(CE sum, count), (correct, count) of float32 softmax cross-entropy over integer labels."""
    logits = ops.cast(logits, "float32")
    labels = ops.reshape(labels, (-1,))
    per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = _correct(logits, labels)
    count = ops.cast(ops.shape(labels)[0], "float32")
    return (ops.sum(per_example), count), (ops.sum(correct), count)


def bert_pretraining_loss_fn(model, features, training):
    """Loss terms of `common.heads.BertPretrainer` in the `train` contract: weighted MLM + NSP.

    Terms "masked_lm" (weighted by masked_lm_weights) and "next_sentence" (with an NSP head and labels);
    metrics "masked_lm_accuracy" (weighted the same way) and "next_sentence_accuracy".
    """
    outputs = model(features, training=training)
    masked_lm, masked_lm_accuracy = _masked_lm_terms(outputs, features)
    terms = {"masked_lm": masked_lm}
    metrics = {"masked_lm_accuracy": masked_lm_accuracy}
    if "next_sentence_logits" in outputs and "next_sentence_labels" in features:
        terms["next_sentence"], metrics["next_sentence_accuracy"] = _classification_terms(
            outputs["next_sentence_logits"], features["next_sentence_labels"])
    return {**terms, LOSS_METRICS_KEY: metrics}


def classification_loss_fn(model, features, training):
    """Sparse softmax cross-entropy of `common.heads.BertClassifier` on `features["label_ids"]`.

    Computed in float32 whatever the mixed-precision policy; term "loss" (mean over examples) and
    metric "accuracy".
    """
    logits = model(features, training=training)
    if isinstance(logits, Mapping):
        logits = logits["logits"]
    loss, accuracy = _classification_terms(logits, features["label_ids"])
    return {"loss": loss, LOSS_METRICS_KEY: {"accuracy": accuracy}}


def _replica_term_losses(terms: Mapping[str, tuple]) -> dict:
    """Each term's share on this replica: loss_sum / normalizer summed over all replicas."""
    sums = [tf.cast(loss_sum, tf.float32) for loss_sum, _ in terms.values()]
    # Normalizers count targets; they carry no gradient, and one all-reduce serves every term.
    normalizers = [tf.stop_gradient(tf.cast(normalizer, tf.float32)) for _, normalizer in terms.values()]
    global_normalizers = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, normalizers)
    return {name: tf.math.divide_no_nan(loss_sum, normalizer)
            for name, loss_sum, normalizer in zip(terms, sums, global_normalizers)}


def replica_loss(loss_terms):
    """This replica's share of the global-batch loss: sum over terms of loss_sum / global normalizer.

    `loss_terms` is what a loss_fn returns; its "metrics" (if any) are ignored here.
    """
    terms, _ = split_loss_output(loss_terms)
    return tf.add_n(list(_replica_term_losses(terms).values()))


# Marks a summary as a TensorBoard scalar; `tf.summary.scalar` itself needs the tensorboard package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalars(writer, step: int, scalars: Mapping[str, float]) -> None:
    """Writes float scalars that TensorBoard's Scalars tab shows, without importing tensorboard."""
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
    writer.flush()


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer's next step will use (looks through a LossScaleOptimizer)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(ops.convert_to_numpy(inner.learning_rate))


class _Checkpoints:
    """Saves on every worker (saving may need all of them) but only the chief writes into model_dir;
    the others write to a temp dir they delete, as in TF's multi-worker tutorial."""

    def __init__(self, strategy, model_dir: str, max_to_keep: int, **trackables):
        self.chief = is_chief(strategy)
        self.write_dir = model_dir if self.chief else tempfile.mkdtemp(prefix="bertsuite_worker_ckpt_")
        self.checkpoint, self.manager = make_checkpoint_manager(self.write_dir, max_to_keep, **trackables)
        # Every worker resumes from the chief's checkpoints.
        self.restore_manager = (self.manager if self.chief
                                else tf.train.CheckpointManager(self.checkpoint, model_dir, max_to_keep))

    def close(self) -> None:
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)

    def restore(self) -> str | None:
        return restore_latest(self.checkpoint, self.restore_manager)

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        if self.chief:
            logging.info("saved checkpoint %s", path)
        else:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        return path


class _Totals:
    """Float64 running sums that the compiled step adds to and Python reads back at boundaries.

    The variables are created while the step function is first traced, when the names of the
    loss_fn's terms and metrics become known (a tf.while_loop cannot carry a structure it has not seen).
    """

    def __init__(self):
        # {"terms": {name: sum of per-step losses}, "metrics": {name: {"sum": .., "count": ..}}}
        self.variables: dict = {"terms": {}, "metrics": {}}
        self._count = 0

    def _variable(self):
        with tf.init_scope():
            self._count += 1
            return tf.Variable(0.0, dtype=tf.float64, trainable=False, name=f"total_{self._count}")

    def add_term(self, name: str, value) -> None:
        if name not in self.variables["terms"]:
            self.variables["terms"][name] = self._variable()
        self.variables["terms"][name].assign_add(tf.cast(value, tf.float64))

    def add_metric(self, name: str, total, count) -> None:
        if name not in self.variables["metrics"]:
            self.variables["metrics"][name] = {"sum": self._variable(), "count": self._variable()}
        self.variables["metrics"][name]["sum"].assign_add(tf.cast(total, tf.float64))
        self.variables["metrics"][name]["count"].assign_add(tf.cast(count, tf.float64))

    def read_and_reset(self) -> dict:
        values = tf.nest.map_structure(lambda variable: float(variable.numpy()), self.variables)
        for variable in tf.nest.flatten(self.variables):
            variable.assign(0.0)
        return values


class _Window:
    """Losses and totals over a span of steps (a log window or an epoch), summarised as nested results."""

    def __init__(self):
        self.losses: list[float] = []
        self.terms: dict[str, float] = {}
        self.metrics: dict[str, list[float]] = {}

    def add(self, totals: Mapping) -> None:
        for name, value in totals["terms"].items():
            self.terms[name] = self.terms.get(name, 0.0) + value
        for name, pair in totals["metrics"].items():
            accumulated = self.metrics.setdefault(name, [0.0, 0.0])
            accumulated[0] += pair["sum"]
            accumulated[1] += pair["count"]

    def results(self) -> dict:
        """{"loss": mean per-step loss, "terms": {name: mean}, "metrics": {name: sum / count}}."""
        steps = max(len(self.losses), 1)
        return {"loss": sum(self.losses) / steps,
                "terms": {name: value / steps for name, value in self.terms.items()},
                "metrics": {name: _ratio(total, count) for name, (total, count) in self.metrics.items()}}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def flatten_results(results: Mapping, prefix: str = "") -> dict[str, float]:
    """Nested results as {"a/b": value} (the names of TensorBoard tags and of callback metrics)."""
    flat = {}
    for name, value in results.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, key + "/"))
        else:
            flat[key] = value
    return flat


def _as_floats(results: Mapping, where: str) -> dict:
    """`results` with every leaf a Python float; TypeError naming the leaf that is not a number."""
    converted = {}
    for name, value in results.items():
        if isinstance(value, Mapping):
            converted[str(name)] = _as_floats(value, f"{where}/{name}")
            continue
        try:
            converted[str(name)] = float(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{where}/{name} is not a number: {value!r}") from error
    return converted


def _format_flat(flat: Mapping[str, float]) -> str:
    return " ".join(f"{name} {value:.4f}" for name, value in flat.items())


def _format_window(results: Mapping) -> str:
    """The window's terms and metrics by their plain names (they cannot clash: `split_loss_output`)."""
    return _format_flat({**results["terms"], **results["metrics"]})


# ---- data -----------------------------------------------------------------------------------------

def skip_consumed_batches(dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
    """A `dataset_fn(input_context, start_step)` from a plain `dataset_fn(input_context)`.

    A run that starts at `start_step` skips the batches the steps before it consumed (one per local
    replica and step), which reproduces an uninterrupted run's order when the dataset is
    deterministic (seeded shuffle) but reads (and decodes) every skipped batch once.
    """
    def continuing_dataset_fn(input_context, start_step):
        if not start_step:
            return dataset_fn(input_context)
        batches_per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        logging.info("continuing the data stream: skipping %d batches (%d steps) of input pipeline %d",
                     start_step * batches_per_step, start_step, input_context.input_pipeline_id)
        return dataset_fn(input_context).skip(start_step * batches_per_step)
    return continuing_dataset_fn


# ---- multi-worker agreement -----------------------------------------------------------------------

def _broadcast_from_chief(strategy, values: list[float]) -> list[float]:
    """The chief's `values` on every worker (multi-worker only; elsewhere returns `values`)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return values
    chief = is_chief(strategy)

    def chief_share():
        # Each of the chief's replicas contributes (value, 1); all others (0, 0).
        weight = tf.constant(1.0 if chief else 0.0, tf.float64)
        return tf.constant(values, tf.float64) * weight, weight

    totals, weights = strategy.run(chief_share)
    totals = strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)
    weights = strategy.reduce(tf.distribute.ReduceOp.SUM, weights, axis=None)
    return [float(value) for value in (totals / weights).numpy()]


# ---- callbacks ------------------------------------------------------------------------------------

@dataclasses.dataclass
class EpochLogs:
    """What `Callback.on_epoch_end` sees (epoch mode)."""

    epoch: int  # counts from 1
    step: int  # the step after the epoch's last update
    train: dict  # {"loss", "terms", "metrics"} over the epoch's steps run by this call
    train_seconds: float  # in the training step function (tracing included), no evaluation
    evaluation: dict | None  # the epoch's evaluation record, if one ran at its end
    eval_seconds: float
    learning_rate: float  # the optimizer's for its next step
    elapsed_seconds: float  # since `fit` started


class Callback:
    """Hooks of a run. The Trainer calls them on EVERY worker (they may use collectives); a hook that
    writes files checks `trainer.chief`; a hook that ends the run sets `trainer.stop_training`, and the
    chief's value is the one every worker follows."""

    def on_run_begin(self, trainer: "Trainer", start_step: int, history: list[dict]) -> None:
        """Before the first step; `history` holds the evaluations of earlier runs up to `start_step`."""

    def on_evaluation(self, trainer: "Trainer", record: dict) -> None:
        """After each evaluation; `record` is {"step", ["epoch",] **eval_fn's results}."""

    def on_epoch_end(self, trainer: "Trainer", logs: EpochLogs) -> None:
        """After each epoch (epoch mode), after its evaluation."""

    def on_run_end(self, trainer: "Trainer", result: TrainResult) -> None:
        """Before `fit` returns (also when there was nothing to train)."""


class _Improvement:
    """Best value of one metric in one direction; NaN never improves."""

    def __init__(self, metric: str, mode: str):
        if mode not in BEST_MODES:
            raise ValueError(f"mode must be one of {BEST_MODES}, got {mode!r}")
        self.metric, self.mode = metric, mode

    def value(self, record: Mapping, chief: bool) -> float:
        flat = flatten_results({key: value for key, value in record.items() if key not in RECORD_KEYS})
        if self.metric not in flat:
            if chief:
                raise ValueError(f"metric {self.metric!r} is not among the evaluation results {sorted(flat)}")
            return float("nan")
        return flat[self.metric]

    def improves(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


class BestCheckpoint(Callback):
    """Keeps the model (+ step) of the evaluation with the best `metric` in `model_dir/<directory>/`
    (a tf.train.Checkpoint that `tf.train.latest_checkpoint` finds) with `best.json`
    ({"step", "metric", "mode", "value", "record"}). Several may run at once (different directories).
    `metric` names a leaf of the evaluation results, nested names joined by "/" ("metrics/accuracy").
    The chief decides "new best" for every worker."""

    def __init__(self, metric: str, mode: str = "max", directory: str = "best"):
        self.improvement = _Improvement(metric, mode)
        self.metric, self.mode, self.directory = metric, mode, directory
        self.best: dict | None = None
        self._checkpoints = None

    def on_run_begin(self, trainer, start_step, history):
        path = os.path.join(trainer.settings.model_dir, self.directory)
        self._checkpoints = _Checkpoints(trainer.strategy, path, 1, model=trainer.model, step=trainer.step)
        best = read_json(os.path.join(path, BEST_INFO_FILE), default=None, missing_ok=True)
        # A best after the restored step belongs to a run that stopped before checkpointing it.
        self.best = best if (best is not None and best["step"] <= start_step
                             and best.get("metric") == self.metric and best.get("mode") == self.mode) else None

    def on_evaluation(self, trainer, record):
        value = self.improvement.value(record, trainer.chief)
        best_value = self.best["value"] if self.best else None
        improved = trainer.chief_decides(trainer.chief and self.improvement.improves(value, best_value))
        if improved:
            self.best = {"step": record["step"], "metric": self.metric, "mode": self.mode, "value": value,
                         "record": record}
            path = self._checkpoints.save(record["step"])
            if trainer.chief:
                atomic_write_json(os.path.join(trainer.settings.model_dir, self.directory, BEST_INFO_FILE),
                                  self.best)
                logging.info("new best %s %.6g at step %d: %s", self.metric, value, record["step"], path)
        elif self.best is not None and trainer.chief:
            logging.info("best %s %.6g at step %d", self.metric, self.best["value"], self.best["step"])

    def on_run_end(self, trainer, result):
        if self.best is not None:
            result.best[self.directory] = dict(self.best)
        if self._checkpoints is not None:
            self._checkpoints.close()


class EarlyStopping(Callback):
    """Ends the run after `patience` evaluations in a row without a better `metric` (a resumed run
    that had stopped stops again at once). Its state comes from the evaluation history."""

    def __init__(self, metric: str, mode: str = "max", patience: int = 3):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.improvement = _Improvement(metric, mode)
        self.metric, self.patience = metric, patience
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.since_best = 0

    def _update(self, record: Mapping, chief: bool) -> None:
        value = self.improvement.value(record, chief)
        if self.improvement.improves(value, self.best_value):
            self.best_value, self.best_step, self.since_best = value, record["step"], 0
        else:
            self.since_best += 1

    def _check(self, trainer, step: int) -> None:
        if self.since_best >= self.patience:
            trainer.stop_training = True
            if trainer.chief:
                logging.info("early stopping at step %d: %d evaluations without a better %s (best at step %s)",
                             step, self.since_best, self.metric, self.best_step)

    def on_run_begin(self, trainer, start_step, history):
        self.best_value, self.best_step, self.since_best = None, None, 0
        for record in history:
            self._update(record, trainer.chief)
        self._check(trainer, start_step)

    def on_evaluation(self, trainer, record):
        self._update(record, trainer.chief)
        self._check(trainer, record["step"])


# ---- the trainer ----------------------------------------------------------------------------------

class Trainer:
    """Trains `model` with `optimizer` on `loss_fn` as `settings` say; resumes from `settings.model_dir`.

    Contract:
    - `model` and `optimizer` are built by the caller under `strategy.scope()`. Under a float16
      policy the optimizer is wrapped in `keras.optimizers.LossScaleOptimizer` here.
    - `loss_fn(model, features, training)` returns `(loss_sum, normalizer)` over the replica's batch
      (e.g. sum of weighted per-token losses and sum of weights), or a dict of such pairs whose
      normalized terms are added (e.g. MLM + NSP). The loop sums each normalizer over all replicas and
      uses `loss_sum / global_normalizer` as the replica's loss; the replicas' gradients are then summed
      by the optimizer, so loss and gradients are exactly those of one device on the global batch.
      A term whose global normalizer is 0 contributes 0. (Keras's own optimizers clip each replica's
      part before that sum; `common.optimization.AdamWeightDecay` clips the sum.)
      The dict may also hold `"metrics": {name: (sum, count)}` (e.g. correct predictions and
      targets): summed over replicas and steps, reported as sum / count, never added to the loss.
    - `eval_fn(step) -> results` (a mapping of numbers, may be nested) runs every
      `settings.eval_every_steps` steps (epoch mode: every epoch by default) and after the last step,
      on EVERY worker (it may use collectives, e.g. `evaluate`); the chief logs
      `eval step S/N name value ...`, writes TensorBoard scalars under `model_dir/eval` and appends
      `{"step": S, ["epoch": E,] **results}` to `model_dir/eval_history.json` (loaded on resume;
      evaluations after the restored step are dropped). A resumed run whose last evaluation is older
      than its final step evaluates once more.
    - `callbacks`: see `Callback`, `BestCheckpoint`, `EarlyStopping`.
    - Multi-worker: every worker must call `fit`; only the chief writes into `model_dir`.
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, optimizer, loss_fn: Callable,
                 settings: TrainSettings, eval_fn: Callable[[int], Mapping] | None = None,
                 callbacks: Sequence[Callback] = ()):
        settings.check()
        needs_eval = [type(callback).__name__ for callback in callbacks
                      if isinstance(callback, (BestCheckpoint, EarlyStopping))]
        if eval_fn is None and (settings.eval_every_steps or needs_eval):
            raise ValueError(f"eval_every_steps and {needs_eval or 'evaluation callbacks'} need an eval_fn")
        directories = [callback.directory for callback in callbacks if isinstance(callback, BestCheckpoint)]
        if len(set(directories)) < len(directories):
            raise ValueError(f"each BestCheckpoint needs its own directory, got {directories}")
        self.strategy, self.model, self.loss_fn, self.settings = strategy, model, loss_fn, settings
        self.eval_fn, self.callbacks = eval_fn, list(callbacks)
        self.chief = is_chief(strategy)
        self.stop_training = False
        with strategy.scope():
            self.optimizer = maybe_wrap_for_loss_scaling(optimizer)
            if not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._totals = _Totals()
        self._run_steps = self._make_step_function()
        self.history: list[dict] = []
        self._eval_writer = None

    # -- the compiled step ------------------------------------------------------------------------
    def _make_step_function(self):
        strategy, model, optimizer, totals = self.strategy, self.model, self.optimizer, self._totals

        def replica_step(features):
            with tf.GradientTape() as tape:
                terms, metrics = split_loss_output(self.loss_fn(model, features, True))
                term_losses = _replica_term_losses(terms)
                loss = tf.add_n(list(term_losses.values()))
                scaled_loss = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled_loss, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)
            reported = {"terms": term_losses if len(terms) > 1 else {},
                        "metrics": {name: (tf.cast(total, tf.float32), tf.cast(count, tf.float32))
                                    for name, (total, count) in metrics.items()}}
            return loss, reported

        def global_sum(per_replica):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        @tf.function
        def run_steps(iterator, num_steps):
            # Several steps per call amortise the Python/dispatch overhead (steps_per_execution).
            losses = tf.TensorArray(tf.float32, size=num_steps)
            for index in tf.range(num_steps):
                per_replica_loss, reported = strategy.run(replica_step, args=(next(iterator),))
                losses = losses.write(index, global_sum(per_replica_loss))
                for name, value in reported["terms"].items():
                    totals.add_term(name, global_sum(value))
                for name, (total, count) in reported["metrics"].items():
                    totals.add_metric(name, global_sum(total), global_sum(count))
                self.step.assign_add(1)
            return losses.stack()

        return run_steps

    # -- multi-worker -----------------------------------------------------------------------------
    def chief_decides(self, flag: bool) -> bool:
        """The chief's `flag` on every worker (a collective under multi-worker: call it on all)."""
        return bool(_broadcast_from_chief(self.strategy, [float(flag)])[0])

    # -- evaluation -------------------------------------------------------------------------------
    def _load_history(self, start_step: int) -> None:
        path = os.path.join(self.settings.model_dir, EVAL_HISTORY_FILE)
        history = read_json(path, default=[], missing_ok=True)
        kept = [record for record in history if record["step"] <= start_step]
        if len(kept) < len(history):
            logging.info("dropping %d evaluations after the restored step %d from %s",
                         len(history) - len(kept), start_step, path)
        self.history = kept

    def _evaluate(self, step: int) -> dict:
        results = self.eval_fn(step)
        if not isinstance(results, Mapping):
            raise TypeError(f"eval_fn must return a mapping of names to numbers, got {results!r}")
        clashes = [key for key in RECORD_KEYS if key in results]
        if clashes:
            raise ValueError(f"eval_fn results may not hold {clashes}: the Trainer sets them")
        record = {"step": step}
        if self.settings.epoch_mode and step % self.settings.steps_per_epoch == 0:
            record["epoch"] = step // self.settings.steps_per_epoch
        record.update(_as_floats(results, "eval_fn results"))
        self.history.append(record)
        if self.chief:
            flat = flatten_results({key: value for key, value in record.items() if key not in RECORD_KEYS})
            logging.info("eval step %d/%d %s", step, self.settings.total_steps, _format_flat(flat))
            atomic_write_json(os.path.join(self.settings.model_dir, EVAL_HISTORY_FILE), self.history)
            if self.settings.summary:
                if self._eval_writer is None:
                    self._eval_writer = tf.summary.create_file_writer(
                        os.path.join(self.settings.model_dir, "eval"))
                write_scalars(self._eval_writer, step, flat)
        for callback in self.callbacks:
            callback.on_evaluation(self, record)
        return record

    def _agree_to_stop(self) -> bool:
        self.stop_training = self.chief_decides(self.stop_training)
        return self.stop_training

    # -- the run ----------------------------------------------------------------------------------
    def fit(self, dataset_fn: Callable[[tf.distribute.InputContext, int], tf.data.Dataset]) -> TrainResult:
        """Trains until step `settings.total_steps` (or a callback stops the run); returns what happened.

        `dataset_fn(input_context, start_step)` returns the dataset of PER-REPLICA batches
        (`input_context.get_per_replica_batch_size(global_batch_size)`) that continues the data stream
        of a run at `start_step` (0 for a fresh run; the restored step on resume), e.g. by reseeding its
        shuffle or skipping files; `skip_consumed_batches(plain_dataset_fn)` skips what the earlier steps
        consumed. It should repeat: a dataset that runs out before the last step raises ValueError.
        Local replica r of step s gets the (s * local_replicas + r)-th batch of its worker's dataset.

        Checkpoints (model, optimizer, step) go to `model_dir` every `save_checkpoints_steps` steps, at
        every epoch end (epoch mode) and at the end; the newest one is restored on start. Logs
        `step S/N loss L [terms and metrics] lr R X steps/s` every `log_every_steps` steps (over the
        steps since the previous line) with TensorBoard scalars under `model_dir/train` on the chief;
        in epoch mode also `epoch E/N loss L ... (T s)` per epoch.
        """
        settings, strategy = self.settings, self.strategy
        total = settings.total_steps
        self.stop_training = False
        checkpoints = _Checkpoints(strategy, settings.model_dir, settings.max_checkpoints_to_keep,
                                   model=self.model, optimizer=self.optimizer, step=self.step)
        result = TrainResult(final_step=0, losses=[], steps_per_second=0.0)
        writer = bar = None
        fit_started = time.perf_counter()
        try:
            restored = checkpoints.restore()
            start_step = current = int(self.step.numpy())
            if restored:
                logging.info("restored %s: resuming at step %d", restored, start_step)
            if self.eval_fn is not None:
                self._load_history(start_step)
            for callback in self.callbacks:
                callback.on_run_begin(self, start_step, list(self.history))
            result.final_step = start_step
            if self._agree_to_stop():
                logging.info("step %d: a callback had ended this run; nothing to train", start_step)
                result.stopped_early = True
                return self._finish(result)
            if start_step >= total:
                logging.info("step %d >= %d steps: nothing to train", start_step, total)
                if self.eval_fn is not None and (not self.history or self.history[-1]["step"] != start_step):
                    self._evaluate(start_step)
                return self._finish(result)

            iterator = iter(distribute_dataset(
                strategy, lambda input_context: dataset_fn(input_context, start_step)))
            per_epoch = settings.steps_per_epoch if settings.epoch_mode else None
            save_every = settings.save_checkpoints_steps or per_epoch or total
            eval_every = settings.eval_every_steps or per_epoch or total
            if settings.summary and self.chief:
                writer = tf.summary.create_file_writer(os.path.join(settings.model_dir, "train"))
            bar = tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True,
                       disable=not (settings.progress and self.chief))

            window, epoch_window = _Window(), _Window()
            window_start_time, window_start_step = time.perf_counter(), current
            epoch_train_seconds = 0.0

            def log_window():
                nonlocal window, window_start_time, window_start_step
                now = time.perf_counter()
                rate = (current - window_start_step) / max(now - window_start_time, 1e-9)
                results = window.results()
                learning_rate = current_learning_rate(self.optimizer)
                details = _format_window(results)
                logging.info("step %d/%d loss %.4f %slr %.2e %.1f steps/s", current, total, results["loss"],
                             details + " " if details else "", learning_rate, rate)
                if writer is not None:
                    write_scalars(writer, current, {**flatten_results(results), "learning_rate": learning_rate,
                                                    "steps_per_sec": rate})
                result.train_metrics = results
                window, window_start_time, window_start_step = _Window(), now, current

            def read_totals():
                totals = self._totals.read_and_reset()
                window.add(totals)
                epoch_window.add(totals)

            timed_steps, timed_seconds, calls = 0, 0.0, 0
            while current < total:
                # Chunks end on checkpoint, evaluation, log and epoch boundaries so those land exactly.
                chunk = min(settings.steps_per_execution, total - current, save_every - current % save_every,
                            eval_every - current % eval_every)
                if per_epoch:
                    chunk = min(chunk, per_epoch - current % per_epoch)
                started = time.perf_counter()
                try:
                    chunk_losses = self._run_steps(iterator, tf.constant(chunk, tf.int32)).numpy()
                except tf.errors.OutOfRangeError as error:
                    raise ValueError(f"the dataset ran out at step {current} of {total}; "
                                     "make dataset_fn repeat it") from error
                elapsed = time.perf_counter() - started
                epoch_train_seconds += elapsed
                calls += 1
                # The first call includes tracing: leave it out of the rate unless it was the only one.
                if calls > 1:
                    timed_steps, timed_seconds = timed_steps + chunk, timed_seconds + elapsed
                elif current + chunk >= total:
                    timed_steps, timed_seconds = chunk, elapsed

                previous, current = current, current + chunk
                chunk_losses = [float(loss) for loss in chunk_losses]
                result.losses.extend((previous + offset, loss) for offset, loss in enumerate(chunk_losses, 1))
                window.losses.extend(chunk_losses)
                epoch_window.losses.extend(chunk_losses)
                bar.update(chunk)
                bar.set_postfix(loss=f"{chunk_losses[-1]:.4f}", refresh=False)

                epoch_end = bool(per_epoch) and current % per_epoch == 0
                saved = current % save_every == 0 or current == total or epoch_end
                if saved:
                    checkpoints.save(current)
                log_due = current // settings.log_every_steps > previous // settings.log_every_steps
                if log_due or current == total or epoch_end:
                    read_totals()
                if log_due or current == total:
                    log_window()
                record, eval_seconds = None, 0.0
                if self.eval_fn is not None and (current % eval_every == 0 or current == total):
                    eval_started = time.perf_counter()
                    record = self._evaluate(current)
                    eval_seconds = time.perf_counter() - eval_started
                if epoch_end:
                    self._end_epoch(current, epoch_window, epoch_train_seconds, record, eval_seconds,
                                    time.perf_counter() - fit_started)
                    epoch_window, epoch_train_seconds = _Window(), 0.0
                # Only callbacks stop a run, and they run at evaluations and epoch ends.
                if (record is not None or epoch_end) and self._agree_to_stop() and current < total:
                    result.stopped_early = True
                    if not saved:
                        checkpoints.save(current)
                    if window.losses:
                        read_totals()
                        log_window()
                    break
            result.final_step = current
            result.steps_per_second = timed_steps / timed_seconds if timed_seconds else 0.0
            return self._finish(result)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            checkpoints.close()
            if self._eval_writer is not None:
                self._eval_writer.close()
                self._eval_writer = None

    def _end_epoch(self, step, epoch_window, train_seconds, record, eval_seconds, elapsed) -> None:
        settings = self.settings
        logs = EpochLogs(epoch=step // settings.steps_per_epoch, step=step, train=epoch_window.results(),
                         train_seconds=train_seconds, evaluation=record, eval_seconds=eval_seconds,
                         learning_rate=current_learning_rate(self.optimizer), elapsed_seconds=elapsed)
        if self.chief:
            details = _format_window(logs.train)
            evaluation = ""
            if record is not None:
                evaluation = " eval " + _format_flat(flatten_results(
                    {key: value for key, value in record.items() if key not in RECORD_KEYS}))
            logging.info("epoch %d/%d loss %.4f %s(%.1f s)%s", logs.epoch, settings.num_epochs,
                         logs.train["loss"], details + " " if details else "", train_seconds, evaluation)
        for callback in self.callbacks:
            callback.on_epoch_end(self, logs)

    def _finish(self, result: TrainResult) -> TrainResult:
        result.eval_history = list(self.history)
        for callback in self.callbacks:
            callback.on_run_end(self, result)
        return result


def checkpoint_step(model_dir: str) -> int:
    """The step of the newest checkpoint a Trainer wrote in `model_dir` (0 when there is none)."""
    path = tf.train.latest_checkpoint(model_dir) if tf.io.gfile.isdir(model_dir) else None
    if not path:
        return 0
    suffix = path.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


# ---- evaluation -----------------------------------------------------------------------------------

def _evaluation_step(strategy, model, loss_fn):
    """A compiled step returning the global {"terms": {name: (sum, n)}, "metrics": {name: (sum, n)}}
    of one distributed batch; cached per (model, strategy, loss_fn) so periodic evaluation traces once."""
    cache = _EVALUATION_STEPS.setdefault(model, {})
    key = (id(strategy), loss_fn)
    if key not in cache:
        def pairs(named):
            return {name: (tf.cast(total, tf.float32), tf.cast(count, tf.float32))
                    for name, (total, count) in named.items()}

        def replica_fn(features):
            terms, metrics = split_loss_output(loss_fn(model, features, False))
            return {"terms": pairs(terms), "metrics": pairs(metrics)}

        @tf.function(reduce_retracing=True)
        def evaluation_step(features):
            per_replica = strategy.run(replica_fn, args=(features,))
            return tf.nest.map_structure(
                lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), per_replica)

        cache[key] = (strategy, evaluation_step)
    return cache[key][1]


_EVALUATION_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def evaluate(strategy: tf.distribute.Strategy, model: keras.Model, dataset, loss_fn: Callable,
             max_steps: int | None = None, progress: bool = False) -> dict:
    """Loss terms and metrics of `loss_fn` over a finite dataset, as exact global sums.

    `dataset` is a `tf.data.Dataset` of GLOBAL batches (split over the replicas; a final partial
    batch is fine) or a `dataset_fn(input_context)` of per-replica batches. The model runs with
    `training=False`. Returns {"loss": sum of the terms, "terms": {name: sum / normalizer (0 when the
    normalizer is 0)}, "metrics": {name: sum / count (NaN for count 0)}}; "terms" is empty when the
    loss_fn returns one unnamed pair. `max_steps` stops after that many batches. Multi-worker: every
    worker must call it (it uses collectives) and all get the same numbers.
    """
    if isinstance(dataset, tf.data.Dataset):
        distributed = strategy.experimental_distribute_dataset(dataset)
    elif callable(dataset):
        distributed = distribute_dataset(strategy, dataset)
    else:
        raise TypeError(f"dataset must be a tf.data.Dataset or a dataset_fn, got {type(dataset).__name__}")
    evaluation_step = _evaluation_step(strategy, model, loss_fn)
    sums: dict = {"terms": {}, "metrics": {}}
    batches = 0
    for features in tqdm(distributed, desc="evaluating", unit="batch",
                         disable=not (progress and is_chief(strategy))):
        if max_steps is not None and batches >= max_steps:
            break
        for kind, named in evaluation_step(features).items():
            for name, (total, count) in named.items():
                pair = sums[kind].setdefault(name, [0.0, 0.0])
                pair[0] += float(total)
                pair[1] += float(count)
        batches += 1
    if not batches:
        raise ValueError("evaluate: the dataset has no batches")
    terms = {name: total / count if count else 0.0 for name, (total, count) in sums["terms"].items()}
    metrics = {name: _ratio(total, count) for name, (total, count) in sums["metrics"].items()}
    return {"loss": sum(terms.values()), "terms": {name: value for name, value in terms.items() if name != "loss"},
            "metrics": metrics}
