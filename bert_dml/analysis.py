"""What the original's pictures stand in for, as numbers: clustering quality and embedding quality.

All with scikit-learn. `cluster_features` runs the original `scikit-clustering.py` line-up with the
number of clusters = the number of labels; `embedding_quality` gives the comparison table's row.
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import numpy as np

from common.metrics import knn_accuracy

ALGORITHMS = ("KMeans", "Ward", "Spectral", "DBSCAN", "OPTICS", "Birch", "GaussianMixture")


def label_ids(labels: Sequence[str]) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1]


def _density_eps(features: np.ndarray, min_samples: int) -> float:
    """DBSCAN's radius from the data (the original's fixed 0.3 finds nothing in 512-d features):
    the median distance of an item to its `min_samples`-th nearest neighbour."""
    from sklearn.neighbors import NearestNeighbors
    distances, _ = NearestNeighbors(n_neighbors=min_samples + 1).fit(features).kneighbors(features)
    return float(np.median(distances[:, -1])) or 1e-6


def make_algorithms(features: np.ndarray, num_clusters: int, random_seed: int = 0) -> dict:
    from sklearn import cluster, mixture
    from sklearn.neighbors import kneighbors_graph

    count = len(features)
    neighbours = max(2, min(10, count - 1))
    # The original's structured Ward: a symmetric k-nearest-neighbour connectivity graph.
    connectivity = kneighbors_graph(features, n_neighbors=neighbours, include_self=False)
    connectivity = 0.5 * (connectivity + connectivity.T)
    min_samples = max(2, min(20, count // 10))
    return {
        "KMeans": cluster.KMeans(n_clusters=num_clusters, n_init=10, random_state=random_seed),
        "Ward": cluster.AgglomerativeClustering(n_clusters=num_clusters, linkage="ward",
                                                connectivity=connectivity),
        "Spectral": cluster.SpectralClustering(n_clusters=num_clusters, eigen_solver="arpack",
                                               affinity="nearest_neighbors", n_neighbors=neighbours,
                                               random_state=random_seed),
        "DBSCAN": cluster.DBSCAN(eps=_density_eps(features, min_samples), min_samples=min_samples),
        "OPTICS": cluster.OPTICS(min_samples=min_samples, xi=0.05, min_cluster_size=0.1),
        # Birch's default threshold (0.5) is absolute: scaled to the data as DBSCAN's radius is.
        "Birch": cluster.Birch(n_clusters=num_clusters, threshold=_density_eps(features, min_samples) / 2),
        "GaussianMixture": mixture.GaussianMixture(n_components=num_clusters, covariance_type="full",
                                                   reg_covar=1e-4, random_state=random_seed),
    }


def clustering_scores(features: np.ndarray, true_ids: np.ndarray, predicted: np.ndarray) -> dict:
    """ARI and NMI against the labels (DBSCAN/OPTICS noise, -1, counts as one more cluster) and the
    silhouette of the clustering (None when it has fewer than two clusters)."""
    from sklearn import metrics

    clusters = len(set(predicted.tolist()))
    silhouette = None
    if 2 <= clusters < len(predicted):
        silhouette = float(metrics.silhouette_score(features, predicted))
    return {"ari": float(metrics.adjusted_rand_score(true_ids, predicted)),
            "nmi": float(metrics.normalized_mutual_info_score(true_ids, predicted)),
            "silhouette": silhouette, "clusters": clusters,
            "noise": int(np.sum(predicted == -1))}


def cluster_features(features: np.ndarray, labels: Sequence[str], random_seed: int = 0,
                     algorithms: Sequence[str] = ALGORITHMS) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Runs each algorithm with k = number of labels; -> (table rows, predicted cluster ids by name).

    The first row, "labels", scores the true labels themselves (ARI = NMI = 1, their silhouette).
    """
    true_ids = label_ids(labels)
    num_clusters = len(np.unique(true_ids))
    rows = [{"algorithm": "labels", **clustering_scores(features, true_ids, true_ids), "seconds": 0.0}]
    predictions = {"labels": true_ids}
    made = make_algorithms(features, num_clusters, random_seed)
    for name in algorithms:
        algorithm = made[name]
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # disconnected kNN graphs, non-converged mixtures
            algorithm.fit(features)
        predicted = (algorithm.labels_ if hasattr(algorithm, "labels_") else algorithm.predict(features))
        predicted = np.asarray(predicted, dtype=np.int64)
        predictions[name] = predicted
        rows.append({"algorithm": name, **clustering_scores(features, true_ids, predicted),
                     "seconds": time.perf_counter() - started})
    return rows, predictions


def linear_probe_accuracy(features: np.ndarray, ids: np.ndarray, folds: int = 5, random_seed: int = 0) -> float:
    """Mean accuracy of a logistic regression over stratified `folds`-fold cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = max(2, min(folds, int(np.bincount(ids).min())))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_seed)
    return float(np.mean(cross_val_score(probe, features, ids, cv=splits)))


def embedding_quality(features: np.ndarray, labels: Sequence[str], k: int = 10, random_seed: int = 0) -> dict:
    """kNN-k accuracy (leave-one-out, cosine), linear-probe accuracy (5-fold CV), NMI of k-means with
    k = number of labels, and the silhouette (cosine) of the true labels."""
    from sklearn import cluster, metrics

    ids = label_ids(labels)
    num_labels = len(np.unique(ids))
    kmeans = cluster.KMeans(n_clusters=num_labels, n_init=10, random_state=random_seed).fit(features)
    return {"items": len(ids), "width": int(features.shape[1]),
            f"knn{k}_accuracy": knn_accuracy(features, ids, k=min(k, len(ids) - 1), metric="cosine"),
            "linear_probe_accuracy": linear_probe_accuracy(features, ids, random_seed=random_seed),
            "kmeans_nmi": float(metrics.normalized_mutual_info_score(ids, kmeans.labels_)),
            "silhouette": float(metrics.silhouette_score(features, ids, metric="cosine"))}


def format_table(rows: Sequence[dict], columns: Sequence[str], first: str) -> str:
    """A plain-text table: `first` column left-aligned, numbers with three decimals ("-" for None)."""
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)
    header = [first, *columns]
    body = [[str(row[first]), *(cell(row.get(column)) for column in columns)] for row in rows]
    widths = [max(len(line[index]) for line in [header, *body]) for index in range(len(header))]
    lines = []
    for line in [header, *body]:
        lines.append("  ".join([line[0].ljust(widths[0])] + [value.rjust(width)
                                                              for value, width in zip(line[1:], widths[1:])]))
    return "\n".join(lines)
