"""The inputs the fuzz tests damage, shared by the property tests and the pinned escapes: a real
tiny checkpoint payload (and strategies that alter it) and small images in every format users have.
"""

from __future__ import annotations

import functools
import io
import pickle
from argparse import Namespace
from collections import OrderedDict

import numpy as np
import torch
from fuzz_support import cut, flip
from hypothesis import strategies as st
from PIL import Image

from itm.checkpoint import model_payload, new_model
from itm.config import load_config
from itm.data.vocab import Vocab
from itm.models.base import InputDims

# a small matcher, as tests/test_training.py builds (the defaults' 1024-wide LSTM is a 17 MB file)
TINY = ["model.w2r_hidden=8", "model.w2r_mlp=[8]", "model.o2w_hidden=8", "model.o2w_mlp=[8]"]
DIMS = InputDims(word_dim=6, region_dim=5, object_dim=5, vocab_size=7)


@functools.cache
def payload(model_name: str = "bssan") -> dict:
    """A real checkpoint payload of a tiny model (weights seeded: the same file every run)."""
    torch.manual_seed(0)
    config = load_config(None, [*TINY, f"model.name={model_name}"])
    vocab = Vocab.from_list(["<pad>", "<unk>", "a", "dog", "runs", "two", "cats"])
    settings = {"backbone": "efficientnet_lite0", "image_size": 224, "num_objects": 10}
    return model_payload(new_model(config, DIMS), config, vocab, DIMS, settings)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


junk = st.none() | st.integers(-2, 2) | st.text(max_size=4) | st.lists(st.integers(), max_size=2) \
    | st.just(torch.zeros(2)) | st.dictionaries(st.sampled_from(["a", "name"]), st.integers(), max_size=1)


@st.composite
def altered_payloads(draw) -> dict:
    """The real payload with one part missing, replaced, or taken from another model or setting."""
    data = dict(payload(draw(st.sampled_from(["bssan", "bssan_w2r"]))))
    part = draw(st.sampled_from(sorted(data)))
    change = draw(st.sampled_from(["drop", "junk", "other_model", "other_dims", "dims_junk", "config_junk",
                                   "weights_junk", "format"]))
    if change == "drop":
        del data[part]
    elif change == "junk":
        data[part] = draw(junk)
    elif change == "other_model":  # the weights of another variant under this config
        data["model"] = payload("bssan_w2r" if data["config"]["model"]["name"] == "bssan" else "bssan")["model"]
    elif change == "other_dims":  # input sizes of another feature setting than the weights were built for
        data["dims"] = {**data["dims"], draw(st.sampled_from(sorted(data["dims"]))): draw(st.integers(1, 12))}
    elif change == "dims_junk":
        data["dims"] = {**data["dims"], draw(st.sampled_from([*sorted(data["dims"]), "extra"])): draw(junk)}
    elif change == "config_junk":
        section = draw(st.sampled_from(["model", "train", "features", "data"]))
        data["config"] = {**data["config"], section: draw(junk)}
    elif change == "weights_junk":
        weights = OrderedDict(data["model"])
        key = draw(st.sampled_from(sorted(weights)))
        weights[key] = draw(st.just(None) | st.just(torch.zeros(3)) | st.just(weights[key].double()) | st.just("w"))
        data["model"] = weights
    else:
        data["format_version"] = draw(st.sampled_from([0, 2, "1", None]))
    return data


@st.composite
def checkpoint_files(draw) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "pickle", "payload", "payload", "whole"]))
    if kind == "pickle":  # another program's pickle (one object allowlisted by weights_only, some not)
        obj = draw(st.sampled_from([{"a": 1}, [1, 2], Namespace(lr=0.1), OrderedDict(x=1), "text", 3.5]))
        return pickle.dumps(obj, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))
    if kind == "payload":
        return _saved(draw(altered_payloads()))
    data = _saved(payload())
    if kind == "truncate":
        return cut(draw, data[:-1])
    if kind == "flip":
        return flip(draw, data, most=4)
    return data


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
