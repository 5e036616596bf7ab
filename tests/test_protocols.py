"""Evaluation protocols: fold layout, diagonal-only scoring, averaging."""

from __future__ import annotations

import numpy as np
import pytest

from itm.errors import ConfigError
from itm.evaluation import PROTOCOLS, EvaluationError, Protocol, evaluate_protocol, retrieval_metrics

METRIC_KEYS = {"i2t", "t2i", "rsum"}


class RecordingScorer:
    """A score_block over a fixed matrix that remembers which blocks it was asked for."""

    def __init__(self, scores: np.ndarray):
        self.scores = scores
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, image_idx: np.ndarray, caption_idx: np.ndarray) -> np.ndarray:
        self.calls.append((image_idx.copy(), caption_idx.copy()))
        return self.scores[np.ix_(image_idx, caption_idx)]


def hashed_scores(image_idx: np.ndarray, caption_idx: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random scores from indices alone (no full 5K x 25K matrix needed),
    with a bonus on ground-truth pairs so the metrics are not all near chance."""
    i, c = image_idx[:, None].astype(np.uint64), caption_idx[None, :].astype(np.uint64)
    h = (i * np.uint64(2654435761) + c * np.uint64(40503) + np.uint64(12345)) % np.uint64(1000003)
    return h.astype(np.float32) / 1000003 + 0.3 * (owner[caption_idx][None, :] == image_idx[:, None])


def test_registered_protocols():
    assert {"flickr", "coco5k", "coco1k"} <= set(PROTOCOLS.names())
    assert PROTOCOLS.help("coco1k")
    with pytest.raises(ConfigError, match="unknown evaluation protocol"):
        evaluate_protocol("nope", lambda i, c: None, np.zeros(1, dtype=int))


def test_folds_layout():
    assert [f.tolist() for f in PROTOCOLS.get("flickr").folds(3)] == [[0, 1, 2]]
    folds = PROTOCOLS.get("coco1k").folds(5000)
    assert len(folds) == 5
    assert all(f.tolist() == list(range(k * 1000, (k + 1) * 1000)) for k, f in enumerate(folds))
    with pytest.raises(EvaluationError, match="not a multiple of 1000"):
        PROTOCOLS.get("coco1k").folds(4999)
    with pytest.raises(EvaluationError):
        PROTOCOLS.get("flickr").folds(0)


@pytest.mark.parametrize("name", ["flickr", "coco5k"])
def test_all_at_once_equals_full_matrix(name):
    rng = np.random.default_rng(0)
    owner = rng.permutation(np.concatenate([np.arange(20), rng.integers(0, 20, 70)]))
    scores = rng.integers(0, 6, (20, 90)).astype(np.float32)
    scorer = RecordingScorer(scores)
    got = evaluate_protocol(name, scorer, owner)
    want = retrieval_metrics(scores, owner)
    assert {k: got[k] for k in METRIC_KEYS} == want
    assert (got["n_images"], got["n_captions"], got["folds"]) == (20, 90, 1)
    assert len(scorer.calls) == 1
    images, captions = scorer.calls[0]
    assert images.tolist() == list(range(20)) and captions.tolist() == list(range(90))


def test_coco1k_scores_only_diagonal_blocks_and_averages_folds():
    owner = np.repeat(np.arange(5000), 5)
    calls = []

    def score_block(images, captions):
        calls.append((images, captions))
        return hashed_scores(images, captions, owner)

    got = evaluate_protocol("coco1k", score_block, owner)
    assert (got["n_images"], got["n_captions"], got["folds"]) == (5000, 25000, 5)
    assert len(calls) == 5
    per_fold = []
    for k, (images, captions) in enumerate(calls):
        assert images.tolist() == list(range(1000 * k, 1000 * (k + 1)))
        assert captions.tolist() == list(range(5000 * k, 5000 * (k + 1)))  # diagonal block only
        local = owner[captions] - 1000 * k
        per_fold.append(retrieval_metrics(hashed_scores(images, captions, owner), local))
    assert got["fold_metrics"] == per_fold
    for direction in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10", "medr", "meanr"):
            want = np.mean([m[direction][key] for m in per_fold])
            assert got[direction][key] == pytest.approx(want)
    assert got["rsum"] == pytest.approx(np.mean([m["rsum"] for m in per_fold]))
    assert got["rsum"] == pytest.approx(sum(got[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


def test_folds_with_shuffled_captions_and_unequal_counts():
    """Caption order and counts are arbitrary: each fold gets exactly its images' captions."""
    rng = np.random.default_rng(3)
    owner = rng.permutation(np.concatenate([np.arange(9), rng.integers(0, 9, 25)]))
    scores = rng.standard_normal((9, owner.size))
    scorer = RecordingScorer(scores)
    got = Protocol("tiny", fold_size=3).evaluate(scorer, owner)
    assert got["folds"] == 3 and len(scorer.calls) == 3
    for k, (images, captions) in enumerate(scorer.calls):
        assert images.tolist() == [3 * k, 3 * k + 1, 3 * k + 2]
        assert sorted(captions.tolist()) == np.flatnonzero(np.isin(owner, images)).tolist()
        want = retrieval_metrics(scores[np.ix_(images, captions)], owner[captions] - 3 * k)
        assert got["fold_metrics"][k] == want


def test_bad_score_block_shape():
    owner = np.array([0, 0, 1, 1])
    with pytest.raises(EvaluationError, match="score_block returned shape"):
        evaluate_protocol("flickr", lambda i, c: np.zeros((len(i), len(c) + 1)), owner)


def test_explicit_n_images_checks_indices():
    with pytest.raises(EvaluationError, match="outside"):
        evaluate_protocol("flickr", lambda i, c: np.zeros((len(i), len(c))), np.array([0, 3]), n_images=2)
