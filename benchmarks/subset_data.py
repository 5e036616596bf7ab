"""A Karpathy-format dataset of the first N images of one split, its images linked, not copied: a
quick stand-in for a full evaluation in A/B timings (the feature cache is keyed by image content, so
the subset reads the full dataset's cached features).

    python benchmarks/subset_data.py ../shared/data/flickr8k 200 /tmp/flickr8k_test200 [--split test]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_subset(data: Path, count: int, out: Path, split: str = "test") -> int:
    """``out``: the first ``count`` images of ``split`` in ``data``'s Karpathy JSON, ``images`` a link
    to ``data``'s; the number of images written."""
    [source] = sorted(data.glob("dataset_*.json"))
    dataset = json.loads(source.read_text(encoding="utf-8"))
    chosen = [image for image in dataset["images"] if image["split"] == split][:count]
    out.mkdir(parents=True, exist_ok=True)
    (out / source.name).write_text(json.dumps({**dataset, "images": chosen}), encoding="utf-8")
    link = out / "images"
    if not link.exists():
        link.symlink_to((data / "images").resolve(), target_is_directory=True)
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    written = write_subset(args.data, args.count, args.out, args.split)
    print(f"{args.out}: {written} images of {args.data}'s {args.split} split")
    return written


if __name__ == "__main__":
    main()
