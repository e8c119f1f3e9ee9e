"""One way to load a model from any source the suite reads: `load(source) -> (config, encoder, tokenizer, heads)`.

Sources: Google's TF1 checkpoints (a release folder, `bert_model.ckpt`, run_pretraining's `model.ckpt-N`),
Hugging Face / keras-hub folders, bert-chainer npz files (`arrays_bert_model.ckpt.npz`, or a Chainer
`save_npz` of BERT + head such as the original BERT-DML's `final.model`), and our model folders
(`bert_config.json`, `vocab.txt`, `run_config.json`, `labels.json` beside `tf.train.Checkpoint`s, or
their `best/` folder). As in the originals, `bert_config_file` / `vocab_file` override what lies beside
the source, and `weights` takes the weights from elsewhere (bert-as-service's tuned model).
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple, Sequence

import keras
import tensorflow as tf

from common.checkpoints import (GOOGLE_CHECKPOINT_NAME, GOOGLE_CONFIG_FILE, GOOGLE_VOCAB_FILE,
                                CheckpointMismatchError, load_google_bert_folder, load_hugging_face_folder,
                                read_model_folder, warm_start)
from common.checkpoints.chainer import read_npz
from common.checkpoints.folder import checkpoint_kind
from common.checkpoints.google import google_encoder
from common.checkpoints.huggingface import hugging_face_config, keras_hub_backbone, load_backbone
from common.cli import UserError
from common.config import BertConfig, BertConfigError
from common.encoder import BertEncoder
from common.heads import masked_lm_head, next_sentence_head
from common.io_utils import isfile, read_json
from common.tokenization import BertTokenizer, VocabError

HEADS = ("masked_lm", "next_sentence", "output")


@dataclasses.dataclass
class ModelSource:
    """What `load` found; unpacks as `config, encoder, tokenizer, heads = load(...)`."""

    config: BertConfig
    encoder: BertEncoder
    tokenizer: BertTokenizer
    heads: dict  # name in HEADS -> loaded Keras layer
    weights: str  # where the weights came from, for logs ("Google checkpoint <prefix>: encoder (N tensors)")
    run_config: dict | None = None  # our model folders: the flags of the run that wrote them
    labels: list | None = None  # our model folders: the label list

    def __iter__(self):
        return iter((self.config, self.encoder, self.tokenizer, self.heads))


class PretrainedBert(NamedTuple):
    config: BertConfig
    encoder: BertEncoder
    vocab_path: str | None  # WordPiece vocabulary, one token a line; None when the folder has none
    lowercase: bool  # whether the tokenizer must lowercase / strip accents


def load_pretrained_folder(folder: str | os.PathLike) -> PretrainedBert:
    """A pretrained BERT folder -> `PretrainedBert(config, encoder, vocab_path, lowercase)`.

    Accepts Google's release layout (`bert_config.json` + `bert_model.ckpt.*`), a keras-hub preset
    (`save_to_preset`) and a Hugging Face BERT folder (`config.json` + `model.safetensors`). The
    encoder follows the source's numerics: Hugging Face's `hidden_act` (exact GELU for "gelu",
    which keras-hub's BertBackbone replaces by the tanh form) and keras-hub's tanh GELU for presets.
    """
    folder = os.fspath(folder)
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(f"no such pretrained folder: {folder}")
    if isfile(os.path.join(folder, GOOGLE_CONFIG_FILE)) and \
            isfile(os.path.join(folder, GOOGLE_CHECKPOINT_NAME + ".index")):
        return PretrainedBert(*load_google_bert_folder(folder), google_folder_is_lowercase(folder))
    config_path = os.path.join(folder, "config.json")
    if not isfile(config_path):
        raise FileNotFoundError(f"{folder} is not a pretrained BERT folder: expected {GOOGLE_CONFIG_FILE} + "
                                f"{GOOGLE_CHECKPOINT_NAME}.index (Google) or config.json (keras-hub preset / "
                                f"Hugging Face)")
    raw_config = read_json(config_path, expect=dict)
    if "model_type" in raw_config:
        encoder = BertEncoder(hugging_face_config(raw_config, config_path))
        load_hugging_face_folder(folder, encoder)
        # Hugging Face's BertTokenizer lowercases unless told otherwise.
        vocab_path, settings_path, key = os.path.join(folder, "vocab.txt"), "tokenizer_config.json", "do_lower_case"
    else:
        backbone, config = keras_hub_backbone(folder)
        encoder = BertEncoder(config)
        load_backbone(backbone, encoder, folder)
        vocab_path = os.path.join(folder, "assets", "tokenizer", "vocabulary.txt")
        settings_path, key = "tokenizer.json", "lowercase"
    settings = read_json(os.path.join(folder, settings_path), expect=dict, missing_ok=True, default={})
    lowercase = bool(settings.get("config", settings).get(key, True))
    return PretrainedBert(encoder.config, encoder, vocab_path if isfile(vocab_path) else None, lowercase)


def google_folder_is_lowercase(folder: str) -> bool:
    # Google names its releases `uncased_...` / `cased_...` / `multi_cased_...`; uncased is the default.
    name = os.path.basename(os.path.normpath(folder)).lower()
    return "uncased" in name or "cased" not in name


def latest_step_checkpoint(folder: str) -> str | None:
    """The `model.ckpt-N` with the largest N in `folder` (what Google's run_pretraining writes), or None."""
    steps = {}
    for index_file in tf.io.gfile.glob(os.path.join(folder, "model.ckpt-*.index")):
        step = index_file[:-len(".index")].rsplit("-", 1)[1]
        if step.isdigit():
            steps[int(step)] = index_file[:-len(".index")]
    return steps[max(steps)] if steps else None


def _weights_source(source: str) -> str:
    # bert-as-service's rule for a folder: its newest run_pretraining `model.ckpt-N` first.
    return (latest_step_checkpoint(source) or source) if tf.io.gfile.isdir(source) else source


def _output_width(source: str) -> int:
    kind, path = checkpoint_kind(source)
    shape = None
    if kind == "chainer":  # the `output` link's W: [width, hidden]
        shape = getattr(read_npz(path).get("output/W"), "shape", (None,))[::-1]
    elif kind == "model_checkpoint":  # BertDML's output_dense kernel: [hidden, width]
        shape = next((shape for name, shape in tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map().items()
                      if name.startswith("model/output_dense/") and "kernel" in name), None)
    width = shape[-1] if shape else None
    if width is None:
        raise CheckpointMismatchError(f"{path}: no output head (a Chainer npz of BERT + output, or one of our "
                                      f"BertDML checkpoints, has one)")
    return int(width)


def _make_heads(names: Sequence[str], encoder: BertEncoder, weights: str) -> dict:
    unknown = sorted(set(names) - set(HEADS))
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; expected some of {HEADS}")
    heads = {}
    if "masked_lm" in names:
        heads["masked_lm"] = masked_lm_head(encoder)
    if "next_sentence" in names:
        heads["next_sentence"] = next_sentence_head(encoder.config)
    if "output" in names:
        heads["output"] = keras.layers.Dense(_output_width(weights), name="output")
        heads["output"].build((None, encoder.config.hidden_size))
    return heads


def _tokenizer(vocab_file: str | None, folders: list[str], lowercase: bool | None) -> BertTokenizer | None:
    if vocab_file:
        return BertTokenizer.from_vocab_file(vocab_file, lowercase=True if lowercase is None else lowercase)
    for folder in folders:
        if isfile(os.path.join(folder, GOOGLE_VOCAB_FILE)):
            if lowercase is None and not isfile(os.path.join(folder, "tokenizer_config.json")):
                lowercase = google_folder_is_lowercase(folder)
            return BertTokenizer.from_pretrained_dir(folder, lowercase=lowercase)
    return None


def _load(source, bert_config_file, vocab_file, weights, heads, lowercase, config_name) -> ModelSource:
    if not tf.io.gfile.exists(source) and not tf.io.gfile.exists(source + ".index"):
        raise FileNotFoundError(f"no such model folder, checkpoint or npz: {source}")
    # Where bert_config.json / vocab.txt may lie: the folder, beside a file or prefix, and the parent
    # folder (our `best/` folders sit inside the model folder).
    folder = source if tf.io.gfile.isdir(source) else os.path.dirname(source) or "."
    folders = [folder, os.path.dirname(os.path.normpath(folder)) or "."]
    config_file = bert_config_file or next(
        (path for path in (os.path.join(f, config_name) for f in folders) if isfile(path)), None)
    if config_file is None and tf.io.gfile.isdir(source) and isfile(os.path.join(source, "config.json")):
        # Hugging Face / keras-hub: the folder's own config, activation and tokenizer settings.
        pretrained = load_pretrained_folder(source)
        encoder, weights_line = pretrained.encoder, f"Hugging Face / keras-hub folder {source}"
        built = _make_heads(heads, encoder, source)
        if built:
            load_hugging_face_folder(source, encoder, built.get("masked_lm"), built.get("next_sentence"))
        if weights:
            weights_line = warm_start(_weights_source(weights), encoder).removeprefix("warm start from ")
        lowercase = pretrained.lowercase if lowercase is None else lowercase
        if vocab_file or not isfile(os.path.join(source, GOOGLE_VOCAB_FILE)):
            vocab = vocab_file or pretrained.vocab_path
            tokenizer = None if vocab is None else BertTokenizer.from_vocab_file(vocab, lowercase=lowercase)
        else:  # tokenizer_config.json's strip_accents and special tokens too
            tokenizer = BertTokenizer.from_pretrained_dir(source, lowercase=lowercase)
        return ModelSource(pretrained.config, encoder, tokenizer, built, weights_line)
    if config_file is None:
        raise FileNotFoundError(f"no {config_name} in or beside {source}: give --bert_config_file")
    config = BertConfig.from_json_file(config_file)
    saved = read_model_folder(os.path.dirname(config_file)) if config_name == GOOGLE_CONFIG_FILE else None
    run_config, labels = (saved.run_config, saved.labels) if saved else (None, None)
    if lowercase is None and run_config and "lowercase" in run_config:
        lowercase = bool(run_config["lowercase"])
    weights = _weights_source(weights or source)
    kind, path = checkpoint_kind(weights)
    encoder = google_encoder(config, path) if kind == "google" else BertEncoder(config)
    built = _make_heads(heads, encoder, weights)
    weights_line = warm_start(weights, encoder, built.get("masked_lm"), built.get("next_sentence"),
                              built.get("output")).removeprefix("warm start from ")
    tokenizer = _tokenizer(vocab_file, [os.path.dirname(config_file), *folders], lowercase)
    return ModelSource(config, encoder, tokenizer, built, weights_line, run_config, labels)


def load(source: str | os.PathLike, *, bert_config_file: str | None = None, vocab_file: str | None = None,
         weights: str | os.PathLike | None = None, ckpt_name: str | None = None, heads: Sequence[str] = (),
         lowercase: bool | None = None, config_name: str = GOOGLE_CONFIG_FILE) -> ModelSource:
    """A model from `source` (a folder, a checkpoint prefix or an npz; see the module docstring).

    `bert_config_file` / `vocab_file`: the model's size and vocabulary when they are not beside the
    source (or to override them). `weights`: load the weights from here instead of `source`;
    `ckpt_name`: a checkpoint inside that folder (bert-as-service's `-tuned_model_dir` / `-ckpt_name`).
    `heads`: also build and load these (`masked_lm`, `next_sentence`: Google's / Hugging Face's
    pre-training heads; `output`: the Dense over the pooled output of a Chainer npz of BERT + head or of
    one of our BertDML folders). `lowercase`: None follows the source (run_config.json,
    tokenizer_config.json, Google's folder naming), else forces it. `config_name`: bert-as-service's
    `-config_name`. Call under `strategy.scope()` to place the variables. Every problem with the
    source is one `UserError` (a mismatch lists every missing / mis-shaped tensor and assigns nothing).
    """
    source = os.fspath(source)
    weights = os.path.join(os.fspath(weights or source), ckpt_name) if ckpt_name else weights and os.fspath(weights)
    try:
        result = _load(source, bert_config_file, vocab_file, weights, tuple(heads), lowercase, config_name)
    except (FileNotFoundError, CheckpointMismatchError, BertConfigError, VocabError, ValueError) as error:
        raise UserError(str(error)) from None
    if result.tokenizer is None:
        raise UserError(f"no vocab.txt in or beside {source}: give --vocab_file")
    if result.tokenizer.vocab_size > result.config.vocab_size:
        raise UserError(f"{source}: the vocabulary has {result.tokenizer.vocab_size} tokens but the config says "
                        f"vocab_size={result.config.vocab_size}")
    return result
