"""What a forecast request means, without Ray: validation, model inputs, the forward pass, responses.

The Ray Serve deployment (`serving.app`) is a thin shell around `Engine`: it turns each request into a
`Job` (model inputs for one or more series), runs the jobs of many concurrent requests as one forward
pass, and turns each job's slice of the output back into a response. Keeping that logic here makes it
testable without a cluster and lets the benchmark time the same model call in-process.

Every problem with a request raises `ApiError` with a gRPC status code and a message that names the
field; nothing else is shown to callers.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import torch

from models.baselines import weekly_fallback
from models.bundle import Bundle
from models.data import MAX_INTERPOLATE_HOURS, Series, load_series
from models.features import region_channels
from models.inputs import CalendarGrid, InputError
from models.series import DEFAULT_REGION, WEATHER_VARIABLES, shown
from models.store import Store, StoreError
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.live import HourlyView, LiveHistory

logger = logging.getLogger("ray.serve")

HOUR = pd.Timedelta(hours=1)
TOTAL = "TOTAL"
FALLBACK_HOURS = 4 * 168  # what the weekly fallback reads: four weeks before the issue time
LIVE_LAG = pd.Timedelta(hours=MAX_INTERPOLATE_HOURS)  # a zone further behind the region's newest hour is out

# HTTP status for each gRPC status the API uses (the HTTP/JSON mirror answers with these).
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
               grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
               grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
               grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


MAX_ERROR_CHARS = 1000  # the longest error message a client gets (tests/fuzzing.py checks the same bound)


class ApiError(Exception):
    """A request the server refuses: a gRPC status code and a message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        # The backstop behind `shown`: an error is one short line whatever it quotes (HAProxy resets a stream
        # whose trailers outgrow its 16 KB buffer, and a grpc-message is percent-encoded, up to 9 bytes a char)
        message = " ".join(message.split()) if "\n" in message else message
        if len(message) > MAX_ERROR_CHARS:
            message = f"{message[:MAX_ERROR_CHARS - 40]}… ({len(message):,} chars)"
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, message)


@dataclass(frozen=True)
class Limits:
    """Largest ForecastSeries request a replica accepts (bigger ones: RESOURCE_EXHAUSTED)."""

    max_series_per_request: int = 1024
    max_points_per_request: int = 2_000_000  # history values, all series together
    max_readings_per_batch: int = 10_000  # ReadingsService: readings in one batch
    max_quantiles: int = 99  # quantile levels in one forecast request (before any is looked at)
    # values in one forecast response: series (zones and the total) x horizon x (point + quantiles);
    # 2M doubles are ~16 MB on the wire, well under the gRPC message limit (serving/server.py)
    max_points_per_response: int = 2_000_000
    max_anomaly_points: int = 200_000  # DetectAnomalies: values scanned (a 2M-point scan took 56 s of 60)
    max_body_bytes: int = 64 << 20  # HTTP/JSON body; JSON numbers take ~2-3x their protobuf size
    deadline_s: float = 55.0  # work a request may start: under the proxies' request_timeout_s (60 s)

    def check(self, n: int, points: int, values: str, send: str) -> None:
        """RESOURCE_EXHAUSTED unless `n` series of `points` values in all fit (`values`, `send`: words for them)."""
        if n > self.max_series_per_request:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"series: {n} series exceed this server's limit "
                           f"of {self.max_series_per_request} per request; split the request")
        if points > self.max_points_per_request:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"series: {points:,} {values} exceed this server's "
                           f"limit of {self.max_points_per_request:,} per request; send fewer or shorter {send}")

    def check_response(self, series: int, horizon: int, quantiles: int, what: str) -> None:
        """RESOURCE_EXHAUSTED unless `series` forecasts of `horizon` hours with a point and `quantiles` bands fit
        the response limit (`what`: how to split, e.g. "fewer zones")."""
        points = series * horizon * (1 + quantiles)
        if points > self.max_points_per_response:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"horizon: {series:,} forecasts x {horizon} hours x (1 + {quantiles} quantiles) = "
                           f"{points:,} values exceed this server's limit of {self.max_points_per_response:,} per "
                           f"response (max_points_per_response); ask for {what}, a shorter horizon or fewer "
                           "quantiles, or split the request")


# ---------------------------------------------------------------------------------------------- history

@dataclass
class ZoneHistory:
    """One zone's load on a dense hourly grid from `start` (NaN where the data has gaps), read from a file:
    what DetectAnomalies scans (forecasts read the store, `serving.live`)."""

    start: pd.Timestamp
    values: np.ndarray  # float32 [T]

    @property
    def end(self) -> pd.Timestamp:
        """The last hour held."""
        return self.start + (len(self.values) - 1) * HOUR


def load_histories(data: str | Path | None = None) -> dict[str, ZoneHistory]:
    """Every zone of a long-format file (None: the bundled PJM data), cleaned as for training."""
    return zone_grids(load_series(data)[0])


def zone_grids(segments: Sequence[Series]) -> dict[str, ZoneHistory]:
    """Each zone's segments on one dense hourly grid (NaN between them)."""
    by_zone: dict[str, list[Series]] = {}
    for s in segments:
        by_zone.setdefault(s.zone, []).append(s)
    out = {}
    for zone, parts in by_zone.items():
        start, end = min(s.timestamps[0] for s in parts), max(s.timestamps[-1] for s in parts)
        values = np.full((end - start) // HOUR + 1, np.nan, dtype=np.float32)
        for s in parts:
            i = (s.timestamps[0] - start) // HOUR
            values[i : i + len(s)] = s.load
        out[zone] = ZoneHistory(start, values)
    return out


# ---------------------------------------------------------------------------------------------- jobs

@dataclass
class Job:
    """One request's share of a forward pass: model inputs for `n` series, and how to answer."""

    engine: Engine
    history: np.ndarray  # [n, L] float32
    past: np.ndarray  # [n, L, C] float32
    future: np.ndarray  # [n, H_max, C] float32
    respond: Callable[[np.ndarray], Any]  # model output [n, H_max, Q] -> response message
    # Per series, a key naming its model inputs when they come from the server's own history
    # (region, issue time, zone); series with equal keys in one batch are computed once.
    keys: Sequence[Hashable] | None = None
    # Names the whole answer (region requests): jobs of one batch with equal keys share one response.
    answer_key: Hashable | None = None
    # The request field holding each series' client-supplied inputs (ForecastSeries: "series"): a forward
    # pass that is not finite for them is that client's INVALID_ARGUMENT; None (server history): INTERNAL.
    inputs_field: str | None = None

    @property
    def n(self) -> int:
        return len(self.history)


@dataclass
class Engine:
    """A loaded bundle plus the live history of every region it serves (a cache of the store)."""

    bundle: Bundle
    live: LiveHistory
    named: dict[str, list[str]] = field(default_factory=dict)  # more regions: subsets of zones, by name
    limits: Limits = field(default_factory=Limits)
    bundle_path: str = ""

    def __post_init__(self) -> None:
        zones = self.live.specs
        for region, members in self.named.items():
            missing = [z for z in members if z not in zones]
            if missing or not members:
                raise ValueError(f"region {region!r}: zones {missing or members} are not in the store "
                                 f"(it has {sorted(zones)})")
        missing = [z for z in self.bundle.region_zones if z not in zones]
        if missing:
            raise ValueError(f"model {self.bundle.name} reads the recent load of zones {list(self.bundle.region_zones)}"
                             f"; the store lacks {missing} (it has {sorted(zones)})")
        self.inputs = self.bundle.inputs
        starts = [v.start for v in (self.live.view(z) for z in zones) if v.last_reading is not None]
        self.calendar = CalendarGrid(self.inputs, min(starts, default=None),
                                     max(starts, default=pd.Timestamp(0)) + pd.Timedelta(days=400) if starts else None)
        self.levels = np.array(self.bundle.quantiles or (0.5,), dtype=np.float64)
        self.median = self.bundle.model.median_index

    @property
    def regions(self) -> dict[str, list[str]]:
        """Region -> zones: the regions of the store's zones, then the named subsets."""
        return self.live.regions | self.named

    @classmethod
    def from_data(cls, bundle: Bundle, data: str | Path | None = None, region: str = DEFAULT_REGION,
                  regions: Mapping[str, Sequence[str]] | None = None, limits: Limits | None = None,
                  bundle_path: str = "", store: str | Path | None = None, tail_hours: int = 1500) -> Engine:
        """Serve every zone of `data` as region `region`, plus any named `regions` (subsets of zones), from
        the store `store` (default: a SQLite file beside `data`'s name in the temporary folder), seeded once."""
        if store is None:
            import tempfile

            store = Path(tempfile.mkdtemp(prefix="energyopt-store-")) / "store.db"
        opened = Store.open(store)
        opened.seed(data, region=region)
        return cls(bundle, LiveHistory(opened, tail_hours), {k: list(v) for k, v in (regions or {}).items()},
                   limits or Limits(), bundle_path)

    # ------------------------------------------------------------------------------------------ model

    @property
    def model_ref(self) -> pb.ModelRef:
        return pb.ModelRef(name=self.bundle.name, version=self.bundle.version)

    @torch.inference_mode()
    def forward(self, history: np.ndarray, past: np.ndarray, future: np.ndarray) -> np.ndarray:
        """The model on B series: quantiles [B, H_max, Q] in MW (float32)."""
        tensors = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (history, past, future))
        return self.bundle.model(*tensors).float().numpy()

    def run(self, jobs: Sequence[Job]) -> tuple[list[Any], int]:
        """Answer several jobs of this engine with one forward pass (what the batched replica does).

        Series whose inputs are the same (region requests for the same region and issue time) are
        computed once. Returns the responses and the number of series computed."""
        parts: list[tuple[Job, list[int]]] = []  # (job, its rows to compute)
        where: list[list[int]] = []  # per job: the output row of each of its series
        seen: dict[Hashable, int] = {}  # model-input key -> output row
        for job in jobs:
            keys = job.keys if job.keys is not None else [(id(job), r) for r in range(job.n)]  # no keys: not shared
            rows = []  # its series not computed yet
            for r, key in enumerate(keys):
                if key not in seen:
                    seen[key] = len(seen)
                    rows.append(r)
            if rows:
                parts.append((job, rows))
            where.append([seen[key] for key in keys])
        if parts:
            out = self.forward(*(np.concatenate([getattr(job, k)[rows] for job, rows in parts])
                                 for k in ("history", "past", "future")))
        else:  # every zone of every job fell back: nothing for the model
            out = np.empty((0, self.bundle.max_horizon, len(self.levels)), np.float32)
        finite = np.isfinite(out).all(axis=(1, 2))  # per output row
        answers: dict[Hashable, Any] = {}
        responses = []
        for job, index in zip(jobs, where):
            key = (id(job),) if job.answer_key is None else job.answer_key
            if key not in answers:
                bad = [r for r, row in enumerate(index) if not finite[row]]
                # never a NaN forecast as a success; only the affected request fails, not its batch
                try:
                    answers[key] = _non_finite(job, bad) if bad else job.respond(out[index])
                except ApiError as err:  # _fill: a fallback or a total that is not finite
                    answers[key] = err
            responses.append(answers[key])
        return responses, len(seen)

    # ------------------------------------------------------------------------------------------ validation

    def check_model(self, name: str) -> None:
        if name and name != self.bundle.name:
            raise not_found(f"model: {shown(name)} is not served here; this server serves {self.bundle.name!r} "
                            f"(version {self.bundle.version})")

    def check_horizon(self, horizon: int) -> int:
        if not 1 <= horizon <= self.bundle.max_horizon:
            raise invalid(f"horizon: must be between 1 and {self.bundle.max_horizon} hours for model "
                          f"{self.bundle.name}, got {horizon}")
        return int(horizon)

    def quantile_columns(self, requested: Sequence[float]) -> tuple[list[float], list[int]]:
        """Levels and output columns for the requested quantiles (empty: all the model offers).

        Levels the model does not offer are refused rather than interpolated: the offered levels are
        calibrated on validation data (conformal scaling), an interpolated one would not be.
        """
        if not requested:
            return [float(q) for q in self.levels], list(range(len(self.levels)))
        if len(requested) > self.limits.max_quantiles:  # before looking at each: 100k levels cost nothing here
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"quantiles: {len(requested):,} levels exceed this server's limit of "
                           f"{self.limits.max_quantiles} per request (max_quantiles); model {self.bundle.name} "
                           f"offers {len(self.levels)}")
        columns: list[int] = []
        offered = ", ".join(f"{q:g}" for q in self.levels)
        for i, q in enumerate(requested):
            if not (math.isfinite(q) and 0.0 < q < 1.0):
                raise invalid(f"quantiles[{i}]: {q} is outside (0, 1)")
            hit = np.flatnonzero(np.abs(self.levels - q) < 1e-9)
            if not len(hit):
                raise invalid(f"quantiles[{i}]: {q:g} is not offered by model {self.bundle.name} (it offers "
                              f"{offered}); interpolated levels would be uncalibrated, so they are refused")
            if int(hit[0]) in columns:
                raise invalid(f"quantiles[{i}]: {q:g} is listed twice (also quantiles[{columns.index(int(hit[0]))}])")
            columns.append(int(hit[0]))
        return [float(q) for q in requested], columns

    def parse_time(self, text: str, name: str, like: pd.Timestamp | None = None) -> pd.Timestamp:
        """An ISO 8601 hour; naive or with an offset to match `like` (the data's convention)."""
        try:
            stamp = pd.Timestamp(text)
        except (ValueError, TypeError, OverflowError):
            stamp = pd.NaT
        if stamp is pd.NaT:
            raise invalid(f"{name}: cannot read {shown(text)} as an ISO 8601 time, e.g. 2018-08-01T00:00:00")
        if stamp != stamp.floor("h"):
            raise invalid(f"{name}: {shown(text)} is not on the hour; forecasts are hourly")
        if like is not None:
            if like.tz is None and stamp.tz is not None:
                raise invalid(f"{name}: {shown(text)} has a UTC offset but the server's history is in naive local "
                              "time; pass the time without an offset")
            if like.tz is not None:
                stamp = stamp.tz_localize(like.tz) if stamp.tz is None else stamp.tz_convert(like.tz)
        return stamp

    # ------------------------------------------------------------------------------------------ region

    def now(self, zones: Sequence[str], views: Sequence[HourlyView] | None = None) -> pd.Timestamp | None:
        """The default issue time of `zones`: the hour after their latest complete hour, the latest hour
        that every zone still reporting has reached (a zone more than 6 h behind the newest is in an
        outage and gets a fallback). None when no zone has a reading."""
        lasts = [v.last for v in (views or [self.live.view(z) for z in zones]) if v.last is not None]
        if not lasts:
            return None
        newest = max(lasts)
        return min(last for last in lasts if last >= newest - LIVE_LAG) + HOUR

    def region_job(self, req: pb.ForecastRegionRequest) -> Job:
        self.check_model(req.model)
        variables = list(self.bundle.features.covariates)
        if any(v not in WEATHER_VARIABLES for v in variables):
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model: {self.bundle.name} needs covariates {variables} for every hour, which the server "
                           f"holds only for weather variables {sorted(WEATHER_VARIABLES)}; use ForecastSeries")
        if req.weather and not variables:
            raise invalid(f"weather: model {self.bundle.name} reads no weather; send none")
        watermark = self.live.refresh()
        regions = self.regions
        if not req.region:
            raise invalid(f"region: required; this server has {sorted(regions)}")
        if req.region not in regions:
            raise not_found(f"region: unknown region {shown(req.region)}; this server has {sorted(regions)}")
        region_zones = regions[req.region]
        horizon = self.check_horizon(req.horizon)
        levels, columns = self.quantile_columns(req.quantiles)
        zones = list(req.zones) or region_zones
        for i, z in enumerate(zones):
            if z not in region_zones:
                raise not_found(f"zones[{i}]: unknown zone {shown(z)} in region {req.region} (it has {region_zones})")
            if z in zones[:i]:
                raise invalid(f"zones[{i}]: zone {shown(z)} is listed twice")
        self.limits.check_response(len(zones) + 1, horizon, len(levels), "fewer zones")  # +1: the total
        length = self.bundle.input_length
        if req.issue_time:  # the region's wall clock; a time with an offset is converted to it
            issue = self.parse_time(req.issue_time, "issue_time")
            if issue.tz is not None:
                issue = issue.tz_convert(self.live.time_zone(region_zones)).tz_localize(None)
        else:
            issue = self.now(zones)
            if issue is None:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"region: {req.region} has no readings yet; send some (ReadingsService)")
        read = list(dict.fromkeys([*zones, *self.bundle.region_zones]))
        views = dict(zip(read, self.live.views(read, issue, length)))
        windows = np.stack([views[z].window(issue, length) for z in zones])
        model = np.flatnonzero(np.isfinite(windows).all(axis=1))
        short = [zones[i] for i in range(len(zones)) if i not in set(model.tolist())]
        if short:  # their fallback reads the weeks before (from the store, for an old issue time)
            views |= dict(zip(short, self.live.views(short, issue, FALLBACK_HOURS)))
        if not len(model) and req.issue_time:
            held = [(v.start, v.start + (len(v.values) - 1) * HOUR) for v in (views[z] for z in zones) if len(v.values)]
            span = (f"the store holds {req.region}'s recent hours {min(a for a, _ in held).isoformat()} .. "
                    f"{max(b for _, b in held).isoformat()}" if held else f"the store holds nothing for {req.region}")
            raise invalid(f"issue_time: the model reads the {length} hours before {issue.isoformat()}, and no zone "
                          f"of the request has them all ({span}; older issue times are read from the store)")
        fallbacks = {zones[i]: self._fallback_reason(views[zones[i]], issue)
                     for i in range(len(zones)) if i not in set(model.tolist())}
        n = len(model)
        if self.bundle.features.holiday_zones:  # each zone its own public holidays (e.g. a NEM state's)
            blocks = [self.calendar(issue - HOUR, zones[i]) for i in (model if n else [0])]
            stamps = blocks[0][2]
            past, future = (np.stack([blk[j] for blk in blocks])[:n] for j in (0, 1))
        else:
            past, future, stamps = self.calendar(issue - HOUR)
            past, future = np.broadcast_to(past, (n, *past.shape)), np.broadcast_to(future, (n, *future.shape))
        used: list[pb.WeatherUsed] = []
        weather_keys: list[bytes] = [b""] * n
        if variables and n:  # each zone's weather, in the extra covariate columns (before the region's)
            tz = self.live.time_zone(region_zones)
            model_zones = [zones[i] for i in model]
            values, used, weather_keys = (self._carried_weather(req, model_zones, zones, horizon) if req.weather
                                          else self._stored_weather(model_zones, issue, tz, stamps, horizon))
            blank = [np.zeros((*a.shape[:2], len(variables)), np.float32) for a in (past, future)]  # their columns
            try:
                past, future = self.inputs.with_extra(np.concatenate([past, blank[0]], axis=2),
                                                      np.concatenate([future, blank[1]], axis=2), values)
            except InputError as err:
                raise invalid(f"weather: {err}") from None
        elif variables and req.weather:
            self._carried_weather(req, [], zones, horizon)  # checked even when every zone falls back
        if self.bundle.region_zones:  # the same context for every zone of the request, and each zone's name
            context = region_channels(np.stack([views[z].window(issue, length) for z in self.bundle.region_zones],
                                               axis=1))
            past, future = self.inputs.with_region(past, future, [zones[i] for i in model],
                                                   np.broadcast_to(context, (n, *context.shape)))

        def respond(out: np.ndarray) -> pb.ForecastRegionResponse:
            resp = pb.ForecastRegionResponse(region=req.region, issue_time=issue.isoformat(), model=self.model_ref,
                                             fallback_zones=len(fallbacks), watermark=watermark, weather=used)
            ts = stamps[:horizon]
            rows = dict(zip(model.tolist(), out[:, :horizon]))  # request position -> model quantiles [H, Q]
            total_point, total_q = np.zeros(horizon), np.zeros((horizon, len(self.levels)))
            for i, zone in enumerate(zones):
                view, msg = views[zone], resp.zones.add()
                if i in rows:
                    point, q = rows[i][:, self.median], rows[i]
                else:
                    made = weekly_fallback(view.window(issue, FALLBACK_HOURS), horizon, self.levels)
                    msg.fallback = fallbacks[zone]
                    if made is None:
                        msg.name, msg.last_reading = zone, ""
                        msg.fallback += "; no readings held, so no forecast (the total leaves this zone out)"
                        continue
                    point, q = made
                _fill(msg, zone, ts, point, q, levels, columns)
                msg.last_reading = view.last_reading_iso
                total_point += point
                total_q += q
            _fill(resp.total, TOTAL, ts, total_point, total_q, levels, columns)
            return resp

        # weather is not ordered by the watermark: the values read are part of what makes two requests equal
        key = (req.region, issue, watermark)
        return Job(self, windows[model], past, future, respond,
                   keys=[(*key, zones[i], weather_keys[j]) for j, i in enumerate(model)],
                   answer_key=(*key, tuple(zones), horizon, tuple(levels), tuple(weather_keys)))

    def _stored_weather(self, zones: Sequence[str], issue: pd.Timestamp, time_zone: str, stamps: Sequence[str],
                        horizon: int) -> tuple[tuple[np.ndarray, np.ndarray], list[pb.WeatherUsed], list[bytes]]:
        """Each zone's weather from the store: observations for the input_length hours before `issue` (an
        hour not observed yet is read from the forecast below, counted in the response), and for the first
        `horizon` forecast hours `stamps` the latest forecast issued at or before `issue`, as it was known then
        (the later hours the model reads are held at the last value: each forecast hour reads only its own
        hour's weather, so they change no answered hour). A zone without a station, or an hour neither
        covers: FAILED_PRECONDITION naming them (never a silently filled hour)."""
        from models import weather  # the weather tables; only weather models read them

        store, length, variables = self.live.store, self.bundle.input_length, list(self.bundle.features.covariates)
        stations = weather.zone_stations(store, list(zones))
        unmapped = [z for z in zones if z not in stations]
        if unmapped:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"weather: model {self.bundle.name} reads {variables}, and zones {unmapped} have no weather "
                           "station in the store (register one and map the zone to it: models.weather.map_zones)")
        wall = pd.date_range(end=issue - HOUR, periods=length, freq="h").append(pd.DatetimeIndex(stamps[:horizon]))
        hours = wall.tz_localize(time_zone, ambiguous=True, nonexistent="shift_forward").as_unit("s").asi8
        before = int(hours[length])  # the issue time: the first forecast hour
        values = np.empty((len(zones), length + len(stamps), len(variables)), np.float32)
        used = []
        for k, variable in enumerate(variables):
            try:
                observed, latest = weather.weather_at(store, [stations[z] for z in zones], variable, before, hours)
            except StoreError as err:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"weather: {err}") from None
            forecast = np.stack([f.value for f in latest])
            gap = np.isnan(observed[:, :length])  # hours not observed yet: the forecast's, counted
            known = np.concatenate([np.where(gap, forecast[:, :length], observed[:, :length]),
                                    forecast[:, length:]], axis=1)
            for i in np.flatnonzero(np.isnan(known).any(axis=1)):
                raise self._weather_missing(zones[i], stations[zones[i]], variable, hours[np.isnan(known[i])],
                                            latest[i].issued_ts, before)
            # the later hours the model reads are held at the last value
            values[:, :, k] = np.concatenate([known, np.repeat(known[:, -1:], len(stamps) - horizon, axis=1)], axis=1)
            used += [(i, pb.WeatherUsed(zone=zone, variable=variable, source="store", station=stations[zone],
                                        forecast_issued=_iso_utc(latest[i].issued_ts),
                                        past_hours_from_forecast=int(gap[i].sum())))
                     for i, zone in enumerate(zones)]
        used.sort(key=lambda pair: pair[0])  # zone by zone, each zone's variables in the model's order
        keys = [hashlib.blake2b(values[i].tobytes(), digest_size=16).digest() for i in range(len(zones))]
        return (values[:, :length], values[:, length:]), [w for _, w in used], keys

    @staticmethod
    def _weather_missing(zone: str, station: str, variable: str, missing: np.ndarray, issued: int | None,
                         before: int) -> ApiError:
        """FAILED_PRECONDITION naming the first hours of a zone's weather that neither the observations nor the
        latest forecast cover, and why."""
        first = ", ".join(_iso_utc(int(t)) for t in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        reason = (f"no {variable} forecast for station {station} was issued at or before {_iso_utc(before)}"
                  if issued is None else
                  f"the {variable} forecast for station {station} issued {_iso_utc(issued)} does not cover them")
        return ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                        f"weather: zone {zone} (station {station}) has no {variable} for {len(missing)} of the hours "
                        f"the model reads: {first}{more} ({reason}; ingest observations or a newer weather forecast)")

    def _carried_weather(self, req: pb.ForecastRegionRequest, zones: Sequence[str], request_zones: Sequence[str],
                         horizon: int) -> tuple[tuple[np.ndarray, np.ndarray], list[pb.WeatherUsed], list[bytes]]:
        """The request's own weather for the model's `zones`: one entry per zone of the request and variable
        of the model, `input_length` past values and at least `horizon` future ones (held at the last value
        for the later hours the model reads; each forecast hour reads only its own hour's weather)."""
        length, full_h = self.bundle.input_length, self.bundle.max_horizon
        variables = list(self.bundle.features.covariates)
        given: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for j, w in enumerate(req.weather):
            at = f"weather[{j}]"
            if w.zone not in request_zones:
                raise invalid(f"{at}.zone: {shown(w.zone)} is not a zone of the request ({list(request_zones)})")
            if w.variable not in variables:
                raise invalid(f"{at}.variable: model {self.bundle.name} reads weather {variables}, not "
                              f"{shown(w.variable)}")
            if (w.zone, w.variable) in given:
                raise invalid(f"{at}: {w.variable} of zone {w.zone} is given twice")
            past, future = float32_values(w.past, f"{at}.past"), float32_values(w.future, f"{at}.future")
            if len(past) != length:
                raise invalid(f"{at}.past: the model reads the {length} hours before issue_time, got {len(past)} "
                              "values")
            if not horizon <= len(future) <= full_h:
                raise invalid(f"{at}.future: {horizon} to {full_h} hourly values from issue_time (the horizon at "
                              f"least), got {len(future)}")
            if not (np.isfinite(past).all() and np.isfinite(future).all()):
                raise invalid(f"{at}: NaN or infinite values; send every hour's {w.variable}")
            given[(w.zone, w.variable)] = past, np.concatenate([future, np.full(full_h - len(future), future[-1])])
        missing = [f"{z}/{v}" for z in request_zones for v in variables if (z, v) not in given]
        if missing:
            raise invalid(f"weather: missing {missing}; a request that carries weather carries every zone's "
                          f"{variables}")
        past = np.stack([np.stack([given[(z, v)][0] for v in variables], axis=1) for z in zones]) if zones else \
            np.empty((0, length, len(variables)), np.float32)
        future = np.stack([np.stack([given[(z, v)][1] for v in variables], axis=1) for z in zones]) if zones else \
            np.empty((0, full_h, len(variables)), np.float32)
        used = [pb.WeatherUsed(zone=z, variable=v, source="request") for z in zones for v in variables]
        keys = [hashlib.blake2b(past[i].tobytes() + future[i].tobytes(), digest_size=16).digest()
                for i in range(len(zones))]
        return (past, future), used, keys

    def _fallback_reason(self, view: HourlyView, issue: pd.Timestamp) -> str:
        """Why a zone gets the fallback forecast from `issue`."""
        last = view.last
        if last is None:
            return "no readings held for this zone"
        if last < issue - HOUR:
            return (f"no reading for {(issue - HOUR - last) // HOUR} h (latest hour held: {last.isoformat()}); "
                    f"the model reads the {self.bundle.input_length} hours before the issue time")
        return (f"a gap of more than {MAX_INTERPOLATE_HOURS} h in the {self.bundle.input_length} hours the model "
                "reads before the issue time")

    # ------------------------------------------------------------------------------------------ series

    def series_job(self, req: pb.ForecastSeriesRequest) -> Job:
        self.check_model(req.model)
        n = len(req.series)
        if n == 0:
            raise invalid("series: at least one series is required")
        points = sum(len(s.history) + sum(len(c.past) + len(c.future) for c in s.covariates) for s in req.series)
        self.limits.check(n, points, "values (histories and covariates)", "histories")
        if self.bundle.region_zones:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model: {self.bundle.name} reads the recent load of zones "
                           f"{list(self.bundle.region_zones)} beside each series, which a ForecastSeries request "
                           "does not carry; use ForecastRegion, or serve a model trained without region_zones")
        horizon = self.check_horizon(req.horizon)
        levels, columns = self.quantile_columns(req.quantiles)
        self.limits.check_response(n, horizon, len(levels), "fewer series")
        length, full_h = self.bundle.input_length, self.bundle.max_horizon
        extra = self.bundle.features.covariates
        n_cal = self.bundle.features.size - len(extra)
        history = np.empty((n, length), np.float32)
        past = np.zeros((n, length, self.bundle.features.size), np.float32)
        future = np.zeros((n, full_h, self.bundle.features.size), np.float32)
        extra_past, extra_future = (np.empty((n, hours, len(extra)), np.float32) for hours in (length, full_h))
        stamps = []
        for i, s in enumerate(req.series):
            where = f"series[{i}]"
            values = float32_values(s.history, f"{where}.history")
            if len(values) < length:
                raise invalid(f"{where}.history: {len(values)} values; model {self.bundle.name} reads the last "
                              f"{length} hours, so send at least {length}")
            if not np.isfinite(values).all():
                raise invalid(f"{where}.history: contains NaN or infinite values at positions "
                              f"{np.flatnonzero(~np.isfinite(values))[:5].tolist()}")
            if not s.last_timestamp:
                raise invalid(f"{where}.last_timestamp: required (the hour of the last history value)")
            last = self.parse_time(s.last_timestamp, f"{where}.last_timestamp")
            history[i] = values[-length:]
            past[i, :, :n_cal], future[i, :, :n_cal], ts = self.calendar(last, s.name)
            if extra or s.covariates:
                extra_past[i], extra_future[i] = self._covariates(s, where, len(values))
            stamps.append(ts[:horizon])
        try:  # the values' plausibility (a weather covariate in another unit), checked over the whole request
            past, future = self.inputs.with_extra(past, future, (extra_past, extra_future) if extra else None)
        except InputError as err:
            raise invalid(f"series.covariates: {err}") from None

        def respond(out: np.ndarray) -> pb.ForecastSeriesResponse:
            resp = pb.ForecastSeriesResponse(model=self.model_ref)
            for s, ts, q in zip(req.series, stamps, out[:, :horizon]):
                _fill(resp.forecasts.add(), s.name, ts, q[:, self.median], q, levels, columns)
            return resp

        return Job(self, history, past, future, respond, inputs_field="series")

    def _covariates(self, s: pb.SeriesInput, where: str, n_history: int) -> tuple[np.ndarray, np.ndarray]:
        """Past [L, K] and future [H_max, K] values of the model's extra covariates for one series."""
        length, full_h, extra = self.bundle.input_length, self.bundle.max_horizon, self.bundle.features.covariates
        if not extra:
            raise invalid(f"{where}.covariates: model {self.bundle.name} takes no covariates; send none")
        given: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for j, c in enumerate(s.covariates):
            at = f"{where}.covariates[{j}]"
            if c.name not in extra:
                raise invalid(f"{at}.name: model {self.bundle.name} takes covariates {list(extra)}, "
                              f"not {shown(c.name)}")
            if c.name in given:
                raise invalid(f"{at}.name: covariate {shown(c.name)} is given twice")
            past, future = float32_values(c.past, f"{at}.past"), float32_values(c.future, f"{at}.future")
            if len(past) != n_history:
                raise invalid(f"{at}.past: {len(past)} values for {n_history} history values; they must match")
            if len(future) != full_h:
                raise invalid(f"{at}.future: {len(future)} values; the model reads {full_h} hours of known "
                              "covariates after last_timestamp, whatever the horizon")
            if not (np.isfinite(past).all() and np.isfinite(future).all()):
                raise invalid(f"{at}: contains NaN or infinite values")
            given[c.name] = (past[-length:], future)
        missing = [k for k in extra if k not in given]
        if missing:
            raise invalid(f"{where}.covariates: missing {missing}; model {self.bundle.name} needs {list(extra)}")
        return (np.stack([given[k][0] for k in extra], axis=1), np.stack([given[k][1] for k in extra], axis=1))

    # ------------------------------------------------------------------------------------------ info

    def model_info(self, req: pb.GetModelInfoRequest, stats: pb.ServingStats | None = None) -> pb.ModelInfo:
        self.check_model(req.model)
        b = self.bundle
        summary = (b.metrics or {}).get("summary", {})
        metrics = summary.get(b.name) or (next(iter(summary.values())) if summary else {})
        info = pb.ModelInfo(
            name=b.name, version=b.version, type=b.config.type,
            data_fingerprint=str((b.meta.get("data") or {}).get("fingerprint", "")),
            input_length=b.input_length, max_horizon=b.max_horizon, quantiles=list(self.levels),
            covariates=list(b.features.covariates), region_zones=list(b.region_zones),
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        )
        self.live.refresh()
        for name, zones in self.regions.items():
            now = self.now(zones)
            info.regions.add(name=name, zones=zones, history_end=(now - HOUR).isoformat() if now else "")
        if stats is not None:
            info.stats.CopyFrom(stats)
        return info


def _iso_utc(seconds: int) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


def float32_values(values: Sequence[float], name: str) -> np.ndarray:
    """`values` as float32; INVALID_ARGUMENT naming `name` for one beyond float32's range (it would be inf)."""
    wide = np.asarray(values, dtype=np.float64)
    over = np.flatnonzero(np.isfinite(wide) & (np.abs(wide) > np.finfo(np.float32).max))
    if len(over):
        raise invalid(f"{name}: values beyond float32's range (|x| > 3.4e38) at positions {over[:5].tolist()}, "
                      f"e.g. {wide[over[0]]:g}")
    return wide.astype(np.float32)


def _non_finite(job: Job, rows: Sequence[int]) -> ApiError:
    """The error for a job whose forward pass gave NaN or infinite values for its series `rows`."""
    if job.inputs_field is not None:  # the client's own values: too extreme for the model's scaling
        return invalid(f"{job.inputs_field}[{rows[0]}]: the model's forecast for these values is not finite "
                       f"(series {list(rows[:5])}); their magnitude overflows the model's scaling, so send "
                       "values in MW of a realistic size")
    logger.error("non-finite model output for %d series of a server-history request (rows %s)", len(rows),
                 list(rows[:5]))
    return ApiError(grpc.StatusCode.INTERNAL, "internal error in the forecaster: the model's output for "
                    f"{len(rows)} series is not finite; the replica log has the details")


def _fill(msg: pb.Forecast, name: str, timestamps: Sequence[str], point: np.ndarray, q: np.ndarray,
          levels: Sequence[float], columns: Sequence[int]) -> None:
    # the model's output is checked in `run`; this also covers the fallback and the region total, and values a
    # float field cannot hold (they would become inf)
    limit = np.finfo(np.float32).max
    if not (np.all(np.abs(point) <= limit) and np.all(np.abs(q[:, list(columns)]) <= limit)):  # NaN: False too
        logger.error("non-finite forecast for %s (point %s)", name, point[:3])
        raise ApiError(grpc.StatusCode.INTERNAL, f"internal error in the forecaster: the forecast of {shown(name)} "
                       "is not finite (its readings overflow); the replica log has the details")
    msg.name = name
    msg.timestamps.extend(timestamps)
    msg.point.extend(point.tolist())
    for level, c in zip(levels, columns):
        msg.quantiles.add(level=level, values=q[:, c].tolist())
