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
