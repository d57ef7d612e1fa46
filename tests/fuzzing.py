"""Hypothesis strategies for fuzzing the service: requests for every RPC (built from the proto descriptors, so a
field added to a .proto is fuzzed without a change here), the same requests as HTTP/JSON bodies and query
strings, and the checks every answer must pass. Shared by tests/test_fuzz.py (a few hundred requests in CI)
and benchmarks/resilience.py (10,000 per RPC and route).

A generated request is either built from scratch (every field random) or a valid request with some fields
replaced: the first finds what the validation misses, the second reaches the model, the solver and the store
with values just past what they expect.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from serving.api.energyopt.v1 import anomaly_pb2, dispatch_pb2, forecast_pb2, readings_pb2

# What an answer may be (docs/security.md, proto comments): anything else (INTERNAL, UNKNOWN, a 5xx) is a defect.
DOCUMENTED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED}
DOCUMENTED_HTTP = {200, 304, 400, 401, 403, 404, 405, 413, 429, 504}
MAX_MESSAGE_CHARS = 1_000  # an error message quotes at most a shortened piece of the input
# A request line past the ingress's buffer (HAProxy's tune.bufsize, 16 KB) is refused by HAProxy itself, before
# the service sees it: a 400 (or 414/431) in HAProxy's own HTML (docs/security.md, "Limits").
INGRESS_MAX_URL_BYTES = 8_000

ZONES = ["Z000", "Z001", "Z002"]
REGIONS = ["SYN", "PAIR", "PJM", "FUZZ"]


# ------------------------------------------------------------------------------------------------ values

def _odd_text() -> st.SearchStrategy[str]:
    """Strings a careless or hostile client sends: empty, unicode, control characters, long, path-like."""
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(["", " ", "\x00", "../../etc/passwd", "%s%n", "${jndi:x}", "NaN", "-1", "1e999",
                         "2024-02-30T00:00:00Z", "2024-01-01T00:00:00+25:00", "9999-12-31T23:00:00Z",
                         "0001-01-01T00:00:00Z", "Z000\n", "zone' OR '1'='1"]),
        st.integers(1, 6).map(lambda k: "x" * 10**k),  # up to a megabyte
    )


_TIMESTAMPS = st.builds(lambda d, h: f"2021-{1 + d % 12:02d}-{1 + d % 28:02d}T{h:02d}:00:00Z",
                        st.integers(0, 400), st.integers(0, 23))


def _string(field: FieldDescriptor) -> st.SearchStrategy[str]:
    name = field.name
    if name in ("zone", "zones", "name"):
        return st.one_of(st.sampled_from(ZONES), _odd_text())
    if name == "region":
        return st.one_of(st.sampled_from(REGIONS), _odd_text())
    if "time" in name or name in ("since", "until", "issued_from", "issued_to", "timestamp", "start", "end"):
        return st.one_of(_TIMESTAMPS, _odd_text())
    return _odd_text()


_EXTREME_FLOATS = st.sampled_from([0.0, -0.0, 1e-45, -1.0, 1e30, -1e30, 3.4e38, 3.5e38, 1e300, math.inf, -math.inf,
                                   math.nan])


def _number(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        ordinary = st.floats(0.0, 1.0) if field.name in ("quantiles", "level") else st.floats(-1e4, 1e5)
        value = st.one_of(ordinary, _EXTREME_FLOATS, st.floats(allow_nan=True, allow_infinity=True))
        if t == FieldDescriptor.TYPE_FLOAT:  # what float32 holds: protobuf rounds a double to it, inf past it
            value = value.map(lambda v: v if not math.isfinite(v) or abs(v) < 3.4e38 else math.copysign(math.inf, v))
        return value
    bits = 64 if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                       FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64) else 32
    unsigned = t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
                     FieldDescriptor.TYPE_FIXED64)
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.one_of(st.integers(max(low, 0), 400), st.sampled_from([low, high, 24, 48, 168, 169, 10_001]),
                     st.integers(low, high))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _string(field)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99))
    return _number(field)


def _repeated(field: FieldDescriptor, element: st.SearchStrategy[Any]) -> st.SearchStrategy[list]:
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE) and field.name != "quantiles":
        # series: short, the lengths models expect, or long; a constant or a repeated pattern reaches the model
        return st.one_of(st.lists(element, max_size=8),
                         st.tuples(st.sampled_from([24, 47, 48, 336, 337, 720, 2000]), element).map(
                             lambda nv: [nv[1]] * nv[0]),
                         st.tuples(st.sampled_from([336, 720]), st.lists(element, min_size=1, max_size=24)).map(
                             lambda nv: (nv[1] * nv[0])[:nv[0]]))
    return st.lists(element, max_size=6)


# ------------------------------------------------------------------------------------------------ messages

def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type `descriptor`: each field set or not, to a value of its type (nested messages up to
    three levels deep)."""
    cls = _class(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                fields[field.name] = st.dictionaries(_scalar(key), _scalar(value), max_size=3)
                continue
            if depth >= 3:
                continue
            element = st.deferred(lambda f=field: messages(f.message_type, depth + 1))
        else:
            element = _scalar(field)
        is_repeated = field.is_repeated
        fields[field.name] = _repeated(field, element) if is_repeated else element
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = getattr(message, name)
        if isinstance(value, Message):
            field.CopyFrom(value)
        elif isinstance(value, dict):
            field.update(value)
        elif isinstance(value, list):
            field.extend(value)
        else:
            setattr(message, name, value)
    return message


_CLASSES: dict[str, type[Message]] = {}


def _class(descriptor: Descriptor) -> type[Message]:
    if not _CLASSES:
        for module in (forecast_pb2, anomaly_pb2, dispatch_pb2, readings_pb2):
            for name in dir(module):
                obj = getattr(module, name)
                if isinstance(obj, type) and issubclass(obj, Message):
                    _CLASSES[obj.DESCRIPTOR.full_name] = obj
    return _CLASSES[descriptor.full_name]


def _history(hours: int = 720, level: float = 1000.0) -> list[float]:
    return [level + 100.0 * math.sin(2 * math.pi * h / 24) for h in range(hours)]


def valid_requests() -> dict[str, Message]:
    """One request per RPC that the fuzz server answers OK (the seeds of the mutated requests)."""
    reading = readings_pb2.Reading(zone="FZ1", timestamp="2021-06-01T00:00:00Z", value=900.0)
    site = dispatch_pb2.DispatchSite(name="s1", load_kw=[500.0] * 24, import_price=[0.1] * 12 + [0.3] * 12,
                                     battery_kwh=100.0, charge_kw=50.0, discharge_kw=50.0)
    return {
        "ForecastRegion": forecast_pb2.ForecastRegionRequest(region="SYN", horizon=24, quantiles=[0.1, 0.9]),
        "ForecastSeries": forecast_pb2.ForecastSeriesRequest(
            series=[forecast_pb2.SeriesInput(name="a", history=_history(), last_timestamp="2021-06-01T00:00:00Z")],
            horizon=24, quantiles=[0.5]),
        "GetModelInfo": forecast_pb2.GetModelInfoRequest(),
        "ListForecasts": forecast_pb2.ListForecastsRequest(region="SYN", limit=5),
        "GetForecastAccuracy": forecast_pb2.GetForecastAccuracyRequest(region="SYN"),
        "ListModelDecisions": forecast_pb2.ListModelDecisionsRequest(limit=5),
        "DetectAnomalies": anomaly_pb2.DetectAnomaliesRequest(
            series=[anomaly_pb2.LoadSeries(name="a", values=_history(24 * 40), start="2021-01-01T00:00:00")]),
        "ListAnomalies": anomaly_pb2.ListAnomaliesRequest(region="SYN", limit=5),
        "OptimizeDispatch": dispatch_pb2.OptimizeDispatchRequest(sites=[site], step_minutes=60),
        "IngestReadings": readings_pb2.IngestReadingsRequest(
            readings=[reading], register=[readings_pb2.ZoneSpec(zone="FZ1", region="FUZZ", time_zone="UTC")]),
        "ListZones": readings_pb2.ListZonesRequest(),
        "ListReadings": readings_pb2.ListReadingsRequest(region="SYN", hours=24),
    }


def requests_for(rpc: str, seed: Message) -> st.SearchStrategy[Message]:
    """Requests of `rpc`'s type: from scratch, or `seed` with some fields replaced by generated ones."""
    descriptor = seed.DESCRIPTOR
    anything = messages(descriptor)

    def mutate(values: Message) -> Message:
        message = type(seed)()
        message.CopyFrom(seed)
        for field, _ in values.ListFields():  # the generated message's set fields replace the seed's
            message.ClearField(field.name)
        message.MergeFrom(values)
        return message

    return st.one_of(anything, anything.map(mutate))


# ------------------------------------------------------------------------------------------------ checks

@dataclass(frozen=True)
class Rpc:
    name: str
    path: str  # /package.Service/Method
    request: type[Message]
    response: type[Message]


def rpcs() -> list[Rpc]:
    """Every unary RPC of the API (StreamReadings is fuzzed as a stream of IngestReadings requests)."""
    found = []
    for module in (forecast_pb2, anomaly_pb2, dispatch_pb2, readings_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                found.append(Rpc(method.name, f"/{service.full_name}/{method.name}",
                                 _class(method.input_type), _class(method.output_type)))
    return found


def non_finite(message: Message, where: str = "") -> Iterator[str]:
    """The paths of every NaN or infinite float in `message`."""
    for field, value in message.ListFields():
        path = f"{where}.{field.name}" if where else field.name
        values = value if field.is_repeated else [value]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for i, item in enumerate(values):
                yield from non_finite(item, f"{path}[{i}]")
        elif field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            yield from (f"{path}[{i}]" for i, v in enumerate(values) if not math.isfinite(v))
        elif field.message_type is not None:  # a map of doubles (ModelInfo.metrics)
            yield from (f"{path}[{k}]" for k, v in value.items() if isinstance(v, float) and not math.isfinite(v))


LEAKS = re.compile(r"Traceback|File \"|/site-packages/|/tmp/|/work/|/home/|Error\(|Exception\b")


def _leak(message: str, request: Message | str | None) -> bool:
    """Whether `message` shows internals (a path, a traceback) that are not the caller's own input echoed
    (`request`: the message sent, or an HTTP request's decoded URL and body)."""
    echoed = str(request) if request is not None else ""
    return any(m.group(0) not in echoed for m in LEAKS.finditer(message))


def problem_with_status(code: grpc.StatusCode, message: str, request: Message | None = None) -> str | None:
    """Why a gRPC error answer to `request` breaks the contract (None: it keeps it)."""
    if code not in DOCUMENTED_CODES:
        return f"undocumented status {code.name}: {message[:300]!r}"
    if "\n" in message or len(message) > MAX_MESSAGE_CHARS:
        return f"{code.name}: the message is not one short line ({len(message)} chars): {message[:300]!r}"
    if _leak(message, request):
        return f"{code.name}: the message shows internals: {message[:300]!r}"
    return None


def problem_with_http(status: int, content_type: str, body: bytes, url_bytes: int = 0,
                      response_type: type[Message] | None = None, sent: str = "") -> str | None:
    """Why an HTTP answer breaks the contract (None: it keeps it); `url_bytes`: the request line's length;
    `response_type`: the message a 200 holds (its floats are checked; a string field may well say "NaN");
    `sent`: the request's decoded URL and body (a path the caller sent, echoed, is not a leak)."""
    if url_bytes > INGRESS_MAX_URL_BYTES and status in (400, 414, 431):
        return None  # the ingress's refusal of an oversized request line
    if status not in DOCUMENTED_HTTP:
        return f"undocumented HTTP status {status}: {body[:300]!r}"
    if "json" not in content_type:
        return f"HTTP {status} answered {content_type!r}, not JSON: {body[:300]!r}"
    try:
        answer = json.loads(body, parse_constant=lambda c: float(c))
    except ValueError:
        return f"HTTP {status}: the body is not JSON: {body[:300]!r}"
    if status >= 400:
        if not isinstance(answer, dict) or not {"code", "message"} <= answer.keys() and "detail" not in answer:
            return f"HTTP {status}: not a {{code, message}} error: {body[:300]!r}"
        message = str(answer.get("message", answer.get("detail", "")))
        if len(message) > MAX_MESSAGE_CHARS or _leak(message, sent):
            return f"HTTP {status}: a long or revealing message: {message[:300]!r}"
        return None
    if response_type is not None:
        try:
            bad = list(non_finite(json_format.Parse(body, response_type(), ignore_unknown_fields=False)))
        except json_format.ParseError as err:
            return f"HTTP 200 that is not a {response_type.DESCRIPTOR.name}: {str(err)[:200]}"
        return f"HTTP 200 with non-finite values at {bad[:5]}" if bad else None
    bad = [v for v in _floats(answer) if not math.isfinite(v)]
    return f"HTTP 200 with non-finite values {bad[:5]}" if bad else None


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):  # proto3 JSON writes these
        yield float(value.replace("Infinity", "inf"))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


# ------------------------------------------------------------------------------------------------ HTTP

@dataclass(frozen=True)
class Route:
    method: str
    path: str
    rpc: str  # the RPC it mirrors: its request type is the body (POST) or the query (GET)


ROUTES = [
    Route("POST", "/v1/readings", "IngestReadings"), Route("GET", "/v1/zones", "ListZones"),
    Route("GET", "/v1/readings", "ListReadings"), Route("GET", "/v1/anomalies/events", "ListAnomalies"),
    Route("POST", "/v1/forecast/region", "ForecastRegion"), Route("GET", "/v1/forecast/region", "ForecastRegion"),
    Route("POST", "/v1/forecast/series", "ForecastSeries"), Route("POST", "/v1/anomalies", "DetectAnomalies"),
    Route("POST", "/v1/dispatch", "OptimizeDispatch"), Route("GET", "/v1/forecasts", "ListForecasts"),
    Route("GET", "/v1/forecasts/accuracy", "GetForecastAccuracy"), Route("GET", "/v1/model", "GetModelInfo"),
    Route("GET", "/v1/model/decisions", "ListModelDecisions"),
]

_JUNK_BODIES = st.one_of(
    st.sampled_from([b"", b"null", b"[]", b"\"x\"", b"1e999", b"{", b"{\"horizon\": \"abc\"}", b"\xff\xfe",
                     b"{\"horizon\": 1e400}", b"{\"quantiles\": [\"NaN\"]}", b"[" * 100_000 + b"]" * 100_000,
                     b"{\"region\": " + b"9" * 5000 + b"}", b"{\"a\":" * 5000 + b"1" + b"}" * 5000]),
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
)


def response_type(route: Route) -> type[Message]:
    """The message a 200 of `route` holds: its RPC's response."""
    return next(rpc.response for rpc in rpcs() if rpc.name == route.rpc)


def http_requests(route: Route, seed: Message) -> st.SearchStrategy[tuple[str, bytes | None]]:
    """(path with query string, body) for `route`: the RPC's generated requests in proto3 JSON form (as the
    body, or flattened into query parameters), and junk."""
    as_dict = requests_for(route.rpc, seed).map(
        lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True))
    if route.method == "POST":
        return st.one_of(as_dict.map(lambda d: (route.path, json.dumps(d).encode())),
                         _JUNK_BODIES.map(lambda b: (route.path, b)))
    junk_query = st.dictionaries(st.sampled_from(["region", "zone", "zones", "hours", "since", "until", "limit",
                                                  "horizon", "quantiles", "window_days", "bucket_ends", "max_points",
                                                  "open_only", "model", "issue_time"]),
                                 _odd_text().filter(lambda s: len(s) < 2000), max_size=4)
    return st.one_of(as_dict, junk_query).map(lambda d: (route.path + "?" + _query(d), None))


def seed_http_request(route: Route, seed: Message) -> tuple[str, bytes | None]:
    """(path with query string, body) of `route` for the valid request `seed` (valid_requests())."""
    as_dict = json_format.MessageToDict(seed, preserving_proto_field_name=True)
    if route.method == "POST":
        return route.path, json.dumps(as_dict).encode()
    return route.path + "?" + _query(as_dict), None


def _query(params: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    flat = [(k, x if not isinstance(x, dict) else json.dumps(x)) for k, v in params.items()
            for x in (v if isinstance(v, list) else [v])]
    return urlencode([(k, json.dumps(v) if isinstance(v, bool) else v) for k, v in flat])


class HttpCaller:
    """One keep-alive HTTP connection to the service; `problem(...)` sends a request and checks its answer."""

    def __init__(self, port: int) -> None:
        import http.client

        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def problem(self, method: str, path: str, body: bytes | None,
                response_type: type[Message] | None = None) -> str | None:
        """Why the answer to `method path` breaks the contract (None: it keeps it). A connection the server
        closed (HAProxy does after refusing a request line) is opened again and the request sent once more."""
        import http.client

        for attempt in (0, 1):
            try:
                self._connection.request(method, path, body=body, headers={"content-type": "application/json"})
                response = self._connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as err:
                self._connection.close()  # reopened by the next request
                if len(path.encode()) > INGRESS_MAX_URL_BYTES:
                    return None  # HAProxy refused the request line and closed while it was being sent
                if attempt:
                    return f"connection: {type(err).__name__}: {err}"
        content_type = response.getheader("content-type", "")
        if response.getheader("connection", "").lower() == "close" or "json" not in content_type:
            self._connection.close()
        sent = urllib.parse.unquote(path) + (body or b"").decode("utf-8", "replace")
        return problem_with_http(response.status, content_type, data, len(path.encode()), response_type, sent)

    def close(self) -> None:
        self._connection.close()


def call_rpc(channel: grpc.Channel, rpc: Rpc, request: Message, timeout: float = 60.0,
             metadata: tuple | None = None) -> tuple[grpc.StatusCode, str, Message | None]:
    """(status, message, response or None) of one call."""
    method: Callable = channel.unary_unary(rpc.path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=rpc.response.FromString)
    try:
        return grpc.StatusCode.OK, "", method(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None
