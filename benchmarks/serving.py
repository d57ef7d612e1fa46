"""Serving benchmark: closed-loop gRPC load against the Ray Serve application, with an in-process reference.

    python benchmarks/serving.py                      -> benchmarks/results/serving.json (about 6 min)
    python benchmarks/serving.py --duration 3         a quick smoke run

1. Reference: the same model call made in this process without RPC (`serving.engine.Engine.run` on one
   request's inputs, the code a replica runs), so the serving overhead is a ratio from one run.
2. The server starts in its own process (`python -m serving.server`: a local Ray, `--replicas`
   replicas (default 2, serve.yaml's max_replicas here; 1 replica tops out at ~350 req/s on 2 cores), the
   HAProxy ingress as `energyopt serve` runs it) on free ports; this process is the load generator
   (grpc.aio, one channel).
3. For each case and concurrency (1, 8, 32, 64): `concurrency` workers each send a request, wait for the
   answer and send the next, for `--duration` seconds after a warm-up. The replicas' counters
   (GetModelInfo, summed over replicas) before and after give the mean batch they saw; /proc gives the CPU used by
   the server and this process ("ours") and by every other process on the machine ("others": contention).
   - region: ForecastRegion PJM, 5 zones, 48 h, 3 quantiles, from the server's latest history
     (identical requests: a batch computes the 5 zones once);
   - region_distinct: the same with a different issue time per request (every request computed);
   - series: ForecastSeries, 256 client histories of 336 h (real PJM windows) per call.

The load generator, HAProxy and the replica share this machine's cores (and, on a shared machine,
other people's work): the figures are for the whole loop on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result

QUANTILES = (0.1, 0.5, 0.9)


def percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2)}


# ---------------------------------------------------------------------------------------------- contention

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used) for every process on the machine."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return table


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / _TICK  # minus idle and iowait


class CpuMeter:
    """Splits the machine's CPU time during a measurement into ours (the server's process tree and this
    load generator) and everybody else's: the contention the figures were taken under."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def _ours(self) -> float:
        table = _proc_table()
        total = 0.0
        for pid, (_, cpu) in table.items():
            p = pid
            while p > 1 and p != self.server_pid and p != os.getpid():
                p = table.get(p, (0, 0))[0]
            if p in (self.server_pid, os.getpid()):
                total += cpu
        return total

    def __enter__(self) -> CpuMeter:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), _busy_cpu_s(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.t0
        ours, busy = self._ours() - self.ours0, _busy_cpu_s() - self.busy0
        self.ours_cores = round(ours / elapsed, 2)
        self.others_cores = round(max(busy - ours, 0.0) / elapsed, 2)


# ---------------------------------------------------------------------------------------------- requests

def build_requests(horizon: int, series_per_call: int, n_series_requests: int, seed: int = 0) -> dict:
    """The requests of each case (see CASES), from the bundled PJM history."""
    import pandas as pd

    from serving.api.energyopt.v1 import forecast_pb2 as pb
    from serving.engine import load_histories

    region = pb.ForecastRegionRequest(region="PJM", horizon=horizon, quantiles=QUANTILES)
    by_zone = load_histories(None)
    histories = list(by_zone.values())
    rng = np.random.default_rng(seed)
    end = min(h.end for h in histories)
    distinct = [pb.ForecastRegionRequest(region="PJM", horizon=horizon, quantiles=QUANTILES,
                                         issue_time=(end - pd.Timedelta(hours=int(k))).isoformat())
                for k in rng.choice(np.arange(0, 4 * 365 * 24), size=20_000, replace=False)]
    series_requests = []
    for _ in range(n_series_requests):
        last = pd.Timestamp("2017-01-01") + pd.Timedelta(hours=int(rng.integers(0, 365 * 24)))
        request = pb.ForecastSeriesRequest(horizon=horizon, quantiles=QUANTILES)
        for i in range(series_per_call):
            h = histories[int(rng.integers(len(histories)))]
            valid = np.flatnonzero(np.isfinite(h.values))
            end = int(rng.integers(valid[0] + 336, valid[-1]))
            window = h.values[end - 336 : end]
            if not np.isfinite(window).all():
                window = np.nan_to_num(window, nan=float(np.nanmean(window)))
            request.series.add(name=f"s{i}", history=window.tolist(), last_timestamp=last.isoformat())
        series_requests.append(request)
    return {"region": [region], "region_distinct": distinct, "series": series_requests}


# case -> (RPC, what it is)
CASES = {
    "region": ("ForecastRegion", "PJM, 5 zones, 48 h, 3 quantiles, from the latest history (the default "
                                 "issue time): concurrent requests are identical, so a batch computes the 5 "
                                 "zones once"),
    "region_distinct": ("ForecastRegion", "as region, but every request has its own issue time (random hours "
                                          "of the last 4 years): no two share inputs, so a batch computes "
                                          "5 zones per request"),
    "series": ("ForecastSeries", "256 client histories of 336 h (real PJM windows) per call, 48 h, 3 quantiles"),
}


# ---------------------------------------------------------------------------------------------- reference

def in_process(model: str, requests: dict, cases: list[str], duration: float, threads: int) -> list[dict]:
    """The replica's model call on one request's inputs, in this process, without RPC."""
    import torch

    from models.bundle import load_bundle
    from serving.engine import Engine

    torch.set_num_threads(threads)
    engine = Engine.from_data(load_bundle(model))
    rows = []
    for case in cases:
        op = CASES[case][0]
        make = engine.region_job if op == "ForecastRegion" else engine.series_job
        pool = requests[case]
        engine.run([make(pool[-1])])  # warm-up (caches, allocator)
        latencies, i = [], 0
        end = time.perf_counter() + duration
        while time.perf_counter() < end or len(latencies) < 5:
            t0 = time.perf_counter()
            engine.run([make(pool[i % len(pool)])])
            latencies.append(time.perf_counter() - t0)
            i += 1
        rows.append({"case": case, "operation": op, "mode": "in-process", "concurrency": 1,
                     "requests": len(latencies), "errors": 0, "rps": round(len(latencies) / sum(latencies), 2),
                     **percentiles(latencies), "torch_threads": threads})
        print(f"  in-process {case}: {rows[-1]['rps']} calls/s, p50 {rows[-1]['p50_ms']} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- load

async def closed_loop(target: str, case: str, requests: list, concurrency: int, duration: float,
                      warmup: float, timeout: float, replicas: int = 1) -> dict:
    import grpc

    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        op = CASES[case][0]
        call = getattr(stub, op)
        before = await replica_counters(stub, replicas)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        t_start = loop.time()
        t_measure, t_end = t_start + warmup, t_start + warmup + duration
        before_measured = None

        async def worker(k: int) -> None:
            i = k
            while loop.time() < t_end:
                t0 = loop.time()
                try:
                    await call(requests[i % len(requests)], timeout=timeout)
                    ok = True
                except grpc.aio.AioRpcError as err:
                    ok = False
                    if t0 >= t_measure:
                        errors[err.code().name] = errors.get(err.code().name, 0) + 1
                if ok and t0 >= t_measure and loop.time() <= t_end:
                    latencies.append(loop.time() - t0)
                i += concurrency

        async def snapshot() -> None:
            nonlocal before_measured
            await asyncio.sleep(warmup)
            before_measured = await replica_counters(stub, replicas)

        await asyncio.gather(snapshot(), *(worker(k) for k in range(concurrency)))
        after = await replica_counters(stub, replicas)
    base = before_measured or before
    d_req, d_batches, d_series = (after.requests - base.requests, after.batches - base.batches,
                                  after.series - base.series)
    d_computed = after.computed_series - base.computed_series
    return {
        "case": case, "operation": op, "mode": "grpc", "concurrency": concurrency, "duration_s": duration,
        "requests": len(latencies), "errors": sum(errors.values()), "error_codes": errors,
        "rps": round(len(latencies) / duration, 2), **percentiles(latencies),
        "mean_batch_requests": round(d_req / d_batches, 2) if d_batches else None,
        "mean_batch_series": round(d_series / d_batches, 1) if d_batches else None,
        "mean_batch_computed_series": round(d_computed / d_batches, 1) if d_batches else None,
        "max_batch_requests_seen": after.max_batch_requests,
        "series_per_s": round(d_series / duration, 1),
    }


class ReplicaCounters(NamedTuple):
    """Batching counters summed over every replica (each GetModelInfo answer is one replica's)."""

    requests: int
    batches: int
    series: int
    computed_series: int
    max_batch_requests: int


async def replica_counters(stub, replicas: int) -> ReplicaCounters:
    """Ask GetModelInfo until every replica has answered once, and add their counters up."""
    from serving.api.energyopt.v1 import forecast_pb2 as pb

    seen = {}
    for _ in range(100):  # concurrent calls: an idle ingress may send one caller's calls to one replica
        answers = await asyncio.gather(*(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
                                         for _ in range(8 * replicas)))
        seen.update((info.stats.replica, info.stats) for info in answers)
        if len(seen) == replicas:
            break
        await asyncio.sleep(0.2)
    if len(seen) < replicas:
        raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered GetModelInfo")
    return ReplicaCounters(*(sum(getattr(st, f) for st in seen.values()) for f in ReplicaCounters._fields[:4]),
                           max(st.max_batch_requests for st in seen.values()))


# ---------------------------------------------------------------------------------------------- main

def start_server(model: str, grpc_port: int, http_port: int, user_config: dict, args: dict,
                 log_path: Path, haproxy: bool, replicas: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "serving.server", "--model", model, "--grpc-port", str(grpc_port),
           "--http-port", str(http_port), "--replicas", str(replicas), "--user-config", json.dumps(user_config),
           "--args", json.dumps(args), *([] if haproxy else ["--no-haproxy"])]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            return proc
        if not line and proc.poll() is not None:
            break
    stop_server(proc)
    raise RuntimeError(f"the server did not start; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/model",
                        help="Model bundle (default: the demo's, trained first when missing).")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="Seconds measured per case and concurrency (>= 20 for the real run).")
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds of load before measuring.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--replicas", type=int, default=2,
                        help="Forecaster replicas, fixed (serve.yaml's max_replicas for a 2-core machine).")
    parser.add_argument("--series-per-call", type=int, default=256)
    parser.add_argument("--max-batch-series", type=int, default=256)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="Intra-op threads of the replica and of the reference (Ray gives a 1-CPU replica 1).")
    parser.add_argument("--timeout", type=float, default=120.0, help="Client deadline per call (s).")
    parser.add_argument("--no-haproxy", action="store_true",
                        help="Serve's Python proxies instead of the HAProxy ingress (`energyopt serve`'s default).")
    parser.add_argument("--out", default=None, help="Result file (default: benchmarks/results/serving.json).")
    a = parser.parse_args()

    from benchmarks.common import demo_forecaster
    from models.bundle import load_bundle

    model = str(Path(a.model).resolve())
    bundle = demo_forecaster(Path(model))[0] if a.model == "runs/demo/model" else load_bundle(model)
    print(f"model {bundle.name} {bundle.version}; building requests", flush=True)
    requests = build_requests(a.horizon, a.series_per_call, 8)
    print("reference (in-process, no RPC):", flush=True)
    rows = in_process(model, requests, a.cases, min(a.duration, 10.0), a.torch_threads)

    from serving.server import free_ports

    grpc_port, http_port = free_ports(2)
    user_config = {"max_batch_series": a.max_batch_series, "batch_wait_timeout_s": a.batch_wait_timeout_s}
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "energyopt_serving_bench_server.log"
    print(f"starting the server (gRPC :{grpc_port}, log {log_path})", flush=True)
    t0 = time.monotonic()
    proc = start_server(model, grpc_port, http_port, user_config, {"torch_threads": a.torch_threads}, log_path,
                        haproxy=not a.no_haproxy, replicas=a.replicas)
    startup_s = time.monotonic() - t0
    try:
        for case in a.cases:
            for c in a.concurrency:
                with CpuMeter(proc.pid) as cpu:
                    row = asyncio.run(closed_loop(f"127.0.0.1:{grpc_port}", case, requests[case], c, a.duration,
                                                  a.warmup, a.timeout, a.replicas))
                row["cpu_cores_ours"], row["cpu_cores_others"] = cpu.ours_cores, cpu.others_cores
                rows.append(row)
                print(f"  {case} c={c}: {row['rps']} req/s, p50 {row['p50_ms']} p99 {row['p99_ms']} ms, "
                      f"errors {row['errors']}, mean batch {row['mean_batch_requests']} requests "
                      f"({row['mean_batch_series']} series, {row['mean_batch_computed_series']} computed); "
                      f"CPU cores: ours {cpu.ours_cores}, others {cpu.others_cores}", flush=True)
    finally:
        stop_server(proc)

    def find(case: str, mode: str, c: int = 1) -> dict:
        return next((r for r in rows if r["case"] == case and r["mode"] == mode and r["concurrency"] == c), {})

    grpc_rows = [r for r in rows if r["mode"] == "grpc"]
    summary: dict = {"server_startup_s": round(startup_s, 1),
                     "errors_total": sum(r["errors"] for r in grpc_rows),
                     "cpu_cores_used_by_other_processes_mean": round(
                         float(np.mean([r["cpu_cores_others"] for r in grpc_rows])), 2) if grpc_rows else None}
    for case in a.cases:
        ref, c1 = find(case, "in-process"), find(case, "grpc", 1)
        summary[f"{case}_inprocess_p50_ms"] = ref.get("p50_ms")
        summary[f"{case}_inprocess_rps"] = ref.get("rps")
        if c1.get("p50_ms") and ref.get("p50_ms"):
            summary[f"{case}_c1_p50_vs_inprocess"] = round(c1["p50_ms"] / ref["p50_ms"], 2)
        for c in a.concurrency:
            r = find(case, "grpc", c)
            summary[f"{case}_rps_c{c}"] = r.get("rps")
            summary[f"{case}_p99_ms_c{c}"] = r.get("p99_ms")
            summary[f"{case}_mean_batch_c{c}"] = r.get("mean_batch_requests")
        c32 = find(case, "grpc", 32)
        if c32 and c1.get("rps"):
            summary[f"{case}_throughput_c32_vs_c1"] = round(c32["rps"] / c1["rps"], 2)
        best = max((find(case, "grpc", c).get("rps") or 0 for c in a.concurrency), default=0)
        if ref.get("rps"):
            summary[f"{case}_best_rps_vs_inprocess"] = round(best / ref["rps"], 2)
    summary["must_show"] = {
        "zero_errors": summary["errors_total"] == 0,
        "region_p99_c8_le_50ms": (summary.get("region_p99_ms_c8") or 1e9) <= 50,
        "region_throughput_c32_ge_4x_c1": (summary.get("region_throughput_c32_vs_c1") or 0) >= 4,
    }
    config = {"model": bundle.name, "model_version": bundle.version, "model_type": bundle.config.type,
              "input_length": bundle.input_length, "horizon": a.horizon, "quantiles": list(QUANTILES),
              "cases": {c: CASES[c][1] for c in a.cases}, "series_per_call": a.series_per_call,
              "duration_s": a.duration, "warmup_s": a.warmup, "concurrency": a.concurrency, "replicas": a.replicas,
              "torch_threads": a.torch_threads, "max_batch_series": a.max_batch_series,
              "batch_wait_timeout_s": a.batch_wait_timeout_s,
              "client": "grpc.aio closed loop, one channel, in a process of its own",
              "ingress": "Python proxy" if a.no_haproxy else "HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1, "
                                                             "RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
              "load_average_1_5_15_min_at_end": os.getloadavg()}
    out_dir = Path(a.out).parent if a.out else None
    path = write_result("serving", config, rows, summary, **({"out_dir": out_dir} if out_dir else {}))
    if a.out and path != Path(a.out):
        path = path.replace(Path(a.out))
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
