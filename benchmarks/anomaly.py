"""Anomaly detection benchmark: the autoencoder against baselines on labelled anomalies, in one run.

    python benchmarks/anomaly.py [--model DIR] [--forecaster DIR]   -> benchmarks/results/anomaly.json

Data: the five bundled PJM zones, split as for training (each zone's last 365 days are the test year,
the 365 before it the validation year). Every detector is calibrated on the untouched validation year
under the same rule (thresholds scaled until at most `--max-false-alarms` events per zone-month are
found there) and then evaluated on the test year (`training.anomalies.evaluate`):

- false alarms: events on the untouched test year, per zone and month;
- all kinds: every anomaly kind planted together (3 of each per zone), event precision / recall / F1
  with overlap matching and no point adjustment, PR-AUC of the hourly scores, detection delay;
- per kind: that kind alone planted (6 per zone), the same metrics.

Detectors: the autoencoder (`energyopt train --model autoencoder`, trained here unless --model is
given), the forecast-residual detector (our LSTM forecaster's day-ahead median as the expectation,
scored like the autoencoder), and baselines: rolling z-score, seasonal-naive residual (same scoring as
the autoencoder, last week's value as the expectation), Isolation Forest (scikit-learn) on hourly
features, and PyOD's AutoEncoder on daily windows when PyOD is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import demo_forecaster, write_result
from models.anomaly import Event, _flagged_runs, calibrate, find_events, residual_features
from models.autoencoder import WEEK, detect_series, detector_of
from models.bundle import ForecasterBundle, load_bundle
from models.data import Series
from training.anomalies import ANOMALY_TYPES, KINDS, evaluate
from training.config import load_config
from training.pipeline import prepare_data, train

SEED = 2024
MERGE_GAP = 6
Detect = Callable[[np.ndarray, pd.DatetimeIndex, str], tuple[np.ndarray, list[Event]]]


# ---------------------------------------------------------------------------------------------- detectors

def forecast_expected(bundle: ForecasterBundle, load: np.ndarray, timestamps: pd.DatetimeIndex, *, horizon: int = 24,
                      origin_hour: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """What a forecaster bundle expected for each hour: median forecasts issued daily at `origin_hour`
    for the next `horizon` hours from the observed history (anomalies included, as in operation).

    Returns expected [T] (NaN where no forecast covers the hour) and the level [T] (mean of each
    forecast's history window) that relative residuals are taken against.
    """
    load = np.asarray(load, dtype=np.float32)
    length = bundle.input_length
    origins = np.flatnonzero(timestamps.hour == origin_hour)
    origins = origins[(origins >= length) & (origins < len(load))]
    expected = np.full(len(load), np.nan, np.float32)
    level = np.full(len(load), np.nan, np.float32)
    if not len(origins):
        return expected, level
    histories = np.stack([load[o - length : o] for o in origins])
    q = bundle.predict(histories, timestamps[origins - 1], horizon)
    median = q[:, :, bundle.model.median_index]
    for o, m, h in zip(origins, median, histories):
        n = min(horizon, len(load) - o)
        expected[o : o + n], level[o : o + n] = m[:n], max(float(h.mean()), 1e-3)
    return expected, level


def residual_detector(expect: Callable[[np.ndarray, pd.DatetimeIndex], tuple[np.ndarray, np.ndarray]],
                      val: list[Series], rate: float) -> Detect:
    """A detector from an expectation (expected, level) scored like the autoencoder: the same
    multi-scale components, per-zone scales and calibration on the validation year."""
    residuals: dict[str, list[np.ndarray]] = {}
    for s in val:
        expected, level = expect(s.load, s.timestamps)
        r = residual_features(s.load, expected, level)
        r[: int(s.timestamps.searchsorted(s.target_start))] = np.nan
        residuals.setdefault(s.zone, []).append(r)
    cal = calibrate(residuals, merge_gap_hours=MERGE_GAP, max_false_alarms_per_month=rate)

    def detect(load: np.ndarray, stamps: pd.DatetimeIndex, zone: str) -> tuple[np.ndarray, list[Event]]:
        expected, level = expect(load, stamps)
        score, _, events = cal.events(zone, stamps, residual_features(load, expected, level), expected, load)
        return score, events

    return detect


def score_detector(raw_score: Callable[[np.ndarray, pd.DatetimeIndex, str], np.ndarray], val: list[Series],
                   rate: float) -> Detect:
    """A detector from a raw anomaly score: one threshold, the lowest at which the validation year has
    at most `rate` events per zone-month (the rule the autoencoder's calibration follows)."""
    scores = []
    for s in val:
        sc = np.asarray(raw_score(s.load, s.timestamps, s.zone), np.float64).copy()
        sc[: int(s.timestamps.searchsorted(s.target_start))] = np.nan
        scores.append(sc)
    months = sum(np.isfinite(sc).sum() for sc in scores) / (24 * 365.25 / 12)
    pooled = np.concatenate([sc[np.isfinite(sc)] for sc in scores])
    candidates = np.quantile(pooled, 1 - np.logspace(-1, -5, 200))
    threshold = candidates[-1]
    for t in candidates:  # increasing: the first that meets the rate
        if sum(len(_flagged_runs(sc / t, MERGE_GAP)) for sc in scores) / months <= rate:
            threshold = t
            break

    def detect(load: np.ndarray, stamps: pd.DatetimeIndex, zone: str) -> tuple[np.ndarray, list[Event]]:
        score = np.asarray(raw_score(load, stamps, zone), np.float64) / threshold
        which = np.zeros(len(score), int)
        return score, find_events(zone, stamps, score, which, np.full(len(load), np.nan), load, MERGE_GAP)

    return detect


def rolling_zscore(load: np.ndarray, stamps: pd.DatetimeIndex, zone: str) -> np.ndarray:
    """|x - mean| / std over the trailing week (the hour itself excluded)."""
    x = pd.Series(load, dtype=np.float64)
    past = x.shift(1).rolling(WEEK, min_periods=WEEK)
    return ((x - past.mean()) / past.std().clip(lower=1e-6)).abs().to_numpy()


def seasonal_naive_expect(load: np.ndarray, stamps: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Expected = the same hour a week earlier; level = mean of the 4 weeks before."""
    x = pd.Series(load, dtype=np.float64)
    return x.shift(WEEK).to_numpy(), x.shift(1).rolling(4 * WEEK, min_periods=WEEK).mean().to_numpy()


def hourly_features(load: np.ndarray, stamps: pd.DatetimeIndex) -> np.ndarray:
    """Per hour: load against the trailing 4-week mean, changes over 1 h / 24 h / 168 h, the rolling
    24 h std, hour and weekday: what an Isolation Forest can judge an hour by."""
    x = pd.Series(load, dtype=np.float64)
    level = x.shift(1).rolling(4 * WEEK, min_periods=WEEK).mean()
    rel = x / level - 1
    feats = np.stack([rel, x.diff() / level, x.diff(24) / level, x.diff(WEEK) / level,
                      rel.rolling(24, min_periods=12).std(), np.sin(2 * np.pi * stamps.hour / 24),
                      np.cos(2 * np.pi * stamps.hour / 24), stamps.day_of_week / 6.0], axis=1)
    return feats


def isolation_forest(train_segments: list[Series], seed: int) -> Callable[..., np.ndarray]:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(seed)
    feats = np.concatenate([hourly_features(s.load, s.timestamps) for s in train_segments])
    feats = feats[np.isfinite(feats).all(axis=1)]
    sample = feats[rng.choice(len(feats), size=min(100_000, len(feats)), replace=False)]
    forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=1).fit(sample)

    def raw(load: np.ndarray, stamps: pd.DatetimeIndex, zone: str) -> np.ndarray:
        f = hourly_features(load, stamps)
        ok = np.isfinite(f).all(axis=1)
        out = np.full(len(load), np.nan)
        out[ok] = -forest.score_samples(f[ok])
        return out

    return raw


def day_windows(load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trailing 24 h windows [N, 24] relative to the 4-week level before them, and their end hours."""
    x = pd.Series(load, dtype=np.float64)
    level = x.shift(24).rolling(4 * WEEK, min_periods=WEEK).mean().to_numpy()
    ends = np.arange(24 + WEEK, len(load))
    windows = np.lib.stride_tricks.sliding_window_view(load.astype(np.float64), 24)[ends - 23]
    return windows / level[ends, None] - 1, ends


def pyod_autoencoder(train_segments: list[Series], seed: int) -> Callable[..., np.ndarray]:
    from pyod.models.auto_encoder import AutoEncoder

    rng = np.random.default_rng(seed)
    windows = np.concatenate([day_windows(s.load)[0] for s in train_segments])
    windows = windows[np.isfinite(windows).all(axis=1)]
    sample = windows[rng.choice(len(windows), size=min(40_000, len(windows)), replace=False)]
    model = AutoEncoder(hidden_neuron_list=[16, 4], epoch_num=10, batch_size=256, random_state=seed,
                        contamination=0.01, verbose=0).fit(sample)

    def raw(load: np.ndarray, stamps: pd.DatetimeIndex, zone: str) -> np.ndarray:
        w, ends = day_windows(load)
        ok = np.isfinite(w).all(axis=1)
        out = np.full(len(load), np.nan)
        out[ends[ok]] = model.decision_function(w[ok])
        return out

    return raw


def autoencoder_detector(bundle: Any) -> Detect:
    model, cal = detector_of(bundle)

    def detect(load: np.ndarray, stamps: pd.DatetimeIndex, zone: str) -> tuple[np.ndarray, list[Event]]:
        rec = detect_series(model, bundle.features, cal, load, stamps, zone)
        return rec.score, rec.events

    return detect


# ---------------------------------------------------------------------------------------------- run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Autoencoder bundle (default: train one).")
    parser.add_argument("--forecaster", type=Path, default=Path("runs/demo/model"),
                        help="Forecaster bundle for the forecast-residual detector (default: the demo's; "
                             "trained with configs/models/demo.yaml when missing).")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench/anomaly"))
    parser.add_argument("--seed", type=int, default=SEED,
                        help="Planting seed of the test-year anomalies (another seed: a held-out check).")
    parser.add_argument("--name", default="anomaly", help="Result name: benchmarks/results/<name>.json.")
    parser.add_argument("--max-false-alarms", type=float, default=None,
                        help="Calibration rule for every detector: events per zone-month allowed on the validation "
                             "year (default: the autoencoder config's detection.max_false_alarms_per_month).")
    args = parser.parse_args()
    if importlib.util.find_spec("sklearn") is None:  # before minutes of training, not after
        raise SystemExit("the Isolation Forest baseline needs scikit-learn: pip install -e '.[bench]'")
    with_pyod = importlib.util.find_spec("pyod") is not None
    if not with_pyod:
        print("PyOD is not installed: its autoencoder baseline is left out (pip install -e '.[bench]')")
    import torch

    torch.set_num_threads(2)
    cfg = load_config(model="autoencoder")
    rate = args.max_false_alarms or cfg.detection.max_false_alarms_per_month
    timings: dict[str, float] = {}

    started = time.perf_counter()
    if args.model is None:
        out = args.workdir / "autoencoder"
        bundle = train(cfg, None, out, progress=False, evaluate=False, log=lambda line: print(f"[autoencoder] {line}"))
        timings["autoencoder_train_s"] = round(time.perf_counter() - started, 1)
    else:
        bundle = load_bundle(args.model)
        timings["autoencoder_train_s"] = bundle.meta["training"]["seconds"]  # measured when it was trained
    forecaster, trained_s = demo_forecaster(args.forecaster)
    if trained_s is not None:
        timings["forecaster_train_s"] = trained_s

    split, _, _ = prepare_data(cfg, None)  # test and validation years with 4 weeks of reference before them
    train_segments = split.train
    detectors: dict[str, Callable[[], Detect]] = {
        "autoencoder": lambda: autoencoder_detector(bundle),
        "forecast_residual": lambda: residual_detector(
            lambda load, stamps: forecast_expected(forecaster, load, stamps), split.val, rate),
        "seasonal_naive_residual": lambda: residual_detector(seasonal_naive_expect, split.val, rate),
        "rolling_zscore": lambda: score_detector(rolling_zscore, split.val, rate),
        "isolation_forest": lambda: score_detector(isolation_forest(train_segments, SEED), split.val, rate),
    }
    if with_pyod:
        detectors["pyod_autoencoder"] = lambda: score_detector(pyod_autoencoder(train_segments, SEED), split.val,
                                                               rate)
    rows, results = [], {}
    for name, make in detectors.items():
        t0 = time.perf_counter()
        detect = make()
        t1 = time.perf_counter()
        res = evaluate(detect, split.test, seed=args.seed)
        t2 = time.perf_counter()
        results[name] = res
        s = res["summary"]
        print(f"{name}: F1 {s['f1']:.3f} (P {s['precision']:.3f}, R {s['recall']:.3f}), PR-AUC {s['pr_auc']:.3f}, "
              f"false alarms {s['false_alarms_per_zone_month']}/zone-month; per kind F1 "
              f"{ {k: v['f1'] for k, v in res['by_kind'].items()} } ({t2 - t1:.0f} s)")
        common = {"detector": name, "fit_s": round(t1 - t0, 1), "evaluate_s": round(t2 - t1, 1)}
        rows.append({**common, "anomaly_type": "all", **_metrics(s),
                     "false_alarms_per_zone_month": s["false_alarms_per_zone_month"],
                     "worst_zone_month_false_alarms": s["worst_zone_month_false_alarms"]})
        rows += [{**common, "anomaly_type": k, **_metrics(v)} for k, v in res["by_kind"].items()]

    ae = results["autoencoder"]
    baselines = {k: v["summary"]["f1"] for k, v in results.items() if k not in ("autoencoder", "forecast_residual")}
    best = max(baselines, key=baselines.get)
    per_kind = {k: v["f1"] for k, v in ae["by_kind"].items()}
    fa = ae["false_alarms"]
    summary = {
        "autoencoder_f1": ae["summary"]["f1"],
        "autoencoder_precision": ae["summary"]["precision"],
        "autoencoder_recall": ae["summary"]["recall"],
        "autoencoder_pr_auc": ae["summary"]["pr_auc"],
        "autoencoder_delay_median_h": ae["summary"]["delay_median_h"],
        "autoencoder_f1_by_type": per_kind,
        "autoencoder_min_type_f1": min(per_kind.values()),
        "forecast_residual_f1": results["forecast_residual"]["summary"]["f1"],
        "best_baseline": best,
        "best_baseline_f1": baselines[best],
        "f1_margin_over_best_baseline": round(ae["summary"]["f1"] - baselines[best], 4),
        "baseline_f1": baselines,
        "false_alarms_per_zone_month": fa["per_zone_month"],
        "worst_zone_month_false_alarms": fa["worst_zone_month"],
        "false_alarms_by_zone_month": fa["by_zone_month"],
        "must_show": {
            "f1_at_least_0.80": ae["summary"]["f1"] >= 0.80,
            "every_type_f1_at_least_0.6": min(per_kind.values()) >= 0.6,
            "at_least_0.10_above_best_baseline": ae["summary"]["f1"] - baselines[best] >= 0.10,
            "false_alarms_at_most_1_per_zone_month": fa["per_zone_month"] <= 1.0,
        },
        **timings,
    }
    config = {
        "data": "bundled PJM zones (AEP, COMED, DAYTON, DOM, EKPC); test year = each zone's last 365 days, "
                "validation year = the 365 before",
        "seed": args.seed, "merge_gap_hours": MERGE_GAP, "calibration_max_false_alarms_per_zone_month": rate,
        "protocol": {"all_kinds_per_zone": 3, "one_kind_per_zone": 6, "matching": "overlap, no point adjustment",
                     "margin_between_anomalies_h": 168},
        "anomaly_kinds": {k: {"hours": v.hours, "magnitude": v.magnitude, "what": v.doc} for k, v in KINDS.items()},
        "autoencoder": {"name": bundle.name, "version": bundle.version, "model": bundle.config.to_dict(),
                        "detector": bundle.meta.get("detector")},
        "forecaster": {"name": forecaster.name, "version": forecaster.version},
        "kinds": list(ANOMALY_TYPES),
    }
    path = write_result(args.name, config, rows, summary)
    print(f"wrote {path}")
    for k, v in summary["must_show"].items():
        print(f"  {k}: {'met' if v else 'NOT met'}")


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("precision", "recall", "f1", "pr_auc", "delay_median_h", "delay_mean_h", "events",
                              "labels", "found")}


if __name__ == "__main__":
    main()
