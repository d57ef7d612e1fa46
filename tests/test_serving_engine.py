"""Serving logic without Ray: request validation, model inputs, coalesced batches, covariates, the client.

The Ray Serve application (tests/test_serving.py) is a thin shell around `serving.engine.Engine`; the
many small cases are cheaper to check here, the important ones are checked again over real gRPC there.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc
from serving.engine import ApiError, Engine, Limits

INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path):
    from models.bundle import load_bundle

    return load_bundle(tiny_bundle_dir)


@pytest.fixture(scope="module")
def engine(bundle, synthetic_csv: Path) -> Engine:
    return Engine.from_data(bundle, synthetic_csv, region="SYN", regions={"PAIR": ["Z000", "Z001"]},
                            limits=Limits(max_series_per_request=8, max_points_per_request=8 * 400))


def histories(engine: Engine) -> dict[str, pd.Series]:
    """Every zone's readings as the store holds them (the synthetic zones keep UTC: naive = UTC)."""
    rows = engine.live.store.readings(list(engine.live.specs))
    return {z: pd.Series(g["value"].to_numpy(np.float32), index=pd.to_datetime(g["ts"].to_numpy(), unit="s"))
            for z, g in rows.groupby("zone")}


def series_request(engine: Engine, n: int = 3, **kwargs) -> pb.ForecastSeriesRequest:
    """n windows of the synthetic zones, each ending at a different hour."""
    request = pb.ForecastSeriesRequest(horizon=kwargs.pop("horizon", 24), **kwargs)
    h = histories(engine)["Z001"]
    for i in range(n):
        end = len(h.values) - 1 - 7 * i
        request.series.add(name=f"s{i}", history=h.values[end - 400 : end].tolist(),
                           last_timestamp=h.index[end - 1].isoformat())
    return request


def answer(engine: Engine, job):
    responses, _ = engine.run([job])
    return responses[0]


def test_region_forecast_equals_forecast_region(engine: Engine, bundle):
    from models.region import forecast_region

    response = answer(engine, engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=24)))
    ref = forecast_region(bundle, histories(engine), 24, region="SYN")
    assert response.issue_time == ref.issue_time.isoformat()
    assert [z.name for z in response.zones] == [z.name for z in ref.zones] == ["Z000", "Z001", "Z002"]
    for got, want in zip([*response.zones, response.total], [*ref.zones, ref.total]):
        assert list(got.timestamps) == [t.isoformat() for t in want.timestamps]
        np.testing.assert_allclose(got.point, want.point, rtol=1e-6)
        np.testing.assert_allclose(np.array([b.values for b in got.quantiles]).T, want.quantiles, rtol=1e-6)
    assert [b.level for b in response.total.quantiles] == pytest.approx([0.1, 0.5, 0.9])


def test_region_total_is_the_sum_of_the_zones_and_subsets_work(engine: Engine):
    request = pb.ForecastRegionRequest(region="SYN", horizon=12, zones=["Z002", "Z000"], quantiles=[0.9, 0.1],
                                       issue_time="2021-03-01T00:00:00")
    response = answer(engine, engine.region_job(request))
    assert [z.name for z in response.zones] == ["Z002", "Z000"]
    assert response.issue_time == "2021-03-01T00:00:00"
    assert response.total.timestamps[0] == "2021-03-01T00:00:00" and len(response.total.point) == 12
    np.testing.assert_allclose(response.total.point, np.sum([z.point for z in response.zones], axis=0), rtol=1e-5)
    assert [b.level for b in response.total.quantiles] == [0.9, 0.1]
    assert np.all(np.array(response.total.quantiles[0].values) >= np.array(response.total.quantiles[1].values))


def test_identical_region_requests_in_one_batch_are_computed_once(engine: Engine):
    jobs = [engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=h)) for h in (6, 24)]
    jobs.append(engine.region_job(pb.ForecastRegionRequest(region="PAIR", horizon=6)))
    jobs.append(engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=6, issue_time="2021-03-01")))
    responses, computed = engine.run(jobs)
    assert computed == 3 + 2 + 3  # SYN once (both horizons), PAIR's own keys, the other issue time
    alone = answer(engine, engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=24)))
    np.testing.assert_allclose(responses[1].total.point, alone.total.point, rtol=1e-6)
    np.testing.assert_allclose(responses[0].zones[0].point, alone.zones[0].point[:6], rtol=1e-6)


@pytest.mark.parametrize("fields, code, field", [
    ({"region": "NOPE"}, NOT_FOUND, "region"),
    ({"region": ""}, INVALID, "region"),
    ({"model": "other-model"}, NOT_FOUND, "model"),
    ({"zones": ["Z000", "Z999"]}, NOT_FOUND, "zones[1]"),
    ({"zones": ["Z000", "Z000"]}, INVALID, "zones[1]"),
    ({"horizon": 0}, INVALID, "horizon"),
    ({"horizon": 49}, INVALID, "horizon"),
    ({"quantiles": [0.5, 1.5]}, INVALID, "quantiles[1]"),
    ({"quantiles": [0.0]}, INVALID, "quantiles[0]"),
    ({"quantiles": [float("nan")]}, INVALID, "quantiles[0]"),
    ({"quantiles": [0.25]}, INVALID, "quantiles[0]"),
    ({"issue_time": "tomorrow"}, INVALID, "issue_time"),
    ({"issue_time": "2021-03-01T00:30:00"}, INVALID, "issue_time"),
    ({"issue_time": "2019-01-01T00:00:00"}, INVALID, "issue_time"),
    ({"issue_time": "2020-01-03T00:00:00"}, INVALID, "issue_time"),  # less than 336 h of history before it
])
def test_region_request_errors_name_the_field(engine: Engine, fields: dict, code, field: str):
    request = pb.ForecastRegionRequest(**{"region": "SYN", "horizon": 24, **fields})
    with pytest.raises(ApiError) as err:
        engine.region_job(request)
    assert err.value.code == code
    assert err.value.message.startswith(f"{field}:"), err.value.message
    assert "Traceback" not in err.value.message


def test_series_forecast_equals_bundle_predict(engine: Engine, bundle):
    request = series_request(engine, 3, quantiles=[0.9, 0.5])
    response = answer(engine, engine.series_job(request))
    history = np.array([s.history for s in request.series], np.float32)
    last = pd.DatetimeIndex([s.last_timestamp for s in request.series])
    want = bundle.predict(history, last, 24)  # [3, 24, Q]
    assert [f.name for f in response.forecasts] == ["s0", "s1", "s2"]
    for f, w, t in zip(response.forecasts, want, last):
        assert f.timestamps[0] == (t + pd.Timedelta(hours=1)).isoformat()
        np.testing.assert_allclose(f.point, w[:, 1], rtol=1e-5)
        np.testing.assert_allclose(f.quantiles[0].values, w[:, 2], rtol=1e-5)
        assert [b.level for b in f.quantiles] == [0.9, 0.5]


def _spoil(request: pb.ForecastSeriesRequest, what: str) -> None:
    s = request.series[1]
    if what == "nan":
        s.history[5] = float("nan")
    elif what == "inf":
        s.history[-1] = float("inf")
    elif what == "short":
        del s.history[:100]
    elif what == "no_time":
        s.last_timestamp = ""
    elif what == "bad_time":
        s.last_timestamp = "2021-13-45T00:00:00"
    elif what == "covariates":
        s.covariates.add(name="temperature_c", past=[1.0] * len(s.history), future=[1.0] * 48)


@pytest.mark.parametrize("what, field", [
    ("nan", "series[1].history"), ("inf", "series[1].history"), ("short", "series[1].history"),
    ("no_time", "series[1].last_timestamp"), ("bad_time", "series[1].last_timestamp"),
    ("covariates", "series[1].covariates"),
])
def test_series_request_errors_name_the_field(engine: Engine, what: str, field: str):
    request = series_request(engine, 3)
    _spoil(request, what)
    with pytest.raises(ApiError) as err:
        engine.series_job(request)
    assert err.value.code == INVALID
    assert err.value.message.startswith(f"{field}:"), err.value.message


def test_oversized_series_requests_are_resource_exhausted(engine: Engine):
    with pytest.raises(ApiError) as err:
        engine.series_job(series_request(engine, 9))  # limit: 8 series
    assert err.value.code == EXHAUSTED and err.value.message.startswith("series:")
    request = series_request(engine, 2)
    request.series[0].history.extend([1000.0] * 3000)  # limit: 3200 values in all
    with pytest.raises(ApiError) as err:
        engine.series_job(request)
    assert err.value.code == EXHAUSTED and "3,200" in err.value.message
    with pytest.raises(ApiError) as err:
        engine.series_job(pb.ForecastSeriesRequest(horizon=4))
    assert err.value.code == INVALID and err.value.message.startswith("series:")


# ---------------------------------------------------------------------------------------------- covariates

@pytest.fixture(scope="module")
def covariate_engine(tmp_path_factory: pytest.TempPathFactory, synthetic_csv: Path) -> Engine:
    """An (untrained) model that reads a temperature covariate: enough to check the plumbing."""
    import torch

    from models.bundle import load_bundle, save_bundle
    from models.features import FeatureSpec
    from models.forecaster import ForecasterConfig, QuantileForecaster

    torch.manual_seed(0)
    spec = FeatureSpec(covariates=("temperature_c",))
    model = QuantileForecaster(ForecasterConfig(type="lstm", input_length=48, horizon=12, n_covariates=spec.size,
                                                params={"hidden_size": 8, "patch_len": 24}))
    path = save_bundle(tmp_path_factory.mktemp("bundles") / "cov", model, spec, name="cov", version="1")
    return Engine.from_data(load_bundle(path), synthetic_csv, region="SYN")


def test_covariates_reach_the_model(covariate_engine: Engine):
    import torch

    from models.features import calendar_features

    def covariates(hours: pd.DatetimeIndex, extra: np.ndarray) -> np.ndarray:  # calendar, then the extra column
        return np.concatenate([calendar_features(hours, bundle.features), extra], axis=1)

    bundle = covariate_engine.bundle
    rng = np.random.default_rng(0)
    history = rng.uniform(900, 1100, 60).astype(np.float32)
    past_t, future_t = rng.normal(10, 5, 60).astype(np.float32), rng.normal(10, 5, 12).astype(np.float32)
    last = pd.Timestamp("2021-06-01T12:00:00")
    request = pb.ForecastSeriesRequest(horizon=6)
    request.series.add(history=history.tolist(), last_timestamp=last.isoformat()).covariates.add(
        name="temperature_c", past=past_t.tolist(), future=future_t.tolist())
    response = answer(covariate_engine, covariate_engine.series_job(request))

    hours = pd.date_range(end=last, periods=48, freq="h")
    past = covariates(hours, past_t[-48:, None])
    future = covariates(pd.date_range(last + pd.Timedelta(hours=1), periods=12, freq="h"), future_t[:, None])
    with torch.no_grad():
        want = bundle.model(torch.from_numpy(history[None, -48:]), torch.from_numpy(past[None]),
                            torch.from_numpy(future[None])).numpy()[0, :6]
    np.testing.assert_allclose(response.forecasts[0].point, want[:, bundle.model.median_index], rtol=1e-5)

    request.series[0].covariates[0].future[0] = 40.0  # the covariate is read: a different forecast
    changed = answer(covariate_engine, covariate_engine.series_job(request))
    assert not np.allclose(changed.forecasts[0].point, response.forecasts[0].point)


def test_region_forecasts_of_a_weather_model_need_the_zones_weather(covariate_engine: Engine):
    # the synthetic zones have no weather station (tests/test_weather_serving.py: the NEM's have)
    with pytest.raises(ApiError) as err:
        covariate_engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=6))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION, err.value.message
    assert "zones ['Z000', 'Z001', 'Z002'] have no weather station" in err.value.message


def test_a_covariate_in_fahrenheit_is_refused_by_name(covariate_engine: Engine):
    request = pb.ForecastSeriesRequest(horizon=6)
    request.series.add(history=[1000.0] * 60, last_timestamp="2021-07-01T12:00:00").covariates.add(
        name="temperature_c", past=[86.0 + k % 7 for k in range(60)], future=[95.0] * 12)  # a hot day in °F
    with pytest.raises(ApiError) as err:
        covariate_engine.series_job(request)
    assert err.value.code == INVALID and err.value.message.startswith(
        "series.covariates: covariate temperature_c looks like degrees Fahrenheit"), err.value.message


def test_calendar_slices_equal_computed_features(engine: Engine):
    from models.features import calendar_features, future_timestamps

    for last in (pd.Timestamp("2020-03-01T05:00:00"), pd.Timestamp("2021-05-10T23:00:00"),
                 pd.Timestamp("2030-01-01T00:00:00")):  # inside the history's span, near its end, far out
        past, future, stamps = engine.calendar(last)
        hours = future_timestamps(last - 336 * pd.Timedelta(hours=1), 336 + 48)
        want = calendar_features(hours, engine.bundle.features)
        np.testing.assert_array_equal(past, want[:336])
        np.testing.assert_array_equal(future, want[336:])
        assert stamps == [t.isoformat() for t in hours[336:]]


@pytest.mark.parametrize("what, field", [
    ("past_len", "series[0].covariates[0].past"), ("future_len", "series[0].covariates[0].future"),
    ("missing", "series[0].covariates"), ("unknown", "series[0].covariates[1].name"),
    ("twice", "series[0].covariates[1].name"), ("nan", "series[0].covariates[0]"),
])
def test_covariate_errors_name_the_field(covariate_engine: Engine, what: str, field: str):
    request = pb.ForecastSeriesRequest(horizon=6)
    s = request.series.add(history=[1000.0] * 60, last_timestamp="2021-06-01T12:00:00")
    past, future = [10.0] * (59 if what == "past_len" else 60), [10.0] * (6 if what == "future_len" else 12)
    if what == "nan":
        future[3] = float("nan")
    if what != "missing":
        s.covariates.add(name="temperature_c", past=past, future=future)
    if what in ("unknown", "twice"):
        s.covariates.add(name="wind" if what == "unknown" else "temperature_c", past=past, future=future)
    with pytest.raises(ApiError) as err:
        covariate_engine.series_job(request)
    assert err.value.code == INVALID
    assert err.value.message.startswith(f"{field}"), err.value.message


def test_model_info(engine: Engine, bundle):
    info = engine.model_info(pb.GetModelInfoRequest())
    assert (info.name, info.version, info.input_length, info.max_horizon) == (bundle.name, bundle.version, 336, 48)
    assert list(info.quantiles) == pytest.approx([0.1, 0.5, 0.9])
    assert info.data_fingerprint == bundle.meta["data"]["fingerprint"]
    assert {r.name: list(r.zones) for r in info.regions} == {"SYN": ["Z000", "Z001", "Z002"], "PAIR": ["Z000", "Z001"]}
    assert "mae" in info.metrics
    with pytest.raises(ApiError) as err:
        engine.model_info(pb.GetModelInfoRequest(model="nope"))
    assert err.value.code == NOT_FOUND


# ---------------------------------------------------------------------------------------------- client

class FlakyService(pb_grpc.ForecastServiceServicer):
    """UNAVAILABLE for the first `failures` calls, then an answer; INVALID_ARGUMENT for region "BAD"."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def ForecastRegion(self, request, context):  # noqa: N802
        self.calls += 1
        if request.region == "BAD":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "region: bad")
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")
        response = pb.ForecastRegionResponse(region=request.region, issue_time="2021-01-01T00:00:00")
        response.zones.add(name="A", timestamps=["2021-01-01T00:00:00"], point=[1.0]).quantiles.add(
            level=0.9, values=[2.0])
        response.total.CopyFrom(response.zones[0])
        response.total.name = "TOTAL"
        return response


@pytest.fixture()
def flaky():
    service = FlakyService(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ForecastServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(None)


def test_client_retries_unavailable_then_answers(flaky):
    from serving.client import ForecastClient, to_frame

    service, target = flaky
    with ForecastClient(target, timeout=5, retries=3, backoff=0.01) as client:
        response = client.forecast_region("R", 1)
    assert service.calls == 3
    frame = to_frame(response)
    assert list(frame.columns) == ["zone", "timestamp", "point", "q0.9"]
    assert list(frame.zone) == ["A", "TOTAL"]


def test_client_gives_up_after_retries_and_never_retries_bad_requests(flaky):
    from serving.client import ForecastClient, ForecastError

    service, target = flaky
    with ForecastClient(target, timeout=5, retries=1, backoff=0.01) as client:
        with pytest.raises(ForecastError) as err:
            client.forecast_region("R", 1)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and service.calls == 2
        with pytest.raises(ForecastError) as err:
            client.forecast_region("BAD", 1)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message == "region: bad"
        assert service.calls == 3


def test_client_reports_an_unreachable_server_quickly():
    import socket
    import time

    from serving.client import ForecastClient, ForecastError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with ForecastClient(f"127.0.0.1:{port}", timeout=1, retries=2, backoff=0.01) as client:
        with pytest.raises(ForecastError) as err:
            client.forecast_region("PJM", 48)
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 10
