"""A conditional convolutional autoencoder over a week of hourly load, for anomaly detection.

Why convolutional: a week is 168 steps; convolutions see all of them in parallel (an LSTM walks them one
by one, 20x slower on a CPU), their filters are the same at every hour (a fault looks alike on Monday
and on Friday), and the per-day latent below is a plain stride-24 convolution.

What it reads, per hour of the window (W = 168 h by default), all relative to a *reference level* L, the
mean of the robust reference below over the window (so one global model serves zones of any size, and
a level shift or drift is measured against the series' own recent past, not against the window itself):

    shape   x / L - 1 with each day's mean removed (encoder only): the daily shapes, not the levels
    ref     median of the same hour 1..K weeks earlier, / L - 1: what a normal week looked like lately
            (a median, so one bad week in the reference does not move it)
    cal     calendar features (hour, weekday, season, holiday), as the forecasters use them

The encoder squeezes shape, ref and calendar into a few numbers per day (the bottleneck); the decoder
rebuilds the week x / L - 1 from that code plus ref and calendar. Because the encoder never sees the
days' levels, the decoder must *predict* each day's level from the reference, the calendar and the day's
shape; a level shift, a dropout or a drift is therefore not copied into the reconstruction. Because the
code is a few numbers per day, a spike, a flat line or a lost daily pattern cannot be reproduced either.
The reconstruction error is then scored by `models.anomaly` (normalized per series, calibrated threshold).

Shapes: B windows, W hours, C calendar features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.anomaly import Calibration, Event, calibrate, residual_features
from models.features import FeatureSpec, calendar_features

WEEK = 168
DAY = 24


@dataclass
class AutoencoderConfig:
    """Architecture of the autoencoder: enough to rebuild it from a bundle's config.json."""

    type: str = "autoencoder"
    input_length: int = WEEK  # window hours (a multiple of 24)
    n_covariates: int = 14  # calendar features per hour (FeatureSpec.size)
    params: dict[str, Any] = field(default_factory=dict)  # AutoencoderParams fields

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoencoderConfig:
        return cls(**{k: v for k, v in d.items() if k in ("type", "input_length", "n_covariates", "params")})


@dataclass
class AutoencoderParams:
    hidden: int = 32  # channels of the convolutions
    latent: int = 3  # code values per day: the bottleneck
    kernel: int = 7  # hours seen by each convolution
    layers: int = 2  # convolutions before the code and after it
    reference_weeks: int = 4  # weeks the reference median is taken over
    stride: int = 24  # hours between windows at inference (each hour is reconstructed W / stride times)
    clip: float = 3.0  # inputs clipped to +-clip (relative units) so one absurd reading cannot blow up


def reference(load: np.ndarray, weeks: int) -> np.ndarray:
    """[T] -> [T] median of the same hour 1..`weeks` weeks earlier (NaN for the first `weeks` weeks)."""
    load = np.asarray(load, dtype=np.float32)
    out = np.full(len(load), np.nan, np.float32)
    first = WEEK * weeks
    if len(load) > first:
        lags = np.stack([load[first - WEEK * k : len(load) - WEEK * k] for k in range(1, weeks + 1)])
        out[first:] = np.median(lags, axis=0)
    return out


def _conv_stack(c_in: int, hidden: int, kernel: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv1d(c_in if i == 0 else hidden, hidden, kernel, padding=kernel // 2), nn.GELU()]
    return nn.Sequential(*mods)


class ConvAutoencoder(nn.Module):
    """load [B, W], ref [B, W], cal [B, W, C] (MW and features) -> reconstruction, target [B, W] in
    units of the window's reference level, and that level [B, 1] (MW)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if config.input_length % DAY:
            raise ValueError(f"autoencoder input_length must be a multiple of 24 hours, got {config.input_length}")
        self.config = config
        p = self.params = AutoencoderParams(**config.params)
        c = config.n_covariates
        self.encoder = nn.Sequential(_conv_stack(2 + c, p.hidden, p.kernel, p.layers),
                                     nn.Conv1d(p.hidden, p.latent, DAY, stride=DAY))  # one code per day
        self.decoder = nn.Sequential(_conv_stack(p.latent + 1 + c, p.hidden, p.kernel, p.layers),
                                     nn.Conv1d(p.hidden, 1, p.kernel, padding=p.kernel // 2))

    def forward(self, load: torch.Tensor, ref: torch.Tensor, cal: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, w = load.shape
        level = ref.mean(dim=1, keepdim=True).clamp_min(1e-3)
        clip = self.params.clip
        y = load / level - 1.0
        r = (ref / level - 1.0).clamp(-clip, clip)
        days = y.clamp(-clip, clip).view(b, w // DAY, DAY)
        shape = (days - days.mean(dim=-1, keepdim=True)).view(b, w)
        cal = cal.transpose(1, 2)  # [B, C, W]
        # [B, latent, W/24]; bounded, so an input unlike any normal week (a flat line) maps to the edge of
        # the normal codes instead of to a code that reproduces it
        code = torch.tanh(self.encoder(torch.cat([shape.unsqueeze(1), r.unsqueeze(1), cal], dim=1)))
        code = code.repeat_interleave(DAY, dim=-1)
        out = self.decoder(torch.cat([code, r.unsqueeze(1), cal], dim=1)).squeeze(1)
        return r + out, y, level  # the decoder corrects the reference week

    def loss(self, load: torch.Tensor, ref: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
        """Huber loss in reference-level units: robust to the real faults the training data holds."""
        recon, target, _ = self(load, ref, cal)
        return F.huber_loss(recon, target.clamp(-self.params.clip, self.params.clip), delta=0.1)


# ---------------------------------------------------------------------------------------------- detection

@dataclass
class Reconstruction:
    """One series scored: per hour the expected MW, the relative residual and the score (NaN where the
    first `reference_weeks` weeks serve as reference only)."""

    zone: str
    timestamps: pd.DatetimeIndex
    observed: np.ndarray
    expected: np.ndarray
    level: np.ndarray  # the reference level residuals are relative to (MW)
    residual: np.ndarray  # (observed - expected) / level
    score: np.ndarray | None = None
    which: np.ndarray | None = None
    events: list[Event] = field(default_factory=list)

    def features(self) -> np.ndarray:
        """Residual features [T, 2] that `Calibration.score` reads."""
        return residual_features(self.observed, self.expected, self.level)


def min_hours(config: AutoencoderConfig) -> int:
    """Shortest series the autoencoder can score: the reference weeks plus one window."""
    return WEEK * AutoencoderParams(**config.params).reference_weeks + config.input_length


@torch.no_grad()
def reconstruct(model: ConvAutoencoder, features: FeatureSpec, load: np.ndarray, timestamps: pd.DatetimeIndex,
                zone: str = "", batch_size: int = 512, reference_from: np.ndarray | None = None) -> Reconstruction:
    """Expected load and relative residuals of one gap-free hourly series (zeros and outliers included).

    `reference_from`: the series the reference weeks are taken from (default: `load` itself), e.g. the
    load with the anomalies already found replaced by their expected values."""
    load = np.asarray(load, dtype=np.float32)
    w, p = model.config.input_length, model.params
    first = WEEK * p.reference_weeks
    if len(load) < first + w:
        need = f"{first + w} ({p.reference_weeks} weeks of reference before a {w} h window)"
        raise ValueError(f"series {zone or ''} too short: {len(load)} hours; the autoencoder needs at least "
                         f"{need}".replace("  ", " "))
    if not np.isfinite(load).all():
        raise ValueError(f"series {zone} contains NaN or infinite values")
    ref = reference(load if reference_from is None else reference_from, p.reference_weeks)
    cal = calendar_features(timestamps, features, zone or None)
    # windows every `stride` hours, and one ending at the last hour
    starts = np.unique(np.r_[np.arange(first, len(load) - w + 1, p.stride), len(load) - w])
    idx = starts[:, None] + np.arange(w)
    count = np.bincount(idx.ravel(), minlength=len(load)).astype(np.float64)  # windows covering each hour
    expected_sum, level_sum = np.zeros((2, len(load)))
    model.eval()
    for i in range(0, len(idx), batch_size):
        rows = idx[i : i + batch_size]
        recon, _, level = model(*(torch.from_numpy(x[rows]) for x in (load, ref, cal)))
        level = level.numpy().astype(np.float64)
        np.add.at(expected_sum, rows, (recon.numpy() + 1.0) * level)
        np.add.at(level_sum, rows, np.broadcast_to(level, rows.shape))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected, level = np.where(count > 0, np.stack([expected_sum, level_sum]) / count, np.nan)
        residual = (load - expected) / level  # NaN where nothing was expected
    return Reconstruction(zone, timestamps, load, expected.astype(np.float32), level, residual)


def detect_series(model: ConvAutoencoder, features: FeatureSpec, calibration: Calibration, load: np.ndarray,
                  timestamps: pd.DatetimeIndex, zone: str = "") -> Reconstruction:
    """Reconstruct, score (normalized with the zone's own scales when the calibration knows the zone)
    and merge flagged hours into events.

    Two passes: an anomaly would otherwise come back as an echo one, two, three weeks later, when it
    sits in the reference of the same hour. The second pass takes the reference from the load with
    the hours flagged by the first (and an hour either side) replaced by what was expected there."""
    rec = reconstruct(model, features, load, timestamps, zone)
    score, _ = calibration.score(rec.features(), zone)
    flagged = np.convolve(np.nan_to_num(score) > 1.0, np.ones(3), mode="same") > 0
    if flagged.any():
        cleaned = np.where(flagged & np.isfinite(rec.expected), rec.expected, load).astype(np.float32)
        rec = reconstruct(model, features, load, timestamps, zone, reference_from=cleaned)
    rec.score, rec.which, rec.events = calibration.events(zone, timestamps, rec.features(), rec.expected,
                                                          rec.observed)
    return rec


def calibrate_detector(model: ConvAutoencoder, features: FeatureSpec, segments: Sequence[Any],
                       **calibrate_kwargs: Any) -> Calibration:
    """Fit the scales and thresholds on normal data: `segments` are gap-free series (models.data.Series)
    whose hours before `target_start` serve as reference only."""
    residuals: dict[str, list[np.ndarray]] = {}
    for s in segments:
        if len(s.load) < min_hours(model.config):
            continue
        r = reconstruct(model, features, s.load, s.timestamps, s.zone).features()
        if getattr(s, "target_start", None) is not None:
            r[: int(s.timestamps.searchsorted(s.target_start))] = np.nan
        residuals.setdefault(s.zone, []).append(r)
    if not residuals:
        raise ValueError(f"no calibration segment is long enough: each needs {min_hours(model.config)} hours")
    return calibrate(residuals, **calibrate_kwargs)


def detector_of(bundle: Any) -> tuple[ConvAutoencoder, Calibration]:
    """The autoencoder and calibration of an anomaly bundle (models.bundle.load_bundle); a clear error
    for any other bundle."""
    if bundle.kind != "autoencoder" or "detector" not in bundle.meta:
        raise ValueError(f"model {bundle.name!r} is a {bundle.kind} bundle, not an anomaly detector; "
                         f"train one with `energyopt train --model autoencoder`")
    return bundle.model, Calibration.from_dict(bundle.meta["detector"])


def detect_segments(bundle: Any, segments: Sequence[Any]) -> tuple[list[Reconstruction], list[str]]:
    """Detect anomalies in gap-free segments (models.anomaly.detection_segments); segments too short
    to score are skipped with a note."""
    model, calibration = detector_of(bundle)
    need = min_hours(model.config)
    out, notes = [], []
    for s in segments:
        if len(s.load) < need:
            notes.append(f"{s.zone}: {len(s.load)} h segment from {s.timestamps[0]} skipped: the detector needs "
                         f"at least {need} h ({need // WEEK - model.config.input_length // WEEK} weeks of reference "
                         f"before a {model.config.input_length} h window)")
            continue
        out.append(detect_series(model, bundle.features, calibration, s.load, s.timestamps, s.zone))
    return out, notes
