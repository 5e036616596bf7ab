"""Proposals: always exactly P boxes inside the image, best first; external boxes files."""

from __future__ import annotations

import json

import pytest
import torch

from itm.config import FeatureConfig
from itm.errors import ConfigError, DataError
from itm.features.proposals import (
    PROPOSALS,
    ActivationProposals,
    ExternalBoxes,
    ProposalInput,
    build_proposals,
    fill_to,
    grid_windows,
)


def assert_valid(boxes: torch.Tensor, num: int, width: int, height: int) -> None:
    assert boxes.shape == (num, 4) and boxes.dtype == torch.float32
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def blob_map(channels=32, h=7, w=7, centre=(2, 5), spread=1.0):
    """Activations with one bright blob: the top proposal should sit on it."""
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    blob = torch.exp(-((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2) / (2 * spread**2))
    return blob[None] * torch.rand(channels, 1, 1, generator=torch.Generator().manual_seed(0)) * 5


MAPS = {
    "random": torch.rand(64, 7, 7, generator=torch.Generator().manual_seed(1)) * 3 - 0.5,
    "zeros": torch.zeros(16, 7, 7),
    "constant": torch.ones(16, 7, 7),
    "one_cell": torch.rand(16, 1, 1),
    "two_by_two": torch.rand(16, 2, 2, generator=torch.Generator().manual_seed(2)),
    "wide": torch.rand(16, 4, 9, generator=torch.Generator().manual_seed(3)),
    "blob": blob_map(),
}


@pytest.mark.parametrize("method", ["activation", "grid"])
@pytest.mark.parametrize("map_name", sorted(MAPS))
@pytest.mark.parametrize("num,size", [(10, (224, 224)), (1, (500, 375)), (40, (37, 301))])
def test_always_exactly_p_boxes_inside_the_image(method, map_name, num, size):
    proposer = build_proposals(FeatureConfig(proposals=method))
    boxes = proposer.propose(ProposalInput(MAPS[map_name], size, "x.jpg"), num)
    assert_valid(boxes, num, *size)


def test_activation_top_box_lands_on_the_blob():
    boxes = ActivationProposals().propose(ProposalInput(blob_map(centre=(2, 5)), (224, 224)), 10)
    x1, y1, x2, y2 = boxes[0].tolist()
    cx, cy = (5 + 0.5) * 32, (2 + 0.5) * 32  # blob centre in pixels
    assert x1 < cx < x2 and y1 < cy < y2
    assert (x2 - x1) * (y2 - y1) < 0.5 * 224 * 224  # a box around the blob, not the whole image


def test_activation_is_deterministic_and_distinct():
    fmap = MAPS["random"]
    a = ActivationProposals().propose(ProposalInput(fmap, (300, 200)), 10)
    b = ActivationProposals().propose(ProposalInput(fmap.clone(), (300, 200)), 10)
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 5


def test_activation_tag_changes_with_parameters():
    assert ActivationProposals().tag != ActivationProposals(levels=(0.5,)).tag


def test_grid_order_starts_with_whole_image():
    windows = grid_windows(100, 50, 12)
    assert windows[0].tolist() == [0, 0, 100, 50]
    assert windows.shape == (12, 4)


def test_fill_to_prefers_new_windows_over_repeats():
    whole = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    filled = fill_to(whole, 3, 100, 100)
    assert filled.shape == (3, 4) and filled[1].tolist() != filled[0].tolist()


def test_registry_and_unknown_name():
    assert {"activation", "grid", "external"} <= set(PROPOSALS.names())
    with pytest.raises(ConfigError, match="unknown proposal method 'selective'"):
        build_proposals(FeatureConfig(proposals="selective"))
    with pytest.raises(ConfigError, match="external:PATH"):
        build_proposals(FeatureConfig(proposals="external"))


def test_external_boxes(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({
        "a.jpg": [[10, 10, 50, 60], [0, 0, 20, 20]],
        "b.jpg": [[0, 0, 10, 10, 0.1], [5, 5, 90, 90, 0.9], [-20, -5, 500, 400, 0.5]],
        "c.jpg": [],
    }))
    method = build_proposals(FeatureConfig(proposals=f"external:{path}"))
    assert isinstance(method, ExternalBoxes) and method.tag.startswith("external-")
    a = method.propose(ProposalInput(torch.zeros(4, 7, 7), (100, 80), "a.jpg"), 4)
    assert_valid(a, 4, 100, 80)
    assert a[:2].tolist() == [[10, 10, 50, 60], [0, 0, 20, 20]]  # file order kept, padding after
    b = method.propose(ProposalInput(torch.zeros(4, 7, 7), (100, 80), "photos/b.jpg"), 3)  # matched by basename
    assert b.tolist() == [[5, 5, 90, 80], [0, 0, 100, 80], [0, 0, 10, 10]]  # by score, clipped
    assert_valid(method.propose(ProposalInput(torch.zeros(4, 7, 7), (64, 64), "c.jpg"), 5), 5, 64, 64)
    with pytest.raises(DataError, match="boxes.json: no boxes for image 'zzz.jpg'"):
        method.propose(ProposalInput(torch.zeros(4, 7, 7), (64, 64), "zzz.jpg"), 5)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not a valid JSON boxes file"),
    ("[1, 2]", "expected {filename"),
    ('{"a.jpg": [[1, 2, 3]]}', "must be \\[x1, y1, x2, y2\\]"),
    ('{"a.jpg": [["x", 2, 3, 4]]}', "not lists of numbers"),
])
def test_external_boxes_bad_files(tmp_path, content, message):
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        ExternalBoxes(path).propose(ProposalInput(torch.zeros(1, 2, 2), (10, 10), "a.jpg"), 2)


def test_external_boxes_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.json: cannot read boxes file"):
        build_proposals(FeatureConfig(proposals=f"external:{tmp_path / 'nothere.json'}"))
