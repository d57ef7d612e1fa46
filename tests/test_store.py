"""The readings store (models/store.py) against real databases: every case on a SQLite file and on a fresh
PostgreSQL database (conftest's postgres_db), no mocks. Expected UTC seconds are computed with zoneinfo and
pandas, not with the store's own conversion."""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from models.migrations import current
from models.store import Store, StoreError, ZoneSpec, readings_table, sources_table, store_url

REPO = Path(__file__).resolve().parents[1]
NY = "America/New_York"
A = ZoneSpec("A", "R1", 3600, "UTC")
B = ZoneSpec("B", "R1", 3600, "UTC")
NY1 = ZoneSpec("NY1", "EAST", 3600, NY)
Q15 = ZoneSpec("Q15", "EAST", 900, NY)
NOW = pd.Timestamp("2021-01-01T00:00:00Z").timestamp()  # the server's clock in every ingest here
T0 = int(pd.Timestamp("2020-06-01T00:00:00Z").timestamp())
HOUR = 3600
TABLES = {"zones", "readings", "store_state", "sources", "alembic_version"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store: a SQLite file not created yet, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return store_url(tmp_path / "store.db")
    return request.getfixturevalue("postgres_db")


@pytest.fixture
def store(url: str):
    opened = Store.open(url)
    yield opened
    opened.close()


def iso(seconds: float) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


def local_s(text: str, time_zone: str, fold: int = 0) -> int:
    """UTC seconds of a naive wall-clock time in `time_zone` (fold=1: the second of a repeated hour)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(time_zone), fold=fold).timestamp())


def utc_s(text: str) -> int:
    return int(pd.Timestamp(text).timestamp())


def send(store: Store, rows: list[tuple], **kwargs: object):
    """Ingest (zone, timestamp, value) rows at the fixed clock NOW."""
    zones, stamps, values = zip(*rows, strict=True) if rows else ((), (), ())
    return store.ingest(list(zones), list(stamps), list(values), now=NOW, **kwargs)


def stored(store: Store, zone: str) -> dict[int, float]:
    frame = store.readings([zone])
    return dict(zip(frame["ts"].tolist(), frame["value"].tolist(), strict=True))


def table_rows(store: Store, *columns: sa.Column) -> list[tuple]:
    """Rows of the readings table itself (revision and version are not in the store's reads)."""
    with store.reader.connect() as conn:
        query = sa.select(*columns).order_by(readings_table.c.zone, readings_table.c.ts)
        return [tuple(r) for r in conn.execute(query)]


def hourly(zone: str, start: int, n: int, value: float = 100.0) -> list[tuple]:
    return [(zone, iso(start + i * HOUR), value) for i in range(n)]


# ------------------------------------------------------------------------------------------ rejections

# (zone, timestamp, value, a fragment of the rejection's reason; None: accepted). Every time is distinct
# so that no row is refused as a repeat of another.
MIXED = [
    ("A", "2020-06-01T00:00:00Z", 100.0, None),
    ("A", "2020-06-01T01:00:00Z", math.nan, "value nan is not a finite number"),
    ("A", "2020-06-01T02:00:00Z", 101.0, None),
    ("A", "2020-06-01T03:00:00Z", math.inf, "value inf is not a finite number"),
    ("A", "2020-06-01T04:00:00Z", -math.inf, "value -inf is not a finite number"),
    ("A", "2020-06-01T05:00:00Z", 0.0, "value 0 is not positive"),
    ("A", "2020-06-01T06:00:00Z", -3.5, "value -3.5 is not positive"),
    ("A", "2020-06-31T07:00:00Z", 100.0, "cannot be read as ISO 8601"),  # there is no 31 June
    ("A", "yesterday", 100.0, "cannot be read as ISO 8601"),
    ("A", "", 100.0, "cannot be read as ISO 8601"),
    ("A", "2020-06-01T10:30:00Z", 100.0, "not on the zone's 60-minute grid"),
    ("Q15", "2020-06-01T10:15", 100.0, None),  # on a 15-minute zone's grid
    ("Q15", "2020-06-01T10:20", 100.0, "not on the zone's 15-minute grid"),
    ("A", "2021-01-01T01:00:00Z", 102.0, None),  # exactly 1 h ahead of the clock: still accepted
    ("A", "2021-01-01T02:00:00Z", 100.0, "2.0 h in the future"),
    ("NOPE", "2020-06-01T11:00:00Z", 100.0, "unknown zone 'NOPE'"),
    ("", "2020-06-01T11:00:00Z", 100.0, "zone: required"),
    ("NY1", "2020-11-01T01:00", 100.0, f"ambiguous in {NY}"),  # the repeated hour, sent once
    ("NY1", "2020-11-01T03:00", 103.0, None),
    ("NY1", "2020-03-08T02:00", 100.0, f"does not exist in {NY}"),  # skipped at spring-forward
]


def test_each_rejection_names_its_reason_at_its_index_and_the_rest_lands(store: Store) -> None:
    store.register([A, NY1, Q15])
    result = send(store, [row[:3] for row in MIXED])
    expected = {i: row for i, row in enumerate(MIXED) if row[3] is not None}
    assert [r.index for r in result.rejected] == sorted(expected)
    for r in result.rejected:
        zone, timestamp, _, reason = expected[r.index]
        assert (r.zone, r.timestamp) == (zone, timestamp)
        assert reason in r.reason, (r.index, r.reason)
    assert (result.received, result.inserted, result.replaced, result.unchanged) == (len(MIXED), 5, 0, 0)
    assert stored(store, "A") == {utc_s("2020-06-01T00:00Z"): 100.0, utc_s("2020-06-01T02:00Z"): 101.0,
                                  utc_s("2021-01-01T01:00Z"): 102.0}
    assert stored(store, "Q15") == {local_s("2020-06-01T10:15", NY): 100.0}
    assert stored(store, "NY1") == {local_s("2020-11-01T03:00", NY): 103.0}


def test_absurd_values_are_judged_against_the_median_of_the_week_before(store: Store) -> None:
    store.register([A])
    week = [("A", iso(T0 + i * HOUR), 100.0 + (i % 3) - 1) for i in range(7 * 24)]  # median 100
    assert send(store, week).inserted == len(week)
    after = T0 + 7 * 24 * HOUR
    batch = [("A", iso(after), 1000.0), ("A", iso(after + HOUR), 110.0), ("A", iso(after + 2 * HOUR), 10.0),
             ("A", iso(after + 3 * HOUR), 21.0), ("A", iso(after + 4 * HOUR), 490.0)]
    result = send(store, batch)
    assert [r.index for r in result.rejected] == [0, 2]
    assert "value 1000 is absurd" in result.rejected[0].reason and "median of 100" in result.rejected[0].reason
    assert "value 10 is absurd" in result.rejected[1].reason
    assert result.inserted == 3
    held = stored(store, "A")
    assert [held.get(after + k * HOUR) for k in range(5)] == [None, 110.0, None, 21.0, 490.0]


def test_a_load_beyond_any_grid_is_refused_even_for_a_new_zone(store: Store) -> None:
    """A new zone has no median to judge a reading by: 3.4e38 MW was stored, and its forecasts were inf."""
    store.register([A])
    result = send(store, [("A", iso(T0), 3.4e38), ("A", iso(T0 + HOUR), 5.2e16), ("A", iso(T0 + 2 * HOUR), 9e6)])
    assert [r.index for r in result.rejected] == [0, 1]
    assert all("beyond any grid's load" in r.reason and "wrong units" in r.reason for r in result.rejected)
    assert stored(store, "A") == {T0 + 2 * HOUR: 9e6}


def test_the_repeated_hour_sent_twice_is_both_hours_and_once_is_refused(store: Store) -> None:
    store.register([NY1])
    rows = [("NY1", "2020-11-01T00:00", 1.0), ("NY1", "2020-11-01T01:00", 2.0), ("NY1", "2020-11-01T01:00", 3.0),
            ("NY1", "2020-11-01T02:00", 4.0)]
    result = send(store, rows)
    assert result.rejected == [] and result.inserted == 4
    first, second = local_s("2020-11-01T01:00", NY, fold=0), local_s("2020-11-01T01:00", NY, fold=1)
    assert second - first == HOUR and first == utc_s("2020-11-01T05:00Z")
    assert stored(store, "NY1") == {local_s("2020-11-01T00:00", NY): 1.0, first: 2.0, second: 3.0,
                                    local_s("2020-11-01T02:00", NY): 4.0}
    # once, in a batch of its own: which of the two hours it is cannot be told
    once = send(store, [("NY1", "2021-11-07T01:00", 5.0)])
    assert once.inserted == 0 and "ambiguous" in once.rejected[0].reason


def test_the_same_zone_and_time_twice_in_a_batch_keeps_the_last(store: Store) -> None:
    store.register([A])
    rows = [("A", "2020-06-01T00:00:00Z", 1.0), ("A", "2020-06-01T01:00:00Z", 2.0),
            ("A", "2020-06-01T00:00:00Z", 3.0),
            ("A", "2020-06-01T05:00:00Z", 4.0), ("A", "2020-06-01T07:00:00+02:00", 5.0)]  # one instant, two spellings
    result = send(store, rows)
    assert [r.index for r in result.rejected] == [0, 3]
    assert "repeated in this batch: reading 2" in result.rejected[0].reason
    assert "reading 4" in result.rejected[1].reason
    assert result.inserted == 3
    assert stored(store, "A") == {T0: 3.0, T0 + HOUR: 2.0, T0 + 5 * HOUR: 5.0}


def test_timestamps_with_offsets_and_naive_local_times_map_to_utc(store: Store) -> None:
    store.register([NY1])
    texts = {  # text -> expected UTC seconds, computed without the store
        "2020-01-01T05:00:00Z": utc_s("2020-01-01T05:00:00+00:00"),
        "2020-01-01T07:00:00+01:00": utc_s("2020-01-01T06:00:00+00:00"),
        "2020-01-01T08:00:00-0500": utc_s("2020-01-01T13:00:00+00:00"),
        "2020-01-01T09:00": local_s("2020-01-01T09:00", NY),  # EST: 14:00Z
        "2020-07-01 12:00:00": local_s("2020-07-01T12:00", NY),  # EDT: 16:00Z
        "2020-01-02": local_s("2020-01-02T00:00", NY),  # a date alone is local midnight, not UTC's
    }
    rows = [("NY1", text, 100.0 + i) for i, text in enumerate(texts)]
    result = send(store, rows)
    assert result.rejected == [] and result.inserted == len(texts)
    assert {value: ts for ts, value in stored(store, "NY1").items()} == {
        100.0 + i: ts for i, ts in enumerate(texts.values())}
    assert local_s("2020-01-01T09:00", NY) == utc_s("2020-01-01T14:00Z")  # the reference itself
    # a DatetimeIndex: tz-aware is that instant, naive is the zone's wall clock
    aware = pd.DatetimeIndex(["2020-02-01 00:00", "2020-08-01 00:00"]).tz_localize("Europe/Berlin")
    naive = pd.DatetimeIndex(["2020-02-02 00:00", "2020-08-02 00:00"])
    for index, values, expected in ((aware, [50.0, 51.0], [int(t.timestamp()) for t in aware]),
                                    (naive, [52.0, 53.0], [local_s("2020-02-02T00:00", NY),
                                                           local_s("2020-08-02T00:00", NY)])):
        assert store.ingest(["NY1", "NY1"], index, values, now=NOW).inserted == 2
        held = {value: ts for ts, value in stored(store, "NY1").items()}
        assert [held[v] for v in values] == expected
    # a missing time in a DatetimeIndex is refused, not stored at the epoch
    gap = store.ingest(["NY1", "NY1"], pd.DatetimeIndex(["2020-03-01 00:00", None]), [60.0, 61.0], now=NOW)
    assert gap.inserted == 1 and [r.index for r in gap.rejected] == [1] and "missing" in gap.rejected[0].reason
    assert min(stored(store, "NY1")) > 0


# ------------------------------------------------------------------------------------------ resends, corrections

def test_a_resend_changes_nothing(store: Store) -> None:
    store.register([A])
    rows = hourly("A", T0, 48)
    first = send(store, rows)
    assert (first.inserted, first.replaced, first.unchanged, first.watermark) == (48, 0, 0, 1)
    again = send(store, rows)
    assert (again.received, again.inserted, again.replaced, again.unchanged) == (48, 0, 0, 48)
    assert again.rejected == [] and again.watermark == 1 and store.watermark() == 1
    assert table_rows(store, readings_table.c.version, readings_table.c.revision) == [(1, 0)] * 48


def test_a_correction_replaces_the_value_and_raises_its_revision(store: Store) -> None:
    store.register([A])
    rows = hourly("A", T0, 24)
    send(store, rows)
    rows[10] = ("A", rows[10][1], 123.5)
    fixed = send(store, rows)
    assert (fixed.inserted, fixed.replaced, fixed.unchanged, fixed.watermark) == (0, 1, 23, 2)
    table = table_rows(store, readings_table.c.ts, readings_table.c.value, readings_table.c.revision,
                       readings_table.c.version)
    assert table[10] == (T0 + 10 * HOUR, 123.5, 1, 2)
    assert all((value, revision, version) == (100.0, 0, 1) for i, (_, value, revision, version) in enumerate(table)
               if i != 10)
    again = send(store, [("A", rows[10][1], 124.0)])
    assert again.replaced == 1 and again.watermark == 3
    assert table_rows(store, readings_table.c.revision, readings_table.c.value)[10] == (2, 124.0)
    assert [status[2] for status in store.zone_status()] == [24]  # corrections add no readings


def test_out_of_order_and_late_readings_are_accepted(store: Store) -> None:
    store.register([A])
    rows = hourly("A", T0 + 24 * HOUR, 24)[::-1]  # newest first
    assert send(store, rows).inserted == 24
    last = T0 + 47 * HOUR
    assert store.zone_status()[0][1:] == (last, 24)
    late = send(store, [("A", iso(T0 + 3 * HOUR), 99.0), ("A", iso(T0 + HOUR), 98.0)])  # days late, reversed
    assert late.inserted == 2 and late.rejected == []
    assert store.zone_status()[0][1:] == (last, 26)  # the latest reading stays the latest
    assert list(store.readings(["A"])["ts"])[:2] == [T0 + HOUR, T0 + 3 * HOUR]


# ------------------------------------------------------------------------------------------ watermark and reads

def _keys(frame: pd.DataFrame) -> set[tuple]:
    return set(zip(frame["zone"], frame["ts"].tolist(), frame["value"].tolist(), strict=True))


def test_watermark_changes_latest_and_zone_status(store: Store) -> None:
    c = ZoneSpec("C", "R1", 3600, "UTC")
    store.register([A, B, c])
    assert store.watermark() == 0
    b1 = hourly("A", T0, 24)
    b2 = hourly("B", T0, 12, 50.0)
    b3 = hourly("A", T0 + 24 * HOUR, 6) + [("A", iso(T0 + 5 * HOUR), 101.0)]  # new hours and one correction
    marks = [send(store, b1).watermark, send(store, b2).watermark]
    marks.append(send(store, b1).watermark)  # a resend commits nothing
    marks.append(send(store, [("A", iso(T0), math.nan)]).watermark)  # nor does a batch wholly refused
    marks.append(send(store, b3).watermark)
    assert marks == [1, 2, 2, 2, 3] and store.watermark() == 3

    def rows_of(*batches: list[tuple]) -> set[tuple]:
        return {(z, utc_s(t), v) for batch in batches for z, t, v in batch}

    corrected = ("A", T0 + 5 * HOUR, 100.0)  # rewritten by commit 3: now its row
    assert _keys(store.changes(0, 1)) == rows_of(b1) - {corrected}
    assert _keys(store.changes(1, 2)) == rows_of(b2)
    assert _keys(store.changes(2, 3)) == rows_of(b3)
    assert _keys(store.changes(0, 3)) == (rows_of(b1, b2) - {corrected}) | rows_of(b3)
    assert store.changes(3, 3).empty and store.changes(3, 10).empty

    latest = store.latest(["A", "B", "C"], 3 * HOUR)
    assert list(zip(latest["zone"], latest["ts"] - T0, strict=True)) == [
        ("A", 27 * HOUR), ("A", 28 * HOUR), ("A", 29 * HOUR), ("B", 9 * HOUR), ("B", 10 * HOUR), ("B", 11 * HOUR)]
    assert list(store.latest(["B"], 1)["ts"]) == [T0 + 11 * HOUR]

    status = {spec.zone: (spec, last, count) for spec, last, count in store.zone_status()}
    assert status == {"A": (A, T0 + 29 * HOUR, 30), "B": (B, T0 + 11 * HOUR, 12), "C": (c, None, 0)}


# ------------------------------------------------------------------------------------------ zones

def test_zone_registration(store: Store) -> None:
    assert store.register([A, NY1]) == ["A", "NY1"]
    assert store.register([A]) == []  # the same spec again is fine
    assert store.register([B, B]) == ["B"]  # and so is one listed twice
    with pytest.raises(StoreError, match="zone A is registered as region R1, every 3600 s"):
        store.register([ZoneSpec("A", "R1", 1800, "UTC")])
    with pytest.raises(StoreError, match="zone D: region R1 keeps time in UTC"):
        store.register([ZoneSpec("D", "R1", 3600, "Europe/Paris")])
    with pytest.raises(StoreError, match="zone D is registered as"):
        store.register([ZoneSpec("D", "R9"), ZoneSpec("D", "R9", 900)])
    for bad, problem in [(ZoneSpec("", "R1"), "zone ''"), (ZoneSpec("has space", "R1"), "zone 'has space'"),
                         (ZoneSpec("x" * 65, "R1"), "zone 'xxx"), (ZoneSpec("AEP\n", "R1"), "zone 'AEP\\\\n'"),
                         (ZoneSpec("E", ""), "region ''"), (ZoneSpec("E", "R/1"), "region 'R/1'")]:
        with pytest.raises(StoreError, match=problem + ".*use 1 to 64 letters"):
            store.register([bad])
    with pytest.raises(StoreError, match=r"zone E: resolution_s 600 is not one of \[3600, 1800, 900, 300\]"):
        store.register([ZoneSpec("E", "R1", 600)])
    with pytest.raises(StoreError, match="zone E: unknown time zone 'Mars/Olympus'"):
        store.register([ZoneSpec("E", "R2", 3600, "Mars/Olympus")])
    assert store.register([ZoneSpec("E", "R3", 0, "")]) == ["E"]  # defaults: hourly, UTC

    # registered by an ingest; a bad registration there refuses the whole batch
    result = send(store, [("F", "2020-06-01T00:00", 1.0)], register=[ZoneSpec("F", "EAST", 3600, NY)])
    assert result.registered == ["F"] and result.inserted == 1
    with pytest.raises(StoreError, match="region EAST keeps time in America/New_York"):
        send(store, [("G", "2020-06-01T00:00", 1.0), ("A", iso(T0), 1.0)], register=[ZoneSpec("G", "EAST")])
    assert store.watermark() == 1 and stored(store, "A") == {}
    assert store.zones() == {"A": A, "B": B, "E": ZoneSpec("E", "R3", 3600, "UTC"),
                             "F": ZoneSpec("F", "EAST", 3600, NY), "NY1": NY1}


# ------------------------------------------------------------------------------------------ seeding files

def _write_csv(path: Path) -> Path:
    """Long format: zone H hourly for two days, zone Q15 every 15 minutes from 06:00, naive local times."""
    hours = pd.date_range("2020-01-01 00:00", periods=48, freq="h")
    quarters = pd.date_range("2020-01-01 06:00", periods=40, freq="15min")
    pd.concat([pd.DataFrame({"zone": "H", "timestamp": hours, "load_mw": 100.0 + (hours.hour % 5)}),
               pd.DataFrame({"zone": "Q15", "timestamp": quarters, "load_mw": 20.0})]).to_csv(path, index=False)
    return path


def test_seed_registers_stores_and_skips_a_file_seen_before(store: Store, tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "load.csv")
    result = store.seed(path, region="SEEDED", time_zone=NY)
    assert result is not None and (result.inserted, result.rejected) == (88, [])
    assert sorted(result.registered) == ["H", "Q15"]
    assert store.zones() == {"H": ZoneSpec("H", "SEEDED", 3600, NY), "Q15": ZoneSpec("Q15", "SEEDED", 900, NY)}
    held = stored(store, "H")
    assert min(held) == local_s("2020-01-01T00:00", NY) and len(held) == 48
    assert held[local_s("2020-01-01T13:00", NY)] == 103.0
    assert len(stored(store, "Q15")) == 40
    watermark = store.watermark()
    assert store.seed(path, region="SEEDED", time_zone=NY) is None
    assert store.watermark() == watermark


def test_seed_until_limits_the_rows(store: Store, tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "load.csv")
    part = store.seed(path, until="2020-01-01 12:00")  # times in the file's own (naive) convention; UTC zones
    assert part is not None and part.inserted == 12 + 24
    assert max(stored(store, "H")) == utc_s("2020-01-01T11:00Z")
    assert max(stored(store, "Q15")) == utc_s("2020-01-01T11:45Z")
    assert store.seed(path, until="2020-01-01 12:00") is None
    rest = store.seed(path)  # another `until`: read again, and what is held already is unchanged
    assert rest is not None and (rest.inserted, rest.unchanged) == (88 - 36, 36)


# ------------------------------------------------------------------------------------------ concurrency

def test_two_writers_sending_the_same_batch_at_once_store_it_once(store: Store, tmp_path: Path) -> None:
    """Two replicas given one resend: one inserts, the other finds it all unchanged (neither fails on the
    primary key); two seeding one file at once record it once."""
    store.register([A])
    rows = hourly("A", T0, 1000)
    barrier = threading.Barrier(2)

    def at_once(call: Callable[[], object]) -> object:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(2) as pool:
        acks = [f.result() for f in [pool.submit(at_once, lambda: send(store, rows)) for _ in range(2)]]
    assert sorted((a.inserted, a.unchanged) for a in acks) == [(0, 1000), (1000, 0)]
    assert [a.watermark for a in acks] == [1, 1] and store.watermark() == 1

    path = _write_csv(tmp_path / "load.csv")
    with ThreadPoolExecutor(2) as pool:
        seeds = [f.result() for f in [pool.submit(at_once, lambda: store.seed(path)) for _ in range(2)]]
    assert sum(s.inserted for s in seeds if s is not None) == 88
    with store.reader.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sources_table)).scalar_one() == 1
    assert store.seed(path) is None


BATCHES, ROWS = 12, 24
C = ZoneSpec("C", "R1", 3600, "UTC")


def _batch_value(worker: int, k: int) -> float:
    return 1000.0 + 10 * worker + k  # names the batch; all within the absurd bounds of each other


def _open_and_ingest(urls: list[str], worker: int, barrier: object, results: object) -> None:
    """A spawned process: for each empty store, open it together with the other process, then ingest its own
    hours of zone C (disjoint from the other's) in BATCHES commits, registering C in each."""
    for url in urls:
        try:
            barrier.wait(timeout=60)
            store = Store.open(url)
            revision = current(url)
            barrier.wait(timeout=60)
            start, acks = time.time(), []
            for k in range(BATCHES):
                first = T0 + (worker * BATCHES + k) * ROWS * HOUR
                ack = send(store, hourly("C", first, ROWS, _batch_value(worker, k)), register=[C])
                acks.append((k, ack.inserted, ack.watermark, [r.reason for r in ack.rejected]))
            store.close()
            results.put((url, worker, revision, start, time.time(), acks))
        except Exception:  # noqa: BLE001 - reported to the test, which would otherwise wait for nothing
            barrier.abort()  # the other process stops waiting too
            for rest in urls[urls.index(url):]:  # one report per store all the same: the test counts them
                results.put((rest, worker, traceback.format_exc(), 0.0, 0.0, []))
            return


def test_two_processes_open_an_empty_store_and_ingest_at_once(tmp_path: Path, postgres_db: str) -> None:
    """Both migrate-on-open at once (one does it, the other finds it done); their commits are serialized:
    the watermark is the number of commits and each version's rows are one batch's. One pair of spawned
    processes does both databases in turn (each costs seconds to start: it imports torch)."""
    urls = [store_url(tmp_path / "store.db"), postgres_db]
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    workers = [spawn.Process(target=_open_and_ingest, args=(urls, w, barrier, results)) for w in range(2)]
    for process in workers:
        process.start()
    try:
        reports = [results.get(timeout=120) for _ in range(2 * len(urls))]
    finally:
        for process in workers:
            process.join(timeout=30)
    for url in urls:
        mine = sorted(r[1:] for r in reports if r[0] == url)
        assert [r[1] for r in mine] == ["0004", "0004"], (url, mine)
        assert max(r[2] for r in mine) < min(r[3] for r in mine), url  # the two ingest phases overlapped
        batch_of = {}  # watermark -> (worker, batch)
        for worker, _, _, _, acks in mine:
            for k, inserted, watermark, rejected in acks:
                assert (inserted, rejected) == (ROWS, []), url
                batch_of[watermark] = (worker, k)
        assert sorted(batch_of) == list(range(1, 2 * BATCHES + 1)), url
        store = Store.open(url, migrate=False)
        try:
            assert store.watermark() == 2 * BATCHES
            rows = table_rows(store, readings_table.c.version, readings_table.c.value)
            assert len(rows) == 2 * BATCHES * ROWS
            for version, values in pd.DataFrame(rows, columns=["version", "value"]).groupby("version")["value"]:
                assert len(values) == ROWS and set(values) == {_batch_value(*batch_of[version])}, (url, version)
        finally:
            store.close()


# ------------------------------------------------------------------------------------------ migrations

def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_alembic_command_line_creates_the_schema(url: str) -> None:
    assert current(url) is None
    alembic = shutil.which("alembic", path=str(Path(sys.executable).parent)) or "alembic"
    env = {k: v for k, v in os.environ.items() if k != "ENERGYOPT_STORE"}
    proc = subprocess.run([alembic, "-x", f"store={url}", "upgrade", "head"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TABLES <= _tables(url) and current(url) == "0004"
    store = Store.open(url)  # at head already: nothing to do
    try:
        assert store.watermark() == 0 and store.zones() == {}
    finally:
        store.close()


def test_store_open_migrates_an_empty_database(url: str) -> None:
    assert current(url) is None
    store = Store.open(url)
    try:
        assert TABLES <= _tables(url) and current(url) == "0004" and store.watermark() == 0
    finally:
        store.close()
