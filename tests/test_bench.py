"""The engine benchmark still runs, and heatjob still equals zennit in it (bench/run.py --quick)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def test_quick_benchmark_runs_and_matches_zennit(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH), "--quick", "--device", "cpu", "--out", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "engine-cpu-latest.json").read_text())
    assert len(list(tmp_path.glob("engine-cpu-*.json"))) == 2
    assert {r["arch"] for r in report["results"]} == {"vgg11", "resnet18"}
    for result in report["results"]:
        for key in ("baseline_s", "heatjob_s", "zennit_s"):
            assert result[key] > 0
        assert result["max_rel_diff"] <= 1e-5
    assert report["geomean_zennit_over_heatjob"] > 0
