"""A replica's view of the store: each zone's recent readings, kept current by the store's watermark.

Every forecast first asks the store for its watermark (one indexed single-row read). When it moved, the
replica reads only the rows written since (`Store.changes`) and applies them, so a reading acknowledged
to any replica is in the next forecast of every replica, and a quiet store costs one tiny query. Each
zone keeps a fixed number of hours before its latest reading (`tail_hours`), so a replica's memory does
not grow with the store; forecasts issued further back read their window from the store (cached per
watermark).

The model's time axis is the region's wall clock (hourly, naive), as the model was trained: each zone's
UTC readings are averaged to hours, put on the wall clock (the repeated hour when daylight saving ends
is the mean of its two; the skipped one is a gap), and interior gaps of up to 6 h are filled by the
ingest repair rule (`models.data.fill_short_gaps`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.data import MAX_INTERPOLATE_HOURS, fill_short_gaps
from models.hourly import ZoneTail, wall_clock  # the store's readings as wall-clock hours
from models.inputs import LRU
from models.store import Store, ZoneSpec

HOUR_S = 3600


@dataclass
class HourlyView:
    """A zone's load on its region's hourly wall-clock grid: `values[i]` is hour `start + i` (NaN: missing)."""

    start: pd.Timestamp  # naive wall-clock hour
    values: np.ndarray  # float32 [T], short gaps filled
    last_reading: int | None  # UTC seconds of the latest reading (None: none held)

    def __post_init__(self) -> None:
        held = np.flatnonzero(np.isfinite(self.values))
        # the latest wall-clock hour with a value, and the latest reading as ISO 8601 (every forecast from
        # now asks for both, so once here)
        self.last: pd.Timestamp | None = self.start + pd.Timedelta(hours=int(held[-1])) if len(held) else None
        self.last_reading_iso = ("" if self.last_reading is None else
                                 pd.Timestamp(self.last_reading, unit="s", tz="UTC").isoformat())

    def window(self, end: pd.Timestamp, length: int) -> np.ndarray:
        """The `length` hours before `end` (NaN where missing or outside what is held)."""
        stop = (end - self.start) // pd.Timedelta(hours=1)
        out = np.full(length, np.nan, np.float32)
        lo, hi = max(stop - length, 0), min(stop, len(self.values))
        if hi > lo:
            out[lo - (stop - length) : hi - (stop - length)] = self.values[lo:hi]
        return out


class LiveHistory:
    """The store's recent readings of every zone, as a replica needs them to forecast from now."""

    def __init__(self, store: Store, tail_hours: int) -> None:
        self.store, self.tail_hours = store, tail_hours
        self.seen = -1  # the watermark applied
        self.specs: dict[str, ZoneSpec] = {}
        self._tails: dict[str, ZoneTail] = {}
        self._views: dict[str, HourlyView] = {}  # per zone, rebuilt when its tail changed
        self._past = LRU(64)  # (zones, end, watermark) -> views read from the store for older issue times
        self._lock = threading.Lock()
        self.refresh()

    @property
    def regions(self) -> dict[str, list[str]]:
        """Region -> its zones, as registered."""
        out: dict[str, list[str]] = {}
        for zone, spec in sorted(self.specs.items()):
            out.setdefault(spec.region, []).append(zone)
        return out

    def time_zone(self, zones: Iterable[str]) -> str:
        return next((self.specs[z].time_zone for z in zones if z in self.specs), "UTC")

    def refresh(self) -> int:
        """Catch up with the store; returns the watermark now applied."""
        watermark = self.store.watermark()
        if watermark == self.seen:
            return watermark
        with self._lock:
            if watermark <= self.seen:
                return self.seen
            if self.seen < 0:  # first load: every zone's latest hours
                self.specs = self.store.zones()
                rows = self.store.latest(list(self.specs), self.tail_hours * HOUR_S)
            else:
                rows = self.store.changes(self.seen, watermark)
            names = rows["zone"].to_numpy()
            if self.seen >= 0 and (not len(names) or not set(np.unique(names).tolist()) <= self.specs.keys()):
                # new zones (a registered zone's spec never changes), or a commit that wrote no readings: a
                # registration alone, or zones removed
                self.specs = self.store.zones()
                for gone in set(self._tails) - self.specs.keys():
                    del self._tails[gone]
                    self._views.pop(gone, None)
            for zone, spec in self.specs.items():
                if zone not in self._tails:
                    self._tails[zone] = ZoneTail(spec, self.tail_hours)
            # rows come sorted by zone: apply each zone's run (a feed batch touches every zone: no groupby)
            ts, values = rows["ts"].to_numpy(), rows["value"].to_numpy()
            bounds = np.flatnonzero(np.r_[True, names[1:] != names[:-1], True]) if len(names) else []
            for a, b in zip(bounds[:-1], bounds[1:]):
                zone = names[a]
                if zone in self._tails:
                    self._tails[zone].apply(ts[a:b], values[a:b])
                    self._views.pop(zone, None)
            self.seen = watermark
        return watermark

    def view(self, zone: str) -> HourlyView:
        """The zone's recent load on its region's wall clock (short gaps filled)."""
        view = self._views.get(zone)
        if view is None:
            tail = self._tails[zone]
            if tail.start is None:
                view = HourlyView(pd.Timestamp(0, unit="s"), np.empty(0, np.float32), None)
            else:
                first, values = wall_clock(*tail.hourly(), tail.spec.time_zone)
                view = HourlyView(first, fill_short_gaps(values).astype(np.float32), tail.last)
            self._views[zone] = view
        return view

    def views(self, zones: Sequence[str], end: pd.Timestamp | None = None, hours: int = 0) -> list[HourlyView]:
        """Each zone's view; with `end`, one that holds the `hours` before it (from the store, when they are
        older than the replica keeps)."""
        recent = [self.view(z) for z in zones]
        if end is None or all(v.last_reading is not None and v.start + pd.Timedelta(hours=hours) <= end
                              for v in recent):
            return recent
        key = (tuple(zones), end, hours, self.seen)
        return self._past.get_or_make(key, lambda: self._read_past(zones, end, hours))

    def _read_past(self, zones: Sequence[str], end: pd.Timestamp, hours: int) -> list[HourlyView]:
        tz = self.time_zone(zones)
        margin = pd.Timedelta(hours=MAX_INTERPOLATE_HOURS + 26)  # wall clock vs UTC, and a gap at the edges
        lo = (end - pd.Timedelta(hours=hours) - margin).tz_localize(tz, ambiguous=True, nonexistent="shift_forward")
        hi = (end + margin).tz_localize(tz, ambiguous=True, nonexistent="shift_forward")
        rows = self.store.readings(zones, int(lo.timestamp()), int(hi.timestamp()))
        span = (hi - lo) // pd.Timedelta(hours=1) + 1
        names, ts, values = rows["zone"].to_numpy(), rows["ts"].to_numpy(), rows["value"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, names[1:] != names[:-1], True]) if len(names) else []
        runs = {names[a]: (a, b) for a, b in zip(bounds[:-1], bounds[1:])}  # rows come sorted by zone
        out = []
        for zone in zones:
            a, b = runs.get(zone, (0, 0))
            tail = ZoneTail(self.specs[zone], span)
            tail.apply(ts[a:b], values[a:b])
            if tail.start is None:
                out.append(HourlyView(end, np.empty(0, np.float32), None))
                continue
            first, hourly = wall_clock(*tail.hourly(), tail.spec.time_zone)
            out.append(HourlyView(first, fill_short_gaps(hourly).astype(np.float32), tail.last))
        return out
