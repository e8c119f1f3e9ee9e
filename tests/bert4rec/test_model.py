"""BERT4Rec model: cross-attention vs a NumPy reference, shapes, tying, parameter count, loss, and
learning a planted item order."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert4rec.model import (
    Bert4Rec,
    CrossAttentionMultiHeadAttention,
    CrossAttentionTransformerEncoder,
    bert4rec_loss,
    bert4rec_loss_all_slots,
    make_cross_attention_layer,
)
from common.config import BertConfig
from common.distribute import get_strategy
from numpy_reference import gelu_erf, layer_norm, softmax
from common.encoder import make_transformer_layer

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "bert4rec", "bert_train")


def tiny_config(vocab_size=40, max_positions=20, dropout=0.0, initializer_range=0.02):
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout, max_position_embeddings=max_positions,
                      initializer_range=initializer_range)


def random_features(rng, batch=3, seq=12, max_predictions=4, vocab_size=40, lengths=(12, 7, 9)):
    input_ids = np.zeros((batch, seq), np.int32)
    input_mask = np.zeros((batch, seq), np.int32)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(1, vocab_size - 1, size=length)
        input_mask[row, :length] = 1
    positions = np.stack([rng.choice(length, max_predictions, replace=False) for length in lengths])
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(1, vocab_size - 1, size=(batch, max_predictions)).astype(np.int32),
        "masked_lm_weights": np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], np.float32),
    }


# ---- NumPy references -------------------------------------------------------------------------

def np_cross_attention(layer, x, key_mask, yy):
    """softmax(QK^T/√d)V + softmax(QQ^T/(2√d))V + softmax(YY^T/(2√d))V, padded keys masked; then the
    output projection. Also returns the QK^T probabilities."""
    def project(dense):
        kernel, bias = (w.numpy().astype(np.float64) for w in dense.weights)
        return np.einsum("btd,dnh->btnh", x, kernel) + bias

    q, k, v = project(layer._query_dense), project(layer._key_dense), project(layer._value_dense)
    inv_sqrt_d = 1.0 / np.sqrt(q.shape[-1])

    def attend(rows, columns, scale):
        scores = np.einsum("binh,bjnh->bnij", rows, columns) * scale
        scores = np.where(key_mask[:, None, None, :], scores, -np.inf)
        probs = softmax(scores)
        return np.einsum("bnij,bjnh->binh", probs, v), probs

    y = k if yy == "kk" else q
    qk_context, qk_probs = attend(q, k, inv_sqrt_d)
    context = qk_context + attend(q, q, inv_sqrt_d / 2)[0] + attend(y, y, inv_sqrt_d / 2)[0]
    out_kernel, out_bias = (w.numpy().astype(np.float64) for w in layer._output_dense.weights)
    return np.einsum("binh,nhd->bid", context, out_kernel) + out_bias, qk_probs


# ---- cross-attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("yy", ["kk", "qq"])
def test_cross_attention_matches_numpy_formula_with_padding(yy):
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    layer = CrossAttentionMultiHeadAttention(
        num_heads=2, key_dim=4, cross_attention_yy=yy,
        # Large random weights (and biases) so all three softmaxes are far from uniform.
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.6),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.3))
    x = rng.normal(size=(3, 6, 8))
    key_mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], bool)
    attention_mask = np.broadcast_to(key_mask[:, None, :], (3, 6, 6))

    output, probs = layer(query=x.astype(np.float32), value=x.astype(np.float32),
                          attention_mask=attention_mask, return_attention_scores=True)
    expected, expected_probs = np_cross_attention(layer, x, key_mask, yy)

    np.testing.assert_allclose(output.numpy(), expected, rtol=1e-4, atol=1e-4)
    # The attention scores handed back are the ordinary QK^T probabilities.
    np.testing.assert_allclose(probs.numpy(), expected_probs, rtol=1e-5, atol=1e-6)


def test_cross_attention_yy_choice_matters():
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype(np.float32)
    outputs = {}
    for yy in ("kk", "qq"):
        keras.utils.set_random_seed(3)  # identical weights for both
        layer = CrossAttentionMultiHeadAttention(
            num_heads=2, key_dim=4, cross_attention_yy=yy,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.6))
        outputs[yy] = layer(query=x, value=x).numpy()
    assert not np.allclose(outputs["kk"], outputs["qq"], atol=1e-3)


def test_cross_attention_block_uses_the_variant_with_the_plain_weight_layout():
    config = tiny_config()
    plain = make_transformer_layer(config, 0)
    cross = make_cross_attention_layer(config, 0, cross_attention_yy="qq")
    for layer in (plain, cross):
        layer.build((None, None, config.hidden_size))
    assert isinstance(cross, CrossAttentionTransformerEncoder)
    assert type(cross._self_attention_layer) is CrossAttentionMultiHeadAttention
    assert cross._self_attention_layer.cross_attention_yy == "qq"
    assert [(w.path, w.shape) for w in cross.weights] == [(w.path, w.shape) for w in plain.weights]

    # Same weights, different attention: the block outputs must differ.
    for target, source in zip(cross.weights, plain.weights):
        target.assign(source)
    x = np.random.default_rng(0).normal(size=(2, 5, config.hidden_size)).astype(np.float32)
    assert not np.allclose(cross(x).numpy(), plain(x).numpy(), atol=1e-3)


@pytest.mark.parametrize("model_type", ["bert4rec", "cross_attention"])
def test_padded_positions_do_not_leak_into_real_positions(model_type):
    keras.utils.set_random_seed(11)
    model = Bert4Rec(tiny_config(), model_type=model_type)
    features = random_features(np.random.default_rng(11))
    changed = dict(features, input_ids=np.where(features["input_mask"] == 1, features["input_ids"], 5))
    before = model.encoder(features)["sequence_output"].numpy()
    after = model.encoder(changed)["sequence_output"].numpy()
    real = features["input_mask"] == 1
    np.testing.assert_allclose(before[real], after[real], rtol=1e-5, atol=1e-5)


# ---- Bert4Rec ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["bert4rec", "cross_attention"])
def test_forward_shapes_and_float32_logits_under_mixed_precision(model_type):
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(1)
    model = Bert4Rec(tiny_config(), model_type=model_type)
    features = random_features(np.random.default_rng(1))
    logits = model(features)
    assert logits.shape == (3, 4, 40) and logits.dtype == tf.float32
    next_logits = model.next_item_logits(features)
    assert next_logits.shape == (3, 40) and next_logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


def test_next_item_logits_are_the_first_masked_position_in_inference_mode():
    keras.utils.set_random_seed(2)
    model = Bert4Rec(tiny_config(dropout=0.3))
    features = random_features(np.random.default_rng(2))
    np.testing.assert_allclose(model.next_item_logits(features).numpy(),
                               model(features, training=False).numpy()[:, 0, :], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows, length_buckets", [(9, 4), (3, 4), (9, 8)])
def test_bucketed_next_item_states_equal_the_whole_batch_in_input_order(rows, length_buckets):
    keras.utils.set_random_seed(4)
    model = Bert4Rec(tiny_config())
    features = {name: value[:rows] for name, value in bucket_features(np.random.default_rng(4)).items()}
    whole = tf.linalg.matmul(model.next_item_states(features, length_buckets=1), model.output_table(),
                             transpose_b=True)
    np.testing.assert_allclose(whole.numpy(), model(features, training=False).numpy()[:, 0, :], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(model.next_item_states(features, length_buckets=length_buckets).numpy(),
                               model.next_item_states(features, length_buckets=1).numpy(), rtol=1e-5, atol=1e-6)


def test_output_layer_is_tied_to_the_item_embedding():
    keras.utils.set_random_seed(4)
    config = tiny_config()
    model = Bert4Rec(config)
    rng = np.random.default_rng(4)
    head = model.masked_lm
    # Non-trivial head parameters, so the reference exercises every term.
    for weight in head.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))

    # The only weights with a vocabulary dimension are the embedding table and the output bias.
    vocab_weights = sorted(w.path for w in model.weights if config.vocab_size in w.shape)
    assert vocab_weights == ["bert_encoder/token_embedding/embeddings", "masked_lm_head/output_bias"]

    features = random_features(rng)
    sequence_output = model.encoder(features)["sequence_output"].numpy().astype(np.float64)
    gathered = np.take_along_axis(sequence_output, features["masked_lm_positions"][..., None], axis=1)
    dense = head._intermediate_dense
    hidden = gelu_erf(gathered @ dense.kernel.numpy() + dense.bias.numpy())
    norm = head._intermediate_layer_norm
    hidden = layer_norm(hidden, norm.gamma.numpy(), norm.beta.numpy())
    embeddings = model.encoder.token_embedding.embeddings.numpy()
    expected = hidden @ embeddings.T + head._bias.numpy()
    np.testing.assert_allclose(model(features).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_parameter_count_of_the_ml1m_64_config():
    config = BertConfig.from_json_file(os.path.join(CONFIG_DIR, "bert_config_ml-1m_64.json"))
    hidden, inner, vocab = 64, 256, 3420
    embeddings = vocab * hidden + 2 * hidden + 200 * hidden + 2 * hidden  # items, types, positions, LN
    block = 4 * (hidden * hidden + hidden) + 2 * hidden \
        + (hidden * inner + inner) + (inner * hidden + hidden) + 2 * hidden
    head = (hidden * hidden + hidden) + 2 * hidden + vocab  # transform, LN, output bias (tied kernel)
    expected = embeddings + 2 * block + head
    assert expected == 339_612
    assert Bert4Rec(config).count_params() == expected
    assert Bert4Rec(config, model_type="cross_attention").count_params() == expected


def test_config_files_carry_the_original_values():
    read = lambda name: BertConfig.from_json_file(os.path.join(CONFIG_DIR, f"bert_config_{name}.json"))  # noqa: E731
    expected = {  # vocab, hidden, intermediate, heads, positions, hidden dropout, attention dropout
        "ml-1m_64": (3420, 64, 256, 2, 200, 0.2, 0.2),
        "ml-1m_256": (3420, 256, 512, 8, 200, 0.5, 0.2),
        "ml-20m_64": (26748, 64, 256, 2, 200, 0.1, 0.1),
        "beauty_64": (54546, 64, 256, 2, 50, 0.5, 0.2),
        "steam_64": (13048, 64, 256, 2, 50, 0.1, 0.1),
        "steam_256": (13048, 256, 1024, 8, 50, 0.2, 0.2),  # run_steam.sh uses dim 256
        "ml-100k_64": (1349 + 4, 64, 256, 2, 200, 0.2, 0.2),
        "ml-100k_128": (1349 + 4, 128, 512, 4, 200, 0.1, 0.1),  # ours: run_ml-100k.sh's budget model
    }
    for name, values in expected.items():
        config = read(name)
        assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_attention_heads,
                config.max_position_embeddings, config.hidden_dropout_prob,
                config.attention_probs_dropout_prob) == values, name
        assert (config.num_hidden_layers, config.type_vocab_size, config.hidden_act) == (2, 2, "gelu"), name


def test_loss_is_weighted_cross_entropy_sum_and_weight_sum():
    keras.utils.set_random_seed(5)
    model = Bert4Rec(tiny_config())
    features = random_features(np.random.default_rng(5))
    loss_sum, normalizer = bert4rec_loss(model, features, training=False)
    logits = model(features).numpy().astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_position = -np.take_along_axis(log_probs, features["masked_lm_ids"][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss_sum), (per_position * features["masked_lm_weights"]).sum(), rtol=1e-5)
    assert float(normalizer) == features["masked_lm_weights"].sum() == 6.0


# ---- learning a planted order ------------------------------------------------------------------

NUM_ITEMS, SEQ_LEN, MAX_PREDICTIONS, BATCH = 30, 20, 8, 64
MASK_ID = NUM_ITEMS + 1  # 0 = padding, 1..NUM_ITEMS = items


def walk(rng, cycle):
    """A user: consecutive items of the fixed cycle from a random start, with a random length."""
    length = rng.integers(12, SEQ_LEN + 1)
    return cycle[(rng.integers(NUM_ITEMS) + np.arange(length)) % NUM_ITEMS]


def training_batches(rng, cycle, num_steps, mask_prob=0.2):
    """Masked-item training instances (each real position masked with `mask_prob`, at least one)."""
    size = num_steps * BATCH
    data = {"input_ids": np.zeros((size, SEQ_LEN), np.int32), "input_mask": np.zeros((size, SEQ_LEN), np.int32),
            "masked_lm_positions": np.zeros((size, MAX_PREDICTIONS), np.int32),
            "masked_lm_ids": np.zeros((size, MAX_PREDICTIONS), np.int32),
            "masked_lm_weights": np.zeros((size, MAX_PREDICTIONS), np.float32)}
    for row in range(size):
        items = walk(rng, cycle)
        masked = np.flatnonzero(rng.random(len(items)) < mask_prob)[:MAX_PREDICTIONS]
        if masked.size == 0:
            masked = rng.integers(len(items), size=1)
        data["input_ids"][row, :len(items)] = items
        data["input_ids"][row, masked] = MASK_ID
        data["input_mask"][row, :len(items)] = 1
        data["masked_lm_positions"][row, :masked.size] = masked
        data["masked_lm_ids"][row, :masked.size] = items[masked]
        data["masked_lm_weights"][row, :masked.size] = 1.0
    return [{name: array[step * BATCH:(step + 1) * BATCH] for name, array in data.items()}
            for step in range(num_steps)]


def held_out_instances(rng, cycle, num_users=200):
    """Each user's last item is held out and masked; the model must name it."""
    features = {"input_ids": np.zeros((num_users, SEQ_LEN), np.int32),
                "input_mask": np.zeros((num_users, SEQ_LEN), np.int32),
                "masked_lm_positions": np.zeros((num_users, 1), np.int32)}
    targets = np.zeros(num_users, np.int32)
    for row in range(num_users):
        items = walk(rng, cycle)
        targets[row] = items[-1]
        features["input_ids"][row, :len(items)] = np.append(items[:-1], MASK_ID)
        features["input_mask"][row, :len(items)] = 1
        features["masked_lm_positions"][row, 0] = len(items) - 1
    return features, targets


def hit_rate_at_10(model, features, targets, rng, num_negatives=100):
    """HR@10 of the target against random negatives (items other than the target, with replacement)."""
    logits = model.next_item_logits(features).numpy()
    hits = []
    for row, target in enumerate(targets):
        negatives = rng.choice(np.setdiff1d(np.arange(1, NUM_ITEMS + 1), [target]), num_negatives)
        rank = np.sum(logits[row, negatives] > logits[row, target])
        hits.append(rank < 10)
    return float(np.mean(hits))


# 300 steps each: the cross-attention run is an end-to-end run of the slow set (the default run trains BERT4Rec).
@pytest.mark.parametrize("model_type", ["bert4rec", pytest.param("cross_attention", marks=pytest.mark.slow)])
def test_learns_a_planted_item_order(model_type, num_steps=300):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    cycle = (rng.permutation(NUM_ITEMS) + 1).astype(np.int32)
    # A wider init than BERT's 0.02 shortens the plateau before attention finds the neighbours, so
    # every seed tried learns the order within 300 steps (0.02 stalls for some seeds).
    config = tiny_config(vocab_size=NUM_ITEMS + 2, max_positions=SEQ_LEN, dropout=0.1, initializer_range=0.1)
    model = Bert4Rec(config, model_type=model_type)
    features, targets = held_out_instances(np.random.default_rng(1), cycle)

    untrained = hit_rate_at_10(model, features, targets, np.random.default_rng(2))
    assert untrained < 0.3, untrained

    optimizer = keras.optimizers.Adam(learning_rate=3e-3)

    @tf.function
    def train_step(batch):
        with tf.GradientTape() as tape:
            # One group: tracing 8 length groups costs ~35 s; the groupings' equality is tested below.
            loss_sum, normalizer = bert4rec_loss(model, batch, training=True, length_buckets=1)
            loss = loss_sum / normalizer
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    for batch in training_batches(rng, cycle, num_steps):
        train_step(batch)

    trained = hit_rate_at_10(model, features, targets, np.random.default_rng(2))
    assert trained > 0.9, (untrained, trained)


# ---- the packed loss -----------------------------------------------------------------------------

def test_packed_loss_and_gradients_equal_the_all_slots_computation():
    """bert4rec_loss runs the output layer only on slots with weight > 0 (and skips trailing padding columns);
    loss and every gradient must equal today's all-slots computation."""
    keras.utils.set_random_seed(6)
    model = Bert4Rec(tiny_config())
    features = random_features(np.random.default_rng(6))
    # Every row shorter than the window, so the trimmed encoder really runs on fewer columns.
    features["input_mask"][:, 10:] = 0
    features["input_ids"][:, 10:] = 0
    features["masked_lm_positions"] = np.minimum(features["masked_lm_positions"], 9)
    features["masked_lm_weights"][2, 1] = 0.5  # weights other than 0/1 count as weights

    def loss_and_gradients(loss_fn):
        with tf.GradientTape() as tape:
            loss_sum, normalizer = loss_fn(model, features, training=False)
            loss = loss_sum / normalizer
        gradients = tape.gradient(loss, model.trainable_variables)
        return float(loss), [tf.convert_to_tensor(gradient).numpy() for gradient in gradients], float(normalizer)

    packed, packed_gradients, packed_normalizer = loss_and_gradients(bert4rec_loss)
    reference, reference_gradients, reference_normalizer = loss_and_gradients(bert4rec_loss_all_slots)
    assert packed_normalizer == reference_normalizer == 5.5
    assert abs(packed - reference) <= 1e-6 * abs(reference)
    for variable, ours, theirs in zip(model.trainable_variables, packed_gradients, reference_gradients):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * max(1.0, np.abs(theirs).max()),
                                   err_msg=variable.path)
    assert np.abs(reference_gradients[0]).max() > 0  # the item table does get a gradient


def test_item_logits_are_the_head_after_its_gather():
    keras.utils.set_random_seed(8)
    model = Bert4Rec(tiny_config())
    rng = np.random.default_rng(8)
    for weight in model.masked_lm.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))
    states = rng.normal(size=(5, 32)).astype(np.float32)
    expected = model.masked_lm(states[None], mask_positions=np.arange(5)[None])[0]
    np.testing.assert_allclose(model.item_logits(states).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


# ---- the length-bucketed loss --------------------------------------------------------------------

def bucket_features(rng, seq=20, max_predictions=4, vocab_size=40):
    """Rows of very different history lengths, not in length order: one full window (its real slot at the
    last position, beyond every other row's length), rows of 1-3 items, rows with no real slot, and a real
    slot pointing into a row's padding (row 5: two items, a prediction at position 9)."""
    lengths = [7, seq, 1, 12, 3, 2, 16, 1, 9]
    positions = [[6, 2, 0, 0], [seq - 1, 0, 5, 0], [0, 0, 0, 0], [11, 4, 0, 0], [1, 0, 0, 0],
                 [9, 1, 0, 0], [15, 3, 8, 0], [0, 0, 0, 0], [8, 0, 0, 0]]
    weights = [[1, 1, 0, 0], [1, 1, 0.5, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0],
               [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    columns = np.arange(seq)
    real = columns < np.array(lengths)[:, None]
    input_ids = np.where(real, rng.integers(1, vocab_size - 1, size=(len(lengths), seq)), 0).astype(np.int32)
    return {"input_ids": input_ids, "input_mask": real.astype(np.int32),
            "masked_lm_positions": np.array(positions, np.int32),
            "masked_lm_ids": rng.integers(1, vocab_size - 1, size=(len(lengths), max_predictions)).astype(np.int32),
            "masked_lm_weights": np.array(weights, np.float32)}


def loss_and_gradients(model, features, loss_fn, **kwargs):
    with tf.GradientTape() as tape:
        loss_sum, normalizer = loss_fn(model, features, training=False, **kwargs)
        loss = loss_sum / normalizer
    gradients = tape.gradient(loss, model.trainable_variables)
    return float(loss), [tf.convert_to_tensor(gradient).numpy() for gradient in gradients], float(normalizer)


@pytest.mark.parametrize("rows, length_buckets", [(9, 0), (9, 1), (9, 2), (9, 4), (3, 4)])
def test_bucketed_loss_and_gradients_equal_the_all_slots_computation(rows, length_buckets):
    """Each length bucket is cut to its own longest history; loss and every gradient must still equal the
    all-slots computation (a bucket cut too short loses the full row's last slot or row 5's slot in padding)."""
    keras.utils.set_random_seed(9)
    model = Bert4Rec(tiny_config())
    features = {name: value[:rows] for name, value in bucket_features(np.random.default_rng(9)).items()}

    ours, our_gradients, our_normalizer = loss_and_gradients(
        model, features, bert4rec_loss, length_buckets=length_buckets)
    reference, reference_gradients, reference_normalizer = loss_and_gradients(
        model, features, bert4rec_loss_all_slots)
    assert our_normalizer == reference_normalizer == features["masked_lm_weights"].sum()
    assert abs(ours - reference) <= 1e-6 * abs(reference)
    for variable, mine, theirs in zip(model.trainable_variables, our_gradients, reference_gradients):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6 * max(1.0, np.abs(theirs).max()),
                                   err_msg=variable.path)
    # The full row's last position is used, so that position's embedding gets a gradient.
    positions = model.encoder.position_embedding.position_embeddings
    index = [v.path for v in model.trainable_variables].index(positions.path)
    assert np.abs(reference_gradients[index][19]).max() > 0


def test_bucketed_loss_trains_in_a_tf_function_with_dynamic_batch_sizes():
    """Dropout on, one trace for every batch size, including batches smaller than the bucket count and empty."""
    keras.utils.set_random_seed(10)
    model = Bert4Rec(tiny_config(dropout=0.3))
    features = bucket_features(np.random.default_rng(10))
    signature = {name: tf.TensorSpec([None, value.shape[1]], tf.as_dtype(value.dtype))
                 for name, value in features.items()}
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)

    @tf.function(input_signature=[signature])
    def train_step(batch):
        with tf.GradientTape() as tape:
            # 4 groups (not the default 8) trace faster; batches of 3, 1 and 0 rows are still below the count.
            loss_sum, normalizer = bert4rec_loss(model, batch, training=True, length_buckets=4)
        gradients = tape.gradient(loss_sum, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss_sum, normalizer

    for rows in (9, 3, 1, 0):
        loss_sum, normalizer = train_step({name: value[:rows] for name, value in features.items()})
        assert np.isfinite(float(loss_sum)), rows
        assert float(normalizer) == features["masked_lm_weights"][:rows].sum()
    assert float(loss_sum) == 0.0  # the empty batch


def test_bucketed_loss_under_mixed_precision_matches_float32_closely():
    features = bucket_features(np.random.default_rng(12))
    keras.utils.set_random_seed(12)
    reference = float(bert4rec_loss_all_slots(Bert4Rec(tiny_config()), features, training=False)[0])
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(12)  # the same weights, in float16 compute
    model = Bert4Rec(tiny_config())
    loss_sum, _ = tf.function(lambda batch: bert4rec_loss(model, batch, training=True))(features)
    assert loss_sum.dtype == tf.float32 and np.isfinite(float(loss_sum))
    assert abs(float(bert4rec_loss(model, features, training=False)[0]) - reference) <= 1e-2 * abs(reference)


def test_bucketed_loss_per_replica_under_mirrored_strategy():
    """Two CPU replicas each bucket their own share of the batch; the summed loss is the all-slots one."""
    strategy = get_strategy("mirrored")  # one MirroredStrategy per process (tests share it)
    assert strategy.num_replicas_in_sync == 2
    features = bucket_features(np.random.default_rng(13))
    with strategy.scope():
        keras.utils.set_random_seed(13)
        model = Bert4Rec(tiny_config())
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(features).batch(9))

    @tf.function
    def step(batch):
        return strategy.run(lambda b: bert4rec_loss(model, b, training=False), args=(batch,))

    loss_sum, normalizer = (strategy.reduce("SUM", value, axis=None) for value in step(next(iter(dataset))))
    reference_sum, reference_normalizer = bert4rec_loss_all_slots(model, features, training=False)
    assert float(normalizer) == float(reference_normalizer)
    np.testing.assert_allclose(float(loss_sum), float(reference_sum), rtol=1e-6)
