"""Time feature extraction on Flickr8k test images: decode, region grid, proposals + object pooling.

    python benchmarks/extract_features.py 200                       # timings + cache bytes per image
    python benchmarks/extract_features.py 200 --quality 100         # + the proposal quality proxy
    python benchmarks/extract_features.py 0 --quality 100 --variant nox='{"expand": 0}'   # tuning

Prints ms/image for each stage (grid = backbone forward; objects = proposals + RoIAlign pooling,
per proposal method) and the cache size per image (a chunk of the N images written to a temp cache).

``--quality M`` scores proposal methods on M test images whose captions say "dog" (3+ of 5), using
EfficientNet-Lite0's own ImageNet head as a judge: a box *finds the dog* when the crop is
classified as a dog (summed P over ImageNet's dog classes >= 0.5) and greying the box out of the
image drops P(dog) below half its whole-image value. Reported: found@1, found@3, found@3 with a box
of at most half the image (localisation, not just "the whole picture"), and the mean area of the
smallest finding box among the top 3 (1.0 when none finds it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from itm.config import FeatureConfig
from itm.features.backbones import build_backbone
from itm.features.cache import FeatureCache
from itm.features.extract import pool_objects, single_thread
from itm.features.images import image_tensor, load_image, original_size
from itm.features.proposals import ActivationProposals, ProposalInput, build_proposals

DOG_CLASSES = slice(151, 269)  # ImageNet-1k indices of the dog breeds


def test_images(data: Path, n: int, word: str | None = None) -> list[str]:
    raw = json.loads((data / "dataset_flickr8k.json").read_text(encoding="utf-8"))
    names = []
    for im in raw["images"]:
        if im["split"] != "test":
            continue
        if word and sum(word in s["tokens"] or word + "s" in s["tokens"] for s in im["sentences"]) < 3:
            continue
        names.append(im["filename"])
    return names[:n]


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def propose_batch(method, fmap: torch.Tensor, sizes, names, num: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, P, 4) boxes."""
    return torch.stack([method.propose(ProposalInput(fmap[i], sizes[i], names[i]), num) for i in range(len(names))])


def benchmark(args: argparse.Namespace) -> None:
    settings = FeatureConfig(backbone=args.backbone, image_size=args.image_size, weights=args.weights,
                             num_objects=args.num_objects)
    backbone = build_backbone(settings)
    names = test_images(args.data, args.n)
    n = len(names)

    def decode(batch):
        imgs = [load_image(args.data / "images" / name, min_size=args.image_size) for name in batch]
        return torch.stack([image_tensor(im, args.image_size) for im in imgs]), [original_size(im) for im in imgs]

    batches = [names[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    decoded, t_decode = [], 0.0
    for batch in batches:
        out, dt = timed(decode, batch)
        decoded.append(out)
        t_decode += dt
    backbone.feature_map(decoded[0][0][:2])  # warm-up (one-off allocations)
    fmaps, t_grid = [], 0.0
    for pixels, _ in decoded:
        out, dt = timed(backbone.feature_map, pixels)
        fmaps.append(out)
        t_grid += dt
    print(f"{n} Flickr8k test images, {args.backbone} at {args.image_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"  decode + resize       {1000 * t_decode / n:7.1f} ms/image")
    print(f"  grid (backbone)       {1000 * t_grid / n:7.1f} ms/image  -> {tuple(fmaps[0].shape[1:])} per image")

    for method_name in args.methods:
        method = build_proposals(FeatureConfig(proposals=method_name))
        warm = propose_batch(method, fmaps[0][:2], decoded[0][1][:2], batches[0][:2], args.num_objects)
        pool_objects(fmaps[0][:2], warm, decoded[0][1][:2], args.image_size)  # warm-up, not timed
        t_prop = t_pool = 0.0
        all_boxes, all_objects = [], []
        for (_, sizes), fmap, batch in zip(decoded, fmaps, batches, strict=True):
            with single_thread():  # as the extractor does
                boxes, dt = timed(propose_batch, method, fmap, sizes, batch, args.num_objects)
                t_prop += dt
                objects, dt = timed(pool_objects, fmap, boxes, sizes, args.image_size)
                t_pool += dt
            all_boxes.append(boxes)
            all_objects.append(objects)
        print(f"  objects: {method_name:<12} {1000 * (t_prop + t_pool) / n:5.1f} ms/image "
              f"(proposals {1000 * t_prop / n:.1f} + RoIAlign pooling {1000 * t_pool / n:.1f})")

    grid = torch.cat([f.permute(0, 2, 3, 1).flatten(1, 2) for f in fmaps]).numpy()  # (N, D, C)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp, {"benchmark": True})
        cache.write_chunk([f"{i:040x}" for i in range(n)], names, grid, torch.cat(all_objects).numpy(),
                          torch.cat(all_boxes).numpy(), tuple(fmaps[0].shape[2:]))
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*/*") if f.is_file())
    print(f"  cache                 {size / n / 1024:7.1f} KiB/image (grid float16 + objects float16 + boxes)")


def quality(args: argparse.Namespace) -> None:
    if args.backbone != "efficientnet_lite0":
        raise SystemExit("--quality uses EfficientNet-Lite0's ImageNet head as the judge")
    backbone = build_backbone(FeatureConfig(image_size=args.image_size))
    net = backbone.net
    names = test_images(args.data, args.quality, word="dog")
    imgs = [load_image(args.data / "images" / name) for name in names]
    px = torch.stack([image_tensor(im, args.image_size) for im in imgs])
    fmaps = torch.cat([backbone.feature_map(px[i : i + 32]) for i in range(0, len(px), 32)])

    @torch.inference_mode()
    def p_dog(x: torch.Tensor) -> torch.Tensor:
        probs = [net(backbone.normalize(x[i : i + 32])).softmax(-1)[:, DOG_CLASSES].sum(-1) for i in range(0, len(x), 32)]
        return torch.cat(probs)

    whole = p_dog(px)
    print(f"proposal quality on {len(names)} test images captioned 'dog' (whole image: P(dog) = {whole.mean():.2f})")
    k = 3
    methods = {name: build_proposals(FeatureConfig(proposals=name)) for name in args.methods}
    for spec in args.variant:  # NAME=JSON keyword arguments of ActivationProposals
        name, _, kwargs = spec.partition("=")
        kw = {key: tuple(v) if isinstance(v, list) else v for key, v in json.loads(kwargs).items()}
        methods[name] = ActivationProposals(**kw)
    for method_name, method in methods.items():
        crops, masked, areas = [], [], []
        for i, (img, name) in enumerate(zip(imgs, names, strict=True)):
            boxes = method.propose(ProposalInput(fmaps[i], original_size(img), name), args.num_objects)[:k]
            w, h = original_size(img)
            for x1, y1, x2, y2 in boxes.round().int().tolist():
                crops.append(image_tensor(img.crop((x1, y1, x2, y2)), args.image_size))
                s = args.image_size
                grey = px[i].clone()
                grey[:, y1 * s // h : -(-y2 * s // h), x1 * s // w : -(-x2 * s // w)] = 127.0
                masked.append(grey)
                areas.append((x2 - x1) * (y2 - y1) / (w * h))
        pc = p_dog(torch.stack(crops)).view(-1, k)
        pm = p_dog(torch.stack(masked)).view(-1, k)
        area = torch.tensor(areas).view(-1, k)
        found = (pc >= 0.5) & (pm < 0.5 * whole[:, None])
        smallest = torch.where(found, area, torch.ones_like(area)).min(1).values
        print(f"  {method_name:<12} found@1 {found[:, 0].float().mean():.2f}  found@3 {found.any(1).float().mean():.2f}  "
              f"found@3 with area<=0.5 {(found & (area <= 0.5)).any(1).float().mean():.2f}  "
              f"smallest finding box {smallest.mean():.2f}  mean top-3 area {area.mean():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of Flickr8k test images to time")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/flickr8k"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-objects", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["activation", "grid"])
    parser.add_argument("--quality", type=int, default=0, metavar="M", help="also score proposals on M dog images")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="with --quality: also score ActivationProposals(**JSON), e.g. low='{\"levels\": [0.2]}'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    if args.n:
        benchmark(args)
    if args.quality:
        quality(args)


if __name__ == "__main__":
    main()
