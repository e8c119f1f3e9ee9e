"""BERT4Rec training and evaluation as plain functions; `bert4rec/run.py` is their absl front end."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import weakref
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from tqdm.auto import tqdm

from bert4rec import data as bert4rec_data
from bert4rec.evaluation import (CandidateSampler, RankingEvaluator, format_original_line,
                                 write_eval_results)
from bert4rec.model import LENGTH_BUCKETS, Bert4Rec, bert4rec_loss
from common.checkpoints import load_google_checkpoint, make_checkpoint_manager, restore_latest
from common.config import BertConfig, BertConfigError
from common.distribute import is_chief
from common.io_utils import atomic_write_json
from common.optimization import create_optimizer
from common.tfrecords import make_dataset
from common.training import TrainResult, Trainer, TrainSettings, skip_consumed_batches, write_scalars

# BERT4Rec's optimizer: Google AdamW (no bias correction), weight decay 0.01, global-norm clip 5.0.
BERT4REC_WEIGHT_DECAY = 0.01
BERT4REC_CLIP_NORM = 5.0
RUN_CONFIG_NAME = "run_config.json"
EVAL_RESULTS_NAME = "eval_results.json"


@dataclasses.dataclass
class RunSettings:
    """What a trained model needs to be rebuilt (by evaluation, resume or `recommend.py`)."""

    bert_config_file: str
    vocab_filename: str
    user_history_filename: str
    max_seq_length: int
    max_predictions_per_seq: int
    model: str = "bert4rec"
    cross_attention_yy: str = "kk"

    def save(self, model_dir: str) -> None:
        atomic_write_json(os.path.join(model_dir, RUN_CONFIG_NAME), dataclasses.asdict(self))

    @classmethod
    def load(cls, model_dir: str) -> "RunSettings":
        path = os.path.join(model_dir, RUN_CONFIG_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found; is {model_dir} a BERT4Rec checkpoint directory "
                                    f"written by bert4rec/run.py (checkpointDir + signature)?")
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


def load_checked_config(bert_config_file: str, vocab, max_seq_length: int) -> BertConfig:
    """The model config, checked against the generated vocabulary and sequence length."""
    config = BertConfig.from_json_file(bert_config_file)
    if config.vocab_size < vocab.vocab_size:
        raise BertConfigError(
            f"{bert_config_file}: vocab_size {config.vocab_size} is smaller than the generated "
            f"vocabulary ({vocab.vocab_size} ids: {vocab.num_items} items + padding/[MASK]); "
            f"set \"vocab_size\": {vocab.vocab_size}")
    if config.vocab_size > vocab.vocab_size:
        logging.warning("%s: vocab_size %d > generated vocabulary %d: the extra ids are never used",
                        bert_config_file, config.vocab_size, vocab.vocab_size)
    if max_seq_length > config.max_position_embeddings:
        raise BertConfigError(
            f"{bert_config_file}: max_position_embeddings {config.max_position_embeddings} < "
            f"--max_seq_length {max_seq_length}")
    return config


def build_model(config: BertConfig, model_type: str = "bert4rec", cross_attention_yy: str = "kk"):
    return Bert4Rec(config, model_type=model_type, cross_attention_yy=cross_attention_yy)


def build_optimizer(learning_rate: float, num_train_steps: int, num_warmup_steps: int):
    """BERT4Rec's optimizer (call under the strategy's scope)."""
    return create_optimizer(learning_rate, num_train_steps, num_warmup_steps,
                            weight_decay=BERT4REC_WEIGHT_DECAY, clip_norm=BERT4REC_CLIP_NORM)


def excluded_history_window(exclude_history: bool, max_seq_length: int) -> int | None:
    """What `--exclude_history` means everywhere: True excludes the user's whole history from negatives
    (and recommendations), False only the model's input window: the last max_seq_length - 1 items before
    the target, i.e. the last max_seq_length items of a `.his` history (which ends with the target), as
    the original did under Python 3."""
    return None if exclude_history else max_seq_length


def run_training(strategy: tf.distribute.Strategy, settings: RunSettings, train_input_file: str,
                 model_dir: str, batch_size: int, num_train_steps: int, num_warmup_steps: int,
                 learning_rate: float, save_checkpoints_steps: int = 1000,
                 steps_per_execution: int = 10, random_seed: int = 12345,
                 shuffle_buffer: int = 10000, init_checkpoint: str | None = None,
                 progress: bool = True, eval_every_steps: int | None = None,
                 eval_input_file: str | None = None, eval_protocols: Sequence[str] = ("pop100",),
                 exclude_history: bool = True, eval_batch_size: int = 256,
                 on_evaluation=None, length_buckets: int | None = None) -> tuple[Bert4Rec, TrainResult]:
    """Trains BERT4Rec on the masked TFRecords; resumes from the newest checkpoint in `model_dir`.

    With `eval_every_steps`, every test user of `eval_input_file` is ranked under `eval_protocols` every
    that many steps and after the last one: the original's line is printed, and the metrics go to
    `model_dir/eval_history.json` ({"step", protocol: metrics}) and TensorBoard (the Trainer's evaluation);
    `on_evaluation(step, results, seconds)`, if given, sees each one (e.g. to time quality against training).
    `length_buckets`: see `bert4rec_loss` (None: `LENGTH_BUCKETS`; 0 under TPUStrategy: XLA wants static
    shapes).
    """
    vocab = bert4rec_data.load_vocab(settings.vocab_filename)
    config = load_checked_config(settings.bert_config_file, vocab, settings.max_seq_length)
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch_size {batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    if is_chief(strategy):
        os.makedirs(model_dir, exist_ok=True)
        settings.save(model_dir)
    tf.keras.utils.set_random_seed(random_seed)
    feature_spec = bert4rec_data.bert4rec_feature_spec(settings.max_seq_length,
                                                       settings.max_predictions_per_seq)

    def dataset_fn(input_context):
        return make_dataset(train_input_file, feature_spec,
                            input_context.get_per_replica_batch_size(batch_size), is_training=True,
                            seed=random_seed, shuffle_buffer=shuffle_buffer,
                            input_context=input_context)

    with strategy.scope():
        model = build_model(config, settings.model, settings.cross_attention_yy)
        optimizer = build_optimizer(learning_rate, num_train_steps, num_warmup_steps)
    if init_checkpoint and not tf.train.latest_checkpoint(model_dir):
        load_google_checkpoint(init_checkpoint, model.encoder, masked_lm_head=model.masked_lm)
        logging.info("initialised from %s", init_checkpoint)
    eval_fn = None
    if eval_every_steps:
        if not eval_input_file:
            raise ValueError("eval_every_steps needs an eval_input_file (the test TFRecords)")

        def eval_fn(step: int) -> dict:
            started = time.perf_counter()
            results = run_evaluation(model, settings, eval_input_file, batch_size=eval_batch_size,
                                     protocols=eval_protocols, exclude_history=exclude_history,
                                     random_seed=random_seed, progress=False)
            if on_evaluation is not None:
                on_evaluation(step, results, time.perf_counter() - started)
            for protocol, metrics in results.items():
                print(f"{protocol} at step {step}:\n{format_original_line(metrics)}", flush=True)
            return {protocol: {name: value for name, value in metrics.items() if name != "valid_user"}
                    for protocol, metrics in results.items()}
    if isinstance(strategy, tf.distribute.TPUStrategy):
        length_buckets = 0
    elif length_buckets is None:
        length_buckets = LENGTH_BUCKETS
    loss_fn = functools.partial(bert4rec_loss, length_buckets=length_buckets)
    train_settings = TrainSettings(model_dir=model_dir, num_train_steps=num_train_steps,
                                   save_checkpoints_steps=save_checkpoints_steps,
                                   log_every_steps=max(save_checkpoints_steps // 10, steps_per_execution),
                                   steps_per_execution=steps_per_execution, progress=progress,
                                   eval_every_steps=eval_every_steps if eval_fn else None)
    # A resumed run skips the batches already seen: the uninterrupted run's order (seeded shuffle).
    result = Trainer(strategy, model, optimizer, loss_fn, train_settings, eval_fn=eval_fn).fit(
        skip_consumed_batches(dataset_fn))
    return model, result


def restore_model(model_dir: str, settings: RunSettings | None = None) -> tuple[Bert4Rec, str]:
    """The newest checkpoint in `model_dir` as a model (no optimizer); returns (model, path)."""
    settings = settings or RunSettings.load(model_dir)
    vocab = bert4rec_data.load_vocab(settings.vocab_filename)
    config = load_checked_config(settings.bert_config_file, vocab, settings.max_seq_length)
    model = build_model(config, settings.model, settings.cross_attention_yy)
    checkpoint, manager = make_checkpoint_manager(model_dir, model=model)
    path = restore_latest(checkpoint, manager)
    if path is None:
        raise FileNotFoundError(f"{model_dir}: no checkpoint to evaluate; train first (--do_train)")
    return model, path


def run_evaluation(model: Bert4Rec, settings: RunSettings, test_input_file: str, batch_size: int = 256,
                   protocols: Sequence[str] = ("pop100", "uni100", "full"),
                   exclude_history: bool = True, random_seed: int = 12345,
                   progress: bool = True) -> dict:
    """Ranks every test user's held-out item under each protocol; returns protocol -> metrics.

    One forward pass per batch serves every protocol: the candidates are drawn first (numpy), then one
    traced function computes the logits, gathers the candidates' scores and counts, for full ranking,
    the items scoring at least the target's, so no [batch, vocab] array leaves TensorFlow.
    """
    vocab = bert4rec_data.load_vocab(settings.vocab_filename)
    histories = bert4rec_data.load_histories(settings.user_history_filename)
    sampler = CandidateSampler(vocab.item_counts, num_negatives=100, seed=random_seed,
                               num_items=vocab.num_items)
    evaluator = RankingEvaluator(
        sampler, protocols, histories,
        history_window=excluded_history_window(exclude_history, settings.max_seq_length))
    feature_spec = bert4rec_data.bert4rec_feature_spec(settings.max_seq_length,
                                                       settings.max_predictions_per_seq)
    dataset = make_dataset(test_input_file, feature_spec, batch_size, is_training=False)
    num_items = int(sampler.item_ids.size)
    if hasattr(model, "output_table") and np.array_equal(sampler.item_ids, np.arange(1, num_items + 1)):
        # Items are ids 1..num_items: score against that slice of the output table, transposed once here
        # (a [hidden, items] operand multiplies twice as fast as transpose_b on this CPU).
        if not model.masked_lm.built:  # a fresh model: one forward pass creates the weights
            model.next_item_logits(next(iter(dataset)))
        table = tf.transpose(model.output_table()[1:num_items + 1])
        kind, first_id, extra = "states", 1, table
    else:  # any model with next_item_logits (and any item set): the full logits, masked
        kind, first_id, extra = "logits", 0, tf.constant(sampler.item_mask)
    score_fn = _scoring_function(model, kind, dataset.element_spec, extra)
    bar = tqdm(desc="evaluating", unit="user", disable=not progress)
    for features in dataset:
        user_indices = features["info"].numpy()[:, 0]
        targets = features["masked_lm_ids"].numpy()[:, 0]
        batch = evaluator.prepare(user_indices, targets)
        scores, at_least = score_fn(features, tf.constant(batch.columns - first_id), extra)
        evaluator.add_scores(batch, scores.numpy(), at_least.numpy())
        bar.update(len(user_indices))
    bar.close()
    return evaluator.result()


_SCORING_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _scoring_function(model, kind: str, feature_spec, extra):
    """One traced scoring function per model, kind and input signature, so evaluations during training
    do not trace it again, and one evaluation traces it once (batch and candidate counts are dynamic).

    (features, columns int64 [B, C] with the target in column 0, extra) -> (float32 [B, C] scores at
    `columns`, int32 [B] items scoring >= the target, itself included; a NaN score is never counted).
    kind "states": extra is the transposed output table [hidden + 1, items] and columns index its items;
    kind "logits": extra is the bool item mask [vocab] and columns are vocabulary ids.
    `bert4rec.evaluation.score_candidates` is the numpy reference (it also counts every item for a NaN
    target, which `RankingEvaluator.add_scores` does for this function's output).
    """
    signature = (feature_spec, tf.TensorSpec([None, None], tf.int64), tf.TensorSpec(extra.shape, extra.dtype))
    key = (kind, repr(signature))
    functions = _SCORING_FUNCTIONS.setdefault(model, {})
    if key not in functions:
        @tf.autograph.experimental.do_not_convert  # plain Python branches on `kind`; nothing to convert
        def candidate_scores(features, columns, extra):
            if kind == "states":
                logits = tf.linalg.matmul(model.next_item_states(features), extra)
            else:
                logits = model.next_item_logits(features)[:, :tf.shape(extra)[0]]
            target_scores = tf.gather(logits, columns[:, :1], batch_dims=1)
            at_least = logits >= target_scores
            if kind == "logits":
                at_least = tf.logical_and(at_least, extra[None, :])
            return tf.gather(logits, columns, batch_dims=1), tf.reduce_sum(tf.cast(at_least, tf.int32), axis=1)

        functions[key] = tf.function(candidate_scores, input_signature=signature)
    return functions[key]


def report_evaluation(results: dict, model_dir: str, extra: dict | None = None,
                      summary_step: int | None = None) -> str:
    """Prints the original's metric line per protocol, writes eval_results.json and eval scalars."""
    for protocol, metrics in results.items():
        # A label line, then the original's metric line unchanged (scripts that parse it still work).
        print(f"{protocol}:\n{format_original_line(metrics)}", flush=True)
    path = os.path.join(model_dir, EVAL_RESULTS_NAME)
    write_eval_results(path, results, extra)
    if summary_step is not None:
        writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
        write_scalars(writer, summary_step, {
            f"{protocol}/{name}": value for protocol, metrics in results.items()
            for name, value in metrics.items() if name != "valid_user"})
        writer.flush()
    return path
