"""Synthetic load: seeded, well formed, and shaped like real load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import clean
from training.synthetic import synthetic_load


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_load(n_zones=4, hours=24 * 120, seed=3)


def test_same_seed_same_frame_other_seed_differs(frame):
    pd.testing.assert_frame_equal(frame, synthetic_load(n_zones=4, hours=24 * 120, seed=3))
    assert not np.allclose(frame.load_mw, synthetic_load(n_zones=4, hours=24 * 120, seed=4).load_mw)


def test_columns_shape_and_values(frame):
    assert list(frame.columns) == ["zone", "timestamp", "load_mw", "temperature_c"]
    assert len(frame) == 4 * 24 * 120
    assert list(frame.zone.unique()) == ["Z000", "Z001", "Z002", "Z003"]
    first = frame[frame.zone == "Z000"].timestamp
    assert first.iloc[0] == pd.Timestamp("2020-01-01") and (first.diff().iloc[1:] == pd.Timedelta(hours=1)).all()
    assert (frame.load_mw > 0).all() and np.isfinite(frame.temperature_c).all()
    means = frame.groupby("zone").load_mw.mean()
    assert means.min() > 300 and means.max() < 40000 and means.max() / means.min() > 1.5  # distinct sizes
    assert -40 < frame.temperature_c.min() and frame.temperature_c.max() < 50


def test_daily_and_weekly_periodicity(frame):
    for _, zone in frame.groupby("zone"):
        change = zone.load_mw.reset_index(drop=True).diff()  # hour-to-hour changes: slow weather drops out
        assert change.autocorr(24) > 0.6 and change.autocorr(168) > 0.75
        assert change.autocorr(12) < 0.45  # a daily cycle, not just smoothness
        days = zone.timestamp.dt.day_of_week
        assert zone.load_mw[days >= 5].mean() < 0.97 * zone.load_mw[days < 5].mean()  # weekend dip


def test_load_responds_to_temperature_in_a_u_shape():
    year = synthetic_load(n_zones=1, hours=24 * 365, seed=0, noise=0.0)
    daily = year.set_index("timestamp").resample("D").mean(numeric_only=True)
    mild = daily.load_mw[daily.temperature_c.between(15, 20)].mean()
    assert daily.load_mw[daily.temperature_c < 5].mean() > 1.05 * mild
    assert daily.load_mw[daily.temperature_c > 24].mean() > 1.05 * mild


def test_output_cleans_without_repairs():
    series, report = clean(synthetic_load(n_zones=2, hours=500, freq="h"))
    assert [len(s) for s in series] == [500, 500] and series[0].covariate_names == ("temperature_c",)
    r = report.zones["Z001"]
    assert (r.duplicate_hours_merged, r.missing_hours_interpolated, r.absurd_values) == (0, 0, 0)
