"""The pointing game: does a word's attention peak on the object the word names?

For every caption word that names an object category present in its image (``WORD_TO_CATEGORY``,
extendable), take the grid cell of the word's highest attention over the image regions and count a
hit when that cell's centre lies inside a box of the category. Two baselines come from the same
cases: a cell drawn uniformly at random (its exact expected hit rate, no sampling) and always the
centre cell. Pure functions over arrays; the model is run by ``itm.evaluation.grounding``.

Grid geometry: features are extracted from the photo resized to a square, so the grid's gh x gw
cells tile the whole photo, stretched: cell (r, c) covers x in [c/gw, (c+1)/gw) of its width and
y in [r/gh, (r+1)/gh) of its height.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from itm.errors import DataError

# COCO category names that are single words map to themselves (and their plurals); these are the
# other words of captions that name a COCO category. Extend with a JSON file {"word": "category"}.
SYNONYMS = {
    "man": "person", "men": "person", "woman": "person", "women": "person", "people": "person",
    "boy": "person", "boys": "person", "girl": "person", "girls": "person", "child": "person",
    "children": "person", "kid": "person", "kids": "person", "guy": "person", "guys": "person",
    "lady": "person", "ladies": "person", "player": "person", "players": "person", "persons": "person",
    "skier": "person", "surfer": "person", "skateboarder": "person", "baby": "person", "adults": "person",
    "table": "dining table", "tables": "dining table", "bike": "bicycle", "bikes": "bicycle",
    "motorbike": "motorcycle", "plane": "airplane", "jet": "airplane", "aeroplane": "airplane",
    "ball": "sports ball", "phone": "cell phone", "cellphone": "cell phone", "television": "tv",
    "sofa": "couch", "computer": "laptop", "doughnut": "donut", "doughnuts": "donut", "racket": "tennis racket",
    "racquet": "tennis racket", "bat": "baseball bat", "glove": "baseball glove", "plant": "potted plant",
    "glass": "wine glass", "hydrant": "fire hydrant", "teddy": "teddy bear", "puppy": "dog", "kitten": "cat",
    "motorcycles": "motorcycle", "buses": "bus", "ski": "skis", "skiis": "skis", "hotdog": "hot dog",
}


def plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def word_table(categories: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """Word -> category name: single-word category names and their plurals, the synonyms, ``extra``."""
    table = {}
    for name in categories:
        if " " not in name:
            table[name] = name
            table[plural(name)] = name
    table.update({w: c for w, c in SYNONYMS.items() if c in categories})
    table.update(extra or {})
    return table


def read_synonyms(path: str | Path) -> dict[str, str]:
    """A user's {"word": "category"} JSON file; one-line DataError naming it otherwise."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"synonyms file {path}: cannot read it as JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise DataError(f"synonyms file {path}: expected an object of word -> category name strings")
    return {k.lower(): v for k, v in raw.items()}


@dataclass
class ImageBoxes:
    """One photo's boxes, by category, in the pixels of the photo as it was annotated."""

    width: int  # the annotated (original) size
    height: int
    boxes: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)  # x1, y1, x2, y2


def read_coco_boxes(path: str | Path) -> tuple[dict[str, ImageBoxes], list[str]]:
    """COCO instances JSON -> {file name: ImageBoxes}, category names. Crowd boxes are left out."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        names = {int(c["id"]): str(c["name"]) for c in raw["categories"]}
        images = {int(im["id"]): (str(im["file_name"]), int(im["width"]), int(im["height"])) for im in raw["images"]}
        out = {name: ImageBoxes(w, h) for name, w, h in images.values()}
        for ann in raw["annotations"]:
            if ann.get("iscrowd"):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            name, _, _ = images[int(ann["image_id"])]
            out[name].boxes.setdefault(names[int(ann["category_id"])], []).append((x, y, x + w, y + h))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"boxes file {path}: cannot read it as JSON ({exc.__class__.__name__})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"boxes file {path}: not a COCO instances file ({exc.__class__.__name__}: {exc})") from None
    return out, sorted(set(names.values()))


def cell_centres(grid: tuple[int, int], width: float, height: float) -> np.ndarray:
    """(gh * gw, 2) x, y centres of the grid cells (row-major) in a width x height photo."""
    gh, gw = grid
    ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh * height, (np.arange(gw) + 0.5) / gw * width, indexing="ij")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def inside_any(points: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """(N,) bool: which points lie inside at least one box (edges included)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (K, 4)
    x, y = points[:, :1], points[:, 1:]
    return ((x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3])).any(axis=1)


def scaled(boxes: list[tuple[float, float, float, float]], sx: float, sy: float):
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in boxes]


@dataclass
class PointingCase:
    """One word that names a category present in its image."""

    image: str
    caption: int  # index of the caption among the image's
    position: int  # the word's index in the caption
    word: str
    category: str
    cell: int  # the most attended cell
    hit: bool
    random_hit: float  # the expected hit of a uniformly drawn cell
    centre_hit: bool
    peak: float = float("nan")  # how peaked the word's map was (``peakedness``); nan where not measured
    source: str = ""  # the concept methods: the map the point came from ("concept", "zero-shot", "attention")
    # whether the word has a concept map on its photo (its classes seen there); None where not looked up.
    # The words without one are where a model's own attention has no classifier to lean on
    concept_map: bool | None = None


def peakedness(row: np.ndarray) -> float:
    """A map's maximum over its mean: for a distribution over D cells, max x D (the pictures' label
    `peak Nx uniform`); nan for a map with no positive mass."""
    mean = float(np.mean(row))
    return float(np.max(row)) / mean if mean > 0 else float("nan")


def point(attention_row: np.ndarray, grid: tuple[int, int], photo_size: tuple[int, int], boxes: ImageBoxes,
          category: str) -> tuple[int, bool, float, bool]:
    """(peak cell, hit, random-cell expected hit, centre-cell hit) for one word's attention (D,) over
    the grid of a photo of ``photo_size`` (W, H) whose boxes are in the annotated size's pixels."""
    width, height = photo_size
    category_boxes = scaled(boxes.boxes[category], width / boxes.width, height / boxes.height)
    inside = inside_any(cell_centres(grid, width, height), category_boxes)  # (D,)
    if attention_row.shape != inside.shape:
        raise ValueError(f"attention over {attention_row.shape[0]} cells, grid {grid} has {inside.size}")
    peak = int(np.argmax(attention_row))
    centre = (grid[0] // 2) * grid[1] + grid[1] // 2
    return peak, bool(inside[peak]), float(inside.mean()), bool(inside[centre])


BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def photo_bootstrap(cases: list[PointingCase], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """95% intervals (percent) of the hit rate and of the paired difference hit - centre cell, by a
    bootstrap over photos: a photo's cases (its captions' words) are not independent, so photos are
    drawn with replacement and carry all their cases with them."""
    photos = sorted({c.image for c in cases})
    where = {name: i for i, name in enumerate(photos)}
    n, hits, centre = (np.zeros(len(photos)) for _ in range(3))  # per photo: cases, hits, centre hits
    for case in cases:
        i = where[case.image]
        n[i] += 1
        hits[i] += case.hit
        centre[i] += case.centre_hit
    draws = np.random.default_rng(seed).integers(0, len(photos), (samples, len(photos)))  # (S, photos)
    total = n[draws].sum(1)
    hit_rate = 100 * hits[draws].sum(1) / total
    difference = 100 * (hits[draws].sum(1) - centre[draws].sum(1)) / total
    tail = 100 * (1 - CONFIDENCE) / 2

    def interval(values: np.ndarray) -> list[float]:
        return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]

    return {"photos": len(photos), "samples": samples, "confidence": CONFIDENCE,
            "hit": interval(hit_rate), "hit_minus_centre": 100 * float((hits.sum() - centre.sum()) / n.sum()),
            "hit_minus_centre_interval": interval(difference)}


CASE_FIELDS = ("image", "caption", "position", "word", "category", "cell", "hit", "random_hit", "centre_hit",
               "concept_map")


def cases_record(cases: list[PointingCase]) -> list[list]:
    """The cases as rows of ``CASE_FIELDS`` (the ``cases`` of ``--json``, for paired comparisons)."""
    return [[getattr(c, name) for name in CASE_FIELDS] for c in cases]


def cases_from_record(rows: list[list]) -> list[PointingCase]:
    return [PointingCase(**dict(zip(CASE_FIELDS, row, strict=True))) for row in rows]


def paired_difference(before: list[PointingCase], after: list[PointingCase], samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = 0) -> dict:
    """Two pointers on the same cases (two checkpoints, matched by photo, caption and word position):
    the hit rate of ``after`` minus that of ``before``, in points, with its 95% interval by the photo
    bootstrap (``photo_bootstrap`` with ``before``'s hits in the place of the centre cell's)."""
    key = {(c.image, c.caption, c.position): c for c in before}
    if len(key) != len(after) or any((c.image, c.caption, c.position) not in key for c in after):
        raise DataError("pointing game: the two runs' cases differ (another data set, boxes or vocabulary?)")
    paired = [dataclasses.replace(c, centre_hit=key[(c.image, c.caption, c.position)].hit) for c in after]
    boot = photo_bootstrap(paired, samples, seed)
    return {"cases": len(paired), "photos": boot["photos"], "difference": boot["hit_minus_centre"],
            "interval": boot["hit_minus_centre_interval"]}


def cases_of_run(path: str | Path) -> list[PointingCase]:
    """The cases an ``itm pointing-game --json`` file keeps; a DataError naming the file when it keeps none."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if "cases" not in record:
        raise DataError(f"{path} holds no cases (written before itm pointing-game kept them)")
    return cases_from_record(record["cases"])


def comparison_groups(cases: list[PointingCase]) -> dict[str, list[PointingCase]]:
    """The groups runs are compared over (scripts/pointing_compare.py, pointing_seeds.py): all cases, the
    two halves of the photos, and the words with and without a concept map (where the split is known)."""
    named = {"with a concept map": [c for c in cases if c.concept_map is True],
             "without": [c for c in cases if c.concept_map is False]}
    return {"overall": cases, **{f"half {k}": v for k, v in photo_halves(cases).items()},
            **{k: v for k, v in named.items() if v}}


def photo_halves(cases: list[PointingCase]) -> dict[str, list[PointingCase]]:
    """The cases split in two by photo (photos in name order, alternately): a lever that helps only
    one half is noise."""
    order = {name: i for i, name in enumerate(sorted({c.image for c in cases}))}
    return {"a": [c for c in cases if order[c.image] % 2 == 0], "b": [c for c in cases if order[c.image] % 2 == 1]}


def fuse_grids(rows: list[np.ndarray], grids: list[tuple[int, int]]) -> tuple[np.ndarray, tuple[int, int]]:
    """One word's maps over several grids of the same photo (row k: (gh_k * gw_k,)) as one map over the
    finest grid: each map as a density (its share per cell times the cell count), read at the finest
    cells' centres (the coarse cell holding each), and averaged. Returns (map (D,), finest grid)."""
    finest = max(grids, key=lambda g: g[0] * g[1])
    gh, gw = finest
    ys, xs = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw  # fine cell centres in [0, 1)
    fused = np.zeros((gh, gw))
    for row, (h, w) in zip(rows, grids, strict=True):
        density = np.asarray(row, dtype=np.float64).reshape(h, w) / max(float(np.sum(row)), 1e-12) * (h * w)
        fused += density[np.floor(ys * h).astype(int)][:, np.floor(xs * w).astype(int)]
    return fused.reshape(-1) / len(rows), finest


def point_at(xy: tuple[float, float], grid: tuple[int, int], photo_size: tuple[int, int], boxes: ImageBoxes,
             category: str) -> tuple[int, bool, float, bool]:
    """``point`` for a method that names a spot (x, y in the shown photo's pixels) instead of a cell
    (an object's box centre): the hit is the spot's; the cell is the one holding it (for pictures);
    the baselines are the grid's, as for every method."""
    width, height = photo_size
    category_boxes = scaled(boxes.boxes[category], width / boxes.width, height / boxes.height)
    inside = inside_any(cell_centres(grid, width, height), category_boxes)  # (D,)
    gh, gw = grid
    row = min(int(xy[1] / height * gh), gh - 1)
    col = min(int(xy[0] / width * gw), gw - 1)
    centre = (gh // 2) * gw + gw // 2
    hit = bool(inside_any(np.asarray([xy], dtype=np.float64), category_boxes)[0])
    return row * gw + col, hit, float(inside.mean()), bool(inside[centre])


PEAK_BANDS = ("low", "middle", "high")


def by_peak(cases: list[PointingCase]) -> dict:
    """The cases in thirds by how peaked their maps were, with each third's hit and centre-cell rates
    (percent): whether a sharper map is more often right, i.e. whether a picture's `peak Nx uniform`
    is evidence of anything. Empty when fewer than three cases carry a peak."""
    measured = sorted((c for c in cases if np.isfinite(c.peak)), key=lambda c: c.peak)
    if len(measured) < len(PEAK_BANDS):
        return {}
    bands = np.array_split(np.arange(len(measured)), len(PEAK_BANDS))
    out = {}
    for name, band in zip(PEAK_BANDS, bands, strict=True):
        group = [measured[i] for i in band]
        out[name] = {"cases": len(group), "peak": [group[0].peak, group[-1].peak],
                     "hit": 100 * sum(c.hit for c in group) / len(group),
                     "centre_cell": 100 * sum(c.centre_hit for c in group) / len(group)}
    return out


def summarise(cases: list[PointingCase], min_cases: int = 5, seen: set[str] | None = None) -> dict:
    """Hit rates overall and per category (in %), beside both baselines; the ``--json`` dict.
    ``seen``: the model's training words; the cases are then also split by whether their word is one
    (``by_vocabulary``: does a word read through the word table point as well as a trained one?).
    Cases that record their map's ``source`` are split by it too (``by_map``), and cases that record
    whether their word has a concept map by that (``by_concept_map``: "with", "without")."""
    def rates(group: list[PointingCase]) -> dict:
        n = len(group)
        # a box holding no cell centre cannot be hit by any attention on this grid
        reachable = sum(c.random_hit > 0 for c in group)
        return {"cases": n, "photos": len({c.image for c in group}), "hit": 100 * sum(c.hit for c in group) / n,
                "random_cell": 100 * sum(c.random_hit for c in group) / n,
                "centre_cell": 100 * sum(c.centre_hit for c in group) / n,
                "reachable": 100 * reachable / n, "reachable_cases": reachable}

    if not cases:
        raise DataError("pointing game: no caption word names a category boxed in its image (check the boxes "
                        "file's file names and the word table)")
    by_category = defaultdict(list)
    for case in cases:
        by_category[case.category].append(case)
    per_category = {name: rates(group) for name, group in sorted(by_category.items())}
    zero = sorted(name for name, r in per_category.items() if r["cases"] >= min_cases and r["hit"] == 0)
    unreachable = sorted(name for name in zero if per_category[name]["reachable"] == 0)
    # the explanations target: no category with min_cases cases some cell could hit left at 0%
    reachable_zero = [name for name in zero if per_category[name]["reachable_cases"] >= min_cases]
    # a category's cases are its photos' captions: five captions of one photo can fill min_cases
    photos_at_zero = len({c.image for c in cases if c.category in zero})
    def with_intervals(groups: dict[str, list[PointingCase]]) -> dict:
        return {name: {**rates(group), "bootstrap": photo_bootstrap(group)} for name, group in groups.items() if group}

    halves = with_intervals(photo_halves(cases))
    by_vocabulary = {} if seen is None else with_intervals(
        {"seen": [c for c in cases if c.word in seen], "unseen": [c for c in cases if c.word not in seen]})
    # which map each point came from: how far each kind of panel of the concept sheet can be trusted
    by_map = with_intervals({name: [c for c in cases if c.source == name]
                             for name in sorted({c.source for c in cases if c.source})})
    by_concept_map = with_intervals({"with": [c for c in cases if c.concept_map is True],
                                     "without": [c for c in cases if c.concept_map is False]})
    return {"overall": rates(cases), "bootstrap": photo_bootstrap(cases), "halves": halves,
            "per_category": per_category, "categories_at_zero": zero,
            "photos_at_zero": photos_at_zero, "unreachable_at_zero": unreachable,
            "reachable_at_zero": reachable_zero, "min_cases": min_cases, "by_peak": by_peak(cases),
            "by_vocabulary": by_vocabulary, "by_map": by_map, "by_concept_map": by_concept_map}


# The evidence a checkpoint can carry about its own attention (``itm pointing-game --record``), read by
# the explanation sheet to label the attention panels it draws (``itm.viz.explain.attention_label``).
EVIDENCE_KEY = "pointing_evidence"


def attention_evidence(result: dict, data: str, grid: list[int], command: str) -> dict:
    """The compact record of an ``--method attention`` pointing game kept in a checkpoint: overall
    and per concept-map group, hit - centre and its photo-bootstrap interval; where and how measured."""
    def group(summary: dict, boot: dict) -> dict:
        return {"cases": summary["cases"], "photos": boot["photos"], "hit": round(summary["hit"], 2),
                "centre_cell": round(summary["centre_cell"], 2),
                "hit_minus_centre": round(boot["hit_minus_centre"], 2),
                "interval": [round(v, 2) for v in boot["hit_minus_centre_interval"]]}

    groups = {name: group(g, g["bootstrap"]) for name, g in result.get("by_concept_map", {}).items()}
    return {"method": "attention", "data": data, "grid": list(grid), "command": command,
            "overall": group(result["overall"], result["bootstrap"]),
            "with_concept_map": groups.get("with"), "without_concept_map": groups.get("without")}
