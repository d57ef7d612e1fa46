"""ForecastRegion for a weather model: the store's observations and latest weather forecast, or the request's
own weather; every missing hour, unmapped zone and implausible value refused by name (serving.engine).

The model is a small NEM LSTM that reads each state's temperature, region context and state holidays, trained
on the last 160 days of the bundled NEM file; the store holds those days' load and hourly temperatures.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from models import weather
from models.series import BUNDLED_NEM, TEMPERATURE
from models.store import Store
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.engine import ApiError, Engine
from serving.live import LiveHistory

STATES = ("NSW", "QLD", "SA", "TAS", "VIC")
TZ = "Australia/Brisbane"
ISSUE = pd.Timestamp("2014-12-20T00:00:00")  # local (AEST): a daily origin in the data's last days
FAILED = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def nem_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = pd.read_parquet(BUNDLED_NEM)
    path = tmp_path_factory.mktemp("nem") / "nem_tail.parquet"
    table[table["timestamp"] >= table["timestamp"].max() - pd.Timedelta(days=160)].to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def weather_bundle_dir(nem_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.config import load_config
    from training.pipeline import train

    cfg = load_config(model="lstm_nem", **{
        "model.input_length": 168, "model.horizon": 48,
        "model.params": {"hidden_size": 16, "num_layers": 1, "patch_len": 24},
        "data.val_days": 20, "data.test_days": 20,
        "training.max_epochs": 1, "training.samples_per_epoch": 256, "training.val_samples": 128,
        "training.batch_size": 64,
    })
    cfg.name = "tiny-nem-weather"
    out = tmp_path_factory.mktemp("bundles") / "nem-weather"
    train(cfg, nem_file, out, progress=False, evaluate=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def weather_bundle(weather_bundle_dir: Path):
    from models.bundle import load_bundle

    return load_bundle(weather_bundle_dir)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store") / "store.db"


@pytest.fixture(scope="module")
def store(nem_file: Path, store_path: Path):
    opened = Store.open(store_path)
    opened.seed(nem_file, region="NEM", time_zone=TZ)
    weather.seed_nem_weather(opened, nem_file)  # stations, zone -> station, hourly observations
    yield opened
    opened.close()


def _utc(stamp: pd.Timestamp) -> int:
    return int(stamp.tz_localize(TZ).timestamp())


def observed(store: Store, state: str, start: pd.Timestamp, hours: int) -> np.ndarray:
    """Hourly observed temperatures of a state from the local hour `start` (NaN where none)."""
    first = _utc(start)
    got = weather.observations(store, weather.NEM_STATIONS[state], TEMPERATURE, first, first + hours * 3600)
    return pd.Series(got["value"].to_numpy(), got["ts"].to_numpy()).reindex(
        first + 3600 * np.arange(hours)).to_numpy()


def issue_forecast(store: Store, issued: pd.Timestamp, start: pd.Timestamp, hours: int, shift: float = 0.0,
                   states=STATES) -> None:
    """A weather forecast issued at local time `issued` for `hours` hours from local `start`: the observed
    temperatures plus `shift` degrees (a forecast's values need not be the truth; here they are known)."""
    stamps = pd.date_range(start, periods=hours, freq="h")
    for state in states:
        values = observed(store, state, start, hours) + shift
        result = weather.ingest_forecasts(store, [weather.NEM_STATIONS[state]] * hours, [TEMPERATURE] * hours,
                                          [issued.isoformat()] * hours, [t.isoformat() for t in stamps], values)
        assert not result.rejected, result.rejected[:3]


@pytest.fixture(scope="module")
def engine(weather_bundle, store: Store) -> Engine:
    # the day-ahead forecast of ISSUE's 48 h, issued the evening before; and one issued after ISSUE
    issue_forecast(store, ISSUE - pd.Timedelta(hours=6), ISSUE - pd.Timedelta(hours=6), 54)
    issue_forecast(store, ISSUE + pd.Timedelta(hours=2), ISSUE + pd.Timedelta(hours=2), 48, shift=10.0)
    return Engine(weather_bundle, LiveHistory(store, 1500))


def answer(engine: Engine, request: pb.ForecastRegionRequest) -> pb.ForecastRegionResponse:
    responses, _ = engine.run([engine.region_job(request)])
    if isinstance(responses[0], ApiError):
        raise responses[0]
    return responses[0]


def refused(engine: Engine, request: pb.ForecastRegionRequest) -> ApiError:
    with pytest.raises(ApiError) as err:
        answer(engine, request)
    return err.value


def request(horizon: int = 48, issue_time: pd.Timestamp = ISSUE, **kwargs) -> pb.ForecastRegionRequest:
    return pb.ForecastRegionRequest(region="NEM", horizon=horizon, issue_time=issue_time.isoformat(), **kwargs)


def test_a_weather_model_reads_the_stores_observations_and_the_latest_forecast_issued_before(engine, store,
                                                                                             weather_bundle):
    got = answer(engine, request())
    length = weather_bundle.input_length
    assert [z.name for z in got.zones] == list(STATES) and got.fallback_zones == 0
    np.testing.assert_allclose(got.total.point, np.sum([z.point for z in got.zones], axis=0), rtol=1e-5)
    # which weather: per state its capital's station, the forecast issued at 18:00 the evening before (not the
    # one issued two hours after the issue time), every past hour observed
    issued = (ISSUE - pd.Timedelta(hours=6)).tz_localize(TZ).tz_convert("UTC").isoformat()
    assert [(w.zone, w.variable, w.source, w.station, w.forecast_issued, w.past_hours_from_forecast)
            for w in got.weather] == [(s, TEMPERATURE, "store", weather.NEM_STATIONS[s], issued, 0) for s in STATES]
    # the same forecast as the bundle's own predict given those temperatures (past observed, future the forecast)
    loads = store.readings(list(STATES))
    first = _utc(ISSUE - pd.Timedelta(hours=length))
    hourly = loads.assign(ts=loads["ts"] // 3600 * 3600).groupby(["ts", "zone"])["value"].mean().unstack()
    wide = hourly.reindex(first + 3600 * np.arange(length))[list(STATES)].to_numpy(np.float32)  # half-hours' means
    temps = np.stack([observed(store, s, ISSUE - pd.Timedelta(hours=length), length + 48) for s in STATES])
    want = weather_bundle.predict(wide.T, [ISSUE - pd.Timedelta(hours=1)] * 5, 48,
                                  extra=(temps[:, :length, None], temps[:, length:, None]),
                                  region=np.broadcast_to(wide, (5, *wide.shape)), zones=list(STATES))
    median = weather_bundle.model.median_index
    np.testing.assert_allclose([z.point for z in got.zones], want[:, :, median], rtol=1e-4, atol=1e-2)


def test_the_forecast_depends_on_the_weather_read(engine):
    base = answer(engine, request())
    hot = answer(engine, request(weather=[
        pb.ZoneWeather(zone=w.zone, variable=TEMPERATURE, past=p, future=[t + 8 for t in f])
        for w, (p, f) in zip(base.weather, _weather_values(engine))]))
    assert [w.source for w in hot.weather] == ["request"] * 5
    assert not np.allclose(hot.total.point, base.total.point, rtol=1e-3)
    later = answer(engine, request(issue_time=ISSUE + pd.Timedelta(hours=2)))
    assert {w.forecast_issued for w in later.weather} == {
        (ISSUE + pd.Timedelta(hours=2)).tz_localize(TZ).tz_convert("UTC").isoformat()}


def _weather_values(engine: Engine) -> list[tuple[list[float], list[float]]]:
    """Each state's temperatures around ISSUE as the store holds them: (input_length past, 48 future)."""
    length = engine.bundle.input_length
    start = ISSUE - pd.Timedelta(hours=length)
    out = []
    for state in STATES:
        values = observed(engine.live.store, state, start, length + 48)
        out.append((values[:length].tolist(), values[length:].tolist()))
    return out


def test_carried_weather_equal_to_the_stores_gives_the_same_forecast(engine):
    carried = [pb.ZoneWeather(zone=s, variable=TEMPERATURE, past=p, future=f)
               for s, (p, f) in zip(STATES, _weather_values(engine))]
    # the store's future hours are the forecast issued the evening before, which is the observed values
    via_request, via_store = answer(engine, request(weather=carried)), answer(engine, request())
    np.testing.assert_allclose(via_request.total.point, via_store.total.point, rtol=1e-5)
    short = [pb.ZoneWeather(zone=w.zone, variable=w.variable, past=w.past, future=list(w.future)[:24])
             for w in carried]
    np.testing.assert_allclose(answer(engine, request(24, weather=short)).total.point,
                               via_store.total.point[:24], rtol=1e-5)


def test_a_horizon_the_weather_forecast_does_not_cover_is_refused_naming_the_hours(engine, store):
    # a forecast issued at 21:00 for 12 h: the newest before the issue time, and it ends at 09:00
    issued = ISSUE - pd.Timedelta(hours=3)
    issue_forecast(store, issued, issued, 12)
    try:
        err = refused(engine, request(24))
        assert err.code == FAILED, err.message
        assert "weather: zone NSW (station SYDNEY) has no temperature_c for 15 of the hours" in err.message
        first_missing = (ISSUE + pd.Timedelta(hours=9)).tz_localize(TZ).tz_convert("UTC").isoformat()
        assert first_missing in err.message and "issued " + issued.tz_localize(TZ).tz_convert("UTC").isoformat() \
            in err.message, err.message
        assert answer(engine, request(9)).weather[0].forecast_issued  # the hours it covers are served
    finally:
        with store.engine.begin() as conn:  # the other tests read the evening's forecast again
            conn.execute(weather.weather_forecasts_table.delete().where(
                weather.weather_forecasts_table.c.issued_ts == _utc(issued)))


def test_no_forecast_issued_before_the_issue_time_is_refused(engine):
    err = refused(engine, request(issue_time=ISSUE - pd.Timedelta(days=3)))
    assert err.code == FAILED and "no temperature_c forecast for station SYDNEY was issued at or before" \
        in err.message, err.message


def test_an_hour_not_yet_observed_is_read_from_the_forecast_and_counted(engine, store):
    station = weather.NEM_STATIONS["SA"]
    o = weather.observations_table
    hour = _utc(ISSUE - pd.Timedelta(hours=2))
    with store.engine.begin() as conn:
        kept = conn.execute(o.select().where(o.c.station == station, o.c.ts >= hour)).mappings().all()
        conn.execute(o.delete().where(o.c.station == station, o.c.ts >= hour))
    try:
        got = answer(engine, request())
        assert {w.zone: w.past_hours_from_forecast for w in got.weather} == {
            "NSW": 0, "QLD": 0, "SA": 2, "TAS": 0, "VIC": 0}
    finally:
        with store.engine.begin() as conn:
            conn.execute(o.insert(), [dict(r) for r in kept])


def test_a_zone_without_a_weather_station_is_refused(weather_bundle, store, tmp_path: Path):
    bare = Store.open(tmp_path / "bare.db")
    try:
        loads = store.readings(list(STATES))
        bare.ingest(loads["zone"].tolist(), pd.to_datetime(loads["ts"], unit="s", utc=True).map(
            pd.Timestamp.isoformat).tolist(), loads["value"].tolist(),
            register=[spec for spec in store.zones().values()])
        err = refused(Engine(weather_bundle, LiveHistory(bare, 1500)), request())
        assert err.code == FAILED and "zones ['NSW', 'QLD', 'SA', 'TAS', 'VIC'] have no weather station" \
            in err.message, err.message
    finally:
        bare.close()


def _set(values, new) -> None:
    del values[:]
    values.extend(new)


def _fahrenheit(carried) -> None:
    for w in carried:
        _set(w.past, [t * 1.8 + 32 for t in w.past])
        _set(w.future, [t * 1.8 + 32 for t in w.future])


@pytest.mark.parametrize("change, words", [
    (lambda w: setattr(w[0], "zone", "WA"), "weather[0].zone: 'WA' is not a zone of the request"),
    (lambda w: setattr(w[1], "variable", "wind_ms"), "weather[1].variable: model tiny-nem-weather reads"),
    (lambda w: w.append(w[0]), "weather[5]: temperature_c of zone NSW is given twice"),
    (lambda w: w.pop(), "weather: missing ['VIC/temperature_c']"),
    (lambda w: _set(w[2].past, list(w[2].past)[1:]),
     "weather[2].past: the model reads the 168 hours before issue_time, got 167"),
    (lambda w: _set(w[2].future, list(w[2].future)[:10]), "weather[2].future: 48 to 48 hourly values"),
    (lambda w: _set(w[3].future, [float("nan")] + list(w[3].future)[1:]), "weather[3]: NaN or infinite values"),
    (_fahrenheit, "weather: covariate temperature_c looks like degrees Fahrenheit"),
])
def test_bad_carried_weather_is_refused_by_name(engine, change, words):
    carried = [pb.ZoneWeather(zone=s, variable=TEMPERATURE, past=p, future=f)
               for s, (p, f) in zip(STATES, _weather_values(engine))]
    change(carried)
    err = refused(engine, request(weather=carried))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith(words), err.message


def test_weather_for_a_model_that_reads_none_is_refused(tiny_bundle_dir: Path, synthetic_csv: Path):
    from models.bundle import load_bundle

    plain = Engine.from_data(load_bundle(tiny_bundle_dir), synthetic_csv, region="SYN")
    err = refused(plain, pb.ForecastRegionRequest(region="SYN", horizon=24, weather=[
        pb.ZoneWeather(zone="Z000", variable=TEMPERATURE, past=[20.0], future=[20.0])]))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "weather: model tiny-lstm reads no weather" in err.message


# ---------------------------------------------------------------------------------------------- over gRPC

def test_forecast_region_for_the_nem_over_grpc_reads_the_stores_weather(engine, weather_bundle_dir: Path,
                                                                         store_path: Path, nem_file: Path,
                                                                         tmp_path: Path):
    """The service (its own Ray, one replica) on the store the tests above filled: the NEM with each state's
    temperature forecast, over gRPC and its HTTP mirror; the same answers as the engine's."""
    from servers import running, server_process

    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

    args = {"store": str(store_path), "data": str(nem_file), "region": "NEM", "time_zone": TZ}
    with running(server_process(tmp_path, model=weather_bundle_dir, args=args, replicas=1)) as server:
        stub = pb_grpc.ForecastServiceStub(server.channel)
        got = stub.ForecastRegion(request(), timeout=120)
        want = answer(engine, request())
        assert [z.name for z in got.zones] == list(STATES) and got.fallback_zones == 0
        np.testing.assert_allclose(got.total.point, np.sum([z.point for z in got.zones], axis=0), rtol=1e-5)
        np.testing.assert_allclose(got.total.point, want.total.point, rtol=1e-5)
        assert list(got.weather) == list(want.weather) and got.weather[0].source == "store"
        with pytest.raises(grpc.RpcError) as err:
            stub.ForecastRegion(request(issue_time=ISSUE - pd.Timedelta(days=3)), timeout=60)
        assert err.value.code() == FAILED and "no temperature_c forecast for station" in err.value.details()
        url = (f"http://127.0.0.1:{server.http_port}/v1/forecast/region?region=NEM&horizon=24"
               f"&issue_time={ISSUE.isoformat()}")
        with urllib.request.urlopen(url, timeout=60) as response:
            body = json.loads(response.read())
        assert [w["station"] for w in body["weather"]] == [weather.NEM_STATIONS[s] for s in STATES]


def test_serving_the_bundled_nem_seeds_its_states_temperatures(tmp_path: Path):
    from serving.app import AppArgs, open_store

    said: list[str] = []
    args = AppArgs.model_validate({"data": str(BUNDLED_NEM), "store": str(tmp_path / "s.db"),
                                   "seed_until": "2012-01-15T00:00:00"})
    opened = open_store(args, said.append)
    try:
        assert weather.zone_stations(opened) == weather.NEM_STATIONS
        seen = weather.observations(opened, "HOBART")
        # the file's first half-hour starts 23:30 on 31 Dec; hours to 23:00 on 14 Jan, market time (UTC+10)
        assert len(seen) == 1 + 14 * 24 and seen["ts"].iloc[0] == _utc(pd.Timestamp("2011-12-31T23:00:00"))
        assert seen["ts"].iloc[-1] == _utc(pd.Timestamp("2012-01-14T23:00:00"))
        assert any("temperature observations" in line for line in said), said
        assert weather.seed_nem_weather(opened, BUNDLED_NEM, until=args.seed_until) is None  # once
    finally:
        opened.close()


# ---------------------------------------------------------------------------------------------- the command

def test_the_weather_command_registers_maps_and_ingests_observations_and_forecasts(tmp_path: Path):
    from typer.testing import CliRunner

    from energyopt.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, [str(a) for a in args])

    db = tmp_path / "w.db"
    hours = pd.date_range("2014-12-19T00:00:00", periods=6, freq="h")
    observed = pd.DataFrame({"station": "SYDNEY", "timestamp": hours, "temperature_c": [20.5, 21, 22, 23, 24, 25]})
    observed.to_csv(tmp_path / "obs.csv", index=False)
    result = run("weather", "ingest", tmp_path / "obs.csv", "--store", db)
    assert result.exit_code == 2 and "6 rejected" in result.output and "use --register" in result.output, \
        result.output
    result = run("weather", "ingest", tmp_path / "obs.csv", "--store", db, "--register", "--time-zone", TZ)
    assert result.exit_code == 0 and "6 observations of 1 variable(s) ['temperature_c']: 6 inserted" \
        in result.output, result.output
    result = run("weather", "stations", "--store", db, "--map", "NSW=SYDNEY")
    assert result.exit_code == 0 and "SYDNEY  Australia/Brisbane  zones: NSW" in result.output, result.output
    assert run("weather", "stations", "--store", db, "--map", "NSW").exit_code == 2

    ahead = pd.date_range("2014-12-19T06:00:00", periods=4, freq="h")
    forecast = pd.DataFrame({"station": "SYDNEY", "issued": "2014-12-19T05:00:00", "timestamp": ahead,
                             "temperature_c": [26.0, 27.0, 150.0, 28.0]})  # 150 °C: refused, the rest stored
    forecast.to_parquet(tmp_path / "fc.parquet", index=False)
    result = run("weather", "ingest", tmp_path / "fc.parquet", "--store", db)
    assert result.exit_code == 0 and "4 forecast values" in result.output and "3 inserted" in result.output \
        and "1 rejected" in result.output and "not a plausible temperature_c" in result.output, result.output
    opened = Store.open(db)
    try:
        hours_utc = [_utc(t) for t in ahead]
        got = weather.latest_forecast(opened, "SYDNEY", TEMPERATURE, _utc(pd.Timestamp("2014-12-19T06:00")), hours_utc)
        assert got.issued_ts == _utc(pd.Timestamp("2014-12-19T05:00")) and got.missing == [hours_utc[2]]
        assert weather.zone_stations(opened) == {"NSW": "SYDNEY"}
    finally:
        opened.close()
    bad = tmp_path / "bad.csv"
    bad.write_text("place,when,temp\nX,2014-12-19,1\n")
    result = run("weather", "ingest", bad, "--store", db)
    assert result.exit_code == 2 and "needs columns station, timestamp and one of ['temperature_c']" \
        in result.output, result.output
