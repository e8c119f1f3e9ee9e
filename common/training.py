"""The one custom training loop of the suite.

`model.fit` fails under MultiWorkerMirroredStrategy on this stack, so every package trains through
`train`: `strategy.run` inside a `tf.function`, resumable `tf.train.Checkpoint`s, tqdm progress,
plain log lines and TensorBoard scalars.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shutil
import tempfile
import time
import weakref
from typing import Callable, Mapping

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


@dataclasses.dataclass
class TrainResult:
    final_step: int
    # (step, loss) for every step run by this call; step counts from 1 (the value after the update).
    losses: list[tuple[int, float]]
    # Measured after the first tf.function call (which includes tracing) when there was more than one.
    steps_per_second: float
    # Every evaluation of the run, resumed ones included: {"step": S, metric: value, ...}.
    eval_history: list[dict] = dataclasses.field(default_factory=list)
    # The evaluation whose `best_metric` was best (its weights are in model_dir/best/); None without one.
    best_step: int | None = None
    best_metrics: dict | None = None
    # The last log window's auxiliary metrics (sum / count) and, with several loss terms, each term's mean.
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    # True when early stopping ended the run before num_train_steps.
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

    def save(self, step: int) -> None:
        path = self.manager.save(checkpoint_number=step)
        if self.chief:
            logging.info("saved checkpoint %s", path)
        else:
            shutil.rmtree(self.write_dir, ignore_errors=True)


class _Totals:
    """Float64 running sums that the compiled step adds to and Python reads back per log window.

    The variables are created while the step function is first traced, when the names of the
    loss_fn's metrics become known (a tf.while_loop cannot carry a structure it has not seen).
    """

    def __init__(self):
        self.variables: dict[str, tf.Variable] = {}

    def add(self, name: str, value) -> None:
        if name not in self.variables:
            with tf.init_scope():
                self.variables[name] = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                                   name=f"total_{len(self.variables)}")
        self.variables[name].assign_add(tf.cast(value, tf.float64))

    def read_and_reset(self) -> dict[str, float]:
        values = {name: float(variable.numpy()) for name, variable in self.variables.items()}
        for variable in self.variables.values():
            variable.assign(0.0)
        return values


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _window_metrics(totals: Mapping[str, float], num_steps: int) -> dict[str, float]:
    """Term means per step ("term:NAME") and metric ratios ("sum:NAME" / "count:NAME")."""
    metrics = {}
    for key, value in totals.items():
        kind, name = key.split(":", 1)
        if kind == "term":
            metrics[name] = value / max(num_steps, 1)
        elif kind == "sum":
            metrics[name] = _ratio(value, totals[f"count:{name}"])
    return metrics


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def _accepts_start_step(dataset_fn: Callable) -> bool:
    try:
        return "start_step" in inspect.signature(dataset_fn).parameters
    except (TypeError, ValueError):
        return False


def _continuing_dataset_fn(dataset_fn: Callable, start_step: int) -> Callable:
    """`dataset_fn` for a run that starts at `start_step`: the data stream goes on where it stopped.

    A dataset_fn with a `start_step` parameter gets it and continues the stream itself (e.g. reseeds
    its shuffle or skips files: cheaper); any other one is skipped by the batches the steps before
    `start_step` consumed, which reproduces an uninterrupted run's order when the dataset is
    deterministic (seeded shuffle) but reads (and decodes) every skipped batch.
    """
    if _accepts_start_step(dataset_fn):
        return lambda input_context: dataset_fn(input_context, start_step=start_step)
    if start_step == 0:
        return dataset_fn

    def skipping_dataset_fn(input_context):
        batches_per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        logging.info("continuing the data stream: skipping %d batches (%d steps) of input pipeline %d",
                     start_step * batches_per_step, start_step, input_context.input_pipeline_id)
        return dataset_fn(input_context).skip(start_step * batches_per_step)
    return skipping_dataset_fn


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


EVAL_HISTORY_FILE = "eval_history.json"
BEST_DIR = "best"
BEST_INFO_FILE = "best.json"
BEST_MODES = ("max", "min")


def _read_json(path: str, default):
    return read_json(path, default=default, missing_ok=True)


class _Evaluations:
    """Periodic evaluation: history file, TensorBoard "eval" scalars, best checkpoint, early stopping.

    `eval_fn` runs on every worker (it may use collectives, e.g. `evaluate`); the chief's metrics
    are the ones recorded, and the chief decides "new best" and "stop", which every worker follows
    (so all of them save and stop together). Only the chief writes files.
    """

    def __init__(self, strategy, model, step, model_dir: str, eval_fn, best_metric, best_mode,
                 early_stopping_patience, summary: bool):
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.eval_fn = eval_fn
        self.model_dir = model_dir
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.patience = early_stopping_patience
        self.summary = summary
        self.history_path = os.path.join(model_dir, EVAL_HISTORY_FILE)
        self.best_info_path = os.path.join(model_dir, BEST_DIR, BEST_INFO_FILE)
        self.history: list[dict] = []
        self.best: dict | None = None  # {"step", "metrics"} of the best evaluation
        self.evaluations_since_best = 0
        self.best_checkpoints = (_Checkpoints(strategy, os.path.join(model_dir, BEST_DIR), 1,
                                              model=model, step=step) if best_metric else None)
        self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.best_checkpoints is not None:
            self.best_checkpoints.close()

    def resume(self, start_step: int) -> None:
        """Loads the history (and best) of earlier runs; drops evaluations after `start_step`,
        which belong to a run that stopped before checkpointing them."""
        history = _read_json(self.history_path, [])
        kept = [record for record in history if record["step"] <= start_step]
        if len(kept) < len(history):
            logging.info("dropping %d evaluations after the restored step %d from %s",
                         len(history) - len(kept), start_step, self.history_path)
        self.history = kept
        if self.best_metric:
            best = _read_json(self.best_info_path, None)
            if best is not None and best["step"] <= start_step and best.get("metric") == self.best_metric:
                self.best = {"step": best["step"], "metrics": best["metrics"]}
                self.evaluations_since_best = sum(record["step"] > best["step"] for record in kept)

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.evaluations_since_best >= self.patience

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        best = self.best["metrics"][self.best_metric]
        return value > best if self.best_mode == "max" else value < best

    def run(self, current: int, num_train_steps: int) -> None:
        metrics = self.eval_fn(current)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"eval_fn must return a mapping of metric name to number, got {metrics!r}")
        try:
            metrics = {str(name): float(value) for name, value in metrics.items()}
        except (TypeError, ValueError) as error:
            raise TypeError(f"eval_fn returned a metric that is not a number: {metrics!r}") from error
        metrics.pop("step", None)
        if self.best_metric and self.best_metric not in metrics and self.chief:
            raise ValueError(f"best_metric {self.best_metric!r} is not among the evaluation metrics "
                             f"{sorted(metrics)}")
        record = {"step": current, **metrics}
        self.history.append(record)

        note = ""
        if self.best_metric:
            improved = self.chief and self._improves(metrics[self.best_metric])
            improved = bool(_broadcast_from_chief(self.strategy, [float(improved)])[0])
            if improved:
                self.best = {"step": current, "metrics": metrics}
                self.evaluations_since_best = 0
                self.best_checkpoints.save(current)
                if self.chief:
                    atomic_write_json(self.best_info_path, {
                        "step": current, "metric": self.best_metric, "mode": self.best_mode,
                        "value": metrics.get(self.best_metric), "metrics": metrics})
                note = f" (new best {self.best_metric})"
            else:
                self.evaluations_since_best += 1
                if self.best is not None and self.best_metric in self.best["metrics"]:
                    note = (f" (best {self.best_metric} {self.best['metrics'][self.best_metric]:.4f} "
                            f"at step {self.best['step']})")
        if self.chief:
            logging.info("eval step %d/%d %s%s", current, num_train_steps, _format_metrics(metrics), note)
            atomic_write_json(self.history_path, self.history)
            if self.summary:
                if self.writer is None:
                    self.writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))
                write_scalars(self.writer, current, metrics)

    def stop_now(self) -> bool:
        """Whether early stopping ends the run now (the chief's decision, on every worker)."""
        return bool(_broadcast_from_chief(self.strategy, [float(self.should_stop)])[0])


def train(strategy: tf.distribute.Strategy, model: keras.Model, optimizer: keras.optimizers.Optimizer,
          dataset_fn: Callable[..., tf.data.Dataset],
          loss_fn: Callable, num_train_steps: int, model_dir: str,
          save_checkpoints_steps: int | None = 1000, max_checkpoints_to_keep: int = 5,
          log_every_steps: int = 100, steps_per_execution: int = 1, summary: bool = True,
          progress: bool = True,
          eval_fn: Callable[[int], Mapping[str, float]] | None = None,
          eval_every_steps: int | None = None,
          best_metric: str | None = None, best_mode: str = "max",
          early_stopping_patience: int | None = None) -> TrainResult:
    """Trains `model` until the step counter reaches `num_train_steps`; resumes from `model_dir`.

    Contract:
    - `model` and `optimizer` are built by the caller under `strategy.scope()`. Under a float16
      policy the optimizer is wrapped in `keras.optimizers.LossScaleOptimizer` here.
    - `dataset_fn(input_context)` returns the dataset of PER-REPLICA batches
      (`input_context.get_per_replica_batch_size(global_batch_size)`); it should `.repeat()`, a dataset
      that runs out before `num_train_steps` raises ValueError. Local replica r of step s gets the
      (s * local_replicas + r)-th batch of its worker's dataset.
    - `loss_fn(model, features, training)` returns `(loss_sum, normalizer)` over the replica's batch
      (e.g. sum of weighted per-token losses and sum of weights), or a dict of such pairs whose
      normalized terms are added (e.g. MLM + NSP). The loop sums each normalizer over all replicas and
      uses `loss_sum / global_normalizer` as the replica's loss; the replicas' gradients are then summed
      by the optimizer, so loss and gradients are exactly those of one device on the global batch.
      A term whose global normalizer is 0 contributes 0. (Keras's own optimizers clip each replica's
      part before that sum; `common.optimization.AdamWeightDecay` clips the sum.)
      The dict may also hold `"metrics": {name: (sum, count)}` (e.g. correct predictions and
      targets): summed over replicas and steps, reported as sum / count per log window, never added
      to the loss.
    - Resume: `tf.train.Checkpoint(model, optimizer, step)` in `model_dir` every
      `save_checkpoints_steps` steps (None or 0: only at the end) and at the end. On start the latest
      checkpoint is restored and training continues from its step, and the data stream continues
      too: a `dataset_fn` with a `start_step` parameter is called as
      `dataset_fn(input_context, start_step=S)` and continues the stream itself; any other is skipped
      by the S * local_replicas batches already consumed (exactly the uninterrupted order when the
      dataset is deterministic, at the cost of reading those batches once).
    - Evaluation: `eval_fn(step) -> {name: number}` runs every `eval_every_steps` steps (None: only at
      the end) and after the last step, on EVERY worker (it may use collectives, e.g. `evaluate`);
      the chief logs `eval step S/N name value ...`, writes TensorBoard scalars under
      `model_dir/eval` and appends `{"step": S, **metrics}` to `model_dir/eval_history.json` (loaded
      on resume; evaluations after the restored step are dropped). A resumed run whose last
      evaluation is older than its final step evaluates once more.
    - `best_metric` (`best_mode` "max" or "min"): the model (+ step) of the best evaluation is kept
      in `model_dir/best/` (a tf.train.Checkpoint, `tf.train.latest_checkpoint` finds it) with
      `best.json` ({"step", "metric", "mode", "value", "metrics"}). `early_stopping_patience` P stops
      after P evaluations in a row without improvement (final checkpoint saved; a resumed run that
      had stopped stops again at once). The chief's metrics decide, for every worker.
    - Multi-worker: every worker must call `train`; only the chief writes into `model_dir`.
    - Logs `step S/N loss L [metrics] lr R X steps/s` every `log_every_steps` steps (loss and metrics
      over the steps since the previous line; with several terms also each term's loss), a tqdm bar
      on the chief (`progress=False` disables), and TensorBoard scalars loss, the metrics,
      learning_rate, steps_per_sec under `model_dir/train` on the chief (`summary=False` disables).
    """
    if steps_per_execution < 1 or log_every_steps < 1:
        raise ValueError(f"steps_per_execution ({steps_per_execution}) and log_every_steps "
                         f"({log_every_steps}) must be >= 1")
    if eval_every_steps is not None and eval_every_steps < 1:
        raise ValueError(f"eval_every_steps must be >= 1, got {eval_every_steps}")
    if eval_fn is None and (eval_every_steps or best_metric or early_stopping_patience):
        raise ValueError("eval_every_steps, best_metric and early_stopping_patience need an eval_fn")
    if early_stopping_patience is not None and (not best_metric or early_stopping_patience < 1):
        raise ValueError("early_stopping_patience must be >= 1 and needs a best_metric")
    if best_mode not in BEST_MODES:
        raise ValueError(f"best_mode must be one of {BEST_MODES}, got {best_mode!r}")
    chief = is_chief(strategy)
    with strategy.scope():
        optimizer = maybe_wrap_for_loss_scaling(optimizer)
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    totals = _Totals()

    def replica_step(features):
        with tf.GradientTape() as tape:
            terms, metrics = split_loss_output(loss_fn(model, features, True))
            term_losses = _replica_term_losses(terms)
            loss = tf.add_n(list(term_losses.values()))
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        reported = {f"term:{name}": value for name, value in term_losses.items()} if len(terms) > 1 else {}
        for name, (metric_sum, count) in metrics.items():
            reported[f"sum:{name}"] = tf.cast(metric_sum, tf.float32)
            reported[f"count:{name}"] = tf.cast(count, tf.float32)
        return loss, reported

    def global_sum(per_replica):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def run_steps(iterator, num_steps):
        # Several steps per call amortise the Python/dispatch overhead (steps_per_execution).
        losses = tf.TensorArray(tf.float32, size=num_steps)
        for index in tf.range(num_steps):
            per_replica_loss, per_replica_reported = strategy.run(replica_step, args=(next(iterator),))
            losses = losses.write(index, global_sum(per_replica_loss))
            for name, value in per_replica_reported.items():
                totals.add(name, global_sum(value))
            step.assign_add(1)
        return losses.stack()

    checkpoints = _Checkpoints(strategy, model_dir, max_checkpoints_to_keep,
                               model=model, optimizer=optimizer, step=step)
    evaluations = (_Evaluations(strategy, model, step, model_dir, eval_fn, best_metric, best_mode,
                                early_stopping_patience, summary) if eval_fn is not None else None)

    def result(**fields) -> TrainResult:
        if evaluations is not None:
            fields["eval_history"] = list(evaluations.history)
            if evaluations.best is not None:
                fields["best_step"] = evaluations.best["step"]
                fields["best_metrics"] = dict(evaluations.best["metrics"])
        return TrainResult(**fields)

    writer = bar = None
    try:
        restored = checkpoints.restore()
        start_step = current = int(step.numpy())
        if restored:
            logging.info("restored %s: resuming at step %d", restored, start_step)
        if evaluations is not None:
            evaluations.resume(start_step)
            if evaluations.stop_now():
                logging.info("step %d: early stopping had ended this run (%d evaluations without a "
                             "better %s); nothing to train", start_step, evaluations.evaluations_since_best,
                             best_metric)
                return result(final_step=start_step, losses=[], steps_per_second=0.0, stopped_early=True)
        if start_step >= num_train_steps:
            logging.info("step %d >= num_train_steps %d: nothing to train", start_step, num_train_steps)
            if evaluations is not None and (not evaluations.history
                                            or evaluations.history[-1]["step"] != start_step):
                evaluations.run(start_step, num_train_steps)
            return result(final_step=start_step, losses=[], steps_per_second=0.0)

        iterator = iter(distribute_dataset(strategy, _continuing_dataset_fn(dataset_fn, start_step)))
        save_every = save_checkpoints_steps or num_train_steps
        eval_every = eval_every_steps or num_train_steps
        if summary and chief:
            writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
        bar = tqdm(total=num_train_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   disable=not (progress and chief))

        losses: list[tuple[int, float]] = []
        window_losses: list[float] = []
        window_metrics: dict[str, float] = {}
        window_start_time, window_start_step = time.perf_counter(), current

        def log_window() -> dict[str, float]:
            """Logs (and writes scalars for) the steps since the last log line; returns their metrics."""
            nonlocal window_losses, window_start_time, window_start_step
            now = time.perf_counter()
            rate = (current - window_start_step) / max(now - window_start_time, 1e-9)
            mean_loss = sum(window_losses) / len(window_losses)
            metrics = _window_metrics(totals.read_and_reset(), len(window_losses))
            learning_rate = current_learning_rate(optimizer)
            logging.info("step %d/%d loss %.4f %slr %.2e %.1f steps/s", current, num_train_steps,
                         mean_loss, _format_metrics(metrics) + " " if metrics else "", learning_rate, rate)
            if writer is not None:
                write_scalars(writer, current, {"loss": mean_loss, **metrics,
                                                "learning_rate": learning_rate, "steps_per_sec": rate})
            window_losses, window_start_time, window_start_step = [], now, current
            return metrics

        timed_steps, timed_seconds, calls = 0, 0.0, 0
        stopped_early = False
        while current < num_train_steps:
            # Chunks end on checkpoint and evaluation boundaries so those land exactly on multiples.
            chunk = min(steps_per_execution, num_train_steps - current, save_every - current % save_every,
                        eval_every - current % eval_every)
            started = time.perf_counter()
            try:
                chunk_losses = run_steps(iterator, tf.constant(chunk, tf.int32)).numpy()
            except tf.errors.OutOfRangeError as error:
                raise ValueError(f"the dataset ran out at step {current} of {num_train_steps}; "
                                 "make dataset_fn repeat it") from error
            elapsed = time.perf_counter() - started
            calls += 1
            # The first call includes tracing: leave it out of the rate unless it was the only one.
            if calls > 1:
                timed_steps, timed_seconds = timed_steps + chunk, timed_seconds + elapsed
            elif current + chunk >= num_train_steps:
                timed_steps, timed_seconds = chunk, elapsed

            previous, current = current, current + chunk
            losses.extend((previous + offset, float(loss)) for offset, loss in enumerate(chunk_losses, 1))
            window_losses.extend(float(loss) for loss in chunk_losses)
            bar.update(chunk)
            bar.set_postfix(loss=f"{chunk_losses[-1]:.4f}", refresh=False)

            if current % save_every == 0 or current == num_train_steps:
                checkpoints.save(current)
            if current // log_every_steps > previous // log_every_steps or current == num_train_steps:
                window_metrics = log_window()
            if evaluations is not None and (current % eval_every == 0 or current == num_train_steps):
                evaluations.run(current, num_train_steps)
                if evaluations.stop_now():
                    stopped_early = True
                    if current % save_every:
                        checkpoints.save(current)
                    if window_losses:
                        window_metrics = log_window()
                    logging.info("early stopping at step %d: %d evaluations without a better %s "
                                 "(best at step %s)", current, evaluations.evaluations_since_best,
                                 best_metric, evaluations.best["step"] if evaluations.best else None)
                    break
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        checkpoints.close()
        if evaluations is not None:
            evaluations.close()

    return result(final_step=current, losses=losses, metrics=window_metrics, stopped_early=stopped_early,
                  steps_per_second=timed_steps / timed_seconds if timed_seconds else 0.0)


def _evaluation_step(strategy, model, loss_fn):
    """A compiled step returning the global sums {"term:NAME": (sum, n), "metric:NAME": (sum, n)}
    of one distributed batch; cached per (model, strategy, loss_fn) so periodic evaluation traces once."""
    cache = _EVALUATION_STEPS.setdefault(model, {})
    key = (id(strategy), loss_fn)
    if key not in cache:
        def replica_fn(features):
            terms, metrics = split_loss_output(loss_fn(model, features, False))
            return {**{f"term:{name}": (tf.cast(total, tf.float32), tf.cast(count, tf.float32))
                       for name, (total, count) in terms.items()},
                    **{f"metric:{name}": (tf.cast(total, tf.float32), tf.cast(count, tf.float32))
                       for name, (total, count) in metrics.items()}}

        @tf.function(reduce_retracing=True)
        def evaluation_step(features):
            per_replica = strategy.run(replica_fn, args=(features,))
            return tf.nest.map_structure(
                lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), per_replica)

        cache[key] = (strategy, evaluation_step)
    return cache[key][1]


_EVALUATION_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def evaluate(strategy: tf.distribute.Strategy, model: keras.Model, dataset, loss_fn: Callable,
             max_steps: int | None = None, progress: bool = False) -> dict[str, float]:
    """Loss terms and metrics of `loss_fn` over a finite dataset, as exact global sums.

    `dataset` is a `tf.data.Dataset` of GLOBAL batches (split over the replicas; a final partial
    batch is fine) or a `dataset_fn(input_context)` of per-replica batches. The model runs with
    `training=False`. Returns each loss term's sum / normalizer (0 when the normalizer is 0) under
    its name, "loss" = the sum of the terms, and each metric's sum / count (NaN for count 0).
    `max_steps` stops after that many batches. Multi-worker: every worker must call it (it uses
    collectives) and all get the same numbers.
    """
    if isinstance(dataset, tf.data.Dataset):
        distributed = strategy.experimental_distribute_dataset(dataset)
    elif callable(dataset):
        distributed = distribute_dataset(strategy, dataset)
    else:
        raise TypeError(f"dataset must be a tf.data.Dataset or a dataset_fn, got {type(dataset).__name__}")
    evaluation_step = _evaluation_step(strategy, model, loss_fn)
    sums: dict[str, list[float]] = {}
    batches = 0
    for features in tqdm(distributed, desc="evaluating", unit="batch",
                         disable=not (progress and is_chief(strategy))):
        if max_steps is not None and batches >= max_steps:
            break
        for key, (total, count) in evaluation_step(features).items():
            pair = sums.setdefault(key, [0.0, 0.0])
            pair[0] += float(total)
            pair[1] += float(count)
        batches += 1
    if not batches:
        raise ValueError("evaluate: the dataset has no batches")
    terms = {key.split(":", 1)[1]: total / count if count else 0.0
             for key, (total, count) in sums.items() if key.startswith("term:")}
    metrics = {key.split(":", 1)[1]: _ratio(total, count)
               for key, (total, count) in sums.items() if key.startswith("metric:")}
    return {"loss": sum(terms.values()), **terms, **metrics}
