"""Matchers: every model scores image-caption pairs through one contract (``base.Matcher``)."""

from itm.models.registry import MODELS, build_model, model_presets

__all__ = ["MODELS", "build_model", "model_presets"]
