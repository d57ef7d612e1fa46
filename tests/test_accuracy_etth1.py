"""The ETTh1 benchmark's protocol: borders, training-only scaling and window counts of the standard split."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy_etth1 import ETTH1, INPUT, NO_COVARIATES, etth1_split
from training.windows import WindowDataset

pytestmark = pytest.mark.skipif(not ETTH1.exists(), reason="../shared/data/ett/ETTh1.csv is not beside the repo")


def test_split_borders_scaling_and_windows():
    split, channels = etth1_split()
    assert channels == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    train, val, test = split.train[-1], split.val[-1], split.test[-1]
    assert len(train) == 8640 and len(val) == len(test) == 2880 + INPUT
    assert str(val.target_start) == "2017-06-26 00:00:00" and test.target_start == val.timestamps[-1] + (
        val.timestamps[1] - val.timestamps[0])
    # z-scored with training statistics only: exactly standard on train, not on the later periods
    assert abs(float(train.load.mean())) < 1e-4 and float(train.load.std()) == pytest.approx(1, abs=1e-4)
    assert abs(float(test.load[INPUT:].mean())) > 0.05
    windows = WindowDataset(split.test, INPUT, 96, NO_COVARIATES)
    assert len(windows) == 7 * (2880 - 96 + 1)
    history, past, future, target = windows[0]
    assert history.shape == (INPUT,) and past.shape == (INPUT, 0) and future.shape == (96, 0)
    np.testing.assert_array_equal(target.numpy(), split.test[0].load[INPUT : INPUT + 96])
