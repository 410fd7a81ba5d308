"""Layer-wise Relevance Propagation: rules, composites, canonizing, and the Explainer."""

from heatjob.attribution.lrp.composites import composite_names, describe_composite
from heatjob.attribution.lrp.engine import Explainer, ensure_supported, explainers_for

# Fill the table of layer handlers with the transformer layers (LayerNorm, attention, GELU) and
# Swin's window attention and patch merging.
from heatjob.attribution.lrp import transformer  # noqa: E402, F401  isort: skip
from heatjob.attribution.lrp import swin  # noqa: E402, F401  isort: skip

__all__ = [
    "Explainer",
    "composite_names",
    "describe_composite",
    "ensure_supported",
    "explainers_for",
]
