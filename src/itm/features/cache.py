"""On-disk feature cache: one folder per extractor setting, chunks written atomically.

Layout::

    <cache_root>/<backbone>-<size>px-<proposals>-p<P>-<hash>/
        settings.json                 # the settings the hash was computed from
        chunk-<16 hex>/               # n images (default 256), complete or absent, never partial
            grid.npy     (n, D, C) float16   region grid, D = gh * gw
            objects.npy  (n, P, C) float16   RoIAlign-pooled object vectors
            boxes.npy    (n, P, 4) float32   x1, y1, x2, y2 in original-image pixels
            keys.json    {"keys": [sha1 of the image file bytes], "filenames": [...], "grid_shape": [gh, gw]}
        tmp-<pid>-<random>/           # a chunk being written (removed when its process is gone)

A chunk is written into a temp folder and moved into place with one ``os.replace``, so a process
killed at any moment (even ``kill -9``) leaves either the whole chunk or nothing; the temp folder it
leaves behind is removed by the next run. Entries are keyed by the image's bytes, so a photo in two
folders (or renamed) is extracted once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from itm.errors import DataError

FORMAT_VERSION = 1  # bump when what a chunk holds or how features are computed changes
OPEN_CHUNKS = 64  # chunks a FeatureCache keeps mapped (each holds up to 256 images in three files)
FLOAT16_MAX = 65504.0


def cache_home() -> Path:
    """itm's cache folder: $ITM_CACHE, else ~/.cache/itm (features, caption vectors, ... below it)."""
    return Path(os.environ.get("ITM_CACHE") or "~/.cache/itm").expanduser()


def default_cache_root() -> Path:
    """Where image features go by default: ``cache_home() / "features"`` (~/.cache/itm/features)."""
    return cache_home() / "features"


def content_key(data: bytes) -> str:
    """The cache key of an image: sha1 of its file bytes (same photo, same key, wherever it lives)."""
    return hashlib.sha1(data).hexdigest()


def settings_hash(settings: dict) -> str:
    """Short stable hash of a settings dict (key order does not matter)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:10]


def cache_folder_name(settings: dict) -> str:
    """Readable name + hash, e.g. ``efficientnet_lite0-224px-activation-p10-3f9c0a1b2d``."""
    proposals = str(settings["proposals_tag"]).split("-")[0]
    readable = f"{settings['backbone']}-{settings['image_size']}px-{proposals}-p{settings['num_objects']}"
    return f"{readable}-{settings_hash(settings)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class ChunkEntry:
    """Where one cached image lives."""

    chunk: Path
    row: int


class FeatureCache:
    """One settings folder of the cache: index, read, write chunks."""

    def __init__(self, directory: str | Path, settings: dict):
        self.dir = Path(directory)
        self.settings = settings
        self._opened: OrderedDict[Path, tuple[list[np.ndarray], tuple[int, int]]] = OrderedDict()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.dir}: cannot create feature cache folder ({exc.strerror})") from None
        self._write_settings()

    @classmethod
    def under(cls, root: str | Path, settings: dict) -> FeatureCache:
        """The folder for ``settings`` below ``root``."""
        return cls(Path(root).expanduser() / cache_folder_name(settings), settings)

    def _write_settings(self) -> None:
        path = self.dir / "settings.json"
        text = json.dumps(self.settings, indent=2, sort_keys=True) + "\n"
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                stored = None
            if stored == self.settings:
                return
            if stored is not None:
                raise DataError(f"{path}: holds other settings than its folder name says; remove {self.dir}")
        tmp = self.dir / f".settings-{os.getpid()}.json"
        _fsync_write(tmp, lambda f: f.write(text.encode("utf-8")))
        os.replace(tmp, path)

    def remove_stale_temp(self) -> int:
        """Delete temp chunk folders left by processes that no longer run; how many were removed."""
        removed = 0
        for tmp in self.dir.glob("tmp-*"):
            try:
                pid = int(tmp.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        for tmp in self.dir.glob(".settings-*.json"):  # another live process may be writing its own
            try:
                pid = int(tmp.name.split("-")[1].split(".")[0])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)
        return removed

    def chunks(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("chunk-*") if p.is_dir())

    @staticmethod
    def read_meta(chunk: Path) -> dict:
        path = chunk / "keys.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if len(meta["keys"]) != len(meta["filenames"]):
                raise ValueError("keys and filenames differ in length")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: unreadable cache chunk ({exc}); delete {chunk} and run again") from None
        return meta

    def index(self) -> dict[str, ChunkEntry]:
        """sha1 key -> where it is stored, over every complete chunk."""
        found: dict[str, ChunkEntry] = {}
        for chunk in self.chunks():
            for row, key in enumerate(self.read_meta(chunk)["keys"]):
                found.setdefault(key, ChunkEntry(chunk, row))
        return found

    def write_chunk(
        self, keys: list[str], filenames: list[str], grid: np.ndarray, objects: np.ndarray,
        boxes: np.ndarray, grid_shape: tuple[int, int],
    ) -> Path:
        """Store n images atomically: (n, D, C), (n, P, C) float16 and (n, P, 4) float32 arrays."""
        name = "chunk-" + hashlib.sha1("\n".join(keys).encode("ascii")).hexdigest()[:16]
        final = self.dir / name
        if final.exists():  # the same images, already written (by an earlier or a parallel run)
            return final
        arrays = {
            "grid.npy": np.clip(grid, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16),
            "objects.npy": np.clip(objects, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16),
            "boxes.npy": np.asarray(boxes, dtype=np.float32),
        }
        meta = {"format": FORMAT_VERSION, "grid_shape": list(grid_shape), "keys": keys, "filenames": filenames}
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{os.getpid()}-", dir=self.dir))
        try:
            for file, array in arrays.items():
                _fsync_write(tmp / file, lambda f, a=array: np.save(f, a, allow_pickle=False))
            # keys.json last: even inside the temp folder it marks the arrays as complete
            _fsync_write(tmp / "keys.json", lambda f: f.write(json.dumps(meta).encode("utf-8")))
            try:
                os.replace(tmp, final)  # atomic: readers see the whole chunk or none of it
            except OSError:
                if not final.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a parallel run won the race with the same data
            _fsync_dir(self.dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{self.dir}: cannot write feature chunk ({exc.strerror or exc})") from None
        return final

    def read(self, keys: list[str], index: dict[str, ChunkEntry] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """(N, D, C) grid, (N, P, C) objects, (N, P, 4) boxes for ``keys`` in order, and (gh, gw)."""
        index = self.index() if index is None else index
        by_chunk: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            entry = index[key]
            by_chunk.setdefault(entry.chunk, []).append((i, entry.row))
        grid = objects = boxes = None
        grid_shape: tuple[int, int] = (0, 0)
        for chunk, pairs in by_chunk.items():
            parts, shape = self._open_chunk(chunk)
            if grid is None:
                grid_shape = shape
                grid = np.empty((len(keys), *parts[0].shape[1:]), dtype=np.float16)
                objects = np.empty((len(keys), *parts[1].shape[1:]), dtype=np.float16)
                boxes = np.empty((len(keys), *parts[2].shape[1:]), dtype=np.float32)
            dst = np.fromiter((p[0] for p in pairs), dtype=np.int64)
            src = np.fromiter((p[1] for p in pairs), dtype=np.int64)
            order = np.argsort(src, kind="stable")  # increasing rows read the memory map sequentially
            grid[dst[order]] = parts[0][src[order]]
            objects[dst[order]] = parts[1][src[order]]
            boxes[dst[order]] = parts[2][src[order]]
        if grid is None:
            raise ValueError("read() needs at least one key")
        return grid, objects, boxes, grid_shape

    def _open_chunk(self, chunk: Path) -> tuple[list[np.ndarray], tuple[int, int]]:
        """A chunk's arrays (memory maps) and grid shape. A chunk never changes once written, so the
        last ``OPEN_CHUNKS`` opened are kept: the search service reads a few rows of many chunks per query."""
        if chunk in self._opened:
            self._opened.move_to_end(chunk)
            return self._opened[chunk]
        opened = self._map_chunk(chunk)
        self._opened[chunk] = opened
        while len(self._opened) > OPEN_CHUNKS:  # three open files each
            self._opened.popitem(last=False)
        return opened

    def _map_chunk(self, chunk: Path) -> tuple[list[np.ndarray], tuple[int, int]]:
        meta = self.read_meta(chunk)
        try:
            parts = [np.load(chunk / f, mmap_mode="r", allow_pickle=False) for f in ("grid.npy", "objects.npy", "boxes.npy")]
        except (OSError, ValueError) as exc:
            raise DataError(f"{chunk}: unreadable cache chunk ({exc}); delete it and run again") from None
        if any(p.shape[0] != len(meta["keys"]) for p in parts):
            raise DataError(f"{chunk}: arrays and keys.json disagree on the image count; delete it and run again")
        return parts, tuple(meta["grid_shape"])  # type: ignore[return-value]

    def size_bytes(self) -> int:
        """Bytes of all files in this settings folder."""
        return sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file())


def _fsync_dir(path: Path) -> None:
    """Persist a rename (matters for power loss, not for kill -9); not supported everywhere."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
