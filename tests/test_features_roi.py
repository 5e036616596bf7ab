"""roi_align and nms against deliberately naive loop references."""

from __future__ import annotations

import math

import pytest
import torch

from itm.features.roi import box_iou, nms, roi_align


def naive_bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate, one point, (C, H, W) -> (C,)."""
    _, h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(fmap.shape[0], dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    f = fmap.double()
    return hy * hx * f[:, y_low, x_low] + hy * lx * f[:, y_low, x_high] + ly * hx * f[:, y_high, x_low] + ly * lx * f[:, y_high, x_high]


def naive_roi_align(features, boxes, output_size, scale, ratio, aligned):
    oh, ow = output_size
    out = torch.zeros(boxes.shape[0], features.shape[1], oh, ow, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / ow, rh / oh
        for py in range(oh):
            for px in range(ow):
                acc = torch.zeros(features.shape[1], dtype=torch.float64)
                for iy in range(ratio):
                    for ix in range(ratio):
                        y = sy + py * bh + (iy + 0.5) * bh / ratio
                        x = sx + px * bw + (ix + 0.5) * bw / ratio
                        acc += naive_bilinear(features[int(b)], y, x)
                out[k, :, py, px] = acc / (ratio * ratio)
    return out


def random_boxes(generator, n, batch, width, height):
    """Boxes of every kind: inside, crossing the border, far outside, tiny, degenerate."""
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([width * 1.4, height * 1.4]) - torch.tensor([width * 0.2, height * 0.2])
    wh = torch.rand(n, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    wh[0] = 0.0  # a zero-size box
    wh[1] = 0.3  # a sub-pixel box
    index = torch.randint(0, batch, (n, 1), generator=generator).float()
    return torch.cat([index, xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size,ratio", [((3, 3), 2), ((2, 4), 1), ((1, 1), 3)])
def test_roi_align_matches_naive_reference(aligned, output_size, ratio):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 6, 7, generator=g)
    boxes = random_boxes(g, 12, 3, width=7 * 16, height=6 * 16)
    got = roi_align(features, boxes, output_size, spatial_scale=1 / 16, sampling_ratio=ratio, aligned=aligned)
    want = naive_roi_align(features, boxes, output_size, 1 / 16, ratio, aligned)
    assert got.shape == (12, 5, *output_size)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_roi_align_whole_map_box_averages_cell_centres():
    """aligned=True: a box over the whole image, 1 bin per cell and 1 sample, reads each cell's value."""
    features = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    boxes = torch.tensor([[0.0, 0.0, 0.0, 4 * 32.0, 3 * 32.0]])
    out = roi_align(features, boxes, (3, 4), spatial_scale=1 / 32, sampling_ratio=1)
    torch.testing.assert_close(out, features)


def test_roi_align_empty_and_bad_ratio():
    features = torch.randn(1, 4, 5, 5)
    assert roi_align(features, torch.zeros(0, 5), 3, 1.0).shape == (0, 4, 3, 3)
    with pytest.raises(ValueError):
        roi_align(features, torch.zeros(1, 5), 3, 1.0, sampling_ratio=0)


def naive_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def naive_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(naive_iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_naive_reference(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=g) * 50], dim=1)
    scores = torch.randint(0, 10, (40,), generator=g).float()  # many ties: order must be stable
    got = nms(boxes, scores, threshold).tolist()
    assert got == naive_nms(boxes.tolist(), scores.tolist(), threshold)


def test_nms_edge_cases():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    same = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert nms(same, torch.tensor([0.1, 0.9, 0.5]), 0.5).tolist() == [1]


def test_box_iou_against_naive():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(6, 2, generator=g) * 10
    a = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 10], dim=1)
    got = box_iou(a, a[:4])
    for i in range(6):
        for j in range(4):
            assert math.isclose(got[i, j].item(), naive_iou(a[i].tolist(), a[j].tolist()), abs_tol=1e-6)
