"""Training-time augmentation (train.region_drop, train.word_drop): what each keeps, and that the
training step really receives the augmented inputs."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from itm.config import load_config
from itm.data.synthetic import synthetic_split
from itm.data.types import Captions
from itm.training import loop
from itm.training.augment import drop_regions, drop_words


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_drop_regions_keeps_a_per_image_subset_in_grid_order():
    regions = torch.arange(4 * 10 * 3, dtype=torch.float32).view(4, 10, 3)  # (B, D, M), distinct rows
    out = drop_regions(regions, 0.3, gen())
    assert out.shape == (4, 7, 3)
    kept = []
    for b in range(4):
        index = (out[b, :, 0] - regions[b, 0, 0]).long() // 3  # which of the image's own regions
        assert torch.equal(out[b], regions[b, index])  # whole rows of the same image
        assert torch.all(index[1:] > index[:-1])  # distinct, in grid order
        kept.append(tuple(index.tolist()))
    assert len(set(kept)) > 1  # images draw their own subsets


def test_drop_regions_off_or_extreme():
    regions = torch.randn(2, 5, 4)
    assert drop_regions(regions, 0.0, gen()) is regions
    assert drop_regions(regions, 0.99, gen()).shape == (2, 1, 4)  # at least one region survives


def captions_fixture() -> Captions:
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [10, 11, 0, 0, 0, 0], [12, 0, 0, 0, 0, 0]])  # (N, L)
    lengths = torch.tensor([5, 2, 1])
    vectors = ids[:, :, None].float().expand(-1, -1, 2).clone()  # each word's vector holds its id
    return Captions(ids, lengths, vectors)


@pytest.mark.parametrize("seed", range(5))
def test_drop_words_keeps_an_ordered_subsequence_and_packs_it(seed):
    caps = captions_fixture()
    out = drop_words(caps, 0.5, gen(seed))
    assert out.ids.shape[1] == int(out.lengths.max())  # padding trimmed to the longest survivor
    for i in range(len(caps)):
        n = int(out.lengths[i])
        assert 1 <= n <= int(caps.lengths[i])
        survivors = out.ids[i, :n].tolist()
        original = caps.ids[i, : int(caps.lengths[i])].tolist()
        assert all(w in original for w in survivors) and survivors == sorted(survivors)  # ids rise in order
        assert torch.all(out.ids[i, n:] == 0)
        assert torch.equal(out.vectors[i, :, 0].long(), out.ids[i])  # vectors moved with their words
        assert torch.all(out.vectors[i, n:] == 0)


def test_drop_words_off_keeps_the_captions_and_extreme_keeps_one_word():
    caps = captions_fixture()
    assert drop_words(caps, 0.0, gen()) is caps
    out = drop_words(caps, 0.999, gen())
    assert out.lengths.tolist() == [1, 1, 1]
    kept = [int(drop_words(caps, 0.3, gen(s)).lengths[0]) / 5 for s in range(400)]  # the 5-word caption
    assert abs(sum(kept) / len(kept) - 0.7) < 0.03  # about 30 % of its words deleted


def test_the_training_step_sees_the_augmented_inputs():
    split, _ = synthetic_split(64, seed=0, region_dim=8)
    caps = torch.arange(16)
    images = torch.as_tensor(split.caption_to_image)[caps]
    plain = load_config(None, [])
    augmented = load_config(None, ["train.region_drop=0.5", "train.word_drop=0.5"])
    model = tiny_model("bssan")[0]
    streams, captions = loop.training_inputs(model, split, images, caps, plain.train, gen())
    assert torch.equal(streams["regions"], split.features.regions[images])
    assert torch.equal(captions.lengths, split.captions.lengths[caps])
    streams, captions = loop.training_inputs(model, split, images, caps, augmented.train, gen())
    d = split.features.regions.shape[1]
    assert streams["regions"].shape[1] == max(1, round(d * 0.5))
    assert torch.equal(streams["objects"], split.features.objects[images])  # objects are left whole
    assert torch.all(captions.lengths <= split.captions.lengths[caps])
    assert bool((captions.lengths < split.captions.lengths[caps]).any())
    # the whole-image vector stays the mean of the full grid (the backbone's pooled feature)
    whole = split.features.streams(("whole",), images)["whole"]
    torch.testing.assert_close(whole, split.features.regions[images].float().mean(1))
