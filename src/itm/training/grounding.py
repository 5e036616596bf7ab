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
from itm.errors import ConfigError
from itm.features.concepts import ConceptMaps
from itm.models.base import Matcher, length_mask

WORDS_OVER_REGIONS = ("words", "regions")


class ConceptTargets:
    """``ConceptMaps.maps`` for a vocabulary's word ids, batched: the classes every word names are
    gathered once, so a step computes the logits of those classes only."""

    def __init__(self, concepts: ConceptMaps, words: list[str]):
        found = [concepts.concepts(w) for w in words]
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
        self.named = members.sum(1) > 0  # (V,)
        # a word's classes are "seen" when their summed probability is at least their uniform share
        self.chance_scale = len(concepts.classes) / members.sum(1).clamp_min(1.0)  # (V,)
        self.weight, self.bias = concepts.weight, concepts.bias  # (K, C), (K,)

    def to(self, device: torch.device) -> ConceptTargets:
        for name in ("classes", "word_weights", "members", "named", "chance_scale", "weight", "bias"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def maps(self, regions: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, C) photos' region features, (B, L) their captions' word ids -> (B, L, D) each word's
        concept map over its photo's cells, and (B, L) bool: the word names classes its photo shows."""
        regions = regions.float()
        probs = torch.softmax(regions.mean(1) @ self.weight.T + self.bias, dim=1)  # (B, K): pooled = mean
        members = self.members[ids]  # (B, L, U)
        named = members.flatten(0, 1).amax(0) > 0  # (U,): only the classes this batch's words name
        classes = self.classes[named]  # (U',)
        cells = regions @ self.weight[classes].T + self.bias[classes]  # (B, D, U')
        maps = self.word_weights[ids][..., named] @ cells.transpose(1, 2)  # (B, L, D)
        over_chance = (members[..., named] * probs[:, None, classes]).sum(-1) * self.chance_scale[ids]  # (B, L)
        return maps, self.named[ids] & (over_chance >= 1.0)


def words_over_regions(model: Matcher) -> str:
    """The name of the ("words", "regions") attention the model declares; a ConfigError otherwise."""
    for name, spec in model.attention_specs().items():
        if (spec.rows, spec.over) == WORDS_OVER_REGIONS:
            return name
    raise ConfigError(f"train.concept_weight: model '{type(model).__name__}' declares no attention of words over "
                      "the region grid, so there is nothing for the concept maps to guide")


def concept_kl(attention: torch.Tensor, concept_maps: torch.Tensor, has_target: torch.Tensor) -> torch.Tensor:
    """(B, L, D) attention, (B, L, D) concept maps (logits), (B, L) bool -> the mean over the marked
    words of KL(softmax(map) || attention); 0 when no word is marked."""
    if not bool(has_target.any()):
        return attention.sum() * 0.0  # keeps the graph's device and dtype
    target = torch.softmax(concept_maps[has_target].float(), dim=-1)  # (n, D)
    attended = attention[has_target].float().clamp_min(1e-12)  # (n, D)
    return (target * (target.clamp_min(1e-12).log() - attended.log())).sum(-1).mean()


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
        maps, has_target = self.targets.to(regions.device).maps(regions, captions.ids)  # (B, L, D), (B, L)
        has_target &= length_mask(captions.lengths, captions.ids.shape[1])
        if not bool(has_target.any()):
            return regions.new_zeros(())
        attention = self.model(streams, captions, return_attention=True).attention[self.attention]  # (B, L, D)
        return self.weight * concept_kl(attention, maps, has_target)


def concept_grounding(model: Matcher, features, words: list[str], weight: float) -> ConceptGrounding:
    """The term for ``model`` trained on the backbone ``features`` (a FeatureConfig) names, over the
    vocabulary ``words`` (its word ids' order)."""
    from itm.features.concepts import concept_maps_for

    return ConceptGrounding(model, ConceptTargets(concept_maps_for(features), words), weight)
