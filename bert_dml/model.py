"""BERT-DML's network on the common encoder, its loss in `common.training`'s contract, and features.

As in the original `BertDML` (Chainer): [CLS] pooled output (dense + tanh) -> dropout 0.1 ->
dense 512 (weights N(0, 0.02)); the 512 numbers are the item's metric-space features.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from bert_dml.data import trim_to_longest
from bert_dml.triplets import MARGIN, mined_triplet_losses
from common.cli import UserError
from common.config import BertConfig
from common.embeddings import l2_normalize as unit_length
from common.encoder import BertEncoder
from common.tokenization import BertTokenizer

OUTPUT_DIM = 512
FEATURE_KEYS = ("input_ids", "input_mask", "segment_ids")
TRIPLET_PARTS = ("anchor", "positive", "negative")


class BertDML(keras.Model):
    """Encoder -> pooled output -> dropout -> dense `output_dim`."""

    def __init__(self, encoder: BertEncoder, output_dim: int = OUTPUT_DIM, dropout: float = 0.1, **kwargs):
        kwargs.setdefault("name", "bert_dml")
        super().__init__(**kwargs)
        if not encoder.use_pooler:
            raise ValueError("BERT-DML needs the encoder's pooler ([CLS] -> dense -> tanh)")
        self.encoder = encoder
        self.dropout = keras.layers.Dropout(dropout, name="dropout")
        self.output_dense = keras.layers.Dense(
            output_dim, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02), name="output")
        self.output_dense.build((None, encoder.config.hidden_size))

    def call(self, features, training=None):
        pooled = self.encoder(features, training=training)["pooled_output"]
        return ops.cast(self.output_dense(self.dropout(pooled, training=training)), "float32")


def make_triplet_loss_fn(mining: str = "random", margin: float = MARGIN,
                         l2_normalize: bool = False) -> Callable:
    """`loss_fn(model, features, training)` for `common.training.Trainer`: one forward pass over the
    batch's anchors, positives and negatives; (sum of triplet losses, number of triplets).
    `l2_normalize`: distances between unit-length embeddings (FaceNet's; not in the original), so the
    loss sees the geometry the cosine kNN evaluation sees."""

    def loss_fn(model, features, training):
        batch = ops.shape(features["anchor_input_ids"])[0]
        joined = {key: ops.concatenate([features[f"{part}_{key}"] for part in TRIPLET_PARTS], axis=0)
                  for key in FEATURE_KEYS}
        embeddings = model(joined, training=training)
        if l2_normalize:
            embeddings = unit_length(embeddings)
        anchor, positive, negative = (embeddings[:batch], embeddings[batch:2 * batch],
                                      embeddings[2 * batch:])
        losses = mined_triplet_losses(anchor, positive, negative, features["anchor_label"],
                                      features["negative_label"], mining=mining, margin=margin)
        return ops.sum(losses), ops.cast(batch, "float32")

    return loss_fn


def triplet_batches(features: dict[str, np.ndarray], label_ids: np.ndarray, triplets: np.ndarray,
                    batch_size: int):
    """Yields triplet batches (dicts of `<part>_<key>` int32 arrays and the two label columns),
    each trimmed to its longest sequence."""
    for start in range(0, len(triplets), batch_size):
        rows = triplets[start:start + batch_size]
        batch = {}
        for column, part in enumerate(TRIPLET_PARTS):
            for key in FEATURE_KEYS:
                batch[f"{part}_{key}"] = features[key][rows[:, column]]
        length = max(int(batch[f"{part}_input_mask"].sum(axis=1).max(initial=0)) for part in TRIPLET_PARTS)
        length = max(length, 2)
        batch = {key: value[:, :length] for key, value in batch.items()}
        batch["anchor_label"] = label_ids[rows[:, 0]].astype(np.int32)
        batch["negative_label"] = label_ids[rows[:, 2]].astype(np.int32)
        yield batch


def triplet_signature() -> dict:
    spec = {f"{part}_{key}": tf.TensorSpec([None, None], tf.int32) for part in TRIPLET_PARTS for key in FEATURE_KEYS}
    spec["anchor_label"] = tf.TensorSpec([None], tf.int32)
    spec["negative_label"] = tf.TensorSpec([None], tf.int32)
    return spec


def batched_outputs(function: Callable, features: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """`function(batch)` over all rows, batches of similar length together, rows back in input order."""
    lengths = features["input_mask"].sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    outputs = [None] * len(order)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = trim_to_longest({key: features[key][rows] for key in FEATURE_KEYS})
        values = np.asarray(function({key: tf.constant(value) for key, value in batch.items()}))
        for row, value in zip(rows, values):
            outputs[row] = value
    return np.stack(outputs) if outputs else np.zeros((0, 0), np.float32)


def feature_function(output: Callable) -> Callable:
    """A `tf.function` over any batch/sequence length (traced once) for inference."""
    spec = {key: tf.TensorSpec([None, None], tf.int32) for key in FEATURE_KEYS}
    # Plain model calls: nothing for AutoGraph to convert (it cannot parse lambdas sharing a line).
    return tf.function(tf.autograph.experimental.do_not_convert(output), input_signature=[spec],
                       reduce_retracing=True)


# ---- where the encoder comes from ---------------------------------------------------------------

@dataclasses.dataclass
class EncoderSetup:
    config: BertConfig
    encoder: BertEncoder
    _tokenizer: BertTokenizer
    source: str  # what was loaded, for the log

    def tokenizer(self) -> BertTokenizer:
        return self._tokenizer

    @property
    def vocab(self) -> list[str]:
        return [self._tokenizer.inverse_vocab[index] for index in range(self._tokenizer.vocab_size)]


def load_encoder(preset: str | None = None, init_checkpoint: str | None = None,
                 bert_config_file: str | None = None, vocab_file: str | None = None,
                 train_texts: Sequence[str] | None = None, vocab_size: int = 8000,
                 lowercase: bool = True) -> EncoderSetup:
    """The encoder (call under `strategy.scope()`) and tokenizer from the flags: `--preset` (any folder
    `common.model_source` reads), `--init_checkpoint` (+ `--bert_config_file`, `--vocab_file`, as the
    original), or from scratch (`--bert_config_file`; vocabulary `--vocab_file` or learnt from the text)."""
    from common import model_source

    if preset and init_checkpoint:
        raise UserError("give --preset or --init_checkpoint, not both")
    if preset or init_checkpoint:
        loaded = model_source.load(preset or init_checkpoint, bert_config_file=bert_config_file,
                                   vocab_file=vocab_file, lowercase=None if preset else lowercase)
        return EncoderSetup(loaded.config, loaded.encoder, loaded.tokenizer, f"{preset or init_checkpoint} "
                                                                             f"({loaded.weights})")
    if not bert_config_file:
        raise UserError("give --bert_config_file (the model's size), or --preset for a pre-trained folder")
    if not os.path.isfile(bert_config_file):
        raise UserError(f"--bert_config_file {bert_config_file}: no such file")
    config = BertConfig.from_json_file(bert_config_file)
    if vocab_file:
        vocab, source = vocab_file, f"from scratch, vocabulary {vocab_file}"
    elif train_texts:
        from bert_dml.data import build_vocabulary
        vocab = build_vocabulary(train_texts, vocab_size=vocab_size, lowercase=lowercase)
        source = f"from scratch, {len(vocab)}-token vocabulary learnt from the training text"
        config = config.replace(vocab_size=len(vocab))
    else:
        raise UserError("a model trained from scratch needs --vocab_file or training text")
    tokenizer = (BertTokenizer.from_vocab_file(vocab, lowercase=lowercase) if isinstance(vocab, str)
                 else BertTokenizer(vocab, lowercase=lowercase))
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"the vocabulary has {tokenizer.vocab_size} tokens but {bert_config_file} says "
                        f"vocab_size={config.vocab_size}")
    return EncoderSetup(config, BertEncoder(config), tokenizer, source)


def save_model_folder(model_dir: str, setup: EncoderSetup, labels: Sequence[str], run_config: dict) -> None:
    """bert_config.json, vocab.txt, labels.json, run_config.json beside the checkpoints."""
    from common.checkpoints import write_model_folder

    write_model_folder(model_dir, setup.config, vocab_file=setup.vocab, labels=list(labels),
                       run_config={**run_config, "lowercase": setup.tokenizer().lowercase})
