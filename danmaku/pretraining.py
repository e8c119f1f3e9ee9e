"""Continued MLM + NSP pre-training of BERT on danmaku, reporting Google's four evaluation numbers.

`run_pretraining(...)` is what `python -m danmaku.run_pretraining` calls: `BertPretrainer` trained by
`common.training.Trainer` under any `tf.distribute` strategy, started from a Google checkpoint, a
Hugging Face / keras-hub folder, our own output folder, or from scratch; evaluated before training,
on the training data and on the evaluation data. Outputs in `output_dir`:

- `ckpt-N.*` resumable checkpoints (model, optimizer, step) and TensorBoard scalars (`train/`, `eval/`);
- `model.ckpt-N.*` the final weights under Google's TF1 names (encoder + MLM + NSP heads), which
  Google's scripts, bert-as-service and `danmaku.serve -tuned_model_dir ... -ckpt_name model.ckpt-N` load;
- `bert_config.json`, `vocab.txt` so the folder is a model folder by itself;
- `eval_results.txt` in Google's format (`key = value`, evaluation data) and `eval_results.json`
  (all three rows), and the table printed at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import tensorflow as tf
from absl import logging

from common import io_utils
from common.checkpoints import GOOGLE_CONFIG_FILE, GOOGLE_VOCAB_FILE, save_google_checkpoint
from common.cli import UserError
from common.config import BertConfig, BertConfigError
from common.distribute import is_chief
from common.encoder import BertEncoder
from common.heads import BertPretrainer
from common.io_utils import atomic_write_json, atomic_write_text
from danmaku.files import resolve_record_files

# Google's eval_results.txt keys; the four the danmaku README compares come first in our table.
REPORTED_METRICS = ("masked_lm_accuracy", "masked_lm_loss", "next_sentence_accuracy", "next_sentence_loss")
INIT_RESULTS_FILE = "eval_results_init.json"  # "before training", kept so a resumed run still reports it
ROW_TITLES = {"before_training": "before training (eval data)", "train": "training data",
              "eval": "evaluation data"}


@dataclasses.dataclass
class PretrainingSettings:
    input_file: str
    output_dir: str
    bert_config_file: str | None = None
    init_checkpoint: str | None = None
    eval_input_file: str | None = None
    vocab_file: str | None = None
    train_batch_size: int = 32
    eval_batch_size: int = 8
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    num_train_steps: int = 100000
    num_warmup_steps: int = 10000
    learning_rate: float = 5e-5
    save_checkpoints_steps: int = 1000
    iterations_per_loop: int = 1000
    max_eval_steps: int = 100
    eval_every_steps: int | None = None
    do_train: bool = True
    do_eval: bool = True
    random_seed: int = 12345
    progress: bool = True


def google_metrics(results: Mapping[str, float], global_step: int) -> dict:
    """`common.training.evaluate`'s names -> Google run_pretraining's eval keys."""
    terms, metrics = results["terms"], results["metrics"]
    return {"global_step": int(global_step), "loss": float(results["loss"]),
            "masked_lm_accuracy": float(metrics["masked_lm_accuracy"]),
            "masked_lm_loss": float(terms["masked_lm"]),
            "next_sentence_accuracy": float(metrics["next_sentence_accuracy"]),
            "next_sentence_loss": float(terms["next_sentence"])}


def format_eval_results(metrics: Mapping[str, float]) -> str:
    """Google's `eval_results.txt`: `key = value` lines, keys sorted."""
    return "".join(f"{key} = {metrics[key]}\n" for key in sorted(metrics))


def read_eval_results(path: str) -> dict[str, float]:
    """Parses an `eval_results.txt` (ours or Google's) back into numbers."""
    values = {}
    with io_utils.open_file(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            key, separator, value = line.partition(" = ")
            if not separator:
                raise ValueError(f"{path}:{line_number}: expected 'key = value', got {line.strip()!r}")
            values[key.strip()] = float(value)
    return values


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """The README's table: one row per evaluation (before training, training data, evaluation data)."""
    header = "| | " + " | ".join(REPORTED_METRICS) + " |"
    lines = [header, "|---" * (len(REPORTED_METRICS) + 1) + "|"]
    for name in ("before_training", "train", "eval"):
        if name in rows:
            cells = " | ".join(f"{rows[name][metric]:.4f}" for metric in REPORTED_METRICS)
            lines.append(f"| {ROW_TITLES[name]} (step {rows[name]['global_step']}) | {cells} |")
    return "\n".join(lines)


def tpu_address(tpu: str | None, tpu_name: str | None, master: str | None) -> str | None:
    """Google's TPU flags -> the TPU for `TPUClusterResolver`: --tpu (ours), else --tpu_name, else --master's
    grpc:// address (Google passes --master to the TPU run config when no --tpu_name is given)."""
    return tpu or tpu_name or master


def check_tpu_cores(num_replicas: int, num_tpu_cores: int | None) -> None:
    """--num_tpu_cores against the strategy: more than the TPU has is an error; fewer is reported (all are used)."""
    if not num_tpu_cores:
        return
    if num_tpu_cores > num_replicas:
        raise UserError(f"--num_tpu_cores={num_tpu_cores} but the TPU has {num_replicas} cores")
    if num_tpu_cores < num_replicas:
        logging.warning("--num_tpu_cores=%d: the TPU strategy uses all %d cores", num_tpu_cores, num_replicas)


# ---- model -------------------------------------------------------------------------------------

def _folder_of(path: str) -> str:
    return path if io_utils.isdir(path) else io_utils.dirname(path)


def resolve_config(settings: PretrainingSettings) -> tuple[BertConfig, str]:
    """`--bert_config_file`, else our output folder's, else the init checkpoint folder's config."""
    candidates = []
    if settings.bert_config_file:
        candidates.append(settings.bert_config_file)
    candidates.append(io_utils.join(settings.output_dir, GOOGLE_CONFIG_FILE))
    if settings.init_checkpoint:
        candidates.append(io_utils.join(_folder_of(settings.init_checkpoint), GOOGLE_CONFIG_FILE))
    for path in candidates:
        if io_utils.isfile(path):
            try:
                return BertConfig.from_json_file(path), path
            except BertConfigError as error:  # names the file and the key
                raise UserError(str(error)) from None
    if settings.bert_config_file:
        raise UserError(f"{settings.bert_config_file}: no such --bert_config_file")
    if settings.init_checkpoint and io_utils.isfile(io_utils.join(settings.init_checkpoint, "config.json")):
        from common.model_source import load_pretrained_folder  # Hugging Face / keras-hub folder
        return load_pretrained_folder(settings.init_checkpoint).config, settings.init_checkpoint
    raise UserError("--bert_config_file is required (no bert_config.json in --output_dir or beside "
                    "--init_checkpoint)")


def resolve_vocab(settings: PretrainingSettings) -> str | None:
    candidates = [settings.vocab_file] if settings.vocab_file else []
    if settings.init_checkpoint:
        folder = _folder_of(settings.init_checkpoint)
        candidates += [io_utils.join(folder, GOOGLE_VOCAB_FILE),
                       io_utils.join(folder, "assets", "tokenizer", "vocabulary.txt")]
    if settings.bert_config_file:
        candidates.append(io_utils.join(io_utils.dirname(settings.bert_config_file), GOOGLE_VOCAB_FILE))
    for path in candidates:
        if path and io_utils.isfile(path):
            return path
    if settings.vocab_file:
        raise UserError(f"{settings.vocab_file}: no such --vocab_file")
    return None


def build_pretrainer(strategy, config: BertConfig, settings: PretrainingSettings):
    from common.optimization import create_optimizer

    with strategy.scope():
        encoder = BertEncoder(config)
        model = BertPretrainer(encoder)
        optimizer = create_optimizer(settings.learning_rate, settings.num_train_steps, settings.num_warmup_steps)
    return model, optimizer


def warm_start_pretrainer(source: str, model) -> str:
    """Encoder and both heads from `source`; the heads start fresh where the source has none (an
    encoder-only Hugging Face folder, a checkpoint saved without `cls/`)."""
    from common.checkpoints import CheckpointMismatchError, warm_start

    try:
        return warm_start(source, model.encoder, masked_lm_head=model.masked_lm,
                          next_sentence_head=model.next_sentence)
    except CheckpointMismatchError as with_heads:
        loaded = warm_start(source, model.encoder)  # raises again if the encoder itself does not fit
        logging.warning("%s has no usable pre-training heads, they start from random weights (%s)",
                        source, str(with_heads).splitlines()[0])
        return loaded + "; heads: random"


def _has_training_checkpoint(output_dir: str) -> bool:
    return tf.train.latest_checkpoint(output_dir) is not None


def write_model_folder_files(output_dir: str, config: BertConfig, vocab_path: str | None, run_config: dict) -> None:
    """bert_config.json, vocab.txt and run_config.json beside the checkpoints."""
    from common.checkpoints import write_model_folder

    write_model_folder(output_dir, config, vocab_file=vocab_path, run_config=run_config)


def check_record_files(files: list[str], settings: PretrainingSettings) -> None:
    """Each file's first record must be a pre-training example of --max_seq_length and
    --max_predictions_per_seq: a mismatch is one error line here, not a tf.data error mid-training."""
    expected = {"input_ids": settings.max_seq_length, "masked_lm_positions": settings.max_predictions_per_seq}
    flag_of = {"input_ids": "--max_seq_length", "masked_lm_positions": "--max_predictions_per_seq"}
    for path in files:
        try:
            first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
        except tf.errors.OpError as error:
            raise UserError(f"{path}: not a readable TFRecord file ({error.message.splitlines()[0]})") from None
        if first is None:
            continue  # an empty shard: nothing to mismatch
        example = tf.train.Example.FromString(first.numpy())
        for name, length in expected.items():
            feature = example.features.feature.get(name)
            if feature is None:
                raise UserError(f"{path}: record 0 has no {name!r}; not create_pretraining_data output")
            found = len(feature.int64_list.value)
            if found != length:
                raise UserError(f"{path}: records have {name} of length {found} but {flag_of[name]}={length}; "
                                "use the value the data was created with")


# ---- evaluation ---------------------------------------------------------------------------------

def make_eval_dataset(input_file: str, settings: PretrainingSettings) -> tf.data.Dataset:
    """Google's evaluation input: the files in order, repeated, in batches of exactly eval_batch_size (static shapes
    on TPU however small the eval set); `max_eval_steps` batches are evaluated."""
    from common.pretraining_data import make_pretraining_dataset

    return make_pretraining_dataset(resolve_record_files(input_file), settings.eval_batch_size,
                                    settings.max_seq_length, settings.max_predictions_per_seq,
                                    is_training=False, repeat=True, drop_remainder=True)


def evaluate_pretrainer(strategy, model, input_file: str, settings: PretrainingSettings, global_step: int) -> dict:
    from common.training import bert_pretraining_loss_fn, evaluate

    if settings.max_eval_steps < 1:
        raise UserError(f"--max_eval_steps must be at least 1 (the evaluation input repeats), got "
                        f"{settings.max_eval_steps}")

    results = evaluate(strategy, model, make_eval_dataset(input_file, settings), bert_pretraining_loss_fn,
                       max_steps=settings.max_eval_steps, progress=settings.progress)
    return google_metrics(results, global_step)


def _write_eval_scalars(output_dir: str, name: str, metrics: Mapping[str, float]) -> None:
    from common.training import write_scalars

    writer = tf.summary.create_file_writer(io_utils.join(output_dir, "eval_" + name))
    try:
        write_scalars(writer, int(metrics["global_step"]),
                      {key: value for key, value in metrics.items() if key != "global_step"})
    finally:
        writer.close()


# ---- the run ------------------------------------------------------------------------------------

def run_pretraining(strategy, settings: PretrainingSettings) -> dict:
    """Trains and/or evaluates; returns {"rows": {before_training/train/eval: metrics}, "final_step", ...}."""
    if not settings.do_train and not settings.do_eval:
        raise UserError("at least one of --do_train or --do_eval must be set")
    config, config_source = resolve_config(settings)
    if settings.max_seq_length > config.max_position_embeddings:
        raise UserError(f"--max_seq_length={settings.max_seq_length} is longer than the model's "
                        f"max_position_embeddings={config.max_position_embeddings} ({config_source})")
    chief = is_chief(strategy)
    train_files = resolve_record_files(settings.input_file)
    check_record_files(train_files, settings)
    eval_file = settings.eval_input_file or settings.input_file
    if settings.do_eval:
        check_record_files(resolve_record_files(eval_file), settings)  # fail before training, not after

    resuming = _has_training_checkpoint(settings.output_dir)
    if not settings.do_train and not resuming and not settings.init_checkpoint:
        raise UserError(f"--do_eval without --do_train: no checkpoint in {settings.output_dir} and no "
                        "--init_checkpoint to evaluate")
    model, optimizer = build_pretrainer(strategy, config, settings)
    loaded_from = None
    if settings.init_checkpoint and not resuming:
        loaded_from = warm_start_pretrainer(settings.init_checkpoint, model)
    if chief:
        run_config = {key: value for key, value in dataclasses.asdict(settings).items()}
        run_config["loaded_from"] = loaded_from
        write_model_folder_files(settings.output_dir, config, resolve_vocab(settings), run_config)

    rows: dict[str, dict] = {}
    init_path = io_utils.join(settings.output_dir, INIT_RESULTS_FILE)
    if settings.do_eval:
        if not resuming:
            rows["before_training"] = evaluate_pretrainer(strategy, model, eval_file, settings, 0)
            if chief:
                atomic_write_json(init_path, rows["before_training"])
        elif io_utils.isfile(init_path):
            rows["before_training"] = io_utils.read_json(init_path, UserError, expect=dict)

    final_step = 0
    train_result = None
    if settings.do_train:
        from common.pretraining_data import make_pretraining_dataset
        from common.training import Trainer, TrainSettings, bert_pretraining_loss_fn

        def dataset_fn(input_context, start_step):
            # A resumed run reshuffles with another seed instead of replaying (or skipping) the first batches.
            batch_size = input_context.get_per_replica_batch_size(settings.train_batch_size)
            return make_pretraining_dataset(train_files, batch_size, settings.max_seq_length,
                                            settings.max_predictions_per_seq, is_training=True,
                                            seed=settings.random_seed + start_step, input_context=input_context)

        def eval_fn(step):
            metrics = evaluate_pretrainer(strategy, model, eval_file, settings, step)
            return {key: value for key, value in metrics.items() if key != "global_step"}

        train_settings = TrainSettings(
            model_dir=settings.output_dir, num_train_steps=settings.num_train_steps,
            save_checkpoints_steps=settings.save_checkpoints_steps,
            steps_per_execution=max(1, min(settings.iterations_per_loop, settings.num_train_steps)),
            log_every_steps=max(1, min(100, settings.save_checkpoints_steps or 100)),
            progress=settings.progress, eval_every_steps=settings.eval_every_steps or None)
        trainer = Trainer(strategy, model, optimizer, bert_pretraining_loss_fn, train_settings,
                          eval_fn=eval_fn if settings.eval_every_steps else None)
        train_result = trainer.fit(dataset_fn)
        final_step = train_result.final_step
        if chief:
            google_prefix = io_utils.join(settings.output_dir, f"model.ckpt-{final_step}")
            save_google_checkpoint(model.encoder, google_prefix, masked_lm_head=model.masked_lm,
                                   next_sentence_head=model.next_sentence)
            logging.info("wrote %s (Google's variable names)", google_prefix)
    elif resuming:
        final_step = _restore_model_only(model, settings.output_dir)

    if settings.do_eval:
        rows["train"] = evaluate_pretrainer(strategy, model, settings.input_file, settings, final_step)
        rows["eval"] = evaluate_pretrainer(strategy, model, eval_file, settings, final_step)
        if chief:
            atomic_write_text(io_utils.join(settings.output_dir, "eval_results.txt"),
                              format_eval_results(rows["eval"]))
            atomic_write_json(io_utils.join(settings.output_dir, "eval_results.json"), rows)
            for name, metrics in rows.items():
                _write_eval_scalars(settings.output_dir, name, metrics)
    return {"rows": rows, "final_step": final_step, "loaded_from": loaded_from,
            "steps_per_second": train_result.steps_per_second if train_result else None}


def _restore_model_only(model, output_dir: str) -> int:
    """--do_eval without --do_train: the newest training checkpoint's weights and step (optimizer ignored)."""
    from common.checkpoints import restore_checkpoint

    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    path = tf.train.latest_checkpoint(output_dir)
    restore_checkpoint(tf.train.Checkpoint(model=model, step=step), path)
    logging.info("evaluating %s", path)
    return int(step.numpy())
