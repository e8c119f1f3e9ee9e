r"""Fine-tunes the pre-trained viewing-log BERT to predict `viewed` / `not_viewed` for a target programme.

    python -m ovt_explain.bert_cls cls_config.json [--strategy=mirrored --num_gpus=2]
        [--mixed_precision=bfloat16]

The data come either as the original lays them out (`train_dir` holding classify_training_data's
plain-text `viewed*` and `not_viewed*` files, one history a line) or from logs and a target programme
(`train_file` + `target_program`, labelled by the original's rule). As the original: a line i (from 2)
of each file is kept when `random.randrange(i) % 7 == 0` (seeded), up to `train_data_max_per_label`;
the users are shuffled with seed 42 and cut 80 / 10 / 10 into train / validation / test; label ids
viewed = 0, not_viewed = 1; `[CLS]` + the first `max_seq_length - 2` ids + `[SEP]`; the best model is
the lowest validation loss. As in the paper the encoder is frozen except its last
`trainable_last_layers` layers and the pooler (`freeze_bert_params`).

Writes into `output_dir`: checkpoints (resumable), `best/` (with `load_best_model_at_end`),
`bert_config.json`, `vocab.txt`, `labels.json`, `run_config.json`, `eval_history.json`, TensorBoard
scalars, `test_results.json` (accuracy, macro-F1, ROC-AUC on the held-out test users),
`predictions.jsonl` (every user: split, label, prediction, probability of `viewed`) and, for the test
users, `viewed.txt` and `not_viewed.txt` (correctly predicted) and `predict_missed.txt` (wrong), in the
logs' JSON format with the model's input histories: the samples `attention_visualization` explains.
Every key is documented in `ovt_explain/configs/cls_config.json`.
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python ovt_explain/bert_cls.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import glob  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from ovt_explain.run_config import REQUIRED, Key, config_script_main, require_one_of  # noqa: E402

CLS_KEYS = (
    Key("train_dir", str, None, "the original's layout: a folder of viewed* and not_viewed* files (classify_"
        "training_data's plain text, one history a line; JSON logs work too); or give train_file and "
        "target_program"),
    Key("train_file", "paths", None, "viewing logs (sentence.txt or JSON logs; one file or a list) labelled "
        "with target_program by the original's rule"),
    Key("target_program", "str_or_list", None, "the target programme's slot ids: a list, or a file (a JSON "
        "list, a JSON object with \"target_slots\" such as make_synthetic_logs' planted.json, or ids "
        "separated by whitespace)"),
    Key("min_share", float, 0.333, "viewed = watched at least max(1, int(n x min_share)) of the target's n "
        "slots (the original's integer threshold)", ("threshold",)),
    Key("pretrained_model", str, None, "bert_pretraining's output_dir, a folder laid out as the original's "
        "(config.json + vocab.txt), or any checkpoint warm_start reads; its config and vocab.txt are used "
        "unless bert_config / vocab_file are given", ("model_dir",)),
    Key("bert_config", str, None, "bert_config.json (default: the pretrained model's)"),
    Key("vocab_file", str, None, "programme vocabulary (default: the pretrained model's vocab.txt)"),
    Key("output_dir", str, REQUIRED, "folder for checkpoints, results, predictions and the samples"),
    Key("max_seq_length", int, 512, "input tokens: [CLS] + the first max_seq_length - 2 programmes + [SEP] "
        "(the original: 512)"),
    Key("truncation", str, "first", "a longer history keeps its first ids (\"first\", the original's "
        "tokenizer) or its most recent ones (\"recent\")"),
    Key("per_device_train_batch_size", int, 8, "training batch per replica (Hugging Face's meaning and default)"),
    Key("per_device_eval_batch_size", int, 8, "prediction batch per replica", ("eval_batch_size",)),
    Key("batch_size", int, None, "global training batch; overrides per_device_train_batch_size x replicas",
        ("train_batch_size",)),
    Key("epochs", float, 3.0, "passes over the training users (Hugging Face's default 3)", ("num_train_epochs",)),
    Key("learning_rate", float, 5e-5, "peak learning rate (Hugging Face Trainer default, as the paper ran)"),
    Key("warmup_proportion", float, 0.0, "share of steps with linear warm-up"),
    Key("weight_decay", float, 0.0, "AdamW weight decay (not on LayerNorm and biases)"),
    Key("freeze_bert_params", bool, True, "freeze the encoder except its last trainable_last_layers layers "
        "and the pooler (the paper)"),
    Key("trainable_last_layers", int, 1, "encoder layers left trainable when freeze_bert_params"),
    Key("train_data_max_per_label", int, 10000, "at most this many users per label"),
    Key("line_sampling", str, "randrange7", "\"randrange7\": the original's, a line i (from 2) is kept when "
        "random.randrange(i) % 7 == 0 (seeded with random_seed); \"all\": every line"),
    Key("training_rate", float, 0.8, "share of users for training"),
    Key("inspection_rate", float, 0.1, "share for validation during training; the rest is the test split"),
    Key("stratified_split", bool, False, "split each label in the same proportions (the original shuffles "
        "all users with split_seed and cuts 80/10/10)"),
    Key("split_seed", int, 42, "seed of the shuffle before the split (the original hard-codes 42)"),
    Key("eval_steps", int, 500, "validate every this many steps (and at the end)"),
    Key("logging_steps", int, 500, "log line and TensorBoard scalars every this many steps",
        ("log_every_steps",)),
    Key("save_steps", int, 500, "checkpoint every this many steps", ("save_checkpoints_steps",)),
    Key("save_total_limit", int, 5, "checkpoints kept"),
    Key("load_best_model_at_end", bool, False, "test and save predictions with the best validation model "
        "(kept in output_dir/best/)"),
    Key("metric_for_best_model", str, "loss", "\"loss\" (lowest validation loss, Hugging Face's default) or "
        "\"macro_f1\" (highest)"),
    Key("early_stopping_patience", int, None, "stop after this many validations without improvement"),
    Key("random_seed", int, 42, "seed for line sampling, data order and the head's initialisation", ("seed",)),
    Key("use_checkpoint", bool, True, "resume from output_dir's newest checkpoint; false refuses to start "
        "when output_dir already holds one"),
    Key("do_train", bool, True, "false: only test and predict with the model already in output_dir"),
)
IGNORED_KEYS = {"evaluation_strategy": "validation runs every eval_steps",
                "logging_strategy": "logging runs every logging_steps", "log_level": "use --verbose",
                "overwrite_cache": "no cache", "num_proc": "data loading needs no workers",
                "do_predict": "predictions are always written",
                "randomize_data": "the original defines it but never reads it (line_sampling is its sampling)"}


def read_target_program(value) -> list[str]:
    if isinstance(value, list):
        return value
    with open(value, encoding="utf-8") as handle:
        text = handle.read()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return text.split()
    if isinstance(parsed, dict):
        parsed = parsed.get("target_slots")
    if not isinstance(parsed, list) or not all(isinstance(slot, str) for slot in parsed):
        raise cli.UserError(f"{value}: expected a list of slot ids (or an object with \"target_slots\")")
    return parsed


def sample_lines(items, max_count: int, rng, line_sampling: str = "randrange7") -> list:
    """The original's `_load_dataset` sampling of one file: the item at position i (from 2) is kept when
    `rng.randrange(i) % 7 == 0`, until `max_count` are kept (`"all"`: the first `max_count`)."""
    kept = []
    for i, item in enumerate(items, 2):
        if line_sampling == "randrange7" and rng.randrange(i) % 7:
            continue
        kept.append(item)
        if len(kept) == max_count:
            break
    return kept


def _label_file_lines(path: str):
    """(user, history) of a labelled file, every line as the original reads it."""
    from ovt_explain.logs import is_plain_text, iter_plain_lines, read_logs

    with open(path, encoding="utf-8") as handle:
        plain = is_plain_text(handle.read(4096))
    if plain:
        name = os.path.basename(path)
        return ((f"{name}:L{number}", ids) for number, ids in iter_plain_lines(path))
    return iter(read_logs(path).items())


def load_labelled_users(config: dict, config_path: str) -> list[tuple[str, list[str], int]]:
    """(user_id, input history, label id) as the original's `_load_dataset`: label by label (viewed = 0,
    not_viewed = 1), file by file, lines sampled by `sample_lines` with one `random.Random(random_seed)`."""
    import random

    from ovt_explain.logs import LABELS, label_users, read_many_logs

    source = require_one_of(config, config_path, "train_dir", "train_file")
    if config["line_sampling"] not in ("randrange7", "all"):
        raise cli.UserError(f"{config_path}: line_sampling must be \"randrange7\" or \"all\"")
    rng = random.Random(config["random_seed"])
    selected: list[tuple[str, list[str], int]] = []
    if source == "train_dir":
        if config["target_program"] is not None:
            raise cli.UserError(f"{config_path}: target_program goes with train_file, not train_dir")
        for label, name in enumerate(LABELS):
            # Sorted, where the original takes glob's (directory) order: the same with one file a label.
            files = sorted(glob.glob(os.path.join(config["train_dir"], f"{name}*")))
            if not files:
                raise cli.UserError(f"{config_path}: train_dir {config['train_dir']} has no {name}* file")
            for path in files:
                kept = sample_lines(_label_file_lines(path), config["train_data_max_per_label"], rng,
                                    config["line_sampling"])
                selected.extend((user, history, label) for user, history in kept)
    else:
        if config["target_program"] is None:
            raise cli.UserError(f"{config_path}: train_file needs target_program (the target's slot ids)")
        target = read_target_program(config["target_program"])
        users = label_users(read_many_logs(config["train_file"]), target, config["min_share"])
        for label in range(len(LABELS)):
            members = ((user.user_id, user.history) for user in users if user.label == label)
            kept = sample_lines(members, config["train_data_max_per_label"], rng, config["line_sampling"])
            selected.extend((user, history, label) for user, history in kept)
    counts = [sum(1 for *_, label in selected if label == value) for value in range(len(LABELS))]
    if min(counts) < 1 or len(selected) < 3:
        raise cli.UserError(f"{config_path}: need users of each label, got " +
                            ", ".join(f"{name} {count}" for name, count in zip(LABELS, counts)))
    return selected


def original_split(count: int, training_rate: float, inspection_rate: float, seed: int = 42) -> dict[str, np.ndarray]:
    """The original's split: `datasets`' `shuffle(seed)` (NumPy `default_rng(seed).permutation`), then the
    first int(0.8 n) train, the next int(0.1 n) validation, the rest test. Indices into the users."""
    order = np.random.default_rng(seed).permutation(count)
    n_train, n_validation = int(training_rate * count), int(inspection_rate * count)
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_validation],
            "test": order[n_train + n_validation:]}


def stratified_split(labels: np.ndarray, training_rate: float, inspection_rate: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Indices of train / validation / test, each label split in the same proportions."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(training_rate * len(members)))
        n_validation = int(round(inspection_rate * len(members)))
        parts["train"].extend(members[:n_train])
        parts["validation"].extend(members[n_train:n_train + n_validation])
        parts["test"].extend(members[n_train + n_validation:])
    return {name: np.sort(np.asarray(indices, dtype=np.int64)) for name, indices in parts.items()}


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """accuracy, macro-F1, ROC-AUC of P(viewed) (NaN when the split has one label) and the mean
    cross-entropy `loss`; `labels` int `[n]` (viewed = 0), `probabilities` float `[n, 2]`."""
    from sklearn.metrics import roc_auc_score

    from common.metrics import classification_metrics
    from ovt_explain.logs import VIEWED_ID

    predictions = probabilities.argmax(axis=1)
    result = classification_metrics(labels, predictions, num_classes=2)
    result["macro_f1"] = result.pop("f1_macro")
    result["roc_auc"] = (float(roc_auc_score(labels == VIEWED_ID, probabilities[:, VIEWED_ID]))
                         if len(np.unique(labels)) == 2 else float("nan"))
    chosen = probabilities[np.arange(len(labels)), labels]
    result["loss"] = float(-np.mean(np.log(np.maximum(chosen, 1e-12)))) if len(labels) else float("nan")
    return result


def fine_tune(config: dict, strategy=None, progress: bool = True, config_path: str = "config") -> dict:
    import keras
    import tensorflow as tf

    from common.checkpoints import read_model_folder, restore_checkpoint, warm_start, write_model_folder
    from common.config import BertConfig
    from common.finetuning import freeze_encoder
    from common.io_utils import atomic_output, atomic_write_json
    from common.optimization import create_optimizer
    from common.tokenization import load_vocab
    from common.training import (BestCheckpoint, EarlyStopping, Trainer, TrainSettings, classification_loss_fn,
                                 skip_consumed_batches)
    from ovt_explain.bert_pretraining import global_batch_size
    from ovt_explain.logs import LABELS, VIEWED_ID, write_logs
    from ovt_explain.modeling import TRUNCATIONS, classifier_from_config, encode_histories, predict, special_ids

    strategy = strategy or tf.distribute.get_strategy()
    output_dir = config["output_dir"]
    if config["do_train"] and not config["use_checkpoint"] and tf.train.latest_checkpoint(output_dir):
        raise cli.UserError(f"{config_path}: use_checkpoint is false but {output_dir} already holds "
                            f"checkpoints; choose another output_dir")
    if config["truncation"] not in TRUNCATIONS:
        raise cli.UserError(f"{config_path}: truncation must be one of {', '.join(TRUNCATIONS)}")
    if config["metric_for_best_model"] not in ("loss", "macro_f1"):
        raise cli.UserError(f"{config_path}: metric_for_best_model must be \"loss\" or \"macro_f1\"")
    pretrained = config["pretrained_model"]
    pretrained_folder = None
    bert_config_path = config["bert_config"]
    vocab_path = config["vocab_file"]
    if pretrained and os.path.isdir(pretrained) and os.path.isfile(os.path.join(pretrained, "bert_config.json")):
        pretrained_folder = read_model_folder(pretrained)
        bert_config_path = bert_config_path or os.path.join(pretrained, "bert_config.json")
        vocab_path = vocab_path or pretrained_folder.vocab_path
    elif pretrained and os.path.isfile(os.path.join(pretrained, "config.json")):
        # The original's model folder (`.../models`): Hugging Face config.json + vocab.txt.
        bert_config_path = bert_config_path or os.path.join(pretrained, "config.json")
        if os.path.isfile(os.path.join(pretrained, "vocab.txt")):
            vocab_path = vocab_path or os.path.join(pretrained, "vocab.txt")
    if not bert_config_path or not vocab_path:
        if pretrained:
            raise cli.UserError(f"{config_path}: pretrained_model {pretrained}: not a bert_pretraining output_dir "
                                f"(no bert_config.json there); for another checkpoint give bert_config and "
                                f"vocab_file too")
        raise cli.UserError(f"{config_path}: give pretrained_model (a bert_pretraining output_dir) or both "
                            f"bert_config and vocab_file")
    bert_config = BertConfig.from_json_file(bert_config_path)
    vocab = load_vocab(vocab_path)
    try:
        special_ids(vocab)
    except ValueError as error:
        raise cli.UserError(f"{vocab_path}: {error}") from None
    if len(vocab) != bert_config.vocab_size:
        raise cli.UserError(f"{vocab_path}: {len(vocab)} tokens but {bert_config_path} says vocab_size "
                            f"{bert_config.vocab_size}")
    max_seq_length = config["max_seq_length"]
    if max_seq_length > bert_config.max_position_embeddings:
        raise cli.UserError(f"{config_path}: max_seq_length {max_seq_length} exceeds max_position_embeddings "
                            f"{bert_config.max_position_embeddings} of {bert_config_path}")

    users = load_labelled_users(config, config_path)
    user_ids = [user for user, _, _ in users]
    histories = [history for _, history, _ in users]
    labels = np.asarray([label for *_, label in users], dtype=np.int32)
    features = encode_histories(histories, vocab, max_seq_length, config["truncation"])
    features["label_ids"] = labels
    if config["stratified_split"]:
        split = stratified_split(labels, config["training_rate"], config["inspection_rate"], config["split_seed"])
    else:
        split = original_split(len(labels), config["training_rate"], config["inspection_rate"], config["split_seed"])
    for name, indices in split.items():
        logging.info("%s: %d users (%d viewed)", name, len(indices), int((labels[indices] == VIEWED_ID).sum()))
    if len(split["train"]) == 0:
        raise cli.UserError(f"{config_path}: no training users (training_rate {config['training_rate']})")

    batch_size = global_batch_size(config, strategy, "per_device_train_batch_size", "batch_size")
    eval_batch_size = global_batch_size(config, strategy, "per_device_eval_batch_size")
    # Hugging Face: ceil(epochs x batches per epoch).
    num_train_steps = max(1, int(math.ceil(config["epochs"] * math.ceil(len(split["train"]) / batch_size))))
    use_best = config["load_best_model_at_end"] and len(split["validation"]) > 0
    write_model_folder(output_dir, bert_config, vocab_path, labels=list(LABELS),
                       run_config={**config, "num_train_steps": num_train_steps, "use_best": use_best,
                                   "task": "viewed_classification"})

    keras.utils.set_random_seed(config["random_seed"])
    with strategy.scope():
        model = classifier_from_config(bert_config)
        if pretrained:
            source = pretrained
            if pretrained_folder and (pretrained_folder.run_config or {}).get("load_best_model_at_end") and \
                    tf.train.latest_checkpoint(os.path.join(pretrained, "best")):
                source = os.path.join(pretrained, "best")
            warm_start(source, model.encoder)
        if config["freeze_bert_params"]:
            try:
                logging.info(freeze_encoder(model.encoder, config["trainable_last_layers"], train_pooler=True))
            except ValueError as error:
                raise cli.UserError(f"{config_path}: trainable_last_layers: {error}") from None
        optimizer = create_optimizer(config["learning_rate"], num_train_steps,
                                     int(config["warmup_proportion"] * num_train_steps),
                                     weight_decay=config["weight_decay"], clip_norm=1.0, bias_correction=True,
                                     epsilon=1e-8)

    train_features = {name: values[split["train"]] for name, values in features.items()}

    def dataset_fn(input_context):
        dataset = tf.data.Dataset.from_tensor_slices(train_features)
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        dataset = dataset.shuffle(len(split["train"]), seed=config["random_seed"], reshuffle_each_iteration=True)
        # Batches of the same size (the replicas must agree), so an epoch's last partial batch continues
        # into the next epoch where Hugging Face's loader would run it short.
        return dataset.repeat().batch(input_context.get_per_replica_batch_size(batch_size), drop_remainder=True)

    def metrics_of(indices):
        subset = {name: values[indices] for name, values in features.items()}
        probabilities = predict(model, subset, eval_batch_size)
        return binary_metrics(labels[indices], probabilities), probabilities

    eval_fn = None
    if len(split["validation"]):
        def eval_fn(step):
            del step
            metrics, _ = metrics_of(split["validation"])
            return {name: metrics[name] for name in ("loss", "accuracy", "macro_f1", "roc_auc")}

    if config["do_train"]:
        metric = config["metric_for_best_model"]
        mode = "min" if metric == "loss" else "max"
        callbacks = [BestCheckpoint(metric, mode)] if use_best else []
        if eval_fn and config["early_stopping_patience"]:
            callbacks.append(EarlyStopping(metric, mode, config["early_stopping_patience"]))
        train_settings = TrainSettings(model_dir=output_dir, num_train_steps=num_train_steps,
                                       save_checkpoints_steps=config["save_steps"],
                                       max_checkpoints_to_keep=config["save_total_limit"],
                                       log_every_steps=config["logging_steps"], progress=progress,
                                       eval_every_steps=config["eval_steps"] if eval_fn else None)
        Trainer(strategy, model, optimizer, classification_loss_fn, train_settings, eval_fn=eval_fn,
                callbacks=callbacks).fit(skip_consumed_batches(dataset_fn))
    chosen = tf.train.latest_checkpoint(os.path.join(output_dir, "best")) if use_best else None
    chosen = chosen or tf.train.latest_checkpoint(output_dir)
    if chosen is None:
        raise cli.UserError(f"{output_dir}: no checkpoint to test (do_train is false)")
    restore_checkpoint(tf.train.Checkpoint(model=model), chosen)
    logging.info("testing %s", chosen)

    # Predictions for every user; metrics on the held-out test split.
    probabilities = predict(model, features, eval_batch_size)
    predicted = probabilities.argmax(axis=1)
    split_of = np.empty(len(users), dtype=object)
    for name, indices in split.items():
        split_of[indices] = name
    results = {"checkpoint": chosen, "num_users": {name: int(len(i)) for name, i in split.items()}}
    for name in ("validation", "test"):
        if len(split[name]):
            metrics = binary_metrics(labels[split[name]], probabilities[split[name]])
            results[name] = metrics
            logging.info("%s: loss %.4f accuracy %.4f macro-F1 %.4f ROC-AUC %.4f (%d users)", name,
                         metrics["loss"], metrics["accuracy"], metrics["macro_f1"], metrics["roc_auc"],
                         metrics["num_examples"])
    atomic_write_json(os.path.join(output_dir, "test_results.json"), results)
    with atomic_output(os.path.join(output_dir, "predictions.jsonl")) as handle:
        for index, user in enumerate(user_ids):
            handle.write(json.dumps({"user_id": user, "split": split_of[index], "label": LABELS[labels[index]],
                                     "predicted": LABELS[predicted[index]],
                                     "prob_viewed": round(float(probabilities[index, VIEWED_ID]), 6)}) + "\n")
    samples_from = split["test"] if len(split["test"]) else split["validation"]
    samples = {"viewed.txt": {}, "not_viewed.txt": {}, "predict_missed.txt": {}}
    for index in samples_from:
        name = ("predict_missed.txt" if predicted[index] != labels[index]
                else "viewed.txt" if labels[index] == VIEWED_ID else "not_viewed.txt")
        keep = max_seq_length - 2
        history = histories[index]
        samples[name][user_ids[index]] = history[:keep] if config["truncation"] == "first" else history[-keep:]
    for name, chosen_users in samples.items():
        write_logs(os.path.join(output_dir, name), chosen_users)
    results["samples"] = {name: len(chosen_users) for name, chosen_users in samples.items()}
    results["output_dir"] = output_dir
    return results


main = config_script_main("bert_cls", "cls_config.json", CLS_KEYS, IGNORED_KEYS, fine_tune)

if __name__ == "__main__":
    cli.run(main)
