"""Baselines every neural model must beat: a DLinear-style linear model and the seasonal naive forecast.

Both see the history already normalized by QuantileForecaster (window mean and std). That is harmless for
the seasonal naive: normalization is affine and the wrapper undoes it, so a lagged value (and a quantile
of lagged differences) comes back exactly in data units.

Shapes: B series, L history hours, H horizon hours, C covariates, Q outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.forecaster import DEFAULT_QUANTILES, Backbone, register


@dataclass
class LinearParams:
    kernel_size: int = 25  # moving-average window (hours) that splits trend from remainder; odd
    individual: bool = False  # every output gets its own history map, not only the median

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"linear param kernel_size must be odd and >= 1, got {self.kernel_size}")


@register("linear")
class DLinear(Backbone):
    """DLinear (Zeng et al. 2023): the window split into a moving-average trend and a remainder, each
    mapped to the horizon by one Linear; plus a linear map of each step's known covariates, so calendar
    and holiday effects enter the forecast additively.

    individual=False: one history response, for the median output that QuantileForecaster's
    monotone_quantiles builds the others around; the other outputs (the gaps to the neighbouring
    quantiles) depend on the step and calendar only, so intervals scale with the window's std. This is
    what DLinear's default sharing means for one series. individual=True: each output responds to the
    history on its own (Q times the weights), so intervals can also follow the recent shape.
    """

    def __init__(self, input_length: int, horizon: int, n_covariates: int, n_outputs: int, median: int,
                 **params: Any) -> None:
        super().__init__()
        p = LinearParams(**params)
        self.horizon, self.n_outputs, self.median = horizon, n_outputs, median
        self.kernel_size, self.individual = p.kernel_size, p.individual
        maps = n_outputs if p.individual else 1
        self.trend = nn.Linear(input_length, horizon * maps, bias=False)
        self.remainder = nn.Linear(input_length, horizon * maps, bias=False)
        self.bias = nn.Parameter(torch.zeros(horizon, n_outputs))
        self.covariates = nn.Linear(n_covariates, n_outputs, bias=False) if n_covariates else None

    def moving_average(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, L] centred moving average, the ends padded with the first/last value as in DLinear."""
        pad = (self.kernel_size - 1) // 2
        padded = torch.cat([x[:, :1].expand(-1, pad), x, x[:, -1:].expand(-1, pad)], dim=1)
        return F.avg_pool1d(padded.unsqueeze(1), self.kernel_size, stride=1).squeeze(1)

    def forward(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        trend = self.moving_average(x)
        out = (self.trend(trend) + self.remainder(x - trend)).view(B, self.horizon, -1)  # [B, H, Q or 1]
        if not self.individual:  # the history response goes to the median column only
            out = F.pad(out, (self.median, self.n_outputs - 1 - self.median))
        out = out + self.bias
        if self.covariates is not None:
            out = out + self.covariates(future_cov)
        return out


@dataclass
class SeasonalNaiveParams:
    season: int = 168  # hours; a week captures both the daily and the weekday/weekend cycle of load
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES  # levels of the outputs; pass the config's quantiles

    def __post_init__(self) -> None:
        self.quantiles = tuple(float(q) for q in self.quantiles)  # a list when read back from JSON
        if self.season < 1:
            raise ValueError(f"seasonal_naive param season must be >= 1, got {self.season}")
        if list(self.quantiles) != sorted(set(self.quantiles)) or not all(0 < q < 1 for q in self.quantiles):
            raise ValueError(f"seasonal_naive param quantiles must be increasing in (0, 1), got {self.quantiles}")


@register("seasonal_naive")
class SeasonalNaive(Backbone):
    """Median: the value one season earlier (the last season repeated beyond one season ahead).
    Other quantiles: that value plus the window's own seasonal differences x[t] - x[t - season] over its
    last season, at quantile q minus their median, so the median stays the plain naive forecast (the
    standard benchmark) and the band is the spread of how much this series changed season over season.

    It has no parameters, so training skips the fit (`trainable`).
    """

    outputs_sorted_quantiles, trainable = True, False

    def __init__(self, input_length: int, horizon: int, n_covariates: int, n_outputs: int, median: int,
                 **params: Any) -> None:
        super().__init__()
        p = SeasonalNaiveParams(**params)
        if input_length < 2 * p.season:
            raise ValueError(f"seasonal_naive param season ({p.season}) needs input_length >= 2 * season, "
                             f"got input_length {input_length}")
        if n_outputs > 1 and len(p.quantiles) != n_outputs:
            raise ValueError(f"seasonal_naive param quantiles has {len(p.quantiles)} levels for {n_outputs} outputs")
        self.season, self.horizon = p.season, horizon
        self.levels = p.quantiles + (0.5,) if n_outputs > 1 else ()  # the median last, to centre on

    def forward(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        L, s = x.shape[1], self.season
        last_season = x[:, L - s:]  # [B, s]
        naive = last_season[:, torch.arange(self.horizon, device=x.device) % s]  # [B, H]
        if not self.levels:
            return naive.unsqueeze(-1)
        diffs = (last_season - x[:, L - 2 * s : L - s]).float()  # [B, s]
        q = torch.quantile(diffs, torch.tensor(self.levels, device=x.device), dim=1).T  # [B, Q + 1]
        offsets = (q[:, :-1] - q[:, -1:]).to(x.dtype)  # [B, Q], zero at q = 0.5
        return naive.unsqueeze(-1) + offsets.unsqueeze(1)


WEEK = 168


def weekly_fallback(history: np.ndarray, horizon: int, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The fallback forecast of a zone the model cannot forecast (its recent hours are missing): each hour
    the same hour one week earlier (or two, three... for hours that week lacks), scaled by the zone's
    last day held against the same day a week before; bands from the relative errors of the same rule over
    the weeks held. Operators' usual last resort, because it keeps the daily and weekly shape.

    `history`: hourly load [T] up to just before the first forecast hour, NaN where missing.
    Returns point [H] and quantiles [H, Q] (sorted along Q), or None when nothing is held.
    """
    history = np.asarray(history, dtype=np.float64)
    held = np.flatnonzero(np.isfinite(history))
    if not len(held):
        return None
    T = len(history)
    target = T + np.arange(horizon)
    point = np.full(horizon, np.nan)
    for lag in range(WEEK, T + WEEK, WEEK):  # the same hour 1, 2, ... weeks before
        source = target - lag
        take = np.isnan(point) & (source >= 0) & (source < T)
        point[take] = history[source[take]]
        if not np.isnan(point).any():
            break
    point[np.isnan(point)] = np.nanmean(history)  # less than a week held: its mean
    last = held[-1]
    day = history[max(last - 23, 0) : last + 1]
    week_before = history[max(last - 23 - WEEK, 0) : max(last + 1 - WEEK, 0)]
    scale = 1.0
    if np.isfinite(day).sum() >= 12 and np.isfinite(week_before).sum() >= 12:
        scale = float(np.clip(np.nanmean(day) / np.nanmean(week_before), 0.5, 2.0))
    point = point * scale
    errors = history[WEEK:] / history[:-WEEK] - 1.0 if T > WEEK else np.empty(0)
    errors = errors[np.isfinite(errors)]
    levels = np.asarray(levels, dtype=np.float64)
    if len(errors) >= 24:
        relative = np.quantile(errors, levels)
    else:  # too little held to measure the rule's errors: a wide band (about +-25 % at 10-90 %)
        relative = (levels - 0.5) * 0.6
    quantiles = np.sort(point[:, None] * (1.0 + relative[None, :]), axis=1)
    return point.astype(np.float32), quantiles.astype(np.float32)
