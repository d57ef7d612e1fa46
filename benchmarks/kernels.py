"""Speed of the Triton inference kernels (models/kernels) against cuDNN and torch.compile, on one GPU.

    python benchmarks/kernels.py           -> benchmarks/results/kernels.json
    python benchmarks/kernels.py --quick   a smaller grid, to try things out
    python benchmarks/kernels.py --tune    sweep the LSTM kernel's launch configurations per shape (prints)

LSTM grid: batch {1, 64, 1024, 16384} x steps {168, 336} x hidden {64, 128, 256}, fp32 and bf16. Each
case is a one-layer LSTM from x [B, T, 15] (the hourly model's input: load plus 14 calendar features) to
the final hidden state, timed four ways:

  kernel         models.kernels.lstm.lstm_forward: the projection GEMM, then one persistent kernel launch
  cudnn          torch.nn.LSTM (cuDNN; fp32 cases with TF32 off, as the kernel keeps fp32 accuracy)
  compile        the reference cell (models.kernels.lstm.lstm_cell_reference) through torch.compile,
                 stepped from Python after the same projection GEMM
  compile_graph  that whole loop captured in one CUDA graph (what mode="reduce-overhead" does for a
                 compiled loop), so no kernel launch is paid from Python

A compiled cell rather than a compiled T-step loop: Dynamo unrolls the loop, which takes minutes to
compile per shape and produces the same kernels (one GEMM and one fused pointwise kernel per step).

End to end: 10,000 series x 48 h forecasts from 336 h of history through the whole production model
(configs/models/lstm.yaml and transformer.yaml, random weights: speed does not depend on them), kernel
path vs the PyTorch path (ENERGYOPT_KERNELS=off), fp32 and bf16 autocast.

Timing: CUDA events around each call after warm-up, the median of repeats. Without CUDA the script times
the PyTorch references on a small grid only, says so, and writes kernels_cpu.json instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from benchmarks.common import RESULTS, write_result

INPUT_SIZE = 15
BATCHES, STEPS, HIDDENS = (1, 64, 1024, 16384), (168, 336), (64, 128, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gpu_time_ms(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10, budget_ms: float = 1500) -> float:
    """Median GPU time of fn() over repeats, from CUDA events recorded around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or (time.perf_counter() - spent) * 1e3 < budget_ms):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cpu_time_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------- LSTM


class LSTMCase:
    """One (batch, steps, hidden, dtype) case: the module, its input and the four ways to run it."""

    def __init__(self, batch: int, steps: int, hidden: int, dtype: torch.dtype, device: str = "cuda") -> None:
        from models.kernels.lstm import prepare_weights

        torch.manual_seed(0)
        self.lstm = nn.LSTM(INPUT_SIZE, hidden, batch_first=True).to(device).eval()
        self.x = torch.randn(batch, steps, INPUT_SIZE, device=device)
        self.dtype = dtype
        self.layer = prepare_weights(self.lstm, dtype, torch.device(device))[0]
        self.cudnn_lstm = self.lstm if dtype == torch.float32 else nn.LSTM(
            INPUT_SIZE, hidden, batch_first=True).to(device, dtype).eval()
        if dtype != torch.float32:
            self.cudnn_lstm.load_state_dict(self.lstm.state_dict())
        self.x_cast = self.x.to(dtype)

    def kernel(self) -> torch.Tensor:
        from models.kernels.lstm import lstm_forward

        return lstm_forward(self.lstm, self.x, dtype=self.dtype)[1][-1]

    def cudnn(self) -> torch.Tensor:
        return self.cudnn_lstm(self.x_cast)[1][0][-1]

    def reference(self, cell: Callable) -> torch.Tensor:
        from models.kernels.lstm import lstm_recurrence_reference

        xp = torch.nn.functional.linear(self.x_cast, self.layer.w_ih, self.layer.bias)
        return lstm_recurrence_reference(xp, self.layer.w_hh_t, cell=cell)[1]


def compiled_cell() -> Callable:
    from models.kernels.lstm import lstm_cell_reference

    # dynamic: one compilation serves every batch size (the benchmark would otherwise recompile per shape)
    return torch.compile(lstm_cell_reference, dynamic=True)


def graphed(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """fn captured in a CUDA graph (after warm-up on a side stream); calling the result replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    replay.graph = graph  # keep it alive
    return replay


def run_lstm_grid(batches, steps_list, hiddens, dtypes, log) -> list[dict]:
    cell = compiled_cell()
    rows = []
    for hidden in hiddens:
        for dname in dtypes:
            dtype = DTYPES[dname]
            for steps in steps_list:
                for batch in batches:
                    case = LSTMCase(batch, steps, hidden, dtype)
                    row = {"dtype": dname, "batch": batch, "steps": steps, "hidden": hidden}
                    with torch.no_grad():
                        ref = case.reference(_plain_cell())
                        out = case.kernel()
                        row["max_abs_err_vs_reference"] = float((out - ref).abs().max())
                        row["kernel_ms"] = gpu_time_ms(case.kernel)
                        try:
                            row["cudnn_ms"] = gpu_time_ms(case.cudnn)
                        except RuntimeError as err:  # e.g. a cuDNN without bf16 RNNs
                            row["cudnn_ms"], row["cudnn_error"] = None, str(err).splitlines()[0][:200]
                        row["compile_ms"] = gpu_time_ms(lambda: case.reference(cell), repeats=5)  # noqa: F821 - called before `del case`
                        try:
                            replay = graphed(lambda: case.reference(cell))  # noqa: F821 - called before `del case`
                            row["compile_graph_ms"] = gpu_time_ms(replay)
                            del replay
                        except RuntimeError as err:  # e.g. out of memory for the captured intermediates
                            row["compile_graph_ms"] = None
                            row["compile_graph_error"] = str(err).splitlines()[0][:200]
                    for base in ("cudnn", "compile", "compile_graph"):
                        if row.get(f"{base}_ms"):
                            row[f"speedup_vs_{base}"] = round(row[f"{base}_ms"] / row["kernel_ms"], 2)
                    for key in list(row):
                        if key.endswith("_ms") and row[key] is not None:
                            row[key] = round(row[key], 4)
                    rows.append(row)
                    log(row)  # also saves the rows so far
                    del case
                    torch.cuda.empty_cache()
    return rows


def _plain_cell() -> Callable:
    from models.kernels.lstm import lstm_cell_reference

    return lstm_cell_reference


# --------------------------------------------------------------------------------------- end to end


def production_config(model: str):
    """The ForecasterConfig of configs/models/<model>.yaml."""
    try:
        from training.config import load_config

        return load_config(model=model).forecaster_config()
    except ImportError:  # a bare GPU machine (no pydantic, PyYAML, holidays): read the same file directly
        return _read_config_directly(model)


def _read_config_directly(model: str):
    import ast
    import json
    import re

    from models.forecaster import ForecasterConfig

    root = Path(__file__).resolve().parent.parent
    text = (root / "configs" / "models" / f"{model}.yaml").read_text()
    try:
        import yaml

        raw = yaml.safe_load(text)
    except ImportError:  # enough YAML for our configs: top-level sections, flow-style values
        def flow(value: str):
            quoted = re.sub(r"(?<![\w.])([A-Za-z_]\w*)", r'"\1"', value.strip())
            return json.loads(quoted.replace('"true"', "true").replace('"false"', "false"))

        raw, section = {}, None
        for line in text.splitlines():
            line = line.split("#")[0].rstrip()
            if not line.strip():
                continue
            key, value = (part.strip() for part in line.split(":", 1))
            if not line.startswith(" "):
                section = key
                raw[key] = flow(value) if value and key in ("model", "features") else {}
            elif section == "model":
                raw[section][key] = flow(value)
    # the calendar feature names, read from models/features.py without importing it (it needs holidays)
    tree = ast.parse((root / "models" / "features.py").read_text())
    calendar = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", None) == "CALENDAR_FEATURES" for t in n.targets))
    feats = raw.get("features", {})
    n_cov = (len(calendar) if feats.get("calendar", True) else 0) + len(feats.get("covariates", []))
    m = raw["model"]
    return ForecasterConfig(type=m["type"], input_length=m["input_length"], horizon=m["horizon"],
                            quantiles=tuple(m["quantiles"]), n_covariates=n_cov, params=dict(m["params"]))


def run_end_to_end(series: int, horizon: int, log, device: str = "cuda") -> list[dict]:
    from models.forecaster import QuantileForecaster

    rows = []
    for model_name in ("lstm", "transformer"):
        cfg = production_config(model_name)
        torch.manual_seed(0)
        model = QuantileForecaster(cfg).to(device).eval()
        L, H, C = cfg.input_length, cfg.horizon, cfg.n_covariates
        history = torch.rand(series, L, device=device) * 1000 + 500
        past, future = torch.randn(series, L, C, device=device), torch.randn(series, H, C, device=device)

        def forecast(precision: str) -> torch.Tensor:
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return model(history, past, future)[:, :horizon]  # noqa: F821 - called before `del model`

        for precision in ("fp32", "bf16"):
            row = {"model": model_name, "precision": precision, "series": series, "horizon": horizon,
                   "input_length": L, "model_horizon": H, "params": cfg.params}
            os.environ["ENERGYOPT_KERNELS"] = "off"
            ref = forecast("fp32")
            row["reference_ms"] = round(gpu_time_ms(lambda: forecast(precision)), 4)
            os.environ["ENERGYOPT_KERNELS"] = "auto"
            out = forecast(precision)
            row["kernels_ms"] = round(gpu_time_ms(lambda: forecast(precision)), 4)
            row["speedup"] = round(row["reference_ms"] / row["kernels_ms"], 2)
            row["max_rel_err_vs_fp32_reference"] = float((out - ref).abs().max() / ref.abs().max())
            rows.append(row)
            log(row)
        del model
        torch.cuda.empty_cache()
    os.environ.pop("ENERGYOPT_KERNELS", None)
    return rows


# ------------------------------------------------------------------------------------------- tuning


def tune(batches, hiddens, dtypes, steps: int, log, deadline_s: float = 1e9) -> dict:
    """Time every sensible launch configuration per (batch, hidden, dtype); return the best ones."""
    from models.kernels.lstm import launch_config, lstm_recurrence, lstm_recurrence_reference

    best = {}
    started = time.perf_counter()
    for dname in dtypes:
        dtype = DTYPES[dname]
        elt = 2 if dtype == torch.bfloat16 else 4
        for hp in hiddens:
            for batch in batches:
                if time.perf_counter() - started > deadline_s:
                    log("tuning deadline reached")
                    return best
                torch.manual_seed(0)
                xp = torch.randn(batch, steps, 4 * hp, device="cuda").to(dtype)
                w = (torch.randn(hp, 4 * hp, device="cuda") / hp**0.5).to(dtype)
                with torch.no_grad():
                    ref_h = lstm_recurrence_reference(xp, w)[1]
                results = []
                default = launch_config(batch, hp, dtype)
                for cfg in _candidates(batch, hp, elt) + [default]:
                    try:
                        h = lstm_recurrence(xp, w, config=cfg)[1]
                        err = float((h - ref_h).abs().max())
                        ms = gpu_time_ms(lambda: lstm_recurrence(xp, w, config=cfg), warmup=1, repeats=3)  # noqa: F821
                    except Exception as e:  # noqa: BLE001 - out of resources: not a candidate on this GPU
                        log(f"  {dname} hp={hp} B={batch} {cfg}: {type(e).__name__} {str(e)[:80]}")
                        continue
                    results.append((ms, err, cfg))
                results.sort(key=lambda r: r[0])
                dms = next((r[0] for r in results if r[2] == default), None)
                for ms, err, cfg in results[:4]:
                    log(f"{dname} hp={hp} B={batch} T={steps}: {ms:.3f} ms err {err:.1e} {cfg}")
                log(f"{dname} hp={hp} B={batch}: default {default} -> {dms} ms")
                best[f"{dname}/{hp}/{batch}"] = (results[0][0], str(results[0][2])) if results else None
                del xp
                torch.cuda.empty_cache()
    return best


def _candidates(batch: int, hp: int, elt: int) -> list:
    from models.kernels.lstm import LaunchConfig

    out = []
    for bb in (16, 32, 64, 128):
        if (bb > 16 and batch <= 64) or (bb == 128 and batch < 8192) or (bb == 64 and batch < 1024):
            continue
        for bn in sorted({hp, 64, 32} & set(range(16, hp + 1))):
            if bb * bn > 16384:
                continue
            for resident in ((True, False) if bn == hp else (False,)):
                if resident and 4 * hp * hp * elt > 160 * 1024:
                    continue
                for warps in ((4, 8) if bb * bn >= 4096 else (4,)):
                    out.append(LaunchConfig(bb, bn, resident, warps))
    return out


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid")
    parser.add_argument("--tune", action="store_true", help="sweep the kernel's launch configurations and print")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the result JSON")
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--tune-deadline", type=float, default=1e9, help="stop tuning after this many seconds")
    parser.add_argument("--skip-lstm-grid", action="store_true")
    args = parser.parse_args()
    log = lambda row: print(row, flush=True)  # noqa: E731

    if not torch.cuda.is_available():
        run_cpu_reference(args, log)
        return
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every contender
    torch.backends.cudnn.allow_tf32 = False
    if args.tune:
        tune((1, 1024, 16384, 64), (128, 64, 256), ("bf16", "fp32"), 168, log, args.tune_deadline)
        return
    grid = ((1, 1024), (336,), (64, 128), ("fp32", "bf16")) if args.quick else (BATCHES, STEPS, HIDDENS, tuple(DTYPES))
    started = time.perf_counter()
    import triton

    config = {
        "lstm_grid": {"batch": grid[0], "steps": grid[1], "hidden": grid[2], "dtypes": grid[3],
                      "input_size": INPUT_SIZE, "layers": 1, "output": "final hidden state"},
        "timing": "CUDA events around each call after 2 warm-up calls, median of up to 10 repeats",
        "fp32": "TF32 off for cuDNN and cuBLAS; the kernel's fp32 dots use 3xTF32 (about fp32 accuracy)",
        "compile": "torch.compile(lstm_cell_reference, dynamic=True) stepped from Python; compile_graph: the "
                   "whole loop captured in one CUDA graph",
        "end_to_end": {"series": args.series, "horizon_hours": 48, "models": "configs/models/{lstm,transformer}.yaml",
                       "weights": "random (speed only)"},
        "versions": {"torch": torch.__version__, "triton": triton.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
    }
    rows: list[dict] = []
    e2e: list[dict] = []

    def save(complete: bool) -> Path:  # after every row: an interrupted run still leaves what it measured
        summary = summarize(rows, e2e)
        summary.update(complete=complete, wall_seconds=round(time.perf_counter() - started, 1))
        return write_result("kernels", config, e2e + rows, summary, out_dir=args.out)

    def log_and_save(row: dict) -> None:
        log(row)
        save(False)

    run_end_to_end(args.series, 48, lambda row: (e2e.append(row), log_and_save(row)))
    if not args.skip_lstm_grid:
        run_lstm_grid(*grid, lambda row: (rows.append(row), log_and_save(row)))
    path = save(True)
    print(f"wrote {path}")
    for key, value in summarize(rows, e2e).items():
        print(f"{key}: {value}")


def summarize(rows: list[dict], e2e: list[dict]) -> dict:
    s: dict = {}
    small = [r for r in rows if r["batch"] <= 1024 and r["hidden"] <= 128]
    for dname in DTYPES:
        sub = [r for r in small if r["dtype"] == dname]
        vals = [r["speedup_vs_cudnn"] for r in sub if r.get("speedup_vs_cudnn")]
        if vals:
            s[f"min_speedup_vs_cudnn_batch<=1024_hidden<=128_{dname}"] = min(vals)
        every = [r for r in rows if r["dtype"] == dname]
        for base in ("compile", "compile_graph", "cudnn"):
            vals = [r[f"speedup_vs_{base}"] for r in every if r.get(f"speedup_vs_{base}")]
            if vals:
                s[f"min_speedup_vs_{base}_{dname}"] = min(vals)
                s[f"median_speedup_vs_{base}_{dname}"] = statistics.median(vals)
    if small:
        s["target_2x_vs_cudnn_batch<=1024_hidden<=128_met"] = all(r.get("speedup_vs_cudnn", 0) >= 2 for r in small)
    if rows:
        s["target_not_slower_than_compile_met"] = all(
            r.get(f"speedup_vs_{b}", 1) >= 1 for r in rows for b in ("compile", "compile_graph"))
    for r in e2e:
        s[f"e2e_{r['model']}_{r['precision']}_kernels_ms"] = r["kernels_ms"]
        s[f"e2e_{r['model']}_{r['precision']}_reference_ms"] = r["reference_ms"]
    lstm_fp32 = [r for r in e2e if r["model"] == "lstm" and r["precision"] == "fp32"]
    if lstm_fp32:
        s["target_e2e_lstm_10k_series_48h_le_10ms_met"] = lstm_fp32[0]["kernels_ms"] <= 10
    return s


def run_cpu_reference(args: argparse.Namespace, log) -> None:
    """No CUDA: the kernels cannot run (the interpreter is for correctness, not speed); time the
    PyTorch references on a small grid so the script still says something useful, and say so."""
    print("no CUDA device: timing the PyTorch reference only (nn.LSTM and the reference loop, fp32); "
          "the kernel figures need a GPU", flush=True)
    rows = []
    for batch in (1, 64):
        for hidden in (64, 128):
            case = LSTMCase(batch, 168, hidden, torch.float32, device="cpu")
            with torch.no_grad():
                row = {"dtype": "fp32", "batch": batch, "steps": 168, "hidden": hidden,
                       "nn_lstm_cpu_ms": round(cpu_time_ms(case.cudnn), 3),
                       "reference_loop_cpu_ms": round(cpu_time_ms(lambda: case.reference(_plain_cell())), 3)}
            rows.append(row)
            log(row)
    path = write_result("kernels_cpu", {"note": "no CUDA device: PyTorch reference only, on CPU"}, rows,
                        {"gpu": None, "kernels_measured": False}, out_dir=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
