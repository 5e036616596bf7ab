"""Bad input through the command line: one ``error:`` line and exit 2 (or, with ``--skip-bad``, a
report), and nothing already written — feature cache, run folder, results — is changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_inputs import checkpoint_files, payload
from fuzz_support import budget
from hypothesis import given
from PIL import Image

from itm.cli import main

FEATURES = ["--image-size", "64", "--no-progress", "--threads", "1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert all(name in err for name in names), err
    return err


@pytest.fixture
def keep_threads():
    """``itm features`` sets torch's thread count: put it back for the tests that follow."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """A Karpathy folder of 6 small photos whose features are already in ``cache``."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(6):
        name = f"photo{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (60 + i, 70, 3), dtype=np.uint8)).save(root / "images" / name, quality=90)
        entries.append({"filename": name, "split": "test", "sentences": [{"raw": "a dog runs"}] * 5})
    (root / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}), encoding="utf-8")
    saved = torch.get_num_threads()
    assert main(["features", "--data", str(root), "--out", str(root / "cache"), *FEATURES]) == 0
    torch.set_num_threads(saved)
    return root


@pytest.mark.parametrize("cut", [10, 100, 300, 500])
def test_features_on_a_jpeg_cut_short_is_one_line_and_the_cache_is_kept(photo_folder, tmp_path, capsys,
                                                                        keep_threads, cut):
    """The issue's case: one JPEG of the folder cut to its first N bytes (inside the header)."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for p in (photo_folder / "images").iterdir():
        (data / "images" / p.name).write_bytes(p.read_bytes())
    (data / "dataset_flickr8k.json").write_bytes((photo_folder / "dataset_flickr8k.json").read_bytes())
    cut_file = data / "images" / "photo3.jpg"
    cut_file.write_bytes(cut_file.read_bytes()[:cut] + b"\0")  # + a byte: not the cached photo
    cache = photo_folder / "cache"
    before = snapshot(cache)
    argv = ["features", "--data", str(data), "--out", str(cache), *FEATURES]
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys, "photo3.jpg")
    assert snapshot(cache) == before
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "1 skipped" in out and "photo3.jpg" in out
    assert snapshot(cache) == before  # the 5 good photos were all cached already


@budget(0.5)
@given(data=checkpoint_files())
def test_eval_with_any_checkpoint_file_is_one_line_and_results_are_kept(tmp_path_factory, capsys, data):
    """``itm eval`` on a damaged checkpoint (or on a missing dataset): exit 2, one line, and an
    earlier results file is left as it was."""
    folder = tmp_path_factory.mktemp("eval")
    (folder / "best.pt").write_bytes(data)
    results = folder / "results.json"
    results.write_text('{"rsum": 123.4}', encoding="utf-8")
    argv = ["eval", "--checkpoint", str(folder / "best.pt"), "--data", str(folder / "no_data"),
            "--json", str(results), "--no-progress"]
    assert main(argv) == 2
    one_error_line(capsys)
    assert results.read_text(encoding="utf-8") == '{"rsum": 123.4}' and (folder / "best.pt").read_bytes() == data


@pytest.mark.parametrize("last", ["truncated", "best_pt", "foreign"])
def test_resume_from_a_bad_last_checkpoint_is_one_line_and_the_run_is_kept(tmp_path, capsys, last):
    """``itm train --resume`` where last.pt is cut short, is a best.pt (no training state), or is
    not a checkpoint: exit 2 naming last.pt, every file of the run unchanged."""
    run = tmp_path / "run"
    run.mkdir()
    buf = tmp_path / "best.pt"
    torch.save(payload(), buf)
    data = {"truncated": buf.read_bytes()[:500], "best_pt": buf.read_bytes(), "foreign": b"\x80\x04K\x01."}[last]
    (run / "last.pt").write_bytes(data)
    (run / "run.json").write_text(json.dumps({"data": str(tmp_path / "data")}), encoding="utf-8")
    (run / "config.yaml").write_text("train: {epochs: 2}\n", encoding="utf-8")
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    one_error_line(capsys, "last.pt")
    assert snapshot(run) == before
