"""Pictures of a store: heatmap overlays, a grid across composites, the metrics figure.

Overlays show the input image as the model saw it (resized, or resized and cropped, to
S x S as the spec's [dataset] resize says, reopened
through heatjob.data from the spec in the store), the heatmap in a diverging colour
map centred at 0 (red positive, blue negative, each map scaled by its own largest
magnitude), the target's boxes (solid) and the other classes' boxes (dashed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from heatjob.errors import HeatjobError  # noqa: E402
from heatjob.eval import metrics  # noqa: E402
from heatjob.store import schema
from heatjob.store.layout import open_store  # noqa: E402

CMAP = "bwr"
FIGURE_METRICS = [
    (name, schema.METRIC_TITLES[name])
    for name in schema.METRIC_NAMES
    if name not in ("other_class_mass", "n_rows")
]


def parse_rows(text: str) -> list[int]:
    """'0,5,9-12' -> [0, 5, 9, 10, 11, 12]; a bad item is a one-line error."""
    out: list[int] = []
    for item in text.split(","):
        lo, _, hi = item.strip().partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise HeatjobError(
                f"--rows: {item.strip()!r} is not a row or a range like 10-20"
            ) from None
    return out


def choose_rows(n_rows: int, rows: list[int] | None, sample: int | None, seed: int) -> list[int]:
    """The rows asked for, or `sample` rows drawn at random (seeded), in store order."""
    if rows:
        bad = [r for r in rows if not 0 <= r < n_rows]
        if bad:
            raise HeatjobError(f"--rows: row {bad[0]} is out of range (the store has {n_rows})")
        return list(dict.fromkeys(rows))
    k = min(n_rows, sample if sample is not None else 6)
    if k < 1:
        raise HeatjobError("--sample: must be at least 1")
    return sorted(np.random.default_rng(seed).choice(n_rows, size=k, replace=False).tolist())


def _input_images(info, samples: list[int], notes: list[str]) -> dict[int, np.ndarray | None]:
    """The model's view of each sample (RGB, S x S, uint8), or None when the data is gone."""
    from heatjob.data import open_job_dataset
    from heatjob.data.transforms import model_view
    from heatjob.spec import parse_spec

    try:
        spec = parse_spec(info.attrs["spec"], source=f"{info.path} spec")
        dataset = open_job_dataset(spec)
    except HeatjobError as exc:
        notes.append(f"input images not drawn: {exc}")
        return dict.fromkeys(samples)
    out: dict[int, np.ndarray | None] = {}
    for s in samples:
        try:
            image = dataset.load_image(s).convert("RGB")
        except (HeatjobError, OSError) as exc:
            notes.append(f"sample {s}: input image not drawn: {exc}")
            out[s] = None
            continue
        ds = spec.dataset
        out[s] = np.asarray(model_view(image, ds.image_size, ds.resize, ds.resize_to))
    return out


class _Row:
    """What one overlay needs: heatmap, image, boxes, caption numbers."""

    def __init__(self, root, boxes: tuple, row: int, image, classes: list[str]):
        self.row = row
        self.sample = int(root[schema.ROW_SAMPLE][row])
        self.target = int(root[schema.ROW_TARGET][row])
        self.name = classes[self.target] if self.target < len(classes) else str(self.target)
        self.sample_id = str(root[schema.SAMPLE_ID][self.sample])
        self.image = image
        bs, bc, xyxy = boxes
        here = bs == self.sample
        self.boxes = xyxy[here & (bc == self.target)]
        self.other_boxes = xyxy[here & (bc != self.target)]
        self.size = root[schema.SAMPLE_SIZE][self.sample]


def _scores(heatmap: np.ndarray, row: _Row) -> str:
    """Caption numbers: relevance mass and pointing game for this map."""
    if not np.isfinite(heatmap).all():
        return "not computed (NaN)"
    if not len(row.boxes):
        return "no box of the target"
    maps = heatmap[None].astype(np.float32)
    mask = metrics.box_masks([row.boxes], heatmap.shape[-1])
    mu = metrics.relevance_mass(maps, mask)[0]
    hit = metrics.pointing_game_hits(maps, [row.boxes], row.size[None])[0]
    return f"μ={mu:.2f}  PG {'hit' if hit else 'miss'}"


def _draw(ax, heatmap: np.ndarray, row: _Row, title: str) -> None:
    s = heatmap.shape[-1]
    if row.image is not None:
        grey = row.image.astype(np.float32).mean(axis=2) / 255.0
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=(0, s, s, 0))
    finite = np.where(np.isfinite(heatmap), heatmap, 0.0)
    limit = float(np.abs(finite).max()) or 1.0
    rgba = matplotlib.colormaps[CMAP]((finite / limit + 1) / 2)
    if row.image is not None:  # opaque where relevance is strong, the image shows elsewhere
        rgba[..., 3] = np.clip(2.5 * np.abs(finite) / limit, 0.15, 0.95)
    ax.imshow(rgba, extent=(0, s, s, 0), interpolation="nearest")
    for boxes, style, colour in ((row.other_boxes, "--", "0.3"), (row.boxes, "-", "lime")):
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls=style, lw=1.5, ec=colour)
            )
    ax.set_xlim(0, s)
    ax.set_ylim(s, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def _draw_image(ax, row: _Row, s: int) -> None:
    if row.image is not None:
        ax.imshow(row.image, extent=(0, s, s, 0))
    for x0, y0, x1, y1 in row.boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec="lime"))
    ax.set_xlim(0, s)
    ax.set_ylim(s, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"row {row.row}: {row.name}\nsample {row.sample_id}", fontsize=8)


def render(
    path: str,
    out_dir: str,
    rows: list[int] | None = None,
    sample: int | None = None,
    seed: int = 0,
    composites: list[str] | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Write one overlay per row and composite, and grid.png (rows x composites)."""
    root, info = open_store(path)
    names = composites or info.composites
    unknown = [c for c in names if c not in info.composites]
    if unknown:
        raise HeatjobError(
            f"--composite: {unknown[0]!r} is not in the store ({', '.join(info.composites)})"
        )
    n_rows = root[schema.ROW_SAMPLE].shape[0]
    chosen = choose_rows(n_rows, rows, sample, seed)
    notes = notes if notes is not None else []
    samples = sorted({int(root[schema.ROW_SAMPLE][r]) for r in chosen})
    images = _input_images(info, samples, notes)
    classes = list(info.attrs.get("classes", []))
    boxes = (root[schema.BOX_SAMPLE][:], root[schema.BOX_CLASS][:], root[schema.BOX_XYXY][:])
    drawn = [_Row(root, boxes, r, images[int(root[schema.ROW_SAMPLE][r])], classes) for r in chosen]
    heatmaps = {
        c: {r: root[schema.heatmaps(c)][r].astype(np.float32) for r in chosen} for c in names
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row in drawn:
        for c in names:
            fig, ax = plt.subplots(figsize=(3.2, 3.5), dpi=100)
            h = heatmaps[c][row.row]
            _draw(
                ax, h, row, f"{row.name} (row {row.row}, {row.sample_id})\n{c}: {_scores(h, row)}"
            )
            fig.tight_layout()
            file = out / f"row{row.row:06d}-{c}.png"
            fig.savefig(file)
            plt.close(fig)
            written.append(file)
    cell = 2.0
    fig, axes = plt.subplots(
        len(drawn),
        1 + len(names),
        figsize=(cell * (1 + len(names)), cell * 1.15 * len(drawn)),
        squeeze=False,
        dpi=100,
    )
    for i, row in enumerate(drawn):
        _draw_image(axes[i, 0], row, info.image_size)
        for j, c in enumerate(names, start=1):
            h = heatmaps[c][row.row]
            _draw(axes[i, j], h, row, f"{c}\n{_scores(h, row)}")
    fig.tight_layout()
    grid = out / "grid.png"
    fig.savefig(grid)
    plt.close(fig)
    written.append(grid)
    return written


def metrics_figure(report, path: str) -> Path:
    """One panel per metric: each composite's value with its 95 % bootstrap interval,
    the baselines as dashed lines."""
    names = list(report.metrics)
    panels = [
        (k, label)
        for k, label in FIGURE_METRICS
        if any(report.metrics[c].get(k) is not None for c in names)
    ]
    if not panels:
        raise HeatjobError(f"{report.store}: no metric to draw (the data set has no boxes)")
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, max(2.2, 0.32 * len(names) + 1.2) * rows), squeeze=False
    )
    y = np.arange(len(names))
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        values = np.array(
            [np.nan if report.metrics[c][key] is None else report.metrics[c][key] for c in names]
        )
        ci = [report.intervals.get(c, {}).get(key) for c in names]
        lo = np.array([values[i] - v[0] if v else 0.0 for i, v in enumerate(ci)])
        hi = np.array([v[1] - values[i] if v else 0.0 for i, v in enumerate(ci)])
        ax.errorbar(values, y, xerr=[lo, hi], fmt="o", color="C0", capsize=3)
        for b, colour in zip(report.baselines, ("0.5", "0.7"), strict=False):
            v = report.baselines[b].get(key)
            if v is not None:
                ax.axvline(v, ls="--", color=colour, lw=1, label=b)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(
        f"{Path(str(report.store)).name}: metrics per composite, 95% bootstrap intervals "
        "(dashed: baselines)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
