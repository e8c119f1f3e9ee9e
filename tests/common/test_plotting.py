"""Plots: CJK glyphs really drawn (not boxes), clean fallback without a font, deterministic
projections that keep planted clusters apart, non-overlapping labels, atomic PNGs."""

import os

import numpy as np
import pytest

from common import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def render_text(text, font):
    """The Agg pixels of `text` drawn alone with `font`."""
    figure, ax = plotting.new_figure(size=(1.2, 0.8))
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, fontproperties=font, fontsize=24, ha="center", va="center")
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., 0].copy()


@pytest.fixture
def no_cjk_font(monkeypatch):
    """No installed CJK family and no packaged font: what a bare machine looks like."""
    monkeypatch.setattr(plotting, "_CJK_FAMILY_PATTERN", plotting.re.compile(r"(?!)"))
    monkeypatch.setattr(plotting, "_PACKAGED_FONTS", ())
    plotting.cjk_font.cache_clear()
    plotting.cjk_font_path.cache_clear()
    yield
    plotting.cjk_font.cache_clear()
    plotting.cjk_font_path.cache_clear()


def test_cjk_font_draws_japanese_and_simplified_chinese():
    font = plotting.cjk_font()
    if font is None:
        pytest.skip("no CJK-capable font on this machine (notojp-matplotlib not installed)")
    assert plotting._missing_glyphs(font.get_file()) == ""
    # Distinct characters give distinct pictures; a font without them draws the same empty box for each.
    pictures = [render_text(char, font) for char in "草哈弹幕カ"]
    for index, picture in enumerate(pictures):
        assert (picture < 128).sum() > 20  # ink was drawn
        for other in pictures[index + 1:]:
            assert not np.array_equal(picture, other)


def test_without_cjk_font_warns_and_still_draws_labels(no_cjk_font, tmp_path):
    with pytest.warns(UserWarning, match="no CJK-capable font"):
        assert plotting.cjk_font() is None
    path = tmp_path / "fallback.png"
    plotting.scatter_2d(np.array([[0.0, 0.0], [1.0, 1.0]]), labels=["弾幕", "草"], texts=["哈哈", "awsl"],
                        path=path, title="弹幕")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_project_2d_is_deterministic_and_keeps_planted_clusters_apart():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(3, 120))
    labels = np.repeat(np.arange(3), 20)
    features = centres[labels] + rng.normal(size=(60, 120))
    points = plotting.project_2d(features, random_seed=1, num_threads=1)
    assert points.shape == (60, 2) and points.dtype == np.float32
    np.testing.assert_array_equal(points, plotting.project_2d(features, random_seed=1, num_threads=1))
    # Every point's nearest neighbour in 2-D belongs to its own cluster.
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(1)] == labels).all()
    pca = plotting.project_2d(features, method="pca")
    assert pca.shape == (60, 2)
    assert plotting.project_2d(features[:2], num_threads=1).shape == (2, 2)
    with pytest.raises(ValueError, match="NaN"):
        plotting.project_2d(np.full((5, 3), np.nan))


def test_scatter_labels_do_not_overlap_and_png_is_written_atomically(tmp_path):
    # Ten points almost on top of each other: a naive plot would stack all ten labels.
    points = np.array([[0.5 + 0.001 * i, 0.5] for i in range(10)] + [[0.0, 0.0], [1.0, 1.0]])
    texts = [f"label{i}" for i in range(10)] + ["草", "弹幕"]
    path = tmp_path / "plots" / "scatter.png"
    figure = plotting.scatter_2d(points, labels=["a"] * 6 + ["b"] * 6, texts=texts, path=path, title="map")
    assert path.read_bytes()[:8] == PNG_MAGIC and os.listdir(path.parent) == ["scatter.png"]
    ax = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in ax.texts if text.get_text()]
    assert sorted(text.get_text() for text in ax.texts if text.get_text()) == sorted(texts)
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert overlapping == []
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["a", "b"]
    with pytest.raises(ValueError, match="labels has 1 entries"):
        plotting.scatter_2d(points, labels=["a"])


def test_plot_curves_skips_missing_points(tmp_path):
    path = tmp_path / "loss.png"
    figure = plotting.plot_curves({"main/loss": [1.0, 0.7, 0.5], "validation/main/loss": [1.2, None, 0.9]}, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    lines = figure.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2, 3], [1, 3]]
    # An explicit x series is used as the x axis, not drawn as a curve.
    figure = plotting.plot_curves({"step": [10, 20], "loss": [2.0, 1.0]}, tmp_path / "steps.png", xlabel="step")
    assert [list(line.get_xdata()) for line in figure.axes[0].get_lines()] == [[10, 20]]
