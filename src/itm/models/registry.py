"""Registered matchers and their variants: a variant is a builder plus config presets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from itm.config import ModelConfig
from itm.models.base import Matcher, WordEmbedder
from itm.registry import Registry


@dataclass
class ModelSpec:
    """How to build one registered model: ``builder(config, dims, words)`` and the presets it fixes."""

    builder: Callable[..., Matcher]
    presets: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields this variant sets
    help: str = ""


@dataclass
class InputDims:
    """Feature widths a model is built for (read from the data, stored in checkpoints)."""

    word_dim: int  # E
    region_dim: int  # M
    object_dim: int  # Q
    vocab_size: int


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, builder: Callable[..., Matcher], help: str, **presets: Any) -> None:
    MODELS.add(name, ModelSpec(builder, presets, help), help)


def model_presets(name: str) -> dict[str, Any]:
    """The ModelConfig fields a registered variant sets (applied before the user's own values)."""
    _load_all()
    return dict(MODELS.get(name).presets)


def build_model(config: ModelConfig, dims: InputDims, words: WordEmbedder) -> Matcher:
    _load_all()
    return MODELS.get(config.name).builder(config, dims, words)


def _load_all() -> None:
    """Import the model modules so that they register themselves."""
    from itm.models import bssan  # noqa: F401
