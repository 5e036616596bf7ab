"""Concept-guided attention (train.concept_weight): targets, the term, its place in the objective,
and fine-tuning from a checkpoint (train.init_from)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    DIMS,
    M,
    V,
    WordTable,
    fit_quietly,
    make_captions,
    make_images,
    setup_run,
    streams,
    tiny_batch,
    tiny_model,
)

from itm.checkpoint import load_initial_weights, model_payload, save_atomic
from itm.config import load_config
from itm.data.vocab import Vocab
from itm.errors import ConfigError
from itm.features.concepts import ConceptMaps, ImageNetClass
from itm.models import MODELS
from itm.models.objectives import objective_loss
from itm.training.grounding import ConceptGrounding, ConceptTargets, concept_kl

CLASSES = [ImageNetClass(["school bus"], {"bus"}),
           ImageNetClass(["beagle"], {"beagle", "dog"}),
           ImageNetClass(["pug"], {"pug", "dog"}),
           ImageNetClass(["zebra"], {"zebra"}),
           ImageNetClass(["red wolf"], {"wolf"})]
TABLE = WordTable({"bus": [1, 0.1, 0], "beagle": [0, 1, 0], "pug": [0, 1, 0.1], "zebra": [0, 0, 1],
                   "giraffe": [0, 0.3, 1]})
# the tiny models' V word ids: a few name classes, the rest ("w7", ...) name none
WORDS = ["<pad>", "dog", "bus", "zebra", "giraffe", "the", "dogs", *[f"w{i}" for i in range(7, V)]]
VOCAB = ["<pad>", "<unk>", *WORDS[2:]]  # a valid vocabulary of the same size
# classes 0-2 (bus, dogs) are likely in any photo, 3-4 (zebra, wolf) never: "zebra" gets no target
BIAS = torch.tensor([5.0, 5.0, 5.0, -5.0, -5.0])


def concept_maps(channels: int = M) -> ConceptMaps:
    weight = torch.randn(5, channels, generator=torch.Generator().manual_seed(0))
    return ConceptMaps(weight, BIAS, CLASSES, TABLE)


def test_targets_are_each_words_concept_map_where_its_photo_shows_the_class():
    maps = concept_maps()
    regions, _ = make_images(3)  # (3, D, M)
    ids = torch.tensor([[1, 2, 3, 5], [6, 4, 9, 0], [2, 1, 1, 3]])
    batched, weights = ConceptTargets(maps, WORDS).maps(regions, ids)  # (3, 4, D), (3, 4)
    has = weights > 0
    assert set(weights.unique().tolist()) <= {0.0, 1.0}
    for b in range(3):
        rows, sources = maps.maps_and_sources(regions[b], [WORDS[i] for i in ids[b]])
        assert has[b].tolist() == [s == "concept" for s in sources]
        marked = has[b].numpy()
        np.testing.assert_allclose(batched[b].numpy()[marked], rows[marked], rtol=1e-5, atol=1e-5)
        assert not rows[~marked].any()  # the others have no map (their batched rows are never read)
    assert has[0].tolist() == [True, True, False, False]  # "zebra": not seen; "the": names nothing


def test_the_kl_is_zero_at_the_target_positive_elsewhere_and_reads_only_marked_words():
    maps = torch.randn(2, 3, 4)
    has = torch.tensor([[True, False, True], [False, False, True]])
    exact = torch.softmax(maps, -1)
    assert float(concept_kl(exact, maps, has)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((2, 3, 4), 0.25)
    assert float(concept_kl(uniform, maps, has)) > 0.01
    garbled = exact.clone()
    garbled[~has] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # unmarked words' attention does not count
    assert float(concept_kl(garbled, maps, has)) == pytest.approx(0.0, abs=1e-6)
    assert float(concept_kl(uniform, maps, torch.zeros(2, 3))) == 0.0
    half = has.float() * torch.tensor([[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]])  # a stand-in's weaker target
    full = concept_kl(uniform, maps, has.float())
    per_word = concept_kl(uniform[:1, :1], maps[:1, :1], torch.ones(1, 1))
    assert float(concept_kl(uniform, maps, half)) == pytest.approx(float(full) - 0.5 * float(per_word) / 3, rel=1e-5)


WORN = [ImageNetClass(["jersey"], {"jersey"}), ImageNetClass(["suit"], {"suit"}), ImageNetClass(["pug"], {"pug", "dog"}),
        ImageNetClass(["rock crab"], {"crab"})]  # never likely: the other three are likelier than their share


def test_person_words_take_the_garments_map_as_a_weaker_target_only_when_asked():
    maps = ConceptMaps(torch.eye(4), torch.tensor([5.0, 5.0, 5.0, -20.0]), WORN, WordTable({"pug": [0.0, 1.0]}))
    words = ["<pad>", "<unk>", "woman", "dog", "rock"]
    plain = ConceptTargets(maps, words)
    assert plain.target_weight.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    targets = ConceptTargets(maps, words, stand_in_weight=0.3)
    assert targets.target_weight.tolist() == pytest.approx([0.0, 0.0, 0.3, 1.0, 0.0])
    regions = torch.rand(2, 5, 4)
    rows, weights = targets.maps(regions, torch.tensor([[2, 3, 4], [3, 2, 0]]))
    logits = regions + 5.0  # (2, D, 4): class k reads channel k
    np.testing.assert_allclose(rows[0, 0].numpy(), (logits[0, :, 0] + logits[0, :, 1]).numpy() / 2, rtol=1e-5)
    torch.testing.assert_close(weights, torch.tensor([[0.3, 1.0, 0.0], [1.0, 0.3, 0.0]]))


def declares_word_region_attention(model) -> bool:
    return any((s.rows, s.over) == ("words", "regions") for s in model.attention_specs().values())


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_with_a_word_region_map_learns_to_point_where_the_concept_is(name):
    model, _ = tiny_model(name)
    targets = ConceptTargets(concept_maps(), WORDS)
    if not declares_word_region_attention(model) or "regions" not in model.image_streams:
        with pytest.raises(ConfigError, match="train.concept_weight"):
            ConceptGrounding(model, targets, 1.0)
        return
    term = ConceptGrounding(model, targets, 1.0)
    regions, objects = make_images(4)
    captions = make_captions([4, 3, 4, 2], seed=3)
    captions.ids[:, 0] = torch.tensor([1, 2, 6, 1])  # every caption starts with a word that has a target
    inputs = {k: v for k, v in streams(regions, objects).items() if k in model.image_streams}
    model.eval()  # no dropout: the same function every step
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    first = float(term(inputs, captions).detach())
    for _ in range(30):
        optimiser.zero_grad()
        term(inputs, captions).backward()
        optimiser.step()
    assert first > 0 and float(term(inputs, captions).detach()) < 0.5 * first


def test_the_term_joins_the_in_batch_objective_on_matched_pairs():
    model, _ = tiny_model("bssan")
    model.eval()
    seen = []

    def grounding(streams_, captions):
        seen.append((streams_["regions"].shape[0], len(captions.lengths)))
        return torch.tensor(3.0)

    batch = tiny_batch(model)
    plain = float(objective_loss(model, batch).detach())
    batch.grounding = grounding
    assert float(objective_loss(model, batch).detach()) == pytest.approx(plain + 3.0, abs=1e-5)
    assert seen == [(8, 8)]  # one photo row per caption: the batch's matched pairs


def test_the_concept_term_needs_an_in_batch_objective_and_a_non_negative_weight():
    with pytest.raises(ConfigError, match="train.concept_weight"):
        load_config(None, ["train.loss=pairwise_hinge", "train.concept_weight=0.5"])
    with pytest.raises(ConfigError, match="concept_weight"):
        load_config(None, ["train.loss=infonce", "train.concept_weight=-1"])


def test_a_run_trains_with_the_term_and_it_lowers_the_attentions_distance_to_the_maps(tmp_path):
    overrides = ["train.loss=infonce", "train.temperature=0.1", "train.epochs=3"]
    runs = {}
    for weight in (0.0, 2.0):
        trainer, train, val = setup_run(tmp_path / f"w{weight}", *overrides)
        words = [f"w{i}" for i in range(int(train.captions.ids.max()) + 1)]
        words[1:4] = ["dog", "bus", "dogs"]  # the synthetic vocabulary's first words stand for named things
        term = ConceptGrounding(trainer.model, ConceptTargets(concept_maps(train.features.regions.shape[2]), words), 1)
        if weight:
            trainer.grounding = ConceptGrounding(trainer.model, term.targets, weight)
        fit_quietly(trainer, train, val)
        image_streams = train.features.streams(trainer.model.image_streams, torch.as_tensor(train.caption_to_image[:64]))
        with torch.no_grad():
            trainer.model.eval()
            runs[weight] = float(term(image_streams, train.captions.select(slice(0, 64))))
    assert runs[2.0] < 0.8 * runs[0.0]


def test_fine_tuning_starts_from_the_checkpoints_weights_and_refuses_another_vocabulary(tmp_path):
    model, config = tiny_model("bssan", seed=1)
    vocab = Vocab.from_list(VOCAB)
    path = tmp_path / "start.pt"
    save_atomic(model_payload(model, config, vocab, DIMS, {"backbone": "synthetic"}), path)
    fresh, _ = tiny_model("bssan", seed=2)
    load_initial_weights(fresh, path, vocab)
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    with pytest.raises(ConfigError, match="another training vocabulary"):
        load_initial_weights(fresh, path, Vocab.from_list([*VOCAB[:-1], "other"]))
    wider, _ = tiny_model("bssan", "model.w2r_hidden=9")
    with pytest.raises(ConfigError, match="do not fit"):
        load_initial_weights(wider, path, vocab)
