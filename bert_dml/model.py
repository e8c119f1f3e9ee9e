"""BERT-DML's network on the common encoder, its loss in `common.training`'s contract, and features.

As in the original `BertDML` (Chainer): [CLS] pooled output (dense + tanh) -> dropout 0.1 ->
dense 512 (weights N(0, 0.02)); the 512 numbers are the item's metric-space features.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from bert_dml.data import trim_to_longest
from bert_dml.triplets import MARGIN, mined_triplet_losses
from common.encoder import BertEncoder

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


def make_triplet_loss_fn(mining: str = "random", margin: float = MARGIN) -> Callable:
    """`loss_fn(model, features, training)` for `common.training.train`: one forward pass over the
    batch's anchors, positives and negatives; (sum of triplet losses, number of triplets)."""

    def loss_fn(model, features, training):
        batch = ops.shape(features["anchor_input_ids"])[0]
        joined = {key: ops.concatenate([features[f"{part}_{key}"] for part in TRIPLET_PARTS], axis=0)
                  for key in FEATURE_KEYS}
        embeddings = model(joined, training=training)
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
