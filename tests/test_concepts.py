"""Concept maps: the backbone's ImageNet classifier applied to each cell, for the classes a word names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import WordTable

from itm.errors import ConfigError
from itm.evaluation.grounding import concept_first, concept_sum, unit_range
from itm.features.concepts import ConceptMaps, ImageNetClass, head_noun, singular

CLASSES = [ImageNetClass(["school bus"], {"bus"}),
           ImageNetClass(["beagle"], {"beagle", "dog"}),
           ImageNetClass(["pug"], {"pug", "dog"}),
           ImageNetClass(["zebra"], {"zebra", "mammal"}),
           ImageNetClass(["red wolf"], {"wolf"})]
TABLE = WordTable({"school": [1, 0, 0], "bus": [1, 0.1, 0], "beagle": [0, 1, 0], "pug": [0, 1, 0.1],
                   "zebra": [0, 0, 1], "giraffe": [0, 0.3, 1], "red": [1, 1, 1], "wolf": [1, 1, 0.9],
                   "lamp": [1, -1, 0]})


def concept_maps(weight=None):
    weight = torch.eye(5, 4) if weight is None else weight  # class k reads channel k (k < 4)
    return ConceptMaps(weight, torch.zeros(5), CLASSES, TABLE)


def test_a_word_finds_the_classes_that_name_it_plurals_included():
    maps = concept_maps()
    assert maps.concepts("dog").classes == [1, 2] and maps.concepts("dog").weights == [0.5, 0.5]
    assert maps.concepts("dogs").classes == [1, 2]
    assert maps.concepts("buses").names == ["school bus"]


def test_other_words_reach_only_close_one_word_names():
    maps = concept_maps()
    assert maps.concepts("giraffe").names == ["zebra"]  # cosine 0.96 with "zebra"
    assert not maps.concepts("red").found  # near only "red wolf": a phrase, its meaning drifts to the modifier
    assert not maps.concepts("lamp").found and not maps.concepts("qqqz").found  # far from all / in no table


def test_maps_are_the_named_classes_logits_in_each_cell():
    weight = 0.1 * torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    bias = torch.tensor([5.0, 5.0, 5.0, -5.0, -5.0])  # classes 0-2 likely in any photo: their maps are kept
    maps = ConceptMaps(weight, bias, CLASSES, TABLE)
    regions = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)).half()  # (D, C) as cached
    rows = maps.maps(regions, ["dog", "lamp", "bus"])
    logits = regions.float() @ weight.T + bias  # (D, K)
    np.testing.assert_allclose(rows[0], (0.5 * logits[:, 1] + 0.5 * logits[:, 2]).numpy(), rtol=1e-5, atol=1e-5)
    assert not rows[1].any()  # no class: no map, so nothing to peak
    np.testing.assert_allclose(rows[2], logits[:, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_zero_shot_maps_a_word_by_the_photos_classes_related_to_it():
    weight = 0.1 * torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    bias = torch.tensor([5.0, 5.0, 5.0, -5.0, -5.0])
    maps = ConceptMaps(weight, bias, CLASSES, TABLE)
    regions = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    logits = regions @ weight.T + bias  # (D, K)
    rows, sources = maps.maps_and_sources(regions, ["dog", "lamp", "qqqz"], zero_shot=True)
    assert sources == ["concept", "zero-shot", ""]
    # "lamp" names no class; of the photo's classes only the school bus is similar to it (the others'
    # cosines are <= 0 and weigh nothing): its map is the bus's logits
    np.testing.assert_allclose(rows[1], logits[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    assert not rows[2].any()  # no vector: no map
    plain, plain_sources = maps.maps_and_sources(regions, ["dog", "lamp"])
    assert plain_sources == ["concept", ""] and not plain[1].any()  # off by default
    np.testing.assert_array_equal(maps.maps(regions, ["dog", "lamp"], zero_shot=True), rows[:2])


def test_a_classifier_and_names_that_disagree_are_refused():
    with pytest.raises(ConfigError, match="6 classes, the names 5"):
        ConceptMaps(torch.zeros(6, 4), torch.zeros(6), CLASSES, TABLE)


def test_concept_first_and_sum_fall_back_to_attention_for_a_word_naming_nothing():
    attention = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    concept = np.array([[5.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # word 0 names a class, word 1 none
    first = concept_first(attention, concept)
    assert first[0].argmax() == 0 and first[1].argmax() == 0  # concept's peak; attention's peak
    np.testing.assert_allclose(first[1], unit_range(attention[1:])[0])
    summed = concept_sum(attention, concept)
    np.testing.assert_allclose(summed[0], unit_range(attention[:1])[0] + unit_range(concept[:1])[0])
    np.testing.assert_allclose(summed[1], unit_range(attention[1:])[0])


def test_head_nouns_and_singulars():
    assert head_noun("A very small toy dog") == "dog" and head_noun("") == ""
    assert singular("buses") == ["buses", "bus", "buse"] and singular("dog") == ["dog"]


def test_imagenet_names_reach_the_common_coco_nouns():
    from itm.features.concepts import imagenet_classes

    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[779].synonyms[0] == "school bus" and "bus" in classes[779].heads
    named = {head for c in classes for head in c.heads}
    assert {"dog", "cat", "bus", "umbrella", "laptop", "pizza", "zebra", "clock"} <= named


def test_the_lite_classifier_over_the_pooled_map_is_the_networks_own_output():
    """What makes per-cell maps valid: the classifier is linear after global average pooling, so the
    mean over cells of the per-cell logits is exactly the network's logits."""
    from itm.config import FeatureConfig
    from itm.features.backbones import build_backbone

    backbone = build_backbone(FeatureConfig(backbone="efficientnet_lite0", image_size=96))
    weight, bias = backbone.classifier()
    assert weight.shape == (1000, 1280) and bias.shape == (1000,)
    x = backbone.normalize(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255)
    with torch.inference_mode():
        cells = backbone(x).flatten(2).transpose(1, 2)[0]  # (D, 1280)
        network = backbone.net(x)[0]  # (1000,)
    np.testing.assert_allclose((cells @ weight.T + bias).mean(0).numpy(), network.numpy(), rtol=1e-4, atol=1e-4)


def test_a_backbone_without_a_classifier_over_its_map_is_one_line(monkeypatch):
    """VGG's classifier reads the flattened 7 x 7 map, not each cell: the base Backbone says None."""
    import itm.features.backbones as backbones
    from itm.config import FeatureConfig
    from itm.features.concepts import concept_maps_for

    monkeypatch.setattr(backbones, "build_backbone", lambda settings: backbones.Backbone())
    with pytest.raises(ConfigError, match="backbone vgg19: no classifier over its activation map"):
        concept_maps_for(FeatureConfig(backbone="vgg19", image_size=64), table=TABLE)


def test_a_class_the_photo_likely_does_not_show_gets_no_map():
    """``seen``: the classes' probability in the whole photo over their uniform share; below 1, no map."""
    maps = concept_maps(torch.eye(5, 4) * 10)  # class k reads channel k; class 4 reads nothing
    regions = torch.zeros(3, 4)
    regions[1, 0] = 3.0  # cell 1 shows class 0 (school bus) strongly; nothing shows the dogs or zebra
    assert maps.seen(regions, "bus") > 1 > maps.seen(regions, "dog")
    assert maps.seen(regions, "lamp") == 0.0  # names no class
    rows = maps.maps(regions, ["bus", "dog"])
    assert rows[0].argmax() == 1 and not rows[1].any()


# -- issue 45: only a noun reading names a class; ConSE evidence for words naming none ------------------

PLATFORM = [ImageNetClass(["drilling platform"], {"platform", "standing"}),  # "standing" from its description
            ImageNetClass(["beagle"], {"beagle", "dog"}),
            ImageNetClass(["model t"], {"t"}),
            ImageNetClass(["ferry"], {"near"}),
            ImageNetClass(["brown bear"], {"bear"}),  # named "... bear"
            ImageNetClass(["teddy"], {"teddy", "bear"})]  # "bear" from its description only


def test_a_verb_reading_names_no_class_and_a_noun_still_does():
    """ImageNet's classes are WordNet noun synsets: "standing" (a verb: VBG in Brill's lexicon) no longer
    reaches the drilling platform its description mentions; "dog" and "platform" (nouns) still do, and
    "bear" (mostly a verb, VB) the classes it names outright, not those of descriptions."""
    from itm.features.concepts import BY_NAME, NOT_NOUN, NOUN, noun_reading

    assert noun_reading("standing") == noun_reading("red") == noun_reading("together") == NOT_NOUN
    assert noun_reading("bear") == noun_reading("bears") == noun_reading("sink") == BY_NAME
    assert noun_reading("dog") == noun_reading("building") == noun_reading("cellphone") == NOUN  # the last: not listed
    maps = ConceptMaps(torch.eye(6, 3), torch.zeros(6), PLATFORM, TABLE)
    assert not maps.concepts("standing").found
    assert maps.concepts("platform").names == ["drilling platform"] and maps.concepts("dog").names == ["beagle"]
    assert maps.concepts("bear").names == maps.concepts("bears").names == ["brown bear"]
    # function words and one-letter words (the "t" of t-shirt) name nothing, whatever names them
    assert not maps.concepts("near").found and not maps.concepts("t").found
    before = ConceptMaps(torch.eye(6, 3), torch.zeros(6), PLATFORM, TABLE, noun=None)
    assert before.concepts("standing").names == ["drilling platform"]  # without the check: the old match
    assert before.concepts("bear").names == ["brown bear", "teddy"]


def test_without_the_lexicon_every_word_counts_as_a_noun_with_a_one_line_warning(monkeypatch):
    import importlib.util

    from itm.features import concepts

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match=r"textblob is not installed \(pip install textblob\)"):
        assert concepts.brill_tags.__wrapped__() is None
    monkeypatch.setattr(concepts, "brill_tags", lambda: None)
    assert concepts.noun_reading("standing")


def test_conse_evidence_is_the_cosine_with_the_photos_probability_weighted_classes():
    maps = concept_maps()
    probs = np.array([[0.05, 0.05, 0.05, 0.8, 0.05],  # a photo of a zebra
                      [0.8, 0.05, 0.05, 0.05, 0.05]], np.float32)  # a photo of a bus
    giraffe = maps.zero_shot_evidence(probs, "giraffe", top=2)
    assert giraffe[0] > giraffe[1]  # GloVe puts giraffe near zebra
    vectors = maps.class_vectors()
    embedding = 0.8 * vectors[3] + 0.05 * vectors[0]  # photo 0's top 2: zebra, then the first of the ties
    v = np.array([0, 0.3, 1.0]) / np.linalg.norm([0, 0.3, 1.0])
    np.testing.assert_allclose(giraffe[0], embedding @ v / np.linalg.norm(embedding), rtol=1e-5)
    assert not maps.zero_shot_evidence(probs, "qqqz").any()  # no vector: no evidence
    assert maps.zero_shot_word("lamp") and maps.zero_shot_word("wolf")  # nouns with a vector
    assert not any(maps.zero_shot_word(w) for w in ("qqqz", "the", "red", "standing"))  # no vector; no thing named


def test_search_evidence_falls_back_to_conse_for_a_word_naming_no_class(monkeypatch):
    from itm.features import concepts

    maps = concept_maps(torch.eye(5, 4) * 10)
    monkeypatch.setattr(concepts, "cached_concept_maps", lambda backbone, weights: maps)
    settings = type("Settings", (), {"backbone": "hand", "weights": None})()
    regions = torch.zeros(3, 2, 4)  # three photos: the bus (channel 0), the zebra (channel 3), nothing
    regions[0, :, 0] = 1.0
    regions[1, :, 3] = 1.0
    scores = np.array([0.0, 0.0, 0.1])  # the matcher cannot tell the first two apart
    assert not maps.concepts("lamp").found  # far from every class name
    ranked, looked_for = concepts.add_concept_evidence(scores, settings, ["lamp"], lambda: regions, zero_shot=True)
    assert looked_for == ["lamp"] and ranked[0] > ranked[1]  # GloVe puts the lamp nearer the bus than the zebra
    off, none = concepts.add_concept_evidence(scores, settings, ["lamp"], lambda: regions)  # off by default
    assert none == [] and off is scores
    both, words = concepts.add_concept_evidence(scores, settings, ["dog", "lamp"], lambda: regions, zero_shot=True)
    assert words == ["dog", "lamp"] and both.shape == (3,)
    assert concepts.add_concept_evidence(scores, settings, ["the", "qqqz"], lambda: regions, zero_shot=True) == \
        (scores, [])
