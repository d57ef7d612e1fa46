"""Region forecasts: every zone of a region plus the region total, from each zone's recent history;
and the region context (RegionPanel) that models trained with `region_zones` read beside each series.

The total's point forecast is the sum of the zones' (coherent by construction). Its quantile bands sum
the zones' quantiles, which is exact when zone errors move together (comonotone) and otherwise errs wide:
load errors across neighbouring zones are strongly correlated through shared weather, so this is the
usual choice when no joint model of the errors exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.bundle import Bundle
from models.data import Series
from models.features import future_timestamps
from models.series import SeriesError

TOTAL = "TOTAL"
HOUR = pd.Timedelta(hours=1)


@dataclass
class SeriesForecast:
    """One forecast path: hourly timestamps, point forecast [H] and quantiles [H, Q] in MW."""

    name: str
    timestamps: pd.DatetimeIndex
    point: np.ndarray
    quantiles: np.ndarray

    def to_frame(self, levels: Sequence[float]) -> pd.DataFrame:
        return pd.DataFrame({"zone": self.name, "timestamp": self.timestamps, "point": self.point,
                             **{f"q{q:g}": self.quantiles[:, j] for j, q in enumerate(levels)}})


@dataclass
class RegionForecast:
    region: str
    issue_time: pd.Timestamp  # the first forecast hour
    quantile_levels: tuple[float, ...]
    zones: list[SeriesForecast]
    total: SeriesForecast

    def to_frame(self) -> pd.DataFrame:
        """Long table: zone (TOTAL for the region), timestamp, point, q<level>..."""
        return pd.concat([s.to_frame(self.quantile_levels) for s in [*self.zones, self.total]], ignore_index=True)


@dataclass
class RegionPanel:
    """The load of a region's zones on one hourly grid (MW, NaN where a zone has no value): the context a
    model trained with `region_zones` reads beside each series, its neighbours' recent load."""

    zones: tuple[str, ...]
    start: pd.Timestamp  # the grid's first hour
    values: np.ndarray  # [T, R] float32

    @classmethod
    def from_series(cls, series: Iterable[Series], zones: Sequence[str]) -> RegionPanel:
        """From cleaned segments (overlapping ones, such as a split's context hours, hold the same values)."""
        series = [s for s in series if s.zone in zones and len(s)]
        return cls.from_parts({z: [(s.timestamps[0], s.load) for s in series if s.zone == z] for z in zones}, zones)

    @classmethod
    def from_histories(cls, histories: Mapping[str, pd.Series], zones: Sequence[str]) -> RegionPanel:
        """From hourly load series indexed by timestamp, by zone name (hours off the grid are ignored)."""
        hourly = {z: h.reindex(pd.date_range(h.index.min(), h.index.max(), freq="h"))
                  for z in zones if z in histories and len(h := histories[z])}
        return cls.from_parts({z: [(h.index[0], h.to_numpy(np.float32))] for z, h in hourly.items()}, zones)

    @classmethod
    def from_parts(cls, parts: Mapping[str, Sequence[tuple[pd.Timestamp, np.ndarray]]],
                   zones: Sequence[str]) -> RegionPanel:
        """From pieces of hourly values (first hour, values; NaN allowed) by zone name."""
        missing = [z for z in zones if not parts.get(z)]
        if missing:
            raise SeriesError(f"the model reads the recent load of zones {list(zones)} beside each series, and the "
                              f"data has no load for {missing}: give it every one of those zones")
        start = min(first for z in zones for first, _ in parts[z])
        end = max(first + len(load) * HOUR for z in zones for first, load in parts[z])
        values = np.full(((end - start) // HOUR, len(zones)), np.nan, np.float32)
        for j, z in enumerate(zones):
            for first, load in parts[z]:
                at = (first - start) // HOUR
                values[at : at + len(load), j] = load
        return cls(tuple(zones), start, values)

    def positions(self, timestamps: pd.DatetimeIndex | Sequence[pd.Timestamp]) -> np.ndarray:
        """Grid row of each hour (may fall outside the grid)."""
        return np.asarray((pd.DatetimeIndex(timestamps) - self.start) // HOUR, dtype=np.int64)

    def windows(self, ends: np.ndarray, length: int) -> np.ndarray:
        """Each zone's load over the `length` hours before grid rows `ends` [B] -> [B, length, R], NaN for
        hours off the grid or missing."""
        rows = np.asarray(ends, dtype=np.int64)[:, None] + np.arange(-length, 0)
        inside = (rows >= 0) & (rows < len(self.values))
        out = self.values[np.clip(rows, 0, max(len(self.values) - 1, 0))]
        out[~inside] = np.nan
        return out


def recent_window(history: pd.Series, length: int, end: pd.Timestamp | None = None) -> pd.Series:
    """The `length` hours of `history` (hourly, indexed by timestamp) that end just before `end`.

    Raises SeriesError when those hours are not all present and finite."""
    end = history.index.max() + HOUR if end is None else end
    window = history.reindex(pd.date_range(end=end - HOUR, periods=length, freq="h"))
    missing = int(window.isna().sum())
    if missing:
        raise SeriesError(f"zone {history.name}: {missing} of the {length} hours before {end} are missing; "
                          f"the model needs {length} contiguous hours of history")
    return window


def forecast_region(
    bundle: Bundle,
    histories: Mapping[str, pd.Series],
    horizon: int,
    *,
    region: str = "PJM",
    issue_time: pd.Timestamp | None = None,
    context: Mapping[str, pd.Series] | None = None,
) -> RegionForecast:
    """Forecast every zone in `histories` (name -> hourly load series) from `issue_time` (default: the
    hour after the latest hour that every zone has) for `horizon` hours, plus the region total.

    A model trained with region context reads its `region_zones`' recent load from `context` (default:
    `histories`), so a few zones can be forecast with the whole region as context."""
    if not histories:
        raise SeriesError(f"region {region} has no zones to forecast")
    if bundle.features.covariates:
        raise SeriesError(f"model {bundle.name} needs covariates {list(bundle.features.covariates)} for every hour, "
                          "which a region forecast from load histories does not have: use a model trained without "
                          "them, or forecast series with their covariates (ForecastSeries)")
    if issue_time is None:
        issue_time = min(h.index.max() for h in histories.values()) + HOUR
    issue_time = pd.Timestamp(issue_time)
    names = list(histories)
    windows = np.stack([recent_window(histories[z].rename(z), bundle.input_length, issue_time).to_numpy(np.float32)
                        for z in names])
    last = pd.DatetimeIndex([issue_time - HOUR] * len(names))
    region_loads = None
    if bundle.region_zones:
        panel = RegionPanel.from_histories(context if context is not None else histories, bundle.region_zones)
        one = panel.windows(panel.positions([issue_time]), bundle.input_length)  # [1, L, R]
        region_loads = np.repeat(one, len(names), axis=0)
    quantiles = bundle.predict(windows, last, horizon, region=region_loads,
                               zones=names if bundle.features.zone_dependent else None)  # [Z, H, Q]
    stamps = future_timestamps(issue_time - HOUR, horizon)
    m = bundle.model.median_index
    zones = [SeriesForecast(z, stamps, quantiles[i, :, m], quantiles[i]) for i, z in enumerate(names)]
    total = SeriesForecast(TOTAL, stamps, quantiles[:, :, m].sum(axis=0), quantiles.sum(axis=0))
    return RegionForecast(region, issue_time, bundle.quantiles or (0.5,), zones, total)
