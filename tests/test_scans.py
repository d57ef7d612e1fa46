"""Anomaly scans on arrival (serving/scans.py, models/events.py), with real components only.

A. The scans and the event store on SQLite and PostgreSQL: a stuck meter, a spike and zero readings
   replayed hour by hour into a feed of normal load (the session's synthetic zones, which the tiny
   detector knows as normal) become one event each, with stable ids, opened in time and closed once the
   zone is normal again; two scans at once store an event once; a first scan reads only the last week;
   sub-hourly zones; zero readings from the ingest path; ListAnomalies' filters and errors.
B. The session's Serve application: the same feed over gRPC, `scan_arrivals` through a Serve handle, and
   ListAnomalies over gRPC, HTTP and the CLI, bad input answered naming the field. Readings go to zones of
   their own (region SCAN), removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from models.events import (
    KIND_DETECTOR,
    KIND_FLAT,
    KIND_ZERO,
    Finding,
    ScanCounts,
    ZoneScan,
    apply_scan,
    event_id,
    events_table,
    forget_zones,
    list_events,
    record_zero_readings,
    scan_states,
)
from models.store import Store, ZoneSpec, readings_table, state_table, store_url, zones_table
from serving.api.energyopt.v1 import anomaly_pb2 as apb
from serving.api.energyopt.v1 import anomaly_pb2_grpc as apb_grpc
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc
from serving.engine import ApiError, Limits

H = 3600
EPOCH = int(pd.Timestamp("2020-01-01", tz="UTC").timestamp())  # the synthetic data's first hour, as UTC
REGION = "SCAN"
HISTORY = 6 * 168  # hours of normal load before the live feed: the detector's 5 weeks and some
N_HOURS = 24 * 500  # the session's synthetic_csv
LIVE = N_HOURS - 24  # first live hour (index into the synthetic data)
STUCK = range(LIVE + 2, LIVE + 10)  # SC1 repeats its value of LIVE + 2 for 8 h
SPIKE = LIVE + 5  # SC2 at 1.8x
ZEROS = range(LIVE + 3, LIVE + 6)  # SC3 sends 0


def ts(i: int) -> int:
    return EPOCH + i * H


def iso(i: int) -> str:
    return pd.Timestamp(ts(i), unit="s", tz="UTC").isoformat()


def iso_z(i: int) -> str:
    return pd.Timestamp(ts(i), unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def normal(synthetic_csv: Path) -> dict[str, np.ndarray]:
    """Hourly load of two synthetic zones the tiny detector finds nothing in (checked: no events in their
    last 100 days), by index from 2020-01-01."""
    table = pd.read_csv(synthetic_csv)
    out = {z: table[table["zone"] == z]["load_mw"].to_numpy(np.float64) for z in ("Z000", "Z001")}
    assert all(len(v) == N_HOURS for v in out.values())
    return out


@dataclass
class Feed:
    """Three zones of a region: SC1 gets stuck, SC2 spikes, SC3 reports zeros (names prefixed per test)."""

    normal: dict[str, np.ndarray]
    prefix: str = "SC"

    @property
    def zones(self) -> list[str]:
        return [f"{self.prefix}1", f"{self.prefix}2", f"{self.prefix}3"]

    def value(self, zone: str, i: int) -> float:
        stuck, spiky, zeros = self.zones
        if zone == stuck:
            return float(self.normal["Z000"][STUCK[0] if i in STUCK else i])
        if zone == spiky:
            return float(self.normal["Z001"][i] * (1.8 if i == SPIKE else 1.0))
        return 0.0 if i in ZEROS else float(self.normal["Z001"][i] * 0.7)

    def request(self, hours: range, register: bool = False) -> rpb.IngestReadingsRequest:
        return rpb.IngestReadingsRequest(
            readings=[rpb.Reading(zone=z, timestamp=iso(i), value=self.value(z, i)) for i in hours for z in self.zones],
            register=[rpb.ZoneSpec(zone=z, region=REGION, resolution_s=3600, time_zone="UTC")
                      for z in self.zones] if register else [])


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    url = store_url(tmp_path / "store.db") if request.param == "sqlite" else request.getfixturevalue("postgres_db")
    opened = Store.open(url)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def detector(tiny_anomaly_bundle_dir: Path):
    from models.bundle import load_bundle
    from serving.anomaly import AnomalyEngine

    return AnomalyEngine(load_bundle(tiny_anomaly_bundle_dir), {}, Limits())


def ingest(store: Store, request: rpb.IngestReadingsRequest) -> rpb.IngestAck:
    from serving.app import ingest_batch  # the one place batches are written (zero readings recorded there)

    return ingest_batch(store, request)


def by_zone(store: Store, region: str = REGION) -> dict[str, list]:
    out: dict[str, list] = {}
    for ev in list_events(store, region, limit=1000):
        out.setdefault(ev.zone, []).append(ev)
    return out


def register(store: Store, zones: list[str], region: str) -> None:
    store.register([ZoneSpec(z, region, 3600, "UTC") for z in zones])


# ================================================================================================ A

def test_a_stuck_meter_a_spike_and_zeros_become_one_event_each_with_stable_ids(store: Store, detector, normal):
    from serving.scans import scan_store

    feed = Feed(normal)
    stuck, spiky, zeros = feed.zones
    ack = ingest(store, feed.request(range(LIVE - HISTORY, LIVE), register=True))
    assert (ack.inserted, len(ack.rejected)) == (3 * HISTORY, 0)
    first = scan_store(store, detector)
    # a zone never scanned: its last week only, by the rules and the detector
    assert (first.zones, first.hours, first.detector_zones, first.opened) == (3, 3 * 168, 3, 0), first
    assert scan_states(store) == {z: ts(LIVE - 1) for z in feed.zones}
    assert by_zone(store) == {}

    seen: dict[str, int] = {}  # event id -> the live hour after which it was first listed
    states: dict[int, dict[str, tuple[bool, int]]] = {}  # live hour -> id -> (open, end)
    for i in range(LIVE, LIVE + 24):
        ack = ingest(store, feed.request(range(i, i + 1)))
        assert [(r.zone, r.reason) for r in ack.rejected] == ([(zeros, "value 0 is not positive")] if i in ZEROS
                                                              else [])
        scan_store(store, detector)
        listed = list_events(store, REGION, limit=1000)
        states[i] = {ev.id: (ev.open, ev.end_ts) for ev in listed}
        for ev in listed:
            seen.setdefault(ev.id, i)

    events = by_zone(store)
    assert sorted(events) == feed.zones and all(len(v) == 1 for v in events.values()), events
    flat, spike, zero = (events[z][0] for z in feed.zones)
    # ids are stable: no other id was ever listed, and each is zone:kind:first hour
    assert set(seen) == {flat.id, spike.id, zero.id}, seen
    assert flat.id == f"{stuck}:flat_line:{iso_z(STUCK[0])}" and zero.id == f"{zeros}:zero_readings:{iso_z(ZEROS[0])}"

    # the stuck meter: a flat_line event from its 4th hour (within 6 h), growing while stuck, closed after
    assert (flat.kind, flat.start_ts, flat.end_ts, flat.severity, flat.open) == (
        KIND_FLAT, ts(STUCK[0]), ts(STUCK[-1]), 8.0, False)
    assert seen[flat.id] == STUCK[0] + 3 and "the same value" in flat.detail and "for 8 h" in flat.detail
    assert [states[i][flat.id] for i in range(STUCK[0] + 3, STUCK[-1] + 2)] == [
        *[(True, ts(i)) for i in range(STUCK[0] + 3, STUCK[-1] + 1)], (False, ts(STUCK[-1]))]

    # the spike: one detector event over its hour, opened by the scan of that hour, closed after the merge gap
    assert spike.kind == KIND_DETECTOR and spike.start_ts <= ts(SPIKE) <= spike.end_ts, spike
    assert spike.end_ts - spike.start_ts <= 2 * H and spike.severity > 1.0 and not spike.open, spike
    assert seen[spike.id] == SPIKE and states[SPIKE][spike.id][0]
    assert "MWh observed" in spike.detail

    # the zeros: refused by the ingest, one zero_readings event, closed by the first valid reading after them
    assert (zero.kind, zero.start_ts, zero.end_ts, zero.severity, zero.open) == (
        KIND_ZERO, ts(ZEROS[0]), ts(ZEROS[-1]), 3.0, False)
    assert seen[zero.id] == ZEROS[0] and states[ZEROS[-1]][zero.id] == (True, ts(ZEROS[-1]))
    assert states[ZEROS[-1] + 1][zero.id] == (False, ts(ZEROS[-1]))

    # a scan with nothing new changes nothing
    before = list_events(store, REGION, limit=1000)
    assert scan_store(store, detector) == ScanCounts()
    assert list_events(store, REGION, limit=1000) == before


def _flat_zone(store: Store, zone: str, region: str, hours: int, stuck: dict[int, int]) -> None:
    """`hours` hourly readings from EPOCH (a daily sine near 1000 MW), with the value of hour a repeated
    up to hour b for each a: b of `stuck`."""
    i = np.arange(hours)
    values = 1000.0 + 200.0 * np.sin(2 * np.pi * i / 24) + 10.0 * np.sin(i)
    for a, b in stuck.items():
        values[a : b + 1] = values[a]
    result = store.ingest([zone] * hours, [iso(k) for k in i], values, register=[ZoneSpec(zone, region, 3600, "UTC")])
    assert not result.rejected, result.rejected[:3]


def test_two_scans_at_once_store_each_event_once(store: Store):
    from serving.scans import scan_store, scan_zone

    _flat_zone(store, "TW1", "TWICE", 72, {60: 71})
    # the same plan twice (two replicas that read the same state): the second finds the zone scanned
    spec = store.zones()["TW1"]
    plans = [scan_zone(store, spec, None, ts(72 - 168), ts(71))[0] for _ in range(2)]
    assert [len(p.findings) for p in plans] == [1, 1]
    assert apply_scan(store, plans[:1]).opened == 1 and apply_scan(store, plans[1:]).as_dict() == {
        **ScanCounts().as_dict(), "skipped": 1}
    # four threads scanning at once after new hours: the event is updated once, never doubled
    more = np.full(4, 1000.0 + 200.0 * np.sin(2 * np.pi * 60 / 24) + 10.0 * np.sin(60))  # still stuck
    store.ingest(["TW1"] * 4, [iso(k) for k in range(72, 76)], more)
    results: list[ScanCounts] = []
    barrier = threading.Barrier(4)

    def scan() -> None:
        barrier.wait()
        results.append(scan_store(store))

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.opened for r in results) == 0 and sum(r.updated for r in results) == 1, results
    assert sum(r.zones for r in results) == 1 and sum(r.skipped for r in results) <= 3
    (ev,) = list_events(store, "TWICE")
    assert (ev.id, ev.start_ts, ev.end_ts, ev.severity, ev.open) == (event_id("TW1", KIND_FLAT, ts(60)), ts(60),
                                                                     ts(75), 16.0, True)
    with store.reader.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one() == 1


def test_a_first_scan_reads_the_last_week_only_and_sub_hourly_zones_scan_whole_hours(store: Store):
    from serving.scans import scan_store

    # 60 days with a stuck stretch on day 20 (not scanned: older than a week) and one on day 58
    _flat_zone(store, "FW1", "FIRST", 60 * 24, {20 * 24: 20 * 24 + 6, 58 * 24 + 3: 58 * 24 + 8})
    counts = scan_store(store)
    assert (counts.zones, counts.hours, counts.opened, counts.detector_zones) == (1, 168, 1, 0), counts
    (ev,) = list_events(store, "FIRST")
    assert (ev.start_ts, ev.end_ts, ev.severity, ev.open) == (ts(58 * 24 + 3), ts(58 * 24 + 8), 6.0, False)
    assert scan_states(store) == {"FW1": ts(60 * 24 - 1)}

    # a 15-minute zone stuck for 5 h, read to 10:30: whole hours to 09:00 scanned, the hourly means flat
    register = [ZoneSpec("QH1", "QUARTER", 900, "UTC")]
    steps = np.arange(0, 34 * 4 + 3)  # from EPOCH to 34:30
    values = 1000.0 + 200.0 * np.sin(2 * np.pi * steps / 96) + 5.0 * np.sin(steps)
    values[28 * 4 :] = 777.0  # stuck from 28:00
    stamps = [pd.Timestamp(EPOCH + 900 * int(k), unit="s", tz="UTC").isoformat() for k in steps]
    assert not store.ingest(["QH1"] * len(steps), stamps, values, register=register).rejected
    counts = scan_store(store)
    assert (counts.zones, counts.hours, counts.opened) == (1, 34, 1), counts
    assert scan_states(store)["QH1"] == ts(33)
    (ev,) = list_events(store, "QUARTER")
    assert (ev.kind, ev.start_ts, ev.end_ts, ev.open) == (KIND_FLAT, ts(28), ts(33), True)
    assert ev.detail == "the same value 777.0 MW for 6 h (a stuck meter?)"


def test_zero_readings_open_extend_ignore_resends_and_start_anew_after_valid_readings(store: Store):
    from serving.scans import scan_store

    _flat_zone(store, "ZR1", "ZEROS", 200, {})
    zero = lambda i, v=0.0: rpb.IngestReadingsRequest(readings=[rpb.Reading(zone="ZR1", timestamp=iso(i), value=v)])  # noqa: E731
    ingest(store, zero(200))
    (ev,) = list_events(store, "ZEROS")
    assert (ev.id, ev.start_ts, ev.end_ts, ev.severity, ev.open) == ("ZR1:zero_readings:" + iso_z(200), ts(200),
                                                                     ts(200), 1.0, True)
    ingest(store, zero(200))  # a resend: nothing changes
    assert list_events(store, "ZEROS") == [ev]
    ingest(store, zero(201, -3.5))  # negative counts too; NaN does not
    ingest(store, zero(202, float("nan")))
    (ev,) = list_events(store, "ZEROS")
    assert (ev.end_ts, ev.severity, ev.open) == (ts(201), 2.0, True) and "latest -3.5 MW" in ev.detail
    # the scan leaves it open while no valid reading came after it, closes it after one
    assert scan_store(store).closed == 0 and list_events(store, "ZEROS", open_only=True)
    assert not ingest(store, zero(203, 1000.0)).rejected
    assert scan_store(store).closed == 1 and not list_events(store, "ZEROS", open_only=True)
    # zeros again: a new event; and one sent while an event is open after a valid reading starts anew too
    ingest(store, zero(205))
    ingest(store, zero(206, 1000.0))
    ingest(store, zero(208))
    events = list_events(store, "ZEROS")
    assert [(e.start_ts, e.end_ts, e.open) for e in events] == [(ts(208), ts(208), True), (ts(205), ts(205), False),
                                                                (ts(200), ts(201), False)]
    # record_zero_readings directly: an unknown zone is ignored, nothing for no zeros
    assert record_zero_readings(store, {"NOPE": [(ts(1), 0.0)], "ZR1": []}) == ScanCounts()


def test_list_anomalies_filters_and_names_bad_fields(store: Store):
    from serving.scans import list_anomalies, list_request

    register(store, ["L1", "L2"], "LA")
    register(store, ["L3"], "LB")
    t0 = 1000
    detail = "d"
    flat = [Finding(KIND_FLAT, ts(t0), ts(t0 + 4), 5, detail)]
    apply_scan(store, [ZoneScan("L1", "LA", None, ts(t0), ts(t0 + 4), flat, {KIND_FLAT: 1}),
                       ZoneScan("L3", "LB", None, ts(t0), ts(t0 + 4), list(flat), {KIND_FLAT: 1})], now=100.0)
    counts = apply_scan(store, [ZoneScan("L1", "LA", ts(t0 + 4), ts(t0 + 5), ts(t0 + 10),
                                         [Finding(KIND_DETECTOR, ts(t0 + 10), ts(t0 + 10), 2.5, "spike")],
                                         {KIND_FLAT: 1, KIND_DETECTOR: 6})], now=200.0)
    assert (counts.opened, counts.closed) == (1, 1)
    record_zero_readings(store, {"L2": [(ts(t0 + 2), 0.0)]}, now=300.0)

    def ask(**kw) -> list[tuple[str, str, bool]]:
        return [(e.zone, e.kind, e.open) for e in list_anomalies(store, apb.ListAnomaliesRequest(**kw)).events]

    assert ask(region="LA") == [("L1", "detector", True), ("L1", "flat_line", False), ("L2", "zero_readings", True)]
    assert ask(region="LA", zone="L1") == [("L1", "detector", True), ("L1", "flat_line", False)]
    assert ask(region="LA", open_only=True) == [("L1", "detector", True), ("L2", "zero_readings", True)]
    assert ask(region="LA", limit=1) == [("L1", "detector", True)]
    assert ask(region="LB") == [("L3", "flat_line", True)]
    # since: open events, and closed ones whose last hour ends after it (no offset: UTC)
    end = pd.Timestamp(ts(t0 + 4), unit="s", tz="UTC")
    assert ask(region="LA", since=(end + pd.Timedelta(minutes=30)).isoformat())[1] == ("L1", "flat_line", False)
    later = end + pd.Timedelta(hours=1)
    assert ("L1", "flat_line", False) not in ask(region="LA", since=later.strftime("%Y-%m-%dT%H:%M"))
    assert ("L1", "flat_line", False) not in ask(region="LA", since=later.tz_convert("America/New_York").isoformat())
    message = list_anomalies(store, apb.ListAnomaliesRequest(region="LA", zone="L1")).events[1]
    assert (message.id, message.start, message.end, message.severity, message.detail, message.opened_at,
            message.updated_at) == (f"L1:flat_line:{iso_z(t0)}", iso_z(t0), iso_z(t0 + 4), 5.0, detail,
                                    "1970-01-01T00:01:40Z", "1970-01-01T00:03:20Z")

    for kw, code, field in [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "region:"),
        ({"region": "NOWHERE"}, grpc.StatusCode.NOT_FOUND, "region:"),
        ({"region": "LA", "zone": "NOPE"}, grpc.StatusCode.NOT_FOUND, "zone:"),
        ({"region": "LA", "zone": "L3"}, grpc.StatusCode.NOT_FOUND, "zone:"),
        ({"region": "LA", "since": "next tuesday"}, grpc.StatusCode.INVALID_ARGUMENT, "since:"),
        ({"region": "LA", "limit": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "limit:"),
    ]:
        with pytest.raises(ApiError) as err:
            list_anomalies(store, apb.ListAnomaliesRequest(**kw))
        assert err.value.code == code and err.value.message.startswith(field), (kw, err.value.message)
    # one write for several zones: an event opened in one, one continued (the detector's merge gap) in another
    gap = {KIND_DETECTOR: 6}
    new = [Finding(KIND_DETECTOR, ts(t0 + 11), ts(t0 + 11), 1.5, "new")]
    more = [Finding(KIND_DETECTOR, ts(t0 + 10), ts(t0 + 11), 3.0, "more")]
    counts = apply_scan(store, [ZoneScan("L3", "LB", ts(t0 + 4), ts(t0 + 5), ts(t0 + 11), new, {KIND_FLAT: 1, **gap},
                                         None, gap),
                                ZoneScan("L1", "LA", ts(t0 + 10), ts(t0 + 11), ts(t0 + 11), more, {KIND_FLAT: 1, **gap},
                                         None, gap)], now=400.0)
    assert (counts.zones, counts.opened, counts.updated, counts.closed) == (2, 1, 1, 1), counts
    assert [(e.kind, e.end_ts, e.severity, e.detail, e.open) for e in list_events(store, "LA", "L1")] == [
        (KIND_DETECTOR, ts(t0 + 11), 3.0, "more", True), (KIND_FLAT, ts(t0 + 4), 5.0, detail, False)]
    assert [(e.kind, e.open) for e in list_events(store, "LB")] == [(KIND_DETECTOR, True), (KIND_FLAT, False)]

    assert list_request("LA", "L1", "2020-01-01", "true", "7") == apb.ListAnomaliesRequest(
        region="LA", zone="L1", since="2020-01-01", open_only=True, limit=7)
    for kw, field in [({"open_only": "maybe"}, "open_only:"), ({"limit": "ten"}, "limit:"),
                      ({"limit": "5000"}, "limit:"), ({"limit": "-1"}, "limit:")]:
        with pytest.raises(ApiError) as err:
            list_request("LA", **kw)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message.startswith(field)


# ================================================================================================ B

@dataclass
class AppSession:
    store: Store
    readings: rpb_grpc.ReadingsServiceStub
    anomalies: apb_grpc.AnomalyServiceStub
    target: str
    url: str
    app_name: str

    loop: asyncio.AbstractEventLoop

    def scan(self) -> dict:
        """Forecaster.scan_arrivals through a Serve handle, as the Scheduler calls it (this driver's handles
        route on the event loop they are used from: one of the session's, running in a thread)."""
        from ray import serve

        async def call() -> dict:
            handle = serve.get_deployment_handle("Forecaster", app_name=self.app_name)
            return await handle.scan_arrivals.remote()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=180)

    def list(self, **kw) -> list[apb.StoredAnomaly]:
        return list(self.anomalies.ListAnomalies(apb.ListAnomaliesRequest(**kw), timeout=60).events)


def http_get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def app(serve_app):
    config = serve_app.config["applications"][0]
    store = Store.open(config["args"]["store"], migrate=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scan-handle", daemon=True)
    thread.start()
    with grpc.insecure_channel(serve_app.target) as channel:
        s = AppSession(store, rpb_grpc.ReadingsServiceStub(channel), apb_grpc.AnomalyServiceStub(channel),
                       serve_app.target, serve_app.url, config["name"], loop)
        try:
            yield s
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            try:
                ours = [z for z, spec in store.zones().items() if spec.region == REGION]
                with store.engine.begin() as conn:
                    store._serialize(conn)
                    forget_zones(conn, ours)
                    conn.execute(readings_table.delete().where(readings_table.c.zone.in_(ours)))
                    conn.execute(zones_table.delete().where(zones_table.c.zone.in_(ours)))
                    conn.execute(state_table.update().values(watermark=state_table.c.watermark + 1))
            finally:
                store.close()


def test_scans_on_arrival_over_grpc_http_and_the_cli(app: AppSession, normal):
    from typer.testing import CliRunner

    from energyopt.cli import app as cli

    feed = Feed(normal, prefix="SE")
    stuck, spiky, zeros = feed.zones
    ack = app.readings.IngestReadings(feed.request(range(LIVE - HISTORY, LIVE), register=True), timeout=120)
    assert (sorted(ack.registered), ack.inserted) == (feed.zones, 3 * HISTORY)
    app.scan()  # (the Scheduler may have scanned first: the counts are its or ours, the events the same)
    assert app.list(region=REGION) == []
    assert app.store.zones()[stuck].region == REGION and set(feed.zones) <= scan_states(app.store).keys()

    seen: dict[str, str] = {}  # id -> zone
    for chunk in (range(LIVE, LIVE + 6), range(LIVE + 6, LIVE + 12), range(LIVE + 12, LIVE + 24)):
        ack = app.readings.IngestReadings(feed.request(chunk), timeout=60)
        assert [r.zone for r in ack.rejected] == [zeros] * len(set(chunk) & set(ZEROS))
        app.scan()
        listed = app.list(region=REGION)
        for e in listed:
            assert seen.setdefault(e.id, e.zone) == e.zone
        if chunk.start == LIVE:  # all three under way
            assert sorted((e.zone, e.kind, e.open) for e in app.list(region=REGION, open_only=True)) == [
                (stuck, "flat_line", True), (spiky, "detector", True), (zeros, "zero_readings", True)]
    events = {e.zone: e for e in app.list(region=REGION)}
    assert len(app.list(region=REGION)) == 3 and set(seen) == {e.id for e in events.values()}, seen
    assert (events[stuck].id, events[stuck].kind, events[stuck].start, events[stuck].end, events[stuck].open) == (
        f"{stuck}:flat_line:{iso_z(STUCK[0])}", "flat_line", iso_z(STUCK[0]), iso_z(STUCK[-1]), False)
    assert events[spiky].kind == "detector" and events[spiky].start <= iso_z(SPIKE) <= events[spiky].end
    assert (events[zeros].id, events[zeros].severity, events[zeros].open) == (
        f"{zeros}:zero_readings:{iso_z(ZEROS[0])}", 3.0, False)
    assert app.list(region=REGION, open_only=True) == []
    assert [e.zone for e in app.list(region=REGION, zone=spiky)] == [spiky]
    assert {e.zone for e in app.list(region=REGION, since=iso_z(STUCK[-1]))} == {stuck}  # the latest to end
    assert len(app.list(region=REGION, limit=2)) == 2

    # HTTP: the same messages as proto3 JSON
    status, body = http_get(f"{app.url}/v1/anomalies/events?region={REGION}&zone={stuck}")
    assert status == 200 and [e["id"] for e in body["events"]] == [events[stuck].id], body
    status, body = http_get(f"{app.url}/v1/anomalies/events?region={REGION}&open_only=true")
    assert status == 200 and body == {}, body
    since = urllib.parse.quote(iso(STUCK[-1]))
    status, body = http_get(f"{app.url}/v1/anomalies/events?region={REGION}&since={since}&limit=10")
    assert status == 200 and [e["zone"] for e in body["events"]] == [stuck], body

    # bad input, named, over both transports
    for query, code, status_code, field in [
        ("", "INVALID_ARGUMENT", 400, "region:"), ("region=NOWHERE", "NOT_FOUND", 404, "region:"),
        (f"region={REGION}&zone=NOPE", "NOT_FOUND", 404, "zone:"),
        (f"region={REGION}&zone=Z000", "NOT_FOUND", 404, "zone:"),
        (f"region={REGION}&since=yesterday", "INVALID_ARGUMENT", 400, "since:"),
        (f"region={REGION}&limit=1001", "INVALID_ARGUMENT", 400, "limit:"),
    ]:
        status, body = http_get(f"{app.url}/v1/anomalies/events?{query}")
        assert (status, body["code"]) == (status_code, code) and body["message"].startswith(field), (query, body)
        kw = dict(urllib.parse.parse_qsl(query))
        kw = {k: int(v) if k == "limit" else v for k, v in kw.items()}
        with pytest.raises(grpc.RpcError) as err:
            app.list(**kw)
        assert err.value.code().name == code and err.value.details().startswith(field), (query, err.value.details())

    # the CLI: JSON as the RPC answers, and a table
    runner = CliRunner()
    result = runner.invoke(cli, ["anomalies", "--server", app.target, "--region", REGION, "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [e["id"] for e in json.loads(result.output)["events"]] == [e.id for e in app.list(region=REGION)]
    result = runner.invoke(cli, ["anomalies", "--server", app.target, "--region", REGION, "--zone", zeros],
                           catch_exceptions=False)
    assert result.exit_code == 0 and zeros in result.output and stuck not in result.output, result.output
    result = runner.invoke(cli, ["anomalies", "--server", app.target, "--region", "NOWHERE"])
    assert result.exit_code == 2 and "NOT_FOUND: region:" in result.output, result.output
