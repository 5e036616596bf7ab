"""Pictures of the pointing game's misses: the photo, the named category's boxes (green) and the
grid cell the word's attention peaked on (red)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.patches import Rectangle

from itm.errors import DataError
from itm.viz.explain import image_array
from itm.viz.render import new_figure, save_figure

PANEL_INCHES = 2.6


def draw_worst_misses(cases, result: dict, split, out_dir: Path, categories: int = 3, per_category: int = 6,
                      boxes=None, names: list[str] | None = None) -> list[Path]:
    """One PNG per worst category (lowest hit rate among those with at least ``min_cases`` cases), or
    per category in ``names``."""
    chosen = named_categories(result, names) if names else worst_categories(result, categories)
    paths = {im.filename: im.path for im in split.dataset.images}
    gh, gw = split.features.grid_shape
    written = []
    for name in chosen:
        misses = [c for c in cases if c.category == name and not c.hit][:per_category]
        if not misses:
            continue
        cols = min(3, len(misses))
        rows = math.ceil(len(misses) / cols)
        fig = new_figure(cols * PANEL_INCHES, rows * (PANEL_INCHES + 0.3))
        for k, case in enumerate(misses):
            ax = fig.add_subplot(rows, cols, k + 1)
            pixels = image_array(paths[case.image])
            h, w = pixels.shape[:2]
            ax.imshow(pixels)
            r, c = divmod(case.cell, gw)
            ax.add_patch(Rectangle((c * w / gw, r * h / gh), w / gw, h / gh, fill=False, edgecolor="red", linewidth=2.5))
            for x1, y1, x2, y2 in case_boxes(case, boxes, w, h):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(miss_label(case, (gh, gw)), fontsize=9)
        fig.suptitle(f"{name}: misses (red: peak cell, green: boxes)", fontsize=11)
        written.append(save_figure(fig, out_dir / f"misses_{name.replace(' ', '_')}.png"))
    return written


def miss_label(case, grid_shape: tuple[int, int]) -> str:
    """A miss panel's caption; a case no cell of the grid could hit (no cell centre inside any of its
    boxes) says so, so that its red cell is not read as the map's fault alone."""
    label = f"'{case.word}' ({case.image[-10:]})"
    if case.random_hit == 0:
        label += f"\nno {grid_shape[0]} x {grid_shape[1]} cell can hit it"
    return label


def worst_categories(result: dict, count: int) -> list[str]:
    """The ``count`` categories with the lowest hit rate among those with at least ``min_cases`` cases."""
    ranked = sorted((r["hit"], name) for name, r in result["per_category"].items() if r["cases"] >= result["min_cases"])
    return [name for _, name in ranked[:count]]


def named_categories(result: dict, names: list[str]) -> list[str]:
    """``names`` as given, each checked to have cases (else a DataError listing those that have)."""
    unknown = sorted(set(names) - set(result["per_category"]))
    if unknown:
        raise DataError(f"--categories: no cases for {', '.join(unknown)} (categories with cases: "
                        f"{', '.join(sorted(result['per_category']))})")
    return names


def case_boxes(case, boxes, width: int, height: int):
    """The case's category boxes scaled to the shown photo (none when the boxes are not given)."""
    if boxes is None or case.image not in boxes:
        return []
    photo = boxes[case.image]
    sx, sy = width / photo.width, height / photo.height
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in photo.boxes.get(case.category, [])]
