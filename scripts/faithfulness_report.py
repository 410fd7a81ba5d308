"""The README's faithfulness table and curve plot, from a merged store with curves.

    python scripts/faithfulness_report.py out/demo-faithfulness.zarr \
        --figure docs/demo-faithfulness.png

Prints a markdown table: per method, AOPC of the MoRF, random and LeRF orders with their
95 % bootstrap intervals (from the store's `metrics` and `intervals`, written by
`heatjob merge`), and MoRF minus random. The figure: the mean curve over rows of each
method's MoRF order (solid), its LeRF order (dashed) and the random order (grey, the same
for every method), each as the target logit's drop f(x_0) - f(x_k).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heatjob.store.curves import curve_settings, read_curves  # noqa: E402
from heatjob.store.layout import open_store  # noqa: E402


def cell(value, interval) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.2f}"


def table(metrics: dict, intervals: dict, orders: list[str]) -> str:
    shown = [o for o in ("morf", "random", "lerf") if o in orders]
    head = ["method", *(f"AOPC {o}" for o in shown)]
    both = "morf" in shown and "random" in shown
    if both:
        head.append("morf − random")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, values in metrics.items():
        cells = [
            cell(values.get(f"aopc_{o}"), intervals.get(name, {}).get(f"aopc_{o}")) for o in shown
        ]
        if both:
            cells.append(f"{values['aopc_morf'] - values['aopc_random']:+.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(root, sources: list[str], settings: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(settings["steps"] + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.get_cmap("tab10" if len(sources) <= 10 else "tab20")
    for i, source in enumerate(sources):
        for order, style in (("morf", "-"), ("lerf", "--")):
            if order in settings["order"]:
                c = read_curves(root, source, order).astype(np.float64)
                drop = np.nanmean(c[:, :1] - c, axis=0)
                ax.plot(
                    steps, drop, style, color=colours(i), label=source if order == "morf" else None
                )
    if "random" in settings["order"]:
        c = read_curves(root, sources[0], "random").astype(np.float64)
        ax.plot(steps, np.nanmean(c[:, :1] - c, axis=0), color="0.5", lw=2.5, label="random order")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel(f"patches of {settings['patch']} px replaced ({settings['baseline']} baseline)")
    ax.set_ylabel("mean drop of the target logit")
    ax.set_title("Region perturbation: MoRF (solid), LeRF (dashed), random (grey)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--figure", default="")
    args = parser.parse_args(argv)
    root, info = open_store(args.store)
    settings = curve_settings(root)
    if not settings or "metrics" not in root.attrs:
        sys.exit(f"{args.store}: no curves, or not merged (heatjob evaluate, heatjob merge)")
    metrics = {
        k: v for k, v in root.attrs["metrics"].items() if "aopc_morf" in v or "aopc_random" in v
    }
    print(table(metrics, dict(root.attrs.get("intervals", {})), settings["order"]))
    if args.figure:
        figure(root, info.sources, settings, args.figure)
        print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
