"""Anomaly scans on arrival: new hours of every zone scanned as they arrive, events stored with a stable id.

    Scheduler --every scan_every_s--> Forecaster.scan_arrivals --> scan_store(store, detector)
    ReadingsService batch --> Ingestor: ingest_batch --> record_rejected_zeros (zeros the ingest refused)
    ListAnomalies / GET /v1/anomalies/events --> list_anomalies(store, request)

A scan reads, per zone, the hours after its `scan_state` (the last hour scanned) up to its latest complete
hour (the hour of its latest reading, for an hourly zone; sub-hourly readings are averaged to UTC hours),
with the context before them that the rules and the detector need, and finds:

    flat_line      the same value (within FLAT_TOLERANCE, relative) for FLAT_MIN_HOURS or more hours in a
                   row: a stuck meter. Always on, detector or not; an event from its 4th hour, so within 6 h.
    detector       the served autoencoder's events (`models.autoencoder.detect_series`, the same two passes
                   and calibration as DetectAnomalies), when the replica has an anomaly model and the zone
                   has enough gap-free history (the detector's reference weeks and window: 840 h by
                   default). Detector hours next to a flat line or zero readings are that event's, not a
                   second one.
    zero_readings  readings of zero or less: the ingest refuses them (they never reach the readings
                   table), so `ingest_batch` reports them here as they are refused.

Each finding continues the zone's event of its kind that it overlaps or follows (within the detector's
merge gap, 6 h by default; 1 h for the rules): the event's end, severity and detail are updated, it is
not reported again. Otherwise a new event is opened with the id ZONE:KIND:START (first hour, UTC), so a
scan run twice, or by two replicas at once, cannot store it twice. An open event that nothing continues
closes once the zone has had normal hours after it: 1 h for a flat line, the merge gap for the detector,
a valid reading for zero readings. Events and scan_state are written in one transaction (`apply_scan`).

A zone scanned for the first time (or after more than FIRST_SCAN_HOURS unscanned) has only its last
FIRST_SCAN_HOURS (7 days) scanned, not years of seeded history; hours that arrive late, at or before
the zone's scan_state, are not scanned again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from models.data import fill_short_gaps
from models.events import (
    HOUR_S,
    KIND_DETECTOR,
    KIND_FLAT,
    KIND_ZERO,
    Finding,
    ScanCounts,
    StoredEvent,
    ZoneScan,
    apply_scan,
    iso_hour,
    list_events,
    record_zero_readings,
    scan_states,
    zone_events,
)
from models.store import IngestResult, Store, ZoneSpec
from serving.api.energyopt.v1 import anomaly_pb2 as apb
from serving.archive import utc_seconds
from serving.engine import invalid, not_found, shown

logger = logging.getLogger("ray.serve")

FIRST_SCAN_HOURS = 7 * 24  # a zone never scanned (or far behind): only its latest week
FLAT_MIN_HOURS = 4  # a stuck meter: the same value this many hours in a row
FLAT_TOLERANCE = 1e-6  # ...within this relative difference (real load moves far more from hour to hour)
FLAT_CONTEXT_HOURS = 48  # hours before the new ones read for the rules (a run that began before them)
DETECTOR_SCORED_HOURS = 14 * 24  # hours the detector scores per scan (a zone unknown to its calibration is
#                                  normalized by its own scores once it has two weeks of them)
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
_NOT_POSITIVE = re.compile(r"^value (\S+) is not positive")


# ---------------------------------------------------------------------------------------------- scanning

def scan_store(store: Store, detector: Any = None, now: float | None = None,
               zones: Sequence[str] | None = None) -> ScanCounts:
    """Scan every zone's (or `zones`') new hours and write what was found (`models.events.apply_scan`).
    `detector`: the replica's `serving.anomaly.AnomalyEngine` (None: the rules only)."""
    now = time.time() if now is None else now
    states = scan_states(store)
    scans = []
    detected = 0
    for spec, last_ts, _ in store.zone_status():
        if last_ts is None or (zones is not None and spec.zone not in zones):
            continue
        last = (int(last_ts) + spec.resolution_s) // HOUR_S * HOUR_S - HOUR_S  # the latest complete hour
        scanned = states.get(spec.zone)
        first = last - (FIRST_SCAN_HOURS - 1) * HOUR_S
        if scanned is not None:
            first = max(first, scanned + HOUR_S)
        if first > last:
            continue
        scan, ran = scan_zone(store, spec, scanned, first, last, detector)
        scans.append(scan)
        detected += ran
    counts = apply_scan(store, scans, now)
    counts.detector_zones = detected
    return counts


def scan_zone(store: Store, spec: ZoneSpec, scanned: int | None, first: int, last: int,
              detector: Any = None) -> tuple[ZoneScan, bool]:
    """One zone's findings in its hours first..last (UTC seconds of hours), and whether the detector ran."""
    context = FLAT_CONTEXT_HOURS
    if detector is not None:
        scored = max(DETECTOR_SCORED_HOURS, (last - first) // HOUR_S + 1 + 24)
        context = max(context, detector.reference_hours + scored - ((last - first) // HOUR_S + 1))
    lo = first - context * HOUR_S
    rows = store.readings([spec.zone], lo, last + HOUR_S)
    values = hourly(rows, lo, last)
    if scanned is None and len(rows):  # a young zone: its hours from the first reading
        first = max(first, int(rows["ts"].iloc[0]) // HOUR_S * HOUR_S)
    scan = ZoneScan(spec.zone, spec.region, scanned, first, last, close_after={KIND_FLAT: 1, KIND_ZERO: 1})
    new = values[(first - lo) // HOUR_S:]
    valid = np.flatnonzero(np.isfinite(new))
    scan.valid_until = first + int(valid[-1]) * HOUR_S if len(valid) else None
    scan.findings = flat_lines(values, lo, first)
    ran = False
    if detector is not None:
        found = detect(detector, spec, values, lo, first)
        if found is not None:
            ran = True
            gap = int(detector.calibration.merge_gap_hours)
            scan.close_after[KIND_DETECTOR] = gap
            scan.merge_gap[KIND_DETECTOR] = gap
            rules = [(f.start_ts, f.end_ts) for f in scan.findings]
            rules += [(ev.start_ts, ev.end_ts) for ev in zone_events(store, [spec.zone], lo, (KIND_FLAT, KIND_ZERO))]
            margin = gap * HOUR_S
            scan.findings += [f for f in found if not any(f.start_ts <= b + margin and f.end_ts >= a - margin
                                                          for a, b in rules)]
    return scan, ran


def hourly(rows: pd.DataFrame, lo: int, last: int) -> np.ndarray:
    """A zone's readings (zone, ts, value) as the mean of each UTC hour lo..last (NaN: no reading)."""
    n = (last - lo) // HOUR_S + 1
    at = (rows["ts"].to_numpy() // HOUR_S * HOUR_S - lo) // HOUR_S
    inside = (at >= 0) & (at < n)
    at, value = at[inside], rows["value"].to_numpy()[inside]
    sums, counts = np.bincount(at, weights=value, minlength=n), np.bincount(at, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def flat_lines(values: np.ndarray, lo: int, first: int) -> list[Finding]:
    """Runs of FLAT_MIN_HOURS or more hours of the same value (hourly `values` from hour `lo`) that reach
    hour `first` or later."""
    prev, cur = values[:-1], values[1:]
    with np.errstate(invalid="ignore"):
        same = np.abs(cur - prev) <= FLAT_TOLERANCE * np.maximum(np.abs(cur), 1.0)  # NaN: False
    edges = np.diff(np.r_[0, same.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # steps i: hours i .. i + 1 equal
    out = []
    for a, b in zip(starts, ends):  # hours a .. b (inclusive) hold one value
        hours = b - a + 1
        start, end = lo + int(a) * HOUR_S, lo + int(b) * HOUR_S
        if hours >= FLAT_MIN_HOURS and end >= first:
            out.append(Finding(KIND_FLAT, start, end, float(hours),
                               f"the same value {values[a]:.1f} MW for {hours} h (a stuck meter?)"))
    return out


def detect(detector: Any, spec: ZoneSpec, values: np.ndarray, lo: int, first: int) -> list[Finding] | None:
    """The detector's events (reaching hour `first`) in the latest gap-free stretch of hourly `values` (from
    hour `lo`; gaps of up to 6 h filled as for DetectAnomalies); None when that stretch is too short to score."""
    from models.autoencoder import detect_series

    filled = fill_short_gaps(values)
    gaps = np.flatnonzero(~np.isfinite(filled))
    a = int(gaps[-1]) + 1 if len(gaps) else 0
    if len(filled) - a < detector.min_hours or lo + a * HOUR_S > first - detector.reference_hours * HOUR_S:
        return None
    start = lo + a * HOUR_S
    stamps = pd.DatetimeIndex(pd.to_datetime(start + HOUR_S * np.arange(len(filled) - a, dtype=np.int64), unit="s",
                                             utc=True)).tz_convert(spec.time_zone)  # the model reads local time
    rec = detect_series(detector.model, detector.bundle.features, detector.calibration,
                        filled[a:].astype(np.float32), stamps, spec.zone)
    out = []
    for e in rec.events:
        s, t = int(e.start.timestamp()), int(e.end.timestamp())
        if t >= first:
            out.append(Finding(KIND_DETECTOR, s, t, float(e.severity),
                               f"{e.component}: {e.observed:,.0f} MWh observed vs {e.expected:,.0f} MWh expected "
                               f"over {e.hours} h"))
    return out


class Scanner:
    """A replica's scans: one at a time (a call waits for the one under way, then scans what is new)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = asyncio.Lock()

    async def scan(self, detector: Any = None) -> dict[str, int]:
        async with self._lock:
            counts = await asyncio.to_thread(scan_store, self.store, detector)
        if counts.opened or counts.closed:
            logger.info("anomaly scan: %s", counts.as_dict())
        return counts.as_dict()


# ---------------------------------------------------------------------------------------------- ingest

def record_rejected_zeros(store: Store, result: IngestResult, now: float | None = None) -> None:
    """Open or extend the zero_readings events of the zones whose readings of zero or less `result` (a
    committed batch) refused. Never raises: the batch is stored either way, so a failure is logged."""
    if not result.rejected:
        return
    try:
        rows = [(r, m.group(1)) for r in result.rejected if (m := _NOT_POSITIVE.match(r.reason))]
        if not rows:
            return
        specs = store.zones()
        zeros: dict[str, list[tuple[int, float]]] = {}
        for r, value in rows:
            spec = specs.get(r.zone)
            ts = _utc_seconds(r.timestamp, spec.time_zone if spec else "UTC")
            if spec is not None and ts is not None:
                zeros.setdefault(r.zone, []).append((ts, float(value)))
        record_zero_readings(store, zeros, now)
    except Exception:  # noqa: BLE001 - the readings are committed; the acknowledgement must go out
        logger.exception("recording zero readings as anomaly events failed")


def _utc_seconds(text: str, time_zone: str) -> int | None:
    """A reading's time as the ingest read it: with an offset that instant, without one the zone's wall
    clock (the first of a repeated fall-back hour)."""
    try:
        stamp = pd.Timestamp(str(text).strip())
        if stamp.tz is None:
            stamp = stamp.tz_localize(time_zone, ambiguous=True, nonexistent="NaT")
        return None if stamp is pd.NaT else int(stamp.timestamp())
    except (ValueError, TypeError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------- ListAnomalies

def list_anomalies(store: Store, request: apb.ListAnomaliesRequest) -> apb.ListAnomaliesResponse:
    """The stored events of a region (or one of its zones), the most recently seen first; ApiError for
    an unknown region or zone (NOT_FOUND), an unreadable `since` or a `limit` over MAX_LIMIT."""
    if not request.region:
        raise invalid("region: required (the region whose anomaly events to list)")
    specs = store.zones()
    regions = sorted({s.region for s in specs.values()})
    if request.region not in regions:
        raise not_found(f"region: unknown region {shown(request.region)}; this server has {regions}")
    if request.zone:
        spec = specs.get(request.zone)
        if spec is None:
            raise not_found(f"zone: unknown zone {shown(request.zone)}")
        if spec.region != request.region:
            raise not_found(f"zone: zone {shown(request.zone)} is in region {spec.region!r}, "
                            f"not {shown(request.region)}")
    if request.limit > MAX_LIMIT:
        raise invalid(f"limit: {request.limit} is over the maximum of {MAX_LIMIT} events per request")
    since = utc_seconds(request.since.strip(), "since")
    found = list_events(store, request.region, request.zone, since, request.open_only,
                        request.limit or DEFAULT_LIMIT)
    return apb.ListAnomaliesResponse(events=[stored_anomaly(ev) for ev in found])


def stored_anomaly(ev: StoredEvent) -> apb.StoredAnomaly:
    return apb.StoredAnomaly(id=ev.id, zone=ev.zone, region=ev.region, kind=ev.kind, start=iso_hour(ev.start_ts),
                             end=iso_hour(ev.end_ts), open=ev.open, severity=ev.severity, detail=ev.detail,
                             opened_at=_iso(ev.opened_at), updated_at=_iso(ev.updated_at))


def list_request(region: str = "", zone: str = "", since: str = "", open_only: str = "",
                 limit: str = "") -> apb.ListAnomaliesRequest:
    """A ListAnomaliesRequest from HTTP query parameters (as text, so a bad one is named like the RPC's)."""
    flag = open_only.strip().lower()
    if flag not in ("", "true", "false", "1", "0", "yes", "no"):
        raise invalid(f"open_only: {shown(open_only)} is not true or false")
    try:
        n = int(limit) if limit.strip() else 0
    except ValueError:
        raise invalid(f"limit: {shown(limit)} is not a whole number") from None
    if n < 0:
        raise invalid(f"limit: {n} is negative")
    if n > MAX_LIMIT:
        raise invalid(f"limit: {n} is over the maximum of {MAX_LIMIT} events per request")
    return apb.ListAnomaliesRequest(region=region, zone=zone, since=since, open_only=flag in ("true", "1", "yes"),
                                    limit=n)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
