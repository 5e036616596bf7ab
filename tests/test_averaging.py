"""Weight averaging (train.ema_decay): the update rule, the swap, and what the trainer does with it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fit_quietly, setup_run

from itm.checkpoint import load_checkpoint
from itm.training.averaging import WeightAverage


def test_average_follows_the_ramped_moving_average_rule():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
        d = min(0.9, (1 + n) / (10 + n))  # ramp: 2/11, 3/12, ... until it reaches 0.9
        expected = d * expected + (1 - d) * value
        assert average.average["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert average.updates == 12


def test_integer_buffers_are_copied_not_averaged():
    model = torch.nn.BatchNorm1d(3)
    average = WeightAverage(model, decay=0.99)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3))
        average.update(model)
    assert average.average["num_batches_tracked"].item() == 3
    # the running mean moved, and the average lags behind it
    assert not torch.equal(average.average["running_mean"], model.running_mean)


def test_swapped_in_holds_the_average_and_restores_the_raw_weights_even_on_error():
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.5)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in average.average.values():
            p.add_(1.0)
    with pytest.raises(RuntimeError):
        with average.swapped_in(model):
            assert torch.equal(model.weight, raw["weight"] + 1.0)
            raise RuntimeError("validation failed")
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k]), k


def test_state_round_trip_and_mismatch_is_refused():
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.9)
    average.update(model)
    other = WeightAverage(torch.nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(average.state_dict())
    assert other.updates == 1 and torch.equal(other.average["weight"], average.average["weight"])
    with pytest.raises(KeyError, match="do not match"):
        WeightAverage(torch.nn.Linear(2, 2, bias=False), decay=0.9).load_state_dict(average.state_dict())


def test_trainer_validates_and_keeps_the_averaged_weights(tmp_path):
    # one epoch: its validation is the first, so it is the best and best.pt must be written from it
    trainer, train, val = setup_run(tmp_path, "train.loss=infonce", "train.ema_decay=0.9", "train.epochs=1")
    fit_quietly(trainer, train, val)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["best"] and "raw_rsum" in records[0]
    # the raw weights are what training left; best.pt holds the average
    best = load_checkpoint(tmp_path / "best.pt").model.state_dict()
    for key, value in trainer.average.average.items():
        assert torch.equal(best[key], value), key
    raw = trainer.model.state_dict()
    assert any(not torch.equal(best[k], raw[k]) for k in raw if raw[k].is_floating_point())
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["average"]["updates"] == trainer.average.updates > 0
