"""Choose BSSAN's branch weight lambda (MS = f_w2r + lambda * f_o2w, eq. 19) for a trained checkpoint
on the validation split, then report the test split at the trained lambda and at the chosen one.

Each branch's score matrix comes from one engine pass per split (``score_all_parts``: the cost of
one ordinary evaluation); every lambda of the grid is then a sum of two matrices.

    python scripts/tune_branch_weight.py --checkpoint runs/flickr8k/lite2 --data ../shared/data/flickr8k \
        --json results/branch_weight/lite2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.evaluation.engine import score_all_parts
from itm.evaluation.metrics import retrieval_metrics
from itm.models.base import TOTAL
from itm.pipeline import prepare_split

# the ranking depends only on the ratio of the weights, so the grid is over the W2R share
# alpha in MS' = alpha * f_w2r + (1 - alpha) * f_o2w, i.e. lambda = (1 - alpha) / alpha
ALPHAS = [round(0.02 * i, 2) for i in range(0, 51)]  # 0 (O2W alone) .. 1 (W2R alone)


def lambda_of(alpha: float) -> float | None:
    """lambda for a W2R share (None: O2W alone)."""
    return None if alpha == 0 else round((1 - alpha) / alpha, 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-images", type=int, default=None, help="first N val images (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt.config
    branches = getattr(config.model, "branches", [])  # a BSSAN's
    if set(branches) != {"w2r", "o2w"}:
        raise SystemExit(f"{args.checkpoint}: needs a BSSAN with both branches, has {sorted(branches)}")
    trained = config.model.o2w_weight
    record: dict = {"checkpoint": args.checkpoint, "trained_lambda": trained, "alphas": ALPHAS,
                    "lambdas": [lambda_of(a) for a in ALPHAS]}
    for split_name in ("val", "test"):
        dataset = load_dataset(args.data, split_name).split(split_name)
        if split_name == "val" and args.val_images:
            dataset = dataset.head(args.val_images)
        split = prepare_split(dataset, config, ckpt.vocab, progress=False)
        started = time.time()
        parts = score_all_parts(ckpt.model, split.features, split.captions)  # TOTAL, "w2r", "o2w"
        seconds = round(time.time() - started, 1)
        curve = [retrieval_metrics(a * parts["w2r"] + (1 - a) * parts["o2w"], split.caption_to_image)["rsum"]
                 for a in ALPHAS]
        record[split_name] = {"n_images": len(split.features), "rsum_by_alpha": [round(r, 2) for r in curve],
                              "scoring_seconds": seconds}
        print(f"{split_name}: {len(split.features)} images, scored in {seconds} s; rsum: "
              + ", ".join(f"lambda {lambda_of(a)}: {r:.1f}" for a, r in zip(ALPHAS, curve, strict=True)
                          if a in (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.62, 0.8, 1)), flush=True)
        if split_name == "val":
            alpha = ALPHAS[int(np.argmax(curve))]
            record["chosen_alpha"], record["chosen_lambda"] = alpha, lambda_of(alpha)
        else:
            test_trained = retrieval_metrics(parts[TOTAL], split.caption_to_image)  # f_w2r + trained * f_o2w
            test_chosen = retrieval_metrics(alpha * parts["w2r"] + (1 - alpha) * parts["o2w"], split.caption_to_image)
            record["test_at_trained_lambda"] = test_trained
            record["test_at_chosen_lambda"] = test_chosen
            print(f"lambda chosen on val: {lambda_of(alpha)} (O2W alone when None); test rsum "
                  f"{test_trained['rsum']:.1f} at the trained {trained} -> {test_chosen['rsum']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
