"""CAAN: Context-Aware Attention Network (Zhang, Lei, Zhang, Li, CVPR 2020) — a reconstruction.

The paper's method section could not be read; ``docs/caan.md`` marks what rests on the paper or on
reading notes and what is our reconstruction ([R]) or decision ([D]). One pair, R fragments (grid
regions by default), L words, joint size D:

1. V = l2norm(W_v f) (R x D); U = l2norm(mean of a bi-GRU's two directions) (L x D).
2. H = V U^T (R x L), the region-word affinity [D: cosine].
3. Inter-modal attention, H normalised both ways: A_w2r = softmax over regions of lambda H (each word
   column sums to 1); A_r2w = softmax over the real words of lambda H (each region row sums to 1).
4. Second-order ("semantics-based") intra-modal attention: Q_rr = A_r2w A_r2w^T, Q_ww = A_w2r^T A_w2r,
   row-normalised [D] (``intra_source: feature`` uses softmax(V V^T), softmax(U U^T) instead).
5. Fragment weights [R]: a_r = softmax_i w_r^T tanh(W1 v_i + W2 c_i + W3 g_i) with the cross-modal
   context c = A_r2w U and the intra-modal context g = Q_rr V; words alike over their own contexts.
6. v* = sum a_r v, u* = sum a_w u; score = cos(v*, u*) [D] (or the inner product).

All-pairs scoring never touches D per pair beyond H: the projections W1 V, W3 V, W5 V and the Gram
V V^T are per image, the GRU, W2 U, W4 U, W6 U and U U^T per caption, and
<v*, u*> = a_r^T H a_w, |v*|^2 = a_r^T (V V^T) a_r, |u*|^2 = a_w^T (U U^T) a_w.
``forward`` computes the same pair literally, at D, and is the reference the engine is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itm.config_base import ModelConfig, check_fields
from itm.data.types import Captions
from itm.models.base import (
    EPS,
    EXP_SAFE_BOUND,
    AttentionSpec,
    ImageStreams,
    InputDims,
    Matcher,
    PairScores,
    State,
    WordEmbedder,
    bounded_exp_,
    l2norm,
    length_mask,
    with_total,
)
from itm.models.registry import register_model


@dataclass
class CAANConfig(ModelConfig):
    """CAAN's architecture; the defaults are the spec's (docs/caan.md), sizes the paper's [R]."""

    name: str = "caan"
    fragments: str = "regions"  # the image stream the words attend over: regions (grid) | objects
    embed_dim: int = 1024  # D, the joint space [R]
    attention_hidden: int = 512  # h, the fragment-weight MLP [D]
    temperature: float = 10.0  # lambda in softmax(lambda H) [D: 10 for a cosine H]
    use_inter: bool = True  # cross-modal context in the fragment weights (ablation switch)
    use_intra: bool = True  # intra-modal context in the fragment weights (ablation switch)
    intra_source: str = "semantic"  # semantic (second-order, the paper) | feature (softmax of V V^T)
    score: str = "cosine"  # cosine | dot of the pooled vectors [D]
    dropout: float = 0.0  # training-time dropout on fragment and word vectors (our extension)

    TINY: ClassVar[dict] = {"embed_dim": 8, "attention_hidden": 6}
    SHORT_RUN: ClassVar[dict] = {"model.embed_dim": 32, "model.attention_hidden": 6, "train.lr": 0.005}

    def validate(self) -> None:
        check_fields("model", self, positive=("embed_dim", "attention_hidden", "temperature"), fraction=("dropout",),
                     choices={"fragments": ("regions", "objects"), "intra_source": ("semantic", "feature"),
                              "score": ("cosine", "dot")})



# pairs per block when scoring (``CAAN.pooled_scores``), within the engine's cache-sized tile. With the
# per-pair temporaries down to one (R, h) tensor (``region_terms``), blocks of 256-1024 pairs scored
# alike and 5-10% faster than 128 (one A/B run under load); before it, 128 had been the fastest
SCORING_PAIRS = 512


def word_column_softmax(logits: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """(..., R, L) -> softmax over R per word column, columns of padded words all 0."""
    return torch.softmax(logits, dim=-2) * word_mask.unsqueeze(-2)


def masked_row_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where ``mask`` (broadcastable) is True; exactly 0 elsewhere."""
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def row_normalise(q: torch.Tensor) -> torch.Tensor:
    """Rows divided by their sums (all-zero rows, i.e. padded words, stay 0): convex combinations."""
    return q / q.sum(-1, keepdim=True).clamp_min(EPS)


class CAAN(Matcher):
    """Context-aware fragment weights over a region-word affinity; cosine of the pooled vectors."""

    def __init__(self, config: CAANConfig, dims: InputDims, words: WordEmbedder):
        super().__init__()
        self.config = config
        self.words = words
        self.image_streams = (config.fragments,)
        d, h = config.embed_dim, config.attention_hidden
        in_dim = dims.region_dim if config.fragments == "regions" else dims.object_dim
        self.fragment_fc = nn.Linear(in_dim, d)  # W_v
        self.gru = nn.GRU(dims.word_dim, d, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)
        # fragment-weight MLPs: own term (with the bias), cross-modal term, intra-modal term
        self.region_own, self.word_own = nn.Linear(d, h), nn.Linear(d, h)  # W1, W4
        self.region_cross = nn.Linear(d, h, bias=False) if config.use_inter else None  # W2
        self.word_cross = nn.Linear(d, h, bias=False) if config.use_inter else None  # W5
        self.region_intra = nn.Linear(d, h, bias=False) if config.use_intra else None  # W3
        self.word_intra = nn.Linear(d, h, bias=False) if config.use_intra else None  # W6
        self.region_out = nn.Linear(h, 1, bias=False)  # w_r
        self.word_out = nn.Linear(h, 1, bias=False)  # w_w

    def attention_specs(self) -> dict[str, AttentionSpec]:
        over = self.config.fragments
        return {"words_over_regions": AttentionSpec("words", over, "each word's attention over the image fragments"),
                "regions_over_words": AttentionSpec(over, "words", "each image fragment's attention over the words"),
                "region_weights": AttentionSpec("image", over, "CAAN's context-aware fragment weights"),
                "word_weights": AttentionSpec("caption", "words", "CAAN's context-aware word weights")}

    # -- encoders (per item) ----------------------------------------------------------------------
    def encode_fragments(self, images: ImageStreams) -> torch.Tensor:
        return l2norm(self.fragment_fc(self.dropout(images[self.config.fragments].float())))  # (N, R, D)

    def encode_words(self, captions: Captions) -> torch.Tensor:
        """(N, L, D): the bi-GRU over the real words, directions averaged, unit length; 0 at padding."""
        words = self.dropout(self.words(captions))  # (N, L, E)
        packed = pack_padded_sequence(words, captions.lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])  # (N, L, 2D)
        forward, backward = out.chunk(2, dim=-1)
        return l2norm((forward + backward) / 2) * length_mask(captions.lengths, words.shape[1])[..., None]

    def intra(self, attention: torch.Tensor, gram: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """Row-normalised intra-modal affinity: second-order A A^T, or softmax of the feature Gram."""
        if self.config.intra_source == "semantic":
            return row_normalise(attention @ attention.transpose(-1, -2))
        if mask is None:
            return torch.softmax(gram, dim=-1)
        return masked_row_softmax(gram, mask.unsqueeze(-2)) * mask.unsqueeze(-1)

    # -- one pair at a time, literally (the reference) ------------------------------------------------
    def forward(self, images: ImageStreams, captions: Captions, return_attention: bool = False) -> PairScores:
        v = self.encode_fragments(images)  # (B, R, D)
        u = self.encode_words(captions)  # (B, L, D)
        mask = length_mask(captions.lengths, u.shape[1])  # (B, L)
        lam = self.config.temperature
        h = v @ u.transpose(1, 2)  # (B, R, L)
        w2r = word_column_softmax(lam * h, mask)  # (B, R, L): each word column sums to 1 over R
        r2w = masked_row_softmax(lam * h, mask[:, None, :])  # (B, R, L): each region row over the words
        region_terms = self.region_own(v)  # (B, R, h)
        word_terms = self.word_own(u)  # (B, L, h)
        if self.config.use_inter:
            region_terms = region_terms + self.region_cross(r2w @ u)  # c_r = A_r2w U
            word_terms = word_terms + self.word_cross(w2r.transpose(1, 2) @ v)  # c_w = A_w2r^T V
        if self.config.use_intra:
            q_rr = self.intra(r2w, v @ v.transpose(1, 2), None)  # (B, R, R)
            q_ww = self.intra(w2r.transpose(1, 2), u @ u.transpose(1, 2), mask)  # (B, L, L)
            region_terms = region_terms + self.region_intra(q_rr @ v)
            word_terms = word_terms + self.word_intra(q_ww @ u)
        a_r = torch.softmax(self.region_out(torch.tanh(region_terms)).squeeze(-1), dim=-1)  # (B, R)
        a_w = masked_row_softmax(self.word_out(torch.tanh(word_terms)).squeeze(-1), mask)  # (B, L)
        v_star = (a_r[:, :, None] * v).sum(1)  # (B, D)
        u_star = (a_w[:, :, None] * u).sum(1)  # (B, D)
        score = (v_star * u_star).sum(-1)
        if self.config.score == "cosine":
            score = score / (v_star.norm(dim=-1) * u_star.norm(dim=-1)).clamp_min(EPS)
        attention = {}
        if return_attention:
            attention = {"words_over_regions": w2r.transpose(1, 2), "regions_over_words": r2w,
                         "region_weights": a_r[:, None, :], "word_weights": a_w[:, None, :]}
        return PairScores(score, {}, attention)

    # -- all pairs -------------------------------------------------------------------------------------
    def prepare_images(self, images: ImageStreams) -> State:
        v = self.encode_fragments(images)  # (N, R, D)
        state = {"v": v, "own": self.region_own(v), "gram": v @ v.transpose(1, 2)}  # (N,R,D), (N,R,h), (N,R,R)
        if self.config.use_inter:
            state["to_words"] = self.word_cross(v)  # (N, R, h): W5 v, mixed into the word contexts
        if self.config.use_intra:
            state["intra"] = self.region_intra(v)  # (N, R, h): W3 v
            if self.config.intra_source == "feature":  # per image: no caption involved
                state["intra_context"] = torch.softmax(state["gram"], dim=-1) @ state["intra"]  # (N, R, h)
        return state

    def prepare_captions(self, captions: Captions) -> State:
        u = self.encode_words(captions)  # (N, L, D)
        state = {"lengths": captions.lengths, "u": u, "own": self.word_own(u), "gram": u @ u.transpose(1, 2)}
        if self.config.use_inter:
            state["to_regions"] = self.region_cross(u)  # (N, L, h): W2 u
        if self.config.use_intra:
            state["intra"] = self.word_intra(u)  # (N, L, h): W6 u
            if self.config.intra_source == "feature":
                mask = length_mask(captions.lengths, u.shape[1])
                q_ww = masked_row_softmax(state["gram"], mask[:, None, :]) * mask[:, :, None]
                state["intra_context"] = q_ww @ state["intra"]  # (N, L, h)
        return state

    def score_block(self, images: State, captions: State, parts: bool = False):
        """(Ni, Nc) scores (one part); per pair only H, the attention, the h-sized contexts and the pooling."""
        return with_total(self.pooled_scores(images, captions), parts)

    def pooled_scores(self, images: State, captions: State) -> torch.Tensor:
        """(Ni, Nc) scores, by blocks of images (``block_scores``). Training (gradients kept) runs the whole
        block at once: fewer, larger operations, each image's slice no longer a gradient of the whole state;
        scoring runs blocks of at most ``SCORING_PAIRS`` pairs, so that the per-pair temporaries stay in
        the cache (larger blocks measured slower on this machine, docs/results/speed.md)."""
        mask = length_mask(captions["lengths"], captions["u"].shape[1])  # (Nc, L)
        n = images["v"].shape[0]
        size = n if torch.is_grad_enabled() else max(1, SCORING_PAIRS // max(len(mask), 1))
        if size >= n:
            return self.block_scores(images, captions, mask)
        blocks = [self.block_scores({k: t[i : i + size] for k, t in images.items()}, captions, mask)
                  for i in range(0, n, size)]
        return torch.cat(blocks)

    def block_scores(self, images: State, captions: State, mask: torch.Tensor) -> torch.Tensor:
        """(Ni, Nc) scores of prepared images against prepared captions. Per pair tensors are laid out
        (Ni, Nc, L, R), words by regions, so that every product is one GEMM per image or a batch of them
        over the pairs; every normalisation multiplies by a reciprocal (one pass, a cheaper backward)."""
        v, u = images["v"], captions["u"]
        (ni, r, d), (nc, steps) = v.shape, u.shape[:2]
        lam = self.config.temperature
        # one GEMM over every word of the tile and every region of the block (a broadcast batch would
        # copy the words once per image), then the pair-major layout
        h = (u.reshape(nc * steps, d) @ v.reshape(ni * r, d).T).view(nc, steps, ni, r).permute(2, 0, 1, 3)
        h = h.contiguous()  # (Ni, Nc, L, R)
        real = mask[:, :, None].to(h.dtype)  # (Nc, L, 1)
        if lam <= EXP_SAFE_BOUND:  # |h| <= 1 (unit vectors): one exp serves both softmaxes
            e = bounded_exp_(lam * h, lam, -1) * real  # padded words' rows 0
            w2r = e * e.sum(-1, keepdim=True).clamp_min(EPS).reciprocal()  # each real word's row: 1 over R
            r2w = e * e.sum(2, keepdim=True).reciprocal()  # each region over the real words
        else:
            w2r = torch.softmax(lam * h, dim=-1) * real
            r2w = masked_row_softmax((lam * h).transpose(2, 3), mask[:, None, :]).transpose(2, 3)
        region_terms = self.region_terms(images, captions, r2w)  # (Ni, Nc, R, h)
        word_terms = self.word_terms(images, captions, w2r)  # (Ni, Nc, L, h)
        a_r = torch.softmax(self.region_out(region_terms.tanh_()).squeeze(-1), dim=-1)  # (Ni, Nc, R)
        a_w = masked_row_softmax(self.word_out(torch.tanh(word_terms)).squeeze(-1), mask)  # (Ni, Nc, L)
        dot = ((a_w[:, :, None, :] @ h).squeeze(2) * a_r).sum(-1)  # <v*, u*> = a_r^T H a_w: (Ni, Nc)
        if self.config.score == "dot":
            return dot
        v_norm2 = ((a_r @ images["gram"]) * a_r).sum(-1)  # |v*|^2
        u_norm2 = ((a_w[:, :, None, :] @ captions["gram"]).squeeze(2) * a_w).sum(-1)  # |u*|^2
        return dot / (v_norm2.clamp_min(EPS * EPS).sqrt() * u_norm2.clamp_min(EPS * EPS).sqrt())

    def region_terms(self, images: State, captions: State, r2w: torch.Tensor) -> torch.Tensor:
        """(Ni, Nc, R, h): each region's own term plus its pair's contexts, c_r = A U W2 (inter) and
        row_normalise(A A^T) V W3 (second-order intra; A = r2w^T: R x L), as one GEMM per pair: [A | A / rowsum]
        (R x 2L) times [U W2 ; A^T V W3] (2L x h), the own term added in place. The R x h tensors are
        most of a pair's memory traffic: one product and one sum pass over them, not two products, two
        sums and their temporaries. A A^T never forms (R^2 h a pair; with 81 grid regions it was most of
        a training step): (A A^T) x = A (A^T x). Always a fresh tensor: the caller's tanh is in place."""
        ni, nc, steps, r = r2w.shape
        own = images["own"]  # (Ni, R, h)
        if self.config.use_intra and self.config.intra_source == "feature":  # per image: no caption involved
            own = own + images["intra_context"]
        lefts, rights = [], []  # (Ni, Nc, L', R) and (Ni, Nc, L', h): the contexts' factors, A^T and its right
        if self.config.use_inter:
            lefts.append(r2w)
            rights.append(captions["to_regions"].expand(ni, nc, steps, own.shape[-1]))  # W2 u: (Nc, L, h)
        if self.config.use_intra and self.config.intra_source == "semantic":
            through_words = (r2w.reshape(ni, nc * steps, r) @ images["intra"]).view(ni, nc, steps, -1)  # A^T V W3
            row_sums = r2w.sum(-1).unsqueeze(-2) @ r2w  # (Ni, Nc, 1, R): (A A^T 1)_r
            lefts.append(r2w * row_sums.clamp_min(EPS).reciprocal())
            rights.append(through_words)
        if not lefts:  # a fresh tensor all the same: the caller's tanh is in place
            return own[:, None].expand(ni, nc, r, own.shape[-1]).clone(memory_format=torch.contiguous_format)
        # the product is a fresh (Ni, Nc, R, h) tensor the own term is added into: no copy of the own
        # term per pair, and no in-place step on a view (whose gradient would copy the whole tensor)
        terms = torch.matmul(torch.cat(lefts, 2).transpose(2, 3), torch.cat(rights, 2))  # (Ni, Nc, R, h)
        return terms.add_(own[:, None])

    def word_terms(self, images: State, captions: State, w2r: torch.Tensor) -> torch.Tensor:
        """(Ni, Nc, L, h): each word's own term plus its pair's contexts, c_w = A_w2r^T V W5 (inter) and
        row_normalise(A^T A) U W6 (second-order intra, A^T = w2r); the word side is small (L x h a pair), so
        plain sums: an in-place one on a product's view would copy the whole tensor in the backward pass."""
        ni, nc, steps, r = w2r.shape
        own = captions["own"]  # (Nc, L, h)
        if self.config.use_intra and self.config.intra_source == "feature":
            own = own + captions["intra_context"]
        terms = own  # (Nc, L, h), broadcast over the images by the first sum
        if self.config.use_inter:
            terms = terms + (w2r.reshape(ni, nc * steps, r) @ images["to_words"]).view(ni, nc, steps, -1)  # c_w
        if self.config.use_intra and self.config.intra_source == "semantic":
            terms = terms + self.word_second_order(w2r, captions["intra"])
        return terms.expand(ni, nc, steps, own.shape[-1])

    @staticmethod
    def word_second_order(w2r: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """row_normalise(A^T A) @ values for A^T = w2r (Ni, Nc, L, R), values (Nc, L, h), through the
        L x L matrix: 2 L^2 (R + h) per pair, against 4 R L h through the regions (L << R). The second
        product is batched over the captions, whose values it shares (a batch over the pairs would copy
        them once per image)."""
        ni, nc, steps, _ = w2r.shape
        q = w2r @ w2r.transpose(2, 3)  # (Ni, Nc, L, L) = A^T A
        q = q * q.sum(-1, keepdim=True).clamp_min(EPS).reciprocal()
        by_caption = q.transpose(0, 1).reshape(nc, ni * steps, steps) @ values  # (Nc, Ni L, h)
        return by_caption.view(nc, ni, steps, -1).transpose(0, 1)  # (Ni, Nc, L, h) view

    def pair_bytes(self, images: State, steps: int) -> int:
        r, hidden = images["own"].shape[1:]  # H, its exp and two normalisations, the 2L x R left factor;
        floats = 6 * r * steps + 3 * steps * hidden + r * hidden + steps * steps  # right factor, terms, L x L
        return 4 * floats


def build_caan(config: CAANConfig, dims: InputDims, words: WordEmbedder) -> CAAN:
    return CAAN(config, dims, words)


register_model("caan", build_caan, CAANConfig, "CAAN: context-aware attention, inter + second-order intra (reconstructed)")
register_model("caan_no_inter", build_caan, CAANConfig, "CAAN ablation: fragment weights without cross-modal context",
               use_inter=False)
register_model("caan_no_intra", build_caan, CAANConfig, "CAAN ablation: fragment weights without intra-modal context",
               use_intra=False)
register_model("caan_feature_intra", build_caan, CAANConfig,
               "CAAN ablation: intra-modal affinity from feature similarity (the variant the paper argues against)",
               intra_source="feature")
