"""Fused forecast epilogue: quantile head, non-crossing quantiles, interval scaling, de-normalization.

After its decoder, a forecaster maps each (series, horizon step) row of K features to Q quantiles with a
Linear head, optionally adds a per-row base (the LSTM's linear skip, the Transformer's flatten head), sorts
the quantiles by construction (median plus cumulative softplus steps outward), stretches the intervals
by the conformal `interval_scale`, and maps back to data units with the window's loc and scale. In
PyTorch that is six or seven kernels, each reading and writing a [B, H, Q] tensor; here it is one pass
that reads the features once and writes the final forecast.

Supported: any B, H, K (K chunked by BLOCK_K, masked), Q ≤ 16 quantiles (padded to 16 for tl.dot);
features and base in fp32 or bf16, fp32 arithmetic, fp32 output. `quantile_epilogue_reference` is the
same computation in PyTorch, written exactly as `models.forecaster.QuantileForecaster` computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_QUANTILES = 16


# ------------------------------------------------------------------------------------------ reference


def quantile_epilogue_reference(
    features: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
    base: torch.Tensor | None, loc: torch.Tensor, scale: torch.Tensor, interval_scale: torch.Tensor,
    median_index: int, *, monotone: bool = True,
) -> torch.Tensor:
    """features [B, H, K] @ weight[Q, K]^T + bias [Q] (+ base [B, H, Q]) -> quantiles [B, H, Q] in data
    units, with loc and scale [B, 1] the window statistics and interval_scale [Q]."""
    raw = None
    if features is not None:  # fp32 arithmetic whatever the inputs' dtype, as in the kernel
        raw = F.linear(features.float(), weight.float(), None if bias is None else bias.float())
    if base is not None:
        raw = base.float() if raw is None else raw + base.float()
    Q = raw.shape[-1]
    if Q > 1:
        if monotone:
            mid = median_index  # the column the others are built around: models.forecaster.median_index
            centre = raw[..., mid : mid + 1]
            upper = centre + torch.cumsum(F.softplus(raw[..., mid + 1 :]), dim=-1)
            lower = centre - torch.flip(torch.cumsum(F.softplus(torch.flip(raw[..., :mid], [-1])), dim=-1), [-1])
            raw = torch.cat([lower, centre, upper], dim=-1)
        m = raw[..., median_index : median_index + 1]
        raw = m + (raw - m) * interval_scale.float()
    return raw * scale.float().unsqueeze(-1) + loc.float().unsqueeze(-1)


# --------------------------------------------------------------------------------------------- kernel


@triton.jit
def _softplus(x):
    # F.softplus (beta 1, threshold 20) without libdevice log1p: max(x, 0) + log(1 + exp(-|x|))
    sp = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def quantile_epilogue_kernel(
    feat_ptr,  # [R, K] rows = (series, step), any float dtype
    w_ptr,  # [Q, K] head weight
    b_ptr,  # [Q] head bias
    base_ptr,  # [R, Q] added to the head's output
    loc_ptr, scale_ptr,  # [B] per series
    iscale_ptr,  # [Q] conformal interval scale
    out_ptr,  # [R, Q] fp32
    R, S, K, Q, MEDIAN,  # rows, steps per series (row r belongs to series r // S), features, quantiles, median
    stride_fr, stride_br,
    HAS_FEAT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BASE: tl.constexpr, MONOTONE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, QP: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    row_ok = rows < R
    q = tl.arange(0, QP)
    q_ok = q < Q
    raw = tl.zeros((BLOCK_R, QP), dtype=tl.float32)
    if HAS_FEAT:
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            f = tl.load(feat_ptr + rows[:, None] * stride_fr + k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)
            w = tl.load(w_ptr + q[None, :] * K + k[:, None], mask=k_ok[:, None] & q_ok[None, :], other=0.0)
            raw = tl.dot(f, w.to(tl.float32), raw, input_precision=PRECISION)
        if HAS_BIAS:
            raw += tl.load(b_ptr + q, mask=q_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BASE:
        raw += tl.load(base_ptr + rows[:, None] * stride_br + q[None, :], mask=row_ok[:, None] & q_ok[None, :],
                       other=0.0).to(tl.float32)
    qc = q[None, :]
    if MONOTONE:
        # median column plus cumulative softplus steps outward: upper_j = centre + sum_{mid<k<=j} sp_k,
        # lower_j = centre - sum_{j<=k<mid} sp_k (the latter as the lower total minus an exclusive cumsum)
        mid = MEDIAN
        centre = tl.sum(tl.where(qc == mid, raw, 0.0), axis=1)[:, None]
        sp = _softplus(raw)
        up = tl.cumsum(tl.where((qc > mid) & (qc < Q), sp, 0.0), axis=1)
        low_sp = tl.where(qc < mid, sp, 0.0)
        low = tl.sum(low_sp, axis=1)[:, None] - (tl.cumsum(low_sp, axis=1) - low_sp)
        raw = tl.where(qc < mid, centre - low, tl.where(qc == mid, centre, centre + up))
    m = tl.sum(tl.where(qc == MEDIAN, raw, 0.0), axis=1)[:, None]
    raw = m + (raw - m) * tl.load(iscale_ptr + q, mask=q_ok, other=1.0).to(tl.float32)[None, :]
    series = rows // S
    scale = tl.load(scale_ptr + series, mask=row_ok, other=1.0).to(tl.float32)
    loc = tl.load(loc_ptr + series, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * Q + qc, raw * scale[:, None] + loc[:, None],
             mask=row_ok[:, None] & q_ok[None, :])


def quantile_epilogue(
    features: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
    base: torch.Tensor | None, loc: torch.Tensor, scale: torch.Tensor, interval_scale: torch.Tensor,
    median_index: int, *, monotone: bool = True, block_r: int | None = None, precision: str = "ieee",
) -> torch.Tensor:
    """`quantile_epilogue_reference` in one kernel launch (same arguments and result)."""
    if features is None and base is None:
        raise ValueError("quantile_epilogue needs features (with a head weight) or a base")
    ref = features if features is not None else base
    B, S = ref.shape[:2]
    if features is not None:
        if weight is None or features.dim() != 3 or weight.dim() != 2 or weight.shape[1] != features.shape[-1]:
            raise ValueError(f"features [B, H, K] and weight [Q, K] expected, got "
                             f"{tuple(features.shape)} and {None if weight is None else tuple(weight.shape)}")
        Q, K = weight.shape
    else:
        Q, K = base.shape[-1], 0
    if base is not None and base.shape != (B, S, Q):
        raise ValueError(f"base must be [{B}, {S}, {Q}], got {tuple(base.shape)}")
    if not 1 <= Q <= MAX_QUANTILES:
        raise ValueError(f"the epilogue kernel handles 1 to {MAX_QUANTILES} quantiles, got {Q}")
    R = B * S
    feats = features.reshape(R, K) if features is not None else loc  # loc: placeholder pointer
    if features is not None and feats.stride(-1) != 1:
        feats = feats.contiguous()
    base_rows = base.reshape(R, Q).contiguous() if base is not None else loc
    weight = weight.contiguous() if features is not None else loc
    out = torch.empty((B, S, Q), device=ref.device, dtype=torch.float32)
    if R:
        interpreted = ref.device.type == "cpu"
        block_r = block_r or (256 if interpreted else 64)
        block_k = min(64, max(16, triton.next_power_of_2(max(K, 1))))
        quantile_epilogue_kernel[(triton.cdiv(R, block_r),)](
            feats, weight, bias if bias is not None else loc, base_rows,
            loc.reshape(B).contiguous(), scale.reshape(B).contiguous(), interval_scale.contiguous(), out,
            R, S, K, Q, median_index, feats.stride(0) if features is not None else 0, Q,
            HAS_FEAT=features is not None, HAS_BIAS=features is not None and bias is not None,
            HAS_BASE=base is not None, MONOTONE=monotone and Q > 1,
            BLOCK_R=block_r, BLOCK_K=block_k, QP=MAX_QUANTILES, PRECISION=precision, num_warps=4,
        )
    return out
