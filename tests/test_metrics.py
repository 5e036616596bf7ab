"""Retrieval metrics against hand-computed cases, a naive loop reference and Monte-Carlo chance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itm.errors import ItmError
from itm.evaluation import metrics
from itm.evaluation.metrics import EvaluationError, chance_metrics, format_table, ranks, retrieval_metrics

# 3 images owning 3, 1 and 2 captions; ties at (img0, cap0)/(img0, cap3), (cap2: img0/img2), (cap4: img0/img2)
OWNER = np.array([0, 0, 0, 1, 2, 2])
SCORES = np.array(
    [
        [9, 1, 5, 9, 2, 3],
        [4, 8, 2, 1, 8, 6],
        [3, 6, 5, 7, 2, 1],
    ]
)


def naive_metrics(scores: np.ndarray, owner: np.ndarray) -> dict:
    """A deliberately literal reference: Python loops, every pair compared one by one."""
    n_images, n_captions = scores.shape
    i2t = []
    for i in range(n_images):
        best = None
        for j in range(n_captions):
            if owner[j] != i:
                continue
            rank = sum(1 for k in range(n_captions) if scores[i, k] > scores[i, j])
            best = rank if best is None else min(best, rank)
        i2t.append(best)
    t2i = [sum(1 for i in range(n_images) if scores[i, j] > scores[owner[j], j]) for j in range(n_captions)]

    def summary(r: list[int]) -> dict:
        s = sorted(r)
        mid = len(s) // 2
        median = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
        out = {f"r{k}": 100.0 * sum(x < k for x in r) / len(r) for k in (1, 5, 10)}
        return out | {"medr": math.floor(median) + 1, "meanr": sum(r) / len(r) + 1}

    a, b = summary(i2t), summary(t2i)
    return {"i2t": a, "t2i": b, "rsum": sum(a[f"r{k}"] + b[f"r{k}"] for k in (1, 5, 10))}


def assert_metrics_close(got: dict, want: dict) -> None:
    assert set(got) == {"i2t", "t2i", "rsum"}
    for direction in ("i2t", "t2i"):
        assert set(got[direction]) == {"r1", "r5", "r10", "medr", "meanr"}
        for key, value in want[direction].items():
            assert got[direction][key] == pytest.approx(value, abs=1e-9), (direction, key)
    assert got["rsum"] == pytest.approx(want["rsum"], abs=1e-9)


def random_case(rng: np.random.Generator, n_images: int, n_captions: int, tie_levels: int | None):
    """Every image owns >= 1 caption, the rest spread at random, columns shuffled."""
    owner = np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_captions - n_images)])
    owner = rng.permutation(owner)
    if tie_levels is None:
        scores = rng.standard_normal((n_images, n_captions)).astype(np.float32)
    else:
        scores = rng.integers(0, tie_levels, (n_images, n_captions))
    return scores, owner


# --- hand-computed ------------------------------------------------------------------------------


def test_hand_computed_ranks_with_ties_and_unequal_caption_counts():
    i2t, t2i = ranks(SCORES, OWNER)
    # img0: best gt 9, nothing strictly above (cap3 ties) -> 0; img1: gt 1, five above -> 5;
    # img2: best gt 2 (cap4), 3/6/5/7 above -> 4
    assert i2t.tolist() == [0, 5, 4]
    # cap0: 9 vs 4,3 -> 0; cap1: 1 vs 8,6 -> 2; cap2: 5 ties img2 -> 0; cap3: 1 vs 9,7 -> 2;
    # cap4: 2 vs 8 (img1), ties img0 -> 1; cap5: 1 vs 3,6 -> 2
    assert t2i.tolist() == [0, 2, 0, 2, 1, 2]


def test_hand_computed_metrics():
    want = {
        # ranks [0, 5, 4]: R@1 1/3, R@5 2/3, median 4 -> medr 5, mean 3 -> meanr 4
        "i2t": {"r1": 100 / 3, "r5": 200 / 3, "r10": 100.0, "medr": 5.0, "meanr": 4.0},
        # ranks [0, 2, 0, 2, 1, 2]: R@1 2/6, median (1 + 2) / 2 = 1.5 -> medr 2, mean 7/6 -> meanr 13/6
        "t2i": {"r1": 100 / 3, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 13 / 6},
        "rsum": 100 / 3 + 200 / 3 + 100 + 100 / 3 + 100 + 100,
    }
    assert_metrics_close(retrieval_metrics(SCORES, OWNER), want)
    assert_metrics_close(retrieval_metrics(SCORES / 10.0, OWNER), want)  # same ties as floats
    assert_metrics_close(naive_metrics(SCORES, OWNER), want)  # the reference agrees by hand too


def test_values_are_plain_python_floats():
    got = retrieval_metrics(SCORES, OWNER)
    assert type(got["rsum"]) is float
    assert all(type(v) is float for d in ("i2t", "t2i") for v in got[d].values())


def test_perfect_scores():
    owner = np.repeat(np.arange(4), 5)
    scores = (owner[None, :] == np.arange(4)[:, None]).astype(np.float64)
    got = retrieval_metrics(scores, owner)
    assert got["rsum"] == 600.0
    assert got["i2t"]["medr"] == got["t2i"]["medr"] == 1.0
    assert got["i2t"]["meanr"] == got["t2i"]["meanr"] == 1.0


# --- against the naive reference ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (3, 3), (6, 30), (13, 40), (25, 60)])
@pytest.mark.parametrize("tie_levels", [None, 2, 4])
def test_matches_naive_reference(shape, tie_levels):
    rng = np.random.default_rng([*shape, tie_levels or 0])
    scores, owner = random_case(rng, *shape, tie_levels)
    assert_metrics_close(retrieval_metrics(scores, owner), naive_metrics(scores, owner))


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(1)
    scores, owner = random_case(rng, 37, 120, 5)
    whole = ranks(scores, owner)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 250)  # two rows per chunk
    chunked = ranks(scores, owner)
    assert all(np.array_equal(a, b) for a, b in zip(whole, chunked, strict=True))


def test_torch_tensors_accepted():
    rng = np.random.default_rng(2)
    scores, owner = random_case(rng, 10, 50, None)
    want = retrieval_metrics(scores, owner)
    assert retrieval_metrics(torch.from_numpy(scores), torch.from_numpy(owner)) == want
    # bfloat16 has no numpy dtype: values round, but integer-valued scores stay exact
    ints, _ = random_case(rng, 10, 50, 8)
    assert retrieval_metrics(torch.tensor(ints, dtype=torch.bfloat16), owner) == retrieval_metrics(
        ints, owner
    )


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_matches_reference_and_is_permutation_invariant(data):
    n_images = data.draw(st.integers(1, 6))
    n_captions = data.draw(st.integers(n_images, 15))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scores, owner = random_case(rng, n_images, n_captions, data.draw(st.sampled_from([None, 2, 3])))
    got = retrieval_metrics(scores, owner)
    assert_metrics_close(got, naive_metrics(scores, owner))
    # relabelling images and reordering captions must not change anything
    rows, cols = rng.permutation(n_images), rng.permutation(n_captions)
    relabel = np.argsort(rows)  # old image index -> new row
    assert_metrics_close(retrieval_metrics(scores[rows][:, cols], relabel[owner[cols]]), got)
    # a strictly increasing transform of the scores keeps every rank
    assert_metrics_close(retrieval_metrics(np.exp(scores / 4.0), owner), got)
    for direction in ("i2t", "t2i"):
        r = got[direction]
        assert 0 <= r["r1"] <= r["r5"] <= r["r10"] <= 100
        assert r["medr"] >= 1 and r["meanr"] >= 1


# --- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "owner", "message"),
    [
        (np.zeros(4), np.zeros(4, dtype=int), "2-D"),
        (np.zeros((2, 3)), np.array([0, 1]), "one entry per caption"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), "outside"),
        (np.zeros((3, 3)), np.array([0, 0, 1]), "no caption"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]), "NaN"),
    ],
)
def test_bad_inputs_raise(scores, owner, message):
    with pytest.raises(EvaluationError, match=message) as info:
        retrieval_metrics(scores, owner)
    assert isinstance(info.value, ItmError) and isinstance(info.value, ValueError)


# --- chance -------------------------------------------------------------------------------------


def test_chance_tiny_case_by_hand():
    # i2t: 2 positives among 4 candidates. P(rank 0) = 1/2, P(1) = 1/2 * 2/3 = 1/3, P(2) = 1/6:
    # R@1 50, R@5 100, E[rank] = 1/3 + 2/6 = 2/3, CDF(0) = 1/2 -> median 0 -> medr 1.
    # t2i: 1 of 2 images, rank uniform on {0, 1}: R@1 50, medr 1, meanr 1.5.
    got = chance_metrics(2, 2)
    assert_metrics_close(
        got,
        {
            "i2t": {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 5 / 3},
            "t2i": {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.5},
            "rsum": 500.0,
        },
    )


def test_chance_flickr_1k_closed_forms():
    got = chance_metrics(1000, 5)
    assert got["t2i"] == pytest.approx({"r1": 0.1, "r5": 0.5, "r10": 1.0, "medr": 500.0, "meanr": 500.5})
    # 1 - C(4995, K) / C(5000, K)
    for k in (1, 5, 10):
        want = 100 * (1 - math.comb(4995, k) / math.comb(5000, k))
        assert got["i2t"][f"r{k}"] == pytest.approx(want, rel=1e-9)
    assert got["i2t"]["meanr"] == pytest.approx(4995 / 6 + 1)


def test_chance_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n_images, per_image, trials = 12, 3, 600
    owner = np.repeat(np.arange(n_images), per_image)
    pooled = [ranks(rng.random((n_images, n_images * per_image)), owner) for _ in range(trials)]
    i2t = np.concatenate([p[0] for p in pooled])
    t2i = np.concatenate([p[1] for p in pooled])
    want = chance_metrics(n_images, per_image)
    for direction, sample in (("i2t", i2t), ("t2i", t2i)):
        got = metrics.summarize_ranks(sample)
        for k in (1, 5, 10):
            assert got[f"r{k}"] == pytest.approx(want[direction][f"r{k}"], abs=2.0), (direction, k)
        assert got["meanr"] == pytest.approx(want[direction]["meanr"], rel=0.03)
        assert abs(got["medr"] - want[direction]["medr"]) <= 1


@pytest.mark.parametrize("args", [(0, 5), (10, 0)])
def test_chance_rejects_empty(args):
    with pytest.raises(EvaluationError):
        chance_metrics(*args)


# --- table --------------------------------------------------------------------------------------


def test_format_table():
    text = format_table(retrieval_metrics(SCORES, OWNER), title="hand case")
    lines = text.splitlines()
    assert lines[0] == "hand case"
    assert lines[1].split() == ["R@1", "R@5", "R@10", "medr", "meanr"]
    assert lines[2].split() == ["i2t", "33.3", "66.7", "100.0", "5.0", "4.0"]
    assert lines[3].split() == ["t2i", "33.3", "100.0", "100.0", "2.0", "2.2"]
    assert lines[4].split() == ["rsum", "433.3"]
    assert len({len(line) for line in lines[1:4]}) == 1  # fixed width
    assert format_table(chance_metrics(10, 5)).splitlines()[0].split()[0] == "R@1"
