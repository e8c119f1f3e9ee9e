"""The one custom training loop of the suite.

`model.fit` fails under MultiWorkerMirroredStrategy on this stack, so every package trains through
`train`: `strategy.run` inside a `tf.function`, resumable `tf.train.Checkpoint`s, tqdm progress,
plain log lines and TensorBoard scalars.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Callable, Mapping

import keras
import tensorflow as tf
from absl import logging
from keras import ops
from tensorflow.core.framework import summary_pb2
from tqdm.auto import tqdm

from common.checkpoints import make_checkpoint_manager, restore_latest
from common.distribute import distribute_dataset, is_chief
from common.optimization import maybe_wrap_for_loss_scaling


@dataclasses.dataclass
class TrainResult:
    final_step: int
    # (step, loss) for every step run by this call; step counts from 1 (the value after the update).
    losses: list[tuple[int, float]]
    # Measured after the first tf.function call (which includes tracing) when there was more than one.
    steps_per_second: float


def bert_pretraining_loss_fn(model, features, training):
    """Loss terms of `common.heads.BertPretrainer` in the `train` contract: weighted MLM + NSP."""
    outputs = model(features, training=training)
    per_position = keras.losses.sparse_categorical_crossentropy(
        features["masked_lm_ids"], ops.cast(outputs["masked_lm_logits"], "float32"), from_logits=True)
    weights = ops.cast(features["masked_lm_weights"], "float32")
    terms = {"masked_lm": (ops.sum(per_position * weights), ops.sum(weights))}
    if "next_sentence_logits" in outputs and "next_sentence_labels" in features:
        labels = ops.reshape(features["next_sentence_labels"], (-1,))
        per_example = keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(outputs["next_sentence_logits"], "float32"), from_logits=True)
        terms["next_sentence"] = (ops.sum(per_example), ops.cast(ops.shape(labels)[0], "float32"))
    return terms


def replica_loss(loss_terms):
    """This replica's share of the global-batch loss: sum over terms of loss_sum / global normalizer."""
    terms = list(loss_terms.values()) if isinstance(loss_terms, Mapping) else [loss_terms]
    sums = [tf.cast(loss_sum, tf.float32) for loss_sum, _ in terms]
    # Normalizers count targets; they carry no gradient, and one all-reduce serves every term.
    normalizers = [tf.stop_gradient(tf.cast(normalizer, tf.float32)) for _, normalizer in terms]
    global_normalizers = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, normalizers)
    return tf.add_n([tf.math.divide_no_nan(loss_sum, normalizer)
                     for loss_sum, normalizer in zip(sums, global_normalizers)])


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


def train(strategy: tf.distribute.Strategy, model: keras.Model, optimizer: keras.optimizers.Optimizer,
          dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
          loss_fn: Callable, num_train_steps: int, model_dir: str,
          save_checkpoints_steps: int | None = 1000, max_checkpoints_to_keep: int = 5,
          log_every_steps: int = 100, steps_per_execution: int = 1, summary: bool = True,
          progress: bool = True) -> TrainResult:
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
    - Resume: `tf.train.Checkpoint(model, optimizer, step)` in `model_dir` every
      `save_checkpoints_steps` steps (None or 0: only at the end) and at the end. On start the latest
      checkpoint is restored and training continues from its step; the dataset restarts from its
      beginning, so data order matches an uninterrupted run only if the data repeat with a period
      dividing the resume step (or the caller skips ahead in `dataset_fn`).
    - Multi-worker: every worker must call `train`; only the chief writes into `model_dir`.
    - Logs `step S/N loss L lr R X steps/s` every `log_every_steps` steps (loss averaged since the
      previous line), a tqdm bar on the chief (`progress=False` disables), and TensorBoard scalars
      loss, learning_rate, steps_per_sec under `model_dir/train` on the chief (`summary=False` disables).
    """
    if steps_per_execution < 1 or log_every_steps < 1:
        raise ValueError(f"steps_per_execution ({steps_per_execution}) and log_every_steps "
                         f"({log_every_steps}) must be >= 1")
    chief = is_chief(strategy)
    with strategy.scope():
        optimizer = maybe_wrap_for_loss_scaling(optimizer)
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    def replica_step(features):
        with tf.GradientTape() as tape:
            loss = replica_loss(loss_fn(model, features, True))
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    @tf.function
    def run_steps(iterator, num_steps):
        # Several steps per call amortise the Python/dispatch overhead (steps_per_execution).
        losses = tf.TensorArray(tf.float32, size=num_steps)
        for index in tf.range(num_steps):
            per_replica_loss = strategy.run(replica_step, args=(next(iterator),))
            losses = losses.write(index, strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss,
                                                         axis=None))
            step.assign_add(1)
        return losses.stack()

    checkpoints = _Checkpoints(strategy, model_dir, max_checkpoints_to_keep,
                               model=model, optimizer=optimizer, step=step)
    writer = bar = None
    try:
        restored = checkpoints.restore()
        start_step = current = int(step.numpy())
        if restored:
            logging.info("restored %s: resuming at step %d", restored, start_step)
        if start_step >= num_train_steps:
            logging.info("step %d >= num_train_steps %d: nothing to train", start_step, num_train_steps)
            return TrainResult(final_step=start_step, losses=[], steps_per_second=0.0)

        iterator = iter(distribute_dataset(strategy, dataset_fn))
        save_every = save_checkpoints_steps or num_train_steps
        if summary and chief:
            writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
        bar = tqdm(total=num_train_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   disable=not (progress and chief))

        losses: list[tuple[int, float]] = []
        window_losses: list[float] = []
        window_start_time, window_start_step = time.perf_counter(), current
        timed_steps, timed_seconds, calls = 0, 0.0, 0
        while current < num_train_steps:
            # Chunks end on checkpoint boundaries so saves land exactly on multiples of save_every.
            chunk = min(steps_per_execution, num_train_steps - current, save_every - current % save_every)
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
                now = time.perf_counter()
                rate = (current - window_start_step) / max(now - window_start_time, 1e-9)
                mean_loss = sum(window_losses) / len(window_losses)
                learning_rate = current_learning_rate(optimizer)
                logging.info("step %d/%d loss %.4f lr %.2e %.1f steps/s",
                             current, num_train_steps, mean_loss, learning_rate, rate)
                if writer is not None:
                    write_scalars(writer, current, {"loss": mean_loss, "learning_rate": learning_rate,
                                                    "steps_per_sec": rate})
                window_losses, window_start_time, window_start_step = [], now, current
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        checkpoints.close()

    return TrainResult(final_step=current, losses=losses,
                       steps_per_second=timed_steps / timed_seconds if timed_seconds else 0.0)
