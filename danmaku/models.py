"""Loading an encoder + tokenizer the way bert-as-service did: a model folder, optionally a tuned checkpoint.

`model_dir` is a Google release (`bert_config.json`, `bert_model.ckpt.*`, `vocab.txt`, e.g.
`chinese_L-12_H-768_A-12`), a folder `danmaku.run_pretraining` wrote (`bert_config.json`, `vocab.txt`,
`model.ckpt-N` in Google's names and our resumable `ckpt-N`), or a Hugging Face / keras-hub folder.
As in bert-as-service, the configuration and vocabulary always come from `model_dir`, the weights
from `tuned_model_dir/ckpt_name` when a tuned model is given.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import tensorflow as tf

from common.checkpoints import (GOOGLE_CONFIG_FILE, CheckpointMismatchError, load_pretrained_folder,
                                warm_start)
from common.cli import UserError
from common.config import BertConfig, BertConfigError
from common.encoder import BertEncoder
from common.tokenization import BertTokenizer, VocabError


class LoadedModel(NamedTuple):
    config: BertConfig
    encoder: BertEncoder
    tokenizer: BertTokenizer
    weights: str  # where the weights came from (for logs and /status)


def latest_google_checkpoint(folder: str) -> str | None:
    """The `model.ckpt-N` with the largest N in `folder` (what run_pretraining writes), or None."""
    best, best_step = None, -1
    for index_file in tf.io.gfile.glob(os.path.join(folder, "model.ckpt-*.index")):
        prefix = index_file[: -len(".index")]
        try:
            step = int(prefix.rsplit("-", 1)[1])
        except ValueError:
            continue
        if step > best_step:
            best, best_step = prefix, step
    return best


def load_weights(source: str, encoder: BertEncoder) -> str:
    """A folder's newest `model.ckpt-N` (bert-as-service's tuned model), else whatever `common`'s
    warm start finds at `source` (Google checkpoint, our ckpt-N, Hugging Face folder) -> encoder;
    returns what was loaded ("Google checkpoint <prefix>: encoder (N tensors)")."""
    if tf.io.gfile.isdir(source):
        source = latest_google_checkpoint(source) or source
    try:
        message = warm_start(source, encoder)
    except (FileNotFoundError, CheckpointMismatchError) as error:
        raise UserError(str(error)) from None
    return message.removeprefix("warm start from ")


def load_model(model_dir: str, tuned_model_dir: str | None = None, ckpt_name: str | None = None,
               config_name: str = GOOGLE_CONFIG_FILE, lowercase: bool | None = None) -> LoadedModel:
    """bert-as-service's `-model_dir -tuned_model_dir -ckpt_name -config_name` -> LoadedModel."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: -model_dir is not a folder")
    config_path = os.path.join(model_dir, config_name)
    if os.path.isfile(config_path):
        try:
            config = BertConfig.from_json_file(config_path)
        except BertConfigError as error:  # names the file and the key
            raise UserError(str(error)) from None
        encoder = BertEncoder(config)
        weights = None
        if not tuned_model_dir:
            source = os.path.join(model_dir, ckpt_name) if ckpt_name else model_dir
            weights = load_weights(source, encoder)
        vocab_folder = model_dir
        if lowercase is None:
            name = os.path.basename(os.path.normpath(model_dir)).lower()
            lowercase = "uncased" in name or "cased" not in name  # Google's naming: uncased unless "cased"
    else:
        pretrained = load_pretrained_folder(model_dir)
        config, encoder, weights = pretrained.config, pretrained.encoder, model_dir
        vocab_folder = model_dir
        lowercase = pretrained.lowercase if lowercase is None else lowercase
        if pretrained.vocab_path and not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
            tokenizer = BertTokenizer.from_vocab_file(pretrained.vocab_path, lowercase=lowercase)
            vocab_folder = None
    if tuned_model_dir:
        source = os.path.join(tuned_model_dir, ckpt_name) if ckpt_name else tuned_model_dir
        weights = load_weights(source, encoder)
    if vocab_folder is not None:
        try:
            tokenizer = BertTokenizer.from_pretrained_dir(vocab_folder, lowercase=lowercase)
        except VocabError as error:
            raise UserError(str(error)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"{model_dir}: the vocabulary has {tokenizer.vocab_size} tokens but the config says "
                        f"vocab_size={config.vocab_size}")
    return LoadedModel(config, encoder, tokenizer, weights)
