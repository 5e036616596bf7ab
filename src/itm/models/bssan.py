"""BSSAN: Bi-directional Spatial-Semantic Attention Networks (Huang et al., IEEE TIP 2019).

Two branches score a pair, MS = f_w2r + lambda * f_o2w (eq. 19); ``../shared/docs/bssan.md`` pins
the paper down and names our decisions.

- W2R (eq. 1-6): each word attends over the D grid regions with a bilinear tanh score; the attended
  region feature, concatenated with the word vector, feeds an LSTM run over the real words only; an
  MLP with batch norm and tanh maps the last real state to a scalar (linear output).
- O2W (eq. 9-16): a BiLSTM (directions averaged) reads the caption; each object attends over the
  real words; [object; attended context] goes through a per-object MLP; the scores are averaged.

Eq. 8: on negative pairs in training, attention is replaced by the uniform distribution
(``uniform`` mask); every pair uses softmax attention at test time.

All-pairs scoring (``score_block``) reuses what is per image or per caption: t_k^T W and the LSTM's
word-input part are per caption, the LSTM's region-input part W_u r_j is per image, so a pair needs
only the L x D attention, one (L x D)(D x 4H) product and the recurrence; in O2W the BiLSTM and the
MLP's word-context projection are per caption and o_j^T W' with the MLP's object part per image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itm.config_base import ModelConfig, check_fields
from itm.data.types import Captions
from itm.errors import ConfigError
from itm.models.base import (
    TOTAL,
    AttentionSpec,
    ImageStreams,
    InputDims,
    Matcher,
    PairScores,
    State,
    WordEmbedder,
    length_mask,
)
from itm.models.objectives import objective_loss
from itm.models.registry import register_model


@dataclass
class BSSANConfig(ModelConfig):
    """BSSAN's architecture; the defaults are the paper's."""

    name: str = "bssan"
    branches: list[str] = field(default_factory=lambda: ["w2r", "o2w"])
    w2r_hidden: int = 1024  # LSTM hidden size (paper: 1024)
    w2r_mlp: list[int] = field(default_factory=lambda: [512, 128])  # hidden layers after the LSTM
    o2w_hidden: int = 512  # BiLSTM hidden size per direction (paper: 512)
    o2w_mlp: list[int] = field(default_factory=lambda: [512, 256, 64])  # per-object MLP
    o2w_weight: float = 0.6  # lambda in MS = f_w2r + lambda * f_o2w
    reg_weight: float = 0.01  # delta: weight of the squared L2 norm of the weights
    negative_attention: str = "uniform"  # eq. 8: uniform | softmax on negative pairs in training
    # Extensions beyond the paper (defaults = the paper). docs/bssan.md, "Beyond the paper", says why.
    attention_scale: float = 1.0  # softmax(scale * tanh(...)): tanh alone caps the peak/uniform ratio
    match_input: bool = False  # also feed the attended alignment score sum_j alpha_j e_j to LSTM / MLP
    feature_norm: bool = False  # L2-normalise region and object vectors before both branches
    dropout: float = 0.0  # training-time dropout on word vectors and on region / object vectors
    w2r_context: int = 0  # >0: W2R attends with BiLSTM states of this width, not the word vectors
    # >0: W2R's alignment e_jk is the cosine of word and region vectors projected into a shared space
    # of this width (SCAN-style), not tanh(t_k W r_j + b) (issue 22's grounding lever)
    w2r_space: int = 0
    # training only: weight of a weakly supervised word-region alignment term, the objective applied
    # to each pair's mean attended alignment sum_j alpha_jk e_jk over its words (issue 22's grounding
    # lever). 0 = off (the paper); the score itself never includes it.
    align_weight: float = 0.0

    # sizes small enough for unit tests and smoke runs (every model supplies its own)
    TINY: ClassVar[dict] = {"w2r_hidden": 8, "w2r_mlp": [6], "o2w_hidden": 5, "o2w_mlp": [6, 4]}
    SHORT_RUN: ClassVar[dict] = {"model.w2r_hidden": 16, "model.w2r_mlp": [16], "model.o2w_hidden": 16,
                                 "model.o2w_mlp": [16], "train.lr": 0.02}

    def validate(self) -> None:
        check_fields("model", self, positive=("w2r_hidden", "o2w_hidden", "attention_scale"),
                     non_negative=("o2w_weight", "reg_weight", "w2r_context", "w2r_space", "align_weight"),
                     fraction=("dropout",),
                     positive_lists=("w2r_mlp", "o2w_mlp"),
                     choices={"negative_attention": ("uniform", "softmax")})
        if not set(self.branches) or not set(self.branches) <= set(BRANCH_STREAMS):
            raise ConfigError(f"model.branches: must be a non-empty subset of [w2r, o2w], got {self.branches}")
        if self.align_weight and "w2r" not in self.branches:
            raise ConfigError("model.align_weight: the alignment term needs the w2r branch")


BRANCH_STREAMS = {"w2r": "regions", "o2w": "objects"}  # the image stream each branch reads


def mlp_layers(sizes: list[int]) -> tuple[nn.ModuleList, nn.ModuleList]:
    """Linear layers for sizes [in, h1, ..., 1]; a batch norm after every hidden layer."""
    linears = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    norms = [nn.BatchNorm1d(b) for b in sizes[1:-1]]
    return nn.ModuleList(linears), nn.ModuleList(norms)


def run_mlp(linears: nn.ModuleList, norms: nn.ModuleList, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Linear -> BatchNorm -> tanh per hidden layer, linear output. With start=1, ``x`` is already
    the first layer's pre-activation (the all-pairs path computes it in per-image/caption parts)."""
    for i in range(start, len(linears)):
        if i > 0:
            x = torch.tanh(norms[i - 1](x))
        x = linears[i](x)
    return x


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim with False positions excluded (weight exactly 0)."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def uniform_like(weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The uniform distribution over the (real) positions of the last dim, shaped like ``weights``."""
    if mask is None:
        return torch.full_like(weights, 1.0 / weights.shape[-1])
    m = mask.to(weights.dtype).expand_as(weights)
    return m / m.sum(-1, keepdim=True)


def attended_alignment(weights: torch.Tensor, align: torch.Tensor) -> torch.Tensor:
    """sum_j weight_j e_j over the last dim, kept as a size-1 dim: how well the attended items
    matched (the ``match_input`` extension)."""
    return (weights * align).sum(-1, keepdim=True)


def lstm_step(gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh_t: torch.Tensor):
    """One nn.LSTM step with the input part (incl. both biases) precomputed: gates (N, 4H)."""
    gates = torch.addmm(gates_in, h, w_hh_t)  # (N, 4H)
    # i, f, o from one sigmoid over all four (fewer passes), g from tanh of its own quarter; chunks, not
    # slices: a chunk's gradient is one concatenation, each slice's a zero-filled (N, 4H) tensor
    i, f, _, o = torch.sigmoid(gates).chunk(4, dim=1)
    c = torch.addcmul(f * c, i, torch.tanh(gates.chunk(4, dim=1)[2]))
    h = o * torch.tanh(c)
    return h, c


def step_views(gates: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Each step of (L, N, 4H) gates as views (step, i|f, i, f, g, o), made by one unbind per part rather
    than half a dozen slices a step in the loop: with several engine workers scoring at once, the
    Python between the small operations is what they queue for (docs/results/speed.md, "Fifth round")."""
    hidden = gates.shape[-1] // 4
    parts = (gates, gates[..., : 2 * hidden], gates[..., :hidden], gates[..., hidden : 2 * hidden],
             gates[..., 2 * hidden : 3 * hidden], gates[..., 3 * hidden :])
    return list(zip(*(part.unbind(0) for part in parts), strict=True))


def lstm_step_(views: tuple[torch.Tensor, ...], h: torch.Tensor, c: torch.Tensor, w_hh_t: torch.Tensor):
    """``lstm_step`` with no gradient, in place on one step's gates (``step_views``), a tensor the caller
    owns: no copy of the input part for the product, each activation on its own quarters only, no
    fresh (N, 4H) tensors. The same operations on the same values: the same states up to the last bit
    an activation over a row's slice may round unlike one over the whole row."""
    gates, input_forget, i, f, g, o = views
    gates.addmm_(h.to(gates.dtype), w_hh_t.to(gates.dtype))  # (under autocast the gates are bfloat16)
    g.tanh_()
    input_forget.sigmoid_()
    o.sigmoid_()
    c = torch.addcmul(f * c, i, g)
    return o * torch.tanh(c), c


def run_recurrence(gates: torch.Tensor, lengths: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """LSTM over precomputed input gates (L, N, 4H), time first so that each step reads one contiguous
    block, from a zero state; the state at each row's last real step (N, H). Rows past their length
    keep stepping (their extra states are never read): the engine sorts captions by length, so a
    tile's lengths are nearly equal and little is wasted, while masking each step or regrouping rows
    would cost a full pass over the state per step. Without gradients the steps run in place on
    ``gates``, which the caller hands over (scoring writes it fresh)."""
    w_hh_t = w_hh.t()
    h = gates.new_zeros(gates.shape[1], w_hh.shape[1])
    c = torch.zeros_like(h)
    h_last = h
    last = lengths - 1  # (N,)
    finishing = set(last.tolist())
    if torch.is_grad_enabled() and (gates.requires_grad or w_hh.requires_grad):
        # unbind, not gates[k]: when training, each indexed step's gradient would be a zero-filled copy of
        # the whole (L, N, 4H) tensor; unbind's is one stack of the steps' gradients
        step, by_step = lstm_step, gates.unbind(0)
    else:
        step, by_step = lstm_step_, step_views(gates)
    for k, step_gates in enumerate(by_step):
        h, c = step(step_gates, h, c, w_hh_t)
        if k in finishing:
            h_last = torch.where((last == k)[:, None], h, h_last)
    return h_last


def bidirectional_states(bilstm: nn.LSTM, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A bidirectional LSTM over the real words, the two directions averaged ("average" merge):
    (N, L, E) -> (N, L, H), zeros at padding."""
    packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = bilstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])  # (N, L, 2H)
    forward, backward = out.chunk(2, dim=-1)
    return (forward + backward) / 2


class W2R(nn.Module):
    """Word-to-regions branch (eq. 1-6). ``scale``, ``match_input`` and ``context`` are our extensions
    (1, False, 0: the paper): softmax(scale * e); an extra LSTM input, the attended alignment
    sum_j alpha_jk e_jk; and, with context > 0, queries from a BiLSTM of that width over the caption
    instead of the word vectors t_k (the LSTM still reads [attended region; t_k]); with space > 0,
    e_jk = cos(A q_k, B r_j) in a shared space of that width instead of tanh(q_k W r_j + b)."""

    def __init__(self, word_dim: int, region_dim: int, hidden: int, mlp: list[int],
                 scale: float = 1.0, match_input: bool = False, context: int = 0, space: int = 0):
        super().__init__()
        self.context = nn.LSTM(word_dim, context, batch_first=True, bidirectional=True) if context else None
        query_dim = context or word_dim
        self.space = space
        if space:
            self.word_proj = nn.Linear(query_dim, space, bias=False)  # A
            self.region_proj = nn.Linear(region_dim, space, bias=False)  # B
        else:
            self.bilinear = nn.Parameter(torch.empty(query_dim, region_dim))  # W in R^{E x M} (C x M with context)
            self.bias = nn.Parameter(torch.zeros(()))  # b
            nn.init.xavier_uniform_(self.bilinear)
        self.region_dim, self.word_dim = region_dim, word_dim
        self.scale, self.match_input = scale, match_input
        self.lstm = nn.LSTM(region_dim + word_dim + int(match_input), hidden, batch_first=True)
        self.linears, self.norms = mlp_layers([hidden, *mlp, 1])

    def queries(self, words, lengths):
        """What attends over the regions: the word vectors (the paper) or their BiLSTM context."""
        if self.context is None:
            return words  # (N, L, E)
        return bidirectional_states(self.context, words, lengths)  # (N, L, C)

    def attention_queries(self, words, lengths):
        """The queries as the alignment reads them: as they are, or unit vectors in the shared space."""
        queries = self.queries(words, lengths)  # (N, L, E|C)
        return F.normalize(self.word_proj(queries), dim=-1) if self.space else queries  # (N, L, E|C|S)

    def attention_keys(self, regions):
        """Per-region keys: W r_j (the paper), or B r_j as unit vectors in the shared space."""
        if self.space:
            return F.normalize(self.region_proj(regions), dim=-1)  # (N, D, S)
        return regions @ self.bilinear.t()  # (N, D, E|C)

    def alignment_logits(self, products):
        """e from query . key products: tanh(. + b) for the bilinear form, the cosine itself otherwise."""
        return products if self.space else torch.tanh(products + self.bias)

    def forward(self, regions, words, lengths, uniform=None):
        """Aligned pairs: regions (B, D, M), words (B, L, E) -> score (B,), attention (B, L, D)."""
        if self.space:
            align = self.attention_queries(words, lengths) @ self.attention_keys(regions).transpose(1, 2)  # (B, L, D)
        else:
            keys = self.queries(words, lengths) @ self.bilinear  # (B, L, M)
            align = torch.tanh(keys @ regions.transpose(1, 2) + self.bias)  # (B, L, D): e_jk
        alpha = torch.softmax(self.scale * align, dim=-1)  # (B, L, D)
        if uniform is not None:
            alpha = torch.where(uniform[:, None, None], uniform_like(alpha, None), alpha)
        attended = alpha @ regions  # (B, L, M)
        extra = [attended_alignment(alpha, align)] if self.match_input else []  # (B, L, 1)
        inputs = torch.cat([attended, words, *extra], dim=-1)  # (B, L, M+E[+1])
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_last, _) = self.lstm(packed)  # (1, B, H): the state at each caption's last real word
        alpha = alpha * length_mask(lengths, words.shape[1])[:, :, None]  # padding words: no attention
        return run_mlp(self.linears, self.norms, h_last[0]).squeeze(-1), alpha

    def prepare_images(self, regions):
        w_u = self.lstm.weight_ih_l0[:, : self.region_dim]  # (4H, M): the LSTM's region-input part
        return {
            "w2r_keys": self.attention_keys(regions),  # (N, D, E|C|S): so a pair needs only L x D x E
            "w2r_gates": regions @ w_u.t(),  # (N, D, 4H)
        }

    def prepare_captions(self, words, lengths):
        w_t = self.lstm.weight_ih_l0[:, self.region_dim : self.region_dim + self.word_dim]  # (4H, E)
        bias = self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0
        return {"w2r_queries": self.attention_queries(words, lengths),  # (N, L, E|C|S)
                "w2r_gates": words @ w_t.t() + bias}  # (N, L, 4H)

    def score_block(self, images: State, captions: State, lengths, uniform=None):
        """Every image x caption pair: (Ni, Nc) scores; pairs run as one batched recurrence."""
        keys, region_gates = images["w2r_keys"], images["w2r_gates"]  # (Ni, D, E|C), (Ni, D, 4H)
        queries, word_gates = captions["w2r_queries"], captions["w2r_gates"]  # (Nc, L, E|C), (Nc, L, 4H)
        ni, d = keys.shape[:2]
        nc, steps = queries.shape[:2]
        flat_queries = queries.reshape(1, nc * steps, -1).expand(ni, -1, -1)  # (Ni, Nc*L, E|C)
        align = self.alignment_logits(flat_queries @ keys.transpose(1, 2))  # (Ni, Nc*L, D)
        alpha = torch.softmax(self.scale * align, dim=-1)
        if uniform is not None:
            alpha = torch.where(uniform.repeat_interleave(steps, 1)[:, :, None], 1.0 / d, alpha)
        gates = alpha @ region_gates  # (Ni, Nc*L, 4H)
        if self.match_input:
            w_match = self.lstm.weight_ih_l0[:, -1]  # (4H,): the LSTM weights of the alignment input
            gates = gates + attended_alignment(alpha, align) * w_match
        # (L, Ni, Nc, 4H): time first, pairs as the batch dimension. Scoring writes it once in that order
        # (each step one contiguous block); out= has no gradient, so training keeps the sum's own layout
        # and steps through it by strides (a copy would cost a pass forward and one backward)
        by_step_parts = gates.view(ni, nc, steps, -1).permute(2, 0, 1, 3), word_gates.transpose(0, 1)[:, None]
        if torch.is_grad_enabled() and (gates.requires_grad or word_gates.requires_grad):
            by_step = torch.add(*by_step_parts)
        else:
            by_step = torch.add(*by_step_parts, out=gates.new_empty(steps, ni, nc, gates.shape[-1]))
        h_last = run_recurrence(by_step.reshape(steps, ni * nc, -1), lengths.repeat(ni), self.lstm.weight_hh_l0)  # (Ni*Nc, H)
        return run_mlp(self.linears, self.norms, h_last).view(ni, nc)


    def alignment(self, queries, keys, lengths):
        """Mean over each caption's words of the attended alignment sum_j alpha_jk e_jk: queries
        (Nc, L, E|C), keys W r_j (Ni, D, E|C) -> (Ni, Nc). High when every word finds a region it
        aligns with: the weak word-region alignment term trains it (``align_weight``)."""
        ni, (nc, steps) = keys.shape[0], queries.shape[:2]
        flat = queries.reshape(1, nc * steps, -1).expand(ni, -1, -1)  # (Ni, Nc*L, E|C)
        align = self.alignment_logits(flat @ keys.transpose(1, 2))  # (Ni, Nc*L, D)
        per_word = attended_alignment(torch.softmax(self.scale * align, dim=-1), align).view(ni, nc, steps)
        mask = length_mask(lengths, steps)  # (Nc, L)
        return (per_word * mask).sum(-1) / lengths.clamp(min=1)  # (Ni, Nc)


class O2W(nn.Module):
    """Object-to-words branch (eq. 9-16); ``scale`` and ``match_input`` as in W2R (the alignment
    sum_k beta_jk e_jk becomes one more input of the per-object MLP)."""

    def __init__(self, word_dim: int, object_dim: int, hidden: int, mlp: list[int],
                 scale: float = 1.0, match_input: bool = False):
        super().__init__()
        self.bilstm = nn.LSTM(word_dim, hidden, batch_first=True, bidirectional=True)
        self.bilinear = nn.Parameter(torch.empty(object_dim, hidden))  # W' in R^{Q x B}
        self.bias = nn.Parameter(torch.zeros(()))  # b'
        nn.init.xavier_uniform_(self.bilinear)
        self.object_dim, self.hidden = object_dim, hidden
        self.scale, self.match_input = scale, match_input
        self.linears, self.norms = mlp_layers([object_dim + hidden + int(match_input), *mlp, 1])

    def encode_words(self, words, lengths):
        """BiLSTM over the real words, directions averaged: (N, L, B), zeros at padding."""
        return bidirectional_states(self.bilstm, words, lengths)

    def forward(self, objects, words, lengths, uniform=None):
        """Aligned pairs: objects (B, P, Q), words (B, L, E) -> score (B,), attention (B, P, L)."""
        states = self.encode_words(words, lengths)  # (B, L, Bh)
        mask = length_mask(lengths, words.shape[1])[:, None, :]  # (B, 1, L)
        align = torch.tanh((objects @ self.bilinear) @ states.transpose(1, 2) + self.bias)  # (B, P, L)
        beta = masked_softmax(self.scale * align, mask)
        if uniform is not None:
            beta = torch.where(uniform[:, None, None], uniform_like(beta, mask), beta)
        context = beta @ states  # (B, P, Bh)
        extra = [attended_alignment(beta, align)] if self.match_input else []  # (B, P, 1)
        joint = torch.cat([objects, context, *extra], dim=-1)  # (B, P, Q+Bh[+1])
        b, p, _ = joint.shape
        per_object = run_mlp(self.linears, self.norms, joint.reshape(b * p, -1)).view(b, p)
        return per_object.mean(dim=1), beta

    def _first_layer_parts(self):
        """The first MLP layer's columns for the object, the word context and the alignment input."""
        weight = self.linears[0].weight  # (H1, Q+Bh[+1])
        q, b = self.object_dim, self.hidden
        return weight[:, :q], weight[:, q : q + b], weight[:, q + b :]

    def prepare_images(self, objects):
        w_obj, _, _ = self._first_layer_parts()
        return {
            "o2w_keys": objects @ self.bilinear,  # (N, P, Bh)
            "o2w_first": objects @ w_obj.t() + self.linears[0].bias,  # (N, P, H1)
        }

    def prepare_captions(self, words, lengths):
        states = self.encode_words(words, lengths)  # (N, L, Bh)
        _, w_ctx, _ = self._first_layer_parts()
        return {"o2w_states": states, "o2w_first": states @ w_ctx.t()}  # (N, L, Bh), (N, L, H1)

    def score_block(self, images: State, captions: State, lengths, uniform=None):
        keys, obj_first = images["o2w_keys"], images["o2w_first"]  # (Ni, P, Bh), (Ni, P, H1)
        states, ctx_first = captions["o2w_states"], captions["o2w_first"]  # (Nc, L, Bh), (Nc, L, H1)
        (ni, p, width), (nc, steps) = keys.shape, states.shape[:2]
        # laid out (Nc, L, Ni*P), caption first: one GEMM gives the alignments in that order, the context
        # product is one GEMM per caption (beta transposed as a stride, not a copy), and the large (.., H1)
        # tensors are written once, in the order the MLP reads them
        products = states.reshape(nc * steps, width) @ keys.reshape(ni * p, width).t()  # (Nc*L, Ni*P)
        align = torch.tanh(products.view(nc, steps, ni * p) + self.bias)  # (Nc, L, Ni*P)
        mask = length_mask(lengths, steps)[:, :, None]  # (Nc, L, 1)
        beta = torch.softmax((self.scale * align).masked_fill(~mask, float("-inf")), dim=1)  # over the real words
        if uniform is not None:  # (Ni, Nc): eq. 8's training negatives attend uniformly over the real words
            real = mask.to(beta.dtype)
            negative = uniform.t().repeat_interleave(p, dim=1)[:, None, :]  # (Nc, 1, Ni*P)
            beta = torch.where(negative, real / real.sum(1, keepdim=True), beta)
        # first MLP layer of [o_j ; sum_k beta_jk s_k] = object part + beta @ (per-caption context part)
        first = torch.baddbmm(obj_first.reshape(1, ni * p, -1), beta.transpose(1, 2), ctx_first)  # (Nc, Ni*P, H1)
        if self.match_input:
            _, _, w_match = self._first_layer_parts()  # (H1, 1)
            first = first + (beta * align).sum(1)[..., None] * w_match[:, 0]
        per_object = run_mlp(self.linears, self.norms, first.reshape(nc * ni * p, -1), start=1)
        return per_object.view(nc, ni, p).mean(dim=-1).t()  # (Ni, Nc)


class BSSAN(Matcher):
    """W2R and/or O2W branches; MS = f_w2r + lambda * f_o2w."""

    ATTENTION = {"w2r": AttentionSpec("words", "regions", "W2R: each word's attention over the region grid"),
                 "o2w": AttentionSpec("objects", "words", "O2W: each object's attention over the words")}

    def __init__(self, config: BSSANConfig, dims: InputDims, words: WordEmbedder):
        super().__init__()
        self.image_streams = tuple(BRANCH_STREAMS[name] for name in ("w2r", "o2w") if name in config.branches)
        self.words = words
        self.o2w_weight = config.o2w_weight
        self.reg_weight = config.reg_weight
        self.align_weight = config.align_weight
        self.negative_attention = config.negative_attention
        self.feature_norm = config.feature_norm
        self.dropout = nn.Dropout(config.dropout)  # identity in eval mode, so evaluation is unchanged
        extensions = {"scale": config.attention_scale, "match_input": config.match_input}
        self.branches = nn.ModuleDict()
        if "w2r" in config.branches:
            self.branches["w2r"] = W2R(dims.word_dim, dims.region_dim, config.w2r_hidden, config.w2r_mlp,
                                       context=config.w2r_context, space=config.w2r_space, **extensions)
        if "o2w" in config.branches:
            self.branches["o2w"] = O2W(dims.word_dim, dims.object_dim, config.o2w_hidden, config.o2w_mlp,
                                       **extensions)

    def attention_specs(self) -> dict[str, AttentionSpec]:
        return {name: self.ATTENTION[name] for name in self.branches}

    def visual_inputs(self, images: ImageStreams) -> dict[str, torch.Tensor]:
        """Each branch's visual input, float32, unit-length per vector when ``feature_norm`` is set
        (dropout, when configured, after the normalisation)."""
        inputs = {name: images[BRANCH_STREAMS[name]].float() for name in self.branches}
        if self.feature_norm:
            inputs = {name: F.normalize(x, dim=-1) for name, x in inputs.items()}
        return {name: self.dropout(x) for name, x in inputs.items()}

    def word_vectors(self, captions: Captions) -> torch.Tensor:
        """(B, L, E) word vectors, with dropout in training when configured."""
        return self.dropout(self.words(captions))

    def branch_weights(self) -> dict[str, float]:
        return {name: (1.0 if name == "w2r" else self.o2w_weight) for name in self.branches}

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.branch_weights()
        return sum(weights[name] * score for name, score in parts.items())

    def forward(self, images: ImageStreams, captions: Captions, return_attention=False, uniform=None):
        """Aligned pairs; ``uniform`` (B,) bool marks the training negatives of eq. 8."""
        words = self.word_vectors(captions)  # (B, L, E)
        lengths = captions.lengths
        inputs = self.visual_inputs(images)
        if self.negative_attention == "softmax" or not self.training:
            uniform = None  # eq. 8 applies to training negatives only, and only when configured
        parts, attention = {}, {}
        for name, branch in self.branches.items():
            parts[name], attention[name] = branch(inputs[name], words, lengths, uniform)
        return PairScores(self.combine(parts), parts, attention if return_attention else {})

    def prepare_images(self, images: ImageStreams) -> State:
        inputs = self.visual_inputs(images)
        state: State = {}
        for name, branch in self.branches.items():
            state.update(branch.prepare_images(inputs[name]))
        return state

    def prepare_captions(self, captions: Captions) -> State:
        words = self.word_vectors(captions)
        state: State = {"lengths": captions.lengths}
        for branch in self.branches.values():
            state.update(branch.prepare_captions(words, captions.lengths))
        return state

    def score_block(self, images: State, captions: State, parts: bool = False):
        """(Ni, Nc) scores of every pair of the two prepared blocks; ``parts``: with each branch's."""
        branches = self.branch_blocks(images, captions)
        total = self.combine(branches)
        return {TOTAL: total, **branches} if parts else total

    def branch_blocks(self, images: State, captions: State, uniform=None) -> dict[str, torch.Tensor]:
        """Each branch's (Ni, Nc) block; ``uniform`` (Ni, Nc) bool marks eq. 8's training negatives."""
        if self.negative_attention == "softmax" or not self.training:
            uniform = None
        lengths = captions["lengths"]
        steps = int(lengths.max())  # trim padding shared by the whole caption block
        captions = {k: (v[:, :steps] if v.dim() >= 2 else v) for k, v in captions.items()}
        return {name: branch.score_block(images, captions, lengths, uniform) for name, branch in self.branches.items()}

    def pair_bytes(self, images: State, steps: int) -> int:
        floats = 0
        if "w2r" in self.branches:
            d, four_h = images["w2r_gates"].shape[1:]  # (D, 4H)
            floats += 3 * steps * d + 2 * steps * four_h + 3 * four_h
        if "o2w" in self.branches:
            p, h1 = images["o2w_first"].shape[1:]
            floats += 3 * p * steps + 4 * p * h1
        return 4 * floats

    def regularization(self) -> torch.Tensor:
        """delta * the squared L2 norm of the weight matrices (not biases, norms or the word table)."""
        if not self.reg_weight:
            return torch.zeros(())
        total = torch.zeros(())
        for name, p in self.named_parameters():
            if p.requires_grad and p.dim() >= 2 and not name.startswith("words."):
                total = total + p.pow(2).sum()
        return self.reg_weight * total

    def alignment_block(self, images: State, captions: State, lengths: torch.Tensor) -> torch.Tensor:
        """(Ni, Nc) mean attended word-region alignment of prepared blocks (the ``align_weight`` term)."""
        return self.branches["w2r"].alignment(captions["w2r_queries"], images["w2r_keys"], lengths)

    def objective(self, batch) -> torch.Tensor:
        """Eq. 18: each branch's loss weighted like its score, eq. 8's uniform attention on the
        negatives (when configured); the weight regulariser is in ``penalty``."""
        def aligned(images, captions, negative):
            parts = dict(self(images, captions, uniform=negative).parts)
            if self.align_weight:  # the block's diagonal: B x B alignments are cheap next to the LSTMs
                parts["align"] = self.alignment_block(self.prepare_images(images), self.prepare_captions(captions),
                                                      captions.lengths).diagonal()
            return parts

        def block(images, captions, positives):
            image_state, caption_state = self.prepare_images(images), self.prepare_captions(captions)
            parts = self.branch_blocks(image_state, caption_state, uniform=~positives)
            if self.align_weight:
                parts["align"] = self.alignment_block(image_state, caption_state, captions.lengths)
            return parts

        weights = self.branch_weights() | ({"align": self.align_weight} if self.align_weight else {})
        return objective_loss(self, batch, aligned, block, weights)

    def penalty(self) -> torch.Tensor:
        """The word table's anchor plus eq. 18's weight regulariser."""
        return super().penalty() + self.regularization()


def build_bssan(config: BSSANConfig, dims: InputDims, words: WordEmbedder) -> BSSAN:
    return BSSAN(config, dims, words)


register_model("bssan", build_bssan, BSSANConfig, "BSSAN: W2R + lambda * O2W, weight regulariser (the paper's model)")
register_model("bssan_w2r", build_bssan, BSSANConfig, "BSSAN, word-to-regions branch only", branches=["w2r"])
register_model("bssan_o2w", build_bssan, BSSANConfig, "BSSAN, object-to-words branch only", branches=["o2w"])
register_model("bssan_no_reg", build_bssan, BSSANConfig, "BSSAN without the weight regulariser (delta = 0)", reg_weight=0.0)
register_model("bssan_sharp", build_bssan, BSSANConfig,
               "BSSAN with attention softmax(10 tanh(.)) over L2-normalised features (our extension)",
               attention_scale=10.0, feature_norm=True)
