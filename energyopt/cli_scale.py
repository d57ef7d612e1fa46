"""`energyopt score`, `energyopt sweep` and distributed `energyopt train --num-workers N`: the Ray scale-out
commands. Plain functions with typer annotations, registered on the app in `energyopt/cli.py`.

All of them run on a local Ray instance by default and on a cluster unchanged: set RAY_ADDRESS (or run
them as a RayJob, see cluster/).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# MLflow tracking, for `train` and `sweep` (training/tracking.py decides what they mean)
TRACKING_URI = typer.Option(None, "--tracking-uri", metavar="URI",
                            help="MLflow tracking server, database or folder to log runs to (default: "
                                 "$MLFLOW_TRACKING_URI, else the local store runs/mlflow.db).")
TRACKING = typer.Option(None, "--tracking/--no-tracking",
                        help="Log to MLflow (default: on, unless ENERGYOPT_TRACKING=off).", show_default=False)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def score(
    model: Path = typer.Option(..., help="Model bundle directory."),
    input: str = typer.Option(..., help="Parquet file or folder (local path or pyarrow filesystem URI such as "  # noqa: A002
                                        "s3://bucket/prefix) with long-format rows zone, timestamp, load_mw."),
    output: str = typer.Option(..., help="Output folder for the forecasts (Parquet); replaced atomically."),
    num_workers: int | None = typer.Option(None, help="Model actors (default: one per CPU, or per GPU "
                                                         "with --use-gpu)."),
    batch_size: int = typer.Option(1024, help="Series per forward pass."),
    horizon: int | None = typer.Option(None, help="Hours ahead (default: the model's horizon)."),
    use_gpu: bool = typer.Option(False, help="One GPU per model actor."),
    progress: bool = typer.Option(True, help="Ray Data progress bars."),
) -> None:
    """Forecast every series of a Parquet data set on Ray Data and write zone, origin, timestamp, horizon,
    mean, q<level>... as Parquet."""
    from serving.score import ScoringError
    from serving.score import score as run_score

    try:
        result = run_score(model, input, output, num_workers=num_workers, batch_size=batch_size,
                           horizon=horizon, use_gpu=use_gpu, progress=progress, log=console.print)
    except ScoringError as err:
        _fail(str(err))
    console.print(f"[bold green]wrote[/] {result.rows:,} forecast rows for {result.series:,} series to "
                  f"{result.output} in {result.seconds:.1f} s ({result.series / result.seconds:,.0f} series/s)")
    if result.skipped:
        shown = "; ".join(f"{z}: {r}" for z, r in result.skipped[:5])
        more = f" (and {len(result.skipped) - 5} more)" if len(result.skipped) > 5 else ""
        console.print(f"[yellow]skipped {len(result.skipped)} series[/] (listed in _skipped.parquet): "
                      f"{shown}{more}", highlight=False)


def sweep(
    config: Path = typer.Option(..., help="Sweep config (configs/sweep/<model>.yaml)."),
    trials: int = typer.Option(20, help="Finished (completed or pruned) trials the study should end with."),
    parallel: int = typer.Option(2, help="Trials running at the same time (Ray tasks)."),
    out: Path = typer.Option(Path("runs/sweep"), help="Folder for the study (SQLite), trial bundles and best/."),
    storage: str | None = typer.Option(None, help="Optuna storage: an RDB URL (postgresql://..., "
                                                     "sqlite:///...) or a journal file path (default: "
                                                     "sqlite:///<out>/study.db)."),
    study: str | None = typer.Option(None, help="Study name (default: the config's name)."),
    data: Path | None = typer.Option(None, help="Training data (default: the bundled PJM zones)."),
    heartbeat: int = typer.Option(10, help="Seconds between trial heartbeats; a trial silent for 3 of them "
                                           "is failed and re-queued."),
    tracking_uri: str | None = TRACKING_URI,
    tracking: bool | None = TRACKING,
) -> None:
    """Run or resume an Optuna study (TPE, median pruning on per-epoch validation loss), trials in parallel
    on Ray; the best trial is exported as a model bundle to <out>/best. Each trial is an MLflow run in
    the experiment named after the study (see --tracking-uri)."""
    from models.series import SeriesError
    from training.sweep import run_sweep
    from training.tracking import resolve_uri

    try:
        result = run_sweep(config, out, trials=trials, parallel=parallel, storage=storage, study_name=study,
                           data=data, heartbeat_s=heartbeat, log=lambda m: console.print(m, highlight=False),
                           tracking_uri=resolve_uri(tracking_uri, tracking))
    except (SeriesError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(f"study {result.study}: {result.finished} trials finished, {result.failed} failed; "
                  f"open it with `optuna-dashboard {result.storage}`")


def train_distributed(cfg, data: Path | None, out: Path, *, num_workers: int, use_gpu: bool,  # noqa: ANN001, ANN201
                      tracking_uri: str | None = None):
    """`energyopt train ... --num-workers N [--use-gpu]`: the same training on Ray Train (DDP)."""
    from training.distributed import train_distributed as fit_on_ray

    return fit_on_ray(cfg, data, out, num_workers=num_workers, use_gpu=use_gpu, tracking_uri=tracking_uri,
                      log=lambda m: console.print(m, highlight=False))
