"""The ensemble forecaster (models/ensemble.py, training/ensemble.py): one bundle whose forecast is the
mean of its members' quantiles, trained from a config or assembled from trained bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.bundle import load_bundle
from training.config import ConfigError, load_config
from training.ensemble import member_configs
from training.pipeline import assemble, train

TINY = {"model.input_length": 336, "model.horizon": 48, "data.val_days": 60, "data.test_days": 60,
        "training.max_epochs": 1, "training.samples_per_epoch": 512, "training.val_samples": 256,
        "training.batch_size": 128}


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, synthetic_csv: Path) -> list:
    """A tiny LSTM and a tiny Transformer trained on the synthetic zones."""
    out = tmp_path_factory.mktemp("members")
    bundles = []
    for model, params in (("lstm", {"hidden_size": 16, "num_layers": 1, "patch_len": 24}),
                          ("transformer", {"d_model": 16, "n_heads": 2, "e_layers": 1, "d_ff": 32})):
        cfg = load_config(model=model, **{**TINY, "model.params": params})
        bundles.append(train(cfg, synthetic_csv, out / model, progress=False, evaluate=False, log=lambda _: None))
    return bundles


def _nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _ensemble_config(members: list[str], tiny: bool = True, **extra: object):
    """The shipped ensemble config (configs/models/ensemble.yaml) with these members."""
    return load_config(model="ensemble", **{"name": "tiny-ensemble", "model.params.members": members,
                                            **(TINY if tiny else {}), **extra})


def test_an_ensemble_forecasts_the_mean_of_its_members_quantiles(members: list, synthetic_csv: Path,
                                                                  tmp_path: Path) -> None:
    cfg = _ensemble_config(["lstm", "transformer"])
    bundle = assemble(cfg, members, synthetic_csv, tmp_path / "ensemble", evaluate=True, log=lambda _: None)
    assert bundle.config.type == "ensemble" and bundle.metrics["summary"]["tiny-ensemble"]["mae"] > 0
    assert [m["type"] for m in bundle.config.params["members"]] == ["lstm", "transformer"]
    loaded = load_bundle(tmp_path / "ensemble")  # one directory, one weights file, checksummed
    rng = np.random.default_rng(0)
    history = 1000 + 100 * rng.random((4, 336))
    last = pd.DatetimeIndex([pd.Timestamp("2020-03-01 23:00")] * 4)
    loaded.model.interval_scale.fill_(1.0)  # the ensemble's own calibration aside, it is the plain mean
    got = loaded.predict(history, last, 48)
    mean = np.mean([m.predict(history, last, 48) for m in members], axis=0)
    np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-3)
    assert (np.diff(got, axis=-1) >= 0).all()


def test_an_ensemble_config_trains_its_members_and_ships_one_bundle(synthetic_csv: Path, tmp_path: Path) -> None:
    members = []
    for name, model, params in (("m_lstm", "lstm", {"hidden_size": 16, "num_layers": 1}),
                                ("m_transformer", "transformer", {"d_model": 16, "n_heads": 2, "e_layers": 1})):
        path = tmp_path / f"{name}.yaml"
        settings = _nested({**TINY, "model.params": params})
        path.write_text(yaml.safe_dump({"base": str(Path(f"configs/models/{model}.yaml").resolve()), "name": name,
                                        **settings}))
        members.append(str(path))
    cfg = _ensemble_config(members, **{"model.horizon": 24})
    assert [m.model.horizon for m in member_configs(cfg)] == [24, 24]  # the ensemble's horizon is forced on them
    bundle = train(cfg, synthetic_csv, tmp_path / "out", progress=False, log=lambda _: None)
    assert bundle.name == "tiny-ensemble" and bundle.max_horizon == 24
    assert {m["name"] for m in bundle.meta["training"]["members"]} == {"m_lstm", "m_transformer"}
    assert sorted(p.name for p in (tmp_path / "out.members").iterdir()) == ["m_lstm", "m_transformer"]
    assert bundle.predict(1000 + np.zeros((1, 336)), [pd.Timestamp("2020-03-01 23:00")], 24).shape == (1, 24, 3)


def test_members_that_read_different_inputs_are_refused_by_name(members: list, synthetic_csv: Path,
                                                                 tmp_path: Path) -> None:
    cfg = _ensemble_config(["lstm", "transformer"], **{"model.input_length": 168})
    with pytest.raises(ConfigError, match="member lstm has input_length 336, the ensemble reads 168"):
        assemble(cfg, members, synthetic_csv, tmp_path / "bad", log=lambda _: None)
    cfg = _ensemble_config(["lstm", "lstm_region"], tiny=False)
    with pytest.raises(ConfigError, match="member lstm_region has features"):
        member_configs(cfg)
    with pytest.raises(ConfigError, match="two or more member configs"):
        member_configs(_ensemble_config(["lstm"]))


def test_an_ensemble_is_not_swept_nor_trained_on_ray_train(tmp_path: Path) -> None:
    from training.distributed import train_distributed
    from training.sweep import run_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "ens-sweep", "base": "ensemble_nem",
                                     "space": {"training.lr": {"low": 0.001, "high": 0.01}}}))
    with pytest.raises(ConfigError, match="an ensemble is not swept; sweep each member's config"):
        run_sweep(sweep, tmp_path / "out", trials=1)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not 'ensemble'"):
        train_distributed(load_config(model="ensemble_nem"), None, tmp_path / "d", num_workers=1)
