"""All-pairs scoring: the engine against the naive one-pair-at-a-time reference, in one run.

    python benchmarks/score_pairs.py                       # CPU config, Flickr8k-test-sized problem
    python benchmarks/score_pairs.py --config bssan_paper --images 5000 --captions 25000 --device cuda

Same weights for both paths. Prints pairs/second of each, their ratio, the largest difference
on the sampled pairs, peak memory, and the projected (and, with --full, measured) time of the
whole n_images x n_captions matrix. Features and captions are random with Flickr8k's shapes
(7x7x1280 regions, 10x1280 objects, caption lengths drawn from Flickr8k test's distribution): the cost
depends on shapes, not values.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch
from _report import report

from itm.checkpoint import new_model
from itm.config import load_config
from itm.data.synthetic import random_captions
from itm.data.types import ImageFeatures
from itm.devices import on_device
from itm.evaluation.engine import score_all_pairs, score_pairs_naive
from itm.models.base import InputDims


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="bssan_cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--grid", type=int, default=49, help="regions per image (D)")
    parser.add_argument("--region-dim", type=int, default=1280)
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--object-dim", type=int, default=1280)
    parser.add_argument("--word-dim", type=int, default=50)
    parser.add_argument("--naive-pairs", type=int, default=300, help="pairs timed through the naive path")
    parser.add_argument("--engine-images", type=int, default=100, help="images of the timed engine block")
    parser.add_argument("--full", action="store_true", help="also score the whole matrix")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    config = load_config(args.config, args.overrides)
    dims = InputDims(args.word_dim, args.region_dim, args.object_dim, vocab_size=8000)
    model = new_model(config, dims).to(args.device).eval()
    n_img = args.images
    features = ImageFeatures(torch.randn(n_img, args.grid, args.region_dim, generator=gen).half(),
                             torch.randn(n_img, args.objects, args.object_dim, generator=gen).half())
    captions = random_captions(args.captions, 8000, gen)
    features = ImageFeatures(features.regions.to(args.device), features.objects.to(args.device))
    captions = on_device(captions, args.device)

    pairs = [(int(i), int(c)) for i, c in zip(torch.randint(n_img, (args.naive_pairs,), generator=gen),
                                               torch.randint(args.captions, (args.naive_pairs,), generator=gen),
                                               strict=True)]
    t0 = time.perf_counter()
    naive = score_pairs_naive(model, features, captions, pairs)
    naive_rate = len(pairs) / (time.perf_counter() - t0)

    block = min(args.engine_images, n_img)
    t0 = time.perf_counter()
    engine_block = score_all_pairs(model, features.select(slice(0, block)), captions,
                                   config.eval.memory_budget_mb, config.eval.caption_tile)
    engine_rate = block * args.captions / (time.perf_counter() - t0)
    inside = [(n, i, c) for n, (i, c) in enumerate(pairs) if i < block]
    max_diff = max((abs(float(naive[n]) - float(engine_block[i, c])) for n, i, c in inside), default=float("nan"))

    total = n_img * args.captions
    result = {
        "config": args.config, "overrides": args.overrides, "device": args.device,
        "threads": torch.get_num_threads(), "matrix": [n_img, args.captions],
        "naive_pairs_per_s": round(naive_rate, 1), "engine_pairs_per_s": round(engine_rate, 1),
        "speedup": round(engine_rate / naive_rate, 1), "max_abs_diff": max_diff,
        "projected_full_s": round(total / engine_rate, 1),
        "projected_naive_full_s": round(total / naive_rate, 1),
    }
    if args.full:
        t0 = time.perf_counter()
        score_all_pairs(model, features, captions, config.eval.memory_budget_mb, config.eval.caption_tile,
                        progress=sys.stderr.isatty())
        result["measured_full_s"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if args.device.startswith("cuda"):
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report(result, args.json_out)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
