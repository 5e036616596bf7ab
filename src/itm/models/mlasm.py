"""MLASM: Multi-level Local Alignment and Semantic Matching (Jiang & Lian, ICANN 2022).

Read from the authors' public code (``docs/mlasm.md``). Two branches, S = rho S_local + (1 - rho) S_global:

- local alignment, SCAN's bidirectional stacked cross attention on s = V W^T (R x L):
  text->image: alpha_t = softmax_r(9 * P_rt / |P_r,:|), a_t = sum_r alpha_tr v_r, S_t2i = mean_t cos(w_t, a_t);
  image->text: beta_r = softmax_t(4 * P_rt / |P_:,t|), b_r = sum_t beta_rt w_t, S_i2t = mean_r cos(v_r, b_r);
  with P = LeakyReLU_0.1(s); S_local = (S_t2i + S_i2t) / 2.
- multi-level semantic matching: the image's whole-image vector g gated with the attended region
  context c_img = mean_t a_t, the caption's vector from its attended word context c_txt = mean_r b_r:
  e_img = l2norm(tau * g + (1 - tau) * (W_ai c_img + b)), tau = sigmoid(W_g [g ; W_ai c_img + b]);
  e_txt = l2norm(W_ct c_txt + b'); S_global = e_img . e_txt.

The published code takes c_img and c_txt from each item's *ground-truth* pair at evaluation: an answer
leak. ``global_context`` chooses: ``pairwise`` (default: the contexts of the scored pair itself),
``unconditioned`` (means of the item's own fragments: the global branch alone, ``local_weight`` 0, is
indexable) or ``diagonal`` (the code's rule,
for training a reproduction only; evaluating such a model is refused).

All pairs: per image V, V V^T, W_ai V and its gate part; per caption W, W W^T, W_ct W. Per pair the
cosines need no D-sized work: w_t . a_t = sum_r alpha_tr s_rt and |a_t|^2 = alpha_t^T (V V^T) alpha_t.
``forward`` computes a pair literally (a_t, b_r at D) and is the reference the engine is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itm.config_base import ModelConfig, check_fields
from itm.data.types import Captions
from itm.errors import ConfigError, ItmError
from itm.models.base import (
    EPS,
    TOTAL,
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
)
from itm.models.objectives import objective_loss
from itm.models.registry import register_model

GLOBAL_CONTEXTS = ("pairwise", "unconditioned", "diagonal")


@dataclass
class MLASMConfig(ModelConfig):
    """MLASM's architecture; defaults from the public code (docs/mlasm.md), leak corrected."""

    name: str = "mlasm"
    fragments: str = "regions"  # the image stream of the local branch: regions (grid) | objects
    embed_dim: int = 1024  # D
    lambda_t2i: float = 9.0  # softmax temperature, words attending over regions
    lambda_i2t: float = 4.0  # softmax temperature, regions attending over words
    leaky_slope: float = 0.1
    local_weight: float = 0.8  # rho: S = rho S_local + (1 - rho) S_global (1: global branch off)
    global_context: str = "pairwise"  # pairwise | unconditioned | diagonal (training only: the leak)
    train_all_params: bool = True  # false: W_ai and the gate stay at their init, as in the code
    word_dropout: float = 0.1  # dropout on the GRU's input word vectors (the code's 0.1)
    dropout: float = 0.0  # training-time dropout on region vectors (our extension)

    TINY: ClassVar[dict] = {"embed_dim": 8}
    SHORT_RUN: ClassVar[dict] = {"model.embed_dim": 32, "train.lr": 0.005}

    def validate(self) -> None:
        check_fields("model", self, positive=("embed_dim", "lambda_t2i", "lambda_i2t"),
                     non_negative=("leaky_slope",), fraction=("word_dropout", "dropout"),
                     choices={"fragments": ("regions", "objects"), "global_context": GLOBAL_CONTEXTS})
        if not 0 <= self.local_weight <= 1:
            raise ConfigError(f"model.local_weight: must be in [0, 1], got {self.local_weight!r}")



def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)


class MLASM(Matcher):
    """Local stacked cross attention both ways + the gated multi-level global branch."""

    def __init__(self, config: MLASMConfig, dims: InputDims, words: WordEmbedder):
        super().__init__()
        self.config = config
        self.words = words
        self.has_global = config.local_weight < 1  # rho = 1: the global branch is off, and not built
        self.image_streams = (config.fragments, "whole") if self.has_global else (config.fragments,)
        d = config.embed_dim
        in_dim = dims.region_dim if config.fragments == "regions" else dims.object_dim
        self.region_fc = nn.Linear(in_dim, d)  # W_reg
        self.gru = nn.GRU(dims.word_dim, d, batch_first=True)
        layers = [self.region_fc]
        if self.has_global:
            self.whole_fc = nn.Linear(dims.region_dim, d)  # W_fc over the l2-normalised whole-image vector
            self.context_fc = nn.Linear(d, d)  # W_ai
            self.gate = nn.Linear(2 * d, d)  # W_g over [g ; h]
            self.text_fc = nn.Linear(d, d)  # W_ct
            layers += [self.whole_fc, self.context_fc, self.text_fc]
            if not config.train_all_params:  # the code never hands these to its optimiser
                for p in (*self.context_fc.parameters(), *self.gate.parameters()):
                    p.requires_grad_(False)
        for layer in layers:  # Xavier-uniform weights, zero biases, as in the code
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.word_dropout = nn.Dropout(config.word_dropout)
        self.dropout = nn.Dropout(config.dropout)

    def attention_specs(self) -> dict[str, AttentionSpec]:
        over = self.config.fragments
        return {"words_over_regions": AttentionSpec("words", over, "text->image: each word's attention (lambda 9)"),
                "regions_over_words": AttentionSpec(over, "words", "image->text: each fragment's attention (lambda 4)")}

    def check_evaluable(self) -> None:
        if self.config.global_context == "diagonal":
            raise ItmError("model.global_context is 'diagonal': it conditions each image on its ground-truth "
                           "caption, which leaks the answer; evaluate with --set model.global_context=pairwise")

    # -- encoders (per item) ----------------------------------------------------------------------
    def encode_regions(self, images: ImageStreams) -> torch.Tensor:
        return l2norm(self.region_fc(self.dropout(images[self.config.fragments].float())))  # (N, R, D)

    def encode_whole(self, images: ImageStreams) -> torch.Tensor:
        return self.whole_fc(l2norm(images["whole"].float()))  # (N, D): not normalised, as in the code

    def encode_words(self, captions: Captions) -> torch.Tensor:
        """(N, L, D) unit GRU states of the real words, 0 at padding."""
        words = self.word_dropout(self.words(captions))  # (N, L, E)
        packed = pack_padded_sequence(words, captions.lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])  # (N, L, D)
        return l2norm(out) * length_mask(captions.lengths, words.shape[1])[..., None]

    def attention(self, s: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., R, L) affinities -> alpha (words over regions, each word column sums to 1 over R) and
        beta (regions over the real words, each row sums to 1), both (..., R, L), 0 at padded words."""
        p = F.leaky_relu(s, self.config.leaky_slope)  # padded words: s = 0 -> 0
        per_region = p / (p.norm(dim=-1, keepdim=True) + EPS)  # normalised across words
        per_word = p / (p.norm(dim=-2, keepdim=True) + EPS)  # normalised across regions
        alpha = torch.softmax(self.config.lambda_t2i * per_region, dim=-2) * mask.unsqueeze(-2)
        beta = torch.softmax((self.config.lambda_i2t * per_word).masked_fill(~mask.unsqueeze(-2), float("-inf")), -1)
        return alpha, beta

    def image_vector(self, whole: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """e_img (..., D): the whole-image vector g gated with h = W_ai c_img + b."""
        h = self.context_fc(context)
        tau = torch.sigmoid(self.gate(torch.cat([whole.expand_as(h), h], dim=-1)))
        return l2norm(tau * whole + (1 - tau) * h)

    def text_vector(self, context: torch.Tensor) -> torch.Tensor:
        """e_txt (..., D) from the caption's word context."""
        return l2norm(self.text_fc(context))

    def global_score(self, images: ImageStreams, contexts: dict[str, torch.Tensor]) -> torch.Tensor:
        """S_global of aligned pairs from their contexts."""
        e_img = self.image_vector(self.encode_whole(images), contexts["img"])
        return (e_img * self.text_vector(contexts["txt"])).sum(-1)

    def fuse(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.has_global:
            return parts["local"]
        rho = self.config.local_weight
        return rho * parts["local"] + (1 - rho) * parts["global"]

    def caption_vector(self, w: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The unconditioned e_txt (N, D): from the mean of the caption's own word states (N, L, D)."""
        mask = length_mask(lengths, w.shape[1])
        return self.text_vector((w * mask[..., None]).sum(1) / mask.sum(-1, keepdim=True))

    # -- search: the unconditioned global branch alone is an inner product ----------------------------
    @property
    def indexable(self) -> bool:
        """True when the score is e_img . e_txt with no pair context: the unconditioned global branch
        alone (``local_weight`` 0, e.g. ``--set model.local_weight=0`` on ``mlasm_unconditioned``)."""
        return self.has_global and self.config.global_context == "unconditioned" and self.config.local_weight == 0

    @property
    def vector_dim(self) -> int:
        return self.config.embed_dim

    def encode_images(self, images: ImageStreams) -> torch.Tensor:
        return self.image_vector(self.encode_whole(images), self.encode_regions(images).mean(1))  # (N, D)

    def encode_captions(self, captions: Captions) -> torch.Tensor:
        return self.caption_vector(self.encode_words(captions), captions.lengths)  # (N, D)

    # -- one pair at a time, literally (the reference) ------------------------------------------------
    def aligned_parts(self, images: ImageStreams, captions: Captions):
        """Local score, the attended contexts and the attention maps of aligned pairs."""
        v = self.encode_regions(images)  # (B, R, D)
        w = self.encode_words(captions)  # (B, L, D)
        mask = length_mask(captions.lengths, w.shape[1])  # (B, L)
        alpha, beta = self.attention(v @ w.transpose(1, 2), mask)  # (B, R, L) each
        a = alpha.transpose(1, 2) @ v  # (B, L, D): a_t, the region context of each word
        b = beta @ w  # (B, R, D): b_r, the word context of each region
        n_words = mask.sum(-1)  # (B,)
        t2i = (cosine(w, a) * mask).sum(-1) / n_words
        i2t = cosine(v, b).mean(-1)
        contexts = {"img": (a * mask[..., None]).sum(1) / n_words[:, None], "txt": b.mean(1)}  # (B, D) each
        if self.config.global_context == "unconditioned":
            contexts = {"img": v.mean(1), "txt": (w * mask[..., None]).sum(1) / n_words[:, None]}
        return (t2i + i2t) / 2, contexts, v, alpha, beta

    def forward(self, images: ImageStreams, captions: Captions, return_attention: bool = False) -> PairScores:
        local, contexts, _, alpha, beta = self.aligned_parts(images, captions)
        parts = {"local": local}
        if self.has_global:
            parts["global"] = self.global_score(images, contexts)
        attention = {}
        if return_attention:
            attention = {"words_over_regions": alpha.transpose(1, 2), "regions_over_words": beta}
        return PairScores(self.fuse(parts), parts, attention)

    # -- all pairs -------------------------------------------------------------------------------------
    def prepare_images(self, images: ImageStreams) -> State:
        v = self.encode_regions(images)  # (N, R, D)
        state = {"v": v, "gram": v @ v.transpose(1, 2)}  # (N, R, D), (N, R, R)
        if not self.has_global:
            return state
        whole = self.encode_whole(images)  # (N, D)
        state["whole"] = whole
        d = v.shape[-1]
        if self.config.global_context == "unconditioned":
            state["e_img"] = self.image_vector(whole, v.mean(1))  # (N, D): no caption involved
        else:
            w_gate_h = self.gate.weight[:, d:]  # (D, D): the gate's weights of h
            state["context"] = v @ self.context_fc.weight.t()  # (N, R, D): W_ai v_r
            state["gate_context"] = state["context"] @ w_gate_h.t()  # (N, R, D)
            state["gate_whole"] = whole @ self.gate.weight[:, :d].t() + self.gate.bias + \
                self.context_fc.bias @ w_gate_h.t()  # (N, D): the gate's per-image part
        return state

    def prepare_captions(self, captions: Captions) -> State:
        w = self.encode_words(captions)  # (N, L, D)
        state = {"lengths": captions.lengths, "w": w, "gram": w @ w.transpose(1, 2)}
        if not self.has_global:
            return state
        if self.config.global_context == "unconditioned":
            state["e_txt"] = self.caption_vector(w, captions.lengths)  # (N, D)
        else:
            state["text"] = w @ self.text_fc.weight.t()  # (N, L, D): W_ct w_t
        return state

    def score_block(self, images: State, captions: State, parts: bool = False):
        """(Ni, Nc) fused scores; ``parts``: with the "local" and "global" blocks. The global per pair.

        Laid out for the CPU: the affinities come from one matrix product in (i, r, c, l) order and stay
        in it (no permuted copies); each softmax is exp and a sum (``bounded_exp_``), since its logits are
        bounded by its lambda (p over its norm lies in [-1, 1])."""
        v, w = images["v"], captions["w"]  # (Ni, R, D), (Nc, L, D)
        (ni, r, d), (nc, steps) = v.shape, w.shape[:2]
        mask = length_mask(captions["lengths"], steps)  # (Nc, L)
        s = (v.reshape(ni * r, d) @ w.reshape(nc * steps, d).t()).view(ni, r, nc, steps)  # (i, r, c, l)
        p = F.leaky_relu(s, self.config.leaky_slope)  # padded words: s = 0 -> 0
        # alpha: words over regions, softmax_r of lambda_t2i p / |p| across words; padded columns are
        # uniform here, and every use below masks them
        lam_t2i, lam_i2t = self.config.lambda_t2i, self.config.lambda_i2t
        alpha = bounded_exp_(p * (lam_t2i / (torch.linalg.vector_norm(p, dim=3, keepdim=True) + EPS)), lam_t2i, 1)
        alpha = alpha / alpha.sum(1, keepdim=True)
        # beta: regions over the real words, softmax_l of lambda_i2t p / |p| across regions
        no_word = torch.zeros(nc, steps, dtype=s.dtype, device=s.device).masked_fill_(~mask, float("-inf"))
        beta = bounded_exp_(torch.addcmul(no_word, p, lam_i2t / (torch.linalg.vector_norm(p, dim=1, keepdim=True) + EPS)),
                            lam_i2t, 3)
        beta = beta / beta.sum(3, keepdim=True)
        n_words = mask.sum(-1)  # (Nc,)
        # |a_t|^2 = alpha_t^T (V V^T) alpha_t, one product per image; |w_t| = 1
        gram_alpha = torch.bmm(images["gram"], alpha.view(ni, r, nc * steps)).view(ni, r, nc, steps)
        # clamped before the root: a padded word's a_t is 0, and sqrt has no finite gradient at 0
        a_norm = (gram_alpha * alpha).sum(1).clamp_min(EPS * EPS).sqrt()  # (Ni, Nc, L)
        t2i = ((alpha * s).sum(1) / a_norm * mask).sum(-1) / n_words  # (Ni, Nc)
        # |b_r|^2 = beta_r^T (W W^T) beta_r, one product per caption; |v_r| = 1
        beta_by_caption = beta.permute(2, 0, 1, 3).reshape(nc, ni * r, steps)  # (Nc, Ni*R, L)
        b_norm2 = (torch.bmm(beta_by_caption, captions["gram"]) * beta_by_caption).sum(-1)  # (Nc, Ni*R)
        b_norm = b_norm2.view(nc, ni, r).permute(1, 2, 0).clamp_min(EPS * EPS).sqrt()  # (Ni, R, Nc)
        i2t = ((beta * s).sum(3) / b_norm).mean(1)  # (Ni, Nc)
        scores = {"local": (t2i + i2t) / 2}
        if self.has_global:
            scores["global"] = self.global_block(images, captions, alpha, beta, mask)
        total = self.fuse(scores)
        return {TOTAL: total, **scores} if parts else total

    def global_block(self, images: State, captions: State, alpha, beta, mask) -> torch.Tensor:
        """S_global of every pair from ``score_block``'s (i, r, c, l) attention."""
        if "e_img" in images:
            return images["e_img"] @ captions["e_txt"].t()  # (Ni, Nc)
        alpha_bar = (alpha * mask).sum(3).transpose(1, 2) / mask.sum(-1)[None, :, None]  # (Ni, Nc, R): real words
        beta_bar = beta.mean(1)  # (Ni, Nc, L): mean over the regions
        h = torch.einsum("icr,ird->icd", alpha_bar, images["context"]) + self.context_fc.bias  # W_ai c_img + b
        tau = torch.sigmoid(images["gate_whole"][:, None] + torch.einsum("icr,ird->icd", alpha_bar,
                                                                         images["gate_context"]))
        e_img = l2norm(tau * images["whole"][:, None] + (1 - tau) * h)  # (Ni, Nc, D)
        e_txt = l2norm(torch.einsum("icl,cld->icd", beta_bar, captions["text"]) + self.text_fc.bias)
        return (e_img * e_txt).sum(-1)

    def pair_bytes(self, images: State, steps: int) -> int:
        r, d = images["v"].shape[1:]
        return 4 * (6 * r * steps + 5 * d)

    # -- training ----------------------------------------------------------------------------------------
    def objective(self, batch) -> torch.Tensor:
        """The configured objective on the fused score; ``diagonal`` scores the in-batch global branch
        the code's way: each image's vector from its own caption, each caption's from its own image."""
        if self.config.global_context != "diagonal":
            return objective_loss(self, batch)
        if batch.share is not None:
            raise ItmError("model.global_context 'diagonal' (a reproduction of the published code) trains in one "
                           "process only: its in-batch vectors pair image k with caption k")

        def block(images, captions, positives):
            local = self.score_block(self.prepare_images(images), self.prepare_captions(captions),
                                     parts=True)["local"]
            e_img, e_txt = self.diagonal_global_vectors(images, captions)  # image k with caption k
            return {"total": self.fuse({"local": local, "global": e_img @ e_txt.t()})}

        def aligned(images, captions, negative):
            raise ItmError("model.global_context 'diagonal' is defined for in-batch losses only "
                           "(train.loss infonce or vse_hardest), not pairwise_hinge")

        return objective_loss(self, batch, aligned, block)

    def diagonal_global_vectors(self, images: ImageStreams, captions: Captions):
        """The published code's evaluation vectors: e_img and e_txt of aligned (ground-truth) pairs.
        Only the leak demonstration uses them; ``itm eval`` never does."""
        _, contexts, _, _, _ = self.aligned_parts(images, captions)
        return self.image_vector(self.encode_whole(images), contexts["img"]), self.text_vector(contexts["txt"])


def build_mlasm(config: MLASMConfig, dims: InputDims, words: WordEmbedder) -> MLASM:
    return MLASM(config, dims, words)


register_model("mlasm", build_mlasm, MLASMConfig,
               "MLASM: SCAN local alignment both ways + gated global branch, 0.8 / 0.2 (global per pair)")
register_model("mlasm_local", build_mlasm, MLASMConfig, "MLASM ablation: local alignment only (global branch off)",
               local_weight=1.0)
register_model("mlasm_unconditioned", build_mlasm, MLASMConfig,
               "MLASM with an indexable global branch (fragment / word means, no pair context)",
               global_context="unconditioned")
