"""`energyopt ingest` and `energyopt replay`: readings into the store, through a running server or directly.

Plain functions with typer annotations, registered on the app in `energyopt/cli.py`:

    app.command()(cli_ingest.ingest)
    app.command()(cli_ingest.replay)

`ingest` sends a file over ReadingsService.StreamReadings (or writes it to a store with `Store.ingest_frame`)
in batches that never part the two readings of a daylight-saving fall-back hour; `replay` streams a stored
history into a server as if it were live, one batch per simulated hour.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from energyopt.cli_serving import (  # typer options; serving imported lazily
    api_key_option,
    auth_hint,
    ca_option,
    client_cert_option,
    client_key_option,
    tls_files,
)

if TYPE_CHECKING:
    import pandas as pd

    from models.series import BundledRegion

console = Console(soft_wrap=True)  # summary lines whole, for logs and greps
err_console = Console(stderr=True, soft_wrap=True)

DEFAULT_SERVER = "localhost:9000"
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
LINES_PER_SECOND = 4  # replay prints about this many lines a second at any speed


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------- the tally

@dataclass
class Tally:
    """The acknowledgements of a run added up, with the rejected readings grouped by reason."""

    received: int = 0
    inserted: int = 0
    replaced: int = 0
    unchanged: int = 0
    rejected: int = 0
    registered: list[str] = field(default_factory=list)
    reasons: dict[str, list[Any]] = field(default_factory=dict)  # kind -> [count, first example]

    @property
    def accepted(self) -> int:
        return self.received - self.rejected

    def add(self, received: int, inserted: int, replaced: int, unchanged: int, registered: Iterable[str],
            rejected: Iterable[tuple[str, str, str, float, Any]]) -> tuple[int, str]:
        """Fold one batch in; `rejected` holds (zone, timestamp, reason, value, row in the file or None).
        Returns the batch's rejected count and its first reason."""
        self.received += received
        self.inserted += inserted
        self.replaced += replaced
        self.unchanged += unchanged
        self.registered += list(registered)
        count, first = 0, ""
        for zone, stamp, reason, value, row in rejected:
            count += 1
            first = first or reason
            kind = reason_kind(reason)
            entry = self.reasons.setdefault(kind, [0, None])
            entry[0] += 1
            if entry[1] is None:
                where = f"row {row}: " if row is not None else ""
                entry[1] = f"{where}{zone} {stamp} = {value:g}" + (f" ({reason})" if reason != kind else "")
        self.rejected += count
        return count, first

    def add_batch(self, ack: Any, example: Callable[[int], tuple[float, Any]]) -> tuple[int, str]:
        """Fold in an IngestAck (or a `models.store.IngestResult`: the same fields); `example(index)` gives
        the value and file row of the batch's reading at `index`."""
        return self.add(ack.received, ack.inserted, ack.replaced, ack.unchanged, ack.registered,
                        ((r.zone, r.timestamp, r.reason, *example(r.index)) for r in ack.rejected))

    def print(self, title: str) -> None:
        console.print(f"{title}: {self.received:,} received, {self.inserted:,} inserted, {self.replaced:,} "
                      f"replaced, {self.unchanged:,} unchanged, {self.rejected:,} rejected", highlight=False)
        if self.registered:
            console.print(f"registered {len(self.registered)} zone(s): {', '.join(self.registered)}", highlight=False)
        if self.reasons:
            console.print("rejected, by reason:")
            for kind, (count, example) in sorted(self.reasons.items(), key=lambda kv: -kv[1][0]):
                console.print(f"  {count:>8,}  {kind}\n            first: {example}", highlight=False)


_NUMBER = re.compile(r"(?<![A-Za-z_'])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_NUMBERS = re.compile(r"#(?:[-+:.T ]*#)+")


def reason_kind(reason: str) -> str:
    """A rejection reason with its numbers and times masked ("value # is not positive"), so readings
    refused for the same reason group together whatever their values."""
    return _NUMBERS.sub("#", _NUMBER.sub("#", reason))


# ---------------------------------------------------------------------------------------------- reading

def read_readings(file: str) -> pd.DataFrame:
    """The file as readings in file order (zone, timestamp, load_mw; nothing repaired); "-" reads CSV from
    stdin."""
    import tempfile

    from models.data import read_table
    from models.series import SeriesError
    from models.store import readings_frame

    if file != "-":
        return readings_frame(read_table(Path(file)))
    data = typer.get_binary_stream("stdin").read()
    with tempfile.TemporaryDirectory() as tmp:  # read_table reads files: the same parsing and checks as for one
        path = Path(tmp) / "stdin.csv"
        path.write_bytes(data)
        try:
            return readings_frame(read_table(path))
        except SeriesError as err:
            raise SeriesError(str(err).replace(str(path), "stdin")) from None


def new_zones(table: pd.DataFrame, known: Iterable[str], region: str, time_zone: str) -> list:
    """ZoneSpecs for the zones of `table` not in `known`: `region`, `time_zone`, and the resolution the
    zone's own steps show (hourly when unsure). Checked here, so a bad name fails before anything is sent."""
    from models.series import TIMESTAMP, ZONE
    from models.store import ZoneSpec, resolution_of

    known = set(known)
    return [ZoneSpec(str(z), region, resolution_of(stamps), time_zone).checked()
            for z, stamps in table.groupby(ZONE, sort=True)[TIMESTAMP] if str(z) not in known]


def _time_zone(given: str | None, region: str, region_zones: dict[str, str], bundled: BundledRegion | None) -> str:
    """--time-zone, else the region's (every zone of a region shares one), else a bundled file's own clock
    (PJM's Eastern time, the NEM's UTC+10), else UTC."""
    return given or region_zones.get(region) or (bundled.time_zone if bundled else "UTC")


def _bundled(file: str | Path) -> BundledRegion | None:
    """The bundled region whose file `file` is (models.series.BUNDLED), None for any other (or stdin)."""
    from models.series import bundled_region

    return None if str(file) == "-" else bundled_region(file)


def _region(given: str | None, bundled: BundledRegion | None) -> str:
    """--region, else a bundled file's region, else PJM."""
    from models.series import DEFAULT_REGION

    return given or (bundled.name if bundled else DEFAULT_REGION)


def _server_zones(client: Any, target: str) -> tuple[set[str], dict[str, str]]:
    """The zone names the server knows and each region's time zone."""
    from serving.client import ReadingsError

    try:
        response = client.list_zones()
    except ReadingsError as err:
        _server_error(err, target)
    return {z.spec.zone for z in response.zones}, {z.spec.region: z.spec.time_zone for z in response.zones}


def _server_error(err: Any, target: str) -> None:
    if err.code.name in UNREACHABLE:
        _fail(f"cannot reach the server at {target} ({err.code.name}: {err.message}). Is it running "
              f"(`energyopt serve`) and listening there?")
    hint = " Send smaller batches (--batch)." if err.code.name == "RESOURCE_EXHAUSTED" else auth_hint(err.code.name)
    _fail(f"the server refused the readings ({err.code.name}: {err.message}).{hint}")


def _all_rejected(tally: Tally) -> None:
    hint = (" Pass --register (with --region and --time-zone) to register new zones."
            if any(k.startswith("unknown zone") for k in tally.reasons) else "")
    _fail(f"every reading was rejected ({tally.rejected:,}; the reasons are above).{hint}")


# ---------------------------------------------------------------------------------------------- ingest

def ingest(
    file: str = typer.Argument(..., metavar="FILE|-", help="Long-format CSV/Parquet (zone, timestamp, load_mw), "
                                                          "a wide per-zone CSV, a folder of them, or - for CSV "
                                                          "on stdin."),
    server: str | None = typer.Option(None, help=f"HOST:PORT of a running `energyopt serve` (the default, "
                                                  f"{DEFAULT_SERVER}, unless --store is given)."),
    store: str | None = typer.Option(None, help="Write straight into this store instead: a SQLite path or a "
                                                 "database URL (postgresql://...)."),
    batch: int = typer.Option(1000, min=1, help="Readings per batch (one is cut short rather than part the two "
                                                "readings of a daylight-saving fall-back hour)."),
    register: bool = typer.Option(False, help="Register the file's zones that are not known yet (resolution "
                                              "from the file's steps; hourly when unsure)."),
    region: str | None = typer.Option(None, help="With --register: the new zones' region (default: a bundled "
                                                  "file's, PJM or NEM; else PJM)."),
    time_zone: str | None = typer.Option(None, help="With --register: the new zones' IANA time zone (default: "
                                                     "the region's, if known; else a bundled file's own, "
                                                     "America/New_York or Australia/Brisbane; UTC otherwise)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """Ingest readings from a file, over a running server's StreamReadings (acknowledged per batch once
    committed) or straight into a store; prints what was inserted, replaced, unchanged and rejected (by
    reason). Exit code 2 when nothing was accepted or the server cannot be reached."""
    from models.series import SeriesError
    from models.store import StoreError, plan_batches

    if server and store:
        _fail("pass --server HOST:PORT or --store URL_OR_PATH, not both")
    try:
        table = read_readings(file)
        ordered, bounds = plan_batches(table, batch)
    except (SeriesError, StoreError, ValueError, FileNotFoundError, PermissionError) as err:
        _fail(str(err))
    source = "stdin" if file == "-" else file
    target = store or server or DEFAULT_SERVER
    console.print(f"ingesting {len(table):,} readings of {table['zone'].nunique()} zone(s) from {source} into "
                  f"{target} in {len(bounds):,} batch(es)", highlight=False)
    tally = Tally()
    try:
        bundled = _bundled(file)
        if store:
            _ingest_store(store, ordered, bounds, tally, register, _region(region, bundled), time_zone, bundled,
                          quiet)
        else:
            _ingest_server(target, ordered, bounds, tally, register, _region(region, bundled), time_zone, bundled,
                           quiet, client_options={"token": api_key, **tls_files(ca, client_cert, client_key)})
    except KeyboardInterrupt:
        tally.print(f"interrupted; acknowledged so far from {source}")
        raise typer.Exit(130) from None
    tally.print(f"{source} -> {target}")
    if tally.accepted == 0:
        _all_rejected(tally)


def _bar(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                    TimeElapsedColumn(), console=console, disable=quiet, transient=False)


def _example(ordered: pd.DataFrame, start: int) -> Callable[[int], tuple[float, Any]]:
    """Value and file row of the reading at `index` in the batch that starts at row `start` of `ordered`."""
    values, rows = ordered["load_mw"].to_numpy(), ordered.index.to_numpy()

    def example(index: int) -> tuple[float, Any]:
        i = start + int(index)
        return (float(values[i]), int(rows[i])) if 0 <= i < len(values) else (float("nan"), None)

    return example


def _ingest_store(store: str, ordered: pd.DataFrame, bounds: Sequence[tuple[int, int]], tally: Tally,
                  register: bool, region: str, time_zone: str | None, bundled: BundledRegion | None,
                  quiet: bool) -> None:
    from models.store import Store, StoreError

    try:
        db = Store.open(store)
    except StoreError as err:
        _fail(str(err))
    try:
        known = db.zones()
        specs = new_zones(ordered, known, region, _time_zone(time_zone, region, {s.region: s.time_zone for s in
                                                                                 known.values()}, bundled)) \
            if register else []
        with _bar(quiet) as bar:
            task = bar.add_task("stored", total=len(ordered))
            for i, (start, end) in enumerate(bounds):
                # our own ranges, one `ingest_frame` batch each: its fixed-size cuts could part a fall-back pair
                result = db.ingest_frame(ordered.iloc[start:end], register=specs if i == 0 else (), batch=end - start)
                tally.add_batch(result, _example(ordered, start))
                bar.update(task, advance=end - start)
    except StoreError as err:
        _fail(str(err))
    finally:
        db.close()


def _ingest_server(target: str, ordered: pd.DataFrame, bounds: Sequence[tuple[int, int]], tally: Tally,
                   register: bool, region: str, time_zone: str | None, bundled: BundledRegion | None, quiet: bool,
                   client_options: dict | None = None) -> None:
    from models.store import StoreError
    from serving.client import ReadingsClient, ReadingsError, batch_requests

    with ReadingsClient(target, **(client_options or {})) as client:
        specs = []
        if register:
            known, region_zones = _server_zones(client, target)
            try:
                specs = new_zones(ordered, known, region, _time_zone(time_zone, region, region_zones, bundled))
            except StoreError as err:
                _fail(str(err))
        with _bar(quiet) as bar:
            sent = bar.add_task("sent", total=len(ordered))
            acked = bar.add_task("acknowledged", total=len(ordered))

            def counted() -> Iterator[Any]:  # runs on the stream's gRPC thread, as the stream takes batches
                for request in batch_requests(ordered, bounds, specs):
                    bar.update(sent, advance=len(request.readings))
                    yield request

            try:
                for ack in client.stream(counted()):
                    tally.add_batch(ack, _example(ordered, bounds[ack.batch][0]))
                    bar.update(acked, advance=ack.received)
            except ReadingsError as err:
                if tally.received:
                    tally.print(f"acknowledged before the error, of {len(ordered):,}")
                _server_error(err, target)


# ---------------------------------------------------------------------------------------------- replay

def hour_batches(table: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, int]], pd.DatetimeIndex]:
    """The readings grouped by hour, in time order: the table sorted by (hour, zone, timestamp), stably (a
    fall-back pair stays in file order, and in one batch), the [start, end) rows of each hour, and the hours."""
    import numpy as np
    import pandas as pd

    stamps = pd.DatetimeIndex(table["timestamp"])
    hours = stamps.floor("h") if stamps.tz is None else stamps.tz_convert("UTC").floor("h").tz_convert(stamps.tz)
    hour_key = hours.as_unit("us").asi8
    codes, _ = pd.factorize(table["zone"].astype(str), sort=True)
    order = np.lexsort((stamps.as_unit("us").asi8, codes, hour_key))
    hour_key = hour_key[order]
    starts = np.flatnonzero(np.r_[True, hour_key[1:] != hour_key[:-1]]) if len(order) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(order)].astype(np.int64)
    return table.iloc[order], list(zip(starts.tolist(), ends.tolist())), hours[order][starts]


def paced(items: Iterable[Any], offsets_s: Sequence[float], speed: float, stop: threading.Event,
          clock: Callable[[], float] = time.monotonic) -> Iterator[Any]:
    """`items`, the k-th released `offsets_s[k] / speed` seconds after the first, by a monotonic clock:
    every deadline counts from the start, so time spent sending does not add up into drift. Stops when
    `stop` is set (its wait is the sleep, so Ctrl-C is not held up by a long pause)."""
    start = clock()
    for item, offset in zip(items, offsets_s, strict=True):
        wait = start + offset / speed - clock()
        if wait > 0 and stop.wait(wait):
            return
        if stop.is_set():
            return
        yield item


def _hour_label(hour: pd.Timestamp) -> str:
    return hour.strftime("%Y-%m-%d %H:%M") + (f" {hour.strftime('%Z')}" if hour.tzinfo is not None else "")


def _parse_time(text: str | None, name: str, tz: Any) -> pd.Timestamp | None:
    import pandas as pd

    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ValueError(f"{name}: cannot read {text!r} as a time, e.g. 2018-07-01T00:00") from None
    if tz is not None:
        return stamp.tz_localize(tz) if stamp.tz is None else stamp.tz_convert(tz)
    if stamp.tz is not None:
        raise ValueError(f"{name} {text!r} has a UTC offset, but the data's times are wall-clock times without "
                         "one: give it as the data does (e.g. 2018-07-01T00:00)")
    return stamp


def replay(
    data: Path | None = typer.Option(None, help="History to replay: a long-format CSV/Parquet, wide CSV or "
                                                "folder (default: the bundled PJM zones)."),
    from_: str = typer.Option(..., "--from", help="First time to send (ISO 8601, as the data gives times: "
                                                  "wall-clock time for the bundled data)."),
    until: str | None = typer.Option(None, help="Stop before this time (default: the end of the data)."),
    speed: float = typer.Option(1.0, min=0.001, help="Simulated hours per real second."),
    server: str = typer.Option(DEFAULT_SERVER, help="HOST:PORT of a running `energyopt serve`."),
    register: bool = typer.Option(False, help="Register the data's zones the server does not know yet."),
    region: str | None = typer.Option(None, help="With --register: the new zones' region (default: a bundled "
                                                  "file's, PJM or NEM; else PJM)."),
    time_zone: str | None = typer.Option(None, help="With --register: the new zones' IANA time zone (default: "
                                                     "the region's, if known; else a bundled file's own, "
                                                     "America/New_York or Australia/Brisbane; UTC otherwise)."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """Stream a stored history into a running server as if it were live: from --from on, each simulated
    hour's readings of every zone as one batch over one StreamReadings stream, --speed hours per second;
    one line per hour (every k-th at high speed). Ctrl-C stops cleanly. Made for a server whose store
    holds the history up to --from (`Store.seed(until=...)`)."""
    import numpy as np

    from models.series import BUNDLED_PJM, SeriesError
    from models.store import StoreError
    from serving.client import ReadingsClient, ReadingsError, batch_requests

    path = data if data is not None else BUNDLED_PJM
    try:
        table = read_readings(str(path))
        tz = table["timestamp"].dt.tz
        first, last = _parse_time(from_, "--from", tz), _parse_time(until, "--until", tz)
        keep = table["timestamp"] >= first
        if last is not None:
            keep &= table["timestamp"] < last
        table = table[keep]
    except (SeriesError, StoreError, ValueError, FileNotFoundError, PermissionError) as err:
        _fail(str(err))
    if table.empty:
        _fail(f"{path} has no readings from {from_}{f' until {until}' if until else ''}")
    ordered, bounds, hours = hour_batches(table)
    offsets = (hours.as_unit("s").asi8 - hours.as_unit("s").asi8[0]).astype(np.float64) / 3600.0
    every = max(1, int(speed) // LINES_PER_SECOND)
    console.print(f"replaying {len(hours):,} hours ({_hour_label(hours[0])} .. {_hour_label(hours[-1])}, "
                  f"{len(ordered):,} readings of {ordered['zone'].nunique()} zone(s)) from {path} into {server} "
                  f"at {speed:g} h/s{f', a line every {every} hours' if every > 1 else ''}; Ctrl-C stops",
                  highlight=False)
    tally = Tally()
    stop = threading.Event()
    done = 0
    with ReadingsClient(server, token=api_key, **tls_files(ca, client_cert, client_key)) as client:
        specs = []
        if register:
            known, region_zones = _server_zones(client, server)
            try:
                bundled = _bundled(path)
                region = _region(region, bundled)
                specs = new_zones(ordered, known, region, _time_zone(time_zone, region, region_zones, bundled))
            except StoreError as err:
                _fail(str(err))
        line_hours = line_accepted = line_rejected = 0
        line_reason = ""
        try:
            for ack in client.stream(paced(batch_requests(ordered, bounds, specs), offsets, speed, stop)):
                rejected, reason = tally.add_batch(ack, _example(ordered, bounds[ack.batch][0]))
                done = ack.batch + 1
                line_hours += 1
                line_accepted += ack.received - rejected
                line_rejected += rejected
                line_reason = line_reason or reason
                if done % every == 0 or done == len(bounds):
                    span = f" ({line_hours} h)" if line_hours > 1 else ""
                    why = f"  first: {line_reason[:100]}" if line_reason else ""
                    console.print(f"{_hour_label(hours[ack.batch])}{span}  {line_accepted:>7,} accepted  "
                                  f"{line_rejected:>5,} rejected{why}", highlight=False)
                    line_hours = line_accepted = line_rejected = 0
                    line_reason = ""
        except KeyboardInterrupt:
            stop.set()
            console.print(f"stopped (Ctrl-C) after {done:,} of {len(hours):,} hours", highlight=False)
        except ReadingsError as err:
            stop.set()
            if tally.received:
                tally.print(f"replayed {done:,} hours before the error")
            _server_error(err, server)
        finally:
            stop.set()
    span = f"{_hour_label(hours[0])} .. {_hour_label(hours[done - 1])}" if done else "nothing"
    tally.print(f"replayed {done:,} hours ({span}) into {server}")
    if tally.received and tally.accepted == 0:
        _all_rejected(tally)
