"""How word-specific are a model's words-over-regions peaks? Per photo, the share of all its caption
words whose peak cell is the photo's most common peak cell (1.0: every word looks at one spot).

    python scripts/peak_spread.py --checkpoint RUN [--data ../shared/data/coco_boxes_dev --split test]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.evaluation.grounding import attention_rows, word_region_map
from itm.pipeline import prepare_split


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="../shared/data/coco_boxes_dev")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    split = prepare_split(load_dataset(args.data, args.split), ckpt.config, ckpt.vocab, progress=False)
    key = word_region_map(ckpt.model)
    shares = []
    for image in range(len(split.dataset.images)):
        peaks = np.concatenate([rows.argmax(axis=1) for rows in attention_rows(ckpt.model, split, image, key)])
        shares.append(Counter(peaks.tolist()).most_common(1)[0][1] / len(peaks))
    share = float(np.mean(shares))
    print(f"{args.checkpoint}: {share:.3f} of a photo's words share its most common peak cell (mean over "
          f"{len(shares)} photos)")
    return share


if __name__ == "__main__":
    main()
