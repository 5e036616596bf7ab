"""Figures off screen: creation on the Agg canvas, conversion to pixels, saving as PNG.

Library code never touches pyplot's global state: figures are plain ``Figure`` objects bound to
their own Agg canvas, so they work headless and are freed by the garbage collector.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches with constrained layout, on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # binds itself as fig.canvas
    return fig


def as_numpy(array) -> np.ndarray:
    """A numpy array from a numpy array, list or (CPU or GPU, grad or not) torch tensor."""
    if hasattr(array, "detach"):  # torch, without importing it here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def as_rgb(image) -> np.ndarray:
    """An image as (H, W, 3) uint8: accepts gray (H, W), RGB, RGBA, uint8 or float in [0, 1]."""
    arr = as_numpy(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)  # other integer types: assumed 0..255


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to (H, W, 3) uint8 RGB pixels with the Agg canvas."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` as a PNG (creating parent folders) and close it; returns the path.

    A plain ``Figure`` needs no closing (the garbage collector frees it); one made through pyplot
    is closed there so pyplot stops holding it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    # only figures made through pyplot are registered there; importing pyplot just to close
    # would select a GUI backend, so close through it only when the caller already uses it
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return path
