"""`energyopt ingest` and `energyopt replay`, and the client's batching: batches sorted stably, a daylight-saving
fall-back pair never parted, registrations on the first batch only; ingest into a real SQLite store, and over
StreamReadings against an in-process ReadingsService that writes to a real store (the Ray Serve service is
tested end to end elsewhere)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from energyopt.cli import app
from models.store import Store, StoreError, ZoneSpec, plan_batches
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc
from serving.client import ReadingsClient, ReadingsError, batches_from_frame, iso_timestamps

runner = CliRunner()


def run(*args, input=None):  # noqa: A002
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame({"zone": [r[0] for r in rows], "timestamp": pd.to_datetime([r[1] for r in rows]),
                         "load_mw": [float(r[2]) for r in rows]})


def hourly_csv(path, zones=("A", "B"), hours=72, bad=()):
    """Hourly readings from 2021-01-01; `bad` holds (zone, hour) whose value is 0."""
    lines = ["zone,timestamp,load_mw"]
    for h in range(hours):
        stamp = pd.Timestamp("2021-01-01") + pd.Timedelta(hours=h)
        lines += [f"{z},{stamp:%Y-%m-%d %H:%M},{0 if (z, h) in bad else 1000 + 10 * i + h % 24}"
                  for i, z in enumerate(zones)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- batching

def test_batches_are_sorted_by_zone_and_time_and_keep_file_order_among_equals():
    table = frame([("B", "2021-01-01 02:00", 1), ("A", "2021-01-01 01:00", 2), ("B", "2021-01-01 00:00", 3),
                   ("A", "2021-01-01 01:00", 4), ("A", "2021-01-01 00:00", 5), ("B", "2021-01-01 02:00", 6)])
    ordered, bounds = plan_batches(table, batch=100)
    assert bounds == [(0, 6)]
    assert list(ordered["load_mw"]) == [5, 2, 4, 3, 1, 6]  # equal keys (2, 4) and (1, 6) in file order
    assert list(ordered.index) == [4, 1, 3, 2, 0, 5]  # rows of the file, for reports
    [request] = batches_from_frame(table, batch=100)
    assert [(r.zone, r.timestamp, r.value) for r in request.readings][:3] == [
        ("A", "2021-01-01T00:00:00", 5.0), ("A", "2021-01-01T01:00:00", 2.0), ("A", "2021-01-01T01:00:00", 4.0)]


def test_batch_sizes_and_registrations_on_the_first_batch_only():
    table = frame([("A", pd.Timestamp("2021-01-01") + pd.Timedelta(hours=h), 100 + h) for h in range(10)])
    specs = [ZoneSpec("A", "R", 3600, "UTC")]
    batches = list(batches_from_frame(table, batch=3, register=specs))
    assert [len(b.readings) for b in batches] == [3, 3, 3, 1]
    assert [len(b.register) for b in batches] == [1, 0, 0, 0]
    assert batches[0].register[0] == rpb.ZoneSpec(zone="A", region="R", resolution_s=3600, time_zone="UTC")
    assert [r.value for b in batches for r in b.readings] == [100.0 + h for h in range(10)]
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches(table, batch=0)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 7, 1000])
def test_a_zone_and_time_is_never_parted_across_batches(batch):
    rng = np.random.default_rng(batch)
    # two zones, hours 0..19; some hours appear twice (a fall-back pair) and one three times
    rows = [(z, pd.Timestamp("2021-11-07") + pd.Timedelta(hours=h), 1000 + h)
            for z in ("A", "B") for h in range(20) for _ in range(3 if h == 9 else 2 if h % 4 == 1 else 1)]
    table = frame([rows[i] for i in rng.permutation(len(rows))])
    ordered, bounds = plan_batches(table, batch)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(table)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:]))  # contiguous, none empty
    keys = list(zip(ordered["zone"], ordered["timestamp"]))
    assert keys == sorted(keys)
    for start, end in bounds:
        assert end == len(keys) or keys[end - 1] != keys[end], (batch, start, end)
        # longer than `batch` only when one zone and time alone has more rows
        assert end - start <= max(batch, 3)
    requests = list(batches_from_frame(table, batch))
    assert [len(r.readings) for r in requests] == [e - s for s, e in bounds]


def test_the_fall_back_pair_stays_in_one_batch_at_the_cut():
    # 01:00 twice on 2021-11-07 in New York: the daylight hour, then the standard one
    stamps = ["2021-11-06 23:00", "2021-11-07 00:00", "2021-11-07 01:00", "2021-11-07 01:00", "2021-11-07 02:00"]
    table = frame([("A", t, 1000 + i) for i, t in enumerate(stamps)])
    ordered, bounds = plan_batches(table, batch=3)  # a fixed cut at 3 would fall between the two 01:00
    assert bounds == [(0, 2), (2, 5)]
    ordered, bounds = plan_batches(table, batch=4)
    assert bounds == [(0, 4), (4, 5)]


def test_timestamps_are_sent_as_the_file_gives_them():
    naive = pd.Series(pd.to_datetime(["2021-11-07 01:00:00", "2021-01-01 00:00:30"]))
    assert list(iso_timestamps(naive)) == ["2021-11-07T01:00:00", "2021-01-01T00:00:30"]
    aware = pd.Series(pd.to_datetime(["2021-11-07 01:00", "2021-11-07 01:00", "2021-07-01 12:00"]).tz_localize(
        "America/New_York", ambiguous=np.array([True, False, True])))
    assert list(iso_timestamps(aware)) == [t.isoformat() for t in aware] == [
        "2021-11-07T01:00:00-04:00", "2021-11-07T01:00:00-05:00", "2021-07-01T12:00:00-04:00"]
    fixed = pd.Series(pd.to_datetime(["2021-01-01T10:00:00+05:30"]))
    assert list(iso_timestamps(fixed)) == ["2021-01-01T10:00:00+05:30"]


# ---------------------------------------------------------------------------------------------- --store

def test_ingest_into_a_store_registers_reports_a_bad_row_and_is_idempotent(tmp_path):
    csv = hourly_csv(tmp_path / "load.csv", bad={("B", 17)})
    db = tmp_path / "store.db"
    result = run("ingest", csv, "--store", db, "--batch", "50", "--quiet")
    assert result.exit_code == 2 and "unknown zone 'A'" in result.output and "--register" in result.output
    result = run("ingest", csv, "--store", db, "--batch", "50", "--register", "--region", "R",
                 "--time-zone", "America/New_York", "--quiet")
    assert result.exit_code == 0, result.output
    assert "144 received, 143 inserted, 0 replaced, 0 unchanged, 1 rejected" in result.output
    assert "registered 2 zone(s): A, B" in result.output
    assert "value # is not positive" in result.output and "row 35: B 2021-01-01T17:00:00 = 0" in result.output
    store = Store.open(db)
    try:
        assert store.zones() == {z: ZoneSpec(z, "R", 3600, "America/New_York") for z in ("A", "B")}
        rows = store.readings(["A", "B"])
        assert len(rows) == 143 and (rows.zone == "A").sum() == 72
        first = pd.Timestamp("2021-01-01 00:00", tz="America/New_York").timestamp()
        assert rows.ts.min() == first and rows[rows.ts == first].value.tolist() == [1000.0, 1010.0]
    finally:
        store.close()
    # the same file again, from stdin this time: nothing new, still exit 0 (the readings are accepted)
    result = run("ingest", "-", "--store", db, "--quiet", input=csv.read_text())
    assert result.exit_code == 0, result.output
    assert "stdin -> " in result.output and "0 inserted, 0 replaced, 143 unchanged, 1 rejected" in result.output


def test_ingest_of_an_all_bad_file_exits_2_with_the_reasons(tmp_path):
    db = tmp_path / "store.db"
    assert run("ingest", hourly_csv(tmp_path / "ok.csv", zones=("A",)), "--store", db, "--register", "--quiet",
               "--time-zone", "UTC").exit_code == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("zone,timestamp,load_mw\nA,2021-02-01 00:00,0\nA,2021-02-01 01:00,-3\nA,2021-02-01 02:00,\n"
                   "A,2021-02-01 03:30,900\n")
    result = run("ingest", bad, "--store", db, "--quiet")
    assert result.exit_code == 2
    assert "4 received, 0 inserted, 0 replaced, 0 unchanged, 4 rejected" in result.output
    assert "every reading was rejected" in result.output and "Traceback" not in result.output
    assert "2  value # is not positive" in result.output and "not a finite number" in result.output
    assert "grid" in result.output


def test_ingest_keeps_the_fall_back_pair_together_in_the_store(tmp_path):
    # 30 hours across the end of daylight saving in New York; 01:00 appears twice (EDT, then EST)
    stamps = [pd.Timestamp("2021-11-06 12:00") + pd.Timedelta(hours=h) for h in range(14)]
    stamps += [pd.Timestamp("2021-11-07 01:00") + pd.Timedelta(hours=h) for h in range(16)]
    csv = tmp_path / "dst.csv"
    csv.write_text("zone,timestamp,load_mw\n" + "".join(f"A,{t:%Y-%m-%d %H:%M},{1000 + i}\n"
                                                        for i, t in enumerate(stamps)))
    # batches of 14 would cut right between the two 01:00 readings (rows 13 and 14)
    result = run("ingest", csv, "--store", tmp_path / "s.db", "--batch", "14", "--register",
                 "--time-zone", "America/New_York", "--quiet")
    assert result.exit_code == 0, result.output
    assert "30 received, 30 inserted, 0 replaced, 0 unchanged, 0 rejected" in result.output
    store = Store.open(tmp_path / "s.db")
    try:
        rows = store.readings(["A"])
    finally:
        store.close()
    one = pd.Timestamp("2021-11-07 05:00", tz="UTC").timestamp()  # 01:00 EDT
    assert rows.set_index("ts").value.loc[[one, one + 3600]].tolist() == [1013.0, 1014.0]
    assert np.all(np.diff(rows.ts) == 3600)


def test_ingest_input_errors_are_one_line(tmp_path):
    result = run("ingest", tmp_path / "nope.csv", "--store", tmp_path / "s.db")
    assert result.exit_code == 2 and "no such file" in result.output
    result = run("ingest", "-", "--store", tmp_path / "s.db", input="zone,when\nA,1\n")
    assert result.exit_code == 2 and "stdin" in result.output and "Traceback" not in result.output
    result = run("ingest", hourly_csv(tmp_path / "a.csv"), "--store", tmp_path / "s.db", "--server", "x:1")
    assert result.exit_code == 2 and "not both" in result.output
    result = run("ingest", hourly_csv(tmp_path / "a.csv"), "--store", tmp_path / "s.db", "--register",
                 "--time-zone", "Mars/Olympus")
    assert result.exit_code == 2 and "unknown time zone" in result.output


# ---------------------------------------------------------------------------------------------- --server

class StoreService(rpb_grpc.ReadingsServiceServicer):
    """ReadingsService over a real Store, in process; `fail_at` breaks the first stream with `fail_code`
    (UNAVAILABLE: a replica restarting; DEADLINE_EXCEEDED: the server's request timeout) when that batch
    arrives (after acknowledging the ones before it)."""

    def __init__(self, store: Store, fail_at: int | None = None) -> None:
        self.store, self.fail_at, self.streams, self.batches = store, fail_at, 0, 0
        self.fail_code, self.batches_per_stream = grpc.StatusCode.UNAVAILABLE, []

    def _ack(self, request, batch, context):
        try:
            result = self.store.ingest([r.zone for r in request.readings], [r.timestamp for r in request.readings],
                                       [r.value for r in request.readings],
                                       register=[ZoneSpec(s.zone, s.region, s.resolution_s, s.time_zone)
                                                 for s in request.register])
        except StoreError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        self.batches += 1
        return rpb.IngestAck(batch=batch, received=result.received, inserted=result.inserted,
                             replaced=result.replaced, unchanged=result.unchanged, watermark=result.watermark,
                             registered=result.registered, rejected=[
                                 rpb.RejectedReading(index=r.index, zone=r.zone, timestamp=r.timestamp, reason=r.reason)
                                 for r in result.rejected])

    def IngestReadings(self, request, context):  # noqa: N802
        return self._ack(request, 0, context)

    def StreamReadings(self, request_iterator, context):  # noqa: N802
        self.streams += 1
        self.batches_per_stream.append(0)
        for i, request in enumerate(request_iterator):
            if self.streams == 1 and i == self.fail_at:
                context.abort(self.fail_code, "replica restarting"
                              if self.fail_code == grpc.StatusCode.UNAVAILABLE else "request timed out")
            self.batches_per_stream[-1] += 1
            yield self._ack(request, i, context)

    def ListZones(self, request, context):  # noqa: N802
        response = rpb.ListZonesResponse(watermark=self.store.watermark())
        for spec, last, count in self.store.zone_status():
            if not request.region or spec.region == request.region:
                response.zones.add(spec=rpb.ZoneSpec(zone=spec.zone, region=spec.region, resolution_s=spec.resolution_s,
                                                     time_zone=spec.time_zone), readings=count)
        return response


@pytest.fixture()
def service(tmp_path):
    store = Store.open(tmp_path / "served.db")
    servicer = StoreService(store)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpb_grpc.add_ReadingsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)
    store.close()


@pytest.mark.parametrize("fail_at, window", [(0, 3), (2, 3), (4, 1), (3, 8)])
def test_stream_reopens_a_broken_stream_and_resends_what_was_not_acknowledged(service, fail_at, window):
    servicer, target = service
    servicer.fail_at = fail_at
    table = frame([("A", pd.Timestamp("2021-01-01") + pd.Timedelta(hours=h), 1000 + h) for h in range(50)])
    with ReadingsClient(target, backoff=0.01) as client:
        acks = list(client.stream(batches_from_frame(table, 10, register=[ZoneSpec("A", "R")]), window=window))
        assert [a.batch for a in acks] == [0, 1, 2, 3, 4] and servicer.streams == 2
        assert [a.received for a in acks] == [10] * 5 and not any(a.rejected for a in acks)
        assert sum(a.inserted for a in acks) + sum(a.unchanged for a in acks) == 50
        assert servicer.store.readings(["A"]).value.tolist() == [1000.0 + h for h in range(50)]
        assert [z.spec.zone for z in client.list_zones().zones] == ["A"]
        ack = client.ingest([("A", "2021-01-01T00:00:00", 1001.0), ("A", "2021-01-01T01:00:00", -1.0)])
        assert (ack.replaced, len(ack.rejected), ack.rejected[0].index) == (1, 1, 1)

        def broken():
            yield from batches_from_frame(table, 25)
            raise RuntimeError("the source broke")

        seen = []
        with pytest.raises(RuntimeError, match="the source broke"):
            for ack in client.stream(broken()):
                seen.append(ack.batch)
        assert seen == [0, 1]  # the batches before the failure were all acknowledged


def test_a_long_feed_goes_on_in_new_streams_before_the_servers_request_timeout(service):
    """A feed longer than the server's request timeout (Serve's request_timeout_s ends any call): the client
    closes each stream after max_stream_s once its batches are acknowledged and goes on in a new one, so
    nothing is sent twice; a stream the server still times out (a source slower than max_stream_s) is
    reopened and its unacknowledged batches resent."""
    servicer, target = service
    table = frame([("A", pd.Timestamp("2021-01-01") + pd.Timedelta(hours=h), 1000 + h) for h in range(40)])

    def paced(batches):
        for batch in batches:
            time.sleep(0.1)
            yield batch

    with ReadingsClient(target, backoff=0.01, max_stream_s=0.35) as client:
        acks = list(client.stream(paced(batches_from_frame(table, 4, register=[ZoneSpec("A", "R")]))))
    assert [a.batch for a in acks] == list(range(10))
    assert servicer.streams >= 3 and sum(servicer.batches_per_stream) == 10  # several streams, nothing resent
    assert sum(a.inserted for a in acks) == 40 and not any(a.unchanged for a in acks)

    servicer.streams, servicer.fail_at, servicer.fail_code = 0, 2, grpc.StatusCode.DEADLINE_EXCEEDED
    later = frame([("A", pd.Timestamp("2021-01-03") + pd.Timedelta(hours=h), 2000 + h) for h in range(20)])
    with ReadingsClient(target, backoff=0.01) as client:
        acks = list(client.stream(batches_from_frame(later, 4)))
    assert [a.batch for a in acks] == [0, 1, 2, 3, 4] and servicer.streams == 2
    assert servicer.store.readings(["A"]).value.tolist()[-20:] == [2000.0 + h for h in range(20)]


def test_stream_gives_up_on_refused_batches_and_unreachable_servers(service):
    servicer, target = service
    bad = rpb.IngestReadingsRequest(register=[rpb.ZoneSpec(zone="A", region="R", time_zone="Nowhere/Land")])
    with ReadingsClient(target, backoff=0.01) as client:
        with pytest.raises(ReadingsError) as err:
            list(client.stream([bad]))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "unknown time zone" in err.value.message
    with ReadingsClient("127.0.0.1:1", retries=1, backoff=0.01) as client:
        with pytest.raises(ReadingsError) as err:
            list(client.stream(batches_from_frame(frame([("A", "2021-01-01", 1)]))))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_ingest_over_the_server(service, tmp_path):
    servicer, target = service
    csv = hourly_csv(tmp_path / "load.csv", bad={("A", 5)})
    result = run("ingest", csv, "--server", target, "--batch", "40", "--register", "--region", "R",
                 "--time-zone", "UTC", "--quiet")
    assert result.exit_code == 0, result.output
    assert "144 received, 143 inserted, 0 replaced, 0 unchanged, 1 rejected" in result.output
    assert "registered 2 zone(s): A, B" in result.output and "row 10: A 2021-01-01T05:00:00 = 0" in result.output
    assert servicer.batches == 4 and len(servicer.store.readings(["A", "B"])) == 143
    # known zones are not registered again (with --register or without)
    result = run("ingest", csv, "--server", target, "--register", "--quiet")
    assert result.exit_code == 0 and "143 unchanged" in result.output and "registered" not in result.output
    result = run("ingest", csv, "--server", "127.0.0.1:1", "--quiet")
    assert result.exit_code == 2 and "cannot reach the server at 127.0.0.1:1" in result.output


def test_replay_sends_one_batch_per_hour_in_time_order(service, tmp_path):
    servicer, target = service
    csv = hourly_csv(tmp_path / "history.csv", zones=("A", "B", "C"), hours=96)
    store = servicer.store
    store.seed(csv, region="R", until="2021-01-03 00:00")  # the history up to --from
    before = len(store.readings(["A", "B", "C"]))
    assert before == 3 * 48
    started = time.monotonic()
    result = run("replay", "--data", csv, "--from", "2021-01-03 00:00", "--until", "2021-01-03 12:00",
                 "--speed", "1000", "--server", target)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    assert "replaying 12 hours (2021-01-03 00:00 .. 2021-01-03 11:00, 36 readings" in result.output
    assert "2021-01-03 11:00 (12 h)       36 accepted      0 rejected" in result.output
    assert "replayed 12 hours (2021-01-03 00:00 .. 2021-01-03 11:00)" in result.output
    assert "36 received, 36 inserted" in result.output
    assert servicer.batches == 12 and len(store.readings(["A", "B", "C"])) == before + 36
    # at 4 h/s: a line per hour, paced (1.25 s for the 6 hours at least)
    started = time.monotonic()
    result = run("replay", "--data", csv, "--from", "2021-01-03 12:00", "--until", "2021-01-03 18:00",
                 "--speed", "4", "--server", target)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 1.25
    lines = [line for line in result.output.splitlines() if "accepted" in line]
    assert len(lines) == 6 and lines[0].startswith("2021-01-03 12:00") and lines[-1].startswith("2021-01-03 17:00")
    assert all("3 accepted" in line for line in lines)


def test_replay_registers_new_zones_and_reports_an_unreachable_server(service, tmp_path):
    servicer, target = service
    csv = hourly_csv(tmp_path / "history.csv", zones=("A",), hours=30)
    result = run("replay", "--data", csv, "--from", "2021-01-01 00:00", "--speed", "1000", "--server", target,
                 "--register", "--region", "R", "--time-zone", "UTC")
    assert result.exit_code == 0, result.output
    assert "registered 1 zone(s): A" in result.output and "30 inserted" in result.output
    result = run("replay", "--data", csv, "--from", "2021-01-01 00:00", "--speed", "1000", "--server", "127.0.0.1:1")
    assert result.exit_code == 2 and "cannot reach the server" in result.output
    result = run("replay", "--data", csv, "--from", "2022-01-01", "--server", target)
    assert result.exit_code == 2 and "no readings from 2022-01-01" in result.output


def test_paced_releases_on_a_fixed_schedule_and_stops_when_asked():
    from energyopt.cli_ingest import paced

    stop = threading.Event()
    started = time.monotonic()
    released = [time.monotonic() - started for _ in paced(range(5), [0, 1, 2, 3, 4], 50.0, stop)]
    # never early, and late only by scheduling noise: each deadline counts from the start (no drift)
    assert all(k / 50.0 - 0.002 <= t < k / 50.0 + 0.05 for k, t in enumerate(released))
    stop.set()
    assert list(paced(range(3), [0, 100, 200], 1.0, stop)) == []
