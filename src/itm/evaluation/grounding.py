"""Run a model's words-over-regions attention through the pointing game (``itm pointing-game``).

Any registered model that declares a map with rows "words" over "regions" can be measured (BSSAN's
W2R, CAAN's and MLASM's word-to-region attention); one without is a one-line error.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from itm.data.types import Captions
from itm.devices import model_device, on_device
from itm.errors import DataError, ItmError
from itm.evaluation.engine import eval_mode
from itm.evaluation.pointing import ImageBoxes, PointingCase, point
from itm.models.base import Matcher
from itm.pipeline import PreparedSplit


def word_region_map(model: Matcher) -> str:
    """The name of the model's words-over-regions attention map."""
    for name, spec in model.attention_specs().items():
        if (spec.rows, spec.over) == ("words", "regions"):
            return name
    raise ItmError(f"model '{type(model).__name__}' declares no words-over-regions attention: "
                   "the pointing game has nothing to measure")


def photo_size(path) -> tuple[int, int]:
    """(W, H) of the photo as shown (after its EXIF rotation), read from the header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            rotated = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image's size ({exc.__class__.__name__})") from None
    return (h, w) if rotated else (w, h)


@torch.inference_mode()
def attention_rows(model: Matcher, split: PreparedSplit, image: int, key: str) -> list[np.ndarray]:
    """The image's captions' words-over-regions maps, each (n_words, D), real words only."""
    caps = np.flatnonzero(split.caption_to_image == image)
    picked = split.captions.select(torch.as_tensor(caps))
    steps = int(picked.lengths.max())
    picked = Captions(picked.ids[:, :steps], picked.lengths, None if picked.vectors is None else picked.vectors[:, :steps])
    index = torch.full((len(caps),), image)
    device = model_device(model)
    streams = {k: v.to(device) for k, v in split.features.streams(model.image_streams, index).items()}
    with eval_mode(model):
        maps = model(streams, on_device(picked, device), return_attention=True).attention[key].float().cpu()
    return [maps[i, : int(picked.lengths[i])].numpy() for i in range(len(caps))]


def pointing_cases(model: Matcher, split: PreparedSplit, boxes: dict[str, ImageBoxes],
                   words: dict[str, str]) -> list[PointingCase]:
    """Every (image, caption, word) whose word names a category boxed in the image, pointed at."""
    key = word_region_map(model)
    grid = split.features.grid_shape
    if grid is None:
        raise ItmError("pointing game: the features carry no region grid (SCAN precomp regions have none)")
    cases = []
    for i, record in enumerate(split.dataset.images):
        if record.filename not in boxes:
            continue
        photo = boxes[record.filename]
        size = photo_size(record.path)
        for c, (tokens, rows) in enumerate(zip(record.tokens, attention_rows(model, split, i, key), strict=True)):
            for position, (word, row) in enumerate(zip(tokens, rows, strict=False)):
                category = words.get(word)
                if category in photo.boxes:
                    cell, hit, random_hit, centre_hit = point(row, grid, size, photo, category)
                    cases.append(PointingCase(record.filename, c, position, word, category, cell, hit,
                                              random_hit, centre_hit))
    return cases
