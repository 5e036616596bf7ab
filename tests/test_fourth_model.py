"""The contract is enough: a fourth matcher defined and registered here, in a few dozen lines, trains,
is scored all-pairs, explained, pointed with, and indexed for search by the shared code unchanged.

``PooledCosine`` scores a pair by the cosine of the mean region and the mean word vector (so it
declares itself indexable), and returns each word's softmax attention over the region grid as the map
pictures and the pointing game read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DIMS,
    WORDS,
    boxed_photos,
    fit_quietly,
    index_checkpoint,
    make_captions,
    make_features,
    photo_folder,
    setup_run,
    short_run_overrides,
)
from torch import nn

from itm import cli
from itm.checkpoint import new_model
from itm.config import ModelConfig, check_fields, load_config
from itm.data.types import Captions
from itm.evaluation.engine import score_all_pairs, score_pairs_naive
from itm.models import MODELS
from itm.models.base import (
    AttentionSpec,
    ImageStreams,
    InputDims,
    Matcher,
    PairScores,
    State,
    WordEmbedder,
    with_total,
)
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


class PooledCosine(Matcher):
    image_streams = ("regions",)
    indexable = True

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

    def prepare_images(self, images: ImageStreams) -> State:
        return {"v": self.encode_images(images)}

    def prepare_captions(self, captions: Captions) -> State:
        return {"u": self.encode_captions(captions)}

    def score_block(self, images: State, captions: State, parts: bool = False):
        return with_total(images["v"] @ captions["u"].t(), parts)  # (Ni, Nc)

    def forward(self, images: ImageStreams, captions: Captions, return_attention: bool = False) -> PairScores:
        score = (self.encode_images(images) * self.encode_captions(captions)).sum(-1)  # (B,)
        attention = {}
        if return_attention:
            words, mask = self.word_vectors(captions)
            att = torch.softmax(words @ self.regions(images).transpose(1, 2), dim=-1)  # (B, L, D)
            attention["words_over_regions"] = att * mask[..., None]
        return PairScores(score, {}, attention)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_model(NAME, lambda config, dims, words: PooledCosine(config, dims, words), PooledCosineConfig,
                   "a fourth matcher defined in a test")
    yield
    MODELS.remove(NAME)


def test_its_config_resolves_and_validates_through_the_one_registry():
    assert load_config(None, [f"model.name={NAME}"]).model == PooledCosineConfig()
    with pytest.raises(Exception, match="model.embed_dim: must be positive"):
        load_config(None, [f"model.name={NAME}", "model.embed_dim=0"])


def test_it_trains_and_learns(tmp_path):
    trainer, train, val = setup_run(tmp_path, "train.loss=infonce", "train.epochs=3",
                                    model_overrides=short_run_overrides(NAME), n_train=192)
    history = fit_quietly(trainer, train, val)["history"]
    first, last = history[0]["val"]["rsum"], history[-1]["val"]["rsum"]
    assert len(history) == 3 and last > first and (tmp_path / "best.pt").is_file()


def test_all_pairs_scoring_equals_one_pair_at_a_time():
    config = load_config(None, [f"model.name={NAME}", "model.embed_dim=8"])
    torch.manual_seed(0)
    model = new_model(config, DIMS).eval()
    features, captions = make_features(3), make_captions([3, 1, 4, 2])
    pairs = [(i, c) for i in range(3) for c in range(4)]
    naive = score_pairs_naive(model, features, captions, pairs).reshape(3, 4)
    np.testing.assert_allclose(score_all_pairs(model, features, captions, memory_budget_mb=0), naive, rtol=1e-5,
                               atol=1e-6)


@pytest.fixture
def photos_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    return photo_folder(tmp_path / "photos"), index_checkpoint(tmp_path / "four.pt", NAME)


def test_explain_draws_its_declared_map(photos_and_checkpoint, tmp_path, capsys):
    photos, checkpoint = photos_and_checkpoint
    assert cli.main(["explain", "--checkpoint", str(checkpoint), "--image", str(photos / "red.jpg"),
                     "--caption", "a red square", "--out", str(tmp_path / "pics"), "--device", "cpu"]) == 0
    assert (tmp_path / "pics" / "words_over_regions.png").stat().st_size > 0
    assert "not drawn" not in capsys.readouterr().out


def test_the_pointing_game_reads_its_map(photos_and_checkpoint, tmp_path):
    """A box over the whole photo: every peak is a hit, whatever the untrained weights."""
    _, checkpoint = photos_and_checkpoint
    data, boxes = boxed_photos(tmp_path)
    assert cli.main(["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data),
                     "--boxes", str(boxes), "--json", str(tmp_path / "out.json"),
                     "--min-cases", "1", "--device", "cpu"]) == 0
    overall = json.loads((tmp_path / "out.json").read_text())["overall"]
    assert overall["cases"] == 1 and overall["hit"] == 100.0


def test_it_indexes_a_folder_and_searches_it(photos_and_checkpoint, tmp_path):
    from itm.retrieval.index import IndexStore, update_index
    from itm.retrieval.search import Searcher, SearchModels

    photos, checkpoint = photos_and_checkpoint
    models = SearchModels(checkpoint, checkpoint)  # the shortlist and the re-ranker
    report = update_index(IndexStore(tmp_path / "idx"), photos, models, progress=False)
    assert report.added == 5
    searcher = Searcher(tmp_path / "idx")
    hits = searcher.search(" ".join(WORDS[:3]), k=5)
    assert len({h.image_id for h in hits}) == 5 and all(np.isfinite(h.score) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert searcher.vectors.shape == (5, 8)  # vector_dim: the model's TINY embed_dim
