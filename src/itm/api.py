"""The public Python API: load a model, score photos against captions, index a folder, search it,
explain a hit. Everything here is also reachable as ``itm.<name>``.

    import itm
    model = itm.load_model()                      # the shipped BSSAN (or a checkpoint path)
    scores = model.score(["a.jpg", "b.jpg"], ["a dog runs", "a red car"])   # (2, 2) numpy
    itm.build_index("~/Photos", "photos.itm")     # incremental: run again after changes
    hits = itm.open_index("photos.itm").search("a dog on a beach", k=5)
    png = itm.open_index("photos.itm").explain_png(hits[0].image_id, "a dog on a beach")
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from itm.checkpoint import LoadedCheckpoint, load_checkpoint
from itm.config import FeatureConfig
from itm.data.encode import encode_captions
from itm.data.tokenize import caption_tokens
from itm.data.types import Captions, ImageFeatures
from itm.errors import DataError


class Model:
    """A trained matcher ready for inference; images are extracted as it was trained (feature cache)."""

    def __init__(self, checkpoint: LoadedCheckpoint):
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.device = next(self.model.parameters()).device

    @property
    def name(self) -> str:
        return self.checkpoint.config.model.name

    def image_features(self, images: Sequence[str | Path], settings: FeatureConfig | None = None) -> ImageFeatures:
        """Features of image files in the given order (a missing or unreadable file: DataError naming it),
        extracted as the model was trained unless ``settings`` says otherwise."""
        from itm.features.extract import file_features
        from itm.pipeline import cache_root

        files = []
        for image in images:
            path = Path(image).expanduser()
            if not path.is_file():
                raise DataError(f"image {path}: no such file")
            files.append((str(path.resolve()), path.resolve()))  # the full path: two a.jpg stay apart
        config = self.checkpoint.config
        return file_features(files, settings or config.features, cache_root(config) / "features", self.device)

    def encode_captions(self, captions: Sequence[str]) -> Captions:
        """Captions as the model's inputs (a caption with no words: DataError naming it)."""
        from itm.pipeline import word_vectors

        tokens = caption_tokens(captions)
        config = self.checkpoint.config
        return encode_captions(tokens, self.checkpoint.vocab, config.data.max_words,
                               word_vectors(tokens, config, progress=False))

    def read(self, captions: Sequence[str]):
        """How the model reads these captions' words (``itm.data.open_vocab.WordReport``): those outside
        its training captions read through its word table, those read by spelling, and those it
        cannot read at all."""
        return self.checkpoint.vocab.report(caption_tokens(captions))

    def score(self, images: Sequence[str | Path], captions: Sequence[str]) -> np.ndarray:
        """(len(images), len(captions)) matching scores: higher is a better match."""
        from itm.evaluation.engine import score_all_pairs

        if not images or not captions:
            raise DataError("score: give at least one image and one caption")
        return score_all_pairs(self.model, self.image_features(images), self.encode_captions(captions))

    def explain(self, image: str | Path, caption: str, method: str = "concept") -> dict:
        """The model's attention for one pair as matplotlib figures, by the names the model declares,
        on the explanation grid (``eval.explain_image_size``); with ``method`` "concept" (default)
        first the "concept" sheet of where each word's thing is (``itm.viz.explain.concept_figure``),
        "attention": the model's maps alone. Words the model could not read, and a map that cannot be
        drawn, are one-line warnings (``warnings``)."""
        from itm.pipeline import cache_root
        from itm.viz.explain import explain_photo

        explained = explain_photo(self.checkpoint, image, caption, cache_root(self.checkpoint.config) / "features",
                                  method=method)
        for note in filter(None, [explained.words.notice(), *explained.drawn.not_drawn]):
            warnings.warn(note, stacklevel=2)
        return explained.drawn.figures


def load_model(checkpoint: str | Path | None = None, device: str | None = None) -> Model:
    """A checkpoint file or run folder for inference, on ``device`` (``cpu``, ``cuda``, ``cuda:N``;
    None: cuda when available); the shipped BSSAN when no checkpoint is given."""
    from itm.devices import resolve_device
    from itm.shipped import shipped_checkpoint, shipped_role

    path = checkpoint if checkpoint is not None else shipped_checkpoint(shipped_role("rerank")[0])
    return Model(load_checkpoint(path, device=resolve_device(device)))


def build_index(images: str | Path, out: str | Path, checkpoint: str | Path | list[str | Path] | None = None,
                shortlist: str | Path | None = None, captions: str | Path | None = None, rerank: bool = True,
                progress: bool = False, device: str | None = None):
    """Index (or update the index of) a photo folder; returns the update's report. The shipped models
    are used for any model not given; ``captions`` (one a line) makes the index searchable by image."""
    from itm.retrieval.index import IndexStore, index_captions, update_index
    from itm.retrieval.search_models import SearchModels
    from itm.shipped import search_checkpoints

    short, matcher = search_checkpoints(None if shortlist is None else str(shortlist), checkpoint, rerank)
    from itm.devices import resolve_device

    models = SearchModels(short, matcher, device=resolve_device(device))
    store = IndexStore(out)
    report = update_index(store, images, models, progress=progress)
    if captions is not None:
        index_captions(store, captions, models)
    return report


def open_index(index: str | Path, device: str | None = None, normalise: str | None = None):
    """A :class:`itm.retrieval.search.Searcher` over an index folder: ``search(text, k)``,
    ``search_image(bytes, name, k)``, ``explain_png(image_id, text)``, ``path_of(image_id)``;
    ``normalise``: the hub-photo correction ("none" turns it off; None: the default, ``.notes`` says
    when the index cannot apply it)."""
    from itm.devices import resolve_device
    from itm.evaluation.hubness import SEARCH_DEFAULT
    from itm.retrieval.search import Searcher

    return Searcher(index, device=resolve_device(device), normalise=normalise or SEARCH_DEFAULT)
