"""`energyopt optimize`: schedule every site's battery and flexible load, batched, on CPU or GPU.

A plain function with typer annotations, registered in `energyopt/cli.py` with `app.command()(optimize)`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def optimize(
    sites: Path | None = typer.Option(None, help="Site table (CSV/Parquet, one row per site and step; see "
                                                    "optimization/io.py for the columns)."),
    synthetic: int | None = typer.Option(None, help="Instead of --sites: this many seeded synthetic sites."),
    horizon: int = typer.Option(48, help="Steps per site (synthetic sites; a table must have this many)."),
    step_minutes: int = typer.Option(60, help="Step length when the table has no timestamps (and for "
                                              "synthetic sites)."),
    seed: int = typer.Option(0, help="Seed of the synthetic sites."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(..., help="Schedules as Parquet (one row per site and step); the per-site "
                                       "summary goes beside it as <out>.summary.csv."),
    tol: float = typer.Option(1e-8, help="Relative primal/dual residual and duality gap to stop at."),
    threads: int = typer.Option(0, help="CPU threads for PyTorch (0: its default; 1 is often fastest on a busy "
                                        "machine)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Schedule batteries (and shiftable load) for many sites at once, with and without the battery."""
    import torch

    from models.kernels import kernels_enabled
    from optimization.io import read_sites, schedules_frame, summary_frame
    from optimization.problem import ProblemError, synthetic_problems
    from optimization.solver import keep_freed_memory_in_heap, solve

    if device == "cpu":
        keep_freed_memory_in_heap()  # 15-25 % of a CPU solve is page faults on fresh temporaries otherwise
    if (sites is None) == (synthetic is None):
        _fail("pass exactly one of --sites FILE or --synthetic N")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        _fail(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is available here (use --device cpu)")
    if out.suffix.lower() not in (".parquet", ".pq"):
        _fail(f"--out must be a .parquet file, got {out}")
    try:
        if sites is not None:
            problems = read_sites(sites, step_minutes=step_minutes)
            if problems.horizon != horizon:
                console.print(f"the table has {problems.horizon} steps per site (not --horizon {horizon}): "
                              f"using {problems.horizon}")
        else:
            problems = synthetic_problems(synthetic, horizon, step_minutes=step_minutes, seed=seed)
    except (ProblemError, FileNotFoundError) as err:
        _fail(str(err))

    console.print(f"{problems.n:,} sites x {problems.horizon} steps of {problems.dt_hours * 60:g} min on {device}")
    try:
        kernel = kernels_enabled(device)  # ENERGYOPT_KERNELS decides, as for the models' kernels
    except (ValueError, RuntimeError) as err:
        _fail(str(err))
    callers_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("iteration {task.fields[iteration]}"), TimeElapsedColumn(),
                      console=console, disable=quiet, transient=False) as bar:
            results = []
            for label, batch in (("with battery", problems), ("without battery", problems.without_battery())):
                task = bar.add_task(label, total=problems.n, iteration=0)
                results.append(solve(batch, device=device, tol=tol, kernel=kernel,
                                     progress=lambda done, total, it, task=task: bar.update(task, completed=done,
                                                                                            iteration=it)))
    finally:  # the caller's setting back (a test, a notebook calling the command)
        torch.set_num_threads(callers_threads)
    solution, baseline = results
    out.parent.mkdir(parents=True, exist_ok=True)
    schedules_frame(problems, solution).to_parquet(out, index=False)
    summary = summary_frame(problems, solution, baseline)
    summary_path = out.with_suffix(".summary.csv")
    summary.to_csv(summary_path, index=False)

    ok = summary[summary["status"] == "optimal"]
    table = Table(title=f"{len(ok):,} of {problems.n:,} sites scheduled in {solution.seconds:.2f} s "
                        f"({solution.device}{', Triton kernel' if solution.kernel else ''})")
    for col in ("site", "cost", "without battery", "savings", "peak kW", "peak without kW"):
        table.add_column(col, justify="left" if col == "site" else "right")
    shown = ok.nlargest(8, "savings") if len(ok) > 10 else ok
    for row in shown.itertuples():
        table.add_row(row.site, f"{row.cost:,.2f}", f"{row.cost_without_battery:,.2f}", f"{row.savings:,.2f}",
                      f"{row.peak_kw:,.1f}", f"{row.peak_without_battery_kw:,.1f}")
    table.add_row("[bold]total[/]", f"{ok['cost'].sum():,.2f}", f"{ok['cost_without_battery'].sum():,.2f}",
                  f"{ok['savings'].sum():,.2f}", f"{ok['peak_kw'].sum():,.1f}",
                  f"{ok['peak_without_battery_kw'].sum():,.1f}")
    console.print(table)
    for row in summary[summary["status"] != "optimal"].head(10).itertuples():
        err_console.print(f"[yellow]{row.site}[/]: {row.status}: {row.reason}", highlight=False)
    console.print(f"wrote {out} and {summary_path}")
