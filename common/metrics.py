"""Ranking and classification metrics shared by every package: numpy in, plain Python floats out.

Ranking metrics work on 0-based ranks of one relevant item among its candidates (rank 0 = top),
the setting of BERT4Rec's leave-one-out evaluation and of any "pick the gold candidate" task;
`precision_at_k` scores one ranking with several relevant items (e.g. an explanation's top inputs).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

# Metric names in the order the original BERT4Rec run.py prints them.
DEFAULT_KS = (1, 5, 10)
MRR_KEY = "ap"  # run.py accumulates 1/(rank+1) under the name `ap`: it is the mean reciprocal rank.
COUNT_KEY = "valid_user"


def target_ranks(scores, target_index=0, candidate_mask=None) -> np.ndarray:
    """0-based rank of each row's target among that row's candidates; ties count AGAINST the target.

    rank = (#other candidates scoring strictly higher) + (#other candidates scoring exactly the same).
    Why pessimistic ties: a constant or untrained model ties everything, and must then rank last rather
    than first. (The original `argsort().argsort()` broke ties by position, i.e. arbitrarily; with the
    target in column 0 a constant model would have scored hit@1 = 1.) NaN scores count as the lowest
    possible score, so a NaN target ranks last too.

    Args:
      scores: [num_rows, num_candidates] scores, higher is better.
      target_index: column of the target, an int for all rows or an int array [num_rows].
      candidate_mask: optional bool [num_rows, num_candidates]; False columns are not candidates
        (the target's own column is always treated as a candidate).
    Returns:
      int64 array [num_rows].
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [rows, candidates], got shape {scores.shape}")
    num_rows, num_candidates = scores.shape
    target_index = np.broadcast_to(np.asarray(target_index, dtype=np.int64), (num_rows,))
    if np.any((target_index < 0) | (target_index >= num_candidates)):
        raise ValueError("target_index out of range")
    # NaN -> -inf makes NaNs the lowest scores while keeping `>=` meaningful.
    scores = np.where(np.isnan(scores), -np.inf, scores)
    rows = np.arange(num_rows)
    target_scores = scores[rows, target_index]
    at_least_as_good = scores >= target_scores[:, None]
    if candidate_mask is not None:
        candidate_mask = np.asarray(candidate_mask, dtype=bool)
        if candidate_mask.shape != scores.shape:
            raise ValueError(f"candidate_mask shape {candidate_mask.shape} != scores shape {scores.shape}")
        at_least_as_good &= candidate_mask
    at_least_as_good[rows, target_index] = False  # the target does not compete with itself
    return at_least_as_good.sum(axis=1).astype(np.int64)


def _as_ranks(ranks) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {ranks.shape}")
    if ranks.size and (ranks.min() < 0):
        raise ValueError("ranks are 0-based and must be non-negative")
    return ranks.astype(np.int64)


def _mean(values: np.ndarray) -> float:
    # An empty evaluation has no defined average; NaN says so without a numpy warning.
    return float(values.mean()) if values.size else float("nan")


def hit_at_k(ranks, k: int) -> float:
    """Fraction of rows whose target is among the top k (rank < k)."""
    ranks = _as_ranks(ranks)
    return _mean((ranks < k).astype(np.float64))


def ndcg_at_k(ranks, k: int) -> float:
    """NDCG@k with a single relevant item: 1/log2(rank + 2) if rank < k else 0, averaged over rows."""
    ranks = _as_ranks(ranks)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return _mean(gains)


def mean_reciprocal_rank(ranks) -> float:
    """Mean of 1/(rank + 1); the original BERT4Rec prints this as `ap`."""
    ranks = _as_ranks(ranks)
    return _mean(1.0 / (ranks + 1.0))


def precision_at_k(scores, relevant, k: int) -> float:
    """Share of relevant items among the `k` of highest score, for ONE ranking with any number of
    relevant items. `scores`, `relevant` (bools): `[n]`. Ties go to the earlier position, so a flat score
    reads as "the first k"."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 1:
        raise ValueError(f"scores and relevant must be 1-D of one length, got {scores.shape} and {relevant.shape}")
    if not 1 <= k <= scores.size:
        raise ValueError(f"k must be 1..{scores.size}, got {k}")
    top = np.argsort(-scores, kind="stable")[:k]  # stable: equal scores keep their order
    return float(relevant[top].mean())


def ranking_metric_names(ks: Iterable[int] = DEFAULT_KS) -> list[str]:
    """Keys of `ranking_metrics`, in the original print order."""
    names = []
    for k in ks:
        names += [f"ndcg@{k}", f"hit@{k}"]
    return names + [MRR_KEY, COUNT_KEY]


def ranking_metrics(ranks, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """{ndcg@k, hit@k for each k, ap (= MRR), valid_user (= number of rows, an int)}."""
    ranks = _as_ranks(ranks)
    result = {}
    for k in ks:
        result[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
        result[f"hit@{k}"] = hit_at_k(ranks, k)
    result[MRR_KEY] = mean_reciprocal_rank(ranks)
    result[COUNT_KEY] = int(ranks.size)
    return result


# ----------------------------------------------------------------------------------------------
# Classification metrics: thin sklearn wrappers with one convention (labels fix the class set, a
# class never predicted scores 0 instead of warning).


def _labels_and_predictions(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    return labels, predictions


def accuracy(labels, predictions) -> float:
    labels, predictions = _labels_and_predictions(labels, predictions)
    return _mean((labels == predictions).astype(np.float64))


def macro_precision_recall_f1(labels, predictions, class_ids: Sequence[int] | None = None) -> dict:
    """Unweighted means over classes of precision, recall and F1 (0 where undefined)."""
    labels, predictions = _labels_and_predictions(labels, predictions)
    precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=class_ids, average="macro", zero_division=0)
    return {"precision_macro": float(precision), "recall_macro": float(recall), "f1_macro": float(f1)}


def unweighted_average_recall(labels, predictions) -> float:
    """UAR as haradatm/nlp computes it: the mean recall over the classes present in `labels`
    (`nanmean` of the row-normalised confusion matrix's diagonal; a class that is only predicted has
    a 0/0 row and is left out, not counted as 0). NaN without labels."""
    labels, predictions = _labels_and_predictions(labels, predictions)
    present = np.unique(labels)
    if present.size == 0:
        return float("nan")
    return float(np.mean([np.mean(predictions[labels == label] == label) for label in present]))


def confusion_matrix(labels, predictions, num_classes: int | None = None) -> np.ndarray:
    """int64 [num_classes, num_classes]; entry [i, j] counts examples of true class i predicted as j."""
    labels, predictions = _labels_and_predictions(labels, predictions)
    class_ids = None if num_classes is None else np.arange(num_classes)
    return sk_metrics.confusion_matrix(labels, predictions, labels=class_ids).astype(np.int64)


def classification_metrics(labels, predictions, num_classes: int | None = None) -> dict:
    """accuracy, macro precision/recall/F1, and the confusion matrix as nested lists (JSON-ready)."""
    class_ids = None if num_classes is None else list(range(num_classes))
    result = {"accuracy": accuracy(labels, predictions)}
    result.update(macro_precision_recall_f1(labels, predictions, class_ids))
    result["confusion_matrix"] = confusion_matrix(labels, predictions, num_classes).tolist()
    result["num_examples"] = int(np.asarray(labels).size)
    return result


# ----------------------------------------------------------------------------------------------
# Embedding quality (added for bert_dml): leave-one-out nearest-neighbour classification.


def knn_accuracy(features, labels, k: int = 10, metric: str = "cosine") -> float:
    """Leave-one-out k-nearest-neighbour accuracy: each item takes the majority label of its k
    nearest other items (`metric` "cosine" or "euclidean"); a tied vote goes to the tied label
    whose nearest member is closest. Items are compared in blocks, so memory stays O(block * n)."""
    features = np.asarray(features, dtype=np.float64)
    _, labels = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
    count = features.shape[0]
    if features.ndim != 2 or count != labels.size:
        raise ValueError(f"features {features.shape} and {labels.size} labels do not match")
    if not 1 <= k < count:
        raise ValueError(f"k={k} must be between 1 and the number of items - 1 ({count - 1})")
    if metric == "cosine":
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.maximum(norms, 1e-12)
    elif metric != "euclidean":
        raise ValueError(f"unknown metric {metric!r}; expected 'cosine' or 'euclidean'")
    squares = np.sum(features ** 2, axis=1)
    num_classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, count, 1024):
        block = slice(start, min(start + 1024, count))
        # Squared Euclidean; on unit vectors it orders neighbours exactly as cosine similarity does.
        distances = squares[block, None] - 2.0 * features[block] @ features.T + squares[None, :]
        rows = np.arange(distances.shape[0])
        distances[rows, rows + start] = np.inf  # leave the item itself out
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1, kind="stable")
        nearest = np.take_along_axis(nearest, order, axis=1)  # by distance, closest first
        neighbour_labels = labels[nearest]
        votes = np.zeros((len(rows), num_classes), dtype=np.int64)
        np.add.at(votes, (rows[:, None], neighbour_labels), 1)
        # Among tied labels, the first to appear in distance order wins.
        top = votes.max(axis=1, keepdims=True)
        tied = votes[rows[:, None], neighbour_labels] == top
        predictions = neighbour_labels[rows, np.argmax(tied, axis=1)]
        correct += int(np.sum(predictions == labels[block]))
    return correct / count
