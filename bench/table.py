"""Print the tables of docs/benchmarks.md (markdown) from bench/results/*-latest.json."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import precision_table, table, targets_table  # noqa: E402


def engine_tables(report: dict) -> str:
    meta = report["meta"]
    results = report["results"]
    worst = max(r["heatjob_over_baseline"] for r in results)
    lines = [
        f"{meta['device_name']}, {meta['cpu_count']} cores, torch {meta['torch']}, "
        f"{meta['threads']} threads, batch {meta['batch']}, {meta['size']} px, best of "
        f"{meta['repeats']}, {meta['date']}; load average {meta['loadavg_1min_before']:.1f} "
        f"before, {meta.get('loadavg_1min_after') or math.nan:.1f} after",
        "",
        table(results),
        "",
        f"geomean zennit/heatjob: {report['geomean_zennit_over_heatjob']:.2f}; "
        f"worst heatjob/base: {worst:.2f}",
        "",
        "Peak memory each method adds while it runs (MB):",
        "",
        "| arch | composite | baseline | heatjob | zennit |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        peak = r["peak_mb"]
        lines.append(
            f"| {r['arch']} | {r['composite']} | {peak['baseline']:.0f} | {peak['heatjob']:.0f} "
            f"| {peak['zennit']:.0f} |"
        )
    lines += ["", targets_table(results), "", precision_table(results)]
    return "\n".join(lines)


def job_table(report: dict) -> str:
    return "\n".join(
        [
            "| images | rows x composites | heatjob submit s | plain loop s | plain/job | "
            "store B/px | .npy B/px | max rel diff |",
            "|---|---|---|---|---|---|---|---|",
            f"| {report['images']} | {report['heatmap_rows']} x {len(report['composites'])} | "
            f"{report['job_s']:.1f} | {report['plain_loop_s']:.1f} | "
            f"{report['plain_over_job']:.2f} | {report['store_bytes_per_heatmap_pixel']:.2f} | "
            f"{report['npy_bytes_per_heatmap_pixel']:.2f} | "
            f"{max(report['max_rel_diff_store_vs_plain'].values()):.1e} |",
            "",
            f"load average {report['meta']['loadavg_1min_before']:.1f} before, "
            f"{report['meta']['loadavg_1min_after']:.1f} after",
        ]
    )


def metrics_table(report: dict) -> str:
    s = report["speed"]
    rounds = s["all_rounds"]

    def row(name: str, key: str, best: float, ratio: str) -> str:
        low, high = min(rounds[key]), max(rounds[key])
        return f"| {name} | {best:,.0f} | {low:,.0f}–{high:,.0f} | {ratio} |"

    quantus = rounds["quantus"]
    return "\n".join(
        [
            f"{report['machine']}; {s['rows']} maps of {s['size']}x{s['size']} {s['dtype']}, "
            f"{s['quantus_rows']} of them for Quantus, {len(quantus)} rounds, {report['when']}; "
            f"load average {report['loadavg_1min_before']:.1f} before",
            "",
            "| scorer | rows/s, best round | rows/s, all rounds | heatjob / Quantus, median |",
            "|---|---|---|---|",
            row("heatjob, full per-row set", "heatjob", s["heatjob_rows_per_s"], f"{s['ratio']}x"),
            row(
                "heatjob, the four Quantus-like metrics",
                "heatjob_four",
                s["heatjob_four_rows_per_s"],
                f"{s['ratio_four']}x",
            ),
            f"| Quantus: {s['quantus_metrics'].replace(', ', ' + ')} | "
            f"{s['quantus_rows_per_s']:.1f} | {min(quantus):.1f}–{max(quantus):.1f} | |",
        ]
    )


def memory_table(report: dict) -> str:
    lines = [
        f"{report['machine']}, {report['when']}; load average "
        f"{report['loadavg_1min_before']:.1f} before",
        "",
        "| rows | heatmaps (float16) | merge s | peak RSS MB | after imports MB | "
        "merge's growth MB | bootstrap resamples |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in report["memory"]:
        lines.append(
            f"| {m['rows']:,} | {m['heatmap_bytes_float16'] / 1e9:.1f} GB | {m['merge_s']:.1f} | "
            f"{m['peak_rss_mb']:.0f} | {m['rss_after_import_mb']:.0f} | "
            f"{m['merge_growth_mb']:.0f} | {m['bootstrap_resamples']} |"
        )
    return "\n".join(lines)


def faithfulness_table(report: dict) -> str:
    quantus = "quantus_ms_per_heatmap_step" in report
    return "\n".join(
        [
            f"{report['device_name']}, {report['machine']}, torch {report['torch']}, "
            f"{report['threads']} threads, {report['when']}; {report['arch']} at "
            f"{report['size']} px, {report['rows']} rows, {report['steps']} steps of "
            f"{report['patch']} px patches, {' + '.join(report['orders'])}, mean baseline; "
            f"load average {report['loadavg_1min_before']:.1f} before, "
            f"{report['loadavg_1min_after']:.1f} after",
            "",
            "| heatmap (LRP) ms/row | curves ms per heatmap-step, batched "
            f"({report['batch']} images) | one forward per step | batching gain | "
            "Quantus RegionPerturbation | max abs diff (batched vs single, vs Quantus) |",
            "|---|---|---|---|---|---|",
            f"| {report['heatmap_ms_per_row']:.1f} | {report['batched_ms_per_heatmap_step']:.2f} | "
            f"{report['one_forward_per_step_ms_per_heatmap_step']:.2f} | "
            f"{report['batching_gain']:.2f}x | "
            + (f"{report['quantus_ms_per_heatmap_step']:.2f} | " if quantus else "- | ")
            + f"{report['max_abs_diff_batched_vs_single']:.1e}, "
            + (f"{report['max_abs_diff_vs_quantus']:.1e} |" if quantus else "- |"),
        ]
    )


def methods_table(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"{meta['device_name']}, {meta['cpu_count']} cores, torch {meta['torch']}, "
        f"{meta['threads']} thread(s), {meta['batch']} images x {meta['targets']} targets, "
        f"{meta['size']} px, best of {meta['repeats']}, {meta['date']}; load average "
        f"{meta['loadavg_1min_before']:.1f} before, {meta['loadavg_1min_after']:.1f} after",
        "",
        "| arch | method | parameters | ms per heatmap | / forward+backward |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['arch']} | plain forward+backward | | {r['baseline_s_per_heatmap'] * 1e3:.1f} "
            "| 1.00 |"
        )
        for m in r["methods"]:
            params = ", ".join(
                f"{k} {v}" for k, v in m["table"].items() if k in ("steps", "samples", "preset")
            )
            lines.append(
                f"| {r['arch']} | {m['method']} | {params} | {m['s_per_heatmap'] * 1e3:.1f} "
                f"| {m['over_baseline']:.2f} |"
            )
    return "\n".join(lines)


def vit_table(report: dict) -> str:
    lines = [
        "| arch | composite | heatjob / plain forward+backward |",
        "| --- | --- | --- |",
    ]
    for r in report["results"]:
        lines.append(f"| {r['arch']} | {r['composite']} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


TABLES = {  # results file -> its table, in the order docs/benchmarks.md shows them
    "job-latest.json": job_table,
    "methods-cpu-latest.json": methods_table,
    "metrics-latest.json": metrics_table,
    "metrics-memory-latest.json": memory_table,
    "faithfulness-cpu-latest.json": faithfulness_table,
    "faithfulness-cuda-latest.json": faithfulness_table,
    "vit-cpu-latest.json": vit_table,
}


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv or sys.argv[1:] or ["bench/results"])[0])
    for path in sorted(folder.glob("engine-*-latest.json")):
        print(f"### {path.name}\n\n{engine_tables(json.loads(path.read_text()))}\n")
    for name, make in TABLES.items():
        if (folder / name).exists():
            print(f"### {name}\n\n{make(json.loads((folder / name).read_text()))}\n")


if __name__ == "__main__":
    main()
