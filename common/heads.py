"""Heads on top of `BertEncoder`: masked-LM (tied), next-sentence, classification; and their losses."""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from common.config import BertConfig
from common.encoder import LAYER_NORM_EPSILON, BertEncoder, get_activation, truncated_normal


def masked_lm_head(encoder: BertEncoder, name: str = "masked_lm_head",
                   **layer_kwargs) -> keras_hub.layers.MaskedLMHead:
    """dense -> activation -> LayerNorm -> logits tied to the input embedding + output bias.

    `layer_kwargs` go to the layer, e.g. `dtype="float32"`: keras-hub's head does not autocast, so
    under a mixed policy its float32 output bias cannot be added to float16 logits.
    """
    config = encoder.config
    # keras-hub builds this head with autocast off, so under a mixed policy its float32 bias meets
    # low-precision logits; a float32 head (the vocabulary softmax wants it anyway) avoids that.
    layer_kwargs.setdefault("dtype", "float32")
    head = keras_hub.layers.MaskedLMHead(
        vocabulary_size=config.vocab_size,
        token_embedding=encoder.token_embedding,
        intermediate_activation=get_activation(config.hidden_act),
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        kernel_initializer=truncated_normal(config),
        name=name,
        **layer_kwargs,
    )
    head.build((None, None, config.hidden_size))
    return head


def next_sentence_head(config: BertConfig, name: str = "next_sentence_head") -> keras.layers.Dense:
    head = keras.layers.Dense(2, kernel_initializer=truncated_normal(config), name=name)
    head.build((None, config.hidden_size))
    return head


class ClassificationHead(keras.layers.Layer):
    """dropout -> dense over the pooled output, as in BERT's `run_classifier.py`."""

    def __init__(self, config: BertConfig, num_labels: int, dropout: float | None = None, **kwargs):
        kwargs.setdefault("name", "classification_head")
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.dense = keras.layers.Dense(num_labels, kernel_initializer=truncated_normal(config),
                                        name="output")
        self.dense.build((None, config.hidden_size))

    def call(self, pooled_output, training=None):
        return self.dense(self.dropout(pooled_output, training=training))


def masked_lm_loss(logits, masked_lm_ids, masked_lm_weights):
    """Google BERT's MLM loss: per-position cross-entropy averaged over real (weight 1) positions."""
    logits = ops.cast(logits, "float32")
    weights = ops.cast(masked_lm_weights, "float32")
    per_position = keras.losses.sparse_categorical_crossentropy(masked_lm_ids, logits, from_logits=True)
    return ops.sum(per_position * weights) / (ops.sum(weights) + 1e-5)


def next_sentence_loss(logits, next_sentence_labels):
    logits = ops.cast(logits, "float32")
    labels = ops.reshape(next_sentence_labels, (-1,))
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


class BertPretrainer(keras.Model):
    """Encoder + MLM head + NSP head: the model of BERT pre-training (used by danmaku and ovt_explain)."""

    def __init__(self, encoder: BertEncoder, use_next_sentence: bool = True, **kwargs):
        kwargs.setdefault("name", "bert_pretrainer")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.masked_lm = masked_lm_head(encoder)
        self.next_sentence = next_sentence_head(encoder.config) if use_next_sentence else None

    def call(self, features, training=None):
        outputs = self.encoder(features, training=training)
        result = {"masked_lm_logits": self.masked_lm(outputs["sequence_output"],
                                                     mask_positions=features["masked_lm_positions"])}
        if self.next_sentence is not None:
            result["next_sentence_logits"] = self.next_sentence(outputs["pooled_output"])
        return result

    def compute_pretraining_loss(self, features, outputs):
        loss = masked_lm_loss(outputs["masked_lm_logits"], features["masked_lm_ids"],
                              features["masked_lm_weights"])
        if self.next_sentence is not None and "next_sentence_labels" in features:
            loss = loss + next_sentence_loss(outputs["next_sentence_logits"],
                                             features["next_sentence_labels"])
        return loss


class BertClassifier(keras.Model):
    """Encoder + classification head over the pooled output."""

    def __init__(self, encoder: BertEncoder, num_labels: int, dropout: float | None = None, **kwargs):
        kwargs.setdefault("name", "bert_classifier")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.classifier = ClassificationHead(encoder.config, num_labels, dropout)

    def call(self, features, training=None):
        outputs = self.encoder(features, training=training)
        return self.classifier(outputs["pooled_output"], training=training)
