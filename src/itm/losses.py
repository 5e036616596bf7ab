"""Training objectives: tensors in, scalar out. Registered by name for ``train.loss``.

Every loss takes the scores of one branch and returns a scalar; the trainer adds the branches with
their weights (BSSAN: L = L_w2r + lambda * L_o2w + delta * L_reg, eq. 18).
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


LOSSES.add("pairwise_hinge", pairwise_hinge, "BSSAN's siamese hinge with sampled unmatched captions")
LOSSES.add("infonce", infonce, "symmetric InfoNCE over in-batch pairs")
LOSSES.add("vse_hardest", vse_hardest, "VSE++ hardest in-batch negative hinge")
