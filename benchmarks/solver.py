"""Batched dispatch solver vs HiGHS: problems per second, objective gap and feasibility, same run.

    PYTHONPATH=. python benchmarks/solver.py                      # CPU, HiGHS in turn and on 2 workers
    PYTHONPATH=. python benchmarks/solver.py --device cuda --out /tmp/solver_gpu.json

For each N x T, seeded synthetic sites (`optimization.problem.synthetic_problems`) are solved by HiGHS
one after another (one Highs instance reused, one thread), by HiGHS on 2 worker processes, and by our
batched solver (the whole `solve` call: scaling, diagnosis, iterations, copies back). Gaps are relative
to HiGHS's objective; violations are the largest row or bound violation in the scaled LP (a fraction of
the site's power/energy scale).

A run with HiGHS saves HiGHS's objectives and rates to `--reference` (committed beside the results).
On a machine without highspy (a GPU box without internet), the script reads that file instead: gaps are
then against those saved objectives (the sites are regenerated from the same seeds, and checked against
a checksum), and speed-ups against the HiGHS rates measured on the reference machine, which the output
names explicitly (`highs_measured_on`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, machine, write_result
from optimization.problem import standard_form, synthetic_problems, violation
from optimization.solver import keep_freed_memory_in_heap, solve

DEFAULT_REFERENCE = RESULTS / "solver_reference.json"


def checksum(problems) -> float:
    return float(np.round(problems.load_kw.sum() + problems.battery_kwh.sum() + problems.import_price.sum(), 6))


def run_case(n: int, t: int, seed: int, devices: list[str], highs: bool, reference: dict | None,
             log, pool=None) -> tuple[list[dict], dict]:
    problems = synthetic_problems(n, t, seed=seed)
    sf = standard_form(problems)
    key = f"{n}x{t}"
    ref_entry = {"n": n, "horizon": t, "seed": seed, "checksum": checksum(problems)}
    if highs:
        from optimization.highs import solve_reference

        started = time.perf_counter()
        ref = solve_reference(sf, workers=1)
        in_turn = n / (time.perf_counter() - started)
        started = time.perf_counter()
        ref2 = solve_reference(sf, pool=pool)
        two = n / (time.perf_counter() - started)
        assert np.allclose(ref.objective, ref2.objective, rtol=1e-7, equal_nan=True)
        ref_obj = ref.objective
        ref_entry.update(highs_in_turn_per_s=in_turn, highs_2_workers_per_s=two, objective=ref_obj.tolist(),
                         highs_status=sorted(set(ref.status)), measured_on=machine())
        source = "this machine"
        log(f"{key}: HiGHS {in_turn:,.0f}/s in turn, {two:,.0f}/s on 2 workers")
    else:
        entry = (reference or {}).get(key)
        if entry is None or entry["seed"] != seed:
            raise SystemExit(f"no HiGHS here and no reference for {key} seed {seed} in the reference file")
        if abs(entry["checksum"] - ref_entry["checksum"]) > 1e-6 * abs(entry["checksum"]):
            raise SystemExit(f"{key}: the synthetic sites differ from the reference run's (numpy version?)")
        ref_obj = np.asarray(entry["objective"], dtype=np.float64)
        in_turn, two = entry["highs_in_turn_per_s"], entry["highs_2_workers_per_s"]
        source = f"{entry['measured_on']['cpu']} ({entry['measured_on']['cores']} cores), reference file"
    rows = []
    for device in devices:
        if device == "cuda":  # compile the kernel and start CUDA before timing
            solve(synthetic_problems(64, t, seed=seed + 1), device=device)
        started = time.perf_counter()
        sol = solve(problems, device=device)
        seconds = time.perf_counter() - started
        gap = np.abs(sol.objective - ref_obj) / np.maximum(1.0, np.abs(ref_obj))
        viol = violation(sf, sol.x, sol.peak)
        rate = n / seconds
        row = {"n": n, "horizon": t, "device": device, "kernel": sol.kernel, "threads": torch.get_num_threads(),
               "seconds": round(seconds, 4), "problems_per_s": round(rate, 1),
               "highs_in_turn_per_s": round(in_turn, 1), "highs_2_workers_per_s": round(two, 1),
               "speedup_vs_highs_in_turn": round(rate / in_turn, 2),
               "speedup_vs_highs_2_workers": round(rate / two, 2), "highs_measured_on": source,
               "optimal": int(sol.ok.sum()), "max_gap": float(np.nanmax(gap)), "median_gap": float(np.nanmedian(gap)),
               "max_violation": float(viol.max()), "iterations_median": float(np.median(sol.iterations)),
               "iterations_max": int(sol.iterations.max())}
        row["within_tolerance"] = bool(row["optimal"] == n and row["max_gap"] <= 1e-4 and row["max_violation"] <= 1e-5)
        rows.append(row)
        log(f"{key} {device}{' (kernel)' if sol.kernel else ''}: {rate:,.0f}/s = {row['speedup_vs_highs_in_turn']}x "
            f"HiGHS in turn, {row['speedup_vs_highs_2_workers']}x 2 workers; gap max {row['max_gap']:.1e} "
            f"median {row['median_gap']:.1e}; violation {row['max_violation']:.1e}; iterations "
            f"{row['iterations_median']:.0f}/{row['iterations_max']}")
    return rows, ref_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000", help="numbers of sites N")
    parser.add_argument("--horizons", default="48,96", help="steps T (60-minute steps)")
    parser.add_argument("--device", action="append", choices=["cpu", "cuda"],
                        help="where our solver runs (repeatable; default: cpu, and cuda when available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch CPU threads (default 1: the same single core HiGHS in turn gets)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--highs", choices=["auto", "yes", "no"], default="auto",
                        help="measure HiGHS here (auto: when highspy is installed), else use --reference")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/solver.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # as `energyopt optimize` runs: freed working arrays stay in the heap (HiGHS runs in this process too)
    heap_kept = keep_freed_memory_in_heap()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    highs = args.highs == "yes" or (args.highs == "auto" and importlib.util.find_spec("highspy") is not None)
    reference = None if highs else json.loads(args.reference.read_text())
    sizes = [int(s) for s in args.sizes.split(",")]
    horizons = [int(h) for h in args.horizons.split(",")]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    rows, saved = [], {}
    pool = None
    if highs:  # two HiGHS workers, started (and warmed up) before any timing
        from optimization.highs import solve_reference, worker_pool

        pool = worker_pool(2)
        solve_reference(synthetic_problems(8, 24, seed=0), pool=pool)
    for t in horizons:
        for n in sizes:
            case_rows, entry = run_case(n, t, args.seed + t, devices, highs, reference, log, pool)
            rows += case_rows
            saved[f"{n}x{t}"] = entry
    if pool is not None:
        pool.close()
    if highs:
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps(saved) + "\n")
        log(f"wrote {args.reference}")

    def best(device: str, n: int, t: int) -> dict | None:
        return next((r for r in rows if r["device"] == device and r["n"] == n and r["horizon"] == t), None)

    summary = {"all_within_tolerance": all(r["within_tolerance"] for r in rows),
               "max_gap": max(r["max_gap"] for r in rows), "max_violation": max(r["max_violation"] for r in rows)}
    for device in devices:
        for t in horizons:
            r = best(device, max(sizes), t)
            if r:
                summary[f"{device}_speedup_vs_highs_in_turn_n{r['n']}_t{t}"] = r["speedup_vs_highs_in_turn"]
    config = {"sizes": sizes, "horizons": horizons, "step_minutes": 60, "seed": args.seed, "devices": devices,
              "threads": args.threads, "highs_measured_here": highs, "tolerance": 1e-8,
              "allocator": "glibc, freed memory kept in the heap" if heap_kept else "default",
              "targets": {"max_gap": 1e-4, "max_violation": 1e-5, "cpu_n10000_t48_speedup": 3,
                          "gpu_n10000_speedup": 100}}
    if args.out is None:
        path = write_result("solver", config, rows, summary)
    else:
        path = write_result(args.out.stem, config, rows, summary, out_dir=args.out.parent)
        if path != args.out:
            path.rename(args.out)
            path = args.out
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
