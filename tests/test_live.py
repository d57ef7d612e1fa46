"""Live readings end to end, with real components only.

A. ReadingsService on the session's one Serve application (`serve_app`), over gRPC and HTTP: every
   rejection reason beside a reading that still lands, registration, the batch limits, idempotent resends
   and corrections, and StreamReadings' one acknowledgement per batch. Readings go to zones of their own
   (regions LIVETEST and LIVETEST_NY), never to SYN's, and those zones are removed at the end, so the
   other test files see the application as it was.
B. A separate server (`python -m serving.server`, 2 replicas, its own local Ray) on a store seeded with
   the synthetic zones less their last 40 hours, which are then fed live: freshness on both replicas,
   an outage of one zone (fallback), and durability across a kill -9 of the whole server.
C. The store on PostgreSQL: the service's migration of an empty database, and a region forecast equal to
   the same over SQLite.

Tests run in file order (B's tests feed the hours one after another). Serve instances on one machine can
answer each other's calls through ports Ray Serve binds with SO_REUSEPORT (see `live_server`): B's server is
given ports of its own; the session's application relies on being the only Serve on the machine.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from servers import ServerProcess, running, server_process

from models.events import forget_zones
from models.store import Store, ZoneSpec, readings_table, state_table, zones_table
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc

REPO = Path(__file__).resolve().parent.parent
HOUR = pd.Timedelta(hours=1)


def iso(stamp: pd.Timestamp) -> str:
    """An instant as ISO 8601 with its UTC offset (naive stamps are taken as UTC)."""
    return (stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")).isoformat()


def seconds(stamp: pd.Timestamp) -> int:
    return int((stamp.tz_localize("UTC") if stamp.tz is None else stamp).timestamp())


@dataclass
class Ack:
    """An IngestAck from either transport, in one form."""

    batch: int
    received: int
    inserted: int
    replaced: int
    unchanged: int
    rejected: list[tuple[int, str, str, str]]  # index, zone, timestamp, reason
    watermark: int
    registered: list[str]

    @classmethod
    def of(cls, message: rpb.IngestAck | dict) -> Ack:
        d = message if isinstance(message, dict) else json_format.MessageToDict(
            message, preserving_proto_field_name=True)
        return cls(int(d.get("batch", 0)), int(d.get("received", 0)), int(d.get("inserted", 0)),
                   int(d.get("replaced", 0)), int(d.get("unchanged", 0)),
                   [(int(r.get("index", 0)), r.get("zone", ""), r.get("timestamp", ""), r.get("reason", ""))
                    for r in d.get("rejected", [])],
                   int(d.get("watermark", 0)), list(d.get("registered", [])))


class RefusedError(Exception):
    """An ingest answered with an error: the gRPC code name (HTTP: the body's code) and message."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.code, self.message, self.status = code, message, status


Reading = tuple[str, str, float]  # zone, timestamp text, value


def _request(readings: list[Reading], register: list[dict] = ()) -> rpb.IngestReadingsRequest:
    return rpb.IngestReadingsRequest(readings=[rpb.Reading(zone=z, timestamp=t, value=v) for z, t, v in readings],
                                     register=[rpb.ZoneSpec(**s) for s in register])


def ingest_grpc(stub: rpb_grpc.ReadingsServiceStub, readings: list[Reading], register: list[dict] = ()) -> Ack:
    try:
        return Ack.of(stub.IngestReadings(_request(readings, register), timeout=60))
    except grpc.RpcError as err:
        raise RefusedError(err.code().name, err.details() or "") from None


def _json_double(v: float) -> float | str:
    """proto3 JSON's form of a double: NaN and the infinities are strings."""
    if math.isnan(v):
        return "NaN"
    return ("Infinity" if v > 0 else "-Infinity") if math.isinf(v) else v


def http(url: str, body: Any = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ingest_http(base: str, readings: list[Reading], register: list[dict] = ()) -> Ack:
    body = {"readings": [{"zone": z, "timestamp": t, "value": _json_double(v)} for z, t, v in readings],
            "register": list(register)}
    status, answer = http(base + "/v1/readings", body)
    if status != 200:
        raise RefusedError(answer.get("code", ""), answer.get("message", ""), status)
    return Ack.of(answer)


def stored(store: Store, zone: str, stamp: pd.Timestamp) -> float | None:
    """The value the store holds for `zone` at `stamp` (None: nothing)."""
    rows = store.readings([zone], seconds(stamp), seconds(stamp) + 1)
    return float(rows["value"].iloc[0]) if len(rows) else None


def revision(store: Store, zone: str, stamp: pd.Timestamp) -> int:
    with store.reader.connect() as conn:
        return int(conn.execute(sa.select(readings_table.c.revision).where(
            readings_table.c.zone == zone, readings_table.c.ts == seconds(stamp))).scalar_one())


# ================================================================================================ A
# The session's application. Zones of our own: LT1 and LT2 (UTC) in LIVETEST, LTNY (America/New_York) in
# LIVETEST_NY; LT1 gets a week of readings near 1000 MW first, the reference of the absurd-value rule.

LIVE, LIVE_NY = "LIVETEST", "LIVETEST_NY"
OUR_REGIONS = (LIVE, LIVE_NY)
REFERENCE = pd.Timestamp("2024-01-01T00:00:00", tz="UTC")  # LT1: a week from here
_hours = itertools.count()  # fresh hours after the reference week, one per use, for readings that must land


def fresh(n: int = 1) -> list[pd.Timestamp]:
    return [REFERENCE + pd.Timedelta(days=7) + next(_hours) * HOUR for _ in range(n)]


@dataclass
class Session:
    stub: rpb_grpc.ReadingsServiceStub
    forecasts: pb_grpc.ForecastServiceStub
    url: str
    store: Store  # the application's store, opened here too (read and compared, and cleaned at the end)

    def ingest(self, transport: str, readings: list[Reading], register: list[dict] = ()) -> Ack:
        if transport == "grpc":
            return ingest_grpc(self.stub, readings, register)
        return ingest_http(self.url, readings, register)


@pytest.fixture(scope="module")
def session(serve_app):
    store = Store.open(serve_app.config["applications"][0]["args"]["store"], migrate=False)
    with grpc.insecure_channel(serve_app.target) as channel:
        s = Session(rpb_grpc.ReadingsServiceStub(channel), pb_grpc.ForecastServiceStub(channel), serve_app.url, store)
        week = [("LT1", iso(REFERENCE + h * HOUR), 1000.0 + 100.0 * math.sin(2 * math.pi * h / 24))
                for h in range(168)]
        register = [{"zone": "LT1", "region": LIVE, "time_zone": "UTC"},
                    {"zone": "LT2", "region": LIVE, "resolution_s": 3600, "time_zone": "UTC"},
                    {"zone": "LTNY", "region": LIVE_NY, "time_zone": "America/New_York"}]
        try:
            ack = s.ingest("grpc", week, register)
            assert (sorted(ack.registered), ack.inserted, ack.rejected) == (["LT1", "LT2", "LTNY"], 168, [])
            yield s
        finally:
            try:
                _remove_our_zones(s)
            finally:
                store.close()


def _remove_our_zones(s: Session) -> None:
    """Put the session's application back as it was: our zones and readings deleted, the watermark moved
    on so that the replicas reload the zone list (and ModelInfo lists only SYN and PAIR again)."""
    ours = [z for z, spec in s.store.zones().items() if spec.region in OUR_REGIONS]
    with s.store.engine.begin() as conn:
        forget_zones(conn, ours)  # their anomaly events and scan progress refer to them
        conn.execute(readings_table.delete().where(readings_table.c.zone.in_(ours)))
        conn.execute(zones_table.delete().where(zones_table.c.zone.in_(ours)))
        conn.execute(state_table.update().values(watermark=state_table.c.watermark + 1))
    regions = {r.name for r in s.forecasts.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).regions}
    assert not regions & set(OUR_REGIONS), regions


HTTP_STATUS = {"grpc": {"INVALID_ARGUMENT": None, "RESOURCE_EXHAUSTED": None},  # gRPC: no HTTP status
               "http": {"INVALID_ARGUMENT": 400, "RESOURCE_EXHAUSTED": 413}}


@pytest.fixture(params=["grpc", "http"])
def transport(request) -> str:
    return request.param


def _future_hour() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").floor("h") + 3 * HOUR


# reason -> (the bad reading given a fresh hour, what its reason says)
REJECTIONS = {
    "nan": (lambda t: ("LT1", iso(t), float("nan")), "is not a finite number"),
    "inf": (lambda t: ("LT1", iso(t), float("inf")), "is not a finite number"),
    "-inf": (lambda t: ("LT1", iso(t), float("-inf")), "is not a finite number"),
    "zero": (lambda t: ("LT1", iso(t), 0.0), "value 0 is not positive"),
    "negative": (lambda t: ("LT1", iso(t), -5.0), "value -5 is not positive"),
    "absurd": (lambda t: ("LT1", iso(t), 1e6), "is absurd: outside 0.2..5 x the zone's median"),
    "unreadable time": (lambda t: ("LT1", "next tuesday", 1000.0), "time cannot be read as ISO 8601"),
    "off the grid": (lambda t: ("LT1", iso(t + pd.Timedelta(minutes=30)), 1000.0),
                     "not on the zone's 60-minute grid"),
    "future": (lambda t: ("LT1", iso(_future_hour()), 1000.0), "h in the future"),
    "unknown zone": (lambda t: ("NO_SUCH_ZONE", iso(t), 1000.0), "unknown zone 'NO_SUCH_ZONE'"),
    "ambiguous": (lambda t: ("LTNY", "2024-11-03T01:00:00", 1000.0),
                  "time is ambiguous in America/New_York"),
}


@pytest.mark.parametrize("reason", list(REJECTIONS))
def test_a_rejected_reading_is_listed_and_the_good_one_lands(session: Session, transport: str, reason: str):
    make, says = REJECTIONS[reason]
    bad_hour, good_hour = fresh(2)
    good, bad = ("LT1", iso(good_hour), 1003.25), make(bad_hour)
    ack = session.ingest(transport, [good, bad])
    assert (ack.received, ack.inserted, ack.replaced, ack.unchanged) == (2, 1, 0, 0), ack
    assert len(ack.rejected) == 1 and ack.rejected[0][:3] == (1, *bad[:2]), ack.rejected
    assert says in ack.rejected[0][3], ack.rejected[0][3]
    assert stored(session.store, "LT1", good_hour) == 1003.25
    if reason not in ("unreadable time", "unknown zone", "ambiguous", "future"):
        assert stored(session.store, "LT1", bad_hour) is None


def test_naive_local_times_are_the_zones_wall_clock(session: Session, transport: str):
    """Beside an ambiguous one, an unambiguous naive time of the New York zone lands at its UTC instant;
    the repeated hour sent with its offset lands too."""
    local = "2024-11-03T03:00:00" if transport == "grpc" else "2024-11-03T04:00:00"
    with_offset = "2024-11-03T01:00:00-04:00" if transport == "grpc" else "2024-11-03T01:00:00-05:00"
    ack = session.ingest(transport, [("LTNY", "2024-11-03T01:00:00", 900.0), ("LTNY", local, 901.0),
                                     ("LTNY", with_offset, 902.0)])
    assert (ack.inserted, [r[0] for r in ack.rejected]) == (2, [0]), ack
    assert stored(session.store, "LTNY", pd.Timestamp(local).tz_localize("America/New_York")) == 901.0
    assert stored(session.store, "LTNY", pd.Timestamp(with_offset)) == 902.0


def test_an_unknown_zone_registered_in_the_request_is_accepted(session: Session, transport: str):
    zone = "LT3" if transport == "grpc" else "LT4"
    (hour,) = fresh()
    reading = (zone, iso(hour), 512.5)
    refused = session.ingest(transport, [reading, ("LT1", iso(fresh()[0]), 1000.0)])
    assert refused.inserted == 1 and "unknown zone" in refused.rejected[0][3]
    ack = session.ingest(transport, [reading], [{"zone": zone, "region": LIVE, "time_zone": "UTC"}])
    assert (ack.registered, ack.inserted, ack.rejected) == ([zone], 1, []), ack
    assert stored(session.store, zone, hour) == 512.5
    # the same registration again is fine and registers nothing; another spec for the zone is refused
    again = session.ingest(transport, [reading], [{"zone": zone, "region": LIVE, "time_zone": "UTC"}])
    assert (again.registered, again.unchanged) == ([], 1)
    with pytest.raises(RefusedError) as err:
        session.ingest(transport, [reading], [{"zone": zone, "region": LIVE, "time_zone": "America/Chicago"}])
    assert err.value.code == "INVALID_ARGUMENT" and err.value.message.startswith("register:"), err.value
    assert err.value.status == HTTP_STATUS[transport]["INVALID_ARGUMENT"]
    # ListZones (gRPC) and GET /v1/zones (HTTP) know it
    listed = session.stub.ListZones(rpb.ListZonesRequest(region=LIVE), timeout=30)
    mine = next(z for z in listed.zones if z.spec.zone == zone)
    assert (mine.spec.region, mine.spec.time_zone, mine.spec.resolution_s, mine.readings) == (LIVE, "UTC", 3600, 1)
    assert pd.Timestamp(mine.last_reading) == hour
    assert listed.default_region == "SYN"  # the server's own region (the session app's `region`), not LIVE
    status, answer = http(session.url + f"/v1/zones?region={LIVE}")
    assert status == 200 and zone in [z["spec"]["zone"] for z in answer["zones"]], answer
    assert answer["default_region"] == "SYN"


def test_a_batch_of_only_rejected_readings_is_refused_naming_the_reasons(session: Session, transport: str):
    readings = [("LT1", iso(fresh()[0]), float("nan")), ("LT1", "2024-13-45T00:00:00Z", 1000.0),
                ("LT2", iso(fresh()[0]), 0.0)]
    with pytest.raises(RefusedError) as err:
        session.ingest(transport, readings)
    message = err.value.message
    assert err.value.code == "INVALID_ARGUMENT" and err.value.status == HTTP_STATUS[transport]["INVALID_ARGUMENT"]
    assert message.startswith("readings: all 3 readings were rejected"), message
    for part in ("readings[0]: value nan is not a finite number", "readings[1]: time cannot be read",
                 "readings[2]: value 0 is not positive"):
        assert part in message, message


def test_an_oversized_batch_is_refused_naming_the_limit(session: Session, transport: str):
    start = pd.Timestamp("2023-01-01T00:00:00", tz="UTC")
    readings = [("LT2", iso(start + i * HOUR), 1000.0) for i in range(10_001)]
    before = session.store.watermark()
    with pytest.raises(RefusedError) as err:
        session.ingest(transport, readings)
    assert err.value.code == "RESOURCE_EXHAUSTED", err.value
    assert err.value.status == HTTP_STATUS[transport]["RESOURCE_EXHAUSTED"]
    assert "10,001" in err.value.message and "10,000" in err.value.message, err.value.message
    assert "max_readings_per_batch" in err.value.message, err.value.message
    assert session.store.watermark() == before and stored(session.store, "LT2", start) is None


def test_a_resend_changes_nothing_and_a_correction_replaces_one(session: Session, transport: str):
    other = "http" if transport == "grpc" else "grpc"
    hours = fresh(6)
    readings = [("LT2", iso(t), 800.0 + i) for i, t in enumerate(hours)]
    first = session.ingest(transport, readings)
    assert (first.inserted, first.replaced, first.unchanged, first.rejected) == (6, 0, 0, [])
    for via in (transport, other):  # a resend over either transport
        again = session.ingest(via, readings)
        assert (again.inserted, again.replaced, again.unchanged, again.rejected) == (0, 0, 6, []), (via, again)
        assert again.watermark == first.watermark  # nothing committed
    corrected = list(readings)
    corrected[2] = ("LT2", corrected[2][1], 855.5)
    fix = session.ingest(transport, corrected)
    assert (fix.inserted, fix.replaced, fix.unchanged) == (0, 1, 5) and fix.watermark > first.watermark
    assert stored(session.store, "LT2", hours[2]) == 855.5 and revision(session.store, "LT2", hours[2]) == 1
    assert stored(session.store, "LT2", hours[3]) == 803.0 and revision(session.store, "LT2", hours[3]) == 0
    resend = session.ingest(other, corrected)  # the correction resent: unchanged
    assert (resend.replaced, resend.unchanged, resend.watermark) == (0, 6, fix.watermark)


def test_stream_readings_acknowledges_each_batch_in_order_after_its_commit(session: Session):
    batches = [[("LT2", iso(t), 700.0 + k) for t in fresh(3)] for k in range(3)]
    batches[1].append(("LT2", iso(fresh()[0]), float("nan")))  # one rejected: the rest lands
    batches.insert(2, [("LT2", "yesterday", 700.0), ("NOPE", iso(fresh()[0]), 700.0)])  # all rejected: listed
    batches.append([("LT1", iso(t), 1000.0) for t in fresh(40)])
    acks = []
    for ack in session.stub.StreamReadings(iter([_request(b) for b in batches]), timeout=60):
        ack = Ack.of(ack)
        acks.append(ack)
        for zone, stamp, value in batches[ack.batch]:  # sent after the commit: the store has the batch
            if math.isfinite(value) and zone != "NOPE" and stamp != "yesterday":
                assert stored(session.store, zone, pd.Timestamp(stamp)) == value
    assert [a.batch for a in acks] == list(range(len(batches)))
    assert [a.received for a in acks] == [len(b) for b in batches]
    assert [a.inserted for a in acks] == [3, 3, 0, 3, 40]
    assert [[r[0] for r in a.rejected] for a in acks] == [[], [3], [0, 1], [], []]
    written = [a.watermark for a in acks if a.inserted]
    assert written == sorted(set(written)) and acks[2].watermark == acks[1].watermark


def test_stream_readings_ends_at_an_oversized_batch(session: Session):
    first, last = fresh(2)
    oversized = [("LT2", iso(REFERENCE), 1000.0)] * 10_001
    requests = [_request([("LT2", iso(first), 650.0)]), _request(oversized), _request([("LT2", iso(last), 651.0)])]
    acks = []
    with pytest.raises(grpc.RpcError) as err:
        for ack in session.stub.StreamReadings(iter(requests), timeout=60):
            acks.append(Ack.of(ack))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert err.value.details().startswith("batch 1: readings: 10,001 readings exceed"), err.value.details()
    assert [(a.batch, a.inserted) for a in acks] == [(0, 1)]
    assert stored(session.store, "LT2", first) == 650.0 and stored(session.store, "LT2", last) is None


# ================================================================================================ B
# A server of its own in a subprocess: 2 replicas, its own Ray (own temp dir, no RAY_* of this session).

ZONES = ("Z000", "Z001", "Z002")
DROPPED = 40  # hours at the end of the synthetic data kept out of the seed, fed live


@dataclass
class LiveServer(ServerProcess):
    """The server of part B, with the synthetic data's truth and what it acknowledged."""

    truth: pd.DataFrame = None  # the whole synthetic data: zone, timestamp (naive UTC), load_mw
    dropped: list[pd.Timestamp] = field(default_factory=list)  # the hours left out of the seed, in order
    acked: dict[tuple[str, int], float] = field(default_factory=dict)  # every acknowledged reading

    @property
    def readings(self) -> rpb_grpc.ReadingsServiceStub:
        return rpb_grpc.ReadingsServiceStub(self.channel)

    @property
    def forecasts(self) -> pb_grpc.ForecastServiceStub:
        return pb_grpc.ForecastServiceStub(self.channel)

    def value(self, zone: str, hour: pd.Timestamp) -> float:
        return float(self.truth.loc[(zone, hour), "load_mw"])

    def feed(self, rows: list[tuple[str, pd.Timestamp]]) -> Ack:
        """IngestReadings of the true values of (zone, hour) pairs; the acknowledged ones are remembered."""
        readings = [(z, iso(h), self.value(z, h)) for z, h in rows]
        ack = ingest_grpc(self.readings, readings)
        assert ack.rejected == [] and ack.inserted == len(rows), ack
        self.acked.update({(z, seconds(h)): v for (z, h), (_, _, v) in zip(rows, readings)})
        return ack


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_bundle_dir: Path, synthetic_csv: Path):

    root = tmp_path_factory.mktemp("live")
    frame = pd.read_csv(synthetic_csv, parse_dates=["timestamp"])
    hours = sorted(frame["timestamp"].unique())
    cut = pd.Timestamp(hours[-DROPPED])
    seed = root / "seed.csv"
    frame[frame["timestamp"] < cut].to_csv(seed, index=False)
    args = {"store": str(root / "store.db"), "data": str(seed), "region": "SYN"}
    truth = frame.set_index(["zone", "timestamp"]).sort_index()
    server = server_process(root, model=tiny_bundle_dir, args=args, cls=LiveServer, truth=truth,
                            dropped=[pd.Timestamp(h) for h in hours[-DROPPED:]])
    with running(server):
        yield server


def model_infos(stub: pb_grpc.ForecastServiceStub, replicas: int = 2, timeout_s: float = 60) -> dict[str, pb.ModelInfo]:
    """GetModelInfo, concurrently and again, until `replicas` replicas have answered: replica -> its answer."""
    seen: dict[str, pb.ModelInfo] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < replicas:
        assert time.monotonic() < deadline, f"only replicas {sorted(seen)} answered"
        for call in [stub.GetModelInfo.future(pb.GetModelInfoRequest(), timeout=30) for _ in range(8)]:
            info = call.result()
            # another service on this machine answering here would be a routing fault, not ours to test
            assert info.name == "tiny-lstm", f"replica {info.stats.replica} serves {info.bundle_path}"
            seen[info.stats.replica] = info
    return seen


def history_end(info: pb.ModelInfo, region: str = "SYN") -> str:
    return next(r.history_end for r in info.regions if r.name == region)


def forecast_everywhere(server: LiveServer, n: int = 12, rounds: int = 10) -> list[pb.ForecastRegionResponse]:
    """ForecastRegion(SYN) without issue_time, `n` at once, repeated until both replicas have answered (Serve's
    router may send one round all to one replica, e.g. right after a restart); every answer is returned."""
    stub = server.forecasts
    before = {r: i.stats.requests for r, i in model_infos(stub).items()}
    answers = []
    for _ in range(rounds):
        answers += [c.result() for c in [stub.ForecastRegion.future(
            pb.ForecastRegionRequest(region="SYN", horizon=24), timeout=60) for _ in range(n)]]
        after = {r: i.stats.requests for r, i in model_infos(stub).items()}
        assert sorted(after) == sorted(before), "a replica was replaced"
        if all(after[r] > before[r] for r in after):
            return answers
    raise AssertionError(f"{rounds} rounds of {n} requests did not reach both replicas: {before} -> {after}")


def test_an_acknowledged_hour_is_in_every_replicas_next_forecast(live_server: LiveServer):
    hour = live_server.dropped[0]
    infos = model_infos(live_server.forecasts)
    assert {history_end(i) for i in infos.values()} == {(hour - HOUR).isoformat()}  # the seed's last hour
    live_server.feed([(z, hour) for z in ZONES])
    infos = model_infos(live_server.forecasts)
    assert len(infos) == 2 and {r: history_end(i) for r, i in infos.items()} == {r: hour.isoformat() for r in infos}
    for answer in forecast_everywhere(live_server):
        assert answer.issue_time == (hour + HOUR).isoformat() and answer.fallback_zones == 0
        assert [z.last_reading for z in answer.zones] == [iso(hour)] * 3


def test_a_zone_in_outage_gets_a_fallback_and_the_region_follows_the_others(live_server: LiveServer):
    behind = live_server.dropped[0]  # Z002's last reading
    hours = live_server.dropped[1:33]
    live_server.feed([(z, h) for h in hours for z in ("Z000", "Z001")])
    for answer in forecast_everywhere(live_server, n=6):
        assert answer.issue_time == (hours[-1] + HOUR).isoformat()
        zones = {z.name: z for z in answer.zones}
        assert list(zones) == list(ZONES) and answer.fallback_zones == 1
        assert zones["Z000"].fallback == zones["Z001"].fallback == ""
        assert f"no reading for {len(hours)} h" in zones["Z002"].fallback, zones["Z002"].fallback
        assert behind.isoformat() in zones["Z002"].fallback, zones["Z002"].fallback
        assert zones["Z002"].last_reading == iso(behind) and zones["Z000"].last_reading == iso(hours[-1])
        points = {name: np.asarray(z.point, np.float64) for name, z in zones.items()}
        assert all(len(p) == 24 for p in points.values())
        assert np.isfinite(points["Z002"]).all() and (points["Z002"] > 0).all()
        np.testing.assert_allclose(np.asarray(answer.total.point), sum(points.values()), rtol=1e-5)
        assert list(zones["Z002"].timestamps) == list(answer.total.timestamps)
        assert answer.total.timestamps[0] == answer.issue_time
    assert len({a.SerializeToString(deterministic=True) for a in forecast_everywhere(live_server, n=6)}) == 1


def test_acknowledged_readings_survive_a_kill_9_of_the_whole_server(live_server: LiveServer):
    dropped = live_server.dropped
    rows = [(z, h) for h in dropped[33:] for z in ("Z000", "Z001")] + [("Z002", h) for h in dropped[1:]]
    ack = live_server.feed(rows)
    live_server.kill()  # right after the acknowledgement

    store = Store.open(live_server.store_path, migrate=False)
    try:
        held = store.readings(list(ZONES), seconds(dropped[0]))
        got = {(z, int(t)): float(v) for z, t, v in zip(held["zone"], held["ts"], held["value"])}
        assert got == live_server.acked  # every acknowledged reading, value for value, and nothing else
        assert store.watermark() == ack.watermark
    finally:
        store.close()

    live_server.start()  # the same command on the same store (its seed file is known: not read again)
    last = dropped[-1]
    infos = model_infos(live_server.forecasts)
    assert {history_end(i) for i in infos.values()} == {last.isoformat()}
    for answer in forecast_everywhere(live_server, n=6):
        assert answer.issue_time == (last + HOUR).isoformat() and answer.fallback_zones == 0
        assert answer.watermark == ack.watermark


# ================================================================================================ C
# PostgreSQL

def test_the_service_migrates_an_empty_postgres_database(postgres_db: str):
    from alembic.script import ScriptDirectory

    from models.migrations import config, current

    assert current(postgres_db) is None
    store = Store.open(postgres_db)  # what a replica does at start-up
    try:
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"zones", "readings", "store_state", "sources", "alembic_version"} <= tables, tables
        assert current(postgres_db) == ScriptDirectory.from_config(config()).get_current_head()
        assert (store.watermark(), store.zones()) == (0, {})
        Store.open(postgres_db).close()  # a second start finds nothing to do
        result = store.ingest(["PG1"], ["2024-01-01T00:00:00Z"], [42.0], register=[ZoneSpec("PG1", "PGR")])
        assert (result.inserted, result.registered, result.watermark) == (1, ["PG1"], 1)
    finally:
        store.close()


def test_a_region_forecast_over_postgres_equals_the_same_over_sqlite(postgres_db: str, tiny_bundle_dir: Path,
                                                                      synthetic_csv: Path, tmp_path: Path):
    from models.bundle import load_bundle
    from serving.engine import Engine

    bundle = load_bundle(tiny_bundle_dir)
    requests = [pb.ForecastRegionRequest(region="SYN", horizon=48),
                # an issue time older than the replica's tail: its window is read from the store
                pb.ForecastRegionRequest(region="SYN", horizon=24, issue_time="2020-09-01T00:00:00", zones=["Z002"])]
    answers = {}
    for name, store in (("postgresql", postgres_db), ("sqlite", tmp_path / "store.db")):
        engine = Engine.from_data(bundle, synthetic_csv, region="SYN", store=store)
        try:
            assert engine.live.store.dialect == name
            answers[name] = [engine.run([engine.region_job(r)])[0][0] for r in requests]
        finally:
            engine.live.store.close()
    for pg, lite in zip(answers["postgresql"], answers["sqlite"]):
        assert pg.fallback_zones == 0 and [z.name for z in pg.zones] == [z.name for z in lite.zones]
        assert pg == lite  # the same message: issue time, every value, last readings, watermark
