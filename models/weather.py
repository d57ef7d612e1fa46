"""Weather in the store: stations, the zones they serve, observations and issued forecasts.

    weather_stations      station, time_zone (the clock of naive times sent for it), description
    zone_stations         zone -> station: whose weather a zone reads (one station per zone)
    weather_observations  (station, variable, ts) -> value, received_at, revision (0, +1 per correction)
    weather_forecasts     (station, variable, issued_ts, ts) -> value, received_at

A variable's name carries its unit (`temperature_c`: degrees Celsius, `VARIABLES`). Times are UTC seconds
like readings' `ts`: the start of the hour a value is for; `issued_ts` is when a forecast was issued.

Ingest has the readings' discipline (`models.store`): one transaction per batch, committed before it
returns; each refused row listed with its reason (NaN or inf, a value outside the variable's plausible
range, and a whole series that looks like degrees Fahrenheit; an unknown station or variable; a time that
cannot be placed, is not on the hour, or is in the future; a forecast valid before it was issued or more
than `MAX_LEAD_S` after); the same row again changes nothing. An observation sent again with another value
is a correction: it replaces the stored one and is counted. An issued forecast does not change: the same
(issued, valid) hour with another value is refused (send it with a new issue time). Weather writes do not
move the store's watermark: it orders readings, which replicas cache; weather is read when a forecast is
made (`latest_forecast`).

Built by migration 0004 (models/migrations), never by create_all.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import sqlalchemy as sa

from models.series import BUNDLED, BUNDLED_NEM, TEMPERATURE, TIMESTAMP, WEATHER_VARIABLES, ZONE, shown
from models.store import (
    _ZONE_NAME,
    DAY_S,
    MAX_FUTURE_S,
    MAX_ZONE_NAME,
    Store,
    StoreError,
    _fingerprint,
    _text,
    _to_utc,
    metadata,
    not_finite,
    sources_table,
)

MAX_LEAD_S = 16 * DAY_S  # a forecast valid further ahead than this of its issue is refused (NWP runs reach ~16 days)
HOUR_S = 3600
MAX_VARIABLE_NAME = 32


VARIABLES = WEATHER_VARIABLES  # models.series holds them: model inputs check against the same ranges

stations_table = sa.Table(
    "weather_stations", metadata,
    sa.Column("station", sa.String(MAX_ZONE_NAME), primary_key=True),
    sa.Column("time_zone", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
zone_stations_table = sa.Table(
    "zone_stations", metadata,
    sa.Column("zone", sa.String(MAX_ZONE_NAME), primary_key=True),
    sa.Column("station", sa.String(MAX_ZONE_NAME), sa.ForeignKey("weather_stations.station"), nullable=False),
)
observations_table = sa.Table(
    "weather_observations", metadata,
    sa.Column("station", sa.String(MAX_ZONE_NAME), sa.ForeignKey("weather_stations.station"), primary_key=True),
    sa.Column("variable", sa.String(MAX_VARIABLE_NAME), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
)
weather_forecasts_table = sa.Table(
    "weather_forecasts", metadata,
    sa.Column("station", sa.String(MAX_ZONE_NAME), sa.ForeignKey("weather_stations.station"), primary_key=True),
    sa.Column("variable", sa.String(MAX_VARIABLE_NAME), primary_key=True),
    sa.Column("issued_ts", sa.BigInteger, primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

# The bundled NEM file's temperatures are observed in each state's capital (its README): one station per
# state, named by the city, serving the state's zone. Their clock is the file's (AEMO market time, UTC+10).
NEM_STATIONS = {"NSW": "SYDNEY", "QLD": "BRISBANE", "SA": "ADELAIDE", "TAS": "HOBART", "VIC": "MELBOURNE"}


@dataclass(frozen=True)
class Station:
    """A weather station as registered: its name and the clock of naive times sent for it."""

    station: str
    time_zone: str = "UTC"
    description: str = ""

    def checked(self) -> Station:
        """This station with defaults applied, or StoreError naming what is wrong."""
        if not isinstance(self.station, str) or not _ZONE_NAME.fullmatch(self.station):
            raise StoreError(f"station {shown(self.station)}: use 1 to {MAX_ZONE_NAME} letters, digits, '_', '-' "
                             "or '.'")
        station = Station(self.station, self.time_zone or "UTC", self.description or "")
        try:
            ZoneInfo(station.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise StoreError(f"station {station.station}: unknown time zone {shown(station.time_zone)} (use an "
                             "IANA name such as 'Australia/Brisbane' or 'UTC')") from None
        return station


@dataclass
class WeatherRejected:
    index: int
    station: str
    variable: str
    timestamp: str
    reason: str


@dataclass
class WeatherResult:
    """What one committed batch of weather did (`rejected`: each refused row, by its index in the batch)."""

    received: int = 0
    inserted: int = 0
    replaced: int = 0
    unchanged: int = 0
    rejected: list[WeatherRejected] = field(default_factory=list)

    def add(self, other: WeatherResult, offset: int = 0) -> None:
        self.received += other.received
        self.inserted += other.inserted
        self.replaced += other.replaced
        self.unchanged += other.unchanged
        self.rejected += [WeatherRejected(r.index + offset, r.station, r.variable, r.timestamp, r.reason)
                          for r in other.rejected]


@dataclass
class LatestForecast:
    """The newest weather forecast of a station and variable issued at or before `before`, over `hours`.

    `issued_ts` is None when no forecast was issued by then. `value[i]` is the forecast for `hours[i]`
    (NaN where it has none); `missing` lists the requested hours it does not cover, so that a caller can
    refuse naming them (or fall back, saying so): hours are never filled from another issue silently."""

    station: str
    variable: str
    before: int
    issued_ts: int | None
    hours: np.ndarray  # int64 [H]: the requested hours, UTC seconds
    value: np.ndarray  # float64 [H]
    missing: list[int]

    @property
    def complete(self) -> bool:
        return self.issued_ts is not None and not self.missing

    def describe_missing(self, limit: int = 6) -> str:
        """The missing hours as an error message names them (the first `limit`, then how many more)."""
        if self.issued_ts is None:
            return (f"no {self.variable} forecast for station {self.station} was issued at or before "
                    f"{_iso(self.before)}")
        shown_hours = ", ".join(_iso(t) for t in self.missing[:limit])
        more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
        return (f"the {self.variable} forecast for station {self.station} issued {_iso(self.issued_ts)} does not "
                f"cover {len(self.missing)} of the {len(self.hours)} hours: {shown_hours}{more}")


def _iso(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="s", tz="UTC").isoformat()


# ---------------------------------------------------------------------------------------------- stations

def register_stations(store: Store, stations: Sequence[Station]) -> list[str]:
    """Register stations (the same one again is fine; another time zone for a known one is a StoreError).
    Returns the new ones."""
    checked = [s.checked() for s in stations]
    with store.engine.begin() as conn:
        store._serialize(conn)
        known = {r.station: r.time_zone for r in conn.execute(sa.select(stations_table).where(
            stations_table.c.station.in_([s.station for s in checked])))}
        new = []
        for s in checked:
            if s.station in known:
                if known[s.station] != s.time_zone:
                    raise StoreError(f"station {s.station} is registered with time zone {known[s.station]}, "
                                     f"not {s.time_zone}")
                continue
            known[s.station] = s.time_zone
            new.append(s)
        if new:
            conn.execute(stations_table.insert(), [{"station": s.station, "time_zone": s.time_zone,
                                                    "description": s.description, "created_at": time.time()}
                                                   for s in new])
    return [s.station for s in new]


def stations(store: Store) -> dict[str, Station]:
    with store.reader.connect() as conn:
        rows = conn.execute(sa.select(stations_table).order_by(stations_table.c.station)).all()
    return {r.station: Station(r.station, r.time_zone, r.description) for r in rows}


def map_zones(store: Store, mapping: Mapping[str, str]) -> None:
    """Say which station's weather each zone reads (zone -> station; a zone mapped again reads the new one).
    The station must be registered; the zone need not be yet (weather may arrive before its readings)."""
    for zone in mapping:
        if not isinstance(zone, str) or not _ZONE_NAME.fullmatch(zone):
            raise StoreError(f"zone {shown(zone)}: use 1 to {MAX_ZONE_NAME} letters, digits, '_', '-' or '.'")
    with store.engine.begin() as conn:
        store._serialize(conn)
        known = set(conn.execute(sa.select(stations_table.c.station).where(
            stations_table.c.station.in_(set(mapping.values())))).scalars())
        unknown = sorted(set(mapping.values()) - known)
        if unknown:
            raise StoreError(f"unknown station {shown(unknown[0])} (mapped to zone "
                             f"{next(z for z, s in mapping.items() if s == unknown[0])}); register it first")
        z = zone_stations_table
        conn.execute(z.delete().where(z.c.zone.in_(list(mapping))))
        if mapping:
            conn.execute(z.insert(), [{"zone": k, "station": v} for k, v in mapping.items()])


def zone_stations(store: Store, zones: Sequence[str] | None = None) -> dict[str, str]:
    """zone -> station of `zones` (None: every mapped zone); zones without a station are left out."""
    z = zone_stations_table
    query = sa.select(z.c.zone, z.c.station).order_by(z.c.zone)
    if zones is not None:
        query = query.where(z.c.zone.in_(list(zones)))
    return dict(store._read(query))


# ---------------------------------------------------------------------------------------------- ingest

def ingest_observations(store: Store, station: Sequence[str], variable: Sequence[str],
                        timestamp: Sequence[str] | pd.DatetimeIndex, value: Sequence[float],
                        now: float | None = None) -> WeatherResult:
    """Check and store one batch of observations (one row per station, variable and hour) in one transaction.

    `timestamp`: the hour each value is for, as readings take it (ISO 8601 with an offset: that instant;
    naive: the station's clock; or a DatetimeIndex). Returns once committed; refused rows are listed."""
    return _ingest(store, station, variable, None, timestamp, value, now)


def ingest_forecasts(store: Store, station: Sequence[str], variable: Sequence[str],
                     issued: Sequence[str] | pd.DatetimeIndex, timestamp: Sequence[str] | pd.DatetimeIndex,
                     value: Sequence[float], now: float | None = None) -> WeatherResult:
    """Check and store one batch of forecast values: per row the station, variable, when the forecast was
    issued and the hour it is valid for (times as in `ingest_observations`). One transaction, committed."""
    return _ingest(store, station, variable, issued, timestamp, value, now)


def _ingest(store: Store, station: Sequence[str], variable: Sequence[str],
            issued: Sequence[str] | pd.DatetimeIndex | None, timestamp: Sequence[str] | pd.DatetimeIndex,
            value: Sequence[float], now: float | None) -> WeatherResult:
    now = time.time() if now is None else now
    station = np.asarray(station, dtype=object)
    variable = np.asarray(variable, dtype=object)
    value = np.asarray(value, dtype=np.float64)
    n = len(station)
    lengths = {len(variable), len(timestamp), len(value), *(() if issued is None else (len(issued),))}
    if lengths != {n}:
        raise StoreError(f"{n} stations, {len(variable)} variables, {len(timestamp)} times and {len(value)} values"
                         f"{'' if issued is None else f', {len(issued)} issue times'}: they must match")
    forecast = issued is not None
    table = weather_forecasts_table if forecast else observations_table
    result = WeatherResult(received=n)
    with store.engine.begin() as conn:
        store._serialize(conn)  # writers queue (PostgreSQL too): two resends at once do not race on a key
        zones_of = dict(conn.execute(sa.select(stations_table.c.station, stations_table.c.time_zone).where(
            stations_table.c.station.in_({s for s in station.tolist() if isinstance(s, str)}))).all())
        reasons, ts, issued_ts = _checked(station, variable, issued, timestamp, value, zones_of, now)
        ok = np.flatnonzero(reasons == "")
        inserts, updates = [], []
        if len(ok):
            held = _held(conn, table, station[ok], variable[ok], ts[ok], issued_ts[ok] if forecast else None)
            for i in ok.tolist():
                key = (station[i], variable[i], int(issued_ts[i]), int(ts[i])) if forecast else (
                    station[i], variable[i], int(ts[i]))
                have = held.get(key)
                v = float(value[i])
                if have is None:
                    inserts.append((*key, v))
                elif have == v:
                    result.unchanged += 1
                elif forecast:
                    reasons[i] = (f"the forecast issued {_iso(key[2])} for this hour is stored with value {have:g}; "
                                  "an issued forecast does not change: send the new one with its own issue time")
                else:
                    updates.append((*key, v))
        result.inserted, result.replaced = len(inserts), len(updates)
        result.rejected = [WeatherRejected(int(i), str(station[i]), str(variable[i]), _text(timestamp, int(i)),
                                           str(reasons[i])) for i in np.flatnonzero(reasons != "")]
        _write(store, conn, forecast, inserts, updates, now)
    return result


def _checked(station: np.ndarray, variable: np.ndarray, issued: Sequence[str] | pd.DatetimeIndex | None,
             timestamp: Sequence[str] | pd.DatetimeIndex, value: np.ndarray, zones_of: dict[str, str],
             now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reason each row is refused ("" if it passes the checks that need no stored weather), its hour and
    issue time in UTC seconds (0 where unknown)."""
    n = len(station)
    reasons = np.full(n, "", dtype=object)
    ts, issued_ts = np.zeros(n, np.int64), np.zeros(n, np.int64)
    not_finite(value, reasons)
    codes, names = pd.factorize(station, use_na_sentinel=False)
    for k, s in enumerate(names):
        if s not in zones_of:
            reasons[codes == k] = (f"unknown station {shown(s)}; register it first" if isinstance(s, str) and s
                                   else "station: required")
    for i, v in enumerate(variable.tolist()):
        if v not in VARIABLES:
            reasons[i] = reasons[i] or f"unknown variable {shown(v)}; one of {sorted(VARIABLES)}"
    row_tz = np.array([zones_of.get(s, "") for s in names], dtype=object)[codes]
    for time_zone in sorted(set(zones_of.values()) & set(row_tz.tolist())):
        rows = np.flatnonzero(row_tz == time_zone)
        utc, local, why = _to_utc(timestamp, rows, time_zone, codes[rows])
        ts[rows] = utc
        off = (why == "") & (local % HOUR_S != 0)
        why[off] = "time is not on the hour (weather is kept per hour: send hourly values, e.g. hourly means)"
        if issued is not None:
            at, _, issued_why = _to_utc(issued, rows, time_zone)
            issued_ts[rows] = at
            for j in np.flatnonzero((why == "") & (issued_why != "")):
                why[j] = f"issued time: {issued_why[j]}"
        reasons[rows] = np.where(reasons[rows] == "", why, reasons[rows])
    placed = reasons == ""
    future = placed & ((issued_ts if issued is not None else ts) > now + MAX_FUTURE_S)
    clock = pd.Timestamp(now, unit="s", tz="UTC").isoformat(timespec="seconds")
    for i in np.flatnonzero(future):
        what = "issued time" if issued is not None else "time"
        reasons[i] = f"{what} is in the future (the server's clock is {clock}); at most 1 h ahead"
    if issued is not None:
        for i in np.flatnonzero(placed & ~future & (ts < issued_ts)):
            reasons[i] = f"valid {_iso(ts[i])} before it was issued ({_iso(issued_ts[i])}): send it as an observation"
        for i in np.flatnonzero(placed & ~future & (ts > issued_ts + MAX_LEAD_S)):
            reasons[i] = (f"valid {(ts[i] - issued_ts[i]) / DAY_S:.1f} days after it was issued; at most "
                          f"{MAX_LEAD_S // DAY_S} days ahead")
    _range_reasons(station, variable, value, reasons)
    _repeated(station, variable, ts, issued_ts, reasons)
    return reasons, ts, issued_ts


def _range_reasons(station: np.ndarray, variable: np.ndarray, value: np.ndarray, reasons: np.ndarray) -> None:
    """Refuse values outside their variable's plausible range. A station's temperature series in the batch
    with values that are too hot for °C but plausible as °F is refused whole: its milder values (70 °F)
    would pass one by one and be stored as a heat wave."""
    for name, var in VARIABLES.items():
        rows = np.flatnonzero((variable == name) & np.isfinite(value) & (reasons == ""))
        if not len(rows):
            continue
        v = value[rows]
        out = (v < var.low) | (v > var.high)
        fahrenheit = np.zeros(len(rows), bool)
        if var.unit == "°C":
            looks_f = (v > var.high) & ((v - 32) / 1.8 <= var.high)
            for s in np.unique(station[rows][looks_f]).tolist():
                mine = station[rows] == s
                fahrenheit |= mine
                text = (f"{name} of station {s} looks like degrees Fahrenheit: {int((looks_f & mine).sum())} of its "
                        f"{int(mine.sum())} values in this batch lie above {var.high:g} °C (up to "
                        f"{v[mine].max():g}); send °C")
                reasons[rows[mine]] = text
        for j in np.flatnonzero(out & ~fahrenheit):
            reasons[rows[j]] = (f"value {v[j]:g} is not a plausible {name}: outside {var.low:g}..{var.high:g} "
                                f"{var.unit}")


def _repeated(station: np.ndarray, variable: np.ndarray, ts: np.ndarray, issued_ts: np.ndarray,
              reasons: np.ndarray) -> None:
    """The same key twice in a batch: the last one counts (a correction sent in the same batch), as readings."""
    ok = np.flatnonzero(reasons == "")
    keys = pd.DataFrame({"s": station[ok], "v": variable[ok], "i": issued_ts[ok], "t": ts[ok]})
    repeated = keys.duplicated(keep="last").to_numpy()
    if repeated.any():
        last_of = keys.reset_index().groupby(["s", "v", "i", "t"])["index"].transform("last").to_numpy()
        for j in np.flatnonzero(repeated):
            reasons[ok[j]] = f"repeated in this batch: row {ok[last_of[j]]} has the same key and is kept"


def _held(conn: sa.Connection, table: sa.Table, station: np.ndarray, variable: np.ndarray, ts: np.ndarray,
          issued_ts: np.ndarray | None) -> dict[tuple, float]:
    """The stored values at a batch's keys (read per station and variable over the batch's time range)."""
    held: dict[tuple, float] = {}
    frame = pd.DataFrame({"s": station, "v": variable, "t": ts})
    if issued_ts is not None:
        frame["i"] = issued_ts
    for (s, v), part in frame.groupby(["s", "v"], sort=False):
        query = sa.select(*table.c).where(table.c.station == s, table.c.variable == v,
                                          table.c.ts >= int(part["t"].min()), table.c.ts <= int(part["t"].max()))
        if issued_ts is not None:
            query = query.where(table.c.issued_ts.in_(sorted({int(i) for i in part["i"]})))
        for row in conn.execute(query):
            key = (row.station, row.variable, row.issued_ts, row.ts) if issued_ts is not None else (
                row.station, row.variable, row.ts)
            held[key] = row.value
    return held


def _write(store: Store, conn: sa.Connection, forecast: bool, inserts: list, updates: list, now: float) -> None:
    """Inserts and corrections through the driver's executemany, as the readings' `_write`."""
    mark = "?" if store.dialect == "sqlite" else "%s"
    if forecast:
        if inserts:
            conn.exec_driver_sql("INSERT INTO weather_forecasts (station, variable, issued_ts, ts, value, "
                                 f"received_at) VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark})",
                                 [(*row, now) for row in inserts])
        return
    if inserts:
        conn.exec_driver_sql(f"INSERT INTO weather_observations (station, variable, ts, value, received_at, revision) "
                             f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, 0)", [(*row, now) for row in inserts])
    if updates:
        conn.exec_driver_sql(f"UPDATE weather_observations SET value = {mark}, received_at = {mark}, "
                             f"revision = revision + 1 WHERE station = {mark} AND variable = {mark} AND ts = {mark}",
                             [(v, now, s, var, t) for s, var, t, v in updates])


# ---------------------------------------------------------------------------------------------- reads

def _known_station(store: Store, station: str) -> None:
    if not store._read(sa.select(stations_table.c.station).where(stations_table.c.station == station)):
        raise StoreError(f"unknown station {shown(station)}")


def observations(store: Store, station: str, variable: str = TEMPERATURE, start: int | None = None,
                 end: int | None = None) -> pd.DataFrame:
    """ts (UTC seconds), value of a station's observations of `variable` with start <= ts < end, by time."""
    _known_station(store, station)
    o = observations_table
    query = sa.select(o.c.ts, o.c.value).where(o.c.station == station, o.c.variable == variable)
    if start is not None:
        query = query.where(o.c.ts >= int(start))
    if end is not None:
        query = query.where(o.c.ts < int(end))
    rows = store._read(query.order_by(o.c.ts))
    return pd.DataFrame({"ts": np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                         "value": np.fromiter((r[1] for r in rows), np.float64, len(rows))})


def latest_forecast(store: Store, station: str, variable: str, before: int, hours: Sequence[int]) -> LatestForecast:
    """The newest forecast of `station` and `variable` issued at or before `before` (UTC seconds; a forecast
    made for an issue time uses only what was known then), its values at `hours` (UTC seconds) and the
    hours it does not cover. An unknown station is a StoreError."""
    return weather_at(store, [station], variable, before, hours)[1][0]


def weather_at(store: Store, stations: Sequence[str], variable: str, before: int, hours: Sequence[int],
               ) -> tuple[np.ndarray, list[LatestForecast]]:
    """What was known of `variable` at `before` (UTC seconds) for `hours`, per station, in four queries
    whatever the number of stations (a region forecast's hot path): the observations of hours before
    `before` [S, H] (NaN where none), and each station's newest forecast issued at or before `before`
    (`latest_forecast`). An unknown station is a StoreError."""
    stations, hours = list(stations), np.asarray(hours, dtype=np.int64)
    known = {r[0] for r in store._read(sa.select(stations_table.c.station).where(
        stations_table.c.station.in_(set(stations))))}
    if unknown := [s for s in stations if s not in known]:
        raise StoreError(f"unknown station {shown(unknown[0])}")
    row_of = {s: i for i, s in enumerate(stations)}
    column = {int(t): j for j, t in enumerate(hours.tolist())}
    observed = np.full((len(stations), len(hours)), np.nan)
    forecast = np.full((len(stations), len(hours)), np.nan)
    o, f = observations_table, weather_forecasts_table
    issued = {s: int(i) for s, i in store._read(
        sa.select(f.c.station, sa.func.max(f.c.issued_ts)).where(
            f.c.station.in_(set(stations)), f.c.variable == variable, f.c.issued_ts <= int(before))
        .group_by(f.c.station))}
    if len(hours):
        lo, hi = int(hours.min()), int(hours.max())
        for station, ts, value in store._read(sa.select(o.c.station, o.c.ts, o.c.value).where(
                o.c.station.in_(set(stations)), o.c.variable == variable, o.c.ts >= lo, o.c.ts <= hi,
                o.c.ts < int(before))):
            if (j := column.get(int(ts))) is not None:
                observed[row_of[station], j] = value
        if issued:
            for station, ts, value in store._read(sa.select(f.c.station, f.c.ts, f.c.value).where(
                    sa.or_(*(sa.and_(f.c.station == s, f.c.issued_ts == i) for s, i in issued.items())),
                    f.c.variable == variable, f.c.ts >= lo, f.c.ts <= hi)):
                if (j := column.get(int(ts))) is not None:
                    forecast[row_of[station], j] = value
    latest = [LatestForecast(s, variable, int(before), issued.get(s), hours, forecast[i],
                             hours[np.isnan(forecast[i])].tolist()) for i, s in enumerate(stations)]
    return observed, latest


# ---------------------------------------------------------------------------------------------- seeding

def seed_nem_weather(store: Store, path: str | Path = BUNDLED_NEM, *, until: str | pd.Timestamp | None = None,
                     batch: int = 20_000) -> WeatherResult | None:
    """The NEM's stations (`NEM_STATIONS`: one per state, its capital, serving the state's zone) and their
    observed temperatures from the bundled file: half-hours resampled to hourly means (as ingest does the
    load), only the rows before `until` (the file's wall clock). Once per file and `until`, like
    `Store.seed` (None when done before)."""
    path = Path(path)
    fingerprint = hashlib.sha256(f"weather\n{_fingerprint(path, until)}".encode()).hexdigest()
    with store.reader.connect() as conn:
        if conn.execute(sa.select(sources_table.c.rows).where(sources_table.c.fingerprint == fingerprint)).first():
            return None
    time_zone = BUNDLED["NEM"].time_zone
    register_stations(store, [Station(s, time_zone, f"{zone}: air temperature observed in the state's capital "
                                                    f"(Bureau of Meteorology)") for zone, s in NEM_STATIONS.items()])
    map_zones(store, NEM_STATIONS)
    table = pd.read_parquet(path, columns=[ZONE, TIMESTAMP, TEMPERATURE])
    if until is not None:
        table = table[table[TIMESTAMP] < pd.Timestamp(until)]
    table = table.dropna(subset=[TEMPERATURE])
    # the file's times start each half-hour (market time, no daylight saving): its hour is the floor
    hourly = (table.assign(hour=table[TIMESTAMP].dt.floor("h"), zone=table[ZONE].astype(str))
              .groupby(["zone", "hour"], sort=True)[TEMPERATURE].mean().reset_index())
    hourly = hourly[hourly["zone"].isin(NEM_STATIONS)]
    total = WeatherResult()
    for start in range(0, len(hourly), batch):
        part = hourly.iloc[start:start + batch]
        result = ingest_observations(store, part["zone"].map(NEM_STATIONS).tolist(), [TEMPERATURE] * len(part),
                                     pd.DatetimeIndex(part["hour"]), part[TEMPERATURE].to_numpy())
        total.add(result, offset=start)
    with store.engine.begin() as conn:
        store._serialize(conn)
        if not conn.execute(sa.select(sources_table.c.rows).where(sources_table.c.fingerprint == fingerprint)).first():
            conn.execute(sources_table.insert().values(fingerprint=fingerprint, path=f"weather:{path}",
                                                       rows=len(hourly), ingested_at=time.time()))
    return total
