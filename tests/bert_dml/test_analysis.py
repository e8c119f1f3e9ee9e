"""Feature files, the comparison table and the t-SNE picture (Japanese labels) on planted clusters."""

import os

import numpy as np
import pytest

from bert_dml.analysis import embedding_quality
from bert_dml.feature_files import read_features, write_features
from common.cli import UserError


def planted(rng, separation):
    labels = ["エンジン"] * 20 + ["制動装置"] * 20
    centres = {"エンジン": np.full(8, -separation / 2), "制動装置": np.full(8, separation / 2)}
    features = np.stack([centres[label] + rng.normal(size=8) for label in labels]).astype(np.float32)
    return labels, features


def test_feature_files_round_trip_with_six_decimals(tmp_path):
    path = tmp_path / "f.txt"
    with open(path, "w", encoding="utf-8") as handle:
        write_features(handle, ["a", "ラベル"], np.array([[0.1234567, -2.0], [1.0, 0.0]], np.float32))
    assert path.read_text(encoding="utf-8").splitlines() == ["a\t0.123457\t-2.000000", "ラベル\t1.000000\t0.000000"]
    labels, features = read_features(str(path))
    assert labels == ["a", "ラベル"] and features.shape == (2, 2)
    path.write_text("a\t1\t2\nb\t1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"f\.txt:2: 1 features, but the lines before have 2"):
        read_features(str(path))


def test_comparison_numbers_rank_separated_features_above_mixed_ones():
    rng = np.random.default_rng(0)
    labels, separated = planted(rng, separation=3.0)
    _, mixed = planted(rng, separation=0.0)
    good, bad = embedding_quality(separated, labels), embedding_quality(mixed, labels)
    assert good["knn10_accuracy"] > 0.9 and bad["knn10_accuracy"] < 0.75
    assert good["linear_probe_accuracy"] > 0.9
    assert good["kmeans_nmi"] > 0.6 > bad["kmeans_nmi"]
    assert good["silhouette"] > bad["silhouette"]


def test_plot_with_japanese_labels_draws_every_glyph(tmp_path):
    """The legend's Japanese labels are drawn in a font that has their glyphs: any missing-glyph or
    font-fallback warning while drawing is an error here (a box instead of a character)."""
    import warnings

    from matplotlib import font_manager

    from bert_dml.plot_features import plot_features_file
    from common.plotting import project_2d, scatter_2d

    rng = np.random.default_rng(1)
    labels, features = planted(rng, separation=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = scatter_2d(project_2d(features, random_seed=0), labels=labels, title="制動装置 と エンジン")
        figure.canvas.draw()
    texts = [text for text in figure.findobj(lambda artist: hasattr(artist, "get_fontproperties")
                                             and hasattr(artist, "get_text")) if text.get_text()]
    drawn = {text.get_text(): text for text in texts}
    assert {"エンジン", "制動装置", "制動装置 と エンジン"} <= set(drawn)
    for string, text in drawn.items():
        font_path = font_manager.findfont(text.get_fontproperties(), fallback_to_default=False)
        charmap = font_manager.get_font(font_path).get_charmap()
        missing = [char for char in string if not char.isspace() and ord(char) not in charmap]
        assert not missing, (string, font_path, missing)

    path = tmp_path / "f.txt"
    with open(path, "w", encoding="utf-8") as handle:
        write_features(handle, labels, features)
    out = plot_features_file(str(path), str(tmp_path / "plot.png"))
    assert os.path.getsize(out) > 5000


def test_plot_features_takes_the_originals_input_and_output_flags(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "f.txt"
    with open(path, "w", encoding="utf-8") as handle:
        write_features(handle, *planted(np.random.default_rng(2), separation=3.0))
    result = subprocess.run([sys.executable, "-m", "bert_dml.plot_features", f"--input={path}",
                             f"--output={tmp_path / 'result.png'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.getsize(tmp_path / "result.png") > 5000
