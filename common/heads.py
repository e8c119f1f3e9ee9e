"""Heads on top of `BertEncoder`: masked-LM (tied), next-sentence, classification; and their losses."""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from common.config import BertConfig
from common.encoder import LAYER_NORM_EPSILON, BertEncoder, get_activation, truncated_normal
from common.losses import sparse_softmax_cross_entropy


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
    # Building with both shapes lets `summary()` compute the head's output shape.
    head.build((None, None, config.hidden_size), (None, None))
    return head


def next_sentence_head(config: BertConfig, name: str = "next_sentence_head") -> keras.layers.Dense:
    head = keras.layers.Dense(2, kernel_initializer=truncated_normal(config), name=name)
    head.build((None, config.hidden_size))
    return head


def _serialize(model, **config) -> dict:
    return {"name": model.name, "trainable": model.trainable, **config}


@keras.saving.register_keras_serializable(package="bertsuite")
class ClassificationHead(keras.layers.Layer):
    """dropout -> dense over the pooled output, as in BERT's `run_classifier.py`."""

    def __init__(self, config: BertConfig, num_labels: int, dropout: float | None = None, **kwargs):
        kwargs.setdefault("name", "classification_head")
        super().__init__(**kwargs)
        self.bert_config, self.num_labels, self.rate = config, num_labels, dropout
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.dense = keras.layers.Dense(num_labels, kernel_initializer=truncated_normal(config),
                                        name="output")
        self.build((None, config.hidden_size))

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_labels,)

    def get_config(self) -> dict:
        return _serialize(self, config=self.bert_config.to_dict(), num_labels=self.num_labels, dropout=self.rate)

    @classmethod
    def from_config(cls, config: dict) -> "ClassificationHead":
        return cls(BertConfig.from_dict(config.pop("config")), **config)

    def call(self, pooled_output, training=None):
        return self.dense(self.dropout(pooled_output, training=training))


def masked_lm_loss(logits, masked_lm_ids, masked_lm_weights):
    """Google BERT's MLM loss: per-position cross-entropy averaged over real (weight 1) positions."""
    logits = ops.cast(logits, "float32")
    weights = ops.cast(masked_lm_weights, "float32")
    per_position = sparse_softmax_cross_entropy(masked_lm_ids, logits)
    return ops.sum(per_position * weights) / (ops.sum(weights) + 1e-5)


def next_sentence_loss(logits, next_sentence_labels):
    logits = ops.cast(logits, "float32")
    labels = ops.reshape(next_sentence_labels, (-1,))
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


@keras.saving.register_keras_serializable(package="bertsuite")
class BertPretrainer(keras.Model):
    """Encoder + MLM head + NSP head: the model of BERT pre-training (used by danmaku and ovt_explain).

    `call(features)` returns `{"masked_lm_logits": [batch, max_predictions, vocab]}` plus
    `"next_sentence_logits": [batch, 2]` with the NSP head, and with `return_attention=True` also
    `"attention_probs"`: one `[batch, heads, query, key]` tensor per layer, from the same forward pass.
    """

    def __init__(self, encoder: BertEncoder, use_next_sentence: bool = True, **kwargs):
        kwargs.setdefault("name", "bert_pretrainer")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.masked_lm = masked_lm_head(encoder)
        self.next_sentence = next_sentence_head(encoder.config) if use_next_sentence else None
        # Every sub-layer is built above, so weights exist at once (summary, count_params, checkpoints).
        self.built = True

    def get_config(self) -> dict:
        return _serialize(self, encoder=keras.saving.serialize_keras_object(self.encoder),
                          use_next_sentence=self.next_sentence is not None)

    @classmethod
    def from_config(cls, config: dict) -> "BertPretrainer":
        return cls(keras.saving.deserialize_keras_object(config.pop("encoder")), **config)

    def call(self, features, training=None, return_attention=False):
        outputs = self.encoder(features, training=training, return_attention=return_attention)
        result = {"masked_lm_logits": self.masked_lm(outputs["sequence_output"],
                                                     mask_positions=features["masked_lm_positions"])}
        if self.next_sentence is not None:
            result["next_sentence_logits"] = self.next_sentence(outputs["pooled_output"])
        if return_attention:
            result["attention_probs"] = outputs["attention_probs"]
        return result

    def compute_pretraining_loss(self, features, outputs):
        loss = masked_lm_loss(outputs["masked_lm_logits"], features["masked_lm_ids"],
                              features["masked_lm_weights"])
        if self.next_sentence is not None and "next_sentence_labels" in features:
            loss = loss + next_sentence_loss(outputs["next_sentence_logits"],
                                             features["next_sentence_labels"])
        return loss


@keras.saving.register_keras_serializable(package="bertsuite")
class BertClassifier(keras.Model):
    """Encoder + classification head over the pooled output.

    `call(features)` returns the logits `[batch, num_labels]`; with `return_attention=True` it returns
    `{"logits", "pooled_output", "attention_probs"}` from the same forward pass (`attention_probs`: one
    `[batch, heads, query, key]` tensor per layer).
    """

    def __init__(self, encoder: BertEncoder, num_labels: int, dropout: float | None = None, **kwargs):
        kwargs.setdefault("name", "bert_classifier")
        super().__init__(**kwargs)
        if encoder.pooler_dense is None:
            raise ValueError("BertClassifier needs an encoder with a pooler (use_pooler=True)")
        self.encoder = encoder
        self.num_labels = num_labels
        self.classifier = ClassificationHead(encoder.config, num_labels, dropout)
        # Every sub-layer is built above, so weights exist at once (summary, count_params, checkpoints).
        self.built = True

    def get_config(self) -> dict:
        return _serialize(self, encoder=keras.saving.serialize_keras_object(self.encoder), num_labels=self.num_labels,
                          dropout=self.classifier.rate)

    @classmethod
    def from_config(cls, config: dict) -> "BertClassifier":
        return cls(keras.saving.deserialize_keras_object(config.pop("encoder")), **config)

    def call(self, features, training=None, return_attention=False):
        outputs = self.encoder(features, training=training, return_attention=return_attention)
        logits = self.classifier(outputs["pooled_output"], training=training)
        if not return_attention:
            return logits
        return {"logits": logits, "pooled_output": outputs["pooled_output"],
                "attention_probs": outputs["attention_probs"]}
