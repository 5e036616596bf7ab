"""Distillation: the teachers a student learns the in-batch score distributions of (``train.distill_from``).

The teachers are trained checkpoints (an ensemble: BSSAN seeds and MLASM, say). Each training step
they score the step's B x B block of images and captions as the student sees them (same features,
same augmentation, same word ids), each block is z-scored (the members' scales differ, as in
``itm eval --checkpoint A B C``) and averaged; over ``train.distill_temperature`` these are the
logits whose row and column softmaxes the student matches (``itm.losses.distillation``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from itm.checkpoint import LoadedCheckpoint, load_checkpoint
from itm.data.types import Captions
from itm.data.vocab import Vocab
from itm.errors import ConfigError


def zscored_mean(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The mean of (B, B) blocks, each z-scored over its own entries first."""
    return torch.stack([(b - b.mean()) / b.std().clamp_min(1e-12) for b in blocks]).mean(0)


class Teachers:
    """Frozen checkpoints that score a training step's block: ``(streams, captions) -> (B, B)`` logits."""

    def __init__(self, members: list[LoadedCheckpoint], temperature: float):
        self.members = members
        self.temperature = temperature
        for member in members:
            member.model.eval().requires_grad_(False)
        # the streams the step must also read for them (MLASM's whole-image vector, say)
        self.image_streams = tuple(dict.fromkeys(k for m in members for k in m.model.image_streams))

    @torch.no_grad()
    def __call__(self, streams: dict[str, torch.Tensor], captions: Captions) -> torch.Tensor:
        blocks = []
        for member in self.members:
            model = member.model
            images = model.prepare_images({k: streams[k] for k in model.image_streams})
            blocks.append(model.score_block(images, model.prepare_captions(captions)).float())  # (B, B)
        return zscored_mean(blocks) / self.temperature


def load_teachers(paths: list[str], vocab: Vocab, features: dict, temperature: float,
                  device: torch.device | str | None = None) -> Teachers:
    """The checkpoints of ``train.distill_from`` on ``device``. Each must read the student's features
    (``features``: the prepared split's settings) and its word ids (the same training vocabulary), since
    it scores the student's own inputs; a one-line ConfigError names the first that does not."""
    members = []
    for path in paths:
        if not Path(path).exists():
            raise ConfigError(f"train.distill_from: {path}: no such checkpoint")
        member = load_checkpoint(path, device=device)
        theirs = {k: member.feature_settings.get(k) for k in ("backbone", "image_size", "num_objects", "proposals")}
        ours = {k: features.get(k) for k in theirs}
        if theirs != ours:
            raise ConfigError(f"train.distill_from: {path} was trained on other image features ({theirs} vs {ours})")
        if list(member.payload["vocab"]) != vocab.to_list():
            raise ConfigError(f"train.distill_from: {path} has another training vocabulary: its word ids would "
                              "not read the student's captions")
        members.append(member)
    return Teachers(members, temperature)
