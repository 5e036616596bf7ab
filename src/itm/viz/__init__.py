"""Drawings of matches from whatever attention a model declares: heat maps over the region grid,
object-word curves, retrieval sheets.

Pure functions: arrays in, an image array or a matplotlib ``Figure`` out, drawn on the Agg canvas.
"""

from itm.viz.attention import (
    attention_grids,
    object_word_figure,
    overlay_heatmap,
    upsample_attention,
    word_attention_figure,
)
from itm.viz.render import as_rgb, figure_to_array, new_figure, save_figure
from itm.viz.sheets import captions_sheet, images_sheet

__all__ = [
    "as_rgb",
    "attention_grids",
    "captions_sheet",
    "figure_to_array",
    "images_sheet",
    "new_figure",
    "object_word_figure",
    "overlay_heatmap",
    "save_figure",
    "upsample_attention",
    "word_attention_figure",
]
