"""Window datasets for global models: every (series, origin) pair of every zone is one sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from models.data import Series
from models.features import FeatureSpec, region_channels
from models.inputs import forecast_origins, known_covariates, region_inputs
from models.region import RegionPanel


class WindowDataset(Dataset):
    """(history [L], past covariates [L, C], future covariates [H, C], target [H]) windows.

    A window's origin is its first forecast hour. Origins are kept where the whole window lies inside one
    gap-free segment and the target starts at or after the segment's `target_start` (so validation and
    test targets never leak into one another while their history may reach back into earlier data).
    `origin_hours` keeps only origins at those hours of the day (the backtest protocol uses 00:00).
    With `features.region_zones`, the covariates also carry the series' zone (models.inputs.region_inputs)
    and past covariates those zones' region channels over the window, read from `region` (a panel of at
    least those zones, e.g. built from all of the data's segments).

    `mixup` (training only): that share of the windows drawn is blended with another window of the same zone
    whose origin falls at the same hour of the week, every part of both (load, covariates, region channels)
    as w x + (1 - w) x' with w uniform in [0, 1] (mixup, Zhang et al. 2018). Two such windows share their
    calendar, so the blend is a plausible stretch of that zone's load between the two; a deep model then
    sees more than the few hundred distinct training days a short history has, which it otherwise learns by
    heart within an epoch or two (each date's weather included). Draws follow `seed`.
    """

    def __init__(
        self,
        series: Sequence[Series],
        input_length: int,
        horizon: int,
        features: FeatureSpec,
        *,
        origin_hours: Sequence[int] | None = None,
        region: RegionPanel | None = None,
        mixup: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0 <= mixup <= 1:
            raise ValueError(f"mixup must be a share of the windows in [0, 1], got {mixup}")
        self.input_length, self.horizon = input_length, horizon
        self.loads = [torch.from_numpy(np.ascontiguousarray(s.load, dtype=np.float32)) for s in series]
        self.covs = [torch.from_numpy(known_covariates(s, features)) for s in series]
        self.zones = [s.zone for s in series]
        self.region, self.region_offsets = None, None
        if features.region_zones:
            if region is None:
                region = RegionPanel.from_series(series, features.region_zones)
            missing = [z for z in features.region_zones if z not in region.zones]
            if missing:
                raise ValueError(f"the region panel lacks zones {missing} that the model reads")
            columns = [region.zones.index(z) for z in features.region_zones]
            self.region = RegionPanel(features.region_zones, region.start, region.values[:, columns])
            self.region_offsets = [int(region.positions(s.timestamps[:1])[0]) if len(s) else 0 for s in series]
        self.index = _window_index([forecast_origins(s, input_length, horizon, origin_hours) for s in series])
        self.mixup, self.partners = mixup, None
        if mixup:
            self.rng = np.random.default_rng(seed)
            self.partners = _same_hour_of_week(series, self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        """Several windows at once (the DataLoader asks for a batch): region channels are computed for
        the whole batch in one vectorized pass; with `mixup`, some blended with their partners."""
        if not self.mixup:
            return self._windows(items)
        items = list(items)
        blend = np.flatnonzero(self.rng.random(len(items)) < self.mixup)
        group, members = self.partners
        partners = [int(members[g][self.rng.integers(len(members[g]))]) for g in group[[items[k] for k in blend]]]
        windows = self._windows(items + partners)
        out, mates = windows[: len(items)], windows[len(items):]
        for k, mate, w in zip(blend, mates, self.rng.random(len(blend)), strict=True):
            w = float(w)
            out[k] = tuple(w * a + (1 - w) * b for a, b in zip(out[k], mate, strict=True))
        return out

    def _windows(self, items: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        out = []
        for item in items:
            i, origin = self.index[item]
            start, end = origin - self.input_length, origin + self.horizon
            load, cov = self.loads[i], self.covs[i]
            out.append((load[start:origin], cov[start:origin], cov[origin:end], load[origin:end]))
        if self.region is None:
            return out
        # the same layout as at inference (models.inputs.region_inputs), for the whole batch at once
        picked = self.index[list(items)]
        ends = np.array([self.region_offsets[i] + origin for i, origin in picked])
        past, future = region_inputs(
            np.stack([w[1].numpy() for w in out]), np.stack([w[2].numpy() for w in out]),
            [self.zones[i] for i, _ in picked], region_channels(self.region.windows(ends, self.input_length)),
            self.region.zones,
        )
        return [(h, torch.from_numpy(p), torch.from_numpy(f), y) for (h, _, _, y), p, f in zip(out, past, future)]


class ReferenceWindowDataset(Dataset):
    """Autoencoder windows: (load [W], reference [W], calendar [W, C]) for every window start that has
    `reference_weeks` weeks of the same segment before it (models.autoencoder.reference) and whose
    window lies at or after the segment's `target_start`."""

    def __init__(self, series: Sequence[Series], window: int, reference_weeks: int, features: FeatureSpec) -> None:
        from models.autoencoder import WEEK, reference

        self.window = window
        self.loads = [torch.from_numpy(np.ascontiguousarray(s.load, dtype=np.float32)) for s in series]
        self.refs = [torch.from_numpy(reference(s.load, reference_weeks)) for s in series]
        self.covs = [torch.from_numpy(known_covariates(s, features)) for s in series]
        self.index = _window_index([forecast_origins(s, WEEK * reference_weeks, window) for s in series])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, ...]:
        i, start = self.index[item]
        sl = slice(start, start + self.window)
        return self.loads[i][sl], self.refs[i][sl], self.covs[i][sl]


def _same_hour_of_week(series: Sequence[Series], index: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Windows grouped by zone and the hour of the week of their origin: (group of each window [N], the
    windows of each group)."""
    hour_of_week = np.zeros(len(index), dtype=np.int64)
    for i, s in enumerate(series):
        rows = index[:, 0] == i
        hour_of_week[rows] = (s.timestamps.dayofweek.to_numpy() * 24 + s.timestamps.hour.to_numpy())[index[rows, 1]]
    zone_codes = {z: k for k, z in enumerate(dict.fromkeys(s.zone for s in series))}
    zone = np.array([zone_codes[series[i].zone] for i in index[:, 0]], dtype=np.int64)
    _, group = np.unique(zone * 168 + hour_of_week, return_inverse=True)
    order = np.argsort(group, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(group[order])) + 1) if len(order) else []
    return group, members


def _window_index(origins: list[np.ndarray]) -> np.ndarray:
    """(series, origin) pairs [N, 2] from each series' origins."""
    pairs = [np.stack([np.full(len(o), i), o], axis=1) for i, o in enumerate(origins)]
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
