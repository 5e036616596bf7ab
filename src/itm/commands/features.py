"""``itm features``: extract image features once into the cache (resumable, content-addressed)."""

from __future__ import annotations

import argparse

from itm.commands import add_device_argument

HELP = "extract region-grid and object features of a dataset's images into the cache (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (Karpathy JSON + images)")
    parser.add_argument("--out", default=None,
                        help="cache root (default: $ITM_CACHE/features, else ~/.cache/itm/features)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (default) | efficientnet_lite1 | efficientnet_lite2 | vgg19")
    parser.add_argument("--weights", default=None, help="weights file (.pth/.pt/.safetensors); required for vgg19")
    parser.add_argument("--image-size", type=int, default=224, help="images are resized to N x N (default 224)")
    parser.add_argument("--proposals", default="activation", help="activation | grid | external:BOXES.json")
    parser.add_argument("--num-objects", type=int, default=10, help="P object boxes per image (default 10)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=256, help="images per cache chunk (the resume unit)")
    parser.add_argument("--split", default=None, help="only this split (default: every image)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(parser)


def _load(data: str, split: str | None):
    try:
        from itm.data.load import load_dataset
    except ModuleNotFoundError:  # a tree without the format-detecting loader: Karpathy only
        from itm.data.karpathy import load_karpathy

        dataset = load_karpathy(data)
        return dataset.split(split) if split else dataset
    return load_dataset(data, split)


def run(args: argparse.Namespace) -> int:
    import torch

    from itm.config import FeatureConfig
    from itm.devices import resolve_device
    from itm.distributed import is_main, setup
    from itm.errors import ConfigError
    from itm.features.extract import extract_features

    for name in ("image_size", "num_objects", "batch_size", "chunk_size", "threads"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    settings = FeatureConfig(backbone=args.backbone, image_size=args.image_size, weights=args.weights,
                             proposals=args.proposals, num_objects=args.num_objects)
    setup(device)  # under torchrun: each process extracts its share of the chunks into the one cache
    dataset = _load(args.data, args.split)
    features, _, report = extract_features(dataset, settings, args.out, batch_size=args.batch_size,
                                           skip_bad=args.skip_bad, progress=not args.no_progress and is_main(),
                                           chunk_size=args.chunk_size, device=device)
    if not is_main():
        return 0
    if dataset.precomputed is not None:
        print(f"{len(dataset)} images with precomputed features {tuple(features.regions.shape)}: nothing to extract.")
        return 0
    print(report.summary())
    for filename, reason in report.skipped[5:]:  # the summary names the first five
        print(f"skipped {filename}: {reason}")
    return 0
