"""BERT4Rec training settings checked on the real model: the 5.0 gradient clip, the weight-decay exclusions,
what `--exclude_history=false` excludes when a history is longer than the model's window, and the one-pass
TensorFlow scoring of `run_evaluation` against the numpy evaluator."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from bert4rec import data as bert4rec_data
from bert4rec import evaluation, experiment
from bert4rec.gen_data_fin import generate
from bert4rec.model import Bert4Rec
from common.config import BertConfig
from common.tfrecords import make_dataset


def tiny_config(vocab_size=40, max_positions=20):
    return BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=max_positions)


def first_moments(optimizer, variables):
    return [optimizer._first_moments[optimizer._get_variable_index(variable)].numpy() for variable in variables]


@pytest.mark.parametrize("global_norm", [50.0, 2.0])
def test_gradients_are_clipped_to_global_norm_5(global_norm):
    """Adam's first moment after one step is (1 - beta_1) * the applied gradient: clipped to norm 5.0 when larger."""
    keras.utils.set_random_seed(0)
    model = Bert4Rec(tiny_config())
    variables = model.trainable_variables
    optimizer = experiment.build_optimizer(1e-3, num_train_steps=100, num_warmup_steps=0)
    rng = np.random.default_rng(0)
    gradients = [rng.normal(size=variable.shape).astype(np.float32) for variable in variables]
    scale = global_norm / np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in gradients))
    gradients = [g * np.float32(scale) for g in gradients]
    optimizer.apply(gradients, variables)
    applied = min(1.0, 5.0 / global_norm)
    for moment, gradient, variable in zip(first_moments(optimizer, variables), gradients, variables):
        np.testing.assert_allclose(moment, 0.1 * applied * gradient, rtol=1e-4, atol=1e-7, err_msg=variable.path)


def test_weight_decay_skips_layer_norms_and_biases_of_the_real_model():
    """A zero gradient moves exactly the decayed variables (by lr * 0.01 * value): every kernel and embedding
    table of Bert4Rec(config), never a LayerNorm gamma/beta or a bias (the output bias included)."""
    keras.utils.set_random_seed(1)
    model = Bert4Rec(tiny_config())
    variables = model.trainable_variables
    before = [variable.numpy().copy() for variable in variables]
    optimizer = experiment.build_optimizer(0.5, num_train_steps=100, num_warmup_steps=0)
    optimizer.apply([np.zeros(variable.shape, np.float32) for variable in variables], variables)
    decayed = set()
    for variable, old in zip(variables, before):
        new = variable.numpy()
        if not np.array_equal(new, old):
            np.testing.assert_allclose(new, old * (1 - 0.5 * 0.01), rtol=1e-6, err_msg=variable.path)
            decayed.add(variable.path)
    paths = [variable.path for variable in variables]
    expected = {path for path in paths if path.rsplit("/", 1)[-1] in ("kernel", "embeddings")}
    assert decayed == expected
    excluded = set(paths) - decayed
    assert "masked_lm_head/output_bias" in excluded
    assert sum(path.endswith(("gamma", "beta")) for path in excluded) == 2 * (1 + 2 * 2 + 1)  # emb, 2 per block, head
    assert "bert_encoder/token_embedding/embeddings" in decayed
    assert "bert_encoder/position_embedding/embeddings" in decayed


class ScoresEveryItemAboveTheTarget:
    """A stand-in model: every real item scores 5, the target 1, so the full-ranking rank of the target is the
    number of items that were not excluded."""

    def __init__(self, vocab_size, num_items):
        self.vocab_size, self.num_items = vocab_size, num_items

    def next_item_logits(self, features):
        targets = features["masked_lm_ids"][:, 0]
        items = tf.range(self.vocab_size)[None, :]
        is_item = (items >= 1) & (items <= self.num_items)
        scores = tf.where(is_item, 5.0, -10.0) * tf.ones_like(tf.cast(targets[:, None], tf.float32))
        return tf.where(items == targets[:, None], 1.0, scores)


def test_exclude_history_false_excludes_only_the_window_of_a_long_history(tmp_path):
    num_items, history_length, window = 40, 14, 5  # each history: 14 distinct items, longer than the window
    rng = np.random.default_rng(2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "long.txt", "w") as handle:
        for user in range(1, 9):
            handle.writelines(f"{user} {item}\n" for item in rng.permutation(np.arange(1, num_items + 1))[:history_length])
    summary = generate("long", data_dir=str(data_dir), output_dir=str(data_dir), max_seq_length=window,
                       max_predictions_per_seq=2, masked_lm_prob=0.2, dupe_factor=1, prop_sliding_window=0.5,
                       signature="", pool_size=1, show_progress=False)
    settings = experiment.RunSettings(bert_config_file="unused", vocab_filename=str(data_dir / "long.vocab"),
                                      user_history_filename=str(data_dir / "long.his"), max_seq_length=window,
                                      max_predictions_per_seq=2)
    model = ScoresEveryItemAboveTheTarget(summary["vocab_size"], summary["items"])
    ranks = {}
    for exclude_history in (True, False):
        results = experiment.run_evaluation(model, settings, str(data_dir / "long.test.tfrecord"), batch_size=3,
                                            protocols=("full",), exclude_history=exclude_history, progress=False)
        ranks[exclude_history] = results["full"]
    items = summary["items"]
    # Whole history excluded: the target competes only with the items the user never had.
    assert ranks[True]["ap"] == pytest.approx(1 / (1 + items - history_length))
    # Window only: the target and the window - 1 items before it are excluded; the 9 older items compete too.
    assert ranks[False]["ap"] == pytest.approx(1 / (1 + items - window))
    assert ranks[True]["valid_user"] == ranks[False]["valid_user"] == 8


class TiedScores:
    """A stand-in model with many ties: item scores rounded to a coarse grid, one NaN item."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def next_item_logits(self, features):
        users = tf.cast(features["info"][:, :1], tf.float32)
        items = tf.cast(tf.range(self.vocab_size)[None, :], tf.float32)
        scores = tf.round(3.0 * tf.sin(0.7 * items * (users + 1.0)))
        return tf.where(tf.equal(items, 7.0), float("nan"), scores)


@pytest.mark.parametrize("model_kind", ["tied_scores", "bert4rec"])
def test_run_evaluation_equals_the_numpy_evaluator_on_the_same_logits(tmp_path, model_kind):
    rng = np.random.default_rng(5)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "tied.txt", "w") as handle:
        for user in range(1, 21):
            handle.writelines(f"{user} {item}\n" for item in rng.integers(1, 150, size=rng.integers(3, 12)))
    summary = generate("tied", data_dir=str(data_dir), output_dir=str(data_dir), max_seq_length=6,
                       max_predictions_per_seq=2, masked_lm_prob=0.2, dupe_factor=1, prop_sliding_window=0.5,
                       signature="", pool_size=1, show_progress=False)
    settings = experiment.RunSettings(bert_config_file="unused", vocab_filename=str(data_dir / "tied.vocab"),
                                      user_history_filename=str(data_dir / "tied.his"), max_seq_length=6,
                                      max_predictions_per_seq=2)
    if model_kind == "tied_scores":  # the generic path: full logits, masked
        model = TiedScores(summary["vocab_size"])
    else:  # the model's own path: head states against the transposed item table
        keras.utils.set_random_seed(3)
        model = Bert4Rec(tiny_config(vocab_size=summary["vocab_size"], max_positions=6))
    protocols = ("pop20", "uni20", "full")
    results = experiment.run_evaluation(model, settings, str(data_dir / "tied.test.tfrecord"), batch_size=7,
                                        protocols=protocols, progress=False)
    vocab = bert4rec_data.load_vocab(settings.vocab_filename)
    features = next(iter(make_dataset(str(data_dir / "tied.test.tfrecord"),
                                      bert4rec_data.bert4rec_feature_spec(6, 2), 100, is_training=False)))
    expected = evaluation.evaluate_logits(
        vocab.item_counts, features["info"].numpy()[:, 0], features["masked_lm_ids"].numpy()[:, 0],
        model.next_item_logits(features).numpy(), bert4rec_data.load_histories(settings.user_history_filename),
        protocols=protocols, num_items=vocab.num_items)
    assert results["full"]["valid_user"] == 20
    for protocol in protocols:
        assert results[protocol] == pytest.approx(expected[protocol])
