"""Image decoding: bad files give one-line DataErrors naming the file; odd modes become RGB."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from itm.errors import DataError
from itm.features import images
from itm.features.images import decode_image, image_tensor, load_image, original_size


def save(img: Image.Image, path, fmt=None, **kw):
    img.save(path, fmt, **kw)
    return path


def noise(w=40, h=30, mode="RGB"):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)


def huge_gray_jpeg(width: int, height: int) -> bytes:
    """A valid baseline JPEG of any size in a few MB: every 8x8 block is flat grey (128).

    With Pillow's standard Huffman tables a flat block codes as DC diff 0 ('00') + EOB ('1010');
    four blocks are exactly the three bytes 28 a2 8a, so the scan is that pattern repeated.
    """
    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    i = 2
    while data[i + 1] != 0xDA:  # walk the marker segments up to the start of scan
        if data[i + 1] == 0xC0:
            sof = i
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    header = bytearray(data[: i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]])
    assert data[len(header) :] == bytes.fromhex("28a28affd9"), "Pillow's encoder changed; rebuild the fixture"
    struct.pack_into(">HH", header, sof + 5, height, width)
    blocks = (width // 8) * (height // 8)
    return bytes(header) + bytes.fromhex("28a28a") * (blocks // 4) + b"\xff\xd9"


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jpg: empty image file"):
        load_image(tmp_path / "empty.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    with pytest.raises(DataError, match="notes.jpg: not an image file"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path):
    data = (save(noise(64, 64), tmp_path / "full.jpg", quality=95)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: cannot decode image") as err:
        load_image(tmp_path / "cut.jpg")
    assert "\n" not in str(err.value)


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(DataError, match="dir.jpg"):
        load_image(tmp_path / "dir.jpg")


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    img = noise(20, 10, "L" if mode == "I;16" else mode)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)  # uint16 -> mode I;16
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    path = save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_grayscale_values_kept(tmp_path):
    path = save(Image.new("L", (8, 8), 77), tmp_path / "g.png")
    assert np.asarray(load_image(path))[0, 0].tolist() == [77, 77, 77]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    path = save(Image.fromarray(arr), tmp_path / "deep.png")
    rgb = np.asarray(load_image(path))
    assert rgb[1, 1].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [0, 0, 0]


def test_transparent_pixels_go_on_white(tmp_path):
    path = save(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), tmp_path / "clear.png")
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 255, 255]


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """16000 x 16000 = 256 Mpx: Pillow alone refuses it as a decompression bomb."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    path.write_bytes(huge_gray_jpeg(16000, 16000))
    return path


def test_huge_jpeg_decoded_small_for_extraction(huge_jpeg):
    """The extractor asks for >= image_size pixels: libjpeg decodes at 1/8 (2000 x 2000, ~12 MB)."""
    limit = Image.MAX_IMAGE_PIXELS
    img = load_image(huge_jpeg, min_size=224)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's own check is only off while we decode
    assert img.size == (2000, 2000) and img.mode == "RGB"
    assert original_size(img) == (16000, 16000)
    assert image_tensor(img, 32).shape == (3, 32, 32)


def test_huge_jpeg_reduced_under_pixel_limit(huge_jpeg, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 5_000_000)  # the real limit would mean a 256 MB test
    img = load_image(huge_jpeg)
    assert img.size == (2000, 2000) and original_size(img) == (16000, 16000)


def test_over_limit_non_jpeg_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    path = save(noise(50, 50), tmp_path / "big.png")
    with pytest.raises(DataError, match="big.png: image too large"):
        load_image(path)


def test_over_limit_jpeg_is_reduced_under_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    path = save(noise(160, 120), tmp_path / "big.jpg")
    img = load_image(path)
    assert img.width * img.height <= 1000
    assert original_size(img) == (160, 120)


def test_min_size_reduces_big_jpeg_but_not_below(tmp_path):
    path = save(noise(400, 300), tmp_path / "photo.jpg")
    img = load_image(path, min_size=64)
    assert img.size == (100, 75) and original_size(img) == (400, 300)
    assert load_image(path, min_size=224).size == (400, 300)


def test_exif_rotation_applied_and_original_size_follows(tmp_path):
    img = noise(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    out = load_image(path)
    assert out.size == (20, 40) and original_size(out) == (20, 40)


def test_image_tensor_shape_and_range():
    t = image_tensor(noise(50, 20), 64)
    assert t.shape == (3, 64, 64) and t.dtype.is_floating_point
    assert 0.0 <= float(t.min()) and float(t.max()) <= 255.0 and float(t.max()) > 1.0


def test_decode_bytes_names_the_source():
    with pytest.raises(DataError, match="somewhere/a.jpg"):
        decode_image(b"garbage", "somewhere/a.jpg")
