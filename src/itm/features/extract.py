"""Extract image features once into the cache: the region grid and pooled object proposals.

``extract_features(dataset, settings)`` hashes each image file (its sha1 is the cache key), runs
only the images the cache lacks, writes whole chunks atomically (see ``itm.features.cache``) and
returns features aligned with the dataset. A killed run resumes after its last whole chunk and ends
with the same arrays as an uninterrupted one: the images still missing are cut into the same chunks
and batches as before, so every image is computed in an identical batch.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from itm.config import FeatureConfig
from itm.data.types import Dataset, ImageFeatures, ImageRecord
from itm.devices import as_device
from itm.distributed import shard, world_size
from itm.errors import DataError
from itm.features.backbones import Backbone, build_backbone
from itm.features.cache import FLOAT16_MAX, FORMAT_VERSION, FeatureCache, content_key, default_cache_root
from itm.features.images import decode_image, image_tensor, original_size, read_image_file
from itm.features.proposals import ProposalInput, ProposalMethod, build_proposals
from itm.features.roi import roi_align

ROI_OUTPUT = 3  # RoIAlign bins per side; the 3x3 bins are averaged into one vector per object
CHUNK_SIZE = 256


@dataclass
class ExtractionReport:
    """What one ``extract_features`` call did."""

    images: int = 0  # in the input dataset
    extracted: int = 0  # computed by this call
    cached: int = 0  # found in the cache (including duplicates of a photo computed now)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (filename, reason)
    seconds: float = 0.0  # wall time of the whole call
    decode_seconds: float = 0.0  # reading + decoding + resizing the images
    grid_seconds: float = 0.0  # backbone forward passes (the region grid)
    object_seconds: float = 0.0  # proposals + RoIAlign pooling
    cache_dir: str = ""
    cache_bytes: int = 0
    cache_images: int = 0  # every photo in the cache folder (it may hold other splits too)

    @property
    def seconds_per_image(self) -> float:
        """Wall seconds per image extracted by this call (0 when everything was cached)."""
        return self.seconds / self.extracted if self.extracted else 0.0

    def summary(self) -> str:
        """One paragraph for the command line."""
        rate = (f"{self.extracted} extracted now in {self.seconds:.0f} s ({1000 * self.seconds_per_image:.0f} ms/image: "
                f"decode {1000 * self.decode_seconds / self.extracted:.0f}, grid {1000 * self.grid_seconds / self.extracted:.0f}, "
                f"objects {1000 * self.object_seconds / self.extracted:.0f})" if self.extracted else "0 extracted now")
        skipped = "; ".join(f"{name} ({reason})" for name, reason in self.skipped[:5])
        more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
        return (f"{self.images} images: {rate}, {self.cached} already cached, {len(self.skipped)} skipped"
                f"{': ' + skipped + more if self.skipped else ''}. Cache {self.cache_dir}: "
                f"{self.cache_bytes / 2**20:.1f} MiB for {self.cache_images} images "
                f"({self.cache_bytes / max(self.cache_images, 1) / 1024:.0f} KiB/image).")


def extractor_settings(settings: FeatureConfig, backbone: Backbone, proposals: ProposalMethod) -> dict:
    """Everything that changes the arrays (it names the cache folder); the FeatureConfig fields are
    kept under their own names so that ``FeatureConfig(**known keys)`` rebuilds the settings."""
    return {
        "format": FORMAT_VERSION, "backbone": settings.backbone, "image_size": settings.image_size,
        "weights_tag": backbone.weights_tag, "proposals_tag": proposals.tag,
        "num_objects": settings.num_objects, "roi_output": ROI_OUTPUT,
    }


def read_image_bytes(record: ImageRecord) -> bytes:
    """The file's bytes; DataError naming it when absent or unreadable."""
    if record.path is None:
        raise DataError(f"{record.filename}: no image file (a precomputed-features dataset?)")
    return read_image_file(record.path)


class Extractor:
    """Backbone + proposals + RoIAlign for one FeatureConfig. The backbone runs on ``device``;
    proposals and pooling, many tiny ops, stay on the CPU with the map."""

    def __init__(self, settings: FeatureConfig, device: torch.device | str | None = None):
        self.settings = settings
        self.device = as_device(device)
        self.backbone = build_backbone(settings).to(self.device)
        self.proposals = build_proposals(settings)
        self.info = extractor_settings(settings, self.backbone, self.proposals)

    @torch.inference_mode()
    def grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in 0..255 -> (B, C, h, w) activation map, on the CPU."""
        return self.backbone.feature_map(pixels.to(self.device)).cpu()

    @torch.inference_mode()
    def objects(self, fmap: torch.Tensor, sizes: list[tuple[int, int]], filenames: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) map -> (B, P, C) pooled object vectors and (B, P, 4) boxes in original pixels."""
        p = self.settings.num_objects
        with single_thread():
            boxes = torch.stack([
                self.proposals.propose(ProposalInput(fmap[i], sizes[i], filenames[i]), p) for i in range(fmap.shape[0])
            ])  # (B, P, 4)
            return pool_objects(fmap, boxes, sizes, self.settings.image_size), boxes


@contextmanager
def single_thread():
    """Run torch single-threaded for a while: proposals and pooling are many tiny ops, and on a busy
    2-core machine a 2-thread pool made them ~50x slower (median) for its synchronisation alone."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def pool_objects(fmap: torch.Tensor, boxes: torch.Tensor, sizes: list[tuple[int, int]], image_size: int) -> torch.Tensor:
    """RoIAlign (3x3, averaged) of (B, C, h, w) over (B, P, 4) original-pixel boxes -> (B, P, C)."""
    b, c, h, _ = fmap.shape
    p = boxes.shape[1]
    # the map covers the S x S resized image: map original pixels into it per axis
    to_input = torch.tensor([[image_size / w, image_size / hh] * 2 for w, hh in sizes], dtype=torch.float32)  # (B, 4)
    index = torch.arange(b, dtype=torch.float32).repeat_interleave(p)[:, None]  # (B*P, 1)
    rois = torch.cat([index, (boxes * to_input[:, None, :]).reshape(b * p, 4)], dim=1)  # (B*P, 5)
    pooled = roi_align(fmap, rois, ROI_OUTPUT, spatial_scale=h / image_size, sampling_ratio=2)  # (B*P, C, 3, 3)
    return pooled.mean(dim=(2, 3)).view(b, p, c)  # (B, P, C)


def precomputed_features(dataset: Dataset, settings: FeatureConfig) -> ImageFeatures:
    """SCAN precomp: all R rows as regions, the first P rows as objects, no boxes (nor a grid)."""
    array = dataset.precomputed
    if array is None or array.ndim != 3 or array.shape[0] != len(dataset):
        shape = None if array is None else tuple(array.shape)
        raise DataError(f"{dataset.root}: precomputed features must be (images={len(dataset)}, regions, dim), got {shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, naming the image
        # a copy: a float16 file's memory map would come back as is, read-only (torch warns)
        regions = torch.from_numpy(np.array(array, dtype=np.float16))  # (N, R, d)
    _check_finite(regions, dataset)
    p = min(settings.num_objects, regions.shape[1])
    info = {"format": FORMAT_VERSION, "precomputed": str(dataset.root), "num_objects": p}
    return ImageFeatures(regions, regions[:, :p], None, None, info)


def _check_finite(regions: torch.Tensor, dataset: Dataset, rows: int = 1024) -> None:
    """DataError naming the first image whose features hold NaN or inf (also float16 overflow):
    they would turn every score of a run into NaN. Checked in blocks of rows to bound memory."""
    for start in range(0, regions.shape[0], rows):
        finite = torch.isfinite(regions[start : start + rows]).flatten(1).all(dim=1)  # (rows,)
        if not bool(finite.all()):
            record = dataset.images[start + int((~finite).nonzero()[0])]
            raise DataError(f"{dataset.root}: precomputed features of {record.filename} are not finite "
                            f"(NaN, inf, or beyond float16's range of +-{FLOAT16_MAX:g})")


def _hash_all(dataset: Dataset, skip_bad: bool, skipped: list[tuple[str, str]]) -> list[str | None]:
    """sha1 of every image file (None for skipped ones): cheap next to decoding, and content-addressed."""
    keys: list[str | None] = []
    for record in dataset.images:
        try:
            keys.append(content_key(read_image_bytes(record)))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((record.filename, str(exc)))
            keys.append(None)
    return keys


def _decode(record: ImageRecord, key: str, size: int):
    """(pixels (3, S, S), original (W, H)) of one record whose bytes must still hash to ``key``."""
    data = read_image_bytes(record)
    if content_key(data) != key:
        raise DataError(f"{record.path}: file changed while features were extracted; run again")
    img = decode_image(data, record.path, min_size=size)
    return image_tensor(img, size), original_size(img)


def _extract_chunk(extractor: Extractor, items: list[tuple[ImageRecord, str]], batch_size: int, skip_bad: bool,
                   report: ExtractionReport, bad: set[str], bar) -> tuple[list[str], list[str], list[np.ndarray]]:
    """Compute one chunk; bad images raise (or, with ``skip_bad``, go to ``bad`` and the report)."""
    keys, names, grids, objects, boxes = [], [], [], [], []
    size = extractor.settings.image_size
    for start in range(0, len(items), batch_size):
        pixels, sizes, batch = [], [], []
        t0 = time.perf_counter()
        for record, key in items[start : start + batch_size]:
            try:
                px, wh = _decode(record, key, size)
            except DataError as exc:
                if not skip_bad:
                    raise
                report.skipped.append((record.filename, str(exc)))
                bad.add(key)
                continue
            pixels.append(px)
            sizes.append(wh)
            batch.append((record, key))
        t1 = time.perf_counter()
        if batch:
            fmap = extractor.grid(torch.stack(pixels))  # (B, C, h, w)
            t2 = time.perf_counter()
            objs, bxs = extractor.objects(fmap, sizes, [r.filename for r, _ in batch])  # (B, P, C), (B, P, 4)
            t3 = time.perf_counter()
            report.grid_seconds += t2 - t1
            report.object_seconds += t3 - t2
            b, c, h, w = fmap.shape
            grids.append(fmap.permute(0, 2, 3, 1).reshape(b, h * w, c).numpy())  # (B, D, C) row-major cells
            objects.append(objs.numpy())
            boxes.append(bxs.numpy())
            keys += [k for _, k in batch]
            names += [r.filename for r, _ in batch]
            report.extracted += len(batch)
        report.decode_seconds += t1 - t0
        bar.update(len(items[start : start + batch_size]))
    arrays = [np.concatenate(a) if a else np.zeros(0) for a in (grids, objects, boxes)]
    return keys, names, arrays


def extract_features(
    dataset: Dataset,
    settings: FeatureConfig,
    cache_root: str | Path | None = None,
    batch_size: int = 16,
    skip_bad: bool = False,
    progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> tuple[ImageFeatures, Dataset, ExtractionReport]:
    """Features for every image of ``dataset``, extracting only what the cache lacks.

    Returns (features aligned with the returned dataset, that dataset = the input minus images
    skipped as bad, a report). Without ``skip_bad`` the first bad image raises DataError naming it;
    chunks finished before it stay in the cache. ``cache_root``: default ``settings.cache_dir`` /
    features, else ``default_cache_root()``. A dataset with ``precomputed`` features is returned as
    is (no extraction). ``device``: where the backbone runs (None: the CPU); the cache is the same.
    """
    started = time.perf_counter()
    report = ExtractionReport(images=len(dataset))
    if dataset.precomputed is not None:
        return precomputed_features(dataset, settings), dataset, report
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    extractor = Extractor(settings, device)
    if cache_root is None:
        cache_root = Path(settings.cache_dir).expanduser() / "features" if settings.cache_dir else default_cache_root()
    cache = FeatureCache.under(cache_root, extractor.info)
    cache.remove_stale_temp()
    report.cache_dir = str(cache.dir)

    keys = _hash_all(dataset, skip_bad, report.skipped)
    index = cache.index()
    mine = my_chunks(pending_chunks(dataset, keys, index, chunk_size))
    bad: set[str] = set()  # keys of files that could be read but not decoded
    total = sum(len(items) for items in mine)
    with tqdm(total=total, desc="image features", unit="img", disable=not progress or not total) as bar:
        for items in mine:
            chunk_keys, names, (grid, objects, boxes) = _extract_chunk(
                extractor, items, batch_size, skip_bad, report, bad, bar)
            if chunk_keys:
                h, w = _grid_shape(grid.shape[1], extractor)
                cache.write_chunk(chunk_keys, names, grid, objects, boxes, (h, w))
    bad |= other_processes_bad(bad)
    if world_size() > 1:
        index = cache.index()  # the other processes' chunks
    rows = [i for i, k in enumerate(keys) if k is not None and k not in bad]
    kept = Dataset(dataset.name, dataset.root, [dataset.images[i] for i in rows])
    report.cached = len(rows) - report.extracted
    report.seconds = time.perf_counter() - started
    report.cache_bytes = cache.size_bytes()
    report.cache_images = len(cache.index())
    return _load(cache, [keys[i] for i in rows], extractor), kept, report


def pending_chunks(dataset: Dataset, keys: list[str | None], index: dict, chunk_size: int) -> list[list]:
    """The missing photos as (record, key) chunks. Chunks cut the dataset's distinct photos in order
    and keep only what the cache lacks, so an interrupted run, resumed, and a run shared by several
    processes compute every photo in the same chunk and batch as one uninterrupted process."""
    first: dict[str, ImageRecord] = {}  # first record of each distinct photo, in dataset order
    for record, key in zip(dataset.images, keys, strict=True):
        if key is not None and key not in first:
            first[key] = record
    distinct = list(first.items())
    chunks = []
    for start in range(0, len(distinct), chunk_size):
        missing = [(record, key) for key, record in distinct[start : start + chunk_size] if key not in index]
        if missing:
            chunks.append(missing)
    return chunks


def my_chunks(chunks: list[list]) -> list[list]:
    """This process's contiguous share of the chunks under torchrun (all of them otherwise)."""
    return chunks[shard(len(chunks))]


def other_processes_bad(bad: set[str]) -> set[str]:
    """Every process's undecodable keys (a barrier too: the cache is complete after it)."""
    if world_size() == 1:
        return set()
    import torch.distributed as dist

    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, sorted(bad))
    return {key for part in gathered for key in part}


def _grid_shape(cells: int, extractor: Extractor) -> tuple[int, int]:
    """(gh, gw) of the square map the backbone gives for square inputs."""
    side = int(round(cells**0.5))
    if side * side != cells:
        raise ValueError(f"{extractor.settings.backbone}: a non-square map of {cells} cells")
    return side, side


def _load(cache: FeatureCache, keys: list[str], extractor: Extractor) -> ImageFeatures:
    """ImageFeatures for ``keys`` (in order) read from the cache; empty tensors when there are none."""
    if keys:
        grid, objects, boxes, grid_shape = cache.read(keys)
    else:  # every image was skipped: shapes from one blank forward pass
        s = extractor.settings.image_size
        fmap = extractor.grid(torch.zeros(1, 3, s, s))
        c, h, w = fmap.shape[1:]
        p = extractor.settings.num_objects
        grid, objects = np.zeros((0, h * w, c), np.float16), np.zeros((0, p, c), np.float16)
        boxes, grid_shape = np.zeros((0, p, 4), np.float32), (h, w)
    info = {**extractor.info, **_config_fields(extractor.settings)}
    return ImageFeatures(torch.from_numpy(grid), torch.from_numpy(objects), torch.from_numpy(boxes),
                         (int(grid_shape[0]), int(grid_shape[1])), info)


def _config_fields(settings: FeatureConfig) -> dict:
    """The FeatureConfig values themselves (the weights path, the proposals spec), for checkpoints."""
    return {"backbone": settings.backbone, "image_size": settings.image_size, "weights": settings.weights,
            "proposals": settings.proposals, "num_objects": settings.num_objects}


def file_features(files: list[tuple[str, Path]], settings: FeatureConfig, cache_root: str | Path,
                  device: torch.device | str | None = None) -> ImageFeatures:
    """Features of loose image files, (name, path) each, in order, through the cache: the photos a
    user or an upload gives, outside any dataset. A bad file is a DataError naming it."""
    records = [ImageRecord(name, Path(path), "query", [], []) for name, path in files]
    features, _, _ = extract_features(Dataset("images", Path("/"), records), settings, cache_root, progress=False,
                                      device=device)
    return features
