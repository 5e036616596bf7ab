"""Image features: backbones, object proposals, RoIAlign pooling and the on-disk feature cache.

``extract_features(dataset, FeatureConfig())`` is the entry point; see docs/features.md.
"""

from itm.features.cache import default_cache_root
from itm.features.extract import ExtractionReport, extract_features

__all__ = ["ExtractionReport", "default_cache_root", "extract_features"]
