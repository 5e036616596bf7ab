"""Retrieval metrics and evaluation protocols (Flickr 1K, COCO 5K, COCO 1K folds)."""

from itm.evaluation.metrics import EvaluationError, chance_metrics, format_table, retrieval_metrics
from itm.evaluation.protocols import PROTOCOLS, Protocol, evaluate_protocol

__all__ = [
    "PROTOCOLS",
    "EvaluationError",
    "Protocol",
    "chance_metrics",
    "evaluate_protocol",
    "format_table",
    "retrieval_metrics",
]
