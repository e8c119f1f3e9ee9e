r"""2-D t-SNE picture of a features file, points coloured by label (the original's `plot_features.py`).

    python -m bert_dml.plot_features --input rt-dml-04-test.txt --output plot_rt-dml-04-test.png

Wider features are reduced to 50 dimensions with PCA first. Japanese labels render with a CJK font
when the machine has one (common.plotting finds it; otherwise a warning and boxes).
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python bert_dml/plot_features.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

flags.DEFINE_string("input", None, "The features file (the original's flag; or give it as the argument).")
flags.DEFINE_string("output", None, "PNG to write (the original's flag; default: the features file with .png).")
flags.DEFINE_string("out", None, "Same as --output.")
flags.DEFINE_string("title", None, "Picture title (default: the file name).")
flags.DEFINE_integer("samples", None, "Plot a stratified sample of this many items.")
flags.DEFINE_integer("random_seed", 0, "Seed of t-SNE and of the sample.")
FLAGS = flags.FLAGS


def plot_features_file(features_path: str, out: str, title: str | None = None, samples: int | None = None,
                       random_seed: int = 0) -> str:
    import numpy as np

    from bert_dml.feature_files import read_features
    from common.plotting import project_2d, scatter_2d

    labels, features = read_features(features_path)
    if samples and samples < len(labels):
        from sklearn.model_selection import train_test_split
        keep, _ = train_test_split(np.arange(len(labels)), train_size=samples, random_state=random_seed,
                                   stratify=labels)
        labels, features = [labels[index] for index in sorted(keep)], features[np.sort(keep)]
    points = project_2d(features, method="tsne", pca_dims=50, random_seed=random_seed)
    scatter_2d(points, labels=labels, path=out, title=title or os.path.basename(features_path))
    return out


def main(argv):
    paths = ([FLAGS.input] if FLAGS.input else []) + list(argv[1:])
    if len(paths) != 1:
        raise cli.UserError("usage: python -m bert_dml.plot_features --input FEATURES.txt [--output plot.png]")
    if FLAGS.output and FLAGS.out and FLAGS.output != FLAGS.out:
        raise cli.UserError("--output and --out name different files: give one")
    features_path = paths[0]
    out = FLAGS.output or FLAGS.out or os.path.splitext(features_path)[0] + ".png"
    print(plot_features_file(features_path, out, FLAGS.title, FLAGS.samples, FLAGS.random_seed))


if __name__ == "__main__":
    cli.run(main)
