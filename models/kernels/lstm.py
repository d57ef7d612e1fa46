"""Persistent fused LSTM inference: one launch runs the whole recurrence for a tile of the batch.

cuDNN's LSTM launches a GEMM and an elementwise kernel per time step and round-trips the gates through
memory each time; at the batch sizes we serve (one series per zone, a few thousand at most) the GPU is
idle most of that time. Here the input projection of every step is one GEMM up front (it does not depend
on the recurrence), and then each program of one kernel launch owns BLOCK_B series for all T steps:

    for t in 0..T-1:  gates = xp[:, t] + h @ W_hh^T   (tl.dot, fp32 accumulation)
                      c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)

with h and c held on chip in fp32 the whole time. W_hh^T stays on chip across steps when it fits
("resident": loaded once before the loop); larger ones are re-read every step, in BLOCK_N-wide column
chunks, from L2 where every program of the launch shares them. Layer after layer, the hidden sequence of
one layer is the input of the next layer's projection GEMM.

Supported (`unsupported_reason` says why not, and the caller falls back to `nn.LSTM`):
- `nn.LSTM` with batch_first=True, unidirectional, no proj_size, any number of layers, with or without
  bias; zero initial state (what `nn.LSTM(x)` does); inference only (no autograd).
- hidden size 1 … 256: padded with zero weights to a power of two ≥ 16 (a padded unit's gates are
  constant, its c and h stay exactly 0, so it changes nothing);
- any batch (the grid tiles it) and any sequence length ≥ 1 (a runtime loop; inputs whose projection
  would pass 2 GiB run in chunks of steps, the state carried from one launch to the next);
- fp32 (dot products in 3xTF32, about fp32 accuracy) and bf16 (bf16 operands, fp32 accumulation and
  fp32 h/c state; the hidden sequence passed between layers is bf16).

`lstm_recurrence_reference` is the same computation in plain PyTorch (the tests compare the two, and
`benchmarks/kernels.py` compiles it with torch.compile as the other baseline).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn
from triton.runtime.errors import OutOfResources

MAX_HIDDEN = 256
MIN_PADDED_HIDDEN = 16  # every tl.dot dimension must be >= 16 on the GPU
MAX_PROJECTION_BYTES = 2 << 30  # longer inputs run in chunks of steps so the projected input stays bounded
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


# ------------------------------------------------------------------------------------------ reference


def lstm_cell_reference(
    xp_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: projected input xp_t [B, 4 * HP] (gates i, f, g, o), fp32 state h, c [B, HP]."""
    gates = xp_t.float() + (h.to(w_hh_t.dtype) @ w_hh_t).float()
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_recurrence_reference(
    xp: torch.Tensor, w_hh_t: torch.Tensor, *, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None,
    store_sequence: bool = False, cell=lstm_cell_reference,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The recurrence in plain PyTorch, from the projected input.

    xp [B, T, 4 * HP]: x_t @ W_ih^T + b_ih + b_hh for every step, gates (i, f, g, o) each HP wide;
    w_hh_t [HP, 4 * HP]: W_hh transposed. Returns (the hidden sequence [B, T, HP] in xp's dtype if
    asked, final h [B, HP] and c [B, HP] in fp32). State is kept in fp32 whatever the input dtype, and
    starts from h0, c0 [B, HP] (default zeros). `cell` is the step function (the benchmark passes a
    torch.compile'd one).
    """
    B, T, G = xp.shape
    h = xp.new_zeros((B, G // 4), dtype=torch.float32) if h0 is None else h0.float()
    c = torch.zeros_like(h) if c0 is None else c0.float()
    seq = []
    for t in range(T):
        h, c = cell(xp[:, t], h, c, w_hh_t)
        if store_sequence:
            seq.append(h.to(xp.dtype))
    return (torch.stack(seq, dim=1) if store_sequence else None), h, c


# --------------------------------------------------------------------------------------------- kernel


@triton.jit
def _tanh(x):
    # libdevice tanh is not available in Triton's interpreter; 2 * sigmoid(2x) - 1 is exact in real numbers
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def lstm_recurrence_kernel(
    xp_ptr,  # [B, T, 4 * HP] projected input, fp32 or bf16
    w_ptr,  # [HP, 4 * HP] W_hh^T, the dot operands' dtype
    seq_ptr,  # [B, T, HP] hidden sequence out (only written when STORE_SEQ)
    h_ptr,  # [B, HP] fp32: initial h in, final h out; also the exchange buffer of the chunked path
    c_ptr,  # [B, HP] fp32: initial c in, final c out (the chunked path updates it in place every step)
    B, T,
    stride_xb, stride_xt, stride_sb, stride_st,
    HP: tl.constexpr,  # padded hidden size, a power of two >= 16
    BLOCK_B: tl.constexpr,  # series per program, >= 16
    BLOCK_N: tl.constexpr,  # hidden units per chunk of the gate computation (HP: one chunk)
    RESIDENT: tl.constexpr,  # load W_hh^T once before the time loop (only with BLOCK_N == HP)
    STORE_SEQ: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input precision for fp32 operands ("tf32x3", "ieee", "tf32")
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # int64: B * T * 4HP may pass 2**31
    row_ok = (rows < B)[:, None]
    x_rows = xp_ptr + rows[:, None] * stride_xb
    seq_rows = seq_ptr + rows[:, None] * stride_sb
    state_rows = rows[:, None] * HP
    k = tl.arange(0, HP)
    h = tl.load(h_ptr + state_rows + k[None, :], mask=row_ok, other=0.0)

    if BLOCK_N == HP:
        # One chunk: h and c live in registers for the whole sequence.
        n = tl.arange(0, HP)
        w_cols = w_ptr + k[:, None] * (4 * HP) + n[None, :]
        c = tl.load(c_ptr + state_rows + n[None, :], mask=row_ok, other=0.0)
        if RESIDENT:
            w_i = tl.load(w_cols)
            w_f = tl.load(w_cols + HP)
            w_g = tl.load(w_cols + 2 * HP)
            w_o = tl.load(w_cols + 3 * HP)
        for t in range(T):
            if not RESIDENT:
                w_i = tl.load(w_cols)
                w_f = tl.load(w_cols + HP)
                w_g = tl.load(w_cols + 2 * HP)
                w_o = tl.load(w_cols + 3 * HP)
            hw = h.to(w_ptr.dtype.element_ty)
            x_t = x_rows + t * stride_xt + n[None, :]
            gi = tl.load(x_t, mask=row_ok, other=0.0).to(tl.float32)
            gf = tl.load(x_t + HP, mask=row_ok, other=0.0).to(tl.float32)
            gg = tl.load(x_t + 2 * HP, mask=row_ok, other=0.0).to(tl.float32)
            go = tl.load(x_t + 3 * HP, mask=row_ok, other=0.0).to(tl.float32)
            gi = tl.dot(hw, w_i, gi, input_precision=PRECISION)
            gf = tl.dot(hw, w_f, gf, input_precision=PRECISION)
            gg = tl.dot(hw, w_g, gg, input_precision=PRECISION)
            go = tl.dot(hw, w_o, go, input_precision=PRECISION)
            c = tl.sigmoid(gf) * c + tl.sigmoid(gi) * _tanh(gg)
            h = tl.sigmoid(go) * _tanh(c)
            if STORE_SEQ:
                tl.store(seq_rows + t * stride_st + n[None, :], h.to(seq_ptr.dtype.element_ty), mask=row_ok)
        tl.store(h_ptr + state_rows + n[None, :], h, mask=row_ok)
        tl.store(c_ptr + state_rows + n[None, :], c, mask=row_ok)
    else:
        # Several chunks of hidden units per step: a register tensor cannot be updated a slice at a time,
        # so each chunk's new c and h go to this program's rows of c_ptr / h_ptr (L1-resident), and the
        # full new h is read back once all chunks are written.
        for t in range(T):
            hw = h.to(w_ptr.dtype.element_ty)
            for n0 in tl.static_range(0, HP, BLOCK_N):
                n = n0 + tl.arange(0, BLOCK_N)
                w_cols = w_ptr + k[:, None] * (4 * HP) + n[None, :]
                x_t = x_rows + t * stride_xt + n[None, :]
                gi = tl.load(x_t, mask=row_ok, other=0.0).to(tl.float32)
                gf = tl.load(x_t + HP, mask=row_ok, other=0.0).to(tl.float32)
                gg = tl.load(x_t + 2 * HP, mask=row_ok, other=0.0).to(tl.float32)
                go = tl.load(x_t + 3 * HP, mask=row_ok, other=0.0).to(tl.float32)
                gi = tl.dot(hw, tl.load(w_cols), gi, input_precision=PRECISION)
                gf = tl.dot(hw, tl.load(w_cols + HP), gf, input_precision=PRECISION)
                gg = tl.dot(hw, tl.load(w_cols + 2 * HP), gg, input_precision=PRECISION)
                go = tl.dot(hw, tl.load(w_cols + 3 * HP), go, input_precision=PRECISION)
                c_at = c_ptr + state_rows + n[None, :]
                c_n = tl.sigmoid(gf) * tl.load(c_at, mask=row_ok, other=0.0) + tl.sigmoid(gi) * _tanh(gg)
                h_n = tl.sigmoid(go) * _tanh(c_n)
                tl.store(c_at, c_n, mask=row_ok)
                tl.store(h_ptr + state_rows + n[None, :], h_n, mask=row_ok)
                if STORE_SEQ:
                    tl.store(seq_rows + t * stride_st + n[None, :], h_n.to(seq_ptr.dtype.element_ty), mask=row_ok)
            tl.debug_barrier()  # every chunk of this step is written ...
            h = tl.load(h_ptr + state_rows + k[None, :], mask=row_ok, other=0.0)
            tl.debug_barrier()  # ... and read by every thread before the next step overwrites it


@dataclass(frozen=True)
class LaunchConfig:
    block_b: int
    block_n: int
    resident: bool
    num_warps: int
    num_stages: int = 1


def padded_hidden(hidden: int) -> int:
    return max(MIN_PADDED_HIDDEN, triton.next_power_of_2(hidden))


def launch_config(batch: int, hp: int, dtype: torch.dtype, interpreted: bool = False) -> LaunchConfig:
    """Tile sizes for `batch` series with padded hidden size `hp` (from `benchmarks/kernels.py --tune`
    on an H100: small tiles for small batches, since each program runs its T steps one after another)."""
    if interpreted:  # each program instance costs ~1 ms in the interpreter: few, large programs
        return LaunchConfig(block_b=min(64, max(16, triton.next_power_of_2(batch))), block_n=hp,
                            resident=True, num_warps=4)
    elt = torch.finfo(dtype).bits // 8
    block_b = 16 if batch <= 16 * 264 else 32 if batch <= 32 * 264 else 64  # ~2 programs per SM first
    block_n = hp  # widest chunk whose four gate tiles of W_hh^T fit in 128 KiB of shared memory
    while block_n > MIN_PADDED_HIDDEN and 4 * hp * block_n * elt > 128 * 1024:
        block_n //= 2
    resident = block_n == hp and 4 * hp * hp * elt <= 64 * 1024
    return LaunchConfig(block_b=block_b, block_n=block_n, resident=resident,
                        num_warps=4 if block_b * block_n < 4096 else 8)


_downsized: dict[tuple, LaunchConfig] = {}  # configs that did not fit this GPU -> the one that did


def lstm_recurrence(
    xp: torch.Tensor, w_hh_t: torch.Tensor, *, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None,
    store_sequence: bool = False, config: LaunchConfig | None = None, precision: str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """`lstm_recurrence_reference` in one kernel launch (same arguments and results).

    `precision`: tl.dot input precision for fp32 weights; default "tf32x3" (three TF32 products, about
    fp32 accuracy: plain TF32 drifts past 1e-4 over hundreds of steps). bf16 weights ignore it."""
    B, T, G = xp.shape
    HP = G // 4
    if G != 4 * HP or w_hh_t.shape != (HP, G) or HP < MIN_PADDED_HIDDEN or HP & (HP - 1):
        raise ValueError(f"lstm_recurrence wants xp [B, T, 4*HP] and w_hh_t [HP, 4*HP] with HP a power of two "
                         f">= {MIN_PADDED_HIDDEN}; got {tuple(xp.shape)} and {tuple(w_hh_t.shape)}")
    if xp.stride(-1) != 1:
        xp = xp.contiguous()
    w_hh_t = w_hh_t.contiguous()
    cfg = config or launch_config(B, HP, w_hh_t.dtype, interpreted=xp.device.type == "cpu")
    if HP % cfg.block_n or (cfg.resident and cfg.block_n != HP):
        raise ValueError(f"bad launch config {cfg} for hidden {HP}")
    h = xp.new_zeros((B, HP), dtype=torch.float32) if h0 is None else h0.float().clone().contiguous()
    c = torch.zeros_like(h) if c0 is None else c0.float().clone().contiguous()
    if h.shape != (B, HP) or c.shape != (B, HP):
        raise ValueError(f"h0 and c0 must be [{B}, {HP}], got {tuple(h.shape)} and {tuple(c.shape)}")
    seq = xp.new_empty((B, T, HP)) if store_sequence else h  # h: a placeholder pointer, never written
    if B and T:
        key = (cfg, w_hh_t.dtype, xp.device)
        cfg = _downsized.get(key, cfg)
        while True:
            try:
                lstm_recurrence_kernel[(triton.cdiv(B, cfg.block_b),)](
                    xp, w_hh_t, seq, h, c, B, T,
                    xp.stride(0), xp.stride(1), seq.stride(0), seq.stride(1) if store_sequence else 0,
                    HP=HP, BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, RESIDENT=cfg.resident,
                    STORE_SEQ=store_sequence,
                    PRECISION=(precision or "tf32x3") if w_hh_t.dtype == torch.float32 else "tf32",
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                )
                break
            except OutOfResources:
                # a GPU with less shared memory than the tuning one: narrower chunks of W_hh^T (the
                # kernel raises before it starts, so h and c are untouched)
                if cfg.block_n <= MIN_PADDED_HIDDEN:
                    raise
                cfg = _downsized[key] = LaunchConfig(cfg.block_b, cfg.block_n // 2, False, cfg.num_warps)
    return (seq if store_sequence else None), h, c


# ------------------------------------------------------------------------------ nn.LSTM through it


def unsupported_reason(lstm: nn.Module, dtype: torch.dtype = torch.float32) -> str | None:
    """Why `lstm_forward` cannot run this module in `dtype` (None: it can)."""
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (float32 or bfloat16 only)"
    if type(lstm) is not nn.LSTM:
        return f"{type(lstm).__name__} is not an nn.LSTM"
    if not lstm.batch_first:
        return "batch_first=False"
    if lstm.bidirectional:
        return "bidirectional"
    if lstm.proj_size:
        return "proj_size > 0"
    if lstm.hidden_size > MAX_HIDDEN:
        return f"hidden_size {lstm.hidden_size} > {MAX_HIDDEN}"
    return None


@dataclass
class _Layer:
    w_ih: torch.Tensor  # [4HP, input (padded to HP for layers > 0)]
    bias: torch.Tensor  # [4HP]
    w_hh_t: torch.Tensor  # [HP, 4HP]


_prepared: weakref.WeakKeyDictionary[nn.LSTM, tuple[tuple, list[_Layer]]] = weakref.WeakKeyDictionary()


def _pad_gates(w: torch.Tensor, hidden: int, hp: int) -> torch.Tensor:
    """[4 * hidden, ...] -> [4 * hp, ...], each gate's rows zero-padded to hp."""
    out = w.new_zeros((4, hp) + tuple(w.shape[1:]))
    out[:, :hidden] = w.view((4, hidden) + tuple(w.shape[1:]))
    return out.flatten(0, 1)


def prepare_weights(lstm: nn.LSTM, dtype: torch.dtype, device: torch.device) -> list[_Layer]:
    """Padded, transposed, cast weights per layer; cached until the module's parameters change."""
    params = list(lstm.parameters())
    key = (dtype, device, tuple((p.data_ptr(), p._version) for p in params))
    cached = _prepared.get(lstm)
    if cached is not None and cached[0] == key:
        return cached[1]
    H, hp = lstm.hidden_size, padded_hidden(lstm.hidden_size)
    layers = []
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            w_ih = getattr(lstm, f"weight_ih_l{layer}").float()
            w_hh = getattr(lstm, f"weight_hh_l{layer}").float()
            bias = torch.zeros(4 * H, device=w_ih.device)
            if lstm.bias:
                bias = getattr(lstm, f"bias_ih_l{layer}").float() + getattr(lstm, f"bias_hh_l{layer}").float()
            w_ih = _pad_gates(w_ih, H, hp)
            if layer:  # its input is the previous layer's padded hidden sequence
                w_ih = F.pad(w_ih, (0, hp - H))
            w_hh_t = F.pad(_pad_gates(w_hh, H, hp), (0, hp - H)).t()
            layers.append(_Layer(w_ih.to(device, dtype).contiguous(), _pad_gates(bias, H, hp).to(device, dtype),
                                 w_hh_t.to(device, dtype).contiguous()))
    _prepared[lstm] = (key, layers)
    return layers


def lstm_forward(
    lstm: nn.LSTM, x: torch.Tensor, *, dtype: torch.dtype | None = None, return_sequence: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """`output, (h_n, c_n) = lstm(x)` for a batch_first x [B, T, input] through the kernel.

    Returns (output [B, T, H] if asked, else None; h_n [layers, B, H]; c_n [layers, B, H]); h_n and c_n
    are fp32, the output is in the compute dtype (x's dtype by default; bf16 for a bf16 model or under
    CUDA autocast to bf16).
    """
    dtype = dtype or x.dtype
    reason = unsupported_reason(lstm, dtype)
    if reason:
        raise ValueError(f"the LSTM kernel does not support this module: {reason}")
    if x.dim() != 3 or x.shape[-1] != lstm.input_size:
        raise ValueError(f"lstm_forward wants x [batch, steps, {lstm.input_size}], got {tuple(x.shape)}")
    layers = prepare_weights(lstm, dtype, x.device)
    H, hp = lstm.hidden_size, padded_hidden(lstm.hidden_size)
    B, T, _ = x.shape
    # Long inputs run in chunks of steps, each layer carrying its state from chunk to chunk, so the
    # projected input (B x chunk x 4HP) stays bounded while every launch still covers the whole batch.
    step_bytes = max(1, B * 4 * hp * torch.finfo(dtype).bits // 8)
    chunk = max(1, min(T, MAX_PROJECTION_BYTES // step_bytes))
    h = [None] * len(layers)
    c = [None] * len(layers)
    outs = []
    with torch.autocast(x.device.type, enabled=False):  # the projection runs in `dtype`, not autocast's
        for t0 in range(0, max(T, 1), chunk):
            inp = x[:, t0 : t0 + chunk].to(dtype)
            for i, layer in enumerate(layers):
                xp = F.linear(inp, layer.w_ih, layer.bias)  # every step's input projection: one GEMM
                inp, h[i], c[i] = lstm_recurrence(xp, layer.w_hh_t, h0=h[i], c0=c[i],
                                                  store_sequence=return_sequence or i + 1 < len(layers))
            if return_sequence:
                outs.append(inp[..., :H])
    out = torch.cat(outs, dim=1) if return_sequence else None
    return out, torch.stack([s[:, :H] for s in h]), torch.stack([s[:, :H] for s in c])
