"""No request costs more than it looks, and no silent wrong answers (issue 21).

Engine-level first (no Ray): quantile and response-size limits, echoed values cut short, float32 overflow
and non-finite forward passes, the solver's and the anomaly scan's deadlines, the HTTP body reader. Then a
few calls through the session's Serve application (tests/conftest.py `serve_app`): JSON bodies that once
gave a plain-text 500, an oversized body, duplicate quantiles over gRPC.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.api.energyopt.v1 import anomaly_pb2 as apb
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.engine import HTTP_STATUS, ApiError, Engine, Limits

INVALID, EXHAUSTED, DEADLINE = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path):
    from models.bundle import load_bundle

    return load_bundle(tiny_bundle_dir)


@pytest.fixture(scope="module")
def engine(bundle, synthetic_csv: Path) -> Engine:
    return Engine.from_data(bundle, synthetic_csv, region="SYN", limits=Limits(max_points_per_response=3 * 48 * 4))


def series_request(engine: Engine, n: int = 2, horizon: int = 24) -> pb.ForecastSeriesRequest:
    rows = engine.live.store.readings(["Z001"])
    values = rows["value"].to_numpy(np.float32)
    last = np.datetime64(int(rows["ts"].iloc[-1]), "s").astype("datetime64[h]")
    request = pb.ForecastSeriesRequest(horizon=horizon)
    for i in range(n):
        request.series.add(name=f"s{i}", history=values[-400:].tolist(), last_timestamp=str(last) + ":00:00")
    return request


def refused(call, *args) -> ApiError:
    with pytest.raises(ApiError) as err:
        call(*args)
    return err.value


# ---------------------------------------------------------------------------------------------- quantiles, size

def test_duplicate_quantiles_are_refused_naming_them(engine: Engine):
    err = refused(engine.region_job, pb.ForecastRegionRequest(region="SYN", horizon=4, quantiles=[0.1, 0.9, 0.1]))
    assert err.code == INVALID and err.message.startswith("quantiles[2]") and "twice" in err.message


def test_100k_quantiles_are_refused_before_any_work(engine: Engine):
    start = time.perf_counter()
    err = refused(engine.region_job, pb.ForecastRegionRequest(region="SYN", horizon=4, quantiles=[0.5] * 100_000))
    assert err.code == EXHAUSTED and "max_quantiles" in err.message and "100,000" in err.message
    assert time.perf_counter() - start < 1.0


def test_points_per_response_are_capped_saying_the_limit_and_how_to_split(engine: Engine):
    # limit 576 = 3 forecasts x 48 h x 4; the region's 3 zones + total at 48 h x 4 = 768
    err = refused(engine.region_job, pb.ForecastRegionRequest(region="SYN", horizon=48))
    assert err.code == EXHAUSTED and "576" in err.message and "split" in err.message
    assert HTTP_STATUS[err.code] == 413
    engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=48, zones=["Z000", "Z001"]))  # 576: fits
    err = refused(engine.series_job, series_request(engine, n=4, horizon=48))
    assert err.code == EXHAUSTED and "fewer series" in err.message


def test_auth_codes_have_http_statuses():
    assert HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED] == 401
    assert HTTP_STATUS[grpc.StatusCode.PERMISSION_DENIED] == 403


# ---------------------------------------------------------------------------------------------- echoed input

def test_a_huge_echoed_value_is_cut_short(engine: Engine):
    from models.series import shown

    name = "X" * 10_000_000
    err = refused(engine.region_job, pb.ForecastRegionRequest(region=name, horizon=4))
    assert err.code == grpc.StatusCode.NOT_FOUND and len(err.message) < 400 and "10,000,000 chars" in err.message
    err = refused(engine.region_job, pb.ForecastRegionRequest(region="SYN", horizon=4, zones=[name]))
    assert len(err.message) < 400
    assert shown("abc") == "'abc'" and len(shown(list(range(100_000)))) < 120


def test_a_dispatch_error_cuts_a_huge_site_name_and_every_error_stays_one_short_line():
    """A site name of 5,000 emoji quoted whole made a grpc-message of 60 KB percent-encoded, and HAProxy reset
    the stream (CANCELLED) instead of answering INVALID_ARGUMENT: the quote is cut, and ApiError caps any
    message whatever its source."""
    from test_dispatch_serving import request_for

    from serving.dispatch import optimize
    from serving.engine import MAX_ERROR_CHARS

    request = request_for(2)
    request.sites[1].name = "\U0001F50B" * 5000
    request.sites[1].battery_kwh = -1.0
    err = refused(lambda: optimize(request))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "battery_kwh" in err.message
    assert len(err.message) < 300 and "5,000 chars" in err.message, err.message
    long = ApiError(grpc.StatusCode.INVALID_ARGUMENT, "x: " + "y" * 100_000 + "\nsecond line")
    assert len(long.message) <= MAX_ERROR_CHARS and "\n" not in long.message and "100,015 chars" in long.message


def test_store_ingest_reasons_cut_unknown_zone_names(engine: Engine):
    result = engine.live.store.ingest(["Z" * 1_000_000], ["2021-01-01T00:00:00Z"], [1.0])
    assert len(result.rejected) == 1 and len(result.rejected[0].reason) < 300


# ---------------------------------------------------------------------------------------------- non-finite

def test_values_beyond_float32_are_refused_naming_the_field():
    from serving.engine import float32_values

    with pytest.raises(ApiError, match=r"series\[0\]\.history: values beyond float32's range .* \[2\]"):
        float32_values([1.0, 2.0, 1e39], "series[0].history")
    assert float32_values([1.0, -3e38], "x").dtype == np.float32


def test_extreme_but_finite_series_never_come_back_as_nan(engine: Engine):
    request = series_request(engine, n=1)
    request.series[0].history[:] = [3e38 if i % 2 else -3e38 for i in range(400)]
    try:
        answers, _ = engine.run([engine.series_job(request)])
    except ApiError as err:  # refused at validation: fine, as long as it names the field
        assert err.code == INVALID and "series[0]" in err.message
        return
    answer = answers[0]
    if isinstance(answer, ApiError):
        assert answer.code == INVALID and answer.message.startswith("series[0]")
    else:  # a success must be finite
        assert np.isfinite(list(answer.forecasts[0].point)).all()


def test_a_forecast_a_float_cannot_hold_is_an_error_not_a_success():
    """What the model's output check does not see (a fallback from absurd readings, a region total): a value
    that is not finite, or beyond float32 (the message's float would be inf), fails the request."""
    from serving.api.energyopt.v1 import forecast_pb2
    from serving.engine import _fill

    ts = ["2020-01-01T00:00:00", "2020-01-01T01:00:00"]
    ok, huge = np.array([1.0, 2.0]), np.array([1.0, 3.5e38])
    _fill(forecast_pb2.Forecast(), "Z", ts, ok, np.stack([ok, ok], axis=1), [0.1, 0.9], [0, 1])
    for point, q in ((huge, np.stack([ok, ok], axis=1)), (ok, np.stack([ok, np.array([1.0, np.nan])], axis=1))):
        err = refused(_fill, forecast_pb2.Forecast(), "Z", ts, point, q, [0.1, 0.9], [0, 1])
        assert err.code == grpc.StatusCode.INTERNAL and "forecast of 'Z' is not finite" in err.message


def test_a_non_finite_forward_pass_fails_only_its_own_request(engine: Engine, monkeypatch):
    good, bad = series_request(engine, n=2), series_request(engine, n=2)
    region = engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=4, zones=["Z000", "Z002"]))
    jobs = [engine.series_job(good), engine.series_job(bad), region]
    real = engine.forward

    def poisoned(history, past, future):  # rows: good 0-1, bad 2-3, region 4-5
        out = real(history, past, future)
        out[3, 5, 0] = np.nan
        out[5, 1, 1] = np.inf
        return out

    monkeypatch.setattr(engine, "forward", poisoned)
    (ok, failed, internal), _ = engine.run(jobs)
    assert isinstance(ok, pb.ForecastSeriesResponse) and np.isfinite(list(ok.forecasts[1].point)).all()
    assert isinstance(failed, ApiError) and failed.code == INVALID and failed.message.startswith("series[1]")
    assert isinstance(internal, ApiError) and internal.code == grpc.StatusCode.INTERNAL


# ---------------------------------------------------------------------------------------------- deadlines

def test_a_solve_past_its_deadline_stops():
    from optimization.problem import synthetic_problems
    from optimization.solver import SolveDeadlineError, solve

    problems = synthetic_problems(8, 48, seed=1)
    with pytest.raises(SolveDeadlineError):
        solve(problems, deadline=time.monotonic() - 1)
    with pytest.raises(SolveDeadlineError):  # chunk by chunk too
        solve(problems, deadline=time.monotonic() - 1, chunk=2)
    assert (np.array(solve(problems, deadline=time.monotonic() + 60).status) == "optimal").all()


def test_dispatch_past_its_deadline_is_deadline_exceeded():
    from test_dispatch_serving import request_for

    from serving.dispatch import optimize

    err = refused(lambda: optimize(request_for(4), deadline_s=1e-9))
    assert err.code == DEADLINE and "deadline_s" in err.message and HTTP_STATUS[err.code] == 504
    assert all(s.status == "optimal" for s in optimize(request_for(4)).sites)


@pytest.fixture(scope="module")
def anomaly_parts(tiny_anomaly_bundle_dir: Path, synthetic_csv: Path):
    from models.bundle import load_bundle
    from serving.anomaly import raw_histories

    return load_bundle(tiny_anomaly_bundle_dir), raw_histories(synthetic_csv)


def anomaly_series(histories, n: int, hours: int) -> apb.DetectAnomaliesRequest:
    h = histories["Z000"]
    request = apb.DetectAnomaliesRequest()
    for i in range(n):
        request.series.add(name=f"s{i}", values=h.values[-hours:].astype(float).tolist(),
                           start=(h.end - (hours - 1) * np.timedelta64(1, "h")).isoformat())
    return request


def test_anomaly_scans_are_bounded_in_points_and_time(anomaly_parts):
    from serving.anomaly import AnomalyEngine

    bundle, histories = anomaly_parts
    small = AnomalyEngine(bundle, histories, Limits(max_anomaly_points=1000))
    hours = small.min_hours + 10
    err = refused(small.detect, anomaly_series(histories, 2, 600))
    assert err.code == EXHAUSTED and "max_anomaly_points" in err.message and "1,200" in err.message
    err = refused(small.detect, apb.DetectAnomaliesRequest(zones=["Z000", "Z001"]))  # 30 days x 2 zones
    assert err.code == EXHAUSTED and "max_anomaly_points" in err.message
    hurried = AnomalyEngine(bundle, histories, Limits(deadline_s=1e-9))
    err = refused(hurried.detect, anomaly_series(histories, 3, hours))
    assert err.code == DEADLINE and "deadline_s" in err.message and "after 0" in err.message
    assert AnomalyEngine(bundle, histories, Limits()).detect(anomaly_series(histories, 2, hours)).scored_hours > 0


# ---------------------------------------------------------------------------------------------- HTTP bodies

class FakeRequest:
    """What `_body` reads of a Starlette Request: headers and the body as a stream of chunks."""

    def __init__(self, chunks: list[bytes], headers: dict | None = None) -> None:
        self.chunks, self.headers, self.read = chunks, headers or {}, 0

    async def stream(self):
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def body(request: FakeRequest, limit: int = 1000):
    import asyncio

    from serving.app import _body

    return asyncio.run(_body(request, pb.ForecastRegionRequest(), Limits(max_body_bytes=limit)))


def test_the_body_limit_is_enforced_while_reading():
    err = refused(body, FakeRequest([b"{}"], {"content-length": "500000000"}))
    assert err.code == EXHAUSTED and "1,000 bytes" in err.message and HTTP_STATUS[err.code] == 413
    endless = FakeRequest([b" " * 300] * 1000)  # no Content-Length (chunked): counted as it arrives
    err = refused(body, endless)
    assert err.code == EXHAUSTED and endless.read == 4  # stopped at the chunk that crossed 1,000 bytes
    assert body(FakeRequest([b'{"region": ', b'"SYN"}'])).region == "SYN"


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1e999", b"[" * 100_000 + b"]" * 100_000,
                                 b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, b'{"region": "\xff\xfe"}',
                                 b'{"horizon": "abc"}', b'{"horizon": ' + b"9" * 5000 + b"}",
                                 b'{"horizon": 99999999999999999999999}', b'{"quantiles": [[[0.5]]]}',
                                 b'{"quantiles": 1e999}', b"", b"null"])
def test_bad_json_bodies_are_invalid_argument(raw: bytes):
    err = refused(body, FakeRequest([raw]), 10 << 20)
    assert err.code == INVALID and err.message.startswith("request body") and len(err.message) < 400


# ---------------------------------------------------------------------------------------------- through Serve

def http_post(url: str, raw: bytes) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, data=raw, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("content-type", ""), json.loads(r.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, err.headers.get("content-type", ""), json.loads(text) if text[:1] == b"{" else {"raw": text}


def test_bad_bodies_over_http_are_json_4xx(serve_app):
    url = serve_app.url + "/v1/forecast/region"
    for raw in (b"[]", b'"x"', b"1e999", b"[" * 100_000 + b"]" * 100_000, b'{"region": "\xff"}',
                b'{"horizon": "abc"}', b'{"horizon": ' + b"9" * 5000 + b"}", b'{"region": "SYN", "horizon": 4, '
                b'"quantiles": [0.5, 0.5]}'):
        status, kind, answer = http_post(url, raw)
        assert status == 400 and kind.startswith("application/json"), (raw[:40], status, answer)
        assert answer["code"] == "INVALID_ARGUMENT" and len(answer["message"]) < 400


def test_an_oversized_declared_body_is_413_without_sending_it(serve_app):
    host, port = serve_app.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/forecast/region HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500000000\r\nConnection: close\r\n\r\n{")
        answer = b""  # the server need not close a connection whose body it never read: stop at the answer's end
        while not (b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}")) and (chunk := sock.recv(65536)):
            answer += chunk
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"413", head
    assert b"RESOURCE_EXHAUSTED" in text and b"67,108,864 bytes" in text


def test_grpc_duplicate_quantiles_huge_names_and_nan_forecasts(serve_app, engine: Engine):
    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

    extreme = series_request(engine, n=1)
    extreme.series[0].history[:] = [3e38 if i % 2 else -3e38 for i in range(400)]  # finite; the model's NaN
    with grpc.insecure_channel(serve_app.target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:  # the replica raises the batch's per-request error
            stub.ForecastSeries(extreme, timeout=30)
        assert err.value.code() == INVALID and err.value.details().startswith("series[0]")
        assert np.isfinite(stub.ForecastSeries(series_request(engine, n=1), timeout=30).forecasts[0].point).all()
        with pytest.raises(grpc.RpcError) as err:
            stub.ForecastRegion(pb.ForecastRegionRequest(region="SYN", horizon=4, quantiles=[0.5, 0.5]), timeout=30)
        assert err.value.code() == INVALID and "quantiles[1]" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.ForecastRegion(pb.ForecastRegionRequest(region="R" * 1_000_000, horizon=4), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 400


def test_grpc_messages_over_64_mib_are_refused_before_parsing(serve_app):
    """serving/server.py sets RAY_SERVE_GRPC_MAX_MESSAGE_SIZE (Serve's default: 2 GiB, read in full)."""
    size = (64 << 20) + 1024
    length = bytearray()  # protobuf varint of the embedded message's length
    n = size
    while n > 0x7F:
        length.append(n & 0x7F | 0x80)
        n >>= 7
    length.append(n)
    raw = b"\x0a" + bytes(length) + b"\x00" * size  # field 1 (series): never parsed if refused by size
    with grpc.insecure_channel(serve_app.target) as channel:
        call = channel.unary_unary("/energyopt.v1.ForecastService/ForecastSeries")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            call(raw, timeout=60)
    assert err.value.code() == EXHAUSTED, err.value.details()
