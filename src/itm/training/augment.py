"""Training-time augmentation of frozen features and captions.

With frozen image features every epoch shows the model the same 6,000 region grids, and our runs
fit their training pairs long before validation stops rising. Dropping a random subset of each
image's regions and of each caption's words per step (the feature-level augmentation of VSE
infinity, Chen et al. 2021) makes each step see a slightly different pair. Both draw from the
loop's generator, so a resumed run replays the same draws. Evaluation never calls these.
"""

from __future__ import annotations

import torch

from itm.data.types import Captions


def drop_regions(regions: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Keep a random ``1 - fraction`` of each image's regions (at least one), in grid order.

    (B, D, M) -> (B, D', M) with D' = max(1, round(D * (1 - fraction))); every image loses the same
    number, so the batch stays one dense tensor and attention needs no region mask.
    """
    if fraction <= 0:
        return regions
    b, d, m = regions.shape
    keep = max(1, round(d * (1 - fraction)))
    chosen = torch.rand(b, d, generator=gen).argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, D')
    return regions.gather(1, chosen[:, :, None].expand(-1, -1, m))  # (B, D', M)


def drop_words(captions: Captions, fraction: float, gen: torch.Generator) -> Captions:
    """Delete each real word with probability ``fraction`` (every caption keeps at least one);
    the survivors move left in their order, lengths shrink and the padding is trimmed."""
    if fraction <= 0:
        return captions
    n, steps = captions.ids.shape
    real = torch.arange(steps)[None, :] < captions.lengths[:, None]  # (N, L)
    keep = real & (torch.rand(n, steps, generator=gen) >= fraction)  # (N, L)
    keep[~keep.any(dim=1), 0] = True  # a caption that lost every word keeps its first
    lengths = keep.sum(dim=1)  # (N,)
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)  # kept positions first, in order
    longest = int(lengths.max())
    order = order[:, :longest]  # (N, L')
    valid = torch.arange(longest)[None, :] < lengths[:, None]  # (N, L')
    ids = captions.ids.gather(1, order) * valid  # (N, L'), 0 = <pad>
    vectors = None
    if captions.vectors is not None:
        e = captions.vectors.shape[2]
        vectors = captions.vectors.gather(1, order[:, :, None].expand(-1, -1, e)) * valid[:, :, None]
    return Captions(ids, lengths, vectors)
