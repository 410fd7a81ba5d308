"""The README's faithfulness table: jobs/demo-faithfulness.toml run for real (submit with
the curves on the worker, then merge), the table scripts/faithfulness_report.py prints from
it standing in the README as printed, and the README's claim about it checked."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from heatjob.eval.merge import merge
from heatjob.job.submit import submit
from heatjob.spec import load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import faithfulness_report  # noqa: E402

COMPOSITES = ("lrp-z", "lrp-eps", "lrp-a1b0", "cmp-a1b0-flat", "cmp-a2b1-flat",
              "EpsilonPlusFlat", "EpsilonGammaBox")  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-faith") / "demo-faithfulness.zarr"
    spec = load_spec(ROOT / "jobs" / "demo-faithfulness.toml")
    spec = with_overrides(
        spec,
        store={"path": str(path)},
        model={"checkpoint": str(ROOT / spec.model.checkpoint)},
        run={"workers": 1},
    )
    submit(spec, progress=False)
    return merge(str(path), progress=False)


@pytest.mark.slow
def test_readme_shows_the_demo_faithfulness_table(demo):
    orders = demo.faithfulness["order"]
    metrics = {k: v for k, v in demo.metrics.items() if "aopc_morf" in v}
    printed = faithfulness_report.table(metrics, demo.intervals, orders)
    readme = (ROOT / "README.md").read_text()
    assert printed in readme, "README's faithfulness table is not the one the demo gives"
    assert re.search(r"scripts/faithfulness_report\.py out/demo-faithfulness\.zarr", readme)


@pytest.mark.slow
def test_lrp_composites_remove_the_logit_faster_than_the_random_order(demo):
    """The README's reading of its table."""
    lerf_rises = 0
    for name in COMPOSITES:
        values, intervals = demo.metrics[name], demo.intervals[name]
        assert values["aopc_morf"] > values["aopc_random"] > values["aopc_lerf"]
        # the 95 % intervals (paired draws over the same images) do not overlap
        assert intervals["aopc_morf"][0] > intervals["aopc_random"][1]
        assert intervals["aopc_lerf"][1] < intervals["aopc_random"][0]
        lerf_rises += values["aopc_lerf"] < 0
    assert lerf_rises == 5
    single = max(demo.metrics[n]["aopc_morf"] for n in COMPOSITES[:3])
    assert min(demo.metrics[n]["aopc_morf"] for n in COMPOSITES[3:]) > single


@pytest.mark.slow
def test_the_baseline_methods_read_as_the_readme_says(demo):
    """Grad-CAM about as faithful as the composites, integrated gradients between random and
    the composites, gradient and SmoothGrad removing as much least-relevant first."""
    m, ci = demo.metrics, demo.intervals
    morf = [m[name]["aopc_morf"] for name in COMPOSITES]
    assert ci["gradcam"]["aopc_morf"][0] > ci["gradcam"]["aopc_random"][1]
    assert min(morf) - 2 < m["gradcam"]["aopc_morf"] < max(morf) + 2
    ig = m["integrated-gradients"]
    assert ig["aopc_random"] < ig["aopc_morf"] < min(morf)
    for name in ("gradient", "smoothgrad"):
        assert m[name]["aopc_lerf"] > m[name]["aopc_random"]
        assert m[name]["aopc_lerf"] > m[name]["aopc_morf"] - 0.5
