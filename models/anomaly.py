"""From residuals to anomaly events: scores, per-series normalization, calibrated thresholds, events.

Every detector (the autoencoder in `models.autoencoder`, the forecast-residual one in benchmarks/anomaly.py)
produces, for each hour, what was expected and the *relative residual* r = (observed - expected) / level,
where level is the series' recent typical load. One residual stream is scored at three time scales,
because the faults operators care about show up at different ones:

    point   |r|                              spikes, dips, zero readings
    jump    |r(t) - r(t-1)| (either side)    abrupt changes: the edges of spikes, dips, shifts, dropouts
    level   |24 h centred mean of r|          level shifts, drift, dropouts
    shape   24 h centred std of r            a daily shape unlike the expected one
    flat    log(expected / observed 24 h std) flat lines (stuck meter), lost daily pattern: the observed
                                             load varies far less over a day than the expectation says

Each component is divided by its typical size on the series' own validation data (per-series
normalization: a noisy zone is not flagged for being noisy), and by a threshold fitted on the pooled
validation scores with peaks-over-threshold (a generalized Pareto tail, extrapolated to a small hourly
risk), or a plain quantile. The hour's score is the largest of the three ratios, so 1 is the alarm line.
Contiguous flagged hours (joined across short breaks) become one event with zone, start, end, severity
and the expected and observed energy. The calibration is plain numbers kept in the model bundle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

COMPONENTS = ("point", "jump", "level", "shape", "flat")
DAY = 24
CORE_FACTOR = 3.0  # an hour deviates on its own when |r| is this many times the zone's median |r|
FLAT_EPS = 0.005  # relative units: a day whose load varies less than this is as flat as a stuck meter


@dataclass
class Event:
    """Contiguous anomalous hours of one series."""

    zone: str
    start: pd.Timestamp  # first anomalous hour
    end: pd.Timestamp  # last anomalous hour (inclusive)
    severity: float  # the largest score in the event (1 = the alarm threshold)
    expected: float  # energy the detector expected over the event, MWh (sum of hourly MW)
    observed: float  # energy observed over the event, MWh
    component: str = ""  # which score component was largest: point, level or shape

    @property
    def hours(self) -> int:
        return int((self.end - self.start) // pd.Timedelta(hours=1)) + 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "start": self.start.isoformat(), "end": self.end.isoformat(),
                **{k: round(float(getattr(self, k)), 3) for k in ("severity", "expected", "observed")}}


def residual_features(observed: np.ndarray, expected: np.ndarray, level: np.ndarray) -> np.ndarray:
    """[T, 2]: the relative residual (observed - expected) / level, and the flatness log(expected 24 h
    std / observed 24 h std) in the same relative units (positive: flatter than expected). NaN where
    nothing was expected."""
    with np.errstate(invalid="ignore", divide="ignore"):
        o = pd.Series(np.asarray(observed, np.float64) / level)
        e = pd.Series(np.asarray(expected, np.float64) / level)
    std = {k: v.rolling(DAY, center=True, min_periods=DAY // 2).std() for k, v in (("o", o), ("e", e))}
    flat = np.log((std["e"] + FLAT_EPS) / (std["o"] + FLAT_EPS)).to_numpy().copy()
    r = (o - e).to_numpy()
    flat[~np.isfinite(r)] = np.nan
    return np.stack([r, flat], axis=1)


def score_components(features: np.ndarray) -> np.ndarray:
    """[T, 2] residual features (`residual_features`) -> [T, 5] components (COMPONENTS), NaN where not scored."""
    r = pd.Series(np.asarray(features[:, 0], dtype=np.float64))
    rolling = r.rolling(DAY, center=True, min_periods=DAY // 2)
    point = r.abs().to_numpy()
    step = r.diff().abs()
    jump = np.fmax(step.to_numpy(), step.shift(-1).to_numpy())  # a step belongs to the hours on both sides
    level = rolling.mean().abs().to_numpy()
    shape = rolling.std().to_numpy()
    flat = np.clip(features[:, 1], 0.0, None)
    out = np.stack([point, jump, level, shape, flat], axis=1)
    out[~np.isfinite(r.to_numpy())] = np.nan
    return out


@dataclass
class Calibration:
    """Per-series scales and global thresholds that turn residuals into scores (1 = alarm)."""

    thresholds: list[float]  # per component, in units of the series' scale
    default_scale: list[float]  # per component, for series not seen in calibration
    scales: dict[str, list[float]] = field(default_factory=dict)  # zone -> per component typical size
    method: str = "pot"
    risk: float = 1e-4  # hourly exceedance probability each threshold was fitted for
    merge_gap_hours: int = 6  # flagged hours at most this far apart belong to one event
    validation: dict[str, Any] = field(default_factory=dict)  # false alarms on the calibration data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        return cls(**dict(d))

    def scale_of(self, zone: str | None, components: np.ndarray | None = None) -> np.ndarray:
        """The zone's scales; for an unknown series, its own median components when long enough
        (at least two weeks scored), else the default."""
        if zone in self.scales:
            return np.asarray(self.scales[zone])
        if components is not None and np.isfinite(components[:, 0]).sum() >= 14 * DAY:
            own = np.nanmedian(components, axis=0)
            return np.maximum(own, 0.25 * np.asarray(self.default_scale))
        return np.asarray(self.default_scale)

    def events(self, zone: str, timestamps: pd.DatetimeIndex, features: np.ndarray, expected: np.ndarray,
               observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Event]]:
        """Score, component and events of one series (`find_events`, trimmed to hours whose |r| is
        at least CORE_FACTOR times the zone's typical |r|)."""
        score, which = self.score(features, zone)
        floor = CORE_FACTOR * self.scale_of(zone, score_components(features))[0]
        return score, which, find_events(zone, timestamps, score, which, expected, observed, self.merge_gap_hours,
                                         np.abs(features[:, 0]), floor)

    def score(self, features: np.ndarray, zone: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Hourly score [T] of residual features [T, 2] (NaN where not scored) and the index of the
        component behind it [T]."""
        comps = score_components(features)
        ratio = comps / (self.scale_of(zone, comps) * np.asarray(self.thresholds))
        filled = np.where(np.isfinite(ratio), ratio, -np.inf)
        which = filled.argmax(axis=1)
        score = filled.max(axis=1)
        return np.where(np.isfinite(score), score, np.nan), which


def fit_threshold(scores: np.ndarray, *, method: Literal["pot", "quantile"] = "pot", risk: float = 1e-4,
                  tail_quantile: float = 0.98) -> float:
    """The score exceeded with probability `risk` per hour.

    "quantile": the empirical (1 - risk) quantile. "pot" (peaks over threshold): a generalized Pareto
    distribution fitted to the excesses over the `tail_quantile` quantile, so risks smaller than one
    over the sample size are extrapolated from the tail's shape instead of read off its last points.
    """
    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 100:
        raise ValueError(f"need at least 100 scored hours to fit a threshold, got {len(x)}")
    if not 0 < risk < 1 - tail_quantile:
        raise ValueError(f"risk must be in (0, {1 - tail_quantile:g}), got {risk}")
    if method not in ("pot", "quantile"):
        raise ValueError(f"unknown threshold method {method!r}; use 'pot' or 'quantile'")
    u = float(np.quantile(x, tail_quantile))
    excess = x[x > u] - u
    if method == "quantile" or len(excess) < 30 or excess.std() == 0:
        return float(np.quantile(x, 1 - risk))
    from scipy.stats import genpareto

    shape, _, scale = genpareto.fit(excess, floc=0.0)
    shape = float(np.clip(shape, -0.5, 0.5))  # keep the extrapolation sane on short samples
    tail_risk = risk / (1 - tail_quantile)  # P(excess > y | x > u) we need
    return u + float(genpareto.isf(tail_risk, shape, loc=0.0, scale=scale))


def calibrate(
    residuals: Mapping[str, Sequence[np.ndarray]],
    *,
    method: Literal["pot", "quantile"] = "pot",
    risk: float = 1e-4,
    merge_gap_hours: int = 6,
    max_false_alarms_per_month: float | None = 0.5,
) -> Calibration:
    """Fit scales and thresholds on residual features ([T, 2], `residual_features`) of normal
    (validation) data, zone -> list of segments.

    With `max_false_alarms_per_month`, the fitted thresholds keep their ratios and are then scaled
    together to the lowest level at which the events found on this same data are at most that many per
    zone and month: the hourly risk of the tail fit does not say how exceedances cluster into events,
    which is what an operator counts.
    """
    comps = {z: [score_components(r) for r in segs] for z, segs in residuals.items()}
    # the median size of each component (flatness is 0 on about half the hours: its floor keeps it apart)
    scales = {z: np.fmax(np.nanmedian(np.concatenate(c), axis=0), 1e-3) for z, c in comps.items()}
    for z, s in scales.items():
        if not np.all(np.isfinite(s)):
            raise ValueError(f"zone {z!r}: cannot calibrate, too few scored hours or constant residuals")
    pooled = np.concatenate([np.concatenate(c) / scales[z] for z, c in comps.items()])
    thresholds = [fit_threshold(pooled[:, k], method=method, risk=risk) for k in range(len(COMPONENTS))]
    cal = Calibration(thresholds=thresholds, default_scale=np.median(np.stack(list(scales.values())), 0).tolist(),
                      scales={z: s.tolist() for z, s in scales.items()}, method=method, risk=risk,
                      merge_gap_hours=merge_gap_hours)
    months = sum(np.isfinite(r[:, 0]).sum() for segs in residuals.values() for r in segs) / (DAY * 365.25 / 12)
    scores = {z: [cal.score(r, z)[0] for r in segs] for z, segs in residuals.items()}

    def alarms(factor: float) -> tuple[dict[str, int], float]:
        counts = {z: sum(len(_flagged_runs(s / factor, merge_gap_hours)) for s in segs) for z, segs in scores.items()}
        return counts, sum(counts.values()) / max(months, 1e-9)

    factor = 1.0
    if max_false_alarms_per_month is not None:  # bisection on log(factor) between 1/8 and 8
        lo, hi = -3.0, 3.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if alarms(2.0**mid)[1] <= max_false_alarms_per_month else (mid, hi)
        factor = 2.0**hi
    counts, rate = alarms(factor)
    cal.thresholds = [t * factor for t in thresholds]
    cal.validation = {"false_alarm_events": counts, "zone_months": round(months, 2),
                      "false_alarms_per_zone_month": round(rate, 3), "threshold_factor": round(factor, 3)}
    return cal


def _flagged_runs(score: np.ndarray, merge_gap_hours: int) -> list[tuple[int, int]]:
    """[a, b) index runs where score > 1, runs separated by at most `merge_gap_hours` joined."""
    starts, ends = _true_runs(np.nan_to_num(score, nan=0.0) > 1.0)
    joined = np.flatnonzero(starts[1:] - ends[:-1] <= merge_gap_hours)  # run i + 1 continues run i
    return list(zip(np.delete(starts, joined + 1), np.delete(ends, joined)))


def _true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each run of True in `mask`."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def find_events(zone: str, timestamps: pd.DatetimeIndex, score: np.ndarray, which: np.ndarray,
                expected: np.ndarray, observed: np.ndarray, merge_gap_hours: int = 6,
                deviation: np.ndarray | None = None, floor: float = 0.0) -> list[Event]:
    """Events of one series from its hourly score (1 = alarm), as `Calibration.score` returns it.

    With `deviation` (|relative residual| per hour), an event's first and last hours are moved in to
    the first and last hours that deviate on their own, by at least `floor` and a quarter of the run's
    largest deviation: the 24 h components flag the day around a 2 h dropout, the event is the 2 h."""
    events = []
    for a, b in _flagged_runs(score, merge_gap_hours):
        k = a + int(np.nanargmax(score[a:b]))
        if deviation is not None:
            dev = np.nan_to_num(deviation[a:b])
            inner = np.flatnonzero(dev >= max(floor, 0.25 * dev.max()))
            if len(inner):
                a, b = a + int(inner[0]), a + int(inner[-1]) + 1
        events.append(Event(zone=zone, start=timestamps[a], end=timestamps[b - 1], severity=float(score[k]),
                            expected=float(np.nansum(expected[a:b])), observed=float(np.nansum(observed[a:b])),
                            component=COMPONENTS[int(which[k])]))
    return events


# ---------------------------------------------------------------------------------------------- input

def detection_segments(table: pd.DataFrame, *, max_interpolate_hours: int = 6) -> tuple[list[Any], list[str]]:
    """Gap-free hourly segments of a long table (zone, timestamp, load_mw) for detection, and notes on
    what was repaired.

    Unlike `models.data.clean`, which prepares training data, zero, negative and absurd readings are kept:
    they are what a detector is looking for. Duplicate hours (the daylight-saving fall-back hour) are
    merged by their mean; missing hours (absent rows, NaN) are interpolated when a run is at most
    `max_interpolate_hours` long, and longer runs split the series.
    """
    from models.data import Series
    from models.series import LOAD, TIMESTAMP, ZONE, SeriesError

    missing = [c for c in (ZONE, TIMESTAMP, LOAD) if c not in table.columns]
    if missing:
        raise SeriesError(f"detection input lacks column(s) {missing}; expected {[ZONE, TIMESTAMP, LOAD]}")
    stamps = pd.DatetimeIndex(table[TIMESTAMP])
    off_hour = stamps != stamps.floor("h")
    if off_hour.any():
        raise SeriesError(f"timestamp {stamps[off_hour][0]} is not on the hour; "
                          f"resample the data to hourly means first")
    segments, notes = [], []
    frame = pd.DataFrame({ZONE: table[ZONE].astype(str).to_numpy(), TIMESTAMP: stamps,
                          LOAD: pd.to_numeric(table[LOAD], errors="coerce").to_numpy(np.float64)})
    frame.loc[~np.isfinite(frame[LOAD]), LOAD] = np.nan
    for zone, rows in frame.groupby(ZONE, sort=True):
        dup = int(rows[TIMESTAMP].duplicated().sum())
        hourly = rows.groupby(TIMESTAMP)[LOAD].mean()
        grid = pd.date_range(hourly.index[0], hourly.index[-1], freq="h")
        values = hourly.reindex(grid)
        gaps = values.isna()
        run_len = gaps.groupby((~gaps).cumsum()).transform("sum")  # of the gap each missing hour is in
        filled = values.interpolate(limit_area="inside").mask(gaps & (run_len > max_interpolate_hours))
        n_filled = int((gaps & filled.notna()).sum())
        starts, ends = _true_runs(filled.notna().to_numpy())
        load = filled.to_numpy(np.float32)
        segments += [Series(zone=str(zone), timestamps=grid[a:b], load=load[a:b]) for a, b in zip(starts, ends)]
        if dup or n_filled or len(starts) > 1:
            notes.append(f"{zone}: {dup} duplicate hours merged (mean), {n_filled} missing hours interpolated, "
                         f"{len(starts) - 1} gaps longer than {max_interpolate_hours} h split the series")
    return segments, notes
