"""Concept-guided attention (``train.concept_weight``): a training term that pulls a model's own
words-over-regions attention towards where the backbone's ImageNet classifier sees what each word names.

The matchers learn their attention from image-caption pairs alone, and on new photos it points no better
than the photo's centre (docs/results/grounding.md). The backbone's classifier, applied to each cell of
the very grid the models attend over, says where a class is (``itm.features.concepts``): free, photo-level
pseudo-supervision from a source independent of the matcher. Per word of a training caption that names
classes the classifier finds likelier than chance in its photo (``ConceptMaps.seen``), the target is the
softmax over the cells of the word's concept map (``ConceptMaps.maps``: the classes' logits per cell, the
classifier's own scale, no temperature to tune); the term is KL(target || attention), averaged over those
words. Other words get no target: the attention they learn is the matching objective's alone.

Shared code: a model takes part by declaring a ("words", "regions") map (``Matcher.attention_specs``)
that its ``forward(..., return_attention=True)`` returns.
"""

from __future__ import annotations

import torch

from itm.data.types import Captions
from itm.errors import ConfigError, ItmError
from itm.evaluation.grounding import declared_map
from itm.features.concepts import ConceptMaps, WordConcepts
from itm.models.base import Matcher, length_mask

WORDS_OVER_REGIONS = ("words", "regions")

# Words naming people name no ImageNet class (ImageNet has no person class), yet they are a third of the
# pointing game's misses. What people wear sits where they are: these words may take the map of the
# garment classes as a weaker target (``train.concept_stand_in_weight``). The words: the person nouns
# among the 400 most frequent words of Flickr8k's training captions that name no class (the nouns
# "man", "person", "people" and "player" reach a class of their own by name or description, so they
# keep it); the classes: ImageNet's garments, hats and footwear, by their first name.
PERSON_WORDS = ("boy", "boys", "woman", "women", "girl", "girls", "child", "children", "men", "baby", "kids", "kid",
                "guy", "lady", "toddler", "couple", "crowd", "team", "group", "skateboarder", "snowboarder", "rider",
                "skier", "surfer", "biker")
WORN_CLASSES = ("academic gown", "apron", "bathing cap", "bikini", "bolo tie", "bonnet", "bow tie",
                "bulletproof vest", "cloak", "cowboy boot", "cowboy hat", "crash helmet", "football helmet",
                "fur coat", "gown", "hoopskirt", "jean", "jersey", "kimono", "lab coat", "maillot", "military uniform",
                "miniskirt", "mortarboard", "poncho", "running shoe", "sandal", "ski mask", "sock", "sombrero",
                "stole", "suit", "sunglasses", "sweatshirt", "trench coat", "windsor tie")


def stand_in(concepts: ConceptMaps, word: str) -> WordConcepts | None:
    """The garment classes, equally weighted, for a person word naming no class of its own; else None."""
    if word not in PERSON_WORDS or concepts.concepts(word).found:
        return None
    worn = [k for k, c in enumerate(concepts.classes) if c.synonyms and c.synonyms[0] in WORN_CLASSES]
    if not worn:
        return None
    return WordConcepts(word, worn, [1 / len(worn)] * len(worn), [concepts.classes[k].synonyms[0] for k in worn])


class ConceptTargets:
    """``ConceptMaps.maps`` for a vocabulary's word ids, batched: the classes every word names are
    gathered once, so a step computes the logits of those classes only. With ``stand_in_weight`` > 0,
    person words take the garment classes' map as a target of that weight (``stand_in``)."""

    def __init__(self, concepts: ConceptMaps, words: list[str], stand_in_weight: float = 0.0):
        found, target_weight = [], []
        for word in words:
            own = concepts.concepts(word)
            worn = stand_in(concepts, word) if stand_in_weight > 0 else None
            found.append(own if worn is None else worn)
            target_weight.append(1.0 if own.found else (stand_in_weight if worn is not None else 0.0))
        used = sorted({k for f in found for k in f.classes})
        column = {k: j for j, k in enumerate(used)}
        self.classes = torch.tensor(used, dtype=torch.long)  # (U,) the classes some word names
        self.word_weights = torch.zeros(len(words), len(used))  # (V, U) each word's class weights (sum 1)
        members = torch.zeros(len(words), len(used))  # (V, U) 1 where the word names the class
        for v, f in enumerate(found):
            for k, w in zip(f.classes, f.weights, strict=True):
                self.word_weights[v, column[k]] = w
                members[v, column[k]] = 1.0
        self.members = members
        self.target_weight = torch.tensor(target_weight)  # (V,) 1: own classes, stand_in_weight: garments, 0: none
        self.named = self.target_weight == 1.0  # (V,) words with classes of their own
        # a word's classes are "seen" when their summed probability is at least their uniform share
        self.chance_scale = len(concepts.classes) / members.sum(1).clamp_min(1.0)  # (V,)
        self.weight, self.bias = concepts.weight, concepts.bias  # (K, C), (K,)

    def to(self, device: torch.device) -> ConceptTargets:
        for name in ("classes", "word_weights", "members", "target_weight", "named", "chance_scale", "weight", "bias"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def maps(self, regions: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, C) photos' region features, (B, L) their captions' word ids -> (B, L, D) each word's
        concept map over its photo's cells, and (B, L) each word's target weight: 0 unless the word (or
        its stand-in) names classes its photo shows."""
        regions = regions.float()
        probs = torch.softmax(regions.mean(1) @ self.weight.T + self.bias, dim=1)  # (B, K): pooled = mean
        members = self.members[ids]  # (B, L, U)
        named = members.flatten(0, 1).amax(0) > 0  # (U,): only the classes this batch's words name
        classes = self.classes[named]  # (U',)
        cells = regions @ self.weight[classes].T + self.bias[classes]  # (B, D, U')
        maps = self.word_weights[ids][..., named] @ cells.transpose(1, 2)  # (B, L, D)
        over_chance = (members[..., named] * probs[:, None, classes]).sum(-1) * self.chance_scale[ids]  # (B, L)
        return maps, self.target_weight[ids] * (over_chance >= 1.0)


def words_over_regions(model: Matcher) -> str:
    """The name of the ("words", "regions") attention the model declares; a ConfigError otherwise."""
    try:
        return declared_map(model, WORDS_OVER_REGIONS)
    except ItmError:
        raise ConfigError(f"train.concept_weight: model '{type(model).__name__}' declares no attention of words "
                          "over the region grid, so there is nothing for the concept maps to guide") from None


def concept_kl(attention: torch.Tensor, concept_maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, L, D) attention, (B, L, D) concept maps (logits), (B, L) target weights -> the mean over the
    words of positive weight of weight x KL(softmax(map) || attention); 0 when no word has a target."""
    marked = weights > 0  # (B, L)
    if not bool(marked.any()):
        return attention.sum() * 0.0  # keeps the graph's device and dtype
    target = torch.softmax(concept_maps[marked].float(), dim=-1)  # (n, D)
    attended = attention[marked].float().clamp_min(1e-12)  # (n, D)
    kl = (target * (target.clamp_min(1e-12).log() - attended.log())).sum(-1)  # (n,)
    return (weights[marked].float() * kl).mean()


class ConceptGrounding:
    """The term for one model: ``(streams, captions) -> weight * concept_kl`` over the step's matched
    pairs (image i with caption i), called by the in-batch objective (``TrainingBatch.grounding``)."""

    def __init__(self, model: Matcher, targets: ConceptTargets, weight: float):
        if "regions" not in model.image_streams:
            raise ConfigError(f"train.concept_weight: model '{type(model).__name__}' reads no region grid")
        self.model = model
        self.attention = words_over_regions(model)
        self.targets = targets
        self.weight = weight

    def __call__(self, streams: dict[str, torch.Tensor], captions: Captions) -> torch.Tensor:
        regions = streams["regions"]
        maps, weights = self.targets.to(regions.device).maps(regions, captions.ids)  # (B, L, D), (B, L)
        weights = weights * length_mask(captions.lengths, captions.ids.shape[1])
        if not bool((weights > 0).any()):
            return regions.new_zeros(())
        attention = self.model(streams, captions, return_attention=True).attention[self.attention]  # (B, L, D)
        return self.weight * concept_kl(attention, maps, weights)


def concept_grounding(model: Matcher, features, words: list[str], weight: float,
                      stand_in_weight: float = 0.0) -> ConceptGrounding:
    """The term for ``model`` trained on the backbone ``features`` (a FeatureConfig) names, over the
    vocabulary ``words`` (its word ids' order)."""
    from itm.features.concepts import concept_maps_for

    return ConceptGrounding(model, ConceptTargets(concept_maps_for(features), words, stand_in_weight), weight)
