"""The one model registry: each registered name is a builder, a config class and presets.

A model module registers itself on import (``register_model``); importing ``itm.models`` (or this
any of its modules: Python runs the package first) registers every model. ``itm.config`` resolves the ``model``
section through this registry, importing it late, so configs load without importing a model first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from itm.config_base import ModelConfig
from itm.models.base import InputDims, Matcher, WordEmbedder
from itm.registry import Registry


@dataclass
class ModelSpec:
    """One registered name: ``builder(config, dims, words)``, its config class, and the config values
    the variant fixes (applied before the user's own)."""

    builder: Callable[..., Matcher]
    config_class: type[ModelConfig]
    presets: dict[str, Any] = field(default_factory=dict)
    help: str = ""


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, builder: Callable[..., Matcher], config_class: type[ModelConfig], help: str,
                   **presets: Any) -> None:
    """Register a model name: how to build it, its config class, and the config values it fixes."""
    MODELS.add(name, ModelSpec(builder, config_class, dict(presets), help), help)


def model_presets(name: str) -> dict[str, Any]:
    """The config fields a registered variant sets (applied before the user's own values)."""
    return dict(MODELS.get(name).presets)


def build_model(config: ModelConfig, dims: InputDims, words: WordEmbedder) -> Matcher:
    return MODELS.get(config.name).builder(config, dims, words)

