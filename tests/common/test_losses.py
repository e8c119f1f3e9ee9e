"""`common.losses.sparse_softmax_cross_entropy` against TensorFlow's kernel and a NumPy hand computation."""

import numpy as np
import pytest
import tensorflow as tf

from common.losses import sparse_softmax_cross_entropy


def reference_loss_and_gradient(labels, logits, upstream):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        total = tf.reduce_sum(loss * upstream)
    return loss.numpy(), tape.gradient(total, logits).numpy()


def our_loss_and_gradient(labels, logits, upstream, function=sparse_softmax_cross_entropy):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = function(labels, logits)
        total = tf.reduce_sum(loss * upstream)
    return loss.numpy(), tape.gradient(total, logits).numpy()


@pytest.mark.parametrize("compiled", [False, True])
def test_values_and_gradients_equal_tensorflows_kernel(compiled):
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(scale=4.0, size=(3, 7, 501)), tf.float32)
    labels = tf.constant(rng.integers(0, 501, size=(3, 7)), tf.int32)
    upstream = tf.constant(rng.uniform(0.0, 2.0, size=(3, 7)), tf.float32)  # weights, some near 0
    function = tf.function(sparse_softmax_cross_entropy) if compiled else sparse_softmax_cross_entropy
    ours, our_gradient = our_loss_and_gradient(labels, logits, upstream, function)
    theirs, their_gradient = reference_loss_and_gradient(labels, logits, upstream)
    assert ours.shape == (3, 7) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(our_gradient, their_gradient, rtol=1e-6, atol=1e-7)


def test_hand_computed_value():
    """Logits (0, ln 3) with label 1: softmax (1/4, 3/4), loss -ln(3/4), gradient (1/4, -1/4)."""
    logits = tf.constant([[0.0, np.log(3.0)]], tf.float32)
    loss, gradient = our_loss_and_gradient(tf.constant([1]), logits, tf.constant([1.0]))
    np.testing.assert_allclose(loss, [-np.log(0.75)], rtol=1e-6)
    np.testing.assert_allclose(gradient, [[0.25, -0.25]], atol=1e-7)


def test_a_label_whose_probability_underflows_still_gets_the_exact_loss():
    """A confident wrong row: p(label) = e^-200 underflows float32, the loss must still be 200."""
    logits = tf.constant([[200.0, 0.0, 0.0], [1.0, 2.0, 3.0]], tf.float32)
    labels = tf.constant([1, 2])
    ours, our_gradient = our_loss_and_gradient(labels, logits, tf.constant([1.0, 1.0]))
    theirs, their_gradient = reference_loss_and_gradient(labels, logits, tf.constant([1.0, 1.0]))
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(our_gradient, their_gradient, atol=1e-7)


def test_mixed_precision_logits_are_computed_in_float32():
    logits = tf.constant([[0.5, 1.5, -1.0]], tf.bfloat16)
    loss = sparse_softmax_cross_entropy(tf.constant([0]), logits)
    expected = -np.log(np.exp(0.5) / np.exp([0.5, 1.5, -1.0]).sum())
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-6)


def test_a_label_outside_the_classes_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="label id"):
        sparse_softmax_cross_entropy(tf.constant([3]), tf.zeros([1, 3]))
