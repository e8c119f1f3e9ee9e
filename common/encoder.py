"""The one BERT encoder of the suite, built from keras-hub layers with Google BERT semantics.

Embeddings: token + segment + learned absolute position, then LayerNorm and dropout.
Blocks: post-LN `keras_hub.layers.TransformerEncoder` with exact-erf GELU.
Outputs: sequence output, pooled output ([CLS] -> dense -> tanh), every layer's hidden states and,
on request, every layer's attention probabilities `[batch, heads, query, key]`.
"""

from __future__ import annotations

from typing import Callable

import keras
import keras_hub
from keras import ops

from common.config import BertConfig

# Google BERT's LayerNorm epsilon.
LAYER_NORM_EPSILON = 1e-12


@keras.saving.register_keras_serializable(package="bertsuite")
def gelu_exact(x):
    return keras.activations.gelu(x, approximate=False)


@keras.saving.register_keras_serializable(package="bertsuite")
def gelu_tanh(x):
    return keras.activations.gelu(x, approximate=True)


_ACTIVATIONS = {
    "gelu": gelu_exact,
    "gelu_new": gelu_tanh,
    "gelu_approximate": gelu_tanh,
    "relu": keras.activations.relu,
    "tanh": keras.activations.tanh,
    "swish": keras.activations.silu,
    "silu": keras.activations.silu,
}


def get_activation(name: str) -> Callable:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown hidden_act {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def truncated_normal(config: BertConfig):
    return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


def make_transformer_layer(config: BertConfig, index: int,
                           layer_class: type = keras_hub.layers.TransformerEncoder,
                           **layer_kwargs) -> keras_hub.layers.TransformerEncoder:
    """One post-LN BERT block; `transformer_layer_factory` in `BertEncoder` may replace this.

    `layer_class`/`layer_kwargs` let a `TransformerEncoder` subclass reuse these BERT settings.
    """
    return layer_class(
        intermediate_dim=config.intermediate_size,
        num_heads=config.num_attention_heads,
        dropout=config.hidden_dropout_prob,
        activation=get_activation(config.hidden_act),
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        kernel_initializer=truncated_normal(config),
        normalize_first=False,
        name=f"transformer_layer_{index}",
        **layer_kwargs,
    )


def set_attention_dropout(transformer_layer, rate: float) -> None:
    """keras-hub shares one dropout rate per block; BERT has a separate one for attention probabilities."""
    attention = transformer_layer._self_attention_layer
    attention._dropout = rate
    attention._dropout_layer.rate = rate


@keras.saving.register_keras_serializable(package="bertsuite")
class BertEncoder(keras.Model):
    """BERT encoder: `input_ids`, `segment_ids`, `input_mask` (ints) -> dict of outputs.

    `hidden_states[0]` is the embedding output and `hidden_states[i]` the output of block i, as in
    Hugging Face, so `hidden_states[-1] is sequence_output`. Serialises the Keras way (`get_config` /
    `from_config`, `model.save("x.keras")`); a custom `transformer_layer_factory` must be a registered
    Keras serializable function for that.
    """

    def __init__(
        self,
        config: BertConfig,
        use_segment_embeddings: bool = True,
        use_pooler: bool = True,
        transformer_layer_factory: Callable[[BertConfig, int], keras.layers.Layer] | None = None,
        name: str = "bert_encoder",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.use_segment_embeddings = use_segment_embeddings and config.type_vocab_size > 0
        self.use_pooler = use_pooler
        self.transformer_layer_factory = transformer_layer_factory
        factory = transformer_layer_factory or make_transformer_layer

        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            config.vocab_size, config.hidden_size,
            embeddings_initializer=truncated_normal(config), name="token_embedding")
        self.segment_embedding = (
            keras.layers.Embedding(config.type_vocab_size, config.hidden_size,
                                   embeddings_initializer=truncated_normal(config),
                                   name="segment_embedding")
            if self.use_segment_embeddings else None)
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            sequence_length=config.max_position_embeddings,
            initializer=truncated_normal(config), name="position_embedding")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=LAYER_NORM_EPSILON, name="embeddings_layer_norm")
        self.embeddings_dropout = keras.layers.Dropout(config.hidden_dropout_prob, name="embeddings_dropout")
        self.transformer_layers = [factory(config, index) for index in range(config.num_hidden_layers)]
        # tf.train.Checkpoint does not see layers held in a Python list of a Keras 3 model: name each.
        for index, layer in enumerate(self.transformer_layers):
            setattr(self, f"transformer_layer_{index}", layer)
        self.pooler_dense = (
            keras.layers.Dense(config.hidden_size, activation="tanh",
                               kernel_initializer=truncated_normal(config), name="pooler_dense")
            if use_pooler else None)
        self.build()

    def get_config(self) -> dict:
        factory = self.transformer_layer_factory
        return {"name": self.name, "trainable": self.trainable, "config": self.config.to_dict(),
                "use_segment_embeddings": self.use_segment_embeddings, "use_pooler": self.use_pooler,
                "transformer_layer_factory": None if factory is None else keras.saving.serialize_keras_object(factory)}

    @classmethod
    def from_config(cls, config: dict) -> "BertEncoder":
        config = dict(config)
        factory = config.pop("transformer_layer_factory", None)
        return cls(BertConfig.from_dict(config.pop("config")), **config,
                   transformer_layer_factory=None if factory is None else keras.saving.deserialize_keras_object(factory))

    def build(self, input_shape=None):
        hidden = self.config.hidden_size
        self.token_embedding.build((None, None))
        if self.segment_embedding is not None:
            self.segment_embedding.build((None, None))
        self.position_embedding.build((None, None, hidden))
        self.embeddings_layer_norm.build((None, None, hidden))
        for layer in self.transformer_layers:
            layer.build((None, None, hidden))
            if self.config.attention_probs_dropout_prob != self.config.hidden_dropout_prob:
                set_attention_dropout(layer, self.config.attention_probs_dropout_prob)
        if self.pooler_dense is not None:
            self.pooler_dense.build((None, hidden))
        self.built = True

    @staticmethod
    def _unpack(inputs):
        if isinstance(inputs, dict):
            input_ids = inputs["input_ids"]
            return input_ids, inputs.get("segment_ids"), inputs.get("input_mask")
        return inputs, None, None

    def embed(self, input_ids, segment_ids=None, training=None):
        embeddings = self.token_embedding(input_ids)
        embeddings = embeddings + self.position_embedding(embeddings)
        if self.segment_embedding is not None:
            if segment_ids is None:
                segment_ids = ops.zeros_like(input_ids)
            embeddings = embeddings + self.segment_embedding(segment_ids)
        embeddings = self.embeddings_layer_norm(embeddings)
        return self.embeddings_dropout(embeddings, training=training)

    def call(self, inputs, training=None, return_attention=False, num_layers=None):
        """`num_layers`: run only the first blocks (for embeddings pooled from a lower layer); then
        `hidden_states` has `num_layers + 1` entries and, when blocks were skipped, no `pooled_output`."""
        blocks = self.transformer_layers
        if num_layers is not None:
            if not 0 <= num_layers <= len(blocks):
                raise ValueError(f"num_layers={num_layers} is outside 0..{len(blocks)}")
            blocks = blocks[:num_layers]
        input_ids, segment_ids, input_mask = self._unpack(inputs)
        if input_mask is None:
            input_mask = ops.ones_like(input_ids)
        # Masks travel as ints (bool inputs break MirroredStrategy); the blocks want bool.
        padding_mask = ops.cast(input_mask, "bool")

        hidden = self.embed(input_ids, segment_ids, training=training)
        hidden_states = [hidden]
        attention_probs = []
        for layer in blocks:
            if return_attention:
                hidden, probs = layer(hidden, padding_mask=padding_mask, training=training,
                                      return_attention_scores=True)
                attention_probs.append(probs)
            else:
                hidden = layer(hidden, padding_mask=padding_mask, training=training)
            hidden_states.append(hidden)

        outputs = {"sequence_output": hidden, "hidden_states": hidden_states}
        if self.pooler_dense is not None and len(blocks) == len(self.transformer_layers):
            outputs["pooled_output"] = self.pooler_dense(hidden[:, 0, :])
        if return_attention:
            outputs["attention_probs"] = attention_probs
        return outputs

    def get_embedding_table(self):
        return self.token_embedding.embeddings
