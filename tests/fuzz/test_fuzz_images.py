"""Fuzz the image reader: any bytes under an image name decode to RGB or fail as one DataError line.

Every base image is a valid file Pillow wrote in memory (JPEG in RGB / grey / CMYK / progressive /
EXIF-rotated, PNG in RGB / RGBA / 16-bit / palette, animated GIF and WebP, BMP, TIFF); hypothesis
then cuts, flips, zeroes or overwrites its bytes, or declares huge dimensions in its header.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from fuzz_support import budget, cut, flip, result_or_user_error
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from itm.features.images import decode_image, image_tensor, load_image, original_size

NAME = "photo_07.jpg"  # every input is called a .jpg, whatever its real format (as users' folders do)


def _picture(mode: str, size=(24, 16)) -> Image.Image:
    """A small, non-flat picture in ``mode`` (flat images compress to almost no data to corrupt)."""
    rng = np.random.default_rng(len(mode))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return rgb.convert(mode)


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(_picture("RGB"), "JPEG", exif=exif)


def _sixteen_bit_png() -> bytes:
    ramp = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 171).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG")


def _palette_png() -> bytes:
    return _encode(_picture("RGB").quantize(16), "PNG", transparency=0)


def _animated(fmt: str) -> bytes:
    frames = [_picture("RGB").rotate(90 * i) for i in range(3)]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


BASES = {
    "jpeg_rgb": lambda: _encode(_picture("RGB"), "JPEG", quality=90),
    "jpeg_gray": lambda: _encode(_picture("L"), "JPEG"),
    "jpeg_cmyk": lambda: _encode(_picture("CMYK"), "JPEG"),
    "jpeg_progressive": lambda: _encode(_picture("RGB"), "JPEG", progressive=True),
    "jpeg_exif_rotated": lambda: _exif_jpeg(6),
    "jpeg_exif_bad_orientation": lambda: _exif_jpeg(9),
    "png_rgb": lambda: _encode(_picture("RGB"), "PNG"),
    "png_rgba": lambda: _encode(_picture("RGBA"), "PNG"),
    "png_16bit": _sixteen_bit_png,
    "png_palette": _palette_png,
    "gif_animated": lambda: _animated("GIF"),
    "webp_still": lambda: _encode(_picture("RGB"), "WEBP"),
    "webp_animated": lambda: _animated("WEBP"),
    "bmp": lambda: _encode(_picture("RGB"), "BMP"),
    "tiff": lambda: _encode(_picture("RGB"), "TIFF"),
}


@functools.cache
def base(kind: str) -> bytes:
    return BASES[kind]()


@st.composite
def damaged_images(draw) -> bytes:
    """A base image, whole or damaged in one of the ways users' folders damage them."""
    data = bytearray(base(draw(st.sampled_from(sorted(BASES)))))
    damage = draw(st.sampled_from(["none", "truncate", "flip", "zero", "garbage_after_header"]))
    if damage == "truncate":  # including inside the header: the case
        return cut(draw, bytes(data))
    if damage == "flip":
        return flip(draw, bytes(data), most=8)
    if damage == "zero":  # a disk block of zeros
        start = draw(st.integers(0, len(data) - 1))
        end = start + draw(st.integers(1, 512))
        data[start:end] = bytes(len(data[start:end]))
    if damage == "garbage_after_header":
        keep = draw(st.integers(1, min(len(data), 200)))
        return bytes(data[:keep]) + draw(st.binary(max_size=400))
    return bytes(data)


def _check_decoded(img) -> None:
    """A successful decode is sane: RGB, positive size, usable as a network input."""
    assert img.mode == "RGB" and img.width > 0 and img.height > 0
    w, h = original_size(img)
    assert isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0
    assert image_tensor(img, 8).shape == (3, 8, 8)


@budget(10)  # the reader users' folders hit most, and the cheapest to run
@given(data=damaged_images(), min_size=st.sampled_from([None, 8, 224]))
def test_damaged_image_bytes_decode_or_fail_in_one_line(data, min_size):
    img = result_or_user_error(lambda: decode_image(data, NAME, min_size), NAME)
    if img is not None:
        _check_decoded(img)


@budget(1)
@given(data=st.binary(max_size=64))
def test_arbitrary_small_byte_strings(data):
    img = result_or_user_error(lambda: decode_image(data, NAME), NAME)
    if img is not None:
        _check_decoded(img)


def _declare_size(kind: str, data: bytes, width: int, height: int) -> bytes:
    """``data`` with a header that claims width x height, the pixel data left as it is (a bomb)."""
    out = bytearray(data)
    if kind == "png_rgb":
        struct.pack_into(">II", out, 16, width, height)
        struct.pack_into(">I", out, 29, zlib.crc32(out[12:29]))  # a valid IHDR checksum: Pillow reads on
    elif kind == "gif_animated":
        struct.pack_into("<HH", out, 6, width & 0xFFFF, height & 0xFFFF)
    elif kind == "bmp":
        struct.pack_into("<II", out, 18, width, height)
    else:  # a JPEG: patch the start-of-frame segment
        i = 2
        while out[i + 1] not in (0xC0, 0xC1, 0xC2):
            i += 2 + struct.unpack(">H", out[i + 2 : i + 4])[0]
        struct.pack_into(">HH", out, i + 5, height & 0xFFFF, width & 0xFFFF)
    return bytes(out)


@budget(1)
@given(kind=st.sampled_from(["png_rgb", "gif_animated", "bmp", "jpeg_rgb", "jpeg_progressive"]),
       width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1))
def test_huge_declared_dimensions_never_allocate_the_bomb(kind, width, height):
    data = _declare_size(kind, base(kind), width, height)
    img = result_or_user_error(lambda: decode_image(data, NAME, 224), NAME)
    if img is not None:
        _check_decoded(img)


@budget(0.5)
@given(data=damaged_images())
def test_files_on_disk_are_named_by_path(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "holiday 2019.jpg"
    path.write_bytes(data)
    img = result_or_user_error(lambda: load_image(path, 224), str(path))
    if img is not None:
        _check_decoded(img)
