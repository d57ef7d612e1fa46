"""`energyopt weather ingest|stations`: weather observations and forecasts into the store (models/weather.py).

A weather model's region forecasts read them there (docs/live.md#region-forecasts-with-weather). The file is
CSV or Parquet with `station`, `timestamp` (the hour a value is for) and one column per variable, named with
its unit (`temperature_c`); a column `issued` (when the forecast was issued) makes the rows a weather
forecast, its absence observations. Naive times are the station's clock.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console

from energyopt.cli_ingest import _fail, reason_kind

console = Console()

weather_app = typer.Typer(no_args_is_help=True, help="Weather observations and forecasts in the store.")
BATCH_ROWS = 20_000  # rows per transaction


def _open(store: str):  # noqa: ANN202 - a models.store.Store
    from models.store import Store, StoreError

    try:
        return Store.open(store)
    except (StoreError, OSError) as err:
        _fail(f"store {store}: {err}")


@weather_app.command("ingest")
def ingest(
    file: Path = typer.Argument(..., help="CSV or Parquet: station, timestamp, [issued], one column per variable "
                                          "(e.g. temperature_c)."),
    store: str = typer.Option(..., help="The store: a SQLite path or a postgresql:// URL (the service's --store)."),
    register: bool = typer.Option(False, help="Register the file's stations that are not known yet."),
    time_zone: str = typer.Option("UTC", help="With --register: the new stations' clock (IANA name), for naive "
                                              "times."),
) -> None:
    """Store a file of weather observations (or, with an `issued` column, forecasts): each batch committed in
    one transaction, every refused row counted with its reason."""
    import pandas as pd

    from models import weather
    from models.store import StoreError

    try:
        table = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
    except Exception as err:  # noqa: BLE001 - any unreadable file: one line, not a trace
        _fail(f"cannot read {file}: {err}")
    variables = [c for c in table.columns if c in weather.VARIABLES]
    missing = [c for c in ("station", "timestamp") if c not in table.columns]
    if missing or not variables:
        _fail(f"{file}: needs columns station, timestamp and one of {sorted(weather.VARIABLES)} (and issued, for a "
              f"forecast); it has {list(table.columns)}")
    forecast = "issued" in table.columns
    opened = _open(store)
    try:
        known = set(weather.stations(opened))
        new = sorted(set(table["station"].astype(str)) - known)
        if new and register:
            try:
                weather.register_stations(opened, [weather.Station(s, time_zone) for s in new])
            except StoreError as err:
                _fail(str(err))
        long = table.melt(id_vars=[c for c in ("station", "timestamp", "issued") if c in table.columns],
                          value_vars=variables, var_name="variable", value_name="value")
        total = weather.WeatherResult()
        for start in range(0, len(long), BATCH_ROWS):
            part = long.iloc[start:start + BATCH_ROWS]
            where = (part["station"].astype(str).tolist(), part["variable"].tolist())
            stamps, values = part["timestamp"].astype(str).tolist(), part["value"].to_numpy(float)
            if forecast:
                result = weather.ingest_forecasts(opened, *where, part["issued"].astype(str).tolist(), stamps, values)
            else:
                result = weather.ingest_observations(opened, *where, stamps, values)
            total.add(result, offset=start)
    finally:
        opened.close()
    what = "forecast values" if forecast else "observations"
    reasons = Counter(reason_kind(r.reason) for r in total.rejected)
    console.print(f"{total.received:,} {what} of {len(variables)} variable(s) {variables}: {total.inserted:,} "
                  f"inserted, {total.replaced:,} replaced, {total.unchanged:,} unchanged, {len(total.rejected):,} "
                  "rejected", highlight=False)
    for reason, n in reasons.most_common(5):
        console.print(f"  {n:,} x {reason}", highlight=False)
    if new and not register:
        console.print(f"stations not registered: {new[:5]}{' ...' if len(new) > 5 else ''} (use --register)",
                      highlight=False)
    if total.received and len(total.rejected) == total.received:
        raise typer.Exit(2)


@weather_app.command("stations")
def stations(
    store: str = typer.Option(..., help="The store: a SQLite path or a postgresql:// URL."),
    map_zone: list[str] = typer.Option([], "--map", help="ZONE=STATION: the zone reads this station's weather "
                                                         "(repeat for more)."),
) -> None:
    """The store's weather stations and the zones that read them; --map sets a zone's station."""
    from models import weather
    from models.store import StoreError

    opened = _open(store)
    try:
        if map_zone:
            pairs = [m.split("=", 1) for m in map_zone]
            if any(len(p) != 2 or not all(p) for p in pairs):
                _fail(f"--map takes ZONE=STATION, got {map_zone}")
            try:
                weather.map_zones(opened, dict(pairs))
            except StoreError as err:
                _fail(str(err))
        known, zones = weather.stations(opened), weather.zone_stations(opened)
    finally:
        opened.close()
    for name, station in sorted(known.items()):
        readers = sorted(z for z, s in zones.items() if s == name)
        console.print(f"{name}  {station.time_zone}  zones: {', '.join(readers) or '-'}", highlight=False)
