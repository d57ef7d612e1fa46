"""`energyopt detect`: anomaly events in load data, from an autoencoder bundle, on the command line.

A plain function with typer annotations, registered on the app in `energyopt/cli.py`:

    app.command()(cli_detect.detect)
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def detect(
    model: Path = typer.Option(..., help="Anomaly model bundle (`energyopt train --model autoencoder`)."),
    data: Path | None = typer.Option(None, help="Long-format CSV/Parquet, a wide per-zone CSV or a folder "
                                                   "(default: the bundled PJM zones)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the events to this file as a JSON list "
                                                                  "of {zone, start, end, severity, expected, "
                                                                  "observed, ...}."),
    zone: list[str] | None = typer.Option(None, help="Only these zones (repeatable)."),
    start: str | None = typer.Option(None, help="Report events ending at or after this time (ISO 8601)."),
    end: str | None = typer.Option(None, help="Report events starting at or before this time (ISO 8601)."),
    max_interpolate_hours: int = typer.Option(6, help="Missing hours up to this long are interpolated; "
                                                      "longer gaps split a series."),
) -> None:
    """Find anomalous stretches of load (spikes, dips, dropouts, stuck meters, level shifts, drift) and
    report them as events with their severity and expected vs observed energy."""
    import pandas as pd

    from models.anomaly import detection_segments
    from models.autoencoder import detect_segments
    from models.bundle import BundleError, load_bundle
    from models.data import read_table
    from models.series import BUNDLED_PJM, SeriesError

    try:
        bundle = load_bundle(model)
        table = read_table(data if data is not None else BUNDLED_PJM)
        zones = sorted(table["zone"].astype(str).unique())
        if zone:
            unknown = sorted(set(zone) - set(zones))
            if unknown:
                raise SeriesError(f"unknown zone(s) {unknown}; the data has {zones}")
            table = table[table["zone"].isin(zone)]
        lo, hi = (_time(t, name) for t, name in ((start, "--start"), (end, "--end")))
        segments, notes = detection_segments(table, max_interpolate_hours=max_interpolate_hours)
        results, skipped = detect_segments(bundle, segments)
    except (SeriesError, BundleError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    for note in notes + skipped:
        console.print(f"  {note}", highlight=False)
    if not results:
        _fail("no series long enough to score; see the notes above")
    events = sorted((e for r in results for e in r.events), key=lambda e: (e.start, e.zone))
    events = [e for e in events if (lo is None or e.end >= lo) and (hi is None or e.start <= hi)]
    hours = sum(int(pd.notna(r.score).sum()) for r in results)
    console.print(f"{len(events)} anomalous event(s) in {hours:,} scored hours of {len(results)} series "
                  f"(model {bundle.name} {bundle.version})")
    _print_events(events)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([{**e.to_dict(), "hours": e.hours} for e in events], indent=1))
        console.print(f"wrote {json_path}")


def _time(text: str | None, name: str):  # noqa: ANN202
    import pandas as pd

    if text is None:
        return None
    try:
        return pd.Timestamp(text)
    except ValueError:
        raise ValueError(f"{name}: cannot read {text!r} as a time, e.g. 2018-01-31T00:00") from None


def _print_events(events: list) -> None:
    if not events:
        return
    table = Table(title="anomalous events (severity: score / threshold; energy in MWh)")
    for col in ("zone", "start", "end", "hours", "severity", "kind", "expected", "observed", "diff %"):
        table.add_column(col, justify="left" if col in ("zone", "start", "end", "kind") else "right")
    for e in events[:200]:
        diff = 100 * (e.observed - e.expected) / e.expected if e.expected else float("nan")
        table.add_row(e.zone, str(e.start), str(e.end), str(e.hours), f"{e.severity:.1f}", e.component,
                      f"{e.expected:,.0f}", f"{e.observed:,.0f}", f"{diff:+.0f}")
    console.print(table)
    if len(events) > 200:
        console.print(f"... and {len(events) - 200} more (all of them in --json)")


def print_detection_metrics(metrics: dict | None) -> None:
    """The test-period evaluation that training stores in an anomaly bundle's metrics.json."""
    if not metrics or "by_kind" not in metrics:
        return
    table = Table(title="test period: planted anomalies (event metrics, overlap matching)")
    for col in ("anomalies", "precision", "recall", "F1", "PR-AUC", "median delay h"):
        table.add_column(col, justify="left" if col == "anomalies" else "right")
    for name, m in [("all kinds", metrics["summary"]), *metrics["by_kind"].items()]:
        table.add_row(name, *(f"{m[k]:.3f}" for k in ("precision", "recall", "f1", "pr_auc")),
                      "-" if m["delay_median_h"] is None else f"{m['delay_median_h']:.0f}")
    console.print(table)
    console.print(f"false alarms on the untouched test period: "
                  f"{metrics['summary']['false_alarms_per_zone_month']} per zone-month")
