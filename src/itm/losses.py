"""Training objectives: tensors in, scalar out. Registered by name for ``train.loss``.

Every loss takes the scores of positive and negative pairs (of a model's total score, or of one of its
parts when the model's own ``training_loss`` weighs its parts) and returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from itm.registry import Registry

LOSSES: Registry = Registry("loss")


def pairwise_hinge(positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """BSSAN eq. 7 / 17: mean of max(0, M - Y + Y^-) over each positive (B,) and its negatives (B, K)."""
    return F.relu(margin - positive[:, None] + negative).mean()


def infonce(scores: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over an in-batch block: scores (B_img, B_cap), diagonal = matched pairs.

    ``positives`` (B_img, B_cap) bool marks every matched pair; the off-diagonal ones (two captions of
    one image in the batch) are removed from the negatives rather than counted as wrong."""
    target = torch.arange(scores.shape[0], device=scores.device)
    false_negative = positives & ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    logits = (scores / temperature).masked_fill(false_negative, float("-inf"))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def vse_hardest(scores: torch.Tensor, positives: torch.Tensor, margin: float) -> torch.Tensor:
    """VSE++: hinge on the hardest in-batch negative, both directions (collapses with frozen features
    here per the calibration note: offered as an option, not a default)."""
    diagonal = scores.diag()
    blocked = positives | torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_caption = F.relu(margin + scores - diagonal[:, None]).masked_fill(blocked, 0)  # image -> captions
    cost_image = F.relu(margin + scores - diagonal[None, :]).masked_fill(blocked, 0)  # caption -> images
    return cost_caption.max(dim=1).values.mean() + cost_image.max(dim=0).values.mean()


def distillation(scores: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the in-batch distributions, each image over the captions and each
    caption over the images, averaged: ``scores`` (B_img, B_cap) the student's (over ``temperature``,
    as its InfoNCE reads them), ``teacher`` (B_img, B_cap) the teachers' logits (no gradient)."""
    logits = scores / temperature
    rows = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher, 1), reduction="batchmean", log_target=True)
    cols = F.kl_div(F.log_softmax(logits.t(), 1), F.log_softmax(teacher.t(), 1), reduction="batchmean",
                    log_target=True)
    return (rows + cols) / 2


LOSSES.add("pairwise_hinge", pairwise_hinge, "siamese hinge with sampled unmatched captions (BSSAN's eq. 7)")
LOSSES.add("infonce", infonce, "symmetric InfoNCE over in-batch pairs")
LOSSES.add("vse_hardest", vse_hardest, "VSE++ hardest in-batch negative hinge")
