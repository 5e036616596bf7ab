"""How a model read a text's words: the report that every vocabulary, closed or open, gives.

A leaf module (no torch): ``itm.data.vocab`` and ``itm.data.open_vocab`` both build it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WordReport:
    """How a text's words were read by a model."""

    unseen: list[str] = field(default_factory=list)  # not in the training captions, read through the table
    read_as: dict[str, str] = field(default_factory=dict)  # in no table: read as the training word of closest spelling
    unreadable: list[str] = field(default_factory=list)  # no vector at all

    def notice(self) -> str | None:
        """One line for the user, or None when every word was read."""
        parts = []
        if self.unreadable:
            parts.append(f"the model could not read: {', '.join(self.unreadable)}")
        if self.read_as:
            parts.append("read by spelling: " + ", ".join(f"{w} as {k}" for w, k in self.read_as.items()))
        return "; ".join(parts) or None

    def to_dict(self) -> dict:
        return {"unseen": list(self.unseen), "read_as": dict(self.read_as), "unreadable": list(self.unreadable)}
