"""``itm features``: extract image features once into the cache (resumable)."""

from __future__ import annotations

import argparse

HELP = "extract region-grid and object features for a dataset into the cache (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (Karpathy JSON + images)")
    parser.add_argument("--out", default=None, help="cache folder (default: $ITM_CACHE/features or ~/.cache/itm/features)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 | vgg19")
    parser.add_argument("--weights", default=None, help="weights file (required for vgg19)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--proposals", default="activation", help="activation | grid | external:BOXES.json")
    parser.add_argument("--num-objects", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--split", default=None, help="only this split (default: every image)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report them")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from itm.config import FeatureConfig, validate_features
    from itm.data.load import load_dataset
    from itm.features.extract import extract_features

    settings = FeatureConfig(backbone=args.backbone, image_size=args.image_size, weights=args.weights,
                             proposals=args.proposals, num_objects=args.num_objects)
    validate_features(settings)
    dataset = load_dataset(args.data, args.split)
    _, kept, report = extract_features(dataset, settings, args.out, batch_size=args.batch_size,
                                       skip_bad=args.skip_bad, progress=not args.no_progress)
    per_image = f"{1000 * report.seconds_per_image:.0f} ms/image" if report.extracted else "nothing to do"
    print(f"{report.images} images: {report.extracted} extracted now ({per_image}), "
          f"{len(kept) - report.extracted} already cached, {len(report.skipped)} skipped; "
          f"cache {report.cache_dir} ({report.cache_bytes / 2**20:.0f} MiB)")
    for filename, reason in report.skipped:
        print(f"skipped {filename}: {reason}")
    return 0
