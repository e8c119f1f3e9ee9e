"""Our model folders (what rebuilding a model needs beside its checkpoints) and `warm_start` from any source."""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import tensorflow as tf
from absl import logging

from common.checkpoints.chainer import CHAINER_NPZ_NAME, load_chainer_npz
from common.checkpoints.google import (GOOGLE_CHECKPOINT_NAME, GOOGLE_CONFIG_FILE, GOOGLE_VOCAB_FILE,
                                       load_google_checkpoint, resolve_google_checkpoint)
from common.checkpoints.huggingface import load_hugging_face_folder
from common.checkpoints.mapping import CheckpointMismatchError
from common.checkpoints.restore import is_object_checkpoint, load_model_checkpoint
from common.config import BertConfig
from common.encoder import BertEncoder
from common.io_utils import atomic_write_json, atomic_write_text, copy, isfile, read_json

MODEL_CONFIG_FILE = GOOGLE_CONFIG_FILE
MODEL_VOCAB_FILE = GOOGLE_VOCAB_FILE
MODEL_LABELS_FILE = "labels.json"
MODEL_RUN_CONFIG_FILE = "run_config.json"


class ModelFolder(NamedTuple):
    config: BertConfig
    vocab_path: str | None
    labels: list | None
    run_config: dict | None
    checkpoint_path: str | None  # newest tf.train.Checkpoint in the folder; None before training


def write_model_folder(model_dir: str | os.PathLike, config: BertConfig,
                       vocab_file: str | os.PathLike | Sequence[str] | None = None, labels=None,
                       run_config: dict | None = None) -> str:
    """Writes what rebuilding the model needs beside its checkpoints: `bert_config.json`, the
    vocabulary as `vocab.txt` (a copy of `vocab_file`, or a list of tokens), `labels.json` (list),
    `run_config.json` (flags). Each file is written atomically; returns `model_dir`."""
    model_dir = os.fspath(model_dir)
    tf.io.gfile.makedirs(model_dir)
    config.to_json_file(os.path.join(model_dir, MODEL_CONFIG_FILE))
    target = os.path.join(model_dir, MODEL_VOCAB_FILE)
    if isinstance(vocab_file, (list, tuple)):
        atomic_write_text(target, "".join(f"{token}\n" for token in vocab_file))
    elif vocab_file is not None and os.path.abspath(os.fspath(vocab_file)) != os.path.abspath(target):
        copy(vocab_file, target)
    if labels is not None:
        atomic_write_json(os.path.join(model_dir, MODEL_LABELS_FILE), list(labels))
    if run_config is not None:
        atomic_write_json(os.path.join(model_dir, MODEL_RUN_CONFIG_FILE), dict(run_config))
    return model_dir


def read_model_folder(model_dir: str | os.PathLike) -> ModelFolder:
    """What `write_model_folder` wrote, plus the newest checkpoint (None when there is none)."""
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if not isfile(config_path):
        raise FileNotFoundError(f"{model_dir}: no {MODEL_CONFIG_FILE}; not a model folder "
                                f"(written by write_model_folder)")
    vocab_path = os.path.join(model_dir, MODEL_VOCAB_FILE)
    return ModelFolder(BertConfig.from_json_file(config_path), vocab_path if isfile(vocab_path) else None,
                       read_json(os.path.join(model_dir, MODEL_LABELS_FILE), expect=list, missing_ok=True),
                       read_json(os.path.join(model_dir, MODEL_RUN_CONFIG_FILE), expect=dict, missing_ok=True),
                       tf.train.latest_checkpoint(model_dir))


def checkpoint_kind(source: str) -> tuple[str, str]:
    """(kind, path): kind is 'model_checkpoint', 'google', 'chainer' or 'hugging_face'."""
    prefix = source[:-len(".index")] if source.endswith(".index") else source
    # A prefix first: on some filesystems (ram://) a prefix of file names counts as a folder too.
    if tf.io.gfile.exists(prefix + ".index"):
        return ("model_checkpoint" if is_object_checkpoint(prefix) else "google"), prefix
    if isfile(source):  # Chainer's save_npz keeps any name (the original's final.model); read_npz checks it
        return "chainer", source
    if tf.io.gfile.isdir(source):
        latest = tf.train.latest_checkpoint(source)
        if latest and is_object_checkpoint(latest):
            return "model_checkpoint", latest
        if isfile(os.path.join(source, CHAINER_NPZ_NAME)):
            return "chainer", os.path.join(source, CHAINER_NPZ_NAME)
        if latest or isfile(os.path.join(source, GOOGLE_CHECKPOINT_NAME + ".index")):
            return "google", resolve_google_checkpoint(source)
        if isfile(os.path.join(source, "config.json")):
            return "hugging_face", source
        raise FileNotFoundError(f"{source}: no checkpoint in this folder: expected our model folder (tf.train.Checkpoint "
                                f"files + 'checkpoint'), Google's {GOOGLE_CHECKPOINT_NAME}.index, {CHAINER_NPZ_NAME} "
                                f"or a Hugging Face / keras-hub config.json")
    raise FileNotFoundError(f"no such checkpoint, folder or npz: {source}")


_KIND_NAMES = {"model_checkpoint": "model checkpoint", "google": "Google checkpoint",
               "chainer": "bert-chainer npz", "hugging_face": "Hugging Face / keras-hub folder"}


def warm_start(source: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
               next_sentence_head=None, output_head=None) -> str:
    """Initialises `encoder` (and the given heads) from pre-trained weights, all or nothing; returns a log line.

    `source`: our model folder or checkpoint prefix (`load_model_checkpoint`), a Google TF1 checkpoint
    (prefix or folder), a Hugging Face / keras-hub folder or a bert-chainer npz (or a folder holding one).
    `output_head`: a Dense over the pooled output, from a Chainer npz's `output` link (the original's
    BertDML) or our BertDML's `output_dense`. Not resume: the caller keeps its optimizer, step, model_dir.
    """
    kind, path = checkpoint_kind(os.fspath(source))
    loader = {"model_checkpoint": load_model_checkpoint, "google": load_google_checkpoint,
              "chainer": load_chainer_npz, "hugging_face": load_hugging_face_folder}[kind]
    extra = {}
    if output_head is not None:
        if kind not in ("chainer", "model_checkpoint"):
            raise CheckpointMismatchError(f"{path}: a {_KIND_NAMES[kind]} has no output head (a Chainer npz "
                                          f"of BERT + output, or one of our BertDML checkpoints, has)")
        extra = {"output_head": output_head} if kind == "chainer" else {"other_heads": {"output_dense": output_head}}
    names = loader(path, encoder, masked_lm_head, next_sentence_head, **extra)
    heads = [name for name, head in (("masked-LM head", masked_lm_head), ("next-sentence head", next_sentence_head),
                                     ("output head", output_head)) if head is not None]
    message = (f"warm start from {_KIND_NAMES[kind]} {path}: encoder{''.join(', ' + head for head in heads)} "
               f"({len(names)} tensors)")
    logging.info(message)
    return message
