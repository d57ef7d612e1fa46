"""Triton kernel: the interior point iteration's structured Newton solve, fused, for the GPU.

`kkt_solve_kernel` does what `optimization.solver.kkt_solve` (its PyTorch reference) does, for every
right-hand side at once: per step, eliminate the peak and balance rows into the battery row; sweep the
battery rows' tridiagonal system forward (pivots and the forward substitution) and backward; recover
the balance and peak rows' multipliers. That is the sequential part of an iteration: in PyTorch it is a
Python loop over the T steps (hundreds of small launches on a GPU), here it is one launch in which each
program owns BLOCK sites and walks the horizon once forward and once back, coalesced across sites.

Import this module only through `optimization.solver` (it dispatches: CUDA -> this kernel, else
PyTorch, unless the caller decides). Under TRITON_INTERPRET=1 (set before import) it runs
on CPU tensors, which is how the tests compare it with the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kkt_solve_kernel(dx_ptr, eta_c_ptr, eta_d_ptr, rhs_ptr, y_ptr, pivot_ptr, N, T, M, delta,
                      BLOCK: tl.constexpr, MB: tl.constexpr):
    pid = tl.program_id(0)
    n = pid * BLOCK + tl.arange(0, BLOCK)
    n_ok = n < N
    m = tl.arange(0, MB)
    cols = m[:, None] * N + n[None, :]                 # offsets of one step's (M, N) right-hand sides
    ok = (m[:, None] < M) & n_ok[None, :]
    TN = T * N
    row = T * M * N                                    # stride between the balance, battery, peak rows
    ec = tl.load(eta_c_ptr + n, mask=n_ok, other=1.0)
    ed = tl.load(eta_d_ptr + n, mask=n_ok, other=1.0)
    loss = (ec - 1 / ed) * (ec - 1 / ed)

    # forward: eliminate per step, then the battery chain's pivots and forward substitution
    excess = tl.zeros([BLOCK], dtype=tl.float64)
    prev_ds = tl.zeros([BLOCK], dtype=tl.float64)
    prev_pivot = tl.full([BLOCK], 1.0, dtype=tl.float64)
    z_prev = tl.zeros([MB, BLOCK], dtype=tl.float64)
    for t in range(T):
        at = t * N + n
        dc = tl.load(dx_ptr + at, mask=n_ok, other=0.0)
        dd = tl.load(dx_ptr + TN + at, mask=n_ok, other=0.0)
        ds = tl.load(dx_ptr + 2 * TN + at, mask=n_ok, other=0.0)
        dg = tl.load(dx_ptr + 3 * TN + at, mask=n_ok, other=0.0)
        de = tl.load(dx_ptr + 4 * TN + at, mask=n_ok, other=0.0)
        df = tl.load(dx_ptr + 5 * TN + at, mask=n_ok, other=0.0)
        dq = tl.load(dx_ptr + 6 * TN + at, mask=n_ok, other=0.0)
        pk = dg + dq + delta
        rest = de + df + delta + dg * (dq + delta) / pk
        bal = dc + dd + rest
        bs = ec * dc + dd / ed
        ss = ec * ec * dc + dd / (ed * ed)
        own = delta + (dc * dd * loss + rest * ss) / bal
        at2 = t * M * N + cols
        r_bal = tl.load(rhs_ptr + at2, mask=ok, other=0.0)
        r_bat = tl.load(rhs_ptr + row + at2, mask=ok, other=0.0)
        r_pk = tl.load(rhs_ptr + 2 * row + at2, mask=ok, other=0.0)
        r_bal = r_bal - dg[None, :] * r_pk / pk[None, :]
        r_bat = r_bat - bs[None, :] * r_bal / bal[None, :]
        excess = own + (prev_ds / prev_pivot) * excess
        pivot = ds + excess
        z = (r_bat + prev_ds[None, :] * z_prev) / pivot[None, :]
        tl.store(pivot_ptr + at, pivot, mask=n_ok)
        tl.store(y_ptr + at2, r_bal, mask=ok)          # the reduced balance rhs, until the backward pass
        tl.store(y_ptr + row + at2, z, mask=ok)
        prev_ds = ds
        prev_pivot = pivot
        z_prev = z

    # backward: the battery rows' multipliers, then the balance and peak rows' of the same step
    y_next = tl.zeros([MB, BLOCK], dtype=tl.float64)
    for tt in range(T):
        t = T - 1 - tt
        at = t * N + n
        dc = tl.load(dx_ptr + at, mask=n_ok, other=0.0)
        dd = tl.load(dx_ptr + TN + at, mask=n_ok, other=0.0)
        ds = tl.load(dx_ptr + 2 * TN + at, mask=n_ok, other=0.0)
        dg = tl.load(dx_ptr + 3 * TN + at, mask=n_ok, other=0.0)
        de = tl.load(dx_ptr + 4 * TN + at, mask=n_ok, other=0.0)
        df = tl.load(dx_ptr + 5 * TN + at, mask=n_ok, other=0.0)
        dq = tl.load(dx_ptr + 6 * TN + at, mask=n_ok, other=0.0)
        pivot = tl.load(pivot_ptr + at, mask=n_ok, other=1.0)
        pk = dg + dq + delta
        rest = de + df + delta + dg * (dq + delta) / pk
        bal = dc + dd + rest
        bs = ec * dc + dd / ed
        at2 = t * M * N + cols
        r_bal = tl.load(y_ptr + at2, mask=ok, other=0.0)
        z = tl.load(y_ptr + row + at2, mask=ok, other=0.0)
        r_pk = tl.load(rhs_ptr + 2 * row + at2, mask=ok, other=0.0)
        y_bat = z + (ds / pivot)[None, :] * y_next
        y_bal = (r_bal - bs[None, :] * y_bat) / bal[None, :]
        y_pk = (r_pk - dg[None, :] * y_bal) / pk[None, :]
        tl.store(y_ptr + at2, y_bal, mask=ok)
        tl.store(y_ptr + row + at2, y_bat, mask=ok)
        tl.store(y_ptr + 2 * row + at2, y_pk, mask=ok)
        y_next = y_bat


def kkt_solve_kernel(dx: torch.Tensor, eta_c: torch.Tensor, eta_d: torch.Tensor, rhs: torch.Tensor,
                     delta: float = 1e-10, block: int = 64, num_warps: int = 2) -> torch.Tensor:
    """Same contract as `optimization.solver.kkt_solve`: dx (NV, T, N), rhs (3, T, M, N) -> y (3, T, M, N)."""
    if dx.dtype != torch.float64 or rhs.dtype != torch.float64:
        raise TypeError("the KKT kernel works in float64")
    _, t, n = dx.shape
    m = rhs.shape[2]
    dx, rhs = dx.contiguous(), rhs.contiguous()
    y = torch.empty_like(rhs)
    pivot = torch.empty((t, n), dtype=dx.dtype, device=dx.device)
    grid = (triton.cdiv(n, block),)
    _kkt_solve_kernel[grid](dx, eta_c.contiguous(), eta_d.contiguous(), rhs, y, pivot, n, t, m, float(delta),
                            BLOCK=block, MB=triton.next_power_of_2(m), num_warps=num_warps)
    return y
