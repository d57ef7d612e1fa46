"""The one interface every forecaster shares, and the quantile machinery around it.

A *backbone* maps a normalized history window plus known covariates to unconstrained outputs for every
horizon step; `QuantileForecaster` wraps any backbone with per-window normalization (RevIN-style: the
window's own mean and scale), non-crossing quantiles and conformal interval scaling. Switching models is
changing the `type` name in a config.

Shapes: B series, L history hours, H horizon hours, C covariates, Q quantiles. A model may also read P
inputs known over the history only (the region's zones, models.features.region_channels): they follow the
C covariates in past_cov, which is then [B, L, C + P] while future_cov stays [B, H, C].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.kernels import kernel_mode, kernels_enabled, quantile_epilogue

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)


@dataclass
class ForecasterConfig:
    """Architecture of a forecaster: enough to rebuild it from a bundle's config.json."""

    type: str = "lstm"  # a key of BACKBONES
    input_length: int = 336  # hours of history the model reads
    horizon: int = 168  # most hours ahead it forecasts
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES  # empty: a single point output trained with MSE
    n_covariates: int = 0  # known-future inputs per hour (models.features.FeatureSpec.known_size)
    params: dict[str, Any] = field(default_factory=dict)  # backbone hyper-parameters
    kernels: str = "auto"  # Triton inference kernels: auto (on CUDA), on, off (see models.kernels)
    n_past_covariates: int = 0  # inputs known over the history only (FeatureSpec.region_zones)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForecasterConfig:
        d = dict(d)
        d["quantiles"] = tuple(float(q) for q in d.get("quantiles", DEFAULT_QUANTILES))
        return cls(**d)

    @property
    def n_outputs(self) -> int:
        return max(len(self.quantiles), 1)


def median_index(quantiles: tuple[float, ...]) -> int:
    """The output column every quantile is built and scaled around: 0.5 where configured, else the middle one.
    The one definition: the quantile head, the Triton epilogue, calibration and every caller read it."""
    return quantiles.index(0.5) if 0.5 in quantiles else len(quantiles) // 2


@dataclass
class HeadInputs:
    """What a backbone's last layer reads, so the quantile head can be fused with what follows it:
    outputs = head(features) + base, each part optional."""

    features: torch.Tensor | None  # [B, H, K] input of the final quantile head
    head: nn.Linear | None  # K -> Q
    base: torch.Tensor | None  # [B, H, Q] added to the head's output (a skip path, another head)

    def outputs(self) -> torch.Tensor:
        """The backbone's unconstrained outputs [B, H, Q], computed in PyTorch."""
        out = self.head(self.features) if self.head is not None else None
        if self.base is not None:
            out = self.base if out is None else out + self.base
        return out


class Backbone(nn.Module):
    """(x [B, L] normalized, past_cov [B, L, C + P], future_cov [B, H, C]) -> unconstrained outputs [B, H, Q].
    Built from input_length, horizon, n_covariates, n_outputs, median (`median_index`), the config's params
    and n_past_covariates where it reads them. Capabilities are class attributes, never probed:"""

    reads_past_covariates = False  # takes n_past_covariates: P inputs known over the history (region context)
    outputs_sorted_quantiles = False  # outputs are increasing quantiles already: no monotone_quantiles
    trainable = True  # has weights to fit (False: training skips straight to calibration)

    def head_inputs(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor, *,
                    kernels: bool = False) -> HeadInputs:
        """Everything up to the quantile head, for the fused epilogue; by default no head, the outputs as base
        (the epilogue then fuses monotone quantiles, intervals and de-normalization only)."""
        return HeadInputs(None, None, self(x, past_cov, future_cov))


BACKBONES: dict[str, type[Backbone]] = {}  # model type name in configs -> backbone class


def register(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: make a backbone available under `name` in configs."""

    def wrap(cls: type[Backbone]) -> type[Backbone]:
        BACKBONES[name] = cls
        return cls

    return wrap


class QuantileForecaster(nn.Module):
    """history [B, L] and covariates [B, L, C + P] / [B, H, C] (data units) -> quantiles [B, H, Q] (data units).

    Quantiles come out sorted (non-crossing) for every series and step; with no quantiles configured
    the single output is a point forecast.
    """

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        if config.type not in BACKBONES:
            raise ValueError(f"unknown model type {config.type!r}; choose one of {sorted(BACKBONES)}")
        if list(config.quantiles) != sorted(set(config.quantiles)) or not all(0 < q < 1 for q in config.quantiles):
            raise ValueError(f"quantiles must be distinct, increasing and inside (0, 1), got {config.quantiles}")
        kernel_mode(config.kernels)  # a typo is an error here, not on the first GPU forward
        if config.n_past_covariates and not BACKBONES[config.type].reads_past_covariates:
            raise ValueError(f"model type {config.type!r} reads no inputs beside its own history and known-future "
                             "covariates (no region context); use lstm or transformer")
        self.config = config
        self.backbone = BACKBONES[config.type](
            input_length=config.input_length, horizon=config.horizon, n_covariates=config.n_covariates,
            n_outputs=config.n_outputs, median=median_index(config.quantiles), **config.params,
            **({"n_past_covariates": config.n_past_covariates} if config.n_past_covariates else {}),
        )
        # Conformal scaling of each quantile's distance from the median, fitted on validation data.
        self.register_buffer("interval_scale", torch.ones(config.n_outputs))
        self.register_buffer("quantile_levels", torch.tensor(config.quantiles or (0.5,), dtype=torch.float32))

    @property
    def median_index(self) -> int:
        return median_index(self.config.quantiles)

    def forward(self, history: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        if self.uses_kernels(history.device):
            return self._forward_kernels(history, past_cov, future_cov)
        q, loc, scale = self.forward_normalized(history, past_cov, future_cov)
        return q * scale.unsqueeze(-1) + loc.unsqueeze(-1)

    def uses_kernels(self, device: torch.device) -> bool:
        """Whether a forward pass on `device` now takes the Triton kernels (inference only)."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False
        return kernels_enabled(device, self.config.kernels)

    def _forward_kernels(self, history: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        """`forward` with the backbone's kernel path and the fused epilogue (same result within fp error)."""
        loc, scale = window_stats(history)
        x = (history - loc) / scale
        parts = self.backbone.head_inputs(x, past_cov, future_cov, kernels=True)
        head = parts.head
        return quantile_epilogue(
            parts.features, head.weight if head else None, head.bias if head else None, parts.base,
            loc, scale, self.interval_scale, self.median_index,
            monotone=not self.backbone.outputs_sorted_quantiles,
        )

    def forward_normalized(
        self, history: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantiles in the window's normalized units, with the window's loc and scale [B, 1].

        Training losses are taken here, so that every series weighs the same whatever its size in MW.
        """
        loc, scale = window_stats(history)
        raw = self.backbone((history - loc) / scale, past_cov, future_cov)  # [B, H, Q]
        if not self.backbone.outputs_sorted_quantiles:
            raw = monotone_quantiles(raw, self.median_index)
        return self._scale_intervals(raw), loc, scale

    def _scale_intervals(self, q: torch.Tensor) -> torch.Tensor:
        if q.shape[-1] == 1:
            return q
        mid = q[..., self.median_index : self.median_index + 1]
        return mid + (q - mid) * self.interval_scale


def window_stats(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window location and scale [B, 1] used to normalize a history and denormalize its forecast."""
    loc = history.mean(dim=1, keepdim=True)
    scale = history.std(dim=1, keepdim=True).clamp_min(1e-3 * loc.abs().clamp_min(1.0))
    return loc, scale


def monotone_quantiles(raw: torch.Tensor, mid: int | None = None) -> torch.Tensor:
    """Unconstrained outputs [..., Q] -> increasing quantiles: the median column `mid` (default the middle
    one) plus cumulative softplus steps outward on each side, so quantiles can never cross."""
    q = raw.shape[-1]
    if q == 1:
        return raw
    mid = q // 2 if mid is None else mid
    centre = raw[..., mid : mid + 1]
    upper = centre + torch.cumsum(F.softplus(raw[..., mid + 1 :]), dim=-1)
    lower = centre - torch.flip(torch.cumsum(F.softplus(torch.flip(raw[..., :mid], [-1])), dim=-1), [-1])
    return torch.cat([lower, centre, upper], dim=-1)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss. pred [..., Q], target [...], quantiles [Q]."""
    diff = target.unsqueeze(-1) - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


def forecast_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """The training loss: pinball over the configured quantiles, or MSE for a point model."""
    if not quantiles:
        return F.mse_loss(pred.squeeze(-1), target)
    levels = torch.tensor(quantiles, dtype=pred.dtype, device=pred.device)
    return pinball_loss(pred, target, levels)
