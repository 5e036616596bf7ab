"""bf16 autocast against fp32: the score matrix of a trained checkpoint at both precisions.

    python benchmarks/bf16_scores.py --checkpoint runs/flickr8k/mlasm_seed0 --data ../shared/data/flickr8k \
        --images 100 [--device cuda] [--json out.json]

Scores the first ``--images`` images of the split against their captions with the engine, once in
fp32 and once under bf16 autocast (same weights, same tiles), and prints the largest |difference|
relative to the largest |score| and to the scores' standard deviation, and the retrieval metrics of
both matrices. The tiny-model bound the tests hold is in tests/test_engine.py (BF16_TOLERANCE).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import report

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.devices import resolve_device
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.metrics import retrieval_metrics
from itm.pipeline import prepare_split


def compare(exact: np.ndarray, bf16: np.ndarray) -> dict:
    diff = np.abs(bf16 - exact)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "max_abs_score": float(np.abs(exact).max()), "score_std": float(exact.std()),
            "max_diff_over_max_score": float(diff.max() / np.abs(exact).max()),
            "max_diff_over_std": float(diff.max() / exact.std())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    split = prepare_split(load_dataset(args.data, args.split).split(args.split), ckpt.config, ckpt.vocab,
                          progress=False, device=device).head(args.images)
    matrices, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        matrices[precision] = score_all_pairs(ckpt.model, split.features, split.captions,
                                              ckpt.config.eval.memory_budget_mb, ckpt.config.eval.caption_tile,
                                              precision=precision)
        seconds[precision] = round(time.perf_counter() - t0, 1)
    result = {"checkpoint": args.checkpoint, "model": ckpt.config.model.name, "device": str(device),
              "matrix": list(matrices["fp32"].shape), "seconds": seconds,
              **compare(matrices["fp32"], matrices["bf16"]),
              "rsum": {p: round(retrieval_metrics(m, split.caption_to_image)["rsum"], 2) for p, m in matrices.items()}}
    return report(result, args.json_out)


if __name__ == "__main__":
    main()
