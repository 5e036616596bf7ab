"""An open vocabulary: a user's words reach the model, and what it could not read is said.

A model is trained on the words of its training captions (``Vocab``). At inference a word outside
them is read, in this order:

1. **through the word-vector table** (the whole GloVe table the model was initialised from, named in
   its checkpoint): its table vector is carried into the trained space by the affine map that best
   takes the table vectors of the training words to the vectors training left them with (least
   squares, pulled towards the identity). A frozen table gives the identity: the unseen word's plain
   GloVe vector. A fine-tuned one gives the unseen word the same drift its neighbours had.
2. **by its spelling** (a word in no table: a typo, a run-together word): the word of closest
   spelling among the training words and the table's most frequent words (``Speller``: fewest
   edits, a swap of two adjacent letters counting as one; at most ``max_edits(len(word))``; on a
   tie a training word, then the more frequent word), reported as read as it; a trailing ``s``
   (plurals and possessives, whose apostrophe the tokenizer removed) is tried first.
3. **not at all**: a zero vector (no pull on attention, unlike ``<unk>``'s untrained random row),
   and reported as unreadable.

``WordReport`` tells a caller which words took routes 1-3; search, explain, the API and the service
pass it on to the user.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from itm.data.types import Captions
from itm.data.vocab import SPECIALS, Vocab
from itm.data.word_report import WordReport

SPELLING_TABLE_WORDS = 100_000  # the table's most frequent words are spelling candidates too
RIDGE = 1.0  # pull of the map towards the identity (the fit has thousands of words; this only steadies it)


def _distinct(words) -> list[str]:
    return list(dict.fromkeys(words))


def max_edits(length: int) -> int:
    """Most edits a misspelling of ``length`` characters may be from the word it is read as: none up
    to 2 characters, 1 up to 5, 2 beyond (Elasticsearch's ``fuzziness: AUTO``). Short words sit one
    edit from many others, so two edits there would read most garbage as some word; longer words
    collect more typos ("restauraunt") yet stay far from each other."""
    return 0 if length <= 2 else 1 if length <= 5 else 2


def osa_distance(a: str, b: str, limit: int | None = None) -> int:
    """Edits from ``a`` to ``b`` (insert, delete, substitute, or swap two adjacent letters: each 1;
    optimal string alignment, the restricted Damerau-Levenshtein distance). With ``limit``, any
    value above it comes back as ``limit + 1`` as soon as a row shows it (most candidates stop early)."""
    cap = limit if limit is not None else len(a) + len(b)
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    before, row = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        new = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cost = ca != cb
            new[j] = min(row[j] + 1, new[j - 1] + 1, row[j - 1] + cost)
            if cost and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                new[j] = min(new[j], before[j - 2] + 1)  # the swap "ab" -> "ba"
        if min(new) > cap:
            return cap + 1
        before, row = row, new
    return min(row[-1], cap + 1)


def _char_counts(words: Sequence[str]) -> np.ndarray:
    """(len(words), 37) counts of a-z, 0-9 and any other character, for the bag bound in ``Speller``."""
    lengths = np.fromiter((len(w) for w in words), np.int64, len(words))
    codes = np.frombuffer("".join(words).encode("utf-32-le"), np.uint32).astype(np.int64)
    bucket = np.where((codes >= 97) & (codes <= 122), codes - 97,
                      np.where((codes >= 48) & (codes <= 57), codes - 48 + 26, 36))
    owner = np.repeat(np.arange(len(words)), lengths)
    counts = np.bincount(owner * 37 + bucket, minlength=37 * len(words))
    return counts.reshape(len(words), 37).astype(np.int16)


class Speller:
    """The closest spelling among ``words``, listed by priority (the model's training words, most
    frequent in the captions first, then the table's words in the table's order, most frequent first):
    fewest ``osa_distance`` edits, at most ``max_edits``; among equally close words the first listed.

    Up to 100,000 candidates a word: a numpy bound drops nearly all of them before the edit distance
    runs. Each edit changes a word's letter counts by at most one added and one removed letter, so the
    counts' difference (the bag distance: ``max(letters only in one, letters only in the other)``)
    never exceeds the edit distance; only words within ``max_edits`` by it are compared letter by letter."""

    def __init__(self, words: Sequence[str]):
        self.words = _distinct(words)
        self.counts = _char_counts(self.words)  # (N, 37)
        self.lengths = self.counts.sum(1)  # (N,)

    def closest(self, word: str) -> str | None:
        limit = max_edits(len(word))
        if limit == 0 or not self.words:
            return None
        # (N,) letters a candidate has over the word, and the word over the candidate
        extra = np.maximum(self.counts - _char_counts([word])[0], 0).sum(1)
        missing = extra - (self.lengths - len(word))
        best, best_distance = None, limit + 1
        for i in np.flatnonzero(np.maximum(extra, missing) <= limit):  # in priority order
            distance = osa_distance(word, self.words[i], best_distance - 1)
            if distance < best_distance:  # strictly closer: an earlier word keeps a tie
                best, best_distance = self.words[i], distance
                if distance == 0:
                    break
        return best


def fit_table_map(table_vectors: np.ndarray, trained: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """(E + 1, E) affine map A with [g, 1] @ A ~ trained, for (n, E) table vectors of the training words
    and (n, E) trained vectors: ridge regression towards the identity (and a zero offset)."""
    n, dim = table_vectors.shape
    x = np.hstack([table_vectors, np.ones((n, 1))]).astype(np.float64)  # (n, E + 1)
    prior = np.vstack([np.eye(dim), np.zeros((1, dim))])  # (E + 1, E): the identity, no offset
    lhs = x.T @ x + ridge * np.eye(dim + 1)
    rhs = x.T @ trained.astype(np.float64) + ridge * prior
    return np.linalg.solve(lhs, rhs)


class OpenVocabulary(Vocab):
    """A model's training vocabulary that grows on first use with any word its table or spelling can
    read (new ids after the training ones; their vectors go to the model's ``WordEmbedder.extend``)."""

    def __init__(self, vocab: Vocab, embedder, table):
        super().__init__(vocab.to_list())
        self.trained_size = len(vocab)
        self.embedder = embedder  # itm.models.base.WordEmbedder of the model
        self.table = table  # itm.data.glove.GloveTable
        self._map: np.ndarray | None = None
        self._routes: dict[str, tuple[str, str | None]] = {}  # word -> (route, read as)
        self._candidates = [w for w in vocab.to_list() if w not in SPECIALS]  # the training words
        self._speller: Speller | None = None  # they and the table's frequent words, gathered on first need

    # -- reading a word ------------------------------------------------------------------------------
    def route(self, word: str) -> tuple[str, str | None]:
        """("seen" | "table" | "spelling" | "unreadable", the training word read for "spelling")."""
        if word in self._ids and self._ids[word] < self.trained_size:
            return "seen", None
        if word not in self._routes:
            self._routes[word] = self._find(word)
        return self._routes[word]

    def _find(self, word: str) -> tuple[str, str | None]:
        if word in self.table:
            return "table", None
        stem = word[:-1] if word.endswith("s") and len(word) > 2 else None
        if stem and (stem in self._ids or stem in self.table):
            return "spelling", stem
        close = self.speller().closest(word)
        return ("spelling", close) if close else ("unreadable", None)

    def speller(self) -> Speller:
        """The spelling candidates: training words first (they win a tie: "tabel" is "table", not the
        rarer "tael"), then the table's most frequent words (a hand-set table without ``frequent``
        adds none)."""
        if self._speller is None:
            table_words = getattr(self.table, "frequent", lambda n: [])(SPELLING_TABLE_WORDS)
            self._speller = Speller([*self._candidates, *table_words])
        return self._speller

    def report(self, token_lists: Sequence[list[str]]) -> WordReport:
        words = _distinct(t for tokens in token_lists for t in tokens)
        out = WordReport()
        for word in words:
            kind, as_word = self.route(word)
            if kind == "table":
                out.unseen.append(word)
            elif kind == "spelling":
                out.read_as[word] = as_word
            elif kind == "unreadable":
                out.unreadable.append(word)
        return out

    # -- ids and vectors -----------------------------------------------------------------------------
    def encode(self, tokens: list[str]) -> list[int]:
        new = _distinct(t for t in tokens if t not in self._ids)
        if new:
            self._add(new)
        return [self._ids[t] for t in tokens]

    def _add(self, words: list[str]) -> None:
        """Give each new word an id and its vector in the trained space."""
        rows = np.zeros((len(words), self.embedder.dim), dtype=np.float32)  # unreadable: zero
        by_table = [i for i, w in enumerate(words) if self.route(w)[0] == "table"]
        if by_table:
            g = self.table.vectors([words[i] for i in by_table])  # (k, E)
            rows[by_table] = np.hstack([g, np.ones((len(g), 1), np.float32)]) @ self.table_map()
        for i, word in enumerate(words):
            kind, as_word = self.route(word)
            if kind == "spelling":
                rows[i] = self._vector_of(as_word)
        first = self.embedder.extend(torch.from_numpy(rows))
        for offset, word in enumerate(words):
            self._ids[word] = first + offset
            self._words.append(word)

    def _vector_of(self, word: str) -> np.ndarray:
        """The vector a known word reads as (a training word's trained row, or a table word mapped)."""
        if word not in self._ids:
            self._add([word])
        ids = torch.tensor([[self._ids[word]]])
        with torch.no_grad():
            return self.embedder(Captions(ids.to(self.embedder.extra.device), torch.tensor([1])))[0, 0].cpu().numpy()

    def table_map(self) -> np.ndarray:
        """The (E + 1, E) map from table vectors to trained ones, fitted once on the training words."""
        if self._map is None:
            words = [w for w in self._candidates if w in self.table]
            trained = self.embedder.table.weight.detach().float().cpu().numpy()  # (V, E)
            self._map = fit_table_map(self.table.vectors(words), trained[[self._ids[w] for w in words]])
        return self._map

    # the model's own vocabulary (what a checkpoint stores); words added here live beyond it
    def __len__(self) -> int:
        return self.trained_size

    def to_list(self) -> list[str]:
        return self._words[: self.trained_size]

    @property
    def words(self) -> list[str]:
        return self.to_list()


class ContextualVocabulary(Vocab):
    """The vocabulary of a model fed contextual word vectors (MiniLM): its sub-word encoder reads
    any word, so no word goes unread (the ids are bookkeeping only)."""

    def report(self, token_lists: Sequence[list[str]]) -> WordReport:
        return WordReport()
