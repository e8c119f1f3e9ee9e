"""BERT-DML training (triplet loss) and the classification fine-tuning baseline, as plain functions.

The scripts `bert_dml/train_dml.py` and `bert_dml/train_cls.py` only turn flags into these calls. Both
train through `common.training.Trainer` in epoch mode: the original's epoch structure (evaluation,
one log line, `log.json`, the loss plot and the best models after every epoch); a restarted run
resumes after the last finished epoch.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from bert_dml import data as dml_data
from bert_dml.model import (BertDML, FEATURE_KEYS, batched_outputs, feature_function, make_triplet_loss_fn,
                            triplet_batches, triplet_signature)
from bert_dml.model import load_encoder, save_model_folder
from bert_dml.triplets import MARGIN, TRIPLETS_PER_EPOCH, epoch_seed, retrieval_metrics, sample_triplets
from common.cli import UserError
from common.distribute import get_strategy
from common.io_utils import atomic_write_json, read_json
from common.optimization import STEP_SIZE_CORRECTION, AdamWeightDecay
from common.training import (BestCheckpoint, Callback, EarlyStopping, Trainer, TrainSettings, checkpoint_step,
                             current_learning_rate)

GRADIENT_CLIP_NORM = 1.0
LOG_FILE = "log.json"
# The original's early_stopped-loss.model / early_stopped-uar.model (the classifier keeps both).
BEST_DIR = "best"  # DML: by D/loss (or --best_metric); classifier: by D/uar
BEST_LOSS_DIR = "best_loss"  # classifier: by D/loss


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


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return max(1, math.ceil(num_examples / global_batch_size))


def last_step_rates(optimizer) -> dict[str, float]:
    """Read from the optimizer after its last step, as the original prints Chainer's: `eta` the
    learning rate, `lr` Adam's bias-correction factor sqrt(1 - b2^t) / (1 - b1^t) (1.0 without)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "step_size_factor"):
        return {"lr": inner.step_size_factor(), "eta": inner.last_learning_rate()}
    return {"lr": 1.0, "eta": current_learning_rate(inner)}


def _original_line(entry: dict, train_acc: float, dev_acc1: float, dev_acc2: float) -> str:
    """The original scripts' per-epoch line; `lr` is Chainer's Adam factor, `eta` the learning rate."""
    return (f"[{entry['epoch']:>3d}] T/loss={entry['T/loss']:.6f} T/acc1={train_acc:.6f} T/acc2={0.0:.6f} "
            f"T/sec= {entry['T/sec']:.6f} D/loss={entry['D/loss']:.6f} D/acc1={dev_acc1:.6f} "
            f"D/acc2={dev_acc2:.6f} D/sec= {entry['D/sec']:.6f} lr={entry['lr']:.6f} eta={entry['eta']:.6f}")


def dml_log_line(entry: dict) -> str:
    """train_dml.py's line (its acc columns are always 0), then our extra eval metrics (D/knn10)."""
    line = _original_line(entry, 0.0, 0.0, 0.0)
    extra = " ".join(f"{key}={entry[key]:.6f}" for key in sorted(entry)
                     if key.startswith("D/") and key not in ("D/loss", "D/sec"))
    return f"{line} {extra}" if extra else line


def cls_log_line(entry: dict) -> str:
    """train_bert.py's line: acc1 the accuracy, D/acc2 the UAR."""
    return _original_line(entry, entry.get("T/accuracy", float("nan")), entry["D/acc"], entry["D/uar"])


def _prepare_resume(resume: str | None, out: str, start_epoch: int, steps: int) -> None:
    """`--resume DIR`: continue DIR's newest checkpoint in `--out` (copied there when they differ)."""
    if resume:
        if not os.path.isdir(resume) or checkpoint_step(resume) == 0:
            raise UserError(f"--resume {resume}: no training checkpoint there")
        if os.path.abspath(resume) != os.path.abspath(out):
            if checkpoint_step(out):
                raise UserError(f"--out {out} already holds a run; resume it with --resume={out}")
            shutil.copytree(resume, out, dirs_exist_ok=True)
    done = checkpoint_step(out) // steps
    if start_epoch > 1 and start_epoch != done + 1:
        raise UserError(f"--start_epoch={start_epoch}, but the checkpoint in {out} ends after epoch "
                        f"{done}: training continues at epoch {done + 1} (drop --start_epoch)")


def _read_data(train_path: str, eval_path: str, encoding: str):
    train = dml_data.read_labeled_texts(train_path, encoding=encoding)
    evaluation = dml_data.read_labeled_texts(eval_path, encoding=encoding)
    return train, evaluation, dml_data.collect_labels(train)


def _build(strategy, train, evaluation, labels, max_seq_length, learnrate, weightdecay, steps, epochs, make_model,
           print_fn, bias_correction=True, tokenize_chinese_chars=False, **encoder_kwargs):
    """Encoder (pre-trained or from scratch), model, optimizer, and both files' features."""
    with strategy.scope():
        setup = load_encoder(train_texts=train.texts, **encoder_kwargs)
        model = make_model(setup.encoder)
        # The original's WeightDecayForMatrixAdam(alpha=1, eps=1e-6): Chainer's bias-corrected Adam, eta the rate.
        optimizer = AdamWeightDecay(EpochLinearDecay(learnrate, steps, epochs), weight_decay_rate=weightdecay,
                                    epsilon=1e-6, global_clipnorm=GRADIENT_CLIP_NORM,
                                    bias_correction=STEP_SIZE_CORRECTION if bias_correction else False)
    # The original truncates at the model's positions; batches are padded to their longest text only.
    max_seq_length = min(max_seq_length or setup.config.max_position_embeddings, setup.config.max_position_embeddings)
    # The original's tokenizer keeps pre-segmented CJK words whole (Google's splits every ideograph).
    tokenizer = setup.tokenizer().replace(tokenize_chinese_chars=tokenize_chinese_chars)
    train_features = dml_data.encode_texts(tokenizer, train.texts, max_seq_length)
    eval_features = dml_data.encode_texts(tokenizer, evaluation.texts, max_seq_length)
    print_fn(f"# train: {len(train)}, eval: {len(evaluation)}, class: {len(labels)}, labels: {labels}, "
             f"vocab: {len(setup.vocab)}, encoder: {setup.source}")
    return setup, model, optimizer, max_seq_length, train_features, eval_features


def _epoch_batches(make_batches: Callable[[int], list], signature: dict, steps: int, epochs: int):
    """The Trainer's dataset_fn(input_context, start_step): epoch after epoch of global batches (each
    epoch's `make_batches(epoch)` gives exactly `steps`), from the epoch of `start_step` on, cut per replica.

    Replica r of worker p at step s takes part s * replicas + p * local + r of each global batch's
    rows, so the global batch is exactly the one a single device would see.
    """
    def dataset_fn(input_context, start_step):
        total = input_context.num_replicas_in_sync
        local = total // input_context.num_input_pipelines
        first = input_context.input_pipeline_id * local

        def generate():
            for epoch in range(start_step // steps + 1, epochs + 1):
                for index, batch in enumerate(make_batches(epoch)):
                    if epoch == start_step // steps + 1 and index < start_step % steps:
                        continue  # consumed before the restored checkpoint
                    size = len(next(iter(batch.values())))
                    per_replica = -(-size // total)
                    for replica in range(first, first + local):
                        yield {key: value[replica * per_replica:(replica + 1) * per_replica]
                               for key, value in batch.items()}
        return tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset_fn


class _EpochLog(Callback):
    """The original's per-epoch output: one printed line, `log.json` (one entry per epoch, resumed ones
    included) and the loss plot. Entry keys: epoch, T/loss, T/<train metric>, T/sec, the evaluation's
    D/ keys, D/sec, lr and eta (`last_step_rates`), elapsed_time."""

    def __init__(self, format_line: Callable[[dict], str], steps: int, plot_keys: Sequence[str], plot: bool,
                 print_fn: Callable[[str], None]):
        self.format_line, self.steps = format_line, steps
        self.plot_keys, self.plot, self.print_fn = tuple(plot_keys), plot, print_fn
        self.entries: list[dict] = []

    def on_run_begin(self, trainer, start_step, history):
        done = start_step // self.steps
        path = os.path.join(trainer.settings.model_dir, LOG_FILE)
        self.entries = [entry for entry in read_json(path, default=[], missing_ok=True) if entry["epoch"] <= done]

    def on_epoch_end(self, trainer, logs):
        evaluation = {key: value for key, value in (logs.evaluation or {}).items() if key.startswith("D/")}
        entry = {"epoch": logs.epoch, "T/loss": logs.train["loss"], "T/sec": logs.train_seconds,
                 **{f"T/{name}": value for name, value in logs.train["metrics"].items()},
                 **evaluation, "D/sec": logs.eval_seconds, **last_step_rates(trainer.optimizer),
                 "elapsed_time": logs.elapsed_seconds}
        self.entries.append(entry)
        if not trainer.chief:
            return
        self.print_fn(self.format_line(entry))
        atomic_write_json(os.path.join(trainer.settings.model_dir, LOG_FILE), self.entries)
        if self.plot:
            from common.plotting import plot_curves
            curves = {key: [e[key] for e in self.entries] for key in self.plot_keys if key in entry}
            plot_curves(curves, os.path.join(trainer.settings.model_dir, "loss.png"))


class _OriginalBest(BestCheckpoint):
    """A BestCheckpoint that prints the original's `saving early-stopped model (NAME) at epoch N`."""

    def __init__(self, metric: str, mode: str, directory: str, name: str, print_fn: Callable[[str], None]):
        super().__init__(metric, mode, directory)
        self.name, self.print_fn = name, print_fn

    def on_evaluation(self, trainer, record):
        before = self.best
        super().on_evaluation(trainer, record)
        if self.best is not before and trainer.chief:
            self.print_fn(f"saving early-stopped model ({self.name}) at epoch {record.get('epoch')}: "
                          f"{os.path.join(trainer.settings.model_dir, self.directory)}")


def _train_epochs(strategy, model, optimizer, loss_fn, dataset_fn, evaluate_epoch, *, out: str, epochs: int,
                  steps: int, bests: Sequence[tuple[str, str, str, str]], format_line, plot_keys: Sequence[str],
                  plot: bool, progress: bool, print_fn,
                  early_stopping: tuple[str, str, int] | None = None) -> list[dict]:
    """Trains `epochs` epochs of `steps` steps, evaluating after each; returns the epoch log.

    `bests`: (metric, mode, directory, the original's name) of each best model kept;
    `early_stopping`: (metric, mode, patience) or None.
    """
    os.makedirs(out, exist_ok=True)
    epoch_log = _EpochLog(format_line, steps, plot_keys, plot, print_fn)
    callbacks = [_OriginalBest(metric, mode, directory, name, print_fn) for metric, mode, directory, name in bests]
    if early_stopping is not None:
        callbacks.append(EarlyStopping(*early_stopping))
    callbacks.append(epoch_log)
    settings = TrainSettings(model_dir=out, num_epochs=epochs, steps_per_epoch=steps, max_checkpoints_to_keep=2,
                             log_every_steps=steps, progress=progress)
    trainer = Trainer(strategy, model, optimizer, loss_fn, settings,
                      eval_fn=lambda step: evaluate_epoch(step // steps), callbacks=callbacks)
    result = trainer.fit(dataset_fn)
    if result.stopped_early:
        print_fn(f"early stopping: {early_stopping[0]} has not improved for {early_stopping[2]} epochs")
    return epoch_log.entries


def train_dml(train_path: str, eval_path: str, out: str, *, batchsize: int = 64, epochs: int = 100,
              learnrate: float = 5e-5, weightdecay: float = 0.01, preset: str | None = None,
              init_checkpoint: str | None = None, bert_config_file: str | None = None,
              vocab_file: str | None = None, mining: str = "random", encoding: str = "utf-8",
              max_seq_length: int | None = None, random_seed: int = 123,
              triplets_per_epoch: int = TRIPLETS_PER_EPOCH, eval_triplets_per_epoch: int | None = None,
              margin: float = MARGIN, l2_normalize: bool = False, vocab_size: int = 8000, lowercase: bool = True,
              eval_knn: bool = True,
              bias_correction: bool = True, tokenize_chinese_chars: bool = False, best_metric: str = "D/loss",
              noplot: bool = False, resume: str | None = None, start_epoch: int = 1,
              strategy: tf.distribute.Strategy | None = None, progress: bool = True,
              print_fn: Callable[[str], None] = print) -> list[dict]:
    """Trains BERT-DML on `train_path`, evaluating on `eval_path` each epoch; returns the epoch log.

    Each epoch draws `triplets_per_epoch` triplets from the training file and
    `eval_triplets_per_epoch` (default: the same number, as the original) from the eval file.
    `best_metric`: the model kept in `out/best`, lowest "D/loss" (the original's) or highest "D/knn10".
    """
    if best_metric not in ("D/loss", "D/knn10") or (best_metric == "D/knn10" and not eval_knn):
        raise ValueError(f"best_metric must be D/loss, or D/knn10 with eval_knn; got {best_metric!r}")
    strategy = strategy or get_strategy("default")
    keras.utils.set_random_seed(random_seed)  # the new weights (projection, from-scratch encoder)
    train, evaluation, labels = _read_data(train_path, eval_path, encoding)
    train_ids = dml_data.label_ids(train, labels)
    eval_ids = dml_data.label_ids(evaluation, labels, strict=False)
    steps = steps_per_epoch(triplets_per_epoch, batchsize)
    _prepare_resume(resume, out, start_epoch, steps)
    setup, model, optimizer, max_seq_length, train_features, eval_features = _build(
        strategy, train, evaluation, labels, max_seq_length, learnrate, weightdecay, steps, epochs, BertDML,
        print_fn, bias_correction=bias_correction, tokenize_chinese_chars=tokenize_chinese_chars, preset=preset, init_checkpoint=init_checkpoint,
        bert_config_file=bert_config_file, vocab_file=vocab_file, vocab_size=vocab_size, lowercase=lowercase)
    save_model_folder(out, setup, labels, {
        "kind": "dml", "output_dim": model.output_dense.units, "max_seq_length": max_seq_length,
        "mining": mining, "margin": margin, "l2_normalize": l2_normalize, "batchsize": batchsize, "epoch": epochs,
        "learnrate": learnrate,
        "weightdecay": weightdecay, "bias_correction": bias_correction, "tokenize_chinese_chars": tokenize_chinese_chars, "random_seed": random_seed,
        "train": train_path, "eval": eval_path})

    def train_batches(epoch):
        triplets = sample_triplets(train_ids, triplets_per_epoch, epoch_seed(random_seed, epoch, "train"))
        return triplet_batches(train_features, train_ids, triplets, batchsize)

    from common.training import evaluate
    eval_loss_fn = make_triplet_loss_fn("random", margin, l2_normalize)  # D/loss: the original's sampled triplets
    features_of = feature_function(lambda features: model(features, training=False))

    def evaluate_epoch(epoch):
        triplets = sample_triplets(eval_ids, eval_triplets_per_epoch or triplets_per_epoch,
                                   epoch_seed(random_seed, epoch, "eval"))
        batches = list(triplet_batches(eval_features, eval_ids, triplets, batchsize))
        dataset = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=triplet_signature())
        metrics = {"D/loss": evaluate(strategy, model, dataset, eval_loss_fn)["loss"]}
        if eval_knn and len(evaluation) > 10:
            embeddings = batched_outputs(features_of, eval_features, batchsize)
            knn = retrieval_metrics(embeddings, eval_ids, k=10)
            metrics["D/knn10"] = knn["knn10_accuracy"]
        return metrics

    best_mode, best_name = ("min", "loss") if best_metric == "D/loss" else ("max", "knn10")
    return _train_epochs(strategy, model, optimizer, make_triplet_loss_fn(mining, margin, l2_normalize),
                         _epoch_batches(train_batches, triplet_signature(), steps, epochs), evaluate_epoch,
                         out=out, epochs=epochs, steps=steps, bests=[(best_metric, best_mode, BEST_DIR, best_name)],
                         format_line=dml_log_line, plot_keys=("T/loss", "D/loss"), plot=not noplot,
                         progress=progress, print_fn=print_fn)


def _classification_batches(features, label_ids, order, batch_size):
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = dml_data.trim_to_longest({key: features[key][rows] for key in FEATURE_KEYS})
        batch["label_ids"] = label_ids[rows]
        yield batch


def train_classifier(train_path: str, eval_path: str, out: str, *, batchsize: int = 64, epochs: int = 50,
                     learnrate: float = 5e-5, weightdecay: float = 0.01, preset: str | None = None,
                     init_checkpoint: str | None = None, bert_config_file: str | None = None,
                     vocab_file: str | None = None, encoding: str = "utf-8", max_seq_length: int | None = None,
                     random_seed: int = 123, vocab_size: int = 8000, lowercase: bool = True,
                     patience: int | None = None, max_train_examples: int | None = None, bias_correction: bool = True,
                     tokenize_chinese_chars: bool = False,
                     noplot: bool = False, resume: str | None = None, start_epoch: int = 1,
                     strategy: tf.distribute.Strategy | None = None, progress: bool = True,
                     print_fn: Callable[[str], None] = print) -> list[dict]:
    """Softmax fine-tuning over the training labels, as the original's train_bert.py: every epoch is
    evaluated, the best model by eval UAR is kept in `out/best` and the best by eval loss in
    `out/best_loss`. `patience` P (None: never, the original) stops after P epochs without a better UAR.

    `max_train_examples` caps each epoch at that many (shuffled) training lines (budgeted runs).
    """
    from common.heads import BertClassifier
    from common.metrics import unweighted_average_recall
    from common.training import classification_loss_fn

    strategy = strategy or get_strategy("default")
    keras.utils.set_random_seed(random_seed)
    train, evaluation, labels = _read_data(train_path, eval_path, encoding)
    train_ids = dml_data.label_ids(train, labels)
    eval_ids = dml_data.label_ids(evaluation, labels)
    per_epoch = min(len(train), max_train_examples or len(train))
    steps = steps_per_epoch(per_epoch, batchsize)
    _prepare_resume(resume, out, start_epoch, steps)
    setup, model, optimizer, max_seq_length, train_features, eval_features = _build(
        strategy, train, evaluation, labels, max_seq_length, learnrate, weightdecay, steps, epochs,
        lambda encoder: BertClassifier(encoder, len(labels), dropout=0.1), print_fn,
        bias_correction=bias_correction, tokenize_chinese_chars=tokenize_chinese_chars, preset=preset,
        init_checkpoint=init_checkpoint, bert_config_file=bert_config_file, vocab_file=vocab_file,
        vocab_size=vocab_size, lowercase=lowercase)
    save_model_folder(out, setup, labels, {
        "kind": "classified", "num_labels": len(labels), "max_seq_length": max_seq_length,
        "batchsize": batchsize, "epoch": epochs, "learnrate": learnrate, "weightdecay": weightdecay,
        "bias_correction": bias_correction, "tokenize_chinese_chars": tokenize_chinese_chars, "random_seed": random_seed, "train": train_path, "eval": eval_path})

    def train_batches(epoch):
        order = np.random.default_rng(epoch_seed(random_seed, epoch, "train")).permutation(len(train))[:per_epoch]
        return _classification_batches(train_features, train_ids, order, batchsize)

    signature = {key: tf.TensorSpec([None, None], tf.int32) for key in FEATURE_KEYS}
    signature["label_ids"] = tf.TensorSpec([None], tf.int32)
    logits_of = feature_function(lambda features: tf.cast(model(features, training=False), tf.float32))

    def evaluate_epoch(epoch):
        logits = batched_outputs(logits_of, eval_features, batchsize).astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        predictions = logits.argmax(axis=1)
        return {"D/loss": float(-log_probs[np.arange(len(eval_ids)), eval_ids].mean()),
                "D/acc": float((predictions == eval_ids).mean()),
                "D/uar": unweighted_average_recall(eval_ids, predictions)}

    # The original keeps both (early_stopped-uar.model, early_stopped-loss.model) and never stops early.
    return _train_epochs(strategy, model, optimizer, classification_loss_fn,
                         _epoch_batches(train_batches, signature, steps, epochs), evaluate_epoch, out=out,
                         epochs=epochs, steps=steps,
                         bests=[("D/loss", "min", BEST_LOSS_DIR, "loss"), ("D/uar", "max", BEST_DIR, "uar")],
                         early_stopping=("D/uar", "max", patience) if patience else None,
                         format_line=cls_log_line, plot_keys=("T/loss", "D/loss", "D/acc", "D/uar"),
                         plot=not noplot, progress=progress, print_fn=print_fn)
