"""The forecast archive over the API: storing a ForecastRegion answer, ListForecasts, GetForecastAccuracy.

The store side (tables, the one-per-slot key, the accuracy SQL) is `models.archive`; the schedule that
issues forecasts is `serving.scheduler`. Everything here runs off the replica's event loop (the callers
wrap it in `asyncio.to_thread`) and raises `ApiError` naming the field for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models import archive
from models.store import Store
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.engine import invalid, not_found, shown

MAX_LIST = 1000
MAX_WINDOW_DAYS = 366


def zone_forecasts(response: pb.ForecastRegionResponse) -> list[archive.ZoneForecast]:
    """The zones and the TOTAL of a ForecastRegion answer, as the archive keeps them."""
    out = []
    for f in [*response.zones, response.total]:
        levels = [b.level for b in f.quantiles]
        q = np.array([b.values for b in f.quantiles], dtype=np.float64).T.reshape(len(f.timestamps), len(levels))
        out.append(archive.ZoneForecast(f.name, list(f.timestamps), np.asarray(f.point, np.float64), levels, q,
                                        f.fallback, f.last_reading))
    return out


def archive_response(store: Store, response: pb.ForecastRegionResponse, time_zone: str, *,
                     slot_ts: int | None = None, late: bool = False) -> str | None:
    """Store a ForecastRegion answer; its id (None: the slot had one already)."""
    return archive.record(store, region=response.region, time_zone=time_zone, issue_time=response.issue_time,
                          model_name=response.model.name, model_version=response.model.version,
                          watermark=response.watermark, fallback_zones=response.fallback_zones,
                          zones=zone_forecasts(response), slot_ts=slot_ts, late=late)


def utc_seconds(text: str, name: str) -> int | None:
    """An ISO 8601 time (without an offset: UTC) as UTC seconds; None for ''."""
    if not text:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if stamp is pd.NaT:
        raise invalid(f"{name}: cannot read {shown(text)} as an ISO 8601 time, e.g. 2018-08-01T00:00:00+00:00")
    if stamp.tz is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.timestamp())


def utc_iso(seconds: float | None) -> str:
    return "" if seconds is None else pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


def _region_zones(regions: dict[str, list[str]], region: str, zone: str) -> list[str]:
    if not region:
        raise invalid(f"region: required; this server has {sorted(regions)}")
    if region not in regions:
        raise not_found(f"region: unknown region {shown(region)}; this server has {sorted(regions)}")
    zones = regions[region]
    if zone and zone not in (*zones, archive.TOTAL):
        raise not_found(f"zone: unknown zone {shown(zone)} in region {region} (it has {zones} and {archive.TOTAL})")
    return zones


def _limit(value: int, default: int) -> int:
    if value > MAX_LIST:
        raise invalid(f"limit: at most {MAX_LIST}, got {value}; page with issued_to")
    return value or default


def _fill(msg: pb.Forecast, z: archive.ZoneForecast) -> None:
    msg.name, msg.fallback, msg.last_reading = z.name, z.fallback, z.last_reading
    msg.timestamps.extend(z.timestamps)
    msg.point.extend(z.point.tolist())
    for j, level in enumerate(z.levels):
        msg.quantiles.add(level=level, values=z.quantiles[:, j].tolist() if len(z.quantiles) else [])


def list_forecasts(store: Store, regions: dict[str, list[str]], request: pb.ListForecastsRequest
                   ) -> pb.ListForecastsResponse:
    """ListForecasts: `regions` is the server's region -> zones."""
    _region_zones(regions, request.region, request.zone)
    start, end = (utc_seconds(request.issued_from, "issued_from"), utc_seconds(request.issued_to, "issued_to"))
    if start is not None and end is not None and end <= start:
        raise invalid(f"issued_to: {shown(request.issued_to)} is not after issued_from {shown(request.issued_from)}")
    found = archive.list_forecasts(store, request.region, zone=request.zone or None, issued_from=start,
                                   issued_to=end, scheduled_only=request.scheduled_only,
                                   limit=_limit(request.limit, 100), headers_only=request.headers_only)
    out = pb.ListForecastsResponse()
    for f in found:
        msg = out.forecasts.add(
            id=f.id, region=f.region, issue_time=f.issue_time, issued_at=utc_iso(f.issued_at),
            slot=utc_iso(f.slot_ts), scheduled=f.scheduled, late=f.late,
            model=pb.ModelRef(name=f.model_name, version=f.model_version), horizon=f.horizon,
            watermark=f.watermark, fallback_zones=f.fallback_zones)
        for z in f.zones:
            _fill(msg.total if z.name == archive.TOTAL else msg.zones.add(), z)
    return out


def buckets_of(ends: Sequence[int]) -> tuple[int, ...]:
    """Checked horizon bucket ends (default 6, 24, 48)."""
    ends = tuple(int(e) for e in ends) or archive.DEFAULT_BUCKETS
    if ends[0] < 1 or any(b <= a for a, b in zip(ends, ends[1:])):
        raise invalid(f"bucket_ends: must be ascending steps from 1 on, e.g. [6, 24, 48]; got {list(ends)}")
    if ends[-1] > 24 * 14:
        raise invalid(f"bucket_ends: {ends[-1]} is beyond any forecast horizon (at most {24 * 14} h)")
    return ends


def forecast_accuracy(store: Store, regions: dict[str, list[str]], request: pb.GetForecastAccuracyRequest,
                      latest: int | None) -> pb.ForecastAccuracy:
    """GetForecastAccuracy; `latest`: the region's latest reading (UTC seconds), the default window end."""
    zones = _region_zones(regions, request.region, request.zone)
    days = request.window_days or 7
    if days > MAX_WINDOW_DAYS:
        raise invalid(f"window_days: at most {MAX_WINDOW_DAYS}, got {days}")
    buckets = buckets_of(request.bucket_ends)
    end = utc_seconds(request.until, "until")
    if end is None:
        if latest is None:
            raise invalid(f"region: {request.region} has no readings yet, so no forecast can be scored")
        end = latest + 3600  # issue times up to and including the latest reading's hour
    start = end - days * 86400
    rows = archive.accuracy(store, request.region, zones, start=start, end=end, buckets=buckets,
                            zone=request.zone or None, include_on_demand=request.include_on_demand,
                            model_version=request.model_version or None)
    out = pb.ForecastAccuracy(region=request.region, window_start=utc_iso(start), window_end=utc_iso(end))
    for r in rows:
        out.rows.add(zone=r.zone, first_step=r.first_step, last_step=r.last_step, forecasts=r.forecasts,
                     points=r.points, mae=r.mae, mape=r.mape, pinball=r.pinball, bias=r.bias,
                     coverage_80=r.coverage_80)
    return out
