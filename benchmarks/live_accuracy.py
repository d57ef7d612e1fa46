"""Live equals offline, and scheduled issue costs no forecast latency: benchmarks/results/live_accuracy.json.

1. The service (Ray Serve, local Ray in this process) on a store seeded with the bundled PJM zones up to
   FROM; `energyopt replay` feeds the next 30 days of the test year at SPEED hours a second while the
   Scheduler (`clock: data`) issues and archives a forecast from every hour that arrives (48 h ahead).
2. GetForecastAccuracy over those days (SQL in the store) against `energyopt evaluate` of the same model
   at the same issue times (the offline backtest on the data file): per zone, MAE, MAPE, pinball loss and
   the 80 % band's coverage must agree within 1 %. Issue times whose 48 h reach past the replayed days are
   left out of both (the store has no readings there yet; the file has).
3. ForecastRegion p99 at concurrency 8 with the schedule running (a slot every second: 3600 x the hourly
   production rate, each forecast archived) and without it, alternating, in this one run: within 1.2x.

    python benchmarks/live_accuracy.py            # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.serving import percentiles  # noqa: E402

FROM, DAYS, HORIZON, REGION = "2018-06-01T00:00:00", 30, 48, "PJM"
TOLERANCE = 0.01  # live vs offline, relative
LATENCY_RATIO_MAX = 1.2


def p99_closed_loop(target: str, concurrency: int, duration_s: float, warmup_s: float = 3.0) -> dict:
    """ForecastRegion(PJM, 48 h) from `concurrency` callers back to back: latency percentiles."""
    from serving.api.energyopt.v1 import forecast_pb2 as pb
    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

    async def run() -> dict:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            request = pb.ForecastRegionRequest(region=REGION, horizon=HORIZON)
            loop = asyncio.get_running_loop()
            start = loop.time()
            measure, end = start + warmup_s, start + warmup_s + duration_s
            latencies, errors = [], 0

            async def worker() -> None:
                nonlocal errors
                while loop.time() < end:
                    t0 = loop.time()
                    try:
                        await stub.ForecastRegion(request, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if t0 >= measure and loop.time() <= end:
                        latencies.append(loop.time() - t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return {"requests": len(latencies), "errors": errors, "rps": round(len(latencies) / duration_s, 1),
                    **percentiles(latencies)}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    parser.add_argument("--speed", type=float, default=24.0, help="Replayed hours per second.")
    parser.add_argument("--latency-s", type=float, default=20.0, help="Seconds per latency phase.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternations of schedule off / on.")
    a = parser.parse_args()

    from models import archive
    from models.bundle import load_bundle
    from models.store import Store
    from serving import server
    from serving.client import ForecastClient

    work = Path(tempfile.mkdtemp(prefix="energyopt-live-accuracy-"))
    grpc_port, http_port = server.free_ports(2)
    config = server.load_config(model=a.model, store=work / "store.db", grpc_port=grpc_port, http_port=http_port,
                                replicas=1, args={"seed_until": FROM})
    config = server.with_schedule(config, clock="data", poll_s=0.2, horizon=HORIZON, max_late_slots=100_000,
                                  scan_every_s=3600)
    target = f"127.0.0.1:{grpc_port}"
    bundle = load_bundle(a.model)
    started = time.monotonic()
    server.start(config, log=print)
    print(f"service up in {time.monotonic() - started:.0f} s (store seeded until {FROM})")
    store = Store.open(work / "store.db")
    try:
        # ---------------------------------------------------------------- 1. replay 30 days with the schedule
        until = (pd.Timestamp(FROM) + pd.Timedelta(days=DAYS)).isoformat()
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "energyopt", "replay", "--from", FROM, "--until", until,
                        "--speed", str(a.speed), "--server", target], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        replay_s = time.monotonic() - t0
        hours = DAYS * 24
        tz = store.zones()["AEP"].time_zone
        last_slot = int((pd.Timestamp(until) - pd.Timedelta(hours=1)).tz_localize(tz).tz_convert("UTC")
                        .timestamp()) + 3600
        while (archive.last_slot(store, REGION) or 0) < last_slot:
            assert time.monotonic() - t0 < replay_s + 900, "the schedule did not catch up with the feed"
            time.sleep(0.5)
        archived_s = time.monotonic() - t0
        print(f"replayed {hours} h in {replay_s:.0f} s ({a.speed:g} h/s); every hour archived after "
              f"{archived_s:.0f} s")

        # ---------------------------------------------------------------- 2. live accuracy vs evaluate
        first = pd.Timestamp(FROM)
        last_issue = pd.Timestamp(until) - pd.Timedelta(hours=HORIZON)  # its 48 h end where the feed ends
        window_end = last_issue.tz_localize(tz).tz_convert("UTC") + pd.Timedelta(hours=1)
        window_days = (window_end - first.tz_localize(tz).tz_convert("UTC")) / pd.Timedelta(days=1)
        found = archive.list_forecasts(store, REGION, scheduled_only=True, headers_only=True, limit=100_000,
                                       issued_from=int(first.tz_localize(tz).timestamp()),
                                       issued_to=int(window_end.timestamp()))
        issue_times = sorted({f.issue_time for f in found})
        times_csv = work / "issue_times.csv"
        pd.DataFrame({"issue_time": issue_times}).to_csv(times_csv, index=False)
        t1 = time.monotonic()
        with ForecastClient(target, timeout=300) as client:
            live = client.forecast_accuracy(REGION, window_days=int(window_days + 0.999),
                                            bucket_ends=[HORIZON], until=window_end.isoformat())
        sql_s = time.monotonic() - t1
        evaluated = work / "evaluate.json"
        subprocess.run([sys.executable, "-m", "energyopt", "evaluate", "--model", a.model, "--no-baselines",
                        "--horizon", str(HORIZON), "--issue-times", str(times_csv), "--json", str(evaluated)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        offline = {r["zone"]: r for r in json.loads(evaluated.read_text())["rows"] if r["model"] == bundle.name}
        rows, worst = [], 0.0
        for r in live.rows:
            row = {"zone": r.zone, "forecasts": r.forecasts, "points": r.points,
                   "live": {"mae": r.mae, "mape": r.mape, "pinball": r.pinball, "coverage_80": r.coverage_80}}
            if r.zone in offline:
                off = offline[r.zone]
                row["offline"] = {k: off[k] for k in ("mae", "mape", "pinball", "coverage_80")}
                row["relative_difference"] = {k: abs(row["live"][k] - off[k]) / abs(off[k]) for k in row["offline"]}
                worst = max(worst, *row["relative_difference"].values())
            rows.append(row)
        print(f"live vs offline on {len(issue_times)} issue times: largest relative difference {worst:.4%}")

        # ---------------------------------------------------------------- 3. latency with and without the schedule
        # (few late slots: the archive's newest slot is the data clock's, years before the wall clock's; a
        # slot that a busy tick passed is issued late at the next)
        busy = server.with_schedule(config, clock="wall", every_s=1, offset_s=0, max_late_slots=5, enabled=True)
        idle = server.with_schedule(config, enabled=False)
        phases = []
        for _ in range(a.rounds):
            for name, cfg in (("schedule_off", idle), ("schedule_on", busy)):
                server.deploy(cfg)
                before = len(archive.list_forecasts(store, REGION, headers_only=True, limit=100_000))
                result = p99_closed_loop(target, 8, a.latency_s)
                issued = len(archive.list_forecasts(store, REGION, headers_only=True, limit=100_000)) - before
                phases.append({"phase": name, "scheduled_forecasts_issued": issued, **result})
                print(f"{name}: p99 {result['p99_ms']} ms, {result['rps']} req/s, {issued} scheduled forecasts")
        p99 = {name: max(p["p99_ms"] for p in phases if p["phase"] == name) for name in ("schedule_off", "schedule_on")}
        ratio = p99["schedule_on"] / p99["schedule_off"]
        summary = {
            "replayed_hours": hours, "replay_speed_h_per_s": a.speed, "replay_s": round(replay_s, 1),
            "archived_every_hour_after_s": round(archived_s, 1), "issue_times_compared": len(issue_times),
            "accuracy_sql_s": round(sql_s, 2), "largest_relative_difference": round(worst, 6),
            "live_equals_offline": worst <= TOLERANCE,
            "p99_ms_schedule_off": p99["schedule_off"], "p99_ms_schedule_on": p99["schedule_on"],
            "p99_ratio": round(ratio, 3), "schedule_costs_no_latency": ratio <= LATENCY_RATIO_MAX,
        }
        out = write_result("live_accuracy", {
            "model": bundle.name, "version": bundle.version, "region": REGION, "from": FROM, "days": DAYS,
            "horizon": HORIZON, "tolerance": TOLERANCE, "latency_ratio_max": LATENCY_RATIO_MAX,
            "latency_concurrency": 8, "latency_phase_s": a.latency_s, "rounds": a.rounds,
            "schedule_on": "a slot every second (wall clock), each forecast archived"},
            rows + [{"latency": phases}], summary)
        print(json.dumps(summary, indent=1))
        print(f"wrote {out}")
    finally:
        store.close()
        server.shutdown()


if __name__ == "__main__":
    main()
