"""Where a BERT-DML / classifier run gets its encoder, vocabulary and labels, and how its folder is saved.

Pre-trained sources: `--preset` (a keras-hub / Hugging Face / Google BERT folder), or
`--init_checkpoint` (a Google checkpoint, a bert-chainer `arrays_bert_model.ckpt.npz`, or one of our
model folders) with `--bert_config_file` and `--vocab_file`, as in the original. With neither, the
model is trained from scratch: `--bert_config_file` gives its size and the vocabulary is learnt from
the training text (or read from `--vocab_file`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from common.cli import UserError
from common.config import BertConfig
from common.encoder import BertEncoder
from common.tokenization import BertTokenizer, load_vocab

RUN_CONFIG_FILE = "run_config.json"


@dataclasses.dataclass
class EncoderSetup:
    config: BertConfig
    encoder: BertEncoder
    vocab: list[str]
    lowercase: bool
    source: str  # what was loaded, for the log

    def tokenizer(self) -> BertTokenizer:
        return BertTokenizer(self.vocab, lowercase=self.lowercase)


def _vocab_list(path: str) -> list[str]:
    vocab = load_vocab(path)
    return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]


def _folder_file(path: str | None, name: str) -> str | None:
    if path and os.path.isdir(path) and os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    return None


def load_encoder(preset: str | None = None, init_checkpoint: str | None = None,
                 bert_config_file: str | None = None, vocab_file: str | None = None,
                 train_texts: Sequence[str] | None = None, vocab_size: int = 8000,
                 lowercase: bool = True) -> EncoderSetup:
    """Builds the encoder (call under `strategy.scope()`) and its vocabulary from the flags' sources."""
    if preset and init_checkpoint:
        raise UserError("give --preset or --init_checkpoint, not both")
    if preset:
        from common.checkpoints import load_pretrained_folder
        if not os.path.isdir(preset):
            raise UserError(f"--preset {preset}: no such folder")
        bert = load_pretrained_folder(preset)
        if bert.vocab_path is None and not vocab_file:
            raise UserError(f"--preset {preset} has no vocab.txt: give --vocab_file")
        vocab = _vocab_list(vocab_file or bert.vocab_path)
        return EncoderSetup(bert.config, bert.encoder, vocab, bert.lowercase, f"pre-trained folder {preset}")

    bert_config_file = bert_config_file or _folder_file(init_checkpoint, "bert_config.json")
    if not bert_config_file:
        raise UserError("give --bert_config_file (the model's size), or --preset for a pre-trained folder")
    if not os.path.isfile(bert_config_file):
        raise UserError(f"--bert_config_file {bert_config_file}: no such file")
    config = BertConfig.from_json_file(bert_config_file)
    vocab_file = vocab_file or _folder_file(init_checkpoint, "vocab.txt")
    if init_checkpoint:
        if not vocab_file:
            raise UserError("--init_checkpoint needs the --vocab_file the model was trained with")
        vocab = _vocab_list(vocab_file)
        encoder = BertEncoder(config)
        from common.checkpoints import warm_start
        loaded = warm_start(init_checkpoint, encoder)
        source = f"{init_checkpoint} ({loaded})"
    else:
        if vocab_file:
            vocab = _vocab_list(vocab_file)
            source = f"from scratch, vocabulary {vocab_file}"
        else:
            if not train_texts:
                raise UserError("a model trained from scratch needs --vocab_file or training text")
            from bert_dml.data import build_vocabulary
            vocab = build_vocabulary(train_texts, vocab_size=vocab_size, lowercase=lowercase)
            source = f"from scratch, {len(vocab)}-token vocabulary learnt from the training text"
            config = config.replace(vocab_size=len(vocab))
        encoder = BertEncoder(config)
    if len(vocab) > config.vocab_size:
        raise UserError(f"the vocabulary has {len(vocab)} tokens but {bert_config_file} says "
                        f"vocab_size={config.vocab_size}")
    return EncoderSetup(config, encoder, vocab, lowercase, source)


def save_model_folder(model_dir: str, setup: EncoderSetup, labels: Sequence[str], run_config: dict) -> None:
    """bert_config.json, vocab.txt, labels.json, run_config.json beside the checkpoints."""
    import tempfile

    from common.checkpoints import write_model_folder
    from common.tokenization import write_vocab

    os.makedirs(model_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".vocab.") as temp_dir:
        vocab_path = os.path.join(temp_dir, "vocab.txt")
        write_vocab(setup.vocab, vocab_path)
        write_model_folder(model_dir, setup.config, vocab_file=vocab_path, labels=list(labels),
                           run_config={**run_config, "lowercase": setup.lowercase})


@dataclasses.dataclass
class SavedModel:
    folder: str  # where bert_config.json etc. are
    checkpoint_path: str
    config: BertConfig
    vocab: list[str]
    labels: list[str]
    run_config: dict

    def tokenizer(self) -> BertTokenizer:
        return BertTokenizer(self.vocab, lowercase=self.run_config.get("lowercase", True))


def read_saved_model(path: str) -> SavedModel:
    """`--model`: a training folder (its final model), its `best/` folder, or a checkpoint prefix."""
    import tensorflow as tf
    from common.checkpoints import read_model_folder

    if os.path.isdir(path):
        checkpoint_path = tf.train.latest_checkpoint(path)
        folder = path
    else:
        checkpoint_path = path if tf.io.gfile.exists(path + ".index") else None
        folder = os.path.dirname(path) or "."
    if checkpoint_path is None:
        raise UserError(f"--model {path}: no checkpoint there (expected a folder written by "
                        "bert_dml.train_dml / train_cls, its best/ folder, or a checkpoint prefix)")
    if not os.path.isfile(os.path.join(folder, "bert_config.json")):
        folder = os.path.dirname(os.path.abspath(folder))  # best/ sits inside the model folder
    if not os.path.isfile(os.path.join(folder, "bert_config.json")):
        raise UserError(f"--model {path}: no bert_config.json beside the checkpoint or in its parent")
    saved = read_model_folder(folder)
    with open(os.path.join(folder, RUN_CONFIG_FILE), encoding="utf-8") as handle:
        run_config = json.load(handle)
    return SavedModel(folder, checkpoint_path, saved.config, _vocab_list(saved.vocab_path),
                      list(saved.labels or []), run_config)
