"""Devices and mixed precision: ``--device`` resolution and its errors, checkpoints mapped onto a
device, bf16 training steps, and a tiny run end to end with ``--device cpu``. Tests that need a GPU
skip with a reason where CUDA is absent (the engine's bf16 tolerance is tested in test_engine.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import DIMS, fit_quietly, make_features, setup_run, tiny_batch, tiny_model

from itm import cli
from itm.checkpoint import load_checkpoint, model_payload, save_atomic
from itm.config import load_config
from itm.data.synthetic import synthetic_karpathy_dir
from itm.data.vocab import Vocab
from itm.devices import precision_context, resolve_device
from itm.errors import ConfigError, ItmError
from itm.evaluation.engine import score_all_pairs
from itm.models import MODELS
from itm.training import run as run_module

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")


def fake_gpus(monkeypatch, count: int) -> None:
    """Pretend ``count`` GPUs are visible (resolution only: nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# -- --device resolution -----------------------------------------------------------------------------

def test_cpu_and_the_default_without_cuda(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_cuda_names_and_the_default_with_gpus(monkeypatch):
    fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_under_torchrun_each_process_takes_its_local_rank(monkeypatch):
    fake_gpus(monkeypatch, 4)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device(None) == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ItmError, match="LOCAL_RANK"):
        resolve_device("cuda:0")  # every process on one GPU: NCCL would refuse
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ItmError, match="LOCAL_RANK 5 is out of range"):
        resolve_device("cuda")


@pytest.mark.parametrize("name,gpus,message", [
    ("gpu", 1, "expected cpu, cuda or cuda:N"),
    ("cuda:x", 1, "expected cpu, cuda or cuda:N"),
    ("cuda:-1", 1, "expected cpu, cuda or cuda:N"),
    ("", 1, "expected cpu, cuda or cuda:N"),
    ("cpu:0", 1, "takes no index"),
    ("cuda", 0, "CUDA is not available"),
    ("cuda:0", 0, "CUDA is not available"),
    ("cuda:3", 2, "out of range"),
])
def test_bad_device_is_one_line_naming_the_flag(monkeypatch, name, gpus, message):
    fake_gpus(monkeypatch, gpus)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ItmError) as info:
        resolve_device(name)
    text = str(info.value)
    assert text.startswith("--device") and message in text and "\n" not in text


# every command with --device; the other paths do not exist, so only a device checked first is named
COMMANDS = {
    "features": ["--data", "{x}"],
    "train": ["--data", "{x}", "--out", "{x}/run"],
    "eval": ["--checkpoint", "{x}/c.pt", "--data", "{x}"],
    "index": ["--images", "{x}", "--out", "{x}/idx", "--shortlist", "{x}/c.pt"],
    "search": ["--index", "{x}/idx", "--text", "a dog"],
    "serve": ["--index", "{x}/idx"],
    "explain": ["--checkpoint", "{x}/c.pt", "--out", "{x}/out"],
    "pointing-game": ["--checkpoint", "{x}/c.pt", "--data", "{x}", "--boxes", "{x}/b.json"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("device,gpus", [("gpu", 0), ("cuda", 0), ("cuda:2", 1)])
def test_every_command_rejects_a_bad_device_first(command, device, gpus, tmp_path, monkeypatch, capsys):
    fake_gpus(monkeypatch, gpus)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = [command, *(a.format(x=tmp_path / "missing") for a in COMMANDS[command]), "--device", device]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --device {device}: ") and err.count("\n") == 1, err


def test_train_command_passes_the_resolved_device(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(run_module, "train_run", lambda *args, **kwargs: seen.update(kwargs))
    fake_gpus(monkeypatch, 0)
    assert cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    assert seen["device"] == torch.device("cpu")  # the default without CUDA
    fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(["train", "--resume", str(tmp_path), "--device", "cuda:1"]) == 0
    assert seen["device"] == torch.device("cuda", 1)


# -- precision settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["train.precision", "eval.precision"])
def test_precision_is_checked_in_one_line_naming_the_key(key):
    assert getattr(load_config(None, [f"{key}=bf16"]), key.split(".")[0]).precision == "bf16"
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}=fp16"])
    assert str(info.value).startswith(f"{key}: must be one of fp32, bf16") and "\n" not in str(info.value)


def test_precision_context_is_autocast_for_bf16_only():
    x = torch.randn(3, 4)
    with precision_context(torch.device("cpu"), "bf16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with precision_context(torch.device("cpu"), "fp32"):
        assert (x @ x.T).dtype == torch.float32
    with pytest.raises(ItmError, match="precision"):
        precision_context(torch.device("cpu"), "fp16")


# -- checkpoints onto a device -----------------------------------------------------------------------

def save_tiny_checkpoint(path, name: str = "bssan", device: str = "cpu"):
    model, config = tiny_model(name)
    model.to(device)
    vocab = Vocab.from_list(["<pad>", "<unk>", *(f"w{i}" for i in range(DIMS.vocab_size - 2))])
    save_atomic(model_payload(model, config, vocab, DIMS, {"backbone": "synthetic"}), path)
    return model


def test_a_checkpoint_loads_onto_the_device_asked_for(tmp_path):
    saved = save_tiny_checkpoint(tmp_path / "c.pt")
    # the meta device stands in for a GPU: the weights must end up where the caller asks
    meta = load_checkpoint(tmp_path / "c.pt", device="meta")
    assert {p.device.type for p in meta.model.parameters()} == {"meta"}
    assert {b.device.type for b in meta.model.buffers()} <= {"meta"}
    cpu = load_checkpoint(tmp_path / "c.pt", device=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in cpu.model.parameters())
    for (key, want), got in zip(saved.state_dict().items(), cpu.model.state_dict().values(), strict=True):
        assert torch.equal(want, got), key
    assert all(v.device.type == "cpu" for v in torch.load(tmp_path / "c.pt", weights_only=True)["model"].values())


@needs_cuda
@pytest.mark.parametrize("name", MODELS.names())
def test_gpu_checkpoint_and_scores_match_the_cpu(tmp_path, name):
    """Saved from a GPU, loaded on the CPU and back on the GPU: same weights, scores within 1e-4."""
    gpu_model = save_tiny_checkpoint(tmp_path / "c.pt", name, "cuda")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in payload["model"].values())  # readable without a GPU
    cpu = load_checkpoint(tmp_path / "c.pt", device="cpu")
    gpu = load_checkpoint(tmp_path / "c.pt", device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    features = make_features(5)
    from helpers import make_captions

    captions = make_captions([4, 1, 7, 3, 2, 5])
    on_cpu = score_all_pairs(cpu.model, features, captions)
    np.testing.assert_allclose(score_all_pairs(gpu.model, features, captions), on_cpu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score_all_pairs(gpu_model.eval(), features, captions), on_cpu, rtol=1e-4, atol=1e-4)
    bf16 = score_all_pairs(gpu.model, features, captions, precision="bf16")
    assert bf16.dtype == np.float32 and np.abs(bf16 - on_cpu).max() <= 0.03 * np.abs(on_cpu).max()


# -- bf16 training -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS.names())
def test_a_bf16_training_step_gives_a_finite_loss_and_gradients(name):
    model, _ = tiny_model(name)
    model.train()
    with precision_context(torch.device("cpu"), "bf16"):
        loss = model.training_loss(tiny_batch(model))
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.float().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_trainer_runs_its_steps_under_bf16_autocast(tmp_path, monkeypatch):
    trainer, train, val = setup_run(tmp_path / "run", "train.precision=bf16", "train.epochs=1", n_train=64, n_val=8)
    model, seen = trainer.model, []
    original = model.training_loss

    def recorded(batch):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(batch)

    monkeypatch.setattr(model, "training_loss", recorded)
    result = fit_quietly(trainer, train, val)
    assert seen and all(seen)
    assert all(math.isfinite(h["train_loss"]) for h in result["history"])


@needs_cuda
def test_a_training_epoch_on_the_gpu(tmp_path):
    trainer, train, val = setup_run(tmp_path / "run", "train.precision=bf16", "train.epochs=1", n_train=64, n_val=8,
                                    device="cuda")
    result = fit_quietly(trainer, train, val)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert next(trainer.model.parameters()).device.type == "cuda"
    last = load_checkpoint(tmp_path / "run" / "last.pt", device="cpu")  # trained on the GPU, read on the CPU
    assert all(p.device.type == "cpu" for p in last.model.parameters())


# -- a tiny run end to end on the CLI ----------------------------------------------------------------

TINY = ["model.w2r_hidden=8", "model.w2r_mlp=[8]", "model.o2w_hidden=8", "model.o2w_mlp=[8]",
        "features.num_objects=3", "features.image_size=64", "train.batch_size=8", "train.epochs=1",
        "train.threads=1", "train.val_images=8", "eval.memory_budget_mb=64", "train.precision=bf16"]


@pytest.mark.slow
def test_device_cpu_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=16, n_val=8, n_test=8, size=64)
    features = ["features", "--data", str(data), "--image-size", "64", "--num-objects", "3", "--threads", "1",
                "--no-progress", "--device", "cpu"]
    assert cli.main(features) == 0
    train = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert cli.main([*train, *(x for item in TINY for x in ("--set", item))]) == 0
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        argv = ["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(data), "--no-progress",
                "--device", "cpu", "--precision", precision, "--json", str(out), "--scores", str(tmp_path / f"{precision}.npy")]
        assert cli.main(argv) == 0
        results[precision] = json.loads(out.read_text())
        assert (results[precision]["device"], results[precision]["precision"]) == ("cpu", precision)
        assert math.isfinite(results[precision]["rsum"])
    exact, bf16 = np.load(tmp_path / "fp32.npy"), np.load(tmp_path / "bf16.npy")
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - exact).max() <= 0.03 * np.abs(exact).max()
    capsys.readouterr()
