"""ListReadings (ReadingsService) and `GET /v1/readings` on the session's Serve application, over real gRPC
(through `serving.client.ReadingsClient`) and real HTTP: every answer is compared with what the store holds
and the two transports must agree to the byte of their JSON. Bad input is refused naming the field, with the
same code on both. Readings of our own go to zones of region READTEST (one quarter-hourly, one hourly),
removed at the end so that the other test files see the application as it was.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import json_format

from models.events import forget_zones
from models.store import Store, readings_table, state_table, zones_table
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.client import ReadingsClient, ReadingsError, to_frame
from serving.engine import ApiError
from serving.readings import MAX_POINTS_PER_ZONE, list_readings

OURS = "READTEST"
QUARTER = "RT_Q"  # 900 s readings
HOURLY = "RT_H"
START = pd.Timestamp("2024-05-01T00:00:00Z")
HOUR_S = 3600


@dataclass
class Api:
    client: ReadingsClient
    url: str
    store: Store  # the application's store, opened here too (compared with, and cleaned at the end)

    def both(self, **params) -> dict:
        """The answer over gRPC and over HTTP (asserted equal), as proto3 JSON."""
        message = self.client.list_readings(**params, timeout=60)
        over_grpc = json_format.MessageToDict(message, preserving_proto_field_name=True)
        status, over_http = self.http(**params)
        assert status == 200, over_http
        assert over_http == over_grpc
        return over_grpc

    def http(self, **params) -> tuple[int, dict]:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v not in ("", 0, (), None)}, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/v1/readings?{query}", timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def _ours() -> list[rpb.Reading]:
    quarter = [rpb.Reading(zone=QUARTER, timestamp=(START + pd.Timedelta(minutes=15 * i)).isoformat(),
                           value=500.0 + (i % 96)) for i in range(2 * 96)]  # two days
    hourly = [rpb.Reading(zone=HOURLY, timestamp=(START + pd.Timedelta(hours=h)).isoformat(), value=900.0 + h)
              for h in range(48) if not 10 <= h < 14]  # a 4-hour gap
    return quarter + hourly


@pytest.fixture(scope="module")
def api(serve_app) -> Iterator[Api]:
    store = Store.open(serve_app.config["applications"][0]["args"]["store"], migrate=False)
    client = ReadingsClient(serve_app.target, timeout=60)
    register = [rpb.ZoneSpec(zone=QUARTER, region=OURS, resolution_s=900, time_zone="UTC"),
                rpb.ZoneSpec(zone=HOURLY, region=OURS, time_zone="UTC")]
    try:
        ack = client.ingest(rpb.IngestReadingsRequest(readings=_ours(), register=register))
        assert (ack.inserted, list(ack.rejected)) == (2 * 96 + 44, []), ack
        yield Api(client, serve_app.url, store)
    finally:
        ours = [z for z, spec in store.zones().items() if spec.region == OURS]
        with store.engine.begin() as conn:
            forget_zones(conn, ours)  # their anomaly events and scan progress refer to them
            conn.execute(readings_table.delete().where(readings_table.c.zone.in_(ours)))
            conn.execute(zones_table.delete().where(zones_table.c.zone.in_(ours)))
            # the watermark moves on: the replicas reload the zone list
            conn.execute(state_table.update().values(watermark=state_table.c.watermark + 1))
        client.close()
        store.close()


def _iso(ts: np.ndarray) -> list[str]:
    return [pd.Timestamp(int(t), unit="s").strftime("%Y-%m-%dT%H:%M:%SZ") for t in ts]


def _expect(store: Store, zone: str, start: int | None, end: int | None) -> tuple[list[str], list[float]]:
    rows = store.readings([zone], start, end)
    return _iso(rows["ts"].to_numpy()), rows["value"].tolist()


def test_the_default_window_is_the_last_week_up_to_the_newest_reading(api: Api):
    answer = api.both(region="SYN")
    zones = sorted(z for z, spec in api.store.zones().items() if spec.region == "SYN")
    assert [s["zone"] for s in answer["series"]] == zones == ["Z000", "Z001", "Z002"]
    end = max(last for spec, last, _ in api.store.zone_status() if spec.region == "SYN") + HOUR_S
    assert answer["until"] == _iso([end])[0] and answer["since"] == _iso([end - 168 * HOUR_S])[0]
    assert int(answer["watermark"]) <= api.store.watermark()
    for series in answer["series"]:
        timestamps, values = _expect(api.store, series["zone"], end - 168 * HOUR_S, end)
        assert len(timestamps) == 168
        assert series["timestamps"] == timestamps and series["values"] == values  # exactly as stored
        assert series["resolution_s"] == 3600 and "truncated" not in series
    frame = to_frame(api.client.list_readings("SYN"))
    assert len(frame) == 3 * 168 and frame["timestamp"].dt.tz is not None
    assert frame["value"].tolist() == [v for s in answer["series"] for v in s["values"]]


def test_zones_hours_since_until_and_max_points_select_what_the_store_holds(api: Api):
    newest = api.both(region="SYN", zones=["Z002", "Z000"], hours=24)
    assert [s["zone"] for s in newest["series"]] == ["Z002", "Z000"]  # the request's order
    assert [len(s["values"]) for s in newest["series"]] == [24, 24]
    end = pd.Timestamp(newest["until"]).value // 10**9

    since, until = "2020-03-10T05:00:00Z", "2020-03-12T05:00:00+00:00"
    window = api.both(region="SYN", zones=["Z001"], since=since, until=until)
    lo, hi = pd.Timestamp(since).value // 10**9, pd.Timestamp(until).value // 10**9
    assert (window["since"], window["until"]) == ("2020-03-10T05:00:00Z", "2020-03-12T05:00:00Z")
    assert (window["series"][0]["timestamps"], window["series"][0]["values"]) == _expect(api.store, "Z001", lo, hi)
    assert len(window["series"][0]["values"]) == 48

    recent = _iso([end - 500 * HOUR_S])[0]
    open_end = api.both(region="SYN", zones=["Z000"], since=recent)  # until: the end of the newest reading
    assert open_end["until"] == newest["until"] and "truncated" not in open_end["series"][0]
    assert open_end["series"][0]["values"] == _expect(api.store, "Z000", end - 500 * HOUR_S, end)[1]
    before = api.both(region="SYN", zones=["Z000"], until=until, hours=6)  # hours before until
    assert before["series"][0]["timestamps"] == _expect(api.store, "Z000", hi - 6 * HOUR_S, hi)[0]

    cut = api.both(region="SYN", zones=["Z000"], since=recent, max_points=5)
    assert cut["series"][0]["truncated"] is True  # the newest five of the window
    assert cut["series"][0]["values"] == open_end["series"][0]["values"][-5:]
    capped = api.both(region="SYN", zones=["Z000"], since=since)  # more than a zone's limit in the window
    assert capped["series"][0]["truncated"] is True and len(capped["series"][0]["values"]) == MAX_POINTS_PER_ZONE
    assert capped["series"][0]["timestamps"][-1] == _iso([end - HOUR_S])[0]

    pair = api.both(region="PAIR")  # a region the server's configuration names
    assert [s["zone"] for s in pair["series"]] == ["Z000", "Z001"]

    outside = api.both(region="SYN", since="1990-01-01T00:00:00Z", until="1990-02-01T00:00:00Z")
    assert [(s["zone"], s.get("timestamps", []), s.get("values", [])) for s in outside["series"]] == [
        ("Z000", [], []), ("Z001", [], []), ("Z002", [], [])]  # times out of range: empty, not an error
    later = api.both(region="SYN", since="2099-01-01T00:00:00Z")
    assert all("values" not in s for s in later["series"]) and "until" not in later


def test_sub_hourly_readings_come_as_held_and_a_new_one_shows_at_once(api: Api):
    answer = api.both(region=OURS)
    by_zone = {s["zone"]: s for s in answer["series"]}
    quarter, hourly = by_zone[QUARTER], by_zone[HOURLY]
    assert quarter["resolution_s"] == 900 and len(quarter["values"]) == 2 * 96
    assert quarter["timestamps"][:2] == ["2024-05-01T00:00:00Z", "2024-05-01T00:15:00Z"]
    assert quarter["values"] == [500.0 + (i % 96) for i in range(2 * 96)]
    # the gap is not filled: readings come as held
    assert len(hourly["values"]) == 44 and "2024-05-01T10:00:00Z" not in hourly["timestamps"]
    assert answer["until"] == "2024-05-03T00:00:00Z"  # the newest reading (23:45) plus 15 minutes

    ack = api.client.ingest([(QUARTER, "2024-05-03T00:00:00Z", 777.0)])
    fresh = api.both(region=OURS, zones=[QUARTER], hours=1)
    assert int(fresh["watermark"]) >= ack.watermark
    assert fresh["series"][0]["timestamps"][-1] == "2024-05-03T00:00:00Z" and fresh["series"][0]["values"][-1] == 777.0
    assert len(fresh["series"][0]["values"]) == 4 and fresh["until"] == "2024-05-03T00:15:00Z"


@pytest.mark.parametrize(("params", "code", "status", "words"), [
    ({"region": "NOPE"}, "NOT_FOUND", 404, "region: unknown region 'NOPE'"),
    ({"region": "SYN", "zones": ["Z000", "Z9"]}, "NOT_FOUND", 404, "zones[1]: unknown zone 'Z9' in region SYN"),
    ({"region": "PAIR", "zones": ["Z002"]}, "NOT_FOUND", 404, "zones[0]: unknown zone 'Z002' in region PAIR"),
    ({"region": "SYN", "zones": ["Z000", "Z000"]}, "INVALID_ARGUMENT", 400, "zones[1]: 'Z000' is listed twice"),
    ({"region": "SYN", "since": "yesterday"}, "INVALID_ARGUMENT", 400, "since: cannot read 'yesterday'"),
    ({"region": "SYN", "until": "2019-13-40"}, "INVALID_ARGUMENT", 400, "until: cannot read '2019-13-40'"),
    ({"region": "SYN", "since": "2019-03-02", "until": "2019-03-01"}, "INVALID_ARGUMENT", 400,
     "since: '2019-03-02' is not before until '2019-03-01'"),
    ({"region": "SYN", "since": "2019-03-01", "until": "2019-03-02", "hours": 5}, "INVALID_ARGUMENT", 400,
     "hours: give hours or both since and until"),
    ({"region": "SYN", "max_points": MAX_POINTS_PER_ZONE + 1}, "INVALID_ARGUMENT", 400,
     f"max_points: at most {MAX_POINTS_PER_ZONE:,} readings per zone, got {MAX_POINTS_PER_ZONE + 1:,}"),
])
def test_bad_input_is_refused_naming_the_field(api: Api, params: dict, code: str, status: int, words: str):
    with pytest.raises(ReadingsError) as err:
        api.client.list_readings(**params, timeout=30)
    assert err.value.code == getattr(grpc.StatusCode, code) and str(err.value.message).startswith(words), err.value
    got, body = api.http(**params)
    assert (got, body["code"]) == (status, code) and body["message"].startswith(words), body


def test_http_numbers_that_are_not_numbers_are_named(api: Api):
    for name, text in (("hours", "a week"), ("max_points", "-3")):
        status, body = api.http(region="SYN", **{name: text})
        assert (status, body["code"]) == (400, "INVALID_ARGUMENT") and body["message"].startswith(f"{name}: "), body


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path, synthetic_csv: Path) -> Iterator[Store]:
    """A store of its own, seeded with the three synthetic zones (500 days), in either database."""
    url = request.getfixturevalue("postgres_db") if request.param == "postgresql" else tmp_path / "store.db"
    s = Store.open(url)
    s.seed(synthetic_csv, region="SYN")
    yield s
    s.close()


def test_the_newest_readings_of_a_window_are_ranked_in_either_database(store: Store):
    everything = store.readings(["Z000", "Z002"])
    newest = store.readings(["Z000", "Z002"], newest=5)
    expect = everything.groupby("zone", sort=True).tail(5).reset_index(drop=True)
    pd.testing.assert_frame_equal(newest, expect)
    lo, hi = int(everything["ts"].iloc[100]), int(everything["ts"].iloc[200])
    windowed = store.readings(["Z000"], lo, hi, newest=7)
    assert windowed["ts"].tolist() == list(range(hi - 7 * HOUR_S, hi, HOUR_S))


def test_the_answer_limit_is_checked_before_anything_is_read(store: Store):
    """The limit of readings per answer, counted from what the store knows of each zone (its count and newest
    reading): a client can predict it. With a small limit."""
    request = rpb.ListReadingsRequest(region="SYN", hours=100)  # 3 zones x 100 hours
    with pytest.raises(ApiError) as err:
        list_readings(store, {}, request, max_points_per_response=299)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.message.startswith("series: up to 300 readings exceed this server's limit of 299 per "
                                        "ListReadings answer"), err.value.message
    assert sum(len(s.values) for s in list_readings(store, {}, request, max_points_per_response=300).series) == 300
    request.max_points = 99  # per zone: 297 in all
    answer = list_readings(store, {}, request, max_points_per_response=299)
    assert [(len(s.values), s.truncated) for s in answer.series] == [(99, True)] * 3
