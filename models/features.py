"""Covariates known in the future: calendar features computed from timestamps alone (and, for the
holiday flag, the zone: public holidays can differ by state, as in Australia's NEM).

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
    # public holidays of this country, via `holidays`: an ISO code ("US"), or with a subdivision ("AU-NSW")
    holiday_country: str | None = "US"
    covariates: tuple[str, ...] = field(default_factory=tuple)  # extra known-future columns of the data
    # zones whose load over the history window a model reads beside each series' own (see region_channels)
    region_zones: tuple[str, ...] = field(default_factory=tuple)
    # (zone, holiday calendar) pairs: these zones' holidays instead of holiday_country's, e.g. a NEM zone's
    # state ("NSW", "AU-NSW"); a tuple, not a dict, so the spec stays hashable
    holiday_zones: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # the position in the year (doy_sin, doy_cos); off, those columns read zero (every bundle keeps one
    # layout). On a year or two of data it names each date of the training period, so a model learns
    # that date's weather by heart instead of the season (the season is in its 14 days of history).
    annual: bool = True

    def __post_init__(self) -> None:
        for code in {self.holiday_country, *dict(self.holiday_zones).values()} - {None}:
            holiday_calendar(code)  # fails here, naming the code, not at the first forecast

    @property
    def zone_dependent(self) -> bool:
        """Whether a series' inputs depend on its zone, so every caller must say which zone each series is."""
        return bool(self.region_zones or self.holiday_zones)

    def holidays_of(self, zone: str | None) -> str | None:
        """The holiday calendar of `zone`'s hours: its own in holiday_zones, else holiday_country's."""
        return dict(self.holiday_zones).get(zone, self.holiday_country) if zone is not None else self.holiday_country

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
        d["holiday_zones"] = dict(self.holiday_zones)
        if not self.holiday_zones:  # left out, so a spec without them is written as before
            del d["holiday_zones"]
        if self.annual:  # likewise
            del d["annual"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        # bundles written before holiday_zones existed have none: their features are unchanged
        return cls(calendar=bool(d.get("calendar", True)), holiday_country=d.get("holiday_country"),
                   covariates=tuple(d.get("covariates", ())), region_zones=tuple(d.get("region_zones", ())),
                   holiday_zones=tuple((str(z), str(c)) for z, c in dict(d.get("holiday_zones") or {}).items()),
                   annual=bool(d.get("annual", True)))


@lru_cache(maxsize=64)
def holiday_calendar(code: str) -> tuple[str, str | None]:
    """(country, subdivision or None) of a holiday calendar code: "US" -> ("US", None), "AU-NSW" -> ("AU",
    "NSW"); ValueError naming the code when the `holidays` package does not know it."""
    country, _, subdiv = code.partition("-")
    try:
        holidays.country_holidays(country, subdiv=subdiv or None, years=[2000])
    except NotImplementedError as e:
        raise ValueError(f"holiday calendar {code!r}: {e} (use an ISO country code such as 'US', or "
                         f"country-subdivision such as 'AU-NSW')") from None
    return country, subdiv or None


@lru_cache(maxsize=64)
def _holiday_dates(code: str, first_year: int, last_year: int) -> np.ndarray:
    country, subdiv = holiday_calendar(code)
    days = holidays.country_holidays(country, subdiv=subdiv, years=range(first_year, last_year + 1))
    return np.array(sorted(days.keys()), dtype="datetime64[D]")


def calendar_features(timestamps: pd.DatetimeIndex | np.ndarray, spec: FeatureSpec,
                      zone: str | None = None) -> np.ndarray:
    """Calendar features for hourly timestamps (local time) as a float32 array [T, len(CALENDAR_FEATURES)].

    Timezone-aware timestamps are used in their own zone: pass local time for load, whose daily shape
    follows the local clock. `zone` picks the holiday calendar (`FeatureSpec.holidays_of`); a spec with
    holiday_zones needs it (a missing zone would silently read the country's holidays).
    """
    if spec.holiday_zones and zone is None:
        raise ValueError("this feature spec has per-zone holidays (holiday_zones): say which zone the hours are of")
    ts = pd.DatetimeIndex(timestamps)
    if ts.tz is not None:
        ts = ts.tz_localize(None)
    if not spec.calendar:
        return np.zeros((len(ts), 0), dtype=np.float32)
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0
    day_angle = 2 * np.pi * hour / 24.0
    dow = ts.dayofweek.to_numpy()
    out = np.zeros((len(ts), len(CALENDAR_FEATURES)), dtype=np.float32)
    out[:, 0], out[:, 1] = np.sin(day_angle), np.cos(day_angle)
    out[:, 2], out[:, 3] = np.sin(2 * day_angle), np.cos(2 * day_angle)
    out[np.arange(len(ts)), 4 + dow] = 1.0
    if spec.annual:
        year_angle = 2 * np.pi * (ts.dayofyear.to_numpy() - 1) / 365.25
        out[:, 11], out[:, 12] = np.sin(year_angle), np.cos(year_angle)
    code = spec.holidays_of(zone)
    if code and len(ts):
        dates = ts.normalize().to_numpy().astype("datetime64[D]")
        known = _holiday_dates(code, int(ts.year.min()), int(ts.year.max()))
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
