"""Word vocabulary: ``<pad>`` = 0, ``<unk>`` = 1, then the train-split words by frequency."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from itm.data.word_report import WordReport
from itm.errors import DataError

PAD = "<pad>"
UNK = "<unk>"
SPECIALS = (PAD, UNK)


class Vocab:
    """Word <-> id table. Build it from the TRAIN split only: val/test-only words must map to <unk>."""

    PAD_ID = 0
    UNK_ID = 1

    def __init__(self, words: list[str]):
        if list(words[:2]) != list(SPECIALS):
            raise DataError(f"vocabulary: must start with {PAD}, {UNK}; got {list(words[:2])}")
        self._words = list(words)
        self._ids = {w: i for i, w in enumerate(self._words)}
        if len(self._ids) != len(self._words):
            dup = next(w for w, n in Counter(self._words).items() if n > 1)
            raise DataError(f"vocabulary: word {dup!r} appears twice")

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_count: int = 1) -> Vocab:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        for special in SPECIALS:
            counts.pop(special, None)  # a literal "<unk>" in a caption is the unknown word anyway
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    @classmethod
    def from_list(cls, words: list[str]) -> Vocab:
        """The inverse of ``to_list`` (checkpoints store the plain word list)."""
        return cls(words)

    def to_list(self) -> list[str]:
        return list(self._words)

    @property
    def words(self) -> list[str]:
        """All words in id order, specials included."""
        return list(self._words)

    def encode(self, tokens: list[str]) -> list[int]:
        """Token ids; unknown words give ``UNK_ID``."""
        get = self._ids.get
        return [get(t, self.UNK_ID) for t in tokens]

    def report(self, token_lists) -> WordReport:
        """How the model reads these words: a closed vocabulary reads only its own words, every other
        one is ``<unk>`` (unreadable)."""
        unknown = (t for tokens in token_lists for t in tokens if t not in self)
        return WordReport(unreadable=list(dict.fromkeys(unknown)))

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._words == other._words

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"
