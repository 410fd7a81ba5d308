"""The `heatjob` command line: submit, merge, status, render, composites, methods.

Errors a user can fix print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from heatjob.errors import HeatjobError

app = typer.Typer(
    help="LRP heatmaps for whole image data sets: shard over Ray, store in Zarr, score.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help text names spec keys like [store] path literally
)

F = TypeVar("F", bound=Callable)
_SHOWN_FAILURES = 10  # failed samples that `status` lists; --json lists all


def user_errors(command: F) -> F:
    """Turn HeatjobError into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HeatjobError as exc:
            typer.echo(f"heatjob: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("heatjob: interrupted; run the same command again to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def submit(
    spec: Annotated[Path, typer.Argument(help="The job spec (TOML).", show_default=False)],
    store: Annotated[
        str | None, typer.Option(help="Store path; overrides [store] path.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=0, help="Explain only the first N samples; overrides [dataset] limit."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Number of Ray workers; overrides [run] workers (0 = auto)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete an existing store and start over.")
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Also redo the done units holding samples whose image could not be read "
            "(after fixing the files).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan, store size and a time estimate from one calibration batch; "
            "write nothing.",
        ),
    ] = False,
) -> None:
    """Plan the job, shard it over Ray workers, write heatmaps into the store.

    Running it again on a partial store does only the units that are missing.
    """
    from heatjob.job.submit import apply_options
    from heatjob.job.submit import submit as run_submit
    from heatjob.spec import load_spec

    job = apply_options(load_spec(spec), store=store, limit=limit, workers=workers)
    if dry_run:
        from heatjob.job.dryrun import dry_run as plan_only
        from heatjob.job.dryrun import format_dry_run

        run = plan_only(job, address=address, progress=not quiet, overwrite=overwrite)
        typer.echo(format_dry_run(run))
        return
    summary = run_submit(
        job, address=address, overwrite=overwrite, progress=not quiet, retry_failed=retry_failed
    )
    if summary.units_run == 0:
        typer.echo(f"{summary.store}: all {summary.units_total} units already done")
        return
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    typer.echo(
        f"{summary.store}: {summary.units_run} of {summary.units_total} units written, "
        f"{summary.rows} rows x {len(job.attribution.sources)} heatmap sources "
        f"in {summary.seconds:.1f} s ({rate:.1f} rows/s, {summary.workers})"
    )


@app.command()
@user_errors
def merge(
    store: Annotated[str, typer.Argument(help="A finished heatjob store.", show_default=False)],
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write {source: {metric: value}} (composites and methods) to this file.",
        ),
    ] = None,
    figure: Annotated[
        Path | None,
        typer.Option(
            help="Also draw the metrics per composite and method with their intervals (PNG)."
        ),
    ] = None,
    per_class: Annotated[
        bool,
        typer.Option("--per-class", help="Also print one table per composite and method by class."),
    ] = False,
    by_size: Annotated[
        bool, typer.Option("--by-size", help="Also print the metrics by target box size.")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples of the images (0 = no intervals).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Score the units in Ray tasks, at most N at once (same numbers as without; "
            "default: in this process, no Ray).",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster whose tasks score the units (one per CPU unless --workers); "
            "with --workers alone: $RAY_ADDRESS, else a local Ray.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Score every composite and method (pointing game, relevance mass, AP); print a table.

    With --workers or --address the units are scored in Ray tasks; the store must be at
    the same path (or URL) on every node.
    """
    from heatjob.eval.report import format_class_table, format_size_table, format_table

    options = {"json_path": str(json_file) if json_file else None, "progress": not quiet}
    options |= {"resamples": bootstrap, "seed": seed, "figure": str(figure) if figure else None}
    if workers is None and address is None:
        from heatjob.eval.merge import merge as run_merge

        report = run_merge(store, **options)
    else:
        from heatjob.eval.merge_tasks import merge_on_ray

        report = merge_on_ray(store, workers, address, **options)
    typer.echo(format_table(report))
    if figure:
        typer.echo(f"wrote {figure}")
    if per_class and report.per_class:
        typer.echo("\n" + format_class_table(report))
    if by_size and report.by_size:
        typer.echo("\n" + format_size_table(report))


@app.command()
@user_errors
def evaluate(
    store: Annotated[str, typer.Argument(help="A finished heatjob store.", show_default=False)],
    steps: Annotated[
        int | None, typer.Option(help="Patches perturbed, one per step (default 20).")
    ] = None,
    patch: Annotated[int | None, typer.Option(help="Patch side in pixels (default 8).")] = None,
    order: Annotated[
        list[str] | None,
        typer.Option(help="morf, lerf or random; repeat for several (default all three)."),
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="mean, zero, blur or noise (default mean).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random order and noise.")] = None,
    batch_size: Annotated[
        int, typer.Option(min=0, help="Images per forward pass (0 = the spec's batch_size).")
    ] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace curves made with other settings.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Perturbation curves (faithfulness) of a finished store's heatmaps, without
    recomputing them; resumes an interrupted run. `heatjob merge` then reports AOPC."""
    from heatjob.job.evaluate import describe
    from heatjob.job.evaluate import evaluate as run_evaluate

    given = {"steps": steps, "patch": patch, "order": order, "baseline": baseline, "seed": seed}
    options = {k: v for k, v in given.items() if v is not None}
    summary = run_evaluate(
        store, options, overwrite=overwrite, batch_size=batch_size, progress=not quiet
    )
    typer.echo(describe(summary))


@app.command()
@user_errors
def status(
    store: Annotated[str, typer.Argument(help="A heatjob store.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Recompute every done unit's checksum; exit 1 on a mismatch."
        ),
    ] = False,
) -> None:
    """How far a job has come: units and rows done per composite and method, retries, failures."""
    from heatjob.store.status import job_status

    report = job_status(store, verify=verify)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_status(report, list(report["composites"]))
    if report.get("verify", {}).get("mismatches"):
        raise typer.Exit(1)


def _print_status(report: dict, composites: list[str]) -> None:
    units, done = report["units_total"], report["units_done"]
    state = "complete" if done == units else "incomplete"
    typer.echo(
        f"{report['store']}: {state}, {done}/{units} units, "
        f"{report['rows_done']}/{report['rows_total']} rows"
    )
    width = max(len(c) for c in composites)
    for composite in composites:
        typer.echo(f"  {composite.ljust(width)}  {done}/{units} units")
    if "writers" in report:
        procs, nodes = report["writers"]["processes"], report["writers"]["nodes"]
        typer.echo(
            f"  written by: {procs} worker process{'es' * (procs != 1)} "
            f"on {nodes} node{'s' * (nodes != 1)}"
        )
    retried = report["retried_units"]
    extra = sum(retried.values()) - len(retried)
    typer.echo(
        f"  retries: {extra} (units {', '.join(map(str, retried))})" if retried else "  retries: 0"
    )
    if report.get("boxes_cropped_away"):
        count = report["boxes_cropped_away"]
        typer.echo(f"  boxes cropped away: {count} (outside the centre crop; not in boxes/)")
    failures = report["failures"]
    typer.echo(f"  failures: {len(failures)} sample{'s' if len(failures) != 1 else ''}")
    for failure in failures[:_SHOWN_FAILURES]:
        typer.echo(f"    {failure['id']}: {failure['reason']}")
    if len(failures) > _SHOWN_FAILURES:
        typer.echo(f"    ... {len(failures) - _SHOWN_FAILURES} more (status --json lists all)")
    if "verify" in report:
        checked, mismatches = report["verify"]["units_checked"], report["verify"]["mismatches"]
        unrecorded = report["verify"]["units_without_checksum"]
        note = f" ({unrecorded} without a checksum: older heatjob)" if unrecorded else ""
        typer.echo(f"  verify: {checked - len(mismatches)}/{checked} done units check out{note}")
        for mismatch in mismatches:
            typer.echo(f"    unit {mismatch['unit']}: {mismatch['problem']}")
    typer.echo(f"  merged: {'yes' if report['merged'] else 'no'}")


@app.command()
@user_errors
def render(
    store: Annotated[str, typer.Argument(help="A heatjob store.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs.", show_default=False)],
    rows: Annotated[
        str | None, typer.Option(help="Rows to draw: 0,5,9 or 10-20 (ranges inclusive).")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, help="Draw N rows chosen at random (default 6).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random choice of rows.")] = 0,
    composite: Annotated[
        list[str] | None,
        typer.Option(help="Only these composites or methods (repeat for several; default all)."),
    ] = None,
) -> None:
    """Heatmap overlays (image, heatmap, boxes) per row and composite or method, and a grid."""
    from heatjob.view.render import parse_rows
    from heatjob.view.render import render as run_render

    notes: list[str] = []
    chosen = parse_rows(rows) if rows else None
    written = run_render(store, str(out), chosen, sample, seed, composite, notes)
    typer.echo(f"wrote {len(written)} PNGs to {out} (grid: {written[-1]})")
    for note in notes:
        typer.echo(f"note: {note}")


@app.command()
def composites() -> None:
    """The composite names this version knows, one line each with its rules."""
    from heatjob.attribution.lrp import composite_names, describe_composite

    names = composite_names()
    width = max(len(n) for n in names)
    for name in names:
        typer.echo(f"{name.ljust(width)}  {describe_composite(name)}")


@app.command()
def methods() -> None:
    """The method kinds of [attribution.methods.<name>] tables, one line each with its
    options and their defaults."""
    from heatjob.attribution.registry import describe_kind, method_kinds

    kinds = method_kinds()
    width = max(len(k) for k in kinds)
    for kind in kinds:
        typer.echo(f"{kind.ljust(width)}  {describe_kind(kind)}")


if __name__ == "__main__":
    app()
