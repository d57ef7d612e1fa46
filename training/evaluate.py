"""Backtests: the one evaluation protocol shared by `energyopt evaluate`, training and the benchmarks.

Per zone: forecasts issued daily with the first forecast hour at 00:00 inside the test period, 48 hours
ahead, from the model's history window. Metrics over every step of every origin, per zone and overall:
MAE, RMSE, MAPE (%), MASE (scaled by the in-sample MAE of the 168 h seasonal naive on the training
data), pinball loss (mean over quantiles, MW) and the coverage of the 10-90 % band (80 % interval).
Nothing here trains: comparing a bundle with freshly fitted baselines is `training.pipeline.evaluate_bundle`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from utilsforecast import losses

from models.bundle import Bundle
from models.data import Series, Split
from models.inputs import extra_covariates, forecast_origins
from models.region import RegionPanel
from models.series import WEATHER_VARIABLES

SEASON = 168
PROTOCOL_HORIZON = 48


@dataclass(frozen=True)
class WeatherForecastError:
    """A realistic weather forecast for backtests: the observed value of each forecast hour plus an error
    that grows with lead time, instead of the observed value itself (GEFCom's "perfect weather forecast").

    The error of lead h hours is e(h) = b + w(h): b ~ N(0, initial_c²) is the station's representativeness
    error (a forecast for a grid cell, read at a station, is off even at lead 0), and w is a random walk in
    lead time with Var w(h) = per_sqrt_day_c² · h / 24, so neighbouring hours err alike (a front arriving
    late shifts a whole afternoon) and the spread at 24 h and 48 h is about 1.7 and 2.3 °C: the 2-m
    temperature RMSE of operational NWP at stations on days one and two. Each (zone, first forecast hour)
    draws from its own seed, so every model of a run reads the same forecast. Only weather variables
    (models.series.WEATHER_VARIABLES) are perturbed; other covariates are known exactly."""

    initial_c: float = 0.8
    per_sqrt_day_c: float = 1.5
    seed: int = 0

    def errors(self, zone: str, first_hours: pd.DatetimeIndex, hours: int) -> np.ndarray:
        """Errors [N, hours] of the forecasts issued for `zone` with these first forecast hours."""
        out = np.empty((len(first_hours), hours))
        step = self.per_sqrt_day_c / np.sqrt(24.0)
        code = zlib.crc32(zone.encode())
        for i, t in enumerate(first_hours):
            rng = np.random.default_rng([self.seed, code, int(t.value // 3_600_000_000_000) & 0xFFFFFFFF])
            out[i] = rng.normal(0.0, self.initial_c) + np.cumsum(rng.normal(0.0, step, hours))
        return out

    def apply(self, future: np.ndarray, names: Sequence[str], zone: str, first_hours: pd.DatetimeIndex) -> np.ndarray:
        """Covariates over the forecast hours [N, H, K] (columns `names`) with the weather columns forecast."""
        future = future.copy()
        for k, name in enumerate(names):
            if name in WEATHER_VARIABLES:
                future[:, :, k] += self.errors(zone, first_hours, future.shape[1]).astype(future.dtype)
        return future


def backtest(
    bundle: Bundle,
    test: Sequence[Series],
    *,
    horizon: int = PROTOCOL_HORIZON,
    origin_hour: int = 0,
    column: str | None = None,
    issue_times: pd.DatetimeIndex | None = None,
    weather: WeatherForecastError | None = None,
) -> pd.DataFrame:
    """Forecasts of `bundle` at every protocol origin (or at `issue_times` instead: first forecast hours,
    e.g. those of the forecasts a service issued): one row per (zone, cutoff, step).

    A model reading weather covariates reads the observed weather of the history's hours and, for the
    forecast hours, the observed values too (a perfect weather forecast), or with `weather` a realistic
    forecast (WeatherForecastError).

    Columns: zone, cutoff (first forecast hour), ds, step, y, then `<name>-q<level>` for each quantile
    and `<name>` for the point forecast (the median).
    """
    name = column or bundle.name
    length = bundle.input_length
    n_extra = len(bundle.features.covariates)
    # a model with extra covariates reads their values over every hour it forecasts, so its origins need
    # the data to reach max_horizon ahead, not only the scored horizon
    reach = bundle.max_horizon if n_extra else horizon
    # a region-context model reads its region zones' load before each origin, from the same test data
    panel = RegionPanel.from_series(test, bundle.region_zones) if bundle.region_zones else None
    histories, lasts, targets, meta, past_extra, future_extra, regions = [], [], [], [], [], [], []
    for s in test:
        origins = forecast_origins(s, length, reach, hours=None if issue_times is not None else (origin_hour,))
        if issue_times is not None:
            origins = origins[s.timestamps[origins].isin(issue_times)]
        if not len(origins):
            continue
        windows = sliding_window_view(s.load, length + horizon)[origins - length]
        histories.append(windows[:, :length])
        targets.append(windows[:, length:])
        lasts.append(s.timestamps[origins - 1])
        meta.append((s.zone, s.timestamps[origins]))
        if n_extra:
            extra = extra_covariates(s, bundle.features)  # [T, K]
            past_extra.append(sliding_window_view(extra, length, axis=0)[origins - length].transpose(0, 2, 1))
            future = sliding_window_view(extra, reach, axis=0)[origins].transpose(0, 2, 1)
            if weather is not None:
                future = weather.apply(future, bundle.features.covariates, s.zone, s.timestamps[origins])
            future_extra.append(future)
        if panel is not None:
            regions.append(panel.windows(panel.positions(s.timestamps[origins]), length))
    if not histories:
        at = "at the issue times given" if issue_times is not None else f"at {origin_hour:02d}:00"
        raise ValueError(f"no forecast origin {at} with {length} h history and {reach} h ahead inside the test "
                         "period")
    extra = (np.concatenate(past_extra), np.concatenate(future_extra)) if n_extra else None
    region_loads = np.concatenate(regions) if panel is not None else None
    # each window's zone: the region context and per-zone holidays read it
    series_zones = [z for z, cutoffs in meta for _ in cutoffs] if bundle.features.zone_dependent else None
    quantiles = bundle.predict(np.concatenate(histories), pd.DatetimeIndex(np.concatenate(lasts)), horizon,
                               extra=extra, region=region_loads, zones=series_zones)
    steps = np.arange(horizon)
    zones = np.concatenate([np.repeat(z, len(c) * horizon) for z, c in meta])
    cutoffs = np.concatenate([np.repeat(c.to_numpy(), horizon) for _, c in meta])
    frame = pd.DataFrame({
        "zone": zones,
        "cutoff": cutoffs,
        "ds": cutoffs + np.tile(steps, len(cutoffs) // horizon).astype("timedelta64[h]"),
        "step": np.tile(steps + 1, len(cutoffs) // horizon),
        "y": np.concatenate(targets).reshape(-1).astype(np.float64),
    })
    levels = bundle.quantiles or (0.5,)
    flat = quantiles.reshape(-1, quantiles.shape[-1]).astype(np.float64)
    for j, q in enumerate(levels):
        frame[f"{name}-q{q:g}"] = flat[:, j]
    frame[name] = flat[:, bundle.model.median_index]
    return frame


def score(frame: pd.DataFrame, models: Sequence[str], train: Sequence[Series]) -> dict:
    """Metrics for each model column of a backtest frame: {"summary": {model: {...}}, "rows": [...]}.

    `train` gives the MASE scale per zone. "Overall" pools every row of every zone (MASE: the mean of
    the per-row scaled errors).
    """
    scale = pd.Series({s.zone: 0.0 for s in train}, dtype=float)
    weights = pd.Series({s.zone: 0 for s in train}, dtype=float)
    for s in train:  # a zone may have several segments: weight each by its number of differences
        diffs = np.abs(s.load[SEASON:] - s.load[:-SEASON])
        scale[s.zone] += diffs.sum()
        weights[s.zone] += len(diffs)
    scale = scale / weights.replace(0, np.nan)
    missing = sorted(set(frame["zone"]) - set(scale.dropna().index))
    if missing:
        raise ValueError(f"zones {missing} have no training history of {SEASON + 1} h or more for the MASE scale")

    rows, summary = [], {}
    pooled = frame.assign(zone="__all__")
    for model in models:
        per_zone = _metrics(frame, model)
        overall = _metrics(pooled, model).iloc[0].to_dict()
        mase = (frame[model] - frame["y"]).abs() / frame["zone"].map(scale)
        per_zone["mase"] = mase.groupby(frame["zone"]).mean()
        overall["mase"] = float(mase.mean())
        summary[model] = {k: round(float(v), 6) for k, v in overall.items()}
        for zone, metrics in per_zone.iterrows():
            rows.append({"zone": zone, "model": model, **{k: round(float(v), 6) for k, v in metrics.items()}})
    return {"summary": summary, "rows": rows}


def _metrics(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """MAE, RMSE, MAPE, pinball and 80 % coverage per zone of `frame` (indexed by zone)."""
    keys = dict(id_col="zone", target_col="y", cutoff_col="_none")
    out = pd.DataFrame({
        "mae": losses.mae(frame, [model], **keys).set_index("zone")[model],
        "rmse": losses.rmse(frame, [model], **keys).set_index("zone")[model],
        "mape": losses.mape(frame, [model], **keys).set_index("zone")[model] * 100,
    })
    q_cols = [c for c in frame.columns if c.startswith(f"{model}-q")]
    pinball = [losses.quantile_loss(frame, {model: c}, q=float(c.rsplit("-q", 1)[1]), **keys).set_index("zone")[model]
               for c in q_cols]
    out["pinball"] = pd.concat(pinball, axis=1).mean(axis=1)
    lo, hi = f"{model}-q0.1", f"{model}-q0.9"
    if lo in frame and hi in frame:
        inside = frame["y"].between(frame[lo], frame[hi])
        out["coverage_80"] = inside.groupby(frame["zone"]).mean()
    return out


def score_test_period(bundle: Bundle, split: Split) -> dict:
    """The bundle's own scores on the test period of `split`, what its metrics.json holds: the protocol's
    48 h, or the model's whole horizon when it is shorter (a day-ahead model), as "horizon" says.
    Raises ValueError when the test period holds no forecast origin."""
    horizon = min(PROTOCOL_HORIZON, bundle.max_horizon)
    return {"horizon": horizon, **score(backtest(bundle, split.test, horizon=horizon), [bundle.name], split.train)}

