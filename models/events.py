"""Anomaly events in the store: what the scans on arrival found (`serving.scans`), kept with a stable id.

    anomaly_events  id, zone, region, kind, start_ts .. end_ts (UTC seconds, hours, inclusive), open,
                    severity, detail, opened_at, updated_at
    scan_state      per zone: the last hour the scans have read

Built by migration 0003 (models/migrations), never by create_all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from models.store import MAX_ZONE_NAME, Store, metadata, zones_table

EVENT_KINDS = ("detector", "flat_line", "zero_readings")

events_table = sa.Table(
    "anomaly_events", metadata,
    sa.Column("id", sa.String(160), primary_key=True),
    sa.Column("zone", sa.String(MAX_ZONE_NAME), sa.ForeignKey("zones.zone"), nullable=False),
    sa.Column("region", sa.String(MAX_ZONE_NAME), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("start_ts", sa.BigInteger, nullable=False),
    sa.Column("end_ts", sa.BigInteger, nullable=False),
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Column("severity", sa.Float(53), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
scan_state_table = sa.Table(
    "scan_state", metadata,
    sa.Column("zone", sa.String(MAX_ZONE_NAME), sa.ForeignKey("zones.zone"), primary_key=True),
    sa.Column("scanned_ts", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


# ---------------------------------------------------------------------------------------------- records

HOUR_S = 3600
KIND_DETECTOR, KIND_FLAT, KIND_ZERO = EVENT_KINDS


@dataclass
class StoredEvent:
    """One row of anomaly_events."""

    id: str
    zone: str
    region: str
    kind: str
    start_ts: int  # first anomalous hour, UTC seconds
    end_ts: int  # last anomalous hour (inclusive; the latest so far while open)
    open: bool
    severity: float
    detail: str
    opened_at: float
    updated_at: float

    @property
    def hours(self) -> int:
        return (self.end_ts - self.start_ts) // HOUR_S + 1


@dataclass
class Finding:
    """An anomaly a scan found in a zone's hours: what becomes (or continues) a stored event."""

    kind: str
    start_ts: int
    end_ts: int
    severity: float  # detector: score / threshold; the rules: hours affected
    detail: str


@dataclass
class ZoneScan:
    """What one scan found in one zone's new hours, to be written by `apply_scan`."""

    zone: str
    region: str
    based_on: int | None  # scan_state.scanned_ts the scan started from (None: never scanned)
    first: int  # first new hour scanned (UTC seconds)
    last: int  # last new hour scanned: the zone's new scanned_ts
    findings: list[Finding] = field(default_factory=list)
    # kinds whose events this scan can close, each with the normal hours after an event's end that close it
    close_after: dict[str, int] = field(default_factory=dict)
    # the latest hour among the new ones with a valid reading (a zero_readings event closes after it)
    valid_until: int | None = None
    # detector: flagged hours at most this far apart (h) continue one event
    merge_gap: dict[str, int] = field(default_factory=dict)


@dataclass
class ScanCounts:
    """What one scan did (`scan_arrivals` returns it as a dict)."""

    zones: int = 0  # zones with new hours scanned
    hours: int = 0  # zone-hours scanned
    opened: int = 0
    updated: int = 0
    closed: int = 0
    skipped: int = 0  # zones another scan had already taken (two scans at once)
    detector_zones: int = 0  # zones the detector scored (enough history, a detector configured)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def event_id(zone: str, kind: str, start_ts: int) -> str:
    """The event's stable id: its zone, kind and first hour (ISO 8601, UTC)."""
    return f"{zone}:{kind}:{iso_hour(start_ts)}"


def iso_hour(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(row: Any) -> StoredEvent:
    return StoredEvent(row.id, row.zone, row.region, row.kind, int(row.start_ts), int(row.end_ts), bool(row.open),
                       float(row.severity), row.detail, float(row.opened_at), float(row.updated_at))


# ---------------------------------------------------------------------------------------------- reads

def scan_states(store: Store) -> dict[str, int]:
    """zone -> the last hour the scans have read (UTC seconds)."""
    with store.reader.connect() as conn:
        return {r.zone: int(r.scanned_ts) for r in conn.execute(
            sa.select(scan_state_table.c.zone, scan_state_table.c.scanned_ts))}


def zone_events(store: Store, zones: Sequence[str], since_ts: int, kinds: Sequence[str] = EVENT_KINDS
                ) -> list[StoredEvent]:
    """The `zones`' events of `kinds` still open or ending at or after `since_ts`."""
    if not zones:
        return []
    e = events_table
    with store.reader.connect() as conn:
        rows = conn.execute(sa.select(e).where(e.c.zone.in_(list(zones)), e.c.kind.in_(list(kinds)),
                                               sa.or_(e.c.open, e.c.end_ts >= int(since_ts)))).all()
    return [_event(r) for r in rows]


def list_events(store: Store, region: str, zone: str = "", since_ts: int | None = None, open_only: bool = False,
                limit: int = 100) -> list[StoredEvent]:
    """A region's (or one zone's) events, the most recently seen first: open ones and those whose last hour
    ends after `since_ts` (None: all), only open ones with `open_only`, at most `limit`."""
    e = events_table
    query = sa.select(e).where(e.c.region == region)
    if zone:
        query = query.where(e.c.zone == zone)
    if open_only:
        query = query.where(e.c.open)
    if since_ts is not None:
        query = query.where(sa.or_(e.c.open, e.c.end_ts > int(since_ts) - HOUR_S))
    query = query.order_by(e.c.end_ts.desc(), e.c.updated_at.desc(), e.c.id).limit(int(limit))
    with store.reader.connect() as conn:
        return [_event(r) for r in conn.execute(query)]


# ---------------------------------------------------------------------------------------------- writes

def apply_scan(store: Store, scans: Sequence[ZoneScan], now: float | None = None) -> ScanCounts:
    """Write what a scan found, in one transaction (serialized with every other writer): per zone, each
    finding continues the event of its kind that it overlaps or follows within the kind's merge gap (its
    end, severity and detail updated; a closed one reopened) or opens a new event with a stable id; open
    events of the kinds the scan judged are closed once the zone had enough normal hours after their end
    (`ZoneScan.close_after`; zero readings: a valid reading after them); scan_state moves to the zone's
    last hour scanned. A zone whose scan_state changed since the scan read it (another scan took those
    hours), or that was removed, is left alone: two scans at once write once."""
    now = time.time() if now is None else now
    counts = ScanCounts()
    if not scans:
        return counts
    e, s = events_table, scan_state_table
    zones = [z.zone for z in scans]
    with store.engine.begin() as conn:
        store._serialize(conn)
        state = {r.zone: int(r.scanned_ts) for r in conn.execute(
            sa.select(s.c.zone, s.c.scanned_ts).where(s.c.zone.in_(zones)))}
        present = set(conn.execute(sa.select(zones_table.c.zone).where(zones_table.c.zone.in_(zones))).scalars())
        lo = min(min([f.start_ts for f in z.findings], default=z.first) for z in scans) - 8 * 24 * HOUR_S
        held: dict[str, list[StoredEvent]] = {}
        for row in conn.execute(sa.select(e).where(e.c.zone.in_(zones), sa.or_(e.c.open, e.c.end_ts >= lo))):
            held.setdefault(row.zone, []).append(_event(row))
        inserts, updates, states = [], [], []
        for z in scans:
            if state.get(z.zone) != z.based_on or z.zone not in present:  # scanned meanwhile, or removed
                counts.skipped += 1
                continue
            counts.zones += 1
            counts.hours += (z.last - z.first) // HOUR_S + 1
            mine = held.get(z.zone, [])
            touched: dict[str, StoredEvent] = {}  # id -> event changed by this scan
            for f in sorted(z.findings, key=lambda f: (f.start_ts, f.kind)):
                gap = z.merge_gap.get(f.kind, 1) * HOUR_S
                near = [ev for ev in mine if ev.kind == f.kind and ev.start_ts <= f.end_ts + gap
                        and ev.end_ts >= f.start_ts - gap]
                if near:
                    ev = max(near, key=lambda ev: (ev.open, ev.end_ts))
                    changed = not ev.open or f.end_ts > ev.end_ts or f.severity > ev.severity
                    if changed:
                        ev.end_ts = max(ev.end_ts, f.end_ts)
                        ev.open = True
                        if f.kind == KIND_DETECTOR:
                            if f.severity >= ev.severity:
                                ev.severity, ev.detail = f.severity, f.detail
                        else:
                            ev.severity, ev.detail = float(ev.hours), f.detail
                        ev.updated_at = now
                        if ev.id not in touched and all(ev is not i for i in inserts):
                            counts.updated += 1
                        touched[ev.id] = ev
                    continue
                ev = StoredEvent(event_id(z.zone, f.kind, f.start_ts), z.zone, z.region, f.kind, f.start_ts,
                                 f.end_ts, True, float(f.severity), f.detail, now, now)
                mine.append(ev)
                inserts.append(ev)
                counts.opened += 1
            for ev in mine:
                if not ev.open or ev.kind not in z.close_after:
                    continue
                if ev.kind == KIND_ZERO:
                    back = z.valid_until is not None and z.valid_until > ev.end_ts
                else:
                    back = z.last - ev.end_ts >= z.close_after[ev.kind] * HOUR_S
                if back:
                    ev.open, ev.updated_at = False, now
                    touched[ev.id] = ev
                    counts.closed += 1
            inserted = {ev.id for ev in inserts}
            updates += [ev for ev in touched.values() if ev.id not in inserted]
            states.append({"zone": z.zone, "scanned_ts": z.last, "updated_at": now, "known": z.zone in state})
        _write_events(conn, inserts, updates)
        new_states = [{k: v for k, v in r.items() if k != "known"} for r in states if not r["known"]]
        old_states = [{"b_zone": r["zone"], "b_scanned": r["scanned_ts"], "b_at": r["updated_at"]}
                      for r in states if r["known"]]
        if new_states:
            conn.execute(s.insert(), new_states)
        if old_states:
            conn.execute(s.update().where(s.c.zone == sa.bindparam("b_zone")).values(
                scanned_ts=sa.bindparam("b_scanned"), updated_at=sa.bindparam("b_at")), old_states)
    return counts


def _write_events(conn: sa.Connection, inserts: Sequence[StoredEvent], updates: Sequence[StoredEvent]) -> None:
    e = events_table
    if inserts:
        conn.execute(e.insert(), [asdict(ev) for ev in inserts])
    if updates:
        conn.execute(e.update().where(e.c.id == sa.bindparam("b_id")).values(
            end_ts=sa.bindparam("b_end"), open=sa.bindparam("b_open"), severity=sa.bindparam("b_severity"),
            detail=sa.bindparam("b_detail"), updated_at=sa.bindparam("b_updated")),
            [{"b_id": ev.id, "b_end": ev.end_ts, "b_open": ev.open, "b_severity": ev.severity,
              "b_detail": ev.detail, "b_updated": ev.updated_at} for ev in updates])


def record_zero_readings(store: Store, zeros: Mapping[str, Sequence[tuple[int, float]]],
                         now: float | None = None) -> ScanCounts:
    """Open or extend a zone's zero_readings event for readings of zero or less that the ingest refused
    (`zeros`: zone -> (UTC seconds, value) of each), in one serialized transaction. An open event
    continues unless the zone sent a valid reading after it (then it is closed and a new one opened);
    the same zeros sent again change nothing."""
    now = time.time() if now is None else now
    counts = ScanCounts()
    zones = sorted(z for z, rows in zeros.items() if rows)
    if not zones:
        return counts
    e = events_table
    with store.engine.begin() as conn:
        store._serialize(conn)
        info = {r.zone: r for r in conn.execute(sa.select(zones_table.c.zone, zones_table.c.region,
                                                          zones_table.c.last_ts).where(zones_table.c.zone.in_(zones)))}
        open_events = {r.zone: _event(r) for r in conn.execute(sa.select(e).where(
            e.c.zone.in_(zones), e.c.kind == KIND_ZERO, e.c.open))}
        inserts, updates = [], []
        for zone in zones:
            if zone not in info:
                continue
            rows = sorted(zeros[zone])
            first = min(ts for ts, _ in rows) // HOUR_S * HOUR_S
            last = max(ts for ts, _ in rows) // HOUR_S * HOUR_S
            latest_value = rows[-1][1]
            last_valid = info[zone].last_ts
            ev = open_events.get(zone)
            if ev is not None and last_valid is not None and ev.end_ts < last_valid < first:
                ev.open, ev.updated_at = False, now  # the meter read normally in between: a new episode
                updates.append(ev)
                counts.closed += 1
                ev = None
            if ev is None:
                known = conn.execute(sa.select(e).where(e.c.id == event_id(zone, KIND_ZERO, first))).first()
                if known is not None:  # these zeros again (a resend), after the event closed
                    ev = _event(known)
                    if last <= ev.end_ts:
                        continue
                    ev.open = True
                else:
                    ev = StoredEvent(event_id(zone, KIND_ZERO, first), zone, info[zone].region, KIND_ZERO, first,
                                     last, True, 0.0, "", now, now)
                    ev.severity, ev.detail = float(ev.hours), _zero_detail(ev, latest_value)
                    inserts.append(ev)
                    counts.opened += 1
                    continue
            if last <= ev.end_ts and ev.open and ev not in updates:
                continue  # nothing new
            ev.end_ts = max(ev.end_ts, last)
            ev.severity, ev.detail, ev.updated_at = float(ev.hours), _zero_detail(ev, latest_value), now
            if ev not in updates:
                updates.append(ev)
            counts.updated += 1
        _write_events(conn, inserts, updates)
    return counts


def _zero_detail(ev: StoredEvent, latest: float) -> str:
    return f"readings of zero or less for {ev.hours} h (latest {latest:g} MW at {iso_hour(ev.end_ts)})"


def forget_zones(conn: sa.Connection, zones: Sequence[str]) -> None:
    """Delete the events and scan progress of `zones` (before the zones themselves: both refer to them)."""
    if zones:
        conn.execute(events_table.delete().where(events_table.c.zone.in_(list(zones))))
        conn.execute(scan_state_table.delete().where(scan_state_table.c.zone.in_(list(zones))))
