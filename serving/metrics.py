"""The application's metrics for Prometheus: every `energyopt_*` metric is defined here, once.

They are `ray.util.metrics` objects, so each Ray process that records one exports it through its node's Ray
metrics agent, beside Ray's and Serve's own metrics, on the node's metrics export port (KubeRay: 8080, the
port its PodMonitor scrapes; `energyopt serve --metrics-port`). Ray prefixes every name with `ray_` and a
counter's with a `_total` suffix: `energyopt_requests` is scraped as `ray_energyopt_requests_total`. A
scrape of the node, not of the load-balanced ingress, so every replica's series are seen, each with Ray's
labels (WorkerId, ...) beside ours; dashboards and alerts sum over them.

    Forecaster replicas  requests (per RPC, transport, status code) and their latency, batch sizes, the
                         model in use and its backtest MAPE
    Ingestor             readings stored (inserted / replaced / unchanged) and rejected (per reason class)
    Scheduler (one)      forecasts issued and late per region; on a loop of its own (`StoreGauges`): each
                         zone's newest reading and data age, open anomaly events, live accuracy
                         (the numbers GetForecastAccuracy gives), so store-level gauges are not
                         duplicated per replica

Labels are bounded: RPC names, status codes, zones, horizon buckets, event kinds and a fixed set of
rejection reasons; nothing per request. docs/monitoring.md has the table of every metric.

Ray exports a gauge's value only while it is being set: one not set again within two of Ray's export
intervals (2 x 10 s by default) drops out of the scrape, though its process lives on (seen with Ray 2.60).
So the gauges here are `KeptGauge`s: each process sets its gauges' last values again twice per export
interval from a daemon thread, and a gauge drops out only with its process (a replica gone). The same
thread adds each RPC's requests to the request counter, so that the request's path pays for one Ray
metric call, not two.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ray.util.metrics import Counter, Gauge, Histogram

from models import archive, events
from models.bundle import Bundle
from models.store import Rejected, Store

# request latency in seconds: 0.5 ms .. 30 s (the gRPC request timeout is 60 s)
LATENCY_BOUNDS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# requests and series per forward pass (max_batch_series is 256 by default)
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

# The store's rejection reasons (models/store.py, `_checked_times` and `_value_reasons`) as a fixed set of
# label values, matched in this order; the free text stays in the acknowledgement.
REJECTION_CLASSES: tuple[tuple[str, re.Pattern], ...] = (
    ("not_finite", re.compile(r"value \S+ is not a finite number")),
    ("unknown_zone", re.compile(r"unknown zone |zone: required")),
    ("bad_time", re.compile(r"time is missing|time cannot be read|time does not exist|time is ambiguous")),
    ("off_grid", re.compile(r"time is not on the zone's")),
    ("future", re.compile(r"time is \S+ h in the future")),
    ("repeated", re.compile(r"repeated in this batch")),
    ("not_positive", re.compile(r"value \S+ is not positive")),
    ("absurd", re.compile(r"value \S+ is absurd")),
)
OTHER_REASON = "other"


def reason_class(reason: str) -> str:
    """The label value of a rejected reading's `reason` (one of REJECTION_CLASSES, else "other")."""
    for name, pattern in REJECTION_CLASSES:
        if pattern.match(reason):
            return name
    return OTHER_REASON


# One background thread per process (started on first use) keeps the export cheap and complete: twice per
# Ray export interval it adds the requests counted since to the request counter and sets every gauge's
# last values again.
_LOCK = threading.Lock()
_BACKGROUND: threading.Thread | None = None


def _export_interval_s() -> float:
    """Ray's metrics export interval in this process (RAY_metrics_report_interval_ms; at least 1 s)."""
    try:
        import ray

        return max(ray._config.metrics_report_interval_ms(), 1000) / 1000
    except Exception:  # noqa: BLE001 - outside a Ray worker: Ray's default
        return 10.0


def _ensure_background() -> None:
    global _BACKGROUND
    if _BACKGROUND is None:
        with _LOCK:
            if _BACKGROUND is None:
                _BACKGROUND = threading.Thread(target=_background, name="energyopt-metrics", daemon=True)
                _BACKGROUND.start()


def _background() -> None:
    period = _export_interval_s() / 2
    while True:
        time.sleep(period)
        _flush()


def _flush() -> None:
    """Add the requests counted since the last flush to the counter; set the kept gauges again."""
    with _LOCK:
        counts = [(entry[0], entry[1]) for r in RequestRecorder.recorders for entry in r.codes.values() if entry[1]]
        for r in RequestRecorder.recorders:
            for entry in r.codes.values():
                entry[1] = 0
        values = [(g.gauge, v, tags) for g in KeptGauge.gauges for v, tags in g.values.values()]
    requests = app_metrics().requests
    for tags, n in counts:
        requests.inc(n, tags)
    for gauge, value, tags in values:
        gauge.set(value, tags)


class KeptGauge:
    """A Ray Gauge whose last value per tag set is set again twice per Ray export interval (see the module),
    so that it stays in the scrape until changed."""

    gauges: list[KeptGauge] = []

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...] = ()) -> None:
        self.gauge = Gauge(name, description, tag_keys=tag_keys)
        self.values: dict[tuple, tuple[float, dict[str, str]]] = {}
        with _LOCK:
            KeptGauge.gauges.append(self)
        _ensure_background()

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        tags = tags or {}
        with _LOCK:
            self.values[tuple(tags.items())] = (value, tags)
        self.gauge.set(value, tags)

    def retain(self, kept: list[dict[str, str]]) -> None:
        """Stop setting every tag set but `kept` (a zone removed from the store): Ray drops those series from
        the scrape two export intervals later, instead of a last value being exported for ever."""
        keys = {tuple(tags.items()) for tags in kept}
        with _LOCK:
            for key in [k for k in self.values if k not in keys]:
                del self.values[key]

    def value(self, tags: dict[str, str] | None = None) -> float | None:
        """The value last set for `tags` in this process (None: never set)."""
        with _LOCK:
            found = self.values.get(tuple((tags or {}).items()))
        return None if found is None else found[0]


@dataclass(frozen=True)
class AppMetrics:
    """The metric objects of one process (created there on first use: `app_metrics()`)."""

    requests: Counter
    latency: Histogram
    batch_requests: Histogram
    batch_series: Histogram
    model_info: KeptGauge
    backtest_mape: KeptGauge
    readings: Counter
    rejected: Counter
    issued: Counter
    late: Counter
    newest_reading: KeptGauge
    data_age: KeptGauge
    open_anomalies: KeptGauge
    live_mae: KeptGauge
    live_mape: KeptGauge
    live_points: KeptGauge


_METRICS: AppMetrics | None = None
_CREATING = threading.Lock()


def app_metrics() -> AppMetrics:
    """This process's metric objects, created once, by whichever thread records first (in the process that
    records them: a Ray metric belongs to the worker that records it)."""
    global _METRICS
    if _METRICS is None:
        with _CREATING:
            if _METRICS is None:
                _METRICS = _create_metrics()
    return _METRICS


def _create_metrics() -> AppMetrics:
    request_tags = ("method", "transport", "code")
    return AppMetrics(
        requests=Counter("energyopt_requests", "Requests answered, per RPC (an HTTP route counts as the RPC it "
                                               "mirrors), transport (grpc|http) and gRPC status code.",
                         tag_keys=request_tags),
        latency=Histogram("energyopt_request_duration_seconds", "Time to answer a request in the replica "
                                                                 "(from the call to the response), seconds.",
                          boundaries=LATENCY_BOUNDS_S, tag_keys=request_tags),
        batch_requests=Histogram("energyopt_batch_requests", "Requests per forward pass (dynamic batching).",
                                 boundaries=BATCH_BOUNDS),
        batch_series=Histogram("energyopt_batch_series", "Series per forward pass (a region request counts its "
                                                         "zones).", boundaries=BATCH_BOUNDS),
        model_info=KeptGauge("energyopt_model_info", "1 for the model bundle this replica serves (0: served before).",
                         tag_keys=("model", "version")),
        backtest_mape=KeptGauge("energyopt_model_backtest_mape", "MAPE (%) of the served bundle's backtest "
                                                             "(its metrics.json).", tag_keys=("model", "version")),
        readings=Counter("energyopt_readings_ingested", "Readings committed to the store, per outcome "
                                                        "(inserted|replaced|unchanged).", tag_keys=("outcome",)),
        rejected=Counter("energyopt_readings_rejected", "Readings the ingest refused, per reason class.",
                         tag_keys=("reason",)),
        issued=Counter("energyopt_forecasts_issued", "Scheduled forecasts issued and archived, per region.",
                       tag_keys=("region",)),
        late=Counter("energyopt_forecasts_late", "Scheduled forecasts issued late (after their slot), per "
                                                 "region.", tag_keys=("region",)),
        newest_reading=KeptGauge("energyopt_newest_reading_timestamp_seconds", "UTC time of the zone's newest "
                                                                           "reading, seconds since 1970.",
                             tag_keys=("region", "zone")),
        data_age=KeptGauge("energyopt_data_age_seconds", "The schedule's clock (wall, or the region's newest "
                                                     "reading with `clock: data`) minus the zone's newest "
                                                     "reading, seconds.", tag_keys=("region", "zone")),
        open_anomalies=KeptGauge("energyopt_open_anomalies", "Anomaly events open now, per zone and kind.",
                             tag_keys=("region", "zone", "kind")),
        live_mae=KeptGauge("energyopt_live_mae", "Live MAE of the scheduled forecasts (GetForecastAccuracy's, last "
                                             "7 days), per zone (TOTAL: the region) and horizon bucket.",
                       tag_keys=("region", "zone", "bucket")),
        live_mape=KeptGauge("energyopt_live_mape", "Live MAPE (%) of the scheduled forecasts, per zone and horizon "
                                               "bucket.", tag_keys=("region", "zone", "bucket")),
        live_points=KeptGauge("energyopt_live_points", "Forecast hours scored in the live accuracy, per zone and "
                                                   "horizon bucket.", tag_keys=("region", "zone", "bucket")),
    )


# ---------------------------------------------------------------------------------------------- requests

@functools.cache
def rpc_names() -> frozenset[str]:
    """The names of every RPC the service offers (from the generated protos)."""
    from grpc_health.v1 import health_pb2

    from serving.api.energyopt.v1 import anomaly_pb2, dispatch_pb2, forecast_pb2, readings_pb2

    return frozenset(m.name for module in (forecast_pb2, readings_pb2, anomaly_pb2, dispatch_pb2, health_pb2)
                     for service in module.DESCRIPTOR.services_by_name.values() for m in service.methods)


def mirrored_rpc(route: Callable) -> str:
    """The RPC an HTTP route mirrors: the one RPC its body calls (`self.ForecastRegion(...)`), read from its
    code once at decoration; the route's own name if it calls none or several."""
    called = set(route.__code__.co_names) & rpc_names()
    return called.pop() if len(called) == 1 else route.__name__


class RequestRecorder:
    """Counts and times the requests of one RPC over one transport; made once per decorated method.

    On the request's path: one histogram observation (the tag dict made once per status code) and a count
    added under a lock held for that addition only; the background thread adds the counts to the request
    counter (a Ray counter increment costs about twice an observation; see docs/monitoring.md)."""

    __slots__ = ("method", "transport", "codes")
    recorders: list[RequestRecorder] = []

    def __init__(self, method: str, transport: str) -> None:
        self.method, self.transport = method, transport
        self.codes: dict[str, list] = {}  # status code -> [tags, requests not yet added to the counter]

    def record(self, code: str, seconds: float) -> None:
        entry = self.codes.get(code)
        if entry is None:
            # registered on first use, not when made: Serve ships the deployment class to its replicas by
            # value, so a replica records with copies of the recorders made at import
            with _LOCK:
                if not any(r is self for r in RequestRecorder.recorders):
                    RequestRecorder.recorders.append(self)
                entry = self.codes.setdefault(code, [{"method": self.method, "transport": self.transport,
                                                      "code": code}, 0])
            _ensure_background()
        app_metrics().latency.observe(seconds, entry[0])
        with _LOCK:
            entry[1] += 1


def record_batch(requests: int, series: int) -> None:
    """One forward pass of `requests` requests holding `series` series."""
    m = app_metrics()
    m.batch_requests.observe(requests)
    if series:
        m.batch_series.observe(series)


def backtest_mape(bundle_metrics: dict | None, name: str) -> float | None:
    """The bundle's backtest MAPE (%) from its metrics.json summary (the model's row; else the first), if any."""
    summary = (bundle_metrics or {}).get("summary", {})
    row = summary.get(name) or (next(iter(summary.values())) if summary else {})
    value = row.get("mape") if isinstance(row, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def record_model(bundle: Bundle, previous: Bundle | None = None) -> None:
    """The replica now serves `bundle` no longer `previous` (None: nothing before)."""
    m = app_metrics()
    tags = {"model": bundle.name, "version": bundle.version}
    if previous is not None and (previous.name, previous.version) != (bundle.name, bundle.version):
        m.model_info.set(0, {"model": previous.name, "version": previous.version})
    m.model_info.set(1, tags)
    mape = backtest_mape(bundle.metrics, bundle.name)
    if mape is not None:
        m.backtest_mape.set(mape, tags)


_OUTCOME_TAGS = {outcome: {"outcome": outcome} for outcome in ("inserted", "replaced", "unchanged")}
_REASON_TAGS = {name: {"reason": name} for name in [*(c for c, _ in REJECTION_CLASSES), OTHER_REASON]}


def record_ingest(inserted: int, replaced: int, unchanged: int, rejected: Iterable[Rejected]) -> None:
    """What one committed batch did."""
    m = app_metrics()
    for outcome, n in (("inserted", inserted), ("replaced", replaced), ("unchanged", unchanged)):
        if n:
            m.readings.inc(n, _OUTCOME_TAGS[outcome])
    counts: dict[str, int] = {}
    for r in rejected:
        reason = reason_class(r.reason)
        counts[reason] = counts.get(reason, 0) + 1
    for reason, n in counts.items():
        m.rejected.inc(n, _REASON_TAGS[reason])


def record_issued(region: str, late: bool) -> None:
    """One scheduled forecast archived for `region` (`late`: after its slot)."""
    m = app_metrics()
    m.issued.inc(1, {"region": region})
    if late:
        m.late.inc(1, {"region": region})


# ---------------------------------------------------------------------------------------------- the store

def bucket_label(first_step: int, last_step: int) -> str:
    """A horizon bucket as a label value: "1-6", "7-24", "25-48"."""
    return f"{first_step}-{last_step}"


class StoreGauges:
    """The store-level gauges, set by the Scheduler (one process, so not duplicated per replica) from reads of
    the store: `freshness` (newest reading and data age per zone, open anomaly events; cheap: the zones
    table and the open events) and `accuracy` (`models.archive.accuracy` per region over the last 7 days
    up to the region's newest reading: what GetForecastAccuracy gives by default; slower). Both are plain
    functions of the store, run off the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def freshness(self, clock: str, now: float | None = None) -> dict[str, float]:
        """Set the freshness gauges; returns each zone's data age (seconds). `clock`: the schedule's ("wall":
        age against `now`, default the time; "data": against the region's newest reading)."""
        m = app_metrics()
        status = self.store.zone_status()
        newest_of: dict[str, int] = {}
        for spec, last, _ in status:
            if last is not None:
                newest_of[spec.region] = max(newest_of.get(spec.region, last), last)
        wall = time.time() if now is None else now
        ages, zone_tags = {}, []
        for spec, last, _ in status:
            if last is None:
                continue
            tags = {"region": spec.region, "zone": spec.zone}
            ages[spec.zone] = (newest_of[spec.region] if clock == "data" else wall) - last
            m.newest_reading.set(last, tags)
            m.data_age.set(ages[spec.zone], tags)
            zone_tags.append(tags)
        m.newest_reading.retain(zone_tags)
        m.data_age.retain(zone_tags)
        open_events: dict[tuple[str, str], int] = {}
        for region in sorted({spec.region for spec, _, _ in status}):
            for ev in events.list_events(self.store, region, open_only=True, limit=100_000):
                open_events[(ev.zone, ev.kind)] = open_events.get((ev.zone, ev.kind), 0) + 1
        kind_tags = [{"region": spec.region, "zone": spec.zone, "kind": kind}
                     for spec, _, _ in status for kind in events.EVENT_KINDS]
        for tags in kind_tags:  # every zone and kind, so that a closed event's gauge goes back to 0
            m.open_anomalies.set(open_events.get((tags["zone"], tags["kind"]), 0), tags)
        m.open_anomalies.retain(kind_tags)
        return ages

    def accuracy(self, window_days: int = 7) -> list[tuple[str, archive.AccuracyRow]]:
        """Set the live accuracy gauges; returns the (region, row) pairs set."""
        m = app_metrics()
        regions: dict[str, list[str]] = {}
        newest: dict[str, int] = {}
        for spec, last, _ in self.store.zone_status():
            regions.setdefault(spec.region, []).append(spec.zone)
            if last is not None:
                newest[spec.region] = max(newest.get(spec.region, last), last)
        found = []
        for region, zones in regions.items():
            if region not in newest:
                continue
            end = newest[region] + 3600  # issue times up to the newest reading's hour, as GetForecastAccuracy
            for row in archive.accuracy(self.store, region, zones, start=end - window_days * 86400, end=end):
                tags = {"region": region, "zone": row.zone, "bucket": bucket_label(row.first_step, row.last_step)}
                m.live_mae.set(row.mae, tags)
                m.live_mape.set(row.mape, tags)
                m.live_points.set(row.points, tags)
                found.append((region, row))
        kept = [{"region": region, "zone": row.zone, "bucket": bucket_label(row.first_step, row.last_step)}
                for region, row in found]
        for gauge in (m.live_mae, m.live_mape, m.live_points):
            gauge.retain(kept)
        return found

