r"""Masked-LM pre-training of BERT from scratch on viewing logs (each user a sentence of programme-slot ids).

    python -m ovt_explain.bert_pretraining pretraining_config.json [--strategy=mirrored --num_gpus=2]
        [--mixed_precision=bfloat16]

Every setting is a key of the config file, documented in `ovt_explain/configs/pretraining_config.json`
(the paper's own keys, e.g. `per_device_train_batch_size`, `num_train_epochs`, `num_bert_layers`, work
too). The output folder gets the vocabulary (when built here), `bert_config.json`, `vocab.txt`,
`run_config.json`, the pre-training TFRecords under `data/`, resumable checkpoints, the best-evaluation
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

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from ovt_explain.run_config import REQUIRED, Key, config_script_main  # noqa: E402

PRETRAINING_KEYS = (
    Key("train_file", "paths", REQUIRED, "viewing logs: one file or a list (JSON object user_id -> "
        "\"program_id ...\" or JSON Lines)"),
    Key("vocab_file", str, REQUIRED, "programme vocabulary (one id a line, special tokens first); built "
        "from train_file with min_count when the file does not exist yet"),
    Key("output_dir", str, REQUIRED, "model folder: checkpoints, bert_config.json, vocab.txt, data/, "
        "TensorBoard, eval_history.json"),
    Key("min_count", int, 2, "programme ids seen fewer times become [UNK] (when the vocabulary is built)"),
    Key("bert_config", str, None, "a bert_config.json (vocab_size is set from the vocabulary); when absent "
        "the model keys below describe the model"),
    Key("hidden_size", int, 256, "width of the model (paper: 256)"),
    Key("num_hidden_layers", int, 8, "transformer layers (paper: 8)", ("num_bert_layers",)),
    Key("num_attention_heads", int, 8, "attention heads (paper: 8)"),
    Key("intermediate_size", int, None, "feed-forward width (default 4 x hidden_size)"),
    Key("max_position_embeddings", int, None, "position table size (default max_seq_length)"),
    Key("hidden_dropout_prob", float, 0.1, "dropout on hidden states"),
    Key("attention_probs_dropout_prob", float, 0.1, "dropout on attention probabilities"),
    Key("max_seq_length", int, 512, "tokens per instance, [CLS] and [SEP] included (paper: 512)"),
    Key("max_predictions_per_seq", int, None, "masked positions per instance (default "
        "ceil(masked_lm_prob x max_seq_length))"),
    Key("masked_lm_prob", float, 0.15, "share of tokens masked"),
    Key("dupe_factor", int, 5, "masked copies written per user history (different masks)"),
    Key("batch_size", int, 16, "global training batch", ("per_device_train_batch_size", "train_batch_size")),
    Key("eval_batch_size", int, 16, "evaluation batch", ("per_device_eval_batch_size",)),
    Key("epochs", float, 8.0, "passes over the users' histories (each pass sees one masked copy)",
        ("num_train_epochs",)),
    Key("learning_rate", float, 5e-5, "peak learning rate (Hugging Face Trainer default, as the paper ran)"),
    Key("warmup_proportion", float, 0.0, "share of steps with linear warm-up", ()),
    Key("weight_decay", float, 0.0, "AdamW weight decay (not on LayerNorm and biases)"),
    Key("eval_percentage", float, 3.0, "percent of users held out for the masked-LM evaluation"),
    Key("eval_steps", int, 500, "evaluate every this many steps (and at the end)"),
    Key("logging_steps", int, 500, "log line and TensorBoard scalars every this many steps",
        ("log_every_steps",)),
    Key("save_steps", int, 500, "checkpoint every this many steps", ("save_checkpoints_steps",)),
    Key("save_total_limit", int, 5, "checkpoints kept"),
    Key("load_best_model_at_end", bool, False, "keep the lowest-eval-loss model in output_dir/best/ and "
        "warm-start bert_cls from it"),
    Key("early_stopping_patience", int, None, "stop after this many evaluations without improvement"),
    Key("random_seed", int, 42, "seed for the split, masking, data order and initialisation", ("seed",)),
    Key("num_proc", int, None, "processes writing the pre-training data (default: all cores)",
        ("num_workers",)),
    Key("use_checkpoint", bool, True, "resume from output_dir's newest checkpoint; false refuses to "
        "start when output_dir already holds one"),
    Key("steps_per_execution", int, 1, "training steps per tf.function call"),
)
# The paper's Hugging Face keys that mean nothing here.
IGNORED_KEYS = {"evaluation_strategy": "evaluation runs every eval_steps",
                "logging_strategy": "logging runs every logging_steps", "log_level": "use --verbose",
                "overwrite_cache": "data are rewritten when the inputs change", "do_train": "always trains"}


def user_documents(histories: dict[str, list[str]], chunk_length: int) -> list[list[str]]:
    """Each user is a document; the history is cut into sentences of `chunk_length` programmes so
    long histories fill several instances instead of being truncated."""
    return [[" ".join(history[start:start + chunk_length]) for start in range(0, len(history), chunk_length)]
            for history in histories.values() if history]


def split_users(users: list[str], eval_percentage: float, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(seed).permutation(len(users))
    count = int(round(len(users) * eval_percentage / 100.0))
    if eval_percentage > 0 and len(users) > 1:
        count = min(max(count, 1), len(users) - 1)
    held_out = {users[i] for i in order[:count]}
    return [u for u in users if u not in held_out], [u for u in users if u in held_out]


def pretrain(config: dict, strategy=None, progress: bool = True, config_path: str = "config") -> dict:
    """Runs pre-training as the config says; returns {output_dir, steps, eval_history, ...}."""
    import tensorflow as tf

    from common.config import BertConfig
    from common.checkpoints import write_model_folder
    from common.encoder import BertEncoder
    from common.heads import BertPretrainer
    from common.optimization import create_optimizer
    from common.pretraining_data import make_pretraining_dataset, write_pretraining_data
    from common.tokenization import load_vocab
    from common.training import bert_pretraining_loss_fn, evaluate, train
    from ovt_explain.logs import read_many_logs, write_program_vocab

    strategy = strategy or tf.distribute.get_strategy()
    output_dir = config["output_dir"]
    if not config["use_checkpoint"] and tf.train.latest_checkpoint(output_dir):
        raise cli.UserError(f"{config_path}: use_checkpoint is false but {output_dir} already holds "
                            f"checkpoints; choose another output_dir")
    histories = read_many_logs(config["train_file"])
    if not histories:
        raise cli.UserError(f"{config['train_file'][0]}: no users")
    train_users, eval_users = split_users(list(histories), config["eval_percentage"], config["random_seed"])
    if not os.path.exists(config["vocab_file"]):
        vocabulary = write_program_vocab([histories[u] for u in train_users], config["vocab_file"],
                                         config["min_count"])
        logging.info("built vocabulary %s: %d tokens (min_count %d)", config["vocab_file"], len(vocabulary),
                     config["min_count"])
    vocab = load_vocab(config["vocab_file"])

    max_seq_length = config["max_seq_length"]
    if config["bert_config"]:
        bert_config = BertConfig.from_json_file(config["bert_config"]).replace(vocab_size=len(vocab))
    else:
        bert_config = BertConfig(
            vocab_size=len(vocab), hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"] or 4 * config["hidden_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attention_probs_dropout_prob=config["attention_probs_dropout_prob"],
            max_position_embeddings=config["max_position_embeddings"] or max_seq_length)
    if max_seq_length > bert_config.max_position_embeddings:
        raise cli.UserError(f"{config_path}: max_seq_length {max_seq_length} exceeds the model's "
                            f"max_position_embeddings {bert_config.max_position_embeddings}")
    max_predictions = config["max_predictions_per_seq"] or math.ceil(config["masked_lm_prob"] * max_seq_length)

    # Pre-training data: MLM-only instances ([CLS] programmes [SEP]); rare ids become [UNK].
    data_dir = os.path.join(output_dir, "data")
    instance_settings = dict(max_seq_length=max_seq_length, dupe_factor=config["dupe_factor"],
                             masked_lm_prob=config["masked_lm_prob"], max_predictions_per_seq=max_predictions,
                             random_seed=config["random_seed"], next_sentence=False, short_seq_prob=0.1)
    stats = {}
    for name, users in (("train", train_users), ("eval", eval_users)):
        if not users:
            continue
        documents = user_documents({u: histories[u] for u in users}, max_seq_length - 2)
        settings = dict(instance_settings, dupe_factor=config["dupe_factor"] if name == "train" else 1)
        # Worker processes pay off only on large logs (each starts its own Python).
        workers = config["num_proc"] or (None if len(documents) > 20000 else 1)
        stats[name] = write_pretraining_data(documents, os.path.join(data_dir, name), config["vocab_file"],
                                             num_workers=workers, progress=progress, **settings)
        logging.info("%s data: %d users -> %d instances, %d masked tokens ([UNK] share %.3f)", name,
                     stats[name]["documents"], stats[name]["instances"], stats[name]["masked_tokens"],
                     stats[name]["masked_unk_share"])

    batch_size = config["batch_size"]
    passes = stats["train"]["instances"] / config["dupe_factor"]
    num_train_steps = max(1, int(math.ceil(config["epochs"] * passes / batch_size)))
    num_warmup_steps = int(config["warmup_proportion"] * num_train_steps)
    write_model_folder(output_dir, bert_config, config["vocab_file"],
                       run_config={**config, "max_predictions_per_seq": max_predictions,
                                   "num_train_steps": num_train_steps, "task": "pretraining"})
    logging.info("pre-training %d layers x %d wide, vocab %d, %d steps of %d", bert_config.num_hidden_layers,
                 bert_config.hidden_size, len(vocab), num_train_steps, batch_size)

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
        return make_pretraining_dataset(stats["train"]["files"],
                                        input_context.get_per_replica_batch_size(batch_size),
                                        max_seq_length, max_predictions, is_training=True,
                                        seed=config["random_seed"], next_sentence=False,
                                        input_context=input_context)

    eval_fn = None
    if "eval" in stats:
        eval_dataset = make_pretraining_dataset(stats["eval"]["files"], config["eval_batch_size"],
                                                max_seq_length, max_predictions, is_training=False,
                                                next_sentence=False)

        def eval_fn(step):
            del step
            return evaluate(strategy, model, eval_dataset, bert_pretraining_loss_fn)

    result = train(strategy, model, optimizer, dataset_fn, bert_pretraining_loss_fn, num_train_steps,
                   output_dir, save_checkpoints_steps=config["save_steps"],
                   max_checkpoints_to_keep=config["save_total_limit"], log_every_steps=config["logging_steps"],
                   steps_per_execution=config["steps_per_execution"], progress=progress, eval_fn=eval_fn,
                   eval_every_steps=config["eval_steps"] if eval_fn else None,
                   best_metric="loss" if eval_fn and config["load_best_model_at_end"] else None,
                   best_mode="min", early_stopping_patience=config["early_stopping_patience"] if eval_fn else None)
    summary = {"output_dir": output_dir, "steps": result.final_step, "num_train_steps": num_train_steps,
               "vocab_size": len(vocab), "train_instances": stats["train"]["instances"],
               "eval_history": result.eval_history, "best_step": result.best_step}
    if result.eval_history:
        logging.info("final evaluation: %s", {k: round(v, 4) for k, v in result.eval_history[-1].items()})
    return summary


main = config_script_main("bert_pretraining", "pretraining_config.json", PRETRAINING_KEYS, IGNORED_KEYS, pretrain)

if __name__ == "__main__":
    cli.run(main)
