"""Text tables of a merge report: the metrics with baselines and intervals, per class,
per target size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heatjob.store import schema

if TYPE_CHECKING:
    from heatjob.eval.merge import MergeReport

TABLE_COLUMNS = [
    (name, schema.METRIC_LABELS[name]) for name in schema.METRIC_NAMES if name != "other_class_mass"
]


def _cell(value: float | int | None, width: int = 9) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}d}" if isinstance(value, int) else f"{value:>{width}.3f}"


def _grid(title: str, groups: list[dict[str, dict]], columns, cell=_cell) -> list[str]:
    names = [n for group in groups for n in group]
    width = max(len(n) for n in [*names, title])
    head = title.ljust(width) + "".join(f"{label:>9}" for _, label in columns)
    lines = [head, "-" * len(head)]
    for i, group in enumerate(groups):
        for name, values in group.items():
            lines.append(name.ljust(width) + "".join(cell(values.get(k)) for k, _ in columns))
        if i < len(groups) - 1:
            lines.append("-" * len(head))
    return lines


def format_table(report: MergeReport) -> str:
    """The metrics as an aligned text table, baselines under the composites, then the
    95 % bootstrap intervals and the notes (rows left out and why)."""
    lines = _grid("composite", [report.metrics, report.baselines], TABLE_COLUMNS)
    if report.intervals:

        def interval(value) -> str:
            return f"{'-':>16}" if value is None else f"{f'[{value[0]:.3f},{value[1]:.3f}]':>16}"

        columns = [c for c in TABLE_COLUMNS if c[0] != "n_rows"]
        lines += ["", "95% intervals (bootstrap over images)"]
        names = [*report.metrics, *report.baselines]
        width = max(len(n) for n in [*names, "composite"])
        lines.append("composite".ljust(width) + "".join(f"{lab:>16}" for _, lab in columns))
        for name in names:
            values = report.intervals.get(name, {})
            lines.append(name.ljust(width) + "".join(interval(values.get(k)) for k, _ in columns))
    lines += format_faithfulness(report)
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def format_faithfulness(report: MergeReport) -> list[str]:
    """AOPC per source and order (logit units) with its 95 % interval; [] without curves."""
    orders = report.faithfulness.get("order", [])
    if not orders:
        return []
    s = report.faithfulness
    lines = [
        "",
        f"faithfulness: AOPC of the target logit (higher = removed faster), {s['steps']} "
        f"steps of {s['patch']} px patches, baseline {s['baseline']}, {s['rows']} rows",
    ]
    width = max(len(n) for n in [*report.metrics, "composite"])
    lines.append("composite".ljust(width) + "".join(f"{o:>24}" for o in orders))
    for name, values in report.metrics.items():
        cells = []
        for order in orders:
            key = schema.aopc_metric(order)
            value, interval = values.get(key), report.intervals.get(name, {}).get(key)
            text = "-" if value is None else f"{value:.3f}"
            if interval:
                text += f" [{interval[0]:.3f},{interval[1]:.3f}]"
            cells.append(f"{text:>24}")
        lines.append(name.ljust(width) + "".join(cells))
    return lines


def format_class_table(report: MergeReport) -> str:
    """Per composite, one line per class."""
    out = []
    for name, table in {**report.per_class}.items():
        if name in report.baselines:
            continue
        out += [*_grid(name, [table], TABLE_COLUMNS), ""]
    return "\n".join(out).rstrip()


def format_size_table(report: MergeReport) -> str:
    """Per composite and baseline, one line per box-size bin (share of the image covered)."""
    columns = [c for c in TABLE_COLUMNS if c[0] != "box_ap50"]
    rows = {
        f"{name} {size}": values
        for name, bins in report.by_size.items()
        for size, values in bins.items()
    }
    return "\n".join(_grid("composite, target size", [rows], columns))
