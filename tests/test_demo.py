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
    assert all((tmp_path / "pair" / f"{name}.png").is_file() for name in ("concept", "w2r", "o2w"))
    test_image = json.loads((data / "dataset_flickr8k.json").read_text())["images"][-1]["filename"]
    assert main(["explain", "--checkpoint", ckpt, "--data", str(data), "--query-image", test_image,
                 "--query-caption", "a dog runs", "--out", str(tmp_path / "sheets")]) == 0
    assert (tmp_path / "sheets" / "top_captions.png").is_file()
    assert (tmp_path / "sheets" / "top_images.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("args, named", [
    (["--image", "MISSING.jpg", "--caption", "a dog"], "MISSING.jpg"),
    (["--image", "IMAGE", "--caption", "qwzx vvbnm"], "can read none of its words (qwzx, vvbnm)"),
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


@pytest.mark.slow
@pytest.mark.parametrize("config", ["caan_cpu", "mlasm_cpu"])
def test_demo_and_explain_run_every_model(tmp_path, monkeypatch, capsys, config):
    """``itm demo --config`` and ``itm explain`` for the other two papers: the report's attention
    section and the pair pictures are the maps each model declares."""
    from helpers import tiny_overrides

    from itm.models import MODELS  # noqa: F401  (registers every model)

    name = config.removesuffix("_cpu")
    data = tiny_slice(tmp_path / "data", {"train": 16, "val": 4, "test": 4})
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    overrides = [*tiny_overrides(name)[1:], *TINY[4:], "features.backbone=efficientnet_lite0", "features.image_size=96"]
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "out"), "--config", config,
                 *sum((["--set", o] for o in overrides), [])]) == 0
    out = tmp_path / "out"
    assert "What the model attends to" in (out / "report.html").read_text(encoding="utf-8")
    assert list(out.glob("attention_0_*.png"))
    image = sorted((data / "images").iterdir())[0]
    assert main(["explain", "--checkpoint", str(out / "run"), "--image", str(image), "--caption", "a dog runs",
                 "--out", str(tmp_path / "pair")]) == 0
    drawn = {p.stem for p in (tmp_path / "pair").glob("*.png")}
    assert drawn == {"concept", "words_over_regions", "regions_over_words"} | ({"region_weights", "word_weights"}
                                                                    if name == "caan" else set())


@pytest.mark.slow
def test_pointing_game_command_end_to_end(demo_run, tmp_path, monkeypatch, capsys):
    """A word of test image 0's captions is boxed by the whole photo (every peak is a hit); the same
    word in other photos has no box there, so those photos give no case."""
    root, data, _ = demo_run
    monkeypatch.setenv("ITM_CACHE", str(root / "cache"))
    images = [im for im in json.loads((data / "dataset_flickr8k.json").read_text())["images"] if im["split"] == "test"]
    word = images[0]["sentences"][0]["tokens"][1]
    boxes = {"images": [{"id": n, "file_name": im["filename"], "width": 1000, "height": 800}
                        for n, im in enumerate(images)],
             "categories": [{"id": 7, "name": "thing"}],
             "annotations": [{"image_id": 0, "category_id": 7, "bbox": [0, 0, 1000, 800], "iscrowd": 0}]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    (tmp_path / "syn.json").write_text(json.dumps({word: "thing"}))
    assert main(["pointing-game", "--checkpoint", str(root / "out" / "run"), "--data", str(data),
                 "--boxes", str(tmp_path / "boxes.json"), "--synonyms", str(tmp_path / "syn.json"),
                 "--json", str(tmp_path / "out.json"), "--min-cases", "1"]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    expected = sum(s["tokens"][: 30].count(word) for s in images[0]["sentences"])
    assert result["overall"]["cases"] == expected >= 1
    assert result["overall"]["hit"] == result["overall"]["random_cell"] == result["overall"]["centre_cell"] == 100.0
    assert "thing" in capsys.readouterr().out
    trained_grid = result["grid"]
    # a finer grid at test time: the same weights over more cells of a larger image
    assert main(["pointing-game", "--checkpoint", str(root / "out" / "run"), "--data", str(data),
                 "--boxes", str(tmp_path / "boxes.json"), "--synonyms", str(tmp_path / "syn.json"),
                 "--json", str(tmp_path / "fine.json"), "--set", "features.image_size=320"]) == 0
    fine = json.loads((tmp_path / "fine.json").read_text())
    assert fine["image_size"] == 320 and fine["grid"] == [10, 10] != trained_grid
    assert fine["overall"]["cases"] == expected
    # the config's explanation grid: pictures on it, the score printed with the grid it came from
    image = data / "images" / images[0]["filename"]
    assert main(["explain", "--checkpoint", str(root / "out" / "run"), "--image", str(image), "--caption", word,
                 "--out", str(tmp_path / "pair"), "--set", "eval.explain_image_size=320"]) == 0
    assert "on a 10 x 10 grid (320 px)" in capsys.readouterr().out
    assert main(["pointing-game", "--checkpoint", str(root / "out" / "run"), "--data", str(data),
                 "--boxes", str(tmp_path / "boxes.json"), "--set", "features.backbone=efficientnet_lite2"]) == 2
    err = capsys.readouterr().err
    assert "features.backbone" in err and "only features.image_size" in err and "Traceback" not in err
    assert main(["pointing-game", "--checkpoint", str(root / "out" / "run"), "--data", str(data),
                 "--boxes", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
