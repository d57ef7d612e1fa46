"""Covariates known in the future: calendar features computed from timestamps alone.

The same code runs when windows are built for training and when a bundle forecasts, so a model never
sees features at inference that differ from the ones it was trained on. The spec is stored in the bundle.
"""

from __future__ import annotations

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
    """Which known-future covariates a model takes, in order."""

    calendar: bool = True
    holiday_country: str | None = "US"  # public holidays of this country (ISO code), via `holidays`
    covariates: tuple[str, ...] = field(default_factory=tuple)  # extra known-future columns of the data

    @property
    def names(self) -> list[str]:
        return (list(CALENDAR_FEATURES) if self.calendar else []) + list(self.covariates)

    @property
    def size(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["covariates"] = list(self.covariates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureSpec":
        return cls(calendar=bool(d.get("calendar", True)), holiday_country=d.get("holiday_country"),
                   covariates=tuple(d.get("covariates", ())))


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


def future_timestamps(last_observed: pd.Timestamp, horizon: int) -> pd.DatetimeIndex:
    """The `horizon` hourly timestamps that follow the last observed hour."""
    return pd.date_range(pd.Timestamp(last_observed) + pd.Timedelta(hours=1), periods=horizon, freq="h")
