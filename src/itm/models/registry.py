"""Registered matchers and their variants: a variant is a builder, a config class and presets.

A model module registers itself on import (``register_model``); importing ``itm.models`` imports
every model module. The config side of each entry (class and presets) lives in
``itm.config.MODEL_CONFIGS``, so that configs resolve without config.py importing a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itm.config import ModelConfig, model_entry, register_model_config
from itm.models.base import Matcher, WordEmbedder
from itm.registry import Registry


@dataclass
class ModelSpec:
    """How to build one registered model: ``builder(config, dims, words)``."""

    builder: Callable[..., Matcher]
    help: str = ""


@dataclass
class InputDims:
    """Feature widths a model is built for (read from the data, stored in checkpoints)."""

    word_dim: int  # E
    region_dim: int  # M (also the width of the whole-image vector)
    object_dim: int  # Q
    vocab_size: int


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, builder: Callable[..., Matcher], config_class: type[ModelConfig], help: str,
                   **presets: Any) -> None:
    """Register a model name: how to build it, its config class, and the config values it fixes."""
    MODELS.add(name, ModelSpec(builder, help), help)
    register_model_config(name, config_class, presets)


def model_presets(name: str) -> dict[str, Any]:
    """The config fields a registered variant sets (applied before the user's own values)."""
    return dict(model_entry(name).presets)


def build_model(config: ModelConfig, dims: InputDims, words: WordEmbedder) -> Matcher:
    return MODELS.get(config.name).builder(config, dims, words)
