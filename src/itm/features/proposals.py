"""Class-agnostic object proposals: P boxes per image (the "objects" image stream).

Every method returns exactly P boxes [x1, y1, x2, y2] in the original image's pixels, best first,
inside the image. ``PROPOSALS`` maps a name to a builder ``(settings, arg) -> ProposalMethod``;
``FeatureConfig.proposals`` is ``NAME`` or ``NAME:ARG`` (``external:boxes.json``).

- ``activation`` (default): boxes around the blobs of the backbone's own activation map (the map
  is computed anyway for the region grid, so this costs ~1 ms per image).
- ``grid``: fixed multi-scale windows (whole image, halves, quadrants, centre, 3x3 cells, ...).
- ``external:FILE``: boxes from a detector run elsewhere (Faster R-CNN, bottom-up attention), a
  JSON ``{filename: [[x1, y1, x2, y2(, score)], ...]}`` in original-image pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg, ndimage

from itm.config import FeatureConfig
from itm.errors import ConfigError, DataError
from itm.features.roi import box_iou, nms
from itm.registry import Registry


@dataclass
class ProposalInput:
    """What a method may look at for one image."""

    fmap: torch.Tensor  # (C, h, w) backbone activations of the image resized to S x S
    size: tuple[int, int]  # (W, H) of the original image: boxes come back in these pixels
    filename: str = ""  # the dataset's filename (external boxes are looked up by it)


class ProposalMethod:
    """Base class: ``propose(item, num) -> (num, 4)`` float32 boxes, best first."""

    tag: str = ""  # identifies the method and its parameters in the cache name

    def propose(self, item: ProposalInput, num: int) -> torch.Tensor:
        raise NotImplementedError


PROPOSALS: Registry[Callable[[FeatureConfig, str | None], ProposalMethod]] = Registry("proposal method")


def build_proposals(settings: FeatureConfig) -> ProposalMethod:
    """The method named by ``settings.proposals`` (``NAME`` or ``NAME:ARG``)."""
    name, _, arg = settings.proposals.partition(":")
    return PROPOSALS.get(name)(settings, arg or None)


# ---------------------------------------------------------------- shared helpers


def grid_windows(width: int, height: int, count: int) -> torch.Tensor:
    """(count, 4) fixed windows, large first: whole, halves, quadrants, centre, then n x n cells."""
    rel = [(0, 0, 1, 1), (0, 0, 0.5, 1), (0.5, 0, 1, 1), (0, 0, 1, 0.5), (0, 0.5, 1, 1)]
    rel += [(i / 2, j / 2, (i + 1) / 2, (j + 1) / 2) for j in range(2) for i in range(2)]
    rel += [(0.25, 0.25, 0.75, 0.75)]
    n = 3
    while len(rel) < count:
        rel += [(i / n, j / n, (i + 1) / n, (j + 1) / n) for j in range(n) for i in range(n)]
        n += 1
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.tensor(rel[:count], dtype=torch.float32) * scale  # (count, 4)


def clip_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Clip (K, 4) boxes to the image and give each at least one pixel of width and height."""
    x1 = boxes[:, 0].clamp(0, width - 1)
    y1 = boxes[:, 1].clamp(0, height - 1)
    x2 = torch.maximum(boxes[:, 2].clamp(max=width), x1 + 1)
    y2 = torch.maximum(boxes[:, 3].clamp(max=height), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=1)


def fill_to(boxes: torch.Tensor, num: int, width: int, height: int, iou_threshold: float = 0.7) -> torch.Tensor:
    """Exactly ``num`` boxes: the first ``num`` given, padded with whole-image / large windows.

    Padding windows that overlap a kept box more than ``iou_threshold`` are used last, so a short
    list grows with new views before it repeats one.
    """
    boxes = boxes[:num]
    if boxes.shape[0] == num:
        return boxes
    windows = grid_windows(width, height, num)  # (num, 4)
    if boxes.shape[0]:
        fresh = box_iou(windows, boxes).max(dim=1).values <= iou_threshold  # (num,)
        windows = torch.cat([windows[fresh], windows[~fresh]])
    return torch.cat([boxes, windows])[:num]


# ---------------------------------------------------------------- activation


def _upsample_matrix(n: int, factor: int) -> np.ndarray:
    """(n * factor, n) bilinear interpolation weights (half-pixel centres, edges clamped)."""
    src = (np.arange(n * factor) + 0.5) / factor - 0.5  # source coordinate of each output cell
    src = np.clip(src, 0, n - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    frac = src - low
    out = np.zeros((n * factor, n))
    np.add.at(out, (np.arange(n * factor), low), 1.0 - frac)
    np.add.at(out, (np.arange(n * factor), high), frac)
    return out


@dataclass
class ActivationProposals(ProposalMethod):
    """Blobs of the activation map: energy + PCA maps, multi-level thresholds, components, NMS.

    1. ``maps``: the channel-mean energy of relu(fmap) and the positive and negative parts of its
       top ``components`` principal components over locations (different objects load on different
       components), each upsampled ``upsample`` x and scaled to 0..1.
    2. Each map is cut at each of ``levels``; every 8-connected component gives its bounding box.
    3. A box is scored by the energy it captures beyond a uniform spread: mass_in / mass - area_in /
       area (0 for the whole image, high for a tight box around a strong blob).
    4. Boxes grow by ``expand`` on every side (the thresholded blobs sit inside the object: crops
       that cut it measured worse, see docs/features.md), then NMS at ``iou`` keeps distinct boxes;
       the top P are kept, padded with large windows if there are fewer.
    """

    components: int = 3
    levels: tuple[float, ...] = (0.2, 0.4, 0.6)
    upsample: int = 4
    iou: float = 0.5
    min_area: float = 0.01  # of the image: smaller blobs are noise at this map resolution
    expand: float = 0.1  # grow each box by this fraction of its width / height on every side

    @property
    def tag(self) -> str:  # type: ignore[override]
        levels = "-".join(f"{v:g}" for v in self.levels)
        return (f"activation-c{self.components}-l{levels}-u{self.upsample}-i{self.iou:g}"
                f"-a{self.min_area:g}-e{self.expand:g}")

    def maps(self, fmap: torch.Tensor) -> np.ndarray:
        """(C, h, w) -> (M, H', W') maps in 0..1 at ``upsample`` x the map resolution; row 0 = energy.

        Plain numpy: these are tiny arrays, where torch's per-op overhead would dominate.
        """
        act = np.maximum(fmap.detach().float().cpu().numpy(), 0.0)  # (C, h, w)
        c, h, w = act.shape
        flat = act.reshape(c, h * w).T.astype(np.float64)  # (hw, C) one vector per location
        energy = flat.mean(axis=1)  # (hw,)
        maps = [energy]
        if self.components and h * w > 1:
            centred = flat - flat.mean(axis=0, keepdims=True)
            # PCA over locations via the small (hw, hw) Gram matrix: u * s of the SVD, cheaply
            # (scipy's subset driver: numpy's full eigh stalls on thread contention here)
            k = min(self.components, h * w - 1)
            values, vectors = linalg.eigh(centred @ centred.T, subset_by_index=[h * w - k, h * w - 1])
            for i in range(1, k + 1):  # ascending order: the last is the first component
                comp = vectors[:, -i] * np.sqrt(max(values[-i], 0.0))  # (hw,)
                if comp @ energy < 0:  # eigenvectors have no sign: tie it to the energy map
                    comp = -comp
                maps += [np.maximum(comp, 0.0), np.maximum(-comp, 0.0)]
        stack = np.stack(maps).reshape(-1, h, w)  # (M, h, w)
        rows, cols = _upsample_matrix(h, self.upsample), _upsample_matrix(w, self.upsample)
        big = np.einsum("yh,mhw,xw->myx", rows, stack, cols)  # (M, H', W')
        lo = big.min(axis=(1, 2), keepdims=True)
        hi = big.max(axis=(1, 2), keepdims=True)
        return ((big - lo) / np.maximum(hi - lo, 1e-6)).astype(np.float32)

    def candidates(self, maps: np.ndarray) -> np.ndarray:
        """(K, 4) boxes in upsampled map cells [x1, y1, x2, y2) from every map and level."""
        found = []
        eight = np.ones((3, 3), dtype=bool)
        for grid in maps:
            for level in self.levels:
                labels, n = ndimage.label(grid >= level, structure=eight)
                for sl in ndimage.find_objects(labels)[:n]:
                    found.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
        return np.asarray(found, dtype=np.float32).reshape(-1, 4)

    def scores(self, boxes: np.ndarray, energy: np.ndarray) -> np.ndarray:
        """Excess mass of each box on the energy map: share of energy inside minus share of area."""
        ih, iw = energy.shape
        integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # (H'+1, W'+1)
        x1, y1, x2, y2 = (boxes[:, i].astype(np.int64) for i in range(4))
        inside = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
        area = (x2 - x1) * (y2 - y1) / float(ih * iw)
        return inside / max(float(integral[-1, -1]), 1e-6) - area

    def propose(self, item: ProposalInput, num: int) -> torch.Tensor:
        width, height = item.size
        maps = self.maps(item.fmap)  # (M, H', W')
        mh, mw = maps.shape[1:]
        cells = self.candidates(maps)  # (K, 4)
        keep_area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1]) >= self.min_area * mh * mw
        cells = cells[keep_area]
        if len(cells) == 0:
            return fill_to(torch.zeros(0, 4), num, width, height)
        scores = torch.from_numpy(self.scores(cells, maps[0]))  # (K,)
        scale = torch.tensor([width / mw, height / mh, width / mw, height / mh])
        boxes = torch.from_numpy(cells) * scale  # (K, 4) in original pixels
        if self.expand:
            grow = torch.cat([boxes[:, 2:] - boxes[:, :2]] * 2, dim=1) * self.expand  # (K, 4)
            boxes = boxes + grow * torch.tensor([-1.0, -1.0, 1.0, 1.0])
        kept = nms(boxes, scores, self.iou)
        return fill_to(clip_boxes(boxes[kept], width, height), num, width, height)


@PROPOSALS.register("activation", help="blobs of the backbone activation map (energy + PCA), NMS, top P")
def _activation(settings: FeatureConfig, arg: str | None) -> ProposalMethod:
    return ActivationProposals()


# ---------------------------------------------------------------- grid


class GridProposals(ProposalMethod):
    """Fixed multi-scale windows, the same for every image (the baseline)."""

    tag = "grid-v1"

    def propose(self, item: ProposalInput, num: int) -> torch.Tensor:
        width, height = item.size
        return grid_windows(width, height, num)


@PROPOSALS.register("grid", help="fixed windows: whole image, halves, quadrants, centre, 3x3 cells ...")
def _grid(settings: FeatureConfig, arg: str | None) -> ProposalMethod:
    return GridProposals()


# ---------------------------------------------------------------- external


class ExternalBoxes(ProposalMethod):
    """User-supplied boxes: JSON ``{filename: [[x1, y1, x2, y2(, score)], ...]}`` in image pixels.

    Boxes are taken in file order (or by descending score when a 5th number is given), clipped to
    the image, and padded with large windows when an image has fewer than P.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read boxes file ({exc.strerror})") from None
        try:
            table = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.path}: not a valid JSON boxes file ({exc})") from None
        if not isinstance(table, dict):
            raise DataError(f"{self.path}: expected {{filename: [[x1, y1, x2, y2], ...]}}, got {type(table).__name__}")
        self.table = table
        # the content, not the path, decides whether cached object features are still valid
        self.tag = f"external-{hashlib.sha1(raw).hexdigest()[:12]}"

    def boxes_for(self, filename: str) -> torch.Tensor:
        """(K, 4) boxes of one image, best first; DataError when absent or malformed."""
        entry = self.table.get(filename, self.table.get(Path(filename).name))
        if entry is None:
            raise DataError(f"{self.path}: no boxes for image '{filename}'")
        if isinstance(entry, list) and not entry:
            return torch.zeros(0, 4)
        try:
            rows = np.asarray(entry, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{self.path}: boxes of '{filename}' are not lists of numbers") from None
        if rows.ndim != 2 or rows.shape[1] not in (4, 5) or not np.isfinite(rows).all():
            raise DataError(f"{self.path}: boxes of '{filename}' must be [x1, y1, x2, y2] or [x1, y1, x2, y2, score]")
        if rows.shape[1] == 5:
            rows = rows[np.argsort(-rows[:, 4], kind="stable")]
        return torch.from_numpy(rows[:, :4].astype(np.float32))  # (K, 4)

    def propose(self, item: ProposalInput, num: int) -> torch.Tensor:
        width, height = item.size
        boxes = self.boxes_for(item.filename)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # drop degenerate boxes
        return fill_to(clip_boxes(boxes[keep], width, height), num, width, height)


@PROPOSALS.register("external", help="user boxes from a JSON file: external:PATH ({filename: [[x1,y1,x2,y2],...]})")
def _external(settings: FeatureConfig, arg: str | None) -> ProposalMethod:
    if not arg:
        raise ConfigError("proposals 'external' needs a boxes file: external:PATH/boxes.json")
    return ExternalBoxes(arg)
