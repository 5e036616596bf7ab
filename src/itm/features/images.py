"""Image decoding that never crashes on user files: every failure is a one-line DataError.

Any mode (grayscale, palette, CMYK, alpha, 16-bit) comes back as 8-bit RGB. Images above
``MAX_PIXELS`` are decoded at a reduced JPEG DCT scale (1/2, 1/4 or 1/8) that fits under the limit,
so a decompression-bomb-sized photo costs at most ~256 MB; a non-JPEG or progressive JPEG above the
limit (whose decoder cannot skip pixels) is refused with a DataError. The original (W, H) stays available through
``original_size`` so that boxes are reported in the photo's own pixel coordinates.
"""

from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from itm.errors import DataError, shown

MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (~256 MB as 8-bit RGB)
ORIGINAL_SIZE = "itm_original_size"  # img.info key: (W, H) of the file before any reduced decoding
_DRAFT_SCALES = (1, 2, 4, 8)  # the reductions libjpeg can do while decoding
_BOMB_LOCK = threading.Lock()


@contextmanager
def _own_pixel_limit():
    """Turn off Pillow's bomb check (it refuses before we can ask for a reduced decode); ours applies."""
    with _BOMB_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """The image file at ``path`` as RGB; DataError naming the file when it cannot be used.

    ``min_size``: JPEGs larger than needed are decoded at the coarsest DCT scale that keeps both
    sides >= min_size (much faster for big photos; the caller resizes anyway).
    """
    return decode_image(read_image_file(path), path, min_size)


def read_image_file(path: str | Path) -> bytes:
    """The file's bytes; a one-line DataError naming it when absent or unreadable."""
    name = shown(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, not an image file") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read image file ({exc.strerror})") from None
    except ValueError:  # a NUL byte in the name: no file system can hold it
        raise DataError(f"{name}: not a valid file name") from None


def decode_image(data: bytes, name: str | Path, min_size: int | None = None) -> Image.Image:
    """Decode image bytes (``name`` is only used in error messages); see ``load_image``.

    The one guarded path from bytes to RGB: whatever Pillow raises while reading the header,
    decoding or applying EXIF becomes a one-line DataError naming the file.
    """
    name = shown(name)
    if not data:
        raise DataError(f"{name}: empty image file (0 bytes)")
    try:
        # Pillow warns (file:line + source, on stderr) about corrupt EXIF it then ignores: not the user's concern
        with _own_pixel_limit(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _decode(data, name, min_size)
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"{name}: not an image file (unrecognised format)") from None
    # Pillow's plugins raise many types on corrupt data, in Image.open as well as in load():
    # OSError (a header cut short), SyntaxError, ValueError, struct.error, EOFError, MemoryError ...
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{name}: cannot decode image ({_reason(exc)})") from None


def _decode(data: bytes, name: str | Path, min_size: int | None) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    header_size = img.size
    _reduce_while_decoding(img, name, min_size)
    img.load()
    decoded_size = img.size
    img = ImageOps.exif_transpose(img)
    # a 90-degree EXIF rotation swaps the sides of the original too
    swapped = img.size != decoded_size
    rgb = to_rgb(img)
    rgb.info[ORIGINAL_SIZE] = header_size[::-1] if swapped else header_size
    return rgb


def _reason(exc: Exception) -> str:
    """The first line of a decoder's message (at most 200 characters), else the exception's type."""
    lines = str(exc).splitlines()
    return lines[0][:200] if lines and lines[0].strip() else type(exc).__name__


def _reduce_while_decoding(img: Image.Image, name: str | Path, min_size: int | None) -> None:
    """Ask libjpeg for a 1/2..1/8 decode when the image is over MAX_PIXELS or larger than needed."""
    w, h = img.size
    fits = [s for s in _DRAFT_SCALES if -(-w // s) * -(-h // s) <= MAX_PIXELS]
    if img.format != "JPEG":
        if w * h > MAX_PIXELS:
            raise DataError(
                f"{name}: image too large to decode safely ({w}x{h} pixels > {MAX_PIXELS}); "
                "only JPEGs are decoded at reduced size, so resize or convert it first"
            )
        return
    if not fits:
        raise DataError(f"{name}: image too large ({w}x{h} pixels) even at 1/8 scale")
    if img.info.get("progressive") and w * h > MAX_PIXELS:
        # libjpeg keeps a progressive file's every DCT coefficient (~3 bytes/pixel) whatever the scale
        raise DataError(f"{name}: progressive JPEG too large to decode safely ({w}x{h} pixels > {MAX_PIXELS})")
    scale = fits[0]
    if min_size:
        # the coarsest scale that still leaves both sides >= min_size, if coarser than needed for memory
        scale = max([scale] + [s for s in _DRAFT_SCALES if w // s >= min_size and h // s >= min_size])
    if scale > 1:
        img.draft(img.mode, (w // scale, h // scale))


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparent pixels are put on white (not on black)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale stretched to 0..255 (Pillow's convert would clip at 255)."""
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")


def original_size(img: Image.Image) -> tuple[int, int]:
    """(W, H) of the image file as stored (before any reduced decoding), for box coordinates."""
    return tuple(img.info.get(ORIGINAL_SIZE, img.size))  # type: ignore[return-value]


def image_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 pixels in 0..255, the whole image resized (aspect ratio not kept)."""
    resized = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)  # (size, size, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float()  # (3, size, size)
