"""The store: the single truth for readings (and, next, what the service issues), through SQLAlchemy Core.

An embedded SQLite file by default, PostgreSQL by URL. Replicas keep only caches of it (`serving.live`),
so any replica, restarted or new, answers the same, and whatever an ingest acknowledged survives a crash
of any process: a batch is one transaction, committed (SQLite: WAL with synchronous=FULL) before
`ingest` returns.

Tables (the schema is built by the Alembic migrations in `models/migrations/`, never by create_all):

    zones        zone, region, resolution_s, time_zone; last_ts and readings kept per commit (cheap status)
    readings     (zone, ts) -> value, received_at, revision (0 first, +1 per correction), version
    store_state  one row: the watermark, +1 with every commit that changes readings
    sources      files seeded into the store (fingerprint), so a restart does not read them again

Times are integer seconds since the Unix epoch, UTC (`ts`: the start of the reading's interval): the
same in both databases, compact, and cheap to compare. `readings.version` is the watermark of the commit
that last wrote the row: a replica holding the watermark W catches up with `changes(W)`. Commits take
their watermark by updating the one store_state row first, which serializes them, so versions become
visible in order (no commit with a smaller version can appear after a larger one was read).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event

from models.data import ABSURD_HIGH, ABSURD_LOW, read_table, zone_resolutions
from models.series import (
    BUNDLED,
    BUNDLED_PJM,
    DEFAULT_REGION,
    LOAD,
    RESOLUTIONS,
    TIMESTAMP,
    ZONE,
    bundled_region,
    shown,
)

DEFAULT_STORE = Path("runs/store.db")
BUNDLED_TIME_ZONE = BUNDLED[DEFAULT_REGION].time_zone  # the PJM files are published in Eastern prevailing time
MAX_FUTURE_S = 3600  # readings more than this ahead of the server's clock are refused
# No zone's load comes near this (every grid on Earth together draws ~3e6 MW): a larger reading is a unit or
# scaling error, refused even for a new zone with no median to judge it by (3.4e38 MW made forecasts of inf)
MAX_LOAD_MW = 1e7
REFERENCE_S = 7 * 24 * 3600  # the absurd-value rule compares with the median of a week of readings
DAY_S = 24 * 3600
REFERENCE_SAMPLES, REFERENCE_STEP_S = 24, 7 * 3600  # ...sampled: every 7 h meets each hour of the day once
MAX_ZONE_NAME = 64
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# an offset ends the time of day, not the date: "2020-01-01" is a naive date, not 2020-01 at offset -01
_HAS_OFFSET = re.compile(r"[T ]\d\d[\d:.,]*(?:Z|[+-]\d\d(?::?\d\d)?)$", re.IGNORECASE)

metadata = sa.MetaData()
zones_table = sa.Table(
    "zones", metadata,
    sa.Column("zone", sa.String(MAX_ZONE_NAME), primary_key=True),
    sa.Column("region", sa.String(MAX_ZONE_NAME), nullable=False, index=True),
    sa.Column("resolution_s", sa.Integer, nullable=False),
    sa.Column("time_zone", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_ts", sa.BigInteger),  # latest reading held (UTC seconds), NULL before the first
    sa.Column("readings", sa.BigInteger, nullable=False, server_default="0"),
    # the absurd-value rule's reference: the zone's median over the week before this day (UTC seconds of
    # its midnight), kept once it is known so that a live batch does not read the week again
    sa.Column("reference_day", sa.BigInteger),
    sa.Column("reference_median", sa.Float(53)),
)
readings_table = sa.Table(
    "readings", metadata,
    sa.Column("zone", sa.String(MAX_ZONE_NAME), sa.ForeignKey("zones.zone"), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, index=True),
)
state_table = sa.Table(
    "store_state", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("watermark", sa.BigInteger, nullable=False),
)
sources_table = sa.Table(
    "sources", metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("ingested_at", sa.Float, nullable=False),
)


class StoreError(ValueError):
    """A store that cannot be opened or used, or a zone registration that cannot be accepted."""


@dataclass(frozen=True)
class ZoneSpec:
    """A zone as registered: its region, reading interval and wall-clock time zone."""

    zone: str
    region: str
    resolution_s: int = 3600
    time_zone: str = "UTC"

    def checked(self) -> ZoneSpec:
        """This spec with defaults applied, or StoreError naming what is wrong."""
        spec = ZoneSpec(self.zone, self.region, int(self.resolution_s or 3600), self.time_zone or "UTC")
        for name, value in (("zone", spec.zone), ("region", spec.region)):
            if not isinstance(value, str) or not _ZONE_NAME.fullmatch(value):  # fullmatch: "$" allows a "\n"
                raise StoreError(f"{name} {shown(value)}: use 1 to {MAX_ZONE_NAME} letters, digits, '_', '-' or '.'")
        if spec.resolution_s not in RESOLUTIONS:
            raise StoreError(f"zone {spec.zone}: resolution_s {spec.resolution_s} is not one of {list(RESOLUTIONS)}")
        try:
            ZoneInfo(spec.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise StoreError(f"zone {spec.zone}: unknown time zone {shown(spec.time_zone)} (use an IANA name such as "
                             "'America/New_York' or 'UTC')") from None
        return spec


@dataclass
class Rejected:
    index: int
    zone: str
    timestamp: str
    reason: str


@dataclass
class Held:
    """Readings the store holds around a batch (`Store._held`), sorted by zone code and time."""

    code: np.ndarray  # int64 [N]: the batch's zone code
    ts: np.ndarray  # int64 [N]: UTC seconds
    value: np.ndarray  # float64 [N]
    span: tuple[int, int]  # the batch's first and last time

    @property
    def key(self) -> np.ndarray:
        return zone_time_key(self.code, self.ts)


def zone_time_key(code: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One sortable int64 per (zone code, UTC seconds): code-major, times from 1698 to 2242 fit."""
    return code.astype(np.int64) * (1 << 34) + (ts.astype(np.int64) + (1 << 33))


@dataclass
class IngestResult:
    """What one committed batch did: the acknowledgement's counts."""

    received: int = 0
    inserted: int = 0
    replaced: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    watermark: int = 0
    registered: list[str] = field(default_factory=list)

    def add(self, other: IngestResult, offset: int = 0) -> None:
        """Fold another batch's result into this one (indices shifted by `offset`)."""
        self.received += other.received
        self.inserted += other.inserted
        self.replaced += other.replaced
        self.unchanged += other.unchanged
        self.rejected += [Rejected(r.index + offset, r.zone, r.timestamp, r.reason) for r in other.rejected]
        self.watermark = max(self.watermark, other.watermark)
        self.registered += other.registered


# ---------------------------------------------------------------------------------------------- opening

def store_url(store: str | Path | None) -> str:
    """A SQLAlchemy URL for `store`: a URL as given, a path as a SQLite file (None: runs/store.db)."""
    text = str(store if store is not None else DEFAULT_STORE)
    if "://" in text:
        return text.replace("postgresql://", "postgresql+psycopg://", 1) if text.startswith("postgresql://") else text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_setup(engine: sa.Engine, immediate: bool) -> None:
    """SQLite as a durable, concurrent store: WAL (readers never wait for the writer), synchronous=FULL
    (a commit is on disk before it returns), a generous busy timeout, and for writers BEGIN IMMEDIATE
    (the write lock is taken up front: two writers queue instead of failing on a lock upgrade)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        _wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _wal(cursor: Any, timeout_s: float = 30.0) -> None:
    """PRAGMA journal_mode = WAL, retried: while another process is opening a new file too, switching it to WAL
    fails at once with "database is locked" (the busy timeout does not apply), e.g. two replicas starting
    on an empty store."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Store:
    """Reads and writes of the store. Thread-safe (a connection pool); one per process is enough."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.dialect = sa.make_url(url).get_backend_name()
        kwargs: dict[str, Any] = {"pool_pre_ping": self.dialect != "sqlite"}
        try:
            self.engine = sa.create_engine(url, **kwargs)
            self.reader = sa.create_engine(url, **kwargs)  # plain reads: no write lock (SQLite), own pool
        except (sa.exc.ArgumentError, ImportError) as err:
            raise StoreError(f"store {url!r}: {err}") from None
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine, immediate=True)
            _sqlite_setup(self.reader, immediate=False)
        self._local = threading.local()  # per thread: the connection `watermark` reads on
        if migrate:
            self.migrate()

    @classmethod
    def open(cls, store: str | Path | None = None, *, migrate: bool = True) -> Store:
        """The store at `store` (a URL or a SQLite path; None: runs/store.db), brought to the current schema."""
        return cls(store_url(store), migrate=migrate)

    def migrate(self) -> None:
        """`alembic upgrade head` on this store (what the service does at start-up)."""
        from models.migrations import upgrade

        try:
            upgrade(self.url)
        except sa.exc.OperationalError as err:
            raise StoreError(f"store {self.display_url}: cannot open it ({err.orig})") from None

    @property
    def display_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self.engine.dispose()
        self.reader.dispose()

    # ------------------------------------------------------------------------------------------ zones

    def zones(self) -> dict[str, ZoneSpec]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(zones_table.c.zone, zones_table.c.region, zones_table.c.resolution_s,
                                          zones_table.c.time_zone).order_by(zones_table.c.zone)).all()
        return {r.zone: ZoneSpec(r.zone, r.region, r.resolution_s, r.time_zone) for r in rows}

    def zone_status(self) -> list[tuple[ZoneSpec, int | None, int]]:
        """(spec, latest reading in UTC seconds or None, readings held) of every zone."""
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(zones_table).order_by(zones_table.c.region, zones_table.c.zone)).all()
        return [(ZoneSpec(r.zone, r.region, r.resolution_s, r.time_zone), r.last_ts, r.readings) for r in rows]

    def register(self, specs: Iterable[ZoneSpec]) -> list[str]:
        """Register zones (the same spec again is fine; a different one is a StoreError). Returns the new ones."""
        with self.engine.begin() as conn:
            self._serialize(conn)
            return self._register(conn, [s.checked() for s in specs])

    def _serialize(self, conn: sa.Connection) -> None:
        """PostgreSQL: take the store_state row lock before reading anything, so that writers queue as SQLite's
        BEGIN IMMEDIATE makes them. Without it two replicas given the same resend both find it new and the
        second fails on the primary key (the same for a zone registered by two at once)."""
        if self.dialect != "sqlite":
            conn.execute(sa.select(state_table.c.id).with_for_update())

    def _register(self, conn: sa.Connection, specs: Sequence[ZoneSpec]) -> list[str]:
        if not specs:
            return []
        known = {r.zone: ZoneSpec(r.zone, r.region, r.resolution_s, r.time_zone) for r in conn.execute(
            sa.select(zones_table).where(zones_table.c.zone.in_([s.zone for s in specs])))}
        region_tz = dict(conn.execute(sa.select(zones_table.c.region, zones_table.c.time_zone).where(
            zones_table.c.region.in_({s.region for s in specs})).distinct()).all())
        new = []
        for spec in specs:
            if spec.zone in known:
                have = known[spec.zone]
                if have != spec:
                    raise StoreError(f"zone {spec.zone} is registered as {_spec_text(have)}, not {_spec_text(spec)}")
                continue
            tz = region_tz.setdefault(spec.region, spec.time_zone)
            if tz != spec.time_zone:
                raise StoreError(f"zone {spec.zone}: region {spec.region} keeps time in {tz}; every zone of a region "
                                 f"shares one time zone, not {spec.time_zone}")
            new.append(spec)
            known[spec.zone] = spec  # listed twice: the second is checked against the first, not inserted again
        if new:
            conn.execute(zones_table.insert(), [{"zone": s.zone, "region": s.region, "resolution_s": s.resolution_s,
                                                 "time_zone": s.time_zone, "created_at": time.time(), "readings": 0}
                                                for s in new])
        return [s.zone for s in new]

    # ------------------------------------------------------------------------------------------ ingest

    def ingest(self, zone: Sequence[str], timestamp: Sequence[str] | pd.DatetimeIndex, value: Sequence[float],
               register: Sequence[ZoneSpec] = (), now: float | None = None) -> IngestResult:
        """Check and store one batch of readings in one transaction; returns once it is committed.

        `timestamp`: ISO 8601 strings (with an offset: that instant; without: the zone's wall-clock time) or
        a DatetimeIndex (tz-aware: that instant; naive: wall-clock time). Rejected readings are listed
        with their reason, the rest are stored (see the module and readings.proto for the rules).
        """
        now = time.time() if now is None else now
        zone = np.asarray(zone, dtype=object)
        value = np.asarray(value, dtype=np.float64)
        n = len(zone)
        if len(value) != n or len(timestamp) != n:
            raise StoreError(f"{n} zones, {len(timestamp)} timestamps and {len(value)} values: they must match")
        specs = [s.checked() for s in register]
        result = IngestResult(received=n)
        with self.engine.begin() as conn:
            self._serialize(conn)
            result.registered = self._register(conn, specs)
            rows = {r.zone: r for r in conn.execute(sa.select(zones_table).where(
                zones_table.c.zone.in_(set(zone.tolist()))))}
            known = {z: ZoneSpec(r.zone, r.region, r.resolution_s, r.time_zone) for z, r in rows.items()}
            ts, reasons = _checked_times(zone, timestamp, value, known, now)
            ok = np.flatnonzero(reasons == "")
            writes = []  # (zone, rows to insert, rows to update, latest time)
            references = []  # (zone, day, median) learnt by this batch
            if len(ok):
                names, codes = np.unique(zone[ok].astype(str), return_inverse=True)
                zone_rows = [rows[z] for z in names.tolist()]
                day = int(ts[ok].min()) // DAY_S * DAY_S
                cached = np.array([r.reference_median if r.reference_day == day and r.reference_median is not None
                                   else np.nan for r in zone_rows])
                # zones with a reading at or before their latest held one may hold some of these times already
                latest = np.array([r.last_ts if r.last_ts is not None else np.iinfo(np.int64).min for r in zone_rows])
                first_by_code = np.full(len(names), np.iinfo(np.int64).max)
                np.minimum.at(first_by_code, codes, ts[ok])
                held = self._held(conn, names, codes, ts[ok], day, probe=first_by_code <= latest,
                                  sample=np.isnan(cached))
                reasons[ok], median, learnt = _value_reasons(codes, ts[ok], value[ok], held, cached)
                references = [(str(names[c]), day, float(median[c])) for c in np.flatnonzero(learnt)
                              if zone_rows[c].reference_day is None or zone_rows[c].reference_day < day]
                good = reasons[ok] == ""
                ok, codes = ok[good], codes[good]
                # each reading against what the store holds at its zone and time: new, same (a resend), changed
                key = zone_time_key(codes, ts[ok])
                at = np.minimum(np.searchsorted(held.key, key), max(len(held.key) - 1, 0))
                stored = (held.key[at] == key) if len(held.key) else np.zeros(len(ok), bool)
                moved = stored & (held.value[at] != value[ok]) if len(held.key) else stored
                result.inserted = int((~stored).sum())
                result.replaced = int(moved.sum())
                result.unchanged = int((stored & ~moved).sum())
                for c in np.unique(codes[~stored | moved]):
                    mine = codes == c
                    writes.append((str(names[c]), ok[mine & ~stored], ok[mine & moved], int(ts[ok[mine]].max())))
            result.rejected = [Rejected(int(i), str(zone[i]), _text(timestamp, i), str(reasons[i]))
                               for i in np.flatnonzero(reasons != "")]
            if writes:
                # the watermark first: its row lock orders concurrent commits (see the module docstring)
                version = conn.execute(state_table.update().values(watermark=state_table.c.watermark + 1)
                                       .returning(state_table.c.watermark)).scalar_one()
                self._write(conn, writes, ts, value, now, version)
                if references:
                    mark = "?" if self.dialect == "sqlite" else "%s"
                    conn.exec_driver_sql(f"UPDATE zones SET reference_day = {mark}, reference_median = {mark} "
                                         f"WHERE zone = {mark}", [(d, m, z) for z, d, m in references])
                result.watermark = version
            else:
                result.watermark = conn.execute(sa.select(state_table.c.watermark)).scalar_one()
        return result

    def _held(self, conn: sa.Connection, names: np.ndarray, codes: np.ndarray, ts: np.ndarray, day: int,
              probe: np.ndarray, sample: np.ndarray) -> Held:
        """What the store holds that the checks of readings (zone `names[codes]`, `ts`) need: its values at
        those times, for the zones that may hold some (`probe`: is it a resend, a correction?), and at the
        absurd-value rule's reference times (`reference_times`), for the zones whose reference for `day`
        is not kept yet (`sample`). A live batch of new hours with known references reads nothing; a dense
        backfill of many hours reads each zone's range."""
        r = readings_table
        last = int(ts.max())
        before, after = reference_times(day, last)
        rows: list = []
        probed = names[probe].tolist()
        times = np.unique(ts[probe[codes]])
        if len(times) > 4096:  # dense: each zone's whole range (it holds the reference week too)
            for c in np.flatnonzero(probe):
                mine = ts[codes == c]
                rows += conn.execute(sa.select(r.c.zone, r.c.ts, r.c.value).where(
                    r.c.zone == str(names[c]), r.c.ts >= day - REFERENCE_S,
                    r.c.ts <= int(mine.max()) + REFERENCE_S)).all()
            sample = sample & ~probe
        elif probed:
            rows += conn.execute(sa.select(r.c.zone, r.c.ts, r.c.value).where(
                r.c.zone.in_(probed), r.c.ts.in_(times.tolist()))).all()
        if sample.any():
            rows += conn.execute(sa.select(r.c.zone, r.c.ts, r.c.value).where(
                r.c.zone.in_(names[sample].tolist()), r.c.ts.in_(before.tolist()))).all()
            # zones with too little in the week before (a backfill): the week after, for them only
            week = set(before.tolist())
            found = Counter(row[0] for row in rows if row[1] in week)
            short = [z for z in names[sample].tolist() if found[z] < REFERENCE_SAMPLES // 2]
            if short:
                rows += conn.execute(sa.select(r.c.zone, r.c.ts, r.c.value).where(
                    r.c.zone.in_(short), r.c.ts.in_(after.tolist()))).all()
        code_of = {z: c for c, z in enumerate(names.tolist())}
        held_code = np.fromiter((code_of[row[0]] for row in rows), np.int64, len(rows))
        held_ts = np.fromiter((row[1] for row in rows), np.int64, len(rows))
        held_value = np.fromiter((row[2] for row in rows), np.float64, len(rows))
        keys = np.unique(zone_time_key(held_code, held_ts), return_index=True)[1]  # sorted, once each
        return Held(held_code[keys], held_ts[keys], held_value[keys], (day, last))

    def _write(self, conn: sa.Connection, writes: list, ts: np.ndarray, value: np.ndarray, now: float,
               version: int) -> None:
        """Insert new rows and apply corrections through the driver's executemany (SQLAlchemy's per-row
        parameter handling would cost more than the database's own work here)."""
        mark = "?" if self.dialect == "sqlite" else "%s"
        insert = (f"INSERT INTO readings (zone, ts, value, received_at, revision, version) "
                  f"VALUES ({mark}, {mark}, {mark}, {mark}, 0, {mark})")
        update = (f"UPDATE readings SET value = {mark}, received_at = {mark}, version = {mark}, "
                  f"revision = revision + 1 WHERE zone = {mark} AND ts = {mark}")
        # one executemany per statement for the whole batch (per zone, the statements' overhead dominated)
        zone_status = (f"UPDATE zones SET last_ts = CASE WHEN last_ts > {mark} THEN last_ts ELSE {mark} END, "
                       f"readings = readings + {mark} WHERE zone = {mark}")
        inserts = [(z, t, v, now, version) for z, new, _, _ in writes
                   for t, v in zip(ts[new].tolist(), value[new].tolist())]
        updates = [(v, now, version, z, t) for z, _, moved, _ in writes
                   for t, v in zip(ts[moved].tolist(), value[moved].tolist())]
        if inserts:
            conn.exec_driver_sql(insert, inserts)
        if updates:
            conn.exec_driver_sql(update, updates)
        conn.exec_driver_sql(zone_status, [(last, last, len(new), z) for z, new, _, last in writes])

    # ------------------------------------------------------------------------------------------ reads

    def watermark(self) -> int:
        """The store's watermark (a forecast asks before every answer: one single-row read, `_read`; the SQL
        is the same in both databases, so it is not compiled per call)."""
        return int(self._read("SELECT watermark FROM store_state WHERE id = 1")[0][0])

    def _read(self, query: sa.Select | str) -> list[tuple]:
        """The rows of a read, as plain tuples, on a connection the calling thread keeps: for the reads on
        the forecast path the pool's checkout and SQLAlchemy's row objects cost several times the query
        itself. A broken connection is replaced on the next call."""
        if isinstance(query, str):
            sql, params = query, ()
        else:
            compiled = query.compile(dialect=self.reader.dialect, compile_kwargs={"render_postcompile": True})
            sql = str(compiled)
            params = ([compiled.params[k] for k in compiled.positiontup] if compiled.positional
                      else compiled.params)
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.reader.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            cursor.close()
            if self.dialect != "sqlite":
                conn.rollback()  # no transaction left open between calls
            return rows
        except Exception:
            self._local.conn = None
            conn.invalidate()
            raise

    def readings(self, zones: Sequence[str], start: int | None = None, end: int | None = None, *,
                 newest: int | None = None) -> pd.DataFrame:
        """zone, ts (UTC seconds), value of `zones` with start <= ts < end (None: unbounded), by zone and time;
        with `newest`, only each zone's `newest` latest readings of that window."""
        r = readings_table
        columns = [r.c.zone, r.c.ts, r.c.value]
        if newest is not None:  # ranked in the database: a long window never travels whole
            columns.append(sa.func.row_number().over(partition_by=r.c.zone, order_by=r.c.ts.desc()).label("rank"))
        query = sa.select(*columns).where(r.c.zone.in_(list(zones)))
        if start is not None:
            query = query.where(r.c.ts >= int(start))
        if end is not None:
            query = query.where(r.c.ts < int(end))
        if newest is not None:
            ranked = query.subquery()
            query = sa.select(ranked.c.zone, ranked.c.ts, ranked.c.value).where(ranked.c["rank"] <= int(newest))
            return self._frame(query.order_by(ranked.c.zone, ranked.c.ts))
        return self._frame(query.order_by(r.c.zone, r.c.ts))

    def latest(self, zones: Sequence[str], seconds: int) -> pd.DataFrame:
        """zone, ts, value of each zone's readings in the `seconds` before (and at) its latest one."""
        r, z = readings_table, zones_table
        query = (sa.select(r.c.zone, r.c.ts, r.c.value).join(z, z.c.zone == r.c.zone)
                 .where(r.c.zone.in_(list(zones)), r.c.ts > z.c.last_ts - seconds).order_by(r.c.zone, r.c.ts))
        return self._frame(query)

    def changes(self, since: int, until: int) -> pd.DataFrame:
        """zone, ts, value of the readings written by commits with since < watermark <= until."""
        r = readings_table
        return self._frame(sa.select(r.c.zone, r.c.ts, r.c.value).where(r.c.version > since, r.c.version <= until)
                           .order_by(r.c.zone, r.c.ts))

    def _frame(self, query: sa.Select) -> pd.DataFrame:
        rows = self._read(query)
        return pd.DataFrame({"zone": pd.array([r[0] for r in rows], dtype=object),
                             "ts": np.fromiter((r[1] for r in rows), np.int64, len(rows)),
                             "value": np.fromiter((r[2] for r in rows), np.float64, len(rows))})

    # ------------------------------------------------------------------------------------------ files

    def seed(self, path: str | Path | None = None, *, region: str | None = None, time_zone: str | None = None,
             until: str | pd.Timestamp | None = None, batch: int = 20_000, progress: Any = None) -> IngestResult | None:
        """Load a long-format file (None: the bundled PJM zones) into the store, once: a file already seeded
        (same content and `until`) is skipped (None returned). Unknown zones are registered in `region`
        (default: a bundled file's region, else PJM) with `time_zone` (default: a bundled file's own,
        `models.series.BUNDLED`: Eastern time for PJM, UTC+10 without daylight saving for the NEM; UTC for
        other files with naive times) and the resolution their times show (the NEM's half-hours: 1800 s)."""
        path = Path(path) if path is not None else BUNDLED_PJM
        fingerprint = _fingerprint(path, until)
        with self.reader.connect() as conn:
            if conn.execute(sa.select(sources_table.c.rows).where(sources_table.c.fingerprint == fingerprint)).first():
                return None
        table = readings_frame(read_table(path), until)
        bundled = bundled_region(path)
        tz = time_zone or (bundled.time_zone if bundled else "UTC")
        region = region or (bundled.name if bundled else DEFAULT_REGION)
        known = self.zones()
        register = [ZoneSpec(z, region, resolution_of(table[table[ZONE] == z][TIMESTAMP]), tz)
                    for z in table[ZONE].unique() if z not in known]
        result = self.ingest_frame(table, register=register, batch=batch, progress=progress)
        with self.engine.begin() as conn:
            self._serialize(conn)
            # checked again under the write lock: two processes seeding at once both get here
            if not conn.execute(sa.select(sources_table.c.rows).where(sources_table.c.fingerprint == fingerprint)
                                ).first():
                conn.execute(sources_table.insert().values(fingerprint=fingerprint, path=str(path),
                                                           rows=len(table), ingested_at=time.time()))
        return result

    def ingest_frame(self, table: pd.DataFrame, *, register: Sequence[ZoneSpec] = (), batch: int = 20_000,
                     progress: Any = None) -> IngestResult:
        """`ingest` a long table (zone, timestamp, load_mw) in batches of about `batch` rows (`plan_batches`:
        a zone's readings of one time, such as a fall-back pair, stay together); `progress(n)` after each.
        Rejected readings' indices are the table's rows."""
        total = IngestResult()
        ordered, bounds = plan_batches(table.reset_index(drop=True), batch)
        for i, (start, end) in enumerate(bounds):
            part = ordered.iloc[start:end]
            result = self.ingest(part[ZONE].to_numpy(), pd.DatetimeIndex(part[TIMESTAMP]), part[LOAD].to_numpy(),
                                 register=register if i == 0 else ())
            rows = part.index.to_numpy()
            result.rejected = [Rejected(int(rows[r.index]), r.zone, r.timestamp, r.reason) for r in result.rejected]
            total.add(result)
            if progress is not None:
                progress(len(part))
        return total


def readings_frame(table: pd.DataFrame, until: str | pd.Timestamp | None = None) -> pd.DataFrame:
    """A raw long table as readings, in file order: zone, timestamp, load_mw (nothing repaired: the store's
    checks decide), only the rows before `until` (a time in the table's own convention)."""
    out = table[[ZONE, TIMESTAMP, LOAD]]
    if until is not None:
        stamp = pd.Timestamp(until)
        stamps = out[TIMESTAMP]
        if stamps.dt.tz is not None and stamp.tz is None:
            stamp = stamp.tz_localize(stamps.dt.tz)
        out = out[stamps < stamp]
    return out.reset_index(drop=True)


def resolution_of(stamps: pd.Series) -> int:
    """A zone's reading interval as `clean` sees it (models.data.zone_resolutions: hourly when all its times
    are on the hour, else the most common step), as a registered resolution (hourly if unsure)."""
    us = _seconds(pd.DatetimeIndex(stamps)) * 1_000_000
    common = int(zone_resolutions(np.zeros(len(us), np.int64), us, 1)[0])
    return common if common in RESOLUTIONS else 3600


def plan_batches(table: pd.DataFrame, batch: int = 1000) -> tuple[pd.DataFrame, list[tuple[int, int]]]:
    """A long table's rows sorted by (zone, timestamp), and the [start, end) row ranges of its batches.

    The sort is stable: rows with the same zone and time keep their order in the file, which is how the
    two readings of a naive daylight-saving fall-back hour say which is the first hour. A range holds at
    most `batch` rows and never parts two rows with the same zone and time (the server can tell the
    fall-back pair apart only within one batch); it is longer only when more than `batch` rows share one.
    The sorted table keeps the input's index (with `readings_frame`: the row in the file)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    codes, _ = pd.factorize(table[ZONE].astype(str), sort=True)
    ts = pd.DatetimeIndex(table[TIMESTAMP]).as_unit("us").asi8  # tz-aware: the instant; naive: wall clock
    order = np.lexsort((ts, codes))  # stable: equal keys stay in file order
    codes, ts = codes[order], ts[order]
    n = len(order)
    runs = np.flatnonzero(np.r_[True, (codes[1:] != codes[:-1]) | (ts[1:] != ts[:-1])])  # first row of each key
    bounds, start = [], 0
    while start < n:
        end = min(start + batch, n)
        if end < n:
            k = int(np.searchsorted(runs, end, side="right"))  # runs[k - 1] <= end < runs[k]
            if runs[k - 1] != end:  # end falls inside a run of one zone and time: cut before it, or after
                end = int(runs[k - 1]) if runs[k - 1] > start else (int(runs[k]) if k < len(runs) else n)
        bounds.append((start, end))
        start = end
    return table.iloc[order], bounds


def _fingerprint(path: Path, until: Any) -> str:
    digest = hashlib.sha256(f"until={until}\n".encode())
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            digest.update(f.name.encode())
            with f.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _spec_text(s: ZoneSpec) -> str:
    return f"region {s.region}, every {s.resolution_s} s, time zone {s.time_zone}"


def _text(timestamp: Sequence[str] | pd.DatetimeIndex, i: int) -> str:
    t = timestamp[i]
    return t.isoformat() if isinstance(t, pd.Timestamp) else str(t)


# ---------------------------------------------------------------------------------------------- checks

def _checked_times(zone: np.ndarray, timestamp: Sequence[str] | pd.DatetimeIndex, value: np.ndarray,
                   known: dict[str, ZoneSpec], now: float) -> tuple[np.ndarray, np.ndarray]:
    """UTC seconds of every reading and the reason it is refused ("" if not yet), for the checks that need
    no stored data: unknown zone, unreadable, ambiguous or nonexistent time, off the grid, in the future,
    value not finite, the same zone and time twice in the batch."""
    n = len(zone)
    reasons = np.full(n, "", dtype=object)
    ts = np.zeros(n, dtype=np.int64)
    not_finite(value, reasons)
    # the times are converted once per time zone, not once per zone: a conversion costs per call
    codes, names = pd.factorize(zone, use_na_sentinel=False)
    specs = [known.get(z) for z in names]
    for k in [k for k, spec in enumerate(specs) if spec is None]:
        z = names[k]
        reasons[codes == k] = (f"unknown zone {shown(z)}; register it in the request (region, resolution, time zone)"
                               if isinstance(z, str) and z else "zone: required")
    row_tz = np.array([s.time_zone if s else "" for s in specs], dtype=object)[codes]
    row_step = np.array([s.resolution_s if s else 0 for s in specs], dtype=np.int64)[codes]
    for time_zone in sorted({s.time_zone for s in specs if s}):
        rows = np.flatnonzero(row_tz == time_zone)
        utc, local, why = _to_utc(timestamp, rows, time_zone, codes[rows])
        ts[rows] = utc
        reasons[rows] = np.where(reasons[rows] == "", why, reasons[rows])
        off_grid = (why == "") & (local % row_step[rows] != 0)
        for i in rows[off_grid]:
            reasons[i] = (f"time is not on the zone's {row_step[i] // 60}-minute grid "
                          f"(zone {zone[i]} reads every {row_step[i]} s)")
        future = (why == "") & (utc > now + MAX_FUTURE_S)
        for i in rows[future]:
            reasons[i] = (f"time is {(ts[i] - now) / 3600:.1f} h in the future (the server's clock is "
                          f"{pd.Timestamp(now, unit='s', tz='UTC').isoformat(timespec='seconds')}); at most 1 h ahead")
    # the same zone and time twice: the last one counts (a correction sent in the same batch)
    ok = np.flatnonzero(reasons == "")
    if len(np.unique(zone_time_key(codes[ok], ts[ok]))) == len(ok):  # the usual batch: nothing repeated
        return ts, reasons
    keys = pd.DataFrame({"z": codes[ok], "t": ts[ok]})
    repeated = keys.duplicated(keep="last").to_numpy()
    if repeated.any():
        last_of = keys.reset_index().groupby(["z", "t"])["index"].transform("last").to_numpy()
        for j in np.flatnonzero(repeated):
            reasons[ok[j]] = f"repeated in this batch: reading {ok[last_of[j]]} has the same zone and time and is kept"
    return ts, reasons


def not_finite(value: np.ndarray, reasons: np.ndarray) -> None:
    """Set the reason of every value that is NaN or infinite (readings and weather refuse them alike)."""
    for i in np.flatnonzero(~np.isfinite(value)):
        reasons[i] = f"value {value[i]} is not a finite number"


def reference_times(day: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """The times whose readings the absurd-value rule compares a batch with: 24 readings 7 h apart over the
    week before `day` (UTC seconds of the midnight the batch begins on), and over the week after its `last`
    reading (for a backfill with nothing before it). 7 h steps over 168 h meet every hour of the day once,
    so the sample's median is the week's, read from 24 rows instead of 168 per zone; and a zone's reference
    is kept in the zones table once known, so it is read once a day, not with every batch."""
    steps = REFERENCE_STEP_S * np.arange(1, REFERENCE_SAMPLES + 1, dtype=np.int64)
    return day - steps, last - last % 3600 + steps


def _value_reasons(codes: np.ndarray, ts: np.ndarray, value: np.ndarray, held: Held,
                   cached: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ingest repair rule's bounds for a batch's readings (zone `codes`, `ts` UTC seconds, finite
    `value`): a value must be positive and within ABSURD_LOW..ABSURD_HIGH times its zone's median over the
    week before the batch's day (`cached` where the zones table keeps it, else from `held`'s sample of that
    week; the week after the batch, for a backfill; the batch's own median of the zone, for a zone with
    nothing stored near it). Returns the reasons ("" where a value passes), each zone's median, and which
    medians were learnt from the week before (to keep)."""
    zones = int(codes.max()) + 1
    day, last = held.span
    before, after = reference_times(day, last)
    half = REFERENCE_SAMPLES // 2
    m_before, n_before = _medians(held.code[np.isin(held.ts, before)], held.value[np.isin(held.ts, before)], zones)
    m_after, n_after = _medians(held.code[np.isin(held.ts, after)], held.value[np.isin(held.ts, after)], zones)
    m_own, n_own = _medians(codes[value > 0], value[value > 0], zones)
    learnt = np.isnan(cached) & (n_before >= half)
    median = np.where(~np.isnan(cached), cached, np.where(learnt, m_before, np.where(
        n_after >= half, m_after, np.where(n_own >= half, m_own, np.nan))))
    reasons = np.full(len(ts), "", dtype=object)
    for i in np.flatnonzero(value <= 0):
        reasons[i] = f"value {value[i]:g} is not positive"
    for i in np.flatnonzero(value > MAX_LOAD_MW):
        reasons[i] = (f"value {value[i]:g} is absurd: beyond any grid's load (at most {MAX_LOAD_MW:g} MW); wrong "
                      "units or scaling?")
    reference = median[codes]
    with np.errstate(invalid="ignore"):
        absurd = (value > 0) & (value <= MAX_LOAD_MW) & ((value < ABSURD_LOW * reference)
                                                          | (value > ABSURD_HIGH * reference))
    for i in np.flatnonzero(absurd):
        reasons[i] = (f"value {value[i]:g} is absurd: outside {ABSURD_LOW:g}..{ABSURD_HIGH:g} x the zone's "
                      f"median of {reference[i]:.6g} over the week around it")
    return reasons, median, learnt


def _medians(codes: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and count of `values` per code 0..n-1 (NaN where none)."""
    out, count = np.full(n, np.nan), np.bincount(codes, minlength=n)
    if len(values):
        grouped = pd.Series(values).groupby(codes).median()
        out[grouped.index.to_numpy()] = grouped.to_numpy()
    return out, count


def _to_utc(timestamp: Sequence[str] | pd.DatetimeIndex, rows: np.ndarray, time_zone: str,
            groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UTC and local wall-clock seconds of `timestamp[rows]`, and a reason for those that cannot be placed.

    Times with an offset are that instant. Naive times are the zone's wall clock: a time skipped when
    daylight saving starts is refused; a time repeated when it ends is the first (daylight) hour on its
    first appearance among these rows of its group (`groups`: one code per row, e.g. its zone; None: one
    group) and the second (standard) hour on the next, and refused when it appears once (it cannot be
    told which of the two hours it is)."""
    m = len(rows)
    why = np.full(m, "", dtype=object)
    if isinstance(timestamp, pd.DatetimeIndex):
        stamps = timestamp[rows]
        why[np.asarray(stamps.isna())] = "time is missing"  # NaT: else stored at the epoch, or called nonexistent
        aware = np.full(m, stamps.tz is not None)
        parsed = stamps.tz_convert("UTC") if stamps.tz is not None else stamps
        naive_stamps = None if stamps.tz is not None else stamps
        aware_stamps = parsed if stamps.tz is not None else None
    else:
        # each distinct text read once (a batch repeats every time for each of its zones)
        codes, text = pd.factorize(np.array([str(timestamp[i]).strip() for i in rows], dtype=object))
        has_offset = np.fromiter((_HAS_OFFSET.search(t) is not None for t in text), bool, len(text))
        text = pd.Series(text, dtype=object)
        aware = has_offset[codes]
        aware_stamps = pd.DatetimeIndex(pd.to_datetime(text.where(has_offset), format="ISO8601", errors="coerce",
                                                       utc=True))[codes]
        naive_stamps = (pd.DatetimeIndex(pd.to_datetime(text.where(~has_offset), format="ISO8601",
                                                        errors="coerce"))[codes] if not has_offset.all()
                        else pd.DatetimeIndex(np.full(m, np.datetime64("NaT"), "datetime64[s]")))
        unreadable = (aware & np.asarray(aware_stamps.isna())) | (~aware & np.asarray(naive_stamps.isna()))
        why[unreadable] = "time cannot be read as ISO 8601 (e.g. 2018-08-01T05:00:00Z)"
    utc = np.zeros(m, dtype=np.int64)
    tz = ZoneInfo(time_zone)
    if aware.any():
        a = pd.DatetimeIndex(aware_stamps)[aware]
        ok = ~a.isna()
        utc[np.flatnonzero(aware)[ok]] = _seconds(a[ok])
    naive = ~aware & (why == "")
    if naive.any():
        stamps = pd.DatetimeIndex(naive_stamps)[naive]
        dst = stamps.tz_localize(tz, ambiguous=np.ones(len(stamps), bool), nonexistent="NaT")
        std = stamps.tz_localize(tz, ambiguous=np.zeros(len(stamps), bool), nonexistent="NaT")
        where = np.flatnonzero(naive)
        gone = dst.isna()
        why[where[gone]] = f"time does not exist in {time_zone} (the hour skipped when daylight saving starts)"
        two = ~gone & (dst != std)
        if two.any():
            group = np.zeros(m, np.int64) if groups is None else np.asarray(groups, np.int64)
            keys = pd.DataFrame({"g": group[naive][two], "t": _seconds(stamps)[two]}).groupby(["g", "t"])
            order = keys.cumcount().to_numpy()
            count = keys["t"].transform("size").to_numpy()
            second = np.zeros(len(stamps), bool)
            second[np.flatnonzero(two)] = order >= 1
            single = np.zeros(len(stamps), bool)
            single[np.flatnonzero(two)] = count == 1
            why[where[single]] = (f"time is ambiguous in {time_zone} (the hour repeated when daylight saving ends); "
                                  "send it with its UTC offset")
            chosen = dst.where(~second, std)
        else:
            chosen = dst
        ok = ~gone
        utc[where[ok]] = _seconds(chosen[ok])
    # local wall-clock seconds (for the resolution grid), each distinct time converted once
    distinct, inverse = np.unique(utc, return_inverse=True)
    local = _seconds(pd.to_datetime(distinct, unit="s", utc=True).tz_convert(tz).tz_localize(None))[inverse]
    return utc, local, why


def _seconds(stamps: pd.DatetimeIndex) -> np.ndarray:
    """Seconds since the epoch (UTC for aware stamps, wall clock for naive ones), whatever the unit."""
    return np.asarray(stamps.as_unit("s").asi8, dtype=np.int64)
