"""Evaluation protocols: which image/caption blocks are ranked together, and how results combine.

A protocol knows nothing about models. It splits the test images into folds; the caller supplies
``score_block(image_idx, caption_idx) -> [len(image_idx), len(caption_idx)]`` (e.g. the all-pairs
engine), so a folded protocol only ever scores its diagonal blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from itm.evaluation.metrics import KS, EvaluationError, as_numpy, retrieval_metrics
from itm.registry import Registry

ScoreBlock = Callable[[np.ndarray, np.ndarray], Any]


@dataclass(frozen=True)
class Protocol:
    """Rank all test images at once (``fold_size=None``) or in folds of consecutive images."""

    name: str
    fold_size: int | None = None
    help: str = ""

    def folds(self, n_images: int) -> list[np.ndarray]:
        """The image indices of each fold, in order."""
        if n_images < 1:
            raise EvaluationError(f"protocol '{self.name}' needs at least one image, got {n_images}")
        if self.fold_size is None:
            return [np.arange(n_images)]
        if n_images % self.fold_size:
            raise EvaluationError(
                f"protocol '{self.name}' splits the test set into folds of {self.fold_size} consecutive "
                f"images, but {n_images} images is not a multiple of {self.fold_size}"
            )
        return [np.arange(s, s + self.fold_size) for s in range(0, n_images, self.fold_size)]

    def evaluate(self, score_block: ScoreBlock, caption_to_image: Any, n_images: int | None = None) -> dict:
        """Metrics per fold, averaged over folds (as SCAN / VSE++ report COCO 1K)."""
        owner = np.asarray(as_numpy(caption_to_image)).astype(np.intp, copy=False)
        if owner.ndim != 1 or owner.size == 0:
            raise EvaluationError(f"caption_to_image must be a non-empty 1-D array, got shape {owner.shape}")
        n_images = int(owner.max()) + 1 if n_images is None else n_images
        if owner.min() < 0 or owner.max() >= n_images:
            raise EvaluationError(f"caption_to_image has image indices outside [0, {n_images})")
        per_fold = [_evaluate_fold(score_block, owner, images, n_images) for images in self.folds(n_images)]
        result = average_metrics(per_fold)
        result.update(
            n_images=n_images, n_captions=int(owner.size), folds=len(per_fold), fold_metrics=per_fold
        )
        return result


def _evaluate_fold(score_block: ScoreBlock, owner: np.ndarray, images: np.ndarray, n_images: int) -> dict:
    """Score one fold's images against their own captions and rank within the block."""
    position = np.full(n_images, -1, dtype=np.intp)  # global image index -> row in this fold
    position[images] = np.arange(images.size)
    captions = np.flatnonzero(position[owner] >= 0)
    block = as_numpy(score_block(images, captions))
    if block.shape != (images.size, captions.size):
        raise EvaluationError(
            f"score_block returned shape {block.shape}, expected ({images.size}, {captions.size})"
        )
    return retrieval_metrics(block, position[owner[captions]])


def average_metrics(per_fold: list[dict]) -> dict[str, Any]:
    """The mean of each metric over folds (medr too, as SCAN averages it)."""
    out: dict[str, Any] = {}
    for direction in ("i2t", "t2i"):
        keys = [f"r{k}" for k in KS] + ["medr", "meanr"]
        out[direction] = {key: float(np.mean([m[direction][key] for m in per_fold])) for key in keys}
    out["rsum"] = float(np.mean([m["rsum"] for m in per_fold]))
    return out


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")


def _register(protocol: Protocol) -> None:
    PROTOCOLS.add(protocol.name, protocol, protocol.help)


_register(Protocol("flickr", None, "all test images at once (Flickr8k/30k: 1K images, 5K captions)"))
_register(Protocol("coco5k", None, "all 5,000 COCO test images at once (25K captions)"))
_register(Protocol("coco1k", 1000, "COCO 5K test set in five folds of 1,000 consecutive images, averaged"))


def evaluate_protocol(
    name: str, score_block: ScoreBlock, caption_to_image: Any, n_images: int | None = None
) -> dict[str, Any]:
    """Run a registered protocol: retrieval_metrics keys plus n_images, n_captions, folds, fold_metrics.

    ``n_images`` defaults to ``max(caption_to_image) + 1`` (every image owns at least one caption).
    """
    return PROTOCOLS.get(name).evaluate(score_block, caption_to_image, n_images)
