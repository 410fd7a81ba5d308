"""The benchmarks still run, heatjob still equals zennit in them, and their JSON holds what the
README tables are built from (bench/run.py --quick, bench/job.py --quick, bench/table.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True, timeout=600
    )
    return done.stdout


def test_quick_benchmark_runs_and_matches_zennit(tmp_path: Path) -> None:
    run(str(BENCH / "run.py"), "--quick", "--device", "cpu", "--out", str(tmp_path))
    report = json.loads((tmp_path / "engine-cpu-latest.json").read_text())
    assert len(list(tmp_path.glob("engine-cpu-*.json"))) == 2
    assert {r["arch"] for r in report["results"]} == {"vgg11", "resnet18"}
    for result in report["results"]:
        for key in ("baseline_s", "heatjob_s", "zennit_s"):
            assert result[key] > 0
        assert result["max_rel_diff"] <= 1e-5
        assert set(result["peak_mb"]) == {"baseline", "heatjob", "zennit"}
        targets = result["targets"]
        assert targets["targets_per_image"] == 4 and targets["shared_s"] > 0
        assert targets["max_rel_diff"] <= 1e-5  # shared forward pass = one pass per target
        (bf16,) = result["precisions"]
        assert bf16["precision"] == "bfloat16" and bf16["finite"]
        assert 0 < bf16["rel_l2_mean"] < 0.5 and bf16["pearson_min"] > 0.9
    assert report["geomean_zennit_over_heatjob"] > 0
    tables = run(str(BENCH / "table.py"), str(tmp_path))
    assert "| vgg11 | EpsilonPlusFlat |" in tables and "bfloat16" in tables


@pytest.mark.slow
def test_quick_job_benchmark_compares_store_with_plain_loop(tmp_path: Path) -> None:
    run(str(BENCH / "job.py"), "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "job-latest.json").read_text())
    assert report["images"] == 48 and report["heatmap_rows"] == report["plain_rows"] > 48
    assert report["job_s"] > 0 and report["plain_loop_s"] > 0
    # float16 in the store against zennit's float32 .npy files
    assert max(report["max_rel_diff_store_vs_plain"].values()) < 2e-3
    assert 0 < report["store_bytes_per_heatmap_pixel"] < 2.5
    assert report["npy_bytes_per_heatmap_pixel"] > 4
    assert "| 48 |" in run(str(BENCH / "table.py"), str(tmp_path))
