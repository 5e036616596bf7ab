"""MLASM's particulars: the global-context rules, the leak of the published evaluation, the code's
untrained parameters, and the refusal to evaluate a leaky model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_captions, make_features, make_images, streams, tiny_batch, tiny_model

from itm.config import load_config
from itm.errors import ItmError
from itm.evaluation.evaluate import evaluate_model
from itm.evaluation.metrics import chance_metrics, retrieval_metrics
from itm.models.objectives import TrainingBatch

REPO = Path(__file__).resolve().parents[1]


def leak_script():
    spec = importlib.util.spec_from_file_location("mlasm_leak_demo", REPO / "scripts" / "mlasm_leak_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_test_set(n_images: int = 40, per_image: int = 5, seed: int = 3):
    features = make_features(n_images, seed=seed)
    lengths = torch.randint(2, 8, (n_images * per_image,), generator=torch.Generator().manual_seed(seed)).tolist()
    captions = make_captions(lengths, seed=seed)
    owner = np.repeat(np.arange(n_images), per_image)
    return features, captions, owner


def test_evaluating_a_diagonal_model_is_refused_in_one_line():
    model, _ = tiny_model("mlasm", "model.global_context=diagonal")
    features, captions, owner = random_test_set(4, 2)
    with pytest.raises(ItmError, match="global_context is 'diagonal'.*leaks the answer") as info:
        evaluate_model(model, features, captions, owner)
    assert "\n" not in str(info.value)


def noise(n_images: int, seed: int):
    """Random fragments and random captions, two per image: nothing ties a caption to its image."""
    features = make_features(n_images, seed=seed)
    lengths = torch.randint(3, 9, (2 * n_images,), generator=torch.Generator().manual_seed(seed)).tolist()
    return features, make_captions(lengths, seed=seed), torch.arange(n_images).repeat_interleave(2)


@pytest.fixture(scope="module")
def diagonal_trained():
    """A global-branch-only MLASM trained the published code's way (diagonal contexts) on noise."""
    torch.manual_seed(0)
    model, _ = tiny_model("mlasm", "model.local_weight=0", "model.embed_dim=16", "model.global_context=diagonal",
                          "model.word_dropout=0")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-2)
    cfg = load_config(None, ["train.loss=infonce"]).train
    for step in range(200):
        features, captions, owner = noise(16, 1000 + step)
        batch = TrainingBatch(torch.arange(0, 32, 2), owner, cfg, torch.Generator(),
                              lambda i, c, f=features, t=captions: (f.streams(model.image_streams, i), t.select(c)))
        loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_the_published_evaluation_sees_the_answer_on_noise(diagonal_trained):
    """On fresh noise an honest matcher can only rank at chance. Trained and evaluated the code's way,
    each side is conditioned on its ground-truth partner, and the ground truth is retrieved anyway."""
    features, captions, owner = noise(40, 7)
    owner = owner.numpy()
    chance = chance_metrics(40, 2)["rsum"]
    leaky = retrieval_metrics(leak_script().leaky_global_scores(diagonal_trained, features, captions, owner), owner)
    diagonal_trained.config.global_context = "pairwise"  # the same weights, scored per pair
    try:
        honest = evaluate_model(diagonal_trained, features, captions, owner)
    finally:
        diagonal_trained.config.global_context = "diagonal"
    assert leaky["rsum"] > chance + 60, (leaky["rsum"], chance)
    assert honest["rsum"] < chance + 30, (honest["rsum"], chance)


def test_pairwise_scores_ignore_the_ground_truth_the_leaky_ones_use_it():
    model, _ = tiny_model("mlasm")
    model.eval()
    features, captions, owner = random_test_set(10, 3)
    relabelled = np.roll(owner, 3)  # another pairing of the same captions and images
    demo = leak_script()
    leaky_a = demo.leaky_global_scores(model, features, captions, owner)
    assert not np.allclose(leaky_a, demo.leaky_global_scores(model, features, captions, relabelled))
    # the honest matrix takes no ground truth at all: permuting the captions permutes its columns
    perm = torch.randperm(len(captions), generator=torch.Generator().manual_seed(0))
    honest = evaluate_scores(model, features, captions)
    np.testing.assert_allclose(evaluate_scores(model, features, captions.select(perm)), honest[:, perm.numpy()],
                               rtol=1e-5, atol=1e-6)


def evaluate_scores(model, features, captions) -> np.ndarray:
    from itm.evaluation.engine import score_all_pairs

    return score_all_pairs(model, features, captions)


def test_leak_demo_reports_both_protocols():
    model, _ = tiny_model("mlasm")
    features, captions, owner = random_test_set(6, 2)
    result = leak_script().leaky_and_honest(model.eval(), features, captions, owner)
    assert set(result) == {"honest", "leaky", "honest_global_only", "leaky_global_only"}
    assert result["honest"]["rsum"] == pytest.approx(evaluate_model(model, features, captions, owner)["rsum"])


def test_unconditioned_global_branch_is_indexable():
    """e_img and e_txt depend on one item each: the global matrix is one product of two tables."""
    model, _ = tiny_model("mlasm_unconditioned", "model.local_weight=0")
    model.eval()
    features, captions, _ = random_test_set(5, 2)
    with torch.no_grad():
        images = model.prepare_images(features.streams(model.image_streams))
        caps = model.prepare_captions(captions)
        block = model.score_block(images, caps)
    torch.testing.assert_close(block, images["e_img"] @ caps["e_txt"].t())


def test_code_mode_leaves_the_gate_and_context_projection_untrained():
    model, _ = tiny_model("mlasm", "model.train_all_params=false")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"context_fc.weight", "context_fc.bias", "gate.weight", "gate.bias", "words.table.weight"}
    default, _ = tiny_model("mlasm")
    assert all(p.requires_grad for n, p in default.named_parameters() if not n.startswith("words."))


def test_diagonal_training_scores_the_code_way():
    """Same weights, same batch: the diagonal rule gives another loss than the per-pair rule; it is
    defined for in-batch losses only."""
    pairwise, _ = tiny_model("mlasm", "model.dropout=0", "model.word_dropout=0")
    diagonal, _ = tiny_model("mlasm", "model.dropout=0", "model.word_dropout=0", "model.global_context=diagonal")
    diagonal.load_state_dict(pairwise.state_dict())
    batch = tiny_batch(pairwise)
    a, b = pairwise.training_loss(batch), diagonal.training_loss(batch)
    assert torch.isfinite(b) and not torch.allclose(a, b)
    with pytest.raises(ItmError, match="in-batch losses only"):
        diagonal.training_loss(tiny_batch(diagonal, loss="pairwise_hinge"))


def test_global_branch_off_builds_no_global_layers():
    model, _ = tiny_model("mlasm_local")
    model.eval()
    assert model.image_streams == ("regions",) and not hasattr(model, "gate")
    regions, objects = make_images(2)
    captions = make_captions([3, 2])
    with torch.no_grad():
        out = model(streams(regions, objects), captions)
        block = model.score_block(model.prepare_images(streams(regions, objects)), model.prepare_captions(captions))
        other_objects = model(streams(regions, objects + 1), captions).score
        other_regions = model(streams(regions + 1, objects), captions).score
    assert set(out.parts) == {"local"} and torch.equal(out.score, out.parts["local"])
    # the pair-by-pair score is the all-pairs block's diagonal (same process: float32 defaults), and
    # only the regions reach it
    torch.testing.assert_close(out.score, torch.diagonal(block))
    assert torch.equal(other_objects, out.score) and not torch.allclose(other_regions, out.score)
