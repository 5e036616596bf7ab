"""The engine's cache tile, A/B: each config's all-pairs scoring at several ``CACHE_TILE_BYTES``, in one run.

    python benchmarks/tiles.py --tiles 24 8 4 --grids 81 169 --images 12 --repeats 5 [--json results/tiles.json]
    python benchmarks/tiles.py --checkpoint src/itm/assets/models/caan.pt ... --data ../shared/data/flickr8k --images 60

For each config and region grid (random weights and features: the cost depends on shapes, not
values), or each checkpoint on a dataset's test split (its first ``--images`` photos against every
caption: the real lengths and features), the same matrix is scored with the engine's tile capped at
each size in MiB, the sizes alternating within every repeat so that a slow spell of the machine
falls on all of them; each figure is the median us a pair, preparation included as in a full matrix.
Every tiling must give the same matrix (checked): the tile changes the blocks, not the products.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import save_json

import itm.evaluation.engine as engine
from itm.checkpoint import new_model
from itm.config import load_config
from itm.data.synthetic import random_captions
from itm.data.types import ImageFeatures
from itm.models.base import InputDims

MIB = 2**20


def random_problem(config_name: str, grid: int, images: int, captions: int):
    """A config's model with random weights, random features at ``grid`` regions, random captions."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = new_model(load_config(config_name), InputDims(50, 1280, 1280, vocab_size=8000)).eval()
    features = ImageFeatures(torch.randn(images, grid, 1280, generator=gen), torch.randn(images, 10, 1280, generator=gen))
    return model, features, random_captions(captions, 8000, gen)


def real_problem(checkpoint: str, data: str, images: int):
    """A checkpoint on its trained grid, the first ``images`` photos of ``data``'s test split, every caption."""
    from itm.checkpoint import load_checkpoint
    from itm.data.load import load_dataset
    from itm.pipeline import prepare_split

    ckpt = load_checkpoint(checkpoint, ["eval.score_sizes=[]"])
    split = prepare_split(load_dataset(data, "test").split("test"), ckpt.config, ckpt.vocab, progress=False)
    return ckpt.model.eval(), split.features.select(slice(0, images)), split.captions


def tile_times(problem, tiles_mib: list[float], repeats: int) -> dict:
    """{tile MiB: median us a pair} for one (model, features, captions), the tilings alternating."""
    model, features, caps = problem
    images, captions = len(features), len(caps)
    times: dict[float, list[float]] = {tile: [] for tile in tiles_mib}
    reference = None
    saved = engine.CACHE_TILE_BYTES
    try:
        for _ in range(repeats):
            for tile in tiles_mib:
                engine.CACHE_TILE_BYTES = int(tile * MIB)
                start = time.perf_counter()
                scores = engine.score_all_pairs(model, features, caps)
                times[tile].append(time.perf_counter() - start)
                reference = scores if reference is None else reference
                if abs(scores - reference).max() > 1e-4:
                    raise SystemExit(f"tile {tile} MiB scored another matrix")
    finally:
        engine.CACHE_TILE_BYTES = saved
    return {f"{tile:g}": round(statistics.median(t) / (images * captions) * 1e6, 1) for tile, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["bssan_cpu_lite2", "caan_cpu", "mlasm_cpu"])
    parser.add_argument("--tiles", nargs="+", type=float, default=[24, 8, 4], help="tile caps in MiB")
    parser.add_argument("--grids", nargs="+", type=int, default=[81, 169], help="regions per image (9x9, 13x13)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--captions", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", nargs="+", default=[], help="checkpoints scored on --data instead of configs")
    parser.add_argument("--data", help="the dataset whose test split --checkpoint is scored on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "images": args.images, "captions": args.captions, "repeats": args.repeats,
              "us_per_pair": {}}
    if args.checkpoint and not args.data:
        parser.error("--checkpoint needs --data")
    problems = ({path: lambda path=path: real_problem(path, args.data, args.images) for path in args.checkpoint}
                if args.checkpoint else
                {f"{name}@{grid}": lambda name=name, grid=grid: random_problem(name, grid, args.images, args.captions)
                 for name in args.configs for grid in args.grids})
    for label, problem in problems.items():
        figures = tile_times(problem(), args.tiles, args.repeats)
        result["us_per_pair"][label] = figures
        print(f"{label}: " + ", ".join(f"{t} MiB {us} us" for t, us in figures.items()), flush=True)
    return save_json(result, args.json)


if __name__ == "__main__":
    main()
