"""The demo as the README shows it: jobs/demo.toml run for real (submit, then merge), its
metric table and the claims the README makes about its analysis checked on that store."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import heatjob
from heatjob.eval.merge import merge
from heatjob.eval.report import format_table
from heatjob.job.submit import submit
from heatjob.spec import load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.zarr"
    spec = load_spec(ROOT / "jobs" / "demo.toml")
    spec = with_overrides(
        spec,
        store={"path": str(path)},
        model={"checkpoint": str(ROOT / spec.model.checkpoint)},
        run={"workers": 1},
    )
    submit(spec, progress=False)
    return path, merge(str(path), progress=False)


def _readme_table() -> list[str]:
    block = re.search(r"```\n(composite +PG.*?)```", README.read_text(), re.S)
    assert block, "README shows no demo metric table"
    return block.group(1).rstrip("\n").splitlines()


@pytest.mark.slow
def test_the_readme_table_is_what_merge_prints_for_the_demo(demo):
    _, report = demo
    printed = format_table(report).splitlines()
    assert _readme_table() == printed[: len(_readme_table())]


def _said(pattern: str) -> re.Match:
    for path in DOCS:
        found = re.search(pattern, path.read_text(), re.S)
        if found:
            return found
    raise AssertionError(f"no page says {pattern!r}")


def _assert_best(best, winner: str, exception: str | None, other: str | None) -> None:
    if exception is None:
        assert best.eq(winner).all(), best
    else:
        assert best.drop(exception).eq(winner).all() and best[exception] == other, best


@pytest.mark.slow
def test_the_analysis_claims_hold_on_the_demo_store(demo):
    path, _ = demo
    ds = heatjob.open_store(str(path))
    best = ds.pixel_ap.groupby("row_class").mean().idxmax("composite").to_series()
    gap = abs(
        ds.relevance_mass.sel(composite="cmp-a2b1-flat")
        - ds.relevance_mass.sel(composite="EpsilonPlusFlat")
    ).to_series()
    maps = ds.heatmap.sel(row=ds.row_sample_id == "synthetic-000004")

    claim = _said(r"`best` says (\S+) for every class(?: but \"(\w+)\" \((\S+?):)?")
    _assert_best(best, *claim.groups())
    lrp = [
        c
        for c in ds.composite.values
        if c in ds.attrs["heatjob"]["spec"]["attribution"]["composites"]
    ]
    best_lrp = ds.pixel_ap.sel(composite=lrp).groupby("row_class").mean().idxmax("composite")
    claim = _said(
        r"among the composites alone,\s+(\S+)\s+for\s+every\s+class\s+but\s+\"(\w+)\"\s+\((\S+?):"
    )
    _assert_best(best_lrp.to_series(), *claim.groups())
    claim = _said(r"`gap` starts at row (\d+), where μ differs by ([\d.]+)")
    assert int(gap.idxmax()) == int(claim.group(1))
    assert round(float(gap.max()), 2) == float(claim.group(2))
    claim = _said(r"`maps` holds (\d+) composites and methods × (\d+) rows")
    assert maps.sizes["composite"] == int(claim.group(1))
    assert maps.sizes["row"] == int(claim.group(2))
    assert not np.isnan(maps.values).any()
