"""The checks every registered matcher gets (timm-style: parametrised over ``itm.models.MODELS``).

Each model supplies its tiny config (``TINY`` on its config class). Shapes and finiteness, a gradient
for every trainable parameter through the model's own training hook, the attention maps it declares
(distributions over the real positions, nothing on padding), padding invariance, the contract's
declarations, and a short synthetic training run that lifts R@5 well above chance. The engine's
exactness against the one-pair forward, for every model, is in test_engine.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    fit_quietly,
    make_captions,
    make_images,
    setup_run,
    short_run_overrides,
    streams,
    tiny_batch,
    tiny_model,
)

from itm import cli
from itm.config import ConfigError, load_config
from itm.data.types import IMAGE_STREAMS, Captions
from itm.evaluation import chance_metrics
from itm.models import MODELS
from itm.models.base import AXES

VARIANTS = MODELS.names()
LENGTHS = [3, 5, 1, 4, 2]  # varied, one single-word caption


def test_the_three_papers_are_registered():
    assert {"bssan", "caan", "mlasm"} <= set(VARIANTS)


@pytest.mark.parametrize("name", VARIANTS)
def test_declarations(name):
    model, config = tiny_model(name)
    assert isinstance(config.model, MODELS.get(name).config_class)
    assert model.image_streams and set(model.image_streams) <= set(IMAGE_STREAMS)
    for spec in model.attention_specs().values():
        assert spec.rows in AXES and spec.over in AXES


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_and_finite(name, training):
    model, _ = tiny_model(name)
    model.train(training)
    out = model(streams(*make_images(len(LENGTHS))), make_captions(LENGTHS))
    assert out.score.shape == (len(LENGTHS),) and torch.isfinite(out.score).all()
    for part in out.parts.values():
        assert part.shape == (len(LENGTHS),) and torch.isfinite(part).all()
    assert out.attention == {}  # only on request


@pytest.mark.parametrize("name", VARIANTS)
def test_every_trainable_parameter_gets_a_gradient(name):
    model, _ = tiny_model(name, "text.trainable=true")
    model.train()
    out = model(streams(*make_images(len(LENGTHS))), make_captions(LENGTHS))
    weights = torch.linspace(-1.0, 2.0, len(LENGTHS))  # not a plain sum: batch norm cancels that
    (out.score * weights).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("words.") for n, _ in trainable)  # the table is trainable here
    for param_name, param in trainable:
        assert param.grad is not None, f"{param_name}: no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name}: non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{param_name}: zero gradient"


@pytest.mark.parametrize("loss", ["infonce", "vse_hardest", "pairwise_hinge"])
@pytest.mark.parametrize("name", VARIANTS)
def test_training_hook_gives_a_finite_loss_and_gradients(name, loss):
    """The trainer's one call into a model; a ranking loss cannot move a constant score offset (an
    output bias), so gradients are checked for being there and finite, not non-zero."""
    model, _ = tiny_model(name)
    model.train()
    value = model.training_loss(tiny_batch(model, loss=loss))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_training_loss_is_the_objective_plus_the_models_penalty(name):
    """The trainer adds nothing: a model owns its penalties, the word table's anchor among them."""
    model, _ = tiny_model(name, "text.trainable=true")
    model.train()
    words = model.words  # as text.anchor_weight=2 sets it up over a GloVe-initialised table
    words.anchor_weight, words.anchor = 2.0, words.table.weight.detach().clone()
    with torch.no_grad():
        words.table.weight.add_(0.5)  # rows away from their initial vectors: the anchor pulls
    batch = tiny_batch(model)
    torch.manual_seed(0)
    total = model.training_loss(batch)
    torch.manual_seed(0)
    objective = model.objective(batch)
    penalty = model.penalty()
    anchor = float(words.penalty().detach())
    assert anchor == pytest.approx(2.0 * 0.25 * words.dim)  # 0.5 on every coordinate
    assert float(penalty.detach()) >= anchor > 0
    torch.testing.assert_close(total, objective + penalty)


@pytest.mark.parametrize("name", VARIANTS)
def test_frozen_word_table_gets_no_gradient(name):
    model, _ = tiny_model(name)  # text.trainable defaults to false
    assert not model.words.table.weight.requires_grad


def size_of(axis: str, captions: Captions, images: dict[str, torch.Tensor]) -> int:
    return {"words": captions.ids.shape[1], "regions": images["regions"].shape[1],
            "objects": images["objects"].shape[1], "image": 1, "caption": 1}[axis]


@pytest.mark.parametrize("name", VARIANTS)
def test_declared_attention_is_a_distribution_that_ignores_padding(name):
    model, _ = tiny_model(name)
    model.eval()
    captions = make_captions(LENGTHS, width=7)  # padding after every caption
    images = streams(*make_images(len(LENGTHS)))
    with torch.no_grad():
        maps = model(images, captions, return_attention=True).attention
    specs = model.attention_specs()
    assert set(maps) == set(specs)
    assert specs or model.indexable, "a cross-attention model declares its maps (what explain draws)"
    real = torch.arange(7)[None, :] < captions.lengths[:, None]  # (B, L)
    for key, spec in specs.items():
        att = maps[key]
        assert att.shape == (len(LENGTHS), size_of(spec.rows, captions, images), size_of(spec.over, captions, images)), key
        assert (att >= 0).all(), key
        row_real = real if spec.rows == "words" else torch.ones(att.shape[:2], dtype=torch.bool)
        sums = att.sum(-1)  # (B, rows)
        torch.testing.assert_close(sums[row_real], torch.ones(int(row_real.sum())), msg=key)
        assert (att[~row_real] == 0).all(), f"{key}: padded word rows must be 0"
        if spec.over == "words":
            assert (att.transpose(1, 2)[~real] == 0).all(), f"{key}: padded words must get 0"


@pytest.mark.parametrize("name", VARIANTS)
def test_extra_padding_does_not_change_the_score(name):
    model, _ = tiny_model(name)
    model.eval()
    images = streams(*make_images(len(LENGTHS)))
    tight = make_captions(LENGTHS)
    padded = Captions(torch.cat([tight.ids, torch.zeros(len(LENGTHS), 6, dtype=torch.long)], 1), tight.lengths)
    with torch.no_grad():
        torch.testing.assert_close(model(images, tight).score, model(images, padded).score, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_bad_model_values_are_one_line_errors_naming_the_key(name):
    with pytest.raises(ConfigError, match="model: unknown key 'no_such_key'") as info:
        load_config(None, [f"model.name={name}", "model.no_such_key=1"])
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_a_short_synthetic_run_lifts_recall_well_above_chance(tmp_path, name):
    trainer, train, val = setup_run(tmp_path, "train.loss=infonce", "train.epochs=3",
                                    model_overrides=short_run_overrides(name), n_train=192)
    after = fit_quietly(trainer, train, val)["history"][-1]["val"]
    chance = chance_metrics(len(val.dataset), 5)
    r5 = (after["i2t"]["r5"] + after["t2i"]["r5"]) / 2
    assert r5 > (chance["i2t"]["r5"] + chance["t2i"]["r5"]) / 2 + 20, (name, after)


@pytest.mark.parametrize("name", [n for n in VARIANTS if tiny_model(n)[0].indexable])
def test_indexable_models_score_by_an_inner_product_of_item_vectors(name):
    model, _ = tiny_model(name)
    model.eval()
    images, captions = streams(*make_images(3)), make_captions(LENGTHS)
    with torch.no_grad():
        block = model.score_block(model.prepare_images(images), model.prepare_captions(captions))
        torch.testing.assert_close(block, model.encode_images(images) @ model.encode_captions(captions).t())


def test_cli_models_lists_every_model(capsys):
    assert cli.main(["models"]) == 0
    registry, shipped = capsys.readouterr().out.split("\n\n")
    listed = [line.split()[0] for line in registry.splitlines()]
    assert sorted(listed) == sorted(VARIANTS)
    assert shipped.startswith("shipped")


@pytest.mark.parametrize("name", VARIANTS)
def test_the_all_pairs_block_trains_the_function_of_the_one_pair_forward(name):
    """In-batch training differentiates ``score_block``; its loss and every parameter's gradient must be
    those of the literal one-pair ``forward`` over the same pairs (eval mode: no dropout), so that a
    faster block cannot change what a model learns."""
    from itm.models.base import TOTAL

    model, _ = tiny_model(name, "text.trainable=true")
    model.eval()
    images, captions = streams(*make_images(3)), make_captions(LENGTHS)
    ni, nc = 3, len(LENGTHS)
    weights = torch.linspace(-1.0, 2.0, ni * nc).view(ni, nc)

    def gradients(loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    block = model.score_block(model.prepare_images(images), model.prepare_captions(captions), parts=True)[TOTAL]
    block_loss, block_grads = gradients((block * weights).sum())
    image_of, caption_of = torch.arange(ni).repeat_interleave(nc), torch.arange(nc).repeat(ni)
    pairs = model({k: v[image_of] for k, v in images.items()}, captions.select(caption_of)).score.view(ni, nc)
    pair_loss, pair_grads = gradients((pairs * weights).sum())
    torch.testing.assert_close(block_loss, pair_loss, rtol=1e-4, atol=1e-5)
    assert block_grads.keys() == pair_grads.keys() and block_grads
    for param_name, grad in pair_grads.items():
        torch.testing.assert_close(block_grads[param_name], grad, rtol=1e-3, atol=1e-5, msg=param_name)
