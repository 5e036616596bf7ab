"""Backbones: output shapes, normalisation, VGG-19 weight files (random weights written to tmp_path)."""

from __future__ import annotations

import pytest
import torch

from itm.config import FeatureConfig
from itm.errors import ConfigError, DataError
from itm.features.backbones import BACKBONES, VGG19, build_backbone, read_safetensors


@pytest.fixture(scope="module")
def efficientnet():
    return build_backbone(FeatureConfig(backbone="efficientnet_lite0"))


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A torchvision-layout VGG-19 state dict with random weights (+ classifier keys to be ignored)."""
    torch.manual_seed(0)
    state = VGG19().state_dict()
    state["classifier.0.weight"] = torch.zeros(2, 3)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(state, path)
    return path, state


def test_registry_names_and_unknown():
    assert {"efficientnet_lite0", "vgg19"} <= set(BACKBONES.names())
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'"):
        build_backbone(FeatureConfig(backbone="resnet"))


def test_efficientnet_shapes(efficientnet):
    assert (efficientnet.channels, efficientnet.stride) == (1280, 32)
    assert not efficientnet.training and not any(p.requires_grad for p in efficientnet.parameters())
    x = torch.rand(2, 3, 64, 64) * 255
    out = efficientnet.feature_map(x)
    assert out.shape == (2, 1280, 2, 2) and torch.isfinite(out).all()
    assert efficientnet.feature_map(torch.rand(1, 3, 224, 224) * 255).shape == (1, 1280, 7, 7)


def test_efficientnet_normalisation(efficientnet):
    x = torch.tensor([0.0, 127.0, 255.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(efficientnet.normalize(x).flatten(), (x.flatten() / 255 - 0.498) / 0.502)


def test_efficientnet_weights_tag_names_the_shipped_file(efficientnet):
    assert efficientnet.weights_tag.startswith("efficientnet-lite0")


@pytest.mark.parametrize(("variant", "size", "grid"), [(1, 240, 8), (2, 260, 9)])
def test_larger_efficientnet_lites_load_their_shipped_weights(variant, size, grid):
    net = build_backbone(FeatureConfig(backbone=f"efficientnet_lite{variant}", image_size=size))
    assert net.weights_tag.startswith(f"efficientnet-lite{variant}")
    out = net.feature_map(torch.rand(1, 3, size, size) * 255)
    assert out.shape == (1, 1280, grid, grid) and torch.isfinite(out).all()
    # different weights from Lite0 (a copy-paste of the loader would give Lite0's numbers)
    lite0 = build_backbone(FeatureConfig(backbone="efficientnet_lite0"))
    first = next(iter(net.net.state_dict().values()))
    assert first.shape != next(iter(lite0.net.state_dict().values())).shape or not torch.equal(
        first, next(iter(lite0.net.state_dict().values())))


def test_efficientnet_lite_rejects_a_wrong_weights_file(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"stem.weight": torch.zeros(1)}, wrong)
    with pytest.raises(DataError, match="wrong.pth: not EfficientNet-Lite2 weights"):
        build_backbone(FeatureConfig(backbone="efficientnet_lite2", weights=str(wrong)))


def test_vgg19_needs_weights():
    with pytest.raises(ConfigError, match="VGG-19 weights are not shipped.*--weights PATH"):
        build_backbone(FeatureConfig(backbone="vgg19"))


def test_vgg19_missing_weights_file(tmp_path):
    with pytest.raises(DataError, match="absent.pth: VGG-19 weights file not found"):
        build_backbone(FeatureConfig(backbone="vgg19", weights=str(tmp_path / "absent.pth")))


def test_vgg19_layout_matches_torchvision_names():
    names = [k for k in VGG19().state_dict()]
    convs = sorted({int(k.split(".")[1]) for k in names})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # 16 convs
    assert len(VGG19().features) == 36  # ends with conv5_4's ReLU at features.35, no 5th pool


def test_vgg19_from_pth_shapes_and_values(vgg_weights):
    path, state = vgg_weights
    net = build_backbone(FeatureConfig(backbone="vgg19", weights=str(path)))
    assert (net.channels, net.stride) == (512, 16)
    torch.testing.assert_close(net.features[34].weight, state["features.34.weight"])
    out = net.feature_map(torch.rand(1, 3, 64, 64) * 255)
    assert out.shape == (1, 512, 4, 4) and (out >= 0).all()  # ends on a ReLU
    assert net.weights_tag.startswith("sha1-")


def test_vgg19_from_safetensors(vgg_weights, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    path, state = vgg_weights
    st_path = tmp_path / "vgg19.safetensors"
    st.save_file({k: v.half().contiguous() for k, v in state.items()}, str(st_path))
    loaded = read_safetensors(st_path)
    assert loaded["features.0.weight"].dtype == torch.float16
    net = build_backbone(FeatureConfig(backbone="vgg19", weights=str(st_path)))
    torch.testing.assert_close(net.features[0].weight, state["features.0.weight"].half().float())


def test_vgg19_wrong_keys_and_shapes(vgg_weights, tmp_path):
    _, state = vgg_weights
    partial = {k: v for k, v in state.items() if k != "features.34.bias"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(DataError, match=r"partial.pth: not a torchvision VGG-19 state dict \(missing features.34.bias"):
        build_backbone(FeatureConfig(backbone="vgg19", weights=str(tmp_path / "partial.pth")))
    bad = dict(state, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="bad.pth: features.0.weight has shape"):
        build_backbone(FeatureConfig(backbone="vgg19", weights=str(tmp_path / "bad.pth")))


def test_unreadable_weight_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="junk.pth: cannot read as a torch state dict"):
        build_backbone(FeatureConfig(backbone="vgg19", weights=str(tmp_path / "junk.pth")))
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(DataError, match="junk.safetensors: not a valid .safetensors file"):
        build_backbone(FeatureConfig(backbone="vgg19", weights=str(tmp_path / "junk.safetensors")))
