"""The one contract every matcher implements.

Cross-attention matchers have no embedding to index, so scoring is split into three parts that the
all-pairs engine (``itm.evaluation.engine``) can reuse:

- ``prepare_images``: everything computable once per image (a dict of tensors, leading dim N_img);
- ``prepare_captions``: everything computable once per caption (leading dim N_cap);
- ``score_block``: the scores of every image x caption pair of two prepared blocks, (N_img, N_cap).

``forward`` scores aligned pairs (image i with caption i), one at a time or in a batch; it is the
reference the engine is tested against, the path training uses, and it can return attention maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from itm.data.types import Captions

State = dict[str, torch.Tensor]


@dataclass
class PairScores:
    """Scores of aligned pairs, their parts (per branch), and attention maps on request."""

    score: torch.Tensor  # (B,)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # branch name -> (B,)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "w2r": (B, L, D)


class WordEmbedder(nn.Module):
    """Caption -> word vectors: a GloVe-initialised table, or precomputed contextual vectors."""

    def __init__(self, vocab_size: int, dim: int, init: torch.Tensor | None = None,
                 trainable: bool = False, precomputed: bool = False):
        super().__init__()
        self.dim = dim
        self.precomputed = precomputed
        self.table = None
        if not precomputed:
            self.table = nn.Embedding(vocab_size, dim, padding_idx=0)
            if init is not None:
                self.table.weight.data.copy_(init)  # (V, E)
            self.table.weight.requires_grad_(trainable)

    def forward(self, captions: Captions) -> torch.Tensor:
        if self.table is None:
            if captions.vectors is None:
                raise ValueError("this model reads precomputed word vectors; the captions carry none")
            return captions.vectors.float()  # (N, L, E)
        return self.table(captions.ids)  # (N, L, E)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) true lengths -> (N, max_len) bool, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def select_state(state: State, index: slice | torch.Tensor) -> State:
    """Rows of a prepared state (every tensor's leading dim is the item dim)."""
    return {k: v[index] for k, v in state.items()}


class Matcher(nn.Module):
    """Base class: subclasses implement the three scoring parts and ``forward``."""

    words: WordEmbedder

    def prepare_images(self, regions: torch.Tensor, objects: torch.Tensor) -> State:
        raise NotImplementedError

    def prepare_captions(self, captions: Captions) -> State:
        raise NotImplementedError

    def score_block(self, images: State, captions: State) -> torch.Tensor:
        raise NotImplementedError

    def pair_bytes(self, images: State, steps: int) -> int:
        """Approximate bytes of per-pair temporaries in ``score_block`` (sizes the engine's tiles)."""
        return 8 * sum(v[0].numel() for v in images.values()) * 4

    def forward(self, regions: torch.Tensor, objects: torch.Tensor, captions: Captions,
                uniform: torch.Tensor | None = None, return_attention: bool = False) -> PairScores:
        """Score aligned pairs. ``uniform`` (B,) bool marks pairs whose attention is replaced by the
        uniform distribution (BSSAN eq. 8: unmatched pairs in training)."""
        raise NotImplementedError

    def regularization(self) -> torch.Tensor:
        """Squared L2 norm of the weight matrices (not biases, norms or the word table)."""
        total = torch.zeros(())
        for name, p in self.named_parameters():
            if p.requires_grad and p.dim() >= 2 and not name.startswith("words."):
                total = total + p.pow(2).sum()
        return total
