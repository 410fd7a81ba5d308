"""The package layout's rules, checked on the source by scripts/import_graph.py: no import
cycle, Ray only in heatjob/job/runner.py, Zarr only under heatjob/store/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"
sys.path.insert(0, str(SCRIPT.parent))
import import_graph  # noqa: E402


def test_the_package_has_no_cycle_and_ray_and_zarr_stay_at_the_edges():
    edges, outside = import_graph.graph()
    assert import_graph.problems(edges, outside) == []
    assert "ray" in outside["heatjob.job.runner"]
    assert "zarr" in outside["heatjob.store.layout"]
    # the step modules import what the flow says: submit runs through runner, merge reads
    # the store through store/, and the pure core depends on nothing of heatjob's
    assert "heatjob.job.runner" in edges["heatjob.job.submit"]
    assert "heatjob.store.layout" in edges["heatjob.eval.merge"]
    assert edges["heatjob.eval.metrics"] == set() and edges["heatjob.job.plan"] == set()


def test_the_checker_finds_a_cycle_and_a_stray_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    outside = {"a": set(), "b": set(), "c": set(), "d": {"ray", "zarr"}}
    found = import_graph.problems(edges, outside)
    assert "cycle: a -> b -> c -> a" in found
    assert any(line.startswith("d imports ray") for line in found)
    assert any(line.startswith("d imports zarr") for line in found)


def test_the_script_prints_the_graph_and_passes():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "heatjob.job.runner -> " in done.stdout and "[ray" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("ok: ")
