"""The accuracy benchmark's ridge peers (benchmarks/peers.py) on synthetic zones whose load follows
temperature: the protocol's origins, the weather conventions and the validation-chosen settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.peers import HORIZON, Protocol, ridge_frame
from models.data import clean, split_by_time
from models.features import FeatureSpec
from training.evaluate import WeatherForecastError
from training.synthetic import synthetic_load


@pytest.fixture(scope="module")
def series() -> list:
    table = synthetic_load(n_zones=2, hours=24 * 420, seed=3, noise=0.02)
    return clean(table)[0]


def _protocol(series: list, weather: WeatherForecastError | None = None) -> Protocol:
    split = split_by_time(series, val_hours=60 * 24, test_hours=60 * 24, context_hours=336)
    return Protocol.from_split(split, FeatureSpec(holiday_country="US"), weather=weather)


def _mae(protocol: Protocol, frame: pd.DataFrame, name: str) -> float:
    at = protocol.load.index.get_indexer(pd.DatetimeIndex(frame["cutoff"])) + frame["step"].to_numpy() - 1
    actual = protocol.load.to_numpy()[at, [protocol.load.columns.get_loc(z) for z in frame["zone"]]]
    return float(np.abs(frame[name].to_numpy() - actual).mean())


def test_ridge_peers_forecast_every_test_origin_and_read_the_temperature(series: list) -> None:
    protocol = _protocol(series)
    plain = ridge_frame(protocol, "ridge", neighbours=False, weather=False)
    weather = ridge_frame(protocol, "ridge_temperature", neighbours=True, weather=True)
    for zone in protocol.zones:
        origins = protocol.origins(zone, "test")
        assert len(origins) >= 55 and (origins.hour == 0).all() and (origins >= protocol.periods[zone][1]).all()
        assert len(weather[weather["zone"] == zone]) == len(origins) * HORIZON
    assert set(protocol.timings["ridge"]["penalty"].values()) <= {0.1, 0.3, 1.0, 3.0, 10.0, 30.0}
    assert (weather["ridge_temperature-q0.1"] <= weather["ridge_temperature"]).all()
    assert (weather["ridge_temperature"] <= weather["ridge_temperature-q0.9"]).all()
    # the synthetic load follows temperature: the ridge that reads it is clearly better
    assert _mae(protocol, weather, "ridge_temperature") < 0.8 * _mae(protocol, plain, "ridge")


def test_a_realistic_weather_forecast_costs_the_weather_ridge_accuracy(series: list) -> None:
    perfect, forecast = _protocol(series), _protocol(series, WeatherForecastError(seed=1))
    first = perfect.origins(perfect.zones[0], "test")
    errors = forecast.forecast_temperature(perfect.zones[0], first) - perfect.forecast_temperature(perfect.zones[0],
                                                                                                 first)
    assert 0.5 < np.abs(errors[:, 0]).mean() < np.abs(errors[:, -1]).mean()  # the error grows with lead time
    names = {}
    for label, protocol in (("perfect", perfect), ("forecast", forecast)):
        names[label] = _mae(protocol, ridge_frame(protocol, "r", neighbours=False, weather=True), "r")
    assert names["forecast"] > names["perfect"]
