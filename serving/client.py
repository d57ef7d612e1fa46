"""A typed Python client for the energyopt.v1 gRPC API, with timeouts and retries.

    from serving.client import ForecastClient

    with ForecastClient("localhost:9000") as client:
        response = client.forecast_region("PJM", horizon=48)
        frame = to_frame(response)          # long table: zone, timestamp, point, q0.1, ...

Every call has a deadline (`timeout`, seconds, per attempt). Calls that fail with UNAVAILABLE (server
starting, replica restarting, connection refused), or with the INTERNAL that Ray Serve's proxy returns
when a replica dies mid-call, are retried with exponential backoff and jitter, up to `retries` times;
every other error is raised at once as `ForecastError` with the server's status code and message. All
the API's operations are reads, so retrying them is safe.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import pandas as pd
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
# Ray Serve's proxy answers INTERNAL when the replica handling a call dies mid-call; a retry reaches the
# replica Serve starts in its place (safe: every call of this API only reads).
REPLICA_DIED = ("The actor died unexpectedly", "The actor is dead")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ForecastError(Exception):
    """A call that failed: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str, method: str = "") -> None:
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {message}")
        self.code, self.message, self.method = code, message, method


class ForecastClient:
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
    ) -> None:
        """`target` is HOST:PORT of Serve's gRPC proxy; `application` names the Serve application when
        the cluster runs several (sent as the `application` metadata Serve routes on)."""
        self.target, self.timeout, self.retries = target, timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self._metadata = (("application", application),) if application else None
        self._channel = channel or grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        self._stub = pb_grpc.ForecastServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ForecastClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
        timeout: float | None = None,
    ) -> pb.ForecastRegionResponse:
        """Every zone of `region` (or `zones`) and the region total, `horizon` hours from `issue_time`
        (default: right after the server's latest history)."""
        request = pb.ForecastRegionRequest(region=region, horizon=horizon, quantiles=list(quantiles), zones=list(zones),
                                           issue_time=_iso(issue_time), model=model)
        return self._call("ForecastRegion", self._stub.ForecastRegion, request, timeout)

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

    def _call(self, method: str, rpc: Callable[..., T], request: Any, timeout: float | None) -> T:
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(self.retries + 1):
            try:
                return rpc(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
                details = (err.details() if hasattr(err, "details") else str(err)) or code.name
                retryable = code in RETRYABLE or (code == grpc.StatusCode.INTERNAL and details.startswith(REPLICA_DIED))
                if not retryable or attempt == self.retries:
                    raise ForecastError(code, details, method) from None
            time.sleep(min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0))  # jittered
        raise AssertionError("unreachable")


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


def to_frame(response: pb.ForecastRegionResponse | pb.ForecastSeriesResponse) -> pd.DataFrame:
    """A response as a long table: zone (or series name; TOTAL for a region total), timestamp, point and
    one column q<level> per band."""
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
