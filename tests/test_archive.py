"""The forecast archive and scheduled issue, with real components only.

A. The archive in the store (SQLite and PostgreSQL): one forecast per region and slot under a race, the round
   trip of ListForecasts, and live accuracy computed by the database equal to the offline evaluation's
   metrics (training/evaluate.py, utilsforecast) on the same rows.
B. A server of its own (`python -m serving.server` in a subprocess: 2 Forecaster replicas and 2 Schedulers,
   a slot every second): exactly one forecast per slot, slots missed during a kill -9 issued late and
   flagged after the restart, ForecastRegion(archive=true), ListForecasts and GetForecastAccuracy over
   gRPC and HTTP on a replayed feed, equal to the offline metrics of the archived forecasts.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from servers import ServerProcess, running, schedule_config, server_process

from models import archive
from models.store import Store, ZoneSpec
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc
from training.evaluate import _metrics

LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9]
START = pd.Timestamp("2024-03-01T00:00:00")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Store:
    url = request.getfixturevalue("postgres_db") if request.param == "postgresql" else tmp_path / "store.db"
    s = Store.open(url)
    yield s
    s.close()


def _feed(store: Store, zones: list[str], hours: int, seed: int = 0, missing: tuple[str, int] | None = None) -> None:
    """Hourly readings of `zones` (region R, UTC) from START, without one (zone, hour) if `missing`."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range(START, periods=hours, freq="h")
    for k, zone in enumerate(zones):
        values = 500 + 100 * k + 80 * np.sin(np.arange(hours) * 2 * np.pi / 24) + rng.normal(0, 5, hours)
        keep = np.ones(hours, bool)
        if missing and missing[0] == zone:
            keep[missing[1]] = False
        store.ingest([zone] * keep.sum(), stamps[keep], values[keep], register=[ZoneSpec(zone, "R", 3600, "UTC")],
                     now=stamps[-1].timestamp() + 3600)


def _forecast(issue: pd.Timestamp, zones: list[str], rng: np.random.Generator, horizon: int = 48
              ) -> list[archive.ZoneForecast]:
    stamps = [t.isoformat() for t in pd.date_range(issue, periods=horizon, freq="h")]
    out, total_p, total_q = [], np.zeros(horizon), np.zeros((horizon, len(LEVELS)))
    for k, zone in enumerate(zones):
        point = 500 + 100 * k + 80 * np.sin((np.arange(horizon) + (issue - START) // pd.Timedelta(hours=1))
                                            * 2 * np.pi / 24) + rng.normal(0, 20, horizon)
        spread = np.abs(rng.normal(15, 5, horizon))[:, None] * np.array([-1.3, -0.7, 0, 0.7, 1.3])
        q = point[:, None] + spread
        out.append(archive.ZoneForecast(zone, stamps, point, LEVELS, q))
        total_p, total_q = total_p + point, total_q + q
    out.append(archive.ZoneForecast(archive.TOTAL, stamps, total_p, LEVELS, total_q))
    return out


def _record(store: Store, issue: pd.Timestamp, zones: list[str], rng, slot: bool = True, **kw) -> str | None:
    return archive.record(store, region="R", time_zone="UTC", issue_time=issue.isoformat(), model_name="m",
                          model_version=kw.pop("version", "v1"), watermark=1, fallback_zones=0,
                          zones=_forecast(issue, zones, rng), slot_ts=int(issue.tz_localize("UTC").timestamp())
                          if slot else None, **kw)


def test_one_forecast_per_region_and_slot_however_many_issue_it(store: Store):
    _feed(store, ["A", "B"], 24)
    rng = np.random.default_rng(1)
    issue = START + pd.Timedelta(hours=10)
    others = [Store.open(store.url) for _ in range(4)]
    ids, barrier = [], threading.Barrier(len(others))

    def issue_it(s: Store) -> None:
        barrier.wait()
        ids.append(_record(s, issue, ["A", "B"], rng))

    threads = [threading.Thread(target=issue_it, args=(s,)) for s in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in others:
        s.close()
    assert ids.count(None) == 3 and [i for i in ids if i] == [archive.slot_id("R", int(issue.tz_localize("UTC")
                                                                                      .timestamp()))], ids
    found = archive.list_forecasts(store, "R")
    assert len(found) == 1 and found[0].scheduled and len(found[0].zones) == 3
    # on demand: a new id each time, no slot
    a, b = _record(store, issue, ["A", "B"], rng, slot=False), _record(store, issue, ["A", "B"], rng, slot=False)
    assert a != b and a and b
    assert len(archive.list_forecasts(store, "R")) == 3
    assert len(archive.list_forecasts(store, "R", scheduled_only=True)) == 1


def test_list_forecasts_gives_back_what_was_stored(store: Store):
    _feed(store, ["A", "B"], 24)
    issues = [START + pd.Timedelta(hours=h) for h in (5, 6, 7)]
    stored = {}
    for issue in issues:
        stored[issue] = _forecast(issue, ["A", "B"], np.random.default_rng(int(issue.hour)))
        archive.record(store, region="R", time_zone="UTC", issue_time=issue.isoformat(), model_name="m",
                       model_version="v1", watermark=7, fallback_zones=0, zones=stored[issue],
                       slot_ts=int(issue.tz_localize("UTC").timestamp()), late=issue.hour == 6)
    found = archive.list_forecasts(store, "R")
    assert [f.issue_time for f in found] == [i.isoformat() for i in reversed(issues)]  # newest first
    assert [f.late for f in found] == [False, True, False]
    for f in found:
        want = stored[pd.Timestamp(f.issue_time)]
        assert [z.name for z in f.zones] == ["A", "B", archive.TOTAL]
        for got, exp in zip(f.zones, want):
            assert got.timestamps == exp.timestamps
            np.testing.assert_allclose(got.point, exp.point, rtol=0, atol=1e-9)
            np.testing.assert_allclose(got.quantiles, exp.quantiles, rtol=0, atol=1e-9)
    one = archive.list_forecasts(store, "R", zone="B", issued_from=int(issues[1].tz_localize("UTC").timestamp()),
                                 limit=1)
    assert [f.issue_time for f in one] == [issues[2].isoformat()] and [z.name for z in one[0].zones] == ["B"]
    heads = archive.list_forecasts(store, "R", headers_only=True)
    assert len(heads) == 3 and all(not f.zones for f in heads)


def _offline(store: Store, zones: list[str], found: list[archive.ArchivedForecast], buckets: tuple[int, ...]
             ) -> dict[tuple[str, int], dict[str, float]]:
    """The offline evaluation's metrics (training/evaluate.py `_metrics`, utilsforecast) of archived forecasts
    against the store's readings, per zone and bucket: the reference for live accuracy."""
    readings = store.readings(zones)
    y = readings.assign(hour=pd.to_datetime(readings["ts"], unit="s")).set_index(["zone", "hour"])["value"]
    total = y.unstack("zone").dropna()[zones].sum(axis=1)
    rows = []
    for f in found:
        for z in f.zones:
            for step, (stamp, point) in enumerate(zip(z.timestamps, z.point), start=1):
                hour = pd.Timestamp(stamp)
                actual = total.get(hour) if z.name == archive.TOTAL else y.get((z.name, hour))
                if actual is None or step > buckets[-1]:
                    continue
                bucket = next(i for i, end in enumerate(buckets) if step <= end)
                row = {"zone": f"{z.name}|{bucket}", "y": float(actual), "m": float(point)}
                row.update({f"m-q{level:g}": float(v) for level, v in zip(z.levels, z.quantiles[step - 1])})
                rows.append(row)
    frame = pd.DataFrame(rows)
    metrics = _metrics(frame, "m")
    bias = (frame["m"] - frame["y"]).groupby(frame["zone"]).mean()
    out = {}
    for key, m in metrics.iterrows():
        zone, bucket = key.split("|")
        out[(zone, int(bucket))] = {"mae": m["mae"], "mape": m["mape"], "pinball": m["pinball"],
                                    "coverage_80": m["coverage_80"], "bias": bias[key],
                                    "points": int((frame["zone"] == key).sum())}
    return out


def test_live_accuracy_equals_the_offline_metrics_of_the_same_rows(store: Store):
    zones = ["A", "B"]
    _feed(store, zones, 24 * 6, missing=("B", 100))  # B's hour 100 never arrived: not scored, TOTAL neither
    rng = np.random.default_rng(3)
    for h in range(24, 24 * 5):  # hourly issues; the last ones reach past the readings (partly scored)
        _record(store, START + pd.Timedelta(hours=h), zones, rng)
    _record(store, START + pd.Timedelta(hours=30), zones, rng, slot=False)  # on demand: left out by default
    buckets = (6, 24, 48)
    start, end = (int((START + pd.Timedelta(hours=h)).tz_localize("UTC").timestamp()) for h in (24, 24 * 5))
    rows = archive.accuracy(store, "R", zones, start=start, end=end, buckets=buckets)
    reference = _offline(store, zones, archive.list_forecasts(store, "R", scheduled_only=True, limit=1000), buckets)
    assert {(r.zone, [1, 7, 25].index(r.first_step)) for r in rows} == set(reference)
    assert [r.zone for r in rows] == ["A"] * 3 + ["B"] * 3 + [archive.TOTAL] * 3  # region order, then TOTAL
    for r in rows:
        ref = reference[(r.zone, [1, 7, 25].index(r.first_step))]
        assert r.points == ref["points"]
        for metric in ("mae", "mape", "pinball", "coverage_80", "bias"):
            assert getattr(r, metric) == pytest.approx(ref[metric], rel=1e-9, abs=1e-9), (r.zone, metric)
    assert rows[0].forecasts == 96 and rows[0].points == 96 * 6
    # the zone filter, a model version filter and on-demand forecasts
    only_b = archive.accuracy(store, "R", zones, start=start, end=end, buckets=buckets, zone="B")
    assert [r.zone for r in only_b] == ["B"] * 3
    assert [r.mae for r in only_b] == pytest.approx([r.mae for r in rows if r.zone == "B"], rel=1e-12)
    assert archive.accuracy(store, "R", zones, start=start, end=end, buckets=buckets, model_version="v9") == []
    with_on_demand = archive.accuracy(store, "R", zones, start=start, end=end, buckets=buckets, include_on_demand=True)
    assert with_on_demand[0].forecasts == 97


def test_the_schedule_knows_which_slots_are_due():
    from serving.scheduler import data_slots, due_slots, slot_of

    assert slot_of(3600 * 10 + 299, 3600, 300) == 3600 * 9 and slot_of(3600 * 10 + 300, 3600, 300) == 3600 * 10
    assert due_slots(None, 1000.5, 1, 0, 5) == [(1000, False)]  # a first slot: no back-fill
    assert due_slots(1000, 1000.9, 1, 0, 5) == []
    assert due_slots(996, 1000.5, 1, 0, 5) == [(997, True), (998, True), (999, True), (1000, False)]
    assert due_slots(900, 1000.5, 1, 0, 2) == [(998, True), (999, True), (1000, False)]  # the newest only
    assert due_slots(0, 1.7e9, 1, 0, 0) == [(1_700_000_000, False)]  # years behind: no list of years
    # the data clock: each new hour of readings (wall clock America/New_York, 04:00 EDT = 08:00 UTC)
    hour = int(pd.Timestamp("2018-06-01T08:00:00Z").timestamp())
    assert data_slots(None, "2018-06-01T03:00:00", "America/New_York", 5) == [(hour, False)]
    assert data_slots(hour - 7200, "2018-06-01T03:00:00", "America/New_York", 5) == [(hour - 3600, True),
                                                                                       (hour, False)]


# ================================================================================================ B

ZONES = ("Z000", "Z001", "Z002")
FED = 168  # hours of the synthetic data kept out of the seed and replayed into the feed: a week


@pytest.fixture(scope="module")
def scheduled_server(tmp_path_factory, tiny_bundle_dir: Path, synthetic_csv: Path):
    root = tmp_path_factory.mktemp("archive")
    frame = pd.read_csv(synthetic_csv, parse_dates=["timestamp"])
    hours = sorted(frame["timestamp"].unique())
    seed = root / "seed.csv"
    frame[frame["timestamp"] < hours[-FED]].to_csv(seed, index=False)
    # two schedulers race for every slot: the store keeps one
    config = schedule_config(root, scheduler_replicas=2, every_s=1, offset_s=0, horizon=24, max_late_slots=600,
                             scan_every_s=5)
    args = {"store": str(root / "store.db"), "data": str(seed), "region": "SYN"}
    server = server_process(root, model=tiny_bundle_dir, args=args, config=config)
    server.truth = frame.set_index(["zone", "timestamp"]).sort_index()
    server.fed = [pd.Timestamp(h) for h in hours[-FED:]]
    with running(server):
        yield server


def _slots(store: Store, region: str = "SYN") -> list[archive.ArchivedForecast]:
    return sorted((f for f in archive.list_forecasts(store, region, scheduled_only=True, headers_only=True,
                                                     limit=100_000)), key=lambda f: f.slot_ts)


def _wait_for_slots(store: Store, n: int, after: int | None = None, timeout_s: float = 90) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [f for f in _slots(store) if after is None or f.slot_ts > after]
        if len(found) >= n:
            return found
        assert time.monotonic() < deadline, f"only {len(found)} scheduled forecasts after {timeout_s} s"
        time.sleep(0.5)


def test_every_slot_gets_exactly_one_forecast_and_missed_slots_are_issued_late(scheduled_server: ServerProcess):
    store = Store.open(scheduled_server.store_path)
    first = _wait_for_slots(store, 6)
    # one per slot: no gap, no double. Two schedulers issue at once, so under load a slot may be committed just
    # after the next one: a gap must be filled within seconds (a missed slot is issued late), never left
    deadline = time.monotonic() + 30
    while (slots := [f.slot_ts for f in _slots(store) if f.slot_ts <= first[-1].slot_ts]) != \
            list(range(slots[0], first[-1].slot_ts + 1)):
        assert time.monotonic() < deadline, slots
        time.sleep(0.5)
    first = [f for f in _slots(store) if f.slot_ts <= first[-1].slot_ts]
    assert len({f.id for f in first}) == len(first)
    with grpc.insecure_channel(f"127.0.0.1:{scheduled_server.grpc_port}") as channel:
        info = pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert {f.model_version for f in first} == {info.version}

    scheduled_server.kill()
    down = time.time()
    time.sleep(3.5)  # three slots or more pass with no service at all
    scheduled_server.start()
    last_before = max(f.slot_ts for f in _slots(store) if f.issued_at < down)
    restarted = int(time.time()) + 1
    # back on time after the catch-up: a slot after the restart issued before the next one was due (a slot
    # lasts 1 s here, so on a loaded machine one may still be late: wait for one that is not)
    deadline = time.monotonic() + 90
    while not any(not f.late for f in _wait_for_slots(store, 1, after=restarted)):
        assert time.monotonic() < deadline, [(f.slot_ts, f.late) for f in _slots(store) if f.slot_ts > restarted]
        time.sleep(0.5)
    slots = _slots(store)
    numbers = [f.slot_ts for f in slots]
    assert numbers == list(range(numbers[0], numbers[-1] + 1)), "a slot was missed or issued twice"
    missed = [f for f in slots if last_before < f.slot_ts < down + 3]
    assert len(missed) >= 3 and all(f.late for f in missed), [(f.slot_ts, f.late) for f in missed]
    assert all(f.issued_at > down for f in missed)
    store.close()


def _json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_on_demand_archive_list_and_errors_over_grpc_and_http(scheduled_server: ServerProcess):
    base = f"http://127.0.0.1:{scheduled_server.http_port}"
    with grpc.insecure_channel(f"127.0.0.1:{scheduled_server.grpc_port}") as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        answer = stub.ForecastRegion(pb.ForecastRegionRequest(region="SYN", horizon=12, archive=True), timeout=60)
        assert answer.forecast_id.startswith("SYN@")
        listed = stub.ListForecasts(pb.ListForecastsRequest(region="SYN", limit=1000), timeout=60)
        mine = [f for f in listed.forecasts if f.id == answer.forecast_id]
        assert len(mine) == 1 and not mine[0].scheduled and not mine[0].slot
        assert [z.name for z in mine[0].zones] == list(ZONES) and mine[0].total.name == "TOTAL"
        assert list(mine[0].total.point) == pytest.approx(list(answer.total.point))
        assert list(mine[0].zones[1].quantiles[0].values) == pytest.approx(list(answer.zones[1].quantiles[0].values))
        for request, code, words in [
            (pb.ListForecastsRequest(region="NOPE"), grpc.StatusCode.NOT_FOUND, "region: unknown region 'NOPE'"),
            (pb.ListForecastsRequest(region="SYN", zone="Z9"), grpc.StatusCode.NOT_FOUND, "zone: unknown zone 'Z9'"),
            (pb.ListForecastsRequest(region="SYN", issued_from="yesterday"), grpc.StatusCode.INVALID_ARGUMENT,
             "issued_from: cannot read 'yesterday'"),
            (pb.ListForecastsRequest(region="SYN", limit=5000), grpc.StatusCode.INVALID_ARGUMENT, "limit: at most"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.ListForecasts(request, timeout=30)
            assert err.value.code() == code and err.value.details().startswith(words), err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.GetForecastAccuracy(pb.GetForecastAccuracyRequest(region="SYN", bucket_ends=[24, 6]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bucket_ends" in err.value.details()
    status, body = _json(f"{base}/v1/forecasts?region=SYN&headers_only=true&limit=5")
    assert status == 200 and len(body["forecasts"]) == 5 and "zones" not in body["forecasts"][0]
    status, body = _json(f"{base}/v1/forecasts?region=NOPE")
    assert status == 404 and body["code"] == "NOT_FOUND" and body["message"].startswith("region: unknown region")


def _ingest(stub: rpb_grpc.ReadingsServiceStub, truth: pd.DataFrame, hour: pd.Timestamp) -> None:
    readings = [rpb.Reading(zone=z, timestamp=hour.tz_localize("UTC").isoformat(),
                            value=float(truth.loc[(z, hour), "load_mw"])) for z in ZONES]
    ack = stub.IngestReadings(rpb.IngestReadingsRequest(readings=readings), timeout=60)
    assert ack.inserted == len(ZONES) and not ack.rejected, ack


def test_live_accuracy_over_a_replayed_feed_equals_the_offline_metrics(scheduled_server: ServerProcess):
    """The feed replays a week, five hours a second; the schedule issues a forecast every second from the
    newest hour then.
    GetForecastAccuracy (SQL in the store) over gRPC and HTTP equals the offline metrics (utilsforecast) of
    the archived scheduled forecasts against the readings."""
    store = Store.open(scheduled_server.store_path)
    with grpc.insecure_channel(f"127.0.0.1:{scheduled_server.grpc_port}") as channel:
        readings, forecasts = rpb_grpc.ReadingsServiceStub(channel), pb_grpc.ForecastServiceStub(channel)
        for hour in scheduled_server.fed:
            _ingest(readings, scheduled_server.truth, hour)
            time.sleep(0.2)
        time.sleep(2)  # the last hours' slots
        issued = {f.issue_time for f in _slots(store)}
        assert len(issued) >= FED // 10, f"the schedule issued from only {len(issued)} distinct hours"
        until = (scheduled_server.fed[-1] + pd.Timedelta(hours=1)).tz_localize("UTC").isoformat()
        request = pb.GetForecastAccuracyRequest(region="SYN", window_days=30, bucket_ends=[6, 24], until=until)
        live = forecasts.GetForecastAccuracy(request, timeout=120)
    assert [(r.zone, r.first_step) for r in live.rows] == [(z, s) for z in (*ZONES, "TOTAL") for s in (1, 7)]
    specs = store.zones()
    zones = [z for z in ZONES if specs[z].region == "SYN"]
    end = int(pd.Timestamp(until).timestamp())
    found = archive.list_forecasts(store, "SYN", scheduled_only=True, issued_from=end - 30 * 86400, issued_to=end,
                                   limit=100_000)
    reference = _offline(store, zones, found, (6, 24))
    for r in live.rows:
        ref = reference[(r.zone, 0 if r.first_step == 1 else 1)]
        assert r.points == ref["points"]
        for metric in ("mae", "mape", "pinball", "coverage_80", "bias"):
            assert getattr(r, metric) == pytest.approx(ref[metric], rel=1e-9, abs=1e-9), (r.zone, metric)
    query = urllib.parse.urlencode({"region": "SYN", "window_days": 30, "until": until, "bucket_ends": [6, 24]},
                                   doseq=True)
    status, body = _json(f"http://127.0.0.1:{scheduled_server.http_port}/v1/forecasts/accuracy?{query}")
    assert status == 200 and [row["mae"] for row in body["rows"]] == pytest.approx([r.mae for r in live.rows])
    store.close()
