"""A demonstration of the published MLASM code's evaluation leak, never a result to compare.

The code scores its global branch with each test image's vector conditioned on the image's first
ground-truth caption and each caption's vector conditioned on its ground-truth image. This script
computes that matrix for a checkpoint (fused with the model's own local scores as the code does)
beside the honest per-pair matrix of ``itm eval``, and prints both rsums. ``itm eval`` refuses the
leaky rule; only this script computes it.

    python scripts/mlasm_leak_demo.py --checkpoint runs/flickr8k/mlasm --data ../shared/data/flickr8k --json OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from itm.data.types import Captions, ImageFeatures
from itm.evaluation.engine import score_all_parts
from itm.evaluation.metrics import retrieval_metrics
from itm.models.base import TOTAL
from itm.training.loop import batch_captions


@torch.inference_mode()
def leaky_global_scores(model, features: ImageFeatures, captions: Captions, caption_to_image: np.ndarray,
                        chunk: int = 256) -> np.ndarray:
    """(n_images, n_captions) S_global the code's way: e_img(i | i's first caption) . e_txt(c | c's image)."""
    model.eval()
    owner = torch.as_tensor(caption_to_image)
    first_caption = torch.stack([torch.nonzero(owner == i)[0, 0] for i in range(len(features))])

    def vectors(image_idx: torch.Tensor, caption_idx: torch.Tensor, which: int) -> torch.Tensor:
        out = []
        for s in range(0, len(image_idx), chunk):
            images = features.streams(model.image_streams, image_idx[s : s + chunk])
            caps = batch_captions(captions, caption_idx[s : s + chunk])  # padding trimmed to the longest
            out.append(model.diagonal_global_vectors(images, caps)[which])
        return torch.cat(out)

    e_img = vectors(torch.arange(len(features)), first_caption, 0)  # (N, D)
    e_txt = vectors(owner, torch.arange(len(captions)), 1)  # (M, D)
    return (e_img @ e_txt.t()).numpy()


def leaky_and_honest(model, features, captions, caption_to_image) -> dict:
    """Both protocols' metrics: the honest fused matrix (the model's own score), and the code's fused
    matrix (the model's local scores + the leaky global ones)."""
    honest = score_all_parts(model, features, captions)  # TOTAL (rho local + (1 - rho) global), "local", "global"
    rho = model.config.local_weight
    leaky_global = leaky_global_scores(model, features, captions, caption_to_image)
    leaky = rho * honest["local"] + (1 - rho) * leaky_global
    return {"honest": retrieval_metrics(honest[TOTAL], caption_to_image),
            "leaky": retrieval_metrics(leaky, caption_to_image),
            "honest_global_only": retrieval_metrics(honest["global"], caption_to_image),
            "leaky_global_only": retrieval_metrics(leaky_global, caption_to_image)}


def main(argv: list[str] | None = None) -> dict:
    from itm.checkpoint import load_checkpoint
    from itm.data.load import load_dataset
    from itm.pipeline import prepare_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt.config
    split = prepare_split(load_dataset(args.data, args.split), config, ckpt.vocab, progress=False)
    result = leaky_and_honest(ckpt.model, split.features, split.captions, split.caption_to_image)
    for label, metrics in result.items():
        print(f"{label:<20} rsum {metrics['rsum']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "demonstration": "mlasm leak",
                                               **result}, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
