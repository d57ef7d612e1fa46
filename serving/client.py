"""A typed Python client for the energyopt.v1 gRPC API, with timeouts and retries.

    from serving.client import ForecastClient

    with ForecastClient("localhost:9000") as client:
        response = client.forecast_region("PJM", horizon=48)
        frame = to_frame(response)          # long table: zone, timestamp, point, q0.1, ...

A service with API keys (docs/security.md) wants `token="eo_..."` (default: $ENERGYOPT_API_KEY), sent as
`authorization: Bearer <token>` on every call; `ca="ca.pem"` (default: $ENERGYOPT_CA) or `tls=True` opens a
TLS channel (a service started with a certificate, `energyopt serve --tls-cert`, or a TLS-terminating ingress);
`cert=`, `key=` (default: $ENERGYOPT_CLIENT_CERT, $ENERGYOPT_CLIENT_KEY) add a client certificate (mTLS).

Every call has a deadline (`timeout`, seconds, per attempt). Calls that fail with UNAVAILABLE (server
starting, replica restarting, connection refused), or with what comes back when a replica dies mid-call
(INTERNAL from Serve's Python proxy, UNKNOWN "HTTP status 500" from its HAProxy ingress), are retried
with exponential backoff and jitter, up to `retries` times; every other error is raised at once as
`ForecastError` with the server's status code and message.
ForecastService's operations are reads (retrying them is safe), but for ForecastRegion with archive=True,
which stores the forecast: a retry after a lost answer may store it twice (each with an id of its own).

Readings go in through `ReadingsClient` (energyopt.v1.ReadingsService):

    from serving.client import ReadingsClient, batches_from_frame

    with ReadingsClient("localhost:9000") as client:
        for ack in client.stream(batches_from_frame(table, register=specs)):
            print(ack.batch, ack.inserted, len(ack.rejected))

Ingest is idempotent (a resend is counted `unchanged`), so its calls are retried like reads, and a
stream that breaks on UNAVAILABLE is reopened and resends the batches not yet acknowledged.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import grpc
import numpy as np
import pandas as pd
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.api.energyopt.v1 import anomaly_pb2 as apb
from serving.api.energyopt.v1 import anomaly_pb2_grpc as apb_grpc
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
# Ray Serve's proxy answers INTERNAL when the replica handling a call dies mid-call; a retry reaches the
# replica Serve starts in its place (safe: every call of this API reads, or ingests idempotently).
REPLICA_DIED = ("The actor died unexpectedly", "The actor is dead")
# Serve's HAProxy ingress rewrites its 502 (the replica's connection closed before it answered) to an HTTP
# 500, which gRPC reports as UNKNOWN with this message: the same dead replica, seen through HAProxy.
INGRESS_LOST_REPLICA = "Received http2 header with status: 500"
# Serve's HAProxy answers NOT_FOUND with this message while no application is deployed yet (a service still
# starting; `energyopt serve` answers UNAVAILABLE instead, docs/resilience.md): retried like UNAVAILABLE.
INGRESS_STARTING = "Application metadata not set"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
API_KEY_ENV = "ENERGYOPT_API_KEY"  # the default `token` of every client (docs/security.md)
CA_ENV = "ENERGYOPT_CA"  # the default `ca`: a PEM file of the CA that signed the server's certificate
CLIENT_CERT_ENV = "ENERGYOPT_CLIENT_CERT"  # the default `cert`: this client's certificate (PEM), for mTLS
CLIENT_KEY_ENV = "ENERGYOPT_CLIENT_KEY"  # the default `key`: its private key (PEM)


def open_channel(target: str, *, ca: str | Path | None = None, tls: bool | None = None,
                 cert: str | Path | None = None, key: str | Path | None = None) -> grpc.Channel:
    """A channel to `target`: TLS when `ca` (a PEM file; default $ENERGYOPT_CA) is given, verified against it,
    or with `tls=True`, verified against the system's roots; plaintext otherwise (or with `tls=False`).
    `cert` and `key` (PEM files; default $ENERGYOPT_CLIENT_CERT, $ENERGYOPT_CLIENT_KEY): the client certificate
    a server with mTLS asks for (TLS then, unless `tls=False`)."""
    ca = ca if ca is not None else os.environ.get(CA_ENV) or None
    cert = cert if cert is not None else os.environ.get(CLIENT_CERT_ENV) or None
    key = key if key is not None else os.environ.get(CLIENT_KEY_ENV) or None
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key (--client-cert and --client-key)")
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    if tls is False or (tls is None and ca is None and cert is None):
        return grpc.insecure_channel(target, options=options)

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).expanduser().read_bytes() if path is not None else None

    credentials = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key),
                                               certificate_chain=read(cert))
    return grpc.secure_channel(target, credentials, options=options)


class ForecastError(Exception):
    """A call that failed: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str, method: str = "") -> None:
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {message}")
        self.code, self.message, self.method = code, message, method


class ReadingsError(ForecastError):
    """A ReadingsService call or stream that failed (a ForecastError, so one handler can catch both)."""


class _Client:
    """The channel, deadlines and retries that the API's clients share."""

    error: type[ForecastError] = ForecastError

    def __init__(self, target: str, *, timeout: float, retries: int, backoff: float, max_backoff: float,
                 application: str | None, channel: grpc.Channel | None, token: str | None = None,
                 ca: str | Path | None = None, tls: bool | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None) -> None:
        self.target, self.timeout, self.retries = target, timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        token = token if token is not None else os.environ.get(API_KEY_ENV) or None
        metadata = [("application", application)] if application else []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata) or None
        self._channel = channel or open_channel(target, ca=ca, tls=tls, cert=cert, key=key)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, rpc: Callable[..., T], request: Any, timeout: float | None) -> T:
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(self.retries + 1):
            try:
                return rpc(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                code, details, retryable = _status(err)
                if not retryable or attempt == self.retries:
                    raise self.error(code, details, method) from None
            self._pause(attempt)
        raise AssertionError("unreachable")

    def _pause(self, attempt: int) -> None:
        time.sleep(min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0))  # jittered


class ForecastClient(_Client):
    """Blocking client of `energyopt.v1.ForecastService` (thread-safe: share one per process)."""

    def __init__(
        self,
        target: str = "localhost:9000",
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        application: str | None = None,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        ca: str | Path | None = None,
        tls: bool | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> None:
        """`target` is HOST:PORT of Serve's gRPC proxy; `application` names the Serve application when
        the cluster runs several (sent as the `application` metadata Serve routes on). `token`: the API key
        sent with every call (default $ENERGYOPT_API_KEY; none: none sent); `ca`, `tls`, `cert`, `key`: see
        `open_channel`
        (ignored with a `channel` of the caller's)."""
        super().__init__(target, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff,
                         application=application, channel=channel, token=token, ca=ca, tls=tls,
                         cert=cert, key=key)
        self._stub = pb_grpc.ForecastServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._anomaly = apb_grpc.AnomalyServiceStub(self._channel)

    # ------------------------------------------------------------------------------------------ calls

    def forecast_region(
        self,
        region: str,
        horizon: int = 48,
        *,
        quantiles: Sequence[float] = (),
        zones: Sequence[str] = (),
        issue_time: str | pd.Timestamp | None = None,
        model: str = "",
        archive: bool = False,
        timeout: float | None = None,
    ) -> pb.ForecastRegionResponse:
        """Every zone of `region` (or `zones`) and the region total, `horizon` hours from `issue_time`
        (default: right after the server's latest history); `archive`: store it (response.forecast_id)."""
        request = pb.ForecastRegionRequest(region=region, horizon=horizon, quantiles=list(quantiles), zones=list(zones),
                                           issue_time=_iso(issue_time), model=model, archive=archive)
        return self._call("ForecastRegion", self._stub.ForecastRegion, request, timeout)

    def list_forecasts(
        self,
        region: str,
        *,
        zone: str = "",
        issued_from: str | pd.Timestamp | None = None,
        issued_to: str | pd.Timestamp | None = None,
        scheduled_only: bool = False,
        limit: int = 0,
        headers_only: bool = False,
        timeout: float | None = None,
    ) -> pb.ListForecastsResponse:
        """Archived forecasts of `region` by issue time (ISO 8601; without an offset: UTC), newest first."""
        request = pb.ListForecastsRequest(region=region, zone=zone, issued_from=_iso(issued_from),
                                          issued_to=_iso(issued_to), scheduled_only=scheduled_only, limit=limit,
                                          headers_only=headers_only)
        return self._call("ListForecasts", self._stub.ListForecasts, request, timeout)

    def forecast_accuracy(
        self,
        region: str,
        *,
        zone: str = "",
        window_days: int = 7,
        bucket_ends: Sequence[int] = (),
        until: str | pd.Timestamp | None = None,
        include_on_demand: bool = False,
        model_version: str = "",
        timeout: float | None = None,
    ) -> pb.ForecastAccuracy:
        """Live accuracy of the archived forecasts issued in the `window_days` before `until` (default: the
        region's latest reading), per zone and horizon bucket."""
        request = pb.GetForecastAccuracyRequest(region=region, zone=zone, window_days=window_days,
                                                bucket_ends=list(bucket_ends), until=_iso(until),
                                                include_on_demand=include_on_demand, model_version=model_version)
        return self._call("GetForecastAccuracy", self._stub.GetForecastAccuracy, request, timeout)

    def forecast_series(
        self,
        series: Iterable[pb.SeriesInput | Mapping[str, Any]],
        horizon: int = 48,
        *,
        quantiles: Sequence[float] = (),
        model: str = "",
        timeout: float | None = None,
    ) -> pb.ForecastSeriesResponse:
        """Forecast caller-supplied histories. Each series is a `SeriesInput` or a mapping with `history`
        (hourly MW, oldest first), `last_timestamp` and optionally `name` and `covariates`."""
        request = pb.ForecastSeriesRequest(horizon=horizon, quantiles=list(quantiles), model=model, series=[
            s if isinstance(s, pb.SeriesInput) else series_input(**s) for s in series])
        return self._call("ForecastSeries", self._stub.ForecastSeries, request, timeout)

    def model_info(self, model: str = "", *, timeout: float | None = None) -> pb.ModelInfo:
        return self._call("GetModelInfo", self._stub.GetModelInfo, pb.GetModelInfoRequest(model=model), timeout)

    def list_model_decisions(self, limit: int = 20, *, timeout: float | None = None) -> pb.ListModelDecisionsResponse:
        """The champion/challenger decisions of `energyopt retrain` (both scores, promoted or not), newest first."""
        return self._call("ListModelDecisions", self._stub.ListModelDecisions,
                          pb.ListModelDecisionsRequest(limit=limit), timeout)

    def list_anomalies(self, region: str, *, zone: str = "", since: str | pd.Timestamp | None = None,
                       open_only: bool = False, limit: int = 0,
                       timeout: float | None = None) -> apb.ListAnomaliesResponse:
        """The anomaly events the server's scans on arrival stored for `region` (or one `zone`), the most
        recently seen first: open ones and those seen at or after `since` (empty: all), only open ones with
        `open_only`, at most `limit` (0: 100)."""
        request = apb.ListAnomaliesRequest(region=region, zone=zone, since=_iso(since), open_only=open_only,
                                           limit=limit)
        return self._call("ListAnomalies", self._anomaly.ListAnomalies, request, timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 status name ("SERVING" once a replica has a model loaded)."""
        response = self._call("Check", self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 120.0) -> pb.ModelInfo:
        """Block until the server answers GetModelInfo (e.g. right after starting it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.model_info(timeout=min(5.0, max(deadline - time.monotonic(), 0.1)))
            except ForecastError as err:
                if err.code not in (*RETRYABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND) \
                        or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


class ReadingsClient(_Client):
    """Blocking client of `energyopt.v1.ReadingsService` (thread-safe: share one per process)."""

    error = ReadingsError

    def __init__(
        self,
        target: str = "localhost:9000",
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        window: int = 8,
        max_stream_s: float = 30.0,
        application: str | None = None,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        ca: str | Path | None = None,
        tls: bool | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> None:
        """As ForecastClient; `window` is how many batches a stream sends ahead of their acknowledgements
        (it bounds what waits in buffers and what a reopened stream sends again); `max_stream_s` is how long
        one StreamReadings stream takes new batches before `stream` closes it and goes on in a new one (the
        server ends any call at its request timeout, 60 s in configs/serve.yaml)."""
        super().__init__(target, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff,
                         application=application, channel=channel, token=token, ca=ca, tls=tls,
                         cert=cert, key=key)
        self.window, self.max_stream_s = window, max_stream_s
        self._stub = rpb_grpc.ReadingsServiceStub(self._channel)

    def ingest(
        self,
        readings: rpb.IngestReadingsRequest | Iterable[rpb.Reading | tuple[str, Any, float]],
        register: Sequence[Any] = (),
        *,
        timeout: float | None = None,
    ) -> rpb.IngestAck:
        """One batch in one IngestReadings call, acknowledged once committed. `readings`: a request, or
        Reading messages or (zone, timestamp, value) tuples; `register`: ZoneSpecs (the message or
        `models.store.ZoneSpec`) of zones to register first."""
        if isinstance(readings, rpb.IngestReadingsRequest):
            request = rpb.IngestReadingsRequest()
            request.CopyFrom(readings)
            request.register.extend(zone_spec(s) for s in register)
        else:
            request = ingest_request(readings, register)
        return self._call("IngestReadings", self._stub.IngestReadings, request, timeout)

    def list_zones(self, region: str = "", *, timeout: float | None = None) -> rpb.ListZonesResponse:
        """The zones the store knows (of `region`; empty: all), with their latest reading."""
        return self._call("ListZones", self._stub.ListZones, rpb.ListZonesRequest(region=region), timeout)

    def list_readings(self, region: str, *, zones: Sequence[str] = (), hours: int = 0,
                      since: str | pd.Timestamp | None = None, until: str | pd.Timestamp | None = None,
                      max_points: int = 0, timeout: float | None = None) -> rpb.ListReadingsResponse:
        """The stored readings of `region`'s zones (or of `zones`), oldest first: the last `hours` (0: 168)
        before the newest reading, or from `since` to `until`; at most `max_points` per zone (0: the server's
        limit). `to_frame` turns the answer into a long table."""
        request = rpb.ListReadingsRequest(region=region, zones=list(zones), hours=hours, since=_iso(since),
                                          until=_iso(until), max_points=max_points)
        return self._call("ListReadings", self._stub.ListReadings, request, timeout)

    def stream(self, batches: Iterable[rpb.IngestReadingsRequest], *,
               window: int | None = None) -> Iterator[rpb.IngestAck]:
        """Send `batches` over one StreamReadings stream and yield each batch's acknowledgement, in order,
        once that batch is committed; `ack.batch` is the batch's position in `batches`.

        `batches` is read lazily (on a gRPC thread), at most `window` batches ahead of the acknowledgements,
        so a generator that paces itself paces the stream. When the stream breaks with UNAVAILABLE (or a
        replica dies, or the server's request timeout ends it) it is reopened, up to `retries` times without an
        acknowledgement in between, and the batches sent but not acknowledged are sent again first (ingest is
        idempotent: whatever did land counts as unchanged the second time). A long feed goes on in a new
        stream every `max_stream_s`, once the old one's batches are acknowledged, so that it outlives the
        server's request timeout. Other errors raise ReadingsError; an exception raised by
        `batches` itself is raised here once the batches before it are acknowledged. Closing the iterator
        (or Ctrl-C while it waits) cancels the stream.
        """
        feed = _Feed(iter(batches), window or self.window, self.max_stream_s)
        attempt = 0
        while True:
            call = self._stub.StreamReadings(feed.open(), metadata=self._metadata)
            rolled_over = False
            try:
                for ack in call:
                    index = feed.acknowledged()
                    if index is None:
                        raise ReadingsError(grpc.StatusCode.INTERNAL, "the server acknowledged more batches than "
                                            "were sent", "StreamReadings")
                    attempt = 0
                    out = rpb.IngestAck()
                    out.CopyFrom(ack)
                    out.batch = index
                    yield out
                if feed.error is not None:
                    raise feed.error
                if feed.unacknowledged():
                    raise ReadingsError(grpc.StatusCode.INTERNAL, f"the server ended the stream with "
                                        f"{feed.unacknowledged()} batch(es) unacknowledged", "StreamReadings")
                if feed.done:
                    return
                rolled_over = True  # closed at max_stream_s, everything acknowledged: on in a new stream
            except grpc.RpcError as err:
                code, details, retryable = _status(err)
                if feed.error is not None:  # the batches' own failure ended the stream: that is the news
                    raise feed.error from None
                # a stream has no deadline of ours: DEADLINE_EXCEEDED is the server's request timeout, which
                # a source slower than max_stream_s (waiting in its next batch) can still run into
                retryable = retryable or code == grpc.StatusCode.DEADLINE_EXCEEDED
                if not retryable or attempt == self.retries:
                    raise self.error(code, details, "StreamReadings") from None
            finally:
                feed.close()
                call.cancel()
            if not rolled_over:
                self._pause(attempt)
                attempt += 1


class _Feed:
    """The batches of one `ReadingsClient.stream` across the gRPC streams it opens. Each stream's request
    iterator (run on a gRPC thread) sends the batches a broken stream left unacknowledged first, then new
    ones from the source, at most `window` ahead of the acknowledgements; an iterator of a closed stream
    stops at its next step, handing back any batch it had taken. It holds `pulling` from taking a batch
    until it is pending or handed back, so the next stream's iterator never overtakes it."""

    def __init__(self, source: Iterator[rpb.IngestReadingsRequest], window: int, max_stream_s: float) -> None:
        self.source, self.window, self.max_stream_s = source, max(1, window), max_stream_s
        self.lock = threading.Lock()  # pending, backlog, generation
        self.pulling = threading.Lock()  # one iterator at a time takes a batch
        self.pending: deque[tuple[int, rpb.IngestReadingsRequest]] = deque()  # sent, not yet acknowledged
        self.backlog: deque[tuple[int, rpb.IngestReadingsRequest]] = deque()  # to send before new ones
        self.generation = 0
        self.taken = 0  # batches taken from the source
        self.done = False
        self.error: Exception | None = None
        self.slots = threading.Semaphore(self.window)

    def open(self) -> Iterator[rpb.IngestReadingsRequest]:
        with self.lock:
            self._retire()
            self.slots = threading.Semaphore(self.window)
            return self._requests(self.generation, self.slots)

    def close(self) -> None:
        with self.lock:
            self._retire()

    def _retire(self) -> None:
        self.generation += 1
        self.backlog.extendleft(reversed(self.pending))  # sent earlier than anything in the backlog
        self.pending.clear()

    def acknowledged(self) -> int | None:
        with self.lock:
            if not self.pending:
                return None
            index, _ = self.pending.popleft()
        self.slots.release()
        return index

    def unacknowledged(self) -> int:
        with self.lock:
            return len(self.pending) + len(self.backlog)

    def _requests(self, generation: int, slots: threading.Semaphore) -> Iterator[rpb.IngestReadingsRequest]:
        closes_at = time.monotonic() + self.max_stream_s
        while True:
            # the next batch first, so the stream half-closes as soon as the last one is sent; its slot after
            with self.pulling:
                with self.lock:
                    if self.generation != generation:
                        return
                    item = self.backlog.popleft() if self.backlog else None
                resent = item is not None
                if item is None:
                    if self.done or time.monotonic() > closes_at:  # (max_stream_s: half-close, `stream` goes on)
                        return
                    try:
                        item = (self.taken, next(self.source))
                    except StopIteration:
                        self.done = True
                        return
                    except Exception as err:  # noqa: BLE001 - gRPC would swallow it; `stream` raises it
                        self.error, self.done = err, True
                        return
                    self.taken += 1
                while not slots.acquire(timeout=0.05):
                    if self.generation != generation:
                        break
                with self.lock:
                    if self.generation != generation:  # the stream closed meanwhile: the batch goes back
                        (self.backlog.appendleft if resent else self.backlog.append)(item)
                        return
                    self.pending.append(item)
            yield item[1]


# ---------------------------------------------------------------------------------------------- helpers

def series_input(history: Sequence[float] | np.ndarray, last_timestamp: str | pd.Timestamp, name: str = "",
                 covariates: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> pb.SeriesInput:
    """A `SeriesInput`; `covariates` maps name -> (past values aligned with history, future values)."""
    msg = pb.SeriesInput(name=name, history=np.asarray(history, dtype=np.float32).tolist(),
                         last_timestamp=_iso(last_timestamp))
    for key, (past, future) in (covariates or {}).items():
        msg.covariates.add(name=key, past=np.asarray(past, np.float32).tolist(),
                           future=np.asarray(future, np.float32).tolist())
    return msg


def to_frame(response: pb.ForecastRegionResponse | pb.ForecastSeriesResponse | rpb.ListReadingsResponse
             ) -> pd.DataFrame:
    """A response as a long table: zone (or series name; TOTAL for a region total), timestamp, point and
    one column q<level> per band; ListReadings: zone, timestamp (UTC), value."""
    if isinstance(response, rpb.ListReadingsResponse):
        return pd.DataFrame({"zone": [s.zone for s in response.series for _ in s.values],
                             "timestamp": pd.to_datetime([t for s in response.series for t in s.timestamps], utc=True),
                             "value": np.array([v for s in response.series for v in s.values], np.float64)})
    region = isinstance(response, pb.ForecastRegionResponse)
    forecasts = [*response.zones, response.total] if region else list(response.forecasts)
    frames = [pd.DataFrame({"zone": f.name, "timestamp": pd.to_datetime(list(f.timestamps)),
                            "point": np.asarray(f.point, np.float32),
                            **{f"q{band.level:g}": np.asarray(band.values, np.float32) for band in f.quantiles}})
              for f in forecasts]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _iso(stamp: str | pd.Timestamp | None) -> str:
    if stamp is None or stamp == "":
        return ""
    return stamp if isinstance(stamp, str) else pd.Timestamp(stamp).isoformat()


def _status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, bool]:
    """The status code and message of a failed call, and whether a retry may get through."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else str(err)) or code.name
    retryable = (code in RETRYABLE
                 or (code == grpc.StatusCode.INTERNAL and details.startswith(REPLICA_DIED))
                 or (code == grpc.StatusCode.UNKNOWN and details.startswith(INGRESS_LOST_REPLICA))
                 or (code == grpc.StatusCode.NOT_FOUND and details.startswith(INGRESS_STARTING)))
    return code, details, retryable


# ---------------------------------------------------------------------------------------------- readings

def zone_spec(spec: Any) -> rpb.ZoneSpec:
    """A ZoneSpec message from the message itself or anything with zone, region, resolution_s and time_zone
    (such as `models.store.ZoneSpec`)."""
    if isinstance(spec, rpb.ZoneSpec):
        return spec
    return rpb.ZoneSpec(zone=spec.zone, region=spec.region, resolution_s=int(spec.resolution_s or 0),
                        time_zone=spec.time_zone or "")


def ingest_request(readings: Iterable[rpb.Reading | tuple[str, Any, float]],
                   register: Sequence[Any] = ()) -> rpb.IngestReadingsRequest:
    """An IngestReadingsRequest of Reading messages or (zone, timestamp, value) tuples (timestamps as ISO
    text, or pandas/datetime times: naive ones stay wall-clock times)."""
    request = rpb.IngestReadingsRequest(register=[zone_spec(s) for s in register])
    for r in readings:
        if isinstance(r, rpb.Reading):
            request.readings.append(r)
        else:
            zone, stamp, value = r
            request.readings.add(zone=str(zone), timestamp=_iso(stamp), value=float(value))
    return request


def iso_timestamps(stamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """ISO 8601 text of each time as the table holds it: a naive time stays naive (wall-clock time, which
    the server reads in the zone's time zone), a tz-aware one carries its UTC offset."""
    index = pd.DatetimeIndex(stamps)
    wall = (index.tz_localize(None) if index.tz is not None else index).as_unit("us")
    unit = "us" if (wall.asi8 % 1_000_000).any() else "s"
    text = np.datetime_as_string(wall.to_numpy(), unit=unit)
    if index.tz is None:
        return text
    offsets = (wall.asi8 - index.tz_convert("UTC").tz_localize(None).as_unit("us").asi8) // 1_000_000
    unique, inverse = np.unique(offsets, return_inverse=True)
    suffix = np.array([f"{'-' if o < 0 else '+'}{abs(o) // 3600:02d}:{abs(o) % 3600 // 60:02d}" for o in unique])
    return np.char.add(text, suffix[inverse])


def batch_requests(ordered: pd.DataFrame, bounds: Sequence[tuple[int, int]],
                   register: Sequence[Any] = ()) -> Iterator[rpb.IngestReadingsRequest]:
    """The IngestReadingsRequests of `plan_batches`' table and ranges, built as they are taken; the zone
    registrations ride on the first batch only (the server registers them before it checks readings)."""
    from models.series import LOAD, TIMESTAMP, ZONE  # here: the models package loads torch

    zones = ordered[ZONE].astype(str).to_numpy()
    times = iso_timestamps(ordered[TIMESTAMP])
    values = ordered[LOAD].to_numpy(np.float64)
    specs = [zone_spec(s) for s in register]
    for i, (start, end) in enumerate(bounds):
        request = rpb.IngestReadingsRequest(register=specs if i == 0 else ())
        request.readings.extend(rpb.Reading(zone=z, timestamp=t, value=v) for z, t, v in
                                zip(zones[start:end].tolist(), times[start:end].tolist(), values[start:end].tolist()))
        yield request


def batches_from_frame(table: pd.DataFrame, batch: int = 1000,
                       register: Sequence[Any] = ()) -> Iterator[rpb.IngestReadingsRequest]:
    """A long table (zone, timestamp, load_mw, as `models.store.readings_frame(read_table(path))` gives) as
    IngestReadingsRequests: sorted by (zone, timestamp), stably, in batches of at most `batch` rows that
    never part a zone's readings of one time, timestamps as ISO text (naive stays naive), `register` on
    the first batch. See `models.store.plan_batches`."""
    from models.store import plan_batches

    ordered, bounds = plan_batches(table, batch)
    return batch_requests(ordered, bounds, register)
