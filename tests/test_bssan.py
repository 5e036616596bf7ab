"""BSSAN and its registered variants, at tiny sizes: what is particular to BSSAN (the weighted sum
of branches, the regulariser, eq. 8's uniform attention on training negatives, attention computed by
hand, the extensions beyond the paper). The checks every model gets are in test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    ENGINE_LENGTHS,
    D,
    E,
    M,
    P,
    Q,
    engine_data,
    engine_model,
    make_captions,
    make_images,
    set_mixed_modes,
    streams,
    tiny_model,
)

from itm import cli
from itm.config import ConfigError, load_config
from itm.data.types import Captions
from itm.evaluation import engine
from itm.models import MODELS
from itm.models.base import TOTAL

BSSAN_VARIANTS = [n for n in MODELS.names() if n.startswith("bssan")]
VARIANTS = BSSAN_VARIANTS
EXPECTED = {"bssan", "bssan_w2r", "bssan_o2w", "bssan_no_reg"}
LENGTHS = [3, 5, 1, 4, 2]  # varied, one single-word caption


def tiny_inputs(name: str, training: bool, width: int):
    """(tiny model in the mode asked, its config, captions of LENGTHS padded to ``width``, regions, objects)."""
    model, config = tiny_model(name)
    model.train(training)
    regions, objects = make_images(len(LENGTHS))
    return model, config, make_captions(LENGTHS, width=width), regions, objects


def branches_of(name: str) -> list[str]:
    return list(tiny_model(name)[1].model.branches)


def test_registry_holds_the_bssan_variants():
    assert EXPECTED <= set(VARIANTS)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_presets_pick_the_branches(name):
    model, config = tiny_model(name)
    assert list(model.branches) == config.model.branches
    expected = {"bssan_w2r": ["w2r"], "bssan_o2w": ["o2w"]}.get(name, ["w2r", "o2w"])
    assert config.model.branches == expected


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_finite_and_weighted_sum(name, training):
    model, config = tiny_model(name)
    model.train(training)
    regions, objects = make_images(len(LENGTHS))
    out = model(streams(regions, objects), make_captions(LENGTHS))
    assert out.score.shape == (len(LENGTHS),)
    assert torch.isfinite(out.score).all()
    assert set(out.parts) == set(config.model.branches)
    for part in out.parts.values():
        assert part.shape == (len(LENGTHS),)
        assert torch.isfinite(part).all()
    expected = out.parts.get("w2r", 0) + config.model.o2w_weight * out.parts.get("o2w", 0)
    torch.testing.assert_close(out.score, expected)
    assert out.attention == {}  # only on request


@pytest.mark.parametrize("name", VARIANTS)
def test_regularization_is_delta_times_squared_weight_norm(name):
    model, config = tiny_model(name, "text.trainable=true")
    reg = model.regularization()
    expected = sum(p.pow(2).sum() for n, p in model.named_parameters()
                   if p.dim() >= 2 and not n.startswith("words."))
    if name == "bssan_no_reg":
        assert config.model.reg_weight == 0.0
        assert reg.item() == 0.0
    else:
        assert config.model.reg_weight == pytest.approx(0.01)
        torch.testing.assert_close(reg, config.model.reg_weight * expected)
        assert reg.item() > 0
    # biases, norms and the word table are not regularised
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() < 2 or n.startswith("words."):
                p.add_(3.0)
    torch.testing.assert_close(model.regularization(), reg)


# -- attention maps -------------------------------------------------------------------------------

W2R_VARIANTS = [n for n in VARIANTS if "w2r" in branches_of(n)]
O2W_VARIANTS = [n for n in VARIANTS if "o2w" in branches_of(n)]


def real_mask(captions: Captions) -> torch.Tensor:
    return torch.arange(captions.ids.shape[1])[None, :] < captions.lengths[:, None]  # (B, L)


@pytest.mark.parametrize("name", W2R_VARIANTS)
def test_w2r_attention_is_a_distribution_over_regions_for_real_words(name):
    model, _ = tiny_model(name)
    model.eval()
    captions = make_captions(LENGTHS, width=7)  # padding after every caption
    regions, objects = make_images(len(LENGTHS))
    alpha = model(streams(regions, objects), captions, return_attention=True).attention["w2r"]
    assert alpha.shape == (len(LENGTHS), 7, D)
    real = real_mask(captions)
    torch.testing.assert_close(alpha.sum(-1)[real], torch.ones(int(real.sum())))
    assert (alpha >= 0).all()
    assert (alpha[~real] == 0).all()  # exactly zero for padding words
    # eq. 1-2 computed by hand: alpha_k = softmax_j tanh(t_k^T W r_j + b) (times the scale, 1 in the paper)
    branch = model.branches["w2r"]
    words = model.words(captions)
    regions = model.visual_inputs(streams(regions, objects))["w2r"]
    logits = torch.tanh(words @ branch.bilinear @ regions.transpose(1, 2) + branch.bias)
    manual = torch.softmax(branch.scale * logits, -1)
    torch.testing.assert_close(alpha[real], manual[real])


@pytest.mark.parametrize("name", O2W_VARIANTS)
def test_o2w_attention_is_a_distribution_over_real_words(name):
    model, _, captions, regions, objects = tiny_inputs(name, training=False, width=7)
    beta = model(streams(regions, objects), captions, return_attention=True).attention["o2w"]
    assert beta.shape == (len(LENGTHS), P, 7)
    real = real_mask(captions)[:, None, :].expand_as(beta)
    torch.testing.assert_close(beta.sum(-1), torch.ones(len(LENGTHS), P))
    assert (beta[~real] == 0).all()  # exactly zero weight on padding
    assert (beta[real] > 0).all()
    # eq. 10-11 by hand over the real words only
    branch = model.branches["o2w"]
    with torch.no_grad():
        states = branch.encode_words(model.words(captions), captions.lengths)
    objects = model.visual_inputs(streams(regions, objects))["o2w"]
    for b, n in enumerate(LENGTHS):
        logits = torch.tanh(objects[b] @ branch.bilinear @ states[b, :n].t() + branch.bias)  # (P, n)
        torch.testing.assert_close(beta[b, :, :n], torch.softmax(branch.scale * logits, -1))


@pytest.mark.parametrize("name", VARIANTS)
def test_eq8_uniform_attention_on_marked_pairs_in_training(name):
    model, config, captions, regions, objects = tiny_inputs(name, training=True, width=6)
    uniform = torch.tensor([True, False, True, False, True])
    with torch.no_grad():
        att = model(streams(regions, objects), captions, uniform=uniform, return_attention=True).attention
        soft = model(streams(regions, objects), captions, return_attention=True).attention
    real = real_mask(captions)
    if "w2r" in config.model.branches:
        alpha = att["w2r"]
        for b in range(len(LENGTHS)):
            n = LENGTHS[b]
            if uniform[b]:
                assert (alpha[b, :n] == 1.0 / D).all()  # exactly 1/D per region
            else:
                torch.testing.assert_close(alpha[b], soft["w2r"][b])  # the softmax
                assert not torch.allclose(alpha[b, :n], torch.full((n, D), 1.0 / D))
            assert (alpha[b][~real[b]] == 0).all()
    if "o2w" in config.model.branches:
        beta = att["o2w"]
        for b in range(len(LENGTHS)):
            n = LENGTHS[b]
            if uniform[b]:
                assert (beta[b, :, :n] == 1.0 / n).all()  # exactly 1/len over the real words
            else:
                torch.testing.assert_close(beta[b], soft["o2w"][b])
                if n > 1:
                    assert not torch.allclose(beta[b, :, :n], torch.full((P, n), 1.0 / n))
            assert (beta[b, :, n:] == 0).all()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("training, overrides", [
    (False, []),  # eval mode: eq. 8 never applies at test time
    (True, ["model.negative_attention=softmax"]),  # the alternative to eq. 8 in training
], ids=["eval-mode", "softmax-negatives"])
def test_uniform_mark_is_ignored(name, training, overrides):
    model, _ = tiny_model(name, *overrides)
    model.train(training)
    captions = make_captions(LENGTHS)
    regions, objects = make_images(len(LENGTHS))
    with torch.no_grad():
        marked = model(streams(regions, objects), captions, uniform=torch.ones(len(LENGTHS), dtype=torch.bool),
                       return_attention=True)
        plain = model(streams(regions, objects), captions, return_attention=True)
    torch.testing.assert_close(marked.score, plain.score, rtol=0, atol=0)
    for key in plain.attention:
        torch.testing.assert_close(marked.attention[key], plain.attention[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_uniform_changes_the_training_score(name):
    """The converse of the two tests above: eq. 8 must actually act in training with 'uniform'."""
    model, _ = tiny_model(name)
    model.train()
    captions = make_captions(LENGTHS)
    regions, objects = make_images(len(LENGTHS))
    with torch.no_grad():
        marked = model(streams(regions, objects), captions, uniform=torch.ones(len(LENGTHS), dtype=torch.bool))
        plain = model(streams(regions, objects), captions)
    assert not torch.allclose(marked.score, plain.score)


def test_cli_models_lists_every_variant(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.split("\n\n")[0].splitlines()  # the registry; then the shipped models
    listed = [line.split()[0] for line in lines]
    assert sorted(listed) == sorted(MODELS.names())
    assert any("branches=['w2r']" in line for line in lines if line.startswith("bssan_w2r"))


# -- extensions beyond the paper (model.attention_scale, model.match_input, model.feature_norm) ----

def attention_maps(model, regions, objects, captions) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(streams(regions, objects), captions, return_attention=True).attention


def test_attention_scale_sharpens_the_same_logits():
    """softmax(s * e): log-attention is s times the scale-1 log-attention up to a per-row constant."""
    captions, (regions, objects) = make_captions(LENGTHS), make_images(len(LENGTHS))
    plain = attention_maps(tiny_model("bssan")[0], regions, objects, captions)
    sharp = attention_maps(tiny_model("bssan", "model.attention_scale=4")[0], regions, objects, captions)
    for b, n in enumerate(LENGTHS):
        rows = {"w2r": (sharp["w2r"][b, :n], plain["w2r"][b, :n]),  # (n, D): words over regions
                "o2w": (sharp["o2w"][b, :, :n], plain["o2w"][b, :, :n])}  # (P, n): objects over words
        for key, (s_rows, p_rows) in rows.items():
            gap = s_rows.log() - 4 * p_rows.log()
            assert (gap.amax(-1) - gap.amin(-1)).max() < 1e-4, key
    for key in sharp:
        assert sharp[key].amax(-1).mean() > plain[key].amax(-1).mean()  # sharper on average


@pytest.mark.parametrize("branch", ["w2r", "o2w"])
def test_match_input_feeds_the_attended_alignment_score(branch):
    """With match_input, zeroing the alignment input's weights gives the paper's network back."""
    model, _ = tiny_model(f"bssan_{branch}", "model.match_input=true")
    model.eval()
    captions, (regions, objects) = make_captions(LENGTHS), make_images(len(LENGTHS))
    with torch.no_grad():
        with_match = model(streams(regions, objects), captions).score
        module = model.branches[branch]
        weight = module.lstm.weight_ih_l0 if branch == "w2r" else module.linears[0].weight
        assert weight.shape[1] == (M + E + 1 if branch == "w2r" else Q + module.hidden + 1)
        weight[:, -1] = 0
        without = model(streams(regions, objects), captions).score
        paper, _ = tiny_model(f"bssan_{branch}")
        paper.load_state_dict({k: (v[:, :-1] if v.shape != paper.state_dict()[k].shape else v)
                               for k, v in model.state_dict().items()})
        paper.eval()
        torch.testing.assert_close(without, paper(streams(regions, objects), captions).score)
    assert not torch.allclose(with_match, without)


def test_feature_norm_makes_the_score_blind_to_feature_scale():
    model, _ = tiny_model("bssan", "model.feature_norm=true")
    model.eval()
    captions, (regions, objects) = make_captions(LENGTHS), make_images(len(LENGTHS))
    with torch.no_grad():
        a = model(streams(regions, objects), captions).score
        b = model(streams(regions * 7.0, objects * 0.1), captions).score
        plain, _ = tiny_model("bssan")
        plain.load_state_dict(model.state_dict())
        plain.eval()
        c = plain(streams(regions * 7.0, objects * 0.1), captions).score
    torch.testing.assert_close(a, b)
    assert not torch.allclose(b, c)  # without it, the scale matters


@pytest.mark.parametrize("space", [0, 5])
@pytest.mark.parametrize("name", ["bssan", "bssan_w2r", "bssan_o2w"])
def test_extensions_keep_all_pairs_scoring_exact(name, space):
    """score_block (the evaluation engine's path) == forward with every extension switched on."""
    model, _ = tiny_model(name, "model.attention_scale=6", "model.match_input=true", "model.feature_norm=true",
                          "model.w2r_context=4", f"model.w2r_space={space}")
    model.eval()
    captions, (regions, objects) = make_captions(LENGTHS), make_images(3)
    with torch.no_grad():
        block = model.score_block(model.prepare_images(streams(regions, objects)), model.prepare_captions(captions))
        for i in range(3):
            single = model(streams(regions[i : i + 1].expand(len(LENGTHS), -1, -1),
                                   objects[i : i + 1].expand(len(LENGTHS), -1, -1)), captions).score
            torch.testing.assert_close(block[i], single, rtol=1e-5, atol=1e-5)


def test_dropout_acts_in_training_only():
    """model.dropout perturbs training scores and leaves evaluation exactly the dropout-free model."""
    model, _ = tiny_model("bssan", "model.dropout=0.5", "model.negative_attention=softmax")
    plain, _ = tiny_model("bssan", "model.negative_attention=softmax")
    plain.load_state_dict(model.state_dict())
    captions, (regions, objects) = make_captions(LENGTHS), make_images(len(LENGTHS))
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(streams(regions, objects), captions).score, plain(streams(regions, objects), captions).score)
        model.train(), plain.train()
        torch.manual_seed(0)
        dropped = model(streams(regions, objects), captions).score
        torch.manual_seed(0)
        kept = plain(streams(regions, objects), captions).score
    assert not torch.allclose(dropped, kept)


# -- model.w2r_context: W2R queries from a BiLSTM over the caption ---------------------------------

CONTEXT = "model.w2r_context=4"


@pytest.mark.parametrize("name", ["bssan", "bssan_w2r"])
def test_context_queries_get_gradients_and_ignore_padding(name):
    model, _ = tiny_model(name, CONTEXT, "text.trainable=true")
    assert model.branches["w2r"].context.hidden_size == 4
    model.train()
    regions, objects = make_images(len(LENGTHS))
    out = model(streams(regions, objects), make_captions(LENGTHS))
    (out.score * torch.linspace(-1.0, 2.0, len(LENGTHS))).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{param_name}: no gradient"
    model.eval()
    tight = make_captions(LENGTHS)
    padded = Captions(torch.cat([tight.ids, torch.zeros(len(LENGTHS), 6, dtype=torch.long)], 1), tight.lengths)
    with torch.no_grad():
        torch.testing.assert_close(model(streams(regions, objects), tight).score, model(streams(regions, objects), padded).score,
                                   rtol=1e-5, atol=1e-5)


def test_context_queries_make_a_word_attend_by_its_caption():
    """Without context, a word's attention is a function of the word alone; with it, the same
    word attends differently when the words around it change. Padding words get none."""
    regions, objects = make_images(2)
    regions = regions[:1].expand(2, -1, -1)  # one image, two captions
    objects = objects[:1].expand(2, -1, -1)
    ids = torch.tensor([[5, 7, 9, 0], [11, 7, 13, 2]])  # word 7 in the middle of both
    captions = Captions(ids, torch.tensor([3, 4]))
    for overrides, differs in [((), False), ((CONTEXT,), True)]:
        model, _ = tiny_model("bssan_w2r", *overrides)
        model.eval()
        with torch.no_grad():
            alpha = model(streams(regions, objects), captions, return_attention=True).attention["w2r"]
        assert torch.allclose(alpha[0, 1], alpha[1, 1]) != differs
        torch.testing.assert_close(alpha[:, :3].sum(-1), torch.ones(2, 3))
        assert (alpha[0, 3] == 0).all()


def test_context_width_is_validated():
    with pytest.raises(ConfigError, match="model.w2r_context"):
        load_config(None, ["model.w2r_context=-1"])


# -- the weak word-region alignment term (issue 22's grounding lever) --------------------------------

def test_alignment_is_the_mean_attended_alignment_over_real_words():
    model, _ = tiny_model("bssan_sharp", "model.align_weight=0.5")
    model.eval()
    regions, objects = make_images(3)
    captions = make_captions([4, 2, 5])
    with torch.no_grad():
        block = model.alignment_block(model.prepare_images(streams(regions, objects)),
                                      model.prepare_captions(captions), captions.lengths)  # (3, 3)
        w2r, inputs = model.branches["w2r"], model.visual_inputs(streams(regions, objects))["w2r"]
        words = model.word_vectors(captions)
        for i in range(3):
            for c in range(3):
                steps = int(captions.lengths[c])
                e = torch.tanh(words[c, :steps] @ w2r.bilinear @ inputs[i].t() + w2r.bias)  # (L, D)
                expected = (torch.softmax(w2r.scale * e, dim=-1) * e).sum(-1).mean()
                assert torch.allclose(block[i, c], expected, atol=1e-5)


@pytest.mark.parametrize("loss", ["infonce", "pairwise_hinge"])
def test_align_weight_adds_the_objective_on_the_alignment(loss):
    from helpers import tiny_batch

    plain, _ = tiny_model("bssan_sharp")
    aligned, _ = tiny_model("bssan_sharp", "model.align_weight=0.5")
    aligned.load_state_dict(plain.state_dict())
    for model in (plain, aligned):
        model.train()
        model.dropout.p = 0.0
    torch.manual_seed(1)
    base = plain.training_loss(tiny_batch(plain, loss=loss))
    torch.manual_seed(1)
    total = aligned.training_loss(tiny_batch(aligned, loss=loss))
    assert total.item() > base.item()  # the extra term is a positive loss
    total.backward()
    assert aligned.branches["w2r"].bilinear.grad.abs().sum() > 0


def test_align_weight_needs_the_w2r_branch_and_is_not_negative():
    from itm.errors import ConfigError

    with pytest.raises(ConfigError, match="align_weight"):
        tiny_model("bssan_o2w", "model.align_weight=1")
    with pytest.raises(ConfigError, match="align_weight"):
        tiny_model("bssan", "model.align_weight=-1")


def test_w2r_space_aligns_by_cosine_in_a_shared_space():
    model, _ = tiny_model("bssan_w2r", "model.w2r_space=6")
    model.eval()
    regions, objects = make_images(2)
    captions = make_captions([3, 4])
    w2r = model.branches["w2r"]
    assert not hasattr(w2r, "bilinear")  # the paper's W and b are replaced, not left untrained
    with torch.no_grad():
        attention = model(streams(regions, objects), captions, return_attention=True).attention["w2r"]
        words = model.word_vectors(captions)
        inputs = model.visual_inputs(streams(regions, objects))["w2r"]
        for b in range(2):
            steps = int(captions.lengths[b])
            q = torch.nn.functional.normalize(words[b, :steps] @ w2r.word_proj.weight.t(), dim=-1)
            k = torch.nn.functional.normalize(inputs[b] @ w2r.region_proj.weight.t(), dim=-1)
            expected = torch.softmax(w2r.scale * (q @ k.t()), dim=-1)  # (L, D)
            torch.testing.assert_close(attention[b, :steps], expected, atol=1e-5, rtol=1e-4)


# -- the engine on BSSAN's own parts (moved from test_engine.py: the shared tests never name a model) --
@pytest.mark.parametrize("name", BSSAN_VARIANTS)
def test_bssan_parts_combine_with_lambda(name):
    model, config = engine_model(name, "model.o2w_weight=0.37")
    features, captions = engine_data()
    parts = engine.score_all_parts(model, features, captions)
    assert set(parts) == {TOTAL, *config.model.branches}
    torch.testing.assert_close(parts[TOTAL], parts.get("w2r", 0) + 0.37 * parts.get("o2w", 0))


@pytest.mark.parametrize("name", BSSAN_VARIANTS)
def test_score_block_eq8_uniform_matches_forward(name):
    """The in-batch losses' path (score_block with a uniform mask, training mode) applies eq. 8 to
    exactly the pairs the forward path does (batch norms frozen so both see the same statistics)."""
    model, _ = engine_model(name)
    set_mixed_modes(model)
    features, captions = engine_data()
    uniform = torch.rand(5, len(ENGINE_LENGTHS), generator=torch.Generator().manual_seed(3)) < 0.5
    with torch.no_grad():
        images = model.prepare_images(features.streams(model.image_streams))
        block = model.combine(model.branch_blocks(images, model.prepare_captions(captions), uniform=uniform))
        ii, cc = torch.meshgrid(torch.arange(5), torch.arange(len(ENGINE_LENGTHS)), indexing="ij")
        ii, cc = ii.reshape(-1), cc.reshape(-1)
        picked = captions.select(cc)
        pair = model(features.streams(model.image_streams, ii), picked, uniform=uniform.reshape(-1)).score
    torch.testing.assert_close(block.reshape(-1), pair, rtol=1e-4, atol=1e-4)
    assert uniform.any() and (~uniform).any()


def test_the_in_place_lstm_step_gives_the_states_of_the_plain_one():
    """Scoring's ``lstm_step_`` (in place on gates it owns) against training's ``lstm_step``, within float
    rounding (an activation over a row's slice may round a last bit unlike one over the whole row); and
    ``run_recurrence`` takes the in-place step only where no gradient is wanted."""
    from itm.models.bssan import lstm_step, lstm_step_, run_recurrence, step_views

    gen = torch.Generator().manual_seed(0)
    n, hidden, steps = 7, 5, 4
    gates = torch.randn(steps, n, 4 * hidden, generator=gen)
    w_hh = torch.randn(4 * hidden, hidden, generator=gen)
    h, c = torch.randn(n, hidden, generator=gen), torch.randn(n, hidden, generator=gen)
    plain = lstm_step(gates[0], h, c, w_hh.t())
    in_place = lstm_step_(step_views(gates[:1].clone())[0], h, c, w_hh.t())
    for a, b in zip(plain, in_place, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    lengths = torch.tensor([4, 1, 3, 4, 2, 4, 1])
    with torch.no_grad():
        owned = gates.clone()
        scored = run_recurrence(owned, lengths, w_hh)
    assert not torch.equal(owned, gates)  # stepped in place on the tensor handed over
    trained = run_recurrence(gates.clone().requires_grad_(), lengths, w_hh)
    torch.testing.assert_close(scored, trained.detach(), rtol=1e-6, atol=1e-6)
