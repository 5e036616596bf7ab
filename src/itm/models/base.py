"""The one contract every matcher implements.

A matcher scores (image, caption) pairs. Images arrive as named **streams** (``ImageStreams``): the
region grid, the object proposals and the whole-image vector; each model says which it reads
(``image_streams``). Cross-attention matchers have no embedding to index, so scoring is split into
three parts that the all-pairs engine (``itm.evaluation.engine``) reuses:

- ``prepare_images``: everything computable once per image (a dict of tensors, leading dim N_img);
- ``prepare_captions``: everything computable once per caption (leading dim N_cap);
- ``score_block``: the scores of every image x caption pair of two prepared blocks, (N_img, N_cap);
  with ``parts=True`` also each named part of the score (a branch), as the engine's ``score_all_parts``
  returns them.

``forward`` scores aligned pairs (image i with caption i): the reference the engine is tested
against. It returns the total, its named parts and, on request, the attention maps the model
declares in ``attention_specs`` (what attends over what), so pictures never switch on a model.
Training calls one hook, ``training_loss``: the model's ``objective`` on the batch plus its
``penalty`` (terms of the weights alone); a model's training-only behaviour lives behind those two.

Search needs more of a model that declares itself ``indexable`` (its score is an inner product of
per-item vectors, so a FAISS index can hold one side): ``encode_images``, ``encode_captions`` and
``vector_dim``, the length of those vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from itm.data.types import Captions

State = dict[str, torch.Tensor]
ImageStreams = dict[str, torch.Tensor]  # "regions": (N, D, M), "objects": (N, P, Q), "whole": (N, M)

# what a map's rows and columns are: "words" (L), "regions" (D grid cells), "objects" (P),
# "image" / "caption" (one row: a weight per fragment of the other axis)
AXES = ("words", "regions", "objects", "image", "caption")


@dataclass
class InputDims:
    """Feature widths a model is built for (read from the data, stored in checkpoints)."""

    word_dim: int  # E
    region_dim: int  # M (also the width of the whole-image vector)
    object_dim: int  # Q
    vocab_size: int


@dataclass(frozen=True)
class AttentionSpec:
    """One attention map a model returns: ``rows`` attend over ``over``; each real row sums to 1
    over the real positions of ``over`` (padded words get 0, padded word rows are all 0)."""

    rows: str
    over: str
    title: str  # for pictures and ``itm models``

    def __post_init__(self):
        if self.rows not in AXES or self.over not in AXES:
            raise ValueError(f"attention axes must be among {AXES}, got ({self.rows}, {self.over})")


@dataclass
class PairScores:
    """Scores of aligned pairs, their parts (per branch), and attention maps on request."""

    score: torch.Tensor  # (B,)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # part name -> (B,)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, rows, over)


class WordEmbedder(nn.Module):
    """Caption -> word vectors: a GloVe-initialised table, or precomputed contextual vectors.

    Ids below the table's size are the training vocabulary; ids from there on are rows ``extend``
    added at inference (words outside the training captions, ``itm.data.open_vocab``). The extra rows
    are not weights: they are derived from the word-vector table and never saved."""

    def __init__(self, vocab_size: int, dim: int, init: torch.Tensor | None = None,
                 trainable: bool = False, precomputed: bool = False, anchor_weight: float = 0.0):
        super().__init__()
        self.dim = dim
        self.precomputed = precomputed
        self.table = None
        self.anchor_weight = anchor_weight if (trainable and init is not None and not precomputed) else 0.0
        if not precomputed:
            self.table = nn.Embedding(vocab_size, dim, padding_idx=0)
            if init is not None:
                self.table.weight.data.copy_(init)  # (V, E)
            self.table.weight.requires_grad_(trainable)
        self.register_buffer("extra", torch.zeros(0, dim), persistent=False)  # (K, E) rows added by extend
        # the table's initial (GloVe) rows, which anchor_weight pulls fine-tuned rows back towards
        self.register_buffer("anchor", init.clone() if self.anchor_weight else torch.zeros(0, dim), persistent=False)

    def penalty(self) -> torch.Tensor:
        """anchor_weight * the mean squared distance of the rows from their initial vectors (training
        only): fine-tuned words stay in the table's space, where unseen words are read."""
        if not self.anchor_weight:
            return torch.zeros((), device=self.extra.device)
        return self.anchor_weight * (self.table.weight - self.anchor).pow(2).sum(-1).mean()

    def extend(self, vectors: torch.Tensor) -> int:
        """Append (K, E) rows for new words; returns the id of the first."""
        first = self.table.num_embeddings + len(self.extra)
        self.extra = torch.cat([self.extra, vectors.to(self.extra)])
        return first

    def forward(self, captions: Captions) -> torch.Tensor:
        if self.table is None:
            if captions.vectors is None:
                raise ValueError("this model reads precomputed word vectors; the captions carry none")
            return captions.vectors.float()  # (N, L, E)
        ids, size = captions.ids, self.table.num_embeddings
        if not len(self.extra) or not ids.numel() or int(ids.max()) < size:
            return self.table(ids)  # (N, L, E)
        trained = self.table(ids.clamp(max=size - 1))  # (N, L, E)
        added = self.extra[(ids - size).clamp(min=0)]  # (N, L, E)
        return torch.where((ids >= size)[..., None], added, trained)


EPS = 1e-8  # norm and cosine floors of the models that normalise vectors


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """Unit length along the last dim; the norm plus EPS in the denominator (SCAN's convention)."""
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) true lengths -> (N, max_len) bool, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


EXP_SAFE_BOUND = 80.0  # exp of a float32 below e^88 cannot overflow


def bounded_exp_(logits: torch.Tensor, bound: float, dim: int) -> torch.Tensor:
    """The numerators of a softmax over ``dim`` of logits known to lie in [-bound, bound], in place on
    a tensor the caller owns: their exp, with no maximum to subtract (one pass fewer). Beyond
    ``EXP_SAFE_BOUND`` the maximum along ``dim`` is subtracted first, so exp cannot overflow; callers
    divide by sums along ``dim``, so either way the softmax is the same."""
    if bound > EXP_SAFE_BOUND:
        logits = logits - logits.amax(dim=dim, keepdim=True)
    return logits.exp_()


TOTAL = "score"  # the key of the total among ``score_block(..., parts=True)``'s blocks


def with_total(score: torch.Tensor, parts: bool) -> torch.Tensor | dict[str, torch.Tensor]:
    """A one-part model's ``score_block`` answer: the block, or {TOTAL: block} when parts are asked."""
    return {TOTAL: score} if parts else score


def select_state(state: State, index: slice | torch.Tensor) -> State:
    """Rows of a prepared state (every tensor's leading dim is the item dim)."""
    return {k: v[index] for k, v in state.items()}


class Matcher(nn.Module):
    """Base class: subclasses implement the three scoring parts and ``forward``."""

    words: WordEmbedder
    image_streams: tuple[str, ...] = ("regions",)  # the ImageFeatures streams the model reads
    # True for models whose score is encode_images(..) @ encode_captions(..).T (a shortlist index)
    indexable: bool = False

    def attention_specs(self) -> dict[str, AttentionSpec]:
        """The attention maps ``forward(..., return_attention=True)`` returns, by name."""
        return {}

    def prepare_images(self, images: ImageStreams) -> State:
        raise NotImplementedError

    def prepare_captions(self, captions: Captions) -> State:
        raise NotImplementedError

    def score_block(self, images: State, captions: State, parts: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """(Ni, Nc) scores of every image x caption pair of two prepared blocks. ``parts=True``: a dict
        of (Ni, Nc) blocks, ``TOTAL`` (the score) and each part ``forward`` reports (``with_total`` does
        that for a model whose score has no parts)."""
        raise NotImplementedError

    def pair_bytes(self, images: State, steps: int) -> int:
        """Approximate bytes of per-pair temporaries in ``score_block`` (sizes the engine's tiles)."""
        return 8 * sum(v[0].numel() for v in images.values()) * 4

    def forward(self, images: ImageStreams, captions: Captions, return_attention: bool = False) -> PairScores:
        """Score aligned pairs: image i of every stream with caption i."""
        raise NotImplementedError

    # -- the search contract: only for models with ``indexable`` True ---------------------------------
    @property
    def vector_dim(self) -> int:
        """The length of ``encode_images`` / ``encode_captions`` vectors (what an index stores)."""
        raise NotImplementedError(f"{type(self).__name__} is not indexable: it has no per-item vectors")

    def encode_images(self, images: ImageStreams) -> torch.Tensor:
        """(N, vector_dim) per-image vectors; score_block is their inner product with caption vectors."""
        raise NotImplementedError(f"{type(self).__name__} is not indexable: it has no per-item vectors")

    def encode_captions(self, captions: Captions) -> torch.Tensor:
        """(N, vector_dim) per-caption vectors."""
        raise NotImplementedError(f"{type(self).__name__} is not indexable: it has no per-item vectors")

    def training_loss(self, batch) -> torch.Tensor:
        """The loss of one training step (``itm.models.objectives.TrainingBatch``): ``objective`` plus
        ``penalty``. The trainer's only call into a model; models override the two parts, not this."""
        return self.objective(batch) + self.penalty()

    def objective(self, batch) -> torch.Tensor:
        """The batch's loss: the configured objective on the total score. Models with training-only
        behaviour (masks, per-branch weights) override this."""
        from itm.models.objectives import objective_loss

        return objective_loss(self, batch)

    def penalty(self) -> torch.Tensor:
        """Terms of the weights alone: the word table's pull to its initial vectors (0 unless
        ``text.anchor_weight``). A model with regularisers of its own adds them here."""
        return self.words.penalty()

    def check_evaluable(self) -> None:
        """Raise ItmError when this model must not be evaluated as configured (e.g. a leak)."""


class IndexableMatcher(Matcher):
    """A matcher whose score is the inner product of per-item vectors (a shortlist index can hold one
    side): a subclass gives ``encode_images``, ``encode_captions`` and ``vector_dim``; the scoring
    parts and the aligned forward follow from them."""

    indexable = True

    def prepare_images(self, images: ImageStreams) -> State:
        return {"vectors": self.encode_images(images)}  # (N, vector_dim)

    def prepare_captions(self, captions: Captions) -> State:
        return {"vectors": self.encode_captions(captions)}  # (N, vector_dim)

    def score_block(self, images: State, captions: State, parts: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        return with_total(images["vectors"] @ captions["vectors"].t(), parts)  # (Ni, Nc)

    def pair_bytes(self, images: State, steps: int) -> int:
        return 4  # one float a pair: the block itself

    def forward(self, images: ImageStreams, captions: Captions, return_attention: bool = False) -> PairScores:
        """Aligned pairs' inner products; a subclass that declares attention maps adds them."""
        return PairScores((self.encode_images(images) * self.encode_captions(captions)).sum(-1))  # (B,)
