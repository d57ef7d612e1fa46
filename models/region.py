"""Region forecasts: every zone of a region plus the region total, from each zone's recent history.

The total's point forecast is the sum of the zones' (coherent by construction). Its quantile bands sum
the zones' quantiles, which is exact when zone errors move together (comonotone) and otherwise errs wide:
load errors across neighbouring zones are strongly correlated through shared weather, so this is the
usual choice when no joint model of the errors exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from models.bundle import Bundle
from models.features import future_timestamps
from models.series import SeriesError

TOTAL = "TOTAL"


@dataclass
class SeriesForecast:
    """One forecast path: hourly timestamps, point forecast [H] and quantiles [H, Q] in MW."""

    name: str
    timestamps: pd.DatetimeIndex
    point: np.ndarray
    quantiles: np.ndarray

    def to_frame(self, levels: Sequence[float]) -> pd.DataFrame:
        frame = pd.DataFrame({"zone": self.name, "timestamp": self.timestamps, "point": self.point})
        for j, q in enumerate(levels):
            frame[f"q{q:g}"] = self.quantiles[:, j]
        return frame


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


def recent_window(history: pd.Series, length: int, end: pd.Timestamp | None = None) -> pd.Series:
    """The `length` hours of `history` (hourly, indexed by timestamp) that end just before `end`.

    Raises SeriesError when those hours are not all present and finite."""
    if end is None:
        end = history.index.max() + pd.Timedelta(hours=1)
    want = pd.date_range(end=end - pd.Timedelta(hours=1), periods=length, freq="h")
    window = history.reindex(want)
    missing = int(window.isna().sum())
    if missing:
        raise SeriesError(
            f"zone {history.name}: {missing} of the {length} hours before {end} are missing; "
            f"the model needs {length} contiguous hours of history"
        )
    return window


def forecast_region(
    bundle: Bundle,
    histories: Mapping[str, pd.Series],
    horizon: int,
    *,
    region: str = "PJM",
    issue_time: pd.Timestamp | None = None,
) -> RegionForecast:
    """Forecast every zone in `histories` (name -> hourly load series) from `issue_time` (default: the
    hour after the latest hour that every zone has) for `horizon` hours, plus the region total."""
    if not histories:
        raise SeriesError(f"region {region} has no zones to forecast")
    if bundle.features.covariates:
        raise SeriesError(f"model {bundle.name} needs covariates {list(bundle.features.covariates)} for every hour, "
                          "which a region forecast from load histories does not have: use a model trained without "
                          "them, or forecast series with their covariates (ForecastSeries)")
    if issue_time is None:
        issue_time = min(h.index.max() for h in histories.values()) + pd.Timedelta(hours=1)
    issue_time = pd.Timestamp(issue_time)
    names = list(histories)
    windows = np.stack([
        recent_window(histories[z].rename(z), bundle.input_length, issue_time).to_numpy(np.float32) for z in names
    ])
    last = pd.DatetimeIndex([issue_time - pd.Timedelta(hours=1)] * len(names))
    quantiles = bundle.predict(windows, last, horizon)  # [Z, H, Q]
    stamps = future_timestamps(issue_time - pd.Timedelta(hours=1), horizon)
    m = bundle.model.median_index
    zones = [SeriesForecast(z, stamps, quantiles[i, :, m], quantiles[i]) for i, z in enumerate(names)]
    total = SeriesForecast(TOTAL, stamps, quantiles[:, :, m].sum(axis=0), quantiles.sum(axis=0))
    return RegionForecast(region, issue_time, bundle.quantiles or (0.5,), zones, total)
