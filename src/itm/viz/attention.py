"""Attention drawings: heat maps of a distribution over the region grid (one per word, or one for the
image) and curves of objects' distributions over the words (as in BSSAN's section V-D).

Every function takes arrays for one image-caption pair (numpy, or torch tensors which are
converted) and returns an image array or a ``Figure``; nothing is shown or written here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.ndimage import gaussian_filter

from itm.viz.render import as_numpy, as_rgb, new_figure

# Set1 without its yellow (unreadable on bright photos): strong, distinct on images and on white
OBJECT_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")

PANEL_INCHES = 2.0  # side of one contact-sheet panel


def attention_grids(attention, grid_shape: tuple[int, int] | None = None,
                    length: int | None = None) -> np.ndarray:
    """Word attention as (L, gh, gw) float maps.

    ``attention`` is (L, gh, gw), or (L, D) with ``grid_shape`` = (gh, gw), D = gh * gw, regions
    in row-major grid order; a square grid is inferred when ``grid_shape`` is omitted and D is a
    perfect square. ``length`` keeps the first ``length`` rows (the caption's real words).
    """
    att = as_numpy(attention).astype(np.float64)
    if length is not None:
        if not 1 <= length <= att.shape[0]:
            raise ValueError(f"length {length} outside 1..{att.shape[0]} (the attention rows)")
        att = att[:length]
    if att.ndim == 3:
        if grid_shape is not None and tuple(att.shape[1:]) != tuple(grid_shape):
            raise ValueError(f"attention grid {att.shape[1:]} does not match grid_shape {grid_shape}")
        return att
    if att.ndim != 2:
        raise ValueError(f"attention must be (L, gh, gw) or (L, D), got shape {att.shape}")
    d = att.shape[1]
    if grid_shape is None:
        side = math.isqrt(d)
        if side * side != d:
            raise ValueError(f"attention has D={d} regions, not a square grid: pass grid_shape")
        grid_shape = (side, side)
    gh, gw = grid_shape
    if gh * gw != d:
        raise ValueError(f"grid_shape {grid_shape} has {gh * gw} cells, attention has D={d}")
    return att.reshape(att.shape[0], gh, gw)


def upsample_attention(att, size: tuple[int, int], sigma: float | None = None) -> np.ndarray:
    """A (gh, gw) attention grid as an (H, W) heat map in [0, 1].

    Cell (r, c) covers image rows [r*H/gh, (r+1)*H/gh) and cols [c*W/gw, (c+1)*W/gw) exactly (nearest
    upsampling, any H, W), then a Gaussian filter smooths the block edges as the paper does.
    ``sigma`` is in grid cells (default 0.5, i.e. half a cell along each axis; 0 = no smoothing).
    The result is min-max normalised; a constant map gives all zeros (nothing stands out).
    """
    grid = as_numpy(att).astype(np.float64)
    if grid.ndim != 2:
        raise ValueError(f"attention grid must be (gh, gw), got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError("attention grid has NaN or infinite values")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    gh, gw = grid.shape
    # integer arithmetic: pixel y belongs to cell floor(y * gh / H), exact for non-divisible sizes
    rows = np.arange(height) * gh // height
    cols = np.arange(width) * gw // width
    heat = grid[rows[:, None], cols[None, :]]
    sigma = 0.5 if sigma is None else float(sigma)
    if sigma > 0:
        heat = gaussian_filter(heat, sigma=(sigma * height / gh, sigma * width / gw), mode="nearest")
    low, high = heat.min(), heat.max()
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return np.zeros((height, width))
    return (heat - low) / (high - low)


def overlay_heatmap(image, heat, alpha: float = 0.7, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map in [0, 1] over an image; returns (H, W, 3) uint8.

    ``alpha`` is the heat map's opacity: pixel = (1 - alpha) * image + alpha * cmap(heat), so 0
    returns the image unchanged and 1 shows the colour map alone (the paper uses 0.7).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = as_rgb(image)
    heat = as_numpy(heat).astype(np.float64)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match image {rgb.shape[:2]}")
    if alpha == 0.0:
        return rgb.copy()
    colours = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[:, :, :3] * 255.0
    blend = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def score_title(score: float | None = None, parts: Mapping[str, float] | None = None,
                title: str | None = None) -> str:
    """'title — score 0.812 (part_a 0.40, part_b 0.41)', leaving out what is not given."""
    pieces = [title] if title else []
    if score is not None:
        text = f"score {float(score):.3f}"
        if parts:
            text += " (" + ", ".join(f"{k.upper()} {float(v):.3f}" for k, v in parts.items()) + ")"
        pieces.append(text)
    elif parts:
        pieces.append(", ".join(f"{k.upper()} {float(v):.3f}" for k, v in parts.items()))
    return " — ".join(pieces)


def _image_panel(ax: Axes, pixels: np.ndarray, label: str) -> None:
    """An image without ticks, ``label`` written under it (as the x label, so it stays attached)."""
    ax.imshow(pixels, interpolation="antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(label, fontsize=11, labelpad=3)


def word_attention_figure(image, attention, words: Sequence[str], score: float | None = None,
                          parts: Mapping[str, float] | None = None,
                          grid_shape: tuple[int, int] | None = None, length: int | None = None,
                          max_cols: int = 6, alpha: float = 0.7, sigma: float | None = None,
                          title: str | None = None) -> Figure:
    """Contact sheet: the image, then one heat-map panel per word with the word under it.

    ``attention`` is the pair's words-over-regions attention, (L, gh, gw) or (L, D) (``attention_grids``);
    ``length`` cuts padded rows first. ``words`` must match the remaining rows one to one.
    The score and its per-branch ``parts`` go in the title.
    """
    grids = attention_grids(attention, grid_shape, length)
    words = list(words)
    if len(words) != grids.shape[0]:
        raise ValueError(f"{len(words)} words but {grids.shape[0]} attention rows")
    if max_cols < 1:
        raise ValueError(f"max_cols must be >= 1, got {max_cols}")
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    n_panels = len(words) + 1
    cols = min(max_cols, n_panels)
    rows = math.ceil(n_panels / cols)
    aspect = height / width
    heading = score_title(score, parts, title)
    label_lines = max(label.count("\n") + 1 for label in ["(image)", *words])  # room under each panel
    fig = new_figure(cols * PANEL_INCHES, rows * (PANEL_INCHES * aspect + 0.35 + 0.25 * max(label_lines - 2, 0))
                     + (0.4 if heading else 0.1))
    grid = fig.add_gridspec(rows, cols)
    _image_panel(fig.add_subplot(grid[0, 0]), rgb, "(image)")
    for i, (word, att) in enumerate(zip(words, grids, strict=True), start=1):
        heat = upsample_attention(att, (height, width), sigma)
        _image_panel(fig.add_subplot(grid[i // cols, i % cols]), overlay_heatmap(rgb, heat, alpha), word)
    if heading:
        fig.suptitle(heading, fontsize=12)
    return fig


def object_word_figure(image, boxes, attention, words: Sequence[str],
                       object_order: Sequence[int] | None = None, top: int = 3,
                       length: int | None = None, score: float | None = None,
                       parts: Mapping[str, float] | None = None, title: str | None = None) -> Figure:
    """Left: the image with the ``top`` objects' boxes (#1.. in distinct colours); right: each
    of those objects' attention over the caption's words, one line per object, same colours.

    ``boxes`` is (P, 4) x1, y1, x2, y2 in the image's pixels; ``attention`` is the pair's objects-over-
    words attention (P, L), ``length`` cuts padded word columns. ``object_order`` ranks object indices
    (e.g. by score); None keeps the stored order (detectors store objects by confidence).
    """
    rgb = as_rgb(image)
    boxes = as_numpy(boxes).astype(np.float64)
    att = as_numpy(attention).astype(np.float64)
    if att.ndim != 2:
        raise ValueError(f"object attention must be (P, L), got shape {att.shape}")
    if length is not None:
        if not 1 <= length <= att.shape[1]:
            raise ValueError(f"length {length} outside 1..{att.shape[1]} (the attention columns)")
        att = att[:, :length]
    n_objects, n_words = att.shape
    words = list(words)
    if len(words) != n_words:
        raise ValueError(f"{len(words)} words but {n_words} attention columns")
    if boxes.shape != (n_objects, 4):
        raise ValueError(f"boxes must be ({n_objects}, 4) to match the attention, got {boxes.shape}")
    order = list(range(n_objects)) if object_order is None else [int(i) for i in object_order]
    if any(not 0 <= i < n_objects for i in order):
        raise ValueError(f"object_order has indices outside 0..{n_objects - 1}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    chosen = order[:top]

    height, width = rgb.shape[:2]
    img_w = 4.0
    img_h = img_w * height / width
    chart_w = max(4.5, 0.42 * n_words + 1.2)  # room for every rotated word label
    heading = score_title(score, parts, title)
    fig = new_figure(img_w + chart_w, max(img_h, 3.2) + 0.6 + (0.3 if heading else 0))
    grid = fig.add_gridspec(1, 2, width_ratios=[img_w, chart_w])
    ax_img = fig.add_subplot(grid[0, 0])
    ax_line = fig.add_subplot(grid[0, 1])

    ax_img.imshow(rgb)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    x = np.arange(n_words)
    for rank, obj in enumerate(chosen):
        colour = OBJECT_COLORS[rank % len(OBJECT_COLORS)]
        x1, y1, x2, y2 = boxes[obj]
        ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                   linewidth=2.5, label=f"#{rank + 1}"))
        # the label sits inside the box's top-left corner so boxes at the image edge keep it
        ax_img.text(x1 + 2, y1 + 2, f"#{rank + 1}", color="white", fontsize=10, fontweight="bold",
                    ha="left", va="top", clip_on=True,
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
        ax_line.plot(x, att[obj], color=colour, marker="o", markersize=4, linewidth=2,
                     label=f"#{rank + 1} (object {obj})")
    ax_img.set_xlim(0, width)
    ax_img.set_ylim(height, 0)

    ax_line.set_xticks(x, words, rotation=50, ha="right", rotation_mode="anchor", fontsize=10)
    ax_line.set_xlim(-0.5, n_words - 0.5)
    ax_line.set_ylim(0, max(float(att[chosen].max()), 1e-6) * 1.1)
    ax_line.set_ylabel("attention over words")
    ax_line.grid(True, alpha=0.3)
    # above the plot area, so it never hides a peak
    ax_line.legend(fontsize=9, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=min(len(chosen), 4),
                   frameon=False, handlelength=1.5, columnspacing=1.2)
    if heading:
        fig.suptitle(heading, fontsize=12)
    return fig


def word_weights_figure(words: Sequence[str], weights, score: float | None = None,
                        parts: Mapping[str, float] | None = None, title: str | None = None,
                        ylabel: str = "weight") -> Figure:
    """A bar per word: one distribution over the caption's words (e.g. CAAN's word weights)."""
    values = as_numpy(weights).astype(np.float64).reshape(-1)
    words = list(words)
    if len(words) != values.shape[0]:
        raise ValueError(f"{len(words)} words but {values.shape[0]} weights")
    heading = score_title(score, parts, title)
    fig = new_figure(max(4.5, 0.42 * len(words) + 1.2), 3.4 + (0.3 if heading else 0))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(words))
    ax.bar(x, values, color=OBJECT_COLORS[1])
    ax.set_xticks(x, words, rotation=50, ha="right", rotation_mode="anchor", fontsize=10)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(float(values.max()), 1e-6) * 1.1)
    ax.grid(True, axis="y", alpha=0.3)
    if heading:
        fig.suptitle(heading, fontsize=12)
    return fig
