"""Weight averaging (train.ema_decay): an exponential moving average of the weights over training steps.

The averaged weights are one model, not an ensemble: they cost nothing at test time. Validation,
``best.pt`` and so every evaluation use them; training continues on the raw weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """The moving average ``avg <- d * avg + (1 - d) * w`` of every floating-point weight and buffer
    (batch-norm statistics included); integer buffers are copied as they are. ``d`` ramps up to
    ``decay`` as min(decay, (1 + n) / (10 + n)) after n updates, so the random initial weights do
    not linger in the average through the first epochs."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.float_keys = [k for k, v in self.average.items() if v.is_floating_point()]
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        current = model.state_dict()
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # avg + (1 - d) * (w - avg) is the same update, fused over all tensors in one call
        torch._foreach_lerp_([self.average[k] for k in self.float_keys],
                             [current[k].detach() for k in self.float_keys], 1.0 - d)
        for k, v in self.average.items():
            if not v.is_floating_point():
                v.copy_(current[k])

    def state_dict(self) -> dict:
        return {"weights": {k: v.clone() for k, v in self.average.items()}, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        mismatch = set(self.average) ^ set(weights)
        if mismatch:
            raise KeyError(f"averaged weights do not match the model: {sorted(mismatch)[:3]}")
        for k, v in weights.items():
            self.average[k].copy_(v)
        self.updates = int(state["updates"])

    @contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; the raw ones come back after it."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(raw)
