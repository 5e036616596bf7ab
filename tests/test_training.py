"""Training end to end on synthetic data: learning, checkpoints, divergence, exact resume, the CLI.

The in-process tests use ``itm.data.synthetic.synthetic_split`` (features ready, a second each);
the CLI tests run ``itm train`` / ``itm eval`` in subprocesses on a tiny drawn Karpathy folder,
feature extraction included, and kill -9 a run mid-way to check that ``--resume`` is exact.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fit_quietly, kill_switch, setup_run

from itm.checkpoint import load_checkpoint, read_payload, save_atomic
from itm.config import RECOMMENDED_CONFIG, apply_overrides, load_config
from itm.data.synthetic import synthetic_karpathy_dir, synthetic_split
from itm.evaluation import chance_metrics
from itm.evaluation.engine import score_all_pairs
from itm.models.objectives import sample_negatives
from itm.training import loop
from itm.training.loop import Trainer, TrainingDiverged, epoch_order, scheduled_lr


def val_scores(model, split) -> np.ndarray:
    return score_all_pairs(model, split.features, split.captions, memory_budget_mb=64)


def mean_r5(metrics: dict) -> float:
    return (metrics["i2t"]["r5"] + metrics["t2i"]["r5"]) / 2


# -- the data --------------------------------------------------------------------------------------

def test_synthetic_split_is_a_consistent_matching_problem():
    split, vocab = synthetic_split(6, captions_per_image=3, grid=(2, 3), region_dim=5, n_objects=4, seed=7)
    assert split.features.regions.shape == (6, 6, 5) and split.features.objects.shape == (6, 4, 5)
    assert split.features.grid_shape == (2, 3)
    assert split.caption_to_image.tolist() == [i for i in range(6) for _ in range(3)]
    assert len(split.captions) == 18 and len(set(split.captions.lengths.tolist())) > 1  # varied lengths
    again, _ = synthetic_split(6, captions_per_image=3, grid=(2, 3), region_dim=5, n_objects=4, seed=7)
    assert torch.equal(again.features.regions, split.features.regions)  # deterministic
    assert torch.equal(again.captions.ids, split.captions.ids)
    held_out, _ = synthetic_split(4, seed=8, vocab=vocab, region_dim=5, grid=(2, 3))
    assert int(held_out.captions.ids.max()) < len(vocab)


def test_synthetic_karpathy_dir_is_readable(tmp_path):
    from itm.data.load import load_dataset

    root = synthetic_karpathy_dir(tmp_path / "synth", n_train=3, n_val=2, n_test=1, size=32)
    dataset = load_dataset(root)
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [3, 2, 1]
    assert all(im.path.is_file() and len(im.captions) == 5 for im in dataset.images)
    assert {im.path.suffix for im in dataset.images} == {".png", ".jpg"}


def test_sampled_negatives_never_belong_to_the_positive_image():
    owner = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    images = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3] * 20)
    neg = sample_negatives(owner, images, 3, torch.Generator().manual_seed(0))
    assert neg.shape == (160, 3)
    assert (owner[neg] != images[:, None]).all()


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(50, 3, 1), epoch_order(50, 3, 1))
    assert not torch.equal(epoch_order(50, 3, 1), epoch_order(50, 3, 2))
    assert sorted(epoch_order(50, 3, 1).tolist()) == list(range(50))


# -- (a) it learns -----------------------------------------------------------------------------------

# pairwise_hinge runs with softmax attention on the negatives: with eq. 8's uniform attention the
# hinge can be met by telling uniform from softmax attention apart, without matching anything (see
# the report); the in-batch InfoNCE learns with the default (uniform) setting.
LEARNING = [("pairwise_hinge", "softmax"), ("infonce", "uniform")]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss,negative_attention", LEARNING, ids=[loss for loss, _ in LEARNING])
def test_two_epochs_lower_the_loss_and_lift_recall_above_chance(tmp_path, loss, negative_attention, seed):
    trainer, train, val = setup_run(tmp_path, f"train.loss={loss}",
                                    f"model.negative_attention={negative_attention}", seed=seed)
    before = loop.validate(trainer.model, val, trainer.config)
    result = fit_quietly(trainer, train, val)
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    chance = chance_metrics(len(val.dataset), 5)
    after = history[-1]["val"]
    assert mean_r5(after) > mean_r5(chance) + 20, (after, chance)
    assert mean_r5(after) > mean_r5(before) + 15
    assert result["best_rsum"] == max(h["rsum"] for h in history)


# -- (b) checkpoints -------------------------------------------------------------------------------

def test_checkpoints_written_atomically_and_reload_to_identical_scores(tmp_path):
    trainer, train, val = setup_run(tmp_path / "run", "train.loss=infonce", n_train=64, n_val=8)
    fit_quietly(trainer, train, val)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"last.pt", "best.pt", "metrics.jsonl"}  # no temp files
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    expected = val_scores(trainer.model, val)
    last = load_checkpoint(run / "last.pt")
    assert not last.model.training
    np.testing.assert_array_equal(val_scores(last.model, val), expected)
    # the saved config, with the features the checkpoint says its images were extracted with
    assert last.config.model == trainer.config.model and last.config.train == trainer.config.train
    assert last.config.features.backbone == last.payload["feature_settings"]["backbone"] == "synthetic"
    assert last.payload["loop"]["epoch"] == 2 and last.payload["loop"]["step"] == 0
    assert "optimizer" in last.payload
    best = load_checkpoint(run)  # a run folder means its best.pt
    best_epoch = max(trainer.state.history, key=lambda h: h["rsum"])
    assert loop.validate(best.model, val, best.config)["rsum"] == pytest.approx(best_epoch["rsum"])


def test_save_atomic_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"format_version": 1, "value": torch.ones(3)}, path)

    def failing_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"format_version": 1, "value": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))


# -- (c) divergence --------------------------------------------------------------------------------

def nan_from_call(monkeypatch, trainer: Trainer, first_bad_call: int, gradient_only: bool = False) -> None:
    """Make the model's training loss NaN (or only its gradient, the loss staying finite) from one call on."""
    model = trainer.model
    real = model.training_loss
    calls = {"n": 0}

    def poisoned(batch):
        calls["n"] += 1
        value = real(batch)
        if calls["n"] < first_bad_call:
            return value
        if gradient_only:  # sqrt at 0: finite value 0, NaN gradient (0 * inf)
            anchor = next(p for p in model.parameters() if p.requires_grad)
            return value + (anchor.sum() * 0).sqrt()
        return value * float("nan")

    monkeypatch.setattr(model, "training_loss", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer, train, val = setup_run(tmp_path, "train.epochs=3", n_train=64, n_val=8)  # 10 steps/epoch
    nan_from_call(monkeypatch, trainer, first_bad_call=14)  # epoch 2, step 4
    with pytest.raises(TrainingDiverged) as info:
        fit_quietly(trainer, train, val)
    message = str(info.value)
    assert "nan" in message and "epoch 2 step 4" in message
    assert str(tmp_path / "last.pt") in message
    good = load_checkpoint(tmp_path / "last.pt")
    assert good.payload["loop"]["epoch"] == 1 and good.payload["loop"]["step"] == 0  # end of epoch 1
    assert all(torch.isfinite(v).all() for v in good.model.state_dict().values() if v.is_floating_point())
    assert np.isfinite(val_scores(good.model, val)).all()
    best = read_payload(tmp_path / "best.pt")  # the epoch-1 weights too
    for key, value in best["model"].items():
        assert torch.equal(value, good.payload["model"][key]), key
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_nan_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    trainer, train, val = setup_run(tmp_path, n_train=64, n_val=8)
    nan_from_call(monkeypatch, trainer, first_bad_call=2)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet"):
        fit_quietly(trainer, train, val)
    assert not (tmp_path / "last.pt").exists()


def test_nan_gradient_never_reaches_a_checkpoint(tmp_path, monkeypatch):
    # last.pt after every batch: a NaN gradient must stop the run before the weights (and so the
    # checkpoint written right after the step) turn NaN
    trainer, train, val = setup_run(tmp_path, "train.checkpoint_minutes=0", n_train=64, n_val=8)
    nan_from_call(monkeypatch, trainer, first_bad_call=5, gradient_only=True)
    with pytest.raises(TrainingDiverged, match="gradient became nan at epoch 1 step 5") as info:
        fit_quietly(trainer, train, val)
    assert str(tmp_path / "last.pt") in str(info.value)
    good = load_checkpoint(tmp_path / "last.pt")
    assert good.payload["loop"]["step"] == 4  # the last finite step of epoch 1
    assert all(torch.isfinite(v).all() for v in good.model.state_dict().values() if v.is_floating_point())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    # finite loss and gradients, but an optimiser step that leaves an inf weight behind
    trainer, train, val = setup_run(tmp_path, "train.checkpoint_minutes=0", n_train=64, n_val=8)
    real_step = trainer.optimizer.step
    steps = {"n": 0}

    def step_then_corrupt(*args, **kwargs):
        out = real_step(*args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 3:
            with torch.no_grad():
                trainer.model.branches["w2r"].bilinear[0, 0] = float("inf")
        return out

    trainer.optimizer.step = step_then_corrupt
    with pytest.raises(TrainingDiverged, match=r"non-finite \(branches.w2r.bilinear\) at epoch 1 step 3"):
        fit_quietly(trainer, train, val)
    good = load_checkpoint(tmp_path / "last.pt")
    assert good.payload["loop"]["step"] == 2
    assert torch.isfinite(good.model.branches["w2r"].bilinear).all()


def test_huge_learning_rate_mid_run_diverges_with_the_epoch_checkpoint_intact(tmp_path, monkeypatch):
    trainer, train, val = setup_run(tmp_path, "train.optimizer=sgd", n_train=64, n_val=8)
    real_end_epoch = Trainer.end_epoch

    def end_epoch_then_blow_up(self, *args, **kwargs):
        real_end_epoch(self, *args, **kwargs)
        self.cfg.lr = 1e30  # the step's learning rate is read from the config (schedules)

    monkeypatch.setattr(Trainer, "end_epoch", end_epoch_then_blow_up)
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        fit_quietly(trainer, train, val)
    good = load_checkpoint(tmp_path / "last.pt")
    assert good.payload["loop"]["epoch"] == 1
    assert np.isfinite(val_scores(good.model, val)).all()


# -- resume, in process ----------------------------------------------------------------------------

class Killed(BaseException):
    """Stands in for kill -9 between two batches (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("augmentation", [[], ["train.region_drop=0.3", "train.word_drop=0.2"],
                                          ["train.ema_decay=0.9"]],
                         ids=["plain", "augmented", "averaged"])
def test_resume_after_interruption_is_exact(tmp_path, monkeypatch, augmentation):
    common = ["train.loss=pairwise_hinge", "train.epochs=3", "train.checkpoint_minutes=0", *augmentation]
    reference, train, val = setup_run(tmp_path / "a", *common, n_train=64, n_val=8)
    fit_quietly(reference, train, val)

    interrupted, train, val = setup_run(tmp_path / "b", *common, n_train=64, n_val=8)
    real = interrupted.model.training_loss
    calls = {"n": 0}

    def killed_mid_epoch_2(batch):
        calls["n"] += 1
        if calls["n"] == 16:  # epoch 2, step 6
            raise Killed
        return real(batch)

    monkeypatch.setattr(interrupted.model, "training_loss", killed_mid_epoch_2)
    with pytest.raises(Killed):
        fit_quietly(interrupted, train, val)
    monkeypatch.undo()

    resumed, train, val = setup_run(tmp_path / "b", *common, seed=0, n_train=64, n_val=8)
    with torch.no_grad():  # different starting weights: restore must overwrite everything
        for p in resumed.model.parameters():
            p.add_(1.0)
    payload = read_payload(tmp_path / "b" / "last.pt")
    assert (payload["loop"]["epoch"], payload["loop"]["step"]) == (1, 5)
    resumed.restore(payload)
    fit_quietly(resumed, train, val)

    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    if reference.average is not None:  # the weight average resumes too (so validation matches below)
        assert reference.average.updates == resumed.average.updates
        for key, value in reference.average.average.items():
            assert torch.equal(value, resumed.average.average[key]), key
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == rb["train_loss"] and ra["val"] == rb["val"]


# -- (d) the CLI: kill -9 and --resume; itm eval --json ------------------------------------------------

CLI_TINY = ["model.w2r_hidden=8", "model.w2r_mlp=[8]", "model.o2w_hidden=8", "model.o2w_mlp=[8]",
            "features.num_objects=3", "train.batch_size=4", "train.epochs=3", "train.threads=1",
            "train.checkpoint_minutes=0", "train.val_images=8", "train.max_minutes=null",
            "eval.memory_budget_mb=64"]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = synthetic_karpathy_dir(root / "synth", n_train=24, n_val=8, n_test=8, size=64, seed=0)
    env = {**os.environ, "ITM_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return root, data, env


def itm(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itm.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def train_args(data: Path, out: Path, config: str | None = "bssan_cpu") -> list[str]:
    """``itm train`` with CLI_TINY on ``config`` (None: the command's default)."""
    args = ["train", "--data", str(data), "--out", str(out), "--no-progress"]
    args += ["--config", config] if config else []
    for item in CLI_TINY:
        args += ["--set", item]
    return args


def metrics_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(cli_env) -> Path:
    root, data, env = cli_env
    run = root / "uninterrupted"
    done = itm(train_args(data, run), env)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


@pytest.mark.slow
def test_cli_kill_9_then_resume_matches_an_uninterrupted_run(cli_env, reference_run):
    root, data, env = cli_env
    run = root / "killed"
    # kill -9 three batches into epoch 2, right after last.pt is written (it is after every batch)
    armed = kill_switch(root / "kill", "itm.training.loop:Trainer.save_last",
                        "(self.state.epoch, self.state.step) == (1, 3)", env=env)
    proc = subprocess.run([sys.executable, "-m", "itm.cli", *train_args(data, run)], env=armed,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed_at = read_payload(run / "last.pt")["loop"]
    assert (killed_at["epoch"], killed_at["step"]) == (1, 3)

    done = itm(["train", "--resume", str(run), "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout

    lines = metrics_lines(run)
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # one line per epoch, no duplicates
    reference = metrics_lines(reference_run)
    for got, want in zip(lines, reference, strict=True):
        assert got["train_loss"] == want["train_loss"] and got["val"] == want["val"], got["epoch"]
    final, expected = read_payload(run / "last.pt"), read_payload(reference_run / "last.pt")
    assert final["loop"]["epoch"] == 3
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key  # resume is exact, bit for bit
    assert not list(run.glob(".*.tmp"))  # a temp file left by the kill is overwritten and renamed away
    assert (run / "summary.json").is_file()


@pytest.mark.slow
def test_cli_train_without_config_trains_the_recommended_config(cli_env):
    """No --config: the demo's recommended config, not the paper objective that stays at chance."""
    root, data, env = cli_env
    run = root / "default_config"
    done = itm(train_args(data, run, config=None), env)
    assert done.returncode == 0, done.stderr[-2000:]
    trained = load_config(run / "config.yaml")
    recommended = apply_overrides(load_config(RECOMMENDED_CONFIG), CLI_TINY)
    assert trained == recommended
    assert (trained.model.name, trained.train.loss) != (load_config("bssan_cpu").model.name, "pairwise_hinge")
    assert RECOMMENDED_CONFIG in itm(["train", "--help"], env).stdout


@pytest.mark.slow
def test_cli_eval_json_has_the_documented_keys(cli_env, reference_run):
    root, data, env = cli_env
    out = root / "eval" / "metrics.json"
    done = itm(["eval", "--checkpoint", str(reference_run), "--data", str(data), "--split", "test",
                "--json", str(out), "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"i2t", "t2i", "rsum", "n_images", "n_captions", "seconds"} <= set(result)
    for direction in ("i2t", "t2i"):
        assert set(result[direction]) == {"r1", "r5", "r10", "medr", "meanr"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in result[direction].values())
    assert (result["n_images"], result["n_captions"]) == (8, 40)
    recalls = [result[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert result["rsum"] == pytest.approx(sum(recalls))
    # the scoring's wall time, recorded to the hundredth and the same figure the table's title printed
    assert isinstance(result["seconds"], float) and math.isfinite(result["seconds"])
    assert round(result["seconds"], 2) == result["seconds"]
    assert f"8 images, 40 captions, {result['seconds']:.1f} s" in done.stdout
    assert "overrides" not in result  # only a run scored with --set records them
    (trained,) = result["provenance"]  # what trained the model, from its run folder
    assert {k: trained[k] for k in ("config", "overrides", "seed", "epochs_planned", "epochs", "time_limit_hit")} \
        == {"config": "bssan_cpu", "overrides": CLI_TINY, "seed": 0, "epochs_planned": 3, "epochs": 3,
            "time_limit_hit": False}
    assert "not_recorded" not in trained
    # the training seconds are the run's own record, the clock its last epoch's line stopped at: that
    # line keeps it to 0.01 s and the summary to 0.1 s, so they differ by at most 0.055 s
    summary = json.loads((reference_run / "summary.json").read_text())
    assert isinstance(trained["train_seconds"], float) and trained["train_seconds"] == summary["train_seconds"]
    assert trained["train_seconds"] == pytest.approx(metrics_lines(reference_run)[-1]["elapsed"], abs=0.06)
    assert "commit" in trained and "eval_commit" in result


@pytest.mark.slow
def test_cli_eval_reports_hubness_and_a_normalised_row_beside_the_raw_one(cli_env, reference_run):
    """--normalise: text -> photo figures with each photo's caption-bank statistics, recomputed here from
    the saved matrix and the bank scored through the library; the raw figures stay as they were."""
    from itm.data.load import load_dataset
    from itm.evaluation.evaluate import evaluate_normalised
    from itm.evaluation.hubness import DEFAULTS, hubness
    from itm.pipeline import encoded_bank, prepare_split

    root, data, env = cli_env
    out, matrix = root / "eval" / "normalised.json", root / "eval" / "normalised.npy"
    done = itm(["eval", "--checkpoint", str(reference_run), "--data", str(data), "--split", "test", "--normalise",
                "csls", "--json", str(out), "--scores", str(matrix), "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "with csls" in done.stdout and "skewness" in done.stdout
    result, scores = json.loads(out.read_text()), np.load(matrix)
    assert result["hubness"] == hubness(scores)
    ckpt = load_checkpoint(reference_run)
    split = prepare_split(load_dataset(data, "test").split("test"), ckpt.config, ckpt.vocab, progress=False)
    bank = score_all_pairs(ckpt.model, split.features, encoded_bank(ckpt.config, ckpt.vocab, DEFAULTS["csls"].bank_size))
    expected = evaluate_normalised([scores], [bank], split.caption_to_image, DEFAULTS["csls"])
    assert result["normalised"]["normalisation"] == DEFAULTS["csls"].to_dict()
    for key in ("r1", "r5", "r10"):
        assert result["normalised"]["t2i"][key] == pytest.approx(expected["t2i"][key])
        assert result["normalised"]["i2t"][key] == pytest.approx(result["i2t"][key])  # image -> text stays raw
    assert result["normalised"]["hubness"] == expected["hubness"]
    refused = itm(["eval", "--checkpoint", str(reference_run), "--data", str(data), "--protocol", "coco1k",
                   "--normalise", "dis"], env)
    assert refused.returncode == 2 and "--normalise" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_cli_eval_of_a_checkpoint_twice_is_the_checkpoint(cli_env, reference_run):
    """An ensemble of one model with itself has the same scores, so the same metrics."""
    root, data, env = cli_env
    outs = [root / "eval" / "single.json", root / "eval" / "twice.json"]
    for out, checkpoints in zip(outs, [[str(reference_run)], [str(reference_run)] * 2], strict=True):
        done = itm(["eval", "--checkpoint", *checkpoints, "--data", str(data), "--split", "test",
                    "--json", str(out), "--no-progress"], env)
        assert done.returncode == 0, done.stderr[-2000:]
    single, twice = (json.loads(out.read_text()) for out in outs)
    assert twice["ensemble"] == [str(reference_run)] * 2 and "ensemble" not in single
    for key in ("i2t", "t2i", "rsum"):
        assert twice[key] == pytest.approx(single[key])


@pytest.mark.slow
def test_cli_eval_over_two_grids_is_the_mean_of_the_two_views(cli_env, reference_run):
    """eval.score_sizes: the model's matrix on its trained grid and on a finer one, each z-scored, averaged."""
    from itm.evaluation.evaluate import combine_scores

    root, data, env = cli_env
    views = {}
    for name, sets in (("trained", []), ("finer", ["features.image_size=320"]), ("both", ["eval.score_sizes=[320]"])):
        out = root / "eval" / f"views_{name}"
        args = ["eval", "--checkpoint", str(reference_run), "--data", str(data), "--split", "test", "--no-progress",
                "--json", f"{out}.json", "--scores", f"{out}.npy"]
        done = itm(args + [item for value in sets for item in ("--set", value)], env)
        assert done.returncode == 0, done.stderr[-2000:]
        views[name] = json.loads(Path(f"{out}.json").read_text()), np.load(f"{out}.npy")
    trained, finer, both = (views[name][1] for name in ("trained", "finer", "both"))
    assert not np.allclose(trained, finer)  # two views that differ
    np.testing.assert_allclose(both, combine_scores([trained, finer], "zscore"), rtol=1e-5, atol=1e-5)
    assert views["both"][0]["score_sizes"] == [[224, 320]] and views["both"][0]["ensemble_norm"] == "zscore"
    assert "score_sizes" not in views["trained"][0] and "at 224 + 320 px" in done.stdout
    # each view's own figures come with the combination, equal to scoring that grid alone
    alone = views["both"][0]["members"]
    assert [(m["checkpoint"], m["image_size"]) for m in alone] == [(str(reference_run), 224), (str(reference_run), 320)]
    for member, name in zip(alone, ("trained", "finer"), strict=True):
        assert member["rsum"] == pytest.approx(views[name][0]["rsum"], abs=1e-6)
        assert member["t2i"] == pytest.approx(views[name][0]["t2i"], abs=1e-6)
    assert "members" not in views["trained"][0] and "alone: " in done.stdout
    bad = itm(["eval", "--checkpoint", str(reference_run), "--data", str(data), "--set", "eval.score_sizes=[224]"], env)
    assert bad.returncode != 0 and "none equal to features.image_size 224" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_resume_takes_train_overrides_only(cli_env, reference_run, tmp_path):
    _, _, env = cli_env
    run = tmp_path / "continued"
    shutil.copytree(reference_run, run)
    done_epochs = [r["epoch"] for r in metrics_lines(run)]
    refused = itm(["train", "--resume", str(run), "--set", "model.w2r_hidden=4"], env)
    assert refused.returncode == 2 and "only train.*" in refused.stderr
    longer = itm(["train", "--resume", str(run), "--set", f"train.epochs={done_epochs[-1] + 1}",
                  "--set", "train.patience=10", "--no-progress"], env)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert [r["epoch"] for r in metrics_lines(run)] == [*done_epochs, done_epochs[-1] + 1]


def test_cosine_schedule_runs_from_lr_to_zero_and_constant_stays():
    cosine = load_config(None, ["train.lr=0.4", "train.lr_schedule=cosine"]).train
    assert scheduled_lr(cosine, 0.0) == pytest.approx(0.4)
    assert scheduled_lr(cosine, 0.5) == pytest.approx(0.2)
    assert scheduled_lr(cosine, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(cosine, 1.5) == pytest.approx(0.0, abs=1e-12)  # past the plan: stays at 0
    values = [scheduled_lr(cosine, t / 10) for t in range(11)]
    assert all(a > b for a, b in itertools.pairwise(values))
    constant = load_config(None, ["train.lr=0.4"]).train
    assert {scheduled_lr(constant, t / 10) for t in range(11)} == {0.4}


def test_trainer_applies_the_schedule_step_by_step(tmp_path, monkeypatch):
    trainer, train, val = setup_run(tmp_path, "train.lr_schedule=cosine", "train.epochs=2", n_train=64, n_val=8)
    seen = []
    real_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return real_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    fit_quietly(trainer, train, val)
    steps = len(seen)
    assert steps >= 4
    expected = [scheduled_lr(trainer.cfg, s / steps) for s in range(steps)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(trainer.cfg.lr) and seen[-1] < 0.1 * trainer.cfg.lr


def test_a_run_cut_by_its_time_limit_says_so(tmp_path):
    """train.max_minutes: the epoch in progress stops after its first step (any step outlasts 1e-9
    minutes), is validated, and the run ends, reporting the cut; a run that finishes reports none."""
    trainer, train, val = setup_run(tmp_path / "cut", "train.max_minutes=1e-9", "train.epochs=3", n_train=64, n_val=8)
    cut = fit_quietly(trainer, train, val)
    assert cut["time_limit_hit"] and cut["epochs"] == 1 and cut["history"][0]["steps"] == 1
    trainer, train, val = setup_run(tmp_path / "whole", "train.epochs=1", n_train=64, n_val=8)
    assert not fit_quietly(trainer, train, val)["time_limit_hit"]


@pytest.mark.slow
def test_cli_eval_by_vocabulary(cli_env, reference_run):
    """--by-vocabulary: every caption in one of the two groups, and the probe's figures beside chance."""
    root, data, env = cli_env
    out = root / "eval" / "vocab.json"
    done = itm(["eval", "--checkpoint", str(reference_run), "--data", str(data), "--split", "test",
                "--json", str(out), "--no-progress", "--by-vocabulary"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    groups = result["by_vocabulary"]
    assert groups["seen"]["captions"] + groups["unseen"]["captions"] == result["n_captions"]
    assert set(result["concept_probe"]) == {"words", "k", "recall", "chance", "per_word"}
    assert "captions by vocabulary" in done.stdout and "concept probe" in done.stdout
