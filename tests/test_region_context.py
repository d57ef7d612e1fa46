"""Region context: models that read every zone's recent load beside a series' own history.

Training, backtests, region forecasts and the serving engine must all give the model the same context,
and every path that cannot (per-series requests, batch scoring, data without the zones) must say so.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from models.bundle import Bundle, load_bundle
from models.features import FeatureSpec, region_channels
from models.region import RegionPanel, forecast_region
from models.series import SeriesError

ZONES = ["Z000", "Z001", "Z002"]  # the synthetic data's zones (tests/conftest.py)


@pytest.fixture(scope="module")
def region_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_csv: Path, tiny_config) -> Bundle:
    from training.pipeline import train

    cfg = tiny_config.model_copy(deep=True)
    cfg.name = "tiny-region"
    cfg.features.region_zones = list(ZONES)
    out = tmp_path_factory.mktemp("bundles") / "region"
    train(cfg, synthetic_csv, out, progress=False, log=lambda _: None)
    return load_bundle(out)


@pytest.fixture(scope="module")
def histories(synthetic_csv: Path) -> dict[str, pd.Series]:
    frame = pd.read_csv(synthetic_csv, parse_dates=["timestamp"])
    return {z: g.set_index("timestamp")["load_mw"].astype(np.float32).rename(z) for z, g in frame.groupby("zone")}


def test_region_channels_normalize_each_zone_and_zero_incomplete_ones():
    rng = np.random.default_rng(0)
    loads = rng.uniform(500, 1500, (2, 48, 3)).astype(np.float32)
    loads[1, 10, 2] = np.nan
    out = region_channels(loads)
    np.testing.assert_allclose(out[:, :, :2].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, :, :2].std(axis=1), 1, atol=1e-4)
    assert np.all(out[1, :, 2] == 0) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 2].std(), 1, atol=1e-4)  # the same zone in a complete window


def test_panel_windows_line_up_with_the_hours_and_mark_gaps(histories):
    panel = RegionPanel.from_histories({z: h.drop(h.index[100:110]) for z, h in histories.items()}, ZONES)
    issue = histories["Z001"].index[200]
    window = panel.windows(panel.positions([issue]), 48)[0]  # [48, 3]
    np.testing.assert_array_equal(window[:, 1], histories["Z001"].iloc[152:200].to_numpy())
    start, gap = panel.windows(panel.positions(histories["Z000"].index[[30, 105]]), 48)
    assert np.isnan(start[:18]).all() and np.isfinite(start[18:]).all()  # hours before the data
    assert np.isnan(gap[-5:]).all() and np.isfinite(gap[:-5]).all()  # hours 100..104 of the gap
    with pytest.raises(SeriesError, match=r"no load for \['Z002'\]"):
        RegionPanel.from_histories({z: histories[z] for z in ZONES[:2]}, ZONES)


def test_a_region_model_trains_reads_its_neighbours_and_keeps_its_zones(region_bundle, histories):
    assert region_bundle.region_zones == tuple(ZONES)
    assert region_bundle.config.n_past_covariates == 3
    assert region_bundle.config.n_covariates == region_bundle.features.size + 3  # + the zone, one-hot
    assert region_bundle.metrics["summary"]["tiny-region"]["mae"] > 0  # its backtest read the context too

    full = forecast_region(region_bundle, histories, 24)
    one = forecast_region(region_bundle, {"Z000": histories["Z000"]}, 24, context=histories)
    np.testing.assert_allclose(one.zones[0].quantiles, full.zones[0].quantiles, rtol=1e-5)

    changed = dict(histories)
    last_day = changed["Z002"].index[-24:]
    changed["Z002"] = changed["Z002"].copy()
    changed["Z002"].loc[last_day] *= 1.5  # only a neighbour's last day differs
    moved = forecast_region(region_bundle, {"Z000": histories["Z000"]}, 24, context=changed)
    assert not np.allclose(moved.zones[0].point, full.zones[0].point, rtol=1e-4)


def test_predict_checks_the_region_context(region_bundle, tiny_bundle_dir, histories):
    history = histories["Z000"].to_numpy()[None, -336:]
    last = pd.DatetimeIndex([histories["Z000"].index[-1]])
    with pytest.raises(ValueError, match=r"reads the recent load of zones \['Z000', 'Z001', 'Z002'\].*\(1, 336, 3\)"):
        region_bundle.predict(history, last, 24)
    with pytest.raises(ValueError, match=r"expected shape \(1, >= 336, 3\), got \(1, 336, 2\)"):
        region_bundle.predict(history, last, 24, region=np.ones((1, 336, 2), np.float32))
    context = np.stack([histories[z].to_numpy()[-336:] for z in ZONES], axis=1)[None].copy()
    with pytest.raises(ValueError, match="pass zones"):
        region_bundle.predict(history, last, 24, region=context)
    with pytest.raises(ValueError, match="reads no region context"):
        load_bundle(tiny_bundle_dir).predict(history, last, 24, region=context, zones=["Z000"])
    own = region_bundle.predict(history, last, 24, region=context, zones=["Z000"])
    as_other = region_bundle.predict(history, last, 24, region=context, zones=["Z001"])
    assert not np.allclose(own, as_other, rtol=1e-4)  # the model knows which zone it forecasts
    context[0, 100, 1] = np.nan  # a gap in one neighbour: its channel reads as zeros, the forecast stands
    assert np.isfinite(region_bundle.predict(history, last, 24, region=context, zones=["Z000"])).all()


def test_window_dataset_carries_the_region_channels(synthetic_csv):
    from models.data import load_series
    from training.windows import WindowDataset

    series, _ = load_series(synthetic_csv)
    spec = FeatureSpec(region_zones=("Z001", "Z000"))
    windows = WindowDataset(series, 48, 12, spec)
    item = int(np.flatnonzero([series[i].zone == "Z000" for i in windows.index[:, 0]])[500])
    history, past, future, _ = windows[item]
    c = spec.size
    assert past.shape == (48, c + 4) and future.shape == (12, c + 2)
    np.testing.assert_array_equal(past[:, c : c + 2].numpy(), [[0, 1]] * 48)  # Z000, the second region zone
    np.testing.assert_array_equal(future[:, c:].numpy(), [[0, 1]] * 12)
    own = region_channels(history.numpy()[:, None])[:, 0]
    np.testing.assert_allclose(past[:, c + 3].numpy(), own, atol=1e-5)
    assert np.abs(past[:, c + 2].numpy() - own).max() > 0.1  # Z001's channel is its own
    with pytest.raises(SeriesError, match="Z009"):
        WindowDataset(series, 48, 12, FeatureSpec(region_zones=("Z000", "Z009")))


def test_region_dropout_hides_whole_zone_channels_in_training_only():
    import torch

    from models.forecaster import ForecasterConfig
    from training.module import ForecastModule

    config = ForecasterConfig(type="lstm", input_length=48, horizon=12, n_covariates=14 + 3, n_past_covariates=3,
                              params={"hidden_size": 8, "patch_len": 24})
    module = ForecastModule(config.to_dict(), region_dropout=0.5)
    batch = (torch.rand(4000, 48), torch.rand(4000, 48, 20) + 1, torch.rand(4000, 12, 17), torch.rand(4000, 12))
    history, past, future, target = module._hide_region_channels(batch)
    torch.testing.assert_close(past[..., :17], batch[1][..., :17])  # calendar and zone: untouched
    hidden = (past[..., 17:] == 0).all(dim=1)  # [windows, zones]: a whole channel or nothing
    assert ((past[..., 17:] == 0).any(dim=1) == hidden).all()
    assert 0.45 < hidden.float().mean() < 0.55
    assert ForecastModule(config.to_dict())._hide_region_channels(batch) is batch


def test_configs_refuse_region_context_where_it_cannot_be_read():
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model type 'linear' reads no region context"):
        load_config(model="linear", **{"features.region_zones": ["A"]})
    with pytest.raises(ConfigError, match="distinct"):
        load_config(model="lstm", **{"features.region_zones": ["A", "A"]})
    cfg = load_config(model="transformer_region")
    assert cfg.forecaster_config().n_past_covariates == len(cfg.features.region_zones) == 5


def test_training_on_data_without_the_region_zones_is_a_clear_error(synthetic_csv, tiny_config, tmp_path):
    from training.pipeline import train

    cfg = tiny_config.model_copy(deep=True)
    cfg.features.region_zones = ["Z000", "AEP"]
    with pytest.raises(SeriesError, match=r"no load for \['AEP'\]"):
        train(cfg, synthetic_csv, tmp_path / "m", progress=False, log=lambda _: None)
    assert not (tmp_path / "m").exists()


def test_the_engine_serves_region_requests_and_refuses_series_requests(region_bundle, synthetic_csv, histories,
                                                                        tmp_path):
    from serving.api.energyopt.v1 import forecast_pb2 as pb
    from serving.engine import ApiError, Engine

    engine = Engine.from_data(region_bundle, synthetic_csv, region="SYN")
    assert list(engine.model_info(pb.GetModelInfoRequest()).region_zones) == ZONES
    job = engine.region_job(pb.ForecastRegionRequest(region="SYN", horizon=24, zones=["Z001"]))
    response = engine.run([job])[0][0]
    want = forecast_region(region_bundle, {"Z001": histories["Z001"]}, 24, context=histories)
    np.testing.assert_allclose(response.zones[0].point, want.zones[0].point, rtol=1e-4)

    request = pb.ForecastSeriesRequest(horizon=24)
    request.series.add(history=histories["Z000"].to_numpy()[-336:].tolist(),
                       last_timestamp=histories["Z000"].index[-1].isoformat())
    with pytest.raises(ApiError) as err:
        engine.series_job(request)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "ForecastRegion" in err.value.message

    partial = tmp_path / "partial.csv"  # a store without one of the model's context zones
    pd.read_csv(synthetic_csv).query("zone != 'Z002'").to_csv(partial, index=False)
    with pytest.raises(ValueError, match=r"lacks \['Z002'\]"):
        Engine.from_data(region_bundle, partial, region="SYN")


def test_batch_scoring_refuses_a_region_model(region_bundle, tmp_path):
    from models.bundle import save_bundle
    from serving.score import ScoringError, score

    path = save_bundle(tmp_path / "bundle", region_bundle.model, region_bundle.features, name="r", version="1")
    with pytest.raises(ScoringError, match="reads the recent load of zones"):
        score(path, tmp_path / "in.parquet", tmp_path / "out")
