"""The `energyopt` command: one entry point for data, training, evaluation, forecasting and the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from energyopt import cli_scale  # score, sweep, distributed train: imports Ray lazily
from energyopt.cli_detect import detect  # typer options only; models are imported when it runs
from energyopt.cli_ingest import ingest, replay  # typer options only; store and client are imported when they run
from energyopt.cli_keys import keys_app  # create / list / revoke API keys
from energyopt.cli_optimize import optimize  # typer options only; the solver is imported when it runs
from energyopt.cli_retrain import retrain  # typer options only; training is imported when it runs
from energyopt.cli_serving import (  # typer options; serving imported lazily
    accuracy,
    anomalies,
    api_key_option,
    ca_option,
    client_cert_option,
    client_key_option,
    forecasts,
    serve,
)
from energyopt.cli_weather import weather_app  # weather observations and forecasts into the store

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Forecast, optimize and watch electricity use.")
data_app = typer.Typer(no_args_is_help=True, help="Ingest and inspect load data.")
app.add_typer(data_app, name="data")
app.add_typer(keys_app, name="keys")
app.add_typer(weather_app, name="weather")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# the shipped configs (training.config.CONFIG_DIR/models/<name>.yaml, found without importing torch), listed
# where `--model` is explained
MODEL_CHOICES = tuple(sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs" / "models")
                             .glob("*.yaml")))


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _guard(fn):  # noqa: ANN001, ANN202
    """Known input problems end with one clear line and exit code 2, never a traceback."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        from models.bundle import BundleError
        from models.series import SeriesError

        try:
            return fn(*args, **kwargs)
        except (SeriesError, BundleError, ValueError, FileNotFoundError, PermissionError) as err:
            _fail(str(err))

    return run


@data_app.command("inspect")
@_guard
def data_inspect(
    path: Path = typer.Argument(..., help="Long-format CSV/Parquet, a wide per-zone CSV, or a folder of them."),
    max_interpolate_hours: int = typer.Option(6, help="Gaps up to this long are interpolated; longer ones split."),
    as_json: bool = typer.Option(False, "--json", help="Print the repair report as JSON."),
) -> None:
    """Read a data set, repair it, and report what was found per zone."""
    from models.data import clean, read_table

    table = read_table(path)
    series, report = clean(table, max_interpolate_hours=max_interpolate_hours)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return
    out = Table(title=f"{path}: {len(table):,} rows, {len(report.zones)} zones")
    for col in ("zone", "first", "last", "hours", "segments", "mean MW"):
        out.add_column(col, justify="left" if col in ("zone", "first", "last") else "right")
    for zone, z in report.zones.items():
        loads = np.concatenate([s.load for s in series if s.zone == zone])
        out.add_row(zone, str(z.first_timestamp), str(z.last_timestamp), f"{z.hours_out:,}", str(z.segments),
                    f"{loads.mean():,.0f}")
    console.print(out)
    console.print("repairs:")
    for line in report.summary_lines():
        console.print(f"  {line}", highlight=False)


@app.command()
@_guard
def train(
    model: str = typer.Option("lstm", help=f"Model type: {', '.join(MODEL_CHOICES)}."),
    data: Path | None = typer.Option(None, help="Training data (default: the bundled PJM zones)."),
    out: Path = typer.Option(..., help="Directory to write the model bundle to."),
    config: Path | None = typer.Option(None, help="YAML config (default: configs/models/<model>.yaml)."),
    max_epochs: int | None = typer.Option(None, help="Override training.max_epochs."),
    seed: int | None = typer.Option(None, help="Override training.seed."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    num_workers: int | None = typer.Option(None, help="Train on Ray Train with this many DDP workers "
                                                         "(local Ray, or the cluster in RAY_ADDRESS)."),
    use_gpu: bool = typer.Option(False, help="With --num-workers: one GPU per worker (NCCL)."),
    tracking_uri: str | None = cli_scale.TRACKING_URI,
    tracking: bool | None = cli_scale.TRACKING,
) -> None:
    """Train a forecaster (or the anomaly autoencoder) and write a model bundle (config.json,
    model.safetensors, metrics.json); the run is logged to MLflow (see --tracking-uri)."""
    from training.config import load_config
    from training.pipeline import train as fit
    from training.tracking import resolve_uri

    cfg = load_config(config, model=model, **{"training.max_epochs": max_epochs, "training.seed": seed})
    if config is None:
        cfg.name = model
    uri = resolve_uri(tracking_uri, tracking)
    console.print(f"training [bold]{cfg.model.type}[/] on {data or 'the bundled PJM data'} -> {out}")
    if num_workers:
        bundle = cli_scale.train_distributed(cfg, data, out, num_workers=num_workers, use_gpu=use_gpu,
                                             tracking_uri=uri)
    else:
        bundle = fit(cfg, data, out, progress=not quiet, log=console.print, tracking_uri=uri)
    console.print(f"wrote model bundle {out} (version {bundle.version})")
    if bundle.kind == "autoencoder":
        from energyopt.cli_detect import print_detection_metrics

        print_detection_metrics(bundle.metrics)
        return
    _print_metrics(bundle.metrics)


@app.command()
@_guard
def evaluate(
    model: Path = typer.Option(..., help="Model bundle directory."),
    data: Path | None = typer.Option(None, help="Data to backtest on (default: the bundled PJM zones)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write results as JSON to this file."),
    baselines: bool = typer.Option(True, help="Also score the seasonal naive (168 h) and linear baselines."),
    horizon: int = typer.Option(48, help="Hours ahead of each daily origin."),
    issue_times: Path | None = typer.Option(None, help="Origins from this file instead of daily ones: a CSV "
                                                        "with an issue_time column (first forecast hours, the "
                                                        "data's wall clock), e.g. those a server issued."),
) -> None:
    """Backtest a bundle under the project's protocol (daily origins over the last 365 days)."""
    import pandas as pd

    from models.bundle import load_bundle
    from training.pipeline import evaluate_bundle

    bundle = load_bundle(model)
    times = None
    if issue_times is not None:
        try:
            times = pd.DatetimeIndex(pd.to_datetime(pd.read_csv(issue_times)["issue_time"]))
        except (OSError, KeyError, ValueError) as err:
            _fail(f"--issue-times {issue_times}: needs a CSV with an issue_time column of ISO 8601 times ({err})")
    results = evaluate_bundle(bundle, data, horizon=horizon, baselines=baselines, log=console.print,
                              issue_times=times)
    _print_metrics(results)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
        console.print(f"wrote {json_path}")


@app.command()
@_guard
def forecast(
    model: Path | None = typer.Option(None, help="Model bundle directory (in-process forecast)."),
    server: str | None = typer.Option(None, help="HOST:PORT of a running `energyopt serve`: ask it instead."),
    data: Path | None = typer.Option(None, help="Recent history (default: the bundled PJM zones)."),
    horizon: int = typer.Option(48, help="Hours ahead."),
    zone: list[str] | None = typer.Option(None, help="Only these zones (repeatable)."),
    region: str = typer.Option("PJM", help="Region name for the total."),
    plot: Path | None = typer.Option(None, help="Draw history, forecast and bands to this PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print the forecast as JSON records."),
    archive: bool = typer.Option(False, "--archive", help="With --server: store the forecast in its archive."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """Forecast every zone of the data and the region total from the end of the history, in process with
    --model, or from a running server with --server."""
    from models.bundle import load_bundle

    if server:
        from energyopt.cli_serving import remote_forecast

        remote_forecast(server=server, region=region, horizon=horizon, zones=zone, archive=archive, as_json=json_out,
                        timeout=30.0, api_key=api_key, ca=ca, client_cert=client_cert,
                        client_key=client_key)
        return
    if model is None:
        _fail("pass --model DIR (forecast in process) or --server HOST:PORT (ask a running server)")
    bundle = load_bundle(model)
    context = _histories(data)
    histories = _select_zones(context, zone)
    result = _forecast(bundle, histories, horizon, region, context)
    if json_out:
        print(result.to_frame().to_json(orient="records", date_format="iso", indent=1))
    else:
        _print_region(result)
    if plot:
        from energyopt.plots import plot_region

        plot_region(result, histories, plot)
        console.print(f"wrote {plot}")


app.command()(serve)
app.command()(detect)
app.command()(optimize)
app.command()(cli_scale.score)
app.command()(cli_scale.sweep)
app.command()(ingest)
app.command()(replay)
app.command()(retrain)
app.command()(forecasts)
app.command()(accuracy)
app.command()(anomalies)


@app.command()
@_guard
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the demo keeps its model and plot."),
    retrain: bool = typer.Option(False, help="Train a new model even if one exists."),
) -> None:
    """The main job end to end on the bundled PJM data: repair, train (once; logged to MLflow's local store
    unless ENERGYOPT_TRACKING=off or MLFLOW_TRACKING_URI says otherwise), forecast, plot."""
    from energyopt.plots import plot_region
    from models.bundle import BundleError, load_bundle
    from training.config import CONFIG_DIR, load_config
    from training.pipeline import train as fit
    from training.tracking import resolve_uri

    bundle_dir = workdir / "model"
    bundle = None
    if not retrain:
        try:
            bundle = load_bundle(bundle_dir)
            console.print(f"using the demo model in {bundle_dir} (--retrain to train a new one)")
        except BundleError:
            pass
    if bundle is None:
        console.rule("1. Train a small LSTM on the bundled PJM data (5 zones, 2004-2018)")
        cfg = load_config(CONFIG_DIR / "models" / "demo.yaml")
        bundle = fit(cfg, None, bundle_dir, log=console.print, tracking_uri=resolve_uri())
        console.print(f"wrote model bundle {bundle_dir}")
    _print_metrics(bundle.metrics)
    console.rule("2. Forecast the PJM region and every zone, 48 hours ahead")
    histories = _histories(None)
    result = _forecast(bundle, histories, 48, "PJM")
    _print_region(result)
    plot = workdir / "forecast.png"
    plot_region(result, histories, plot)
    console.print(f"plot: {plot}")


def _histories(data: Path | None) -> dict:
    """Each zone's cleaned hourly history (its latest gap-free segment), by zone name."""
    import pandas as pd

    from models.data import load_series

    series, _ = load_series(data)
    latest: dict = {}
    for s in series:
        if s.zone not in latest or s.timestamps[-1] > latest[s.zone].index[-1]:
            latest[s.zone] = pd.Series(s.load, index=s.timestamps, name=s.zone)
    return latest


def _select_zones(histories: dict, zones: list[str] | None) -> dict:
    from models.series import SeriesError

    if not zones:
        return histories
    unknown = sorted(set(zones) - set(histories))
    if unknown:
        raise SeriesError(f"unknown zone(s) {unknown}; the data has {sorted(histories)}")
    return {z: histories[z] for z in zones}


def _forecast(bundle, histories: dict, horizon: int, region: str, context: dict | None = None):  # noqa: ANN001, ANN202
    from models.region import forecast_region

    return forecast_region(bundle, histories, horizon, region=region, context=context)


def _print_region(result) -> None:  # noqa: ANN001
    levels = result.quantile_levels
    lo, hi = min(levels), max(levels)
    table = Table(title=f"{result.region} load forecast (MW) from {result.issue_time}, "
                        f"{lo:g}-{hi:g} band for the total")
    table.add_column("hour")
    for s in result.zones:
        table.add_column(s.name, justify="right")
    table.add_column(result.total.name, justify="right", style="bold")
    table.add_column("band", justify="right")
    total = result.total
    for i, ts in enumerate(total.timestamps):
        if i % 3 and i != len(total.timestamps) - 1:
            continue
        table.add_row(ts.strftime("%a %m-%d %H:%M"), *[f"{s.point[i]:,.0f}" for s in result.zones],
                      f"{total.point[i]:,.0f}",
                      f"{total.quantiles[i, 0]:,.0f}-{total.quantiles[i, -1]:,.0f}")
    console.print(table)
    peaks = Table(title="peaks and energy over the horizon")
    for col in ("zone", "peak MW", "at", "band at peak", "energy GWh"):
        peaks.add_column(col, justify="left" if col in ("zone", "at") else "right")
    for s in [*result.zones, total]:
        k = int(s.point.argmax())
        peaks.add_row(s.name, f"{s.point[k]:,.0f}", s.timestamps[k].strftime("%a %m-%d %H:%M"),
                      f"{s.quantiles[k, 0]:,.0f}-{s.quantiles[k, -1]:,.0f}", f"{s.point.sum() / 1000:,.1f}")
    console.print(peaks)


def _print_metrics(results: dict | None) -> None:
    if not results or "summary" not in results:
        return
    horizon = results.get("horizon", 48)
    table = Table(title=f"backtest on the test period (daily origins at 00:00, {horizon} h ahead)")
    cols = ("mae", "rmse", "mape", "mase", "pinball", "coverage_80")
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in results["summary"].items():
        table.add_row(name, *[f"{m[c]:.3f}" if c in m else "-" for c in cols])
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point alternative
    sys.exit(app())
