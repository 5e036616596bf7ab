"""CAAN's particulars: the ablation switches change what the fragment weights see, the second-order
context equals the literal row-normalised A A^T product, and the score is a cosine."""

from __future__ import annotations

import pytest
import torch
from helpers import make_captions, make_images, streams, tiny_model

from itm.config import ConfigError, load_config
from itm.models.caan import CAAN, row_normalise


def weights_of(name: str, *overrides: str):
    model, _ = tiny_model(name, *overrides)
    model.eval()
    with torch.no_grad():
        out = model(streams(*make_images(3)), make_captions([4, 2, 5]), return_attention=True)
    return model, out


@pytest.mark.parametrize("variant, missing", [("caan_no_inter", {"region_cross", "word_cross"}),
                                              ("caan_no_intra", {"region_intra", "word_intra"})])
def test_ablations_drop_their_context_layers(variant, missing):
    model, _ = weights_of(variant)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert not missing & names
    full, _ = weights_of("caan")
    assert missing <= {name.split(".")[0] for name, _ in full.named_parameters()}


def test_intra_source_changes_the_fragment_weights():
    _, semantic = weights_of("caan")
    _, feature = weights_of("caan_feature_intra")
    assert not torch.allclose(semantic.attention["region_weights"], feature.attention["region_weights"])
    # the cross-modal maps do not depend on the intra source
    torch.testing.assert_close(semantic.attention["words_over_regions"], feature.attention["words_over_regions"])


def test_second_order_contexts_equal_the_literal_products():
    gen = torch.Generator().manual_seed(0)
    r2w = torch.softmax(torch.randn(3, 5, 4, generator=gen), -1)  # A: (Nc, R, L), one image
    w2r = torch.softmax(torch.randn(3, 5, 4, generator=gen), -2)
    image_values, caption_values = torch.randn(5, 6, generator=gen), torch.randn(3, 4, 6, generator=gen)
    literal_r = row_normalise(r2w @ r2w.transpose(-1, -2)) @ image_values
    literal_w = row_normalise(w2r.transpose(-1, -2) @ w2r) @ caption_values
    # the model's layout is words by regions, (Ni, Nc, L, R) for a block of images (here one), with A^T
    # passed as a strided view
    r2w_lr = r2w.transpose(1, 2).contiguous()[None]
    torch.testing.assert_close(CAAN.region_second_order(r2w_lr, r2w_lr.transpose(2, 3), image_values[None]),
                               literal_r[None])
    torch.testing.assert_close(CAAN.word_second_order(w2r.transpose(1, 2).contiguous()[None], caption_values),
                               literal_w[None])


def test_cosine_score_is_bounded_and_scale_free():
    model, out = weights_of("caan")
    assert (out.score.abs() <= 1 + 1e-6).all()
    dot, _ = tiny_model("caan", "model.score=dot")
    dot.load_state_dict(model.state_dict())
    dot.eval()
    with torch.no_grad():
        assert not torch.allclose(dot(streams(*make_images(3)), make_captions([4, 2, 5])).score, out.score)


@pytest.mark.parametrize("override", ["model.temperature=0", "model.intra_source=raw", "model.fragments=pixels",
                                      "model.dropout=1.5"])
def test_bad_values_name_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, ["model.name=caan", override])
