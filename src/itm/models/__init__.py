"""Matchers: every model scores image-caption pairs through one contract (``base.Matcher``).

Importing this package registers every model (one module each, timm-style)."""

from itm.models import bssan, caan, dual, mlasm  # noqa: F401  (each registers itself)
from itm.models.registry import MODELS, build_model, model_presets

__all__ = ["MODELS", "build_model", "model_presets"]
