"""The main job end to end on a tiny slice of the bundled Flickr8k subset, and ``itm explain`` on
its checkpoint. Real images, real feature extraction, one epoch of a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from itm.cli import main
from itm.demo import BUNDLED_DATA, run_demo

TINY = ["model.w2r_hidden=8", "model.w2r_mlp=[8]", "model.o2w_hidden=8", "model.o2w_mlp=[8]",
        "train.epochs=1", "train.batch_size=8", "train.val_images=6", "train.max_minutes=null",
        "eval.memory_budget_mb=64"]


def tiny_slice(root: Path, counts: dict[str, int]) -> Path:
    """The first images of each split of the bundled subset, as a Karpathy-format folder."""
    raw = json.loads((BUNDLED_DATA / "dataset_flickr8k.json").read_text(encoding="utf-8"))
    kept, seen = [], dict.fromkeys(counts, 0)
    for image in raw["images"]:
        if seen[image["split"]] < counts[image["split"]]:
            seen[image["split"]] += 1
            kept.append(image)
    (root / "images").mkdir(parents=True)
    for image in kept:
        os.symlink(BUNDLED_DATA / "images" / image["filename"], root / "images" / image["filename"])
    (root / "dataset_flickr8k.json").write_text(json.dumps({**raw, "images": kept}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data = tiny_slice(root / "data", {"train": 24, "val": 6, "test": 6})
    previous = os.environ.get("ITM_CACHE")
    os.environ["ITM_CACHE"] = str(root / "cache")
    try:
        report = run_demo(data, root / "out", config=None, overrides=TINY, progress=False,
                          log=lambda *args: None)
    finally:
        if previous is None:
            os.environ.pop("ITM_CACHE")
        else:
            os.environ["ITM_CACHE"] = previous
    return root, data, report


@pytest.mark.slow
def test_demo_writes_a_report_with_every_section_and_picture(demo_run):
    root, _, report = demo_run
    out = root / "out"
    assert report == out / "report.html"
    text = report.read_text(encoding="utf-8")
    for heading in ("Retrieval on the test split", "Training", "Retrieval examples", "What the model attends to"):
        assert heading in text
    assert "chance" in text and "data:image/png;base64," in text
    pictures = ["training_curve.png", "image_query_0.png", "image_query_1.png", "caption_query_0.png",
                "caption_query_1.png", "attention_0_w2r.png", "attention_0_o2w.png", "attention_1_w2r.png"]
    for name in pictures:
        assert (out / name).stat().st_size > 1000, name
    assert "training_curve.png" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "run" / "best.pt").is_file() and (out / "run" / "config.yaml").is_file()


@pytest.mark.slow
def test_explain_pair_and_retrieval_sheets(demo_run, tmp_path, monkeypatch, capsys):
    root, data, _ = demo_run
    monkeypatch.setenv("ITM_CACHE", str(root / "cache"))
    ckpt = str(root / "out" / "run")
    image = sorted((data / "images").iterdir())[0]
    assert main(["explain", "--checkpoint", ckpt, "--image", str(image), "--caption", "a dog runs",
                 "--out", str(tmp_path / "pair")]) == 0
    assert "score" in capsys.readouterr().out
    assert (tmp_path / "pair" / "w2r.png").is_file() and (tmp_path / "pair" / "o2w.png").is_file()
    test_image = json.loads((data / "dataset_flickr8k.json").read_text())["images"][-1]["filename"]
    assert main(["explain", "--checkpoint", ckpt, "--data", str(data), "--query-image", test_image,
                 "--query-caption", "a dog runs", "--out", str(tmp_path / "sheets")]) == 0
    assert (tmp_path / "sheets" / "top_captions.png").is_file()
    assert (tmp_path / "sheets" / "top_images.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("args, named", [
    (["--image", "MISSING.jpg", "--caption", "a dog"], "MISSING.jpg"),
    (["--image", "IMAGE", "--caption", "qwzx vvbnm"], "vocabulary"),
    (["--image", "IMAGE"], "--caption"),
])
def test_explain_bad_input_is_one_line(demo_run, tmp_path, capsys, args, named):
    root, data, _ = demo_run
    image = str(sorted((data / "images").iterdir())[0])
    args = [image if a == "IMAGE" else a for a in args]
    code = main(["explain", "--checkpoint", str(root / "out" / "run"), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and named in err and "\n" not in err


def test_bundled_data_is_found_without_shared():
    assert (BUNDLED_DATA / "dataset_flickr8k.json").is_file()
