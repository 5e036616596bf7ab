"""Run a model's attention through the pointing game (``itm pointing-game``), by a chosen method.

Methods (``POINTING_METHODS``), each reading only what the model declares:

- ``attention``: the peak cell of the word's words-over-regions map (BSSAN's W2R, CAAN's and MLASM's
  word-to-region attention);
- ``objects``: the centre of the object proposal that attends most to the word (a map of objects
  over words, BSSAN's O2W) or that the word attends to most (words over objects, CAAN and MLASM
  over objects). Proposals follow object edges that a coarse grid cuts across.
- ``gradient``: the peak cell of a Grad-CAM map of the query "a WORD" on the photo: the score's
  gradient with respect to the region features times the features, summed over channels, ReLU.
  It needs no declared map, only the region grid.
- ``concept``: the peak cell of the word's concept map (``itm.features.concepts``: the backbone's own
  ImageNet classifier applied to each cell, for the classes the word names) where the word names
  one, of its words-over-regions attention otherwise. A concept map is evidence of where the photo
  shows the thing, not of why the matcher scored the pair.
- ``zero-shot``: as ``concept``, but a word whose own classes the photo does not show (or that names
  none) gets the map of the photo's likeliest classes related to it (``ConceptMaps.zero_shot_row``,
  after ConSE) before falling back to attention.
- ``attention+concept``: the word's attention map and its concept map, each scaled to 0..1, summed
  (the attention map alone where the word names no class).

A model without the map a method needs is a one-line error naming both.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from itm.data.types import Captions
from itm.devices import model_device, on_device
from itm.errors import DataError, ItmError
from itm.evaluation.engine import eval_mode
from itm.evaluation.pointing import ImageBoxes, PointingCase, fuse_grids, peakedness, point, point_at
from itm.models.base import Matcher
from itm.pipeline import PreparedSplit


def declared_map(model: Matcher, *shapes: tuple[str, str], method: str = "attention") -> str:
    """The name of the first map the model declares with one of the (rows, over) ``shapes``."""
    for shape in shapes:
        for name, spec in model.attention_specs().items():
            if (spec.rows, spec.over) == shape:
                return name
    wanted = " or ".join(f"{rows} over {over}" for rows, over in shapes)
    raise ItmError(f"model '{type(model).__name__}' declares no {wanted} attention: the pointing game's "
                   f"'{method}' method has nothing to read")



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
    """The image's captions' maps ``key``, each with its word axis first and real words only:
    (n_words, over) for a map of words over something, a map over words transposed."""
    caps = np.flatnonzero(split.caption_to_image == image)
    picked = split.captions.select(torch.as_tensor(caps))
    steps = int(picked.lengths.max())
    picked = Captions(picked.ids[:, :steps], picked.lengths, None if picked.vectors is None else picked.vectors[:, :steps])
    index = torch.full((len(caps),), image)
    device = model_device(model)
    streams = {k: v.to(device) for k, v in split.features.streams(model.image_streams, index).items()}
    with eval_mode(model):
        maps = model(streams, on_device(picked, device), return_attention=True).attention[key].float().cpu()
    if model.attention_specs()[key].over == "words":
        maps = maps.transpose(1, 2)  # (B, L, rows): one row per word
    return [maps[i, : int(picked.lengths[i])].numpy() for i in range(len(caps))]


def _peak_cell(row: np.ndarray, grid, size, photo: ImageBoxes, category: str, image_boxes) -> tuple:
    return point(row, grid, size, photo, category)


def _top_object(row: np.ndarray, grid, size, photo: ImageBoxes, category: str, image_boxes: np.ndarray) -> tuple:
    x1, y1, x2, y2 = image_boxes[int(np.argmax(row))]  # the word's object, in the photo's pixels
    return point_at(((x1 + x2) / 2, (y1 + y2) / 2), grid, size, photo, category)


def read_tokens(split: PreparedSplit, image: int) -> list[list[str]]:
    """The image's captions' words as the model reads them (cut at the encoded length)."""
    record = split.dataset.images[image]
    lengths = split.captions.lengths[torch.as_tensor(np.flatnonzero(split.caption_to_image == image))].tolist()
    return [tokens[:n] for tokens, n in zip(record.tokens, lengths, strict=True)]


def gradient_rows(model: Matcher, split: PreparedSplit, image: int, encode) -> list[np.ndarray]:
    """Per caption of the image, (n_words, D): for each word, the Grad-CAM map of the query "a WORD"
    on the photo: ReLU(sum over channels of region feature x d score / d region feature), per cell."""
    captions_read = read_tokens(split, image)
    words = sorted({w for tokens in captions_read for w in tokens})
    captions = encode([["a", w] for w in words])
    device = model_device(model)
    index = torch.full((len(words),), image)
    streams = {k: v.to(device).float() for k, v in split.features.streams(model.image_streams, index).items()}
    regions = streams["regions"].requires_grad_(True)  # (Q, D, M)
    with torch.enable_grad(), eval_mode(model):
        model(streams, on_device(captions, device)).score.sum().backward()
    cam = torch.relu((regions.grad * regions).sum(-1)).detach().cpu().numpy()  # (Q, D)
    row_of = {w: n for n, w in enumerate(words)}
    return [cam[[row_of[w] for w in tokens]] for tokens in captions_read]


def concept_rows(split: PreparedSplit, image: int, concepts, zero_shot: bool = False
                 ) -> list[tuple[np.ndarray, list[str]]]:
    """Per caption of the image: (n_words, D) each word's concept map over the image's cells, and each
    word's map source ("concept", "zero-shot" or "": none; ``ConceptMaps.maps_and_sources``)."""
    regions = split.features.regions[image]  # (D, C)
    return [concepts.maps_and_sources(regions, tokens, zero_shot) for tokens in read_tokens(split, image)]


def unit_range(rows: np.ndarray) -> np.ndarray:
    """(n, D) -> each row scaled to 0..1 (a flat row to 0)."""
    low, high = rows.min(1, keepdims=True), rows.max(1, keepdims=True)
    return (rows - low) / np.maximum(high - low, 1e-12)


def concept_first(attention: np.ndarray, concept: np.ndarray) -> np.ndarray:
    """(n, D) each: a word's concept map where it names a class, its attention map otherwise (0..1)."""
    named = np.abs(concept).max(1, keepdims=True) > 0  # (n, 1); a word naming no class has a zero row
    return np.where(named, unit_range(concept), unit_range(attention))


def concept_sum(attention: np.ndarray, concept: np.ndarray) -> np.ndarray:
    """(n, D) each: attention and concept maps, each scaled to 0..1, summed (attention alone: no class)."""
    named = np.abs(concept).max(1, keepdims=True) > 0
    return unit_range(attention) + np.where(named, unit_range(concept), 0.0)


# method -> (the maps it reads, in order of preference; how a word's row becomes a pointing case);
# "gradient" reads no declared map: any model that reads the region grid
POINTING_METHODS = {
    "attention": ((("words", "regions"),), _peak_cell),
    "objects": ((("objects", "words"), ("words", "objects")), _top_object),
    "gradient": ((), _peak_cell),
    "concept": ((("words", "regions"),), _peak_cell),
    "attention+concept": ((("words", "regions"),), _peak_cell),
    "zero-shot": ((("words", "regions"),), _peak_cell),
}
# the concept methods: how a word's attention and concept maps combine
COMBINE_CONCEPT = {"concept": concept_first, "attention+concept": concept_sum, "zero-shot": concept_first}


def pointing_cases(model: Matcher, split: PreparedSplit, boxes: dict[str, ImageBoxes],
                   words: dict[str, str], method: str = "attention",
                   other_sizes: tuple[PreparedSplit, ...] = (), encode=None, concepts=None) -> list[PointingCase]:
    """Every (image, caption, word) whose word names a category boxed in the image, pointed at by
    ``method`` (``POINTING_METHODS``). ``other_sizes``: the same photos extracted at other sizes; a
    word's maps over all the grids are fused into one over the finest (``fuse_grids``; every method
    with a map over the grid, so not ``objects``).
    ``encode``: token lists -> the model's Captions (the gradient method's queries); ``concepts``: the
    backbone's ``ConceptMaps`` (the concept methods need them; with any other method they mark each case
    by whether its word has a concept map, ``PointingCase.concept_map``)."""
    if method not in POINTING_METHODS:
        raise ItmError(f"pointing method '{method}': not one of {', '.join(POINTING_METHODS)}")
    if other_sizes and method == "objects":
        raise ItmError(f"pointing method '{method}': fusing grid sizes applies to maps over the grid only")
    shapes, locate = POINTING_METHODS[method]
    key = declared_map(model, *shapes, method=method) if shapes else None
    if key is None and "regions" not in model.image_streams:
        raise ItmError(f"model '{type(model).__name__}' reads no region grid: the gradient method has no map")
    combine = COMBINE_CONCEPT.get(method)
    if combine and concepts is None:
        raise ItmError(f"pointing method '{method}' needs the backbone's concept maps")

    zero_shot = method == "zero-shot"

    def maps_of(s: PreparedSplit, i: int) -> tuple[list[np.ndarray], list[list[str]], list[list[bool | None]]]:
        """Per caption: the words' rows the method points with, each word's map source (the concept
        methods: "concept", "zero-shot" or "attention"; "" for the others), and whether each word has
        a concept map (None without ``concepts``)."""
        concept = concept_rows(s, i, concepts, zero_shot) if concepts is not None else None
        named = [[source == "concept" for source in sources] for _, sources in concept] if concept else None
        if not combine:
            rows = attention_rows(model, s, i, key) if key else gradient_rows(model, s, i, encode)
            return rows, [[""] * len(r) for r in rows], named or [[None] * len(r) for r in rows]
        rows = [combine(att, con) for att, (con, _) in zip(attention_rows(model, s, i, key), concept, strict=True)]
        return rows, [[source or "attention" for source in sources] for _, sources in concept], named

    splits = (split, *other_sizes)
    grids = [s.features.grid_shape for s in splits]
    if None in grids:
        raise ItmError("pointing game: the features carry no region grid (SCAN precomp regions have none)")
    if method == "objects" and split.features.boxes is None:
        raise ItmError("pointing game: the features carry no object boxes (SCAN precomp has none)")
    cases = []
    for i, record in enumerate(split.dataset.images):
        if record.filename not in boxes:
            continue
        photo = boxes[record.filename]
        size = photo_size(record.path)
        image_boxes = None if split.features.boxes is None else split.features.boxes[i].float().numpy()  # (P, 4)
        per_size = [maps_of(s, i) for s in splits]
        maps = [rows for rows, _, _ in per_size]  # per size: per caption (n_words, over)
        _, sources, named = per_size[0]  # per caption, per word: the trained grid's concept gate decides
        for c, tokens in enumerate(record.tokens):
            for position, word in enumerate(tokens[: len(maps[0][c])]):
                category = words.get(word)
                if category not in photo.boxes:
                    continue
                rows = [per_size[c][position] for per_size in maps]
                row, grid = fuse_grids(rows, grids) if len(splits) > 1 else (rows[0], grids[0])
                cell, hit, random_hit, centre_hit = locate(row, grid, size, photo, category, image_boxes)
                cases.append(PointingCase(record.filename, c, position, word, category, cell, hit,
                                          random_hit, centre_hit, peakedness(row), sources[c][position],
                                          named[c][position]))
    return cases
