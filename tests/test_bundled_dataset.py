"""The bundled Flickr8k mini dataset is complete, readable and small (needs nothing outside the repo)."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path

import pytest
from PIL import Image

MINI = Path(str(files("itm") / "assets" / "flickr8k_mini"))
SPLITS = {"train": 1000, "val": 100, "test": 200}
BUDGET_BYTES = 25_000_000


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads((MINI / "dataset_flickr8k.json").read_text())


def test_split_counts_and_schema(spec):
    assert spec["dataset"] == "flickr8k"
    images = spec["images"]
    assert {split: sum(im["split"] == split for im in images) for split in SPLITS} == SPLITS
    assert len(images) == sum(SPLITS.values())
    assert len({im["filename"] for im in images}) == len(images)
    sentid = 0
    for imgid, im in enumerate(images):
        assert set(im) >= {"filename", "split", "imgid", "sentids", "sentences"}
        assert im["imgid"] == imgid
        assert len(im["sentences"]) == 5
        for s in im["sentences"]:
            assert s["raw"].strip() and s["tokens"] and all(isinstance(t, str) for t in s["tokens"])
            assert (s["imgid"], s["sentid"]) == (imgid, sentid)
            sentid += 1
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]


def test_every_image_exists_and_decodes(spec):
    for im in spec["images"]:
        with Image.open(MINI / "images" / im["filename"]) as image:
            assert image.format == "JPEG" and image.size == (224, 224)
            image.draft("RGB", (28, 28))  # decode at 1/8 scale: reads the whole stream, 8x faster
            image.load()
    assert len(list((MINI / "images").iterdir())) == len(spec["images"])


def test_checksums_match():
    lines = (MINI / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 1 + sum(SPLITS.values())
    for line in lines:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((MINI / name).read_bytes()).hexdigest() == digest, name


def test_total_size_within_budget():
    on_disk = sum(-(-p.stat().st_size // 4096) * 4096 for p in MINI.rglob("*") if p.is_file())
    assert on_disk <= BUDGET_BYTES


def test_readme_credits_sources():
    text = (MINI / "README.md").read_text()
    for needle in (
        "Hodosh",
        "Hockenmaier",
        "Framing Image Description as a Ranking Task",
        "Karpathy",
        "research",
    ):
        assert needle in text
