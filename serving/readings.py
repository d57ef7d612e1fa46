"""ListReadings: the stored readings of a region's zones over a window of time, as the operator dashboard
charts them (`GET /v1/readings`).

The readings are returned as held: UTC, at each zone's resolution, oldest first. The window is either the
last `hours` before the end of the newest reading of the selection (the default: a week), or `since` and
`until`. Two documented limits keep an answer bounded: at most MAX_POINTS_PER_ZONE readings per zone (the
newest of the window; `max_points` asks for fewer, more is INVALID_ARGUMENT) and at most
MAX_POINTS_PER_RESPONSE in all, checked before anything is read from what the store knows of each zone (its
count and latest reading), so a client can predict it: RESOURCE_EXHAUSTED beyond it. Everything here runs
off the replica's event loop (the caller wraps it in `asyncio.to_thread`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from models.store import Store, ZoneSpec
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.archive import utc_seconds
from serving.engine import ApiError, invalid, not_found, shown

DEFAULT_HOURS = 168  # a week: what the dashboard's overview shows
MAX_POINTS_PER_ZONE = 10_000  # more than a year of hourly readings
MAX_POINTS_PER_RESPONSE = 200_000  # e.g. 100 zones x 2,000 readings; about 7 MB of JSON
HOUR_S = 3600


def iso_z(ts: np.ndarray) -> list[str]:
    """UTC seconds as ISO 8601 with "Z" (the API's form of an instant)."""
    return [f"{s}Z" for s in np.datetime_as_string(np.asarray(ts, np.int64).astype("datetime64[s]"), unit="s")]


def list_request(region: str = "", zones: Sequence[str] = (), hours: str = "", since: str = "", until: str = "",
                 max_points: str = "") -> rpb.ListReadingsRequest:
    """A ListReadingsRequest from HTTP query parameters (numbers as text, so a bad one is named like the RPC's)."""

    def whole(text: str, name: str) -> int:
        try:
            n = int(text) if text.strip() else 0
        except ValueError:
            raise invalid(f"{name}: {shown(text)} is not a whole number") from None
        if not 0 <= n < 2**32:
            raise invalid(f"{name}: must be 0 or more (and below 2^32), got {n}")
        return n

    return rpb.ListReadingsRequest(region=region, zones=list(zones), hours=whole(hours, "hours"), since=since,
                                   until=until, max_points=whole(max_points, "max_points"))


def _selected(regions: Mapping[str, Sequence[str]], request: rpb.ListReadingsRequest) -> list[str]:
    """The zones the request reads: its `zones` (each of the region, once) or every zone of the region."""
    if not request.region:
        raise invalid(f"region: required; this server has {sorted(regions)}")
    if request.region not in regions:
        raise not_found(f"region: unknown region {shown(request.region)}; this server has {sorted(regions)}")
    region_zones = sorted(regions[request.region])
    seen: set[str] = set()
    for i, zone in enumerate(request.zones):
        if zone not in region_zones:
            raise not_found(f"zones[{i}]: unknown zone {shown(zone)} in region {request.region} "
                            f"(it has {region_zones})")
        if zone in seen:
            raise invalid(f"zones[{i}]: {shown(zone)} is listed twice")
        seen.add(zone)
    return list(request.zones) or region_zones


def list_readings(store: Store, named_regions: Mapping[str, Sequence[str]], request: rpb.ListReadingsRequest,
                  *, max_points_per_response: int = MAX_POINTS_PER_RESPONSE) -> rpb.ListReadingsResponse:
    """The ListReadings answer from `store`; `named_regions` are the server's configured regions (subsets of
    zones, beside the regions the zones are registered in). ApiError names the field of bad input."""
    watermark = store.watermark()  # before the reads: every reading committed up to it is in the answer
    held: dict[str, tuple[ZoneSpec, int | None, int]] = {s.zone: (s, last, n) for s, last, n in store.zone_status()}
    regions: dict[str, list[str]] = {}
    for spec, _, _ in held.values():
        regions.setdefault(spec.region, []).append(spec.zone)
    zones = _selected(regions | dict(named_regions), request)

    if request.max_points > MAX_POINTS_PER_ZONE:
        raise invalid(f"max_points: at most {MAX_POINTS_PER_ZONE:,} readings per zone, got {request.max_points:,}")
    max_points = request.max_points or MAX_POINTS_PER_ZONE
    since, until = utc_seconds(request.since, "since"), utc_seconds(request.until, "until")
    if since is not None and until is not None:
        if request.hours:
            raise invalid("hours: give hours or both since and until, not all three")
        if since >= until:
            raise invalid(f"since: {shown(request.since)} is not before until {shown(request.until)}")
    # the end of each zone's newest reading (its time plus its resolution): the default `until`
    ends = [held[z][1] + held[z][0].resolution_s for z in zones if z in held and held[z][1] is not None]
    if until is None and ends and (since is None or max(ends) > since):
        until = max(ends)
    if since is None and until is not None:
        since = until - (request.hours or DEFAULT_HOURS) * HOUR_S

    # the most readings each zone's window can hold (its count and newest reading bound it): the limit's check
    bounds = {}
    for zone in zones:
        spec, last, count = held.get(zone, (None, None, 0))
        if spec is None or last is None:
            bounds[zone] = 0
            continue
        end = last + spec.resolution_s if until is None else min(until, last + spec.resolution_s)
        span = count if since is None else max(math.ceil((end - since) / spec.resolution_s), 0)
        bounds[zone] = min(count, span)
    total = sum(min(b, max_points) for b in bounds.values())
    if total > max_points_per_response:
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"series: up to {total:,} readings exceed this server's limit of "
                       f"{max_points_per_response:,} per ListReadings answer; ask for fewer zones, a shorter "
                       "window (hours, or since and until) or fewer readings per zone (max_points)")

    readable = [z for z in zones if bounds[z]]
    # one more than max_points where the window may hold more: its presence says the answer was cut
    cut = any(b > max_points for b in bounds.values())
    rows = store.readings(readable, since, until, newest=max_points + 1 if cut else None) if readable else None
    response = rpb.ListReadingsResponse(watermark=watermark, since=iso_z([since])[0] if since is not None else "",
                                        until=iso_z([until])[0] if until is not None else "")
    by_zone = {} if rows is None else {zone: part for zone, part in rows.groupby("zone", sort=False)}
    for zone in zones:
        series = response.series.add(zone=zone, resolution_s=held[zone][0].resolution_s if zone in held else 0)
        part = by_zone.get(zone)
        if part is None:
            continue
        ts, values = part["ts"].to_numpy(), part["value"].to_numpy()
        if len(ts) > max_points:
            ts, values, series.truncated = ts[-max_points:], values[-max_points:], True
        series.timestamps.extend(iso_z(ts))
        series.values.extend(values.tolist())
    return response
