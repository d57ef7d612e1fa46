"""Triton kernels against their PyTorch references: on CPU through Triton's interpreter (conftest sets
TRITON_INTERPRET=1 when CUDA is absent), on a GPU natively, where the bf16 tests run too.

Tolerances (issue 5): fp32 max abs error <= 1e-4 of the output's scale, bf16 <= 2e-2.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from models.forecaster import ForecasterConfig, QuantileForecaster, median_index, monotone_quantiles
from models.kernels import ENV_VAR, kernels_enabled
from models.kernels.epilogue import quantile_epilogue, quantile_epilogue_reference
from models.kernels.lstm import (
    LaunchConfig,
    lstm_forward,
    lstm_recurrence,
    lstm_recurrence_reference,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
FP32_TOL, BF16_TOL = 1e-4, 2e-2
gpu_only = pytest.mark.skipif(not CUDA, reason="bf16 arithmetic is wrong in Triton's interpreter: GPU only")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to the output's scale."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    # The references must be fp32 on the GPU too (cuDNN and cuBLAS may use TF32 otherwise). Set through
    # torch's own switches and put back in `finally`: monkeypatch.setattr on torch's backend modules fails
    # to undo with pytest >= 9.2 ('cuBLASModule' has no attribute 'allow_tf32'), which left every later
    # patch of the test in place.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def recurrence_inputs(batch: int, steps: int, hp: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(batch, steps, 4 * hp, generator=g)
    w = torch.randn(hp, 4 * hp, generator=g) * (1.5 / hp**0.5)  # strong recurrence: errors would compound
    return xp.to(DEVICE), w.to(DEVICE)


# ------------------------------------------------------------------------------------- LSTM recurrence


@pytest.mark.parametrize("batch,steps,hidden", [(1, 24, 32), (37, 13, 64), (129, 7, 128), (5, 9, 256)])
def test_recurrence_matches_reference(batch: int, steps: int, hidden: int) -> None:
    xp, w = recurrence_inputs(batch, steps, hidden)
    seq, h, c = lstm_recurrence(xp, w, store_sequence=True)
    ref_seq, ref_h, ref_c = lstm_recurrence_reference(xp, w, store_sequence=True)
    assert seq.shape == (batch, steps, hidden) and h.shape == c.shape == (batch, hidden)
    assert h.dtype == c.dtype == torch.float32
    for out, ref in ((seq, ref_seq), (h, ref_h), (c, ref_c)):
        assert rel_err(out, ref) <= FP32_TOL


@pytest.mark.parametrize("config", [
    LaunchConfig(block_b=16, block_n=64, resident=False, num_warps=4),  # weights re-read every step
    LaunchConfig(block_b=16, block_n=32, resident=False, num_warps=4),  # two chunks per step
    LaunchConfig(block_b=32, block_n=16, resident=False, num_warps=4),  # four chunks
], ids=["streamed", "2-chunks", "4-chunks"])
def test_recurrence_launch_variants(config: LaunchConfig) -> None:
    xp, w = recurrence_inputs(37, 11, 64, seed=1)
    seq, h, c = lstm_recurrence(xp, w, store_sequence=True, config=config)
    ref_seq, ref_h, ref_c = lstm_recurrence_reference(xp, w, store_sequence=True)
    assert rel_err(seq, ref_seq) <= FP32_TOL and rel_err(h, ref_h) <= FP32_TOL and rel_err(c, ref_c) <= FP32_TOL


def test_recurrence_without_sequence_and_empty_batch() -> None:
    xp, w = recurrence_inputs(3, 5, 32)
    seq, h, _ = lstm_recurrence(xp, w)
    assert seq is None and rel_err(h, lstm_recurrence_reference(xp, w)[1]) <= FP32_TOL
    _, h0, c0 = lstm_recurrence(xp[:0], w)
    assert h0.shape == c0.shape == (0, 32)


def test_recurrence_bf16_input_and_output_on_cpu() -> None:
    """What the interpreter can check of bf16: loading bf16 inputs, converting to fp32, storing bf16."""
    xp, w = recurrence_inputs(17, 6, 32)
    xp16 = xp.to(torch.bfloat16)
    seq, h, _ = lstm_recurrence(xp16, w, store_sequence=True)  # fp32 weights: the dot stays fp32
    ref_seq, ref_h, _ = lstm_recurrence_reference(xp16, w, store_sequence=True)
    assert seq.dtype == torch.bfloat16
    assert rel_err(h, ref_h) <= FP32_TOL
    assert rel_err(seq, ref_seq) <= 1e-2  # both rounded to bf16 once


@gpu_only
@pytest.mark.parametrize("batch,steps,hidden", [(1, 168, 64), (129, 336, 128), (1000, 50, 256)])
def test_recurrence_bf16_on_gpu(batch: int, steps: int, hidden: int) -> None:
    xp, w = recurrence_inputs(batch, steps, hidden)
    _, h, c = lstm_recurrence(xp.bfloat16(), w.bfloat16())
    _, ref_h, ref_c = lstm_recurrence_reference(xp, w)  # fp32 all the way
    assert rel_err(h, ref_h) <= BF16_TOL and rel_err(c, ref_c) <= BF16_TOL


@gpu_only
@pytest.mark.parametrize("batch", [1, 64, 1024, 16384])
@pytest.mark.parametrize("hidden", [64, 128, 256])
def test_recurrence_default_configs_on_gpu(batch: int, hidden: int) -> None:
    """Every launch configuration the heuristic picks over the benchmark grid, fp32 and bf16."""
    xp, w = recurrence_inputs(batch, 40, hidden)
    _, ref_h, _ = lstm_recurrence_reference(xp, w)
    assert rel_err(lstm_recurrence(xp, w)[1], ref_h) <= FP32_TOL
    assert rel_err(lstm_recurrence(xp.bfloat16(), w.bfloat16())[1], ref_h) <= BF16_TOL


def test_recurrence_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="power of two"):
        lstm_recurrence(torch.zeros(2, 3, 4 * 24, device=DEVICE), torch.zeros(24, 96, device=DEVICE))


@pytest.mark.parametrize("hidden,layers,bias", [(50, 2, True), (32, 1, False)])
def test_lstm_forward_matches_nn_lstm(hidden: int, layers: int, bias: bool) -> None:
    """A whole nn.LSTM: padded hidden size (50 -> 64), stacked layers, no bias."""
    torch.manual_seed(0)
    lstm = nn.LSTM(15, hidden, num_layers=layers, bias=bias, batch_first=True).to(DEVICE).eval()
    x = torch.randn(37, 25, 15, device=DEVICE)
    with torch.no_grad():
        ref_out, (ref_h, ref_c) = lstm(x)
        out, h, c = lstm_forward(lstm, x, return_sequence=True)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape
    for got, ref in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert rel_err(got, ref) <= FP32_TOL


def test_lstm_forward_in_chunks_of_steps(monkeypatch) -> None:
    """A projection larger than the memory bound runs in chunks of steps, the state carried across."""
    import models.kernels.lstm as kl

    torch.manual_seed(1)
    lstm = nn.LSTM(6, 32, num_layers=2, batch_first=True).to(DEVICE).eval()
    x = torch.randn(3, 23, 6, device=DEVICE)
    monkeypatch.setattr(kl, "MAX_PROJECTION_BYTES", 3 * 4 * 32 * 4 * 5)  # 5 steps per launch: 5 chunks
    with torch.no_grad():
        ref_out, (ref_h, ref_c) = lstm(x)
        out, h, c = lstm_forward(lstm, x, return_sequence=True)
    for got, ref in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert rel_err(got, ref) <= FP32_TOL


def test_lstm_forward_follows_weight_updates() -> None:
    lstm = nn.LSTM(4, 32, batch_first=True).to(DEVICE).eval()
    x = torch.randn(3, 6, 4, device=DEVICE)
    with torch.no_grad():
        before = lstm_forward(lstm, x)[1]
        lstm.weight_hh_l0.mul_(0.5)  # in place: the cached, padded weights must be rebuilt
        after = lstm_forward(lstm, x)[1]
        assert rel_err(after, lstm(x)[1][0]) <= FP32_TOL
    assert not torch.allclose(before, after)


def test_lstm_forward_refuses_unsupported_modules() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        lstm_forward(nn.LSTM(4, 32, batch_first=True, bidirectional=True), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="hidden_size 300"):
        lstm_forward(nn.LSTM(4, 300, batch_first=True), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"x \[batch, steps, 4\]"):
        lstm_forward(nn.LSTM(4, 32, batch_first=True), torch.zeros(1, 2, 5))


# ---------------------------------------------------------------------------------------- epilogue


def epilogue_inputs(batch: int, steps: int, k: int, q: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {
        "features": torch.randn(batch, steps, k, generator=g), "weight": torch.randn(q, k, generator=g) / k**0.5,
        "bias": torch.randn(q, generator=g), "base": torch.randn(batch, steps, q, generator=g),
        "loc": torch.rand(batch, 1, generator=g) * 5000, "scale": torch.rand(batch, 1, generator=g) * 500 + 1,
        "interval_scale": torch.rand(q, generator=g) + 0.5,
    }
    return {name: v.to(DEVICE) for name, v in t.items()}


@pytest.mark.parametrize("parts", ["head+base", "head", "base"])
@pytest.mark.parametrize("q,median", [(3, 1), (5, 2), (4, 1), (1, 0)])
def test_epilogue_matches_reference(parts: str, q: int, median: int) -> None:
    t = epilogue_inputs(7, 45, 70, q)  # K = 70: not a multiple of the K block
    if "head" not in parts:
        t.update(features=None, weight=None, bias=None)
    if "base" not in parts:
        t["base"] = None
    for monotone in (True, False):
        out = quantile_epilogue(**t, median_index=median, monotone=monotone)
        ref = quantile_epilogue_reference(**t, median_index=median, monotone=monotone)
        assert out.shape == (7, 45, q) and out.dtype == torch.float32
        assert rel_err(out, ref) <= 1e-5
        if monotone and (t["interval_scale"] > 0).all():
            assert (out.diff(dim=-1) >= 0).all()  # non-crossing


def test_epilogue_bf16_features_on_cpu_and_gpu() -> None:
    t = epilogue_inputs(3, 20, 32, 3)
    t["features"], t["base"] = t["features"].bfloat16(), t["base"].bfloat16()  # loaded, converted to fp32
    assert rel_err(quantile_epilogue(**t, median_index=1), quantile_epilogue_reference(**t, median_index=1)) <= 1e-5


def test_epilogue_rejects_bad_inputs() -> None:
    t = epilogue_inputs(2, 3, 8, 17)
    with pytest.raises(ValueError, match="1 to 16 quantiles"):
        quantile_epilogue(**t, median_index=8)
    t = epilogue_inputs(2, 3, 8, 3)
    t["base"] = t["base"][:, :2]
    with pytest.raises(ValueError, match="base must be"):
        quantile_epilogue(**t, median_index=1)


# ------------------------------------------------------------------------- dispatch and whole models


def test_dispatch_modes(monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert not kernels_enabled("cpu")  # auto: CPU tensors take the reference
    if not CUDA:
        assert kernels_enabled("cpu", "on")  # forced on CPU: Triton's interpreter (set by conftest)
    assert not kernels_enabled("cuda", "off")
    monkeypatch.setenv(ENV_VAR, "off")
    assert not kernels_enabled("cuda", "on")  # the environment wins over the config
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be one of auto, on, off"):
        kernels_enabled("cpu")
    monkeypatch.setenv(ENV_VAR, "on")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels_enabled("cpu")
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(ValueError, match="model config field 'kernels' must be one of"):
        QuantileForecaster(ForecasterConfig(kernels="always"))


MODELS = {
    "lstm-patched": ("lstm", {"hidden_size": 32, "num_layers": 2, "patch_len": 24, "context_size": 16,
                              "step_embed": 8, "mlp_hidden": 32}, 14),
    "lstm-hourly-odd-hidden": ("lstm", {"hidden_size": 20, "num_layers": 1, "patch_len": 1, "context_size": 16,
                                        "step_embed": 8, "mlp_hidden": 32}, 3),
    "transformer": ("transformer", {"d_model": 16, "n_heads": 4, "e_layers": 1, "d_ff": 32}, 14),
    "transformer-no-covariates": ("transformer", {"d_model": 16, "n_heads": 4, "e_layers": 1, "d_ff": 32}, 0),
    "linear": ("linear", {}, 0),
    # region context: 5 more encoder inputs per hour than the decoder reads
    "lstm-region": ("lstm", {"hidden_size": 32, "num_layers": 2, "patch_len": 24, "context_size": 16,
                             "step_embed": 8, "mlp_hidden": 32, "local_context": 4}, 14, 5),
    "transformer-region": ("transformer", {"d_model": 16, "n_heads": 4, "e_layers": 1, "d_ff": 32}, 14, 5),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_forecaster_kernel_path_equals_reference(name: str, monkeypatch) -> None:
    kind, params, n_cov, *region = MODELS[name]
    n_past = region[0] if region else 0
    torch.manual_seed(0)
    input_length = 72 if params.get("patch_len") == 1 else 336  # hour-by-hour: a short window keeps it quick
    model = QuantileForecaster(ForecasterConfig(type=kind, input_length=input_length, horizon=24, n_covariates=n_cov,
                                                n_past_covariates=n_past, params=params)).to(DEVICE).eval()
    model.interval_scale.copy_(torch.tensor([1.4, 1.0, 0.7]))
    history = (torch.rand(5, input_length) * 800 + 1000).to(DEVICE)
    past = torch.randn(5, input_length, n_cov + n_past, device=DEVICE)
    future = torch.randn(5, 24, n_cov, device=DEVICE)
    with torch.no_grad():
        monkeypatch.setenv(ENV_VAR, "off")
        assert not model.uses_kernels(DEVICE)
        ref = model(history, past, future)
        monkeypatch.setenv(ENV_VAR, "on")
        assert model.uses_kernels(DEVICE)
        out = model(history, past, future)
    assert out.shape == ref.shape == (5, 24, 3)
    assert rel_err(out, ref) <= FP32_TOL
    assert (out.diff(dim=-1) >= 0).all()
    monkeypatch.setenv(ENV_VAR, "on")
    assert not model.uses_kernels(DEVICE)  # recording gradients: kernels have no backward


@pytest.mark.parametrize("kind,params", [("linear", {}), ("lstm", MODELS["lstm-patched"][1])])
def test_one_median_for_uneven_quantiles(kind: str, params: dict, monkeypatch) -> None:
    """(0.1, 0.5, 0.9, 0.95), which config validation accepts: 0.5 is column 1 for the quantile head, the
    interval scaling, DLinear's history response and the Triton epilogue alike."""
    qs = (0.1, 0.5, 0.9, 0.95)
    torch.manual_seed(0)
    model = QuantileForecaster(ForecasterConfig(type=kind, input_length=336, horizon=24, quantiles=qs,
                                                params=params)).to(DEVICE).eval()
    assert median_index(qs) == model.median_index == 1
    raw = torch.randn(3, 24, 4)
    torch.testing.assert_close(monotone_quantiles(raw, model.median_index)[..., 1], raw[..., 1])
    history = (torch.rand(5, 336) * 800 + 1000).to(DEVICE)
    past, future = torch.zeros(5, 336, 0, device=DEVICE), torch.zeros(5, 24, 0, device=DEVICE)
    with torch.no_grad():
        monkeypatch.setenv(ENV_VAR, "off")
        unscaled = model(history, past, future)
        model.interval_scale.copy_(torch.tensor([1.4, 1.0, 0.7, 2.0]))
        ref = model(history, past, future)
        monkeypatch.setenv(ENV_VAR, "on")
        out = model(history, past, future)
    torch.testing.assert_close(ref[..., 1], unscaled[..., 1])  # intervals stretch around the 0.5 column
    assert rel_err(out, ref) <= FP32_TOL  # the epilogue builds and scales around the same column
    if kind == "linear":  # the history response goes to the median column only
        shifted = model.backbone(history + 1.0, past, future) - model.backbone(history, past, future)
        assert shifted[..., 1].abs().max() > 0 and shifted[..., [0, 2, 3]].abs().max() == 0


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("pytorch_lightning", "pandas", "holidays")),
                    reason="training a bundle needs the training dependencies (a bare GPU machine lacks them)")
def test_bundle_forecasts_kernel_path_equals_reference(tiny_bundle_dir, monkeypatch) -> None:
    """End to end through Bundle.predict, which the Serve replica and batch scoring call as well."""
    import numpy as np
    import pandas as pd

    from models.bundle import load_bundle

    bundle = load_bundle(tiny_bundle_dir)
    rng = np.random.default_rng(3)
    hours = np.arange(bundle.input_length)
    history = (1000 + 300 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 20, (37, hours.size))).astype(np.float32)
    last = pd.date_range("2017-06-01", periods=37, freq="h")
    monkeypatch.setenv(ENV_VAR, "off")
    ref = bundle.predict(history, last, 24, device=DEVICE)
    monkeypatch.setenv(ENV_VAR, "on")
    out = bundle.predict(history, last, 24, device=DEVICE)
    assert out.shape == ref.shape == (37, 24, len(bundle.quantiles))
    assert rel_err(torch.from_numpy(out), torch.from_numpy(ref)) <= FP32_TOL


@gpu_only
def test_forecaster_bf16_autocast_on_gpu(monkeypatch) -> None:
    kind, params, n_cov = MODELS["lstm-patched"]
    model = QuantileForecaster(ForecasterConfig(type=kind, input_length=336, horizon=24, n_covariates=n_cov,
                                                params=params)).cuda().eval()
    history = torch.rand(300, 336, device="cuda") * 800 + 1000
    past, future = torch.randn(300, 336, n_cov, device="cuda"), torch.randn(300, 24, n_cov, device="cuda")
    with torch.no_grad():
        monkeypatch.setenv(ENV_VAR, "off")
        ref = model(history, past, future)  # fp32 reference
        monkeypatch.setenv(ENV_VAR, "on")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(history, past, future)
    assert rel_err(out, ref) <= BF16_TOL
