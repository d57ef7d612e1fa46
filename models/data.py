"""Ingest: read load tables in the shapes people publish them, repair them, and split them in time.

Every model trains on the output of `clean`: gap-free hourly `Series` segments with finite positive load.
Real feeds are not like that (the PJM files repeat the daylight-saving fall-back hour, skip the
spring-forward hour and have an occasional absurd reading; the NEM's are half-hourly), so `clean`
resamples sub-hourly readings to hourly means, repairs what it can, splits where it cannot, and counts
every change in a `RepairReport` that the command line and the demo print.

Time convention: a timestamp labels the interval that starts at it (hour beginning, as the store's `ts`):
the hour 13:00 holds the readings from 13:00 up to 14:00, e.g. the half-hours starting 13:00 and 13:30.
Data labelled by the end of its intervals (the NEM CSV) is shifted when it is bundled.
All steps are vectorized over all zones at once: the bundled ~470k rows load in under a second.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from models.series import BUNDLED, BUNDLED_PJM, LOAD, REQUIRED_COLUMNS, RESOLUTIONS, TIMESTAMP, ZONE, SeriesError

# Column names accepted for each schema column, compared case-insensitively.
ALIASES: dict[str, tuple[str, ...]] = {
    TIMESTAMP: ("timestamp", "datetime", "date", "time", "ds"),
    LOAD: ("load_mw", "load", "value", "y", "mw"),
    ZONE: ("zone", "region", "id", "unique_id", "series"),
}
WIDE_SUFFIX = "_mw"  # wide per-zone files name their load column <ZONE>_MW, e.g. AEP_MW
FILE_TYPES = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}

# A value is absurd when it is below ABSURD_LOW or above ABSURD_HIGH times the median of the valid values
# in the centred week around it. The median ignores the outlier itself and daily/weekly shape averages
# out over a week; real events stay inside the band (the deepest storm outage in the PJM data, EKPC in
# September 2013, is 0.44 of its weekly median) while a dropped digit or a unit slip does not (DOM's
# 1253 MW on 2009-12-12 is 0.11).
ABSURD_LOW, ABSURD_HIGH = 0.2, 5.0
ABSURD_WINDOW_HOURS = 7 * 24 + 1  # odd, so the window is centred exactly

_HOUR_US = 3_600_000_000  # one hour in microseconds, the timestamp unit used throughout


@dataclass
class ZoneReport:
    """What `clean` found and changed in one zone."""

    rows_in: int
    resolution_s: int  # the input's reading interval: 3600, or 1800/900/300 for readings resampled to hours
    hours_resampled: int  # hours made as the mean of their sub-hourly readings (0 for hourly input)
    incomplete_hours: int  # sub-hourly hours missing some of their readings, treated as missing hours
    duplicate_hours_merged: int  # hours with a reading time given more than once, merged by the mean
    missing_hours_interpolated: int  # hours absent or invalid in the input, filled by linear interpolation
    gaps_split: int  # runs of missing hours longer than max_interpolate_hours: the series was cut there
    nonpositive_values: int  # rows with load <= 0, treated as missing
    absurd_values: int  # hours outside ABSURD_LOW..ABSURD_HIGH x their weekly median, treated as missing
    nan_values: int  # rows with a missing or infinite load
    non_monotonic: bool  # the input was not in time order (it was sorted)
    segments: int  # gap-free segments returned
    segments_dropped: int  # segments shorter than min_segment_hours, not returned
    covariate_values_filled: int  # (hour, covariate) cells filled by interpolation inside returned segments
    first_timestamp: pd.Timestamp  # first hour returned
    last_timestamp: pd.Timestamp  # last hour returned
    hours_out: int  # hours returned, all segments together

    def summary_line(self, zone: str) -> str:
        minutes = f"{self.resolution_s // 60}-min"
        parts = [
            _count(self.rows_in, "row"),
            *([f"resampled from {minutes} readings to {_count(self.hours_resampled, 'hourly mean')}"]
              if self.resolution_s < 3600 else []),
            *([_count(self.incomplete_hours, "incomplete hour") + f" (missing {minutes} readings) treated as missing"]
              if self.incomplete_hours else []),
            _count(self.duplicate_hours_merged, "duplicate hour") + " merged (mean)",
            _count(self.missing_hours_interpolated, "missing hour") + " interpolated",
            _count(self.gaps_split, "gap") + " split",
            _count(self.absurd_values, "absurd value") + " removed",
        ]
        parts += [text for shown, text in (  # these only when they happened
            (self.nonpositive_values, _count(self.nonpositive_values, "non-positive value") + " removed"),
            (self.nan_values, _count(self.nan_values, "missing (NaN) value")),
            (self.non_monotonic, "input out of time order (sorted)"),
            (self.segments_dropped, _count(self.segments_dropped, "short segment") + " dropped"),
            (self.covariate_values_filled, _count(self.covariate_values_filled, "covariate value") + " interpolated"),
        ) if shown]
        return (f"{zone}: {', '.join(parts)} -> {_count(self.segments, 'segment')}, {self.hours_out} hours "
                f"({self.first_timestamp} .. {self.last_timestamp})")


@dataclass
class RepairReport:
    """What ingest found and repaired, per zone; print it to show a user what happened to their data."""

    zones: dict[str, ZoneReport] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        return [report.summary_line(zone) for zone, report in self.zones.items()]

    def to_dict(self) -> dict[str, Any]:
        return {zone: {**asdict(r), "first_timestamp": r.first_timestamp.isoformat(),
                       "last_timestamp": r.last_timestamp.isoformat()} for zone, r in self.zones.items()}

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())


@dataclass
class Series:
    """One cleaned, gap-free hourly segment of one zone.

    For validation and test segments from `split_by_time`, `target_start` is the first hour whose load
    belongs to the period; the hours before it are context (history a window may read, never a target).
    """

    zone: str
    timestamps: pd.DatetimeIndex  # strictly hourly, contiguous, no duplicates (freq 'h')
    load: np.ndarray  # float32 [T], finite, positive
    covariates: np.ndarray | None = None  # float32 [T, K] extra numeric columns, or None
    covariate_names: tuple[str, ...] = ()
    target_start: pd.Timestamp | None = None  # None for training segments

    def __post_init__(self) -> None:
        n, k = len(self.timestamps), len(self.covariate_names)
        cov_shape = None if self.covariates is None else self.covariates.shape
        if len(self.load) != n or not (cov_shape == (n, k) or (cov_shape is None and k == 0)):
            raise SeriesError(f"zone {self.zone!r}: {n} timestamps, {len(self.load)} load values, "
                              f"covariates of shape {cov_shape} for {k} covariate names")

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass
class Split:
    """Chronological train / validation / test segments (see `split_by_time`)."""

    train: list[Series]
    val: list[Series]
    test: list[Series]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------------------------- reading

def _suffix(path: Path) -> str | None:
    """The FILE_TYPES suffix the file name ends with (any case), or None."""
    return next((s for s in FILE_TYPES if path.name.lower().endswith(s)), None)


def read_table(path: str | Path) -> pd.DataFrame:
    """The raw long table (zone, timestamp, load_mw, covariates...) of a file or a folder of files.

    Accepts long CSV/Parquet, wide per-zone files (`Datetime,AEP_MW` -> zone "AEP", several `<ZONE>_MW`
    columns allowed), single-series files (no zone column: the zone is the file name) and folders of
    any of these. Nothing is repaired here (see `clean`), so the table fingerprints the data as given.
    """
    path = Path(path)
    if not path.exists():
        raise SeriesError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _suffix(p))
        if not files:
            found = sorted(p.name for p in path.iterdir())[:10]
            raise SeriesError(f"{path}: folder has no .csv or .parquet files (found {found})")
        tables = [_read_file(p) for p in files]
        tzs = {str(t[TIMESTAMP].dt.tz) for t in tables}
        if len(tzs) > 1:
            raise SeriesError(f"{path}: files mix timestamp time zones {sorted(tzs)}; use one for all files")
        return pd.concat(tables, ignore_index=True)
    if _suffix(path) is None:
        raise SeriesError(f"{path}: unknown file type; expected one of {sorted(FILE_TYPES)}")
    return _read_file(path)


def _read_file(path: Path) -> pd.DataFrame:
    suffix = _suffix(path)
    kind = FILE_TYPES[suffix]
    if path.stat().st_size == 0:
        raise SeriesError(f"{path}: file is empty")
    try:
        raw = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise SeriesError(f"{path}: file is empty") from None
    except (ValueError, OSError, pa.ArrowException) as e:
        raise SeriesError(f"{path}: not a readable {kind} file ({type(e).__name__}: {e})") from None
    return _canonical(raw, default_zone=path.name[: -len(suffix)], source=str(path))


def _find_column(columns: list[str], canonical: str, source: str) -> str | None:
    matches = [c for c in columns if c.lower() in ALIASES[canonical]]
    if len(matches) > 1:
        raise SeriesError(f"{source}: columns {matches} all look like {canonical!r}; rename or drop all but one")
    return matches[0] if matches else None


def _canonical(raw: pd.DataFrame, default_zone: str | None, source: str) -> pd.DataFrame:
    """Validated long table: zone str, timestamp datetime64[us], load_mw and covariates float64.

    Columns named 'Unnamed: N' are dropped: they are an index that pandas wrote along with the data.
    """
    raw = raw[[c for c in raw.columns if not str(c).startswith("Unnamed: ")]]
    columns = [str(c) for c in raw.columns]
    raw = raw.set_axis(columns, axis=1)
    if len(raw) == 0:
        raise SeriesError(f"{source}: no rows (columns {columns})")
    found = {key: _find_column(columns, key, source) for key in REQUIRED_COLUMNS}
    if found[TIMESTAMP] and not found[LOAD] and not found[ZONE]:
        wide = [c for c in columns if c != found[TIMESTAMP]]
        if wide and all(c.lower().endswith(WIDE_SUFFIX) and len(c) > len(WIDE_SUFFIX) for c in wide):
            return _canonical(_melt_wide(raw, found[TIMESTAMP], wide), None, source)
    # Without a zone column a file holds one series, named after the file.
    missing = [key for key in REQUIRED_COLUMNS if found[key] is None and not (key == ZONE and default_zone)]
    if missing:
        expected = "; ".join(f"{key!r} (or {', '.join(ALIASES[key][1:])})" for key in missing)
        raise SeriesError(
            f"{source}: missing column(s) {missing}: expected {expected}, or a wide file "
            f"'Datetime,<ZONE>{WIDE_SUFFIX.upper()}'; found columns {columns}")
    table = raw.rename(columns={found[key]: key for key in REQUIRED_COLUMNS if found[key]})
    extra = [c for c in table.columns if c not in REQUIRED_COLUMNS]
    non_numeric = [c for c in extra if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise SeriesError(f"{source}: extra column(s) {non_numeric} are not numeric; covariates must be numbers "
                          f"(drop these columns or convert them)")
    zone = table[ZONE] if found[ZONE] else pd.Series(default_zone, index=table.index)
    if zone.isna().any():
        raise SeriesError(
            f"{source}: {int(zone.isna().sum())} row(s) have no zone (first at row {int(zone.isna().argmax())})")
    return pd.DataFrame({ZONE: zone.astype("str"), TIMESTAMP: _parse_timestamps(table[TIMESTAMP], source),
                         LOAD: _parse_load(table[LOAD], source), **{c: table[c].astype("float64") for c in extra}})


def _melt_wide(raw: pd.DataFrame, ts_column: str, zone_columns: list[str]) -> pd.DataFrame:
    parts = [pd.DataFrame({ZONE: c[: -len(WIDE_SUFFIX)], TIMESTAMP: raw[ts_column], LOAD: raw[c]})
             for c in zone_columns]
    return pd.concat(parts, ignore_index=True)


def _parse_timestamps(column: pd.Series, source: str) -> pd.Series:
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column):
        return column.dt.as_unit("us")
    if pd.api.types.is_numeric_dtype(column):
        raise SeriesError(f"{source}: timestamps are numbers (e.g. {column.iloc[0]!r}); "
                          f"expected date-times like '2020-01-31 13:00'")
    empty = column.isna()
    if empty.any():
        raise SeriesError(f"{source}: {int(empty.sum())} row(s) have no timestamp (first at row {int(empty.argmax())})")
    try:
        parsed = pd.to_datetime(column, errors="coerce")
    except ValueError:  # several UTC offsets (-04:00 and -05:00 across daylight saving): UTC is their common zone
        parsed = pd.to_datetime(column, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        i = int(bad.argmax())
        raise SeriesError(
            f"{source}: {int(bad.sum())} timestamp(s) could not be parsed, e.g. {column.iloc[i]!r} at row {i}; "
            f"expected date-times like '2020-01-31 13:00' (one format for the whole column)")
    return parsed.dt.as_unit("us")


def _parse_load(column: pd.Series, source: str) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")  # numeric columns come back as they are
    bad = numbers.isna() & column.notna()
    if bad.any():
        i = int(bad.argmax())
        raise SeriesError(
            f"{source}: {int(bad.sum())} load value(s) are not numbers, e.g. {column.iloc[i]!r} at row {i}")
    return numbers.astype("float64")


# ---------------------------------------------------------------------------------------------- cleaning

def hour_runs(codes: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """First row of each run of rows with the same (zone code, hour), for rows sorted by both: where
    duplicate hours (daylight saving, resends) are merged, by ingest and by batch scoring alike."""
    return np.flatnonzero(np.r_[True, (codes[1:] != codes[:-1]) | (hours[1:] != hours[:-1])])


def mean_per_run(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each run of rows starting at `starts`; NaN where a run has none."""
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts, axis=0)
    counts = np.add.reduceat(finite.astype(np.int64), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _nearest_valid(valid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the index of the nearest valid position at or before it and at or after it inside
    its group [lo, hi]; -1 / len(valid) where there is none."""
    n = len(valid)
    index = np.arange(n)
    before = np.maximum.accumulate(np.where(valid, index, -1))
    after = np.minimum.accumulate(np.where(valid, index, n)[::-1])[::-1]
    return np.where(before >= lo, before, -1), np.where(after <= hi, after, n)


def _interpolate(values: np.ndarray, before: np.ndarray, after: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Linear interpolation (hours are evenly spaced, so linear in position is linear in time) at `fill`."""
    i = np.flatnonzero(fill)
    lo, hi = before[i], after[i]
    out = values.copy()
    out[i] = values[lo] + (values[hi] - values[lo]) * ((i - lo) / (hi - lo))
    return out


MAX_INTERPOLATE_HOURS = 6  # the repair rule: interior gaps up to this long are interpolated, longer ones kept


def fill_short_gaps(values: np.ndarray, max_hours: int = MAX_INTERPOLATE_HOURS) -> np.ndarray:
    """One hourly series (NaN where missing) with its interior runs of at most `max_hours` missing hours
    filled by linear interpolation: the repair rule of `clean`, for a series the server holds live."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values)
    if valid.all() or not valid.any():
        return values
    position = np.arange(len(values))
    before = np.maximum.accumulate(np.where(valid, position, -1))
    after = np.minimum.accumulate(np.where(valid, position, len(values))[::-1])[::-1]
    interior = ~valid & (before >= 0) & (after < len(values))
    fill = interior & (after - before - 1 <= max_hours)
    return _interpolate(values, before, after, fill) if fill.any() else values


def clean(table: pd.DataFrame, *, max_interpolate_hours: int = MAX_INTERPOLATE_HOURS,
          min_segment_hours: int = 0) -> tuple[list[Series], RepairReport]:
    """Repair a raw long table into gap-free hourly segments and report every change, per zone.

    Per zone: sort by time; treat NaN and non-positive loads as missing; merge duplicate reading times by
    their mean (the daylight-saving fall-back hour of naive local time); resample sub-hourly readings (a
    zone whose times are not all on the hour: every 30, 15 or 5 minutes, see `zone_resolutions`) to the
    mean of each hour, an hour missing any of its readings being a missing hour (as the serving replicas
    average them, models/hourly.py); put the values on a full hourly grid;
    treat absurd values as missing (see ABSURD_LOW); fill runs of at most `max_interpolate_hours` missing
    hours by linear interpolation and split the series at longer runs; drop segments shorter than
    `min_segment_hours`. Covariate holes inside a returned segment are interpolated too (nearest value at
    its edges). Timestamps keep their time zone; naive timestamps are local time as published.
    """
    if max_interpolate_hours < 0 or min_segment_hours < 0:
        raise SeriesError(f"max_interpolate_hours ({max_interpolate_hours}) and min_segment_hours "
                          f"({min_segment_hours}) must be >= 0")
    table = _canonical(table, default_zone=None, source="table")
    cov_names = tuple(c for c in table.columns if c not in REQUIRED_COLUMNS)
    stamps = pd.DatetimeIndex(table[TIMESTAMP])
    codes, zone_names = pd.factorize(table[ZONE], sort=True)
    # counts: ZoneReport fields, one value per zone, from each step
    codes, hour, load, covs, counts = _hourly_rows(table, stamps, codes, cov_names, len(zone_names))
    grid = _ZoneGrid.build(codes, hour, load, covs, len(zone_names))
    counts["absurd_values"] = grid.drop_absurd()
    valid, counts["missing_hours_interpolated"], counts["gaps_split"] = grid.fill_short_gaps(
        zone_names, max_interpolate_hours)
    seg_start, seg_end, seg_zone, counts["segments_dropped"] = grid.segments(valid, zone_names, min_segment_hours)
    counts["covariate_values_filled"] = np.zeros(len(zone_names), dtype=np.int64)
    if cov_names:
        grid.cov, counts["covariate_values_filled"] = _fill_covariates(grid.cov, seg_start, seg_end, seg_zone,
                                                                       zone_names, cov_names)
    out = [grid.series(a, b, z, str(zone_names[z]), cov_names, stamps.tz)
           for a, b, z in zip(seg_start, seg_end, seg_zone)]
    return out, _repair_report(out, zone_names, counts)


def _per_zone(zone_codes: np.ndarray, mask: np.ndarray, n_zones: int) -> np.ndarray:
    return np.bincount(zone_codes[mask], minlength=n_zones)


def _hourly_rows(table: pd.DataFrame, stamps: pd.DatetimeIndex, codes: np.ndarray, cov_names: tuple[str, ...],
                 n_zones: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Rows -> one (zone code, hour, load, covariates) per zone and hour, sorted, invalid loads NaN; with the
    per-zone counts of what was found (rows, NaN and non-positive loads, disorder, duplicate hours)."""
    us = stamps.asi8
    step_s = zone_resolutions(codes, us, n_zones, table[ZONE])
    hour = us // _HOUR_US  # hour beginning: a reading belongs to the hour its interval starts in
    load = table[LOAD].to_numpy(dtype=np.float64)
    counts = {"rows_in": np.bincount(codes, minlength=n_zones), "resolution_s": step_s,
              "nan_values": _per_zone(codes, ~np.isfinite(load), n_zones),
              "nonpositive_values": _per_zone(codes, np.isfinite(load) & (load <= 0), n_zones)}
    load = np.where(np.isfinite(load) & (load > 0), load, np.nan)

    # Out of order: within a zone, in input order, a time earlier than the row before it.
    by_zone = np.argsort(codes, kind="stable")
    zc, zt = codes[by_zone], us[by_zone]
    counts["non_monotonic"] = _per_zone(zc[1:], (zc[1:] == zc[:-1]) & (zt[1:] < zt[:-1]), n_zones) > 0

    # Sort by (zone, time) and merge duplicate reading times by their mean...
    order = np.lexsort((us, codes))
    codes, us, hour, load = codes[order], us[order], hour[order], load[order]
    covs = table[list(cov_names)].to_numpy(dtype=np.float64)[order]
    starts = hour_runs(codes, us)
    repeated = np.diff(np.r_[starts, len(codes)]) > 1
    codes, hour, load = codes[starts], hour[starts], mean_per_run(load, starts)
    covs = mean_per_run(covs, starts) if cov_names else covs[starts]
    # ...then average each hour's readings (one reading per hour for hourly zones: nothing changes)
    starts = hour_runs(codes, hour)
    counts["duplicate_hours_merged"] = _per_zone(codes[starts], np.add.reduceat(repeated, starts) > 0, n_zones)
    valid = np.add.reduceat(np.isfinite(load).astype(np.int64), starts)
    per_hour = 3600 // step_s[codes[starts]]
    sub_hourly = per_hour > 1
    complete = valid >= per_hour  # an hour missing one of its readings is missing: a mean of the rest is biased
    counts["hours_resampled"] = _per_zone(codes[starts], sub_hourly & complete, n_zones)
    counts["incomplete_hours"] = _per_zone(codes[starts], sub_hourly & ~complete & (valid > 0), n_zones)
    hourly_load = np.where(complete | ~sub_hourly, mean_per_run(load, starts), np.nan)
    covs = mean_per_run(covs, starts) if cov_names else covs[starts]
    return codes[starts], hour[starts], hourly_load, covs, counts


def zone_resolutions(codes: np.ndarray, us: np.ndarray, n_zones: int, zones: pd.Series | None = None) -> np.ndarray:
    """Per zone code, its readings' interval in seconds: 3600 when all its times (microseconds since the
    epoch) are on the hour, else the most common step between its distinct times. With `zones` (the
    rows' names, for messages) a zone off the hour whose step is not 30, 15 or 5 minutes, or with a time
    off its own grid, is a SeriesError; without, such a zone is given its most common step as it is."""
    step = np.full(n_zones, 3600, dtype=np.int64)
    off = us % _HOUR_US != 0
    if not off.any():
        return step
    order = np.lexsort((us, codes))
    c, t = codes[order], us[order]
    distinct = np.r_[True, (c[1:] != c[:-1]) | (t[1:] != t[:-1])]
    c, t = c[distinct], t[distinct]
    same = c[1:] == c[:-1]
    steps = pd.DataFrame({"zone": c[1:][same], "step": (t[1:] - t[:-1])[same] // 1_000_000})
    common = steps.value_counts(sort=True).reset_index().drop_duplicates("zone")  # most common first
    sub_hourly = np.unique(codes[off])
    mode = dict(zip(common["zone"], common["step"]))
    for z in sub_hourly:
        step[z] = mode.get(z, 3600)
    if zones is None:
        return step
    unfit = np.isin(codes, sub_hourly[~np.isin(step[sub_hourly], RESOLUTIONS[1:])]) & off
    if unfit.any():
        i = int(unfit.argmax())
        raise SeriesError(f"zone {zones.iloc[i]!r}: timestamp {pd.Timestamp(us[i], unit='us')} is not on the hour, "
                          f"and its readings come every {step[codes[i]] // 60} min, not 30, 15 or 5; resample the "
                          f"data to hourly means first")
    stray = us % (step[codes] * 1_000_000) != 0
    if stray.any():
        i = int(stray.argmax())
        raise SeriesError(f"zone {zones.iloc[i]!r}: timestamp {pd.Timestamp(us[i], unit='us')} is not on the zone's "
                          f"{step[codes[i]] // 60}-min grid ({int(stray[codes == codes[i]].sum())} such rows)")
    return step


@dataclass
class _ZoneGrid:
    """A full hourly grid per zone, zones back to back with ABSURD_WINDOW_HOURS // 2 empty hours between
    them so one rolling median over the whole grid never mixes two zones."""

    load: np.ndarray  # [G] MW, NaN where missing
    cov: np.ndarray  # [G, K]
    zone: np.ndarray  # [G] zone code of each grid hour, -1 in the padding
    lo: np.ndarray  # [G] first and last grid position of each hour's zone
    hi: np.ndarray
    base: np.ndarray  # [Z] grid position of each zone's first hour
    first_hour: np.ndarray  # [Z] that hour (hours since the epoch)

    @classmethod
    def build(cls, codes: np.ndarray, hour: np.ndarray, load: np.ndarray, covs: np.ndarray,
              n_zones: int) -> _ZoneGrid:
        pad = ABSURD_WINDOW_HOURS // 2
        zone_first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        first_hour = hour[zone_first]
        span = hour[np.r_[zone_first[1:], len(hour)] - 1] - first_hour + 1
        base = np.r_[0, np.cumsum(span + pad)[:-1]]
        n_grid = int(base[-1] + span[-1])
        position = base[codes] + (hour - first_hour[codes])
        grid = np.full(n_grid, np.nan)
        grid[position] = load
        grid_cov = np.full((n_grid, covs.shape[1]), np.nan)
        grid_cov[position] = covs
        lo, hi = np.repeat(base, span + pad)[:n_grid], np.repeat(base + span - 1, span + pad)[:n_grid]
        zone = np.where(np.arange(n_grid) <= hi, np.repeat(np.arange(n_zones), span + pad)[:n_grid], -1)
        return cls(grid, grid_cov, zone, lo, hi, base, first_hour)

    def per_zone(self, mask: np.ndarray) -> np.ndarray:
        return _per_zone(self.zone, mask, len(self.base))

    def drop_absurd(self) -> np.ndarray:
        """Set absurd values (see ABSURD_LOW) missing; returns their count per zone."""
        median = pd.Series(self.load).rolling(ABSURD_WINDOW_HOURS, center=True, min_periods=1).median().to_numpy()
        with np.errstate(invalid="ignore"):
            ratio = self.load / median
        absurd = (ratio < ABSURD_LOW) | (ratio > ABSURD_HIGH)
        self.load[absurd] = np.nan
        return self.per_zone(absurd)

    def fill_short_gaps(self, zone_names: pd.Index,
                        max_interpolate_hours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fill short interior runs of missing hours; longer runs split the zone into segments. Returns the
        valid hours and, per zone, the hours filled and the gaps left."""
        n_grid = len(self.load)
        valid = np.isfinite(self.load)
        empty = [str(zone_names[z]) for z in np.flatnonzero(self.per_zone(valid) == 0)]
        if empty:
            raise SeriesError(f"zone(s) {empty}: no valid load value (all missing, non-positive or absurd); "
                              f"fix or remove these zones")
        before, after = _nearest_valid(valid, self.lo, self.hi)
        missing = (self.zone >= 0) & ~valid
        interior = missing & (before >= 0) & (after < n_grid)
        run_length = after - before - 1
        fill = interior & (run_length <= max_interpolate_hours)
        gap_starts = interior & ~fill & (np.arange(n_grid) == before + 1)
        self.load = _interpolate(self.load, before, after, fill)
        return valid | fill, self.per_zone(fill), self.per_zone(gap_starts)

    def segments(self, valid: np.ndarray, zone_names: pd.Index,
                 min_segment_hours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Maximal runs of valid hours inside a zone of at least `min_segment_hours`: start, end (exclusive)
        and zone code of each, and the number dropped per zone."""
        edges = np.diff(np.r_[False, valid, False].astype(np.int8))
        seg_start, seg_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        seg_zone = self.zone[seg_start]
        keep = (seg_end - seg_start) >= min_segment_hours
        dropped = np.bincount(seg_zone[~keep], minlength=len(self.base))
        seg_start, seg_end, seg_zone = seg_start[keep], seg_end[keep], seg_zone[keep]
        no_segment = [str(zone_names[z]) for z in np.flatnonzero(np.bincount(seg_zone, minlength=len(self.base)) == 0)]
        if no_segment:
            raise SeriesError(f"zone(s) {no_segment}: no gap-free stretch of at least min_segment_hours="
                              f"{min_segment_hours} hours; lower min_segment_hours or raise max_interpolate_hours")
        return seg_start, seg_end, seg_zone, dropped

    def series(self, a: int, b: int, z: int, zone: str, cov_names: tuple[str, ...], tz: Any) -> Series:
        """Grid hours [a, b) of zone code z as a Series, timestamps back in the input's time zone."""
        first = pd.Timestamp((self.first_hour[z] + a - self.base[z]) * _HOUR_US, unit="us", tz="UTC" if tz else None)
        timestamps = pd.date_range(first.tz_convert(tz) if tz else first, periods=int(b - a), freq="h")
        covariates = self.cov[a:b].astype(np.float32) if cov_names else None
        return Series(zone, timestamps, self.load[a:b].astype(np.float32), covariates, cov_names)


def _repair_report(out: list[Series], zone_names: pd.Index, counts: dict[str, np.ndarray]) -> RepairReport:
    segments_of: dict[str, list[Series]] = {}
    for s in out:
        segments_of.setdefault(s.zone, []).append(s)
    report = RepairReport()
    for z, name in enumerate(zone_names):
        segs = segments_of[str(name)]
        report.zones[str(name)] = ZoneReport(
            **{key: values[z].item() for key, values in counts.items()},  # an int, or a bool for non_monotonic
            segments=len(segs), first_timestamp=segs[0].timestamps[0], last_timestamp=segs[-1].timestamps[-1],
            hours_out=sum(len(s) for s in segs))
    return report


def _fill_covariates(grid_cov: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray, seg_zone: np.ndarray,
                     zone_names: pd.Index, cov_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Fill covariate holes inside each segment: linear between known values, the nearest one at its
    edges. Returns the filled grid and the number of filled cells per zone."""
    lengths = seg_end - seg_start
    seg_of = np.repeat(np.arange(len(lengths)), lengths)
    lo = np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    hi = lo + np.repeat(lengths, lengths) - 1
    position = seg_start[seg_of] + (np.arange(len(seg_of)) - lo)
    values = grid_cov[position]
    filled = np.zeros(len(zone_names), dtype=np.int64)
    for k, name in enumerate(cov_names):
        column = values[:, k]
        valid = np.isfinite(column)
        if valid.all():
            continue
        before, after = _nearest_valid(valid, lo, hi)
        hopeless = ~valid & (before < 0) & (after >= len(column))
        if hopeless.any():
            zones = sorted({str(zone_names[z]) for z in seg_zone[seg_of[hopeless]]})
            raise SeriesError(f"zone(s) {zones}: covariate {name!r} has no value in a whole segment; "
                              f"provide it for every zone or drop the column")
        interior = ~valid & (before >= 0) & (after < len(column))
        column = _interpolate(column, before, after, interior)
        column = np.where(np.isfinite(column), column, column[np.where(before >= 0, before, after)])
        values[:, k] = column
        filled += np.bincount(seg_zone[seg_of[~valid]], minlength=len(zone_names))
    grid_cov[position] = values
    return grid_cov, filled


def load_series(path: str | Path | None = None, *, region: str | None = None,
                **clean_kwargs: Any) -> tuple[list[Series], RepairReport]:
    """`read_table` then `clean` of `path`, or of a bundled region's file (`region`: "PJM", "NEM"; see
    models.series.BUNDLED); with neither, the bundled PJM data. The NEM's zones come with their state's
    temperature as the covariate column `temperature_c`, resampled from half-hours like the load."""
    if path is not None and region is not None:
        raise SeriesError(f"load_series: give a path or a bundled region, not both ({path}, {region!r})")
    if region is not None and region not in BUNDLED:
        raise SeriesError(f"load_series: no bundled region {region!r}; the package has {sorted(BUNDLED)}")
    path = BUNDLED[region].path if region is not None else BUNDLED_PJM if path is None else path
    return clean(read_table(path), **clean_kwargs)


# ---------------------------------------------------------------------------------------------- splitting

def _piece(series: Series, start: pd.Timestamp | None, stop: pd.Timestamp,
           context_hours: int, is_target: bool) -> Series | None:
    """The hours of `series` in [start, stop) (from its beginning when start is None), with up to
    `context_hours` earlier hours in front when it is a target period; None when that is empty."""
    t0 = series.timestamps[0]

    def index(t: pd.Timestamp) -> int:
        return int(np.clip((t - t0) // pd.Timedelta(hours=1), 0, len(series)))

    target = 0 if start is None else index(start)
    end = index(stop)
    if target >= end:
        return None
    begin = max(target - context_hours, 0) if is_target else target
    return replace(series, timestamps=series.timestamps[begin:end], load=series.load[begin:end],
                   covariates=None if series.covariates is None else series.covariates[begin:end],
                   target_start=series.timestamps[target] if is_target else None)


# What a validation period of "auto" days is (training.config.DataSection.val_days): a year where that leaves
# at least two training years in every zone, so it spans every season; on shorter data a fifth of the days
# before the test period, because a year of validation would leave too little to train on (the NEM's three
# years: 146 days, against one training year with 365, which the deep models overfit after two epochs).
FULL_VALIDATION_DAYS = 365
MIN_TRAINING_DAYS_FOR_FULL_VALIDATION = 2 * 365
MIN_AUTO_VALIDATION_DAYS = 30


def zone_spans(series: list[Series]) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """Each zone's first and last hour over all its segments."""
    spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for s in series:
        first, last = spans.get(s.zone, (s.timestamps[0], s.timestamps[-1]))
        spans[s.zone] = (min(first, s.timestamps[0]), max(last, s.timestamps[-1]))
    return spans


def auto_validation_days(series: list[Series], test_days: int) -> int:
    """The validation days "auto" stands for on `series`, by the shortest zone (so every zone can be split)."""
    spans = zone_spans(series)
    if not spans:
        raise SeriesError("no data to split")
    before_test = min((last - first) // pd.Timedelta(days=1) + 1 for first, last in spans.values()) - test_days
    if before_test - FULL_VALIDATION_DAYS >= MIN_TRAINING_DAYS_FOR_FULL_VALIDATION:
        return FULL_VALIDATION_DAYS
    return max(MIN_AUTO_VALIDATION_DAYS, before_test // 5)


def split_by_time(series: list[Series], *, val_hours: int = 365 * 24, test_hours: int = 365 * 24,
                  context_hours: int = 0) -> Split:
    """Per zone, chronological: test = the zone's last `test_hours` hours, val = the `val_hours` before,
    train = everything earlier.

    Periods are calendar hours, so a gap inside a period makes it shorter rather than pushing it back.
    With `context_hours` > 0 each val/test segment starts up to that many observed hours before its
    period (never across a gap), so windows whose forecast origin lies inside the period can read their
    history; `target_start` marks the first hour of the period in the segment.
    """
    if val_hours < 0 or test_hours < 1 or context_hours < 0:
        raise SeriesError(f"need val_hours >= 0 (got {val_hours}), test_hours >= 1 (got {test_hours}) "
                          f"and context_hours >= 0 (got {context_hours})")
    by_zone: dict[str, list[Series]] = {}
    for s in series:
        by_zone.setdefault(s.zone, []).append(s)
    hour = pd.Timedelta(hours=1)
    split = Split(train=[], val=[], test=[])
    spans = zone_spans(series)
    for zone, segments in by_zone.items():
        segments = sorted(segments, key=lambda s: s.timestamps[0])
        first, last = spans[zone]
        have, need = (last - first) // hour + 1, val_hours + test_hours + 1
        if have < need:
            raise SeriesError(
                f"zone {zone!r} spans {have} hours ({first} .. {last}); splitting off {val_hours} validation "
                f"and {test_hours} test hours needs at least {need} (lower val_hours/test_hours or add data)")
        test_start = last - (test_hours - 1) * hour
        val_start = test_start - val_hours * hour
        train = [p for s in segments if (p := _piece(s, None, val_start, 0, False))]
        val = [p for s in segments if (p := _piece(s, val_start, test_start, context_hours, True))]
        test = [p for s in segments if (p := _piece(s, test_start, last + hour, context_hours, True))]
        if val_hours and not val:
            raise SeriesError(
                f"zone {zone!r} has no data in its validation period {val_start} .. {test_start - hour}")
        split.train += train
        split.val += val
        split.test += test
    return split


# ---------------------------------------------------------------------------------------------- export

def to_long_frame(series: list[Series]) -> pd.DataFrame:
    """Segments back to the long format (zone, timestamp, load_mw, covariates...), e.g. to save them."""
    names = list(dict.fromkeys(n for s in series for n in s.covariate_names))
    if not series:
        return pd.DataFrame({ZONE: pd.Series(dtype="str"), TIMESTAMP: pd.Series(dtype="datetime64[us]"),
                             LOAD: pd.Series(dtype="float32"), **{n: pd.Series(dtype="float32") for n in names}})
    parts = []
    for s in series:
        part = {ZONE: s.zone, TIMESTAMP: s.timestamps, LOAD: s.load}
        for n in names:
            part[n] = (s.covariates[:, s.covariate_names.index(n)] if n in s.covariate_names
                       else np.full(len(s), np.nan, dtype=np.float32))
        parts.append(pd.DataFrame(part))
    frame = pd.concat(parts, ignore_index=True)
    frame[ZONE] = frame[ZONE].astype("str")
    return frame


def fingerprint(table: pd.DataFrame) -> str:
    """SHA-256 (hex) of a raw long table's content, the same for any row order, column order, alias
    spelling or number width (values are compared as float64), so a bundle can name the data it saw."""
    table = _canonical(table, default_zone=None, source="table")
    columns = [*REQUIRED_COLUMNS, *sorted(c for c in table.columns if c not in REQUIRED_COLUMNS)]
    table = table[columns].sort_values(columns, kind="mergesort", na_position="last")
    digest = hashlib.sha256()
    header = {"columns": columns, "tz": str(table[TIMESTAMP].dt.tz), "rows": len(table)}
    digest.update(json.dumps(header).encode())
    codes, zones = pd.factorize(table[ZONE])
    digest.update("\x1f".join(zones).encode())
    digest.update(codes.astype("<i8").tobytes())
    digest.update(pd.DatetimeIndex(table[TIMESTAMP]).asi8.astype("<i8").tobytes())
    for c in columns[2:]:
        values = table[c].to_numpy(dtype=np.float64)
        digest.update(np.where(np.isnan(values), np.nan, values).astype("<f8").tobytes())
    return digest.hexdigest()
