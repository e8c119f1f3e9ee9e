r"""One table comparing feature files: the numbers the original's pictures were standing in for.

    python -m bert_dml.compare --features rt-dml-04-test.txt rt-clsed-04-test.txt rt-embed-04-test.txt

Per file: kNN-10 accuracy (leave-one-out, cosine), linear-probe accuracy (logistic regression,
5-fold cross-validation), NMI of k-means with k = number of labels, silhouette (cosine) of the labels.
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python bert_dml/compare.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

flags.DEFINE_list("features", None, "Feature files (comma-separated, or listed after the flag).")
flags.DEFINE_string("json", None, "Also write the table here as JSON.")
flags.DEFINE_integer("k", 10, "Neighbours of the kNN accuracy.")
flags.DEFINE_integer("random_seed", 0, "Seed of k-means and of the probe's folds.")
FLAGS = flags.FLAGS


def compare_files(paths, k: int = 10, random_seed: int = 0) -> list[dict]:
    from bert_dml.analysis import embedding_quality
    from bert_dml.feature_files import read_features

    rows = []
    for path in paths:
        labels, features = read_features(path)
        if len(set(labels)) < 2:
            raise cli.UserError(f"{path}: the comparison needs at least two labels")
        rows.append({"features": os.path.splitext(os.path.basename(path))[0], "path": path,
                     **embedding_quality(features, labels, k=k, random_seed=random_seed)})
    return rows


def main(argv):
    from bert_dml.analysis import format_table
    from common.io_utils import atomic_write_json

    paths = list(FLAGS.features or []) + list(argv[1:])
    if not paths:
        raise cli.UserError("give feature files: --features a.txt b.txt ...")
    rows = compare_files(paths, FLAGS.k, FLAGS.random_seed)
    print(format_table(rows, ("items", "width", f"knn{FLAGS.k}_accuracy", "linear_probe_accuracy",
                              "kmeans_nmi", "silhouette"), "features"))
    if FLAGS.json:
        atomic_write_json(FLAGS.json, rows)


if __name__ == "__main__":
    cli.run(main)
