"""Two-stage text -> photo search over an index: a FAISS shortlist, then an exact cross-attention re-rank.

Stage 1 scores the query against every photo's shortlist vector (an indexable model, e.g. ``dual``)
with FAISS (``itm.retrieval.index.shortlist_index``). Stage 2 scores the top ``rerank`` photos with
the cross-attention matcher (or an ensemble of them, their scores z-scored over the candidates and
averaged) through its own ``prepare_images`` / ``score_block``, reading their features from the
feature cache and keeping each photo's prepared state (``itm.retrieval.states``), so a query costs
only its K pairs per matcher. Photo -> caption search (``itm.retrieval.image_search``) re-ranks
through the same ``rerank_block``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from itm.data.encode import encode_captions
from itm.data.types import ImageFeatures
from itm.data.word_report import WordReport
from itm.errors import DataError, ItmError
from itm.evaluation.evaluate import combine_scores
from itm.evaluation.hubness import (
    DEFAULTS,
    SEARCH_DEFAULT,
    SEARCH_METHODS,
    SHORTLIST_DEFAULT,
    Normalisation,
    PhotoStats,
    normalise,
    photo_stats,
    rank_offsets,
)
from itm.models.base import State
from itm.retrieval.index import APPROXIMATE_ABOVE, CachedFeatures, IndexStore, build_faiss, shortlist_index
from itm.retrieval.search_models import SearchModels, listed, query_tokens
from itm.retrieval.states import PreparedStates
from itm.shipped import resolve_path


def with_offsets(vectors: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """(n, d) photo vectors with (n,) offsets as one more dimension: a query [u, -1] then scores
    each photo u . v - offset (None: the vectors as they are)."""
    return vectors if offsets is None else np.hstack([vectors, offsets[:, None]]).astype(np.float32)


class SearchResults(list):
    """Ranked hits (a list), with ``words``: how the models read the query (``WordReport``), and
    ``concepts``: its words outside the training captions whose ImageNet classes also ranked the photos."""

    def __init__(self, hits, words: WordReport, concepts: list[str] | None = None):
        super().__init__(hits)
        self.words = words
        self.concepts = concepts or []

    def notice(self) -> str | None:
        """One line for the user: the words not read, and those also looked for by ImageNet's classes."""
        parts = [self.words.notice(), f"also looked for by ImageNet's classes: {', '.join(self.concepts)}"
                 if self.concepts else None]
        return "; ".join(p for p in parts if p) or None


@dataclass
class Hit:
    image_id: int
    path: str  # the first indexed path of this content, relative to the indexed folder
    score: float  # the re-ranker's score (the shortlist's when there is no re-ranker)
    shortlist_score: float
    paths: list[str]


class Searcher:
    """Text queries over one index folder."""

    def __init__(self, index: str | Path, models: SearchModels | None = None, approximate_above: int = APPROXIMATE_ABOVE,
                 state_cache: int = 4096, device: torch.device | str | None = None, normalise: str = SEARCH_DEFAULT):
        """``device``: where the index's models are loaded when ``models`` is None (None: the CPU).
        ``normalise``: the hubness correction of the re-rankers' scores (``itm.evaluation.hubness``),
        from the photos' caption-bank scores the index holds; any method but "none" also corrects the
        shortlist (``SHORTLIST_DEFAULT``); "none": raw scores in both stages."""
        self.store = IndexStore(index)
        if self.store.meta("root") is None:
            raise DataError(f"index {index}: empty or not an itm index (build it with itm index)")
        if models is None:
            saved = self.store.meta("checkpoints")
            models = SearchModels(resolve_path(saved["shortlist"]), [resolve_path(p) for p in listed(saved["rerank"])],
                                  device=device)
        self.store.check_identity(models.identity(), models.earlier_sha1s())
        self.models = models
        self.images = self.store.images()  # sha1 -> (image id, row)
        self.sha1_of_row = {row: sha1 for sha1, (_, row) in self.images.items()}
        self.sha1_of_id = {image_id: sha1 for sha1, (image_id, _) in self.images.items()}
        # a read-only snapshot: queries (from the service's worker threads) never touch the database
        self.root = Path(self.store.meta("root")).resolve()
        self.paths = self.store.paths_of(list(self.images)) if self.images else {}
        self.cache_dir = Path(self.store.meta("cache_dir") or "")
        self.vectors = self.store.vectors()
        self.normalisation, self.bank_stats, self.notes = self.hub_correction(normalise)
        # the shortlist's correction, a term per photo folded into the inner product as one more dimension
        self.shortlist_offsets = None if self.normalisation.method == "none" else self.shortlist_correction()
        self.faiss = shortlist_index(self.store, with_offsets(self.vectors, self.shortlist_offsets), approximate_above)
        self.caption_texts, caption_vectors = self.store.captions()
        self.caption_faiss = build_faiss(caption_vectors, approximate_above) if self.caption_texts else None
        self.states = PreparedStates(state_cache)  # (re-ranker, sha1) -> its prepared state
        self.features = CachedFeatures(self.cache_dir)

    def __len__(self) -> int:
        return len(self.images)

    def hub_correction(self, method: str) -> tuple[Normalisation, list[PhotoStats] | None, list[str]]:
        """(the correction, each re-ranker's photo statistics by index row or None, notes for the user)."""
        if method not in SEARCH_METHODS:
            raise ItmError(f"normalise: search corrects with one of {', '.join(SEARCH_METHODS)}, got {method!r}"
                           + (" (a fixed-bank method: itm eval --normalise)" if method in DEFAULTS else ""))
        norm = SEARCH_METHODS[method]
        if norm.method == "none" or not self.models.rerankers:
            return norm, None, []
        changed = self.store.rerankers_changed(self.models.identity(), self.models.earlier_sha1s())
        banks = self.store.banks(self.models.bank_identity(), changed)
        if banks is None:
            why = "scored by other re-rankers" if changed else "built before them"
            return norm, None, [f"index {self.store.folder} holds no scores of its photos' own caption banks "
                                f"by these re-rankers ({why}): its hub photos are not corrected; run itm index "
                                "on it again to add them (only the banks are scored)"]
        return norm, [photo_stats(bank, norm) for bank in banks], []

    @torch.inference_mode()
    def shortlist(self, text: str, k: int) -> tuple[list[str], np.ndarray]:
        """The top ``k`` photos (sha1) by the shortlist model, with their scores."""
        model = self.models.shortlist.model.eval()
        query = model.encode_captions(self.models.query_captions(text, self.models.shortlist)).float().cpu().numpy()
        if self.shortlist_offsets is not None:  # (1, d + 1): the photos' last dimension is their offset
            query = np.hstack([query, -np.ones((1, 1), np.float32)])
        scores, rows = self.faiss.search(np.ascontiguousarray(query, dtype=np.float32), min(k, len(self)))
        keep = rows[0] >= 0
        return [self.sha1_of_row[int(r)] for r in rows[0][keep]], scores[0][keep]

    def shortlist_correction(self, chunk: int = 8192) -> np.ndarray | None:
        """(n_photos,) by index row: what ``SHORTLIST_DEFAULT`` subtracts from each photo's shortlist
        score, from the inner products of the photo's vector with the caption bank's."""
        if not len(self.vectors):
            return None
        bank = self.models.bank_vectors(SHORTLIST_DEFAULT.bank_size)  # (B, d)
        return np.concatenate([rank_offsets(photo_stats(self.vectors[s : s + chunk] @ bank.T, SHORTLIST_DEFAULT),
                                            SHORTLIST_DEFAULT) for s in range(0, len(self.vectors), chunk)])

    def rerank(self, text: str, sha1s: list[str]) -> np.ndarray:
        """(K,) exact cross-attention scores of the query against ``sha1s`` (prepared states cached),
        each re-ranker's corrected for hub photos (``normalise``) when the index holds their bank scores;
        with several re-rankers, the mean of their scores each z-scored over these candidates."""
        states = [self.prepared(member, sha1s) for member in range(len(self.models.rerankers))]
        adjust = None
        if self.bank_stats is not None:
            rows = [self.images[sha1][1] for sha1 in sha1s]
            stats = [member.select(rows) for member in self.bank_stats]

            def adjust(member: int, block: np.ndarray) -> np.ndarray:
                return normalise(block, stats[member], self.normalisation)

        return self.rerank_block([query_tokens(text)], states, adjust)[:, 0]

    @torch.inference_mode()
    def rerank_block(self, token_lists: list[list[str]], states: list[State], adjust=None) -> np.ndarray:
        """(n_images, n_captions) scores of captions against each re-ranker's prepared images
        (``states[member]``): each member's block (``adjust(member, block)`` first, when given)
        z-scored, then averaged (one member: its own scores)."""
        blocks = []
        for member, (ckpt, images) in enumerate(zip(self.models.rerankers, states, strict=True)):
            model = ckpt.model.eval()
            captions = self.models.captions(encode_captions(token_lists, ckpt.vocab, ckpt.config.data.max_words))
            block = model.score_block(images, model.prepare_captions(captions)).float().cpu().numpy()
            blocks.append(adjust(member, block) if adjust else block)
        return combine_scores(blocks)

    def prepared(self, member: int, sha1s: list[str]) -> State:
        """Re-ranker ``member``'s per-image states of ``sha1s`` stacked, computing only the missing ones."""
        model = self.models.rerankers[member].model

        def prepare(missing: list[str]) -> State:
            return model.prepare_images(self.models.streams(model, self.feature_rows(missing)))  # kept on the device

        return self.states.stacked(member, sha1s, prepare, members=len(self.models.rerankers))

    def feature_rows(self, sha1s: list[str]) -> ImageFeatures:
        """The cached features of ``sha1s`` (``itm.retrieval.index.CachedFeatures``)."""
        return self.features.rows(sha1s)

    def search(self, text: str, k: int = 10, rerank: int = 50, concepts: bool = True) -> SearchResults:
        """Ranked photos for a text query: the shortlist's top ``max(k, rerank)``, re-ranked exactly;
        with ``concepts``, the query's words outside the training captions that name ImageNet classes
        also rank them by the classes' evidence (``concept_evidence``). ``.words`` of the result says
        which words the models could not read (or read by spelling), ``.concepts`` which were looked for."""
        if k < 1:
            raise ItmError(f"k: must be at least 1, got {k}")
        words = self.models.read(text)
        if not len(self):
            return SearchResults([], words)
        sha1s, short = self.shortlist(text, max(k, rerank))
        scores = self.rerank(text, sha1s) if self.models.rerankers and rerank > 0 else short
        looked_for = []
        if concepts and words.unseen:
            scores, looked_for = self.concept_evidence(scores, sha1s, words.unseen)
        order = np.argsort(-scores, kind="stable")[:k]
        return SearchResults([Hit(self.images[sha1s[i]][0], self.paths[sha1s[i]][0], float(scores[i]),
                                  float(short[i]), self.paths[sha1s[i]]) for i in order], words, looked_for)

    def concept_evidence(self, scores: np.ndarray, sha1s: list[str], words: list[str]) -> tuple[np.ndarray, list[str]]:
        """The candidates' scores plus the backbone's evidence that they show what ``words`` name (the
        words the models never saw in training; ``itm.features.concepts.add_concept_evidence``), and
        the words that named a class."""
        from itm.features.concepts import add_concept_evidence

        settings = (self.models.reranker or self.models.shortlist).config.features
        return add_concept_evidence(scores, settings, words, lambda: self.feature_rows(sha1s).regions)

    def path_of(self, image_id: int) -> Path | None:
        """The photo file of an image id (its first indexed path); None for an unknown id or a path
        that would lead outside the indexed folder."""
        sha1 = self.sha1_of_id.get(image_id)
        if sha1 is None:
            return None
        paths = self.paths.get(sha1)
        if not paths:
            return None
        full = (self.root / paths[0]).resolve()
        return full if full.is_relative_to(self.root) and full.is_file() else None

    def explain_png(self, image_id: int, text: str, method: str = "concept") -> bytes:
        """The first re-ranker's explanation of (photo, text) as one PNG (``itm.viz.explain.explanation_png``),
        drawn on its explanation grid (``eval.explain_image_size``: the photo is extracted again at that
        size), else from the index's features."""
        from itm.pipeline import explanation_features
        from itm.viz.explain import explanation_png

        ckpt = self.models.reranker
        if ckpt is None:
            raise ItmError("this index has no re-ranking matcher: no attention to explain")
        path = self.path_of(image_id)
        if path is None:
            raise ItmError(f"no image with id {image_id}")
        query_tokens(text)  # the query's own checks: empty, too long
        indexed = explanation_features(ckpt.config).image_size == ckpt.config.features.image_size
        features = self.feature_rows([self.sha1_of_id[image_id]]) if indexed else None  # None: extracted again
        return explanation_png(ckpt, path, text, self.models.cache_root(), features, method=method)

    def search_image(self, data: bytes, name: str, k: int = 10, rerank: int = 50):
        """Ranked captions of the collection given at index time for an uploaded photo's bytes
        (``itm.retrieval.image_search.search_captions``: a list of ``CaptionHit``)."""
        from itm.retrieval.image_search import search_captions

        return search_captions(self, data, name, k, rerank)
