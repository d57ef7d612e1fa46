"""Weather in the store (models/weather.py) against real databases: every case on a SQLite file and on a fresh
PostgreSQL database, with the readings store's fixtures (tests/test_store.py), no mocks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import test_store as readings_store

from models.migrations import current, upgrade
from models.series import BUNDLED_NEM, TEMPERATURE
from models.store import Store, StoreError, ZoneSpec
from models.weather import (
    NEM_STATIONS,
    Station,
    ingest_forecasts,
    ingest_observations,
    latest_forecast,
    map_zones,
    observations,
    observations_table,
    register_stations,
    seed_nem_weather,
    stations,
    zone_stations,
)

# the readings store's fixtures: an empty store on a SQLite file and on a new PostgreSQL database
url, store = readings_store.url, readings_store.store
NOW, send, stored = readings_store.NOW, readings_store.send, readings_store.stored
HOUR = 3600
T0 = int(pd.Timestamp("2020-06-01T00:00:00Z").timestamp())
SYD = Station("SYDNEY", "Australia/Brisbane", "NSW")
OBS = Station("OBS", "UTC")


def iso(seconds: int) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


def observe(store: Store, rows: list[tuple], station: str = "OBS"):
    """Ingest (time, value) observations of temperature at `station` at the fixed clock NOW."""
    return ingest_observations(store, [station] * len(rows), [TEMPERATURE] * len(rows), [t for t, _ in rows],
                               [v for _, v in rows], now=NOW)


def issue(store: Store, issued: int, rows: list[tuple], station: str = "OBS"):
    """Ingest one forecast issued at `issued`: (valid time, value) rows."""
    n = len(rows)
    return ingest_forecasts(store, [station] * n, [TEMPERATURE] * n, [iso(issued)] * n, [t for t, _ in rows],
                            [v for _, v in rows], now=NOW)


def held(store: Store, station: str = "OBS") -> dict[int, float]:
    frame = observations(store, station)
    return dict(zip(frame["ts"].tolist(), frame["value"].tolist(), strict=True))


def test_observations_round_trip_resend_and_correction(store: Store) -> None:
    assert register_stations(store, [OBS, SYD]) == ["OBS", "SYDNEY"]
    assert register_stations(store, [OBS]) == []  # the same again: fine
    with pytest.raises(StoreError, match="time zone UTC"):
        register_stations(store, [Station("OBS", "Europe/Paris")])
    first = observe(store, [(iso(T0 + h * HOUR), 10.0 + h) for h in range(5)])
    assert (first.inserted, first.unchanged, first.replaced, first.rejected) == (5, 0, 0, [])
    assert held(store) == {T0 + h * HOUR: 10.0 + h for h in range(5)}
    again = observe(store, [(iso(T0 + h * HOUR), 10.0 + h) for h in range(5)])
    assert (again.inserted, again.unchanged, again.replaced) == (0, 5, 0)
    fixed = observe(store, [(iso(T0 + HOUR), 21.5)])  # a correction replaces and is counted
    assert (fixed.inserted, fixed.unchanged, fixed.replaced) == (0, 0, 1)
    assert held(store)[T0 + HOUR] == 21.5
    with store.reader.connect() as conn:
        revision = conn.execute(sa.select(observations_table.c.revision).where(
            observations_table.c.ts == T0 + HOUR)).scalar_one()
    assert revision == 1
    window = observations(store, "OBS", start=T0 + HOUR, end=T0 + 3 * HOUR)
    assert window["ts"].tolist() == [T0 + HOUR, T0 + 2 * HOUR]
    # naive times are the station's clock: Brisbane is UTC+10
    local = observe(store, [("2020-06-01T10:00:00", 15.0)], station="SYDNEY")
    assert local.inserted == 1 and held(store, "SYDNEY") == {T0: 15.0}
    # acknowledged means committed: a new store on the same database sees it
    other = Store.open(store.url)
    try:
        assert held(other)[T0 + HOUR] == 21.5
    finally:
        other.close()


def test_bad_weather_is_refused_row_by_row_with_its_reason(store: Store) -> None:
    register_stations(store, [OBS, Station("HOT", "UTC")])
    stamps = [iso(T0 + h * HOUR) for h in range(7)]
    result = ingest_observations(
        store, ["OBS", "OBS", "NOWHERE", "OBS", "OBS", "OBS", "OBS"],
        [TEMPERATURE, TEMPERATURE, TEMPERATURE, "humidity_pct", TEMPERATURE, TEMPERATURE, TEMPERATURE],
        [stamps[0], stamps[1], stamps[2], stamps[3], iso(T0 + 4 * HOUR + 1800), iso(NOW + 5 * HOUR), stamps[6]],
        [math.nan, -75.0, 12.0, 50.0, 12.0, 12.0, math.inf], now=NOW)
    reasons = {r.index: r.reason for r in result.rejected}
    assert set(reasons) == {0, 1, 2, 3, 4, 5, 6} and result.inserted == 0
    assert "not a finite number" in reasons[0] and "not a finite number" in reasons[6]
    assert "not a plausible temperature_c" in reasons[1] and "-60..60" in reasons[1]
    assert "unknown station 'NOWHERE'" in reasons[2]
    assert "unknown variable 'humidity_pct'" in reasons[3]
    assert "not on the hour" in reasons[4]
    assert "in the future" in reasons[5]
    # a Fahrenheit series: its hot values are refused, and so are its mild ones, which alone would pass
    # (55 °F stored as 55 °C), each saying why
    fahrenheit = [75.0 + 2 * h for h in range(12)] + [55.0, 59.0]
    hot = observe(store, [(iso(T0 + h * HOUR), v) for h, v in enumerate(fahrenheit)], station="HOT")
    assert hot.inserted == 0 and len(hot.rejected) == len(fahrenheit)
    assert all("looks like degrees Fahrenheit" in r.reason for r in hot.rejected)
    assert held(store, "HOT") == {}
    # the rest of a batch lands
    mixed = observe(store, [(stamps[0], math.nan), (stamps[1], 14.0)])
    assert mixed.inserted == 1 and [r.index for r in mixed.rejected] == [0]
    with pytest.raises(StoreError, match="unknown station 'NOWHERE'"):
        observations(store, "NOWHERE")


def test_forecasts_duplicates_leads_and_repeats(store: Store) -> None:
    register_stations(store, [OBS])
    rows = [(iso(T0 + h * HOUR), 20.0 + h / 4) for h in range(48)]
    first = issue(store, T0, rows)
    assert (first.inserted, first.rejected) == (48, [])
    again = issue(store, T0, rows)
    assert (again.inserted, again.unchanged, again.rejected) == (0, 48, [])
    changed = issue(store, T0, [(iso(T0 + 5 * HOUR), 30.0)])  # an issued forecast does not change
    assert changed.inserted == changed.replaced == 0
    assert "an issued forecast does not change" in changed.rejected[0].reason
    assert latest_forecast(store, "OBS", TEMPERATURE, T0, [T0 + 5 * HOUR]).value.tolist() == [21.25]
    bad = issue(store, T0 + 100 * HOUR, [(iso(T0 + 99 * HOUR), 10.0), (iso(T0 + 100 * HOUR + 17 * 24 * HOUR), 10.0),
                                         (iso(T0 + 101 * HOUR), 10.0), (iso(T0 + 101 * HOUR), 11.0)])
    reasons = [r.reason for r in bad.rejected]
    assert bad.inserted == 1 and len(reasons) == 3
    assert "before it was issued" in reasons[0]
    assert "17.0 days after it was issued; at most 16 days" in reasons[1]
    assert "repeated in this batch" in reasons[2]
    future = issue(store, int(NOW) + 2 * HOUR, [(iso(int(NOW) + 3 * HOUR), 10.0)])
    assert "issued time is in the future" in future.rejected[0].reason


def test_latest_forecast_uses_the_newest_issue_at_or_before_and_lists_missing_hours(store: Store) -> None:
    register_stations(store, [OBS])
    hours = [T0 + 24 * HOUR + h * HOUR for h in range(48)]
    issue(store, T0, [(iso(t), 1.0) for t in hours])  # covers all 48
    issue(store, T0 + 12 * HOUR, [(iso(t), 2.0) for t in hours[:30]])  # newer, covers 30
    issue(store, T0 + 30 * HOUR, [(iso(t), 3.0) for t in hours])  # after `before`: not used
    early = latest_forecast(store, "OBS", TEMPERATURE, T0 + 6 * HOUR, hours)
    assert early.issued_ts == T0 and early.complete and set(early.value.tolist()) == {1.0}
    newest = latest_forecast(store, "OBS", TEMPERATURE, T0 + 24 * HOUR, hours)
    assert newest.issued_ts == T0 + 12 * HOUR and not newest.complete  # never filled from the older issue
    assert newest.missing == hours[30:] and np.isnan(newest.value[30:]).all() and set(newest.value[:30]) == {2.0}
    assert f"does not cover 18 of the 48 hours: {iso(hours[30])}" in newest.describe_missing()
    exact = latest_forecast(store, "OBS", TEMPERATURE, T0 + 30 * HOUR, hours)  # issued at `before`: known then
    assert exact.issued_ts == T0 + 30 * HOUR
    none = latest_forecast(store, "OBS", TEMPERATURE, T0 - HOUR, hours)
    assert none.issued_ts is None and none.missing == hours and "no temperature_c forecast" in none.describe_missing()
    with pytest.raises(StoreError, match="unknown station"):
        latest_forecast(store, "ELSEWHERE", TEMPERATURE, T0, hours)


def test_zone_station_mapping(store: Store) -> None:
    register_stations(store, [OBS, SYD])
    map_zones(store, {"NSW": "SYDNEY", "Z1": "OBS"})
    assert zone_stations(store) == {"NSW": "SYDNEY", "Z1": "OBS"}
    map_zones(store, {"Z1": "SYDNEY"})  # mapped again: reads the new station
    assert zone_stations(store, ["Z1"]) == {"Z1": "SYDNEY"}
    with pytest.raises(StoreError, match="unknown station 'NOPE'"):
        map_zones(store, {"Z2": "NOPE"})
    with pytest.raises(StoreError, match="zone"):
        map_zones(store, {"bad zone\n": "OBS"})


def test_seed_nem_weather_hourly_means_once(store: Store) -> None:
    until = "2012-01-03 00:00:00"
    result = seed_nem_weather(store, until=until)
    assert result is not None and result.rejected == [] and result.inserted == 5 * 48 + 5  # 23:30 of 2011-12-31
    assert seed_nem_weather(store, until=until) is None  # seen before
    assert set(stations(store)) == set(NEM_STATIONS.values())
    assert zone_stations(store) == NEM_STATIONS
    raw = pd.read_parquet(BUNDLED_NEM)
    first_hour = (raw["timestamp"] >= "2012-01-01 00:00") & (raw["timestamp"] < "2012-01-01 01:00")
    nsw = raw[(raw["zone"] == "NSW") & first_hour]
    hour = int(pd.Timestamp("2012-01-01 00:00", tz="Australia/Brisbane").timestamp())
    assert held(store, "SYDNEY")[hour] == pytest.approx(nsw["temperature_c"].mean())


def test_migration_0003_to_0004_keeps_the_readings(url: str) -> None:
    upgrade(url, "0003")
    old = Store.open(url, migrate=False)
    try:
        old.register([ZoneSpec("A", "R1", 3600, "UTC")])
        assert send(old, [("A", iso(T0 + h * HOUR), 100.0 + h) for h in range(3)]).inserted == 3
    finally:
        old.close()
    assert current(url) == "0003"
    new = Store.open(url)  # migrates to head
    try:
        assert current(url) == "0004"
        assert stored(new, "A") == {T0 + h * HOUR: 100.0 + h for h in range(3)} and new.watermark() == 1
        register_stations(new, [OBS])
        assert observe(new, [(iso(T0), 12.0)]).inserted == 1
    finally:
        new.close()
