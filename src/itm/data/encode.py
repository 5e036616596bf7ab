"""Token lists -> padded id tensors (and optional contextual word vectors) for the matchers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from itm.data.types import Captions
from itm.data.vocab import Vocab
from itm.errors import DataError


def _lengths(token_lists: Sequence[list[str]], max_words: int) -> np.ndarray:
    """(N,) lengths after the cut; DataError for an empty caption."""
    if max_words <= 0:
        raise ValueError(f"max_words must be positive, got {max_words}")
    lengths = np.fromiter((min(len(t), max_words) for t in token_lists), dtype=np.int64, count=len(token_lists))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataError(f"caption {int(empty[0])} has no tokens")
    return lengths


def _pad_vectors(vectors: Sequence[np.ndarray], token_lists: Sequence[list[str]],
                 lengths: np.ndarray, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, width, E) zero-padded word vectors, cut like the ids."""
    if len(vectors) != len(token_lists):
        raise DataError(f"word vectors: {len(vectors)} arrays for {len(token_lists)} captions")
    dim = int(np.shape(vectors[0])[1]) if len(vectors) else 0
    out = torch.zeros(len(vectors), width, dim, dtype=dtype)  # (N, L, E)
    for i, (vec, tokens) in enumerate(zip(vectors, token_lists, strict=True)):
        if np.ndim(vec) != 2 or vec.shape != (len(tokens), dim):
            raise DataError(f"word vectors of caption {i}: shape {np.shape(vec)}, expected ({len(tokens)}, {dim})")
        n = int(lengths[i])
        out[i, :n] = torch.from_numpy(np.ascontiguousarray(vec[:n]))  # (n, E)
    return out


def encode_captions(token_lists: Sequence[list[str]], vocab: Vocab, max_words: int,
                    vectors: Sequence[np.ndarray] | None = None,
                    vector_dtype: torch.dtype = torch.float16) -> Captions:
    """Ids (N, L) padded with 0 to the longest caption after cutting at ``max_words``.

    ``vectors``: one (L_i, E) array per caption (MiniLM word vectors, one row per token); they fill
    ``Captions.vectors`` (N, L, E), zero-padded and cut the same way, stored as ``vector_dtype``
    (float16 by default: halves memory, the matchers cast to float32).
    """
    lengths = _lengths(token_lists, max_words)
    width = int(lengths.max()) if lengths.size else 0
    ids = np.zeros((len(token_lists), width), dtype=np.int64)  # (N, L), 0 = <pad>
    for i, tokens in enumerate(token_lists):
        n = int(lengths[i])
        ids[i, :n] = vocab.encode(tokens[:n])
    padded = None if vectors is None else _pad_vectors(vectors, token_lists, lengths, width, vector_dtype)
    return Captions(torch.from_numpy(ids), torch.from_numpy(lengths), padded)
