"""The NEM (Australia) as the second bundled region: its file, its clock, sub-hourly ingest, state holidays.

Fast and without Ray: the bundled file against its CSV, period-end stamps moved to the project's hour
beginning, no daylight saving in the NEM zones (PJM has it), half-hourly readings averaged to hours and
reported, each state's own public holidays while PJM's stay the US ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks.make_bundled_data import DEFAULT_NEM_SOURCE, nem_table
from models.data import clean, load_series
from models.features import CALENDAR_FEATURES, FeatureSpec, calendar_features
from models.hourly import wall_clock
from models.inputs import CalendarGrid, InputError, ModelInputs
from models.series import BUNDLED, BUNDLED_NEM, TEMPERATURE, SeriesError, bundled_region
from models.store import Store, resolution_of

NEM_ZONES = ("NSW", "QLD", "SA", "TAS", "VIC")
CSV_ROWS = 52_608  # the source README: one row per half-hour, 2012-2014, no gaps
HOLIDAY = CALENDAR_FEATURES.index("holiday")
NEM_SPEC = FeatureSpec(holiday_country="AU", holiday_zones=BUNDLED["NEM"].holiday_zones)
needs_csv = pytest.mark.skipif(not DEFAULT_NEM_SOURCE.exists(), reason=f"{DEFAULT_NEM_SOURCE} not here")


@pytest.fixture(scope="module")
def nem() -> tuple[list, object]:
    return load_series(region="NEM")


# ------------------------------------------------------------------------------------------ the file

def test_bundled_file_is_compact_attributed_and_half_hourly():
    table = pd.read_parquet(BUNDLED_NEM)
    assert BUNDLED_NEM.stat().st_size < 2_000_000
    assert list(table.columns) == ["zone", "timestamp", "load_mw", TEMPERATURE]
    assert isinstance(table.zone.dtype, pd.CategoricalDtype) and tuple(table.zone.cat.categories) == NEM_ZONES
    assert len(table) == CSV_ROWS * 5 and (table.zone.value_counts() == CSV_ROWS).all()
    for _, part in table.groupby("zone", observed=True):  # the start of each half-hour, no gaps, naive
        assert part.timestamp.dt.tz is None and (part.timestamp.diff().iloc[1:] == pd.Timedelta(minutes=30)).all()
        assert (part.timestamp.iloc[0], part.timestamp.iloc[-1]) == (pd.Timestamp("2011-12-31 23:30"),
                                                                      pd.Timestamp("2014-12-31 23:00"))
    metadata = pq.read_schema(BUNDLED_NEM).metadata
    assert metadata[b"attribution"].decode() == BUNDLED["NEM"].attribution
    notice = (BUNDLED_NEM.parent / "NOTICE.md").read_text()
    assert BUNDLED["NEM"].attribution in notice and BUNDLED_NEM.name in notice
    assert bundled_region(BUNDLED_NEM).time_zone == "Australia/Brisbane"


@needs_csv
def test_bundled_file_holds_every_csv_row_and_value():
    table = pd.read_parquet(BUNDLED_NEM)
    pd.testing.assert_frame_equal(table, nem_table(DEFAULT_NEM_SOURCE))  # every row, value exact (float64)
    raw = pd.read_csv(DEFAULT_NEM_SOURCE)
    assert len(table) == len(raw) * 5

    def row(zone: str, start: str) -> pd.Series:
        return table[(table.zone == zone) & (table.timestamp == pd.Timestamp(start))].iloc[0]

    # the CSV's first row ends at 2012-01-01 00:00, its last at 2014-12-31 23:30 (values read by hand)
    assert (row("NSW", "2011-12-31 23:30").load_mw, row("NSW", "2011-12-31 23:30")[TEMPERATURE]) == (5223.349, 18.15)
    assert (row("TAS", "2011-12-31 23:30").load_mw, row("SA", "2011-12-31 23:30")[TEMPERATURE]) == (313.731, 29.05)
    assert (row("VIC", "2014-12-31 23:00").load_mw, row("VIC", "2014-12-31 23:00")[TEMPERATURE]) == (4135.946, 16.7)


def test_period_end_stamps_move_to_the_hour_they_begin_in(tmp_path: Path):
    """The period ending 2012-01-01 00:00 is the last half-hour of 2011-12-31: the hour 23:00 of that day."""
    states = ("New_South_Wales", "Queensland", "South_Australia", "Tasmania", "Victoria")
    header = "Time," + ",".join(f"Demand_{s}" for s in states) + "," + ",".join(f"Temperature_{s}" for s in states)
    ends = ["2011-12-31 23:30:00", "2012-01-01 00:00:00", "2012-01-01 00:30:00", "2012-01-01 01:00:00"]
    lines = [f"{t}," + ",".join(str(100.0 * (i + 1) + k) for k in range(5)) + "," + ",".join(["20.5"] * 5)
             for i, t in enumerate(ends)]
    (tmp_path / "nem.csv").write_text("\n".join([header, *lines]) + "\n")
    table = nem_table(tmp_path / "nem.csv")
    nsw = table[table.zone == "NSW"]
    assert list(nsw.timestamp) == list(pd.to_datetime(["2011-12-31 23:00", "2011-12-31 23:30",
                                                       "2012-01-01 00:00", "2012-01-01 00:30"]))
    series, report = clean(table)
    s = next(s for s in series if s.zone == "NSW")
    assert list(s.timestamps) == [pd.Timestamp("2011-12-31 23:00"), pd.Timestamp("2012-01-01 00:00")]
    np.testing.assert_allclose(s.load, [150.0, 350.0])  # the mean of its two half-hours
    assert report.zones["NSW"].resolution_s == 1800 and report.zones["NSW"].hours_resampled == 2


# ------------------------------------------------------------------------------------------ the clock

def test_nem_zones_are_hourly_without_daylight_saving_gaps_or_duplicates(nem):
    series, report = nem
    assert sorted(s.zone for s in series) == list(NEM_ZONES)
    assert all(s.covariate_names == (TEMPERATURE,) for s in series)
    for s in series:
        r = report.zones[s.zone]
        assert (r.resolution_s, r.hours_resampled, r.duplicate_hours_merged, r.missing_hours_interpolated,
                r.gaps_split, r.segments) == (1800, 26_303, 0, 0, 0, 1)
        # the two edge hours have one half-hour each (the CSV starts and ends mid-hour): left out, and said
        assert r.incomplete_hours == 2
        assert (s.timestamps[0], s.timestamps[-1]) == (pd.Timestamp("2012-01-01 00:00"),
                                                       pd.Timestamp("2014-12-31 22:00"))
        assert (np.diff(s.timestamps.asi8) == 3_600_000_000).all()  # contiguous: no DST gap or repeat
    assert "resampled from 30-min readings to 26303 hourly means" in str(report)
    nsw = next(s for s in series if s.zone == "NSW")
    # Sydney's clock jumps on 2012-10-07 02:00 and repeats 02:00 on 2013-04-07; market time does neither
    for day in ("2012-10-07", "2013-04-07"):
        assert (nsw.timestamps.normalize() == pd.Timestamp(day)).sum() == 24


def test_wall_clock_of_brisbane_has_no_daylight_saving_and_new_york_has():
    start = int(pd.Timestamp("2013-04-06 12:00", tz="UTC").timestamp())  # spans Sydney's DST end, not Brisbane's
    first, values = wall_clock(start, np.arange(48.0), "Australia/Brisbane")
    assert first == pd.Timestamp("2013-04-06 22:00") and len(values) == 48 and np.isfinite(values).all()
    start = int(pd.Timestamp("2013-11-03 00:00", tz="UTC").timestamp())  # New York's fall-back
    _, values = wall_clock(start, np.arange(48.0), "America/New_York")
    assert len(values) == 47  # the repeated hour is one: the mean of its two


def test_seeding_the_nem_registers_half_hourly_zones_on_market_time(tmp_path: Path):
    store = Store.open(tmp_path / "store.db")
    try:
        result = store.seed(BUNDLED_NEM, until="2012-01-02 00:00")
        assert result.rejected == [] and result.received == 5 * 49  # 2011-12-31 23:30 .. 2012-01-01 23:30
        specs = store.zones()
        assert sorted(specs) == list(NEM_ZONES)
        assert {(s.region, s.resolution_s, s.time_zone) for s in specs.values()} == {
            ("NEM", 1800, "Australia/Brisbane")}
        # summer in Sydney (UTC+11) and winter alike: market time is UTC+10
        table = pd.read_parquet(BUNDLED_NEM)
        winter = table[table.timestamp.between("2012-03-31 12:00", "2012-04-02 12:00")]  # Sydney's DST ends 04-01
        assert store.ingest_frame(winter).rejected == []
        held = store.readings(["NSW"])
        utc = pd.to_datetime(held.ts, unit="s")
        assert utc.iloc[0] == pd.Timestamp("2011-12-31 13:30")
        assert (pd.to_datetime(held.ts, unit="s") + pd.Timedelta(hours=10)).isin(table.timestamp).all()
        assert len(held) == 49 + len(winter[winter.zone == "NSW"])  # nothing dropped or repeated at 04-01
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ sub-hourly ingest

def _zone(zone: str, start: str, periods: int, freq: str, values) -> pd.DataFrame:
    return pd.DataFrame({"zone": zone, "timestamp": pd.date_range(start, periods=periods, freq=freq),
                         "load_mw": np.asarray(values, dtype=float)})


def test_half_hourly_and_quarter_hourly_readings_average_to_hours_and_are_reported():
    half = _zone("HALF", "2021-01-01", 8, "30min", [10, 20, 30, 50, 60, 60, 70, 90])
    quarter = _zone("QUARTER", "2021-01-01", 8, "15min", [1, 2, 3, 6, 10, 10, 10, 10])
    hourly = _zone("HOURLY", "2021-01-01", 4, "h", [100, 200, 300, 400])
    series, report = clean(pd.concat([half, quarter, hourly], ignore_index=True))
    by = {s.zone: s for s in series}
    np.testing.assert_allclose(by["HALF"].load, [15, 40, 60, 80])
    np.testing.assert_allclose(by["QUARTER"].load, [3, 10])
    np.testing.assert_allclose(by["HOURLY"].load, [100, 200, 300, 400])
    assert all(list(s.timestamps) == list(pd.date_range("2021-01-01", periods=len(s), freq="h")) for s in series)
    r = report.zones
    assert (r["HALF"].resolution_s, r["HALF"].hours_resampled, r["HALF"].rows_in) == (1800, 4, 8)
    assert (r["QUARTER"].resolution_s, r["QUARTER"].hours_resampled) == (900, 2)
    assert (r["HOURLY"].resolution_s, r["HOURLY"].hours_resampled) == (3600, 0)
    assert r["HALF"].duplicate_hours_merged == 0  # two readings of an hour are not a duplicate hour
    lines = dict(zip(report.zones, report.summary_lines()))
    assert "resampled from 30-min readings to 4 hourly means" in lines["HALF"]
    assert "resampled from 15-min readings to 2 hourly means" in lines["QUARTER"]
    assert "resampled" not in lines["HOURLY"]
    assert report.to_dict()["HALF"]["resolution_s"] == 1800


def test_an_hour_missing_a_reading_is_a_missing_hour_and_a_repeated_reading_a_duplicate():
    half = _zone("A", "2021-01-01", 12, "30min", [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])
    half = half.drop(index=4)  # the hour 02:00 has only its 02:30 reading: missing, then interpolated
    half = pd.concat([half, half.iloc[[0]].assign(load_mw=30.0)], ignore_index=True)  # 00:00 again: mean 20
    series, report = clean(half.assign(temperature_c=np.linspace(0, 1, len(half))))
    s = series[0]
    np.testing.assert_allclose(s.load, [20, 35, 55, 75, 95, 115])  # hour 00:00: mean(mean(10, 30), 20) = 20
    r = report.zones["A"]
    assert (r.incomplete_hours, r.missing_hours_interpolated, r.duplicate_hours_merged) == (1, 1, 1)
    assert s.covariates.shape == (6, 1) and np.isfinite(s.covariates).all()
    assert "1 incomplete hour (missing 30-min readings) treated as missing" in report.summary_lines()[0]


def test_readings_off_any_sub_hourly_grid_are_refused_with_the_reason():
    with pytest.raises(SeriesError, match="every 20 min, not 30, 15 or 5"):
        clean(_zone("A", "2021-01-01", 9, "20min", np.arange(1, 10)))
    stray = pd.concat([_zone("A", "2021-01-01", 8, "30min", np.arange(1, 9)),
                       _zone("A", "2021-01-01 00:10", 1, "h", [5])], ignore_index=True)
    with pytest.raises(SeriesError, match="not on the zone's 30-min grid"):
        clean(stray)


def test_store_and_clean_see_the_same_resolution():
    assert resolution_of(pd.Series(pd.date_range("2021-01-01", periods=6, freq="30min"))) == 1800
    assert resolution_of(pd.Series(pd.date_range("2021-01-01", periods=6, freq="5min", tz="Australia/Brisbane"))) == 300
    assert resolution_of(pd.Series(pd.date_range("2021-01-01", periods=6, freq="h"))) == 3600


def test_load_series_names_a_bundled_region():
    with pytest.raises(SeriesError, match="no bundled region 'ERCOT'"):
        load_series(region="ERCOT")
    with pytest.raises(SeriesError, match="not both"):
        load_series("x.csv", region="NEM")


# ------------------------------------------------------------------------------------------ holidays

def _holiday(spec: FeatureSpec, day: str, zone: str | None = None) -> float:
    hours = pd.date_range(day, periods=24, freq="h")
    flags = calendar_features(hours, spec, zone)[:, HOLIDAY]
    assert (flags == flags[0]).all()
    return float(flags[0])


def test_each_state_has_its_own_public_holidays():
    cup, nsw_labour = "2013-11-05", "2013-10-07"  # Melbourne Cup (first Tuesday of November): VIC only
    assert (_holiday(NEM_SPEC, cup, "VIC"), _holiday(NEM_SPEC, cup, "NSW")) == (1.0, 0.0)
    assert (_holiday(NEM_SPEC, nsw_labour, "NSW"), _holiday(NEM_SPEC, nsw_labour, "VIC")) == (1.0, 0.0)
    assert _holiday(NEM_SPEC, "2013-01-26", "TAS") == 0.0 and _holiday(NEM_SPEC, "2013-01-28", "TAS") == 1.0
    assert _holiday(FeatureSpec(holiday_country="AU-VIC"), cup) == 1.0  # a subdivision as the country code
    assert _holiday(NEM_SPEC, cup, "NOT_A_STATE") == 0.0  # another zone: the country's (national) holidays
    with pytest.raises(ValueError, match="say which zone"):
        calendar_features(pd.date_range(cup, periods=2, freq="h"), NEM_SPEC)
    with pytest.raises(ValueError, match="holiday calendar 'AU-XX'"):
        FeatureSpec(holiday_country="AU", holiday_zones=(("X", "AU-XX"),))


def test_pjm_holidays_and_specs_unchanged():
    spec = FeatureSpec()  # PJM's default: US holidays, no per-zone ones
    assert _holiday(spec, "2013-07-04") == 1 and _holiday(spec, "2013-11-05") == 0
    assert _holiday(spec, "2013-11-28", "AEP") == 1  # Thanksgiving; a zone changes nothing
    old = {"calendar": True, "holiday_country": "US", "covariates": [], "region_zones": ["AEP"]}  # a bundle's
    assert FeatureSpec.from_dict(old).to_dict() == old  # written as before: no holiday_zones key
    assert not FeatureSpec.from_dict(old).holiday_zones
    round_trip = FeatureSpec.from_dict(NEM_SPEC.to_dict())
    assert round_trip == NEM_SPEC and NEM_SPEC.to_dict()["holiday_zones"]["VIC"] == "AU-VIC"
    hours = pd.date_range("2013-01-01", periods=24 * 366, freq="h")
    np.testing.assert_array_equal(calendar_features(hours, spec), calendar_features(hours, spec, "AEP"))


def test_model_inputs_and_the_serving_grid_read_each_zones_holidays():
    inputs = ModelInputs(NEM_SPEC, input_length=24, max_horizon=24, name="nem")
    last = pd.DatetimeIndex([pd.Timestamp("2013-11-04 23:00")] * 2)  # the forecast covers Cup day
    with pytest.raises(InputError, match="pass zones"):
        inputs.build(np.ones((2, 24)), last)
    _, past, future = inputs.build(np.ones((2, 24)), last, zones=["VIC", "NSW"])
    assert future[0, :, HOLIDAY].all() and not future[1, :, HOLIDAY].any()
    grid = CalendarGrid(inputs, pd.Timestamp("2013-10-01"), pd.Timestamp("2013-12-01"))
    for zone, want in (("VIC", future[0]), ("NSW", future[1])):
        np.testing.assert_array_equal(grid(last[0], zone)[1], want)
    outside = pd.Timestamp("2014-11-03 23:00")  # beyond the grid: computed, per zone too
    assert grid(outside, "VIC")[1][:, HOLIDAY].all() and not grid(outside, "NSW")[1][:, HOLIDAY].any()
    with pytest.raises(InputError, match="say which zone"):
        grid(last[0])


def test_a_model_config_names_per_zone_holidays_and_refuses_unknown_ones():
    from pydantic import ValidationError

    from training.config import FeatureSection

    section = FeatureSection(holiday_country="AU", holiday_zones=dict(BUNDLED["NEM"].holiday_zones))
    assert section.spec() == NEM_SPEC
    assert FeatureSection().spec() == FeatureSpec()  # the shipped configs' (US, no per-zone holidays)
    with pytest.raises(ValidationError, match="holiday calendar 'AU-XX'"):
        FeatureSection(holiday_zones={"NSW": "AU-XX"})


def test_serving_and_the_ingest_command_take_the_bundled_files_region_and_clock():
    """Seeding the service from the NEM file, or `energyopt ingest --register` of it, registers region NEM on
    UTC+10 without naming either; other files keep PJM (the default region) and UTC; what is given wins."""
    from energyopt.cli_ingest import _bundled, _region, _time_zone
    from serving.app import AppArgs

    assert AppArgs.model_validate({"data": str(BUNDLED_NEM)}).region == "NEM"
    assert AppArgs.model_validate({}).region == "PJM"
    assert AppArgs.model_validate({"data": "elsewhere.csv"}).region == "PJM"
    assert AppArgs.model_validate({"data": str(BUNDLED_NEM), "region": "AU"}).region == "AU"
    nem = _bundled(BUNDLED_NEM)
    assert (_region(None, nem), _time_zone(None, "NEM", {}, nem)) == ("NEM", "Australia/Brisbane")
    assert (_region(None, _bundled("-")), _time_zone(None, "PJM", {}, _bundled("other.csv"))) == ("PJM", "UTC")
    assert _time_zone("Australia/Sydney", "NEM", {}, nem) == "Australia/Sydney"


def _weather_inputs() -> ModelInputs:
    return ModelInputs(FeatureSpec(holiday_country="AU", covariates=(TEMPERATURE,)), input_length=48, max_horizon=24)


@pytest.mark.parametrize("bad, reason", [
    (lambda t: t * 1.8 + 32, "looks like degrees Fahrenheit"),  # a summer series sent in °F
    (lambda t: t + 273.15, "not a plausible temperature_c: outside -60..60 °C"),  # kelvin
])
def test_a_weather_model_refuses_temperatures_in_another_unit(bad, reason):
    inputs = _weather_inputs()
    last = pd.DatetimeIndex([pd.Timestamp("2014-01-15 23:00")])
    history = np.full((1, 48), 7000.0, np.float32)
    past, future = np.full((1, 48, 1), 31.0, np.float32), np.full((1, 24, 1), 38.0, np.float32)
    _, got_past, got_future = inputs.build(history, last, extra=(past, future))
    assert got_past[0, :, -1].tolist() == [31.0] * 48 and got_future[0, :, -1].tolist() == [38.0] * 24
    with pytest.raises(InputError, match=reason) as err:
        inputs.build(history, last, extra=(bad(past), bad(future)))
    assert err.value.field == "covariates"
    with pytest.raises(InputError, match="NaN or infinite"):
        inputs.build(history, last, extra=(past, np.where(np.arange(24)[None, :, None] == 5, np.nan, future)))
