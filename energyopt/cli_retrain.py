"""`energyopt retrain`: champion/challenger retraining on the store's data (training/retrain.py).

A plain function with typer annotations, registered in `energyopt/cli.py` with `app.command()(retrain)`.

    energyopt retrain --store URL --champion DIR --out DIR   # train, backtest both, decide, store, print
    energyopt retrain --store URL --list                      # the decisions stored, newest first
    energyopt retrain --store URL --promote DIR               # an operator's promotion (roll back / forward)

A promotion stored here is what the running service follows (every replica swaps to it between batches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from energyopt import cli_scale  # the MLflow tracking options of `train` and `sweep`

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

SCORE_COLUMNS = ("mae", "rmse", "mape", "mase", "pinball", "coverage_80")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs (values read as YAML scalars: 5, 1e-3, true, [a, b]) as dotted config overrides."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"--set {pair!r}: expected KEY=VALUE, e.g. training.max_epochs=5")
        out[key.strip()] = yaml.safe_load(value)
    return out


def retrain(
    store: str | None = typer.Option(None, envvar="ENERGYOPT_STORE", show_envvar=True,
                                     help="The store: a SQLite path or a database URL "
                                          "(postgresql://user@host/db); default runs/store.db."),
    champion: Path | None = typer.Option(None, help="The model in service (default: the bundle of the store's "
                                                    "newest promotion)."),
    out: Path | None = typer.Option(None, help="Directory to write the challenger bundle to (a new one)."),
    backtest_days: int = typer.Option(28, help="Both models are backtested on the store's last this many days "
                                               "(the challenger trains on the data before them)."),
    metric: str = typer.Option("mae", help="Compared metric, lower is better: mae, rmse, mape, mase or pinball."),
    margin: float = typer.Option(0.02, help="The challenger must beat the champion by this fraction (0.02: 2 %)."),
    horizon: int | None = typer.Option(None, help="Hours ahead of each daily origin (default: 48, or the "
                                                  "models' horizon when shorter)."),
    set_: list[str] = typer.Option([], "--set", help="Change the champion's training config for the challenger: "
                                                     "KEY=VALUE, e.g. training.max_epochs=10 (repeatable)."),
    num_workers: int | None = typer.Option(None, help="Train the challenger on Ray Train with this many DDP "
                                                      "workers (local Ray, or the cluster in RAY_ADDRESS)."),
    use_gpu: bool = typer.Option(False, help="With --num-workers: one GPU per worker."),
    tracking_uri: str | None = cli_scale.TRACKING_URI,
    tracking: bool | None = cli_scale.TRACKING,
    quiet: bool = typer.Option(False, help="Only the decision (no training log)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision(s) as JSON."),
    list_: bool = typer.Option(False, "--list", help="Instead of training: print the store's decisions."),
    limit: int = typer.Option(20, help="With --list: at most this many, newest first."),
    promote: Path | None = typer.Option(None, help="Instead of training: promote this bundle (every replica "
                                                   "swaps to it; with --champion, only those serving that one)."),
) -> None:
    """Train a challenger on the store's data with the champion's training config, backtest both on the
    store's most recent days, promote the challenger only if it is better by the margin, and store and
    print the decision. The running service swaps to a promoted model without downtime. The challenger's
    training and the decision are logged to MLflow (see --tracking-uri)."""
    from models.bundle import BundleError
    from models.decisions import list_decisions, record_promotion
    from models.series import SeriesError
    from models.store import Store, StoreError
    from training.config import ConfigError
    from training.retrain import retrain as run_retrain
    from training.tracking import resolve_uri

    if sum((list_, promote is not None)) > 1:
        _fail("--list and --promote are separate commands; give one")
    if not list_ and promote is None and out is None:
        _fail("--out DIR is required: where the challenger bundle goes (or use --list / --promote)")
    try:
        db = Store.open(store)
    except StoreError as err:
        _fail(str(err))
    try:
        if list_:
            decisions = list_decisions(db, limit)
            if as_json:
                print(json.dumps([_as_dict(d) for d in decisions], indent=2, default=str))
            else:
                _print_list(decisions, db.display_url)
            return
        if promote is not None:
            decision = record_promotion(db, promote, replacing=champion, note="energyopt retrain --promote")
        else:
            log = (lambda _: None) if quiet or as_json else (lambda m: console.print(m, highlight=False))
            decision = run_retrain(db, champion, out, backtest_days=backtest_days, metric=metric, margin=margin,
                                   horizon=horizon, overrides=_overrides(set_), num_workers=num_workers,
                                   use_gpu=use_gpu, tracking_uri=resolve_uri(tracking_uri, tracking), log=log)
        if as_json:
            print(json.dumps(_as_dict(decision), indent=2, default=str))
            return
        if promote is None:
            _print_scores(decision)
        style = "bold green" if decision.promoted else "bold yellow"
        console.print(f"[{style}]decision {decision.id}:[/] {decision.summary()}", highlight=False)
        if decision.promoted:
            console.print(f"stored in {db.display_url}: the service's replicas swap to {decision.challenger_path} "
                          "within seconds (GetModelInfo shows the version)", highlight=False)
    except (SeriesError, BundleError, ConfigError, StoreError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    finally:
        db.close()


def _as_dict(decision: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(decision)
    out["detail"] = {k: v for k, v in out["detail"].items() if k != "rows"}  # the per-zone rows: in the store
    return out


def _print_scores(decision: Any) -> None:
    summary = decision.detail.get("summary", {})
    detail = decision.detail
    table = Table(title=f"backtest on the store's last {detail.get('backtest_days')} days "
                        f"({detail.get('origins')} daily origins, {detail.get('horizon')} h ahead, "
                        f"zones {', '.join(detail.get('zones', []))})")
    table.add_column("model")
    table.add_column("version")
    for c in SCORE_COLUMNS:
        table.add_column(f"[bold]{c}[/]" if c == decision.metric else c, justify="right")
    for role, version in (("champion", decision.champion_version), ("challenger", decision.challenger_version)):
        m = summary.get(role, {})
        table.add_row(role, version, *[f"{m[c]:.3f}" if c in m else "-" for c in SCORE_COLUMNS])
    console.print(table)


def _print_list(decisions: list, where: str) -> None:
    from datetime import UTC, datetime

    if not decisions:
        console.print(f"no model decisions in {where} yet", highlight=False)
        return
    table = Table(title=f"model decisions in {where}, newest first")
    for col in ("id", "decided (UTC)", "metric", "champion", "score", "challenger", "score ", "margin", "promoted"):
        table.add_column(col, justify="right" if col in ("id", "score", "score ", "margin") else "left")
    for d in decisions:
        manual = d.metric == "manual"
        table.add_row(str(d.id), datetime.fromtimestamp(d.decided_at, UTC).strftime("%Y-%m-%d %H:%M"), d.metric,
                      f"{d.champion_name} {d.champion_version}".strip() or "-",
                      "-" if manual else f"{d.champion_score:.3f}", f"{d.challenger_name} {d.challenger_version}",
                      "-" if manual else f"{d.challenger_score:.3f}", "-" if manual else f"{d.margin:.1%}",
                      "yes" if d.promoted else "no")
    console.print(table)
