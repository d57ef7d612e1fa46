"""How much of the PJM error a plain ridge regression removes, and what neighbouring zones add.

    python benchmarks/pjm_headroom.py [--with runs/bench/pjm/transformer ...]
        -> benchmarks/results/pjm_headroom.json

Under the accuracy protocol (training.evaluate: test = each zone's last 365 days, origins daily at
00:00, 48 h ahead, metrics over every step), on exactly the origins the seasonal naive is scored on:

- `ridge_zone`: one ridge regression per zone and per forecast step, fitted on the 00:00 origins of the
  training period only: the zone's last 168 h divided by their mean, plus one-hot weekday, month and
  holiday of both target days. Its weights per step give each (weekday, hour) its own effect.
- `ridge_zone_since_2013` : the same, fitted only where every zone has data (EKPC starts in June 2013),
  the fair reference for the next line.
- `ridge_region`: `ridge_zone_since_2013` plus the last 48 h of all five zones (each over its own
  168 h mean). Weather crosses PJM from west (COMED) to east (DOM), so a neighbour's load leads.
- `seasonal_naive_168` and `linear` (configs/models/linear.yaml, trained here for 48 h as accuracy.py
  does), and any bundles given with --with, in the same run and on the same rows.

Intervals of the ridges: the 10 % and 90 % quantiles of their validation-period errors per step. This
is an analysis of where accuracy can come from, not a served model: the ridges are fitted for 00:00
origins only, while every forecaster of the project serves any origin hour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result
from benchmarks.peers import (
    HISTORY,
    HORIZON,
    NEIGHBOUR_HOURS,
    fit_ridge,
    predict_ridge,
    split_periods,
    target_day_calendar,
)

RIDGE_PENALTY = 1.0  # on standardized-by-level inputs; fixed, not tuned on the test period
SINCE_2013 = pd.Timestamp("2013-07-01")


def wide_loads(series: list) -> pd.DataFrame:
    """Repaired hourly load per zone, one column each, NaN where a zone has no data."""
    parts: dict[str, list[pd.Series]] = {}
    for s in series:
        parts.setdefault(s.zone, []).append(pd.Series(s.load.astype(np.float64), index=s.timestamps))
    wide = pd.DataFrame({zone: pd.concat(p) for zone, p in parts.items()}).sort_index()
    return wide.asfreq("h")


def design(wide: pd.DataFrame, zone: str, holiday_dates: np.ndarray, *, neighbours: bool) -> dict:
    """Inputs, targets (both over the zone's 168 h mean) and timestamps of every usable 00:00 origin."""
    values = wide.to_numpy()
    col = wide.columns.get_loc(zone)
    origins = np.flatnonzero(wide.index.hour == 0)
    origins = origins[(origins >= HISTORY) & (origins + HORIZON <= len(wide))]
    own = np.lib.stride_tricks.sliding_window_view(values[:, col], HISTORY + HORIZON)[origins - HISTORY]
    ok = np.isfinite(own).all(axis=1)
    level = own[:, :HISTORY].mean(axis=1, keepdims=True)
    inputs = [own[:, :HISTORY] / level]
    if neighbours:
        window = np.lib.stride_tricks.sliding_window_view(values, HISTORY, axis=0)[origins - HISTORY]  # [N, Z, 168]
        ok &= np.isfinite(window).all(axis=(1, 2))
        recent = window[:, :, -NEIGHBOUR_HOURS:] / window.mean(axis=2, keepdims=True)
        inputs.append(recent.reshape(len(origins), -1))
    first = wide.index[origins]
    inputs.append(target_day_calendar(first, holiday_dates))
    x = np.concatenate(inputs, axis=1)
    return {"x": x[ok], "y": (own[:, HISTORY:] / level)[ok], "level": level[ok, 0], "first": first[ok]}


def ridge_frame(name: str, wide: pd.DataFrame, periods: dict, holiday_dates: np.ndarray, *,
                neighbours: bool, since: pd.Timestamp | None) -> pd.DataFrame:
    """Backtest rows (zone, cutoff, step, name, name-q0.1/0.5/0.9) of one ridge variant on the test origins."""
    frames = []
    for zone, (val_start, test_start) in periods.items():
        d = design(wide, zone, holiday_dates, neighbours=neighbours)
        last_target = d["first"] + pd.Timedelta(hours=HORIZON - 1)
        train = last_target < val_start
        if since is not None:
            train &= d["first"] >= since
        val = (d["first"] >= val_start) & (last_target < test_start)
        test = d["first"] >= test_start
        weights = fit_ridge(d["x"][train], d["y"][train], RIDGE_PENALTY)
        residual = d["y"][val] - predict_ridge(weights, d["x"][val])
        low, high = np.quantile(residual, [0.1, 0.9], axis=0)  # [H] each, in level units
        point = predict_ridge(weights, d["x"][test])
        scale = d["level"][test][:, None]
        n = int(test.sum())
        frames.append(pd.DataFrame({
            "zone": zone,
            "cutoff": np.repeat(d["first"][test].to_numpy(), HORIZON),
            "step": np.tile(np.arange(1, HORIZON + 1), n),
            name: (point * scale).ravel(),
            f"{name}-q0.1": ((point + low) * scale).ravel(),
            f"{name}-q0.5": (point * scale).ravel(),
            f"{name}-q0.9": ((point + high) * scale).ravel(),
        }))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with", dest="bundles", nargs="*", default=[], type=Path,
                        help="trained forecaster bundles to score on the same rows")
    args = parser.parse_args()

    import torch

    from models.bundle import load_bundle
    from models.data import clean, read_table
    from models.features import _holiday_dates
    from models.series import BUNDLED_PJM
    from training.config import load_config
    from training.evaluate import backtest, score
    from training.pipeline import prepare_data, train

    torch.set_num_threads(2)
    cfg = load_config(model="linear")
    split, _, _ = prepare_data(cfg, None)
    series, _ = clean(read_table(BUNDLED_PJM), max_interpolate_hours=cfg.data.max_interpolate_hours)
    wide = wide_loads(series)
    periods = split_periods(split)
    holiday_dates = _holiday_dates("US", wide.index.year.min(), wide.index.year.max() + 1)

    # the baselines as accuracy.py makes them (the naive's intervals calibrated on validation, as trained)
    with tempfile.TemporaryDirectory() as tmp:
        baselines = [train(load_config(model=model, **{"model.horizon": HORIZON}), None, Path(tmp) / model,
                           progress=False, evaluate=False, log=lambda _: None)
                     for model in ("seasonal_naive", "linear")]
    frame, names = None, []
    for bundle in [*baselines, *map(load_bundle, args.bundles)]:
        part = backtest(bundle, split.test, horizon=HORIZON)
        frame = part if frame is None else frame.merge(part.drop(columns=["y", "ds"]), on=["zone", "cutoff", "step"])
        names.append(bundle.name)
    rows_before = len(frame)
    for name, neighbours, since in (("ridge_zone", False, None), ("ridge_zone_since_2013", False, SINCE_2013),
                                    ("ridge_region", True, SINCE_2013)):
        part = ridge_frame(name, wide, periods, holiday_dates, neighbours=neighbours, since=since)
        frame = frame.merge(part, on=["zone", "cutoff", "step"], how="left")
        if frame[name].isna().any():
            raise SystemExit(f"{name} has no forecast for {int(frame[name].isna().sum())} protocol rows")
        names.append(name)
    assert len(frame) == rows_before
    results = score(frame, names, split.train)
    overall = results["summary"]
    ratios = {name: {"vs_linear": round(m["mae"] / overall["linear"]["mae"], 4),
                     "vs_seasonal_naive": round(m["mae"] / overall["seasonal_naive_168"]["mae"], 4)}
              for name, m in overall.items()}
    config = {
        "protocol": "as accuracy_pjm: per zone test = last 365 days, validation = 365 days before; origins "
                    "daily at 00:00; horizon 48 h; every model on the same rows",
        "origins": int(frame.groupby(["zone", "cutoff"]).ngroups),
        "ridge": {"history_hours": HISTORY, "neighbour_hours": NEIGHBOUR_HOURS, "penalty": RIDGE_PENALTY,
                  "fitted_on": "00:00 origins whose 48 h end before the validation period",
                  "since_2013": str(SINCE_2013.date())},
        "bundles": [str(p) for p in args.bundles],
    }
    path = write_result("pjm_headroom", config, results["rows"], {"overall": overall, "mae_ratios": ratios})
    for name in names:
        m = overall[name]
        print(f"{name:>24}: MAE {m['mae']:7.1f}  MAPE {m['mape']:5.2f} %  coverage {m['coverage_80']:.3f}  "
              f"{ratios[name]['vs_linear']:.3f}x linear  {ratios[name]['vs_seasonal_naive']:.3f}x naive")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
