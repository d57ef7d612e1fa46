"""LSTM encoder with a direct multi-horizon decoder (MQ-RNN style, Wen et al. 2017).

The encoder reads the normalized history together with its covariates; the decoder forecasts every
horizon step at once, not autoregressively, so errors do not compound over a week ahead and one forward
pass yields the whole horizon. Each step's output comes from one MLP shared across steps, fed with the
encoder's context, that step's known covariates (calendar, holidays) and a learned embedding of the
step's lead time. With `local_context` > 0 each step also gets a context of its own, projected from the
encoder's state (MQ-RNN's horizon-specific contexts): the state then shapes every forecast hour directly,
instead of through the one shared vector that all hours must decode from. A linear skip from the raw
window (DLinear-like) is added to the MLP's output, so the network starts from at least the linear
forecast and spends its capacity on the nonlinear effects.

Past-only inputs (P of them: the region's zones' recent load) join the encoder's input beside the
covariates; the decoder reads the known-future covariates only.

Shapes: B series, L history hours, H horizon hours, C covariates, P past-only inputs, Q outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.forecaster import Backbone, HeadInputs, register
from models.kernels import lstm_forward, lstm_unsupported_reason


@dataclass
class LSTMParams:
    hidden_size: int = 128  # LSTM state size
    num_layers: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # between LSTM layers and inside the decoder MLP
    context_size: int = 64  # context vector the decoder reads, projected from the final hidden state
    step_embed: int = 16  # size of the learned embedding of each horizon step
    mlp_hidden: int = 128  # width of the decoder MLP
    skip: bool = True  # add the linear history -> horizon path
    patch_len: int = 1  # hours per LSTM step: 24 reads a 336 h window in 14 daily steps, ~20x less CPU time
    local_context: int = 0  # size of MQ-RNN's horizon-specific contexts, one per step from the encoder (0: none)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "context_size", "step_embed", "mlp_hidden", "patch_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"lstm param {name} must be >= 1, got {getattr(self, name)}")
        if self.local_context < 0:
            raise ValueError(f"lstm param local_context must be >= 0, got {self.local_context}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lstm param dropout must be in [0, 1), got {self.dropout}")


@register("lstm")
class MQLSTM(Backbone):
    """history [B, L], past_cov [B, L, C + P], future_cov [B, H, C] -> unconstrained outputs [B, H, Q]."""

    reads_past_covariates = True

    def __init__(self, input_length: int, horizon: int, n_covariates: int, n_outputs: int, median: int,
                 n_past_covariates: int = 0, **params: Any) -> None:
        super().__init__()
        p = LSTMParams(**params)
        if p.patch_len > input_length:
            raise ValueError(f"lstm param patch_len ({p.patch_len}) exceeds input_length ({input_length})")
        self.horizon, self.n_outputs, self.patch_len = horizon, n_outputs, p.patch_len
        self.encoder = nn.LSTM(
            input_size=p.patch_len * (1 + n_covariates + n_past_covariates), hidden_size=p.hidden_size,
            num_layers=p.num_layers, batch_first=True,
            dropout=p.dropout if p.num_layers > 1 else 0.0,  # torch applies it between layers only
        )
        self.to_context = nn.Linear(p.hidden_size, p.context_size)
        self.step_embedding = nn.Embedding(horizon, p.step_embed)
        self.to_local = nn.Linear(p.hidden_size, horizon * p.local_context) if p.local_context else None
        self.decoder = nn.Sequential(
            nn.Linear(p.context_size + n_covariates + p.step_embed + p.local_context, p.mlp_hidden),
            nn.GELU(),
            nn.Dropout(p.dropout),
            nn.Linear(p.mlp_hidden, n_outputs),
        )
        self.skip = nn.Linear(input_length, horizon * n_outputs) if p.skip else None

    def steps(self, x: torch.Tensor, past_cov: torch.Tensor) -> torch.Tensor:
        """[B, L] and [B, L, C + P] -> encoder input [B, L // patch_len, patch_len * (1 + C + P)]: each step holds a
        patch of consecutive hours (the most recent whole patches; older leftover hours are dropped)."""
        B, L = x.shape
        n = L // self.patch_len
        hours = torch.cat([x.unsqueeze(-1), past_cov], dim=-1)[:, L - n * self.patch_len :]
        return hours.reshape(B, n, -1)

    def encode(self, steps: torch.Tensor, kernels: bool = False) -> torch.Tensor:
        """Encoder input [B, N, patch_len * (1 + C + P)] -> last layer's final hidden state [B, hidden]."""
        if kernels:
            # under CUDA autocast to bf16 the recurrence runs in bf16 (fp32 state), as cuDNN would
            autocast_bf16 = steps.is_cuda and torch.is_autocast_enabled("cuda") and \
                torch.get_autocast_dtype("cuda") == torch.bfloat16
            dtype = torch.bfloat16 if autocast_bf16 else steps.dtype
            if lstm_unsupported_reason(self.encoder, dtype) is None:  # else: nn.LSTM below
                _, h, _ = lstm_forward(self.encoder, steps, dtype=dtype)
                return h[-1].to(dtype)
        # oneDNN's LSTM fails under CPU autocast on CPUs without native bf16/fp16, so on CPU the encoder
        # runs in the input's dtype (fp32); GPU autocast is unaffected and uses cuDNN in low precision.
        with torch.autocast("cpu", enabled=False):
            _, (h, _) = self.encoder(steps)  # h [layers, B, hidden]
        return h[-1]

    def head_inputs(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor, *,
                    kernels: bool = False) -> HeadInputs:
        """Everything up to the quantile head; `kernels` runs the encoder through the Triton LSTM kernel."""
        B = x.shape[0]
        final = self.encode(self.steps(x, past_cov), kernels)  # [B, hidden]
        steps = self.step_embedding.weight.unsqueeze(0).expand(B, -1, -1)  # [B, H, step_embed]
        per_step = [self.to_context(final).unsqueeze(1).expand(B, self.horizon, -1), future_cov, steps]
        if self.to_local is not None:  # MQ-RNN: each horizon step gets its own context from the encoder
            per_step.append(self.to_local(final).view(B, self.horizon, -1))
        per_step = torch.cat(per_step, dim=-1)  # [B, H, context + C + step_embed (+ local)]
        skip = self.skip(x).view(B, self.horizon, self.n_outputs) if self.skip is not None else None
        return HeadInputs(self.decoder[:-1](per_step), self.decoder[-1], skip)  # decoder[-1]: the quantile head

    def forward(self, x: torch.Tensor, past_cov: torch.Tensor, future_cov: torch.Tensor) -> torch.Tensor:
        return self.head_inputs(x, past_cov, future_cov).outputs()  # [B, H, Q]
