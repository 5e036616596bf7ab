"""Tiny synthetic retrieval problems for end-to-end tests (no downloads, seconds to train).

- ``synthetic_split``: a ready ``PreparedSplit`` (features already "extracted"). Every image shows two
  of ``n_concepts`` concepts: the concepts' fixed prototype vectors sit at random grid cells of the
  region map and in random object slots, plus noise; every caption names its image's two
  concept words among filler words, with varied lengths. A matcher CAN learn to match: the concept
  words must attend to the cells carrying their prototypes.
- ``synthetic_karpathy_dir``: a real Karpathy-format folder (``dataset_synth.json`` + small PNG and
  JPEG images of coloured shapes, captions naming colour and shape) for CLI tests that run feature
  extraction.
- ``random_captions``: random word ids at Flickr8k test's caption lengths, for benchmarks (whose cost
  depends on shapes, not values).

Prototypes depend on ``concept_seed`` only, so splits drawn with different ``seed`` values share
concepts (a held-out split of the same problem); pass the train split's ``vocab`` when encoding one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from itm.data.encode import encode_captions
from itm.data.tokenize import tokenize
from itm.data.types import Captions, Dataset, ImageFeatures, ImageRecord
from itm.data.vocab import Vocab

CONCEPT_WORDS = ("dog", "cat", "tree", "car", "boat", "horse", "ball", "bike", "kite", "bird", "chair", "cup",
                 "train", "shoe", "lamp", "fish")
FILLERS = ("a", "the", "photo", "of", "with", "and", "near", "some", "picture", "shows", "in", "scene")


def _concept_names(n_concepts: int) -> list[str]:
    if n_concepts <= len(CONCEPT_WORDS):
        return list(CONCEPT_WORDS[:n_concepts])
    return [f"concept{k}" for k in range(n_concepts)]


def synthetic_split(n_images: int, captions_per_image: int = 5, n_concepts: int = 8,
                    grid: tuple[int, int] = (3, 3), region_dim: int = 16, n_objects: int = 4,
                    vocab: Vocab | None = None, seed: int = 0, object_dim: int | None = None,
                    noise: float = 0.3, max_words: int = 30, concept_seed: int = 1234):
    """(PreparedSplit, Vocab): ``n_images`` images x ``captions_per_image`` captions.

    Regions (N, gh*gw, region_dim), objects (N, n_objects, object_dim or region_dim), float32; boxes
    are the grid cells the objects were put in (pixels of a 32-px cell). The vocabulary is built from
    these captions unless ``vocab`` is given (then unseen words map to <unk>).
    """
    from itm.pipeline import PreparedSplit  # late: pipeline imports the model registry

    if n_images < 1 or captions_per_image < 1 or n_concepts < 2:
        raise ValueError("synthetic_split needs n_images >= 1, captions_per_image >= 1, n_concepts >= 2")
    gh, gw = grid
    cells = gh * gw
    object_dim = object_dim or region_dim
    if cells < 2 or n_objects < 2:
        raise ValueError("synthetic_split needs at least 2 grid cells and 2 objects (two concepts per image)")
    proto_gen = torch.Generator().manual_seed(concept_seed)
    region_protos = torch.randn(n_concepts, region_dim, generator=proto_gen)  # (C, M)
    object_protos = torch.randn(n_concepts, object_dim, generator=proto_gen)  # (C, Q)
    names = _concept_names(n_concepts)

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    regions = noise * torch.randn(n_images, cells, region_dim, generator=gen)  # (N, D, M)
    objects = noise * torch.randn(n_images, n_objects, object_dim, generator=gen)  # (N, P, Q)
    boxes = torch.zeros(n_images, n_objects, 4)
    records = []
    for i in range(n_images):
        concepts = rng.choice(n_concepts, size=2, replace=False)
        for c, cell in zip(concepts, rng.choice(cells, size=2, replace=False), strict=True):
            regions[i, cell] += region_protos[c]
        slots = rng.permutation(n_objects)
        for c, slot in zip(concepts, slots[:2], strict=True):
            objects[i, slot] += object_protos[c]
        for slot in range(n_objects):
            cell = int(rng.integers(cells))
            y, x = divmod(cell, gw)
            boxes[i, slot] = torch.tensor([32.0 * x, 32.0 * y, 32.0 * (x + 1), 32.0 * (y + 1)])
        captions, token_lists = [], []
        for _ in range(captions_per_image):
            fillers = [str(w) for w in rng.choice(FILLERS, size=int(rng.integers(0, 6)))]
            tokens = fillers + [names[c] for c in concepts]
            tokens = [tokens[k] for k in rng.permutation(len(tokens))]  # lengths 2..7, words anywhere
            token_lists.append(tokens)
            captions.append(" ".join(token_lists[-1]))
        records.append(ImageRecord(f"synthetic_{seed}_{i}.png", None, "train", captions, token_lists))
    dataset = Dataset("synthetic", Path("."), records)
    tokens, owner = dataset.caption_tokens()
    vocab = vocab if vocab is not None else Vocab.build(tokens)
    features = ImageFeatures(regions, objects, boxes, (gh, gw),
                             {"backbone": "synthetic", "grid": [gh, gw], "num_objects": n_objects})
    captions = encode_captions(tokens, vocab, max_words)
    return PreparedSplit(dataset, features, captions, owner), vocab


# -- a Karpathy-format folder of drawn images ------------------------------------------------------

# Token counts of the 5,000 Flickr8k Karpathy test captions (cut at 30; mean 10.9), measured with
# itm.data.load_dataset("../shared/data/flickr8k").split("test").caption_tokens()
FLICKR8K_TEST_LENGTHS = {2: 3, 3: 25, 4: 55, 5: 126, 6: 337, 7: 407, 8: 445, 9: 540, 10: 584, 11: 536, 12: 457,
                         13: 370, 14: 315, 15: 219, 16: 207, 17: 121, 18: 96, 19: 56, 20: 35, 21: 23, 22: 14,
                         23: 11, 24: 4, 25: 2, 26: 4, 28: 3, 29: 3, 30: 2}


def random_captions(n: int, vocab_size: int, gen: torch.Generator,
                    length_counts: dict[int, int] | None = None) -> Captions:
    """``n`` captions of random word ids for benchmarks: the cost of scoring or training depends on
    the captions' shapes, not their words.

    Lengths are drawn (with replacement, from ``gen``) with the weights ``length_counts`` (length ->
    count; None: Flickr8k test's, ``FLICKR8K_TEST_LENGTHS``). Ids are uniform in [2, vocab_size) at
    real positions (never <pad> or <unk>), 0 (<pad>) after each caption's length; the width is the
    longest drawn length.
    """
    counts = FLICKR8K_TEST_LENGTHS if length_counts is None else length_counts
    values = torch.tensor(list(counts))  # (K,) the lengths
    weights = torch.tensor(list(counts.values()), dtype=torch.float)  # (K,)
    lengths = values[torch.multinomial(weights, n, replacement=True, generator=gen)]  # (n,)
    width = int(lengths.max())
    ids = torch.randint(2, vocab_size, (n, width), generator=gen)  # (n, L)
    ids = ids * (torch.arange(width)[None] < lengths[:, None])  # (n, L): zero padding
    return Captions(ids, lengths)


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30),
           "purple": (140, 40, 170), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}
TEMPLATES = (
    "a {colour} {shape} on a {bg} background",
    "a {colour} {shape}",
    "there is a {colour} {shape} in the picture",
    "a picture of a {colour} {shape} on {bg}",
    "one {colour} {shape} drawn on a {bg} background",
)


def _draw(size: int, colour: tuple[int, int, int], shape: str, bg: tuple[int, int, int], rng):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    extent = int(rng.integers(size // 3, size // 2 + 1))
    x0 = int(rng.integers(0, size - extent))
    y0 = int(rng.integers(0, size - extent))
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=colour)
    return img


def synthetic_karpathy_dir(root: str | Path, n_train: int = 24, n_val: int = 8, n_test: int = 8,
                           size: int = 64, seed: int = 0, captions_per_image: int = 5) -> Path:
    """Write ``root/dataset_synth.json`` and ``root/images/*.png|jpg``: one coloured shape per image on
    a plain background; captions name colour, shape and background. Returns ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    entries = []
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        colour = colours[int(rng.integers(len(colours)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        img = _draw(size, COLOURS[colour], shape, BACKGROUNDS[bg], rng)
        filename = f"synth_{i:04d}.{'png' if i % 2 else 'jpg'}"
        img.save(root / "images" / filename, **({"quality": 90} if filename.endswith("jpg") else {}))
        sentences = []
        for j in range(captions_per_image):
            raw = TEMPLATES[j % len(TEMPLATES)].format(colour=colour, shape=shape, bg=bg)
            sentences.append({"raw": raw, "tokens": tokenize(raw), "imgid": i,
                              "sentid": i * captions_per_image + j})
        entries.append({"filename": filename, "imgid": i, "split": split, "sentences": sentences,
                        "sentids": [s["sentid"] for s in sentences]})
    (root / "dataset_synth.json").write_text(json.dumps({"dataset": "synth", "images": entries}),
                                             encoding="utf-8")
    return root
