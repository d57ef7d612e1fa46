"""DetectAnomalies: what an anomaly request means, and the replica-side holder of the anomaly model.

The forecasting deployment (`serving.app`) delegates the `energyopt.v1.AnomalyService` methods here:
`AnomalyDetector` holds an optional autoencoder bundle (the replica's `user_config.anomaly_model`) and
the server's history of every zone, *as recorded* (zero and absurd readings kept: they are what the
detector looks for; duplicate hours merged, short gaps interpolated as for `energyopt detect`).
Validation follows the forecasting API: INVALID_ARGUMENT naming the field, NOT_FOUND for unknown zones
or models, RESOURCE_EXHAUSTED for oversized requests, and FAILED_PRECONDITION when no anomaly model is
configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd

from models.anomaly import Event, detection_segments
from models.autoencoder import Reconstruction, detect_series, detector_of, min_hours
from models.bundle import Bundle, BundleError, load_bundle
from models.data import read_table
from models.series import BUNDLED_PJM
from serving.api.energyopt.v1 import anomaly_pb2 as apb
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.engine import HOUR, ApiError, Limits, ZoneHistory, float32_values, invalid, not_found, shown, zone_grids

logger = logging.getLogger("ray.serve")

DEFAULT_RANGE = pd.Timedelta(days=30)  # range scanned when a request names no start


def raw_histories(data: str | Path | None) -> dict[str, ZoneHistory]:
    """Every zone's load on a dense hourly grid as recorded (NaN in gaps longer than 6 h)."""
    return zone_grids(detection_segments(read_table(data if data is not None else BUNDLED_PJM))[0])


def _time(text: str, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if stamp is pd.NaT:
        raise invalid(f"{name}: cannot read {shown(text)} as an ISO 8601 time, e.g. 2018-06-01T00:00:00")
    if stamp != stamp.floor("h"):
        raise invalid(f"{name}: {shown(text)} is not on the hour; detection is hourly")
    if stamp.tz is not None:
        raise invalid(f"{name}: {shown(text)} has a UTC offset; pass naive local time, as the data holds it")
    return stamp


@dataclass
class AnomalyEngine:
    """An anomaly bundle plus the server's raw history: turns requests into responses (no Ray)."""

    bundle: Bundle
    histories: dict[str, ZoneHistory]
    limits: Limits
    bundle_path: str = ""

    def __post_init__(self) -> None:
        self.model, self.calibration = detector_of(self.bundle)
        self.min_hours = min_hours(self.model.config)
        self.reference_hours = self.min_hours - self.model.config.input_length

    def detect(self, req: apb.DetectAnomaliesRequest) -> apb.DetectAnomaliesResponse:
        if req.model and req.model != self.bundle.name:
            raise not_found(f"model: {shown(req.model)} is not served here; this server detects with "
                            f"{self.bundle.name!r} (version {self.bundle.version})")
        if req.series and (req.zones or req.start or req.end):
            raise invalid("series: send either client series or zones/start/end of the server's history, not both")
        scanned = self._series(req) if req.series else self._zones(req)
        resp = apb.DetectAnomaliesResponse(model=pb.ModelRef(name=self.bundle.name, version=self.bundle.version),
                                           reference_hours=self.reference_hours)
        events: list[Event] = []
        first = self.reference_hours  # each scan begins with the reference hours before the range reported
        for rec in scanned:
            score = rec.score[first:]
            events += [e for e in rec.events if e.end >= rec.timestamps[first]]
            resp.scored_hours += int(np.isfinite(score).sum())
            if req.include_scores:
                resp.scores.add(name=rec.zone, start=rec.timestamps[first].isoformat(), score=score.tolist(),
                                expected=rec.expected[first:].astype(np.float64).tolist(),
                                observed=rec.observed[first:].astype(np.float64).tolist())
        for e in sorted(events, key=lambda e: (e.start, e.zone)):
            resp.events.add(zone=e.zone, start=e.start.isoformat(), end=e.end.isoformat(), severity=e.severity,
                            expected=e.expected, observed=e.observed, component=e.component, hours=e.hours)
        return resp

    def _scan(self, series: list[tuple[str, np.ndarray, pd.Timestamp]]) -> list[Reconstruction]:
        """Each (name, values, start) scanned; DEADLINE_EXCEEDED once the request's time is up (checked between
        series: each is bounded by max_anomaly_points)."""
        deadline = time.monotonic() + self.limits.deadline_s
        out = []
        for zone, values, start in series:
            if time.monotonic() > deadline:
                raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"series: scanning {len(series)} series ran past this server's "
                               f"{self.limits.deadline_s:g} s limit (deadline_s) after {len(out)}; "
                               "send fewer per request")
            stamps = pd.date_range(start, periods=len(values), freq="h")
            out.append(detect_series(self.model, self.bundle.features, self.calibration, values, stamps, zone))
        return out

    def _check_points(self, points: int, field: str, what: str) -> None:
        if points > self.limits.max_anomaly_points:  # the scan's cost grows with its values (56 s for 2M)
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{field}: {points:,} values exceed this server's limit of "
                           f"{self.limits.max_anomaly_points:,} values scanned per request (max_anomaly_points); "
                           f"{what}")

    def _series(self, req: apb.DetectAnomaliesRequest) -> list[Reconstruction]:
        points = sum(len(s.values) for s in req.series)
        self.limits.check(len(req.series), points, "values", "series")
        self._check_points(points, "series", "send fewer or shorter series per request")
        checked = []
        for i, s in enumerate(req.series):
            where = f"series[{i}]"
            values = float32_values(s.values, f"{where}.values")
            if len(values) < self.min_hours:
                raise invalid(f"{where}.values: {len(values)} values; the detector reads {self.reference_hours} "
                              f"hours of reference before a {self.model.config.input_length} h window, so send "
                              f"at least {self.min_hours}")
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                raise invalid(f"{where}.values: contains NaN or infinite values at positions {bad[:5].tolist()}; "
                              "send one finite value per hour (fill gaps first)")
            if not s.start:
                raise invalid(f"{where}.start: required (the hour of the first value)")
            checked.append((s.name or where, values, _time(s.start, f"{where}.start")))
        return self._scan(checked)

    def _zones(self, req: apb.DetectAnomaliesRequest) -> list[Reconstruction]:
        zones = list(req.zones) or sorted(self.histories)
        for i, z in enumerate(zones):
            if z not in self.histories:
                raise not_found(f"zones[{i}]: unknown zone {shown(z)}; this server holds {sorted(self.histories)}")
            if z in zones[:i]:
                raise invalid(f"zones[{i}]: zone {z!r} is listed twice")
        end = _time(req.end, "end") if req.end else min(self.histories[z].end for z in zones)
        start = _time(req.start, "start") if req.start else end - DEFAULT_RANGE + HOUR
        if start > end:
            raise invalid(f"start: {start.isoformat()} is after end {end.isoformat()}")
        hours = (end - start) // HOUR + 1 + self.reference_hours
        first = start - self.reference_hours * HOUR
        for z in zones:
            h = self.histories[z]
            if end > h.end:
                raise invalid(f"end: {end.isoformat()} is after the last hour held for zone {z} ({h.end.isoformat()})")
            if first < h.start:
                raise invalid(f"start: the detector reads the {self.reference_hours} hours before start, and zone "
                              f"{z}'s history begins {h.start.isoformat()}, so start can be "
                              f"{(h.start + self.reference_hours * HOUR).isoformat()} or later")
        self._check_points(hours * len(zones), "end", f"{len(zones)} zone(s) x {hours:,} hours: scan a shorter "
                           "range or fewer zones")
        out = []
        for z in zones:
            h = self.histories[z]
            a = (first - h.start) // HOUR
            values = h.values[a : a + hours]
            gap = np.flatnonzero(~np.isfinite(values))
            if len(gap):
                raise invalid(f"start: zone {z}'s history has a gap at {(first + int(gap[0]) * HOUR).isoformat()}, "
                              f"inside the range scanned or the {self.reference_hours} hours of reference before "
                              "it; scan a range after the gap")
            out.append((z, values, first))
        return self._scan(out)


class AnomalyDetector:
    """The replica's anomaly model, configured (and swapped) from user_config; absent until one is named."""

    def __init__(self, data: str | None, limits: Limits) -> None:
        self.data, self.limits = data, limits
        self.engine: AnomalyEngine | None = None
        self.path: str | None = None
        self.error = ""
        self._histories: dict[str, ZoneHistory] | None = None

    async def configure(self, path: str | None) -> None:
        """Load the bundle at `path` off the event loop (None: no anomaly model). A bundle that fails to
        load leaves the previous one in service and is reported in `error`."""
        if path is None:
            self.engine, self.path, self.error = None, None, ""
            return
        resolved = str(Path(path).expanduser().resolve())
        if resolved == self.path and self.engine is not None:
            return

        def load() -> AnomalyEngine:
            if self._histories is None:
                self._histories = raw_histories(self.data)
            return AnomalyEngine(load_bundle(resolved), self._histories, self.limits, resolved)

        try:
            self.engine, self.path, self.error = await asyncio.to_thread(load), resolved, ""
            logger.info("anomaly model %s version %s from %s", self.engine.bundle.name, self.engine.bundle.version,
                        resolved)
        except (BundleError, ValueError, OSError) as err:
            self.error = f"cannot load anomaly model {resolved}: {err}"
            logger.error(self.error)

    async def detect(self, request: Any) -> apb.DetectAnomaliesResponse:
        """Answer one request (in a worker thread: forecasts keep flowing meanwhile); raises ApiError (the
        replica's DetectAnomalies answers anything else INTERNAL)."""
        engine = self.engine
        if engine is None:
            why = f" ({self.error})" if self.error else ""
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "model: this server has no anomaly model configured; set user_config.anomaly_model to a "
                           f"bundle from `energyopt train --model autoencoder`{why}")
        return await asyncio.to_thread(engine.detect, request)
