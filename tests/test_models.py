"""Backbones behind the one forecaster interface: shapes, quantiles, gradients, baselines, params, fitting."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import models  # noqa: F401  (registers every backbone)
from models.forecaster import BACKBONES, ForecasterConfig, QuantileForecaster, forecast_loss

QUANTILES = (0.1, 0.5, 0.9)
L = 336
# what an ensemble is built of in these tests: two small trained-type members
ENSEMBLE_MEMBERS = [{"type": "lstm", "params": {"hidden_size": 16, "num_layers": 1}},
                    {"type": "transformer", "params": {"d_model": 16, "n_heads": 2, "e_layers": 1, "d_ff": 32}}]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tensors are tiny: extra threads only add contention on a shared CPU (it made the tests 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str, horizon: int = 168, n_covariates: int = 0, input_length: int = L,
         quantiles: tuple[float, ...] = QUANTILES, **params) -> QuantileForecaster:
    """A forecaster as the training code builds it: seasonal_naive gets the config's quantile levels."""
    if name == "seasonal_naive":
        params.setdefault("quantiles", quantiles)
    if name == "ensemble":
        params.setdefault("members", ENSEMBLE_MEMBERS)
    config = ForecasterConfig(type=name, input_length=input_length, horizon=horizon, quantiles=quantiles,
                              n_covariates=n_covariates, params=params)
    return QuantileForecaster(config)


def inputs(batch: int, horizon: int, n_covariates: int, input_length: int = L) -> tuple[torch.Tensor, ...]:
    history = 1000 + 100 * torch.randn(batch, input_length)  # MW-like level
    return history, torch.randn(batch, input_length, n_covariates), torch.randn(batch, horizon, n_covariates)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("horizon", [48, 168])
@pytest.mark.parametrize("n_covariates", [0, 14])
def test_shapes_and_non_crossing_quantiles(name: str, horizon: int, n_covariates: int) -> None:
    torch.manual_seed(0)
    model = make(name, horizon, n_covariates)
    for train in (True, False):  # BatchNorm and dropout differ between the modes
        model.train(train)
        for batch in (1, 5):
            out = model(*inputs(batch, horizon, n_covariates))
            assert out.shape == (batch, horizon, len(QUANTILES))
            assert torch.isfinite(out).all()
            assert (out.diff(dim=-1) >= 0).all(), "quantiles cross"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_point_forecast_has_one_output(name: str) -> None:
    out = make(name, 48, 14, quantiles=()).eval()(*inputs(2, 48, 14))
    assert out.shape == (2, 48, 1)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_under_autocast(name: str, dtype: torch.dtype) -> None:
    model = make(name, 48, 14)
    with torch.autocast("cpu", dtype=dtype):
        out = model(*inputs(2, 48, 14))
    assert torch.isfinite(out).all() and (out.diff(dim=-1) >= 0).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_trainable_means_weights_to_fit(name: str) -> None:
    assert BACKBONES[name].trainable == any(p.requires_grad for p in make(name, 48, 14).parameters())


@pytest.mark.parametrize("name", [n for n in sorted(BACKBONES) if BACKBONES[n].trainable])
@pytest.mark.parametrize("n_covariates", [0, 14])
def test_gradients_reach_every_parameter(name: str, n_covariates: int) -> None:
    torch.manual_seed(0)
    model = make(name, 48, n_covariates).train()
    history, past_cov, future_cov = inputs(4, 48, n_covariates)
    target = 1000 + 100 * torch.randn(4, 48)
    q, loc, scale = model.forward_normalized(history, past_cov, future_cov)
    forecast_loss(q, (target - loc) / scale, QUANTILES).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_region_channels_widen_the_encoder_only(name: str) -> None:
    """Past-only inputs (region context) follow the covariates in past_cov; the decoder's future_cov keeps
    the C known-future ones. Backbones that cannot read them say so when built."""
    config = ForecasterConfig(type=name, input_length=L, horizon=48, quantiles=QUANTILES, n_covariates=14,
                              n_past_covariates=5, params={"seasonal_naive": {"quantiles": QUANTILES},
                                                           "ensemble": {"members": ENSEMBLE_MEMBERS}}.get(name, {}))
    if not BACKBONES[name].reads_past_covariates:
        with pytest.raises(ValueError, match="no region context"):
            QuantileForecaster(config)
        return
    torch.manual_seed(0)
    model = QuantileForecaster(config).train()
    history, past_cov, future_cov = inputs(4, 48, 14)
    region = torch.randn(4, L, 5, requires_grad=True)
    q, loc, scale = model.forward_normalized(history, torch.cat([past_cov, region], dim=2), future_cov)
    assert q.shape == (4, 48, len(QUANTILES))
    forecast_loss(q, (1000 + 100 * torch.randn(4, 48) - loc) / scale, QUANTILES).backward()
    assert region.grad.abs().sum() > 0  # the forecast depends on the region channels


def test_seasonal_naive_repeats_last_season_in_data_units() -> None:
    t = torch.arange(L, dtype=torch.float32)
    weekend = ((t // 24) % 7 >= 5).float()
    history = (1000 + 200 * torch.sin(2 * math.pi * t / 24) - 150 * weekend).unsqueeze(0)  # period 168
    horizon = 200  # more than one season ahead: the last season repeats
    model = make("seasonal_naive", horizon, 14)
    assert not list(model.parameters())
    out = model(history, torch.zeros(1, L, 14), torch.zeros(1, horizon, 14))
    expected = history[0, L - 168 + torch.arange(horizon) % 168]
    for q in range(len(QUANTILES)):  # no seasonal change in the window: every quantile is the naive value
        torch.testing.assert_close(out[0, :, q], expected, rtol=1e-5, atol=1e-3)


def test_seasonal_naive_quantiles_bracket_the_median() -> None:
    torch.manual_seed(0)
    t = torch.arange(L, dtype=torch.float32)
    history = (1000 + 200 * torch.sin(2 * math.pi * t / 24) + 20 * torch.randn(3, L))
    out = make("seasonal_naive", 168).eval()(history, torch.zeros(3, L, 0), torch.zeros(3, 168, 0))
    torch.testing.assert_close(out[:, :, 1], history[:, L - 168:], rtol=1e-5, atol=1e-3)  # median: the naive
    assert (out[:, :, 0] < out[:, :, 1]).all() and (out[:, :, 1] < out[:, :, 2]).all()
    point = make("seasonal_naive", 168, quantiles=())(history, torch.zeros(3, L, 0), torch.zeros(3, 168, 0))
    torch.testing.assert_close(point[..., 0], history[:, L - 168:], rtol=1e-5, atol=1e-3)


def test_transformer_without_covariates_is_patchtst() -> None:
    backbone = make("transformer", 96, 0, quantiles=(), d_model=16, n_heads=4, d_ff=128,
                    dropout=0.3, fc_dropout=0.3, head_dropout=0.0).backbone
    assert backbone.n_patches == 42  # L = 336, patch 16, stride 8, end padding
    assert backbone.decoder is None
    assert backbone.head[-1].in_features == 42 * 16 and backbone.head[-1].out_features == 96


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_unknown_param_is_named(name: str) -> None:
    with pytest.raises(TypeError, match="hiden_size"):
        make(name, 48, hiden_size=64)


@pytest.mark.parametrize("name, params, named", [
    ("lstm", {"hidden_size": 0}, "hidden_size"),
    ("lstm", {"dropout": 1.5}, "dropout"),
    ("lstm", {"local_context": -1}, "local_context"),
    ("transformer", {"norm": "group"}, "norm"),
    ("transformer", {"d_model": 30, "n_heads": 4}, "d_model"),
    ("linear", {"kernel_size": 24}, "kernel_size"),
    ("seasonal_naive", {"season": 200}, "season"),
    ("seasonal_naive", {"quantiles": (0.9, 0.1, 0.5)}, "quantiles"),
    ("ensemble", {"members": ENSEMBLE_MEMBERS[:1]}, "at least two member models"),
    ("ensemble", {"members": [*ENSEMBLE_MEMBERS, {"type": "ensemble"}]}, "cannot nest|must be model types"),
])
def test_invalid_param_value_is_named(name: str, params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make(name, 48, **params)


def test_seasonal_naive_needs_one_level_per_output() -> None:
    config = ForecasterConfig(type="seasonal_naive", quantiles=(0.05, 0.5, 0.95), params={"quantiles": (0.1, 0.9)})
    with pytest.raises(ValueError, match="quantiles"):
        QuantileForecaster(config)


@pytest.mark.parametrize("name, params", [
    ("lstm", {"hidden_size": 32, "context_size": 16, "mlp_hidden": 32, "dropout": 0.0}),
    ("linear", {}),
])
def test_fits_a_noiseless_daily_cycle(name: str, params: dict) -> None:
    """The model must be able to learn a period-24 series: low pinball loss within 200 Adam steps."""
    torch.manual_seed(0)
    input_length, horizon = 48, 24
    t = torch.arange(2000, dtype=torch.float32)
    series = 1000 + 200 * torch.sin(2 * math.pi * t / 24) + 60 * torch.cos(4 * math.pi * t / 24 + 1.0)
    model = make(name, horizon, 0, input_length=input_length, **params).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        starts = torch.randint(0, len(series) - input_length - horizon, (32, 1))
        window = series[starts + torch.arange(input_length + horizon)]
        history, target = window[:, :input_length], window[:, input_length:]
        q, loc, scale = model.forward_normalized(history, torch.zeros(32, input_length, 0), torch.zeros(32, horizon, 0))
        loss = forecast_loss(q, (target - loc) / scale, QUANTILES)  # in window std units: ~0.35 at the start
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = sum(losses[-10:]) / 10
    assert final < 0.04, f"{name} did not fit a noiseless daily cycle: pinball {final:.4f}"


@pytest.mark.parametrize("local_context", [0, 4])
def test_lstm_local_contexts_reach_each_step_from_the_history(local_context: int) -> None:
    """MQ-RNN's horizon-specific contexts: with the shared context and the linear skip silenced, the forecast
    still follows the history, step by step differently, through the local contexts alone (and without
    them it cannot)."""
    torch.manual_seed(0)
    model = make("lstm", 48, 14, local_context=local_context, skip=False, dropout=0.0).eval()
    if local_context:
        assert model.backbone.to_local.out_features == 48 * local_context
    torch.nn.init.zeros_(model.backbone.to_context.weight)
    history, past_cov, future_cov = inputs(1, 48, 14)
    with torch.no_grad():
        q, _, _ = model.forward_normalized(history, past_cov, future_cov)
        shifted, _, _ = model.forward_normalized(history.flip(1), past_cov, future_cov)  # same loc and scale
    change = (shifted - q)[0, :, 1]  # the median, in normalized units
    if local_context:
        assert change.abs().min() > 0 and change.std() > 0.1 * change.abs().mean()
    else:
        assert change.abs().max() < 1e-6


def test_lstm_patches_read_the_most_recent_whole_days() -> None:
    """patch_len 24 turns 340 hours into 14 daily steps of the latest 336 hours; older hours are dropped."""
    model = QuantileForecaster(ForecasterConfig("lstm", 340, 48, (0.1, 0.5, 0.9), 2, {"patch_len": 24}))
    x = torch.arange(340, dtype=torch.float32).unsqueeze(0)
    cov = torch.zeros(1, 340, 2)
    steps = model.backbone.steps(x, cov)
    assert steps.shape == (1, 14, 24 * 3)
    assert steps[0, 0, 0].item() == 4.0 and steps[0, -1, -3].item() == 339.0
    assert model(x, cov, torch.zeros(1, 48, 2)).shape == (1, 48, 3)
    with pytest.raises(ValueError, match="patch_len"):
        QuantileForecaster(ForecasterConfig("lstm", 24, 48, (0.5,), 0, {"patch_len": 48}))
