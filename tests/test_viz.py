"""itm.viz: heat-map geometry, blending, figure structure (inspected through artists), rendering."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from PIL import Image

from itm.viz import (
    attention_grids,
    captions_sheet,
    figure_to_array,
    images_sheet,
    new_figure,
    object_word_figure,
    overlay_heatmap,
    save_figure,
    upsample_attention,
    word_attention_figure,
)
from itm.viz.sheets import CORRECT_COLOR, CORRECT_MARK, WRONG_MARK


def image(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def block(r: int, n: int, size: int) -> tuple[int, int]:
    """Pixel rows [start, stop) with r*size/n <= y < (r+1)*size/n."""
    return -(-r * size // n), -(-(r + 1) * size // n)


# (gh, gw, H, W): divisible, the paper's 14x14 -> 224, non-square grids and non-divisible sizes
GEOMETRIES = [(14, 14, 224, 224), (7, 7, 224, 224), (3, 5, 60, 100), (4, 6, 50, 70), (5, 3, 97, 41)]


def corner_and_middle_cells(gh: int, gw: int) -> list[tuple[int, int]]:
    return sorted({(0, 0), (0, gw - 1), (gh - 1, 0), (gh - 1, gw - 1), (gh // 2, gw // 3)})


@pytest.mark.parametrize("gh,gw,h,w", GEOMETRIES)
def test_upsample_without_smoothing_fills_exactly_the_cell_block(gh, gw, h, w):
    for r, c in corner_and_middle_cells(gh, gw):
        grid = np.zeros((gh, gw))
        grid[r, c] = 1.0
        heat = upsample_attention(grid, (h, w), sigma=0)
        assert heat.shape == (h, w)
        (y0, y1), (x0, x1) = block(r, gh, h), block(c, gw, w)
        expected = np.zeros((h, w))
        expected[y0:y1, x0:x1] = 1.0
        np.testing.assert_array_equal(heat, expected)


@pytest.mark.parametrize("gh,gw,h,w", GEOMETRIES)
def test_smoothed_peak_stays_in_its_block(gh, gw, h, w):
    rng = np.random.default_rng(gh * 100 + gw)
    for r, c in corner_and_middle_cells(gh, gw):
        grid = rng.random((gh, gw)) * 0.3  # background noise below the peak
        grid[r, c] = 1.0
        heat = upsample_attention(grid, (h, w))
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        (y0, y1), (x0, x1) = block(r, gh, h), block(c, gw, w)
        assert y0 <= y < y1 and x0 <= x < x1, ((r, c), (y, x))
        assert heat.min() == pytest.approx(0.0) and heat.max() == pytest.approx(1.0)


def test_upsample_constant_map_is_zero_and_bad_input_raises():
    np.testing.assert_array_equal(upsample_attention(np.full((3, 3), 0.2), (9, 12)), np.zeros((9, 12)))
    with pytest.raises(ValueError):
        upsample_attention(np.zeros(9), (9, 9))
    with pytest.raises(ValueError):
        upsample_attention(np.array([[np.nan, 1.0]]), (4, 4))


def test_attention_grids_reshape_row_major_infer_square_and_cut():
    flat = np.arange(2 * 12, dtype=float).reshape(2, 12)
    grids = attention_grids(flat, (3, 4))
    assert grids.shape == (2, 3, 4)
    assert grids[1, 2, 1] == flat[1, 2 * 4 + 1]
    assert attention_grids(np.ones((5, 16))).shape == (5, 4, 4)
    assert attention_grids(np.ones((5, 16)), length=3).shape == (3, 4, 4)
    assert attention_grids(torch.ones(2, 3, 4, requires_grad=True)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="grid_shape"):
        attention_grids(np.ones((2, 12)))
    with pytest.raises(ValueError):
        attention_grids(np.ones((2, 12)), (5, 5))
    with pytest.raises(ValueError):
        attention_grids(np.ones((2, 12)), (3, 4), length=3)


def test_overlay_shape_dtype_and_alpha_meaning():
    img = image()
    heat = np.linspace(0, 1, 24 * 32).reshape(24, 32)
    out = overlay_heatmap(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay_heatmap(img, heat, alpha=0.0), img)
    jet = np.round(matplotlib.colormaps["jet"](heat)[:, :, :3] * 255)
    np.testing.assert_array_equal(overlay_heatmap(img, heat, alpha=1.0), jet.astype(np.uint8))
    gray = overlay_heatmap(img[:, :, 0], heat, alpha=0.0)  # gray images become RGB
    assert gray.shape == (24, 32, 3)
    with pytest.raises(ValueError):
        overlay_heatmap(img, heat[:-1])
    with pytest.raises(ValueError):
        overlay_heatmap(img, heat, alpha=1.5)


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_word_attention_figure_has_one_panel_per_word_in_order():
    img = image()
    words = ["a", "dog", "runs", "on", "the", "grass", "today"]
    rng = np.random.default_rng(1)
    padded = np.zeros((9, 6))  # two padded rows the cut removes
    padded[:7] = rng.random((7, 6))
    fig = word_attention_figure(img, padded, words, score=0.75, parts={"w2r": 0.4, "o2w": 0.35},
                                grid_shape=(2, 3), length=len(words), max_cols=4)
    axes = image_axes(fig)
    assert len(axes) == len(words) + 1 == len(fig.axes)
    np.testing.assert_array_equal(axes[0].images[0].get_array(), img)
    assert [ax.get_xlabel() for ax in axes[1:]] == words
    # each panel draws its own row: the third word's panel is the third row's overlay
    expected = overlay_heatmap(img, upsample_attention(padded[2].reshape(2, 3), (24, 32)))
    np.testing.assert_array_equal(axes[3].images[0].get_array(), expected)
    title = fig.get_suptitle()
    assert "0.750" in title and "W2R 0.400" in title and "O2W 0.350" in title


def test_word_attention_figure_rejects_word_count_mismatch():
    with pytest.raises(ValueError, match="3 words but 4"):
        word_attention_figure(image(), np.ones((4, 9)), ["a", "b", "c"])
    with pytest.raises(ValueError):
        word_attention_figure(image(), np.ones((4, 9)), ["a", "b", "c"], length=2)


def test_object_word_figure_draws_top_boxes_and_matching_lines():
    img = image(40, 60)
    words = ["a", "man", "rides", "a", "horse"]
    rng = np.random.default_rng(2)
    att = rng.random((5, 7))
    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 20], [20, 10, 59, 39], [1, 2, 3, 4], [10, 0, 40, 30]])
    order = [4, 2, 0, 1, 3]
    fig = object_word_figure(img, boxes, att, words, object_order=order, top=3, length=5)
    ax_img, ax_line = fig.axes
    rects = [p for p in ax_img.patches if isinstance(p, Rectangle)]
    assert len(rects) == 3 and len(ax_line.lines) == 3
    labels = [t.get_text() for t in ax_img.texts]
    assert labels == ["#1", "#2", "#3"]
    for rect, line, obj in zip(rects, ax_line.lines, order[:3], strict=True):
        assert rect.get_edgecolor() == to_rgba(line.get_color())
        x1, y1, x2, y2 = boxes[obj]
        assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (x1, y1, x2 - x1, y2 - y1)
        np.testing.assert_allclose(line.get_ydata(), att[obj, :5])
    assert len({r.get_edgecolor() for r in rects}) == 3  # distinct colours
    assert [t.get_text() for t in ax_line.get_xticklabels()] == words


def test_object_word_figure_default_order_small_p_and_errors():
    img = image(40, 60)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 20]], dtype=float)
    fig = object_word_figure(img, boxes, np.ones((2, 3)) / 3, ["x", "y", "z"], top=3)
    assert len(fig.axes[1].lines) == 2  # fewer objects than top
    with pytest.raises(ValueError):
        object_word_figure(img, boxes, np.ones((2, 3)), ["x", "y"])
    with pytest.raises(ValueError):
        object_word_figure(img, boxes[:1], np.ones((2, 3)), ["x", "y", "z"])
    with pytest.raises(ValueError):
        object_word_figure(img, boxes, np.ones((2, 3)), ["x", "y", "z"], object_order=[2])


def test_captions_sheet_marks_correct_rows():
    correct = [False, True, True, False, True]
    caps = [f"caption number {i}" for i in range(5)]
    fig = captions_sheet(image(), caps, [0.9, 0.8, 0.7, 0.6, 0.5], correct, title="top 5")
    rows = sorted((t for ax in fig.axes for t in ax.texts if (t.get_gid() or "").startswith("caption-")),
                  key=lambda t: -t.get_position()[1])  # top to bottom
    assert [t.get_gid() for t in rows] == [f"caption-{i}" for i in range(1, 6)]
    for text, cap, ok in zip(rows, caps, correct, strict=True):
        assert cap in text.get_text()
        assert (CORRECT_MARK in text.get_text()) == ok and (WRONG_MARK in text.get_text()) != ok
        assert (to_rgba(text.get_color()) == to_rgba(CORRECT_COLOR)) == ok
    assert fig.get_suptitle() == "top 5"
    with pytest.raises(ValueError):
        captions_sheet(image(), caps, [0.9], correct)


def test_images_sheet_frames_the_correct_image_green():
    imgs = [image(seed=i) for i in range(4)] + [image(32, 24)]
    correct = [False, False, True, False, False]
    fig = images_sheet("a dog on the grass", imgs, [0.9, 0.8, 0.7, 0.6, 0.5], correct)
    axes = image_axes(fig)
    assert len(axes) == 5
    for k, (ax, ok) in enumerate(zip(axes, correct, strict=True), start=1):
        label = ax.get_xlabel()
        assert label.startswith(f"#{k}") and (CORRECT_MARK in label) == ok
        assert (ax.spines["top"].get_edgecolor() == to_rgba(CORRECT_COLOR)) == ok
    assert "a dog on the grass" in fig.get_suptitle()
    with pytest.raises(ValueError):
        images_sheet("x", imgs, [0.1] * 5, correct[:4])


def test_figure_to_array_is_uint8_rgb_of_the_figure_size():
    fig = new_figure(2.0, 1.5)
    fig.set_dpi(50)
    ax = fig.add_subplot()
    ax.imshow(image())
    pixels = figure_to_array(fig)
    assert pixels.dtype == np.uint8 and pixels.shape == (75, 100, 3)
    assert pixels.std() > 0  # something was drawn


def test_save_figure_writes_a_png_and_closes_pyplot_figures(tmp_path):
    fig = captions_sheet(image(), ["a", "b"], [0.2, 0.1], [True, False])
    path = save_figure(fig, tmp_path / "nested" / "dir" / "sheet.png", dpi=40)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100

    matplotlib.use("Agg")  # pyplot only to check the close; library code never imports it
    import matplotlib.pyplot as plt

    managed = plt.figure(figsize=(1, 1))
    save_figure(managed, tmp_path / "managed.png", dpi=20)
    assert not plt.fignum_exists(managed.number)


# -- explanations of any registered model: one picture per declared map it can draw ------------------

EXPLAINED = [("bssan",), ("caan",), ("mlasm",), ("mlasm_local",), ("bssan_o2w",),
             ("caan", "model.fragments=objects"), ("mlasm", "model.fragments=objects")]


def explained_pair(name: str, *overrides: str, boxes: bool = True):
    from helpers import make_captions, tiny_model

    from itm.data.types import ImageFeatures
    from itm.viz.explain import explain_pair

    model, _ = tiny_model(name, *overrides)
    gen = torch.Generator().manual_seed(0)
    corners = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 15], [2, 8, 30, 22]], dtype=torch.float32)[None]
    features = ImageFeatures(torch.randn(1, 4, 5, generator=gen), torch.randn(1, 3, 7, generator=gen),
                             corners if boxes else None, (2, 2) if boxes else None)
    return model, features, explain_pair(model, features, 0, make_captions([3]), 0, ["a", "dog", "runs"])


@pytest.mark.parametrize("variant", EXPLAINED, ids=["-".join(v) for v in EXPLAINED])
def test_pair_figures_draw_every_declared_map(variant):
    from itm.viz.explain import pair_figures

    model, features, explanation = explained_pair(*variant)
    assert set(explanation.attention) == set(model.attention_specs())
    drawn = pair_figures(explanation, image(), features, 0, title="a dog runs")
    assert set(drawn.figures) == set(model.attention_specs()) and not drawn.not_drawn
    for fig in drawn.figures.values():
        assert figure_to_array(fig).shape[2] == 3


@pytest.mark.parametrize("variant", EXPLAINED, ids=["-".join(v) for v in EXPLAINED])
def test_a_map_that_cannot_be_drawn_is_said_in_one_line(variant):
    """Precomp features have no boxes and no grid: every map over the image is named with the reason,
    maps over the words alone are still drawn."""
    from itm.viz.explain import pair_figures

    model, features, explanation = explained_pair(*variant, boxes=False)
    drawn = pair_figures(explanation, image(), features, 0)
    spatial = [n for n, s in model.attention_specs().items() if {s.rows, s.over} & {"regions", "objects"}]
    assert spatial and set(drawn.figures) == set(model.attention_specs()) - set(spatial)
    assert len(drawn.not_drawn) == len(spatial)
    for name, note in zip(spatial, drawn.not_drawn, strict=True):
        assert note.startswith(name) and "not drawn: the features carry no" in note and "\n" not in note


def test_a_word_the_model_could_not_read_gets_an_empty_panel_that_says_so():
    import dataclasses

    from itm.viz.explain import pair_figures

    model, features, explanation = explained_pair("bssan")
    drawn = pair_figures(dataclasses.replace(explanation, unread=frozenset({"dog"})), image(), features, 0)
    labels = [t.get_text() for ax in drawn.figures["w2r"].axes for t in ax.texts] + \
        [ax.get_xlabel() for ax in drawn.figures["w2r"].axes] + [ax.get_title() for ax in drawn.figures["w2r"].axes]
    assert any("dog\nnot read: no map" in label for label in labels)
    assert not any(label.startswith("dog\npeak") for label in labels)


def test_function_words_get_no_panel_in_the_per_word_pictures():
    """Issue 45: "a" names nothing a photo shows, so the per-word pictures (words over regions, regions
    over words) draw no panel for it; number words are content ("two dogs")."""
    from itm.data.function_words import FUNCTION_WORDS, is_function_word
    from itm.viz.explain import pair_figures, panel_words

    assert panel_words(["two", "dogs", "are", "near", "the", "fire", "hydrant"]) == ["two", "dogs", "fire", "hydrant"]
    assert panel_words(["in", "the"]) == ["in", "the"]  # nothing else to show: every word keeps its panel
    assert {"a", "an", "the", "near", "is", "are", "and", "of", "his", "will"} <= FUNCTION_WORDS
    assert not any(is_function_word(w) for w in ("two", "can", "front", "top", "shed", "dog", "standing"))
    for name in ("bssan", "caan"):
        model, features, explanation = explained_pair(name)
        drawn = pair_figures(explanation, image(), features, 0)
        for key, spec in model.attention_specs().items():
            if (spec.rows, spec.over) in {("words", "regions"), ("regions", "words")}:
                labels = [ax.get_xlabel().split("\n")[0] for ax in drawn.figures[key].axes]
                assert [label.removeprefix("regions -> ") for label in labels] == ["(image)", "dog", "runs"], key
