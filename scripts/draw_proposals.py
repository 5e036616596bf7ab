"""Draw the P object proposals on a few Flickr8k test images (docs/img/proposals.png).

    python scripts/draw_proposals.py --data /work/shared/data/flickr8k --out docs/img/proposals.png
    python scripts/draw_proposals.py --methods activation grid --images 8

One row per method; in each panel the top 3 boxes are thick (red, orange, yellow), the rest thin.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from itm.config import FeatureConfig  # noqa: E402
from itm.features.backbones import build_backbone  # noqa: E402
from itm.features.images import image_tensor, load_image, original_size  # noqa: E402
from itm.features.proposals import ProposalInput, build_proposals  # noqa: E402

TOP_COLOURS = ["red", "orange", "yellow"]


def test_filenames(data: Path, count: int, offset: int) -> list[str]:
    """Every ``len(test) // count``-th test image of the Karpathy file, so the pick is spread out."""
    raw = json.loads((data / "dataset_flickr8k.json").read_text(encoding="utf-8"))
    names = [im["filename"] for im in raw["images"] if im["split"] == "test"]
    step = max(1, len(names) // count)
    return [names[(offset + i * step) % len(names)] for i in range(count)]


def draw(ax, img, boxes: torch.Tensor) -> None:
    ax.imshow(img)
    for rank in range(boxes.shape[0] - 1, -1, -1):  # best box drawn last, on top
        x1, y1, x2, y2 = boxes[rank].tolist()
        top = rank < len(TOP_COLOURS)
        ax.add_patch(
            plt.Rectangle(
                (x1, y1), x2 - x1, y2 - y1, fill=False,
                edgecolor=TOP_COLOURS[rank] if top else "cyan",
                linewidth=2.5 if top else 0.8, alpha=1.0 if top else 0.7,
            )
        )
    ax.set_axis_off()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/flickr8k"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/proposals.png"))
    parser.add_argument("--methods", nargs="+", default=["activation", "grid"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--offset", type=int, default=0, help="shift the picked test images")
    parser.add_argument("--num-objects", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args()

    names = test_filenames(args.data, args.images, args.offset)
    settings = FeatureConfig(backbone=args.backbone, image_size=args.image_size, weights=args.weights)
    backbone = build_backbone(settings)
    images = [load_image(args.data / "images" / n) for n in names]
    pixels = torch.stack([image_tensor(im, args.image_size) for im in images])  # (B, 3, S, S)
    fmaps = backbone.feature_map(pixels)  # (B, C, h, w)

    fig, axes = plt.subplots(len(args.methods), len(names), figsize=(2.4 * len(names), 2.6 * len(args.methods)))
    axes = axes.reshape(len(args.methods), len(names))
    for row, method_name in enumerate(args.methods):
        method = build_proposals(FeatureConfig(proposals=method_name))
        for col, (name, img) in enumerate(zip(names, images, strict=True)):
            item = ProposalInput(fmaps[col], original_size(img), name)
            draw(axes[row, col], img, method.propose(item, args.num_objects))
        axes[row, 0].set_title(method_name, loc="left", fontsize=11)
    fig.suptitle(f"{args.num_objects} proposals per image ({args.backbone}, {args.image_size} px); "
                 "top 3 = red, orange, yellow", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
