"""What is specific to metric learning: triplet sampling, the triplet loss, semi-hard mining, retrieval metrics.

The original (`train_dml.py`, Chainer) draws each epoch's triplets as: every (anchor, positive)
pair of two different items with the same label, each with a negative from another label, shuffled,
the first 1,000 kept. `sample_triplets` draws from that same distribution directly (a label is chosen
in proportion to its number of pairs), without listing the millions of pairs first.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from common.metrics import knn_accuracy

TRIPLETS_PER_EPOCH = 1000
MARGIN = 0.2
MINING_MODES = ("random", "semi_hard", "batch_all")


def sample_triplets(label_ids, num_triplets: int = TRIPLETS_PER_EPOCH, seed: int | np.random.SeedSequence = 0
                    ) -> np.ndarray:
    """int64 `[num_triplets, 3]` rows (anchor, positive, negative) of item indices.

    anchor != positive share a label; the negative has another label. Labels with fewer than two
    items cannot give a pair; at least one label needs two items and some other label must exist.
    """
    label_ids = np.asarray(label_ids).reshape(-1)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(label_ids, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"triplets need at least two labels; found {len(classes)}")
    pairs = counts.astype(np.float64) * (counts - 1) / 2
    if pairs.sum() == 0:
        raise ValueError("triplets need a label with at least two items; every label has one")
    members = [np.flatnonzero(inverse == index) for index in range(len(classes))]
    chosen = rng.choice(len(classes), size=num_triplets, p=pairs / pairs.sum())
    others: dict[int, np.ndarray] = {}
    triplets = np.empty((num_triplets, 3), dtype=np.int64)
    for row, class_index in enumerate(chosen):
        same = members[class_index]
        if class_index not in others:
            others[class_index] = np.flatnonzero(inverse != class_index)
        anchor, positive = rng.choice(len(same), size=2, replace=False)
        negative = rng.integers(len(others[class_index]))
        triplets[row] = (same[anchor], same[positive], others[class_index][negative])
    return triplets


def epoch_seed(random_seed: int, epoch: int, split: str) -> np.random.SeedSequence:
    """Each (seed, epoch, split) gets its own stream, so a resumed run draws what a straight one would."""
    return np.random.SeedSequence([random_seed, epoch, {"train": 0, "eval": 1}[split]])


def squared_distances(a, b):
    """Row-wise squared Euclidean distance `[batch]`."""
    return ops.sum(ops.square(a - b), axis=-1)


def triplet_losses(anchor, positive, negative, margin: float = MARGIN):
    """Per-triplet max(0, |a-p|^2 - |a-n|^2 + margin), as Chainer's `F.triplet` (mean of these)."""
    return ops.relu(squared_distances(anchor, positive) - squared_distances(anchor, negative) + margin)


def pairwise_squared_distances(x):
    """`[n, n]` squared Euclidean distances (clipped at 0 against round-off)."""
    squares = ops.sum(ops.square(x), axis=-1)
    distances = squares[:, None] - 2.0 * ops.matmul(x, ops.transpose(x)) + squares[None, :]
    return ops.maximum(distances, 0.0)


def semi_hard_negative_distances(embeddings, labels, anchor_index, positive_distances, margin: float = MARGIN):
    """For each anchor, |a-n|^2 of its semi-hard negative among all `embeddings` of the batch.

    Semi-hard (FaceNet): the closest negative that is still farther than the positive,
    d(a,p) < d(a,n); it lies within the margin when any loss is left. An anchor with no such
    negative takes its farthest negative (as TensorFlow Addons' `triplet_semihard_loss`).
    """
    distances = ops.take(pairwise_squared_distances(embeddings), anchor_index, axis=0)  # [b, n]
    anchor_labels = ops.take(labels, anchor_index, axis=0)
    negative = ops.not_equal(anchor_labels[:, None], labels[None, :])
    farther = ops.logical_and(negative, distances > positive_distances[:, None])
    big = ops.max(distances) + 1.0
    closest_farther = ops.min(ops.where(farther, distances, big), axis=1)
    farthest_negative = ops.max(ops.where(negative, distances, -1.0), axis=1)
    has_semi_hard = ops.any(farther, axis=1)
    return ops.where(has_semi_hard, closest_farther, farthest_negative)


def batch_all_triplet_loss(embeddings, labels, margin: float = MARGIN):
    """Mean loss over the active triplets among ALL (a, p, n) of the batch's embeddings `[n, d]` with
    int `labels` `[n]`: a != p of one label, n of another; active = loss > 0 ("batch all", Hermans et
    al. 2017). A scalar (0 when no triplet is active)."""
    distances = pairwise_squared_distances(embeddings)
    same = ops.equal(labels[:, None], labels[None, :])
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
    positive = ops.logical_and(same, not_self)                                        # [a, p]
    valid = ops.logical_and(positive[:, :, None], ops.logical_not(same)[:, None, :])  # [a, p, n]
    losses = ops.relu(distances[:, :, None] - distances[:, None, :] + margin)
    losses = ops.where(valid, losses, 0.0)
    active = ops.sum(ops.cast(losses > 1e-12, "float32"))
    return ops.sum(losses) / ops.maximum(active, 1.0)


def mined_triplet_losses(anchor, positive, negative, anchor_labels, negative_labels,
                         mining: str = "random", margin: float = MARGIN):
    """Losses of a batch of sampled triplets `[batch]`; `semi_hard` replaces each sampled negative by the
    semi-hard negative among all the batch's embeddings (anchors, positives and negatives);
    `batch_all` gives every triplet the batch-all loss over all of them (`batch_all_triplet_loss`)."""
    if mining == "random":
        return triplet_losses(anchor, positive, negative, margin)
    if mining == "batch_all":
        labels = ops.concatenate([anchor_labels, anchor_labels, negative_labels], axis=0)
        loss = batch_all_triplet_loss(ops.concatenate([anchor, positive, negative], axis=0), labels, margin)
        return ops.ones_like(anchor[:, 0]) * loss
    if mining != "semi_hard":
        raise ValueError(f"unknown mining {mining!r}; expected one of {', '.join(MINING_MODES)}")
    batch = ops.shape(anchor)[0]
    embeddings = ops.concatenate([anchor, positive, negative], axis=0)
    labels = ops.concatenate([anchor_labels, anchor_labels, negative_labels], axis=0)
    positive_distances = squared_distances(anchor, positive)
    negative_distances = semi_hard_negative_distances(
        embeddings, labels, ops.arange(batch), positive_distances, margin)
    return ops.relu(positive_distances - negative_distances + margin)


def retrieval_metrics(features, labels, k: int = 10) -> dict[str, float]:
    """Leave-one-out retrieval among the items themselves, cosine similarity:
    kNN accuracy (majority of the k nearest) and precision@1 (the nearest has the same label)."""
    return {f"knn{k}_accuracy": knn_accuracy(features, labels, k=k, metric="cosine"),
            "precision_at_1": knn_accuracy(features, labels, k=1, metric="cosine")}
