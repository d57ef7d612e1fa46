"""PatchTST (Nie et al. 2023, "A Time Series is Worth 64 Words"), plus a decoder for known covariates.

The normalized history is cut into overlapping patches (16 hours, stride 8, the end padded with the last
value so the newest hours get a patch of their own); each patch is one token for a Transformer encoder,
and a flatten head maps all encoded tokens to the whole horizon at once. Each series is forecast on its
own (channel independence), which is how our global model treats every zone.

With no covariates (C = 0) this is PatchTST as published (RevIN without affine is done by
QuantileForecaster), so it can be checked against the paper's ETTh1 numbers. With covariates:
- each patch also carries its hours' covariates, flattened (patch_len * C values) rather than averaged,
  because the window may start at any hour: the exact hour of day and holiday flag of every value in the
  patch tell the encoder where the daily shape sits, which a patch mean blurs;
- a small decoder adds, for each horizon step, an MLP of [context, future covariates, step embedding],
  so calendar and holiday effects of the forecast hours enter directly.
With P past-only inputs (the region's zones' recent load) each patch also carries their values at its
hours, so attention relates the series to what its neighbours did at the same time.

Shapes: B series, L history hours, H horizon hours, C covariates, Q outputs, N patches, D d_model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.forecaster import Backbone, HeadInputs, register


@dataclass
class PatchTSTParams:
    # PatchTST's defaults; its ETTh1 setting is d_model 16, n_heads 4, d_ff 128, dropout 0.3, fc_dropout 0.3.
    patch_len: int = 16
    stride: int = 8
    d_model: int = 128
    n_heads: int = 16
    e_layers: int = 3
    d_ff: int = 256
    dropout: float = 0.2  # embedding, attention output, feed-forward and residual dropout
    attn_dropout: float = 0.0  # on the attention weights
    head_dropout: float = 0.0  # before the flatten head's Linear (PatchTST: after it; same at its default 0)
    fc_dropout: float = 0.2  # in the covariate decoder (PatchTST uses it only in a pretraining head)
    norm: str = "batch"  # "batch" (PatchTST) or "layer"
    pre_norm: bool = False  # PatchTST is post-norm
    res_attention: bool = True  # RealFormer residual attention scores, as in PatchTST
    # Covariate decoder (only built when C > 0).
    context_size: int = 32
    step_embed: int = 16
    decoder_hidden: int = 64

    def __post_init__(self) -> None:
        for name in ("patch_len", "stride", "d_model", "n_heads", "e_layers", "d_ff",
                     "context_size", "step_embed", "decoder_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer param {name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "attn_dropout", "head_dropout", "fc_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"transformer param {name} must be in [0, 1), got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"transformer param d_model ({self.d_model}) must be a multiple of n_heads "
                             f"({self.n_heads})")
        if self.norm not in ("batch", "layer"):
            raise ValueError(f"transformer param norm must be 'batch' or 'layer', got {self.norm!r}")


class TokenNorm(nn.Module):
    """BatchNorm or LayerNorm over the features of [B, N, D] tokens. PatchTST uses BatchNorm, which
    copes better with the outlier values of time series (Zerveas et al. 2021) than per-token LayerNorm."""

    def __init__(self, kind: str, d_model: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model) if kind == "batch" else nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


class Attention(nn.Module):
    """Multi-head self-attention that can add the previous layer's pre-softmax scores (residual attention)."""

    def __init__(self, p: PatchTSTParams) -> None:
        super().__init__()
        self.n_heads = p.n_heads
        self.qkv = nn.Linear(p.d_model, 3 * p.d_model)
        self.proj = nn.Linear(p.d_model, p.d_model)
        self.attn_dropout = nn.Dropout(p.attn_dropout)
        self.proj_dropout = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor, prev_scores: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # [B, h, N, d]
        scores = q @ k.transpose(-2, -1) * (D // self.n_heads) ** -0.5  # [B, h, N, N]
        if prev_scores is not None:
            scores = scores + prev_scores
        y = self.attn_dropout(scores.softmax(dim=-1)) @ v  # [B, h, N, d]
        y = y.transpose(1, 2).reshape(B, N, D)
        return self.proj_dropout(self.proj(y)), scores


class EncoderLayer(nn.Module):
    """Attention and feed-forward sublayers, each with residual dropout and a norm (post- or pre-)."""

    def __init__(self, p: PatchTSTParams) -> None:
        super().__init__()
        self.pre_norm = p.pre_norm
        self.attn = Attention(p)
        self.norm_attn = TokenNorm(p.norm, p.d_model)
        self.ff = nn.Sequential(
            nn.Linear(p.d_model, p.d_ff), nn.GELU(), nn.Dropout(p.dropout), nn.Linear(p.d_ff, p.d_model),
        )
        self.norm_ff = TokenNorm(p.norm, p.d_model)
        # PatchTST drops the attention output twice (projection, then residual): kept to match its numbers.
        self.dropout_attn = nn.Dropout(p.dropout)
        self.dropout_ff = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor, prev_scores: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre_norm:  # x + f(norm(x))
            y, scores = self.attn(self.norm_attn(x), prev_scores)
            x = x + self.dropout_attn(y)
            return x + self.dropout_ff(self.ff(self.norm_ff(x))), scores
        y, scores = self.attn(x, prev_scores)  # norm(x + f(x))
        x = self.norm_attn(x + self.dropout_attn(y))
        return self.norm_ff(x + self.dropout_ff(self.ff(x))), scores


@register("transformer")
class PatchTST(Backbone):
    """history [B, L], past_cov [B, L, C + P], future_cov [B, H, C] -> unconstrained outputs [B, H, Q]."""

    reads_past_covariates = True

    def __init__(self, input_length: int, horizon: int, n_covariates: int, n_outputs: int, median: int,
                 n_past_covariates: int = 0, **params: Any) -> None:
        super().__init__()
        p = PatchTSTParams(**params)
        if p.patch_len > input_length:
            raise ValueError(f"transformer param patch_len ({p.patch_len}) exceeds input_length ({input_length})")
        self.horizon, self.n_outputs = horizon, n_outputs
        self.patch_len, self.stride, self.res_attention = p.patch_len, p.stride, p.res_attention
        self.n_patches = (input_length - p.patch_len) // p.stride + 2  # +1 for the end-padded patch
        self.embed = nn.Linear(p.patch_len * (1 + n_covariates + n_past_covariates), p.d_model)
        self.pos = nn.Parameter(torch.empty(self.n_patches, p.d_model).uniform_(-0.02, 0.02))
        self.embed_dropout = nn.Dropout(p.dropout)
        self.layers = nn.ModuleList(EncoderLayer(p) for _ in range(p.e_layers))
        self.head = nn.Sequential(
            nn.Flatten(start_dim=1), nn.Dropout(p.head_dropout),
            nn.Linear(self.n_patches * p.d_model, horizon * n_outputs),
        )
        if n_covariates:
            self.to_context = nn.Linear(self.n_patches * p.d_model, p.context_size)
            self.step_embedding = nn.Embedding(horizon, p.step_embed)
            self.decoder = nn.Sequential(
                nn.Linear(p.context_size + n_covariates + p.step_embed, p.decoder_hidden),
                nn.GELU(),
                nn.Dropout(p.fc_dropout),
                nn.Linear(p.decoder_hidden, n_outputs),
            )
        else:
            self.decoder = None

    def patches(self, x: torch.Tensor, past_cov: torch.Tensor) -> torch.Tensor:
        """[B, L], [B, L, C + P] -> [B, N, patch_len * (1 + C + P)]: each patch's values, then its covariates."""
        z = torch.cat([x.unsqueeze(-1), past_cov], dim=-1)  # [B, L, 1 + C + P]
        z = torch.cat([z, z[:, -1:].expand(-1, self.stride, -1)], dim=1)  # repeat the last hour `stride` times
        z = z.unfold(1, self.patch_len, self.stride)  # [B, N, 1 + C + P, patch_len]
        return z.flatten(start_dim=2)

    def head_inputs(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor, *,
                    kernels: bool = False) -> HeadInputs:
        """Everything up to the quantile head: the covariate decoder's last Linear is the head, the flatten
        head's output its base (with no covariates the flatten head's output is all there is)."""
        B = x.shape[0]
        z = self.embed_dropout(self.embed(self.patches(x, past_cov)) + self.pos)  # [B, N, D]
        scores = None
        for layer in self.layers:
            z, layer_scores = layer(z, scores)
            scores = layer_scores if self.res_attention else None
        out = self.head(z).view(B, self.horizon, self.n_outputs)
        if self.decoder is None:
            return HeadInputs(None, None, out)
        context = self.to_context(z.flatten(start_dim=1))  # [B, context]
        per_step = torch.cat([
            context.unsqueeze(1).expand(B, self.horizon, -1),
            future_cov,
            self.step_embedding.weight.unsqueeze(0).expand(B, -1, -1),
        ], dim=-1)  # [B, H, context + C + step_embed]
        return HeadInputs(self.decoder[:-1](per_step), self.decoder[-1], out)

    def forward(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        return self.head_inputs(x, past_cov, future_cov).outputs()  # [B, H, Q]
