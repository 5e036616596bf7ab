"""Evaluate a model on prepared data under a protocol (no loading, no encoding here)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from itm.config import ENSEMBLE_NORMS
from itm.data.types import Captions, ImageFeatures
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.protocols import evaluate_protocol
from itm.models.base import Matcher

JSON_KEYS = ("i2t", "t2i", "rsum", "n_images", "n_captions", "seconds")


@dataclass
class Member:
    """One model of an ensemble with the data prepared for it (its own vocabulary and features)."""

    model: Matcher
    features: ImageFeatures
    captions: Captions


def evaluate_model(model: Matcher, features: ImageFeatures, captions: Captions, caption_to_image: np.ndarray,
                   protocol: str = "flickr", memory_budget_mb: int = 1024, caption_tile: int = 512,
                   progress: bool = False, precision: str = "fp32") -> dict[str, Any]:
    """Score all pairs the protocol needs with the engine; the ``itm eval --json`` dict."""
    return evaluate_ensemble([Member(model, features, captions)], caption_to_image, protocol, memory_budget_mb,
                             caption_tile, progress, precision=precision)


def evaluate_ensemble(members: list[Member], caption_to_image: np.ndarray, protocol: str = "flickr",
                      memory_budget_mb: int = 1024, caption_tile: int = 512,
                      progress: bool = False, keep_scores: bool = False, max_image_chunk: int = 128,
                      precision: str = "fp32", normalise: str = "zscore") -> dict[str, Any]:
    """Like ``evaluate_model`` with the mean of the members' score matrices as the score, each
    normalised first (``combine_scores``). Every member must cover the same images and captions.
    ``keep_scores``: the last block scored is returned under "scores" (flickr: the whole matrix), and
    each member's under "member_scores".
    ``precision``: fp32 | bf16 autocast of the scoring (``score_all_pairs``)."""
    if not members:
        raise ValueError("evaluate_ensemble: no members")
    if normalise not in ENSEMBLE_NORMS:
        raise ValueError(f"evaluate_ensemble: normalise must be one of {ENSEMBLE_NORMS}, not {normalise!r}")
    for member in members:
        member.model.check_evaluable()
    sizes = {(len(m.features), len(m.captions)) for m in members}
    if len(sizes) != 1:
        raise ValueError(f"evaluate_ensemble: members cover different (images, captions): {sorted(sizes)}")

    def score_block(image_idx: np.ndarray, caption_idx: np.ndarray) -> np.ndarray:
        images, caps = torch.as_tensor(image_idx), torch.as_tensor(caption_idx)
        blocks = [score_all_pairs(m.model, m.features.select(images), m.captions.select(caps), memory_budget_mb,
                                  caption_tile, progress=progress, max_image_chunk=max_image_chunk, precision=precision)
                  for m in members]
        kept["scores"], kept["members"] = combine_scores(blocks, normalise), blocks
        return kept["scores"]

    kept: dict[str, np.ndarray] = {}
    started = time.time()
    result = evaluate_protocol(protocol, score_block, caption_to_image, n_images=len(members[0].features))
    if keep_scores:
        result["scores"], result["member_scores"] = kept["scores"], kept["members"]
    result["seconds"] = round(time.time() - started, 2)
    result["protocol"] = protocol
    return result


def combine_scores(blocks: list[np.ndarray], normalise: str = "zscore") -> np.ndarray:
    """The ensemble's block: the mean of the members' blocks, each z-scored over the block first with
    ``normalise="zscore"``. One member's block is returned as it is (ranks are all that count, and
    ``--scores`` keeps the model's own scale)."""
    if len(blocks) == 1:
        return blocks[0]
    if normalise == "zscore":
        blocks = [(b - b.mean()) / max(float(b.std()), 1e-12) for b in blocks]
    return (sum(blocks) / len(blocks)).astype(np.float32)


def evaluate_normalised(member_scores: list[np.ndarray], member_banks: list[np.ndarray],
                        caption_to_image: np.ndarray, norm, ensemble_norm: str = "zscore") -> dict[str, Any]:
    """Text -> photo figures with a hubness correction (``itm.evaluation.hubness``): each member's
    (n_images, n_captions) matrix normalised by its photos' (n_images, n_bank) bank scores, then the
    members combined as ``evaluate_ensemble`` combines them. Image -> text keeps the raw ranking (the
    bank is of captions: it corrects photos as the targets of text queries), so ``rsum`` here is the raw
    i2t plus the normalised t2i."""
    from itm.evaluation.hubness import hubness, normalise, photo_stats
    from itm.evaluation.metrics import retrieval_metrics

    blocks = [normalise(scores, photo_stats(bank, norm), norm) for scores, bank in zip(member_scores, member_banks,
                                                                                      strict=True)]
    combined = combine_scores(blocks, ensemble_norm)
    normalised = retrieval_metrics(combined, caption_to_image)
    raw_i2t = retrieval_metrics(combine_scores(member_scores, ensemble_norm), caption_to_image)["i2t"]
    rsum = sum(raw_i2t[f"r{k}"] + normalised["t2i"][f"r{k}"] for k in (1, 5, 10))
    return {"normalisation": norm.to_dict(), "i2t": raw_i2t, "t2i": normalised["t2i"], "rsum": rsum,
            "hubness": hubness(combined)}


def evaluate_vocabulary(members: list[Member], scores: np.ndarray, caption_to_image: np.ndarray,
                        unseen: np.ndarray, probe_photos: dict[str, np.ndarray], probes: list[Captions],
                        memory_budget_mb: int = 1024, normalise: str = "zscore",
                        text_side: tuple | None = None, evidence=None) -> dict[str, Any]:
    """Retrieval of the split's captions by vocabulary group (``scores``: the ensemble's matrix,
    ``unseen``: captions with a word outside the training captions) and the concept probe: ``probes``
    (one Captions per member, "a WORD" for each word of ``probe_photos``) scored against every image.
    With ``evidence`` (words -> (n_images,) ImageNet evidence or None) and ``text_side`` (token
    lists, seen words, max words): the same for text queries as search ranks them with concepts on
    (``concept_search``)."""
    from itm.evaluation.vocabulary import concept_probe, recall_by_vocabulary

    result: dict[str, Any] = {"by_vocabulary": recall_by_vocabulary(scores, caption_to_image, unseen)}
    if probe_photos:
        probe_scores = combine_scores([score_all_pairs(m.model, m.features, p, memory_budget_mb)
                                       for m, p in zip(members, probes, strict=True)], normalise)  # (n_img, n_words)
    else:
        probe_scores = np.zeros((len(members[0].features), 0), np.float32)
    result["concept_probe"] = concept_probe(probe_scores, list(probe_photos.values()), list(probe_photos))
    if evidence is not None:
        result["concept_search"] = concept_search(scores, caption_to_image, unseen, text_side, evidence,
                                                  probe_scores, probe_photos)
    return result


def concept_search(scores: np.ndarray, caption_to_image: np.ndarray, unseen: np.ndarray, text_side: tuple,
                   evidence, probe_scores: np.ndarray, probe_photos: dict[str, np.ndarray]) -> dict[str, Any]:
    """Text-to-image retrieval by vocabulary group and the concept probe, plain and with each query's
    unseen words also looked for by ImageNet's classes (``with_concept_evidence``); the change in R@1
    of the unseen captions with a 95% interval over photos."""
    from itm.evaluation.vocabulary import (
        concept_probe,
        r1_gain_interval,
        t2i_by_vocabulary,
        t2i_ranks,
        with_concept_evidence,
    )

    tokens, seen, max_words = text_side
    looked, changed = with_concept_evidence(scores, tokens, seen, max_words, evidence)
    probe_tokens = [["a", word] for word in probe_photos]
    probed, _ = with_concept_evidence(probe_scores, probe_tokens, seen, max_words, evidence)
    before, after = t2i_ranks(scores, caption_to_image), t2i_ranks(looked, caption_to_image)
    return {"captions_changed": int(changed.sum()),
            "plain": t2i_by_vocabulary(scores, caption_to_image, unseen),
            "with_concepts": t2i_by_vocabulary(looked, caption_to_image, unseen),
            "unseen_r1_change_interval": r1_gain_interval(before, after, caption_to_image, unseen),
            "probe_with_concepts": concept_probe(probed, list(probe_photos.values()), list(probe_photos))}
