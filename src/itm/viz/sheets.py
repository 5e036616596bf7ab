"""Retrieval result sheets (BSSAN Fig. 5 and 6): the top captions of an image, the top images of
a caption, ground truth marked in green."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from itm.viz.render import as_rgb, new_figure

CORRECT_COLOR = "#1a9641"  # green: a ground-truth match
WRONG_COLOR = "#d7191c"  # red: a wrong caption
FRAME_WRONG_COLOR = "#9e9e9e"  # grey frame: a wrong image (most of a row is wrong, red would shout)
CORRECT_MARK = "✓"
WRONG_MARK = "✗"


def _check_rows(n_items: int, scores: Sequence[float], correct: Sequence[bool], what: str) -> None:
    if not (n_items == len(scores) == len(correct)):
        raise ValueError(f"{n_items} {what}, {len(scores)} scores and {len(correct)} correct flags differ")
    if n_items == 0:
        raise ValueError(f"no {what} to draw")


def _shorten(text: str, width: int, max_lines: int) -> str:
    """Wrap ``text`` to ``width`` columns, at most ``max_lines`` lines, an ellipsis if cut."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 2].rstrip() + " …"
    return "\n".join(lines)


def caption_row_text(rank: int, caption: str, score: float, correct: bool, width: int = 64) -> str:
    """One ranked row: '1. ✓ a dog runs on the grass   (0.812)'."""
    mark = CORRECT_MARK if correct else WRONG_MARK
    return f"{rank}. {mark} {_shorten(caption, width, 2)}   ({float(score):.3f})"


def captions_sheet(image, captions: Sequence[str], scores: Sequence[float], correct: Sequence[bool],
                   title: str | None = None) -> Figure:
    """An image and its ranked captions: ground truth green with a check, wrong ones red with a cross.

    Each row is one text artist (gid ``"caption-<rank>"``), in rank order from the top.
    """
    _check_rows(len(captions), scores, correct, "captions")
    rgb = as_rgb(image)
    n = len(captions)
    img_w = 3.2
    img_h = img_w * rgb.shape[0] / rgb.shape[1]
    text_w = 7.5
    fig = new_figure(img_w + text_w, max(img_h, 0.62 * n) + (0.7 if title else 0.35))
    grid = fig.add_gridspec(1, 2, width_ratios=[img_w, text_w])
    ax_img = fig.add_subplot(grid[0, 0])
    ax_img.imshow(rgb)
    ax_img.set_axis_off()
    ax_txt = fig.add_subplot(grid[0, 1])
    ax_txt.set_axis_off()
    ax_txt.set_xlim(0, 1)
    ax_txt.set_ylim(0, 1)
    for i, (caption, score, ok) in enumerate(zip(captions, scores, correct, strict=True)):
        ax_txt.text(0.0, 1.0 - (i + 0.5) / n, caption_row_text(i + 1, caption, score, bool(ok)),
                    color=CORRECT_COLOR if ok else WRONG_COLOR, fontsize=11, ha="left", va="center",
                    linespacing=1.25, gid=f"caption-{i + 1}")
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def images_sheet(caption: str, images: Sequence[np.ndarray], scores: Sequence[float],
                 correct: Sequence[bool], title: str | None = None) -> Figure:
    """A caption over its ranked images in a row: ground truth framed green, others grey, the rank,
    score and mark under each image."""
    _check_rows(len(images), scores, correct, "images")
    pixels = [as_rgb(im) for im in images]
    n = len(pixels)
    panel = 2.4
    aspect = max(p.shape[0] / p.shape[1] for p in pixels)
    heading = _shorten(caption, 22 * n, 2)
    heading = f"{title}\n{heading}" if title else heading
    fig = new_figure(panel * n, panel * aspect + 0.45 + 0.25 * heading.count("\n") + 0.4)
    grid = fig.add_gridspec(1, n)
    for i, (rgb, score, ok) in enumerate(zip(pixels, scores, correct, strict=True)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(rgb)
        ax.set_anchor("S")  # bottoms aligned, so the score labels line up whatever the aspect
        ax.set_xticks([])
        ax.set_yticks([])
        colour = CORRECT_COLOR if ok else FRAME_WRONG_COLOR
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(5 if ok else 2.5)
        mark = CORRECT_MARK if ok else WRONG_MARK
        ax.set_xlabel(f"#{i + 1}  {mark}  {float(score):.3f}", fontsize=11,
                      color=CORRECT_COLOR if ok else "#555555")
    fig.suptitle(heading, fontsize=12)
    return fig
