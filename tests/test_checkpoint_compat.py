"""Checkpoints written before the general matcher contract still load and score as before.

``tests/data/bssan_v1_fixture.pt`` holds two tiny BSSAN checkpoints (the paper's variant and one with
every extension on) saved by the code of commit 46054e8, the fixed features and captions they were
scored on, and the all-pairs matrices that code computed (``tests/data/make_bssan_v1_fixture.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from itm.checkpoint import load_checkpoint, save_atomic
from itm.data.types import Captions, ImageFeatures
from itm.errors import ItmError
from itm.evaluation.engine import score_all_pairs

FIXTURE = Path(__file__).parent / "data" / "bssan_v1_fixture.pt"


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


# The stored matrices were computed on another CPU, whose matmul kernels round differently: one unit
# in the last place (1e-7 at scores of 0.3) is seen between x86-64 machines. A model that loaded wrong
# (a missing layer, a changed default) moves scores by 1e-3 and more.
SCORE_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("name", ["bssan", "bssan_sharp"])
def test_old_checkpoint_scores_as_before(fixture, name, tmp_path):
    saved = fixture["models"][name]
    save_atomic(saved["checkpoint"], tmp_path / "best.pt")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.model.name == name
    features = ImageFeatures(fixture["features"]["regions"], fixture["features"]["objects"])
    captions = Captions(fixture["captions"]["ids"], fixture["captions"]["lengths"])
    for key, value in saved["checkpoint"]["model"].items():  # weights load exactly
        assert torch.equal(ckpt.model.state_dict()[key], value), key
    scores = torch.from_numpy(score_all_pairs(ckpt.model, features, captions))
    assert scores.shape == saved["scores"].shape
    torch.testing.assert_close(scores, saved["scores"], **SCORE_TOLERANCE)


def test_weights_of_another_architecture_fail_in_one_line(fixture, tmp_path):
    payload = dict(fixture["models"]["bssan"]["checkpoint"])
    payload["config"] = {**payload["config"], "model": {**payload["config"]["model"], "w2r_hidden": 3}}
    save_atomic(payload, tmp_path / "best.pt")
    with pytest.raises(ItmError, match="best.pt: its weights do not fit") as info:
        load_checkpoint(tmp_path / "best.pt")
    assert "\n" not in str(info.value)


def test_test_time_image_size_overrides_the_saved_feature_settings(fixture, tmp_path):
    """A finer grid at test time (docs/explain.md): the same weights, features from a larger image."""
    save_atomic(fixture["models"]["bssan"]["checkpoint"], tmp_path / "best.pt")
    trained = load_checkpoint(tmp_path).config.features
    finer = load_checkpoint(tmp_path, ["features.image_size=416"]).config.features
    assert finer.image_size == 416 != trained.image_size
    assert (finer.backbone, finer.num_objects) == (trained.backbone, trained.num_objects)


@pytest.mark.parametrize("override", ["features.backbone=vgg19", "features.num_objects=3", "features=1"])
def test_feature_settings_the_weights_depend_on_cannot_change_at_test_time(fixture, tmp_path, override):
    save_atomic(fixture["models"]["bssan"]["checkpoint"], tmp_path / "best.pt")
    with pytest.raises(ItmError, match="only features.image_size can change") as info:
        load_checkpoint(tmp_path, [override])
    assert override in str(info.value) and "\n" not in str(info.value)


def test_explain_image_size_applies_to_explanations_only(fixture, tmp_path):
    """``eval.explain_image_size``: attention pictures and the pointing game use the finer grid, scores
    the trained one; a named ``features.image_size`` override wins."""
    payload = dict(fixture["models"]["bssan"]["checkpoint"])
    payload["config"] = {**payload["config"], "eval": {**payload["config"].get("eval", {}), "explain_image_size": 416}}
    save_atomic(payload, tmp_path / "best.pt")
    trained = load_checkpoint(tmp_path).config.features.image_size
    assert trained != 416
    assert load_checkpoint(tmp_path, explaining=True).config.features.image_size == 416
    assert load_checkpoint(tmp_path, ["features.image_size=320"], explaining=True).config.features.image_size == 320
    assert load_checkpoint(tmp_path, ["eval.explain_image_size=null"], explaining=True).config.features.image_size \
        == trained
