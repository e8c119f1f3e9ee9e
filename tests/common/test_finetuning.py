"""freeze_encoder with the real training loop: frozen weights stay bit-identical, resume checks the set."""

import numpy as np
import pytest
import tensorflow as tf

from common.checkpoints import CheckpointMismatchError
from common.config import BertConfig
from common.encoder import BertEncoder
from common.finetuning import freeze_encoder
from common.heads import BertClassifier
from common.optimization import create_optimizer
from common.training import Trainer, TrainSettings, classification_loss_fn

CONFIG = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, max_position_embeddings=12, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


def _examples(count=12, length=8, seed=0):
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, 30, (count, length)).astype(np.int32)
    # A planted label: whether token 7 occurs.
    return {"input_ids": input_ids, "input_mask": np.ones_like(input_ids),
            "segment_ids": np.zeros_like(input_ids),
            "label_ids": (input_ids == 7).any(axis=1).astype(np.int32)}


def _variables_by_path(model):
    return {variable.path: np.array(variable) for variable in model.variables}


def _fine_tune(model_dir, num_train_steps, trainable_last_layers=1, **freeze_kwargs):
    import keras

    keras.utils.set_random_seed(0)
    model = BertClassifier(BertEncoder(CONFIG), num_labels=2)
    summary = freeze_encoder(model.encoder, trainable_last_layers, **freeze_kwargs)
    before = _variables_by_path(model)
    examples = _examples()
    # Weight decay on: a frozen variable must not even decay.
    optimizer = create_optimizer(1e-2, 10, 0, weight_decay=0.1)
    settings = TrainSettings(model_dir=str(model_dir), num_train_steps=num_train_steps, progress=False,
                             summary=False)
    result = Trainer(tf.distribute.get_strategy(), model, optimizer, classification_loss_fn, settings).fit(
        lambda context, start_step: tf.data.Dataset.from_tensor_slices(examples).repeat().batch(4))
    return model, before, summary, result


def test_freeze_encoder_sets_the_trainable_parts():
    encoder = BertEncoder(CONFIG)
    summary = freeze_encoder(encoder, 1)
    trainable = {variable.path.split("/")[1] for variable in encoder.trainable_variables}
    assert trainable == {"transformer_layer_1", "pooler_dense"}
    assert summary.startswith("training transformer_layer_1, pooler of the encoder: ")
    assert "(18 of 39 variables)" in summary

    freeze_encoder(encoder, 0, train_pooler=False, train_embeddings=True)  # replaces the first call
    trainable = {variable.path.split("/")[1] for variable in encoder.trainable_variables}
    assert trainable == {"token_embedding", "segment_embedding", "position_embedding", "embeddings_layer_norm"}
    freeze_encoder(encoder, 2, train_embeddings=True)
    assert len(encoder.trainable_variables) == len(encoder.variables)
    for bad in (3, -1, 1.0, None):
        with pytest.raises(ValueError, match=r"trainable_last_layers must be an integer in \[0, 2\]"):
            freeze_encoder(encoder, bad)


def test_frozen_weights_stay_bit_identical_and_resume_checks_the_frozen_set(tmp_path):
    model, before, summary, result = _fine_tune(tmp_path, 3)
    assert result.final_step == 3
    after = _variables_by_path(model)
    trainable = {variable.path for variable in model.trainable_variables}
    assert any("classification_head" in path for path in trainable)
    moved = []
    for path, value in before.items():
        if path in trainable:
            moved.append(not np.array_equal(after[path], value))
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=f"frozen {path} changed")
    assert all(moved) and len(moved) == 18 + 2  # last block + pooler + classifier
    assert sum(path.startswith("bert_encoder/transformer_layer_0/") for path in before) == 16

    # Resuming with the same frozen set continues.
    _, _, _, resumed = _fine_tune(tmp_path, 4)
    assert [step for step, _ in resumed.losses] == [4]

    # Another frozen set: one clear error naming the variables whose status changed.
    with pytest.raises(CheckpointMismatchError) as error:
        _fine_tune(tmp_path, 5, trainable_last_layers=2)
    message = str(error.value)
    assert "the set of trainable variables differs from the checkpoint's" in message
    assert "trainable now, frozen in the checkpoint (16):" in message
    assert "model/encoder/transformer_layer_0/_self_attention_layer/_query_dense/_kernel" in message
    with pytest.raises(CheckpointMismatchError, match=r"frozen now, trainable in the checkpoint \(2\):\n"
                                                      r"    model/encoder/pooler_dense/_kernel"):
        _fine_tune(tmp_path, 5, train_pooler=False)
