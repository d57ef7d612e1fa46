"""The Ray Serve application: the forecaster deployment that answers gRPC and HTTP/JSON, and the
Ingestor it forwards readings to.

    client --gRPC :9000--> Serve gRPC proxy --+
                                              +--> Forecaster replica(s): bundle loaded once, the store's
    client --HTTP :8000--> Serve HTTP proxy --+    recent readings cached (serving/live.py); @serve.batch
                                                   -> one forward pass for many requests
                                                   ReadingsService batches --> Ingestor --> the store

A replica loads the model bundle once, keeps each zone's latest readings from the store (caught up by its
watermark), turns each request into model inputs (`serving.engine`), and hands them to a `@serve.batch`
method that concatenates the inputs of every
request waiting into one forward pass (batches are counted in series, up to `max_batch_series`, waiting
at most `batch_wait_timeout_s` for a batch to fill). The gRPC proxy calls the methods named like the RPCs
(`ForecastRegion`, ...); the FastAPI routes mirror them over HTTP/JSON with the same messages in their
proto3 JSON form.

`build_app(args)` builds the application from `configs/serve.yaml`'s `args`; the deployment's
`user_config` (model path and batching) can change on a running application: replicas load the new
bundle in the background and swap it in between batches, so serving never stops.
"""

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import math
import os
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from models.bundle import BundleError, load_bundle
from models.series import BUNDLED, DEFAULT_REGION, bundled_region
from models.store import Store, StoreError, ZoneSpec
from serving import archive as archive_api
from serving.anomaly import AnomalyDetector
from serving.api.energyopt.v1 import anomaly_pb2 as apb
from serving.api.energyopt.v1 import dispatch_pb2 as dpb
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.archive import archive_response
from serving.auth import Gate, RateLimitError, grpc_authorization
from serving.engine import FALLBACK_HOURS, HTTP_STATUS, ApiError, Engine, Job, Limits, invalid, not_found, shown
from serving.live import LiveHistory
from serving.metrics import RequestRecorder, mirrored_rpc, record_batch, record_ingest, record_model
from serving.scheduler import Scheduler

logger = logging.getLogger("ray.serve")

SERVICE = pb.DESCRIPTOR.services_by_name["ForecastService"].full_name  # "energyopt.v1.ForecastService"
HISTOGRAM_BINS = 64  # batch sizes 1..63 and "64 or more", in requests


class ReplicaConfig(BaseModel):
    """The deployment's `user_config`: applied to running replicas without restarting them. Its defaults
    are the only ones (the `@serve.batch` decorator and `build_app` take them from here)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("runs/demo/model", description="Model bundle directory (relative: from where Ray started).")
    max_batch_series: int = Field(256, ge=1, description="Series per forward pass (region requests count "
                                                          "one per zone): the dynamic batch size.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="Longest wait for a batch to fill.")
    anomaly_model: str | None = Field(None, description="Anomaly model bundle (`energyopt train --model "
                                                           "autoencoder`) for DetectAnomalies; none: it answers "
                                                           "FAILED_PRECONDITION.")


_REPLICA_DEFAULTS = ReplicaConfig()


class AppArgs(BaseModel):
    """`args` of the application in serve.yaml (a change restarts the replicas)."""

    model_config = ConfigDict(extra="forbid")

    store: str | None = Field(None, description="The store: a SQLite file path or a database URL "
                                                   "(postgresql://user@host/db); default runs/store.db.")
    data: str | None = Field(None, description="Long-format CSV/Parquet seeded into the store once "
                                                  "(default: the bundled PJM zones).")
    seed: bool = Field(True, description="Seed the store with `data` (skipped when that file was seeded).")
    seed_until: str | None = Field(None, description="Seed only the readings before this time (then feed the "
                                                        "rest live, e.g. with `energyopt replay`).")
    time_zone: str | None = Field(None, description="Time zone of the seeded zones (default: a bundled file's "
                                                       "own, America/New_York for PJM, Australia/Brisbane for "
                                                       "the NEM; else UTC).")
    tail_hours: int = Field(1500, ge=FALLBACK_HOURS, description="Hours of each zone's latest readings a "
                                                                   "replica keeps in memory.")
    region: str | None = Field(None, description="Region of the zones seeded from `data` (default: a bundled "
                                                    "file's, PJM or NEM; else PJM).")
    regions: dict[str, list[str]] = Field(default_factory=dict, description="More regions: name -> zones.")
    max_series_per_request: int = Field(Limits.max_series_per_request, ge=1,
                                        description="ForecastSeries: most series per request.")
    max_points_per_request: int = Field(Limits.max_points_per_request, ge=1,
                                        description="ForecastSeries: most history values.")
    max_readings_per_batch: int = Field(Limits.max_readings_per_batch, ge=1,
                                        description="ReadingsService: most readings per batch.")
    max_quantiles: int = Field(Limits.max_quantiles, ge=1, description="Forecasts: most quantile levels.")
    max_points_per_response: int = Field(Limits.max_points_per_response, ge=1,
                                         description="Forecasts: most values per response (series x horizon x "
                                                     "(1 + quantiles)).")
    max_anomaly_points: int = Field(Limits.max_anomaly_points, ge=1,
                                    description="DetectAnomalies: most values scanned per request.")
    max_body_bytes: int = Field(Limits.max_body_bytes, ge=1, description="HTTP/JSON: largest request body.")
    deadline_s: float = Field(Limits.deadline_s, gt=0, description="Longest a request's own work (a solve, a "
                                                                   "scan) may run: under request_timeout_s.")
    torch_threads: int | None = Field(None, ge=1, description="Intra-op threads per replica "
                                                                 "(default: the replica's num_cpus).")
    # authentication and per-key limits (serving/auth.py, docs/security.md)
    api_keys: str | None = Field(None, description="Key file (`energyopt keys create`); none: no "
                                                      "authentication (refused unless bound to loopback).")
    rate_per_key_s: float | None = Field(None, gt=0, description="Requests a second per key and replica "
                                                                    "(token bucket); none: no limit.")
    burst_per_key: int | None = Field(None, ge=1, description="Token bucket size (default: one second's).")
    max_concurrent_per_key: int | None = Field(None, ge=1, description="Requests in flight per key and "
                                                                          "replica; none: no limit.")
    # The deployment's user_config for `serve run serving.app:build_app model=...` (unset: ReplicaConfig's
    # defaults); serve.yaml sets them under deployments[].user_config, which can change without a restart.
    model: str | None = None
    max_batch_series: int | None = Field(None, ge=1)
    batch_wait_timeout_s: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _region_of_the_data(self) -> "AppArgs":
        if self.region is None:  # the bundled files name their own region (models.series.BUNDLED)
            bundled = bundled_region(self.data) if self.data else BUNDLED[DEFAULT_REGION]
            self.region = bundled.name if bundled else DEFAULT_REGION
        return self


def open_store(args: AppArgs, log: Callable[[str], None] | None = None) -> Store:
    """The application's store, migrated and seeded (each seed file once: a replica started later skips it);
    `log` hears what seeding did."""
    store = Store.open(args.store)
    if args.seed:
        result = store.seed(args.data, region=args.region, time_zone=args.time_zone, until=args.seed_until)
        if log is not None:
            source = args.data or "the bundled PJM zones"
            log(f"store {store.display_url}: {source} already seeded" if result is None else
                f"store {store.display_url}: seeded {result.received:,} readings from {source}: "
                f"{result.inserted:,} inserted, {result.unchanged + result.replaced:,} already held, "
                f"{len(result.rejected):,} rejected{rejection_summary(result.rejected)}")
        bundled = bundled_region(args.data) if args.data else None
        if bundled is not None and bundled.name == "NEM":  # its states' temperatures too: stations and observations
            from models.weather import seed_nem_weather

            seeded = seed_nem_weather(store, args.data, until=args.seed_until)
            if log is not None and seeded is not None:
                log(f"store {store.display_url}: seeded {seeded.inserted:,} hourly temperature observations of the "
                    "NEM's state capitals (weather forecasts are ingested separately: models.weather)")
    return store


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"()]+/)*([^\s/:'\"()]+)")


def without_paths(text: str) -> str:
    """`text` (a load error) with each absolute file path cut to its last part: answers name no server paths."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def rejection_summary(rejected: list) -> str:
    """' (12 x reason, ...)' for the most common reasons of rejected readings, '' when none."""
    reasons = Counter(r.reason.split(" (")[0].split(":")[0] for r in rejected)
    return f" ({', '.join(f'{n} x {why}' for why, n in reasons.most_common(3))})" if reasons else ""


def _series_in(jobs: list[Job]) -> int:
    return sum(job.n for job in jobs)


http_app = FastAPI(
    title="energyopt forecasts",
    description="HTTP/JSON mirror of the energyopt.v1 gRPC API: request and response bodies are the proto "
                "messages in proto3 JSON form (field names as in forecast.proto).",
)


@http_app.exception_handler(RequestValidationError)
async def _bad_query(request: Request, err: RequestValidationError) -> JSONResponse:
    """A query parameter FastAPI cannot convert (`limit=abc`): 400 INVALID_ARGUMENT naming it, in the API's own
    {"code", "message"} form (FastAPI's default is a 422 that quotes the whole input)."""
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return JSONResponse({"code": "INVALID_ARGUMENT", "message": f"{where}: {first.get('msg', 'invalid value')}, "
                         f"got {shown(first.get('input'))}"}, status_code=400)


async def _body(request: Request, message: Any, limits: Limits = Limits()) -> Any:
    """The HTTP request's JSON body parsed into the proto `message`; INVALID_ARGUMENT for anything that is not
    a JSON object of its fields, RESOURCE_EXHAUSTED (413) past `limits.max_body_bytes`, counted while reading
    (a 500 MB body is never held: the declared length is checked first, then each chunk as it arrives)."""
    limit = limits.max_body_bytes

    def too_big(size: str) -> ApiError:
        return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body: {size} exceed this server's limit "
                        f"of {limit:,} bytes (max_body_bytes); split the request")

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big(f"{int(declared):,} bytes (Content-Length)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big(f"more than {limit:,} bytes")
        chunks.append(chunk)
    try:  # json.loads: deep nesting is a RecursionError, a 5,000-digit int a ValueError, bad UTF-8 one too
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise invalid("request body: not valid JSON (UTF-8, nested at most a few hundred levels)") from None
    if not isinstance(body, dict):
        raise invalid(f"request body: a JSON object of {message.DESCRIPTOR.name}'s fields is required, got "
                      f"a JSON {type(body).__name__}")
    try:
        return json_format.ParseDict(body, message)
    except (json_format.ParseError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise invalid(f"request body: {shown(str(err), 200)}") from None


INTERNAL = object()  # `authorization` of a call from inside the application (a route, a handle): not checked
HTTP_REQUEST_PARAM = "eo_http_request"  # the FastAPI Request that _api adds to every route's parameters


def error_response(err: ApiError) -> JSONResponse:
    """An ApiError as an HTTP answer: {"code", "message"} with the status matching its code; a key over its
    limits gets 429 with Retry-After, a missing or unknown key 401 with WWW-Authenticate."""
    headers = {}
    if isinstance(err, RateLimitError):
        status, headers["Retry-After"] = err.http_status, str(max(1, math.ceil(err.retry_after_s)))
    else:
        status = HTTP_STATUS.get(err.code, 500)
        if err.code == grpc.StatusCode.UNAUTHENTICATED:
            headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"code": err.code.name, "message": err.message}, status_code=status, headers=headers)


def _api(empty: Callable[[], Any] | None = None, part: str = "the forecaster replica") -> Callable:
    """The one error mapping of every RPC (`empty`: its response type) and HTTP/JSON route (no `empty`).

    The method returns a response message or raises ApiError. An RPC answers an ApiError with its gRPC
    status code and message (and an empty response; without a grpc_context, as when an HTTP route calls
    the RPC, the ApiError propagates); a route with the matching HTTP status and {"code", "message"}, and
    a result as the message's proto3 JSON. Anything else is logged and answered INTERNAL, naming the `part`
    that failed, never with a stack trace.

    Every call from a client (an RPC with a grpc_context, every route) is admitted here first (serving/auth.py:
    its API key and role, the key's rate and concurrency limits; calls from inside the application are not
    checked): UNAUTHENTICATED (401), PERMISSION_DENIED (403), RESOURCE_EXHAUSTED (429 with Retry-After).

    Every answer to a client is counted and timed here (serving/metrics.py: per RPC, transport and status
    code; a route as the RPC it mirrors); an RPC called without a grpc_context (by a route, another
    method or another deployment) is not, so that nothing counts twice.
    """

    def decorate(method: Callable) -> Callable:
        name = mirrored_rpc(method) if empty is None else method.__name__  # the RPC whose role it needs

        async def answer(self: Any, authorization: Any, *args: Any, **kwargs: Any) -> Any:
            release = None
            try:
                gate = getattr(self, "gate", None)
                if gate is not None and authorization is not INTERNAL:  # a client's call: its key checked
                    release = gate.admit(name, authorization)
                return await method(self, *args, **kwargs)
            except ApiError:
                raise
            except Exception:
                logger.exception("%s failed", method.__name__)
                raise ApiError(grpc.StatusCode.INTERNAL, f"internal error in {part}; "
                                                         "the replica log has the details") from None
            finally:
                if release is not None:
                    release()

        if empty is None:
            http_requests = RequestRecorder(name, "http")

            @functools.wraps(method)
            async def route(self: Any, **kwargs: Any) -> JSONResponse:
                start = time.perf_counter()
                http_request = kwargs[own_request] if own_request else kwargs.pop(HTTP_REQUEST_PARAM)
                authorization = http_request.headers.get("authorization")
                try:
                    response = JSONResponse(json_format.MessageToDict(await answer(self, authorization, **kwargs),
                                                                      preserving_proto_field_name=True))
                    code = "OK"
                except ApiError as err:
                    response = error_response(err)
                    code = err.code.name
                http_requests.record(code, time.perf_counter() - start)
                return response

            # FastAPI reads the route's parameters from this signature (the body is JSON, not the message),
            # plus the request itself, for its Authorization header: the method's own Request parameter if it
            # has one (FastAPI hands the request to one parameter only), else one added here
            signature = inspect.signature(method)
            own_request = next((p.name for p in signature.parameters.values() if p.annotation in (Request, "Request")),
                               None)
            route.__signature__ = signature.replace(return_annotation=JSONResponse, parameters=[
                *signature.parameters.values(),
                *([] if own_request else [inspect.Parameter(HTTP_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY,
                                                            annotation=Request)])])
            return route

        grpc_requests = RequestRecorder(method.__name__, "grpc")

        async def rpc(self: Any, request: Any, grpc_context: Any = None) -> Any:
            start = time.perf_counter()
            try:
                response = await answer(self, INTERNAL if grpc_context is None else grpc_authorization(grpc_context),
                                        request)
            except ApiError as err:
                if grpc_context is None:
                    raise
                grpc_context.set_code(err.code)
                grpc_context.set_details(err.message)
                grpc_requests.record(err.code.name, time.perf_counter() - start)
                return empty()
            if grpc_context is not None:
                grpc_requests.record("OK", time.perf_counter() - start)
            return response

        # name and doc only: Serve passes grpc_context to methods whose own signature (this one) names it
        rpc.__name__, rpc.__qualname__, rpc.__doc__ = method.__name__, method.__qualname__, method.__doc__
        return rpc

    return decorate


# (above the deployments: Serve captures their globals when the class is defined)
STREAM_WINDOW = 4  # StreamReadings: batches of one stream forwarded ahead of their acknowledgement
# A batch goes to the Ingestor over Serve's inter-deployment gRPC, whose messages Ray caps at 4 MiB
# (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH); a bigger one is refused here, naming the limit, not there.
INGESTOR_MAX_BYTES = int(os.environ.get("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", 4 << 20)) - (64 << 10)
STREAM_REQUESTS = RequestRecorder("StreamReadings", "grpc")  # not an _api method: one count per stream


async def _acknowledged(window: deque) -> rpb.IngestAck:
    """The oldest forwarded batch's acknowledgement; its ApiError names the batch."""
    batch, pending = window.popleft()
    try:
        return await pending
    except ApiError as err:
        raise ApiError(err.code, f"batch {batch}: {err.message}") from None


def ingest_batch(store: Store, request: rpb.IngestReadingsRequest, batch: int = 0) -> rpb.IngestAck:
    """One batch into the store (committed when this returns) and its acknowledgement; ApiError for a
    registration the store refuses."""
    register = [ZoneSpec(z.zone, z.region, z.resolution_s, z.time_zone) for z in request.register]
    readings = request.readings
    try:
        result = store.ingest([r.zone for r in readings], [r.timestamp for r in readings],
                              [r.value for r in readings], register=register)
    except StoreError as err:
        raise invalid(f"register: {err}") from None
    if result.rejected:  # readings of zero or less: zero_readings anomaly events (serving/scans.py)
        from serving.scans import record_rejected_zeros

        record_rejected_zeros(store, result)
    record_ingest(result.inserted, result.replaced, result.unchanged, result.rejected)
    ack = rpb.IngestAck(batch=batch, received=result.received, inserted=result.inserted, replaced=result.replaced,
                        unchanged=result.unchanged, watermark=result.watermark, registered=result.registered)
    for r in result.rejected:
        ack.rejected.add(index=r.index, zone=r.zone, timestamp=r.timestamp, reason=r.reason)
    return ack


# The operator dashboard (serving/dashboard/, docs/dashboard.md): static files, fed by the HTTP/JSON routes.
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
DASHBOARD_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".csv": "text/csv",
                   "": "text/plain"}  # "": vendor/LICENSE-uPlot; any other file is not served


def dashboard_file(name: str, if_none_match: str | None = None) -> Response:
    """The dashboard's file `name` (relative to serving/dashboard/), or a 404 {"code", "message"} for anything
    else: a path that resolves outside the folder (`../`, a link), a folder, a type not listed above. A 304
    when `if_none_match` (the request's If-None-Match) names the file's current ETag."""
    try:
        path = (DASHBOARD_DIR / name).resolve()
        found = path.is_relative_to(DASHBOARD_DIR) and path.is_file() and path.suffix in DASHBOARD_TYPES
    except (OSError, ValueError):  # a name the file system refuses (a NUL byte, too long)
        found = False
    if not found:
        return JSONResponse({"code": "NOT_FOUND", "message": f"no dashboard file {shown(name)}"}, status_code=404)
    # the vendored library changes only with its version; the page's own files with every release of the service
    cache = "public, max-age=86400" if path.parent.name == "vendor" else "no-cache"
    response = FileResponse(path, media_type=DASHBOARD_TYPES[path.suffix], headers={"Cache-Control": cache},
                            stat_result=path.stat())  # stat now: the ETag is set here, not when sending
    if if_none_match and response.headers["etag"] in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers={"ETag": response.headers["etag"], "Cache-Control": cache})
    return response


@serve.deployment(name="Forecaster", max_ongoing_requests=256, ray_actor_options={"num_cpus": 1},
                  health_check_period_s=5)
@serve.ingress(http_app)
class Forecaster:
    """A replica: the bundle loaded once, the store's recent readings cached; requests answered in dynamic
    batches; readings forwarded to the Ingestor."""

    def __init__(self, args: dict, ingestor: Any = None, scheduler: Any = None) -> None:
        """`ingestor`: the Ingestor deployment's handle (None: ingest in this process); `scheduler`: the
        Scheduler's (bound here so that it is part of the application; it calls this deployment)."""
        self.args = AppArgs.model_validate(args)
        self.gate = Gate.from_args(self.args.api_keys, self.args.rate_per_key_s, self.args.burst_per_key,
                                   self.args.max_concurrent_per_key)  # serving/auth.py
        self.ingestor = ingestor
        if self.args.torch_threads:
            torch.set_num_threads(self.args.torch_threads)
        self.store = open_store(self.args)
        self.live = LiveHistory(self.store, self.args.tail_hours)
        self.limits = Limits(**self.args.model_dump(include=set(Limits.__dataclass_fields__)))
        self.engine: Engine | None = None  # loaded by reconfigure(), which Serve calls before traffic
        self.anomaly = AnomalyDetector(self.args.data, self.limits)  # DetectAnomalies (serving/anomaly.py)
        from serving.scans import Scanner

        self.scanner = Scanner(self.store)  # anomaly scans on arrival (serving/scans.py)
        self.config = ReplicaConfig()
        self.max_batch_series = self.config.max_batch_series
        self.swap_error = ""
        self._swap_lock = asyncio.Lock()
        self._reconfigure_failed = False  # the last user_config's model did not load: the same one is retried
        self._promotion_id: int | None = None  # newest promotion seen in the store (None: unknown); see below
        self._promotions: asyncio.Task | None = None  # follows them; started with the first model
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (unit use) there is no replica context
            self.replica = f"pid{os.getpid()}"
        self._reset_stats()

    async def reconfigure(self, user_config: dict) -> None:
        """Apply a new user_config: batching at once; a different model is loaded off the event loop and
        swapped in between batches (requests keep being answered by the old model meanwhile)."""
        config = ReplicaConfig.model_validate(user_config or {})
        await self.anomaly.configure(config.anomaly_model)
        self._run_batch.set_max_batch_size(config.max_batch_series)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.max_batch_series = config.max_batch_series
        async with self._swap_lock:
            if self.engine is not None and config.model == self.config.model and not self._reconfigure_failed:
                self.config = config
                return
            path = str(Path(config.model).expanduser().resolve())
            # promotions in the store (energyopt retrain): a starting replica serves what they made of its
            # model; a new user_config model on a running one wins over those made before it
            newest, target = await self._promotion_baseline(path, starting=self.engine is None)
            promoted_error = await self._swap(target, f"promotion {newest}: ") if target != path else ""
            if target == path or promoted_error:
                error = await self._swap(path)
                if error:
                    if self.engine is None:  # nothing to keep serving: the replica cannot start
                        raise RuntimeError(f"cannot serve model {config.model}: {error}") from None
                    self._reconfigure_failed = True
                    return
                if promoted_error:  # serving the configured model instead of the promoted one
                    self.swap_error = (f"{datetime.now(UTC).isoformat(timespec='seconds')}: promotion {newest} "
                                       f"({target}): {promoted_error}")
            self.config, self._promotion_id, self._reconfigure_failed = config, newest, False
            if self._promotions is None:
                self._promotions = asyncio.create_task(self._follow_promotions())

    async def _swap(self, path: str, what: str = "") -> str:
        """Load the bundle at `path` off the event loop (requests keep being answered by the current model
        meanwhile) and swap it in between batches; '' once it serves. A bundle that does not load leaves the
        current model in service, reported in swap_error (`what` in front of the reason), and returns the
        reason. Called with _swap_lock held."""
        try:
            engine = await asyncio.to_thread(
                lambda: Engine(load_bundle(path), self.live, self.args.regions, self.limits, bundle_path=path))
        except (BundleError, ValueError, OSError) as err:
            if self.engine is not None:
                self.swap_error = f"{datetime.now(UTC).isoformat(timespec='seconds')}: {what}{err}"
                logger.error("model swap to %s failed, still serving %s %s: %s%s", path,
                             self.engine.bundle.name, self.engine.bundle.version, what, err)
            return str(err) or type(err).__name__
        old = self.engine
        self.engine, self.swap_error = engine, ""
        self._reset_stats()
        record_model(engine.bundle, old.bundle if old else None)
        logger.info("serving model %s version %s from %s%s", engine.bundle.name, engine.bundle.version, path,
                    f" (was version {old.bundle.version})" if old else "")
        return ""

    # ------------------------------------------------------------------------------------------ batching

    @serve.batch(max_batch_size=_REPLICA_DEFAULTS.max_batch_series,
                 batch_wait_timeout_s=_REPLICA_DEFAULTS.batch_wait_timeout_s, batch_size_fn=_series_in)
    async def _run_batch(self, jobs: list[Job]) -> list[Any]:
        """Every waiting request's inputs in one forward pass (per model, should a swap be under way).

        The pass runs on the replica's event loop on purpose: requests that arrive meanwhile queue up,
        and the next batch takes all of them (up to max_batch_series), so batches grow with the load.
        Run in a thread, Serve's batcher would keep cutting small batches every batch_wait_timeout_s
        while the previous one computes, and they would wait in line for the model one after another.
        """
        return self._compute(jobs)

    def _compute(self, jobs: list[Job]) -> list[Any]:
        responses: dict[int, Any] = {}  # job index -> response
        computed = 0
        for engine in {id(job.engine): job.engine for job in jobs}.values():  # two while a swap is under way
            idx = [i for i, job in enumerate(jobs) if job.engine is engine]
            answers, n = engine.run([jobs[i] for i in idx])
            responses.update(zip(idx, answers))
            computed += n
        self._record(len(jobs), _series_in(jobs), computed)
        return [responses[i] for i in range(len(jobs))]

    def _reset_stats(self) -> None:
        self.stats: Counter[str] = Counter()  # the counters of ServingStats (absent: 0)
        self.histogram = [0] * HISTOGRAM_BINS
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")

    def _record(self, requests: int, series: int, computed: int) -> None:
        self.stats.update(requests=requests, batches=1, series=series, computed_series=computed)
        self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], requests)
        self.histogram[min(requests, HISTOGRAM_BINS) - 1] += 1
        record_batch(requests, series)

    def serving_stats(self) -> pb.ServingStats:
        return pb.ServingStats(replica=self.replica, loaded_at=self.loaded_at, batch_histogram=self.histogram,
                               max_batch_series=self.config.max_batch_series,
                               batch_wait_timeout_s=self.config.batch_wait_timeout_s, **self.stats)

    # ------------------------------------------------------------------------------------------ operations

    def _serving(self) -> Engine:
        """The engine in service; UNAVAILABLE until the first model is loaded."""
        if self.engine is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        return self.engine

    async def _answer(self, job: Job) -> Any:
        """Answer one forecast job in the next batch (or alone, if it is larger than a batch)."""
        if job.n == 0 or job.n > self.max_batch_series:  # nothing for the model, or more than a whole batch
            answer = self._compute([job])[0]
        else:
            answer = await self._run_batch(job)
        if isinstance(answer, ApiError):  # this request's own failure (Engine.run), not its whole batch's
            raise answer
        return answer

    @_api(pb.ForecastRegionResponse)
    async def ForecastRegion(self, request: pb.ForecastRegionRequest) -> pb.ForecastRegionResponse:
        response = await self._answer(self._serving().region_job(request))
        if request.archive:  # a copy: identical requests of one batch share the answer
            archived = pb.ForecastRegionResponse()
            archived.CopyFrom(response)
            time_zone = self.live.time_zone(self._serving().regions[request.region])
            archived.forecast_id = await asyncio.to_thread(archive_response, self.store, archived, time_zone)
            return archived
        return response

    @_api(pb.ForecastSeriesResponse)
    async def ForecastSeries(self, request: pb.ForecastSeriesRequest) -> pb.ForecastSeriesResponse:
        return await self._answer(self._serving().series_job(request))

    @_api(apb.DetectAnomaliesResponse, "the anomaly detector")
    async def DetectAnomalies(self, request: apb.DetectAnomaliesRequest) -> apb.DetectAnomaliesResponse:
        return await self.anomaly.detect(request)

    @_api(dpb.OptimizeDispatchResponse, "the dispatch solver")
    async def OptimizeDispatch(self, request: dpb.OptimizeDispatchRequest) -> dpb.OptimizeDispatchResponse:
        """serving/dispatch.py does the work; zone loads come from this replica's own forecasts (whose
        internal errors ForecastRegion names as the forecaster's)."""
        from serving import dispatch

        zone_load = {}
        for zone, horizon in dispatch.zones_needed(request, list(self.live.specs)).items():
            region = self.live.specs[zone].region
            forecast = await self.ForecastRegion(pb.ForecastRegionRequest(region=region, horizon=horizon, zones=[zone]))
            zone_load[zone] = list(forecast.zones[0].point)
        # off the event loop: forecasts keep being answered during a solve
        return await asyncio.to_thread(dispatch.optimize, request, zone_load, deadline_s=self.limits.deadline_s)

    # energyopt.v1.ReadingsService: every replica writes to the one store (serialized there), off the loop

    def _check_batch(self, request: rpb.IngestReadingsRequest) -> None:
        n = len(request.readings)
        if n > self.limits.max_readings_per_batch:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"readings: {n:,} readings exceed this server's limit of "
                           f"{self.limits.max_readings_per_batch:,} per batch (max_readings_per_batch); split it")
        size = request.ByteSize()
        if size > INGESTOR_MAX_BYTES:  # found by fuzzing: 10,000 readings with 1 MB zone names failed INTERNAL
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"readings: the batch is {size:,} bytes, over this server's limit of "
                           f"{INGESTOR_MAX_BYTES:,} bytes per batch; split it (or shorten its names)")

    async def _ingest(self, request: rpb.IngestReadingsRequest, batch: int = 0, stream: str = "") -> rpb.IngestAck:
        """The batch committed (by the Ingestor, or here outside Serve) and its acknowledgement."""
        if self.ingestor is None:  # outside Serve (unit use): in this process
            return await asyncio.to_thread(ingest_batch, self.store, request, batch)
        ack, code, message = await self.ingestor.ingest.remote(request.SerializeToString(), batch, stream)
        if code:
            raise ApiError(grpc.StatusCode[code], message)
        return rpb.IngestAck.FromString(ack)

    @_api(rpb.IngestAck, "the readings store")
    async def IngestReadings(self, request: rpb.IngestReadingsRequest) -> rpb.IngestAck:
        self._check_batch(request)
        ack = await self._ingest(request)
        if ack.received and len(ack.rejected) == ack.received:
            first = "; ".join(f"readings[{r.index}]: {r.reason}" for r in ack.rejected[:3])
            raise invalid(f"readings: all {ack.received} readings were rejected ({first})")
        if not ack.received and not ack.registered:
            raise invalid("readings: at least one reading (or a zone to register) is required")
        return ack

    async def StreamReadings(self, request_stream: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        """One acknowledgement per batch, in order, each after its commit. Up to STREAM_WINDOW batches are
        forwarded ahead of their acknowledgement (the Ingestor commits a stream's batches in order), so the
        database never waits for the next batch to travel. An oversized batch ends the stream after the
        acknowledgements of those before it (it and later ones are not stored); so does a failing store."""
        stream = uuid.uuid4().hex
        window: deque[tuple[int, asyncio.Future]] = deque()
        ahead = STREAM_WINDOW if self.ingestor is not None else 1
        batch, start, code = 0, time.perf_counter(), "OK"
        release = None
        try:
            if grpc_context is not None:  # a client's stream: its key admitted once, for the whole stream
                release = self.gate.admit("StreamReadings", grpc_authorization(grpc_context))
            async for request in request_stream:
                try:
                    self._check_batch(request)
                except ApiError as err:
                    while window:
                        yield await _acknowledged(window)
                    raise ApiError(err.code, f"batch {batch}: {err.message}") from None
                window.append((batch, asyncio.ensure_future(self._ingest(request, batch, stream))))
                batch += 1
                while len(window) >= ahead:
                    yield await _acknowledged(window)
            while window:
                yield await _acknowledged(window)
        except ApiError as err:
            code = err.code.name
            if grpc_context is None:
                raise
            grpc_context.set_code(err.code)
            grpc_context.set_details(err.message)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            logger.exception("StreamReadings failed")
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.INTERNAL)
                grpc_context.set_details("internal error in the readings store; the replica log has the details")
        finally:
            for _, pending in window:
                pending.cancel()
            if release is not None:
                release()
            if grpc_context is not None:
                STREAM_REQUESTS.record(code, time.perf_counter() - start)

    @_api(rpb.ListZonesResponse, "the readings store")
    async def ListZones(self, request: rpb.ListZonesRequest) -> rpb.ListZonesResponse:
        status = await asyncio.to_thread(self.store.zone_status)
        resp = rpb.ListZonesResponse(watermark=await asyncio.to_thread(self.store.watermark),
                                     default_region=self.args.region)
        for spec, last, count in status:
            if request.region and spec.region != request.region:
                continue
            z = resp.zones.add(readings=count, last_reading=(
                datetime.fromtimestamp(last, UTC).isoformat() if last is not None else ""))
            z.spec.zone, z.spec.region, z.spec.resolution_s, z.spec.time_zone = (
                spec.zone, spec.region, spec.resolution_s, spec.time_zone)
        if request.region and not resp.zones:
            raise not_found(f"region: unknown region {shown(request.region)}")
        return resp

    @_api(rpb.ListReadingsResponse, "the readings store")
    async def ListReadings(self, request: rpb.ListReadingsRequest) -> rpb.ListReadingsResponse:
        """serving/readings.py does the work (the window, the limits), off the event loop."""
        from serving.readings import list_readings

        return await asyncio.to_thread(list_readings, self.store, self.args.regions, request)

    @_api(pb.ModelInfo)
    async def GetModelInfo(self, request: pb.GetModelInfoRequest) -> pb.ModelInfo:
        info = self._serving().model_info(request, self.serving_stats())
        # the bundle directory's name, not its path: a client learns nothing of the server's filesystem
        info.bundle_path, info.swap_error = Path(self.engine.bundle_path).name, without_paths(self.swap_error)
        return info

    async def served_bundle_path(self) -> str:
        """The absolute directory of the bundle this replica serves (the Scheduler's retraining champion)."""
        return self.engine.bundle_path

    # ------------------------------------------------------------------------------------------ archive
    # (forecast archive and live accuracy: models/archive.py; the schedule: serving/scheduler.py)

    @_api(pb.ListForecastsResponse, "the forecast archive")
    async def ListForecasts(self, request: pb.ListForecastsRequest) -> pb.ListForecastsResponse:
        return await asyncio.to_thread(archive_api.list_forecasts, self.store, self._serving().regions, request)

    @_api(pb.ForecastAccuracy, "the forecast archive")
    async def GetForecastAccuracy(self, request: pb.GetForecastAccuracyRequest) -> pb.ForecastAccuracy:
        regions = self._serving().regions
        self.live.refresh()
        lasts = [self.live.view(z).last_reading for z in regions.get(request.region, [])]
        latest = max((t for t in lasts if t is not None), default=None)
        return await asyncio.to_thread(archive_api.forecast_accuracy, self.store, regions, request, latest)

    # ------------------------------------------------------------------------------------------ anomaly scans
    # (scans on arrival and ListAnomalies: serving/scans.py)

    async def scan_arrivals(self) -> dict:
        """Scan the hours that arrived since the last scan (the Scheduler calls this every scan_every_s;
        off the event loop) and store what was found; returns the counts (zones, hours, opened, updated,
        closed, ...)."""
        return await self.scanner.scan(self.anomaly.engine)

    @_api(apb.ListAnomaliesResponse, "the anomaly store")
    async def ListAnomalies(self, request: apb.ListAnomaliesRequest) -> apb.ListAnomaliesResponse:
        from serving.scans import list_anomalies

        return await asyncio.to_thread(list_anomalies, self.store, request)

    # ------------------------------------------------------------------------------------------ model decisions
    # (champion/challenger: training/retrain.py, models/decisions.py)
    #
    # Every replica follows the promotions stored by `energyopt retrain`: a background task reads the newest
    # one every PROMOTION_POLL_S (one single-row query) and, when it is newer than the last one this replica
    # saw and replaces the bundle the replica serves (or names no champion: an operator's), swaps to its
    # bundle through `_swap`, as a user_config change does: no downtime. Whatever happened last wins: a
    # user_config model change records the newest promotion, so that no older one undoes it. A promoted
    # bundle that does not load leaves the model in service and is reported in swap_error.

    PROMOTION_POLL_S = 3.0

    async def _promotion_baseline(self, path: str, *, starting: bool) -> tuple[int | None, str]:
        """(newest promotion id, bundle to serve) for a user_config naming `path`: a starting replica follows
        the promotions from `path` on (a restarted or added replica serves what the others do), a running
        one serves `path`. (None, path) when the store cannot be read: promotions from the next one read."""
        from models.decisions import bundle_identity, follow, latest_promotion, promotions

        def read() -> tuple[int, str]:
            if not starting:
                newest = latest_promotion(self.store)
                return (newest.id if newest else 0), path
            chain = promotions(self.store)
            return (chain[-1].id if chain else 0), follow(chain, path, *bundle_identity(path))

        try:
            return await asyncio.to_thread(read)
        except Exception as err:  # noqa: BLE001 - the model must load even with the store unreachable
            logger.warning("cannot read the model decisions in the store (%s): following the promotions "
                           "stored from now on", err)
            return None, path

    async def _follow_promotions(self) -> None:
        """The replica's background task: `_apply_promotions` every PROMOTION_POLL_S; errors (a store that
        cannot be reached) are logged once each and the task goes on. The polls read on a thread of their
        own (so on one connection of the store's, kept between polls)."""
        failing = ""
        reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="promotions")
        while True:
            await asyncio.sleep(self.PROMOTION_POLL_S)
            try:
                await self._apply_promotions(reader)
                failing = ""
            except Exception as err:  # noqa: BLE001 - nothing may end the task
                if str(err) != failing:
                    logger.warning("following model promotions: %s (retrying every %g s)", err,
                                   self.PROMOTION_POLL_S)
                failing = str(err)

    async def _apply_promotions(self, reader: concurrent.futures.Executor | None = None) -> None:
        from models.decisions import follow, latest_promotion, promotions

        newest = await asyncio.get_running_loop().run_in_executor(reader, latest_promotion, self.store)
        if self._promotion_id is not None and (newest is None or newest.id <= self._promotion_id):
            return
        async with self._swap_lock:
            if self._promotion_id is None:  # unknown (the store was unreadable): promotions from now on
                self._promotion_id = newest.id if newest else 0
                return
            if newest is None or newest.id <= self._promotion_id or self.engine is None:
                return
            chain = await asyncio.to_thread(promotions, self.store, self._promotion_id)
            engine = self.engine
            target = follow(chain, engine.bundle_path, engine.bundle.name, engine.bundle.version)
            self._promotion_id = max([newest.id, *(p.id for p in chain)])
            if target == engine.bundle_path:
                logger.info("promotion %d replaces another model than this replica's %s %s: not followed",
                            self._promotion_id, engine.bundle.name, engine.bundle.version)
            elif not await self._swap(target, f"promotion {self._promotion_id}: "):
                logger.info("promotion %d followed", self._promotion_id)

    @_api(pb.ListModelDecisionsResponse, "the model decisions")
    async def ListModelDecisions(self, request: pb.ListModelDecisionsRequest) -> pb.ListModelDecisionsResponse:
        from models.decisions import MANUAL, list_decisions

        if request.limit > 1000:
            raise invalid(f"limit: at most 1000, got {request.limit}")

        def iso(seconds: float) -> str:
            return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds") if seconds else ""

        response = pb.ListModelDecisionsResponse()
        for d in await asyncio.to_thread(list_decisions, self.store, request.limit or 20):
            scored = d.metric != MANUAL
            response.decisions.add(
                decided_at=iso(d.decided_at), champion=pb.ModelRef(name=d.champion_name, version=d.champion_version),
                challenger=pb.ModelRef(name=d.challenger_name, version=d.challenger_version), metric=d.metric,
                champion_score=d.champion_score, challenger_score=d.challenger_score, margin=d.margin,
                promoted=d.promoted, champion_path=Path(d.champion_path).name,  # no server paths in answers
                challenger_path=Path(d.challenger_path).name,
                backtest_start=iso(d.backtest_start) if scored else "",
                backtest_end=iso(d.backtest_end) if scored else "")
        return response

    # grpc.health.v1.Health, answered by a replica (so SERVING means a model is loaded and answering).
    @_api(health_pb2.HealthCheckResponse)
    async def Check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE):
            raise not_found(f"unknown service {shown(request.service)}; this server has {SERVICE!r}")
        status = health_pb2.HealthCheckResponse.SERVING if self.engine else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, grpc_context: Any = None) -> AsyncIterator[Any]:
        """Sends the current status once and ends (a replica cannot hold streams open forever behind
        Serve's request timeout); poll Check to follow changes."""
        yield await self.Check(request, grpc_context)

    # ------------------------------------------------------------------------------------------ HTTP/JSON

    @http_app.post("/v1/readings", summary="IngestReadings (body: IngestReadingsRequest as JSON)")
    @_api()
    async def http_ingest_readings(self, request: Request) -> rpb.IngestAck:
        return await self.IngestReadings(await _body(request, rpb.IngestReadingsRequest(), self.limits))

    @http_app.get("/v1/zones", summary="ListZones")
    @_api()
    async def http_list_zones(self, region: str = Query("", description="Only this region's zones.")
                              ) -> rpb.ListZonesResponse:
        return await self.ListZones(rpb.ListZonesRequest(region=region))

    @http_app.get("/v1/readings", summary="ListReadings (stored readings of a region's zones, oldest first)")
    @_api()
    async def http_list_readings(
        self, region: str = DEFAULT_REGION, zones: list[str] = Query(default=[]), hours: str = "", since: str = "",
        until: str = "", max_points: str = "",
    ) -> rpb.ListReadingsResponse:
        from serving.readings import list_request  # numbers as text: a bad one is named like the RPC's

        return await self.ListReadings(list_request(region, zones, hours, since, until, max_points))

    @http_app.get("/v1/anomalies/events", summary="ListAnomalies (events stored by the scans on arrival)")
    @_api()
    async def http_list_anomalies(self, region: str = "", zone: str = "", since: str = "", open_only: str = "",
                                  limit: str = "") -> apb.ListAnomaliesResponse:
        from serving.scans import list_request  # query parameters as text: a bad one is named like the RPC's

        return await self.ListAnomalies(list_request(region, zone, since, open_only, limit))

    @http_app.post("/v1/forecast/region", summary="ForecastRegion (body: ForecastRegionRequest as JSON)")
    @_api()
    async def http_forecast_region(self, request: Request) -> pb.ForecastRegionResponse:
        return await self.ForecastRegion(await _body(request, pb.ForecastRegionRequest(), self.limits))

    @http_app.get("/v1/forecast/region", summary="ForecastRegion with query parameters (for browsers)")
    @_api()
    async def http_forecast_region_get(
        self, region: str = DEFAULT_REGION, horizon: int = 48, quantiles: list[float] = Query(default=[]),
        zones: list[str] = Query(default=[]), issue_time: str = "", model: str = "",
    ) -> pb.ForecastRegionResponse:
        if not 0 <= horizon < 2**32:
            raise invalid(f"horizon: must be positive, got {horizon}")
        return await self.ForecastRegion(pb.ForecastRegionRequest(
            region=region, horizon=horizon, quantiles=quantiles, zones=zones, issue_time=issue_time, model=model))

    @http_app.post("/v1/forecast/series", summary="ForecastSeries (body: ForecastSeriesRequest as JSON)")
    @_api()
    async def http_forecast_series(self, request: Request) -> pb.ForecastSeriesResponse:
        return await self.ForecastSeries(await _body(request, pb.ForecastSeriesRequest(), self.limits))

    @http_app.post("/v1/anomalies", summary="DetectAnomalies (body: DetectAnomaliesRequest as JSON)")
    @_api()
    async def http_detect_anomalies(self, request: Request) -> apb.DetectAnomaliesResponse:
        return await self.DetectAnomalies(await _body(request, apb.DetectAnomaliesRequest(), self.limits))

    @http_app.post("/v1/dispatch", summary="OptimizeDispatch (body: OptimizeDispatchRequest as JSON)")
    @_api()
    async def http_optimize_dispatch(self, request: Request) -> dpb.OptimizeDispatchResponse:
        return await self.OptimizeDispatch(await _body(request, dpb.OptimizeDispatchRequest(), self.limits))

    @http_app.get("/v1/forecasts", summary="ListForecasts (the archive)")
    @_api()
    async def http_list_forecasts(
        self, region: str = DEFAULT_REGION, zone: str = "", issued_from: str = "", issued_to: str = "",
        scheduled_only: bool = False, limit: int = Query(100, ge=0, lt=2**32), headers_only: bool = False,
    ) -> pb.ListForecastsResponse:
        return await self.ListForecasts(pb.ListForecastsRequest(
            region=region, zone=zone, issued_from=issued_from, issued_to=issued_to, scheduled_only=scheduled_only,
            limit=limit, headers_only=headers_only))

    @http_app.get("/v1/forecasts/accuracy", summary="GetForecastAccuracy (live accuracy of the archive)")
    @_api()
    async def http_forecast_accuracy(
        self, region: str = DEFAULT_REGION, zone: str = "", window_days: int = Query(7, ge=0, lt=2**32),
        bucket_ends: list[int] = Query(default=[]), until: str = "", include_on_demand: bool = False,
        model_version: str = "",
    ) -> pb.ForecastAccuracy:
        if any(not 0 <= b < 2**32 for b in bucket_ends):
            raise invalid(f"bucket_ends: steps must be positive, got {bucket_ends}")
        return await self.GetForecastAccuracy(pb.GetForecastAccuracyRequest(
            region=region, zone=zone, window_days=window_days, bucket_ends=bucket_ends, until=until,
            include_on_demand=include_on_demand, model_version=model_version))

    @http_app.get("/v1/model", summary="GetModelInfo")
    @_api()
    async def http_model_info(self, model: str = "") -> pb.ModelInfo:
        return await self.GetModelInfo(pb.GetModelInfoRequest(model=model))

    @http_app.get("/v1/model/decisions", summary="ListModelDecisions (champion/challenger, newest first)")
    @_api()
    async def http_model_decisions(
        self, limit: int = Query(20, description="At most this many decisions (at most 1000).")
    ) -> pb.ListModelDecisionsResponse:
        if not 0 <= limit < 2**32:
            raise invalid(f"limit: must be positive, got {limit}")
        return await self.ListModelDecisions(pb.ListModelDecisionsRequest(limit=limit))

    @http_app.get("/", include_in_schema=False)
    async def http_dashboard(self, request: Request) -> Response:
        return dashboard_file("index.html", request.headers.get("if-none-match"))

    @http_app.get("/dashboard/{name:path}", include_in_schema=False)
    async def http_dashboard_file(self, name: str, request: Request) -> Response:
        return dashboard_file(name, request.headers.get("if-none-match"))

    @http_app.get("/healthz", summary="200 once a model is loaded (for load balancers)")
    async def http_healthz(self) -> JSONResponse:
        if self.engine is None:
            return JSONResponse({"status": "NOT_SERVING"}, status_code=503)
        return JSONResponse({"status": "SERVING", "model": self.engine.bundle.name,
                             "version": self.engine.bundle.version})


@serve.deployment(name="Ingestor", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class Ingestor:
    """Writes readings to the store in a process of its own: the forecasting replicas only check a batch's
    size and forward it, so a feed never holds their interpreter while forecasts wait. Its methods are
    called through the Forecaster's handle, never by clients (they reach ReadingsService on the Forecaster).
    One replica writes SQLite without lock waits; with PostgreSQL more may run (commits are serialized in
    the store either way)."""

    ORDER_WAIT_S = 60.0  # a stream's batch waits at most this long for the one before it

    def __init__(self, args: dict) -> None:
        self.store = Store.open(AppArgs.model_validate(args).store)
        # one writer thread: batches queue here in arrival order instead of in SQLite's busy handler,
        # which sleeps up to 100 ms between tries (PostgreSQL serializes commits on the state row anyway)
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self._turn: OrderedDict[str, int] = OrderedDict()  # stream -> its next batch to commit
        self._order = asyncio.Condition()

    async def ingest(self, request: bytes, batch: int, stream: str = "") -> tuple[bytes, str, str]:
        """(IngestAck bytes, "", "") once committed, or (b"", status code name, message) for a refused batch;
        anything else is logged and answered INTERNAL. The batches of a `stream` commit in their order
        (a correction in a later batch must land after the value it corrects), whatever order they arrive in."""
        if stream:
            try:
                async with self._order:
                    await asyncio.wait_for(self._order.wait_for(lambda: self._turn.get(stream, 0) == batch),
                                           self.ORDER_WAIT_S)
            except TimeoutError:
                return b"", "UNAVAILABLE", (f"batch {batch - 1} of this stream never arrived; resend from it "
                                            "(resends are idempotent)")
        try:
            ack = await asyncio.get_running_loop().run_in_executor(
                self._writer, ingest_batch, self.store, rpb.IngestReadingsRequest.FromString(request), batch)
            return ack.SerializeToString(), "", ""
        except ApiError as err:
            return b"", err.code.name, err.message
        except Exception:
            logger.exception("ingest failed")
            return b"", "INTERNAL", "internal error in the readings store; the Ingestor log has the details"
        finally:
            if stream:
                async with self._order:
                    self._turn[stream] = batch + 1
                    self._turn.move_to_end(stream)
                    while len(self._turn) > 4096:  # streams long finished
                        self._turn.popitem(last=False)
                    self._order.notify_all()


def build_app(args: dict) -> serve.Application:
    """The application builder named in serve.yaml (`import_path: serving.app:build_app`): the Forecaster
    (the ingress: every RPC and route), the Ingestor it forwards readings to and the Scheduler that issues
    forecasts on the clock."""
    parsed = AppArgs.model_validate(args or {})
    user_config = ReplicaConfig(**parsed.model_dump(include=set(ReplicaConfig.model_fields), exclude_none=True))
    bound = parsed.model_dump()
    return Forecaster.options(user_config=user_config.model_dump()).bind(bound, Ingestor.bind(bound),
                                                                         Scheduler.bind(bound))
