"""Training objectives against hand-computed examples (the arithmetic is written out)."""

from __future__ import annotations

import math

import pytest
import torch

from itm.losses import LOSSES, infonce, pairwise_hinge, vse_hardest


def test_registered_losses():
    assert set(LOSSES.names()) == {"pairwise_hinge", "infonce", "vse_hardest"}


def test_pairwise_hinge_by_hand():
    positive = torch.tensor([2.0, 0.5])
    negative = torch.tensor([[1.5, 3.0], [0.0, -1.0]])  # K = 2 negatives per positive
    # max(0, 1 - 2 + 1.5) = 0.5, max(0, 1 - 2 + 3) = 2, max(0, 1 - 0.5 + 0) = 0.5, max(0, 1 - 0.5 - 1) = 0
    # mean over the 4 terms: (0.5 + 2 + 0.5 + 0) / 4 = 0.75
    assert pairwise_hinge(positive, negative, margin=1.0).item() == pytest.approx(0.75)
    # margin 0.2: max(0, -0.3) = 0, max(0, 1.2) = 1.2, max(0, -0.3) = 0, 0 -> 1.2 / 4 = 0.3
    assert pairwise_hinge(positive, negative, margin=0.2).item() == pytest.approx(0.3)


def test_pairwise_hinge_single_negative_and_gradient_signs():
    positive = torch.tensor([1.0, 3.0], requires_grad=True)
    negative = torch.tensor([[0.5], [0.0]], requires_grad=True)
    # max(0, 1 - 1 + 0.5) = 0.5 (active), max(0, 1 - 3 + 0) = 0 (inactive); mean 0.25
    loss = pairwise_hinge(positive, negative, margin=1.0)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert positive.grad.tolist() == pytest.approx([-0.5, 0.0])  # raise the positive score
    assert negative.grad.flatten().tolist() == pytest.approx([0.5, 0.0])  # lower the negative one


def test_infonce_by_hand():
    scores = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    positives = torch.eye(2, dtype=torch.bool)
    # logits = scores / 0.5 = [[4, 0], [2, 2]]
    # image -> caption rows: -log softmax([4, 0])[0] = log(1 + e^-4) = 0.0181499
    #                        -log softmax([2, 2])[1] = log 2          = 0.6931472  -> mean 0.3556485
    # caption -> image (columns [4, 2] and [0, 2]): log(1 + e^-2) = 0.1269280 twice -> mean 0.1269280
    # symmetric: (0.3556485 + 0.1269280) / 2 = 0.2412883
    assert infonce(scores, positives, temperature=0.5).item() == pytest.approx(0.2412883, abs=1e-6)
    expected = ((math.log(1 + math.exp(-4)) + math.log(2)) / 2 + math.log(1 + math.exp(-2))) / 2
    assert infonce(scores, positives, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_infonce_masks_false_negatives():
    # batch of 3 captions whose images are [0, 0, 1]: rows 0 and 1 are the same image, so the
    # off-diagonal pairs (0, 1) and (1, 0) are matched pairs, not negatives
    images = torch.tensor([0, 0, 1])
    positives = images[:, None] == images[None, :]
    scores = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    # masked logits (T = 1): [[1, -inf, 0], [-inf, 1, 0], [0, 0, 2]] (the same for the columns)
    # row 0: log(e^1 + e^0) - 1 = log(1 + e^-1) = 0.3132617; row 1: the same
    # row 2: log(e^0 + e^0 + e^2) - 2 = log(2 + e^2) - 2 = 0.2395448
    # mean (0.3132617 * 2 + 0.2395448) / 3 = 0.2886894, both directions alike
    loss = infonce(scores, positives, temperature=1.0)
    assert loss.item() == pytest.approx(0.2886894, abs=1e-6)
    # the masked scores (2 and 3) do not matter at all ...
    changed = scores.clone()
    changed[0, 1], changed[1, 0] = -50.0, 50.0
    assert infonce(changed, positives, temperature=1.0).item() == pytest.approx(loss.item(), abs=1e-6)
    # ... whereas without the mask they count as (strong) negatives: 1.2723323 by the same arithmetic
    unmasked = infonce(scores, torch.eye(3, dtype=torch.bool), temperature=1.0)
    assert unmasked.item() == pytest.approx(1.2723323, abs=1e-6)


def test_infonce_gradient_never_reaches_masked_pairs():
    images = torch.tensor([0, 0, 1])
    positives = images[:, None] == images[None, :]
    scores = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    infonce(scores, positives, temperature=0.05).backward()
    assert scores.grad[0, 1] == 0 and scores.grad[1, 0] == 0
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 2] > 0  # a true negative is pushed down


def test_vse_hardest_by_hand():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.6, 0.8, 0.7], [0.2, 0.3, 0.4]])
    positives = torch.eye(3, dtype=torch.bool)
    # image -> captions, hinge 0.2 + s_ij - s_ii over j != i, hardest per row:
    #   row 0 (0.9): 0.2+0.5-0.9 < 0, 0.2+0.1-0.9 < 0     -> 0
    #   row 1 (0.8): 0.2+0.6-0.8 = 0, 0.2+0.7-0.8 = 0.1   -> 0.1
    #   row 2 (0.4): 0.2+0.2-0.4 = 0, 0.2+0.3-0.4 = 0.1   -> 0.1     mean 0.2 / 3
    # caption -> images, hinge 0.2 + s_ij - s_jj over i != j, hardest per column:
    #   col 0 (0.9): 0.2+0.6-0.9 < 0, 0.2+0.2-0.9 < 0     -> 0
    #   col 1 (0.8): 0.2+0.5-0.8 < 0, 0.2+0.3-0.8 < 0     -> 0
    #   col 2 (0.4): 0.2+0.1-0.4 < 0, 0.2+0.7-0.4 = 0.5   -> 0.5     mean 0.5 / 3
    # total 0.7 / 3 = 0.2333333
    assert vse_hardest(scores, positives, margin=0.2).item() == pytest.approx(0.7 / 3, abs=1e-6)
    # caption 2 also matching image 1: (1, 2) leaves the negatives of row 1 and column 2
    #   row 1 -> only j = 0: 0; column 2 -> only i = 0: 0; total (0 + 0 + 0.1) / 3 + 0
    also = positives.clone()
    also[1, 2] = True
    assert vse_hardest(scores, also, margin=0.2).item() == pytest.approx(0.1 / 3, abs=1e-6)


def test_vse_hardest_gradient_only_on_the_hardest_negatives():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.6, 0.8, 0.7], [0.2, 0.3, 0.4]], requires_grad=True)
    vse_hardest(scores, torch.eye(3, dtype=torch.bool), margin=0.2).backward()
    touched = {tuple(ij) for ij in (scores.grad != 0).nonzero().tolist()}
    # hardest active negatives: (1, 2) and (2, 1) for the rows, (1, 2) for column 2; plus diagonals
    assert touched == {(1, 2), (2, 1), (1, 1), (2, 2)}
