"""A photo index that follows its folder, as rclip users expect: incremental, rename-aware, crash-safe.

An index is one folder:

- ``index.sqlite``: ``files`` (relative path, size, mtime, sha1, status), ``images`` (one row per
  distinct photo content: image id, sha1, row in the vectors file) and ``meta`` (the folder indexed,
  the models' identity, the feature settings, the current vectors file);
- ``vectors-<n>.npy``: the shortlist model's image vectors, float32, one row per image;
- ``bank<m>-<n>.npy``: re-ranker m's scores of each image against its own bank, its nearest captions
  of the caption pool (``itm.data.caption_bank``, ``SearchModels.own_banks``), float16, one row per
  image: the statistics search's hubness correction normalises by (``itm.evaluation.hubness``). An
  index built before them, with another pool, or with other re-rankers (a newer shipped matcher, say)
  opens without the correction; the next update scores the banks of every photo it holds, from the
  feature cache (no photo is extracted again).

The vectors and the features tie an index to its shortlist model and feature setting: another of
either is refused. The re-rankers read the features at query time, so they may change; only the banks
depend on them.

Each update walks the folder, hashes only files whose size or mtime changed, reuses the vector of
any content it already holds (a rename or a duplicate costs no extraction), extracts the rest through
the content-addressed feature cache (unreadable, truncated, non-image and over-size files are
reported and skipped), and drops what disappeared. It commits by writing a new vectors file, then
switching to it in one SQLite transaction: a kill at any point leaves the previous index intact, and
the features already extracted stay in the cache, so a re-run finishes the job.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from itm.data.types import Dataset, ImageFeatures, ImageRecord
from itm.errors import DataError, ItmError
from itm.features.cache import content_key

INDEX_FORMAT = 1
APPROXIMATE_ABOVE = 100_000  # photos; an exact inner-product search up to here, HNSW above
HNSW_EF_SEARCH = 128
BANK_CHUNK = 512  # photos scored against their banks at a time when an older index gets its statistics
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (image_id INTEGER PRIMARY KEY, sha1 TEXT UNIQUE NOT NULL, row INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                  sha1 TEXT, status TEXT NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS captions (caption_id INTEGER PRIMARY KEY, text TEXT NOT NULL);
"""


@dataclass
class IndexReport:
    """What one update did; ``summary()`` is the line the CLI prints."""

    added: int = 0  # new content, extracted now or found in the feature cache
    changed: int = 0  # files whose content changed (extracted again)
    reused: int = 0  # new paths of content the index held: renames and duplicates (no extraction)
    deleted: int = 0  # files gone from the folder
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    images: int = 0  # distinct photos in the index afterwards
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.images} photos indexed: {self.added} added, {self.changed} changed, {self.reused} renamed or "
                f"duplicate (not extracted again), {self.deleted} deleted, {self.unchanged} unchanged, "
                f"{len(self.skipped)} skipped ({self.seconds:.1f} s)")


@dataclass
class FileState:
    path: str  # relative to the indexed folder, with '/' separators
    size: int
    mtime_ns: int


def scan_folder(root: Path) -> dict[str, FileState]:
    """Every image file below ``root`` (by suffix, any case), symlinked folders not followed."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            full = Path(folder) / name
            try:
                stat = full.stat()
            except OSError:
                continue  # vanished while walking: the next update sees it gone
            rel = full.relative_to(root).as_posix()
            found[rel] = FileState(rel, stat.st_size, stat.st_mtime_ns)
    return found


class IndexStore:
    """The SQLite database and vectors file of one index folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.folder / "index.sqlite")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DataError(f"index {self.folder}: cannot open it ({exc})") from None

    # -- meta -----------------------------------------------------------------------------------------
    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def check_identity(self, identity: dict, earlier_sha1s: dict[str, str] | None = None) -> None:
        """One index, one shortlist model and feature setting: another's vectors and features do not mix
        (other re-rankers only make the banks stale: ``banks``). ``earlier_sha1s`` ({old: now}): model
        files re-saved with their weights untouched, which the index may name by their old sha1."""
        stored = self.meta("identity")
        if stored is not None and vector_part(as_now(stored, earlier_sha1s or {})) != vector_part(identity):
            raise ItmError(f"index {self.folder} was built with other models ({describe(stored)}); "
                           f"re-index into a new folder with these ({describe(identity)})")

    def rerankers_changed(self, identity: dict, earlier_sha1s: dict[str, str] | None = None) -> bool:
        """Whether the index's banks were scored by other re-rankers than ``identity``'s."""
        stored = self.meta("identity")
        return stored is not None and as_now(stored, earlier_sha1s or {}).get(RERANK_KEY) != identity.get(RERANK_KEY)

    # -- reading ---------------------------------------------------------------------------------------
    def files(self) -> dict[str, tuple[int, int, str | None, str, str | None]]:
        """path -> (size, mtime_ns, sha1, status, reason)."""
        rows = self.db.execute("SELECT path, size, mtime_ns, sha1, status, reason FROM files")
        return {row[0]: row[1:] for row in rows}

    def paths_of(self, sha1s: list[str]) -> dict[str, list[str]]:
        """sha1 -> the indexed paths holding that content (duplicates share one photo)."""
        out: dict[str, list[str]] = {}
        marks = ",".join("?" * len(sha1s))
        query = f"SELECT sha1, path FROM files WHERE status = 'ok' AND sha1 IN ({marks}) ORDER BY path"
        for sha1, path in self.db.execute(query, sha1s):
            out.setdefault(sha1, []).append(path)
        return out

    def images(self) -> dict[str, tuple[int, int]]:
        """sha1 -> (image id, row in the vectors file)."""
        return {sha1: (image_id, row) for image_id, sha1, row in self.db.execute("SELECT image_id, sha1, row FROM images")}

    def banks(self, identity: dict | None, rerankers_changed: bool = False) -> list[np.ndarray] | None:
        """Each re-ranker's (n_images, n_bank) caption-bank scores, rows as ``vectors``'; None when the
        index holds none of the bank ``identity`` names (built before them, or with another bank) or
        they were scored by other re-rankers (``rerankers_changed``)."""
        names = self.meta("bank_files") or []
        if identity is None or not names or self.meta("bank") != identity or rerankers_changed:
            return None
        try:
            return [np.load(self.folder / name, allow_pickle=False) for name in names]
        except (OSError, ValueError) as exc:
            raise DataError(f"index {self.folder}: bank file unreadable ({exc}); run itm index again") from None

    def vectors(self) -> np.ndarray:
        name = self.meta("vectors_file")
        if name is None:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            return np.load(self.folder / name, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"index {self.folder}: vectors file {name} unreadable ({exc}); re-index") from None

    # -- writing ---------------------------------------------------------------------------------------
    def write_array(self, prefix: str, array: np.ndarray, dtype=np.float32) -> str:
        """A new ``<prefix>-<n>.npy`` file, complete on disk before any transaction names it."""
        name = f"{prefix}-{time.time_ns()}.npy"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.folder / name)
        return name

    def commit(self, files: list[tuple], images: list[tuple[int, str]], vectors: np.ndarray, meta: dict,
               banks: list[np.ndarray] | None = None) -> None:
        """Replace the whole photo state: the vectors (and bank) files first, then one transaction
        switches to them. ``banks``: each re-ranker's (n_images, n_bank) scores, rows as ``vectors``'."""
        name = self.write_array("vectors", vectors)
        bank_files = [self.write_array(f"bank{m}", bank, np.float16) for m, bank in enumerate(banks or [])]
        with self.db:  # one transaction: all of it or, after a kill, none of it
            self.write_rows(files, images, {**meta, "vectors_file": name, "bank_files": bank_files,
                                            "format": INDEX_FORMAT})
        self.remove_stale_arrays("vectors", keep=name)
        self.remove_stale_arrays("bank*", keep=bank_files)  # a larger ensemble's before: every member's

    def commit_captions(self, texts: list[str], vectors: np.ndarray) -> None:
        """Replace the caption collection (searched by image) the same crash-safe way."""
        name = self.write_array("captions", vectors)
        with self.db:
            self.db.execute("DELETE FROM captions")
            self.db.executemany("INSERT INTO captions VALUES (?, ?)", list(enumerate(texts)))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("captions_file", json.dumps(name)))
        self.remove_stale_arrays("captions", keep=name)

    def captions(self) -> tuple[list[str], np.ndarray]:
        """The caption collection and its vectors (empty when none was given)."""
        texts = [t for _, t in self.db.execute("SELECT caption_id, text FROM captions ORDER BY caption_id")]
        name = self.meta("captions_file")
        if name is None:
            return [], np.zeros((0, 0), dtype=np.float32)
        return texts, np.load(self.folder / name, allow_pickle=False)

    def write_rows(self, files: list[tuple], images: list[tuple[int, str]], meta: dict) -> None:
        """The rows of the new state (inside ``commit``'s transaction)."""
        self.db.execute("DELETE FROM files")
        self.db.execute("DELETE FROM images")
        self.db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", files)
        self.db.executemany("INSERT INTO images VALUES (?, ?, ?)",
                            [(image_id, sha1, row) for row, (image_id, sha1) in enumerate(images)])
        for key, value in meta.items():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def remove_stale_arrays(self, prefix: str, keep: str | list[str] | None) -> None:
        """``<prefix>-*.npy`` files no transaction points to (left by an earlier kill or replaced now)."""
        kept = {keep} if isinstance(keep, str) else set(keep or ())
        for path in self.folder.glob(f"*{prefix}-*.npy*"):
            if path.name not in kept:
                path.unlink(missing_ok=True)


RERANK_KEY = "rerank_model"


def vector_part(identity: dict) -> dict:
    """What an index's vectors and features depend on: all of its identity but the re-rankers."""
    return {key: value for key, value in identity.items() if key != RERANK_KEY}


def as_now(identity: dict, earlier_sha1s: dict[str, str]) -> dict:
    """``identity`` with each model file's earlier sha1 replaced by its sha1 now."""
    def now(value):
        return [now(v) for v in value] if isinstance(value, list) else earlier_sha1s.get(value, value)

    return {key: now(value) if key.endswith("model") else value for key, value in identity.items()}


def describe(identity: dict) -> str:
    return ", ".join(f"{k} {str(v)[:12]}" for k, v in identity.items() if k.endswith("model"))


@dataclass
class UpdatePlan:
    """What an update does to each file of the folder."""

    keep: dict[str, tuple[FileState, str]] = field(default_factory=dict)  # path -> (state, sha1 held already)
    extract: dict[str, tuple[FileState, str]] = field(default_factory=dict)  # path -> (state, sha1 to extract)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def plan_update(root: Path, on_disk: dict[str, FileState], stored: dict, held: dict[str, tuple[int, int]],
                report: IndexReport) -> UpdatePlan:
    """Hash what changed; sort each file into kept (content held) or to extract."""
    plan = UpdatePlan()
    for path, state in sorted(on_disk.items()):
        before = stored.get(path)
        if before is not None and before[:2] == (state.size, state.mtime_ns):
            if before[3] == "ok":
                plan.keep[path] = (state, before[2])
                report.unchanged += 1
                continue
            plan.skipped.append((path, before[4]))  # the same bad file as last time: not tried again
            continue
        try:
            sha1 = content_key((root / path).read_bytes())
        except OSError as exc:
            plan.skipped.append((path, f"cannot read ({exc.strerror or exc})"))
            continue
        if sha1 in held:
            plan.keep[path] = (state, sha1)
            report.reused += before is None
            report.unchanged += before is not None
        else:
            plan.extract[path] = (state, sha1)  # counted as added / changed once it decodes
    report.deleted = sum(1 for path in stored if path not in on_disk)
    return plan


class CachedFeatures:
    """The feature cache an index's photos were extracted into, read by photo sha1. Its table of
    contents is read once and kept (a query must not re-read every chunk's key list), and read again
    only when it lacks a photo."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._opened = None  # (FeatureCache, its table of contents)

    def rows(self, sha1s: list[str]) -> ImageFeatures:
        """The cached features of ``sha1s``, in order; a one-line DataError when the cache lacks any."""
        if self._opened is None or any(s not in self._opened[1] for s in sha1s):
            self._opened = self._open()
        cache, contents = self._opened
        try:
            grid, objects, boxes, grid_shape = cache.read(sha1s, contents)
        except KeyError:
            raise DataError(f"feature cache {self.folder}: lacks photos of this index; run itm index again") from None
        return ImageFeatures(torch.from_numpy(grid), torch.from_numpy(objects), torch.from_numpy(boxes), grid_shape)

    def _open(self):
        from itm.features.cache import FeatureCache

        try:
            settings = json.loads((self.folder / "settings.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"feature cache {self.folder}: unreadable ({exc.__class__.__name__}); run itm index "
                            "again") from None
        cache = FeatureCache(self.folder, settings)
        return cache, cache.index()


def update_index(store: IndexStore, root: str | Path, models, progress: bool = True) -> IndexReport:
    """Bring the index in ``store`` up to date with the folder ``root`` (see the module docstring)."""
    from itm.features.extract import extract_features

    started = time.time()
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"photo folder {root}: no such folder")
    store.check_identity(models.identity(), models.earlier_sha1s())
    indexed_root = store.meta("root")
    if indexed_root is not None and indexed_root != str(root):
        raise ItmError(f"index {store.folder} follows {indexed_root}, not {root}: use another --out")
    report = IndexReport()
    held = store.images()
    old_vectors = store.vectors()
    # None (built before them, or by other re-rankers): every photo's banks are scored
    old_banks = store.banks(models.bank_identity(), store.rerankers_changed(models.identity(), models.earlier_sha1s()))
    stored = store.files()
    plan = plan_update(root, scan_folder(root), stored, held, report)

    # extract new content once per sha1 (duplicates among the new files share it)
    firsts = {}
    for path, (_, sha1) in plan.extract.items():
        firsts.setdefault(sha1, path)
    new_vectors: dict[str, np.ndarray] = {}
    new_banks: dict[str, list[np.ndarray]] = {}  # sha1 -> each re-ranker's bank scores
    if firsts:
        records = [ImageRecord(path, root / path, "index", [], []) for path in firsts.values()]
        features, kept, extraction = extract_features(Dataset("index", root, records), models.features,
                                                      models.cache_root(), skip_bad=True, progress=progress,
                                                      device=models.device)
        plan.skipped += extraction.skipped
        if len(kept):
            vectors = models.image_vectors(features)  # (n, d)
            sha1_of = {path: sha1 for sha1, path in firsts.items()}
            banks = models.bank_scores(features, vectors, [sha1_of[r.filename] for r in kept.images])  # (n, m) each
            for i, (record, vector) in enumerate(zip(kept.images, vectors, strict=True)):
                new_vectors[sha1_of[record.filename]] = vector
                new_banks[sha1_of[record.filename]] = [bank[i] for bank in banks]
            store_cache_dir = extraction.cache_dir
        else:
            store_cache_dir = store.meta("cache_dir")
    else:
        store_cache_dir = store.meta("cache_dir")
    report.skipped = plan.skipped
    bad = {path for path, _ in plan.skipped}
    for path in plan.extract:
        if path not in bad:
            report.changed += path in stored
            report.added += path not in stored

    # the new state: every photo still referenced by a file, old ids kept, new ids after the largest
    rows, files = [], []
    next_id = max((image_id for image_id, _ in held.values()), default=0) + 1
    ids: dict[str, int] = {}
    vector_rows: list[np.ndarray] = []
    for path, (state, sha1) in sorted({**plan.keep, **plan.extract}.items()):
        if path in bad or (sha1 not in held and sha1 not in new_vectors):
            continue
        if sha1 not in ids:
            if sha1 in held:
                ids[sha1] = held[sha1][0]
                vector_rows.append(old_vectors[held[sha1][1]])
                if old_banks is not None:
                    new_banks[sha1] = [bank[held[sha1][1]] for bank in old_banks]
            else:
                ids[sha1], next_id = next_id, next_id + 1
                vector_rows.append(new_vectors[sha1])
            rows.append((ids[sha1], sha1))
        files.append((path, state.size, state.mtime_ns, sha1, "ok", None))
    for path, reason in plan.skipped:
        state = scan_state(root, path)
        files.append((path, state.size, state.mtime_ns, None, "skipped", reason))
    dim = models.vector_dim()
    vectors = np.stack(vector_rows) if vector_rows else np.zeros((0, dim), dtype=np.float32)
    banks = bank_arrays(models, [sha1 for _, sha1 in rows], vectors, new_banks, store_cache_dir)
    store.commit(files, rows, vectors, {"root": str(root), "identity": models.identity(),
                                        "checkpoints": models.paths, "cache_dir": store_cache_dir,
                                        "bank": models.bank_identity()}, banks)
    report.images = len(rows)
    report.seconds = time.time() - started
    return report


def bank_arrays(models, sha1s: list[str], vectors: np.ndarray, rows: dict[str, list[np.ndarray]],
                cache_dir) -> list[np.ndarray]:
    """Each re-ranker's (len(sha1s), m) scores of the photos against their own banks, in ``sha1s``' order
    (``vectors``: their shortlist vectors, same order): ``rows`` where it has them, the rest (photos an
    index held before it had these banks) scored now from the feature cache."""
    if not models.rerankers:
        return []
    position = {sha1: i for i, sha1 in enumerate(sha1s)}
    missing = [sha1 for sha1 in sha1s if sha1 not in rows]
    cached, rows = CachedFeatures(cache_dir), dict(rows)
    for start in range(0, len(missing), BANK_CHUNK):  # a few hundred photos' features in memory at a time
        part = missing[start : start + BANK_CHUNK]
        scored = models.bank_scores(cached.rows(part), vectors[[position[sha1] for sha1 in part]], part)
        rows.update({sha1: [bank[i] for bank in scored] for i, sha1 in enumerate(part)})
    if not sha1s:
        return [np.zeros((0, 0), np.float16) for _ in models.rerankers]
    return [np.stack([rows[sha1][m] for sha1 in sha1s]) for m in range(len(models.rerankers))]


def scan_state(root: Path, path: str) -> FileState:
    try:
        stat = (root / path).stat()
        return FileState(path, stat.st_size, stat.st_mtime_ns)
    except OSError:
        return FileState(path, -1, -1)

def read_captions_file(path: str | Path) -> list[str]:
    """One caption a line (UTF-8; blank lines skipped); a one-line DataError naming the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"captions file {path}: cannot read it ({exc.strerror or exc})") from None
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"captions file {path}, line {number}: not UTF-8 text") from None
        if text:
            texts.append(text)
    if not texts:
        raise DataError(f"captions file {path}: no captions (one a line)")
    return texts


def index_captions(store: IndexStore, path: str | Path, models) -> int:
    """Embed a caption collection with the shortlist model and store it beside the photos."""
    store.check_identity(models.identity(), models.earlier_sha1s())
    texts = read_captions_file(path)
    store.commit_captions(texts, models.caption_vectors(texts))
    return len(texts)


def shortlist_index(store: IndexStore, vectors: np.ndarray, approximate_above: int = APPROXIMATE_ABOVE):
    """The FAISS index of the index's photo vectors. An approximate (HNSW) one is built once and kept
    beside its vectors file (``<vectors file>.d<dim>.faiss``, dropped with it on the next update), so a
    large index opens in seconds instead of rebuilding its graph at every start."""
    if len(vectors) <= approximate_above:
        return build_faiss(vectors, approximate_above)
    import faiss

    # the corrected shortlist's vectors have one more dimension: its graph is kept under its own name
    path = store.folder / f"{store.meta('vectors_file')}.d{vectors.shape[1]}.faiss"
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
            if (index.ntotal, index.d) == vectors.shape:
                index.hnsw.efSearch = HNSW_EF_SEARCH
                return index
        except (RuntimeError, AttributeError):  # damaged or not ours: build it again
            pass
    index = build_faiss(vectors, approximate_above)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError):  # a read-only index folder: build it at every start instead
        tmp.unlink(missing_ok=True)
    return index


def build_faiss(vectors: np.ndarray, approximate_above: int):
    """Exact inner product for small collections; HNSW (inner product) above ``approximate_above``."""
    import faiss

    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1
    if len(vectors) > approximate_above:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index
