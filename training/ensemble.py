"""Ensemble configs (models/ensemble.py): which members an ensemble has and whether they can join it.
Training them and combining them into one bundle is training.pipeline's (`assemble`, `train` with an
ensemble config): each member trained by its own config on the same data, then calibrated as a whole.

An ensemble config is `model: {type: ensemble, params: {members: [lstm_nem, transformer_nem]}}`: the
members are config names (configs/models/<name>.yaml) or paths. They must read what the ensemble's
features section says, over the same history, horizon, quantiles and data split: the ensemble forces the
horizon on them and refuses a member that disagrees on anything else, naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.config import ConfigError, TrainConfig, load_config, model_config_path

ENSEMBLE = "ensemble"


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """The members' configs, with the ensemble's horizon; ConfigError for one that cannot join it."""
    names = config.model.params.get("members")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config {config.name}: model.params.members must list two or more member configs "
                          f"(names such as lstm_nem, or paths), got {names!r}")
    members = [load_config(model_config_path(n), **{"model.horizon": config.model.horizon}) for n in names]
    for name, member in zip(names, members, strict=True):
        check_member(config, name, member.model.type, member.model.input_length, member.model.quantiles,
                      member.features.spec(), (member.data.val_days, member.data.test_days))
    return members


def check_member(config: TrainConfig, name: str, model_type: str, input_length: int, quantiles: Sequence[float],
                  features: Any, periods: tuple[int, int]) -> None:
    """ConfigError naming member `name` unless it reads what the ensemble reads (a config or a trained bundle:
    its type, history length, quantiles, FeatureSpec and split in days)."""
    wanted = {"model type": (model_type, "not an ensemble"), "input_length": (input_length, config.model.input_length),
              "quantiles": (list(quantiles), list(config.model.quantiles)),
              "features": (features, config.features.spec()),
              "data split (val_days, test_days)": (periods, (config.data.val_days, config.data.test_days))}
    for what, (got, expected) in wanted.items():
        bad = got == ENSEMBLE if what == "model type" else got != expected
        if bad:
            raise ConfigError(f"config {config.name}: member {name} has {what} {got!r}, the ensemble "
                              f"{'cannot nest ensembles' if what == 'model type' else f'reads {expected!r}'}")
