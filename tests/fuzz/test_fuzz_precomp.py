"""Fuzz the SCAN precomp reader: any ``{split}_ims.npy`` + captions either becomes finite features
or fails as one DataError line naming the file.

Arrays of any rank, shape and dtype (ints, bools, complex, strings, records, objects) with NaN / inf
or float16-overflowing values; the .npy bytes may also be cut or flipped.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from fuzz_support import budget, cut, flip, result_or_user_error
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from itm.config import FeatureConfig
from itm.data.load import load_dataset
from itm.features.extract import precomputed_features

DTYPES = ["float64", "float16", "int8", "uint8", "int64", "bool", "complex64", "<U3",
          "S2", "datetime64[s]", "object", [("a", "<f4"), ("b", "<i2")]]


def often(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` 3 times in 4 (so that most examples get past the first check), else ``other``."""
    return st.integers(0, 3).flatmap(lambda k: other if k == 3 else usual)


@st.composite
def arrays(draw) -> np.ndarray:
    """Mostly (images, regions, dim) floats with NaN / inf / beyond-float16 values, sometimes another
    rank or dtype."""
    rank = draw(often(st.just(3), st.sampled_from([0, 1, 2, 4])))
    shape = tuple(draw(st.lists(st.integers(1, 6) | st.just(0), min_size=rank, max_size=rank)))
    dtype = np.dtype(draw(often(st.sampled_from(["float32", "float16"]), st.sampled_from(DTYPES))))
    if dtype.kind == "f":
        values = draw(hnp.arrays(dtype, shape, elements=st.sampled_from([0.5, -2.0, 3.0])
                                 | st.floats(allow_nan=True, allow_infinity=True, width=16)))
        with np.errstate(over="ignore", invalid="ignore"):  # 1e5: beyond float16's range
            return (values * draw(st.sampled_from([1.0, 1.0, 1e5]))).astype(dtype)
    if dtype.kind == "O":
        return np.array([{"not": "numbers"}] * max(1, int(np.prod(shape))), dtype=object)
    return np.zeros(shape, dtype=dtype)


def _damaged(data: bytes, draw) -> bytes:
    damage = draw(often(st.just("none"), st.sampled_from(["truncate", "flip"])))
    if damage == "truncate":
        return cut(draw, data)
    return flip(draw, data) if damage == "flip" else data


caption_lines = st.sampled_from(["a dog runs", "two cats", "caf\u00e9 au lait"] * 8 + ["", " . "])


@st.composite
def precomp_files(draw) -> tuple[bytes, bytes]:
    """(``{split}_ims.npy`` bytes, ``{split}_caps.txt`` bytes): 5 captions per row (or per 5 rows),
    as SCAN writes them, or any number of lines, or any bytes."""
    array = draw(arrays())
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    rows = array.shape[0] if array.ndim else 0
    lines = draw(often(st.just("matching"), st.sampled_from(["any", "bytes"])))
    if lines == "matching":
        n = draw(st.sampled_from([5 * rows, rows]))
        caps = "\n".join(draw(st.lists(caption_lines, min_size=n, max_size=n)) if n else []).encode("utf-8")
    elif lines == "any":
        caps = "\n".join(draw(st.lists(caption_lines, max_size=12))).encode("utf-8")
    else:
        caps = draw(st.binary(max_size=40))
    return _damaged(buf.getvalue(), draw), caps


@budget(3)
@given(files=precomp_files())
def test_any_precomp_split_loads_finite_features_or_fails_in_one_line(files):
    ims, caps = files
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder).resolve()
        (root / "test_ims.npy").write_bytes(ims)
        (root / "test_caps.txt").write_bytes(caps)
        dataset = result_or_user_error(lambda: load_dataset(root, "test"), str(root))
        if dataset is None:
            event("refused while reading")
            return
        features = result_or_user_error(lambda: precomputed_features(dataset, FeatureConfig()), str(root))
        event("refused at features" if features is None else "loaded")
        if features is not None:
            assert features.regions.ndim == 3 and len(features) == len(dataset) > 0
            assert bool(torch.isfinite(features.regions).all())
