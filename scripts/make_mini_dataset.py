"""Build the bundled Flickr8k mini dataset (src/itm/assets/flickr8k_mini) from the full Flickr8k.

Selection (deterministic, no randomness): walk the Karpathy file in its own order and keep every
6th train image, every 10th val image and every 5th test image (positions 0, k, 2k, ... within
each split): 1,000 train, 100 val, 200 test, with all 5 captions each. Images are copied as they
are when the folder fits in the size budget; otherwise all are re-encoded at the highest JPEG
quality (85, 80, ...) that fits.

    python scripts/make_mini_dataset.py [--source ../shared/data/flickr8k] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "flickr8k"
DEFAULT_OUT = REPO / "src" / "itm" / "assets" / "flickr8k_mini"
STRIDES = {"train": 6, "val": 10, "test": 5}  # keep position p of a split when p % stride == 0
BUDGET_BYTES = 25_000_000  # the whole folder, as du counts it
BLOCK = 4096  # du rounds every file up to whole filesystem blocks
QUALITIES = (85, 80, 75, 70, 65, 60)
METADATA_ALLOWANCE = 2_000_000  # room kept for the JSON, README and SHA256SUMS when sizing images
COMMAND = "python scripts/make_mini_dataset.py --force"


def disk_size(n_bytes: int) -> int:
    """Bytes a file occupies on disk, as du reports it on a 4 KiB-block filesystem."""
    return -(-n_bytes // BLOCK) * BLOCK


def select_images(images: list[dict]) -> list[dict]:
    """Every k-th image of each split, in the file's own order."""
    position = dict.fromkeys(STRIDES, 0)
    kept = []
    for image in images:
        split = "train" if image["split"] == "restval" else image["split"]
        if position[split] % STRIDES[split] == 0:
            kept.append(image)
        position[split] += 1
    return kept


def renumber(images: list[dict]) -> list[dict]:
    """Copies with imgid = position and sentids 0..N-1, the invariants of the Karpathy file."""
    out, sentid = [], 0
    for imgid, image in enumerate(images):
        sentences = []
        for sentence in image["sentences"]:
            sentences.append({**sentence, "imgid": imgid, "sentid": sentid})
            sentid += 1
        out.append(
            {**image, "imgid": imgid, "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
        )
    return out


def reencode(data: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def choose_images(originals: dict[str, bytes]) -> tuple[dict[str, bytes], int | None]:
    """The original bytes if they fit, else the best quality that does (None = not re-encoded)."""
    budget = BUDGET_BYTES - METADATA_ALLOWANCE
    if sum(disk_size(len(b)) for b in originals.values()) <= budget:
        return originals, None
    for quality in QUALITIES:
        encoded = {name: reencode(data, quality) for name, data in originals.items()}
        if sum(disk_size(len(b)) for b in encoded.values()) <= budget:
            return encoded, quality
    raise SystemExit(f"images do not fit in {budget} bytes even at JPEG quality {QUALITIES[-1]}")


def readme(counts: dict[str, int], quality: int | None, total: int) -> str:
    encoding = (
        f"re-encoded with Pillow at\n  JPEG quality {quality} (optimize=True), the highest of "
        f"{', '.join(map(str, QUALITIES))} that keeps the\n  folder within {BUDGET_BYTES:,} bytes"
        if quality
        else "copied byte for byte from the source (JPEG quality 90)"
    )
    return f"""# Flickr8k mini (bundled test and demo subset)

A small, deterministic subset of Flickr8k in the Karpathy format, bundled so tests, demos and the
quick start work without downloading anything: {counts["train"]:,} train, {counts["val"]:,} val
and {counts["test"]:,} test images, 5 human-written captions each.

- `dataset_flickr8k.json`: same schema as Karpathy's `dataset_flickr8k.json` (`dataset`, and
  `images[]` with `filename`, `split`, `imgid`, `sentids`, `sentences[]` with `raw`, `tokens`,
  `imgid`, `sentid`). `imgid` and `sentid` are renumbered 0..N-1 so that `imgid` is again the
  image's position in the list, as in the original file.
- `images/`: the selected JPEGs, 224x224 RGB, {encoding}.
- `SHA256SUMS`: checksums of the JSON and every image (`sha256sum -c SHA256SUMS` from this folder).

Selection rule: walk the Karpathy file in its own order and keep every 6th train image, every
10th val image and every 5th test image (positions 0, k, 2k, ... counted within each split).
No randomness. Size: the files take {total:,} bytes in 4 KiB blocks (`du -s` adds the
directories' own few blocks).

Made by `{COMMAND}`, which reads the full Flickr8k from
`../shared/data/flickr8k` beside the repository (`--source` to change it).

Credits, research use only:
- Flickr8k: M. Hodosh, P. Young, J. Hockenmaier, "Framing Image Description as a Ranking Task:
  Data, Models and Evaluation Metrics", Journal of Artificial Intelligence Research 47, 2013.
  The photos come from Flickr and remain their owners'; use them for research only.
- Karpathy split: A. Karpathy, L. Fei-Fei, "Deep Visual-Semantic Alignments for Generating Image
  Descriptions", CVPR 2015.
"""


def build(source: Path, out: Path, force: bool) -> None:
    spec = json.loads((source / "dataset_flickr8k.json").read_text())
    chosen = renumber(select_images(spec["images"]))
    counts = {split: sum(im["split"] == split for im in chosen) for split in STRIDES}
    originals = {im["filename"]: (source / "images" / im["filename"]).read_bytes() for im in chosen}
    images, quality = choose_images(originals)

    if out.exists():
        if not force:
            raise SystemExit(f"{out} exists; pass --force to rebuild it")
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    files = {"dataset_flickr8k.json": (json.dumps({**spec, "images": chosen}) + "\n").encode()}
    files.update({f"images/{name}": data for name, data in images.items()})
    for name, data in files.items():
        (out / name).write_bytes(data)
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()
    (out / "SHA256SUMS").write_bytes(sums)
    # README states the final size, which includes the README itself: one fixed-point step suffices
    # unless the byte count changes width, so iterate until stable
    total, text = 0, ""
    while True:
        text = readme(counts, quality, total)
        new_total = sum(disk_size(len(d)) for d in [*files.values(), sums, text.encode()])
        if new_total == total:
            break
        total = new_total
    (out / "README.md").write_text(text)
    if total > BUDGET_BYTES:
        raise SystemExit(f"{out} is {total} bytes, over the {BUDGET_BYTES} budget")
    print(f"wrote {out}: {counts}, quality={quality or 'original'}, {total:,} bytes", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the full Flickr8k folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the mini dataset")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    build(args.source, args.out, args.force)


if __name__ == "__main__":
    main()
