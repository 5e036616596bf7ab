"""A fourth matcher defined outside the package, in a few dozen lines, to show the contract is enough.

``PooledCosine`` scores a pair by the cosine of the mean region and the mean word vector (so it is an
``IndexableMatcher``), and returns each word's softmax attention over the region grid as the map
pictures and the pointing game read. ``conftest.py`` imports this module, so the model is registered
before collection: the every-model suites (``test_models.py``, ``test_engine.py``) run over it too,
and ``test_fourth_model.py`` takes it through training, explanation, pointing and search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from itm.config_base import ModelConfig, check_fields
from itm.data.types import Captions
from itm.models.base import AttentionSpec, ImageStreams, IndexableMatcher, InputDims, PairScores, WordEmbedder
from itm.models.registry import register_model

NAME = "pooled_cosine"


@dataclass
class PooledCosineConfig(ModelConfig):
    name: str = NAME
    embed_dim: int = 64

    TINY: ClassVar[dict] = {"embed_dim": 8}
    SHORT_RUN: ClassVar[dict] = {"model.embed_dim": 32, "train.lr": 0.02}

    def validate(self) -> None:
        check_fields("model", self, positive=("embed_dim",))


class PooledCosine(IndexableMatcher):
    image_streams = ("regions",)

    def __init__(self, config: PooledCosineConfig, dims: InputDims, words: WordEmbedder):
        super().__init__()
        self.words, self.dim = words, config.embed_dim
        self.region_fc = nn.Linear(dims.region_dim, config.embed_dim)
        self.word_fc = nn.Linear(dims.word_dim, config.embed_dim)

    @property
    def vector_dim(self) -> int:
        return self.dim

    def attention_specs(self):
        return {"words_over_regions": AttentionSpec("words", "regions", "each word's softmax over the grid")}

    def regions(self, images: ImageStreams) -> torch.Tensor:
        return self.region_fc(images["regions"].float())  # (N, D, d)

    def word_vectors(self, captions: Captions) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (torch.arange(captions.ids.shape[1], device=captions.ids.device)[None] < captions.lengths[:, None])
        return self.word_fc(self.words(captions)) * mask[..., None], mask  # (N, L, d), (N, L)

    def encode_images(self, images: ImageStreams) -> torch.Tensor:
        return F.normalize(self.regions(images).mean(1), dim=-1)  # (N, d)

    def encode_captions(self, captions: Captions) -> torch.Tensor:
        words, mask = self.word_vectors(captions)
        return F.normalize(words.sum(1) / mask.sum(1, keepdim=True), dim=-1)  # (N, d)

    def forward(self, images: ImageStreams, captions: Captions, return_attention: bool = False) -> PairScores:
        scores = super().forward(images, captions)
        if return_attention:
            words, mask = self.word_vectors(captions)
            att = torch.softmax(words @ self.regions(images).transpose(1, 2), dim=-1)  # (B, L, D)
            scores.attention["words_over_regions"] = att * mask[..., None]
        return scores


register_model(NAME, lambda config, dims, words: PooledCosine(config, dims, words), PooledCosineConfig,
               "a fourth matcher defined in the tests")
