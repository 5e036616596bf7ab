"""A dual encoder: one vector per image, one per caption, score = their inner product.

The yardstick cross-attention must beat, and the shortlist stage of search: with no pair-dependent
computation its vectors can be indexed (the search contract: ``vector_dim``, ``encode_images``,
``encode_captions``).

- Image: the whole-image vector (the backbone's pooled feature) -> linear -> L2-normalised.
- Caption: GloVe-initialised word vectors -> GRU -> the state after the last real word -> L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from itm.config_base import ModelConfig, check_fields
from itm.data.types import Captions
from itm.models.base import ImageStreams, IndexableMatcher, InputDims, WordEmbedder
from itm.models.registry import register_model


@dataclass
class DualConfig(ModelConfig):
    """The dual encoder's sizes (the calibration note's: a 512-d joint space)."""

    name: str = "dual"
    embed_dim: int = 512
    dropout: float = 0.0  # training-time dropout on the word vectors and the image vector

    TINY: ClassVar[dict] = {"embed_dim": 8}
    SHORT_RUN: ClassVar[dict] = {"model.embed_dim": 32, "train.lr": 0.02}

    def validate(self) -> None:
        check_fields("model", self, positive=("embed_dim",), fraction=("dropout",))


class DualEncoder(IndexableMatcher):
    """Independent image and caption embeddings; indexable (``encode_images`` / ``encode_captions``)."""

    image_streams = ("whole",)

    def __init__(self, config: DualConfig, dims: InputDims, words: WordEmbedder):
        super().__init__()
        self.words = words
        self.embed_dim = config.embed_dim
        self.image_fc = nn.Linear(dims.region_dim, config.embed_dim)
        self.gru = nn.GRU(dims.word_dim, config.embed_dim, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def vector_dim(self) -> int:
        return self.embed_dim

    def encode_images(self, images: ImageStreams) -> torch.Tensor:
        return F.normalize(self.image_fc(self.dropout(images["whole"].float())), dim=-1)  # (N, d)

    def encode_captions(self, captions: Captions) -> torch.Tensor:
        words = self.dropout(self.words(captions))  # (N, L, E)
        packed = pack_padded_sequence(words, captions.lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed)  # (1, N, d): the state after each caption's last real word
        return F.normalize(last[0], dim=-1)


def build_dual(config: DualConfig, dims: InputDims, words: WordEmbedder) -> DualEncoder:
    return DualEncoder(config, dims, words)


register_model("dual", build_dual, DualConfig, "dual encoder: pooled image vector . GRU caption vector (indexable)")
