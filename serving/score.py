"""Batch scoring on Ray Data: Parquet histories in, Parquet forecasts out.

    energyopt score --model DIR --input PATH --output DIR [--num-workers N] [--batch-size B]

The pipeline streams; no stage holds the whole input in one process:

    read_parquet(zone, timestamp, load_mw[, weather]) local path or any pyarrow filesystem URI; a weather
                                                     model's columns too (forecast hours: rows with no load)
      -> repartition(keys=[zone]).map_batches(_last_windows)
                                                     one row per series: its last `input_length` hours
                                                     (input written zone by zone, as exports usually
                                                     are: read tasks own zone ranges planned from the
                                                     footers' statistics, and nothing is shuffled)
      -> map_batches(_Forecaster, actor pool)        the bundle deserialized once per actor, B series
                                                     per forward pass (`Bundle.predict`, GPU if asked)
      -> write_parquet(<temp dir beside the output>) zone, origin, timestamp, horizon, mean, q<level>...
      -> swap the temp dir into place                a half-written result never looks complete

Each series is forecast from its end: `origin` is the first forecast hour (the hour after the series'
last observation, as `issue_time` elsewhere in energyopt), `horizon` is 1 for that hour, and `mean` is
the point forecast (the model's median, like `point` in region forecasts). A series whose last
`input_length` hours are not all present and finite cannot be forecast; it is skipped and listed in
`_skipped.parquet` (files starting with `_` are ignored by Parquet readers), and the job fails only if
no series at all can be scored. `_SUCCESS` (JSON: counts, model, timings) is written last.

Failures never pass for results. A bundle that fails its checksums is refused before any work (a
ScoringError). A forward pass that yields NaN or infinity for finite input fails the whole job naming the
series: the model itself is broken then (usually for every series), and a per-row error column would be
read as forecasts by any consumer that does not look for it. SIGTERM or SIGINT deletes the temporary
output and shuts down the Ray instance the job started (Ray's own reaper ends that instance if the job is
SIGKILLed); a SIGKILLed job's temporary folder, named with its host and pid, is removed by the next run
for the same output once that pid is gone.

The forecasts equal `load_bundle(model).predict(...)` in one process row for row, to float32 rounding
(torch's kernels round differently with other thread counts and batch sizes): the same bundle object
(loaded and validated by the driver, shipped through the object store, so nodes need no shared
filesystem), the same float32 windows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch

from models.bundle import Bundle, load_bundle
from models.data import hour_runs, mean_per_run
from models.runtime import ensure_ray
from models.series import LOAD, REQUIRED_COLUMNS, TIMESTAMP, WEATHER_VARIABLES, ZONE

HOUR_NS = 3_600_000_000_000
SUCCESS_FILE, SKIPPED_FILE = "_SUCCESS", "_skipped.parquet"


class ScoringError(ValueError):
    """Input, model or output that a scoring job cannot use; the message says what to fix."""


@dataclass
class ScoreResult:
    output: str
    series: int  # series forecast
    rows: int  # forecast rows written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (zone, reason)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ stages

def _last_windows(block: pa.Table, length: int, skip_log: Any, weather: tuple[str, ...] = (),
                  horizon: int = 0, full_horizon: int = 0) -> dict[str, np.ndarray]:
    """Every series of a block (whole series: the block comes from a hash partition on zone) -> one row
    each: zone, last hour (int64 ns), its last `length` loads; vectorized over the block's series.

    Duplicate hours (daylight saving) are averaged, as ingest does. A series without `length`
    contiguous, finite hours at its end is reported to `skip_log` and yields no row.

    For a model that reads `weather` columns (e.g. temperature_c), a series' history ends at its last row
    with a load; the rows after it, without a load, carry the forecast hours' weather: `horizon` of them at
    least, contiguous, from the hour after (the later hours of the model's `full_horizon` are held at the
    last value, as in ForecastRegion). Each row then has weather_past [length, K] and weather_future
    [full_horizon, K]; a series whose weather is missing, NaN or implausible (models.series.WEATHER_VARIABLES:
    a °F column is named as such) is skipped with the reason."""
    k_weather = len(weather)
    if block.num_rows == 0:
        empty = {"zone": np.array([], dtype=object), "last": np.array([], np.int64),
                 "history": np.zeros((0, length), np.float32)}
        if k_weather:
            empty |= {"weather_past": np.zeros((0, length, k_weather), np.float32),
                      "weather_future": np.zeros((0, full_horizon, k_weather), np.float32)}
        return empty
    zone_codes = pc.dictionary_encode(block.column(ZONE)).combine_chunks()
    names = zone_codes.dictionary.to_numpy(zero_copy_only=False)
    codes = zone_codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    stamps = block.column(TIMESTAMP)
    stamps = pc.cast(stamps, pa.timestamp("ns", stamps.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    loads = block.column(LOAD).cast(pa.float64()).to_numpy(zero_copy_only=False)
    temps = np.stack([block.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in weather],
                     axis=1) if k_weather else np.zeros((len(loads), 0))
    step_zone, step_hour = np.diff(codes), np.diff(stamps)
    if not ((step_zone > 0) | ((step_zone == 0) & (step_hour >= 0))).all():  # already ordered: skip the sort
        order = np.lexsort((stamps, codes))
        codes, stamps, loads, temps = codes[order], stamps[order], loads[order], temps[order]
    starts = hour_runs(codes, stamps)
    if len(starts) < len(codes):
        loads, temps = mean_per_run(loads, starts), mean_per_run(temps, starts)
        codes, stamps = codes[starts], stamps[starts]
    # series boundaries [begin, end)
    begin = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    end = np.append(begin[1:], len(codes))
    last_idx = end - 1
    if k_weather:  # the history ends at the series' last row with a load; the rows after it are forecast hours
        with_load = np.where(np.isfinite(loads), np.arange(len(loads)), -1)
        last_idx = np.maximum(np.maximum.reduceat(with_load, begin), begin)
    n_hours = last_idx + 1 - begin
    ok = n_hours >= length
    first_idx = np.where(ok, last_idx + 1 - length, begin)
    # unique sorted hours: the last `length` are contiguous iff they span exactly length - 1 hours
    contiguous = stamps[last_idx] - stamps[first_idx] == (length - 1) * HOUR_NS
    rows = np.minimum(first_idx[:, None] + np.arange(length), len(loads) - 1)
    windows = loads[rows]
    good = ok & contiguous & np.isfinite(windows).all(axis=1)
    reasons: dict[int, str] = {}
    if k_weather:
        ahead = np.minimum(last_idx[:, None] + 1 + np.arange(horizon), len(loads) - 1)  # [S, horizon]
        covered = (last_idx + horizon < end) & (stamps[ahead[:, -1]] - stamps[last_idx] == horizon * HOUR_NS)
        past_w, future_w = temps[rows], temps[ahead]  # [S, L, K], [S, horizon, K]
        finite = np.isfinite(past_w).all(axis=(1, 2)) & np.isfinite(future_w).all(axis=(1, 2))
        for k in np.flatnonzero(good & ~(covered & finite)):
            reasons[k] = (f"weather {list(weather)}: the model reads {horizon} forecast hours after the last load "
                          f"({n_hours[k]} h of history), given as rows with the weather and no load; "
                          f"{'they are not all there' if not covered[k] else 'some are missing (NaN)'}")
        good &= covered & finite
        for j, name in enumerate(weather):  # per series, as ForecastRegion checks a request's
            variable = WEATHER_VARIABLES[name]
            both = np.concatenate([past_w[..., j], future_w[..., j]], axis=1)  # [S, L + horizon]
            outside = ((both < variable.low) | (both > variable.high)).any(axis=1) & good  # the rare ones: named
            for k in np.flatnonzero(outside):
                reasons[k], good[k] = f"weather: {variable.implausible(both[k])}", False
    reported = []
    for k in np.flatnonzero(~good):  # rare: report and skip
        reason = reasons.get(k) or (
            f"{n_hours[k]} hours of history; the model reads {length}" if not ok[k] else
            f"the last {length} hours are not contiguous hourly values (gaps or sub-hourly stamps)"
            if not contiguous[k] else f"missing (NaN) or infinite load in the last {length} hours")
        reported.append(skip_log.add.remote(str(names[codes[begin[k]]]), reason))
    if reported:  # held before the task ends: the driver reads the log once every task has ended
        import ray

        ray.get(reported)
    out = {"zone": names[codes[begin[good]]].astype(object), "last": stamps[last_idx[good]],
           "history": windows[good].astype(np.float32)}
    if k_weather:
        held = np.repeat(future_w[good][:, -1:], full_horizon - horizon, axis=1)  # later hours: the last value
        out |= {"weather_past": past_w[good].astype(np.float32),
                "weather_future": np.concatenate([future_w[good], held], axis=1).astype(np.float32)}
    return out


class _Forecaster:
    """Actor-pool UDF: the bundle arrives once per actor; each call forecasts a batch of series."""

    def __init__(self, bundle: Any, horizon: int, tz: str | None, device: str) -> None:
        import ray

        self.bundle: Bundle = ray.get(bundle) if isinstance(bundle, ray.ObjectRef) else bundle
        self.horizon, self.tz, self.device = horizon, tz, device
        if device == "cpu":  # one intra-op thread per CPU Ray gave this actor: no oversubscription
            torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        last = pd.DatetimeIndex(batch["last"].astype("datetime64[ns]"))
        if self.tz:
            last = last.tz_localize("UTC").tz_convert(self.tz)
        history = _stacked(batch["history"])
        zones = batch["zone"].astype(str).tolist() if self.bundle.features.zone_dependent else None  # holidays
        extra = (_stacked(batch["weather_past"]), _stacked(batch["weather_future"])) if "weather_past" in batch \
            else None
        q = self.bundle.predict(history, last, self.horizon, zones=zones, extra=extra, device=self.device)
        if not np.isfinite(q).all():  # finite windows in, so the model is broken: never write it as a result
            bad = sorted(str(z) for z in batch["zone"][~np.isfinite(q).all(axis=(1, 2))])
            raise ScoringError(f"model {self.bundle.name} {self.bundle.version} forecast NaN or infinity for "
                               f"{len(bad)} series ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}) from "
                               "finite histories: its weights are broken; retrain it")
        return forecast_table(batch["zone"], batch["last"], q, self.bundle, self.tz)


def _stacked(column: np.ndarray) -> np.ndarray:
    """A tensor column of a numpy batch as one array (Ray may hand it over as an object array of rows)."""
    return np.stack(column) if column.dtype == object else column


def forecast_table(zones: np.ndarray, last_ns: np.ndarray, quantiles: np.ndarray, bundle: Bundle,
                   tz: str | None) -> pa.Table:
    """Long forecast rows for B series: zone, origin, timestamp, horizon, mean, q<level>..."""
    n, horizon = quantiles.shape[:2]
    steps = np.arange(1, horizon + 1, dtype=np.int64)
    origin = np.repeat(np.asarray(last_ns, np.int64) + HOUR_NS, horizon)
    stamp_type = pa.timestamp("ns", tz)
    return pa.table({
        "zone": pa.array(np.repeat(np.asarray(zones, dtype=object), horizon), pa.string()),
        "origin": pa.array(origin, pa.int64()).cast(stamp_type),
        "timestamp": pa.array(origin + np.tile(steps - 1, n) * HOUR_NS, pa.int64()).cast(stamp_type),
        "horizon": pa.array(np.tile(steps, n).astype(np.int16)),
        "mean": pa.array(quantiles[..., bundle.model.median_index].reshape(-1)),
        **{f"q{level:g}": pa.array(quantiles[..., j].reshape(-1)) for j, level in enumerate(bundle.quantiles)},
    })


# ------------------------------------------------------------------------------------------------ driver

def _resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(str(uri) if "://" in str(uri) else str(Path(uri).resolve()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise ScoringError(f"cannot open {uri}: {err}") from None


def inspect_input(path: str | Path, weather: tuple[str, ...] = ()) -> tuple[pafs.FileSystem, str, pa.Schema, int]:
    """Check the input before any work starts: it exists, is Parquet, has the columns (and the `weather`
    columns a model reads), has rows."""
    fs, where = _resolve(path)
    if fs.get_file_info(where).type == pafs.FileType.NotFound:
        raise ScoringError(f"input {path} does not exist")
    try:
        dataset = pads.dataset(where, filesystem=fs, format="parquet", exclude_invalid_files=False)
        schema, rows = dataset.schema, dataset.count_rows()
    except (pa.ArrowInvalid, OSError) as err:
        raise ScoringError(f"input {path} is not readable Parquet: {err}") from None
    if missing := [c for c in REQUIRED_COLUMNS if c not in schema.names]:
        raise ScoringError(f"input {path} lacks column(s) {missing}; it has {schema.names}. Scoring needs "
                           f"long-format rows {list(REQUIRED_COLUMNS)} (one per zone and hour)")
    if not pa.types.is_timestamp(schema.field(TIMESTAMP).type):
        raise ScoringError(f"input column {TIMESTAMP!r} is {schema.field(TIMESTAMP).type}, not a timestamp; "
                           "write it as a Parquet timestamp (pandas datetime64)")
    if missing := [c for c in weather if c not in schema.names]:
        raise ScoringError(f"input {path} lacks weather column(s) {missing} that the model reads; it has "
                           f"{schema.names}. Give each hour's value, and rows without a load for the forecast "
                           "hours' weather")
    for column in (LOAD, *weather):
        if not (pa.types.is_floating(schema.field(column).type) or pa.types.is_integer(schema.field(column).type)):
            raise ScoringError(f"input column {column!r} is {schema.field(column).type}, not numeric")
    if rows == 0:
        raise ScoringError(f"input {path} has no rows")
    return fs, where, schema, rows


def _prepare_output(path: str | Path) -> tuple[pafs.FileSystem, str, str]:
    """The output's filesystem, its path, and a fresh temporary directory beside it (same filesystem,
    so the final swap is a rename)."""
    fs, where = _resolve(path)
    if fs.get_file_info(where).type == pafs.FileType.File:
        raise ScoringError(f"output {path} is a file; pass a directory path (it is replaced as a whole)")
    parent, name = where.rstrip("/").rsplit("/", 1) if "/" in where.rstrip("/") else ("", where)
    _remove_stale_temps(fs, parent, name)
    tmp = f"{parent}/.{name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(tmp, recursive=True)
        probe = f"{tmp}/.probe"
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except OSError as err:
        raise ScoringError(f"cannot write the output beside {path} (in {parent or '.'}): {err}") from None
    return fs, where, tmp


def _remove_stale_temps(fs: pafs.FileSystem, parent: str, name: str) -> None:
    """Delete temporary folders for this output left by runs of this host that were killed (SIGKILL, power
    loss): their pid is gone. A live run's folder, or another host's, is left alone."""
    prefix, host = f".{name}.tmp-", socket.gethostname()
    try:
        siblings = fs.get_file_info(pafs.FileSelector(parent or ".", allow_not_found=True))
    except OSError:
        return
    for info in siblings:
        owner = info.base_name[len(prefix):].rsplit("-", 2) if info.base_name.startswith(prefix) else []
        if (info.type == pafs.FileType.Directory and len(owner) == 3 and owner[0] == host
                and owner[1].isdigit() and not _pid_alive(int(owner[1]))):
            with contextlib.suppress(OSError):
                fs.delete_dir(info.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _raise_on_sigterm() -> None:
    """SIGTERM raises SystemExit(128 + 15) in the main thread (as SIGINT raises KeyboardInterrupt), so the
    job's own cleanup runs, rather than the process vanishing mid-write or Ray's handler (set by ray.init)
    draining the node and exiting first."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def _sigterm_raises() -> Any:
    """`_raise_on_sigterm` for the block, then the caller's handler back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _raise_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


UNIT_ROWS = 1_000_000  # rows per read task when the input is ordered by zone (at least 4 row groups' worth)
MAX_REREAD = 1.5  # the ordered path may read at most this many times the input's rows


@dataclass
class ReadUnit:
    """The zones a read task owns, low <= zone < high (None: unbounded), and the row groups holding them."""

    low: str | None
    high: str | None
    parts: list[tuple[str, list[int]]]  # (file, row groups)


def zone_ordered_units(fs: pafs.FileSystem, path: str, max_files: int = 10_000) -> list[ReadUnit] | None:
    """Read tasks that own disjoint zone ranges, planned from the Parquet footers alone, or None.

    Batch inputs are usually written zone by zone (an export per zone or chunk of zones), so each row group
    holds a narrow range of zones. The footers' min/max of `zone` cut the zones into ranges of about UNIT_ROWS
    rows, and at least four of the largest row group (writers cut row groups by row count, mid-zone). A task
    reads the row groups whose range meets its own (a zone split between row groups or files is read whole by
    its owner, at the cost of a neighbouring row group) and keeps its own zones: every series is windowed by
    exactly one task and nothing is shuffled. None (the caller shuffles by zone instead) when statistics are
    missing, or the zones are so spread over the row groups that a task would read more than 4 x its share of
    rows or all of them more than MAX_REREAD times the input."""
    try:
        fragments = list(pads.dataset(path, filesystem=fs, format="parquet").get_fragments())
    except (pa.ArrowInvalid, OSError):
        return None
    if len(fragments) > max_files:
        return None
    groups = []  # (zone min, zone max, file, row group, rows)
    for fragment in fragments:
        meta = fragment.metadata
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if rg.num_rows == 0:
                continue
            columns = [rg.column(j).path_in_schema for j in range(rg.num_columns)]
            stats = rg.column(columns.index(ZONE)).statistics if ZONE in columns else None
            if stats is None or not stats.has_min_max or not isinstance(stats.min, str):
                return None
            groups.append((stats.min, stats.max, fragment.path, i, rg.num_rows))
    if not groups:  # no files, or only empty row groups
        return None
    groups.sort(key=lambda g: (g[0], g[1]))
    unit_rows_target = max(UNIT_ROWS, 4 * max(g[4] for g in groups))
    bounds: list[str] = []  # cut points between tasks: a row group's first zone every ~unit_rows_target rows
    rows_since = 0
    for low, _, _, _, rows in groups:
        if rows_since >= unit_rows_target and low > (bounds[-1] if bounds else groups[0][0]):
            bounds.append(low)
            rows_since = 0
        rows_since += rows
    units, rows_read = [], 0
    for low, high in zip([None, *bounds], [*bounds, None]):
        mine = [g for g in groups if (low is None or g[1] >= low) and (high is None or g[0] < high)]
        unit_rows = sum(g[4] for g in mine)
        parts: dict[str, list[int]] = {}
        for _, _, file, index, _ in mine:
            parts.setdefault(file, []).append(index)
        if unit_rows > 4 * unit_rows_target:  # zones too spread to cut: one task would hold too much
            return None
        rows_read += unit_rows
        units.append(ReadUnit(low, high, [(file, sorted(ix)) for file, ix in parts.items()]))
    if rows_read > MAX_REREAD * sum(g[4] for g in groups):
        return None
    return units


def _read_unit_windows(batch: dict[str, np.ndarray], units: list[ReadUnit], fs: pafs.FileSystem, skip_log: Any,
                       window: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read-and-window task of the ordered path: the unit's row groups, its own zones -> `_last_windows`."""
    import pyarrow.parquet as pq

    parts, columns = [], [*REQUIRED_COLUMNS, *window["weather"]]
    for k in batch["id"]:
        unit = units[int(k)]
        for file, row_groups in unit.parts:
            with fs.open_input_file(file) as handle:
                table = pq.ParquetFile(handle).read_row_groups(row_groups, columns=columns)
            zone = table.column(ZONE)
            keep = None
            if unit.low is not None:
                keep = pc.greater_equal(zone, unit.low)
            if unit.high is not None:
                below = pc.less(zone, unit.high)
                keep = below if keep is None else pc.and_(keep, below)
            parts.append(table if keep is None else table.filter(keep))
    return _last_windows(pa.concat_tables(parts, promote_options="default"), skip_log=skip_log, **window)


ACTOR_CPUS = 0.5  # a forecasting actor's CPU reservation (torch runs one thread in each)
FEEDER_CPUS = 1.0  # left free for the read, shuffle and windowing tasks that feed the actors


def _fit_workers(num_workers: int | None, use_gpu: bool) -> int:
    """The actor pool's size: as asked, or as wide as the cluster; checked against what is free now.

    Other work (a Serve application, a training run) may hold part of the cluster; a pool that takes
    every free CPU would starve the tasks that feed it and the pipeline would wait on itself forever, so
    say so instead."""
    import ray

    free = ray.available_resources()
    free_cpus = free.get("CPU", 0.0)
    if use_gpu:
        workers = num_workers or max(1, int(ray.cluster_resources().get("GPU", 1)))
        if free.get("GPU", 0.0) < workers or free_cpus < FEEDER_CPUS:
            raise ScoringError(f"scoring with {workers} GPU worker(s) needs {workers} free GPU(s) and "
                               f"{FEEDER_CPUS:g} free CPU; Ray has {free.get('GPU', 0.0):g} GPU(s) and "
                               f"{free_cpus:g} CPU(s) free (other work holds the rest)")
        return workers
    fits = int((free_cpus - FEEDER_CPUS) / ACTOR_CPUS)
    if num_workers is None and fits >= 1:
        return min(max(1, int(ray.cluster_resources().get("CPU", 1))), fits)
    workers = num_workers or 1  # not even one fits: say so below
    if workers > fits:
        raise ScoringError(f"scoring with {workers} worker(s) needs {workers * ACTOR_CPUS + FEEDER_CPUS:g} free "
                           f"CPUs (half a CPU per worker, one for reading and windowing); Ray has {free_cpus:g} "
                           "free (other work such as a Serve application holds the rest): use fewer "
                           "--num-workers or a larger cluster")
    return workers


def score(
    model: str | Path,
    input: str | Path,  # noqa: A002 - the CLI option's name
    output: str | Path,
    *,
    num_workers: int | None = None,
    batch_size: int = 1024,
    horizon: int | None = None,
    use_gpu: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ScoreResult:
    """Forecast every series in `input` with the bundle at `model` and write them to `output` (replaced
    atomically). Raises ScoringError (a ValueError) naming the problem for unusable inputs."""
    with _sigterm_raises():
        return _score(model, input, output, num_workers=num_workers, batch_size=batch_size, horizon=horizon,
                      use_gpu=use_gpu, progress=progress, log=log)


def _score(model: str | Path, input: str | Path, output: str | Path, *, num_workers: int | None,  # noqa: A002
           batch_size: int, horizon: int | None, use_gpu: bool, progress: bool,
           log: Callable[[str], None]) -> ScoreResult:
    import ray
    import ray.data

    started = time.perf_counter()
    bundle, horizon = _scoring_bundle(model, horizon)
    if batch_size < 1 or (num_workers is not None and num_workers < 1):
        raise ScoringError("--batch-size and --num-workers must be at least 1")
    weather = tuple(bundle.features.covariates)
    in_fs, in_path, schema, rows = inspect_input(input, weather)
    window = {"length": bundle.input_length, "weather": weather, "horizon": horizon,
              "full_horizon": bundle.max_horizon}
    out_fs, out_path, tmp = _prepare_output(output)
    tz = schema.field(TIMESTAMP).type.tz
    ray_was_up = ray.is_initialized()
    try:
        ensure_ray()
        _raise_on_sigterm()  # ray.init replaces it with its own
        ray.data.DataContext.get_current().enable_progress_bars = progress
        workers = _fit_workers(num_workers, use_gpu)
        skip_log = ray.remote(num_cpus=0)(_SkipLog).remote()
        log(f"scoring {rows:,} rows from {input} with {bundle.name} {bundle.version}: "
            f"{workers} worker(s), {batch_size} series per batch, {horizon} h ahead")
        windows = _windows(in_fs, in_path, rows, window, workers, skip_log, log)
        forecasts = windows.map_batches(
            _Forecaster, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_args=(ray.put(bundle), horizon, tz, "cuda" if use_gpu else "cpu"),
            **({"num_gpus": 1} if use_gpu else {"num_cpus": ACTOR_CPUS}))
        forecasts.write_parquet(tmp, filesystem=out_fs)
        skipped = ray.get(skip_log.items.remote())
        written = _count_rows(out_fs, tmp)
        series = written // horizon
        if series == 0:
            reasons = "; ".join(f"{z}: {r}" for z, r in skipped[:3])
            raise ScoringError(f"no series in {input} could be scored ({len(skipped)} skipped; {reasons})")
        seconds = time.perf_counter() - started
        manifest = {"model": str(model), "model_name": bundle.name, "model_version": bundle.version,
                    "input": str(input), "input_rows": rows, "series": series, "rows": written,
                    "skipped": len(skipped), "horizon": horizon, "quantiles": list(bundle.quantiles),
                    "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _publish(out_fs, tmp, out_path, skipped, manifest)
    except BaseException as err:
        if not ray_was_up:  # stop the writers first, so nothing lands in the folder after it is deleted
            ray.shutdown()
        with contextlib.suppress(OSError):
            out_fs.delete_dir(tmp)
        if isinstance(err, ray.exceptions.RayError):
            raise ScoringError(f"scoring failed: {_root_cause(err)}") from None
        raise
    finally:
        if not ray_was_up:  # a Ray this job started (or joined) ends with it, on success, error or signal
            ray.shutdown()
    return ScoreResult(output=str(output), series=series, rows=written, skipped=skipped, seconds=seconds)


def _scoring_bundle(model: str | Path, horizon: int | None) -> tuple[Bundle, int]:
    """The bundle at `model`, checked for batch scoring, and the horizon to forecast (default: the model's)."""
    try:
        bundle = load_bundle(model)
    except ValueError as err:
        raise ScoringError(str(err)) from None
    if other := [c for c in bundle.features.covariates if c not in WEATHER_VARIABLES]:
        raise ScoringError(f"model {model} needs covariates {other}; batch scoring reads calendar and weather "
                           f"({sorted(WEATHER_VARIABLES)}) only")
    if bundle.region_zones:
        raise ScoringError(f"model {model} reads the recent load of zones {list(bundle.region_zones)} beside each "
                           "series, which batch scoring of independent series does not have; score with a model "
                           "trained without region_zones, or forecast the region (energyopt forecast)")
    horizon = horizon or bundle.max_horizon
    if not 1 <= horizon <= bundle.max_horizon:
        raise ScoringError(f"horizon must be between 1 and {bundle.max_horizon} hours, got {horizon}")
    return bundle, horizon


def _windows(fs: pafs.FileSystem, path: str, rows: int, window: dict[str, Any], workers: int, skip_log: Any,
             log: Callable[[str], None]) -> Any:
    """The Ray Data stage that turns the input into one row per series (`_last_windows` with `window`: its
    length, weather columns and horizons)."""
    import ray.data

    units = zone_ordered_units(fs, path)
    if units is not None:  # tasks own disjoint zone ranges: read and window in parallel
        log(f"input ordered by zone: {len(units)} read task(s), no shuffle")
        return ray.data.range(len(units), override_num_blocks=len(units)).map_batches(  # column "id": unit index
            _read_unit_windows, batch_size=1, batch_format="numpy",
            fn_kwargs={"units": units, "fs": fs, "skip_log": skip_log, "window": window})
    ds = ray.data.read_parquet(path, filesystem=fs, columns=[*REQUIRED_COLUMNS, *window["weather"]])
    # hash-partition by zone: ~1M rows per partition keeps every shuffle block small
    partitions = max(workers, min(200, rows // UNIT_ROWS + 1))
    # Every row of a zone lands in the same block (this is what `groupby().map_groups()` builds on),
    # so one vectorized call per block finds all its series' windows, rather than a call per series.
    return ds.repartition(partitions, keys=[ZONE], sort=True).map_batches(
        _last_windows, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"skip_log": skip_log, **window})


def _publish(fs: pafs.FileSystem, tmp: str, target: str, skipped: list[tuple[str, str]], manifest: dict) -> None:
    """Add `_skipped.parquet` (when series were skipped) and `_SUCCESS` to the finished result in `tmp`,
    then swap it into place at `target`: the old result moves aside, the new one is renamed in, the old is
    deleted. On a local or HDFS filesystem each step is a rename; readers see the old or the new result, whole."""
    import pyarrow.parquet as pq

    if skipped:
        table = pa.table({"zone": [z for z, _ in skipped], "reason": [r for _, r in skipped]})
        with fs.open_output_stream(f"{tmp}/{SKIPPED_FILE}") as out:
            pq.write_table(table, out)
    with fs.open_output_stream(f"{tmp}/{SUCCESS_FILE}") as out:
        out.write(json.dumps(manifest, indent=2).encode())
    old = None
    if fs.get_file_info(target).type != pafs.FileType.NotFound:
        old = f"{tmp.rsplit('.tmp-', 1)[0]}.old-{uuid.uuid4().hex[:8]}"
        fs.move(target, old)
    fs.move(tmp, target)
    if old is not None:
        fs.delete_dir(old)


def _count_rows(fs: pafs.FileSystem, path: str) -> int:
    try:
        return pads.dataset(path, filesystem=fs, format="parquet").count_rows()
    except (pa.ArrowInvalid, OSError):  # nothing written: every series was skipped
        return 0


def _root_cause(err: BaseException) -> str:
    """The innermost exception's message: Ray wraps a UDF's error in several layers. A ScoringError raised
    in a worker (it names what to fix) is its own message; Ray may keep it only in the traceback text."""
    chain = [err]
    while (inner := chain[-1].__cause__ or getattr(chain[-1], "cause", None)) is not None and inner not in chain:
        chain.append(inner)
    for layer in chain:
        if isinstance(layer, ScoringError):
            return str(layer)
    for line in reversed(str(err).splitlines()):
        if line.startswith(("ScoringError: ", "serving.score.ScoringError: ")):
            return line.split("ScoringError: ", 1)[1]
    return f"{type(chain[-1]).__name__}: {chain[-1]}".split("\n")[0]


class _SkipLog:
    """A tiny actor collecting (zone, reason) for the series the windowing stage could not use."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def add(self, zone: str, reason: str) -> None:
        self._items.append((zone, reason))

    def items(self) -> list[tuple[str, str]]:
        return sorted(self._items)
