"""bench/metrics_bench.py still runs (tiny sizes) and reports rows/s for both sides."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "metrics_bench.py"


@pytest.mark.slow
def test_metrics_benchmark_runs(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(BENCH),
        "--rows",
        "16",
        "--quantus-rows",
        "4",
        "--size",
        "32",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    speed = json.loads((tmp_path / "metrics-latest.json").read_text())["speed"]
    assert speed["rows"] == 16 and speed["quantus_rows"] == 4
    assert speed["heatjob_rows_per_s"] > 0 and speed["quantus_rows_per_s"] > 0
    rounds = speed["all_rounds"]
    assert speed["ratio"] == round(rounds["heatjob"][0] / rounds["quantus"][0], 1)
