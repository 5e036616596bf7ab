"""Exact all-pairs scoring for cross-attention matchers, in memory-bounded tiles.

The engine walks the [n_images, n_captions] matrix: per-image work is done once per image chunk,
per-caption work once per caption tile, and ``Matcher.score_block`` scores each image x caption
tile as one batched computation. Captions are sorted by length so that a tile's recurrence runs
only as many steps as its longest caption. Per-pair tensors exist for one tile at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from itm.data.types import Captions, ImageFeatures
from itm.models.base import Matcher, State, select_state

FLOAT_BYTES = 4


@dataclass
class TilePlan:
    """How the matrix is cut: images per prepared chunk, captions per tile, images per tile."""

    image_chunk: int
    caption_tile: int
    image_tile: int


@contextmanager
def eval_mode(model: Matcher) -> Iterator[None]:
    """Eval mode inside, and afterwards every submodule's own train/eval flag back as it was (also
    when scoring raises): a caller's mixed modes, e.g. a frozen batch norm, survive scoring."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _per_item_bytes(state: State) -> int:
    return sum(v[0].numel() * FLOAT_BYTES for v in state.values() if v.dim() > 0)


def plan_tiles(model: Matcher, features: ImageFeatures, captions: Captions,
               memory_budget_mb: float = 1024, caption_tile: int = 512) -> TilePlan:
    """Tile sizes that keep prepared states and one tile's per-pair tensors within the budget."""
    budget = int(memory_budget_mb * 2**20)  # fractional megabytes allowed (tiny budgets in tests)
    probe_images = model.prepare_images(features.streams(model.image_streams, slice(0, 1)))
    image_bytes = _per_item_bytes(probe_images)
    image_chunk = max(1, min(len(features), (budget // 2) // max(image_bytes, 1)))
    steps = int(captions.lengths.max())
    pair_bytes = model.pair_bytes(probe_images, steps)
    caption_tile = max(1, min(caption_tile, len(captions)))
    image_tile = max(1, min(image_chunk, (budget // 2) // max(pair_bytes * caption_tile, 1)))
    return TilePlan(image_chunk, caption_tile, image_tile)


@torch.inference_mode()
def score_all_pairs(model: Matcher, features: ImageFeatures, captions: Captions,
                    memory_budget_mb: float = 1024, caption_tile: int = 512,
                    progress: bool = False) -> np.ndarray:
    """Scores of every image x caption pair, (n_images, n_captions) float32, exact."""
    with eval_mode(model):
        plan = plan_tiles(model, features, captions, memory_budget_mb, caption_tile)
        order = torch.argsort(captions.lengths, descending=True, stable=True)  # similar lengths per tile
        ordered = captions.select(order)
        n_img, n_cap = len(features), len(captions)
        scores = torch.empty(n_img, n_cap)
        bar = tqdm(total=n_img * n_cap, desc="scoring pairs", unit="pair", unit_scale=True,
                   disable=not progress, leave=False)
        for i0 in range(0, n_img, plan.image_chunk):
            chunk = slice(i0, min(i0 + plan.image_chunk, n_img))
            images = model.prepare_images(features.streams(model.image_streams, chunk))
            n_chunk = chunk.stop - chunk.start
            for c0 in range(0, n_cap, plan.caption_tile):
                tile = ordered.select(slice(c0, c0 + plan.caption_tile))
                tile = Captions(tile.ids[:, : int(tile.lengths.max())], tile.lengths,
                                None if tile.vectors is None else tile.vectors[:, : int(tile.lengths.max())])
                caption_state = model.prepare_captions(tile)
                for j0 in range(0, n_chunk, plan.image_tile):
                    rows = slice(j0, min(j0 + plan.image_tile, n_chunk))
                    block = model.score_block(select_state(images, rows), caption_state)  # (ni, nc)
                    scores[chunk.start + rows.start : chunk.start + rows.stop, c0 : c0 + len(tile)] = block
                    bar.update(block.numel())
        bar.close()
    result = torch.empty_like(scores)
    result[:, order] = scores  # back to the callers' caption order
    return result.numpy()


@torch.inference_mode()
def score_pairs_naive(model: Matcher, features: ImageFeatures, captions: Captions,
                      pairs: list[tuple[int, int]]) -> np.ndarray:
    """The reference: each (image, caption) pair alone through the model's ordinary forward."""
    with eval_mode(model):
        out = np.empty(len(pairs), dtype=np.float32)
        for n, (i, c) in enumerate(pairs):
            one = captions.select(slice(c, c + 1))
            steps = int(one.lengths[0])
            one = Captions(one.ids[:, :steps], one.lengths, None if one.vectors is None else one.vectors[:, :steps])
            out[n] = model(features.streams(model.image_streams, slice(i, i + 1)), one).score[0].item()
    return out
