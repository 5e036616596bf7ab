"""Retrieval split by caption vocabulary and the concept probe, on score matrices whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from itm.evaluation.vocabulary import (
    concept_probe,
    has_unseen_word,
    i2t_ranks,
    probe_words,
    r1_gain_interval,
    recall_by_vocabulary,
    t2i_by_vocabulary,
    t2i_ranks,
    with_concept_evidence,
)

SEEN = {"a", "dog", "runs", "red", "car"}
TOKENS = [["a", "dog", "runs"], ["a", "giraffe"], ["a", "red", "car"], ["two", "giraffes", "eat"],
          ["a", "dog"], ["a", "giraffe", "runs"]]
OWNER = np.array([0, 0, 1, 1, 2, 2])


def test_a_caption_is_unseen_when_a_word_it_reads_is_outside_the_training_words():
    np.testing.assert_array_equal(has_unseen_word(TOKENS, SEEN, 30), [False, True, False, True, False, True])
    assert not has_unseen_word([["a", "dog", "giraffe"]], SEEN, max_words=2)[0]  # cut before the word


def test_ranks_both_ways():
    scores = np.array([[9, 1, 5, 0, 0, 2],    # image 0: its captions 0, 1 score 9 and 1
                       [0, 8, 1, 2, 3, 0],    # image 1: its captions 2, 3 score 1 and 2
                       [1, 0, 0, 9, 7, 6]], dtype=np.float32)
    np.testing.assert_array_equal(t2i_ranks(scores, OWNER), [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(i2t_ranks(scores, OWNER), [0, 2, 1])  # best own caption vs the others


def test_groups_keep_their_own_candidates():
    """Each group is a retrieval problem of its own: the unseen group's captions compete only with each other."""
    scores = np.eye(3, dtype=np.float32)[:, OWNER]  # every caption scores 1 with its image only
    result = recall_by_vocabulary(scores, OWNER, has_unseen_word(TOKENS, SEEN, 30))
    assert result["seen"]["captions"] == result["unseen"]["captions"] == 3
    for group in ("seen", "unseen"):
        assert result[group]["t2i"] == result[group]["i2t"] == {"r1": 100.0, "r5": 100.0, "r10": 100.0}
    scores[:, 1] = [0, 5, 0]  # the unseen caption of image 0 now picks image 1
    result = recall_by_vocabulary(scores, OWNER, has_unseen_word(TOKENS, SEEN, 30))
    assert result["unseen"]["t2i"]["r1"] == pytest.approx(200 / 3) and result["seen"]["t2i"]["r1"] == 100.0


def test_probe_words_name_two_or_more_photos_and_recall_counts_them_in_the_top_k():
    photos = probe_words(TOKENS, OWNER, SEEN)
    assert list(photos) == ["giraffe"] and photos["giraffe"].tolist() == [0, 2]
    scores = np.array([[0.9], [0.1], [0.5], [0.0], [0.0], [0.0], [0.0]])  # 7 photos, "a giraffe"
    result = concept_probe(scores, [np.array([0, 2])], ["giraffe"], k=1)
    assert result["per_word"]["giraffe"] == {"photos": 2, "recall": 50.0}
    assert result["recall"] == 50.0 and result["chance"] == pytest.approx(100 / 7)


def test_concept_evidence_changes_only_the_columns_of_captions_whose_new_words_name_a_class():
    scores = np.array([[0.5, 0.2, 0.1, 0.3, 0.9, 0.1],
                       [0.4, 0.3, 0.8, 0.35, 0.1, 0.6],
                       [0.1, 0.9, 0.2, 0.4, 0.5, 0.2]], dtype=np.float32)
    asked = []

    def evidence(words):  # only "giraffes" names a class, shown by photo 1
        asked.append(words)
        return np.array([0.0, 3.0, -3.0]) if "giraffes" in words else None

    looked, changed = with_concept_evidence(scores, TOKENS, SEEN, 30, evidence)
    assert changed.tolist() == [False, False, False, True, False, False]
    assert ["giraffe"] in asked and ["two", "giraffes", "eat"] in asked and ["a", "dog"] not in asked
    np.testing.assert_array_equal(looked[:, ~changed], scores[:, ~changed])
    assert scores[:, 3].argmax() == 2 and looked[:, 3].argmax() == 1  # caption 3 now finds its photo
    spread = scores[:, 3].std() / np.array([0.0, 3.0, -3.0]).std()
    np.testing.assert_allclose(looked[:, 3], scores[:, 3] + spread * np.array([0.0, 3.0, -3.0]), rtol=1e-6)
    groups = t2i_by_vocabulary(looked, OWNER, has_unseen_word(TOKENS, SEEN, 30))
    assert groups["unseen"]["captions"] == 3 and groups["all"]["captions"] == 6


def test_the_r1_gain_interval_resamples_photos():
    owner = np.array([0, 0, 1, 1, 2, 2])
    before = np.array([1, 1, 1, 1, 1, 1])
    after = np.array([0, 0, 0, 0, 0, 0])  # every caption gains R@1: +100 points in every resample
    everyone = np.ones(6, dtype=bool)
    assert r1_gain_interval(before, after, owner, everyone) == [100.0, 100.0]
    low, high = r1_gain_interval(before, np.array([0, 0, 1, 1, 1, 1]), owner, everyone)  # one photo of three
    assert low == 0.0 and high == 100.0 and low < 100 / 3 < high
