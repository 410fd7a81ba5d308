"""Attribution methods: LRP composites (heatjob.attribution.lrp) and the method kinds of
`[attribution.methods.<name>]` tables (heatjob.attribution.registry)."""

# every method module, so that the registry is complete once heatjob.attribution is imported
from heatjob.attribution import gradcam, gradient, lrp_method, occlusion  # noqa: F401
from heatjob.attribution.registry import method_kinds, parse_method, resolved

__all__ = ["method_kinds", "parse_method", "resolved"]
