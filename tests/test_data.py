"""Ingest, repair and split: real files written to tmp_path, concrete counts asserted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import clean, fingerprint, load_series, read_table, split_by_time, to_long_frame
from models.series import BUNDLED_PJM, SeriesError


def hourly(zone: str = "A", hours: int = 48, start: str = "2021-03-01", base: float = 1000.0) -> pd.DataFrame:
    """A daily-shaped long table: load = base + 100 sin(2 pi hour / 24), rounded to whole MW (exact in float32)."""
    ts = pd.date_range(start, periods=hours, freq="h")
    return pd.DataFrame({"zone": zone, "timestamp": ts,
                         "load_mw": base + np.round(100 * np.sin(2 * np.pi * np.arange(hours) / 24))})


def only(series):
    assert len(series) == 1
    return series[0]


# ------------------------------------------------------------------------------------------- reading

def test_wide_pjm_folder(tmp_path):
    pjm = pd.read_parquet(BUNDLED_PJM)
    for zone in ("AEP", "DAYTON"):  # the fall-back hour 2014-11-02 02:00 appears twice in the published files
        part = pjm[(pjm.zone == zone) & pjm.timestamp.between("2014-11-01 00:00", "2014-11-03 00:00")]
        part.rename(columns={"timestamp": "Datetime", "load_mw": f"{zone}_MW"})[["Datetime", f"{zone}_MW"]].to_csv(
            tmp_path / f"{zone}_hourly.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
    (tmp_path / "README.txt").write_text("not data")
    table = read_table(tmp_path)
    assert list(table.columns) == ["zone", "timestamp", "load_mw"]
    assert table.groupby("zone").size().to_dict() == {"AEP": 50, "DAYTON": 50}
    series, report = clean(table)
    assert [s.zone for s in series] == ["AEP", "DAYTON"]
    assert report.zones["AEP"].duplicate_hours_merged == 1
    assert len(series[0]) == 49


def test_bundled_pjm_reports_repairs():
    series, report = load_series()
    assert sorted(report.zones) == ["AEP", "COMED", "DAYTON", "DOM", "EKPC"]
    assert sum(r.rows_in for r in report.zones.values()) == 470568
    aep = report.zones["AEP"]
    counts = (aep.rows_in, aep.duplicate_hours_merged, aep.missing_hours_interpolated, aep.gaps_split)
    assert counts == (121273, 4, 27, 0)
    assert aep.hours_out == 121273 - 4 + 27 == len(only([s for s in series if s.zone == "AEP"]))
    assert report.zones["DOM"].absurd_values == 1  # 1253 MW on 2009-12-12 00:00, a tenth of its neighbours
    assert all(r.duplicate_hours_merged == 4 and r.segments == 1 for r in report.zones.values())
    assert report.summary_lines()[0].startswith("AEP: 121273 rows, 4 duplicate hours merged (mean), 27 missing")
    assert report.to_dict()["EKPC"]["first_timestamp"] == "2013-06-01T01:00:00"
    for s in series:
        assert s.timestamps.freq == "h" and s.load.dtype == np.float32
        assert np.isfinite(s.load).all() and (s.load > 0).all()


def test_long_csv_and_parquet_with_aliases_and_covariate(tmp_path):
    table = pd.concat([hourly("A"), hourly("B", base=500.0)], ignore_index=True)
    table["temperature_c"] = np.linspace(-5, 5, len(table))
    aliased = table.rename(columns={"zone": "Region", "timestamp": "ds", "load_mw": "Y"})
    aliased.to_csv(tmp_path / "long.csv", index=True)  # the pandas index column is dropped, not a covariate
    aliased.to_parquet(tmp_path / "long.parquet")
    from_csv, from_parquet = read_table(tmp_path / "long.csv"), read_table(tmp_path / "long.parquet")
    assert list(from_csv.columns) == ["zone", "timestamp", "load_mw", "temperature_c"]
    assert fingerprint(from_csv) == fingerprint(from_parquet) == fingerprint(table)
    series, _ = clean(from_parquet)
    assert [s.zone for s in series] == ["A", "B"]
    assert series[1].covariate_names == ("temperature_c",) and series[1].covariates.shape == (48, 1)
    assert series[1].load[6] == 600.0


def test_single_series_file_takes_zone_from_file_name(tmp_path):
    hourly().drop(columns="zone").rename(columns={"timestamp": "Date", "load_mw": "value"}).to_csv(
        tmp_path / "my_feeder.csv", index=False)
    assert set(read_table(tmp_path / "my_feeder.csv").zone) == {"my_feeder"}


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("zone,timestamp,load_mw\n", "no rows"),
    ("zone,timestamp,power\nA,2020-01-01 00:00,1\n", "missing column(s) ['load_mw']"),
    ("zone,timestamp,load_mw,kind\nA,2020-01-01 00:00,1,hot\n", "['kind'] are not numeric"),
    ("zone,timestamp,load_mw\nA,2020-01-01 00:00,1\nA,yesterday,2\n", "'yesterday' at row 1"),
    ("zone,timestamp,load_mw\nA,2020-01-01 00:00,lots\n", "'lots' at row 0"),
    ("zone,date,time,load_mw\nA,2020-01-01,00:00,1\n", "['date', 'time'] all look like 'timestamp'"),
])
def test_bad_csv_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SeriesError) as e:
        read_table(path)
    assert message in str(e.value) and "bad.csv" in str(e.value)


def test_missing_columns_message_names_expected_and_found(tmp_path):
    pd.DataFrame({"when": ["2020-01-01"], "x": [1.0]}).to_csv(tmp_path / "t.csv", index=False)
    expected = r"missing column\(s\) \['timestamp', 'load_mw'\].*found columns \['when', 'x'\]"
    with pytest.raises(SeriesError, match=expected):
        read_table(tmp_path / "t.csv")


def test_corrupt_parquet_missing_path_and_unknown_type(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"\x00garbage bytes, not parquet\xff" * 10)
    with pytest.raises(SeriesError, match="x.parquet: not a readable parquet file"):
        read_table(tmp_path / "x.parquet")
    with pytest.raises(SeriesError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_text("a")
    with pytest.raises(SeriesError, match="unknown file type"):
        read_table(tmp_path / "x.xlsx")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SeriesError, match="no .csv or .parquet files"):
        read_table(tmp_path / "empty_dir")


# ------------------------------------------------------------------------------------------- cleaning

def test_empty_table_and_all_nan_zone():
    with pytest.raises(SeriesError, match="no rows"):
        clean(hourly().iloc[:0])
    table = pd.concat([hourly("GOOD"), hourly("BAD").assign(load_mw=np.nan)], ignore_index=True)
    with pytest.raises(SeriesError, match=r"zone\(s\) \['BAD'\]: no valid load value"):
        clean(table)


def test_duplicate_hours_merged_by_mean():
    table = hourly(hours=24)
    dup = table.iloc[[5]].assign(load_mw=table.load_mw.iloc[5] + 40.0)
    series, report = clean(pd.concat([table, dup], ignore_index=True))
    s = only(series)
    assert len(s) == 24 and s.load[5] == pytest.approx(table.load_mw.iloc[5] + 20.0)
    assert report.zones["A"].duplicate_hours_merged == 1 and report.zones["A"].rows_in == 25


def test_missing_hours_interpolated_linearly():
    table = hourly(hours=24).assign(load_mw=np.arange(24) * 10.0 + 100)
    series, report = clean(table.drop(index=[10, 11, 12]))
    s = only(series)
    np.testing.assert_allclose(s.load, np.arange(24) * 10.0 + 100)
    assert s.timestamps.equals(pd.date_range("2021-03-01", periods=24, freq="h"))
    assert report.zones["A"].missing_hours_interpolated == 3 and report.zones["A"].gaps_split == 0


def test_long_gap_splits_series_and_short_segments_dropped():
    table = hourly(hours=60).drop(index=range(20, 30))  # 10 missing hours > 6
    series, report = clean(table)
    assert [len(s) for s in series] == [20, 30]
    assert series[1].timestamps[0] == pd.Timestamp("2021-03-02 06:00")
    r = report.zones["A"]
    assert (r.gaps_split, r.segments, r.missing_hours_interpolated, r.hours_out) == (1, 2, 0, 50)
    series, report = clean(table, max_interpolate_hours=10)
    assert len(only(series)) == 60 and report.zones["A"].missing_hours_interpolated == 10
    series, report = clean(table, min_segment_hours=25)
    assert len(only(series)) == 30 and report.zones["A"].segments_dropped == 1
    with pytest.raises(SeriesError, match=r"\['A'\]: no gap-free stretch of at least min_segment_hours=31"):
        clean(table, min_segment_hours=31)


def test_non_monotonic_input_sorted_and_reported():
    table = hourly(hours=30)
    series, report = clean(table.iloc[::-1])
    assert report.zones["A"].non_monotonic and not clean(table)[1].zones["A"].non_monotonic
    np.testing.assert_allclose(only(series).load, table.load_mw.to_numpy(np.float32))
    assert "input out of time order (sorted)" in report.summary_lines()[0]


def test_nonpositive_nan_and_absurd_values_removed():
    table = hourly(hours=24 * 10)
    load = table.load_mw.to_numpy().copy()
    expected = load.copy()
    load[[50, 100]] = [0.0, -3.0]
    load[150] = np.nan
    load[200] = load[200] * 50  # absurd: 50x its weekly median
    load[201] = load[201] * 0.1  # absurd: a tenth
    series, report = clean(table.assign(load_mw=load))
    r = report.zones["A"]
    assert (r.nonpositive_values, r.nan_values, r.absurd_values, r.missing_hours_interpolated) == (2, 1, 2, 5)
    np.testing.assert_allclose(only(series).load[[50, 100, 150]], expected[[50, 100, 150]], rtol=0.01)
    assert only(series).load[200:202].max() < 1200


def test_timestamps_off_the_hour_and_timezone_kept():
    with pytest.raises(SeriesError, match="2021-03-01 00:30:00 is not on the hour"):
        clean(hourly().assign(timestamp=lambda t: t.timestamp + pd.Timedelta(minutes=30)))
    # across the US spring-forward: 24 absolute hours, no gap, zone kept
    aware = hourly(hours=24, start="2021-03-14 00:00").assign(
        timestamp=pd.date_range("2021-03-14 00:00", periods=24, freq="h", tz="America/New_York"))
    s = only(clean(aware)[0])
    assert str(s.timestamps.tz) == "America/New_York" and len(s) == 24
    assert s.timestamps[3] == pd.Timestamp("2021-03-14 04:00", tz="America/New_York")


def test_mixed_utc_offsets_read_as_utc(tmp_path):
    (tmp_path / "dst.csv").write_text(  # the US fall-back hour written with offsets: two distinct hours
        "zone,timestamp,load_mw\n"
        "A,2021-11-07 01:00-04:00,10\nA,2021-11-07 01:00-05:00,12\nA,2021-11-07 02:00-05:00,14\n")
    s = only(load_series(tmp_path / "dst.csv")[0])
    assert str(s.timestamps.tz) == "UTC" and len(s) == 3 and s.timestamps[0] == pd.Timestamp("2021-11-07 05:00Z")


# ------------------------------------------------------------------------------------------- splitting

def test_split_by_time_sizes_order_and_context():
    b = hourly("B", hours=300, start="2021-03-09 08:00")
    table = pd.concat([hourly("A", hours=500), b], ignore_index=True)
    series, _ = clean(table.drop(index=[100 + i for i in range(10)]))  # A: gap splits it at hours 100..109
    split = split_by_time(series, val_hours=48, test_hours=24)
    for zone, total in (("A", 490), ("B", 300)):
        val = only([s for s in split.val if s.zone == zone])
        test = only([s for s in split.test if s.zone == zone])
        train = [s for s in split.train if s.zone == zone]
        assert (len(val), len(test), sum(len(s) for s in train)) == (48, 24, total - 72)
        assert train[-1].timestamps[-1] < val.timestamps[0] and val.timestamps[-1] < test.timestamps[0]
        assert test.timestamps[-1] == pd.Timestamp("2021-03-21 19:00")  # both zones end at the same hour
        assert val.target_start == val.timestamps[0] and train[0].target_start is None
    assert len([s for s in split.train if s.zone == "A"]) == 2

    ctx = split_by_time(series, val_hours=48, test_hours=24, context_hours=100)
    test = only([s for s in ctx.test if s.zone == "A"])
    assert len(test) == 124 and test.target_start == pd.Timestamp("2021-03-20 20:00")
    assert test.timestamps[-24] == test.target_start and test.timestamps.freq == "h"


def test_split_too_short_zone_names_it():
    series, _ = clean(pd.concat([hourly("LONG", hours=200), hourly("SHORT", hours=50)], ignore_index=True))
    with pytest.raises(SeriesError, match="zone 'SHORT' spans 50 hours .* needs at least 73"):
        split_by_time(series, val_hours=48, test_hours=24)


def test_long_frame_round_trip_and_fingerprint_ignores_row_order():
    table = pd.concat([hourly("A"), hourly("B")], ignore_index=True).assign(temp=1.5)
    series, _ = clean(table)
    back = to_long_frame(series)
    assert list(back.columns) == ["zone", "timestamp", "load_mw", "temp"] and len(back) == 96
    assert fingerprint(back) == fingerprint(table)  # float32 round trip of these values is exact
    assert fingerprint(table.sample(frac=1, random_state=1)) == fingerprint(table)
    assert fingerprint(table.assign(load_mw=table.load_mw + 1)) != fingerprint(table)


def test_realistic_weather_forecast_errs_more_with_lead_time_and_alike_for_every_model():
    from training.evaluate import WeatherForecastError

    err = WeatherForecastError(seed=3)
    first = pd.date_range("2014-01-01", periods=2000, freq="D")
    e = err.errors("NSW", first, 48)
    assert np.array_equal(e, WeatherForecastError(seed=3).errors("NSW", first, 48))  # every model the same
    assert not np.array_equal(e, err.errors("VIC", first, 48))  # zones err independently
    spread = e.std(axis=0)
    assert 0.6 < spread[0] < 1.0 and 1.5 < spread[23] < 1.9 and 2.0 < spread[47] < 2.6
    assert abs(e.mean()) < 0.15  # unbiased
    observed = np.stack([np.full((2000, 48), 25.0), np.full((2000, 48), 1.0)], axis=2)
    forecast = err.apply(observed, ["temperature_c", "price"], "NSW", first)
    assert np.allclose(forecast[:, :, 0] - 25.0, e) and (forecast[:, :, 1] == 1.0).all()  # only weather moves
