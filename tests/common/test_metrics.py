"""Ranking metrics against hand-computed ranks and values; classification wrappers against hand counts."""

import math

import numpy as np
import pytest

from common import metrics


def test_target_ranks_counts_ties_against_the_target():
    scores = np.array([
        [0.9, 0.1, 0.5],  # target best -> 0
        [0.2, 0.5, 0.3],  # two others higher -> 2
        [0.5, 0.5, 0.1],  # one other ties -> 1
        [1.0, 1.0, 1.0],  # constant model -> last, 2
    ])
    np.testing.assert_array_equal(metrics.target_ranks(scores), [0, 2, 1, 2])
    # Target column per row: row 0 column 2 has 0.9 above it; row 1 column 1 is the best.
    np.testing.assert_array_equal(metrics.target_ranks(scores, [2, 1, 2, 1]), [1, 0, 2, 2])


def test_target_ranks_matches_the_original_argsort_when_there_are_no_ties():
    scores = np.random.default_rng(0).normal(size=(50, 101))
    original = np.array([(-row).argsort().argsort()[0] for row in scores])
    np.testing.assert_array_equal(metrics.target_ranks(scores), original)


def test_target_ranks_ignores_masked_candidates_but_never_the_target():
    scores = np.array([[0.3, 0.9, 0.3, 0.1]])
    # Column 1 (0.9) is not a candidate; the target's own column 0 counts even though masked off.
    mask = np.array([[False, False, True, True]])
    np.testing.assert_array_equal(metrics.target_ranks(scores, 0, candidate_mask=mask), [1])


def test_nan_target_ranks_last_and_nan_others_rank_below():
    scores = np.array([[np.nan, 0.1, 0.2], [0.1, np.nan, 0.2]])
    np.testing.assert_array_equal(metrics.target_ranks(scores), [2, 1])


def test_rank_metrics_hand_computed():
    ranks = np.array([0, 2, 1, 2, 7, 12])
    assert metrics.hit_at_k(ranks, 1) == pytest.approx(1 / 6)
    assert metrics.hit_at_k(ranks, 5) == pytest.approx(4 / 6)
    assert metrics.hit_at_k(ranks, 10) == pytest.approx(5 / 6)
    assert metrics.ndcg_at_k(ranks, 1) == pytest.approx(1 / 6)
    ndcg5 = (1 + 1 / 2 + 1 / math.log2(3) + 1 / 2) / 6
    assert metrics.ndcg_at_k(ranks, 5) == pytest.approx(ndcg5)
    assert metrics.ndcg_at_k(ranks, 10) == pytest.approx(ndcg5 + (1 / math.log2(9)) / 6)
    expected_mrr = (1 + 1 / 3 + 1 / 2 + 1 / 3 + 1 / 8 + 1 / 13) / 6
    assert metrics.mean_reciprocal_rank(ranks) == pytest.approx(expected_mrr)


def test_ranking_metrics_keys_follow_the_original_print_order():
    result = metrics.ranking_metrics([0, 3])
    assert list(result) == ["ndcg@1", "hit@1", "ndcg@5", "hit@5", "ndcg@10", "hit@10", "ap", "valid_user"]
    assert result["hit@1"] == 0.5 and result["hit@5"] == 1.0
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 2)
    assert result["ap"] == pytest.approx((1 + 1 / 4) / 2)
    assert result["valid_user"] == 2 and isinstance(result["valid_user"], int)


def test_empty_ranks_give_nan_and_zero_users():
    result = metrics.ranking_metrics([])
    assert result["valid_user"] == 0 and math.isnan(result["hit@10"])


def test_negative_ranks_are_rejected():
    with pytest.raises(ValueError):
        metrics.hit_at_k([0, -1], 1)


LABELS = np.array([0, 0, 1, 1, 2, 2])
PREDICTIONS = np.array([0, 1, 1, 1, 2, 0])


def test_classification_metrics_hand_computed():
    result = metrics.classification_metrics(LABELS, PREDICTIONS)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # Per class precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 1/2, 4/5, 2/3.
    assert result["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert result["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert result["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["num_examples"] == 6


def test_num_classes_includes_absent_classes_with_zero_scores():
    result = metrics.classification_metrics(LABELS, PREDICTIONS, num_classes=4)
    assert np.array(result["confusion_matrix"]).shape == (4, 4)
    assert result["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 4)
    assert metrics.confusion_matrix(LABELS, PREDICTIONS, 4)[3].sum() == 0


def test_unweighted_average_recall_is_the_originals_nanmean_over_labels_present():
    # Labels 0 and 1 present (recall 2/3 and 1/2); label 2 is only predicted: sklearn's macro recall
    # over [0, 1, 2] with zero_division=0 would count it as 0 and give 7/18.
    labels = [0, 0, 0, 1, 1]
    predictions = [0, 0, 2, 1, 2]
    assert metrics.unweighted_average_recall(labels, predictions) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # The original: confusion_matrix rows normalised, nanmean of the diagonal.
    from sklearn.metrics import confusion_matrix
    with np.errstate(invalid="ignore"):
        matrix = confusion_matrix(labels, predictions)
        original = np.nanmean(np.diag(matrix / matrix.sum(axis=1, keepdims=True)))
    assert metrics.unweighted_average_recall(labels, predictions) == pytest.approx(original)
    assert math.isnan(metrics.unweighted_average_recall([], []))


def test_precision_at_k_breaks_ties_by_position():
    relevant = [False, True, True, False, True]
    assert metrics.precision_at_k([0.1, 0.9, 0.8, 0.7, 0.2], relevant, 2) == 1.0
    assert metrics.precision_at_k([0.1, 0.9, 0.8, 0.7, 0.2], relevant, 3) == 2 / 3
    # A flat importance reads as "the first k": positions 0 and 1.
    assert metrics.precision_at_k([0.5] * 5, relevant, 2) == 0.5
    assert metrics.precision_at_k([0.5, 0.5, 0.9, 0.5, 0.5], relevant, 2) == 0.5  # 2, then 0 of the tied
    assert metrics.precision_at_k([0.2, 0.5, 0.9, 0.5, 0.5], relevant, 2) == 1.0  # 2, then 1 of the tied
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_at_k([0.1, 0.2], [True, False], 3)
    with pytest.raises(ValueError, match="one length"):
        metrics.precision_at_k([0.1, 0.2], [True], 1)
