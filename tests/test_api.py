"""The public Python API (itm.load_model / build_index / open_index) on tiny checkpoints and photos."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import index_checkpoint, photo, photo_folder
from PIL import Image

import itm
from itm.errors import DataError, ItmError
from itm.evaluation.engine import score_pairs_naive


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    return index_checkpoint(tmp_path / "bssan.pt", "bssan")


def test_api_names_are_exported_lazily():
    assert set(itm.__all__) >= {"load_model", "build_index", "open_index", "Model"}
    with pytest.raises(AttributeError):
        itm.no_such_name  # noqa: B018


def test_score_is_images_by_captions_in_the_given_order(tiny, tmp_path):
    model = itm.load_model(tiny)
    red, blue = photo(tmp_path / "p" / "red.jpg", "red"), photo(tmp_path / "p" / "blue.png", "blue")
    captions = ["a red square", "a blue dog", "a photo"]
    scores = model.score([red, blue], captions)
    assert scores.shape == (2, 3) and np.isfinite(scores).all()
    # the same pairs asked in another order and one by one give the same numbers
    swapped = model.score([blue, red], captions[::-1])
    np.testing.assert_allclose(swapped, scores[::-1, ::-1], atol=1e-5)
    features, encoded = model.image_features([red, blue]), model.encode_captions(captions)
    pairs = [(i, c) for i in range(2) for c in range(3)]
    with torch.inference_mode():
        naive = score_pairs_naive(model.model, features, encoded, pairs).reshape(2, 3)
    np.testing.assert_allclose(scores, naive, atol=1e-4)


def test_score_bad_inputs_name_the_input(tiny, tmp_path):
    model = itm.load_model(tiny)
    red = photo(tmp_path / "red.jpg", "red")
    with pytest.raises(DataError, match="caption 2"):
        model.score([red], ["a red square", "  ,; "])
    with pytest.raises(DataError, match="missing.jpg"):
        model.score([tmp_path / "missing.jpg"], ["a red square"])
    with pytest.raises(DataError, match="at least one"):
        model.score([], ["a red square"])
    with pytest.raises(ItmError, match="nothing.pt"):
        itm.load_model(tmp_path / "nothing.pt")


def test_explain_returns_the_declared_pictures(tiny, tmp_path):
    model = itm.load_model(tiny)
    red = photo(tmp_path / "red.jpg", "red")
    words = ["a", "red", "square"]
    figures = model.explain(red, "a red square", method="attention")
    assert set(figures) == set(model.model.attention_specs()) == {"w2r", "o2w"}  # photos carry grid and boxes
    # the pair's score heads every sheet: the model's own score of the pair (printed to 3 decimals)
    score = float(model.score([red], ["a red square"])[0, 0])
    for figure in figures.values():
        heading = figure.get_suptitle()
        assert heading.startswith("a red square — score ")
        assert abs(float(heading.removeprefix("a red square — score ").split()[0]) - score) <= 0.0005 + 1e-6
    height, width = np.asarray(Image.open(red)).shape[:2]
    # W2R: the photo, then one panel per word but the function words ("a"), titled by the word; each
    # panel draws the whole photo
    panels = figures["w2r"].axes
    assert [ax.get_xlabel().split("\n")[0] for ax in panels] == ["(image)", "red", "square"]
    assert all([im.get_array().shape[:2] for im in ax.get_images()] == [(height, width)] for ax in panels)
    # O2W: the photo with the objects' boxes, and their attention over the words (one tick a word)
    photo_panel, chart = figures["o2w"].axes
    assert [im.get_array().shape[:2] for im in photo_panel.get_images()] == [(height, width)]
    assert [t.get_text() for t in chart.get_xticklabels()] == words
    # the default: first where each word's thing is ("dog" names ImageNet's dog classes), then the same maps
    by_default = model.explain(red, "a red dog")
    assert list(by_default)[0] == "concept" and set(by_default) - {"concept"} == set(figures)
    labels = [ax.get_xlabel() for ax in by_default["concept"].axes]
    # "dog" names ImageNet's dog classes: their map, or the attention when the photo likely shows none
    assert any(label.startswith("dog\nImageNet: ") or label.startswith("dog\nchihuahua +") for label in labels)
    assert "red\nno class\nattention: a guess" in labels  # an adjective names no class
    assert not any(label.startswith("a\n") for label in labels)  # a function word: no panel
    with pytest.raises(ItmError, match="explanation method 'gradcam': not one of concept, attention"):
        model.explain(red, "a red dog", method="gradcam")


def test_a_checkpoint_with_pointing_evidence_labels_its_attention_panels_by_it(tiny, tmp_path):
    """The record ``itm pointing-game --record`` keeps replaces "a guess" on the grid it was measured on."""
    from itm.checkpoint import record_in_checkpoint
    from itm.evaluation.pointing import EVIDENCE_KEY

    red = photo(tmp_path / "red.jpg", "red")
    from itm.pipeline import cache_root
    from itm.viz.explain import explain_photo

    model = itm.load_model(tiny)
    grid = list(explain_photo(model.checkpoint, red, "a red dog", cache_root(model.checkpoint.config)).grid_shape)

    def labels(record: dict) -> list[str]:
        record_in_checkpoint(tiny, EVIDENCE_KEY, record)
        return [ax.get_xlabel() for ax in itm.load_model(tiny).explain(red, "a red dog")["concept"].axes]

    points = {"hit_minus_centre": 10.4, "interval": [1.2, 19.0]}
    assert "red\nno class\nattention: points (+10 vs centre)" in labels({"grid": grid, "without_concept_map": points})
    assert "red\nno class\nattention: a guess" in labels({"grid": [g + 1 for g in grid], "without_concept_map": points})


def test_build_then_open_an_index_and_search_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    dual, bssan = index_checkpoint(tmp_path / "dual.pt", "dual"), index_checkpoint(tmp_path / "bssan.pt", "bssan")
    report = itm.build_index(photo_folder(tmp_path / "photos"), tmp_path / "idx", checkpoint=bssan, shortlist=dual)
    assert report.images == 5 and len(report.skipped) == 3
    searcher = itm.open_index(tmp_path / "idx", normalise="none")  # raw: the model's own scores
    hits = searcher.search("a red square", k=5)  # every indexed photo
    assert len({hit.image_id for hit in hits}) == report.images == 5
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    # each score is the re-ranking model's own score of that photo and the query (same process; the
    # index scores its photos in one stacked block: last-bit differences only)
    paths = [searcher.path_of(hit.image_id) for hit in hits]
    np.testing.assert_allclose(scores, itm.load_model(bssan).score(paths, ["a red square"])[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([hit.shortlist_score for hit in hits],
                               itm.load_model(dual).score(paths, ["a red square"])[:, 0], rtol=1e-5, atol=1e-6)
    assert searcher.search("a red square", k=3) == hits[:3]
    assert searcher.path_of(hits[0].image_id).is_file()
    assert searcher.explain_png(hits[0].image_id, "a red square")[:4] == b"\x89PNG"


def test_explanations_follow_the_checkpoints_explanation_grid(tmp_path, monkeypatch):
    """``eval.explain_image_size``: Model.explain and the index's explanation extract the photo at that
    size (a finer grid); scoring and indexing stay on the trained 64 px."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ITM_CACHE", str(cache))
    sizes = lambda: sorted(p.name.split("-")[1] for p in (cache / "features").glob("efficientnet_lite0-*"))  # noqa: E731
    dual = index_checkpoint(tmp_path / "dual.pt", "dual")
    bssan = index_checkpoint(tmp_path / "bssan.pt", "bssan", overrides=("eval.explain_image_size=96",))
    itm.build_index(photo_folder(tmp_path / "photos"), tmp_path / "idx", checkpoint=bssan, shortlist=dual)
    model = itm.load_model(bssan)
    model.score([photo(tmp_path / "red.jpg", "red")], ["a red square"])
    assert sizes() == ["64px"]
    searcher = itm.open_index(tmp_path / "idx")
    hit = searcher.search("a red square", k=1)[0]
    assert searcher.explain_png(hit.image_id, "a red square")[:4] == b"\x89PNG"
    assert sizes() == ["64px", "96px"]
    for folder in (cache / "features").glob("efficientnet_lite0-96px*"):
        shutil.rmtree(folder)
    assert model.explain(tmp_path / "red.jpg", "a red square")
    assert sizes() == ["64px", "96px"]


def test_an_explanation_draws_no_panel_for_function_words(tiny, tmp_path, monkeypatch):
    """Issue 45: "a", "near", "the" name nothing a photo shows: no panel in the concept sheet nor in the
    word heat maps; the objects' chart still runs over every word. The search page's PNG says which
    words it drew (its "Words" text chunk)."""
    from itm.viz.explain import png_words

    model = itm.load_model(tiny)
    red = photo(tmp_path / "red.jpg", "red")
    figures = model.explain(red, "a dog near the red square")
    for name in ("concept", "w2r"):
        drawn = [ax.get_xlabel().split("\n")[0] for ax in figures[name].axes]
        assert drawn == ["(image)", "dog", "red", "square"], name
    assert [t.get_text() for t in figures["o2w"].axes[1].get_xticklabels()] == ["a", "dog", "near", "the", "red", "square"]
    # a caption of function words alone keeps its panels: there is nothing else to show
    bare = [ax.get_xlabel().split("\n")[0] for ax in model.explain(red, "a", method="attention")["w2r"].axes]
    assert bare == ["(image)", "a"]
    dual = index_checkpoint(tmp_path / "dual.pt", "dual")
    itm.build_index(photo_folder(tmp_path / "photos"), tmp_path / "idx", checkpoint=tiny, shortlist=dual)
    searcher = itm.open_index(tmp_path / "idx")
    hit = searcher.search("a red square", k=1)[0]
    assert png_words(searcher.explain_png(hit.image_id, "a dog near the red square")) == ["dog", "red", "square"]
    assert png_words(searcher.explain_png(hit.image_id, "a dog near the red square", method="attention")) == \
        ["dog", "red", "square"]
