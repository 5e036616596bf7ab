"""extract_features: shapes, cache reuse, dedup, bad images, precomputed arrays, the command."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itm.cli import main
from itm.config import FeatureConfig
from itm.data.types import Dataset, ImageRecord
from itm.errors import DataError
from itm.features.cache import FeatureCache, default_cache_root
from itm.features.extract import extract_features

SMALL = FeatureConfig(image_size=64)  # EfficientNet-Lite0 at 64 px: a 2x2 grid, fast on two cores


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Small JPEGs of different sizes with a bright square somewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(48, 96)), int(rng.integers(48, 96))
        arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        arr[y : y + h // 3, x : x + w // 3] = 230
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def dataset_of(paths: list[Path], root: Path) -> Dataset:
    records = [ImageRecord(p.name, p, "test", ["a caption"], [["a", "caption"]]) for p in paths]
    return Dataset("tiny", root, records)


def chunk_count(cache_root: Path) -> int:
    return len(list(cache_root.glob("*/chunk-*")))


def test_shapes_boxes_and_settings(tmp_path):
    paths = make_images(tmp_path / "img", 5)
    feats, kept, report = extract_features(dataset_of(paths, tmp_path), SMALL, tmp_path / "cache", progress=False)
    assert len(kept) == 5 and report.extracted == 5 and report.cached == 0
    assert feats.regions.shape == (5, 4, 1280) and feats.regions.dtype == torch.float16
    assert feats.objects.shape == (5, 10, 1280) and feats.objects.dtype == torch.float16
    assert feats.boxes.shape == (5, 10, 4) and feats.grid_shape == (2, 2)
    for path, boxes in zip(paths, feats.boxes, strict=True):
        w, h = Image.open(path).size
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert feats.settings["backbone"] == "efficientnet_lite0" and feats.settings["num_objects"] == 10
    known = {k: v for k, v in feats.settings.items() if k in FeatureConfig.__dataclass_fields__}
    assert FeatureConfig(**known) == SMALL  # checkpoints can rebuild the settings
    # the cache's size is the bytes on disk of its settings folder, which holds the five photos
    assert report.cache_images == 5 and report.cache_dir == str(next((tmp_path / "cache").iterdir()))
    assert report.cache_bytes == sum(f.stat().st_size for f in Path(report.cache_dir).rglob("*") if f.is_file())
    # the time per image is the call's recorded wall seconds over the photos it extracted, whatever
    # they took; the wall time holds its timed parts (one clock, disjoint intervals)
    assert isinstance(report.seconds, float) and math.isfinite(report.seconds)
    assert report.seconds_per_image == report.seconds / 5
    assert report.seconds >= report.decode_seconds + report.grid_seconds + report.object_seconds
    assert "5 images: 5 extracted now" in report.summary()
    # a later call over two of the photos still reports the size per photo of the whole folder
    _, _, again = extract_features(dataset_of(paths[:2], tmp_path), SMALL, tmp_path / "cache", progress=False)
    assert (again.images, again.extracted, again.cached) == (2, 0, 2) and again.seconds_per_image == 0.0
    assert again.cache_images == 5 and again.cache_bytes == report.cache_bytes
    assert f"({report.cache_bytes / 5 / 1024:.0f} KiB/image)" in again.summary()


def test_object_vector_is_roi_average_of_the_map(tmp_path):
    """A whole-image box averages RoIAlign samples over the full map: close to the grid mean."""
    paths = make_images(tmp_path / "img", 1)
    feats, _, _ = extract_features(dataset_of(paths, tmp_path), FeatureConfig(image_size=64, proposals="grid"),
                                   tmp_path / "cache", progress=False)
    whole = feats.objects[0, 0].float()  # grid proposals start with the whole image
    torch.testing.assert_close(whole, feats.regions[0].float().mean(0), atol=0.02, rtol=0.02)


def test_cache_reuse_and_same_photo_in_two_folders(tmp_path):
    paths = make_images(tmp_path / "a", 4)
    copy = tmp_path / "b" / "renamed.jpg"
    copy.parent.mkdir()
    shutil.copy(paths[1], copy)
    ds = dataset_of([*paths, copy], tmp_path)
    first, _, r1 = extract_features(ds, SMALL, tmp_path / "cache", progress=False, chunk_size=2)
    assert r1.extracted == 4 and r1.cached == 1  # the copy is the same bytes: computed once
    torch.testing.assert_close(first.regions[1], first.regions[4], rtol=0, atol=0)
    again, _, r2 = extract_features(ds, SMALL, tmp_path / "cache", progress=False, chunk_size=2)
    assert r2.extracted == 0 and r2.cached == 5 and "0 extracted now" in r2.summary()
    assert torch.equal(first.regions, again.regions) and torch.equal(first.objects, again.objects)
    assert torch.equal(first.boxes, again.boxes)
    other, _, r3 = extract_features(ds, FeatureConfig(image_size=64, num_objects=3), tmp_path / "cache", progress=False)
    assert r3.extracted == 4 and other.objects.shape == (5, 3, 1280)  # other settings, other folder
    assert len(list((tmp_path / "cache").iterdir())) == 2


def make_bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = make_images(folder, 1)[0]
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("hello")
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("L", (50, 40), 128).save(folder / "gray.jpg")
    Image.new("CMYK", (50, 40), (10, 20, 30, 0)).save(folder / "cmyk.jpg")
    names = ["truncated.jpg", "text.jpg", "empty.jpg", "gray.jpg", "cmyk.jpg"]
    return {"missing.jpg": folder / "missing.jpg", **{n: folder / n for n in names}}


def test_skip_bad_reports_and_drops_bad_images(tmp_path):
    files = make_bad_files(tmp_path / "img")
    good = make_images(tmp_path / "good", 3, seed=5)
    ds = dataset_of([good[0], *files.values(), good[1], good[2]], tmp_path)
    feats, kept, report = extract_features(ds, SMALL, tmp_path / "cache", progress=False, skip_bad=True, chunk_size=3)
    skipped = dict(report.skipped)
    assert set(skipped) == {"missing.jpg", "truncated.jpg", "text.jpg", "empty.jpg"}
    assert "not found" in skipped["missing.jpg"] and "cannot decode" in skipped["truncated.jpg"]
    assert "not an image" in skipped["text.jpg"] and "empty" in skipped["empty.jpg"]
    assert [r.filename for r in kept.images] == ["img000.jpg", "gray.jpg", "cmyk.jpg", "img001.jpg", "img002.jpg"]
    assert len(feats) == 5 and feats.boxes.shape == (5, 10, 4)
    assert "4 skipped" in report.summary() and "missing.jpg" in report.summary()


def test_without_skip_bad_first_bad_image_raises_and_chunks_stay(tmp_path):
    good = make_images(tmp_path / "img", 5)
    bad = tmp_path / "img" / "broken.jpg"
    bad.write_text("not an image")
    ds = dataset_of([*good[:4], bad, good[4]], tmp_path)
    with pytest.raises(DataError, match="broken.jpg: not an image file"):
        extract_features(ds, SMALL, tmp_path / "cache", progress=False, chunk_size=2)
    assert chunk_count(tmp_path / "cache") == 2  # the 4 images before it, in whole chunks
    _, _, report = extract_features(dataset_of(good, tmp_path), SMALL, tmp_path / "cache", progress=False)
    assert report.extracted == 1


def test_missing_file_without_skip_bad_names_it(tmp_path):
    ds = dataset_of([tmp_path / "gone.jpg"], tmp_path)
    with pytest.raises(DataError, match="gone.jpg: image file not found"):
        extract_features(ds, SMALL, tmp_path / "cache", progress=False)


def test_all_images_bad_gives_empty_features(tmp_path):
    ds = dataset_of([tmp_path / "gone.jpg"], tmp_path)
    feats, kept, report = extract_features(ds, SMALL, tmp_path / "cache", progress=False, skip_bad=True)
    assert len(kept) == 0 and feats.regions.shape == (0, 4, 1280) and feats.objects.shape == (0, 10, 1280)


def test_precomputed_features(tmp_path):
    records = [ImageRecord(f"{i}.jpg", None, "test", [], []) for i in range(3)]
    array = np.random.default_rng(0).random((3, 36, 8)).astype(np.float32)
    feats, kept, report = extract_features(Dataset("p", tmp_path, records, array), SMALL, tmp_path / "c")
    assert feats.regions.shape == (3, 36, 8) and feats.objects.shape == (3, 10, 8) and feats.boxes is None
    np.testing.assert_allclose(feats.objects.float().numpy(), array[:, :10], rtol=1e-3, atol=1e-3)
    assert report.extracted == 0 and not (tmp_path / "c").exists()


@pytest.mark.parametrize("shape", [(3, 36), (3, 2, 4, 8), (2, 36, 8)])
def test_precomputed_wrong_shape(tmp_path, shape):
    records = [ImageRecord(f"{i}.jpg", None, "test", [], []) for i in range(3)]
    with pytest.raises(DataError, match="precomputed features must be"):
        extract_features(Dataset("p", tmp_path, records, np.zeros(shape, np.float32)), SMALL, tmp_path / "c")


def test_default_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "features"
    monkeypatch.delenv("ITM_CACHE")
    assert default_cache_root() == Path("~/.cache/itm/features").expanduser()


def test_stale_temp_folders_are_removed(tmp_path):
    cache = FeatureCache(tmp_path / "c", {"x": 1})
    (cache.dir / "tmp-999999999-abc").mkdir()  # no such process
    assert cache.remove_stale_temp() == 1 and not (cache.dir / "tmp-999999999-abc").exists()


def write_karpathy(folder: Path, paths: list[Path]) -> None:
    images = folder / "images"
    images.mkdir(parents=True)
    entries = []
    for i, p in enumerate(paths):
        shutil.copy(p, images / p.name)
        entries.append({"filename": p.name, "split": "test" if i % 2 else "train",
                        "sentences": [{"raw": "a dog runs", "tokens": ["a", "dog", "runs"]}] * 5})
    (folder / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))


@pytest.fixture
def keep_threads():
    """The command sets torch's thread count: put it back for the tests that follow."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_command_prints_summary(tmp_path, capsys, keep_threads):
    paths = make_images(tmp_path / "src", 4)
    write_karpathy(tmp_path / "data", paths)
    (tmp_path / "data" / "images" / paths[0].name).write_bytes(b"")  # one bad image
    argv = ["features", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "cache"), "--image-size", "64",
            "--no-progress", "--threads", "1"]
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "4 images: 3 extracted now" in out and "1 skipped" in out and "img000.jpg" in out
    assert main([*argv, "--split", "test"]) == 0
    assert "2 images: 0 extracted now" in capsys.readouterr().out
    assert main(argv) == 2  # the bad image stops a run without --skip-bad
    assert "img000.jpg: empty image file" in capsys.readouterr().err


def test_command_vgg19_without_weights(tmp_path, capsys, keep_threads):
    write_karpathy(tmp_path / "data", make_images(tmp_path / "src", 1))
    assert main(["features", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"), "--backbone", "vgg19"]) == 2
    assert "VGG-19 weights are not shipped" in capsys.readouterr().err


def test_real_flickr8k_images(flickr8k_dir, tmp_path):
    names = sorted(p.name for p in (flickr8k_dir / "images").iterdir())[:3]
    ds = dataset_of([flickr8k_dir / "images" / n for n in names], flickr8k_dir)
    feats, _, _ = extract_features(ds, FeatureConfig(), tmp_path / "cache", progress=False)
    assert feats.regions.shape == (3, 49, 1280) and feats.grid_shape == (7, 7)
    assert (feats.boxes[..., 2] <= 224).all() and (feats.boxes[..., 3] <= 224).all()
