"""Batch scoring throughput: Ray Data (`serving.score.score`) with 1 and 2 model actors vs a plain
single-process loop over the same bundle, on synthetic series (336 h of history each).

    python benchmarks/scoring.py [--series 100000] [--hours 336] [--horizon 168]
    -> benchmarks/results/scoring.json

Each case runs in its own fresh process, so its peak resident memory (VmHWM) is the driver's peak for
that case alone. The model is the demo LSTM's architecture (configs/models/demo.yaml) with untrained
weights: speed does not depend on the weights. The input is written as one Parquet file per 10,000
series before any case starts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result


def make_inputs(folder: Path, series: int, hours: int, chunk: int = 10_000) -> None:
    from training.synthetic import synthetic_load

    folder.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, series, chunk)):
        n = min(chunk, series - start)
        table = synthetic_load(n_zones=n, hours=hours, seed=i)[["zone", "timestamp", "load_mw"]]
        table["zone"] = table["zone"].str.replace("Z", f"S{i:03d}-", n=1)  # unique across chunks
        table.to_parquet(folder / f"part-{i:04d}.parquet", index=False)


def make_model(path: Path, horizon: int) -> None:
    from models.bundle import save_bundle
    from models.forecaster import QuantileForecaster
    from training.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "models" / "demo.yaml", **{"model.horizon": horizon})
    model = QuantileForecaster(cfg.forecaster_config()).eval()
    save_bundle(path, model, cfg.features.spec(), name="demo-lstm-untrained", version="bench")


def plain_loop(model: Path, inputs: Path, output: Path, horizon: int, batch_size: int) -> int:
    """The reference: read everything with pandas, one group per series, batches through Bundle.predict,
    one Parquet file out (what a script without Ray would do)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from models.bundle import load_bundle
    from serving.score import forecast_table

    bundle = load_bundle(model)
    table = pd.read_parquet(inputs)
    zones, lasts, windows = [], [], []
    for zone, group in table.groupby("zone", sort=False):
        group = group.sort_values("timestamp")
        zones.append(zone)
        lasts.append(group["timestamp"].iloc[-1])
        windows.append(group["load_mw"].to_numpy(np.float32)[-bundle.input_length:])
    writer = None
    for i in range(0, len(zones), batch_size):
        sl = slice(i, i + batch_size)
        last = pd.DatetimeIndex(lasts[sl])
        q = bundle.predict(np.stack(windows[sl]), last, horizon)
        out = forecast_table(np.asarray(zones[sl], dtype=object), last.as_unit("ns").asi8, q, bundle, None)
        writer = writer or pq.ParquetWriter(output, out.schema)
        writer.write_table(out)
    writer.close()
    return len(zones)


def run_case(args: argparse.Namespace) -> None:
    """One measured case, in this (fresh) process; prints a JSON line."""
    started = time.perf_counter()
    if args.case == "loop":
        series = plain_loop(Path(args.model), Path(args.input), Path(args.output) / "loop.parquet", args.horizon,
                            args.batch_size)
    else:
        import ray

        from serving.score import score

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = time.perf_counter()  # Ray's start-up is not scoring work
        series = score(args.model, args.input, args.output, num_workers=args.workers, batch_size=args.batch_size,
                       horizon=args.horizon).series
    seconds = time.perf_counter() - started
    # VmHWM: this process's peak resident set since its exec (ru_maxrss would carry the parent's size over)
    status = Path("/proc/self/status").read_text()
    peak = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 2**20  # KiB -> GiB
    print(json.dumps({"case": args.case, "workers": args.workers, "series": series, "seconds": round(seconds, 1),
                      "series_per_s": round(series / seconds, 1), "driver_peak_rss_gib": round(peak, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--hours", type=int, default=336)
    parser.add_argument("--horizon", type=int, default=168)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--case", choices=["loop", "ray"])  # internal: run one case
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--model")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.case:
        run_case(args)
        return
    with tempfile.TemporaryDirectory(prefix="energyopt-scoring-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_inputs(tmp / "input", args.series, args.hours)
        make_model(tmp / "model", args.horizon)
        print(f"inputs: {args.series:,} series x {args.hours} h in {time.perf_counter() - t:.0f} s", flush=True)
        rows = []
        for case, workers in (("loop", 0), ("ray", 1), ("ray", 2)):
            out = tmp / f"out-{case}-{workers}"
            out.mkdir()
            cmd = [sys.executable, __file__, "--case", case, "--workers", str(workers), "--model", str(tmp / "model"),
                   "--input", str(tmp / "input"), "--output", str(out), "--horizon", str(args.horizon),
                   "--batch-size", str(args.batch_size)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode or not line:
                raise SystemExit(f"{case} with {workers} worker(s) failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(line[-1]))
            print(rows[-1], flush=True)
    loop = rows[0]["series_per_s"]
    summary = {
        "loop_series_per_s": loop,
        "ray_1_worker_series_per_s": rows[1]["series_per_s"],
        "ray_2_workers_series_per_s": rows[2]["series_per_s"],
        "ray_2_workers_vs_loop": round(rows[2]["series_per_s"] / loop, 2),
        "ray_2_vs_1_workers": round(rows[2]["series_per_s"] / rows[1]["series_per_s"], 2),
        "ray_driver_peak_rss_gib": max(r["driver_peak_rss_gib"] for r in rows[1:]),
        "loop_peak_rss_gib": rows[0]["driver_peak_rss_gib"],
    }
    config = {"series": args.series, "history_hours": args.hours, "horizon": args.horizon,
              "batch_size": args.batch_size, "model": "demo LSTM architecture (configs/models/demo.yaml), untrained",
              "ray": "local, num_cpus=2", "note": args.note}
    print(write_result("scoring", config, rows, summary))


if __name__ == "__main__":
    main()
