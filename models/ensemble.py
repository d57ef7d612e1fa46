"""An ensemble of trained forecasters as one model: the mean of its members' quantile forecasts.

Averaging quantile forecasts (Vincentization) is the usual way to combine probabilistic load forecasts
(the GEFCom winners combined models so): each member keeps its own backbone and the interval scale it
was calibrated with; the mean of increasing quantiles is increasing, and the ensemble is calibrated
again as a whole on validation (QuantileForecaster.interval_scale). Every member reads the same inputs
(history, calendar and covariates, region context), so the members must agree on them; one ensemble
bundle then serves like any other forecaster.

Config: `type: ensemble`, `params: {members: [{type: lstm, params: {...}}, {type: transformer, ...}]}`.
Built from trained bundles by `assemble` (`energyopt ensemble`, or `energyopt train` with an ensemble
config, which trains the members first).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.forecaster import BACKBONES, Backbone, monotone_quantiles, register


@register("ensemble")
class QuantileEnsemble(Backbone):
    """Members' quantiles (each in the window's normalized units, with its own interval scale) averaged."""

    reads_past_covariates = True
    outputs_sorted_quantiles = True
    trainable = False  # the members are trained on their own; the ensemble is only calibrated

    def __init__(self, input_length: int, horizon: int, n_covariates: int, n_outputs: int, median: int,
                 n_past_covariates: int = 0, members: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        if not members or len(members) < 2:
            raise ValueError("ensemble param members must list at least two member models ({type, params})")
        nested = [m.get("type") for m in members if m.get("type") == "ensemble" or m.get("type") not in BACKBONES]
        if nested:
            raise ValueError(f"ensemble members must be model types of {sorted(set(BACKBONES) - {'ensemble'})}, "
                             f"got {nested}")
        for m in members:
            if n_past_covariates and not BACKBONES[m["type"]].reads_past_covariates:
                raise ValueError(f"ensemble member type {m['type']!r} reads no region context")
        self.median = median
        self.members = nn.ModuleList(
            BACKBONES[m["type"]](input_length=input_length, horizon=horizon, n_covariates=n_covariates,
                                 n_outputs=n_outputs, median=median, **dict(m.get("params") or {}),
                                 **({"n_past_covariates": n_past_covariates} if n_past_covariates else {}))
            for m in members)
        self.members.requires_grad_(False)  # trained on their own (`trainable`): never fitted jointly here
        # each member's interval scale as it was calibrated alone (QuantileForecaster.interval_scale)
        self.register_buffer("member_scales", torch.ones(len(members), n_outputs))

    def forward(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        total = None
        for k, member in enumerate(self.members):
            q = member(x, past_cov, future_cov)
            if not member.outputs_sorted_quantiles:
                q = monotone_quantiles(q, self.median)
            if q.shape[-1] > 1:
                mid = q[..., self.median : self.median + 1]
                q = mid + (q - mid) * self.member_scales[k]
            total = q if total is None else total + q
        return total / len(self.members)
