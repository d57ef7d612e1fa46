"""A zone's readings as hourly load on its wall clock: the one conversion that a serving replica's live
history (serving/live.py) and retraining on the store (training/retrain.py) both use.

Readings are averaged to UTC hours on the zone's own resolution grid (an hour missing any of its readings
is NaN), then put on the zone's wall clock, the time axis the models were trained on (naive hours): the
hour repeated when daylight saving ends is the mean of its two, the skipped one is a gap.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from models.store import ZoneSpec

HOUR_S = 3600


class ZoneTail:
    """The latest `hours` of one zone's readings, on its own resolution grid in UTC."""

    def __init__(self, spec: ZoneSpec, hours: int) -> None:
        self.spec = spec
        self.step = spec.resolution_s
        self.slots = hours * HOUR_S // self.step
        self.start: int | None = None  # UTC seconds of slot 0, aligned to the hour
        self.values = np.full(self.slots, np.nan)
        self.last: int | None = None

    def apply(self, ts: np.ndarray, values: np.ndarray) -> None:
        """Store readings (UTC seconds, MW); older than what the tail holds are ignored (the store has them)."""
        if not len(ts):
            return
        newest = int(ts.max())
        if self.last is None or newest > self.last:
            end = newest - newest % HOUR_S + HOUR_S  # keep whole hours: the tail ends with the newest's hour
            start = end - self.slots * self.step
            if self.start is None:
                self.start = start
            elif start > self.start:
                shift = (start - self.start) // self.step
                kept = np.full(self.slots, np.nan)
                if shift < self.slots:
                    kept[: self.slots - shift] = self.values[shift:]
                self.values, self.start = kept, start
            self.last = newest
        at = (ts - self.start) // self.step
        inside = (at >= 0) & (at < self.slots)
        self.values[at[inside]] = values[inside]

    def hourly(self) -> tuple[int, np.ndarray]:
        """UTC seconds of the first hour and the hourly means (NaN for an hour missing any of its readings)."""
        per_hour = HOUR_S // self.step
        return self.start, self.values.reshape(-1, per_hour).mean(axis=1)


@functools.lru_cache(maxsize=256)
def _local_hours(first_hour: int, n: int, time_zone: str) -> np.ndarray:
    """The wall-clock hour (hours since the epoch, naive) of each of the `n` UTC hours from `first_hour`.
    Cached: the zones of a region share their tail's hours, so one feed hour costs one conversion."""
    utc = pd.to_datetime(first_hour + HOUR_S * np.arange(n, dtype=np.int64), unit="s", utc=True)
    local = utc.tz_convert(time_zone).tz_localize(None) if time_zone != "UTC" else utc.tz_localize(None)
    hours = np.asarray(local.as_unit("s").asi8 // HOUR_S, dtype=np.int64)
    hours.setflags(write=False)
    return hours


def wall_clock(first_hour: int, hourly: np.ndarray, time_zone: str) -> tuple[pd.Timestamp, np.ndarray]:
    """Hourly values from UTC hour `first_hour` on, as the zone's wall clock: (first local hour, values)."""
    hours = _local_hours(int(first_hour), len(hourly), time_zone)
    first = int(hours.min()) if len(hours) else first_hour // HOUR_S
    position = hours - first
    finite = np.isfinite(hourly)
    size = int(position.max()) + 1 if len(hours) else 0
    sums = np.bincount(position[finite], weights=hourly[finite], minlength=size)
    counts = np.bincount(position[finite], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return pd.Timestamp(first * HOUR_S, unit="s"), values
