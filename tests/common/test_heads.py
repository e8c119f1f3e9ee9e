import numpy as np
import pytest
import tensorflow as tf

from common.config import BertConfig
from common.encoder import BertEncoder
from common.heads import BertClassifier, BertPretrainer


def _config(**overrides):
    settings = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16)
    settings.update(overrides)
    return BertConfig(**settings)


def _features(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([6, 4, 2])
    input_mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": rng.integers(1, 40, (3, 6)).astype(np.int32) * input_mask,
            "input_mask": input_mask,
            "segment_ids": (np.arange(6)[None, :] >= 3).astype(np.int32) * input_mask,
            "masked_lm_positions": np.array([[1, 2], [1, 3], [1, 0]], np.int32)}


def _summary_text(model):
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


def test_heads_have_all_their_weights_before_the_first_call(tmp_path):
    config = _config()
    classifier = BertClassifier(BertEncoder(config), num_labels=3)
    pretrainer = BertPretrainer(BertEncoder(config))
    encoder_params = BertEncoder(config).count_params()
    hidden = config.hidden_size
    # Pooled output -> 3 labels.
    assert classifier.count_params() == encoder_params + hidden * 3 + 3
    # MLM transform (dense + LayerNorm) and output bias (the output matrix is the tied embedding),
    # and the NSP dense.
    assert pretrainer.count_params() == (encoder_params + hidden * hidden + hidden + 2 * hidden
                                         + config.vocab_size + hidden * 2 + 2)
    text = _summary_text(classifier)
    assert "classification_head" in text and "unbuilt" not in text
    assert "(None, 3)" in text
    text = _summary_text(pretrainer)
    assert "masked_lm_head" in text and "next_sentence_head" in text and "unbuilt" not in text
    # Checkpoints see every weight without a call either.
    path = tf.train.Checkpoint(model=classifier).write(str(tmp_path / "classifier"))
    checkpoint_names = {name for name, _ in tf.train.list_variables(path)}
    assert any("classifier/dense" in name for name in checkpoint_names), checkpoint_names


def _assert_attention_probs(attention_probs, input_mask, num_layers, num_heads):
    assert len(attention_probs) == num_layers
    for probs in attention_probs:
        probs = np.asarray(probs)
        assert probs.shape == (3, num_heads, 6, 6)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        # Padded keys get no attention.
        np.testing.assert_array_equal(probs * (1 - input_mask[:, None, None, :]), 0.0)


def test_classifier_returns_logits_and_attention_from_one_forward_pass():
    config = _config()
    classifier = BertClassifier(BertEncoder(config), num_labels=3)
    features = _features()
    logits = classifier(features, training=False)
    outputs = classifier(features, training=False, return_attention=True)
    assert set(outputs) == {"logits", "pooled_output", "attention_probs"}
    np.testing.assert_allclose(outputs["logits"], logits, rtol=0, atol=1e-6)
    assert outputs["logits"].shape == (3, 3) and outputs["pooled_output"].shape == (3, 16)
    np.testing.assert_allclose(
        outputs["pooled_output"],
        classifier.encoder(features, training=False)["pooled_output"], rtol=0, atol=1e-6)
    _assert_attention_probs(outputs["attention_probs"], features["input_mask"], 2, 2)


def test_pretrainer_adds_attention_to_its_outputs():
    config = _config()
    pretrainer = BertPretrainer(BertEncoder(config))
    features = _features(1)
    plain = pretrainer(features, training=False)
    outputs = pretrainer(features, training=False, return_attention=True)
    assert set(plain) == {"masked_lm_logits", "next_sentence_logits"}
    assert set(outputs) == set(plain) | {"attention_probs"}
    for name in plain:
        np.testing.assert_allclose(outputs[name], plain[name], rtol=0, atol=1e-5)
    assert outputs["masked_lm_logits"].shape == (3, 2, 40)
    _assert_attention_probs(outputs["attention_probs"], features["input_mask"], 2, 2)


def test_classifier_needs_a_pooler():
    with pytest.raises(ValueError, match="pooler"):
        BertClassifier(BertEncoder(_config(), use_pooler=False), num_labels=2)


def test_encoder_and_models_round_trip_through_keras_saving(tmp_path):
    """`model.save("x.keras")` / `keras.saving.load_model`: same class, config and outputs (get_config /
    from_config, as keras-hub's models do); the loaded MLM head is still tied to the loaded embeddings."""
    import keras

    features = _features(1)
    models = [BertEncoder(_config(hidden_act="gelu_new"), use_segment_embeddings=False),
              BertPretrainer(BertEncoder(_config())), BertClassifier(BertEncoder(_config()), 3, dropout=0.2)]
    for model in models:
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
        expected, outputs = model(features, training=False), loaded(features, training=False)
        if isinstance(model, BertEncoder):
            expected, outputs = expected["sequence_output"], outputs["sequence_output"]
        for key, value in (expected.items() if isinstance(expected, dict) else [("logits", expected)]):
            np.testing.assert_array_equal(np.asarray(outputs[key] if isinstance(outputs, dict) else outputs),
                                          np.asarray(value), err_msg=f"{model.name}: {key}")
    assert loaded.encoder.get_config()["config"]["vocab_size"] == 40
    pretrainer = keras.saving.load_model(str(tmp_path / "bert_pretrainer.keras"))
    assert pretrainer.masked_lm.token_embedding is pretrainer.encoder.token_embedding
