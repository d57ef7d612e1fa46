"""The forecast archive: every forecast the service issued, kept in the store, and its live accuracy.

    forecasts           id, region, slot_ts (scheduled: the slot, unique per region; NULL on demand),
                        issue_ts (first forecast hour, UTC seconds) and issue_time (the same on the region's
                        wall clock, as the API names it), issued_at, late, model, horizon, levels, watermark
    forecast_zones      per forecast and zone (and TOTAL): its position, fallback reason, latest reading
    forecast_points     per forecast, zone and step: the hour (UTC seconds; NULL for a wall-clock hour that
                        does not exist, which is never scored) and the point forecast
    forecast_quantiles  per forecast, zone, step and level: the quantile forecast

One forecast per region and slot is the unique key (region, slot_ts), not a convention: however many
replicas or schedulers try, the second insert of a slot does nothing (`record` returns None).

Live accuracy (`accuracy`) is one SQL query in the store: the archived forecasts of a window joined with the
readings that have arrived since (hour means, so sub-hourly zones score too; the region total where every
zone reported), aggregated per zone and horizon bucket. Its metrics are those of the offline evaluation
(training/evaluate.py, utilsforecast): MAE, MAPE (%), mean pinball loss over the levels, bias and the
10-90 % band's coverage; tests/test_archive.py checks that the two agree on the same rows.

Built by migration 0003 (models/migrations), never by create_all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from models.store import MAX_ZONE_NAME, Store, metadata, readings_table, zones_table

TOTAL = "TOTAL"
DEFAULT_BUCKETS = (6, 24, 48)
COVERAGE_LEVELS = (0.1, 0.9)  # the 80 % band

forecasts_table = sa.Table(
    "forecasts", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("region", sa.String(MAX_ZONE_NAME), nullable=False),
    sa.Column("slot_ts", sa.BigInteger),
    sa.Column("issue_ts", sa.BigInteger, nullable=False),
    sa.Column("issue_time", sa.String(32), nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("late", sa.Boolean, nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("levels", sa.Text, nullable=False),
    sa.Column("watermark", sa.BigInteger, nullable=False),
    sa.Column("fallback_zones", sa.Integer, nullable=False),
    sa.UniqueConstraint("region", "slot_ts", name="uq_forecasts_region_slot"),
)
forecast_zones_table = sa.Table(
    "forecast_zones", metadata,
    sa.Column("forecast_id", sa.String(128), sa.ForeignKey("forecasts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("zone", sa.String(MAX_ZONE_NAME), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("fallback", sa.Text, nullable=False),
    sa.Column("last_reading", sa.String(40), nullable=False),
)
forecast_points_table = sa.Table(
    "forecast_points", metadata,
    sa.Column("forecast_id", sa.String(128), sa.ForeignKey("forecasts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("zone", sa.String(MAX_ZONE_NAME), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("ts", sa.BigInteger),
    sa.Column("local", sa.String(32), nullable=False),
    sa.Column("point", sa.Float(53), nullable=False),
)
forecast_quantiles_table = sa.Table(
    "forecast_quantiles", metadata,
    sa.Column("forecast_id", sa.String(128), sa.ForeignKey("forecasts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("zone", sa.String(MAX_ZONE_NAME), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("level", sa.Float(53), primary_key=True),
    sa.Column("value", sa.Float(53), nullable=False),
)


@dataclass
class ZoneForecast:
    """One zone's forecast (or the region TOTAL), as the API answered it."""

    name: str
    timestamps: list[str]  # wall-clock hours of the region, ISO 8601
    point: np.ndarray  # [H]
    levels: list[float]
    quantiles: np.ndarray  # [H, len(levels)]
    fallback: str = ""
    last_reading: str = ""


@dataclass
class ArchivedForecast:
    """A forecast read back from the archive (`zones` empty when only headers were asked for)."""

    id: str
    region: str
    issue_time: str
    issue_ts: int
    issued_at: float
    slot_ts: int | None
    late: bool
    model_name: str
    model_version: str
    horizon: int
    levels: list[float]
    watermark: int
    fallback_zones: int
    zones: list[ZoneForecast] = field(default_factory=list)  # zones in order, then TOTAL

    @property
    def scheduled(self) -> bool:
        return self.slot_ts is not None


def slot_id(region: str, slot_ts: int) -> str:
    """The id of region's scheduled forecast for a slot: readable and the same whoever issues it."""
    return f"{region}@{pd.Timestamp(slot_ts, unit='s', tz='UTC').strftime('%Y-%m-%dT%H:%M:%SZ')}"


def to_utc_seconds(local: Sequence[str], time_zone: str) -> np.ndarray:
    """UTC seconds of wall-clock hours in `time_zone`, as float (NaN for an hour that does not exist or is
    ambiguous there: the archive does not guess which instant a daylight-saving hour meant)."""
    stamps = pd.DatetimeIndex(pd.to_datetime(list(local)))
    if stamps.tz is None:
        stamps = stamps.tz_localize(time_zone, ambiguous="NaT", nonexistent="NaT")
    seconds = stamps.as_unit("s").asi8.astype(np.float64)  # pandas parses ISO strings at varying resolutions
    seconds[np.asarray(stamps.isna())] = np.nan
    return seconds


def record(store: Store, *, region: str, time_zone: str, issue_time: str, model_name: str, model_version: str,
           watermark: int, fallback_zones: int, zones: Sequence[ZoneForecast], slot_ts: int | None = None,
           late: bool = False, now: float | None = None) -> str | None:
    """Store one issued forecast (every zone and the TOTAL) in one transaction; its id, or None when the
    region's `slot_ts` already has a forecast (the unique key decides, whoever got there first)."""
    now = time.time() if now is None else now
    forecast_id = slot_id(region, slot_ts) if slot_ts is not None else f"{region}@{uuid.uuid4().hex[:16]}"
    levels = zones[0].levels if zones else []
    horizon = len(zones[0].timestamps) if zones else 0
    issue_ts = to_utc_seconds([issue_time], time_zone)[0]
    if not np.isfinite(issue_ts):  # an ambiguous first hour: its first occurrence (the model read up to it)
        first = pd.Timestamp(issue_time).tz_localize(time_zone, ambiguous=True, nonexistent="shift_forward")
        issue_ts = first.timestamp()
    header = dict(id=forecast_id, region=region, slot_ts=slot_ts, issue_ts=int(issue_ts), issue_time=issue_time,
                  issued_at=now, late=late, model_name=model_name, model_version=model_version, horizon=horizon,
                  levels=json.dumps([float(q) for q in levels]), watermark=int(watermark),
                  fallback_zones=int(fallback_zones))
    zone_rows, point_rows, quantile_rows = [], [], []
    steps = np.arange(1, horizon + 1)
    for position, z in enumerate(zones):
        zone_rows.append(dict(forecast_id=forecast_id, zone=z.name, position=position, fallback=z.fallback,
                              last_reading=z.last_reading))
        if not len(z.timestamps):  # a zone without readings: named, nothing forecast
            continue
        ts = to_utc_seconds(z.timestamps, time_zone)
        point_rows += [dict(forecast_id=forecast_id, zone=z.name, step=int(s), ts=None if np.isnan(t) else int(t),
                            local=stamp, point=float(p)) for s, t, stamp, p in zip(steps, ts, z.timestamps, z.point)]
        q = np.asarray(z.quantiles, dtype=np.float64).reshape(len(z.timestamps), len(z.levels))
        quantile_rows += [dict(forecast_id=forecast_id, zone=z.name, step=int(s), level=float(level), value=float(v))
                          for s, row in zip(steps, q) for level, v in zip(z.levels, row)]
    insert = (postgresql.insert if store.dialect == "postgresql" else sqlite.insert)(forecasts_table)
    with store.engine.begin() as conn:
        store._serialize(conn)
        statement = insert.values(**header)
        if slot_ts is not None:
            statement = statement.on_conflict_do_nothing(index_elements=["region", "slot_ts"])
        if conn.execute(statement.returning(forecasts_table.c.id)).first() is None:
            return None  # the slot has its forecast already
        for table, rows in ((forecast_zones_table, zone_rows), (forecast_points_table, point_rows),
                            (forecast_quantiles_table, quantile_rows)):
            if rows:
                conn.execute(table.insert(), rows)
    return forecast_id


def last_slot(store: Store, region: str) -> int | None:
    """The newest slot of `region` that has a scheduled forecast."""
    with store.reader.connect() as conn:
        return conn.execute(sa.select(sa.func.max(forecasts_table.c.slot_ts)).where(
            forecasts_table.c.region == region)).scalar()


def slots_held(store: Store, region: str, first: int, last: int) -> set[int]:
    """The slots of `region` between `first` and `last` (inclusive) that have a scheduled forecast."""
    f = forecasts_table.c
    with store.reader.connect() as conn:
        return set(conn.execute(sa.select(f.slot_ts).where(f.region == region, f.slot_ts >= first,
                                                           f.slot_ts <= last)).scalars())


def list_forecasts(store: Store, region: str, *, zone: str | None = None, issued_from: int | None = None,
                   issued_to: int | None = None, scheduled_only: bool = False, limit: int = 100,
                   headers_only: bool = False, model_version: str | None = None) -> list[ArchivedForecast]:
    """Archived forecasts of `region` with issued_from <= issue_ts < issued_to (UTC seconds; None: unbounded),
    the newest issue first; `zone`: only that zone's (or TOTAL's) values."""
    f = forecasts_table.c
    query = sa.select(forecasts_table).where(f.region == region)
    if issued_from is not None:
        query = query.where(f.issue_ts >= int(issued_from))
    if issued_to is not None:
        query = query.where(f.issue_ts < int(issued_to))
    if scheduled_only:
        query = query.where(f.slot_ts.is_not(None))
    if model_version:
        query = query.where(f.model_version == model_version)
    query = query.order_by(f.issue_ts.desc(), f.issued_at.desc()).limit(int(limit))
    with store.reader.connect() as conn:
        headers = [ArchivedForecast(r.id, r.region, r.issue_time, r.issue_ts, r.issued_at, r.slot_ts, bool(r.late),
                                    r.model_name, r.model_version, r.horizon, json.loads(r.levels), r.watermark,
                                    r.fallback_zones) for r in conn.execute(query)]
        if headers_only or not headers:
            return headers
        ids = [h.id for h in headers]
        z, p, q = forecast_zones_table.c, forecast_points_table.c, forecast_quantiles_table.c
        zq = sa.select(forecast_zones_table).where(z.forecast_id.in_(ids))
        pq = sa.select(p.forecast_id, p.zone, p.step, p.local, p.point).where(p.forecast_id.in_(ids))
        qq = sa.select(q.forecast_id, q.zone, q.step, q.level, q.value).where(q.forecast_id.in_(ids))
        if zone:
            zq, pq, qq = zq.where(z.zone == zone), pq.where(p.zone == zone), qq.where(q.zone == zone)
        zones = conn.execute(zq.order_by(z.forecast_id, z.position)).all()
        points = pd.DataFrame(conn.execute(pq).all(), columns=["forecast_id", "zone", "step", "local", "point"])
        quantiles = pd.DataFrame(conn.execute(qq).all(), columns=["forecast_id", "zone", "step", "level", "value"])
    by_key = {k: g.sort_values("step") for k, g in points.groupby(["forecast_id", "zone"], sort=False)}
    q_by_key = {k: g.pivot(index="step", columns="level", values="value").sort_index()
                for k, g in quantiles.groupby(["forecast_id", "zone"], sort=False)}
    out = {h.id: h for h in headers}
    for row in zones:
        h = out[row.forecast_id]
        pts = by_key.get((row.forecast_id, row.zone))
        qs = q_by_key.get((row.forecast_id, row.zone))
        h.zones.append(ZoneForecast(
            row.zone, [] if pts is None else pts["local"].tolist(),
            np.empty(0) if pts is None else pts["point"].to_numpy(),
            h.levels, np.empty((0, len(h.levels))) if qs is None else qs[h.levels].to_numpy(),
            row.fallback, row.last_reading))
    return headers


# ---------------------------------------------------------------------------------------------- accuracy

@dataclass
class AccuracyRow:
    zone: str
    first_step: int
    last_step: int
    forecasts: int
    points: int
    mae: float
    mape: float
    pinball: float
    bias: float
    coverage_80: float


def accuracy(store: Store, region: str, zones: Sequence[str], *, start: int, end: int,
             buckets: Sequence[int] = DEFAULT_BUCKETS, zone: str | None = None, include_on_demand: bool = False,
             model_version: str | None = None) -> list[AccuracyRow]:
    """Live accuracy of `region`'s archived forecasts issued in [start, end) (UTC seconds) against the
    readings held now, per zone (`zones`: the region's, in order; then TOTAL) and horizon bucket (`buckets`:
    ascending last steps), computed by the database. Rows without a scored step are left out."""
    f, p, q = forecasts_table, forecast_points_table, forecast_quantiles_table
    r = readings_table
    chosen = sa.select(f.c.id).where(f.c.region == region, f.c.issue_ts >= int(start), f.c.issue_ts < int(end))
    if not include_on_demand:
        chosen = chosen.where(f.c.slot_ts.is_not(None))
    if model_version:
        chosen = chosen.where(f.c.model_version == model_version)
    chosen = chosen.cte("chosen")
    # forecasts of the whole region: only their TOTAL is the region total (an on-demand subset's is not)
    fz = forecast_zones_table.c
    whole = (sa.select(fz.forecast_id).join(chosen, chosen.c.id == fz.forecast_id).group_by(fz.forecast_id)
             .having(sa.func.count() == len(zones) + 1)).cte("whole")
    # each forecast hour with the readings of that hour (their mean: sub-hourly zones score too), found
    # through the readings' (zone, ts) key; the TOTAL where every zone's hour is complete
    z = zones_table
    step_ok = p.c.step <= max(buckets)
    in_hour = sa.and_(r.c.ts >= p.c.ts, r.c.ts < p.c.ts + 3600)
    keys = (p.c.forecast_id, p.c.zone, p.c.step, p.c.point)
    per_zone = (sa.select(*keys, sa.func.avg(r.c.value).label("y"))
                .join(chosen, chosen.c.id == p.c.forecast_id)
                .join(r, sa.and_(r.c.zone == p.c.zone, in_hour))
                .where(step_ok, p.c.zone != TOTAL).group_by(*keys))
    total = (sa.select(*keys, sa.func.sum(r.c.value * z.c.resolution_s / 3600.0).label("y"))
             .join(chosen, chosen.c.id == p.c.forecast_id)
             .join(whole, whole.c.forecast_id == p.c.forecast_id)
             .join(r, sa.and_(r.c.zone.in_(list(zones)), in_hour))
             .join(z, z.c.zone == r.c.zone)
             .where(step_ok, p.c.zone == TOTAL).group_by(*keys)
             .having(sa.func.sum(z.c.resolution_s) == 3600 * len(zones)))
    if zone:
        per_zone, total = per_zone.where(p.c.zone == zone), total.where(p.c.zone == zone)
    scored = sa.union_all(per_zone, total).cte("scored")
    bucket = sa.case(*[(scored.c.step <= last, i) for i, last in enumerate(buckets)], else_=None)
    err = scored.c.point - scored.c.y
    points = (sa.select(scored.c.zone, bucket.label("bucket"),
                        sa.func.count(sa.distinct(scored.c.forecast_id)).label("forecasts"),
                        sa.func.count().label("points"),
                        sa.func.avg(sa.func.abs(err)).label("mae"),
                        (sa.func.avg(sa.func.abs(err) / sa.func.abs(scored.c.y)) * 100).label("mape"),
                        sa.func.avg(err).label("bias"))
              .group_by(scored.c.zone, bucket)).subquery("points")
    diff = scored.c.y - q.c.value
    loss = sa.case((diff >= 0, q.c.level * diff), else_=(q.c.level - 1) * diff)
    pinball = (sa.select(scored.c.zone, bucket.label("bucket"), sa.func.avg(loss).label("pinball"))
               .join(q, sa.and_(q.c.forecast_id == scored.c.forecast_id, q.c.zone == scored.c.zone,
                                q.c.step == scored.c.step))
               .group_by(scored.c.zone, bucket)).subquery("pinball")
    lo, hi = q.alias("lo"), q.alias("hi")
    inside = sa.case((sa.and_(scored.c.y >= lo.c.value, scored.c.y <= hi.c.value), 1.0), else_=0.0)

    def band(alias: sa.Alias, level: float) -> sa.ColumnElement:
        return sa.and_(alias.c.forecast_id == scored.c.forecast_id, alias.c.zone == scored.c.zone,
                       alias.c.step == scored.c.step, sa.func.abs(alias.c.level - level) < 1e-9)

    coverage = (sa.select(scored.c.zone, bucket.label("bucket"), sa.func.avg(inside).label("coverage"))
                .join(lo, band(lo, COVERAGE_LEVELS[0])).join(hi, band(hi, COVERAGE_LEVELS[1]))
                .group_by(scored.c.zone, bucket)).subquery("coverage")

    def same(other: sa.Subquery) -> sa.ColumnElement:
        return sa.and_(other.c.zone == points.c.zone, other.c.bucket == points.c.bucket)

    # one statement, so that the database computes the scored rows once for the three aggregates
    query = (sa.select(points, pinball.c.pinball, coverage.c.coverage)
             .outerjoin(pinball, same(pinball)).outerjoin(coverage, same(coverage))
             .where(points.c.bucket.is_not(None)))
    with store.reader.connect() as conn:
        base = conn.execute(query).all()
    order = {z: i for i, z in enumerate([*zones, TOTAL])}
    rows = []
    for row in sorted(base, key=lambda b: (order.get(b.zone, len(order)), b.bucket)):
        rows.append(AccuracyRow(row.zone, 1 if row.bucket == 0 else buckets[row.bucket - 1] + 1, buckets[row.bucket],
                                int(row.forecasts), int(row.points), float(row.mae), float(row.mape),
                                _number(row.pinball), float(row.bias), _number(row.coverage)))
    return rows


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)
