"""Layer-wise Relevance Propagation: rules, composites, canonizing, and the Explainer."""

from heatjob.attribution.lrp.composites import composite_names, describe_composite
from heatjob.attribution.lrp.engine import Explainer, ensure_supported, explainers_for

__all__ = [
    "Explainer",
    "composite_names",
    "describe_composite",
    "ensure_supported",
    "explainers_for",
]
