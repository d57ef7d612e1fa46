"""The Ray Serve application end to end: one Ray instance and one application for the session, real gRPC
and HTTP on loopback, the tiny bundle serving three synthetic zones as region "SYN".

Tests run in file order; the last two change the service (a model swap, a killed replica) and leave it
serving the original bundle again.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pandas as pd
import pytest

from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from conftest import ServeApp as Service

QUANTILES = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def service(serve_app):
    """The session's one Serve application (tests/conftest.py `serve_app`): the tiny forecaster as region
    "SYN" (and "PAIR") with limits of 64 series and 64 x 400 values per request."""
    return serve_app


@pytest.fixture(scope="module")
def channel(service: Service):
    with grpc.insecure_channel(service.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.ForecastServiceStub:
    return pb_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path):
    from models.bundle import load_bundle

    return load_bundle(tiny_bundle_dir)


@pytest.fixture(scope="module")
def reference(bundle, synthetic_csv: Path):
    """The in-process forecast of region SYN, from the data cleaned the way training cleans it."""
    from models.data import load_series
    from models.region import forecast_region

    series, _ = load_series(synthetic_csv)
    histories = {s.zone: pd.Series(s.load, index=s.timestamps) for s in series}
    return forecast_region(bundle, histories, 48, region="SYN")


def http(service: Service, path: str, body: Any = None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(service.url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def arrays(forecast: pb.Forecast | dict) -> tuple[np.ndarray, np.ndarray]:
    """Point [H] and bands [Q, H] of a forecast, from a message or its JSON form, as float32."""
    if isinstance(forecast, dict):
        return (np.asarray(forecast["point"], np.float32),
                np.asarray([b["values"] for b in forecast["quantiles"]], np.float32))
    return np.asarray(forecast.point, np.float32), np.asarray([b.values for b in forecast.quantiles], np.float32)


# ---------------------------------------------------------------------------------------------- answers

def test_region_forecast_equals_the_in_process_model(stub, reference):
    response = stub.ForecastRegion(pb.ForecastRegionRequest(region="SYN", horizon=48), timeout=30)
    assert response.issue_time == reference.issue_time.isoformat()
    assert response.model.name == "tiny-lstm"
    for got, want in zip([*response.zones, response.total], [*reference.zones, reference.total]):
        assert got.name == want.name
        assert list(got.timestamps) == [t.isoformat() for t in want.timestamps]
        point, bands = arrays(got)
        np.testing.assert_allclose(point, want.point, rtol=1e-5)
        np.testing.assert_allclose(bands.T, want.quantiles, rtol=1e-5)
    point, _ = arrays(response.total)
    np.testing.assert_allclose(point, np.sum([arrays(z)[0] for z in response.zones], axis=0), rtol=1e-5)


def test_series_forecast_equals_bundle_predict(stub, bundle, synthetic_csv: Path):
    frame = pd.read_csv(synthetic_csv, parse_dates=["timestamp"])
    request = pb.ForecastSeriesRequest(horizon=24, quantiles=[0.1, 0.9])
    histories, lasts = [], []
    for i, (zone, rows) in enumerate(frame.groupby("zone")):
        rows = rows.iloc[: len(rows) - 100 * i]  # every series ends at a different hour
        histories.append(rows.load_mw.to_numpy(np.float32)[-400:])
        lasts.append(rows.timestamp.iloc[-1])
        request.series.add(name=zone, history=histories[-1].tolist(), last_timestamp=lasts[-1].isoformat())
    response = stub.ForecastSeries(request, timeout=30)
    want = bundle.predict(np.stack(histories), pd.DatetimeIndex(lasts), 24)
    assert [f.name for f in response.forecasts] == ["Z000", "Z001", "Z002"]
    for f, w in zip(response.forecasts, want):
        point, bands = arrays(f)
        np.testing.assert_allclose(point, w[:, 1], rtol=1e-5)
        np.testing.assert_allclose(bands.T, w[:, [0, 2]], rtol=1e-5)


def test_http_and_grpc_return_the_same_numbers(service: Service, stub):
    request = {"region": "SYN", "horizon": 24, "quantiles": [0.1, 0.9], "zones": ["Z002", "Z000"]}
    by_grpc = stub.ForecastRegion(pb.ForecastRegionRequest(**request), timeout=30)
    status, by_post = http(service, "/v1/forecast/region", request)
    assert status == 200, by_post
    status, by_get = http(service, "/v1/forecast/region?region=SYN&horizon=24&quantiles=0.1&quantiles=0.9"
                                   "&zones=Z002&zones=Z000")
    assert status == 200, by_get
    for answer in (by_post, by_get):
        assert answer["issue_time"] == by_grpc.issue_time
        assert [z["name"] for z in answer["zones"]] == ["Z002", "Z000"]
        for got, want in zip([*answer["zones"], answer["total"]], [*by_grpc.zones, by_grpc.total]):
            assert got["timestamps"] == list(want.timestamps)
            for a, b in zip(arrays(got), arrays(want)):
                np.testing.assert_array_equal(a, b)

    series = {"horizon": 6, "series": [{"name": "x", "history": [1000.0 + (h % 24) * 10 for h in range(336)],
                                        "last_timestamp": "2021-02-01T23:00:00"}]}
    status, by_post = http(service, "/v1/forecast/series", series)
    assert status == 200, by_post
    grpc_request = pb.ForecastSeriesRequest(horizon=6, series=[pb.SeriesInput(**series["series"][0])])
    by_grpc = stub.ForecastSeries(grpc_request, timeout=30)
    for a, b in zip(arrays(by_post["forecasts"][0]), arrays(by_grpc.forecasts[0])):
        np.testing.assert_array_equal(a, b)
    status, info = http(service, "/v1/model")
    assert status == 200 and info["name"] == "tiny-lstm" and info["regions"][0]["name"] == "SYN"


def test_200_concurrent_region_calls_are_all_correct_and_share_forward_passes(stub, reference):
    before = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).stats
    requests = [pb.ForecastRegionRequest(region="SYN" if i % 2 else "PAIR", horizon=48 if i % 3 else 12)
                for i in range(200)]
    calls = [stub.ForecastRegion.future(r, timeout=120) for r in requests]
    want = {z.name: z.point for z in reference.zones}
    for request, call in zip(requests, calls):
        response = call.result()
        assert [z.name for z in response.zones] == (["Z000", "Z001", "Z002"] if request.region == "SYN"
                                                     else ["Z000", "Z001"])
        for z in response.zones:
            np.testing.assert_allclose(arrays(z)[0], want[z.name][: request.horizon], rtol=1e-5)
    after = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).stats
    assert after.requests - before.requests == 200
    batches = after.batches - before.batches
    assert batches < 200, "every request ran a forward pass of its own: no batching"
    shared = [a - b for a, b in zip(after.batch_histogram, before.batch_histogram)][1:]
    assert sum(shared) > 0 and after.max_batch_requests > 1
    # identical region requests in one pass share their zones' model inputs
    assert after.computed_series - before.computed_series < after.series - before.series


# ---------------------------------------------------------------------------------------------- errors

def _series(n: int = 1, length: int = 400, **spoil: Any) -> pb.ForecastSeriesRequest:
    request = pb.ForecastSeriesRequest(horizon=12)
    for i in range(n):
        s = request.series.add(name=f"s{i}", history=[1000.0 + i] * length, last_timestamp="2021-02-01T23:00:00")
    if spoil.get("nan"):
        request.series[-1].history[7] = float("nan")
    if spoil.get("covariates"):
        request.series[0].covariates.add(name="temperature_c", past=[1.0] * (length - 1), future=[1.0] * 48)
    if spoil.get("bad_time"):
        s.last_timestamp = "not a time"
    return request


@pytest.mark.parametrize("method, request_, code, field", [
    ("ForecastRegion", pb.ForecastRegionRequest(region="MARS", horizon=24), "NOT_FOUND", "region"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN", horizon=24, zones=["Z000", "Z9"]), "NOT_FOUND",
     "zones[1]"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN", horizon=24, model="gpt"), "NOT_FOUND", "model"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN", horizon=49), "INVALID_ARGUMENT", "horizon"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN"), "INVALID_ARGUMENT", "horizon"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN", horizon=4, quantiles=[1.5]), "INVALID_ARGUMENT",
     "quantiles[0]"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN", horizon=4, quantiles=[0.1, 0.33]), "INVALID_ARGUMENT",
     "quantiles[1]"),
    ("ForecastRegion", pb.ForecastRegionRequest(region="SYN", horizon=4, issue_time="2030-01-01T00:00:00"),
     "INVALID_ARGUMENT", "issue_time"),
    ("ForecastSeries", _series(3, nan=True), "INVALID_ARGUMENT", "series[2].history"),
    ("ForecastSeries", _series(2, length=100), "INVALID_ARGUMENT", "series[0].history"),
    ("ForecastSeries", _series(1, covariates=True), "INVALID_ARGUMENT", "series[0].covariates"),
    ("ForecastSeries", _series(1, bad_time=True), "INVALID_ARGUMENT", "series[0].last_timestamp"),
    ("ForecastSeries", _series(65), "RESOURCE_EXHAUSTED", "series"),
    ("ForecastSeries", _series(60, length=1000), "RESOURCE_EXHAUSTED", "series"),
    ("ForecastSeries", pb.ForecastSeriesRequest(horizon=12, model="gpt"), "NOT_FOUND", "model"),
    ("GetModelInfo", pb.GetModelInfoRequest(model="gpt"), "NOT_FOUND", "model"),
])
def test_grpc_errors_have_the_right_code_and_name_the_field(stub, method, request_, code, field):
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request_, timeout=30)
    assert err.value.code().name == code, err.value.details()
    assert err.value.details().startswith(f"{field}:"), err.value.details()
    assert "Traceback" not in err.value.details() and 'File "' not in err.value.details()


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/forecast/region", {"region": "MARS", "horizon": 4}, 404, "NOT_FOUND"),
    ("/v1/forecast/region", {"region": "SYN", "horizon": 480}, 400, "INVALID_ARGUMENT"),
    ("/v1/forecast/region", {"region": "SYN", "horizont": 4}, 400, "INVALID_ARGUMENT"),
    ("/v1/forecast/region", b"{not json", 400, "INVALID_ARGUMENT"),
    ("/v1/forecast/region?region=SYN&horizon=-3", None, 400, "INVALID_ARGUMENT"),
    ("/v1/forecast/series", {"horizon": 4, "series": [{"history": [1.0] * 10, "last_timestamp": "2021-01-01"}] * 65},
     413, "RESOURCE_EXHAUSTED"),
    ("/v1/model?model=gpt", None, 404, "NOT_FOUND"),
])
def test_http_errors_map_to_status_codes(service: Service, path: str, body: Any, status: int, code: str):
    got, answer = http(service, path, body)
    assert (got, answer["code"]) == (status, code), answer
    assert answer["message"] and "Traceback" not in answer["message"]


# ---------------------------------------------------------------------------------------------- operations

def test_model_info_and_health_checks(service: Service, stub, channel, bundle):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert (info.name, info.version, info.max_horizon, info.input_length) == (bundle.name, bundle.version, 48, 336)
    assert info.data_fingerprint == bundle.meta["data"]["fingerprint"] and "mape" in info.metrics
    assert info.bundle_path == service.bundle_dir.name and not info.swap_error  # no server path
    assert {r.name for r in info.regions} == {"SYN", "PAIR"}

    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
    ours = health_pb2.HealthCheckRequest(service="energyopt.v1.ForecastService")
    assert health.Check(ours, timeout=10).status == serving
    assert [r.status for r in health.Watch(health_pb2.HealthCheckRequest(), timeout=10)] == [serving]
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Serve's own ingress health check, answered without a replica: OK ("success" from Serve's Python
    # proxy; HAProxy answers with the status alone)
    response, call = serve_pb2_grpc.RayServeAPIServiceStub(channel).Healthz.with_call(serve_pb2.HealthzRequest(),
                                                                                      timeout=10)
    assert call.code() == grpc.StatusCode.OK and (response is None or response.message == "success")
    assert http(service, "/healthz") == (200, {"status": "SERVING", "model": bundle.name, "version": bundle.version})


def test_reflection_lets_a_generic_client_call_the_api(channel):
    """What grpcurl does: list services, fetch their descriptors, build a request from them and call."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"energyopt.v1.ForecastService", "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("energyopt.v1.ForecastService").methods_by_name["ForecastRegion"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary("/energyopt.v1.ForecastService/ForecastRegion",
                               request_serializer=request_cls.SerializeToString,
                               response_deserializer=response_cls.FromString)
    response = call(json_format.Parse('{"region": "SYN", "horizon": 3}', request_cls()), timeout=30)
    assert [z.name for z in response.zones] == ["Z000", "Z001", "Z002"] and len(response.total.point) == 3


def test_model_swap_keeps_serving_and_changes_the_version(service: Service, stub, tmp_path: Path):
    from serving import server
    from serving.client import ForecastClient, ForecastError

    new = tmp_path / "tiny-v2"
    shutil.copytree(service.bundle_dir, new)
    config = json.loads((new / "config.json").read_text())
    old_version, config["version"] = config["version"], config["version"] + "-v2"
    (new / "config.json").write_text(json.dumps(config))
    from models.bundle import write_checksums
    write_checksums(new)  # the edited config.json is the copy's own

    answered, failed, stop = [], [], threading.Event()

    def hammer() -> None:
        with ForecastClient(service.target, timeout=20, retries=0) as client:
            while not stop.is_set():
                try:
                    answered.append(client.forecast_region("SYN", 24).model.version)
                except ForecastError as err:
                    failed.append(f"{err.code.name}: {err.message}")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        server.deploy(server.with_model(service.config, new))
        deadline = time.monotonic() + 120
        while stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).version != config["version"]:
            assert time.monotonic() < deadline, "the new model never came into service"
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failed, failed[:5]
    assert old_version in answered and config["version"] in answered
    assert answered.index(config["version"]) > answered.index(old_version)

    # a broken bundle is refused and the model in service stays
    server.deploy(server.with_model(service.config, tmp_path / "missing"))
    deadline = time.monotonic() + 60
    while not (info := stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)).swap_error:
        assert time.monotonic() < deadline, "the failed swap was not reported"
        time.sleep(0.5)
    assert "no model bundle" in info.swap_error and info.version == config["version"]
    assert stub.ForecastRegion(pb.ForecastRegionRequest(region="SYN", horizon=4), timeout=30).model.version == \
        config["version"]

    server.deploy(service.config)  # back to the original bundle, which a restarted replica loads too
    deadline = time.monotonic() + 60
    while (info := stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)).version != old_version:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert not info.swap_error


def test_a_dying_replica_fails_calls_fast_and_the_service_recovers(service: Service, ray_session):
    """Calls in flight when the replica dies end at once with UNAVAILABLE, INTERNAL or HAProxy's HTTP 500
    (UNKNOWN), or, queued while no replica exists, at their deadline: none hangs, no message carries a stack
    trace. Serve starts a new replica, and a client that retries those gets answers again."""
    from serving.client import INGRESS_LOST_REPLICA, ForecastClient, _status

    ray = ray_session
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and "Forecaster" in a["name"]]
    assert len(replicas) == 1
    replica = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])

    with grpc.insecure_channel(service.target) as ch:
        stub = pb_grpc.ForecastServiceStub(ch)
        request = _series(16, length=336)
        deadline_s = 15.0
        started = time.monotonic()
        calls, killed = [], False
        while time.monotonic() - started < 1.0:  # a steady stream of calls; the replica dies in the middle
            calls.append(stub.ForecastSeries.future(request, timeout=deadline_s))
            if not killed and time.monotonic() - started > 0.4:
                ray.kill(replica, no_restart=True)
                killed = True
            time.sleep(0.01)
        outcomes = []
        for call in calls:
            exc = call.exception()
            outcomes.append("OK" if exc is None else exc.code().name)
            if exc is not None:
                details = exc.details() or ""
                assert "Traceback" not in details and 'File "' not in details
                if exc.code() == grpc.StatusCode.UNKNOWN:  # only HAProxy's 500 for a replica lost mid-call,
                    assert details.startswith(INGRESS_LOST_REPLICA), details  # which the client retries
                    assert _status(exc)[2]
        assert time.monotonic() - started < deadline_s + 5, "a call outlived its deadline"
        assert set(outcomes) <= {"OK", "UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}, outcomes
        assert set(outcomes) - {"OK"}, "no call saw the replica die"

    with ForecastClient(service.target, timeout=10, retries=12, backoff=0.5, max_backoff=5.0) as client:
        info = client.wait_ready(timeout=120)
        assert client.forecast_region("SYN", 12).model.version == info.version


# ---------------------------------------------------------------------------------------------- command line

def _cli():
    """A typer app with the serving commands, registered as energyopt/cli.py does."""
    import typer

    from energyopt import cli_serving

    app = typer.Typer()
    app.command("serve")(cli_serving.serve)
    app.command("forecast")(cli_serving.remote_forecast)
    return app


def test_cli_remote_forecast_prints_a_table_and_json(service: Service, stub):
    from typer.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(_cli(), ["forecast", "--server", service.target, "--region", "SYN", "--horizon", "6"])
    assert result.exit_code == 0, result.output
    assert "SYN load forecast" in result.output and "Z002" in result.output and "TOTAL" in result.output
    result = runner.invoke(_cli(), ["forecast", "--server", service.target, "--region", "SYN", "--horizon", "6",
                                    "--zone", "Z001", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    want = stub.ForecastRegion(pb.ForecastRegionRequest(region="SYN", horizon=6, zones=["Z001"]), timeout=30)
    assert [z["name"] for z in answer["zones"]] == ["Z001"]
    np.testing.assert_array_equal(arrays(answer["total"])[0], arrays(want.total)[0])
    result = runner.invoke(_cli(), ["forecast", "--server", service.target, "--region", "MARS"])
    assert result.exit_code == 2 and "NOT_FOUND" in result.output and "Traceback" not in result.output


def test_cli_serve_without_a_model_says_what_to_do(monkeypatch, tmp_path: Path):
    from typer.testing import CliRunner

    from energyopt import cli_serving

    monkeypatch.setattr(cli_serving, "DEFAULT_MODEL", tmp_path / "runs" / "demo" / "model")
    result = CliRunner().invoke(_cli(), ["serve"])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "no model bundle" in output and "Run `energyopt demo` first" in output


def test_cli_serve_refuses_a_busy_port(tiny_bundle_dir: Path):
    from typer.testing import CliRunner

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(_cli(), ["serve", "--model", str(tiny_bundle_dir), "--grpc-port", str(port)])
    assert result.exit_code == 2 and f"port {port} is in use" in " ".join(result.output.split())


def test_cli_serve_checks_the_anomaly_model(tiny_bundle_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(_cli(), ["serve", "--model", str(tiny_bundle_dir),
                                    "--anomaly-model", str(tmp_path / "none")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "--anomaly-model:" in output and "no model bundle" in output, output
    result = runner.invoke(_cli(), ["serve", "--model", str(tiny_bundle_dir),
                                    "--anomaly-model", str(tiny_bundle_dir)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "is a forecaster bundle" in output and "--model autoencoder" in output, output
