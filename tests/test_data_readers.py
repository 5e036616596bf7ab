"""Dataset readers (Karpathy JSON, SCAN precomp), format detection, the Karpathy tokenizer."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from itm.data.karpathy import load_karpathy
from itm.data.load import detect_format, load_dataset
from itm.data.precomp import load_precomp
from itm.data.tokenize import tokenize
from itm.errors import DataError

# ---------------------------------------------------------------- fixtures


def _sentence(raw: str, with_tokens: bool = True) -> dict:
    return {"raw": raw, "tokens": tokenize(raw)} if with_tokens else {"raw": raw}


def _spec(filenames: list[str], splits: list[str], filepath: str | None = None) -> dict:
    images = []
    for k, (name, split) in enumerate(zip(filenames, splits, strict=True)):
        entry = {"filename": name, "split": split,
                 "sentences": [_sentence(f"A dog number {k} runs on grass-{j} .") for j in range(5)]}
        if filepath:
            entry["filepath"] = filepath
        images.append(entry)
    return {"dataset": "tiny", "images": images}


def _write_images(folder: Path, filenames: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(filenames):
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        Image.new("RGB", (8, 6), (40 * k % 256, 90, 160)).save(folder / name, format=fmt)


FILENAMES = ["a.jpg", "b.png", "c.jpg", "d.jpg"]
SPLITS = ["train", "restval", "val", "test"]


@pytest.fixture
def karpathy_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    _write_images(root / "images", FILENAMES)
    (root / "dataset_tiny.json").write_text(json.dumps(_spec(FILENAMES, SPLITS)), encoding="utf-8")
    return root


def _write_precomp(root: Path, split: str, n_images: int, repeat: int = 1, regions: int = 3, dim: int = 4,
                   ) -> np.ndarray:
    """Images i hold the constant i; ``repeat=5`` writes every image 5 times (SCAN's im_div case)."""
    root.mkdir(parents=True, exist_ok=True)
    base = np.broadcast_to(np.arange(n_images, dtype=np.float32)[:, None, None], (n_images, regions, dim))
    np.save(root / f"{split}_ims.npy", np.repeat(base, repeat, axis=0))
    lines = [f"image {i} caption {j} ." for i in range(n_images) for j in range(5)]
    (root / f"{split}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base


# ---------------------------------------------------------------- Karpathy


def test_karpathy_reads_splits_paths_and_tokens(karpathy_dir):
    ds = load_karpathy(karpathy_dir)
    assert ds.name == "tiny" and ds.root == karpathy_dir.resolve() and len(ds) == 4
    assert [im.filename for im in ds.images] == FILENAMES
    assert all(im.path.is_absolute() and im.path.is_file() for im in ds.images)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]  # train takes restval
    first = ds.images[0]
    assert first.captions[0] == "A dog number 0 runs on grass-0 ."
    assert first.tokens[0] == ["a", "dog", "number", "0", "runs", "on", "grass", "0"]
    tokens, owner = ds.caption_tokens()
    assert len(tokens) == 20 and owner.tolist() == [i for i in range(4) for _ in range(5)]


def test_karpathy_uses_file_tokens_and_tokenizes_when_absent(tmp_path):
    spec = {"images": [{"filename": "x.jpg", "split": "test", "sentences": [
        {"raw": "Ignored raw .", "tokens": ["file", "tokens"]},
        {"raw": "A t-shirt, isn't it ?"}]}]}
    (tmp_path / "dataset_x.json").write_text(json.dumps(spec), encoding="utf-8")
    ds = load_karpathy(tmp_path)
    assert ds.name == "x"  # no "dataset" key: named after the file
    assert ds.images[0].tokens == [["file", "tokens"], ["a", "t", "shirt", "isnt", "it"]]
    assert ds.images[0].path == tmp_path.resolve() / "images" / "x.jpg"  # absent image: no error


@pytest.mark.parametrize("layout", ["root", "flickr30k-images", "filepath"])
def test_karpathy_finds_image_folders(tmp_path, layout):
    folder = {"root": tmp_path, "flickr30k-images": tmp_path / "flickr30k-images",
              "filepath": tmp_path / "val2014"}[layout]
    _write_images(folder, FILENAMES[:2])
    filepath = "val2014" if layout == "filepath" else None
    spec = _spec(FILENAMES[:2], ["test", "test"], filepath)
    (tmp_path / "dataset_coco.json").write_text(json.dumps(spec), encoding="utf-8")
    ds = load_karpathy(tmp_path)
    assert [im.path for im in ds.images] == [folder.resolve() / n for n in FILENAMES[:2]]


def test_bundled_mini_dataset_loads():
    ds = load_dataset(Path(str(files("itm") / "assets" / "flickr8k_mini")))
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [1000, 100, 200]
    assert ds.images[0].path.is_file()


def test_real_flickr8k(flickr8k_dir):
    ds = load_dataset(flickr8k_dir)  # its speed is measured by a benchmark, not asserted here
    assert ds.name == "flickr8k"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6000, 1000, 1000]
    assert all(len(im.captions) == 5 == len(im.tokens) for im in ds.images)
    assert ds.images[0].path.is_file()


# ---------------------------------------------------------------- precomp


def test_precomp_one_row_per_image(tmp_path):
    base = _write_precomp(tmp_path, "test", n_images=3)
    ds = load_precomp(tmp_path, "test")
    assert len(ds) == 3 and ds.precomputed.shape == (3, 3, 4)
    np.testing.assert_array_equal(ds.precomputed, base)
    assert [im.filename for im in ds.images] == ["test:0", "test:1", "test:2"]
    assert all(im.path is None and im.split == "test" for im in ds.images)
    assert ds.images[1].captions[2] == "image 1 caption 2 ."
    assert ds.images[1].tokens[2] == ["image", "1", "caption", "2"]
    assert ds.split("test").precomputed.shape == (3, 3, 4)


def test_precomp_im_div_5_keeps_every_fifth_row(tmp_path):
    base = _write_precomp(tmp_path, "dev", n_images=4, repeat=5)
    ds = load_precomp(tmp_path, "dev")
    assert ds.precomputed.shape == (4, 3, 4)
    np.testing.assert_array_equal(ds.precomputed, base)  # row i holds image i, not a repeat of image 0
    assert ds.images[3].captions[0] == "image 3 caption 0 ."


def test_load_dataset_detects_formats(tmp_path, karpathy_dir):
    _write_precomp(tmp_path / "pre", "train", n_images=2)
    assert detect_format(karpathy_dir) == "karpathy"
    assert detect_format(tmp_path / "pre") == "precomp"
    assert len(load_dataset(karpathy_dir)) == 4
    assert [im.filename for im in load_dataset(karpathy_dir, "train").images] == ["a.jpg", "b.png"]
    assert len(load_dataset(tmp_path / "pre", "train")) == 2


# ---------------------------------------------------------------- bad input


def _assert_data_error(call, *names: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


def test_missing_folder(tmp_path):
    _assert_data_error(lambda: load_dataset(tmp_path / "nope"), "nope")
    _assert_data_error(lambda: load_karpathy(tmp_path / "nope"), "nope")


def test_folder_without_dataset_files(tmp_path):
    _assert_data_error(lambda: load_dataset(tmp_path), str(tmp_path), "dataset_*.json", "_ims.npy")
    _assert_data_error(lambda: load_karpathy(tmp_path), "dataset_*.json")


def test_two_json_files_are_ambiguous(karpathy_dir):
    (karpathy_dir / "dataset_other.json").write_text("{}", encoding="utf-8")
    _assert_data_error(lambda: load_karpathy(karpathy_dir), "dataset_other.json", "dataset_tiny.json")


@pytest.mark.parametrize("content, hint", [
    (b'{"images": [', "not valid JSON"),
    ('{"images": [{"filename": "caf\u00e9.jpg"}]}'.encode("latin-1"), "not UTF-8"),
    (b'{"pictures": []}', "'images'"),
    (b'{"images": [{"split": "train", "sentences": []}]}', "'filename'"),
    (b'{"images": [{"filename": "q.jpg", "split": "train"}]}', "q.jpg"),
    (b'{"images": [{"filename": "q.jpg", "split": "train", "sentences": [{"tokens": ["a"]}]}]}', "'raw'"),
])
def test_bad_json(tmp_path, content, hint):
    path = tmp_path / "dataset_bad.json"
    path.write_bytes(content)
    _assert_data_error(lambda: load_dataset(tmp_path), str(path), hint)


@pytest.mark.parametrize("sentence", [{"raw": ""}, {"raw": " . , "}, {"raw": "A dog .", "tokens": []}])
def test_empty_caption_names_image_and_caption(tmp_path, sentence):
    spec = _spec(["ok.jpg", "bad.jpg"], ["train", "train"])
    spec["images"][1]["sentences"][3] = sentence
    (tmp_path / "dataset_e.json").write_text(json.dumps(spec), encoding="utf-8")
    _assert_data_error(lambda: load_karpathy(tmp_path), "dataset_e.json", "bad.jpg", "caption 3", "empty")


def test_precomp_needs_split_and_known_split(tmp_path, karpathy_dir):
    _write_precomp(tmp_path, "test", n_images=1)
    _assert_data_error(lambda: load_dataset(tmp_path), "split", "test")
    _assert_data_error(lambda: load_precomp(tmp_path, "val"), "val_ims.npy")
    _assert_data_error(lambda: load_dataset(karpathy_dir, "dev"), "'dev'", "train")


def test_precomp_wrong_ndim(tmp_path):
    _write_precomp(tmp_path, "test", n_images=2)
    np.save(tmp_path / "test_ims.npy", np.zeros((2, 4), dtype=np.float32))
    _assert_data_error(lambda: load_precomp(tmp_path, "test"), "test_ims.npy", "3-d")


def test_precomp_not_an_array(tmp_path):
    _write_precomp(tmp_path, "test", n_images=2)
    (tmp_path / "test_ims.npy").write_bytes(b"not numpy")
    _assert_data_error(lambda: load_precomp(tmp_path, "test"), "test_ims.npy")


def test_precomp_caption_count_mismatch(tmp_path):
    _write_precomp(tmp_path, "test", n_images=2)
    np.save(tmp_path / "test_ims.npy", np.zeros((3, 2, 4), dtype=np.float32))
    _assert_data_error(lambda: load_precomp(tmp_path, "test"), "test_ims.npy", "10 captions")


def test_precomp_caption_count_not_multiple_of_5(tmp_path):
    _write_precomp(tmp_path, "test", n_images=2)
    caps = tmp_path / "test_caps.txt"
    caps.write_text("\n".join(caps.read_text(encoding="utf-8").splitlines()[:7]), encoding="utf-8")
    _assert_data_error(lambda: load_precomp(tmp_path, "test"), "test_caps.txt", "7 captions")


def test_precomp_non_utf8_captions(tmp_path):
    _write_precomp(tmp_path, "test", n_images=1)
    (tmp_path / "test_caps.txt").write_bytes("un caf\u00e9 .\n".encode("latin-1") * 5)
    _assert_data_error(lambda: load_precomp(tmp_path, "test"), "test_caps.txt", "UTF-8")


def test_precomp_empty_caption_line(tmp_path):
    _write_precomp(tmp_path, "test", n_images=1)
    (tmp_path / "test_caps.txt").write_text("a .\nb .\n\nd .\ne .\n", encoding="utf-8")
    _assert_data_error(lambda: load_precomp(tmp_path, "test"), "test_caps.txt", "line 3")


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("raw, tokens", [
    ("A black dog is running after a white dog in the snow .", "a black dog is running after a white dog in the snow"),
    ("A boy in a red t-shirt , with a merry-go-round .", "a boy in a red t shirt with a merry go round"),
    ("Florida men 's player # 33 ca n't see \"it\" ; ok ?!", "florida men s player # 33 ca nt see it ok"),
    ("statefarm.com at&t R.V. ( almost ) RIF=ding : yes", "statefarmcom at&t rv ( almost ) rif=ding : yes"),
    ("  . , ", ""),
])
def test_tokenize_rules(raw, tokens):
    assert tokenize(raw) == tokens.split()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_tokenize_is_stable(raw):
    tokens = tokenize(raw)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
    assert tokenize(" ".join(tokens)) == tokens  # tokens are a fixed point


def test_tokenizer_matches_real_flickr8k_tokens(flickr8k_dir):
    spec = json.loads((flickr8k_dir / "dataset_flickr8k.json").read_text(encoding="utf-8"))
    sentences = [s for im in spec["images"] for s in im["sentences"]]
    matches = sum(tokenize(s["raw"]) == s["tokens"] for s in sentences)
    assert len(sentences) == 40_000
    assert matches / len(sentences) >= 0.999  # measured: 40,000 / 40,000 (100%)
