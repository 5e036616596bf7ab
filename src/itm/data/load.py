"""One entry point for every dataset folder: detects the format and calls its reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from itm.data.karpathy import JSON_PATTERN, existing_dir, find_karpathy_json, load_karpathy
from itm.data.precomp import IMS_SUFFIX, load_precomp, precomp_splits
from itm.data.types import Dataset
from itm.errors import DataError


class _Format(NamedTuple):
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str | None], Dataset]


def _load_karpathy_split(root: Path, split: str | None) -> Dataset:
    dataset = load_karpathy(root)
    if split is None:
        return dataset
    part = dataset.split(split)
    if not len(part):  # a typo must not look like an empty split
        known = ", ".join(sorted({im.split for im in dataset.images}))
        raise DataError(f"dataset folder {root}: no images in split '{split}' (splits: {known})")
    return part


def _load_precomp_split(root: Path, split: str | None) -> Dataset:
    if split is None:
        known = ", ".join(precomp_splits(root))
        raise DataError(f"dataset folder {root}: SCAN precomp files need a split name (found: {known})")
    return load_precomp(root, split)


# detection order: a folder with a Karpathy file is read as Karpathy even if it also holds .npy files
_FORMATS = (
    _Format("karpathy", lambda root: find_karpathy_json(root) is not None, _load_karpathy_split),
    _Format("precomp", lambda root: bool(precomp_splits(root)), _load_precomp_split),
)


def _format_of(root: Path) -> _Format:
    for fmt in _FORMATS:
        if fmt.detect(root):
            return fmt
    raise DataError(f"dataset folder {root}: no {JSON_PATTERN} (Karpathy) and no *{IMS_SUFFIX} (SCAN precomp)")


def detect_format(data_dir: str | Path) -> str:
    """"karpathy" or "precomp"; DataError when the folder holds neither."""
    return _format_of(existing_dir(data_dir)).name


def load_dataset(data_dir: str | Path, split: str | None = None) -> Dataset:
    """Read a dataset folder of either format.

    Karpathy: the whole dataset when ``split`` is None (callers use ``.split(name)``), else that split.
    SCAN precomp: ``split`` is required (it names the ``{split}_ims.npy`` / ``{split}_caps.txt`` pair).
    """
    root = existing_dir(data_dir)
    return _format_of(root).load(root, split)
