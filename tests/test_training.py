"""Training, bundles and the backtest protocol, on the session's tiny synthetic model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from models.bundle import BundleError, load_bundle, save_bundle, write_checksums
from models.data import load_series, split_by_time
from models.features import FeatureSpec
from models.forecaster import ForecasterConfig, QuantileForecaster, monotone_quantiles
from models.region import forecast_region
from models.series import SeriesError
from training.config import ConfigError, load_config
from training.evaluate import backtest, score
from training.pipeline import build_model, calibrate_intervals
from training.windows import WindowDataset


def test_bundle_layout_and_metadata(tiny_bundle_dir):
    assert sorted(p.name for p in tiny_bundle_dir.iterdir()) == ["checksums.json", "config.json", "metrics.json",
                                                                 "model.safetensors"]
    config = json.loads((tiny_bundle_dir / "config.json").read_text())
    assert config["model"]["type"] == "lstm" and config["model"]["input_length"] == 336
    assert config["zones"] == ["Z000", "Z001", "Z002"]
    assert set(config["scaling"]["Z000"]) == {"mean", "std"}
    assert len(config["data"]["fingerprint"]) == 64
    assert config["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert config["training"]["epochs"] and config["training"]["best_val_loss"] > 0
    metrics = json.loads((tiny_bundle_dir / "metrics.json").read_text())
    assert set(metrics["summary"]["tiny-lstm"]) == {"mae", "rmse", "mape", "mase", "pinball", "coverage_80"}
    assert metrics["horizon"] == 48


def test_a_day_ahead_model_is_scored_over_its_own_horizon(synthetic_csv, tiny_config, tmp_path):
    """The protocol's 48 h exceeds a 24 h model's reach: training must still end with a saved, scored bundle."""
    from training.pipeline import train

    cfg = tiny_config.model_copy(deep=True)
    cfg.model.horizon, cfg.training.max_epochs = 24, 1
    bundle = train(cfg, synthetic_csv, tmp_path / "day-ahead", progress=False, log=lambda _: None)
    assert bundle.max_horizon == 24 and bundle.metrics["horizon"] == 24
    assert bundle.metrics["summary"]["tiny-lstm"]["mae"] > 0


def test_bundle_round_trip_gives_identical_forecasts(tiny_bundle_dir, tmp_path):
    bundle = load_bundle(tiny_bundle_dir)
    rng = np.random.default_rng(0)
    history = 1000 + 100 * rng.standard_normal((4, 400)).astype(np.float32)
    last = pd.DatetimeIndex(["2021-01-01 23:00"] * 2 + ["2021-07-04 05:00"] * 2)
    first = bundle.predict(history, last, 48)
    save_bundle(tmp_path / "copy", bundle.model, bundle.features, name=bundle.name, version="copy", meta=bundle.meta)
    again = load_bundle(tmp_path / "copy").predict(history, last, 48)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (4, 48, 3)
    assert (np.diff(first, axis=-1) >= 0).all(), "quantiles must not cross"


@pytest.mark.parametrize("damage", ["missing_weights", "garbage_weights", "garbage_config", "wrong_shapes", "no_dir"])
def test_corrupt_bundle_is_a_clear_error(tiny_bundle_dir, tmp_path, damage):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, target)
    if damage == "missing_weights":
        (target / "model.safetensors").unlink()
        expected = "model.safetensors is missing"
    elif damage == "garbage_weights":
        (target / "model.safetensors").write_bytes(b"\x00garbage" * 100)
        expected = "corrupt weights"
    elif damage == "garbage_config":
        (target / "config.json").write_text("{not json")
        expected = "corrupt config.json"
    elif damage == "wrong_shapes":
        config = json.loads((target / "config.json").read_text())
        config["model"]["params"]["hidden_size"] = 32
        (target / "config.json").write_text(json.dumps(config))
        expected = "do not match"
    else:
        target = tmp_path / "nothing"
        expected = "no model bundle"
    if target.is_dir() and damage != "missing_weights":
        write_checksums(target)  # damage that passes the checksums (tests/test_integrity.py: that does not)
    with pytest.raises(BundleError, match=expected):
        load_bundle(target)


def test_bundle_weights_hold_no_pickle(tiny_bundle_dir):
    raw = (tiny_bundle_dir / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")


@pytest.mark.parametrize("history, last, horizon, message", [
    (np.ones((2, 100)), ["2021-01-01"] * 2, 24, "history too short"),
    (np.ones((2, 400)), ["2021-01-01"], 24, "2 histories but 1"),
    (np.ones((1, 400)), ["2021-01-01"], 0, "horizon must be between 1 and 48"),
    (np.ones((1, 400)), ["2021-01-01"], 49, "horizon must be between 1 and 48"),
    (np.full((1, 400), np.nan), ["2021-01-01"], 24, "NaN"),
    (np.ones(400), ["2021-01-01"], 24, "2-D"),
])
def test_predict_rejects_bad_input(tiny_bundle_dir, history, last, horizon, message):
    with pytest.raises(ValueError, match=message):
        load_bundle(tiny_bundle_dir).predict(history, pd.DatetimeIndex(last), horizon)


def test_monotone_quantiles_never_cross():
    raw = torch.randn(64, 48, 5) * 10
    q = monotone_quantiles(raw)
    assert (q.diff(dim=-1) >= 0).all()
    torch.testing.assert_close(q[..., 2], raw[..., 2])


def test_interval_calibration_reaches_nominal_coverage(synthetic_csv):
    """A model with far too narrow bands is widened by conformal calibration to ~80 % coverage."""
    series, _ = load_series(synthetic_csv)
    split = split_by_time(series, val_hours=60 * 24, test_hours=60 * 24, context_hours=336)
    cfg = load_config(model="seasonal_naive", **{"model.horizon": 48})
    model = build_model(cfg)
    windows = WindowDataset(split.val, 336, 48, FeatureSpec())
    factors = calibrate_intervals(model, windows)
    history, past, future, target = (torch.stack(t) for t in zip(*[windows[i] for i in range(len(windows))]))
    with torch.no_grad():
        q = model(history, past, future)
    inside = ((target >= q[..., 0]) & (target <= q[..., 2])).float().mean().item()
    assert factors[1] == 1.0 and factors[0] > 0 and factors[2] > 0
    assert 0.77 <= inside <= 0.83


def test_window_dataset_respects_target_start_and_origin_hours(synthetic_csv):
    series, _ = load_series(synthetic_csv)
    split = split_by_time(series, val_hours=30 * 24, test_hours=30 * 24, context_hours=336)
    test = WindowDataset(split.test, 336, 48, FeatureSpec(), origin_hours=[0])
    zone_series = split.test[0]
    i, origin = test.index[0]
    assert zone_series.timestamps[origin] >= zone_series.target_start
    assert zone_series.timestamps[origin].hour == 0
    history, past, future, target = test[0]
    assert history.shape == (336,) and past.shape == (336, 14) and future.shape == (48, 14)
    np.testing.assert_array_equal(target.numpy(), zone_series.load[origin : origin + 48])
    assert len(test) == 3 * (30 - 2 + 1)  # 30 days of 00:00 origins per zone, the last 48 h need 2 days


def test_mixup_blends_training_windows_with_the_same_zone_at_the_same_hour_of_the_week(synthetic_csv):
    series, _ = load_series(synthetic_csv)
    split = split_by_time(series, val_hours=30 * 24, test_hours=30 * 24, context_hours=336)
    spec = FeatureSpec(region_zones=("Z000", "Z001", "Z002"))
    plain = WindowDataset(split.train, 336, 48, spec)
    mixed = WindowDataset(split.train, 336, 48, spec, mixup=1.0, seed=3)
    items = [0, 777, 5000, len(plain) - 1]
    zone_of = [s.zone for s in split.train]
    hour_of_week = [s.timestamps.dayofweek * 24 + s.timestamps.hour for s in split.train]
    for item, (history, past, future, target) in zip(items, mixed.__getitems__(items), strict=True):
        i, origin = plain.index[item]
        own = plain[item]
        # a partner of the same zone at the same hour of the week, and one blending weight for every part
        candidates = [k for k, (j, o) in enumerate(plain.index)
                      if zone_of[j] == zone_of[i] and hour_of_week[j][o] == hour_of_week[i][origin]]
        fits = []
        for k in candidates:
            mate = plain[k]
            a, b = torch.cat([t.flatten() for t in own]), torch.cat([t.flatten() for t in mate])
            got = torch.cat([t.flatten() for t in (history, past, future, target)])
            if torch.equal(a, b):
                continue
            w = float(((got - b) @ (a - b)) / ((a - b) @ (a - b)))
            fits.append((float((w * a + (1 - w) * b - got).abs().max() / a.abs().max()), w))
        error, w = min(fits)
        assert error < 1e-5 and 0 <= w <= 1
        torch.testing.assert_close(future[:, :11], own[2][:, :11])  # hours and weekdays: the window's own
        torch.testing.assert_close(future[:, spec.size:], own[2][:, spec.size:])  # and its zone
    first, second = (WindowDataset(split.train, 336, 48, spec, mixup=1.0, seed=3).__getitems__(items) for _ in "ab")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))  # the seed fixes the draws
    untouched = WindowDataset(split.train, 336, 48, spec, mixup=0.0).__getitems__(items)
    assert all(torch.equal(a[0], plain[k][0]) for a, k in zip(untouched, items, strict=True))
    with pytest.raises(ValueError, match="mixup"):
        WindowDataset(split.train, 336, 48, spec, mixup=1.5)


def test_mixup_is_for_training_windows_of_forecasters(synthetic_csv):
    from training.pipeline import data_module, prepare_data

    cfg = load_config(model="lstm", **{"training.mixup": 0.5, "data.val_days": 30, "data.test_days": 30})
    dm = data_module(prepare_data(cfg, synthetic_csv)[0], cfg.forecaster_config(), cfg.features.spec(), cfg.training)
    dm.setup()
    assert dm.train_set.mixup == 0.5 and dm.val_set.dataset.mixup == 0.0  # validation scores real windows
    with pytest.raises(ConfigError, match="mixup"):
        load_config(model="autoencoder", **{"training.mixup": 0.5})


def test_backtest_protocol_and_scores(tiny_bundle_dir, synthetic_csv):
    bundle = load_bundle(tiny_bundle_dir)
    series, _ = load_series(synthetic_csv)
    split = split_by_time(series, val_hours=60 * 24, test_hours=60 * 24, context_hours=336)
    frame = backtest(bundle, split.test, horizon=48)
    assert (frame["cutoff"].dt.hour == 0).all() and frame["step"].between(1, 48).all()
    assert frame.groupby(["zone", "cutoff"]).size().eq(48).all()
    assert frame["cutoff"].min() >= split.test[0].target_start
    result = score(frame, [bundle.name], split.train)
    overall = result["summary"][bundle.name]
    assert overall["mae"] == pytest.approx((frame[bundle.name] - frame["y"]).abs().mean(), rel=1e-6)
    assert 0 < overall["coverage_80"] < 1 and overall["mase"] > 0
    assert {r["zone"] for r in result["rows"]} == {"Z000", "Z001", "Z002"}


def test_region_total_is_the_sum_of_zones(tiny_bundle_dir, synthetic_csv):
    bundle = load_bundle(tiny_bundle_dir)
    series, _ = load_series(synthetic_csv)
    histories = {s.zone: pd.Series(s.load, index=s.timestamps) for s in series}
    result = forecast_region(bundle, histories, 24, region="SYN")
    np.testing.assert_allclose(result.total.point, sum(z.point for z in result.zones), rtol=1e-6)
    assert result.total.timestamps[0] == series[0].timestamps[-1] + pd.Timedelta(hours=1)
    frame = result.to_frame()
    assert set(frame["zone"]) == {"Z000", "Z001", "Z002", "TOTAL"} and len(frame) == 4 * 24


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  type: lstm\n  hiden: 3\n")
    with pytest.raises(ConfigError, match="model.hiden"):
        load_config(bad)
    bad.write_text("model:\n  type: prophet\n")
    with pytest.raises(ConfigError, match="unknown model type 'prophet'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="quantiles"):
        load_config(model="lstm", **{"model.quantiles": [0.9, 0.1]})
    with pytest.raises(ConfigError, match="training.loss_units"):
        load_config(model="lstm", **{"training.loss_units": "dollars"})
    assert load_config(model="lstm", **{"training.loss_units": "data"}).training.loss_units == "data"


def test_every_shipped_config_builds_its_model():
    from models.autoencoder import ConvAutoencoder
    from training.config import CONFIG_DIR

    for path in sorted((CONFIG_DIR / "models").glob("*.yaml")):
        cfg = load_config(path)
        if cfg.model.type == "autoencoder":  # a detector, not a forecaster
            assert sum(p.numel() for p in ConvAutoencoder(cfg.autoencoder_config()).parameters()) > 0, path
            continue
        model = build_model(cfg)
        assert isinstance(model, QuantileForecaster), path
        assert model.config == ForecasterConfig.from_dict(model.config.to_dict())


def test_auto_validation_period_leaves_enough_to_train_on(tmp_path):
    """val_days "auto" (the shipped defaults) is a year on four years of data or more, a fifth of the days
    before the test period on less; training settles the number in its config, so the bundle records it."""
    from models.data import auto_validation_days, clean
    from training.pipeline import prepare_data
    from training.synthetic import synthetic_load

    def days_of(years: float) -> list:
        return clean(synthetic_load(n_zones=2, hours=int(24 * 365 * years), seed=3))[0]

    assert auto_validation_days(days_of(3), 365) == (3 * 365 - 365) // 5 == 146
    assert auto_validation_days(days_of(4), 365) == 365
    assert auto_validation_days(days_of(1.2), 365) == 30  # the least it gives
    five_years = synthetic_load(n_zones=1, hours=24 * 365 * 5, seed=1)
    three_years = synthetic_load(n_zones=2, hours=24 * 365 * 3, seed=2).query("zone == 'Z001'")
    short_and_long = clean(pd.concat([five_years, three_years]))[0]
    assert auto_validation_days(short_and_long, 365) == 146  # the shortest zone decides: every zone can be split

    path = tmp_path / "three_years.csv"
    synthetic_load(n_zones=2, hours=24 * 365 * 3, seed=3).to_csv(path, index=False)
    cfg = load_config(model="lstm")
    assert cfg.data.val_days == "auto"
    split, _, _ = prepare_data(cfg, path)
    assert cfg.data.val_days == 146
    val_hours = sum(len(s.load) - s.timestamps.get_loc(s.target_start) for s in split.val)
    assert val_hours == 146 * 24 * 2
    with pytest.raises(ConfigError, match="data.val_days"):
        load_config(model="lstm", **{"data.val_days": "soon"})


def test_calendar_without_the_position_in_the_year():
    """features.annual off zeroes doy_sin/doy_cos and nothing else; specs round-trip, and one that has it on
    is written as before the setting existed."""
    from models.features import CALENDAR_FEATURES, calendar_features

    hours = pd.date_range("2021-03-01", periods=24 * 40, freq="h")
    on, off = FeatureSpec(), FeatureSpec(annual=False)
    year = [CALENDAR_FEATURES.index("doy_sin"), CALENDAR_FEATURES.index("doy_cos")]
    rest = [k for k in range(len(CALENDAR_FEATURES)) if k not in year]
    with_year, without = calendar_features(hours, on), calendar_features(hours, off)
    assert np.abs(with_year[:, year]).max() > 0.5 and not without[:, year].any()
    np.testing.assert_array_equal(with_year[:, rest], without[:, rest])
    assert "annual" not in on.to_dict() and FeatureSpec.from_dict(on.to_dict()) == on
    assert FeatureSpec.from_dict(off.to_dict()) == off
    assert load_config(model="lstm", **{"features.annual": False}).features.spec() == off


def test_loss_units_data_is_the_mse_in_the_datas_units() -> None:
    """ETTh1's benchmark MSE is in the z-scored data's units; loss_units="data" trains on exactly that, while
    the default scores each window in its own units (a quiet window's errors weigh more)."""
    from training.module import ForecastModule

    torch.manual_seed(0)
    config = ForecasterConfig("linear", 48, 12, (), 0, {}).to_dict()
    history = torch.randn(8, 48) * torch.linspace(0.1, 3.0, 8)[:, None] + 2.0
    batch = (history, torch.zeros(8, 48, 0), torch.zeros(8, 12, 0), torch.randn(8, 12))
    data = ForecastModule(config, loss_units="data")
    window = ForecastModule(config)
    window.model.load_state_dict(data.model.state_dict())
    with torch.no_grad():
        pred = data.model(*batch[:3])[..., 0]
        scale = history.std(1, keepdim=True)
        assert torch.allclose(data._loss(batch), ((pred - batch[3]) ** 2).mean(), rtol=1e-5)
        assert torch.allclose(window._loss(batch), (((pred - batch[3]) / scale) ** 2).mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="loss_units"):
        ForecastModule(config, loss_units="dollars")


def test_a_model_with_covariates_is_scored_on_their_values(synthetic_csv, tiny_config, tiny_bundle_dir, tmp_path):
    """A model trained with an extra covariate (the synthetic temperature) is backtested with the test
    period's own values of it; predict without them is a clear error, not a shape crash in torch."""
    from training.pipeline import prepare_data, train

    cfg = tiny_config.model_copy(deep=True)
    cfg.features.covariates, cfg.training.max_epochs = ["temperature_c"], 1
    bundle = train(cfg, synthetic_csv, tmp_path / "with-temperature", progress=False, log=lambda _: None)
    assert bundle.features.covariates == ("temperature_c",)
    assert bundle.metrics["summary"]["tiny-lstm"]["mae"] > 0
    split, _, _ = prepare_data(cfg, synthetic_csv)
    before = backtest(bundle, split.test)
    for s in split.test:
        s.covariates = s.covariates + 15.0  # a much warmer test period
    after = backtest(bundle, split.test)
    assert len(after) == len(before) and not np.allclose(after["tiny-lstm"], before["tiny-lstm"])
    history, last = np.full((1, 400), 1000.0, np.float32), pd.DatetimeIndex(["2021-01-01 23:00"])
    with pytest.raises(ValueError, match=r"needs covariates \['temperature_c'\]"):
        bundle.predict(history, last, 48)
    with pytest.raises(ValueError, match="expected past and future of shapes"):
        bundle.predict(history, last, 48, extra=(np.zeros((1, 336, 1)), np.zeros((1, 24, 1))))
    extra = (np.zeros((1, 336, 1)), np.zeros((1, 48, 1)))
    assert bundle.predict(history, last, 48, extra=extra).shape == (1, 48, 3)
    with pytest.raises(ValueError, match="takes no extra covariates"):
        load_bundle(tiny_bundle_dir).predict(history, last, 48, extra=extra)
    zone = split.test[0]
    recent = pd.Series(zone.load, index=zone.timestamps)
    with pytest.raises(SeriesError, match=r"needs covariates \['temperature_c'\].*region forecast"):
        forecast_region(bundle, {zone.zone: recent}, 48)


def test_weight_averaging_keeps_the_validated_average(synthetic_csv, tiny_config, tmp_path):
    """With training.ema_decay the model that training returns holds the averaged weights it was validated
    with (not the last step's): its validation loss, recomputed, is the best epoch's logged one."""
    from training.module import ForecastModule, WindowDataModule
    from training.pipeline import EpochLog, fit_best, prepare_data

    def fit(ema_decay: float | None) -> tuple[list[float], float]:
        cfg = tiny_config.model_copy(deep=True)
        cfg.training.ema_decay = ema_decay
        tr = cfg.training
        torch.manual_seed(tr.seed)
        split, _, _ = prepare_data(cfg, synthetic_csv)
        model = build_model(cfg)
        dm = WindowDataModule(split, model.config, cfg.features.spec(), batch_size=tr.batch_size,
                              samples_per_epoch=tr.samples_per_epoch, val_samples=tr.val_samples, seed=tr.seed)
        module, epochs = ForecastModule.for_model(model, tr), EpochLog()
        fit_best(module, dm, tr, epochs)
        module.eval()
        with torch.no_grad():
            batches = list(dm.val_dataloader())
            loss = sum(float(module._loss(b)) * len(b[0]) for b in batches) / sum(len(b[0]) for b in batches)
        return [e["val_loss"] for e in epochs.epochs], loss

    plain_curve, plain_loss = fit(None)
    ema_curve, ema_loss = fit(0.9)
    assert ema_loss == pytest.approx(min(ema_curve), rel=1e-4)
    assert plain_loss == pytest.approx(min(plain_curve), rel=1e-4)
    assert not np.allclose(ema_curve, plain_curve, rtol=1e-3), "the averaged weights were not the ones validated"
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(model="lstm", **{"training.ema_decay": 1.0})
