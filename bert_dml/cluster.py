r"""Clustering comparison of a features file (the original's `scikit-clustering.py`), with numbers.

    python -m bert_dml.cluster rt-dml-04-test.txt [--out clusters.png] [--json clusters.json]

k-means, agglomerative (Ward), spectral, DBSCAN, OPTICS, Birch and a Gaussian mixture, with the
number of clusters = the number of labels. Prints a table of adjusted Rand index, NMI and silhouette
per algorithm (the first row scores the true labels), saves it as JSON, and draws a grid PNG: the
t-SNE picture coloured by the labels, then by each algorithm's clusters (black: noise).
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python bert_dml/cluster.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

flags.DEFINE_string("out", None, "Grid PNG (default: <features>-clusters.png).")
flags.DEFINE_string("json", None, "Table as JSON (default: <features>-clusters.json).")
flags.DEFINE_integer("samples", None, "Cluster a stratified sample of this many items (the original's --samples).")
flags.DEFINE_boolean("dim2", False, "Cluster the 2-D t-SNE points instead of the features (the original's --dim2).")
flags.DEFINE_boolean("noplot", False, "Skip the grid PNG (and t-SNE, unless --dim2).")
flags.DEFINE_integer("random_seed", 43, "Seed of sampling, t-SNE and the algorithms (the original's 43).")
FLAGS = flags.FLAGS

COLUMNS = ("ari", "nmi", "silhouette", "clusters", "noise", "seconds")


def draw_grid(points, predictions: dict, path: str, title: str) -> None:
    """One t-SNE panel per clustering (the first coloured by the true labels), as the original's grid."""
    import numpy as np

    from common.plotting import cjk_font, new_figure, save_figure

    font = cjk_font()
    palette = np.array(["#377eb8", "#ff7f00", "#4daf4a", "#f781bf", "#a65628", "#984ea3",
                        "#999999", "#e41a1c", "#dede00"])
    names = list(predictions)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    figure, axes = new_figure(rows, columns, size=(4 * columns, 4 * rows))
    axes = np.atleast_1d(axes).ravel()
    for axis in axes:
        axis.set_xticks(())
        axis.set_yticks(())
        axis.set_visible(False)
    for axis, name in zip(axes, names):
        axis.set_visible(True)
        ids = predictions[name]
        colours = np.where(ids < 0, "#000000", palette[np.maximum(ids, 0) % len(palette)])
        axis.scatter(points[:, 0], points[:, 1], s=6, c=colours)
        axis.set_title(name, fontproperties=font)
    figure.suptitle(title, fontproperties=font)
    save_figure(figure, path)


def cluster_file(features_path: str, out: str | None, json_path: str, samples: int | None = None,
                 dim2: bool = False, random_seed: int = 43) -> list[dict]:
    import numpy as np

    from bert_dml.analysis import cluster_features
    from bert_dml.feature_files import read_features
    from common.io_utils import atomic_write_json

    labels, features = read_features(features_path)
    if samples and samples < len(labels):
        from sklearn.model_selection import train_test_split
        keep, _ = train_test_split(np.arange(len(labels)), train_size=samples, random_state=random_seed,
                                   stratify=labels)
        keep = np.sort(keep)
        labels, features = [labels[index] for index in keep], features[keep]
    if len(set(labels)) < 2:
        raise cli.UserError(f"{features_path}: clustering needs at least two labels")
    points = None
    if out or dim2:
        from common.plotting import project_2d
        points = project_2d(features, method="tsne", pca_dims=50, random_seed=random_seed)
    rows, predictions = cluster_features(points if dim2 else features, labels, random_seed=random_seed)
    atomic_write_json(json_path, {"features": features_path, "items": len(labels),
                                  "labels": sorted(set(labels)), "clustered": "tsne-2d" if dim2 else "features",
                                  "results": rows})
    if out:
        draw_grid(points, predictions, out, os.path.basename(features_path))
    return rows


def main(argv):
    from bert_dml.analysis import format_table

    if len(argv) != 2:
        raise cli.UserError("usage: python -m bert_dml.cluster FEATURES.txt [--out grid.png] [--json table.json]")
    features_path = argv[1]
    stem = os.path.splitext(features_path)[0]
    out = None if FLAGS.noplot else (FLAGS.out or stem + "-clusters.png")
    json_path = FLAGS.json or stem + "-clusters.json"
    rows = cluster_file(features_path, out, json_path, FLAGS.samples, FLAGS.dim2, FLAGS.random_seed)
    print(format_table(rows, COLUMNS, "algorithm"))
    print(f"table: {json_path}" + (f"  grid: {out}" if out else ""))


if __name__ == "__main__":
    cli.run(main)
