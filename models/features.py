"""Covariates known in the future: calendar features computed from timestamps alone.

The same code runs when windows are built for training and when a bundle forecasts, so a model never
sees features at inference that differ from the ones it was trained on. The spec is stored in the bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import holidays
import numpy as np
import pandas as pd

CALENDAR_FEATURES = (
    "hour_sin", "hour_cos", "hour2_sin", "hour2_cos",
    "dow_mon", "dow_tue", "dow_wed", "dow_thu", "dow_fri", "dow_sat", "dow_sun",
    "doy_sin", "doy_cos", "holiday",
)


@dataclass(frozen=True)
class FeatureSpec:
    """Which inputs a model takes beside a series' own history, in order: known-future covariates
    (calendar, extra columns of the data) and the recent load of the region's zones (past only)."""

    calendar: bool = True
    holiday_country: str | None = "US"  # public holidays of this country (ISO code), via `holidays`
    covariates: tuple[str, ...] = field(default_factory=tuple)  # extra known-future columns of the data
    # zones whose load over the history window a model reads beside each series' own (see region_channels)
    region_zones: tuple[str, ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return (list(CALENDAR_FEATURES) if self.calendar else []) + list(self.covariates)

    @property
    def size(self) -> int:
        """Calendar and extra covariates per hour."""
        return len(self.names)

    @property
    def known_size(self) -> int:
        """Known-future inputs per hour the model reads: `size`, then for a region-context model the series'
        zone, one-hot among `region_zones` (see models.inputs.region_inputs)."""
        return self.size + len(self.region_zones)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["covariates"] = list(self.covariates)
        d["region_zones"] = list(self.region_zones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(calendar=bool(d.get("calendar", True)), holiday_country=d.get("holiday_country"),
                   covariates=tuple(d.get("covariates", ())), region_zones=tuple(d.get("region_zones", ())))


@lru_cache(maxsize=64)
def _holiday_dates(country: str, first_year: int, last_year: int) -> np.ndarray:
    days = holidays.country_holidays(country, years=range(first_year, last_year + 1))
    return np.array(sorted(days.keys()), dtype="datetime64[D]")


def calendar_features(timestamps: pd.DatetimeIndex | np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Calendar features for hourly timestamps (local time) as a float32 array [T, len(CALENDAR_FEATURES)].

    Timezone-aware timestamps are used in their own zone: pass local time for load, whose daily shape
    follows the local clock.
    """
    ts = pd.DatetimeIndex(timestamps)
    if ts.tz is not None:
        ts = ts.tz_localize(None)
    if not spec.calendar:
        return np.zeros((len(ts), 0), dtype=np.float32)
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0
    day_angle = 2 * np.pi * hour / 24.0
    dow = ts.dayofweek.to_numpy()
    year_angle = 2 * np.pi * (ts.dayofyear.to_numpy() - 1) / 365.25
    out = np.zeros((len(ts), len(CALENDAR_FEATURES)), dtype=np.float32)
    out[:, 0], out[:, 1] = np.sin(day_angle), np.cos(day_angle)
    out[:, 2], out[:, 3] = np.sin(2 * day_angle), np.cos(2 * day_angle)
    out[np.arange(len(ts)), 4 + dow] = 1.0
    out[:, 11], out[:, 12] = np.sin(year_angle), np.cos(year_angle)
    if spec.holiday_country and len(ts):
        dates = ts.normalize().to_numpy().astype("datetime64[D]")
        known = _holiday_dates(spec.holiday_country, int(ts.year.min()), int(ts.year.max()))
        out[:, 13] = np.isin(dates, known)
    return out


def region_channels(loads: np.ndarray) -> np.ndarray:
    """Region context [..., L, R] in MW (NaN where a zone has no value) -> model input of the same shape.

    Each zone's window is normalized by its own mean and standard deviation, as a series' own history is,
    so the model reads how every zone's recent load moves rather than its size. A zone missing any hour of
    the window reads as all zeros (its mean), so a gap in one neighbour degrades the context gracefully
    instead of failing the forecast.
    """
    loads = np.asarray(loads, dtype=np.float32)
    complete = np.isfinite(loads).all(axis=-2, keepdims=True)
    safe = np.where(complete, loads, 0.0)
    mean = safe.mean(axis=-2, keepdims=True)
    std = np.maximum(safe.std(axis=-2, keepdims=True), 1e-3 * np.maximum(np.abs(mean), 1.0))
    return np.where(complete, (safe - mean) / std, 0.0).astype(np.float32)


def zone_identity(zones: Sequence[str], region_zones: Sequence[str]) -> np.ndarray:
    """Each series' zone as a one-hot row [B, R] over `region_zones` (all zeros for a zone outside them)."""
    out = np.zeros((len(zones), len(region_zones)), np.float32)
    where = {z: j for j, z in enumerate(region_zones)}
    for i, z in enumerate(zones):
        if z in where:
            out[i, where[z]] = 1.0
    return out


def future_timestamps(last_observed: pd.Timestamp, horizon: int) -> pd.DatetimeIndex:
    """The `horizon` hourly timestamps that follow the last observed hour."""
    return pd.date_range(pd.Timestamp(last_observed) + pd.Timedelta(hours=1), periods=horizon, freq="h")
