"""Triplet loss against hand-computed values, sampling invariants, semi-hard mining, kNN accuracy."""

import numpy as np
import pytest

from bert_dml.triplets import (batch_all_triplet_loss, mined_triplet_losses, sample_triplets,
                               semi_hard_negative_distances, triplet_losses)
from common.metrics import knn_accuracy


def test_triplet_loss_matches_hand_computed_values():
    anchor = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    positive = np.array([[0.3, 0.4], [1.0, 1.0], [1.0, 0.0]], np.float32)
    negative = np.array([[0.0, 0.5], [3.0, 1.0], [0.0, 0.1]], np.float32)
    # |a-p|^2 - |a-n|^2 + 0.2: 0.25 - 0.25 + 0.2 = 0.2;  0 - 4 + 0.2 < 0 -> 0;  1 - 0.01 + 0.2 = 1.19
    losses = np.asarray(triplet_losses(anchor, positive, negative, margin=0.2))
    np.testing.assert_allclose(losses, [0.2, 0.0, 1.19], rtol=1e-6, atol=1e-6)
    assert float(np.mean(losses)) == pytest.approx(1.39 / 3, rel=1e-6)  # Chainer's F.triplet (mean)


def test_sampling_never_pairs_an_item_with_itself_and_negatives_come_from_other_labels():
    labels = np.array([0] * 5 + [1] * 40 + [2] * 2 + [3] * 1)
    triplets = sample_triplets(labels, 3000, seed=1)
    assert triplets.shape == (3000, 3)
    anchor, positive, negative = triplets.T
    assert np.all(anchor != positive)
    assert np.all(labels[anchor] == labels[positive])
    assert np.all(labels[negative] != labels[anchor])
    # Label 3 has one item: never an anchor. Labels are drawn in proportion to their pairs (the
    # original lists all pairs): label 1 has 780 of 791 pairs.
    assert not np.any(labels[anchor] == 3)
    assert np.mean(labels[anchor] == 1) == pytest.approx(780 / 791, abs=0.02)
    # Every other item can be a negative (uniform over the other labels' items).
    assert set(negative[labels[anchor] == 1]) == set(np.flatnonzero(labels != 1))
    np.testing.assert_array_equal(triplets, sample_triplets(labels, 3000, seed=1))
    assert not np.array_equal(triplets, sample_triplets(labels, 3000, seed=2))


def test_sampling_rejects_impossible_label_sets():
    with pytest.raises(ValueError, match="two labels"):
        sample_triplets(np.zeros(5, int), 10)
    with pytest.raises(ValueError, match="at least two items"):
        sample_triplets(np.array([0, 1, 2]), 10)


def test_semi_hard_mining_picks_the_closest_negative_farther_than_the_positive():
    # One anchor at 0 (label 0) with its positive at distance^2 1; negatives (label 1) at 0.25, 2.25, 4.
    embeddings = np.array([[0.0], [1.0], [0.5], [1.5], [2.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 1], np.int32)
    chosen = semi_hard_negative_distances(embeddings, labels, np.array([0]), np.array([1.0], np.float32))
    np.testing.assert_allclose(np.asarray(chosen), [2.25])
    # No negative farther than the positive: the farthest negative (4.0) is used.
    chosen = semi_hard_negative_distances(embeddings, labels, np.array([0]), np.array([5.0], np.float32))
    np.testing.assert_allclose(np.asarray(chosen), [4.0])


def test_semi_hard_mining_replaces_an_easy_sampled_negative_by_another_triplets_item():
    # Triplet 0: anchor 0 (label 0), positive 1 (d^2 = 1), sampled negative 3 (d^2 = 9): easy, loss 0.
    # Triplet 1 (label 1) puts its anchor at 1.05: d^2 = 1.1025 from anchor 0, just beyond the positive,
    # so semi-hard mining takes it: 1 - 1.1025 + 0.2 = 0.0975. Triplet 1 itself: d(a,p) = 0.15^2 = 0.0225;
    # its farther negatives are 0.5 (0.3025) and 0 (1.1025): 0.0225 - 0.3025 + 0.2 < 0, loss 0 either way.
    anchor = np.array([[0.0], [1.05]], np.float32)
    positive = np.array([[1.0], [1.2]], np.float32)
    negative = np.array([[3.0], [0.5]], np.float32)
    anchor_labels, negative_labels = np.array([0, 1]), np.array([1, 0])
    random = np.asarray(mined_triplet_losses(anchor, positive, negative, anchor_labels, negative_labels, "random"))
    semi = np.asarray(mined_triplet_losses(anchor, positive, negative, anchor_labels, negative_labels, "semi_hard"))
    np.testing.assert_allclose(random, [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(semi, [0.0975, 0.0], atol=1e-5)
    with pytest.raises(ValueError, match="unknown mining"):
        mined_triplet_losses(anchor, positive, negative, anchor_labels, negative_labels, "hardest")


def test_batch_all_loss_is_the_mean_over_the_active_triplets_hand_computed():
    # 1-d points 0, 2 (label 0) and 1, 10 (label 1), margin 0.2. The valid triplets (a, p, n) and losses
    # d(a,p) - d(a,n) + 0.2 with squared distances: (0,2 | 1): 4 - 1 = 3.2; (2,0 | 1): 3.2; (0,2 | 10) and
    # (2,0 | 10): inactive; (1,10 | 0): 81 - 1 = 80.2; (1,10 | 2): 80.2; (10,1 | 0): inactive;
    # (10,1 | 2): 81 - 64 = 17.2. Mean over the 5 active: 184 / 5.
    points = np.array([[0.0], [2.0], [1.0], [10.0]], np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    assert float(batch_all_triplet_loss(points, labels, margin=0.2)) == pytest.approx(36.8, rel=1e-5)
    # Through the sampled-triplet interface, every row carries the loss over the batch's 3 x 2 points.
    anchor, positive, negative = points[[0, 3]], points[[1, 2]], points[[2, 1]]
    losses = mined_triplet_losses(anchor, positive, negative, labels[[0, 3]], labels[[2, 1]], mining="batch_all",
                                  margin=0.2)
    joined = batch_all_triplet_loss(np.concatenate([anchor, positive, negative]), labels[[0, 3, 0, 3, 2, 1]], 0.2)
    np.testing.assert_allclose(np.asarray(losses), [float(joined)] * 2, rtol=1e-6)
    # Well separated: nothing is active and the loss is 0.
    assert float(batch_all_triplet_loss(np.array([[0.0], [0.1], [5.0], [5.1]], np.float32), labels)) == 0.0


def test_knn_accuracy_hand_computed():
    # Items on a line; k=1 Euclidean: each takes its nearest neighbour's label.
    features = np.array([[0.0], [1.0], [1.9], [10.0], [10.5], [12.0]])
    labels = np.array([0, 0, 1, 1, 1, 0])
    # nearest: 0->1 (0 ok), 1->2 (1 wrong), 2->1 (0 wrong), 3->4 ok, 4->3 ok, 5->4 (1 wrong)
    assert knn_accuracy(features, labels, k=1, metric="euclidean") == pytest.approx(3 / 6)
    # k=3: 0 sees 1,2,3 (0,1,1 -> 1, wrong); 1 sees 2,0,3 (1,0,1 -> 1, wrong); 2 sees 1,0,3 (0,0,1 -> 0,
    # wrong); 3 sees 4,5,2 (1,0,1 -> 1, right); 4 sees 3,5,2 (right); 5 sees 4,3,2 (1,1,1 -> 1, wrong)
    assert knn_accuracy(features, labels, k=3, metric="euclidean") == pytest.approx(2 / 6)
    # Cosine ignores length: two directions, perfect.
    directions = np.array([[1, 0.1], [5, 0.2], [3, 0.1], [0.1, 1], [0.2, 4], [0.1, 2]])
    assert knn_accuracy(directions, [0, 0, 0, 1, 1, 1], k=2, metric="cosine") == 1.0


def test_l2_normalized_triplet_loss_uses_unit_vectors_and_ignores_scale():
    from bert_dml.model import make_triplet_loss_fn

    # A stand-in model: each "text" is its input_ids row read as a 2-d embedding.
    def model(features, training=False):
        return np.asarray(features["input_ids"], np.float32)

    def batch(anchor, positive, negative):
        features = {}
        for part, rows in (("anchor", anchor), ("positive", positive), ("negative", negative)):
            for key in ("input_ids", "input_mask", "segment_ids"):
                features[f"{part}_{key}"] = np.asarray(rows, np.float32)
        features["anchor_label"] = np.zeros(len(anchor), np.int32)
        features["negative_label"] = np.ones(len(anchor), np.int32)
        return features

    # a = (3, 0) -> (1, 0); p = (0, 2) -> (0, 1): |a-p|^2 = 2; n = (-5, 0) -> (-1, 0): |a-n|^2 = 4.
    # Second triplet: n = (0, -1): |a-n|^2 = 2, loss = 2 - 2 + 0.2.
    features = batch([[3, 0], [3, 0]], [[0, 2], [0, 2]], [[-5, 0], [0, -1]])
    total, count = make_triplet_loss_fn("random", 0.2, l2_normalize=True)(model, features, True)
    assert float(total) == pytest.approx(0.0 + 0.2, abs=1e-6) and float(count) == 2
    # Raw distances (the original): |a-p|^2 = 13, |a-n|^2 = 64 and 10 -> losses 0 and 3.2.
    total, _ = make_triplet_loss_fn("random", 0.2)(model, features, True)
    assert float(total) == pytest.approx(3.2, abs=1e-5)
    scaled = {key: value * 7 if key.endswith("input_ids") else value for key, value in features.items()}
    total, _ = make_triplet_loss_fn("random", 0.2, l2_normalize=True)(model, scaled, True)
    assert float(total) == pytest.approx(0.2, abs=1e-6)
