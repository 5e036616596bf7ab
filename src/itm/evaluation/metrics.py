"""Retrieval metrics (R@K, median and mean rank) for image-text matching, in numpy.

Rank convention (SCAN / VSE++): the 0-based rank of a ground truth is the number of candidates
scoring *strictly* higher than it, so ties are resolved in the ground truth's favour (optimistic).
Image-to-text takes, for each image, the best rank among its ground-truth captions; text-to-image
takes the rank of the caption's one image.

- R@K (percent, 0-100): share of queries whose 0-based rank is < K.
- medr: floor(median of the 0-based ranks) + 1, as SCAN computes it.
- meanr: mean of the 0-based ranks + 1.
- rsum: the six recalls summed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from itm.errors import ItmError

KS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")
# elements per row chunk: bounds the temporary boolean arrays to a few MB whatever the matrix size
CHUNK_ELEMENTS = 1 << 22


class EvaluationError(ItmError, ValueError):
    """Scores or ground truth that cannot be evaluated (shape mismatch, NaN, captionless image)."""


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or torch tensor (copies only when the dtype needs it)."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # no numpy equivalent
            array = array.float()
        return array.numpy()
    return np.asarray(array)


def _check_inputs(scores: Any, caption_to_image: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = as_numpy(scores)
    owner = as_numpy(caption_to_image)
    if scores.ndim != 2 or 0 in scores.shape:
        raise EvaluationError(
            f"scores must be a non-empty 2-D [n_images, n_captions] array, got shape {scores.shape}"
        )
    if scores.dtype.kind not in "fiu":
        raise EvaluationError(f"scores must be numeric, got dtype {scores.dtype}")
    if owner.ndim != 1 or owner.shape[0] != scores.shape[1]:
        raise EvaluationError(
            f"caption_to_image must have one entry per caption column ({scores.shape[1]}), got shape {owner.shape}"
        )
    if owner.dtype.kind not in "iu":
        raise EvaluationError(f"caption_to_image must hold integer image indices, got dtype {owner.dtype}")
    n_images = scores.shape[0]
    if owner.min() < 0 or owner.max() >= n_images:
        raise EvaluationError(f"caption_to_image has image indices outside [0, {n_images})")
    counts = np.bincount(owner, minlength=n_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise EvaluationError(f"{missing.size} image(s) have no caption, e.g. image {int(missing[0])}")
    return scores, owner.astype(np.intp, copy=False)


def _best_gt_scores(gt: np.ndarray, owner: np.ndarray, n_images: int) -> np.ndarray:
    """Per image, the highest score among its ground-truth captions (in the scores' own dtype)."""
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(n_images))
    return np.maximum.reduceat(gt[order], starts)


def ranks(scores: Any, caption_to_image: Any) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks: (per image for image-to-text, per caption for text-to-image).

    One pass over row chunks of ``scores``: no full-size temporary is ever built.
    """
    scores, owner = _check_inputs(scores, caption_to_image)
    n_images, n_captions = scores.shape
    gt = scores[owner, np.arange(n_captions)]  # each caption's score with its own image
    best = _best_gt_scores(gt, owner, n_images)
    i2t = np.empty(n_images, dtype=np.int64)
    t2i = np.zeros(n_captions, dtype=np.int64)
    check_nan = scores.dtype.kind == "f"
    step = max(1, CHUNK_ELEMENTS // n_captions)
    for start in range(0, n_images, step):
        block = scores[start : start + step]
        if check_nan and np.isnan(block).any():
            row = start + int(np.flatnonzero(np.isnan(block).any(axis=1))[0])
            raise EvaluationError(f"scores contain NaN (first in image row {row})")
        i2t[start : start + step] = (block > best[start : start + step, None]).sum(axis=1)
        t2i += (block > gt).sum(axis=0)
    return i2t, t2i


def summarize_ranks(ranks0: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent), medr and meanr of one direction's 0-based ranks."""
    ranks0 = np.asarray(ranks0)
    out = {f"r{k}": float(100.0 * np.count_nonzero(ranks0 < k) / ranks0.size) for k in KS}
    out["medr"] = float(math.floor(np.median(ranks0)) + 1)
    out["meanr"] = float(ranks0.mean() + 1)
    return out


def _with_rsum(i2t: dict[str, float], t2i: dict[str, float]) -> dict[str, Any]:
    rsum = sum(part[f"r{k}"] for part in (i2t, t2i) for k in KS)
    return {"i2t": i2t, "t2i": t2i, "rsum": float(rsum)}


def retrieval_metrics(scores: Any, caption_to_image: Any) -> dict[str, Any]:
    """Image-to-text and text-to-image R@1/5/10, medr, meanr and rsum of a score matrix.

    ``scores``: [n_images, n_captions], higher is better (numpy or torch). ``caption_to_image``:
    (n_captions,) the image index of each caption; an image may own any number (>= 1) of captions.
    Ties count in the ground truth's favour (see the module docstring).
    """
    i2t, t2i = ranks(scores, caption_to_image)
    return _with_rsum(summarize_ranks(i2t), summarize_ranks(t2i))


def _chance_direction(n_candidates: int, n_positives: int) -> dict[str, float]:
    """Expected metrics when ``n_positives`` of ``n_candidates`` are relevant and order is random.

    The 0-based rank is the number of negatives before the first positive in a uniform random
    permutation: P(rank >= r) = prod_{t<r} (N - c - t) / (N - t), and E[rank] = (N - c) / (c + 1).
    """
    n, c = n_candidates, n_positives
    t = np.arange(n - c, dtype=np.float64)
    survival = np.concatenate([[1.0], np.cumprod((n - c - t) / (n - t))])  # P(rank >= r), r = 0..N-c
    cdf = 1.0 - survival[1:]  # P(rank <= r)
    out = {f"r{k}": float(100.0 * (1.0 - survival[k])) if k < survival.size else 100.0 for k in KS}
    # medr = floor(median) + 1 where the median is the smallest r with P(rank <= r) >= 1/2; when the
    # CDF hits exactly 1/2 the midpoint convention gives r + 0.5, whose floor is the same r
    median = int(np.argmax(cdf >= 0.5 - 1e-12))
    out["medr"] = float(median + 1)
    out["meanr"] = float((n - c) / (c + 1) + 1)
    return out


def chance_metrics(n_images: int, captions_per_image: int) -> dict[str, Any]:
    """Expected metrics of random (tie-free) scores, by exact formula.

    Image-to-text: an image's ``c`` captions are among ``n * c`` candidates, and R@K is
    P(best of c ranks < K) = 1 - C(nc - c, K) / C(nc, K). Text-to-image: one image among ``n``, so
    R@K = min(K, n) / n. medr is floor(population median) + 1; meanr is the expected rank + 1.
    """
    if n_images < 1 or captions_per_image < 1:
        raise EvaluationError(
            f"chance_metrics needs n_images >= 1 and captions_per_image >= 1, got {n_images}, {captions_per_image}"
        )
    i2t = _chance_direction(n_images * captions_per_image, captions_per_image)
    t2i = _chance_direction(n_images, 1)
    return _with_rsum(i2t, t2i)


def format_table(metrics: dict[str, Any], title: str | None = None) -> str:
    """A fixed-width text table: rows i2t / t2i, columns R@1 R@5 R@10 medr meanr, then rsum."""
    columns = [("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"), ("medr", "medr"), ("meanr", "meanr")]
    lines = [title] if title else []
    lines.append(f"{'':<5}" + "".join(f"{head:>8}" for head, _ in columns))
    for direction in DIRECTIONS:
        row = metrics[direction]
        lines.append(f"{direction:<5}" + "".join(f"{row[key]:>8.1f}" for _, key in columns))
    lines.append(f"{'rsum':<5}{metrics['rsum']:>8.1f}")
    return "\n".join(lines)
