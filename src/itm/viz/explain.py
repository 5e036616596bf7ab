"""From a model and prepared data to the paper's pictures (section V-D, Fig. 5-8).

The drawing functions in ``attention`` and ``sheets`` are pure; this module runs the model to get
the real attention and rankings, then calls them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from itm.checkpoint import LoadedCheckpoint
from itm.data.function_words import content_positions
from itm.data.types import Captions, ImageFeatures
from itm.data.vocab import Vocab
from itm.data.word_report import WordReport
from itm.devices import model_device, on_device
from itm.errors import DataError, ItmError
from itm.evaluation.pointing import EVIDENCE_KEY
from itm.features.images import load_image
from itm.models.base import AttentionSpec, Matcher, PairScores
from itm.viz.attention import object_word_figure, word_attention_figure, word_weights_figure
from itm.viz.sheets import captions_sheet, images_sheet


@dataclass
class PairExplanation:
    """A pair's score, its parts and its attention, for the real words only."""

    words: list[str]
    score: float
    parts: dict[str, float]
    attention: dict[str, np.ndarray]  # name -> (rows, over), real words only
    specs: dict[str, AttentionSpec]  # what each map is (the model's declaration)
    unread: frozenset[str] = frozenset()  # words the model could not read: no map is drawn for them
    # words read through the word table or by spelling, never in training: their attention is a guess
    # (unseen words point no better than the photo's centre, docs/explain.md)
    untrained: frozenset[str] = frozenset()


def check_known_words(tokens: list[str], vocab: Vocab, caption: str) -> WordReport:
    """How the model reads the caption's words; a one-line ItmError when it can read none of them."""
    if not tokens:
        raise ItmError(f"caption {caption!r} has no words")
    words = vocab.report([tokens])
    if vocab.words and set(tokens) <= set(words.unreadable):
        raise ItmError(f"caption {caption!r}: the model can read none of its words ({', '.join(words.unreadable)})")
    return words


@torch.inference_mode()
def explain_pair(model: Matcher, features: ImageFeatures, image_index: int, captions: Captions,
                 caption_index: int, tokens: list[str]) -> PairExplanation:
    """Run one pair through the model's forward (on the model's device) with attention maps returned."""
    model.eval()
    device = model_device(model)
    one = captions.select(slice(caption_index, caption_index + 1))
    n = int(one.lengths[0])
    one = Captions(one.ids[:, :n], one.lengths, None if one.vectors is None else one.vectors[:, :n])
    streams = features.streams(model.image_streams, slice(image_index, image_index + 1))
    out: PairScores = model({k: v.to(device) for k, v in streams.items()}, on_device(one, device),
                            return_attention=True)
    attention = {name: att[0].float().cpu().numpy() for name, att in out.attention.items()}
    return PairExplanation(tokens[:n], float(out.score[0]), {k: float(v[0]) for k, v in out.parts.items()},
                           attention, model.attention_specs())


def image_array(path) -> np.ndarray:
    """The image as (H, W, 3) uint8, at its original size (boxes are in its pixels)."""
    return np.asarray(load_image(path).convert("RGB"))


@dataclass
class FigureContext:
    """What a drawing needs besides the map: the pair, the photo, its grid and boxes."""

    explanation: PairExplanation
    image: np.ndarray
    grid_shape: tuple[int, int] | None
    boxes: np.ndarray | None  # (P, 4) in the image's pixels
    title: str


def panel_words(words: list[str]) -> list[str]:
    """The words that get a panel of their own in the per-word pictures: all but the function words
    ("a", "near", "the": ``itm.data.function_words``), which name nothing a photo shows; every word
    when the caption has no other."""
    return [words[n] for n in content_positions(words)]


def _word_panels(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(L, D): one heat map per word over the region grid (function words get none)."""
    # each panel is min-max scaled to be visible, so say how peaked the attention really is; a word the
    # model could not read gets an empty panel that says so, not a confident-looking peak
    keep = content_positions(ctx.explanation.words)
    words, att = [ctx.explanation.words[n] for n in keep], att[keep]
    unread = np.array([w in ctx.explanation.unread for w in words])
    labels = [f"{w}\nnot read: no map" if skip else
              f"{w}\n{'untrained, ' if w in ctx.explanation.untrained else ''}peak {row.max() * att.shape[1]:.1f}x uniform"
              for w, row, skip in zip(words, att, unread, strict=True)]
    att = np.where(unread[:, None], 0.0, att)
    return word_attention_figure(ctx.image, att, labels, score=ctx.explanation.score, parts=ctx.explanation.parts,
                                 grid_shape=ctx.grid_shape, title=ctx.title or None)


def _regions_to_words(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(D, L): per word, how much each region attends to it (each region's row sums to 1); function
    words get no panel."""
    keep = content_positions(ctx.explanation.words)
    labels = [f"regions -> {ctx.explanation.words[n]}" for n in keep]
    return word_attention_figure(ctx.image, att.T[keep], labels, score=ctx.explanation.score,
                                 parts=ctx.explanation.parts, grid_shape=ctx.grid_shape, title=ctx.title or None)


def _region_weights(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(1, D): one weight per grid region."""
    return word_attention_figure(ctx.image, att, [f"region weights\npeak {att.max() * att.shape[1]:.1f}x uniform"],
                                 score=ctx.explanation.score, parts=ctx.explanation.parts,
                                 grid_shape=ctx.grid_shape, title=ctx.title or None)


def _word_weights(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(1, L): one weight per word."""
    return word_weights_figure(ctx.explanation.words, att[0], score=ctx.explanation.score,
                               parts=ctx.explanation.parts, title=ctx.title or None, ylabel="word weight")


def _objects_to_words(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(P, L): the top objects' boxes and their attention over the words."""
    return object_word_figure(ctx.image, ctx.boxes, att, ctx.explanation.words, score=ctx.explanation.score,
                              parts=ctx.explanation.parts, title=ctx.title or None)


def _words_to_objects(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(L, P): the objects the words attend to most (boxes), and how much each word attends to each."""
    order = np.argsort(-att.sum(0), kind="stable")  # objects by the attention the words give them
    return object_word_figure(ctx.image, ctx.boxes, att.T, ctx.explanation.words, object_order=order,
                              score=ctx.explanation.score, parts=ctx.explanation.parts,
                              title=f"{ctx.title} (words -> objects)" if ctx.title else "words -> objects")


def _object_weights(att: np.ndarray, ctx: FigureContext) -> Figure:
    """(1, P): one weight per object; the top objects' boxes, each with its weight."""
    order = np.argsort(-att[0], kind="stable")
    return object_word_figure(ctx.image, ctx.boxes, att.T, ["object weight"], object_order=order,
                              score=ctx.explanation.score, parts=ctx.explanation.parts, title=ctx.title or None)


# the drawings with one panel per word: function words get none (``panel_words``)
PER_WORD_PANELS = {("words", "regions"), ("regions", "words")}

# (rows, over) of a declared map -> its drawing; a model's names never matter here
DRAWINGS = {
    ("words", "regions"): _word_panels,
    ("regions", "words"): _regions_to_words,
    ("image", "regions"): _region_weights,
    ("caption", "words"): _word_weights,
    ("objects", "words"): _objects_to_words,
    ("words", "objects"): _words_to_objects,
    ("image", "objects"): _object_weights,
}


def undrawable(spec: AttentionSpec, features: ImageFeatures) -> str | None:
    """Why a declared map cannot be drawn on these features (one line), or None when it can."""
    if (spec.rows, spec.over) not in DRAWINGS:
        return f"no drawing exists for {spec.rows} over {spec.over}"
    if "objects" in (spec.rows, spec.over) and features.boxes is None:
        return "the features carry no object boxes (SCAN precomp)"
    if "regions" in (spec.rows, spec.over) and features.grid_shape is None:
        return "the features carry no region grid (SCAN precomp)"
    return None


@dataclass
class PairFigures:
    """The drawn maps by their declared names, and a one-line note for each declared map not drawn."""

    figures: dict[str, Figure]
    not_drawn: list[str]


def pair_figures(explanation: PairExplanation, image: np.ndarray, features: ImageFeatures,
                 image_index: int, title: str = "") -> PairFigures:
    """One figure per attention map the model declared (by its name); the others said, not dropped."""
    boxes = None if features.boxes is None else features.boxes[image_index].float().numpy()
    ctx = FigureContext(explanation, image, features.grid_shape, boxes, title)
    figures, not_drawn = {}, []
    for name, att in explanation.attention.items():
        spec = explanation.specs[name]
        reason = undrawable(spec, features)
        if reason:
            not_drawn.append(f"{name} ({spec.title}): not drawn: {reason}")
        else:
            figures[name] = DRAWINGS[(spec.rows, spec.over)](att, ctx)
    return PairFigures(figures, not_drawn)


# explanation methods: "concept" adds the map of where each word's thing is (the backbone's ImageNet
# classifier for the classes the word names, the model's attention for a word naming none) before the
# model's own maps; "attention": the model's maps alone. The pointing game measures both (docs/explain.md).
EXPLAIN_METHODS = ("concept", "attention")
DEFAULT_EXPLAIN_METHOD = "concept"


def check_explain_method(method: str) -> str:
    if method not in EXPLAIN_METHODS:
        raise ItmError(f"explanation method '{method}': not one of {', '.join(EXPLAIN_METHODS)}")
    return method


def attention_label(evidence: dict | None, grid_shape: tuple[int, int] | None) -> str:
    """What the sheet may say of a fallback attention panel, from the checkpoint's own pointing-game
    record (``itm pointing-game --record``) for the words with no concept map on the same grid: "points"
    when its photo-bootstrap interval of hit - centre lies above zero, the figure and "unsure" when only
    the estimate does, otherwise (or with no record for this grid) "a guess", as measured for every
    model trained without ``train.concept_weight`` (docs/explain.md, "Which panels to trust")."""
    group = (evidence or {}).get("without_concept_map")
    if not group or grid_shape is None or list(evidence.get("grid", [])) != list(grid_shape):
        return "attention: a guess"
    gain, (low, _) = group["hit_minus_centre"], group["interval"]
    if low > 0:
        return f"attention: points ({gain:+.0f} vs centre)"
    return f"attention: {gain:+.0f} vs centre, unsure" if gain > 0 else "attention: a guess"


def concept_figure(explanation: PairExplanation, ctx: FigureContext, regions: torch.Tensor, settings,
                   evidence: dict | None = None) -> Figure | str:
    """The "where" sheet: per word, its concept map where it names an ImageNet class, the model's
    words-over-regions attention where it names none, nothing where the model could not read it; no
    panel for a function word ("a", "near": ``panel_words``).
    ``regions`` (D, C): the photo's grid features; ``settings``: their FeatureConfig. A one-line reason
    (str) instead when the backbone has no classifier over its map or the model no such attention.
    ``evidence``: the checkpoint's pointing-game record, which labels the attention panels (``attention_label``)."""
    from itm.evaluation.grounding import unit_range
    from itm.features.concepts import cached_concept_maps

    if ctx.grid_shape is None:
        return "the features carry no region grid"
    try:
        concepts = cached_concept_maps(settings.backbone, settings.weights)
    except ItmError as exc:  # no classifier over the map, its weights or ImageNet's names missing
        return str(exc)
    maps = concepts.maps(regions, explanation.words)  # (L, D); zero rows: no class named
    key = next((n for n, sp in explanation.specs.items() if (sp.rows, sp.over) == ("words", "regions")), None)
    attention = explanation.attention.get(key) if key else None
    keep = content_positions(explanation.words)  # function words ("a", "near") get no panel
    said = attention_label(evidence, ctx.grid_shape)
    rows, labels = np.zeros((len(keep), maps.shape[1]), maps.dtype), []
    for m, n in enumerate(keep):
        word = explanation.words[n]
        found = concepts.concepts(word)
        name = f"{found.names[0]}{f' +{len(found.names) - 1}' if len(found.names) > 1 else ''}" if found.found else ""
        fallback = "no class" if not found.found else f"{name} not seen"
        if word in explanation.unread:
            labels.append(f"{word}\nnot read: no map")
        elif maps[n].any():
            rows[m] = unit_range(maps[n : n + 1])[0]
            labels.append(f"{word}\nImageNet: {name}")
        elif attention is not None:
            rows[m] = unit_range(attention[n : n + 1])[0]
            # measured: where the sheet falls back to attention, the shipped models point no better than the
            # photo's centre (docs/explain.md, "by_map"): a guess, unless the checkpoint's record says otherwise;
            # a word never trained on stays a guess whatever the record
            untrained = ", untrained" if word in explanation.untrained else ""
            labels.append(f"{word}\n{fallback}{untrained}\n{'attention: a guess' if untrained else said}")
        else:
            labels.append(f"{word}\n{fallback}, no map")
    return word_attention_figure(ctx.image, rows, labels, score=explanation.score, parts=explanation.parts,
                                 grid_shape=ctx.grid_shape, title=f"{ctx.title} (where)" if ctx.title else "where")


@dataclass
class ExplainedPhoto:
    """One photo and caption explained: the model's answer, its pictures, and the grid drawn on."""

    explanation: PairExplanation
    drawn: PairFigures
    grid_shape: tuple[int, int] | None
    image_size: int  # the side the photo was resized to for these features
    words: WordReport  # the caption's words the model could not read, or read by spelling


def explain_photo(ckpt: LoadedCheckpoint, image: str | Path, caption: str, cache_root: str | Path,
                  features: ImageFeatures | None = None, method: str = DEFAULT_EXPLAIN_METHOD) -> ExplainedPhoto:
    """The one explain-a-pair flow (``itm explain``, ``Model.explain``, the search page): the caption
    read as the model reads captions, the photo extracted at the explanation settings
    (``eval.explain_image_size`` when the config sets it; ``features`` given: already extracted), the
    pair run with attention returned and every declared map drawn or said why not; with ``method``
    "concept" the "where" sheet (``concept_figure``) comes first, under the name "concept"."""
    from itm.data.encode import encode_captions
    from itm.data.tokenize import tokenize
    from itm.features.extract import file_features
    from itm.pipeline import explanation_features, word_vectors

    check_explain_method(method)
    path = Path(image).expanduser()
    if not path.is_file():
        raise DataError(f"image {path}: no such file")
    tokens = tokenize(caption) if isinstance(caption, str) else []
    words = check_known_words(tokens, ckpt.vocab, str(caption))
    config = ckpt.config
    settings = explanation_features(config)
    if features is None:
        features = file_features([(str(path.resolve()), path.resolve())], settings, cache_root, model_device(ckpt.model))
    captions = encode_captions([tokens], ckpt.vocab, config.data.max_words,
                               word_vectors([tokens], config, progress=False))
    explanation = dataclasses.replace(explain_pair(ckpt.model, features, 0, captions, 0, tokens),
                                      unread=frozenset(words.unreadable),
                                      untrained=frozenset([*words.unseen, *words.read_as]))
    photo = image_array(path)
    drawn = pair_figures(explanation, photo, features, 0, title=str(caption))
    if method == "concept":
        ctx = FigureContext(explanation, photo, features.grid_shape, None, str(caption))
        where = concept_figure(explanation, ctx, features.regions[0], settings,
                               evidence=ckpt.payload.get(EVIDENCE_KEY))
        if isinstance(where, str):
            drawn.not_drawn.insert(0, f"concept (where each word's thing is): not drawn: {where}")
        else:
            drawn = PairFigures({"concept": where, **drawn.figures}, drawn.not_drawn)
    return ExplainedPhoto(explanation, drawn, features.grid_shape, settings.image_size, words)


def explanation_png(ckpt: LoadedCheckpoint, image: str | Path, caption: str, cache_root: str | Path,
                    features: ImageFeatures | None = None, method: str = DEFAULT_EXPLAIN_METHOD) -> bytes:
    """One PNG of ``explain_photo``'s pictures (the search page's): with ``method`` "concept" the sheet
    of where each word's thing is, with "attention" (or when that cannot be drawn) the model's
    words-over-regions map if it declares one, else its first drawable map. The words it draws panels
    for are in the PNG's "Words" text chunk (``png_words``)."""
    import io

    explained = explain_photo(ckpt, image, caption, cache_root, features, method=method)
    figures, specs = explained.drawn.figures, explained.explanation.specs
    if not figures:
        raise ItmError(f"model '{ckpt.config.model.name}' declares no attention that can be drawn"
                       + "".join(f"; {note}" for note in explained.drawn.not_drawn))
    preferred = ["concept"] + [name for name, spec in specs.items() if (spec.rows, spec.over) == ("words", "regions")]
    name = next((name for name in preferred if name in figures), next(iter(figures)))
    words = explained.explanation.words
    per_word = name == "concept" or (specs[name].rows, specs[name].over) in PER_WORD_PANELS
    out = io.BytesIO()
    # the words the picture draws (PNG text chunk "Words", a JSON list): the search page's answer says
    # them (``itm.service.app``), since a picture's panels cannot be read back from its pixels
    figures[name].savefig(out, format="png", dpi=100,
                          metadata={"Words": json.dumps(panel_words(words) if per_word else words)})
    return out.getvalue()


def png_words(png: bytes) -> list[str] | None:
    """The words an ``explanation_png`` picture draws (its "Words" text chunk); None when it has none."""
    import io

    from PIL import Image

    text = Image.open(io.BytesIO(png)).text.get("Words")  # type: ignore[attr-defined]
    return None if text is None else json.loads(text)


def top_captions_figure(row: np.ndarray, image: np.ndarray, caption_texts: list[str], correct: np.ndarray,
                        k: int = 5, title: str | None = None) -> Figure:
    """Paper Fig. 5: an image and its top-k captions; ``row`` (n_captions,) its scores, ``correct``
    (n_captions,) bool marks its ground-truth captions."""
    top = np.argsort(-row, kind="stable")[:k]
    return captions_sheet(image, [caption_texts[c] for c in top], [float(row[c]) for c in top],
                          [bool(correct[c]) for c in top], title=title)


def top_images_figure(column: np.ndarray, caption_text: str, images, truth: int | None, k: int = 5,
                      title: str | None = None) -> Figure:
    """Paper Fig. 6: a caption and its top-k images; ``column`` (n_images,) its scores, ``truth`` the
    correct image (None: unknown). ``images`` is indexed like ``column``; only the top-k are read."""
    top = np.argsort(-column, kind="stable")[:k]
    return images_sheet(caption_text, [images[int(i)] for i in top], [float(column[i]) for i in top],
                        [truth is not None and int(i) == truth for i in top], title=title)


class LazyImages:
    """Images of a dataset, loaded only when indexed (a sheet shows five of thousands)."""

    def __init__(self, paths: list):
        self.paths = paths

    def __getitem__(self, index: int) -> np.ndarray:
        return image_array(self.paths[index])

    def __len__(self) -> int:
        return len(self.paths)
