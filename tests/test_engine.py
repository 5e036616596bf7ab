"""The all-pairs engine: exact against one-pair-at-a-time forward, for every registered matcher.

Exactness over memory budgets and tile sizes (down to one image and one caption per tile), unsorted
caption orders and varied lengths; the engine leaves the caller's train/eval modes alone; the
engine's score parts are the forward's parts, pair by pair; ``evaluate_model`` under the flickr protocol
is ``retrieval_metrics`` of the full matrix.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import numpy as np
import pytest
import torch
from helpers import ENGINE_LENGTHS, engine_data, set_mixed_modes
from helpers import engine_model as tiny_model

from itm.data.types import Captions
from itm.evaluation import engine
from itm.evaluation.engine import TilePlan, plan_tiles, score_all_pairs, score_pairs_naive
from itm.evaluation.evaluate import JSON_KEYS, Member, combine_scores, evaluate_ensemble, evaluate_model
from itm.evaluation.metrics import retrieval_metrics
from itm.models import MODELS
from itm.models.base import TOTAL

VARIANTS = MODELS.names()
# tests that need one model (any would do) take the first registered; an ensemble test, two different ones
EXAMPLE, OTHER = VARIANTS[0], VARIANTS[-1]
N_IMAGES = 5
LENGTHS = ENGINE_LENGTHS
OWNER = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3])  # images 0-3 own two captions, image 4 one
# (memory budget MB, caption tile): 0 MB forces one image per chunk and per tile; the fractional
# budgets give chunks smaller than the 5 images and image tiles smaller than a chunk (ragged ends)
TILINGS = [(0, 1), (0, 4), (0.005, 2), (0.02, 1), (0.05, 2), (0.05, 4), (1, 3), (1024, 512)]
# (images per prepared chunk, captions per tile, images per tile), forced
PLANS = [(1, 1, 1), (2, 3, 1), (3, 2, 2), (5, 4, 3), (4, 9, 4), (5, 9, 5), (5, 2, 2)]


def make_data(lengths=LENGTHS, n_images=N_IMAGES, seed=0, vectors=False):
    return engine_data(lengths, n_images, seed, vectors)


@functools.cache
def reference(name: str, source: str = "glove"):
    """(model, features, captions, naive scores (n_images, n_captions)) for one variant."""
    model, _ = tiny_model(name, f"text.source={source}")
    features, captions = make_data(vectors=source == "minilm")
    pairs = [(i, c) for i in range(len(features)) for c in range(len(captions))]
    naive = score_pairs_naive(model, features, captions, pairs).reshape(len(features), len(captions))
    return model, features, captions, naive


@pytest.mark.parametrize("budget,tile", TILINGS, ids=[f"{b}MB-tile{t}" for b, t in TILINGS])
@pytest.mark.parametrize("name", VARIANTS)
def test_all_pairs_equal_one_pair_at_a_time(name, budget, tile):
    model, features, captions, naive = reference(name)
    scores = score_all_pairs(model, features, captions, memory_budget_mb=budget, caption_tile=tile)
    assert scores.shape == (N_IMAGES, len(LENGTHS))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, naive, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("plan", PLANS, ids=[f"chunk{c}-cap{t}-img{i}" for c, t, i in PLANS])
@pytest.mark.parametrize("name", VARIANTS)
def test_all_pairs_exact_under_forced_tile_plans(name, plan, monkeypatch):
    model, features, captions, naive = reference(name)
    monkeypatch.setattr(engine, "plan_tiles", lambda *args, **kwargs: TilePlan(*plan))
    scores = score_all_pairs(model, features, captions)
    np.testing.assert_allclose(scores, naive, rtol=1e-4, atol=1e-4)


# bf16 autocast vs fp32: the largest |difference| over the matrix, relative to the largest |score|.
# Measured on these tiny random models (torch 2.13 CPU autocast): 0.004 to 0.017 (bssan_sharp);
# relative to the score std, 0.02 (dual, MLASM) to 0.3 (BSSAN, whose untrained scores barely
# spread; 0.66 for bssan_o2w). Printed by: pytest tests/test_engine.py -k bf16 -s
BF16_TOLERANCE = 0.03


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_matrix_stays_near_the_fp32_matrix(name):
    model, features, captions, _ = reference(name)
    exact = score_all_pairs(model, features, captions, memory_budget_mb=0.02, caption_tile=4)
    bf16 = score_all_pairs(model, features, captions, memory_budget_mb=0.02, caption_tile=4, precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == exact.shape
    diff = np.abs(bf16 - exact).max()
    scale = np.abs(exact).max()
    print(f"{name}: bf16 max |diff| {diff:.2e} = {diff / scale:.4f} of max |score|, {diff / exact.std():.3f} of the std")
    assert diff > 0, "the bf16 scores equal the fp32 ones: autocast did not reach the model"
    assert diff <= BF16_TOLERANCE * scale
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights alone


def test_tilings_cover_partial_chunks_and_tiles():
    """Guard for the tests above: the budgets really produce ragged chunks and sub-chunk tiles."""
    model, features, captions, _ = reference(EXAMPLE)
    plans = [plan_tiles(model, features, captions, b, t) for b, t in TILINGS]
    assert any(1 < p.image_chunk < N_IMAGES for p in plans)
    assert any(1 < p.image_tile < p.image_chunk for p in plans)
    assert any(p.image_tile == 1 and p.caption_tile == 1 for p in plans)
    assert any(N_IMAGES % p.image_tile and p.image_chunk == N_IMAGES for p in plans)


@pytest.mark.parametrize("name", VARIANTS)
def test_precomputed_word_vectors_path_is_exact(name):
    model, features, captions, naive = reference(name, "minilm")
    assert model.words.precomputed
    for budget, tile in [(0, 1), (1024, 512)]:
        scores = score_all_pairs(model, features, captions, memory_budget_mb=budget, caption_tile=tile)
        np.testing.assert_allclose(scores, naive, rtol=1e-4, atol=1e-4)


def test_tiny_budget_gives_one_image_tiles():
    model, features, captions, _ = reference(EXAMPLE)
    plan = plan_tiles(model, features, captions, memory_budget_mb=0, caption_tile=1)
    assert (plan.image_chunk, plan.image_tile, plan.caption_tile) == (1, 1, 1)
    roomy = plan_tiles(model, features, captions, memory_budget_mb=1024, caption_tile=512)
    assert roomy.image_chunk == N_IMAGES and roomy.image_tile == N_IMAGES
    assert roomy.caption_tile == len(LENGTHS)


def test_tiles_are_sized_to_the_cache_not_to_the_budget(monkeypatch):
    """A roomy budget no longer makes tiles of the budget's size: a tile's per-pair bytes stay within
    ``CACHE_TILE_BYTES`` (at least one image a tile), and a model whose pairs need many floats gets
    at most ``CACHE_CAPTION_TILE`` captions a tile; the cached plan still scores exactly."""
    model, features, captions, naive = reference(EXAMPLE)
    probe = model.prepare_images(features.streams(model.image_streams, slice(0, 1)))
    pair_bytes = model.pair_bytes(probe, int(captions.lengths.max()))
    monkeypatch.setattr(engine, "CACHE_CAPTION_TILE", 4)
    monkeypatch.setattr(engine, "CACHE_TILE_BYTES", 2 * 4 * pair_bytes)  # two images of four captions
    plan = plan_tiles(model, features, captions, memory_budget_mb=1024, caption_tile=512)
    assert (plan.image_chunk, plan.caption_tile, plan.image_tile) == (N_IMAGES, 4, 2)
    np.testing.assert_allclose(score_all_pairs(model, features, captions), naive, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(engine, "CACHE_TILE_BYTES", 10**12)  # everything fits: the caller's tile stands
    assert plan_tiles(model, features, captions, 1024, 512).caption_tile == len(LENGTHS)


@pytest.mark.parametrize("name", VARIANTS)
def test_caption_order_is_the_callers(name):
    model, features, captions, naive = reference(name)
    perm = torch.tensor([5, 2, 8, 0, 7, 1, 4, 3, 6])
    scores = score_all_pairs(model, features, captions.select(perm), memory_budget_mb=1, caption_tile=2)
    np.testing.assert_allclose(scores, naive[:, perm.numpy()], rtol=1e-4, atol=1e-4)


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_engine_never_changes_train_eval_modes(mode):
    model, config = tiny_model(EXAMPLE)
    {"train": model.train, "eval": model.eval, "mixed": lambda: set_mixed_modes(model)}[mode]()
    before = _modes(model)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    features, captions = make_data()
    scores = score_all_pairs(model, features, captions, memory_budget_mb=1, caption_tile=4)
    assert _modes(model) == before
    score_pairs_naive(model, features, captions, [(0, 0), (1, 3)])
    assert _modes(model) == before
    evaluate_model(model, features, captions, OWNER, "flickr", memory_budget_mb=1, caption_tile=4)
    assert _modes(model) == before
    for key, value in model.state_dict().items():  # no batch-norm statistics were updated
        assert torch.equal(value, stats[key]), key
    model.eval()
    np.testing.assert_array_equal(score_all_pairs(model, features, captions, 1, 4), scores)


def test_engine_restores_modes_when_scoring_fails(monkeypatch):
    model, _ = tiny_model(EXAMPLE)
    set_mixed_modes(model)
    before = _modes(model)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "score_block", broken)
    features, captions = make_data()
    with pytest.raises(RuntimeError, match="boom"):
        score_all_pairs(model, features, captions)
    assert _modes(model) == before


@pytest.mark.parametrize("name", VARIANTS)
def test_score_parts_are_the_forward_parts_pair_by_pair(name):
    """``score_all_parts``: the total is ``score_all_pairs``'s matrix, and each part the model's forward
    reports is a matrix whose entries are that part of the one-pair forward."""
    model, features, captions, naive = reference(name)
    parts = engine.score_all_parts(model, features, captions, memory_budget_mb=0.02, caption_tile=2)
    np.testing.assert_array_equal(parts[TOTAL], score_all_pairs(model, features, captions, 0.02, 2))
    with torch.no_grad():
        forward = model(*pair_inputs(model, features, captions, 0, 0)).parts
    assert set(parts) == {TOTAL, *forward}
    for i in range(N_IMAGES):
        for c in range(len(LENGTHS)):
            with torch.no_grad():
                out = model(*pair_inputs(model, features, captions, i, c))
            for part, value in out.parts.items():
                np.testing.assert_allclose(parts[part][i, c], value[0].item(), rtol=1e-4, atol=1e-4)


def pair_inputs(model, features, captions, i, c):
    one = captions.select(slice(c, c + 1))
    n = int(one.lengths[0])
    return features.streams(model.image_streams, slice(i, i + 1)), Captions(one.ids[:, :n], one.lengths)


@pytest.mark.parametrize("name", VARIANTS)
def test_evaluate_model_flickr_is_retrieval_metrics_of_the_full_matrix(name):
    model, features, captions, naive = reference(name)
    result = evaluate_model(model, features, captions, OWNER, "flickr", memory_budget_mb=1, caption_tile=2)
    expected = retrieval_metrics(score_all_pairs(model, features, captions), OWNER)
    for direction in ("i2t", "t2i"):
        assert result[direction] == pytest.approx(expected[direction])
    assert result["rsum"] == pytest.approx(expected["rsum"])
    assert set(JSON_KEYS) <= set(result)
    assert (result["n_images"], result["n_captions"]) == (N_IMAGES, len(LENGTHS))
    assert result["protocol"] == "flickr"
    # and the naive matrix ranks the same way (ties aside, which random scores do not have)
    assert retrieval_metrics(naive, OWNER)["rsum"] == pytest.approx(result["rsum"])


def zscored(matrix: np.ndarray) -> np.ndarray:
    return (matrix - matrix.mean()) / matrix.std()


@pytest.mark.parametrize("normalise, norm", [("none", lambda m: m), ("zscore", zscored)])
def test_ensemble_ranks_by_the_mean_of_the_members_matrices(normalise, norm):
    """Two different models: the ensemble's metrics are those of the mean of their naive matrices,
    each z-scored first by default."""
    first, features, captions, naive_first = reference(EXAMPLE)
    second, _, _, naive_second = reference(OTHER)
    members = [Member(first, features, captions), Member(second, features, captions)]
    result = evaluate_ensemble(members, OWNER, "flickr", memory_budget_mb=1, caption_tile=3, normalise=normalise)
    expected = retrieval_metrics((norm(naive_first) + norm(naive_second)) / 2, OWNER)
    assert result["rsum"] == pytest.approx(expected["rsum"])
    for direction in ("i2t", "t2i"):
        assert result[direction] == pytest.approx(expected[direction])
    if normalise == "none":  # the raw mean is its own ranking here, so the check can fail (zscore: the next test)
        single = [retrieval_metrics(naive, OWNER)["rsum"] for naive in (naive_first, naive_second)]
        assert expected["rsum"] not in single


def test_zscored_ensemble_ignores_each_members_scale():
    """A member whose scores are 1,000 times larger and shifted (another objective's scale) takes over
    the raw mean, and changes nothing once each matrix is z-scored."""
    gen = np.random.default_rng(0)
    first, second = gen.normal(size=(4, 20)), gen.normal(size=(4, 20))
    rescaled = 1000 * second + 7
    assert np.allclose(combine_scores([first, rescaled], "zscore"), combine_scores([first, second], "zscore"),
                       atol=1e-5)
    raw = combine_scores([first, rescaled], "none")
    assert np.array_equal(raw.argmax(1), rescaled.argmax(1))  # the large member alone decides
    assert not np.array_equal(raw.argmax(1), (first + second).argmax(1))
    assert combine_scores([first], "zscore") is first  # one model keeps its own scale


def test_ensemble_refuses_members_of_different_data():
    model, features, captions, _ = reference(EXAMPLE)
    fewer = features.select(torch.arange(N_IMAGES - 1))
    with pytest.raises(ValueError, match="different"):
        evaluate_ensemble([Member(model, features, captions), Member(model, fewer, captions)], OWNER)


def test_bounded_exp_is_a_softmax_numerator_even_past_the_overflow_bound():
    """``bounded_exp_``: exp without a maximum within the bound, and with it beyond (exp(200)
    overflows float32): normalised along ``dim``, both equal the softmax."""
    from itm.models.base import EXP_SAFE_BOUND, bounded_exp_

    gen = torch.Generator().manual_seed(0)
    for bound in (9.0, 200.0):
        logits = bound * (2 * torch.rand(3, 5, 4, generator=gen) - 1)
        for dim in (1, 2):
            e = bounded_exp_(logits.clone(), bound, dim)
            assert torch.isfinite(e).all() and bool(bound > EXP_SAFE_BOUND) == bool(e.max() <= 1)
            torch.testing.assert_close(e / e.sum(dim, keepdim=True), torch.softmax(logits, dim))


@pytest.mark.parametrize("name,override", [("caan", "model.temperature=200"), ("mlasm", "model.lambda_t2i=120")])
def test_sharp_attention_past_the_exp_bound_still_equals_one_pair_at_a_time(name, override):
    """A temperature beyond ``EXP_SAFE_BOUND`` takes the models' max-subtracting path, still exact."""
    model, _ = tiny_model(name, override)
    features, captions = make_data()
    pairs = [(i, c) for i in range(len(features)) for c in range(len(captions))]
    naive = score_pairs_naive(model, features, captions, pairs).reshape(len(features), len(captions))
    np.testing.assert_allclose(score_all_pairs(model, features, captions), naive, rtol=1e-4, atol=1e-4)


@contextlib.contextmanager
def torch_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("name", VARIANTS)
def test_workers_give_the_one_thread_matrix_bit_for_bit(name, monkeypatch):
    """N torch threads score as N one-thread workers over the caption tiles: every part's matrix equals
    one thread's exactly, for any plan, and torch's thread count is back afterwards."""
    model, features, captions, naive = reference(name)
    monkeypatch.setattr(engine, "plan_tiles", lambda *args, **kwargs: TilePlan(2, 2, 1))  # 3 chunks x 5 tiles
    with torch_threads(1):
        alone = engine.score_all_parts(model, features, captions)
    seen = []
    score_block = type(model).score_block

    def spying(self, *args, **kwargs):
        seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return score_block(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "score_block", spying)
    with torch_threads(3):
        shared = engine.score_all_parts(model, features, captions)
        assert torch.get_num_threads() == 3
    assert set(shared) == set(alone)
    for part in alone:
        np.testing.assert_array_equal(shared[part], alone[part])
    np.testing.assert_allclose(shared[TOTAL], naive, rtol=1e-4, atol=1e-4)
    assert len({ident for ident, _, _ in seen}) > 1  # the tiles did run on several threads
    assert {(threads, inference) for _, threads, inference in seen} == {(1, True)}


def test_a_workers_error_reaches_the_caller_at_once_and_threads_are_restored(monkeypatch):
    """The first tile fails: the error reaches the caller, the tiles not yet started are dropped (not
    scored before the error surfaces), and torch's thread count is the caller's again."""
    model, _ = tiny_model(EXAMPLE)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        time.sleep(0.05)
        raise RuntimeError("boom in a worker")

    monkeypatch.setattr(model, "score_block", broken)
    monkeypatch.setattr(engine, "plan_tiles", lambda *args, **kwargs: TilePlan(5, 1, 5))  # one chunk, 9 tiles
    features, captions = make_data()
    with torch_threads(2), pytest.raises(RuntimeError, match="boom in a worker"):
        try:
            score_all_pairs(model, features, captions)
        finally:
            assert torch.get_num_threads() == 2
    assert len(calls) < len(LENGTHS)
