"""Photo -> caption search: an uploaded photo against the caption collection an index was given
(``itm index --captions``): the shortlist model's vectors through FAISS, then the searcher's re-rank."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from itm.data.tokenize import tokenize
from itm.data.types import ImageFeatures
from itm.errors import ItmError


@dataclass
class CaptionHit:
    caption_id: int
    text: str
    score: float
    shortlist_score: float


@torch.inference_mode()
def search_captions(searcher, data: bytes, name: str, k: int = 10, rerank: int = 50) -> list[CaptionHit]:
    """Ranked captions of ``searcher``'s collection for a photo's bytes: the shortlist's top
    ``max(k, rerank)`` captions, re-ranked by ``searcher.rerank_block`` (the text search's ensemble)."""
    if searcher.caption_faiss is None:
        raise ItmError("this index has no caption collection: index one with itm index --captions FILE")
    if k < 1:
        raise ItmError(f"k: must be at least 1, got {k}")
    models = searcher.models
    features = upload_features(models, data, name)
    query = models.image_vectors(features)  # (1, d)
    short, rows = searcher.caption_faiss.search(query, min(max(k, rerank), len(searcher.caption_texts)))
    rows, short = rows[0][rows[0] >= 0], short[0][rows[0] >= 0]
    scores = short
    if models.rerankers and rerank > 0:
        states = [ckpt.model.eval().prepare_images(models.streams(ckpt.model, features)) for ckpt in models.rerankers]
        scores = searcher.rerank_block([tokenize(searcher.caption_texts[r]) for r in rows], states)[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [CaptionHit(int(rows[i]), searcher.caption_texts[rows[i]], float(scores[i]), float(short[i])) for i in order]


def upload_features(models, data: bytes, name: str) -> ImageFeatures:
    """Features of one uploaded photo, through the content-addressed cache (bad bytes: DataError)."""
    from itm.features.extract import file_features

    safe = Path(name or "upload").name or "upload"
    with tempfile.TemporaryDirectory(prefix="itm-upload-") as folder:
        path = Path(folder) / safe
        path.write_bytes(data)
        return file_features([(safe, path)], models.features, models.cache_root(), models.device)
