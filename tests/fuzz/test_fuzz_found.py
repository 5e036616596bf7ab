"""Every escape the fuzz suite found, pinned as a plain test (each failed before its fix).

An escape is an input for which a reader raised something other than a one-line ItmError naming
the input (a traceback for the user), or warned on stderr, or returned unusable data.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_inputs import base, payload
from fuzz_support import assert_user_error, result_or_user_error

from itm.checkpoint import load_checkpoint
from itm.config import FeatureConfig, load_config
from itm.data.load import load_dataset
from itm.errors import ItmError
from itm.features.extract import precomputed_features, read_image_bytes
from itm.features.images import decode_image, load_image, read_image_file


def raised(read) -> BaseException:
    try:
        read()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("no error raised")


# -- images ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"RIFF\xc4\x05\x00\x00WEBPVP8X",  # WebP cut in its header: OSError('could not create decoder object')
    b"BM\xb6\x04\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00\x00\x00",  # BMP: OSError('Truncated File Read')
], ids=["webp", "bmp"])
def test_header_cut_short_in_image_open(data):
    assert_user_error(raised(lambda: decode_image(data, "cut.jpg")), "cut.jpg")


@pytest.mark.parametrize("cut", [10, 100, 300, 500])
def test_the_issues_jpeg_cut_to_its_first_bytes(tmp_path, cut):
    path = tmp_path / "cut.jpg"
    path.write_bytes(base("jpeg_exif_rotated")[:cut])
    assert_user_error(raised(lambda: load_image(path)), str(path))


def test_progressive_jpeg_declaring_a_bomb_is_refused_not_decoded():
    """Was 17 s and GBs of coefficient buffers for a 1 KB file: libjpeg cannot skip them."""
    data = bytearray(base("jpeg_progressive"))
    i = 2
    while data[i + 1] != 0xC2:
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    struct.pack_into(">HH", data, i + 5, 60000, 60000)
    error = raised(lambda: decode_image(bytes(data), "bomb.jpg", 224))
    assert_user_error(error, "bomb.jpg", "progressive JPEG too large")


def test_corrupt_exif_decodes_without_warning_noise():
    data = base("jpeg_exif_rotated")
    data = data[:32] + data[33:]  # one byte gone inside the EXIF block: Pillow warned 'Corrupt EXIF data'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result_or_user_error(lambda: decode_image(data, "exif.jpg"), "exif.jpg")
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", ["holiday\n2019.jpg", "nul\x00.jpg"])
def test_odd_file_names_stay_on_one_line(tmp_path, name):
    """A newline broke the message; a NUL byte raised ValueError('embedded null byte')."""
    error = raised(lambda: read_image_file(tmp_path / name))
    assert_user_error(error, repr(name)[1:-1])


# -- Karpathy JSON ---------------------------------------------------------------------------------

def _entry(filename: str) -> dict:
    return {"filename": filename, "split": "train", "sentences": [{"raw": "a dog runs"}]}


@pytest.mark.parametrize("content, hint", [
    (b'{"images": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),  # RecursionError
    (b'{"images": [{"filename": "a.jpg", "split": ' + b"9" * 4301 + b"}]}", "unreadable JSON value"),  # ValueError
    (json.dumps({"images": [_entry("h\n.jpg"), {"filename": "h\n.jpg"}]}).encode(), "'h\\n.jpg'"),  # two lines
    (json.dumps({"images": [_entry("g\x00.jpg")]}).encode(), "cannot name a file"),  # later ValueError
    (json.dumps({"images": [_entry("a.jpg"), _entry("b.jpg"), _entry("a.jpg")]}).encode(), "a.jpg is listed twice"),
])
def test_karpathy_escapes(tmp_path, content, hint):
    (tmp_path / "dataset_x.json").write_bytes(content)
    assert_user_error(raised(lambda: load_dataset(tmp_path)), "dataset_x.json", hint)


def test_karpathy_file_name_too_long_for_the_file_system(tmp_path):
    """Path.is_file raised OSError(ENAMETOOLONG) while looking for the image folder."""
    (tmp_path / "dataset_x.json").write_text(json.dumps({"images": [_entry("x" * 300 + ".jpg")]}))
    dataset = load_dataset(tmp_path)
    assert_user_error(raised(lambda: read_image_bytes(dataset.images[0])), "x" * 300)


# -- SCAN precomp ----------------------------------------------------------------------------------

def _precomp(folder: Path, ims: bytes | np.ndarray, n_images: int = 1) -> None:
    if isinstance(ims, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, ims)
        ims = buf.getvalue()
    (folder / "test_ims.npy").write_bytes(ims)
    (folder / "test_caps.txt").write_text("a dog runs\n" * 5 * n_images, encoding="utf-8")


@pytest.mark.parametrize("ims, hint", [
    (b"", "not a readable .npy array"),  # EOFError('No data left in file')
    (np.zeros((1, 2, 3), "<U3"), "dtype <U3"),  # ValueError at conversion
    (np.zeros((1, 2, 3), np.complex64), "dtype complex64"),  # imaginary part silently dropped
])
def test_precomp_file_escapes(tmp_path, ims, hint):
    _precomp(tmp_path, ims)
    assert_user_error(raised(lambda: load_dataset(tmp_path, "test")), "test_ims.npy", hint)


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e5])  # 1e5: inf once stored as float16
def test_precomp_non_finite_features_name_the_image(tmp_path, value):
    """Were accepted, and turned every score of a run into NaN."""
    array = np.ones((2, 3, 4), np.float32)
    array[1, 2, 0] = value
    _precomp(tmp_path, array, n_images=2)
    dataset = load_dataset(tmp_path, "test")
    error = raised(lambda: precomputed_features(dataset, FeatureConfig()))
    assert_user_error(error, str(tmp_path), "test:1", "not finite")


# -- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, hint", [
    ("train.epochs=" + "9" * 5000, "cannot parse value"),  # ValueError from PyYAML's int()
    ("text.trainable=0x" + "f" * 5000, "integer of 20000 bits"),  # repr() of the value raised ValueError
    ("train.lr=0x" + "f" * 400, "train.lr"),  # OverflowError in float()
    ("train.threads=0x" + "f" * 20, "out of range"),  # accepted; torch.set_num_threads overflowed later
    ("a\nb=1", "'a\\nb'"),  # two-line message
    ("text.source='two\n\n  lines'", "one-line string"),  # two-line message from validate
])
def test_config_override_escapes(override, hint):
    assert_user_error(raised(lambda: load_config(None, [override])), hint)


def test_config_file_with_an_overlong_integer(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("train:\n  epochs: " + "9" * 5000 + "\n", encoding="utf-8")
    assert_user_error(raised(lambda: load_config(path)), "long.yaml", "not valid YAML")


# -- checkpoints -----------------------------------------------------------------------------------

def _checkpoint(tmp_path: Path, **changes) -> Path:
    data = {**payload(), **changes}
    for key in [k for k, v in changes.items() if v is ...]:
        del data[key]
    path = tmp_path / "best.pt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize("changes", [
    {"model": ...}, {"config": ...}, {"dims": ...}, {"feature_settings": ...},  # KeyError
    {"model": None}, {"dims": None},  # TypeError
    {"config": {**payload()["config"], "train": torch.zeros(2)}},  # RuntimeError: bool of a tensor
    {"model": payload("bssan_w2r")["model"]},  # another model's weights: many-line RuntimeError
    {"dims": {**payload()["dims"], "region_dim": 9}},  # another feature setting's input size
    {"format_version": torch.ones(2)},  # RuntimeError: bool of a tensor (found by a 1000-example hunt)
], ids=["no_model", "no_config", "no_dims", "no_settings", "model_none", "dims_none", "config_tensor",
        "other_model", "other_dims", "version_tensor"])
def test_checkpoint_escapes(tmp_path, changes):
    path = _checkpoint(tmp_path, **changes)
    error = raised(lambda: load_checkpoint(path))
    assert isinstance(error, ItmError)
    assert_user_error(error, str(path))
