"""Reader for the Karpathy split files (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json).

Schema: ``{"images": [{"filename", "split", "filepath"?, "sentences": [{"raw", "tokens"?}]}]}``.
Images are looked up in ``DIR/images/``, ``DIR/<filepath>/``, ``DIR/`` or ``DIR/flickr30k-images/``;
a missing individual image is not an error here (feature extraction reports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from itm.data.tokenize import tokenize
from itm.data.types import Dataset, ImageRecord
from itm.errors import DataError, shown

JSON_PATTERN = "dataset_*.json"


def existing_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as an absolute Path, or a DataError when it is not a folder."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder {root}: no such folder")
    return root


def find_karpathy_json(root: Path) -> Path | None:
    """The one ``dataset_*.json`` in ``root``; None when there is none; DataError when several."""
    found = sorted(root.glob(JSON_PATTERN))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"dataset folder {root}: several Karpathy files ({names}); keep one per folder")
    return found[0] if found else None


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file; every failure is a one-line DataError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as exc:  # a number too long for int(): Python's digit limit (CVE-2020-10735)
        raise DataError(f"{path}: unreadable JSON value ({str(exc).split(':')[0]})") from None


def _field(entry: Any, key: str, kind: type, where: str) -> Any:
    """``entry[key]`` checked to be of ``kind``; DataError naming ``where`` otherwise."""
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{where}: missing key '{key}'")
    value = entry[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: '{key}' should be a {kind.__name__}, got {type(value).__name__}")
    return value


def _caption(sentence: Any, where: str) -> tuple[str, list[str]]:
    """Raw text and tokens of one sentence entry (the file's tokens when present)."""
    raw = _field(sentence, "raw", str, where)
    tokens = sentence.get("tokens")
    if tokens is None:
        tokens = tokenize(raw)
    elif not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: 'tokens' should be a list of strings")
    tokens = [t for t in tokens if t]
    if not tokens:
        raise DataError(f"{where}: empty caption {raw!r}")
    return raw, tokens


def _record(entry: Any, index: int, path: Path) -> tuple[ImageRecord, str]:
    """One image entry -> (record with path unset, its ``filepath`` sub-folder or "")."""
    where = f"{path}: image {index}"
    filename = _field(entry, "filename", str, where)
    where = f"{path}: image {shown(filename)}"
    if not filename or "\x00" in filename:
        raise DataError(f"{path}: image {index}: file name {filename!r} cannot name a file")
    split = _field(entry, "split", str, where)
    sentences = _field(entry, "sentences", list, where)
    if not sentences:
        raise DataError(f"{where}: no captions")
    captions, tokens = [], []
    for j, sentence in enumerate(sentences):
        raw, toks = _caption(sentence, f"{where}, caption {j}")
        captions.append(raw)
        tokens.append(toks)
    subdir = entry.get("filepath") or ""
    return ImageRecord(filename, None, split, captions, tokens), str(subdir)


def _is_file(path: Path) -> bool:
    """Path.is_file, False also for a name the file system refuses (too long, ...)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _image_folder(root: Path, subdir: str, first_filename: str) -> Path:
    """The first candidate folder holding ``first_filename``; DIR/images when none does."""
    candidates = [root / "images", root / "images" / subdir, root / subdir, root, root / "flickr30k-images"]
    for folder in candidates:
        if _is_file(folder / first_filename):
            return folder
    return root / "images"  # images absent: feature extraction names the missing files


def _attach_paths(root: Path, records: list[ImageRecord], subdirs: list[str]) -> None:
    """Set ``record.path``: one folder lookup per ``filepath`` value (COCO has train2014/val2014)."""
    folders: dict[str, Path] = {}
    for record, subdir in zip(records, subdirs, strict=True):
        if subdir not in folders:
            folders[subdir] = _image_folder(root, subdir, record.filename)
        record.path = folders[subdir] / record.filename


def _refuse_duplicates(records: list[ImageRecord], path: Path) -> None:
    """DataError for a file listed twice: its two entries would be two gallery images with identical
    features, each counted wrong when the other is ranked first."""
    first: dict[Path | None, int] = {}
    for i, record in enumerate(records):
        j = first.setdefault(record.path, i)
        if j != i:
            raise DataError(f"{path}: image {shown(record.filename)} is listed twice (entries {j} and {i}); "
                            "merge its captions into one entry")


def parse_karpathy(raw: Any, path: Path, root: Path) -> Dataset:
    """Build a Dataset from an already parsed Karpathy JSON document."""
    images = _field(raw, "images", list, str(path))
    if not images:
        raise DataError(f"{path}: 'images' is empty")
    parsed = [_record(entry, i, path) for i, entry in enumerate(images)]
    records = [r for r, _ in parsed]
    _attach_paths(root, records, [s for _, s in parsed])
    _refuse_duplicates(records, path)
    name = raw.get("dataset") if isinstance(raw.get("dataset"), str) else path.stem.removeprefix("dataset_")
    return Dataset(name, root, records)


def load_karpathy(data_dir: str | Path) -> Dataset:
    """Read the one ``dataset_*.json`` of ``data_dir`` (all splits) with absolute image paths."""
    root = existing_dir(data_dir)
    path = find_karpathy_json(root)
    if path is None:
        raise DataError(f"dataset folder {root}: no {JSON_PATTERN} file (a Karpathy split file)")
    return parse_karpathy(read_json(path), path, root)
