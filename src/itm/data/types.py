"""The one internal representation every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class ImageRecord:
    """One image and its captions, as a Karpathy-format file describes it."""

    filename: str  # as written in the dataset file, e.g. "1000268201_693b08cb0e.jpg"
    path: Path | None  # the image on disk; None for precomputed features
    split: str  # train | val | test | restval
    captions: list[str]  # raw caption text
    tokens: list[list[str]]  # one token list per caption (Karpathy tokens when the file has them)


@dataclass
class Dataset:
    """A list of images with their captions; ``split(name)`` selects one split."""

    name: str
    root: Path
    images: list[ImageRecord]
    # precomputed features (SCAN precomp): one row per image, aligned with ``images``
    precomputed: np.ndarray | None = field(default=None, repr=False)

    def split(self, name: str) -> Dataset:
        """Images of one split ("train" also takes Karpathy's "restval")."""
        wanted = {"train", "restval"} if name == "train" else {name}
        rows = [i for i, im in enumerate(self.images) if im.split in wanted]
        pre = self.precomputed[rows] if self.precomputed is not None else None
        return Dataset(self.name, self.root, [self.images[i] for i in rows], pre)

    def head(self, n_images: int) -> Dataset:
        """The first ``n_images`` images (for quick validation and tiny tests)."""
        pre = self.precomputed[:n_images] if self.precomputed is not None else None
        return Dataset(self.name, self.root, self.images[:n_images], pre)

    def caption_tokens(self) -> tuple[list[list[str]], np.ndarray]:
        """All captions flattened, and the image index of each caption (the eval ground truth)."""
        tokens, owner = [], []
        for i, im in enumerate(self.images):
            tokens.extend(im.tokens)
            owner.extend([i] * len(im.tokens))
        return tokens, np.asarray(owner, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Captions:
    """Encoded captions: padded word ids, true lengths, optional precomputed word vectors."""

    ids: torch.Tensor  # (N, L) int64, 0 = <pad>
    lengths: torch.Tensor  # (N,) int64, true lengths after the max_words cut, >= 1
    vectors: torch.Tensor | None = None  # (N, L, E) contextual word vectors (MiniLM), zero-padded

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def select(self, index: torch.Tensor | slice) -> Captions:
        vectors = self.vectors[index] if self.vectors is not None else None
        return Captions(self.ids[index], self.lengths[index], vectors)


IMAGE_STREAMS = ("regions", "objects", "whole")


@dataclass
class ImageFeatures:
    """Frozen image features for a list of images, aligned with a Dataset's ``images``."""

    regions: torch.Tensor  # (N, D, M) the region grid (stream "regions"), float16 or float32
    objects: torch.Tensor  # (N, P, Q) pooled object-proposal features (stream "objects")
    boxes: torch.Tensor | None = None  # (N, P, 4) x1, y1, x2, y2 in the image's pixels
    grid_shape: tuple[int, int] | None = None  # (gh, gw) with gh * gw = D, for heat maps
    settings: dict | None = None  # the extractor settings that produced them

    def __len__(self) -> int:
        return int(self.regions.shape[0])

    def stream(self, name: str, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """One named image stream (of the rows ``index``): "regions" (N, D, M), "objects" (N, P, Q),
        or "whole" (N, M), the whole-image vector. "whole" is the mean of the region grid, which is
        exactly the backbone's global average-pooled feature (at the cache's float16 precision), so
        the cache needs no third array; for SCAN precomp it is the mean of the precomputed regions."""
        rows = slice(None) if index is None else index
        if name == "regions":
            return self.regions[rows]
        if name == "objects":
            return self.objects[rows]
        if name == "whole":
            return self.regions[rows].float().mean(dim=1)  # (N, M)
        raise KeyError(f"unknown image stream '{name}' (known: {', '.join(IMAGE_STREAMS)})")

    def streams(self, names: tuple[str, ...] | list[str],
                index: torch.Tensor | slice | None = None) -> dict[str, torch.Tensor]:
        """The named streams a model reads, for the rows ``index`` (all rows when None)."""
        return {name: self.stream(name, index) for name in names}

    def select(self, index: torch.Tensor | slice | list[int]) -> ImageFeatures:
        boxes = self.boxes[index] if self.boxes is not None else None
        return ImageFeatures(self.regions[index], self.objects[index], boxes, self.grid_shape, self.settings)
