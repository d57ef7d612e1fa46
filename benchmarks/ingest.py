"""Ingest benchmark: readings into the store over gRPC, forecasts under a live feed, replica memory vs store size.

    python benchmarks/ingest.py                 -> benchmarks/results/ingest.json (about 10 min on 2 cores)
    python benchmarks/ingest.py --quick         a smoke run at tiny sizes (about 3 min; result not kept)

Every case runs the server as `energyopt serve` does, in its own process (`python -m serving.server`: a
local Ray with `--num-cpus 2`, one Forecaster replica, the HAProxy ingress), on free ports; this process
is the client. Synthetic hourly load (`training.synthetic`, plausible and positive) of `--zones` zones in
regions of `--zones-per-region`, time zone America/New_York, times sent as UTC ("...Z"). Stores are built
in a temporary directory (SQLite: WAL, synchronous=FULL) or a throwaway PostgreSQL cluster (fsync on,
`benchmarks/postgres.py`); the server is started with args {"seed": false, "store": ...}.

1. ingest_sqlite / ingest_postgres: a store holding `--history-days` of every zone (written in-process
   with Store.ingest_frame), then `--readings` new hours sent over ReadingsService.StreamReadings in
   batches of `--batch` (hour-major: each batch is `batch / zones` new hours of every zone), in streams of
   at most `--batches-per-stream` batches one after another. Throughput: acknowledged readings per wall
   second from the first send to the last acknowledgement (every reading must be acknowledged inserted).
2. forecast_c8 / forecast_c8_feed (on the SQLite server of 1): ForecastRegion of region R00 (its
   `--zones-per-region` zones, 48 h, 3 quantiles, from now), `--concurrency` client threads each sending
   the next request when the last is answered, `--duration` s after `--warmup` s; first without, then
   with a feeder process streaming `--feed-rate` readings/s of new hours of R00's zones in batches of
   `--feed-batch` (one StreamReadings, paced), so every forecast also catches up with the feed.
3. memory_<years>y: stores holding `--memory-years` (1 and 10) of hourly readings of `--memory-zones` zones,
   up to the last hour (built in-process with Store.ingest_frame, `--memory-build-batch` rows per batch);
   a server on each; the RSS of its Serve replica process (found by its title, ServeReplica, among the
   server's descendants) when ready and again after `--memory-serve-s` s of forecasts of every region
   (one in four with an issue time in the past year, read from the store).

The client, HAProxy, the replica and the feeder share this machine's cores (and other people's work: each
row records the CPU used by the benchmark's processes and by everybody else's).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result

HOUR = 3600
TIME_ZONE = "America/New_York"
QUANTILES = (0.1, 0.5, 0.9)
HORIZON = 48
TARGETS = {"sqlite_readings_per_s": 50_000, "postgres_readings_per_s": 20_000, "feed_p99_ratio": 1.3,
           "memory_ratio_within": 0.10}
GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


# ---------------------------------------------------------------------------------------------- data

def zone_names(n: int) -> list[str]:
    return [f"Z{i:03d}" for i in range(n)]


def zone_specs(n: int, per_region: int) -> list:
    from models.store import ZoneSpec

    return [ZoneSpec(z, f"R{i // per_region:02d}", 3600, TIME_ZONE) for i, z in enumerate(zone_names(n))]


def synthetic_matrix(n_zones: int, start: int, hours: int, seed: int) -> np.ndarray:
    """Load [zones, hours] (MW) of `n_zones` synthetic zones, hour 0 at UTC second `start`."""
    import pandas as pd

    from models.series import LOAD
    from training.synthetic import synthetic_load

    frame = synthetic_load(n_zones=n_zones, hours=hours, start=pd.Timestamp(start, unit="s"), seed=seed)
    return frame[LOAD].to_numpy().reshape(n_zones, hours)


def long_frame(zones: list[str], start: int, load: np.ndarray):
    """The long table Store.ingest_frame takes (zone, timestamp tz-aware UTC, load_mw), zone by zone."""
    import pandas as pd

    from models.series import LOAD, TIMESTAMP, ZONE

    n, hours = load.shape
    seconds = start + HOUR * np.arange(hours, dtype=np.int64)
    return pd.DataFrame({ZONE: np.repeat(np.asarray(zones, dtype=object), hours),
                         TIMESTAMP: pd.to_datetime(np.tile(seconds, n), unit="s", utc=True), LOAD: load.ravel()})


def iso_hours(start: int, hours: int) -> list[str]:
    import pandas as pd

    return list(pd.date_range(pd.Timestamp(start, unit="s"), periods=hours, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ"))


def reading_batches(zones: list[str], start: int, load: np.ndarray, batch: int) -> list:
    """IngestReadingsRequests of `batch` readings, hour-major (each batch: whole hours of every zone)."""
    from serving.api.energyopt.v1 import readings_pb2 as rpb

    n, hours = load.shape
    stamps = iso_hours(start, hours)
    flat_zone = [z for _ in range(hours) for z in zones]
    flat_time = [t for t in stamps for _ in zones]
    flat_value = load.T.ravel().tolist()
    return [rpb.IngestReadingsRequest(readings=[
        rpb.Reading(zone=z, timestamp=t, value=v) for z, t, v in
        zip(flat_zone[i : i + batch], flat_time[i : i + batch], flat_value[i : i + batch])])
        for i in range(0, n * hours, batch)]


def build_store(url: str, specs: list, zones: list[str], start: int, load: np.ndarray, batch: int = 20_000,
                tag: str = "store") -> dict:
    """Register the zones and write `load` (from UTC second `start`) with Store.ingest_frame."""
    from models.store import Store

    store = Store.open(url)
    try:
        store.register(specs)
        frame = long_frame(zones, start, load)
        done, t0, last = 0, time.perf_counter(), [0.0]

        def progress(k: int) -> None:
            nonlocal done
            done += k
            now = time.perf_counter()
            if now - last[0] > 10 or done == len(frame):
                last[0] = now
                rate = done / (now - t0)
                log(f"  [{tag}] {done:,} / {len(frame):,} rows, {rate:,.0f} rows/s, "
                    f"{(len(frame) - done) / rate:.0f} s left")

        result = store.ingest_frame(frame, batch=batch, progress=progress)
        if result.inserted != len(frame):
            raise RuntimeError(f"[{tag}] {len(frame) - result.inserted} rows not inserted: {result.rejected[:3]}")
        return {"rows": len(frame), "build_s": round(time.perf_counter() - t0, 1)}
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- server

def bench_ports(n: int) -> list[int]:
    """`n` free ports below the kernel's ephemeral range. Other services on this machine take theirs from
    bind(0) (serving.server.free_ports), i.e. from that range, and HAProxy binds with SO_REUSEPORT: a port
    handed out by bind(0) here and by bind(0) there before either server binds it would be served by both,
    each connection going to either. Ports from below the range are never handed out by bind(0)."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    out: list[int] = []
    while len(out) < n:
        port = random.randrange(max(low - 12_000, 1024), low)
        if port in out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        out.append(port)
    return out


def check_server(channel: object, zones: list[str]) -> None:
    """Fail unless the server on `channel` holds `zones` (it is ours, not another service on the same port)."""
    from serving.api.energyopt.v1 import readings_pb2 as rpb
    from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc

    held = {z.spec.zone for z in rpb_grpc.ReadingsServiceStub(channel).ListZones(rpb.ListZonesRequest(),
                                                                                timeout=60).zones}
    if not set(zones) <= held:
        raise RuntimeError(f"the server at this port holds other zones ({sorted(held)[:5]}...): another service "
                           "answers on it; run again")


def start_server(model: str, store: str, log_path: Path, num_cpus: int, args: dict | None = None):
    """`python -m serving.server` in its own process group on free ports; (process, gRPC target)."""
    grpc_port, http_port, stats_port, metrics_port = bench_ports(4)
    env = os.environ | {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
                        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port)}
    cmd = [sys.executable, "-m", "serving.server", "--model", model, "--grpc-port", str(grpc_port),
           "--http-port", str(http_port), "--replicas", "1", "--num-cpus", str(num_cpus),
           "--args", json.dumps({"seed": False, "store": store, **(args or {})})]
    with open(log_path, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=handle, text=True,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            log(f"  server pid {proc.pid}, gRPC :{grpc_port}, log {log_path}")
            return proc, f"127.0.0.1:{grpc_port}"
        if not line and proc.poll() is not None:
            break
    stop_server(proc)
    raise RuntimeError(f"the server did not start; see {log_path}")


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time (/proc/PID/stat field 22, to tell a reused pid) of every descendant of `pid`."""
    from benchmarks.serving import _proc_table

    table, out = _proc_table(), {}
    for child in table:
        p = child
        while p > 1 and p != pid:
            p = table.get(p, (0, 0))[0]
        if p == pid and child != pid:
            start = _start_time(child)
            if start:
                out[child] = start
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stop_server(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace_s` (Serve's controller can take over
    30 s to stop, and the measurements are done); then the server's descendants that outlived it in other
    process groups (Ray actors, HAProxy), by pid and by their process groups."""
    if proc.poll() is not None:
        return
    left = _descendants(proc.pid)
    # Ray runs actors in process groups of their own (HAProxy in its manager's): those groups go too, since
    # HAProxy may be restarted under a new pid meanwhile
    groups = {g for g in map(_pgid, left) if g} - {os.getpgid(0), proc.pid}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid, start in left.items() if _start_time(pid) == start]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for group in groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if alive and sig == signal.SIGTERM:
            time.sleep(2)


def replica_pid(server_pid: int) -> int:
    """The Serve replica process among the server's descendants (its title names ServeReplica), from /proc."""
    from benchmarks.serving import _proc_table

    table = _proc_table()
    found = []
    for pid in table:
        p = pid
        while p > 1 and p != server_pid:
            p = table.get(p, (0, 0))[0]
        if p != server_pid or pid == server_pid:
            continue
        try:
            # the forecasting replica (the Ingestor deployment's replica writes readings in its own process)
            if b"ServeReplica" in (title := Path(f"/proc/{pid}/cmdline").read_bytes()) and b"Forecaster" in title:
                found.append(pid)
        except OSError:
            continue
    if len(found) != 1:
        raise RuntimeError(f"expected one ServeReplica process under pid {server_pid}, found {found}")
    return found[0]


def replica_memory(server_pid: int) -> dict:
    """RSS and USS (private pages, MB) of the Serve replica process."""
    pid = replica_pid(server_pid)

    def kb(path: str, *keys: str) -> float:
        fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
        return sum(float(fields[k].split()[0]) for k in keys)

    return {"replica_pid": pid, "rss_mb": round(kb(f"/proc/{pid}/status", "VmRSS") / 1024, 1),
            "uss_mb": round(kb(f"/proc/{pid}/smaps_rollup", "Private_Clean", "Private_Dirty") / 1024, 1)}


class Profiler:
    """`py-spy record` of the replica while the block runs (raw collapsed stacks, for --profile)."""

    def __init__(self, server_pid: int, out: Path | None) -> None:
        self.server_pid, self.out, self.proc = server_pid, out, None

    def __enter__(self) -> Profiler:
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            pid = replica_pid(self.server_pid)
            beside = Path(sys.executable).parent / "py-spy"  # the virtual environment's, else PATH's
            spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
            self.proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                                          "--threads", "--output", str(self.out)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)
            log(f"  profile of the replica: {self.out}")


# ---------------------------------------------------------------------------------------------- 1. ingest

def stream_readings(target: str, requests: list, per_stream: int, zones: list[str]) -> dict:
    """Send `requests` over StreamReadings (streams of `per_stream` batches, one after another)."""
    import grpc

    from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc

    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        check_server(channel, zones)  # connected, the replica answering
        stub = rpb_grpc.ReadingsServiceStub(channel)
        first: list[float] = []

        def send(chunk: list):
            for request in chunk:
                if not first:
                    first.append(time.perf_counter())
                yield request

        acks, ack_times = [], []
        for i in range(0, len(requests), per_stream):
            for ack in stub.StreamReadings(send(requests[i : i + per_stream]), timeout=600):
                ack_times.append(time.perf_counter())
                acks.append(ack)
    wall = ack_times[-1] - first[0]
    sent = sum(len(r.readings) for r in requests)
    acked = sum(a.inserted + a.replaced + a.unchanged for a in acks)
    gaps = np.diff(ack_times) * 1000
    return {"readings": sent, "batches": len(requests), "acks": len(acks), "acknowledged": acked,
            "inserted": sum(a.inserted for a in acks), "rejected": sum(len(a.rejected) for a in acks),
            "first_rejection": next((a.rejected[0].reason for a in acks if a.rejected), None),
            "streams": math.ceil(len(requests) / per_stream), "wall_s": round(wall, 3),
            "readings_per_s": round(acked / wall, 1),
            "ack_gap_ms_p50": round(float(np.percentile(gaps, 50)), 2) if len(gaps) else None,
            "ack_gap_ms_p99": round(float(np.percentile(gaps, 99)), 2) if len(gaps) else None}


def ingest_case(name: str, store_url: str, a: argparse.Namespace, model: str, workdir: Path, t_history: int,
                load: np.ndarray, keep_server: bool = False) -> tuple[dict, subprocess.Popen | None, str]:
    """Build the store's history, start a server on it and stream the new hours: the row, and the server
    and its gRPC target when `keep_server`."""
    from benchmarks.serving import CpuMeter

    zones = zone_names(a.zones)
    history_hours = a.history_days * 24
    log(f"{name}: writing {a.history_days} days of {a.zones} zones in-process")
    built = build_store(store_url, zone_specs(a.zones, a.zones_per_region), zones, t_history,
                        load[:, :history_hours], tag=name)
    requests = reading_batches(zones, t_history + history_hours * HOUR, load[:, history_hours:][:, :a.stream_hours],
                               a.batch)
    log(f"{name}: starting the server")
    t0 = time.monotonic()
    proc, target = start_server(model, store_url, workdir / f"{name}_server.log", a.num_cpus)
    startup = time.monotonic() - t0
    try:
        log(f"{name}: streaming {sum(len(r.readings) for r in requests):,} readings in {len(requests)} batches")
        profile = Path(a.profile) / f"{name}.txt" if a.profile else None
        with Profiler(proc.pid, profile), CpuMeter(proc.pid) as cpu:
            row = stream_readings(target, requests, a.batches_per_stream, zones)
        row = {"case": name, "store": name.split("_", 1)[1], "zones": a.zones, "batch_size": a.batch,
               "history_rows": built["rows"], **row, "server_startup_s": round(startup, 1),
               "cpu_cores_ours": cpu.ours_cores, "cpu_cores_others": cpu.others_cores}
        log(f"{name}: {row['readings_per_s']:,.0f} readings/s ({row['acknowledged']:,} acknowledged in "
            f"{row['wall_s']} s, {row['rejected']} rejected; batch every {row['ack_gap_ms_p50']} ms p50); "
            f"CPU cores ours {cpu.ours_cores}, others {cpu.others_cores}")
    except BaseException:
        stop_server(proc)
        raise
    if not keep_server:
        stop_server(proc)
        proc = None
    return row, proc, target


# ---------------------------------------------------------------------------------------------- 2. latency

def forecast_loop(target: str, requests: list, threads: int, duration: float, warmup: float,
                  zones: list[str]) -> dict:
    """`threads` threads, each sending the next ForecastRegion when the last is answered."""
    import grpc

    from benchmarks.serving import percentiles
    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        check_server(channel, zones)
        stub = pb_grpc.ForecastServiceStub(channel)
        stub.ForecastRegion(requests[0], timeout=60)
        t_measure = time.perf_counter() + warmup
        t_end = t_measure + duration
        latencies: list[list[float]] = [[] for _ in range(threads)]
        errors: dict[str, int] = {}
        fallbacks = [0]

        def worker(k: int) -> None:
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    resp = stub.ForecastRegion(requests[i % len(requests)], timeout=60)
                    t1 = time.perf_counter()
                    if t0 >= t_measure and t1 <= t_end:
                        latencies[k].append(t1 - t0)
                        fallbacks[0] += resp.fallback_zones
                except grpc.RpcError as err:
                    if t0 >= t_measure:
                        errors[err.code().name] = errors.get(err.code().name, 0) + 1
                i += threads

        pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    flat = [x for part in latencies for x in part]
    return {"requests": len(flat), "errors": sum(errors.values()), "error_codes": errors,
            "rps": round(len(flat) / duration, 2), **percentiles(flat), "fallback_zones_answered": fallbacks[0]}


def feeder(target: str, zones: list[str], start: int, load: np.ndarray, batch: int, interval: float,
           ready: mp.Event, stop: mp.Event, out: mp.Queue) -> None:
    """A paced feed in its own process: `batch` readings every `interval` s (hour-major, new hours of
    `zones`) over one StreamReadings, until `stop`; puts its counts on `out`."""
    import grpc

    from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc

    requests = reading_batches(zones, start, load, batch)
    sent_at: list[float] = []
    lags: list[float] = []
    acked = rejected = 0
    t0 = None

    def paced():
        nonlocal t0
        t0 = time.perf_counter()
        for k, request in enumerate(requests):
            delay = t0 + k * interval - time.perf_counter()
            if delay > 0:
                if stop.wait(delay):
                    return
            elif stop.is_set():
                return
            sent_at.append(time.perf_counter())
            yield request

    try:
        with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
            check_server(channel, zones)
            stub = rpb_grpc.ReadingsServiceStub(channel)
            for k, ack in enumerate(stub.StreamReadings(paced(), timeout=600)):
                lags.append(time.perf_counter() - sent_at[k])
                acked += ack.inserted + ack.replaced + ack.unchanged
                rejected += len(ack.rejected)
                if k == 0:
                    ready.set()
        elapsed = (sent_at[-1] - t0) if sent_at else 0.0
        ms = np.asarray(lags) * 1000
        out.put({"batches_sent": len(sent_at), "readings_acknowledged": acked, "readings_rejected": rejected,
                 "feed_readings_per_s": round(acked / elapsed, 1) if elapsed else None,
                 "ran_out_of_data": len(sent_at) == len(requests),
                 "ack_ms_p50": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
                 "ack_ms_p99": round(float(np.percentile(ms, 99)), 2) if len(ms) else None})
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails the case
        out.put({"error": repr(err)})
        ready.set()


def latency_cases(proc: subprocess.Popen, target: str, a: argparse.Namespace, feed_start: int,
                  feed_load: np.ndarray) -> list[dict]:
    """forecast_c8 (no feed), then forecast_c8_feed (the feeder running), on the running server."""
    from benchmarks.serving import CpuMeter
    from serving.api.energyopt.v1 import forecast_pb2 as pb

    region = "R00"
    zones = zone_names(a.zones)[: a.zones_per_region]
    request = pb.ForecastRegionRequest(region=region, horizon=HORIZON, quantiles=QUANTILES)
    rows = []
    for feed in (False, True):
        name = f"forecast_c{a.concurrency}" + ("_feed" if feed else "")
        ctx = mp.get_context("spawn")
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        child = None
        if feed:
            child = ctx.Process(target=feeder, args=(target, zones, feed_start, feed_load, a.feed_batch,
                                                     a.feed_batch / a.feed_rate, ready, stop, out), daemon=True)
            child.start()
            if not ready.wait(120):
                child.kill()
                raise RuntimeError("the feeder did not get its first acknowledgement in 120 s")
        log(f"{name}: {a.concurrency} threads, {a.duration} s after {a.warmup} s warm-up"
            + (f", feed {a.feed_rate}/s in batches of {a.feed_batch}" if feed else ""))
        try:
            profile = Path(a.profile) / f"{name}.txt" if a.profile else None
            with Profiler(proc.pid, profile), CpuMeter(proc.pid) as cpu:
                row = forecast_loop(target, [request], a.concurrency, a.duration, a.warmup, zones)
        finally:
            stop.set()
        fed = {}
        if child is not None:
            fed = out.get(timeout=120)
            child.join(30)
            if "error" in fed:
                raise RuntimeError(f"the feeder failed: {fed['error']}")
            if fed["ran_out_of_data"]:
                raise RuntimeError("the feeder ran out of hours before the measurement ended (raise --feed-hours)")
        rows.append({"case": name, "store": "sqlite", "operation": "ForecastRegion", "region": region,
                     "region_zones": len(zones), "horizon": HORIZON, "concurrency": a.concurrency,
                     "duration_s": a.duration, "feed": feed,
                     **({"feed_rate_target": a.feed_rate, "feed_batch": a.feed_batch, **fed} if feed else {}),
                     **row, "cpu_cores_ours": cpu.ours_cores, "cpu_cores_others": cpu.others_cores})
        r = rows[-1]
        log(f"{name}: {r['rps']} req/s, p50 {r['p50_ms']} p99 {r['p99_ms']} ms, errors {r['errors']}"
            + (f"; feed {fed['feed_readings_per_s']}/s acknowledged, ack p99 {fed['ack_ms_p99']} ms" if feed else "")
            + f"; CPU cores ours {cpu.ours_cores}, others {cpu.others_cores}")
    return rows


# ---------------------------------------------------------------------------------------------- 3. memory

def build_memory_stores(a: argparse.Namespace, workdir: Path, t_end: int) -> dict[float, dict]:
    """SQLite stores of `--memory-years` each, the same zones and the same (latest) hours."""
    years = sorted(a.memory_years)
    hours = {y: int(round(y * 365 * 24)) for y in years}
    longest = hours[years[-1]]
    start = t_end - longest * HOUR
    zones = zone_names(a.memory_zones)
    specs = zone_specs(a.memory_zones, a.zones_per_region)
    paths = {y: workdir / f"memory_{y:g}y.db" for y in years}
    built = {y: {"rows": 0, "build_s": 0.0} for y in years}
    block = 10
    for b in range(0, a.memory_zones, block):
        part = zones[b : b + block]
        load = synthetic_matrix(len(part), start, longest, seed=1000 + b)
        for y in years:
            log(f"memory: {y:g}-year store, zones {part[0]}..{part[-1]} ({len(part) * hours[y]:,} rows)")
            done = build_store(str(paths[y]), specs if b == 0 else [], part, t_end - hours[y] * HOUR,
                               load[:, longest - hours[y]:], batch=a.memory_build_batch, tag=f"{y:g}y")
            built[y]["rows"] += done["rows"]
            built[y]["build_s"] = round(built[y]["build_s"] + done["build_s"], 1)
    for y in years:
        built[y]["path"] = str(paths[y])
        built[y]["store_mb"] = round(sum(p.stat().st_size for p in paths[y].parent.glob(paths[y].name + "*")) / 2**20,
                                     1)
    return built


def memory_case(years: float, built: dict, a: argparse.Namespace, model: str, workdir: Path) -> dict:
    """A server on one memory store: the replica's RSS when ready and after serving forecasts of every region
    (one in four from an hour in the past, held by every store: the smallest's last year less four weeks)."""
    from serving.api.energyopt.v1 import forecast_pb2 as pb

    log(f"memory_{years:g}y: starting the server on {built['rows']:,} rows ({built['store_mb']} MB)")
    t0 = time.monotonic()
    proc, target = start_server(model, built["path"], workdir / f"memory_{years:g}y_server.log", a.num_cpus)
    startup = time.monotonic() - t0
    try:
        ready = replica_memory(proc.pid)
        regions = sorted({s.region for s in zone_specs(a.memory_zones, a.zones_per_region)})
        rng = np.random.default_rng(0)
        requests = []
        most_back = int(min(a.memory_years) * 365 * 24) - 700  # the fallback reads 4 weeks before the issue time
        for k in range(400):
            req = pb.ForecastRegionRequest(region=regions[k % len(regions)], horizon=HORIZON, quantiles=QUANTILES)
            if k % 4 == 3:
                back = int(rng.integers(7 * 24, max(most_back, 7 * 24 + 1)))
                issue = (int(time.time()) // HOUR - back) * HOUR
                req.issue_time = time.strftime("%Y-%m-%dT%H:00:00+00:00", time.gmtime(issue))
            requests.append(req)
        served = forecast_loop(target, requests, a.concurrency, a.memory_serve_s, 1.0, zone_names(a.memory_zones))
        after = replica_memory(proc.pid)
    finally:
        stop_server(proc)
    row = {"case": f"memory_{years:g}y", "store": "sqlite", "years": years, "zones": a.memory_zones,
           "rows": built["rows"], "store_mb": built["store_mb"], "store_build_s": built["build_s"],
           "server_startup_s": round(startup, 1), "rss_mb_ready": ready["rss_mb"], "uss_mb_ready": ready["uss_mb"],
           "rss_mb": after["rss_mb"], "uss_mb": after["uss_mb"], "forecasts_served": served["requests"],
           "forecast_errors": served["errors"], "forecast_p50_ms": served["p50_ms"]}
    log(f"memory_{years:g}y: replica RSS {ready['rss_mb']} MB ready, {after['rss_mb']} MB after "
        f"{served['requests']} forecasts ({served['errors']} errors)")
    return row


# ---------------------------------------------------------------------------------------------- main

def versions(postgres_url: str | None) -> dict:
    import platform
    import sqlite3
    from importlib.metadata import version

    out = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for package in ("ray", "grpcio", "protobuf", "sqlalchemy", "psycopg", "numpy", "pandas", "torch"):
        try:
            out[package] = version(package)
        except Exception:  # noqa: BLE001 - not installed
            out[package] = None
    if postgres_url:
        import sqlalchemy as sa

        engine = sa.create_engine(postgres_url)
        with engine.connect() as conn:
            out["postgresql"] = conn.execute(sa.text("SHOW server_version")).scalar_one()
            out["postgresql_fsync"] = conn.execute(sa.text("SHOW fsync")).scalar_one()
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/model",
                        help="Model bundle (default: the demo's, trained first when missing, as serving.py does).")
    parser.add_argument("--zones", type=int, default=100)
    parser.add_argument("--zones-per-region", type=int, default=10)
    parser.add_argument("--history-days", type=int, default=14, help="Store contents before the stream.")
    parser.add_argument("--readings", type=int, default=250_000, help="Readings streamed per store.")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches-per-stream", type=int, default=50,
                        help="Batches per StreamReadings call (the gRPC request timeout is 60 s).")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds measured per latency case.")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--feed-rate", type=float, default=1000.0, help="Readings per second of the feeder.")
    parser.add_argument("--feed-batch", type=int, default=100)
    parser.add_argument("--memory-years", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--memory-zones", type=int, default=100)
    parser.add_argument("--memory-build-batch", type=int, default=20_000)
    parser.add_argument("--memory-serve-s", type=float, default=10.0, help="Seconds of forecasts before the RSS.")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the server's local Ray.")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sqlite", "postgres", "latency", "memory"])
    parser.add_argument("--quick", action="store_true",
                        help="Tiny sizes (20 zones, 20,000 readings, 3 s cases, 0.1 and 1 year of 20 zones, "
                             "unless given); the result goes to the temporary directory, not benchmarks/results.")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="py-spy record the replica during each ingest and latency case into DIR/<case>.txt "
                             "(collapsed stacks; `pip install py-spy`). Slows the server down a little.")
    parser.add_argument("--out", default=None, help="Result file (default: benchmarks/results/ingest.json).")
    if parser.parse_known_args()[0].quick:  # tiny sizes, except those given
        parser.set_defaults(zones=20, readings=20_000, duration=3.0, warmup=1.0, memory_years=[0.1, 1],
                            memory_zones=20, memory_serve_s=3.0)
    a = parser.parse_args()
    if a.batch % a.zones:
        parser.error("--batch must be a multiple of --zones (each batch holds whole hours)")
    a.stream_hours = math.ceil(a.readings / a.zones / (a.batch // a.zones)) * (a.batch // a.zones)
    feed_hours_per_s = a.feed_rate / a.zones_per_region
    a.feed_hours = int(math.ceil((a.duration + a.warmup + 30) * feed_hours_per_s))  # 30 s of slack
    started = time.monotonic()

    from benchmarks.common import demo_forecaster
    from models.bundle import load_bundle

    model = str(Path(a.model).resolve())
    bundle = demo_forecaster(Path(model))[0] if a.model == "runs/demo/model" else load_bundle(model)
    workdir = Path(tempfile.mkdtemp(prefix="energyopt-ingest-bench-"))
    log(f"model {bundle.name} {bundle.version}; work directory {workdir}")

    # one timeline, in the past (the store refuses readings over 1 h ahead of the server's clock):
    # history, then the streamed hours, then the feeder's hours, ending a day before now
    now_hour = int(time.time()) // HOUR * HOUR
    total_hours = a.history_days * 24 + a.stream_hours + a.feed_hours
    t_history = now_hour - (total_hours + 24) * HOUR
    log(f"synthetic load: {a.zones} zones x {total_hours:,} hours")
    load = synthetic_matrix(a.zones, t_history, total_hours, seed=7)
    feed_start = t_history + (a.history_days * 24 + a.stream_hours) * HOUR
    feed_load = load[: a.zones_per_region, a.history_days * 24 + a.stream_hours :]

    rows: list[dict] = []
    pg_versions: dict = {}
    try:
        if "sqlite" not in a.skip or "latency" not in a.skip:
            path = workdir / "ingest.db"
            row, proc, target = ingest_case("ingest_sqlite", str(path), a, model, workdir, t_history, load,
                                            keep_server="latency" not in a.skip)
            if "sqlite" not in a.skip:
                rows.append(row)
            if proc is not None:
                try:
                    rows += latency_cases(proc, target, a, feed_start, feed_load)
                finally:
                    stop_server(proc)
        if "postgres" not in a.skip:
            from benchmarks.postgres import throwaway_postgres

            with throwaway_postgres() as pg_url:
                row, _, _ = ingest_case("ingest_postgres", pg_url, a, model, workdir, t_history, load)
                rows.append(row)
                pg_versions = versions(pg_url)
        if "memory" not in a.skip:
            log(f"memory: building stores of {a.memory_years} years x {a.memory_zones} zones")
            built = build_memory_stores(a, workdir, now_hour - HOUR)
            for years in sorted(a.memory_years):
                rows.append(memory_case(years, built[years], a, model, workdir))
    except BaseException:
        for db in workdir.glob("*.db*"):  # the stores go; the server logs stay for a look
            db.unlink()
        log(f"failed; the servers' logs are in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    total_s = time.monotonic() - started

    summary = make_summary(rows, a)
    summary["benchmark_wall_s"] = round(total_s, 1)
    config = {
        "model": bundle.name, "model_version": bundle.version, "zones": a.zones, "zones_per_region": a.zones_per_region,
        "time_zone": TIME_ZONE, "history_days": a.history_days, "readings_streamed": a.stream_hours * a.zones,
        "batch": a.batch, "batches_per_stream": a.batches_per_stream, "concurrency": a.concurrency,
        "duration_s": a.duration, "warmup_s": a.warmup, "feed_rate": a.feed_rate, "feed_batch": a.feed_batch,
        "forecast": {"region": "R00", "horizon": HORIZON, "quantiles": list(QUANTILES)},
        "memory_years": a.memory_years, "memory_zones": a.memory_zones, "memory_serve_s": a.memory_serve_s,
        "server": f"python -m serving.server --replicas 1 --num-cpus {a.num_cpus} (HAProxy ingress), "
                  "args {seed: false, store: ...}",
        "sqlite": "WAL, synchronous=FULL (models/store.py)", "postgresql": "throwaway cluster, fsync=on, "
                                                                           "synchronous_commit=on",
        "client": "this process (grpc sync stubs; latency: one thread per concurrent caller); feeder: a process",
        "targets": TARGETS, "quick": a.quick,
        "versions": versions(None) | pg_versions,
        "load_average_1_5_15_min_at_end": os.getloadavg(),
    }
    if a.out:
        out = Path(a.out)
    elif a.quick:
        out = Path(tempfile.gettempdir()) / "ingest_quick.json"
    else:
        out = None
    path = write_result("ingest", config, rows, summary, **({"out_dir": out.parent} if out else {}))
    if out and path != out:
        path = path.replace(out)
    print(json.dumps(summary, indent=1))
    log(f"wrote {path} ({total_s:.0f} s)")


def make_summary(rows: list[dict], a: argparse.Namespace) -> dict:
    by = {r["case"]: r for r in rows}
    s: dict = {}
    checks: dict = {}
    for store, key in (("sqlite", "sqlite_readings_per_s"), ("postgres", "postgres_readings_per_s")):
        r = by.get(f"ingest_{store}")
        if r:
            s[f"{store}_readings_per_s"] = r["readings_per_s"]
            s[f"{store}_vs_target"] = round(r["readings_per_s"] / TARGETS[key], 3)
            checks[f"{store}_ge_{TARGETS[key]}_per_s"] = r["readings_per_s"] >= TARGETS[key]
            checks[f"{store}_all_acknowledged_inserted"] = r["inserted"] == r["readings"] and not r["rejected"]
    base, fed = by.get(f"forecast_c{a.concurrency}"), by.get(f"forecast_c{a.concurrency}_feed")
    if base and fed:
        s["forecast_p50_ms"], s["forecast_p99_ms"] = base["p50_ms"], base["p99_ms"]
        s["forecast_p50_ms_feed"], s["forecast_p99_ms_feed"] = fed["p50_ms"], fed["p99_ms"]
        s["feed_readings_per_s"] = fed.get("feed_readings_per_s")
        if base["p99_ms"] and fed["p99_ms"]:
            s["feed_p99_ratio"] = round(fed["p99_ms"] / base["p99_ms"], 3)
            s["feed_p50_ratio"] = round(fed["p50_ms"] / base["p50_ms"], 3)
            checks[f"feed_p99_ratio_le_{TARGETS['feed_p99_ratio']}"] = s["feed_p99_ratio"] <= TARGETS["feed_p99_ratio"]
        checks["forecast_zero_errors"] = base["errors"] == 0 and fed["errors"] == 0
    mem = sorted((r for r in rows if r["case"].startswith("memory_")), key=lambda r: r["years"])
    if len(mem) >= 2:
        lo, hi = mem[0], mem[-1]
        s[f"replica_rss_mb_{lo['years']:g}y"], s[f"replica_rss_mb_{hi['years']:g}y"] = lo["rss_mb"], hi["rss_mb"]
        s["replica_rss_ratio"] = round(hi["rss_mb"] / lo["rss_mb"], 3)
        s["replica_uss_ratio"] = round(hi["uss_mb"] / lo["uss_mb"], 3)
        checks["replica_rss_within_10_percent"] = abs(s["replica_rss_ratio"] - 1) <= TARGETS["memory_ratio_within"]
        checks["memory_forecasts_zero_errors"] = all(r["forecast_errors"] == 0 for r in mem)
    s["cpu_cores_used_by_other_processes_mean"] = round(float(np.mean([r["cpu_cores_others"] for r in rows
                                                                       if "cpu_cores_others" in r])), 2) if any(
        "cpu_cores_others" in r for r in rows) else None
    s["checks"] = checks
    s["all_pass"] = all(checks.values()) if checks else None
    return s


if __name__ == "__main__":
    main()
