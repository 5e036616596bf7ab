"""Extract image features once into the cache: the region grid (W2R) and pooled objects (O2W).

``extract_features(dataset, settings)`` reads each image file once (its sha1 is the cache key),
runs only the images not cached yet, writes whole chunks atomically, and returns features aligned
with the dataset. A killed run resumes where its last whole chunk ended and ends with the same arrays.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from itm.config import FeatureConfig
from itm.data.types import Dataset, ImageFeatures
from itm.errors import DataError
from itm.features.backbones import build_backbone
from itm.features.cache import FORMAT_VERSION, FeatureCache, cache_home, content_key
from itm.features.images import decode_image, image_tensor, original_size
from itm.features.proposals import ProposalInput, build_proposals
from itm.features.roi import roi_align

ROI_OUTPUT = 3  # RoIAlign bins per side; the bins are averaged into one vector per object
CHUNK_SIZE = 256


@dataclass
class ExtractionReport:
    images: int = 0
    extracted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    cache_dir: str = ""
    cache_bytes: int = 0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.extracted if self.extracted else 0.0


def extractor_settings(settings: FeatureConfig, backbone, proposals) -> dict:
    """Everything that changes the arrays: it names the cache folder and travels with checkpoints."""
    return {"format_version": FORMAT_VERSION, "backbone": settings.backbone, "image_size": settings.image_size,
            "weights": settings.weights, "weights_tag": backbone.weights_tag, "proposals": settings.proposals,
            "proposals_tag": proposals.tag, "num_objects": settings.num_objects, "roi_output": ROI_OUTPUT}


def read_bytes(path: Path | None, filename: str) -> bytes:
    if path is None:
        raise DataError(f"image {filename}: no file path")
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path}: no such file") from None
    except OSError as exc:
        raise DataError(f"image {path}: cannot be read ({exc.strerror})") from None


def precomputed_features(dataset: Dataset, settings: FeatureConfig) -> ImageFeatures:
    """SCAN precomp arrays: all R regions for W2R, the first P as O2W objects."""
    array = dataset.precomputed
    if array is None or array.ndim != 3:
        shape = None if array is None else array.shape
        raise DataError(f"precomputed features of {dataset.root}: expected (N, R, d), got shape {shape}")
    regions = torch.from_numpy(np.asarray(array, dtype=np.float16))  # (N, R, d)
    p = min(settings.num_objects, regions.shape[1])
    return ImageFeatures(regions, regions[:, :p], None, None, {"precomp": str(dataset.root), "num_objects": p})


class Extractor:
    """Backbone + proposals + RoIAlign for one settings object."""

    def __init__(self, settings: FeatureConfig):
        self.settings = settings
        self.backbone = build_backbone(settings)
        self.proposals = build_proposals(settings)
        self.info = extractor_settings(settings, self.backbone, self.proposals)

    @torch.inference_mode()
    def run(self, images: list, sizes: list[tuple[int, int]], filenames: list[str]):
        """PIL images -> (grid (B, D, C), objects (B, P, C), boxes (B, P, 4)) numpy arrays."""
        s = self.settings.image_size
        pixels = torch.stack([image_tensor(img, s) for img in images])  # (B, 3, S, S)
        fmap = self.backbone.features(pixels)  # (B, C, h, w)
        b, c, h, w = fmap.shape
        grid = fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, D, C), row-major over the grid
        boxes = torch.stack([self.proposals.propose(ProposalInput(fmap[i], sizes[i], filenames[i]),
                                                    self.settings.num_objects) for i in range(b)])  # (B, P, 4)
        scale = torch.tensor([[s / sz[0], s / sz[1], s / sz[0], s / sz[1]] for sz in sizes])  # to input pixels
        rois = torch.cat([torch.full((b, boxes.shape[1], 1), 0.0) + torch.arange(b)[:, None, None],
                          boxes * scale[:, None, :]], dim=-1).view(-1, 5)  # (B*P, 5)
        pooled = roi_align(fmap, rois, ROI_OUTPUT, 1.0 / self.backbone.stride)  # (B*P, C, 3, 3)
        objects = pooled.mean(dim=(2, 3)).view(b, -1, c)  # (B, P, C)
        return grid.numpy(), objects.numpy(), boxes.numpy()


def extract_features(dataset: Dataset, settings: FeatureConfig, cache_root: str | Path | None = None,
                     batch_size: int = 16, skip_bad: bool = False, progress: bool = True,
                     chunk_size: int = CHUNK_SIZE) -> tuple[ImageFeatures, Dataset, ExtractionReport]:
    """Features for every image of ``dataset`` (extracting what the cache lacks).

    Returns the features, the dataset they align with (the input minus skipped images) and a report.
    Without ``skip_bad`` the first unreadable image raises DataError; chunks already written stay."""
    if dataset.precomputed is not None:
        return precomputed_features(dataset, settings), dataset, ExtractionReport(images=len(dataset))
    started = time.time()
    extractor = Extractor(settings)
    cache = FeatureCache(cache_root or cache_home() / "features", extractor.info)
    report = ExtractionReport(images=len(dataset), cache_dir=str(cache.dir))

    keys: list[str | None] = []
    for record in dataset.images:  # hashing every file is cheap and makes the cache content-addressed
        try:
            keys.append(content_key(read_bytes(record.path, record.filename)))
        except DataError as exc:
            if not skip_bad:
                raise
            report.skipped.append((record.filename, str(exc)))
            keys.append(None)
    todo = [i for i, k in enumerate(keys) if k is not None and k not in cache.index]
    buffer: dict[str, list] = {"keys": [], "names": [], "grid": [], "objects": [], "boxes": []}

    def flush() -> None:
        if buffer["keys"]:
            cache.write_chunk(buffer["keys"], buffer["names"], np.concatenate(buffer["grid"]),
                              np.concatenate(buffer["objects"]), np.concatenate(buffer["boxes"]))
            for value in buffer.values():
                value.clear()

    bar = tqdm(total=len(todo), desc="extracting features", unit="img", disable=not progress or not todo)
    seen_now: set[str] = set()
    try:
        for start in range(0, len(todo), batch_size):
            batch_images, sizes, names, batch_keys = [], [], [], []
            for i in todo[start : start + batch_size]:
                record, key = dataset.images[i], keys[i]
                if key in seen_now:  # the same photo twice in one dataset
                    continue
                try:
                    img = decode_image(read_bytes(record.path, record.filename), record.path)
                except DataError as exc:
                    if not skip_bad:
                        raise
                    report.skipped.append((record.filename, str(exc)))
                    keys[i] = None
                    continue
                seen_now.add(key)
                batch_images.append(img)
                sizes.append(original_size(img))
                names.append(record.filename)
                batch_keys.append(key)
            if batch_images:
                grid, objects, boxes = extractor.run(batch_images, sizes, names)
                buffer["keys"] += batch_keys
                buffer["names"] += names
                buffer["grid"].append(grid)
                buffer["objects"].append(objects)
                buffer["boxes"].append(boxes)
                report.extracted += len(batch_images)
                if len(buffer["keys"]) >= chunk_size:
                    flush()
            bar.update(len(todo[start : start + batch_size]))
    finally:
        flush()  # never lose finished work, even when a bad image stops the run
        bar.close()
    report.seconds = time.time() - started

    kept_rows = [i for i, k in enumerate(keys) if k is not None]
    kept = Dataset(dataset.name, dataset.root, [dataset.images[i] for i in kept_rows])
    if not kept_rows:
        raise DataError(f"dataset {dataset.root}: no readable images")
    regions, objects, boxes = cache.load([keys[i] for i in kept_rows])
    side = settings.image_size // extractor.backbone.stride
    features = ImageFeatures(regions, objects, boxes, (side, side), extractor.info)
    report.cache_bytes = cache.size_bytes()
    return features, kept, report


def report_dict(report: ExtractionReport) -> dict:
    out = asdict(report)
    out["seconds_per_image"] = report.seconds_per_image
    return out
