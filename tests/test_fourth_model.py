"""The contract is enough: a fourth matcher defined outside the package (``tests/fourth_model.py``,
registered before collection, so the every-model suites run over it too) trains, is scored all-pairs,
explained, pointed with, and indexed for search by the shared code unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fourth_model import NAME, PooledCosineConfig
from helpers import (
    DIMS,
    WORDS,
    fit_quietly,
    index_checkpoint,
    make_captions,
    make_features,
    photo,
    photo_folder,
    setup_run,
    short_run_overrides,
)

from itm import cli
from itm.checkpoint import load_checkpoint, new_model
from itm.config import ConfigError, load_config
from itm.data.encode import encode_captions
from itm.evaluation.engine import score_all_pairs, score_pairs_naive
from itm.evaluation.pointing import cell_centres, inside_any
from itm.features.extract import file_features
from itm.models import MODELS
from itm.pipeline import cache_root


def test_it_is_registered_before_collection():
    assert NAME in MODELS  # so test_models.py and test_engine.py parametrise over it


def test_its_config_resolves_and_validates_through_the_one_registry():
    assert load_config(None, [f"model.name={NAME}"]).model == PooledCosineConfig()
    with pytest.raises(ConfigError, match="model.embed_dim: must be positive"):
        load_config(None, [f"model.name={NAME}", "model.embed_dim=0"])


def test_it_trains_and_learns(tmp_path):
    trainer, train, val = setup_run(tmp_path, "train.loss=infonce", "train.epochs=3",
                                    model_overrides=short_run_overrides(NAME), n_train=192)
    history = fit_quietly(trainer, train, val)["history"]
    first, last = history[0]["val"]["rsum"], history[-1]["val"]["rsum"]
    assert len(history) == 3 and last > first and (tmp_path / "best.pt").is_file()


def test_all_pairs_scoring_equals_one_pair_at_a_time():
    config = load_config(None, [f"model.name={NAME}", "model.embed_dim=8"])
    torch.manual_seed(0)
    model = new_model(config, DIMS).eval()
    features, captions = make_features(3), make_captions([3, 1, 4, 2])
    pairs = [(i, c) for i in range(3) for c in range(4)]
    naive = score_pairs_naive(model, features, captions, pairs).reshape(3, 4)
    np.testing.assert_allclose(score_all_pairs(model, features, captions, memory_budget_mb=0), naive, rtol=1e-5,
                               atol=1e-6)


@pytest.fixture
def photos_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    return photo_folder(tmp_path / "photos"), index_checkpoint(tmp_path / "four.pt", NAME)


def test_explain_draws_its_declared_map(photos_and_checkpoint, tmp_path, capsys):
    photos, checkpoint = photos_and_checkpoint
    assert cli.main(["explain", "--checkpoint", str(checkpoint), "--image", str(photos / "red.jpg"),
                     "--caption", "a red square", "--out", str(tmp_path / "pics"), "--device", "cpu"]) == 0
    assert (tmp_path / "pics" / "words_over_regions.png").stat().st_size > 0
    assert "not drawn" not in capsys.readouterr().out


CAPTION = ["a", "red", "square"]
HALVES = [[0, 0, 40, 60], [40, 0, 40, 60]]  # left and right half of an 80 x 60 photo (COCO x, y, w, h)


def boxed_halves(root):
    """Two 80 x 60 photos of different content captioned "a red square", the first with one "square" box
    over its left half, the second over its right half: some cells' centres inside, some outside, and
    a map that peaks on the same side in both hits exactly one. Returns (data folder, boxes file, photos)."""
    data, names = root / "data", ["a.jpg", "b.jpg"]
    photo(data / "images" / names[0], "red", size=(80, 60))
    photo(data / "images" / names[1], "green", size=(80, 60))
    sentences = [{"raw": " ".join(CAPTION), "tokens": CAPTION}]
    (data / "dataset_boxes.json").write_text(json.dumps(
        {"images": [{"filename": n, "split": "test", "sentences": sentences} for n in names]}))
    boxes = {"images": [{"id": i, "file_name": n, "width": 80, "height": 60} for i, n in enumerate(names)],
             "categories": [{"id": 1, "name": "square"}],
             "annotations": [{"image_id": i, "category_id": 1, "bbox": HALVES[i], "iscrowd": 0} for i in range(2)]}
    (root / "boxes.json").write_text(json.dumps(boxes))
    return data, root / "boxes.json", [data / "images" / n for n in names]


def test_the_pointing_game_reads_its_map(photos_and_checkpoint, tmp_path):
    """A box over part of each photo: the game's hits are those of the model's own map of "square",
    peaked by hand here (its argmax cell's centre inside the box or not)."""
    _, checkpoint = photos_and_checkpoint
    data, boxes, paths = boxed_halves(tmp_path)
    assert cli.main(["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data),
                     "--boxes", str(boxes), "--json", str(tmp_path / "out.json"),
                     "--min-cases", "1", "--device", "cpu"]) == 0
    overall = json.loads((tmp_path / "out.json").read_text())["overall"]
    ckpt = load_checkpoint(checkpoint, explaining=True)
    features = file_features([(p.name, p) for p in paths], ckpt.config.features, cache_root(ckpt.config) / "features")
    captions = encode_captions([CAPTION, CAPTION], ckpt.vocab, ckpt.config.data.max_words)
    with torch.no_grad():
        maps = ckpt.model(features.streams(ckpt.model.image_streams), captions, return_attention=True).attention
    rows = maps["words_over_regions"][:, CAPTION.index("square")].numpy()  # (2 photos, D cells)
    centres = cell_centres(features.grid_shape, 80, 60)  # (D, 2)
    inside = [inside_any(centres, [(x, y, x + bw, y + bh)]) for x, y, bw, bh in HALVES]  # (D,) per photo
    expected = [bool(inside[i][int(np.argmax(rows[i]))]) for i in range(2)]
    assert all(0 < box.mean() < 1 for box in inside)  # each box leaves cells outside: a wrong map could miss
    assert overall["cases"] == 2 and overall["hit"] == pytest.approx(100 * np.mean(expected))
    assert overall["random_cell"] == pytest.approx(100 * np.mean([box.mean() for box in inside]))


def test_it_indexes_a_folder_and_searches_it(photos_and_checkpoint, tmp_path):
    """Search's scores and order are the model's own scores of the query against every photo (brute force)."""
    from itm.retrieval.index import IndexStore, update_index
    from itm.retrieval.search import Searcher, SearchModels

    photos, checkpoint = photos_and_checkpoint
    models = SearchModels(checkpoint, checkpoint)  # the shortlist and the re-ranker
    report = update_index(IndexStore(tmp_path / "idx"), photos, models, progress=False)
    assert report.added == 5
    searcher = Searcher(tmp_path / "idx", normalise="none")  # raw: the model's own scores
    query = " ".join(WORDS[:3])
    hits = searcher.search(query, k=5)
    assert searcher.vectors.shape == (5, 8)  # vector_dim: the model's TINY embed_dim
    ckpt = models.reranker
    sha1s = [searcher.sha1_of_id[h.image_id] for h in hits]
    features = searcher.feature_rows(sorted(searcher.images))
    brute = score_all_pairs(ckpt.model, features, models.query_captions(query, ckpt))[:, 0]  # (5,) every photo
    by_sha1 = dict(zip(sorted(searcher.images), brute, strict=True))
    assert sorted(sha1s) == sorted(searcher.images)  # every photo once
    np.testing.assert_allclose([h.score for h in hits], [by_sha1[s] for s in sha1s], rtol=1e-5, atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
