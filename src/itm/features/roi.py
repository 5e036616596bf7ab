"""RoIAlign and NMS in plain torch (no torchvision).

``roi_align`` follows torchvision's ``roi_align`` semantics with ``aligned=True`` by default: a box
edge at pixel coordinate x maps to the continuous feature coordinate ``x * spatial_scale - 0.5``,
i.e. feature cell i covers input pixels [i / scale, (i + 1) / scale) and its centre is sampled at
(i + 0.5) / scale. Each output bin averages ``sampling_ratio`` x ``sampling_ratio`` bilinear samples
taken at the centres of an even sub-grid; samples further than one cell outside the map count as 0.

Bilinear sampling is separable and so is the in/out-of-map rule, so each output bin is a fixed
weighted sum of map cells: (oh, H) row weights x (ow, W) column weights give a (oh*ow, H*W) matrix
per box, applied to its image's (H*W, C) map with one matmul per image.
"""

from __future__ import annotations

import numpy as np
import torch


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _axis_weights(start: torch.Tensor, length: torch.Tensor, bins: int, ratio: int, size: int) -> torch.Tensor:
    """(K, bins, size): weight of each map row (or column) in each output bin along one axis."""
    k = start.shape[0]
    step = (length / (bins * ratio))[:, None]  # (K, 1) distance between samples
    offsets = torch.arange(bins * ratio, dtype=start.dtype, device=start.device) + 0.5  # (bins * ratio,)
    coord = start[:, None] + offsets[None, :] * step  # (K, bins * ratio) sample positions
    valid = ((coord >= -1.0) & (coord <= size)).to(start.dtype)  # torchvision: beyond one cell -> 0
    coord = coord.clamp(min=0.0)
    low = coord.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))  # (K, bins * ratio)
    weights = torch.zeros(k, bins * ratio, size, dtype=start.dtype, device=start.device)
    weights.scatter_add_(2, low[..., None], ((1.0 - frac) * valid)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * valid)[..., None])
    return weights.view(k, bins, ratio, size).mean(dim=2)  # (K, bins, size)


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool (B, C, H, W) features over (K, 5) boxes [batch_index, x1, y1, x2, y2] -> (K, C, oh, ow).

    Boxes are in input-image pixels; ``spatial_scale`` = feature cells per pixel (1 / stride).
    ``sampling_ratio`` must be >= 1 (torchvision's adaptive 0 is not supported).
    """
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    oh, ow = _pair(output_size)
    _, c, h, w = features.shape
    if boxes.shape[0] == 0:
        return features.new_zeros((0, c, oh, ow))
    feats = features.float()
    b = boxes.to(feats.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = b[:, 1] * spatial_scale - offset  # (K,)
    y1 = b[:, 2] * spatial_scale - offset
    roi_w = b[:, 3] * spatial_scale - offset - x1
    roi_h = b[:, 4] * spatial_scale - offset - y1
    if not aligned:  # legacy behaviour: boxes are at least one cell wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    rows = _axis_weights(y1, roi_h, oh, sampling_ratio, h)  # (K, oh, H)
    cols = _axis_weights(x1, roi_w, ow, sampling_ratio, w)  # (K, ow, W)
    k = boxes.shape[0]
    weights = (rows[:, :, None, :, None] * cols[:, None, :, None, :]).reshape(k, oh * ow, h * w)  # (K, oh*ow, HW)
    flat = feats.reshape(feats.shape[0], c, h * w)  # (B, C, HW)
    batch = b[:, 0].long()
    out = feats.new_empty(k, oh * ow, c)
    # one small matmul per image rather than a (K, C, H, W) copy of the map for every box
    for image in batch.unique().tolist():
        sel = (batch == image).nonzero()[:, 0]
        out[sel] = torch.matmul(weights[sel], flat[image].T)  # (k_i, oh*ow, C)
    out = out.permute(0, 2, 1).reshape(k, c, oh, ow)  # (K, C, oh, ow)
    return out.to(features.dtype)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) boxes [x1, y1, x2, y2] -> (N, M) intersection over union (0 for empty boxes)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)  # (N,)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # (M,)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box is > ``iou_threshold``;
    ties in score keep the earlier index first.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)  # (K,)
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()  # (K, K)
    removed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):  # K is small (tens to hundreds of candidate boxes)
        if removed[i]:
            continue
        kept.append(i)
        removed |= over[i]
    return order[torch.as_tensor(kept, dtype=torch.long)]
