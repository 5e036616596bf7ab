"""Reader for the SCAN "precomp" format: precomputed region features plus caption text.

Files per split in one folder: ``{split}_ims.npy`` (rows, R, d) and ``{split}_caps.txt`` (one caption
per line, 5 per image, in image order). As in SCAN's data loader, an array with as many rows as there
are captions holds every image 5 times (im_div = 5); only every 5th row is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from itm.data.karpathy import existing_dir
from itm.data.tokenize import tokenize
from itm.data.types import Dataset, ImageRecord
from itm.errors import DataError

CAPTIONS_PER_IMAGE = 5
IMS_SUFFIX = "_ims.npy"
CAPS_SUFFIX = "_caps.txt"


def precomp_splits(root: Path) -> list[str]:
    """Split names that have a ``{split}_ims.npy`` in ``root``."""
    return sorted(p.name.removesuffix(IMS_SUFFIX) for p in root.glob(f"*{IMS_SUFFIX}"))


def _read_features(path: Path) -> np.ndarray:
    """Memory-mapped (rows, R, d) array; DataError for a missing, unreadable or misshapen file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    # numpy's header parser raises ValueError, OSError, EOFError (an empty file), ... on damaged files
    except Exception as exc:  # noqa: BLE001
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"{path}: not a readable .npy array ({reason})") from None
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3-d array (images, regions, dim), got shape {array.shape}")
    if array.dtype.kind not in "fiu":  # bool, complex, strings, dates, records: not feature values
        raise DataError(f"{path}: expected real numbers, got dtype {array.dtype}")
    return array


def _read_captions(path: Path) -> tuple[list[str], list[list[str]]]:
    """Caption lines and their tokens (trailing blank lines ignored); DataError for non-UTF-8 text
    or a line without tokens."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    lines = [line.strip() for line in text.rstrip().splitlines()]
    tokens = [tokenize(line) for line in lines]
    for number, toks in enumerate(tokens, start=1):
        if not toks:
            raise DataError(f"{path}: empty caption on line {number}")
    return lines, tokens


def _image_rows(array: np.ndarray, n_captions: int, ims: Path, caps: Path) -> np.ndarray:
    """One row per image: undo SCAN's 5x repetition; check the counts agree."""
    if n_captions == 0 or n_captions % CAPTIONS_PER_IMAGE:
        raise DataError(f"{caps}: {n_captions} captions, expected a positive multiple of {CAPTIONS_PER_IMAGE}")
    rows = array.shape[0]
    if rows == n_captions:
        return array[::CAPTIONS_PER_IMAGE]  # (N, R, d) view, still memory-mapped
    if rows * CAPTIONS_PER_IMAGE == n_captions:
        return array
    raise DataError(f"{ims}: {rows} feature rows do not match the {n_captions} captions of {caps.name} "
                    f"(expected {n_captions // CAPTIONS_PER_IMAGE} or {n_captions})")


def load_precomp(data_dir: str | Path, split: str) -> Dataset:
    """One split of a SCAN precomp folder; ``Dataset.precomputed`` is the (N_images, R, d) array."""
    root = existing_dir(data_dir)
    ims, caps = root / f"{split}{IMS_SUFFIX}", root / f"{split}{CAPS_SUFFIX}"
    array = _read_features(ims)
    captions, tokens = _read_captions(caps)
    features = _image_rows(array, len(captions), ims, caps)
    records = []
    for i in range(features.shape[0]):
        part = slice(i * CAPTIONS_PER_IMAGE, (i + 1) * CAPTIONS_PER_IMAGE)
        records.append(ImageRecord(f"{split}:{i}", None, split, captions[part], tokens[part]))
    return Dataset(root.name, root, records, features)
