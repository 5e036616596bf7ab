"""The re-rankers' prepared per-photo states, kept between queries (least recently used dropped), so
that a query costs only its K pairs per matcher, not K photos' preparation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from itm.models.base import State, select_state


class PreparedStates:
    """An LRU of (member, photo key) -> the member's one-photo state, holding at most ``capacity``
    states (more while one request needs them all)."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._states: OrderedDict[tuple[int, str], State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def stacked(self, member: int, keys: list[str], prepare: Callable[[list[str]], State], members: int = 1) -> State:
        """Member ``member``'s states of ``keys`` stacked in their order; ``prepare(missing keys)`` gives
        the (len(missing), ...) states of those not kept. ``members``: how many members share the cache
        (one request keeps all its states)."""
        missing = [key for key in keys if (member, key) not in self._states]
        if missing:
            state = prepare(missing)
            for i, key in enumerate(missing):
                self._states[member, key] = select_state(state, slice(i, i + 1))
        for key in keys:
            self._states.move_to_end((member, key))
        while len(self._states) > max(self.capacity, len(keys) * members):
            self._states.popitem(last=False)
        parts = [self._states[member, key] for key in keys]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
