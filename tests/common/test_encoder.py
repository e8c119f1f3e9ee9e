"""`BertEncoder` structure and outputs, and `BertConfig` file handling."""

import json

import numpy as np
import pytest

from common.config import BertConfig, BertConfigError
from common.encoder import BertEncoder

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=12)
INPUT_IDS = np.array([[2, 7, 11, 5, 3, 19], [2, 31, 8, 3, 0, 0]], dtype=np.int32)
INPUT_MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=np.int32)

GOOGLE_BERT_BASE = {
    "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
    "type_vocab_size": 2, "vocab_size": 30522,
}


def test_bert_base_has_the_published_parameter_count(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(GOOGLE_BERT_BASE))
    encoder = BertEncoder(BertConfig.from_json_file(path))
    # google-research/bert uncased_L-12_H-768_A-12: embeddings + 12 blocks + pooler.
    assert encoder.count_params() == 109_482_240


@pytest.fixture(scope="module")
def tiny_outputs():
    encoder = BertEncoder(BertConfig(**TINY))
    outputs = encoder({"input_ids": INPUT_IDS, "input_mask": INPUT_MASK}, return_attention=True)
    return encoder, outputs


def test_attention_probabilities_are_masked_distributions(tiny_outputs):
    _, outputs = tiny_outputs
    probs = [np.asarray(layer_probs) for layer_probs in outputs["attention_probs"]]
    assert len(probs) == TINY["num_hidden_layers"]
    for layer_probs in probs:
        assert layer_probs.shape == (2, TINY["num_attention_heads"], 6, 6)  # [batch, heads, q, k]
        np.testing.assert_allclose(layer_probs.sum(-1), 1.0, atol=1e-6)
        # Padded keys get no attention from any query, padded or not.
        np.testing.assert_array_equal(layer_probs[1, :, :, 4:], 0.0)
        assert (layer_probs[1, :, :, :4] > 0).all()


def test_hidden_states_and_outputs(tiny_outputs):
    encoder, outputs = tiny_outputs
    hidden_states = outputs["hidden_states"]
    assert len(hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(tuple(state.shape) == (2, 6, 16) for state in hidden_states)
    np.testing.assert_array_equal(np.asarray(hidden_states[-1]), np.asarray(outputs["sequence_output"]))
    np.testing.assert_allclose(np.asarray(hidden_states[0]),
                               np.asarray(encoder.embed(INPUT_IDS, np.zeros_like(INPUT_IDS))), atol=1e-6)
    assert tuple(outputs["pooled_output"].shape) == (2, 16)
    # Omitted segment ids mean all zeros; an omitted mask means no padding.
    explicit = encoder({"input_ids": INPUT_IDS, "segment_ids": np.zeros_like(INPUT_IDS),
                        "input_mask": np.ones_like(INPUT_IDS)})
    implicit = encoder({"input_ids": INPUT_IDS})
    np.testing.assert_allclose(np.asarray(implicit["sequence_output"]),
                               np.asarray(explicit["sequence_output"]), atol=1e-6)


def test_real_tokens_do_not_depend_on_padding(tiny_outputs):
    encoder, outputs = tiny_outputs
    unpadded = encoder({"input_ids": INPUT_IDS[1:, :4], "input_mask": INPUT_MASK[1:, :4]})
    np.testing.assert_allclose(np.asarray(unpadded["sequence_output"])[0],
                               np.asarray(outputs["sequence_output"])[1, :4], atol=1e-5)


# ---- BertConfig files ----------------------------------------------------------------------------

def test_missing_key_names_key_and_file(tmp_path):
    values = dict(GOOGLE_BERT_BASE)
    del values["num_attention_heads"]
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(BertConfigError) as error:
        BertConfig.from_json_file(path)
    assert "num_attention_heads" in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("key, value", [
    ("vocab_size", 0), ("hidden_size", 770), ("hidden_dropout_prob", 1.5),
    ("hidden_act", "mystery"), ("type_vocab_size", -1), ("num_hidden_layers", "12"),
])
def test_bad_value_names_key(tmp_path, key, value):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**GOOGLE_BERT_BASE, key: value}))
    with pytest.raises(BertConfigError, match=f"'{key}'") as error:
        BertConfig.from_json_file(path)
    assert str(path) in str(error.value)


def test_json_round_trip(tmp_path):
    config = BertConfig(**TINY, hidden_act="relu", type_vocab_size=0, attention_probs_dropout_prob=0.2)
    path = tmp_path / "out" / "bert_config.json"
    config.to_json_file(path)
    assert BertConfig.from_json_file(path) == config
    assert json.loads(path.read_text()) == config.to_dict()


def test_extra_keys_are_ignored(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GOOGLE_BERT_BASE, "model_type": "bert", "layer_norm_eps": 1e-12,
                                "architectures": ["BertModel"]}))
    assert BertConfig.from_json_file(path) == BertConfig(**GOOGLE_BERT_BASE)


# ---- the blocks against an independent NumPy forward pass ----------------------------------------

def _numpy_encoder(encoder, input_ids, input_mask, gelu, epsilon):
    """Float64 BERT forward pass (Google modeling.py): embeddings -> LN -> post-LN blocks, no dropout."""
    from numpy_reference import layer_norm, softmax  # tests/numpy_reference.py (tests/ is on pytest's path)

    def weights(layer):
        return [np.asarray(w, np.float64) for w in layer.weights]

    positions = np.asarray(encoder.position_embedding.position_embeddings, np.float64)[:input_ids.shape[1]]
    hidden = (np.asarray(encoder.token_embedding.embeddings, np.float64)[input_ids] + positions
              + np.asarray(encoder.segment_embedding.embeddings, np.float64)[0])
    hidden = layer_norm(hidden, *weights(encoder.embeddings_layer_norm), epsilon)
    key_mask = input_mask.astype(bool)[:, None, None, :]
    for block in encoder.transformer_layers:
        attention = block._self_attention_layer
        (q_kernel, q_bias), (k_kernel, k_bias), (v_kernel, v_bias) = (
            weights(dense) for dense in (attention._query_dense, attention._key_dense, attention._value_dense))
        q = np.einsum("btd,dnh->btnh", hidden, q_kernel) + q_bias
        k = np.einsum("btd,dnh->btnh", hidden, k_kernel) + k_bias
        v = np.einsum("btd,dnh->btnh", hidden, v_kernel) + v_bias
        scores = np.einsum("binh,bjnh->bnij", q, k) / np.sqrt(q.shape[-1])
        probs = softmax(np.where(key_mask, scores, -np.inf))
        context = np.einsum("bnij,bjnh->binh", probs, v)
        out_kernel, out_bias = weights(attention._output_dense)
        attended = np.einsum("binh,nhd->bid", context, out_kernel) + out_bias
        hidden = layer_norm(hidden + attended, *weights(block._self_attention_layer_norm), epsilon)
        inner_kernel, inner_bias = weights(block._feedforward_intermediate_dense)
        outer_kernel, outer_bias = weights(block._feedforward_output_dense)
        feedforward = gelu(hidden @ inner_kernel + inner_bias) @ outer_kernel + outer_bias
        hidden = layer_norm(hidden + feedforward, *weights(block._feedforward_layer_norm), epsilon)
    return hidden


def test_blocks_match_numpy_bert_with_erf_gelu_and_epsilon_1e_12():
    """A tanh-GELU or a LayerNorm epsilon other than Google's 1e-12 in the blocks fails this test: the weights
    put GELU inputs around +-3 (where the two GELUs differ by up to 5e-4) and the first block's LayerNorm inputs at
    variance ~1e-7 (where epsilon 1e-6 would shrink them ~3x)."""
    from scipy.special import erf

    rng = np.random.default_rng(0)
    encoder = BertEncoder(BertConfig(**dict(TINY, num_hidden_layers=2)))
    for weight in encoder.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))
    # Tiny embedding LayerNorm output: the first block's attention LayerNorm sees variance ~1e-7.
    gamma, beta = encoder.embeddings_layer_norm.weights
    gamma.assign(np.full(gamma.shape, 3e-4, np.float32))
    beta.assign(np.zeros(beta.shape, np.float32))
    attention = encoder.transformer_layers[0]._self_attention_layer
    for weight in attention._output_dense.weights:
        weight.assign(np.asarray(weight) * 1e-3)
    actual = np.asarray(encoder({"input_ids": INPUT_IDS, "input_mask": INPUT_MASK})["sequence_output"])

    def gelu_erf(x):
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    real = INPUT_MASK.astype(bool)
    expected = _numpy_encoder(encoder, INPUT_IDS, INPUT_MASK, gelu_erf, 1e-12)
    np.testing.assert_allclose(actual[real], expected[real], atol=1e-5)  # float32 vs float64: ~3e-7
    # The same comparison is sensitive to each planted mistake.
    for gelu, epsilon in ((gelu_tanh, 1e-12), (gelu_erf, 1e-6)):
        wrong = _numpy_encoder(encoder, INPUT_IDS, INPUT_MASK, gelu, epsilon)
        assert np.abs(wrong[real] - actual[real]).max() > 1e-4  # tanh-GELU: 3e-4; epsilon 1e-6: 6e-2
