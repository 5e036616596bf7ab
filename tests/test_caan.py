"""CAAN's particulars: the ablation switches change what the fragment weights see, the contexts equal
the literal products (the second order the row-normalised A A^T), and the score is a cosine."""

from __future__ import annotations

import pytest
import torch
from helpers import make_captions, make_images, streams, tiny_model

from itm.config import ConfigError, load_config
from itm.models.caan import row_normalise


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


@pytest.mark.parametrize("name", ["caan", "caan_no_inter", "caan_no_intra"])
def test_region_and_word_contexts_equal_the_literal_products(name):
    """``region_terms`` / ``word_terms`` (one GEMM per pair, A A^T never formed) against the literal
    sums: own term + A U W2 (inter) + row_normalise(A A^T) V W3 (second-order intra), and the word side's."""
    model, _ = tiny_model(name)
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    ni, nc, steps, r, h = 2, 3, 4, 5, 6
    r2w = torch.softmax(torch.randn(ni, nc, steps, r, generator=gen), -2)  # (Ni, Nc, L, R): A^T, words by regions
    w2r = torch.softmax(torch.randn(ni, nc, steps, r, generator=gen), -1)
    images = {k: torch.randn(ni, r, h, generator=gen) for k in ("own", "intra", "to_words")}
    captions = {k: torch.randn(nc, steps, h, generator=gen) for k in ("own", "intra", "to_regions")}
    a = r2w.transpose(2, 3)  # (Ni, Nc, R, L)
    expected_r = images["own"][:, None].expand(ni, nc, r, h)
    expected_w = captions["own"].expand(ni, nc, steps, h)
    if cfg.use_inter:
        expected_r = expected_r + a @ captions["to_regions"]
        expected_w = expected_w + w2r @ images["to_words"][:, None]
    if cfg.use_intra:
        expected_r = expected_r + row_normalise(a @ a.transpose(-1, -2)) @ images["intra"][:, None]
        expected_w = expected_w + row_normalise(w2r @ w2r.transpose(-1, -2)) @ captions["intra"]
    own_before = images["own"].clone()
    torch.testing.assert_close(model.region_terms(images, captions, r2w), expected_r)
    torch.testing.assert_close(model.word_terms(images, captions, w2r), expected_w)
    assert torch.equal(images["own"], own_before)  # a fresh tensor: the prepared state is untouched


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
