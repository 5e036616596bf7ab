"""Write the caption bank the hubness corrections score every photo against (itm.retrieval.bank).

    python scripts/make_caption_bank.py --data ../shared/data/flickr8k [--size 2000]

Also writes the caption *pool* search's correction draws each photo's own bank from: every train
caption (30,000), each with the first 16 hex digits of its photo's sha1 (a photo is never judged by
its own captions, e.g. a Flickr8k train photo in a user's library), gzipped, in file order, to
``src/itm/assets/caption_bank/flickr8k_train_pool.tsv.gz``.

One caption from each of ``--size`` Flickr8k *train* images drawn without replacement (numpy seed 0;
the caption is drawn among the image's five with the same generator), in the drawn order, so the
bank's first N lines are themselves a random bank of N: bank sizes are chosen by prefix. Train
captions are never queries in any evaluation (val, test and coco_boxes_dev are), so normalising
by them never sees a query. Written as lowercased, space-joined tokens, one caption a line, to
``src/itm/assets/caption_bank/flickr8k_train.txt``.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from itm.data.load import load_dataset
from itm.features.cache import content_key

ASSETS = Path(__file__).resolve().parent.parent / "src" / "itm" / "assets" / "caption_bank"
OUT = ASSETS / "flickr8k_train.txt"
POOL = ASSETS / "flickr8k_train_pool.tsv.gz"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args(argv)
    train = load_dataset(args.data, "train").split("train").images
    rng = np.random.default_rng(0)
    lines = []
    for i in rng.choice(len(train), size=args.size, replace=False):
        tokens = train[int(i)].tokens
        lines.append(" ".join(tokens[int(rng.integers(len(tokens)))]))
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} captions -> {OUT}")
    write_pool(train)


def write_pool(train) -> None:
    """Every train caption with its photo's sha1 prefix; gzip's header without a time stamp (the file
    is the same bytes each time it is written)."""
    lines = []
    for record in train:
        key = content_key(Path(record.path).read_bytes())[:16]
        lines += [f"{key}\t{' '.join(tokens)}" for tokens in record.tokens]
    POOL.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0))
    print(f"{len(lines)} pool captions -> {POOL}")


if __name__ == "__main__":
    main()
