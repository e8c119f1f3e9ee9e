r"""Masked-LM pre-training of BERT from scratch on viewing logs (each user a sentence of programme-slot ids).

    python -m ovt_explain.bert_pretraining pretraining_config.json [--strategy=mirrored --num_gpus=2]
        [--mixed_precision=bfloat16]

Every setting is a key of the config file, documented in `ovt_explain/configs/pretraining_config.json`
(the original's own keys, e.g. `per_device_train_batch_size`, `num_train_epochs`, `num_bert_layers`, work
too). As the original: `train_file` is the plain-text `sentence.txt`, one line = one example, the first
`eval_percentage` % of the lines evaluate, `[CLS]` + the first `max_seq_length - 2` ids + `[SEP]`, masks
drawn per batch as Hugging Face's collator. The output folder gets the vocabulary (when built here),
`bert_config.json`, `vocab.txt`, `run_config.json`, the examples as TFRecords under `data/`, resumable
checkpoints, the best-evaluation
checkpoint under `best/` (with `load_best_model_at_end`), `eval_history.json` and TensorBoard scalars
(`train/`, `eval/`). Running it again resumes from the newest checkpoint. `bert_cls` warm-starts from it.
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python ovt_explain/bert_pretraining.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import math  # noqa: E402

from absl import logging  # noqa: E402

from ovt_explain.run_config import REQUIRED, Key, config_script_main  # noqa: E402

PRETRAINING_KEYS = (
    Key("train_file", "paths", REQUIRED, "the original's sentence.txt (plain text, one user a line of ids, one "
        "line = one example); JSON logs (user_id -> \"program_id ...\") work too; one file or a list"),
    Key("vocab_file", str, REQUIRED, "programme vocabulary (generate_vocab's vocab.txt: [UNK] [CLS] [SEP] [PAD] "
        "[MASK] then ids); built from train_file with min_count when the file does not exist yet"),
    Key("output_dir", str, REQUIRED, "model folder: checkpoints, bert_config.json, vocab.txt, data/, "
        "TensorBoard, eval_history.json"),
    Key("min_count", int, 2, "programme ids seen fewer times become [UNK] (only when the vocabulary is built here)"),
    Key("bert_config", str, None, "a bert_config.json (vocab_size is set from the vocabulary); when absent "
        "the model keys below describe the model"),
    Key("hidden_size", int, 256, "width of the model (the published model: 256)"),
    Key("num_hidden_layers", int, 8, "transformer layers (the published model: 8)", ("num_bert_layers",)),
    Key("num_attention_heads", int, 8, "attention heads (the published model: 8)"),
    Key("intermediate_size", int, 3072, "feed-forward width (the original's and the published model's: 3072)"),
    Key("max_position_embeddings", int, None, "position table size (default max_seq_length)"),
    Key("hidden_dropout_prob", float, 0.1, "dropout on hidden states"),
    Key("attention_probs_dropout_prob", float, 0.1, "dropout on attention probabilities"),
    Key("max_seq_length", int, 512, "tokens per example, [CLS] and [SEP] included (the original: 512)"),
    Key("truncation", str, "first", "a longer line keeps its first max_seq_length - 2 ids (\"first\", the "
        "original's tokenizer) or its most recent ones (\"recent\")"),
    Key("masked_lm_prob", float, 0.15, "share of the non-special tokens masked, drawn per batch (the original's "
        "collator: 80% [MASK], 10% random id, 10% unchanged)", ("mlm_probability",)),
    Key("masking", str, "tokens", "\"tokens\": each token chosen on its own (the original's collator); \"runs\": "
        "whole runs of consecutive slots of one channel (a programme watched without zapping), each run "
        "with probability masked_lm_prob"),
    Key("slot_seconds", int, 300, "seconds between consecutive slot ids of a channel (masking: runs)"),
    Key("per_device_train_batch_size", int, 8, "training batch per replica (Hugging Face's meaning and default)"),
    Key("per_device_eval_batch_size", int, 8, "evaluation batch per replica"),
    Key("batch_size", int, None, "global training batch; overrides per_device_train_batch_size x replicas",
        ("train_batch_size",)),
    Key("epochs", float, 3.0, "passes over the training lines (Hugging Face's default 3)", ("num_train_epochs",)),
    Key("learning_rate", float, 5e-5, "peak learning rate (Hugging Face Trainer default, as the paper ran)"),
    Key("warmup_proportion", float, 0.0, "share of steps with linear warm-up", ()),
    Key("weight_decay", float, 0.0, "AdamW weight decay (not on LayerNorm and biases)"),
    Key("eval_percentage", float, 5.0, "the first int(eval_percentage) % of the lines are the evaluation set "
        "(the original's default 5)"),
    Key("eval_steps", int, 500, "evaluate every this many steps (and at the end)"),
    Key("logging_steps", int, 500, "log line and TensorBoard scalars every this many steps",
        ("log_every_steps",)),
    Key("save_steps", int, 500, "checkpoint every this many steps", ("save_checkpoints_steps",)),
    Key("save_total_limit", int, 5, "checkpoints kept"),
    Key("load_best_model_at_end", bool, False, "keep the lowest-eval-loss model in output_dir/best/ and "
        "warm-start bert_cls from it"),
    Key("early_stopping_patience", int, None, "stop after this many evaluations without improvement"),
    Key("random_seed", int, 42, "seed for masking, data order and initialisation", ("seed",)),
    Key("use_checkpoint", bool, True, "resume from output_dir's newest checkpoint; false refuses to "
        "start when output_dir already holds one"),
    Key("steps_per_execution", int, 1, "training steps per tf.function call"),
)
# The original's Hugging Face keys that mean nothing here.
IGNORED_KEYS = {"evaluation_strategy": "evaluation runs every eval_steps",
                "logging_strategy": "logging runs every logging_steps", "log_level": "use --verbose",
                "overwrite_cache": "data are rewritten every run", "do_train": "always trains",
                "num_proc": "one process writes the examples (bench/ovt_logs_scale.py: 1 M lines in seconds)",
                "dupe_factor": "masks are drawn per batch, as the original's collator",
                "max_predictions_per_seq": "every position can be masked, as the original's collator"}


def global_batch_size(config: dict, strategy, per_device_key: str, global_key: str | None = None) -> int:
    """Hugging Face's `per_device_*_batch_size` is per replica; an explicit global batch wins."""
    if global_key and config.get(global_key):
        return int(config[global_key])
    return int(config[per_device_key]) * int(strategy.num_replicas_in_sync)


def read_lines(paths) -> tuple:
    """(lines, count) of the training files: plain text line by line, or JSON logs one user a line."""
    from ovt_explain.logs import is_plain_text, read_many_logs
    from ovt_explain.mlm_data import plain_text_lines

    with open(paths[0], encoding="utf-8") as handle:
        head = handle.read(4096)
    if is_plain_text(head):
        return plain_text_lines(paths)
    histories = list(read_many_logs(paths).values())
    return iter(histories), len(histories)


def pretrain(config: dict, strategy=None, progress: bool = True, config_path: str = "config") -> dict:
    """Runs pre-training as the config says; returns {output_dir, steps, eval_history, ...}."""
    import tensorflow as tf

    from common.config import BertConfig
    from common.checkpoints import write_model_folder
    from common.encoder import BertEncoder
    from common.heads import BertPretrainer
    from common.optimization import create_optimizer
    from common.tokenization import load_vocab
    from common.training import (BestCheckpoint, EarlyStopping, Trainer, TrainSettings, bert_pretraining_loss_fn,
                                 evaluate, flatten_results, skip_consumed_batches)
    from ovt_explain.logs import write_program_vocab
    from ovt_explain.mlm_data import MASKINGS, masked_lm_dataset, write_line_examples
    from ovt_explain.modeling import TRUNCATIONS, special_ids

    strategy = strategy or tf.distribute.get_strategy()
    if config["masking"] not in MASKINGS:
        raise cli.UserError(f"{config_path}: masking must be one of {', '.join(MASKINGS)}, "
                            f"got {config['masking']!r}")
    output_dir = config["output_dir"]
    if not config["use_checkpoint"] and tf.train.latest_checkpoint(output_dir):
        raise cli.UserError(f"{config_path}: use_checkpoint is false but {output_dir} already holds "
                            f"checkpoints; choose another output_dir")
    if config["truncation"] not in TRUNCATIONS:
        raise cli.UserError(f"{config_path}: truncation must be one of {', '.join(TRUNCATIONS)}")
    if not os.path.exists(config["vocab_file"]):
        lines, _ = read_lines(config["train_file"])
        vocabulary = write_program_vocab(lines, config["vocab_file"], config["min_count"])
        logging.info("built vocabulary %s: %d tokens (min_count %d)", config["vocab_file"], len(vocabulary),
                     config["min_count"])
    vocab = load_vocab(config["vocab_file"])
    try:
        special_ids(vocab)
    except ValueError as error:
        raise cli.UserError(f"{config['vocab_file']}: {error}") from None

    max_seq_length = config["max_seq_length"]
    if config["bert_config"]:
        bert_config = BertConfig.from_json_file(config["bert_config"]).replace(vocab_size=len(vocab))
    else:
        bert_config = BertConfig(
            vocab_size=len(vocab), hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attention_probs_dropout_prob=config["attention_probs_dropout_prob"],
            max_position_embeddings=config["max_position_embeddings"] or max_seq_length)
    if max_seq_length > bert_config.max_position_embeddings:
        raise cli.UserError(f"{config_path}: max_seq_length {max_seq_length} exceeds the model's "
                            f"max_position_embeddings {bert_config.max_position_embeddings}")

    # One line = one example; the first eval_percentage % of the lines are the evaluation set.
    lines, num_lines = read_lines(config["train_file"])
    if config["truncation"] == "recent":
        lines = (ids[-(max_seq_length - 2):] for ids in lines)
    stats = write_line_examples(lines, num_lines, vocab, max_seq_length, os.path.join(output_dir, "data"),
                                config["eval_percentage"])
    logging.info("%d lines: %d training and %d evaluation examples (%d empty lines dropped, %d truncated)",
                 num_lines, stats["train"], stats["eval"], stats["empty_lines"], stats["truncated"])
    if not stats["train"]:
        raise cli.UserError(f"{config['train_file'][0]}: no training lines")

    batch_size = global_batch_size(config, strategy, "per_device_train_batch_size", "batch_size")
    eval_batch_size = global_batch_size(config, strategy, "per_device_eval_batch_size")
    # Hugging Face: ceil(epochs x batches per epoch).
    num_train_steps = max(1, int(math.ceil(config["epochs"] * math.ceil(stats["train"] / batch_size))))
    num_warmup_steps = int(config["warmup_proportion"] * num_train_steps)
    write_model_folder(output_dir, bert_config, config["vocab_file"],
                       run_config={**config, "num_train_steps": num_train_steps, "global_batch_size": batch_size,
                                   "task": "pretraining"})
    logging.info("pre-training %d layers x %d wide (feed-forward %d), vocab %d: %d steps of %d",
                 bert_config.num_hidden_layers, bert_config.hidden_size, bert_config.intermediate_size,
                 len(vocab), num_train_steps, batch_size)

    import warnings

    import keras
    keras.utils.set_random_seed(config["random_seed"])
    # Masked-LM-only pre-training leaves the pooler without gradients: expected, not worth a warning.
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables.*pooler")
    with strategy.scope():
        model = BertPretrainer(BertEncoder(bert_config), use_next_sentence=False)
        optimizer = create_optimizer(config["learning_rate"], num_train_steps, num_warmup_steps,
                                     weight_decay=config["weight_decay"], clip_norm=1.0,
                                     bias_correction=True, epsilon=1e-8)

    def dataset_fn(input_context):
        return masked_lm_dataset(stats["files"]["train"], input_context.get_per_replica_batch_size(batch_size),
                                 max_seq_length, vocab, config["random_seed"], is_training=True,
                                 mlm_probability=config["masked_lm_prob"], input_context=input_context,
                                 masking=config["masking"], slot_seconds=config["slot_seconds"])

    eval_fn = None
    if stats["eval"]:
        eval_dataset = masked_lm_dataset(stats["files"]["eval"], eval_batch_size, max_seq_length, vocab,
                                         config["random_seed"] + 1, is_training=False,
                                         mlm_probability=config["masked_lm_prob"], masking=config["masking"],
                                         slot_seconds=config["slot_seconds"])

        def eval_fn(step):
            del step
            return evaluate(strategy, model, eval_dataset, bert_pretraining_loss_fn)

    callbacks = []
    if eval_fn and config["load_best_model_at_end"]:
        callbacks.append(BestCheckpoint("loss", "min"))
    if eval_fn and config["early_stopping_patience"]:
        callbacks.append(EarlyStopping("loss", "min", config["early_stopping_patience"]))
    train_settings = TrainSettings(model_dir=output_dir, num_train_steps=num_train_steps,
                                   save_checkpoints_steps=config["save_steps"],
                                   max_checkpoints_to_keep=config["save_total_limit"],
                                   log_every_steps=config["logging_steps"],
                                   steps_per_execution=config["steps_per_execution"], progress=progress,
                                   eval_every_steps=config["eval_steps"] if eval_fn else None)
    result = Trainer(strategy, model, optimizer, bert_pretraining_loss_fn, train_settings, eval_fn=eval_fn,
                     callbacks=callbacks).fit(skip_consumed_batches(dataset_fn))
    summary = {"output_dir": output_dir, "steps": result.final_step, "num_train_steps": num_train_steps,
               "vocab_size": len(vocab), "train_examples": stats["train"], "eval_examples": stats["eval"],
               "parameters": int(model.encoder.count_params()),
               "eval_history": result.eval_history,
               "best_step": result.best["best"]["step"] if "best" in result.best else None}
    if result.eval_history:
        logging.info("final evaluation: %s",
                     {k: round(v, 4) for k, v in flatten_results(result.eval_history[-1]).items()})
    return summary


main = config_script_main("bert_pretraining", "pretraining_config.json", PRETRAINING_KEYS, IGNORED_KEYS, pretrain)

if __name__ == "__main__":
    cli.run(main)
