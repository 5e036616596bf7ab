"""Checkpoints written before the general matcher contract still load and score identically.

``tests/data/bssan_v1_fixture.pt`` holds two tiny BSSAN checkpoints (the paper's variant and one with
every extension on) saved by the code of commit 46054e8, the fixed features and captions they were
scored on, and the all-pairs matrices that code computed (``tests/data/make_bssan_v1_fixture.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from itm.data.types import Captions, ImageFeatures
from itm.errors import ItmError
from itm.evaluation.engine import score_all_pairs
from itm.training.checkpoint import load_checkpoint, save_atomic

FIXTURE = Path(__file__).parent / "data" / "bssan_v1_fixture.pt"


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", ["bssan", "bssan_sharp"])
def test_old_checkpoint_scores_exactly_as_before(fixture, name, tmp_path):
    saved = fixture["models"][name]
    save_atomic(saved["checkpoint"], tmp_path / "best.pt")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.model.name == name
    features = ImageFeatures(fixture["features"]["regions"], fixture["features"]["objects"])
    captions = Captions(fixture["captions"]["ids"], fixture["captions"]["lengths"])
    scores = torch.from_numpy(score_all_pairs(ckpt.model, features, captions))
    assert torch.equal(scores, saved["scores"])  # bit for bit, not within a tolerance


def test_weights_of_another_architecture_fail_in_one_line(fixture, tmp_path):
    payload = dict(fixture["models"]["bssan"]["checkpoint"])
    payload["config"] = {**payload["config"], "model": {**payload["config"]["model"], "w2r_hidden": 3}}
    save_atomic(payload, tmp_path / "best.pt")
    with pytest.raises(ItmError, match="best.pt: its weights do not fit") as info:
        load_checkpoint(tmp_path / "best.pt")
    assert "\n" not in str(info.value)
