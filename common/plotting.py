"""Figures for the suite: CJK-capable fonts, PCA -> t-SNE projections, labelled scatter plots, curves.

Everything draws on `matplotlib.figure.Figure` with the Agg canvas (no pyplot state, no display
needed) and PNGs are written atomically. Japanese and Chinese labels need a font with those glyphs:
`cjk_font()` looks for an installed one (Noto/Source Han, IPA, WenQuanYi, Droid Sans Fallback, ...)
and otherwise uses Noto Sans CJK JP shipped by the `notojp-matplotlib` package (a full pan-CJK font:
kana, Japanese kanji and simplified Chinese); with neither it warns once and labels are still drawn.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import re
import warnings
from typing import Mapping, Sequence

import numpy as np

import matplotlib
import matplotlib.ticker
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.io_utils import atomic_path

# Characters a usable font must have: kanji/hanzi shared by both, simplified-only (弹), kana.
CJK_PROBE = "草哈弹幕你们说カタカナひらがな"
_CJK_FAMILY_PATTERN = re.compile(
    r"Noto (Sans|Serif)( Mono)? CJK|Source Han|IPAex|IPA(P)?(Gothic|Mincho)|WenQuanYi|Droid Sans Fallback|"
    r"SimHei|SimSun|Microsoft YaHei|PingFang|Hiragino|AR PL|Takao|VL Gothic|Yu Gothic|MS Gothic|Meiryo|"
    r"Noto Sans (JP|SC|TC)|Unifont", re.IGNORECASE)
_PACKAGED_FONTS = (("notojp_matplotlib", os.path.join("fonts", "NotoSansCJKjp-Regular.otf")),)


def _missing_glyphs(path: str, text: str = CJK_PROBE) -> str:
    try:
        charmap = font_manager.get_font(path).get_charmap()
    except Exception:  # an unreadable font file covers nothing
        return text
    return "".join(char for char in text if ord(char) not in charmap)


def _packaged_font_paths() -> list[str]:
    paths = []
    for package, relative in _PACKAGED_FONTS:
        # find_spec locates the package without importing it (notojp_matplotlib's import changes rcParams).
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(location, relative)
            if os.path.isfile(path):
                paths.append(path)
    return paths


@functools.lru_cache(maxsize=None)
def cjk_font_path() -> str | None:
    """Path of a font that draws every character of `CJK_PROBE`, preferring installed fonts; else None."""
    installed = sorted({entry.fname for entry in font_manager.fontManager.ttflist
                        if _CJK_FAMILY_PATTERN.search(entry.name)})
    partial = []
    for path in installed + _packaged_font_paths():
        missing = _missing_glyphs(path)
        if not missing:
            return path
        if len(missing) < len(CJK_PROBE):
            partial.append((len(missing), path, missing))
    if partial:
        _, path, missing = min(partial)
        warnings.warn(f"no installed font draws all of {CJK_PROBE!r}; using {path} (lacks {missing!r}); "
                      f"`pip install notojp-matplotlib` adds Noto Sans CJK", stacklevel=2)
        return path
    return None


@functools.lru_cache(maxsize=None)
def cjk_font() -> font_manager.FontProperties | None:
    """A FontProperties able to draw Japanese and Chinese labels, or None (with one warning)."""
    path = cjk_font_path()
    if path is None:
        warnings.warn("no CJK-capable font found (install fonts-noto-cjk or `pip install notojp-matplotlib`); "
                      "CJK labels will show as empty boxes", stacklevel=2)
        return None
    font_manager.fontManager.addfont(path)
    return font_manager.FontProperties(fname=path)


def _needs_cjk(strings) -> bool:
    return any(ord(char) > 0x2E7F for text in strings if text is not None for char in str(text))


def font_for(strings):
    """The CJK font when any string needs it (None keeps matplotlib's default)."""
    return cjk_font() if _needs_cjk(strings) else None


def _set_title(ax, title: str, font) -> None:
    # A FontProperties carries the body text size; a title keeps the usual title size.
    ax.set_title(title, fontproperties=font, fontsize=matplotlib.rcParams["axes.titlesize"])


# ---- figures and saving ----------------------------------------------------------------------

def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] | None = None):
    """(figure, axes) on an Agg canvas, without pyplot; `axes` is one Axes or an array of them."""
    size = size or (6.4 * ncols, 5.6 * nrows)
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=True)
    return figure, axes


@contextlib.contextmanager
def _quiet_missing_glyphs():
    """Without a CJK font (already warned once) matplotlib would warn for every missing glyph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        yield


def save_figure(figure, path: str | os.PathLike, dpi: int = 150) -> str:
    """Writes `figure` as a PNG at `path` atomically (whole or absent); returns the path."""
    path = os.fspath(path)
    if figure.canvas is None or not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    with atomic_path(path) as temp_path, _quiet_missing_glyphs():
        figure.savefig(temp_path, format="png", dpi=dpi)
    return path


# ---- projection ------------------------------------------------------------------------------

def project_2d(features, method: str = "tsne", pca_dims: int = 50, random_seed: int = 0,
               perplexity: float = 30.0, num_threads: int | None = None, learning_rate="auto",
               max_iter: int | None = None, init: str = "pca", cap_perplexity: bool = True) -> np.ndarray:
    """`[n, d]` features -> `[n, 2]` float32: t-SNE after PCA to `pca_dims` when wider (as the papers'
    scripts do), or plain PCA with `method="pca"`. Deterministic for a seed. `num_threads` caps
    scikit-learn's OpenMP/BLAS threads; None means 1 up to 2,000 points (there threads save little and,
    on a busy machine, their spinning made t-SNE 25x slower) and no cap above. `learning_rate`,
    `max_iter` (None: scikit-learn's 1,000) and `init` are TSNE's. The perplexity is capped at a third
    of the points; with `cap_perplexity=False` it is used as given unless scikit-learn refuses it
    (perplexity >= points)."""
    from threadpoolctl import threadpool_limits

    if num_threads is None and len(features) <= 2000:
        num_threads = 1
    tsne_settings = dict(perplexity=perplexity, learning_rate=learning_rate, max_iter=max_iter, init=init,
                         cap_perplexity=cap_perplexity)
    with threadpool_limits(limits=num_threads):
        return _project_2d(features, method, pca_dims, random_seed, **tsne_settings)


def _project_2d(features, method, pca_dims, random_seed, perplexity, learning_rate, max_iter, init,
                cap_perplexity) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [n, d] (got shape {features.shape})")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinity")
    method = method.lower()
    if method not in ("tsne", "pca"):
        raise ValueError(f"unknown projection method {method!r}; expected 'tsne' or 'pca'")
    count, width = features.shape
    if count < 3:  # t-SNE and PCA need a few points; place one or two on a line
        points = np.zeros((count, 2))
        points[:, 0] = np.arange(count)
        return points.astype(np.float32)
    if method == "pca" or count < 5:
        return PCA(n_components=min(2, width), random_state=random_seed).fit_transform(features).astype(np.float32)
    if width > pca_dims:
        features = PCA(n_components=min(pca_dims, count), random_state=random_seed).fit_transform(features)
    # sklearn requires perplexity < n; keep it a third of the points for small sets.
    if cap_perplexity or perplexity >= count:
        perplexity = min(perplexity, max(1.0, (count - 1) / 3))
    extra = {} if max_iter is None else {"max_iter": max_iter}
    tsne = TSNE(n_components=2, perplexity=perplexity, init=init, learning_rate=learning_rate,
                random_state=random_seed, **extra)
    return tsne.fit_transform(features).astype(np.float32)


# ---- scatter plots with labels ---------------------------------------------------------------

def _label_offsets(fontsize: float) -> list[tuple[float, float]]:
    """Offsets (points) tried in turn for a label: right of the point, left, then a line higher or
    lower each time, up to five lines away."""
    line = 1.4 * fontsize
    offsets = []
    for level in (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5):
        offsets += [(4.0, 0.25 * line + level * line), (-4.0, 0.25 * line + level * line)]
    return offsets


def _place_labels(ax, points, texts, font, fontsize):
    """Greedy placement: each label takes the first offset whose box overlaps no label placed before
    (nor the legend) and stays inside the axes, else the least-bad one; far labels get a leader line."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    placed = np.zeros((0, 4))
    legend = ax.get_legend()
    if legend is not None:  # the legend is an obstacle like any placed label
        box = legend.get_window_extent(renderer)
        placed = np.array([[box.x0, box.y0, box.x1, box.y1]])
    for (x, y), text in zip(points, texts):
        if text is None or str(text) == "":
            continue
        best = None
        for dx, dy in _label_offsets(fontsize):
            annotation = ax.annotate(str(text), (x, y), xytext=(dx, dy), textcoords="offset points",
                                     ha="left" if dx >= 0 else "right", fontsize=fontsize, fontproperties=font)
            box = annotation.get_window_extent(renderer)
            overlap = np.clip(np.minimum(placed[:, 2], box.x1) - np.maximum(placed[:, 0], box.x0), 0, None) * \
                np.clip(np.minimum(placed[:, 3], box.y1) - np.maximum(placed[:, 1], box.y0), 0, None)
            inside = max(0.0, min(box.x1, axes_box.x1) - max(box.x0, axes_box.x0)) * \
                max(0.0, min(box.y1, axes_box.y1) - max(box.y0, axes_box.y0))
            total = float(overlap.sum()) + (box.width * box.height - inside)  # + the part outside the axes
            if best is None or total < best[0]:
                if best is not None:
                    best[1].remove()
                best = (total, annotation, box, (dx, dy))
            else:
                annotation.remove()
            if total == 0:
                break
        _, annotation, box, (dx, dy) = best
        if math.hypot(dx, dy) > 20:
            ax.annotate("", (x, y), xytext=(dx, dy), textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
        placed = np.vstack([placed, [box.x0, box.y0, box.x1, box.y1]])


def scatter_2d(points, labels: Sequence | None = None, texts: Sequence[str] | None = None,
               path: str | os.PathLike | None = None, title: str | None = None, ax=None,
               fontsize: float = 8, point_size: float = 14):
    """Scatter `[n, 2]` points, coloured by `labels` with a legend, `texts` written beside points
    without bad overlaps; CJK-safe. Draws into `ax` when given; saves a PNG when `path` is given.
    Returns the figure."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [n, 2] (got shape {points.shape})")
    for name, values in (("labels", labels), ("texts", texts)):
        if values is not None and len(values) != len(points):
            raise ValueError(f"{name} has {len(values)} entries for {len(points)} points")
    if ax is None:
        figure, ax = new_figure()
    else:
        figure = ax.figure
    strings = [title] + ([] if labels is None else [str(label) for label in labels]) + list(texts or [])
    font = font_for(strings)

    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=point_size, alpha=0.8)
    else:
        labels = [str(label) for label in labels]
        classes = list(dict.fromkeys(labels))  # first-seen order
        colormap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        label_array = np.array(labels)
        for index, name in enumerate(classes):
            selected = label_array == name
            ax.scatter(points[selected, 0], points[selected, 1], s=point_size, alpha=0.8,
                       color=colormap(index % colormap.N), label=name)
        legend_font = font_manager.FontProperties(size=fontsize) if font is None else font.copy()
        legend_font.set_size(fontsize)
        if len(classes) <= 10:
            ax.legend(loc="best", markerscale=1.5, prop=legend_font, framealpha=0.8)
        else:  # a long legend goes beside the axes instead of over the points
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=1.5, prop=legend_font,
                      ncols=math.ceil(len(classes) / 30), frameon=False)
    if title:
        _set_title(ax, title, font)
    ax.set_xticks([])
    ax.set_yticks([])
    if texts is not None:
        ax.margins(0.08)  # room for the labels of the outermost points
        ax.autoscale_view()
        with _quiet_missing_glyphs():
            figure.canvas.draw()  # fixes the limits so label boxes can be measured
            _place_labels(ax, points, texts, font, fontsize)
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike | None = None,
                xlabel: str = "epoch", ylabel: str = "loss", title: str | None = None, ax=None):
    """One line per series of `history` (e.g. {"main/loss": [...], "validation/main/loss": [...]}),
    against 1..n, or against `history[xlabel]` when that key is present. NaN/None points are skipped."""
    if ax is None:
        figure, ax = new_figure(size=(6.4, 4.8))
    else:
        figure = ax.figure
    x_values = history.get(xlabel)
    drawn = 0
    for name, values in history.items():
        if name == xlabel:
            continue
        y = np.array([np.nan if value is None else float(value) for value in values], np.float64)
        x = np.arange(1, len(y) + 1) if x_values is None else np.asarray(x_values, np.float64)[:len(y)]
        finite = np.isfinite(y)
        if finite.any():
            ax.plot(x[finite], y[finite], marker="o" if finite.sum() < 30 else None, markersize=3, label=name)
            drawn += 1
    if x_values is None:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        _set_title(ax, title, font_for([title]))
    if drawn:
        font = font_for(list(history))
        legend_font = font_manager.FontProperties(size=8) if font is None else font.copy()
        legend_font.set_size(8)
        ax.legend(loc="best", prop=legend_font)
    ax.grid(alpha=0.3)
    if path is not None:
        save_figure(figure, path)
    return figure
