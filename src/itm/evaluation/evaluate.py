"""Evaluate a model on prepared data under a protocol (no loading, no encoding here)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from itm.data.types import Captions, ImageFeatures
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.protocols import evaluate_protocol
from itm.models.base import Matcher

JSON_KEYS = ("i2t", "t2i", "rsum", "n_images", "n_captions", "seconds")


def evaluate_model(model: Matcher, features: ImageFeatures, captions: Captions, caption_to_image: np.ndarray,
                   protocol: str = "flickr", memory_budget_mb: int = 1024, caption_tile: int = 512,
                   progress: bool = False) -> dict[str, Any]:
    """Score all pairs the protocol needs with the engine; the ``itm eval --json`` dict."""

    def score_block(image_idx: np.ndarray, caption_idx: np.ndarray) -> np.ndarray:
        return score_all_pairs(model, features.select(torch.as_tensor(image_idx)),
                               captions.select(torch.as_tensor(caption_idx)), memory_budget_mb,
                               caption_tile, progress=progress)

    started = time.time()
    result = evaluate_protocol(protocol, score_block, caption_to_image, n_images=len(features))
    result["seconds"] = round(time.time() - started, 2)
    result["protocol"] = protocol
    return result
