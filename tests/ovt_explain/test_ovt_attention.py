"""Attention flow equals the networkx reference and the closed forms; rollout is the matrix product."""

import numpy as np
import pytest

from ovt_explain.attention import (attention_flow, attention_flow_all_layers, attention_rollout,
                                   last_layer_controls, prepare_attention, raw_attention,
                                   token_importance)
from ovt_flow_reference import networkx_flow


def random_attention(rng, layers, n, heads=None, sharpness=3.0):
    shape = (layers, n, n) if heads is None else (layers, heads, n, n)
    logits = rng.normal(size=shape) * sharpness
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("layers,n", [(1, 4), (2, 5), (3, 6), (4, 7), (6, 5), (3, 9)])
def test_flow_equals_networkx(layers, n):
    rng = np.random.default_rng(layers * 100 + n)
    for sharpness in (0.5, 3.0):
        attention = random_attention(rng, layers, n, heads=3, sharpness=sharpness)
        expected = networkx_flow(prepare_attention(attention))
        np.testing.assert_allclose(attention_flow(attention), expected, atol=1e-6, rtol=0)
        # Without the residual the graph is sparser in practice (peaked rows): still exact.
        expected = networkx_flow(prepare_attention(attention, add_residual=False))
        np.testing.assert_allclose(attention_flow(attention, add_residual=False), expected, atol=1e-6, rtol=0)


def test_flow_with_zero_capacities_and_requested_rows():
    rng = np.random.default_rng(7)
    matrices = random_attention(rng, 4, 8, sharpness=4.0)
    matrices[rng.random(matrices.shape) < 0.5] = 0.0
    matrices[:, np.arange(8), np.arange(8)] += 0.01  # keep every row non-empty
    matrices /= matrices.sum(-1, keepdims=True)
    rows = [0, 5]
    expected = networkx_flow(matrices, rows)
    np.testing.assert_allclose(attention_flow(matrices, rows=rows, add_residual=False), expected,
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(attention_flow(matrices, rows=5, add_residual=False), expected[1],
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(attention_flow(matrices, rows=rows, add_residual=False, num_workers=1),
                               expected, atol=1e-6, rtol=0)


def test_flow_closed_forms():
    rng = np.random.default_rng(3)
    one = random_attention(rng, 1, 10)
    np.testing.assert_allclose(attention_flow(one, add_residual=False), one[0], atol=1e-12)
    two = random_attention(rng, 2, 10)
    # Paths u -> k -> v are disjoint, so the flow is the sum of their bottlenecks.
    expected = np.minimum(two[1][:, :, None], two[0][None, :, :]).sum(axis=1)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(attention_flow(two, add_residual=False), expected, atol=1e-12)


def test_hand_computed_three_token_case():
    """Two layers, one head, three tokens, every value worked out by hand."""
    first = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    second = np.array([[0.2, 0.0, 0.8], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    attention = np.stack([first, second])[:, None]  # [layers, heads, n, n]
    # The original's raw attention: (A + I) / row sum, i.e. 0.5 A + 0.5 I here.
    np.testing.assert_allclose(raw_attention(attention)[1, 0], [0.6, 0.0, 0.4], atol=1e-15)
    np.testing.assert_allclose(raw_attention(attention)[0, 2], [0.5, 0.0, 0.5], atol=1e-15)
    np.testing.assert_allclose(raw_attention(attention, add_residual=False)[1, 0], [0.2, 0.0, 0.8], atol=1e-15)
    # Rollout row 0: 0.6 x [.5 .5 0] + 0.4 x [.5 0 .5].
    np.testing.assert_allclose(attention_rollout(attention)[0], [0.5, 0.3, 0.2], atol=1e-15)
    # Flow: to input 0 min(.6,.5) + min(.4,.5) = .9; to 1 min(.6,.5) = .5; to 2 min(.4,.5) = .4; / 1.8.
    np.testing.assert_allclose(attention_flow(attention, rows=0), [0.5, 5 / 18, 2 / 9], atol=1e-12)
    np.testing.assert_allclose(networkx_flow(prepare_attention(attention), [0])[0], [0.5, 5 / 18, 2 / 9],
                               atol=1e-9)


def test_flow_all_layers_ends_with_last_layer():
    attention = random_attention(np.random.default_rng(5), 3, 6, heads=2)
    layered = attention_flow_all_layers(attention, rows=[0])
    assert layered.shape == (3, 1, 6)
    np.testing.assert_allclose(layered[-1, 0], attention_flow(attention, rows=0), atol=1e-12)
    np.testing.assert_allclose(layered[0, 0], prepare_attention(attention)[0, 0], atol=1e-12)


def test_rollout_is_the_matrix_product_of_residual_attention():
    rng = np.random.default_rng(11)
    attention = random_attention(rng, 4, 6, heads=2)
    averaged = attention.mean(axis=1)
    residual = [0.5 * layer + 0.5 * np.eye(6) for layer in averaged]
    expected = residual[3] @ residual[2] @ residual[1] @ residual[0]
    np.testing.assert_allclose(attention_rollout(attention), expected, atol=1e-12)
    np.testing.assert_allclose(attention_rollout(attention, all_layers=True)[1], residual[1] @ residual[0],
                               atol=1e-12)
    np.testing.assert_allclose(token_importance(attention, "rollout", row=2), expected[2], atol=1e-12)
    np.testing.assert_allclose(token_importance(attention, "raw", row=2), residual[3][2], atol=1e-12)


def test_padding_is_cropped_and_rows_renormalised():
    rng = np.random.default_rng(2)
    attention = random_attention(rng, 2, 5, heads=2)
    padded = np.zeros((2, 2, 8, 8))
    padded[:, :, :5, :5] = attention
    padded[:, :, 5:, :] = 1.0 / 8  # padded query rows are full rows; they must be cropped
    # bfloat16-like rounding: rows no longer sum to exactly 1 until renormalised.
    noisy = padded * (1 + 1e-3 * rng.random(padded.shape))
    prepared = prepare_attention(noisy, length=5)
    assert prepared.shape == (2, 5, 5) and prepared.dtype == np.float64
    # The closed form: crop, average the heads, add the identity's half, divide each row by its sum.
    cropped = 0.5 * noisy[:, :, :5, :5].mean(axis=1) + 0.5 * np.eye(5)
    np.testing.assert_allclose(prepared, cropped / cropped.sum(-1, keepdims=True), atol=1e-15)
    np.testing.assert_allclose(raw_attention(noisy, length=5), 0.5 * attention.mean(1) + 0.5 * np.eye(5), atol=2e-3)
    np.testing.assert_allclose(attention_flow(noisy, length=5), attention_flow(attention), atol=2e-3)
    with pytest.raises(ValueError, match="out of range"):
        attention_flow(attention, rows=[7])


def test_bfloat16_attention_is_read_as_float64():
    import tensorflow as tf

    attention = random_attention(np.random.default_rng(4), 2, 6, heads=2)
    low = [tf.constant(layer, tf.bfloat16) for layer in attention]  # as the encoder returns it under mixed precision
    prepared = prepare_attention(low)
    assert prepared.dtype == np.float64
    exact = np.stack([tf.cast(layer, tf.float32).numpy().astype(np.float64) for layer in low]).mean(1)
    exact = 0.5 * exact + 0.5 * np.eye(6)
    np.testing.assert_allclose(prepared, exact / exact.sum(-1, keepdims=True), atol=1e-15)
    np.testing.assert_allclose(attention_flow(low), attention_flow(attention), atol=2e-2)


def test_last_layer_controls_closed_forms():
    """Two layers: every control is the replaced last row times the lower layer (rollout), or the
    networkx flow of the replaced graph."""
    rng = np.random.default_rng(11)
    n, cause = 7, [2, 4, 5]
    capacities = prepare_attention(random_attention(rng, 2, n, heads=2))
    controls = last_layer_controls(capacities, cause)
    lower = capacities[0]
    ideal_row = np.zeros(n)
    ideal_row[0] = 0.5
    ideal_row[cause] += 0.5 / 3
    np.testing.assert_allclose(controls["rollout_ideal"], ideal_row @ lower, atol=1e-12)
    blind_row = np.full(n, 0.5 / n)
    blind_row[0] += 0.5
    np.testing.assert_allclose(controls["rollout_blind"], blind_row @ lower, atol=1e-12)
    via_tokens = capacities[1, 0].copy()
    via_tokens[[0, n - 1]] = 0.0
    np.testing.assert_allclose(controls["rollout_via_tokens"], via_tokens @ lower, atol=1e-12)
    ideal = capacities.copy()
    ideal[1, 0] = ideal_row
    np.testing.assert_allclose(controls["flow_ideal"], networkx_flow(ideal, [0])[0], atol=1e-6)
    blind = capacities.copy()
    blind[1] = 0.5 / n + 0.5 * np.eye(n)
    np.testing.assert_allclose(controls["flow_blind"], networkx_flow(blind, [0])[0], atol=1e-6)
    with pytest.raises(ValueError, match="cause_positions"):
        last_layer_controls(capacities, [])


def top(scores, k):
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def test_ideal_last_layer_is_capped_by_the_layers_below():
    """Uniform layers below let an ideal last layer show its cause through rollout and flow; layers below
    that pour every row's attention into one programme token (a sink) put that token first in flow's
    ranking, whatever the last layer does."""
    n, cause = 12, [3, 4, 5, 6, 7]
    uniform = np.full((3, n, n), 1.0 / n)
    controls = last_layer_controls(prepare_attention(uniform), cause)
    assert top(controls["rollout_ideal"][1:-1], 5) == {c - 1 for c in cause}
    assert top(controls["flow_ideal"][1:-1], 5) == {c - 1 for c in cause}
    sink = np.full((3, n, n), 0.1 / n)
    sink[:, :, 9] += 0.9
    controls = last_layer_controls(prepare_attention(sink), cause)
    assert np.argmax(controls["flow_ideal"][1:-1]) == 8
    assert np.argmax(controls["rollout_ideal"][1:-1]) == 8

