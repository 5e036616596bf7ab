"""From a dataset on disk to model-ready tensors: features, encoded captions, ground truth.

Shared by ``itm train``, ``itm eval``, ``itm demo`` and ``itm explain`` so that each of them only
decides *what* to prepare, never how.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from itm.config import Config, FeatureConfig
from itm.data.encode import encode_captions
from itm.data.types import Captions, Dataset, ImageFeatures
from itm.data.vocab import Vocab
from itm.models.base import InputDims

log = logging.getLogger(__name__)


@dataclass
class PreparedSplit:
    """Images (features), captions (encoded) and which image each caption belongs to."""

    dataset: Dataset
    features: ImageFeatures
    captions: Captions
    caption_to_image: np.ndarray  # (n_captions,) int64
    # the same images extracted at other sizes (train.image_sizes: multi-scale training), in the same order
    views: tuple[ImageFeatures, ...] = ()

    def head(self, n_images: int) -> PreparedSplit:
        """The first ``n_images`` images and their captions (e.g. a cheaper validation set)."""
        if n_images >= len(self.dataset):
            return self
        keep = np.flatnonzero(self.caption_to_image < n_images)
        return PreparedSplit(self.dataset.head(n_images), self.features.select(slice(0, n_images)),
                             self.captions.select(torch.as_tensor(keep)), self.caption_to_image[keep])


def cache_root(config: Config) -> Path:
    """Where features and caption vectors are cached: config, then $ITM_CACHE, then ~/.cache/itm."""
    from itm.features.cache import cache_home

    return Path(config.features.cache_dir).expanduser() if config.features.cache_dir else cache_home()


def explanation_features(config: Config) -> FeatureConfig:
    """The feature settings attention pictures are drawn on: ``eval.explain_image_size`` when set (the
    trained weights over a finer region grid; docs/explain.md), else those the model was trained on."""
    size = config.eval.explain_image_size
    return config.features if not size else dataclasses.replace(config.features, image_size=size)


def at_image_size(config: Config, size: int) -> Config:
    """The config with its photos extracted at ``size``: the same weights over another region grid."""
    return dataclasses.replace(config, features=dataclasses.replace(config.features, image_size=size))


def scoring_views(config: Config) -> list[Config]:
    """The configs a model is scored under by ``itm eval``: its own, then one per ``eval.score_sizes``."""
    return [config, *(at_image_size(config, size) for size in config.eval.score_sizes)]


def feature_config(settings: dict) -> FeatureConfig:
    """The FeatureConfig stored in a checkpoint's feature settings (unknown keys ignored)."""
    known = {f for f in FeatureConfig.__dataclass_fields__}
    return FeatureConfig(**{k: v for k, v in settings.items() if k in known})


def word_vectors(token_lists: list[list[str]], config: Config, progress: bool) -> list[np.ndarray] | None:
    """Contextual word vectors (MiniLM) per caption when configured, else None (GloVe ids)."""
    if config.text.source != "minilm":
        return None
    from itm.data.minilm import MiniLMWordEncoder

    vectors, _ = MiniLMWordEncoder().encode_cached(token_lists, cache_root(config) / "minilm")
    return vectors


def encoded_bank(config: Config, vocab: Vocab, size: int | None = None) -> Captions:
    """The caption bank's first ``size`` captions (``itm.data.caption_bank``) encoded for a model: the
    captions the hubness corrections score every photo against."""
    from itm.data.caption_bank import caption_bank

    tokens = caption_bank(size)
    return encode_captions(tokens, vocab, config.data.max_words, word_vectors(tokens, config, progress=False))


def prepare_split(dataset: Dataset, config: Config, vocab: Vocab, skip_bad: bool = False,
                  progress: bool = True, device: torch.device | str | None = None) -> PreparedSplit:
    """Extract (or read cached) features for the dataset's images, the backbone on ``device`` (None:
    the CPU), and encode its captions. The tensors returned stay on the CPU."""
    from itm.features.extract import extract_features

    features, kept, _ = extract_features(dataset, config.features, cache_root(config) / "features",
                                         skip_bad=skip_bad, progress=progress, device=device)
    tokens, owner = kept.caption_tokens()
    captions = encode_captions(tokens, vocab, config.data.max_words, word_vectors(tokens, config, progress))
    return PreparedSplit(kept, features, captions, owner)


def build_vocab(train: Dataset, config: Config) -> Vocab:
    """The vocabulary of the TRAIN split only: test words must never leak into it."""
    tokens, _ = train.caption_tokens()
    return Vocab.build(tokens, min_count=config.data.min_word_count)


def initial_word_table(vocab: Vocab, config: Config) -> tuple[torch.Tensor | None, int, str]:
    """(GloVe table or None for MiniLM, word dim, a coverage line for the user)."""
    if config.text.source == "minilm":
        return None, 384, "word vectors: MiniLM (contextual, 384-d; see the contamination caveat)"
    from itm.data.glove import coverage_message, load_glove

    table, coverage = load_glove(vocab.to_list(), config.text.glove_path)
    return table, int(table.shape[1]), coverage_message(coverage, len(vocab))


def word_table_record(config: Config) -> dict:
    """Which word-vector table a trained model reads (kept in its checkpoint; ``itm.data.glove``)."""
    if config.text.source == "minilm":
        return {"source": "minilm"}
    from itm.data.glove import table_record

    return table_record(config.text.glove_path)


def input_dims(split: PreparedSplit, vocab: Vocab, word_dim: int) -> InputDims:
    return InputDims(word_dim=word_dim, region_dim=int(split.features.regions.shape[-1]),
                     object_dim=int(split.features.objects.shape[-1]), vocab_size=len(vocab))
