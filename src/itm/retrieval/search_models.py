"""The models a search runs: a shortlist model (indexable) and the re-ranking matchers, on one
feature setting and one device, with how they read a query's words and what identifies them in an index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from itm.checkpoint import LoadedCheckpoint, load_checkpoint
from itm.data.encode import encode_captions
from itm.data.tokenize import caption_tokens, tokenize
from itm.data.types import Captions, ImageFeatures
from itm.data.word_report import WordReport
from itm.devices import as_device, on_device
from itm.errors import ItmError
from itm.evaluation.hubness import SEARCH_DEFAULT, SEARCH_METHODS
from itm.features.cache import content_key
from itm.shipped import portable_path

MAX_QUERY_CHARS = 500
_POOL_VECTORS: dict[str, np.ndarray] = {}  # shortlist model sha1 -> its vectors of the caption pool
# how many captions of its own each indexed photo is scored against (its nearest in the caption pool)
BANK_NEIGHBOURS = SEARCH_METHODS[SEARCH_DEFAULT].neighbours


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
        # a model file re-saved with its weights untouched names the sha1s it had: indexes built with it open
        self._bank_vectors: dict[int, np.ndarray] = {}  # bank size -> the shortlist's vectors of it
        self._pool: tuple[list[list[str]], np.ndarray, np.ndarray] | None = None  # tokens, photo keys, vectors
        loaded = zip([shortlist, *rerankers], [self.shortlist, *self.rerankers], strict=True)
        self._earlier = {old: file_sha1(path) for path, ckpt in loaded for old in ckpt.payload.get("earlier_sha1s", [])}

    @property
    def reranker(self) -> LoadedCheckpoint | None:
        """The first re-ranker: the one whose attention explanations are drawn from."""
        return self.rerankers[0] if self.rerankers else None

    def identity(self) -> dict:
        return dict(self._identity)

    def bank_identity(self) -> dict | None:
        """The caption pool the photos' own banks come from (None without a re-ranker)."""
        from itm.data.caption_bank import pool_identity

        return pool_identity(BANK_NEIGHBOURS) if self.rerankers else None

    def bank_vectors(self, size: int) -> np.ndarray:
        """(size, d) the shortlist's vectors of the caption bank's first ``size`` captions (encoded once:
        the shortlist's own hub correction compares every photo's vector with them)."""
        if size not in self._bank_vectors:
            from itm.data.caption_bank import caption_bank

            self._bank_vectors[size] = self.caption_vectors([" ".join(tokens) for tokens in caption_bank(size)])
        return self._bank_vectors[size]

    def pool(self) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """The caption pool: token lists, (P,) photo sha1 prefixes, (P, d) shortlist vectors (encoded once)."""
        if self._pool is None:
            from itm.data.caption_bank import caption_pool

            tokens, photos = caption_pool()
            key = self._identity["shortlist_model"]  # the same model file encodes the pool the same way
            if key not in _POOL_VECTORS:
                _POOL_VECTORS.clear()  # one pool's vectors kept (30,000 x d floats)
                _POOL_VECTORS[key] = self.caption_vectors([" ".join(t) for t in tokens])
            self._pool = tokens, np.asarray(photos), _POOL_VECTORS[key]
        return self._pool

    def own_banks(self, vectors: np.ndarray, sha1s: list[str], neighbours: int = BANK_NEIGHBOURS,
                  chunk: int = 1024) -> np.ndarray:
        """(n, neighbours) pool indices: each photo's nearest pool captions by the shortlist (its
        shortlist vector ``vectors[i]``), never captions of the photo itself (``sha1s[i]``), best first."""
        _, photos, pool_vectors = self.pool()
        m = neighbours
        out = np.zeros((len(vectors), m), dtype=np.int64)
        for start in range(0, len(vectors), chunk):
            sims = vectors[start : start + chunk] @ pool_vectors.T  # (c, P)
            own = photos[None, :] == np.asarray([s[:16] for s in sha1s[start : start + chunk]])[:, None]
            sims[own] = -np.inf
            top = np.argpartition(-sims, m - 1, axis=1)[:, :m]
            order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
            out[start : start + chunk] = np.take_along_axis(top, order, 1)
        return out

    @torch.inference_mode()
    def bank_scores(self, features: ImageFeatures, vectors: np.ndarray, sha1s: list[str],
                    neighbours: int = BANK_NEIGHBOURS) -> list[np.ndarray]:
        """Each re-ranker's (n, neighbours) scores of these photos (shortlist ``vectors``, content
        ``sha1s``) against their own banks (``own_banks``)."""
        from itm.evaluation.engine import score_listed_pairs
        from itm.pipeline import word_vectors

        if not self.rerankers:
            return []
        lists = self.own_banks(vectors, sha1s, neighbours)
        tokens = self.pool()[0]
        used = np.unique(lists)
        pool_part = [tokens[c] for c in used]  # only the captions some photo's bank names are encoded
        columns = np.searchsorted(used, lists)
        scores = []
        for ckpt in self.rerankers:
            captions = encode_captions(pool_part, ckpt.vocab, ckpt.config.data.max_words,
                                       word_vectors(pool_part, ckpt.config, progress=False))
            scores.append(score_listed_pairs(ckpt.model.eval(), features, captions, columns))
        return scores

    def earlier_sha1s(self) -> dict[str, str]:
        """{a sha1 one of the model files had before it was re-saved: its sha1 now}."""
        return dict(self._earlier)

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
