"""The one model-input builder: everything a forecaster reads beside its weights is assembled here.

A forecast (or a training window) of one series whose first forecast hour is t reads

    history [L]       the series' load over the L = input_length hours before t
    past    [L, C_p]  known inputs over those hours
    future  [H, C_f]  known inputs over the H = max_horizon hours from t (whatever horizon is asked)

The known inputs of an hour are, in this order (the model's FeatureSpec says which are present):

    calendar          models.features.calendar_features of the hour
    extra covariates  FeatureSpec.covariates: columns of the data known in advance
    zone one-hot      region-context models: the series' zone among FeatureSpec.region_zones
    region channels   region-context models, past only: those zones' normalized load

`Bundle.predict`, backtests, training windows, the serving engine and batch scoring all build their
inputs through this module, so a new kind of input is added here (and in the model that reads it).
Every refusal is an `InputError` that names the input at fault.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.data import Series
from models.features import FeatureSpec, calendar_features, future_timestamps, region_channels, zone_identity
from models.series import WEATHER_VARIABLES

HOUR = pd.Timedelta(hours=1)


class InputError(ValueError):
    """Inputs a model cannot read; `field` names which (history, last_timestamps, covariates, region,
    zones, horizon)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------------------ series -> windows

def forecast_origins(series: Series, before: int, ahead: int, hours: Sequence[int] | None = None) -> np.ndarray:
    """Positions t in `series` where a window of `before` hours before t and `ahead` hours from t lies
    inside it, with t at or after the series' `target_start` (so a validation or test target never
    leaks into another period while its history may reach back), optionally only at `hours` of the day."""
    first = before
    if series.target_start is not None:
        first = max(first, int(series.timestamps.searchsorted(series.target_start)))
    origins = np.arange(first, len(series) - ahead + 1)
    if hours is not None and len(origins):
        origins = origins[np.isin(series.timestamps.hour[origins], list(hours))]
    return origins


def extra_covariates(series: Series, features: FeatureSpec) -> np.ndarray:
    """The spec's extra covariate columns [T, K] of one series, in the spec's order."""
    missing = [c for c in features.covariates if c not in series.covariate_names]
    if missing:
        raise InputError("covariates", f"zone {series.zone}: covariate columns {missing} are not in the data")
    cols = [series.covariate_names.index(c) for c in features.covariates]
    return series.covariates[:, cols].astype(np.float32)


def known_covariates(series: Series, features: FeatureSpec) -> np.ndarray:
    """Calendar and extra covariates [T, C] of every hour of one series, in the spec's order."""
    cal = calendar_features(series.timestamps, features, series.zone)
    if not features.covariates:
        return cal
    return np.concatenate([cal, extra_covariates(series, features)], axis=1)


def region_inputs(past: np.ndarray, future: np.ndarray, zones: Sequence[str], channels: np.ndarray,
                  region_zones: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A region-context model's inputs from the calendar (and extra) windows past [B, L, C] and future
    [B, H, C]: the series' zone (one-hot) joins the known inputs of every hour, past and future, so the
    model can learn how much each zone follows its neighbours; the region channels [B, L, R] follow in
    past. -> past [B, L, C + 2R], future [B, H, C + R]."""
    identity = zone_identity(zones, region_zones)[:, None]  # [B, 1, R]
    (b, length, _), horizon = past.shape, future.shape[1]
    r = identity.shape[-1]
    past = np.concatenate([past, np.broadcast_to(identity, (b, length, r)), channels], axis=2)
    future = np.concatenate([future, np.broadcast_to(identity, (b, horizon, r))], axis=2)
    return past, future


# ------------------------------------------------------------------------------------ one model's inputs

@dataclass(frozen=True)
class ModelInputs:
    """What one model reads, and the checks and assembly of its inputs from raw values."""

    features: FeatureSpec
    input_length: int
    max_horizon: int
    name: str = "the model"

    @property
    def region_zones(self) -> tuple[str, ...]:
        return self.features.region_zones

    def calendar(self, last: pd.DatetimeIndex, zones: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Past [B, L, C] and future [B, H, C] known-input blocks for series whose last observed hours are
        `last` (of `zones`, which the holiday flag of a spec with per-zone holidays needs): calendar
        features filled (computed once per distinct hour and holiday calendar), extra covariate columns
        left for `with_extra`."""
        length, full_h = self.input_length, self.max_horizon
        past = np.zeros((len(last), length, self.features.size), np.float32)
        future = np.zeros((len(last), full_h, self.features.size), np.float32)
        if self.features.holiday_zones and zones is None:
            raise InputError("zones", f"model {self.name} reads each zone's own public holidays: pass zones, the "
                                      f"zone name of each of the {len(last)} series")
        # one representative zone per holiday calendar: zones sharing a calendar share features
        codes = [self.features.holidays_of(z) for z in zones] if self.features.holiday_zones else [None] * len(last)
        zone_of = dict(zip(codes, zones)) if self.features.holiday_zones else {None: None}
        codes = np.array(codes, dtype=object)
        for code, zone in zone_of.items():
            for stamp in last[codes == code].unique():
                hours = future_timestamps(stamp - length * HOUR, length + full_h)
                feats = calendar_features(hours, self.features, zone)
                rows = np.flatnonzero((last == stamp) & (codes == code))
                past[rows, :, : feats.shape[1]], future[rows, :, : feats.shape[1]] = feats[:length], feats[length:]
        return past, future

    def with_extra(self, past: np.ndarray, future: np.ndarray,
                   extra: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """The known-input blocks with the extra covariates' values (past [B, L, K], future [B, H, K], in
        the spec's order) in their columns, checked."""
        names = list(self.features.covariates)
        if not names:
            if extra is not None:
                raise InputError("covariates", f"model {self.name} takes no extra covariates, but some were given")
            return past, future
        want = ((len(past), self.input_length, len(names)), (len(future), self.max_horizon, len(names)))
        if extra is None:
            raise InputError("covariates", f"model {self.name} needs covariates {names}: pass extra=(past, future) "
                                           f"of shapes {want[0]} and {want[1]}")
        got = tuple(np.shape(a) for a in extra)
        if got != want:
            raise InputError("covariates", f"covariates {names}: expected past and future of shapes {want[0]} and "
                                           f"{want[1]}, got {got[0]} and {got[1]}")
        if not all(np.isfinite(a).all() for a in extra):
            raise InputError("covariates", f"covariates {names} contain NaN or infinite values")
        for k, name in enumerate(names):  # a weather variable in another unit reads as an extreme event
            variable = WEATHER_VARIABLES.get(name)
            problem = variable and variable.implausible(np.concatenate([a[..., k].ravel() for a in extra]))
            if problem:
                raise InputError("covariates", f"covariate {problem}")
        n_cal = self.features.size - len(names)
        past[:, :, n_cal:], future[:, :, n_cal:] = extra
        return past, future

    def region_channels(self, region: np.ndarray | None, n: int) -> np.ndarray:
        """The region zones' load windows [B, >= L, R] in MW (NaN where missing), checked -> the model's
        region channels [B, L, R]."""
        zones, length = list(self.region_zones), self.input_length
        if region is None:
            raise InputError("region", f"model {self.name} reads the recent load of zones {zones} beside each "
                                       f"series: pass region of shape ({n}, {length}, {len(zones)})")
        region = np.asarray(region, dtype=np.float32)
        if region.ndim != 3 or region.shape[0] != n or region.shape[1] < length or region.shape[2] != len(zones):
            raise InputError("region", f"region context of zones {zones}: expected shape ({n}, >= {length}, "
                                       f"{len(zones)}), got {region.shape}")
        region = region[:, -length:]
        if np.isinf(region).any():
            raise InputError("region", f"region context of zones {zones} contains infinite values")
        return region_channels(region)

    def with_region(self, past: np.ndarray, future: np.ndarray, zones: Sequence[str] | None,
                    channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The known-input blocks with each series' zone and the region channels [B, L, R] appended."""
        if zones is None or len(zones) != len(past):
            raise InputError("zones", f"model {self.name} reads region context: pass zones, the zone name of each "
                                      f"of the {len(past)} series (got {None if zones is None else len(zones)})")
        return region_inputs(past, future, list(zones), channels, self.region_zones)

    def build(
        self,
        history: np.ndarray,
        last_timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex,
        *,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
        region: np.ndarray | None = None,
        zones: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """history [B, L], past [B, L, C_p], future [B, H, C_f] for B histories [B, >= L] whose last values
        are at `last_timestamps` (see Bundle.predict for `extra`, `region` and `zones`)."""
        history = np.asarray(history, dtype=np.float32)
        if history.ndim != 2:
            raise InputError("history", f"history must be 2-D [series, hours], got shape {history.shape}")
        if len(last_timestamps) != history.shape[0]:
            raise InputError("last_timestamps",
                             f"{history.shape[0]} histories but {len(last_timestamps)} last timestamps")
        if history.shape[1] < self.input_length:
            raise InputError("history", f"history too short: the model reads {self.input_length} hours, "
                                        f"got {history.shape[1]}")
        history = history[:, -self.input_length :]
        if not np.isfinite(history).all():
            raise InputError("history", "history contains NaN or infinite values")
        if zones is not None and len(zones) != len(history):
            raise InputError("zones", f"model {self.name} reads each series' zone: pass zones, the zone name of each "
                                      f"of the {len(history)} series (got {len(zones)})")
        past, future = self.with_extra(*self.calendar(pd.DatetimeIndex(last_timestamps), zones), extra)
        if self.region_zones:
            past, future = self.with_region(past, future, zones, self.region_channels(region, len(history)))
        elif region is not None or (zones is not None and not self.features.zone_dependent):
            raise InputError("region", f"model {self.name} reads no region context, but some was given")
        return history, past, future


class LRU(OrderedDict):
    """A small thread-safe least-recently-used cache: `get_or_make(key, make)`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self.lock:
            self[key] = value
            while len(self) > self.size:
                self.popitem(last=False)
        return value


class CalendarGrid:
    """Calendar blocks for a server that forecasts from many issue times over a known span: the calendar
    of every hour of the span is computed once per holiday calendar and a forecast's block is a slice of
    it (the features are a function of each hour and the zone's holidays alone, so a slice equals
    `ModelInputs.calendar`). Hours outside the span, or data with UTC offsets, fall back to computing
    (cached, most recent first)."""

    MAX_HOURS = 5_000_000  # an absurd span is computed per request instead

    def __init__(self, inputs: ModelInputs, start: pd.Timestamp | None, end: pd.Timestamp | None,
                 cache_size: int = 512) -> None:
        self.inputs = inputs
        # (last observed hour, holiday calendar) -> (past [L, C], future [H, C], timestamps)
        self._cache = LRU(cache_size)
        self._start, self._hours, self._iso = None, None, None
        self._grids: dict[str | None, np.ndarray] = {}  # holiday calendar -> the span's features, made once
        if start is None or end is None:
            return
        hours = pd.date_range(start, end + inputs.max_horizon * HOUR, freq="h")
        if hours.tz is not None or len(hours) > self.MAX_HOURS:
            return
        self._start, self._hours = start, hours
        self._iso = np.datetime_as_string(hours.to_numpy(), unit="s")
        if not inputs.features.holiday_zones:
            self._grid(None, None)

    def _grid(self, code: str | None, zone: str | None) -> np.ndarray:
        if code not in self._grids:
            self._grids[code] = calendar_features(self._hours, self.inputs.features, zone)
        return self._grids[code]

    def __call__(self, last: pd.Timestamp, zone: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Calendar of the L hours up to `last` [L, C], of the H_max hours after [H_max, C], and the ISO
        timestamps of those H_max hours; `zone` picks the holidays of a spec with per-zone holidays."""
        length, full_h = self.inputs.input_length, self.inputs.max_horizon
        features = self.inputs.features
        if features.holiday_zones and zone is None:
            raise InputError("zones", f"model {self.inputs.name} reads each zone's own public holidays: say which "
                                      "zone a forecast is for")
        code = features.holidays_of(zone) if features.holiday_zones else None
        if self._hours is not None and last.tz is None:
            first = (last - self._start) // HOUR - length + 1  # grid row of the window's first hour
            if 0 <= first and first + length + full_h <= len(self._hours):
                grid = self._grid(code, zone)
                return (grid[first : first + length], grid[first + length : first + length + full_h],
                        self._iso[first + length : first + length + full_h].tolist())

        def make() -> tuple[np.ndarray, np.ndarray, list[str]]:
            hours = future_timestamps(last - length * HOUR, length + full_h)
            feats = calendar_features(hours, features, zone)
            return feats[:length], feats[length:], [t.isoformat() for t in hours[length:]]

        return self._cache.get_or_make((last, code), make)
