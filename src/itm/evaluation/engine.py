"""Exact all-pairs scoring for cross-attention matchers, in memory-bounded tiles.

The engine walks the [n_images, n_captions] matrix: per-image work is done once per image chunk,
per-caption work once per caption tile, and ``Matcher.score_block`` scores each image x caption
tile as one batched computation. Captions are sorted by length so that a tile's recurrence runs
only as many steps as its longest caption. Per-pair tensors exist for one tile at a time.

Everything runs on the model's device; ``precision="bf16"`` scores under bf16 autocast and the
matrix is float32 either way. On the CPU, torch's N threads become N scoring workers of one thread
each, taking a chunk's caption tiles in turn: the blocks are the same operations on the same shapes
whichever worker runs them, so the matrix is the one thread's bit for bit (threads inside each small
operation were slower on two cores: docs/results/speed.md, "Fifth round").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from itm.data.types import Captions, ImageFeatures
from itm.devices import model_device, on_device, precision_context
from itm.models.base import TOTAL, Matcher, State, select_state

FLOAT_BYTES = 4
# A tile's per-pair temporaries are sized to stay near the core's cache (4 MiB of L2 here, the rest in L3)
# rather than to fill the memory budget: on the project's CPU, tiles of ~64 captions x a few images
# scored BSSAN, CAAN and MLASM 1.8-3x faster than tiles of 512 captions x the budget's images
# (docs/results/speed.md, "Tiles"). The budget still caps both.
CACHE_TILE_BYTES = 24 * 2**20
CACHE_CAPTION_TILE = 64


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
               memory_budget_mb: float = 1024, caption_tile: int = 512, max_image_chunk: int = 128) -> TilePlan:
    """Tile sizes that keep prepared states within the budget and one tile's per-pair tensors near the
    cache on the CPU (``CACHE_TILE_BYTES``; ``caption_tile`` captions at most, ``CACHE_CAPTION_TILE``
    for a model whose pairs need more than a few floats; on a GPU, within the budget). Image chunks
    hold at most ``max_image_chunk`` images: they are the unit processes share under torchrun, so one
    process and several compute every chunk with the same shapes (exact results)."""
    budget = int(memory_budget_mb * 2**20)  # fractional megabytes allowed (tiny budgets in tests)
    device = model_device(model)
    probe = features.streams(model.image_streams, slice(0, 1))
    probe_images = model.prepare_images({k: v.to(device) for k, v in probe.items()})
    image_bytes = _per_item_bytes(probe_images)
    image_chunk = max(1, min(len(features), max_image_chunk, (budget // 2) // max(image_bytes, 1)))
    steps = int(captions.lengths.max())
    pair_bytes = model.pair_bytes(probe_images, steps)
    on_cpu = device.type == "cpu"  # a GPU wants large tiles: the cache sizes are the CPU's
    if on_cpu and pair_bytes * CACHE_CAPTION_TILE * image_chunk > CACHE_TILE_BYTES:  # a chunk's pairs overflow it
        caption_tile = min(caption_tile, CACHE_CAPTION_TILE)
    caption_tile = max(1, min(caption_tile, len(captions)))
    tile_bytes = min(budget // 2, CACHE_TILE_BYTES) if on_cpu else budget // 2
    image_tile = max(1, min(image_chunk, tile_bytes // max(pair_bytes * caption_tile, 1)))
    return TilePlan(image_chunk, caption_tile, image_tile)


def score_all_pairs(model: Matcher, features: ImageFeatures, captions: Captions,
                    memory_budget_mb: float = 1024, caption_tile: int = 512,
                    progress: bool = False, max_image_chunk: int = 128, precision: str = "fp32") -> np.ndarray:
    """Scores of every image x caption pair, (n_images, n_captions) float32, exact at fp32. Inputs may
    live on the CPU whatever the model's device; the matrix comes back on the CPU. Under torchrun each
    process scores a contiguous share of the image chunks and every process gets the whole matrix,
    equal to one process's bit for bit. ``precision``: fp32 | bf16 (autocast; see docs/distributed.md
    for the measured difference)."""
    return _score(model, features, captions, False, memory_budget_mb, caption_tile, progress, max_image_chunk,
                  precision)[TOTAL]


def score_all_parts(model: Matcher, features: ImageFeatures, captions: Captions,
                    memory_budget_mb: float = 1024, caption_tile: int = 512,
                    progress: bool = False, max_image_chunk: int = 128, precision: str = "fp32") -> dict[str, np.ndarray]:
    """``score_all_pairs`` with the score's parts: {"score": the matrix, <part>: its matrix, ...} for
    the parts the model reports (a BSSAN's branches, MLASM's local and global), in one pass."""
    return _score(model, features, captions, True, memory_budget_mb, caption_tile, progress, max_image_chunk,
                  precision)


@torch.inference_mode()
def _score(model: Matcher, features: ImageFeatures, captions: Captions, parts: bool, memory_budget_mb: float,
           caption_tile: int, progress: bool, max_image_chunk: int, precision: str) -> dict[str, np.ndarray]:
    from itm.distributed import gather_rows, shard, world_size

    n_img, n_cap = len(features), len(captions)
    if n_img == 0 or n_cap == 0:
        return {TOTAL: np.zeros((n_img, n_cap), dtype=np.float32)}
    device = model_device(model)
    with eval_mode(model), precision_context(device, precision), one_thread_per_worker(device) as workers:
        plan = plan_tiles(model, features, captions, memory_budget_mb, caption_tile, max_image_chunk)
        starts = list(range(0, n_img, plan.image_chunk))
        mine = starts[shard(len(starts))]  # all of them in one process
        rows = score_chunks(model, features, captions, plan, mine, progress, parts, workers,
                            precision)  # name -> (my rows, n_cap)
    if world_size() > 1:
        return {name: gather_rows(torch.from_numpy(block)).numpy() for name, block in rows.items()}
    return rows


@contextmanager
def one_thread_per_worker(device: torch.device) -> Iterator[int]:
    """The number of scoring workers: torch's threads on the CPU (each worker runs at one thread
    meanwhile, restored after), one elsewhere (a GPU parallelises inside its operations)."""
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    if workers == 1:
        yield 1
        return
    torch.set_num_threads(1)  # threads started from here on run their operations at one thread too
    try:
        yield workers
    finally:
        torch.set_num_threads(workers)


def score_chunks(model: Matcher, features: ImageFeatures, captions: Captions, plan: TilePlan,
                 starts: list[int], progress: bool, parts: bool = False, workers: int = 1,
                 precision: str = "fp32") -> dict[str, np.ndarray]:
    """The rows of the image chunks beginning at ``starts`` (consecutive), every caption: the score
    (``TOTAL``) and, with ``parts``, each part the model reports. Each chunk's images are prepared
    once; its caption tiles go to ``workers`` threads (see the module's docstring)."""
    device = model_device(model)
    n_img, n_cap = len(features), len(captions)
    order = torch.argsort(captions.lengths, descending=True, stable=True)  # similar lengths per tile
    ordered = captions.select(order)
    first = starts[0] if starts else 0
    last = min(starts[-1] + plan.image_chunk, n_img) if starts else 0
    # filled and reordered where the blocks are computed: one copy to the CPU at the end
    matrices: dict[str, torch.Tensor] = {TOTAL: torch.empty(last - first, n_cap, dtype=torch.float32, device=device)}
    new_part = threading.Lock()

    def score_tile(images: State, top: int, n_chunk: int, c0: int) -> int:
        """One caption tile against a prepared chunk of ``n_chunk`` images whose rows start at ``top``;
        the pairs it scored."""
        # grad mode and autocast are per thread: a worker sets its own
        with torch.inference_mode(), precision_context(device, precision):
            tile = ordered.select(slice(c0, c0 + plan.caption_tile))
            tile = Captions(tile.ids[:, : int(tile.lengths.max())], tile.lengths,
                            None if tile.vectors is None else tile.vectors[:, : int(tile.lengths.max())])
            caption_state = model.prepare_captions(on_device(tile, device))
            for j0 in range(0, n_chunk, plan.image_tile):
                rows = slice(j0, min(j0 + plan.image_tile, n_chunk))
                blocks = model.score_block(select_state(images, rows), caption_state, parts=parts)
                blocks = blocks if parts else {TOTAL: blocks}  # name -> (ni, nc)
                for name, block in blocks.items():
                    if name not in matrices:
                        with new_part:
                            matrices.setdefault(name, torch.empty_like(matrices[TOTAL]))
                    matrices[name][top + rows.start : top + rows.stop, c0 : c0 + len(tile)] = block.float()
            return n_chunk * len(tile)

    bar = tqdm(total=(last - first) * n_cap, desc="scoring pairs", unit="pair", unit_scale=True,
               disable=not progress, leave=False)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for i0 in starts:
            chunk = slice(i0, min(i0 + plan.image_chunk, n_img))
            streams = features.streams(model.image_streams, chunk)
            images = model.prepare_images({k: v.to(device) for k, v in streams.items()})
            tiles = range(0, n_cap, plan.caption_tile)
            run = partial(score_tile, images, chunk.start - first, chunk.stop - chunk.start)
            for pairs in pool.map(run, tiles) if pool else map(run, tiles):
                bar.update(pairs)
    finally:  # on an error or Ctrl-C the tiles not started are dropped, not scored first
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return {name: _in_caption_order(scores, order) for name, scores in matrices.items()}


def _in_caption_order(scores: torch.Tensor, order: torch.Tensor) -> np.ndarray:
    """Columns computed in ``order`` put back in the callers' caption order, on the CPU."""
    result = torch.empty_like(scores)
    result[:, order.to(scores.device)] = scores
    return result.cpu().numpy()


@torch.inference_mode()
def score_pairs_naive(model: Matcher, features: ImageFeatures, captions: Captions,
                      pairs: list[tuple[int, int]]) -> np.ndarray:
    """The reference: each (image, caption) pair alone through the model's ordinary forward."""
    device = model_device(model)
    with eval_mode(model):
        out = np.empty(len(pairs), dtype=np.float32)
        for n, (i, c) in enumerate(pairs):
            one = captions.select(slice(c, c + 1))
            steps = int(one.lengths[0])
            one = Captions(one.ids[:, :steps], one.lengths, None if one.vectors is None else one.vectors[:, :steps])
            streams = features.streams(model.image_streams, slice(i, i + 1))
            out[n] = model({k: v.to(device) for k, v in streams.items()}, on_device(one, device)).score[0].item()
    return out


@torch.inference_mode()
def score_listed_pairs(model: Matcher, features: ImageFeatures, captions: Captions, lists: np.ndarray,
                       image_chunk: int = 256) -> np.ndarray:
    """(n_images, m) scores of each image against its own m captions: ``lists`` (n_images, m) indices
    into ``captions`` (image i's row of the all-pairs matrix, those columns only). The captions are
    prepared once (pass only those the lists name); images ``image_chunk`` at a time."""
    lists = np.asarray(lists, dtype=np.int64)
    out = np.zeros(lists.shape, dtype=np.float32)
    if not lists.size:
        return out
    device = model_device(model)
    columns = torch.from_numpy(lists).to(device)
    with eval_mode(model):
        prepared = model.prepare_captions(on_device(captions, device))
        for start in range(0, len(features), image_chunk):
            streams = features.streams(model.image_streams, slice(start, start + image_chunk))
            images = model.prepare_images({k: v.to(device) for k, v in streams.items()})
            for i in range(len(streams[model.image_streams[0]])):
                own = select_state(prepared, columns[start + i])
                out[start + i] = model.score_block(select_state(images, slice(i, i + 1)), own)[0].float().cpu().numpy()
    return out
