"""Multi-scale training (train.image_sizes): each step reads the photos at one of the sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import fit_quietly, setup_run

from itm.config import load_config
from itm.data.synthetic import synthetic_split
from itm.errors import ConfigError
from itm.training.loop import step_view


@pytest.mark.parametrize("sizes", ["[0]", "[416, 416]", "[260]"])
def test_extra_sizes_must_be_positive_distinct_and_not_the_trained_one(sizes):
    with pytest.raises(ConfigError, match="train.image_sizes"):
        load_config(None, ["features.image_size=260", f"train.image_sizes={sizes}"])


def test_a_step_draws_each_size_uniformly_and_a_single_size_draws_nothing():
    split, _ = synthetic_split(4, seed=0)
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    assert step_view(split, gen) is split and torch.equal(gen.get_state(), before)  # a run without views: same stream
    finer, _ = synthetic_split(4, grid=(4, 4), seed=0)
    coarser, _ = synthetic_split(4, grid=(2, 2), seed=0)
    views = dataclasses.replace(split, views=(finer.features, coarser.features))
    drawn = [step_view(views, gen).features.regions.shape[1] for _ in range(600)]
    counts = {cells: drawn.count(cells) for cells in (9, 16, 4)}
    assert all(150 < n < 250 for n in counts.values()), counts  # 200 each expected
    assert all(step_view(views, gen).views == () for _ in range(5))


def test_a_run_trains_over_two_grids(tmp_path):
    trainer, train, val = setup_run(tmp_path / "run", "train.loss=infonce", "train.temperature=0.1")
    finer, _ = synthetic_split(len(train.dataset), grid=(4, 4), seed=0, region_dim=train.features.regions.shape[2],
                               vocab=None)
    result = fit_quietly(trainer, dataclasses.replace(train, views=(finer.features,)), val)
    assert result["epochs"] == 2 and result["best_rsum"] > 0
