"""Hubness figures and the bank corrections (itm.evaluation.hubness): pure numpy, checked against
their definitions written out here."""

from __future__ import annotations

import numpy as np
import pytest

from itm.evaluation.hubness import (
    Normalisation,
    hubness,
    hubness_from_lists,
    normalise,
    photo_stats,
    skewness,
)


def hub_world(seed: int = 0, n: int = 30, hub_boost: float = 1.5):
    """n photos, n queries (query j shows photo j), n bank captions; photo 0 is a hub: it scores
    ``hub_boost`` higher than the others for every caption, queries and bank alike."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 0.3, (n, n)) + np.eye(n)  # each query's own photo 1 higher
    bank = rng.normal(0, 0.3, (n, n))
    scores[0] += hub_boost
    bank[0] += hub_boost
    return scores, bank


def test_skewness_is_the_third_standardised_moment():
    values = np.array([0.0, 0, 0, 1, 5])
    mu, sigma = values.mean(), values.std()
    assert skewness(values) == pytest.approx(((values - mu) ** 3).mean() / sigma**3)
    assert skewness(np.ones(4)) == 0.0
    assert skewness(np.array([0.0, 1, 2])) == pytest.approx(0.0)


def test_a_hub_photo_answers_the_queries_and_skews_n_k():
    scores, _ = hub_world()
    figures = hubness(scores, k=3)
    assert figures["top1_share"] > 0.7  # the hub is most queries' top photo
    assert figures["n_k_skewness"] > 2
    even = hubness(np.eye(30) + 0.01 * np.random.default_rng(1).normal(size=(30, 30)), k=1)
    assert (even["top1_share"], even["n_k_skewness"], even["never_in_top_k"]) == (pytest.approx(1 / 30, abs=1e-4), 0, 0)


def test_figures_from_ranked_lists_equal_those_of_the_matrix():
    scores, _ = hub_world(seed=3, hub_boost=0.4)
    lists = [list(np.argsort(-scores[:, q], kind="stable")[:10]) for q in range(scores.shape[1])]
    assert hubness_from_lists(lists, 30) == hubness(scores, k=10)


@pytest.mark.parametrize("norm", [Normalisation("csls", k=5), Normalisation("is", beta=10), Normalisation("dis", beta=10)])
def test_each_correction_removes_the_hub(norm):
    scores, bank = hub_world()
    fixed = normalise(scores, photo_stats(bank, norm), norm)
    raw, after = hubness(scores, 1), hubness(fixed, 1)
    assert raw["top1_share"] > 0.7 and after["top1_share"] < raw["top1_share"] / 2
    found = [(matrix.argmax(0) == np.arange(30)).mean() for matrix in (scores, fixed)]
    assert found[1] > found[0] + 0.4  # most queries find their own photo again


def test_csls_and_inverted_softmax_follow_their_formulas():
    scores, bank = hub_world(seed=2)
    csls = Normalisation("csls", k=4)
    r = np.sort(bank, axis=1)[:, -4:].mean(1)
    np.testing.assert_allclose(normalise(scores, photo_stats(bank, csls), csls), 2 * scores - r[:, None], rtol=1e-5,
                               atol=1e-5)
    inverted = Normalisation("is", beta=7.0, bank_size=20)
    explicit = np.log(np.exp(7 * scores) / np.exp(7 * bank[:, :20]).sum(1, keepdims=True))
    np.testing.assert_allclose(normalise(scores, photo_stats(bank, inverted), inverted), explicit, rtol=1e-5, atol=1e-4)


def test_dynamic_inverted_softmax_leaves_queries_whose_top_photo_is_no_bank_hub():
    scores, bank = hub_world(seed=4, hub_boost=0.0)
    bank[:, :] = -1.0
    bank[5] = 1.0  # photo 5 is the top of every bank caption: the activation set is {5}
    norm = Normalisation("dis", beta=10)
    stats = photo_stats(bank, norm)
    assert np.flatnonzero(stats.activated).tolist() == [5]
    out = normalise(scores, stats, norm)
    raw_top = scores.argmax(0)
    kept = raw_top != 5
    np.testing.assert_allclose(out[:, kept], scores[:, kept], rtol=1e-6)
    assert not np.allclose(out[:, ~kept], scores[:, ~kept])  # query 5's column is normalised
    assert (~kept).sum() >= 1


def test_no_correction_is_the_identity_and_bad_methods_are_refused():
    scores, bank = hub_world()
    none = Normalisation()
    np.testing.assert_array_equal(normalise(scores, photo_stats(bank, none), none), scores.astype(np.float32))
    with pytest.raises(ValueError, match="method must be one of"):
        Normalisation("qb")


@pytest.mark.parametrize("norm", [Normalisation("csls", k=4), Normalisation("is", beta=7.0, bank_size=20)])
def test_a_per_photo_offset_ranks_each_query_as_the_correction_does(norm):
    from itm.evaluation.hubness import rank_offsets

    scores, bank = hub_world(seed=5)
    stats = photo_stats(bank, norm)
    folded = scores - rank_offsets(stats, norm)[:, None]
    corrected = normalise(scores, stats, norm)
    np.testing.assert_array_equal(np.argsort(-folded, axis=0, kind="stable"), np.argsort(-corrected, axis=0, kind="stable"))
    with pytest.raises(ValueError, match="not a per-photo offset"):
        rank_offsets(stats, Normalisation("dis"))


def test_the_shipped_caption_pool_is_every_train_caption_with_its_photo():
    """The pool search draws each photo's own bank from: 30,000 captions, five a photo, each with a
    16-hex-digit photo key; its identity names the bank size, so an index of another size re-scores."""
    from itm.data.caption_bank import caption_pool, pool_identity

    tokens, photos = caption_pool()
    assert len(tokens) == len(photos) == 30000 and all(tokens)
    assert all(len(p) == 16 and int(p, 16) >= 0 for p in photos)
    _, counts = np.unique(photos, return_counts=True)
    # 6,000 train photos; two of them are the same file content (one key, ten captions)
    assert len(counts) == 5999 and sorted(set(counts.tolist())) == [5, 10] and (counts == 10).sum() == 1
    assert pool_identity(32) != pool_identity(64) and pool_identity(32)["sha1"] == pool_identity(64)["sha1"]


def test_search_offers_csls_over_each_photos_own_bank_and_none():
    from itm.evaluation.hubness import SEARCH_DEFAULT, SEARCH_METHODS

    assert set(SEARCH_METHODS) == {"none", "csls"} and SEARCH_DEFAULT == "csls"
    assert SEARCH_METHODS["csls"].neighbours and SEARCH_METHODS["csls"].bank_size is None
    assert "nearest pool captions" in SEARCH_METHODS["csls"].label()
