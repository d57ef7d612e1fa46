"""The service under attack and under faults: benchmarks/results/resilience.json.

The service as `energyopt serve` runs it (`python -m serving.server`, its own local Ray, HAProxy ingress, the
demo forecaster on the bundled PJM zones, a store of its own), in parts (`--parts`, default all):

- fuzz: Hypothesis-generated requests (tests/fuzzing.py) for every RPC and every HTTP route, 10,000 of each
  by default: zero undocumented statuses, zero 5xx, zero non-finite values in a success, and the replica's
  memory (RSS) within 10 % of its start (its memory after a warm-up of 300 generated requests per target;
  the growth from before the warm-up is reported too);
- replica: closed-loop ForecastRegion(PJM, 48 h) at concurrency 8 on 2 replicas, one replica killed (-9):
  failed calls of the Python client (serving.client.ForecastClient, its retries) must be zero and the p99 of
  a 2 s window back within 2x of the p99 before the kill in at most 10 s;
- ingress: the same load from a client without retries while HAProxy is killed (-9): at most 5 s from the
  first refused call to the last;
- soak: 10 minutes at concurrency 8 without retries, a replica killed every 2 minutes: at most 0.1 % errors,
  each replica's memory flat over its life, no process of the service left after a clean stop;
- autoscale: the shipped autoscaling config (no fixed replica count) under closed-loop load at concurrency
  64: the replica count it reaches.

Rows of parts not run this time are kept from the last result file.

    python benchmarks/resilience.py                       # ~45 min on 2 cores
    python benchmarks/resilience.py --parts fuzz --fuzz-examples 500
    python benchmarks/resilience.py --parts fuzz --fuzz-targets "grpc OptimizeDispatch,http POST /v1/dispatch"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import RESULTS, demo_forecaster, write_result  # noqa: E402

REGION, HORIZON, CONCURRENCY = "PJM", 48, 8
REPLICA_MARK = "ServeReplica:energyopt:Forecaster"


# ------------------------------------------------------------------------------------------------ the service

@dataclass
class Service:
    """`python -m serving.server` in a session of its own, with a Ray temporary folder of its own."""

    replicas: int | None = 2  # None: the config's autoscaling
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="eo-res-", dir="/tmp")))
    proc: subprocess.Popen | None = None
    grpc_port: int = 0
    http_port: int = 0

    def start(self, model: Path) -> Service:
        from serving.server import free_ports

        self.grpc_port, self.http_port, metrics = free_ports(3)
        command = [sys.executable, "-m", "serving.server", "--model", str(model), "--grpc-port", str(self.grpc_port),
                   "--http-port", str(self.http_port), "--metrics-port", str(metrics), "--num-cpus", "4",
                   "--args", json.dumps({"store": str(self.root / "store.db")})]
        if self.replicas is not None:
            command += ["--replicas", str(self.replicas)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env |= {"RAY_TMPDIR": str(self.root / "ray"), "PYTHONUNBUFFERED": "1", "ENERGYOPT_TRACKING": "off"}
        (self.root / "ray").mkdir(exist_ok=True)
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        for line in self.proc.stdout:
            if line.startswith("READY "):
                break
            if time.monotonic() > deadline:
                break
        if self.proc.poll() is not None or not self.ready():
            raise RuntimeError(f"the service did not start; see {self.root / 'server.log'}")
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ready(self, timeout_s: float = 120) -> bool:
        from serving.client import ForecastClient

        with ForecastClient(self.target, timeout=10, retries=0) as client:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    client.forecast_region(REGION, HORIZON)
                    return True
                except Exception:  # noqa: BLE001 - still starting
                    time.sleep(1)
        return False

    def processes(self) -> list[tuple[int, str]]:
        from servers import _processes

        return _processes(self.proc.pid, str(self.root)) if self.proc else []

    def pids(self, mark: str) -> list[int]:
        return [pid for pid, cmd in self.processes() if mark in cmd]

    def replica_count(self) -> int:
        return len(self.pids(REPLICA_MARK))

    def rss_mb(self, pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> list[tuple[int, str]]:
        """SIGTERM as Ctrl-C would, then what is left of the service's processes after 60 s (killed)."""
        if self.proc is None:
            return []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(1)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.proc = None
        return left


# ------------------------------------------------------------------------------------------------ load

@dataclass
class Load:
    """Closed-loop ForecastRegion callers in threads: each call's (start, end, status) until stopped."""

    target: str
    concurrency: int = CONCURRENCY
    retries: int = 0  # 0: a raw call, no retries; else serving.client.ForecastClient with this many
    calls: list[tuple[float, float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        from serving.client import ForecastClient, ForecastError

        def worker() -> None:
            with ForecastClient(self.target, timeout=30, retries=self.retries, backoff=0.05, max_backoff=1.0) as c:
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    try:
                        c.forecast_region(REGION, HORIZON)
                        status = "OK"
                    except ForecastError as err:
                        status = err.code.name
                    self.calls.append((t0, time.monotonic(), status))

        self._threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[tuple[float, float, str]]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return sorted(self.calls)

    def p99_ms(self, start: float, end: float) -> float | None:
        ms = [(e - s) * 1000 for s, e, status in list(self.calls) if status == "OK" and start <= s and e <= end]
        return round(float(np.percentile(ms, 99)), 1) if len(ms) >= 20 else None


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------ parts

def part_fuzz(model: Path, examples: int, targets: set[str] | None = None, warmup: int = 0) -> list[dict]:
    """`examples` generated requests per target on one replica, after a warm-up of `warmup` per target (its
    problems count too); the replica's memory is compared with its memory after the warm-up. `targets`: only
    these (e.g. "grpc OptimizeDispatch"), on a service of their own: a rerun after a fix. Every row names the
    commit it was measured at."""
    import fuzzing
    from hypothesis import HealthCheck, given, settings

    from benchmarks.common import git_sha

    service = Service(replicas=1).start(model)
    rows = []
    callers: list[fuzzing.HttpCaller] = []
    try:
        channel = grpc.insecure_channel(service.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        replica = service.pids(REPLICA_MARK)[0]
        seeds = fuzzing.valid_requests()
        seeds["ForecastRegion"].region = seeds["ListForecasts"].region = "PJM"
        # every RPC and route answered twice with a valid request (first calls import code, fill pools)
        caller = fuzzing.HttpCaller(service.http_port)
        for _ in range(2):
            for rpc in fuzzing.rpcs():
                fuzzing.call_rpc(channel, rpc, seeds[rpc.name])
            for route in fuzzing.ROUTES:
                caller.problem(route.method, *fuzzing.seed_http_request(route, seeds[route.rpc]))
        caller.close()
        rss_cold = service.rss_mb(replica)

        def grpc_check(rpc: Any) -> Callable[[Any], str | None]:
            def call(request: Any) -> str | None:
                code, message, response = fuzzing.call_rpc(channel, rpc, request)
                if code == grpc.StatusCode.OK:
                    bad = list(fuzzing.non_finite(response))
                    return f"non-finite: {bad[:3]}" if bad else None
                return fuzzing.problem_with_status(code, message, request)
            return call

        def http_check(route: fuzzing.Route) -> Callable[[Any], str | None]:
            callers.append(fuzzing.HttpCaller(service.http_port))
            return lambda request, caller=callers[-1]: caller.problem(route.method, *request,
                                                                      fuzzing.response_type(route))

        plan = [(f"grpc {rpc.name}", fuzzing.requests_for(rpc.name, seeds[rpc.name]), grpc_check(rpc))
                for rpc in fuzzing.rpcs()]
        plan += [(f"http {route.method} {route.path}", fuzzing.http_requests(route, seeds[route.rpc]),
                  http_check(route)) for route in fuzzing.ROUTES]
        plan = [p for p in plan if not targets or p[0] in targets]

        def run(strategy: Any, call: Callable[[Any], str | None], n: int) -> tuple[int, list[str], float]:
            """(requests sent, problems, seconds); problems are recorded, not raised: every example runs."""
            problems: list[str] = []
            sent = [0]

            @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(strategy)
            def check(value: Any) -> None:
                sent[0] += 1
                outcome = call(value)
                if outcome:
                    problems.append(outcome)

            t0 = time.monotonic()
            check()
            return sent[0], problems, round(time.monotonic() - t0, 1)

        # The replica's start: after a warm-up of generated requests for every target, as the soak part measures
        # a replica's memory after its warm-up. Caches and pools (calendar blocks, statements, SQLite pages,
        # the archive's growth) fill in the first minutes of varied traffic and stay; a leak grows with requests.
        warm = {name: run(strategy, call, warmup) for name, strategy, call in plan} if warmup else {}
        rss_start = service.rss_mb(replica)
        for name, strategy, call in plan:
            sent, problems, seconds = run(strategy, call, examples)
            warm_sent, warm_problems, _ = warm.get(name, (0, [], 0))
            rows.append({"part": "fuzz", "target": name, "requests": sent, "warmup_requests": warm_sent,
                         "problems": len(problems) + len(warm_problems),
                         "first_problems": (warm_problems + problems)[:3], "seconds": seconds,
                         "replica_rss_mb": round(service.rss_mb(replica), 1), "git": git_sha()})
            print(json.dumps(rows[-1])[:300], flush=True)
        healthy = service.ready(30)
        rss_end = service.rss_mb(replica) if replica in service.pids(REPLICA_MARK) else float("nan")
        rows.append({"part": "fuzz", "target": "after" + (" rerun of " + ", ".join(sorted(targets)) if targets else ""),
                     "git": git_sha(), "healthy": healthy, "replica_alive": replica in service.pids(REPLICA_MARK),
                     "replica_rss_cold_mb": round(rss_cold, 1), "replica_rss_start_mb": round(rss_start, 1),
                     "replica_rss_end_mb": round(rss_end, 1), "rss_growth": round(rss_end / rss_start - 1, 3),
                     "rss_growth_from_cold": round(rss_end / rss_cold - 1, 3)})
    finally:
        for caller in callers:
            caller.close()
        service.stop()
    return rows


def part_replica(model: Path) -> list[dict]:
    service = Service(replicas=2).start(model)
    try:
        load = Load(service.target, retries=4).start()
        time.sleep(20)
        before = load.p99_ms(time.monotonic() - 15, time.monotonic())
        victim = service.pids(REPLICA_MARK)[0]
        killed_at = time.monotonic()
        kill(victim)
        time.sleep(30)
        calls = load.stop()
        windows = [(round(t - killed_at, 1), load.p99_ms(t, t + 2)) for t in np.arange(killed_at, killed_at + 28, 1.0)]
        recovered = next((t + 2 for t, p in windows if p is not None and before and p <= 2 * before
                          and all(q is None or q <= 2 * before for _, q in windows if t <= _ <= t + 6)), None)
        failed = [c for c in calls if c[2] != "OK" and c[0] >= killed_at - 1]
        return [{"part": "replica", "concurrency": CONCURRENCY, "replicas": 2, "client_retries": 4,
                 "calls": len(calls), "failed_calls": len(failed), "failed_codes": sorted({c[2] for c in failed}),
                 "p99_before_ms": before, "p99_2s_windows_after_kill": windows[:14],
                 "p99_back_within_2x_after_s": recovered}]
    finally:
        service.stop()


def part_ingress(model: Path) -> list[dict]:
    service = Service(replicas=2).start(model)
    try:
        load = Load(service.target, retries=0).start()
        time.sleep(15)
        haproxy = service.pids("haproxy")
        killed_at = time.monotonic()
        for pid in haproxy:
            kill(pid)
        time.sleep(40)
        calls = load.stop()
        failed = [c for c in calls if c[2] != "OK" and c[0] >= killed_at - 0.5]
        refused_s = round(max(c[1] for c in failed) - min(c[0] for c in failed), 2) if failed else 0.0
        first_ok = next((c[1] - killed_at for c in calls if c[0] >= killed_at and c[2] == "OK"), None)
        return [{"part": "ingress", "killed": len(haproxy), "client_retries": 0, "calls": len(calls),
                 "failed_calls": len(failed), "failed_codes": sorted({c[2] for c in failed}),
                 "refused_span_s": refused_s, "haproxy_back": bool(service.pids("haproxy")),
                 "first_ok_after_kill_s": round(first_ok, 2) if first_ok is not None else None}]
    finally:
        service.stop()


def part_soak(model: Path, duration_s: float, kill_every_s: float) -> list[dict]:
    service = Service(replicas=2).start(model)
    rss: dict[int, list[tuple[float, float]]] = {}
    kills = 0
    try:
        load = Load(service.target, retries=0).start()
        start = time.monotonic()
        next_kill = start + kill_every_s
        while time.monotonic() - start < duration_s:
            time.sleep(5)
            for pid in service.pids(REPLICA_MARK):
                rss.setdefault(pid, []).append((time.monotonic() - start, service.rss_mb(pid)))
            if time.monotonic() >= next_kill:
                kill(service.pids(REPLICA_MARK)[0])
                kills += 1
                next_kill += kill_every_s
        calls = load.stop()
    finally:
        left = service.stop()
    errors = [c for c in calls if c[2] != "OK"]
    lives = []
    for pid, samples in rss.items():  # each replica's memory over its life, after 20 s of warm-up
        warm = [m for t, m in samples if t - samples[0][0] >= 20]
        if len(warm) >= 6:
            lives.append({"pid": pid, "seconds": round(samples[-1][0] - samples[0][0]), "rss_first_mb": round(warm[0]),
                          "rss_last_mb": round(warm[-1]), "growth": round(warm[-1] / warm[0] - 1, 3)})
    leftover = sorted(p.name for p in Path("/tmp").glob("eo-res-*"))
    return [{"part": "soak", "duration_s": duration_s, "kill_every_s": kill_every_s, "kills": kills,
             "concurrency": CONCURRENCY, "client_retries": 0, "calls": len(calls), "errors": len(errors),
             "error_rate": round(len(errors) / max(1, len(calls)), 5),
             "error_codes": sorted({c[2] for c in errors}), "replica_lives": lives,
             "max_rss_growth": max((life["growth"] for life in lives), default=None),
             "processes_left_after_stop": [cmd[:80] for _, cmd in left], "folders_left": leftover}]


def part_autoscale(model: Path, concurrency: int = 64, duration_s: float = 90) -> list[dict]:
    service = Service(replicas=None).start(model)
    try:
        counts = []
        load = Load(service.target, concurrency=concurrency, retries=4).start()
        start = time.monotonic()
        while time.monotonic() - start < duration_s:
            time.sleep(3)
            counts.append((round(time.monotonic() - start), service.replica_count()))
        calls = load.stop()
        return [{"part": "autoscale", "concurrency": concurrency, "replica_counts": counts,
                 "max_replicas_reached": max(c for _, c in counts),
                 "first_second_with_2": next((t for t, c in counts if c >= 2), None), "calls": len(calls),
                 "failed_calls": sum(c[2] != "OK" for c in calls)}]
    finally:
        service.stop()


def summarize(rows: list[dict]) -> dict[str, Any]:
    def part(name: str) -> list[dict]:
        return [r for r in rows if r.get("part") == name]

    fuzz = [r for r in part("fuzz") if not r["target"].startswith("after")]
    after = next((r for r in part("fuzz") if r["target"] == "after"), {})  # the run of every target
    rerun = next((r for r in part("fuzz") if r["target"].startswith("after rerun")), None)
    summary: dict[str, Any] = {}
    if fuzz:
        summary |= {"fuzz_min_requests_per_target": min(r["requests"] for r in fuzz),
                    "fuzz_targets": len(fuzz), "fuzz_problems": sum(r["problems"] for r in fuzz),
                    "fuzz_replica_rss_growth": after.get("rss_growth"), "fuzz_healthy_after": after.get("healthy")}
        if rerun:
            summary["fuzz_rerun_healthy_after"] = rerun["healthy"]
    for r in part("replica"):
        summary |= {"replica_kill_failed_calls": r["failed_calls"],
                    "replica_kill_p99_back_within_2x_s": r["p99_back_within_2x_after_s"]}
    for r in part("ingress"):
        summary |= {"ingress_kill_refused_s": r["refused_span_s"], "ingress_kill_failed_calls": r["failed_calls"]}
    for r in part("soak"):
        summary |= {"soak_error_rate": r["error_rate"], "soak_max_replica_rss_growth": r["max_rss_growth"],
                    "soak_processes_left": len(r["processes_left_after_stop"])}
    for r in part("autoscale"):
        summary |= {"autoscale_max_replicas": r["max_replicas_reached"]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="fuzz,replica,ingress,soak,autoscale")
    parser.add_argument("--fuzz-examples", type=int, default=10_000, help="Generated requests per RPC and route.")
    parser.add_argument("--fuzz-warmup", type=int, default=300,
                        help="Generated requests per RPC and route before the replica's memory is taken as its start.")
    parser.add_argument("--fuzz-targets", default=None,
                        help='Only these fuzz targets, comma-separated (e.g. "grpc OptimizeDispatch,http POST '
                             '/v1/dispatch"): a rerun after a fix; the other targets\' rows are kept.')
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--kill-every-s", type=float, default=120.0)
    a = parser.parse_args()
    demo_forecaster()  # trained on a fresh clone
    model = ROOT / "runs" / "demo" / "model"
    parts = a.parts.split(",")
    targets = set(a.fuzz_targets.split(",")) if a.fuzz_targets else None
    runners = {"fuzz": lambda: part_fuzz(model, a.fuzz_examples, targets, a.fuzz_warmup),
               "replica": lambda: part_replica(model), "ingress": lambda: part_ingress(model),
               "soak": lambda: part_soak(model, a.soak_s, a.kill_every_s), "autoscale": lambda: part_autoscale(model)}
    previous = RESULTS / "resilience.json"

    def kept(row: dict) -> bool:  # rows of parts (or fuzz targets) not run now, but not an earlier rerun's end
        if row.get("part") == "fuzz" and targets:
            return row["target"] not in targets and not row["target"].startswith("after rerun")
        return row.get("part") not in parts

    earlier = json.loads(previous.read_text()) if previous.exists() else {"rows": []}
    rows = [r for r in earlier["rows"] if kept(r)]
    if targets:  # the kept fuzz rows were measured at the commit of the run that wrote them
        for row in rows:
            if row["part"] == "fuzz":
                row.setdefault("git", earlier.get("git"))
    config = {"region": REGION, "horizon": HORIZON, "concurrency": CONCURRENCY, "fuzz_examples": a.fuzz_examples,
              "fuzz_warmup": a.fuzz_warmup, "soak_s": a.soak_s, "kill_every_s": a.kill_every_s, "parts_run_now": parts,
              "fuzz_targets_run_now": sorted(targets) if targets else "all"}
    for name in parts:
        print(f"== {name}", flush=True)
        new = runners[name]()
        rows += new
        print(json.dumps(new)[:1500], flush=True)
        path = write_result("resilience", config, rows, summarize(rows))  # after each part: a long run keeps them
    print(json.dumps(json.loads(path.read_text())["summary"], indent=2))


if __name__ == "__main__":
    main()
