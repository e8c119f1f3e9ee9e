"""BERT4Rec (Sun et al., CIKM 2019) and its cross-attention variant, built from `common/`.

BERT4Rec is a BERT encoder over item ids: item + learned position embeddings (plus the all-zero
token type that the original `modeling.py` still adds), post-LN blocks, no pooler, and a masked-item
head whose output layer is the item embedding table (tied) plus an output bias.

The cross-attention variant changes only the attention inside each block (see
`CrossAttentionMultiHeadAttention`); its weights have the same names and shapes as BERT4Rec's.
"""

from __future__ import annotations

import functools

import keras
import keras_hub
import tensorflow as tf
from keras import ops

from common.config import BertConfig
from common.encoder import BertEncoder, make_transformer_layer
from common.heads import masked_lm_head
from common.losses import sparse_softmax_cross_entropy

MODEL_TYPES = ("bert4rec", "cross_attention")
CROSS_ATTENTION_YY = ("kk", "qq")
# Training batches are encoded in this many groups of similar history length (see `bert4rec_loss`):
# on 2 CPU cores, ml-1m-like batches of 256 trained at 353 (4), 379 (8) and 394 (16) sequences/s, against 239
# for the all-slots loss (bench/bert4rec_train.py); fewer, larger groups may suit a GPU better (not measured).
LENGTH_BUCKETS = 8


class CrossAttentionMultiHeadAttention(keras.layers.MultiHeadAttention):
    """Self-attention returning softmax(QK^T/√d)V + softmax(QQ^T/(2√d))V + softmax(YY^T/(2√d))V.

    Y is K (`cross_attention_yy="kk"`, the form described by the variant's paper) or Q (`"qq"`, what
    its public code computes: the QQ^T softmax a second time). All three softmaxes mask padded keys
    and have dropout applied to their probabilities. Only self-attention is supported (query, key and
    value from the same sequence), since QQ^T and KK^T are square. When attention scores are
    requested, the returned probabilities are the ordinary softmax(QK^T/√d) ones.
    """

    def __init__(self, *args, cross_attention_yy: str = "kk", **kwargs):
        super().__init__(*args, **kwargs)
        if cross_attention_yy not in CROSS_ATTENTION_YY:
            raise ValueError(f"cross_attention_yy must be one of {CROSS_ATTENTION_YY}, "
                             f"got {cross_attention_yy!r}")
        self.cross_attention_yy = cross_attention_yy

    def _attend(self, scores, value, attention_mask, training):
        """Masked softmax over keys, dropout on the probabilities, weighted sum of values."""
        probs = self._masked_softmax(scores, attention_mask)
        dropped = self._dropout_layer(probs, training=training) if self._dropout > 0.0 else probs
        return ops.einsum(self._combine_equation, dropped, value), probs

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, **kwargs):
        # This is where the cross-attention model differs from BERT4Rec: two extra attention maps built
        # from query-query and key-key (or query-query again) similarities, at half the usual scale.
        scaled_query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
        half_scaled_query = ops.multiply(scaled_query, ops.cast(0.5, query.dtype))
        yy_source = key if self.cross_attention_yy == "kk" else query
        half_scaled_yy = ops.multiply(
            yy_source, ops.cast(0.5 * self._inverse_sqrt_key_dim, yy_source.dtype))

        # `_dot_product_equation(a, b)` gives scores [B, N, rows of b, columns of a].
        qk_scores = ops.einsum(self._dot_product_equation, key, scaled_query)
        qq_scores = ops.einsum(self._dot_product_equation, query, half_scaled_query)
        yy_scores = ops.einsum(self._dot_product_equation, yy_source, half_scaled_yy)

        qk_output, qk_probs = self._attend(qk_scores, value, attention_mask, training)
        qq_output, _ = self._attend(qq_scores, value, attention_mask, training)
        yy_output, _ = self._attend(yy_scores, value, attention_mask, training)
        return qk_output + qq_output + yy_output, qk_probs

    def get_config(self):
        return {**super().get_config(), "cross_attention_yy": self.cross_attention_yy}


class CrossAttentionTransformerEncoder(keras_hub.layers.TransformerEncoder):
    """keras-hub `TransformerEncoder` whose self-attention is `CrossAttentionMultiHeadAttention`."""

    def __init__(self, *args, cross_attention_yy: str = "kk", **kwargs):
        super().__init__(*args, **kwargs)
        self.cross_attention_yy = cross_attention_yy

    def __setattr__(self, name, value):
        # keras-hub creates its attention inline in build(); swapping the class at that assignment
        # keeps the rest of build (sub-layer names, weight shapes) exactly keras-hub's.
        if name == "_self_attention_layer" and type(value) is keras.layers.MultiHeadAttention:
            value = CrossAttentionMultiHeadAttention.from_config(
                {**value.get_config(), "cross_attention_yy": self.cross_attention_yy})
        super().__setattr__(name, value)

    def get_config(self):
        return {**super().get_config(), "cross_attention_yy": self.cross_attention_yy}


def make_cross_attention_layer(config: BertConfig, index: int,
                               cross_attention_yy: str = "kk") -> CrossAttentionTransformerEncoder:
    """`BertEncoder` layer factory: a BERT block (same settings as BERT4Rec) with cross-attention."""
    return make_transformer_layer(config, index, layer_class=CrossAttentionTransformerEncoder,
                                  cross_attention_yy=cross_attention_yy)


class Bert4Rec(keras.Model):
    """Masked-item model: features -> float32 logits `[batch, max_predictions, vocab_size]`.

    Features: int `input_ids` `[batch, seq]` (0 = padding), int `input_mask` `[batch, seq]`
    (1 = real item), int `masked_lm_positions` `[batch, max_predictions]`.
    """

    def __init__(self, config: BertConfig, model_type: str = "bert4rec",
                 cross_attention_yy: str = "kk", use_token_type_embeddings: bool = True,
                 name: str = "bert4rec", **kwargs):
        super().__init__(name=name, **kwargs)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if cross_attention_yy not in CROSS_ATTENTION_YY:
            raise ValueError(f"cross_attention_yy must be one of {CROSS_ATTENTION_YY}, "
                             f"got {cross_attention_yy!r}")
        self.config = config
        self.model_type = model_type
        self.cross_attention_yy = cross_attention_yy
        layer_factory = (
            functools.partial(make_cross_attention_layer, cross_attention_yy=cross_attention_yy)
            if model_type == "cross_attention" else make_transformer_layer)
        # The original adds token-type embedding 0 to every position (ids are all zero), so the table
        # exists by default; the pooler is commented out there, so there is none here.
        self.encoder = BertEncoder(config, use_segment_embeddings=use_token_type_embeddings,
                                   use_pooler=False, transformer_layer_factory=layer_factory)
        # A float32 head: keras-hub's head does not autocast its bias, and the softmax over all items
        # is safer in float32 under mixed precision (the encoder still runs in the global policy).
        self.masked_lm = masked_lm_head(self.encoder, dtype="float32")
        # Every sub-layer is built above, so weights exist before the first call (checkpoints, counts).
        self.built = True

    def _encode(self, features, training=None, trim_padding=False):
        input_ids, input_mask = features["input_ids"], features.get("input_mask")
        if trim_padding and input_mask is not None:
            # Histories are right-padded and padded keys are masked out of attention, so dropping the
            # columns after the batch's longest history changes no real position's output.
            input_ids, input_mask = ops.convert_to_tensor(input_ids), ops.convert_to_tensor(input_mask)
            # The longest history (see `history_lengths`); at least one column, so that an empty batch (a
            # length bucket with no rows) still runs.
            length = tf.maximum(tf.reduce_max(history_lengths(features)), 1)
            input_ids, input_mask = input_ids[:, :length], input_mask[:, :length]
        inputs = {"input_ids": input_ids, "input_mask": input_mask}
        return self.encoder(inputs, training=training)["sequence_output"]

    def call(self, features, training=None):
        sequence_output = self._encode(features, training=training)
        logits = self.masked_lm(sequence_output, mask_positions=features["masked_lm_positions"])
        # Losses and rankings want float32 even under a mixed-precision policy.
        return ops.cast(logits, "float32")

    def item_logits(self, masked_states):
        """float32 logits `[n, vocab_size]` for encoder outputs `[n, hidden]` at masked positions.

        The masked-LM head after its gather (dense + GELU, LayerNorm, tied output layer, output bias),
        so callers can run it on just the positions that count.
        """
        # The output bias rides in the matmul as one more column (its gradient then comes from the matmul,
        # not from a sum over [n, vocab]); transpose_b: no per-step transposed copy of the item table.
        return tf.linalg.matmul(self.head_states(masked_states), self.output_table(), transpose_b=True)

    def head_states(self, masked_states):
        """float32 `[n, hidden + 1]`: the head's transform of `[n, hidden]` states, then a column of ones."""
        head = self.masked_lm
        hidden = head._intermediate_layer_norm(head._intermediate_dense(ops.cast(masked_states, "float32")))
        return tf.concat([hidden, tf.ones_like(hidden[:, :1])], axis=1)

    def output_table(self):
        """float32 `[vocab_size, hidden + 1]`: the tied item embeddings with the output bias as last column;
        logits = head_states @ output_table^T."""
        return tf.concat([ops.cast(self.encoder.token_embedding.embeddings, "float32"),
                          tf.cast(self.masked_lm._bias, tf.float32)[:, None]], axis=1)

    def next_item_states(self, features, length_buckets: int = LENGTH_BUCKETS):
        """float32 `[batch, hidden + 1]` head states at each test instance's single masked position,
        `masked_lm_positions[:, 0]` (inference mode): next_item_logits = next_item_states @ output_table^T.

        As in training (`bert4rec_loss`), rows are encoded in `length_buckets` groups of similar history
        length, each cut to its own longest history (rows are independent: the same states, in input order).
        """
        if length_buckets <= 1 or features.get("input_mask") is None:
            return self.head_states(self._first_position_states(features))
        names = ("input_ids", "input_mask", "masked_lm_positions")
        features = {name: tf.convert_to_tensor(features[name]) for name in names}
        order = tf.argsort(history_lengths(features))
        bounds = tf.range(length_buckets + 1) * tf.size(order) // length_buckets
        states = [self._first_position_states({name: tf.gather(value, order[bounds[bucket]:bounds[bucket + 1]])
                                               for name, value in features.items()})
                  for bucket in range(length_buckets)]
        return self.head_states(tf.gather(tf.concat(states, axis=0), tf.argsort(order)))

    def _first_position_states(self, features):
        sequence_output = self._encode(features, training=False, trim_padding=True)
        # tf.gather, not ops.take_along_axis: the same rows, without TensorFlow's C++ notice "oneDNN supports
        # DT_INT64 only on platforms with AVX-512" at the first trace.
        return tf.gather(sequence_output, features["masked_lm_positions"][:, 0], batch_dims=1)

    def next_item_logits(self, features):
        """Full-vocabulary float32 logits `[batch, vocab_size]` at each test instance's single masked
        position, `masked_lm_positions[:, 0]` (inference mode)."""
        return tf.linalg.matmul(self.next_item_states(features), self.output_table(), transpose_b=True)


def bert4rec_loss_all_slots(model: Bert4Rec, features, training=None):
    """The loss computed over every prediction slot, padding included (weight 0): the reference that
    `bert4rec_loss` must equal, kept for tests and the benchmark's "before" figure."""
    logits = model(features, training=training)
    weights = ops.cast(features["masked_lm_weights"], "float32")
    per_position = keras.losses.sparse_categorical_crossentropy(
        features["masked_lm_ids"], logits, from_logits=True)
    return ops.sum(per_position * weights), ops.sum(weights)


def history_lengths(features):
    """int32 `[batch]`: the columns each row needs, its history length (right-padded `input_mask`) and never
    short of a prediction slot (even one pointing into padding)."""
    return tf.maximum(tf.reduce_sum(tf.cast(features["input_mask"], tf.int32), axis=1),
                      tf.reduce_max(tf.cast(features["masked_lm_positions"], tf.int32), axis=1) + 1)


def bert4rec_loss(model: Bert4Rec, features, training=None, length_buckets: int = LENGTH_BUCKETS):
    """`(loss_sum, normalizer)`: weighted sum of per-position cross-entropy, and the sum of weights.

    The training loop divides by the all-reduced normalizer, so the loss is the mean over real
    masked positions of the global batch (the original's `numerator / denominator`). Only slots with
    weight > 0 reach the output layer, packed across the batch: the loss and gradients are those of
    the all-slots computation (`bert4rec_loss_all_slots`), whose padding slots weigh 0, without the
    vocabulary-wide softmax over them. The encoder runs on `length_buckets` groups of rows sorted by
    history length, each cut to its own longest history (1: the whole batch cut to its longest; 0: not
    cut at all, for static shapes under XLA/TPU).
    """
    names = ("input_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
    features = {name: tf.convert_to_tensor(features[name]) for name in names}
    if length_buckets == 0:  # static shapes (TPU/XLA): the whole batch, padding included
        return _packed_loss(model, [(features, model._encode(features, training=training))], features)
    # Every layer is row-independent and padded keys are masked out, so a short history need not pay for
    # the batch's longest one: attention over [L, L] padding is most of a step.
    order = tf.argsort(history_lengths(features))
    bounds = tf.range(length_buckets + 1) * tf.size(order) // length_buckets
    groups = []
    for bucket in range(length_buckets):
        group = {name: tf.gather(value, order[bounds[bucket]:bounds[bucket + 1]])
                 for name, value in features.items()}
        groups.append((group, model._encode(group, training=training, trim_padding=True)))
    return _packed_loss(model, groups, features)


def _packed_loss(model: Bert4Rec, groups, features):
    """The loss over the real slots of `groups` (`(features, sequence_output)` pairs), packed together."""
    states, labels, slot_weights = [], [], []
    for group, sequence_output in groups:
        group_weights = tf.cast(group["masked_lm_weights"], tf.float32)
        slots = tf.where(group_weights > 0)  # [n, 2]: (row, slot) of every real prediction
        positions = tf.cast(tf.gather_nd(group["masked_lm_positions"], slots), tf.int64)
        states.append(tf.gather_nd(sequence_output, tf.stack([slots[:, 0], positions], axis=1)))
        labels.append(tf.cast(tf.gather_nd(group["masked_lm_ids"], slots), tf.int32))
        slot_weights.append(tf.gather_nd(group_weights, slots))
    masked_states, labels = tf.concat(states, axis=0), tf.concat(labels, axis=0)
    logits = model.item_logits(masked_states)
    per_position = sparse_softmax_cross_entropy(labels, logits)
    weights = tf.cast(features["masked_lm_weights"], tf.float32)
    return tf.reduce_sum(per_position * tf.concat(slot_weights, axis=0)), tf.reduce_sum(weights)
