"""Labelled evaluation data: a seeded injector that plants anomalies in real load series.

Real feeds rarely come with labels, so detectors are scored on real series with planted faults of the
kinds operators meet: meter spikes and dips, level shifts (a feeder moved between zones, a unit or scale
slip), zero readings during a communication dropout, a stuck meter repeating its last reading, a lost
daily pattern (values smeared to daily averages by an estimation fallback), and a slow calibration drift
that ends when the meter is fixed. Each kind has a duration and magnitude range (`KINDS`); positions
are drawn at random inside a period with a quiet margin between anomalies, so every anomaly is one
labelled event. Rows outside the planted intervals are returned exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from models.anomaly import Event
from models.data import Series
from models.series import LOAD, TIMESTAMP, ZONE, SeriesError


@dataclass(frozen=True)
class Kind:
    """One anomaly type: duration range (hours, inclusive) and magnitude range (meaning per kind)."""

    hours: tuple[int, int]
    magnitude: tuple[float, float]
    doc: str


KINDS: dict[str, Kind] = {
    "spike": Kind((1, 4), (0.4, 1.0), "load x (1 + m) for a few hours"),
    "dip": Kind((1, 4), (0.35, 0.6), "load x (1 - m) for a few hours"),
    "level_shift": Kind((48, 120), (0.2, 0.35), "load x (1 +- m) for days"),
    "dropout": Kind((2, 12), (0.0, 0.0), "zero readings"),
    "stuck": Kind((24, 72), (0.0, 0.0), "the last good reading repeated (flat line)"),
    "lost_pattern": Kind((48, 96), (0.0, 0.0), "each day's values replaced by that day's mean"),
    "drift": Kind((168, 504), (0.25, 0.45), "load x (1 +- m t/T): a ramp that snaps back when fixed"),
}
ANOMALY_TYPES = tuple(KINDS)


@dataclass(frozen=True)
class Anomaly:
    """A planted anomaly: hours start..end (inclusive) of `zone` were changed as `kind` says."""

    zone: str
    kind: str
    start: pd.Timestamp
    end: pd.Timestamp
    magnitude: float  # signed relative size (spike/dip/level_shift/drift); 0 for the others

    @property
    def hours(self) -> int:
        return int((self.end - self.start) // pd.Timedelta(hours=1)) + 1


def inject_anomalies(
    table: pd.DataFrame,
    *,
    seed: int,
    per_kind: int = 3,
    kinds: Sequence[str] = ANOMALY_TYPES,
    zones: Sequence[str] | None = None,
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
    margin_hours: int = 7 * 24,
) -> tuple[pd.DataFrame, list[Anomaly]]:
    """Plant `per_kind` anomalies of each kind in each zone's hours between `start` and `end`.

    `table` is a long frame (zone, timestamp, load_mw) with one row per hour (clean it first). Anomalies
    of one zone are at least `margin_hours` apart, so the history before each is normal and every
    anomaly is one event. The same seed gives the same anomalies; rows outside them are not touched.
    Returns a copy of the table with the anomalies in it, and their labels sorted by zone and start.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown anomaly kind(s) {unknown}; choose from {list(KINDS)}")
    rng = np.random.default_rng(seed)
    out = table.copy()
    labels: list[Anomaly] = []
    for zone in sorted(zones if zones is not None else out[ZONE].unique()):
        rows = np.flatnonzero((out[ZONE] == zone).to_numpy())
        if not len(rows):
            raise SeriesError(f"zone {zone!r} is not in the table")
        rows = rows[np.argsort(out[TIMESTAMP].to_numpy()[rows], kind="stable")]
        stamps = pd.DatetimeIndex(out[TIMESTAMP].to_numpy()[rows])
        if (np.diff(stamps.asi8) != 3_600_000_000).any():
            raise SeriesError(f"zone {zone!r}: the injector needs one row per hour without gaps; clean the data first")
        lo = 0 if start is None else int(stamps.searchsorted(pd.Timestamp(start)))
        hi = len(stamps) if end is None else int(stamps.searchsorted(pd.Timestamp(end), side="right"))
        load = out[LOAD].to_numpy(dtype=np.float64)[rows].copy()
        planted = _place(rng, [k for k in kinds for _ in range(per_kind)], lo, hi, margin_hours, stamps, zone)
        for kind, a, b in planted:
            magnitude = _plant(rng, kind, load, a, b, stamps)
            labels.append(Anomaly(zone, kind, stamps[a], stamps[b - 1], magnitude))
        out.loc[out.index[rows], LOAD] = load
    labels.sort(key=lambda x: (x.zone, x.start))
    return out, labels


def _place(rng: np.random.Generator, kinds: list[str], lo: int, hi: int, margin: int,
           stamps: pd.DatetimeIndex, zone: str) -> list[tuple[str, int, int]]:
    """Non-overlapping [a, b) intervals (row positions), at least `margin` apart, longest first."""
    out: list[tuple[str, int, int]] = []
    drawn = [(k, int(rng.integers(KINDS[k].hours[0], KINDS[k].hours[1] + 1))) for k in kinds]
    for kind, hours in sorted(drawn, key=lambda kh: -kh[1]):
        if kind == "lost_pattern":
            hours = max(24, hours // 24 * 24)  # whole days, starting at midnight
        for _ in range(1000):
            a = int(rng.integers(lo + margin, max(hi - hours - margin, lo + margin + 1)))
            if kind == "lost_pattern":
                a -= int(stamps[a].hour)
            b = a + hours
            if a >= lo + 1 and b <= hi and all(b + margin <= s or a >= e + margin for _, s, e in out):
                break
        else:
            raise ValueError(f"zone {zone!r}: cannot fit {len(kinds)} anomalies {margin} h apart in "
                             f"{hi - lo} hours; plant fewer or use a longer period")
        out.append((kind, a, b))
    return sorted(out, key=lambda x: x[1])


def _plant(rng: np.random.Generator, kind: str, load: np.ndarray, a: int, b: int,
           stamps: pd.DatetimeIndex) -> float:
    """Change load[a:b] in place as `kind` (checked by the caller) says; returns the signed magnitude used."""
    m = float(rng.uniform(*KINDS[kind].magnitude))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    signed = {"spike": m, "dip": -m, "level_shift": sign * m, "drift": sign * m}.get(kind, 0.0)
    if kind in ("spike", "dip", "level_shift"):
        load[a:b] *= 1.0 + signed
    elif kind == "drift":
        load[a:b] *= 1.0 + signed * (np.arange(1, b - a + 1) / (b - a))
    elif kind == "dropout":
        load[a:b] = 0.0
    elif kind == "stuck":
        load[a:b] = load[a - 1]
    elif kind == "lost_pattern":
        for day in range(a, b, 24):
            load[day : day + 24] = load[day : day + 24].mean()
    return signed


# ---------------------------------------------------------------------------------------------- evaluation
#
# A detector is any function (load [T], timestamps, zone) -> (hourly score [T], events), where a score
# above 1 is an alarm. Events are matched to labels by overlap only (no point adjustment: a predicted
# event counts once, whatever its length): a label is found when some event of its zone overlaps it, an
# event is a true alarm when it overlaps some label.

Detector = Callable[[np.ndarray, pd.DatetimeIndex, str], tuple[np.ndarray, list[Event]]]


@dataclass
class Scored:
    """A detector's output on one series, restricted to the evaluated period."""

    zone: str
    timestamps: pd.DatetimeIndex
    score: np.ndarray
    events: list[Event]


def plant_in_segments(segments: Sequence[Series], *, seed: int, kinds: Sequence[str] = ANOMALY_TYPES,
                      per_kind: int = 3) -> tuple[list[Series], list[Anomaly]]:
    """Copies of evaluation segments with anomalies planted after each one's `target_start` (the hours
    before it are the detector's reference and stay untouched), and the labels."""
    out, labels = [], []
    for i, s in enumerate(segments):
        frame = pd.DataFrame({ZONE: s.zone, TIMESTAMP: s.timestamps, LOAD: s.load.astype(np.float64)})
        planted, found = inject_anomalies(frame, seed=seed * 1000 + i, per_kind=per_kind, kinds=kinds,
                                          start=s.target_start)
        out.append(replace(s, load=planted[LOAD].to_numpy(np.float32)))
        labels += found
    return out, labels


def run_detector(detect: Detector, segments: Sequence[Series]) -> list[Scored]:
    """The detector on each segment; scores and events before `target_start` are dropped."""
    results = []
    for s in segments:
        score, events = detect(s.load, s.timestamps, s.zone)
        first = 0 if s.target_start is None else int(s.timestamps.searchsorted(s.target_start))
        score = np.asarray(score, dtype=np.float64).copy()
        score[:first] = np.nan
        kept = [e for e in events if e.end >= s.timestamps[first]]
        results.append(Scored(s.zone, s.timestamps, score, kept))
    return results


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) of hourly scores; NaN scores are
    treated as the lowest."""
    s = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(-s, kind="stable")
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def event_metrics(results: Sequence[Scored], labels: Sequence[Anomaly]) -> dict[str, Any]:
    """Event precision, recall and F1 (overlap matching), PR-AUC of the hourly scores, detection delay."""
    events = [e for r in results for e in r.events]
    hits = [[i for i, e in enumerate(events) if e.zone == a.zone and e.start <= a.end and e.end >= a.start]
            for a in labels]  # per label, the positions of the events that overlap it
    true_events = len(set().union(*hits))
    delays = [max(min(events[i].start for i in found) - a.start, pd.Timedelta(0)) / pd.Timedelta(hours=1)
              for a, found in zip(labels, hits, strict=True) if found]
    precision = true_events / len(events) if events else 0.0
    recall = len(delays) / len(labels) if labels else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    scores, positive = [], []
    for r in results:
        mask = np.zeros(len(r.timestamps), bool)
        for a in [a for a in labels if a.zone == r.zone]:
            mask[(r.timestamps >= a.start) & (r.timestamps <= a.end)] = True
        keep = np.isfinite(r.score) | mask
        scores.append(r.score[keep])
        positive.append(mask[keep])
    pr_auc = average_precision(np.concatenate(scores), np.concatenate(positive)) if scores else float("nan")
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "pr_auc": round(pr_auc, 4), "events": len(events), "labels": len(labels), "found": len(delays),
            "delay_median_h": float(np.median(delays)) if delays else None,
            "delay_mean_h": round(float(np.mean(delays)), 1) if delays else None}


def false_alarms(results: Sequence[Scored]) -> dict[str, Any]:
    """Events on untouched data: per zone and calendar month, and the mean per zone-month."""
    per: dict[str, dict[str, int]] = {}
    zone_months = 0.0
    for r in results:
        scored = r.timestamps[np.isfinite(r.score)]
        zone_months += len(scored) / (24 * 365.25 / 12)
        months = per.setdefault(r.zone, {})
        months.update({m: months.get(m, 0) for m in scored.to_period("M").unique().astype(str)})
        for e in r.events:
            months[str(e.start.to_period("M"))] = months.get(str(e.start.to_period("M")), 0) + 1
    total = sum(sum(m.values()) for m in per.values())
    return {"events": total, "zone_months": round(zone_months, 2),
            "per_zone_month": round(total / zone_months, 3) if zone_months else None,
            "worst_zone_month": max((v for m in per.values() for v in m.values()), default=0),
            "by_zone_month": per}


def evaluate(detect: Detector, segments: Sequence[Series], *, seed: int, per_kind: int = 3,
             per_kind_alone: int = 6, kinds: Sequence[str] = ANOMALY_TYPES) -> dict[str, Any]:
    """The issue's protocol on evaluation segments (hours after `target_start`): false alarms on the
    untouched data; event metrics with every kind planted together (`per_kind` of each per zone), and
    per kind with that kind alone planted (`per_kind_alone` per zone, so each kind has its own
    precision)."""
    untouched = false_alarms(run_detector(detect, segments))
    planted, labels = plant_in_segments(segments, seed=seed, kinds=kinds, per_kind=per_kind)
    overall = event_metrics(run_detector(detect, planted), labels)
    by_kind = {}
    for j, kind in enumerate(kinds):
        planted, labels = plant_in_segments(segments, seed=seed + 1 + j, kinds=[kind], per_kind=per_kind_alone)
        by_kind[kind] = event_metrics(run_detector(detect, planted), labels)
    return {"summary": {**overall, "false_alarms_per_zone_month": untouched["per_zone_month"],
                        "worst_zone_month_false_alarms": untouched["worst_zone_month"]},
            "by_kind": by_kind, "false_alarms": untouched}


def evaluate_detector(model: Any, features: Any, calibration: Any, segments: Sequence[Series], *,
                      seed: int = 0) -> dict[str, Any]:
    """`evaluate` for an autoencoder and its calibration (what training stores in metrics.json)."""
    from models.autoencoder import detect_series

    def detect(load: np.ndarray, timestamps: pd.DatetimeIndex, zone: str) -> tuple[np.ndarray, list[Event]]:
        rec = detect_series(model, features, calibration, load, timestamps, zone)
        return rec.score, rec.events

    return evaluate(detect, segments, seed=seed)
