"""Two-stage text -> photo search over an index: a FAISS shortlist, then an exact cross-attention re-rank.

Stage 1 scores the query against every photo's shortlist vector (an indexable model, e.g. ``dual``)
with FAISS: an exact inner-product index up to ``approximate_above`` photos, HNSW above. Stage 2
scores the top ``rerank`` photos with the cross-attention matcher (or an ensemble of them, their
scores z-scored over the candidates and averaged) through its own ``prepare_images`` /
``score_block``, reading their features from the feature cache and keeping each photo's prepared
state, so a query costs only its K pairs per matcher.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from itm.checkpoint import LoadedCheckpoint, load_checkpoint
from itm.data.encode import encode_captions
from itm.data.tokenize import caption_tokens, tokenize
from itm.data.types import Captions, ImageFeatures
from itm.data.word_report import WordReport
from itm.devices import as_device, on_device
from itm.errors import DataError, ItmError
from itm.evaluation.evaluate import combine_scores
from itm.features.cache import FeatureCache, content_key
from itm.models.base import State, select_state
from itm.retrieval.index import IndexStore
from itm.shipped import portable_path, resolve_path

MAX_QUERY_CHARS = 500
APPROXIMATE_ABOVE = 100_000  # photos; an exact inner-product search up to here, HNSW above
HNSW_EF_SEARCH = 128


class SearchModels:
    """The shortlist model (indexable) and the re-ranking matchers (none, one, or an ensemble whose
    z-scored scores are averaged), on one feature setting, all on ``device`` (None: the CPU), where
    the backbone of new photos also runs."""

    def __init__(self, shortlist: str | Path, reranker: str | Path | list[str | Path] | None = None,
                 device: torch.device | str | None = None):
        self.device = as_device(device)
        rerankers = listed(reranker)
        self.paths = {"shortlist": portable_path(shortlist), "rerank": recorded([portable_path(p) for p in rerankers])}
        self.shortlist = load_checkpoint(shortlist, device=self.device)
        if not self.shortlist.model.indexable:
            raise ItmError(f"--shortlist {shortlist}: model '{self.shortlist.config.model.name}' cannot be indexed "
                           "(it has no per-image vector); use a dual encoder checkpoint")
        self.rerankers = [load_checkpoint(path, device=self.device) for path in rerankers]
        for path, ckpt in zip(rerankers, self.rerankers, strict=True):
            if feature_key(ckpt) != feature_key(self.shortlist):
                raise ItmError(f"--checkpoint {path} and --shortlist {shortlist} were trained on different image "
                               f"features ({feature_key(ckpt)} vs {feature_key(self.shortlist)})")
        self.features = self.shortlist.config.features
        self._identity = {"shortlist_model": file_sha1(shortlist),
                          "rerank_model": recorded([file_sha1(p) for p in rerankers]),
                          "features": feature_key(self.shortlist)}

    @property
    def reranker(self) -> LoadedCheckpoint | None:
        """The first re-ranker: the one whose attention explanations are drawn from."""
        return self.rerankers[0] if self.rerankers else None

    def identity(self) -> dict:
        return dict(self._identity)

    def cache_root(self) -> Path:
        from itm.pipeline import cache_root

        return cache_root(self.shortlist.config) / "features"

    def vector_dim(self) -> int:
        return int(self.shortlist.model.vector_dim)

    def streams(self, model, features: ImageFeatures, index: slice | None = None) -> dict[str, torch.Tensor]:
        """The image streams ``model`` reads, of the rows ``index``, on the models' device."""
        return {k: v.to(self.device) for k, v in features.streams(model.image_streams, index).items()}

    def captions(self, captions: Captions) -> Captions:
        return on_device(captions, self.device)

    @torch.inference_mode()
    def image_vectors(self, features: ImageFeatures, chunk: int = 512) -> np.ndarray:
        model = self.shortlist.model.eval()
        return np.concatenate([model.encode_images(self.streams(model, features, slice(s, s + chunk)))
                               .float().cpu().numpy() for s in range(0, len(features), chunk)])

    @torch.inference_mode()
    def caption_vectors(self, texts: list[str], chunk: int = 1024) -> np.ndarray:
        """(n, d) shortlist vectors of a caption collection; a caption with no words names its line."""
        model = self.shortlist.model.eval()
        tokens = caption_tokens(texts)
        out = []
        for s in range(0, len(tokens), chunk):
            captions = encode_captions(tokens[s : s + chunk], self.shortlist.vocab, self.shortlist.config.data.max_words)
            out.append(model.encode_captions(self.captions(captions)).float().cpu().numpy())
        return np.concatenate(out)

    def query_captions(self, text: str, ckpt: LoadedCheckpoint) -> Captions:
        """The query encoded for ``ckpt``'s vocabulary, on the models' device."""
        tokens = query_tokens(text)
        return self.captions(encode_captions([tokens], ckpt.vocab, ckpt.config.data.max_words))

    def read(self, text: str) -> WordReport:
        """How the models read a query's words (those either model reads otherwise, merged); a query
        of which they can read no word is a one-line ItmError instead of a confident list."""
        tokens = query_tokens(text)
        reports = [ckpt.vocab.report([tokens]) for ckpt in (self.shortlist, *self.rerankers)]
        words = WordReport(unseen=_union(r.unseen for r in reports), unreadable=_union(r.unreadable for r in reports),
                           read_as={w: k for r in reports for w, k in r.read_as.items()})
        if set(tokens) <= set(words.unreadable):
            raise ItmError(f"query {text!r}: the models can read none of its words ({', '.join(words.unreadable)})")
        return words


def recorded(items: list):
    """How an index records its re-rankers: None, the one (as indexes always have), or the list."""
    return None if not items else items[0] if len(items) == 1 else items


def listed(value) -> list:
    """The re-rankers of ``recorded`` form (None, one, or a list) as a list."""
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def _union(lists) -> list[str]:
    return list(dict.fromkeys(word for words in lists for word in words))


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


def query_tokens(text: str) -> list[str]:
    """The query's words; a one-line ItmError for an empty or over-long query."""
    if not isinstance(text, str) or not text.strip():
        raise ItmError("query: empty text")
    if len(text) > MAX_QUERY_CHARS:
        raise ItmError(f"query: {len(text)} characters, at most {MAX_QUERY_CHARS}")
    tokens = tokenize(text)
    if not tokens:
        raise ItmError(f"query {text!r}: no words")
    return tokens


def feature_key(ckpt: LoadedCheckpoint) -> str:
    f = ckpt.config.features
    return f"{f.backbone}@{f.image_size}px/{f.proposals}/{f.num_objects}obj/{f.weights or 'shipped'}"


def file_sha1(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    return content_key(path.read_bytes())


@dataclass
class CaptionHit:
    caption_id: int
    text: str
    score: float
    shortlist_score: float


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
                 state_cache: int = 4096, device: torch.device | str | None = None):
        """``device``: where the index's models are loaded when ``models`` is None (None: the CPU)."""
        self.store = IndexStore(index)
        if self.store.meta("root") is None:
            raise DataError(f"index {index}: empty or not an itm index (build it with itm index)")
        if models is None:
            saved = self.store.meta("checkpoints")
            models = SearchModels(resolve_path(saved["shortlist"]), [resolve_path(p) for p in listed(saved["rerank"])],
                                  device=device)
        self.store.check_identity(models.identity())
        self.models = models
        self.images = self.store.images()  # sha1 -> (image id, row)
        self.sha1_of_row = {row: sha1 for sha1, (_, row) in self.images.items()}
        self.sha1_of_id = {image_id: sha1 for sha1, (image_id, _) in self.images.items()}
        # a read-only snapshot: queries (from the service's worker threads) never touch the database
        self.root = Path(self.store.meta("root")).resolve()
        self.paths = self.store.paths_of(list(self.images)) if self.images else {}
        self.cache_dir = Path(self.store.meta("cache_dir") or "")
        self.vectors = self.store.vectors()
        self.faiss = shortlist_index(self.store, self.vectors, approximate_above)
        self.caption_texts, caption_vectors = self.store.captions()
        self.caption_faiss = build_faiss(caption_vectors, approximate_above) if self.caption_texts else None
        self._states: OrderedDict[tuple[int, str], State] = OrderedDict()  # (re-ranker, sha1) -> its state
        self._state_cache = state_cache
        self._features = None  # (the feature cache, its table of contents), opened on first use

    def __len__(self) -> int:
        return len(self.images)

    @torch.inference_mode()
    def shortlist(self, text: str, k: int) -> tuple[list[str], np.ndarray]:
        """The top ``k`` photos (sha1) by the shortlist model, with their scores."""
        model = self.models.shortlist.model.eval()
        query = model.encode_captions(self.models.query_captions(text, self.models.shortlist)).float().cpu().numpy()
        scores, rows = self.faiss.search(np.ascontiguousarray(query, dtype=np.float32), min(k, len(self)))
        keep = rows[0] >= 0
        return [self.sha1_of_row[int(r)] for r in rows[0][keep]], scores[0][keep]

    @torch.inference_mode()
    def rerank(self, text: str, sha1s: list[str]) -> np.ndarray:
        """Exact cross-attention scores of the query against ``sha1s`` (prepared states cached); with
        several re-rankers, the mean of their scores each z-scored over these candidates."""
        blocks = []
        for member, ckpt in enumerate(self.models.rerankers):
            model = ckpt.model.eval()
            captions = self.models.query_captions(text, ckpt)
            images = self.prepared(member, sha1s)
            blocks.append(model.score_block(images, model.prepare_captions(captions))[:, 0].float().cpu().numpy())
        return combine_scores(blocks)

    def prepared(self, member: int, sha1s: list[str]) -> State:
        """Re-ranker ``member``'s per-image states of ``sha1s`` stacked, computing only the missing ones."""
        missing = [s for s in sha1s if (member, s) not in self._states]
        if missing:
            model = self.models.rerankers[member].model
            features = self.feature_rows(missing)
            state = model.prepare_images(self.models.streams(model, features))  # kept on the device
            for i, sha1 in enumerate(missing):
                self._states[member, sha1] = select_state(state, slice(i, i + 1))
        for sha1 in sha1s:
            self._states.move_to_end((member, sha1))
        while len(self._states) > max(self._state_cache, len(sha1s) * len(self.models.rerankers)):
            self._states.popitem(last=False)
        parts = [self._states[member, s] for s in sha1s]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def feature_rows(self, sha1s: list[str]) -> ImageFeatures:
        """The cached features of ``sha1s``. The cache's table of contents is read once and kept (a
        query must not re-read every chunk's key list), and read again only when it lacks a photo."""
        if self._features is None or any(s not in self._features[1] for s in sha1s):
            self._features = self.open_feature_cache()
        cache, contents = self._features
        try:
            grid, objects, boxes, grid_shape = cache.read(sha1s, contents)
        except KeyError:
            raise DataError(f"feature cache {self.cache_dir}: lacks photos of this index; run itm index again") from None
        return ImageFeatures(torch.from_numpy(grid), torch.from_numpy(objects), torch.from_numpy(boxes), grid_shape)

    def open_feature_cache(self) -> tuple[FeatureCache, dict]:
        folder = self.cache_dir
        try:
            settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"feature cache {folder}: unreadable ({exc.__class__.__name__}); run itm index again") from None
        cache = FeatureCache(folder, settings)
        return cache, cache.index()

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
        """The candidates' scores plus the backbone's evidence that they show what ``words`` name
        (``itm.features.concepts.with_evidence``; the words the models never saw in training), and the
        words that named a class. Unchanged when none does or the backbone has no classifier."""
        from itm.features.concepts import cached_concept_maps, with_evidence

        settings = (self.models.reranker or self.models.shortlist).config.features
        try:
            concepts = cached_concept_maps(settings.backbone, settings.weights)
        except ItmError:  # no classifier over the map (a user's VGG), or ImageNet's names not installed
            return scores, []
        named = [w for w in words if concepts.concepts(w).found]
        evidence = concepts.evidence(self.feature_rows(sha1s).regions, named) if named else None
        if evidence is None:
            return scores, []
        return with_evidence(scores, evidence), named


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
        """The re-ranker's explanation of (photo, text) as one PNG: with ``method`` "concept" (default)
        the sheet of where each word's thing is, with "attention" (or when that cannot be drawn) its
        words-over-regions map if it declares one, else its first drawable map. Drawn on the
        re-ranker's explanation grid (``eval.explain_image_size``: the photo is extracted again at that
        size), else from the index."""
        from itm.pipeline import explanation_features
        from itm.viz.explain import explain_photo

        ckpt = self.models.reranker
        if ckpt is None:
            raise ItmError("this index has no re-ranking matcher: no attention to explain")
        path = self.path_of(image_id)
        if path is None:
            raise ItmError(f"no image with id {image_id}")
        query_tokens(text)  # the query's own checks: empty, too long
        indexed = explanation_features(ckpt.config).image_size == ckpt.config.features.image_size
        features = self.feature_rows([self.sha1_of_id[image_id]]) if indexed else None  # None: extracted again
        explained = explain_photo(ckpt, path, text, self.models.cache_root(), features, method=method)
        figures, explanation = explained.drawn.figures, explained.explanation
        if not figures:
            raise ItmError(f"model '{ckpt.config.model.name}' declares no attention that can be drawn"
                           + "".join(f"; {note}" for note in explained.drawn.not_drawn))
        preferred = ["concept"] + [n for n, spec in explanation.specs.items() if (spec.rows, spec.over) == ("words", "regions")]
        figure = next((figures[n] for n in preferred if n in figures), next(iter(figures.values())))
        out = io.BytesIO()
        figure.savefig(out, format="png", dpi=100)
        return out.getvalue()


    @torch.inference_mode()
    def search_image(self, data: bytes, name: str, k: int = 10, rerank: int = 50) -> list[CaptionHit]:
        """Ranked captions of the collection given at index time for an uploaded photo's bytes."""
        if self.caption_faiss is None:
            raise ItmError("this index has no caption collection: index one with itm index --captions FILE")
        if k < 1:
            raise ItmError(f"k: must be at least 1, got {k}")
        features = self.upload_features(data, name)
        query = self.models.image_vectors(features)  # (1, d)
        short, rows = self.caption_faiss.search(query, min(max(k, rerank), len(self.caption_texts)))
        rows, short = rows[0][rows[0] >= 0], short[0][rows[0] >= 0]
        scores = short
        if self.models.rerankers and rerank > 0:
            tokens = [tokenize(self.caption_texts[r]) for r in rows]
            blocks = []
            for ckpt in self.models.rerankers:
                model = ckpt.model.eval()
                captions = self.models.captions(encode_captions(tokens, ckpt.vocab, ckpt.config.data.max_words))
                images = model.prepare_images(self.models.streams(model, features))
                blocks.append(model.score_block(images, model.prepare_captions(captions))[0].float().cpu().numpy())
            scores = combine_scores(blocks)
        order = np.argsort(-scores, kind="stable")[:k]
        return [CaptionHit(int(rows[i]), self.caption_texts[rows[i]], float(scores[i]), float(short[i])) for i in order]

    def upload_features(self, data: bytes, name: str) -> ImageFeatures:
        """Features of one uploaded photo, through the content-addressed cache (bad bytes: DataError)."""
        import tempfile

        from itm.features.extract import file_features

        safe = Path(name or "upload").name or "upload"
        with tempfile.TemporaryDirectory(prefix="itm-upload-") as folder:
            path = Path(folder) / safe
            path.write_bytes(data)
            return file_features([(safe, path)], self.models.features, self.models.cache_root(), self.models.device)


def shortlist_index(store: IndexStore, vectors: np.ndarray, approximate_above: int = APPROXIMATE_ABOVE):
    """The FAISS index of the index's photo vectors. An approximate (HNSW) one is built once and kept
    beside its vectors file (``<vectors file>.faiss``, dropped with it on the next update), so a
    large index opens in seconds instead of rebuilding its graph at every start."""
    if len(vectors) <= approximate_above:
        return build_faiss(vectors, approximate_above)
    import faiss

    path = store.folder / f"{store.meta('vectors_file')}.faiss"
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == len(vectors):
                index.hnsw.efSearch = HNSW_EF_SEARCH
                return index
        except (RuntimeError, AttributeError):  # damaged or not ours: build it again
            pass
    index = build_faiss(vectors, approximate_above)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError):  # a read-only index folder: build it at every start instead
        tmp.unlink(missing_ok=True)
    return index


def build_faiss(vectors: np.ndarray, approximate_above: int):
    """Exact inner product for small collections; HNSW (inner product) above ``approximate_above``."""
    import faiss

    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1
    if len(vectors) > approximate_above:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index
