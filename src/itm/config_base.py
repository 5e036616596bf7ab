"""The pieces of the config that the model registry and every model file need: the base class of a
model's config section and the range checks of a section's fields.

A leaf module (it imports nothing of itm but the errors), so that ``itm.config`` can resolve the
``model`` section through ``itm.models.registry`` while the registry and the models import this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from itm.errors import ConfigError

DEFAULT_MODEL = "bssan"  # the model section's name when a config gives none


@dataclass
class ModelConfig:
    """The base of every model's config. ``name`` is a key of the model registry (``itm models``);
    each model registers its own subclass with its fields (``itm.models.registry.register_model``)
    and checks them in ``validate``."""

    name: str = DEFAULT_MODEL

    # test presets: the shared tests never name a model, each model says how to make it small
    TINY: ClassVar[dict[str, Any]] = {}  # model field values of a tiny instance: contract checks, smoke runs
    # dotted overrides (model.* and train.*) under which a few epochs on synthetic data learn well
    # above chance (the short training run every registered model gets in tests/test_models.py)
    SHORT_RUN: ClassVar[dict[str, Any]] = {}

    def validate(self) -> None:
        """Range and choice checks of the model's own fields: ConfigError naming ``model.<key>``."""


def check_fields(section: str, obj: Any, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 fraction: tuple[str, ...] = (), optional_positive: tuple[str, ...] = (),
                 positive_lists: tuple[str, ...] = (), choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """Range and choice checks of one section's fields; a one-line ConfigError naming the key.
    ``fraction``: in [0, 1); ``optional_positive``: positive or null."""
    def fail(key: str, what: str) -> None:
        raise ConfigError(f"{section}.{key}: {what}, got {getattr(obj, key)!r}")

    for key, allowed in (choices or {}).items():
        if getattr(obj, key) not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}")
    for key in positive:
        if getattr(obj, key) <= 0:
            fail(key, "must be positive")
    for key in non_negative:
        if getattr(obj, key) < 0:
            fail(key, "must not be negative")
    for key in fraction:
        if not 0 <= getattr(obj, key) < 1:
            fail(key, "must be in [0, 1)")
    for key in optional_positive:
        if getattr(obj, key) is not None and getattr(obj, key) <= 0:
            fail(key, "must be positive or null")
    for key in positive_lists:
        if any(size <= 0 for size in getattr(obj, key)):
            fail(key, "sizes must be positive")
