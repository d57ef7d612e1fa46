"""Accuracy benchmark: our forecasters against the baselines under one protocol, in one run.

    python benchmarks/accuracy.py --dataset pjm     -> benchmarks/results/accuracy_pjm.json
    python benchmarks/accuracy.py --dataset etth1   -> benchmarks/results/accuracy_etth1.json

PJM: the five bundled zones; each model is trained by `training.pipeline.train` (the code behind `energyopt
train`) in its own process, so its training time per epoch and its peak memory are its own. All models
are then backtested on the same origins (daily at 00:00 over each zone's last 365 days, 48 h ahead) and
scored together by `training.evaluate.score`.

`lstm_region` and `transformer_region` are the same models reading the region context as well: every
zone's load over the history window and which zone the series is (configs/models/*_region.yaml).

Every model is trained for the protocol's 48 h (`--horizon`), one model per horizon as in the ETTh1
protocol and PatchTST, the baselines included. The shipped configs train 168 h models, because serving
answers up to a week ahead; `--horizon 168` scores those (a longer horizon costs accuracy at 48 h: the
loss then spreads over seven days).

`--period val` scores the same way on the validation year instead (-> accuracy_pjm_val.json): that is
where settings and model changes are compared, so the test year stays a one-time measurement. With
`--reuse` it scores the bundles of an earlier run without training them again.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result

PJM_MODELS = ("lstm", "transformer", "lstm_region", "transformer_region", "linear", "seasonal_naive")


def _train_in_child(model: str, out: Path, max_epochs: int | None, horizon: int, queue: mp.Queue) -> None:
    import torch

    from training.config import load_config
    from training.pipeline import train

    torch.set_num_threads(2)
    cfg = load_config(model=model, **{"training.max_epochs": max_epochs, "model.horizon": horizon})
    started = time.perf_counter()
    bundle = train(cfg, None, out, progress=False, evaluate=False, log=lambda line: print(f"[{model}] {line}"))
    epochs = bundle.meta["training"]["epochs"]
    queue.put({
        "model": bundle.name,
        "params": sum(p.numel() for p in bundle.model.parameters()),
        "epochs": len(epochs),
        "seconds_per_epoch": round(sum(e["seconds"] for e in epochs) / max(len(epochs), 1), 1),
        "train_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "best_val_loss": bundle.meta["training"]["best_val_loss"],
    })


def run_pjm(args: argparse.Namespace) -> Path:
    from models.bundle import BundleError, load_bundle
    from training.config import load_config
    from training.evaluate import backtest, score
    from training.pipeline import prepare_data

    workdir = Path(args.workdir)
    training = {}
    bundles = {}
    for model in args.models:
        out = workdir / model
        if args.reuse:
            try:
                bundles[model] = load_bundle(out)
                print(f"reusing {out}")
                training[bundles[model].name] = {"reused": True}
                continue
            except BundleError:
                pass
        print(f"training {model} ...", flush=True)
        queue: mp.Queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(target=_train_in_child,
                                                args=(model, out, args.max_epochs, args.horizon, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"training {model} failed (exit code {child.exitcode})")
        stats = queue.get()
        training[stats["model"]] = stats
        print(f"  {stats}", flush=True)
        bundles[model] = load_bundle(out)

    split, _, _ = prepare_data(load_config(model="linear"), None)
    frame = None
    names = []
    for bundle in bundles.values():
        part = backtest(bundle, getattr(split, args.period), horizon=48, column=bundle.name)
        frame = part if frame is None else frame.merge(part.drop(columns="y"), on=["zone", "cutoff", "ds", "step"])
        names.append(bundle.name)
    results = score(frame, names, split.train)
    summary = {"overall": results["summary"], "training": training}
    overall = results["summary"]
    for deep in ("lstm", "transformer", "lstm_region", "transformer_region"):
        if deep in overall and "linear" in overall and "seasonal_naive_168" in overall:
            summary[f"{deep}_mae_vs_linear"] = round(overall[deep]["mae"] / overall["linear"]["mae"], 4)
            summary[f"{deep}_mae_vs_seasonal_naive"] = round(
                overall[deep]["mae"] / overall["seasonal_naive_168"]["mae"], 4)
    config = {
        "dataset": "PJM hourly load, zones AEP COMED DAYTON DOM EKPC (bundled)",
        "protocol": "per zone: test = last 365 days, validation = 365 days before, train = all before; origins "
                    f"daily at 00:00 in the {'test' if args.period == 'test' else 'validation'} period; horizon "
                    "48 h; history 336 h; metrics over all steps",
        "period": args.period,
        "trained_horizon": {b.name: b.max_horizon for b in bundles.values()},
        "origins": int(frame.groupby(["zone", "cutoff"]).ngroups),
        "models": {b.name: b.meta["training"]["config"]["model"] for b in bundles.values()},
        "targets": {"mae_vs_linear_max": 0.90, "mae_vs_seasonal_naive_max": 0.45, "coverage_80": [0.75, 0.85]},
    }
    name = "accuracy_pjm" if args.period == "test" else "accuracy_pjm_val"
    path = write_result(name, config, results["rows"], summary)
    for name, m in overall.items():
        print(f"{name:>20}: " + "  ".join(f"{k} {v:.4g}" for k, v in m.items()))
    print({k: v for k, v in summary.items() if k.endswith(("linear", "naive"))})
    print(f"wrote {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("pjm", "etth1"), default="pjm")
    parser.add_argument("--models", nargs="+", default=list(PJM_MODELS), help="PJM: models to train and score")
    parser.add_argument("--workdir", default=None, help="where trained models go (default runs/bench/<dataset>)")
    parser.add_argument("--reuse", action="store_true", help="PJM: score existing bundles instead of training")
    parser.add_argument("--max-epochs", type=int, default=None, help="override each model's max_epochs")
    parser.add_argument("--horizon", type=int, default=48,
                        help="PJM: hours ahead each model is trained for (the protocol scores 48)")
    parser.add_argument("--period", choices=("test", "val"), default="test",
                        help="PJM: the year scored (val: for comparing settings without spending the test year)")
    args = parser.parse_args()
    if args.period == "val" and args.dataset != "pjm":
        parser.error("--period val is for --dataset pjm (ETTh1 has its published protocol)")
    if args.horizon < 48:
        parser.error("--horizon must be at least the protocol's 48 h")
    args.workdir = args.workdir or f"runs/bench/{args.dataset}"
    if args.dataset == "pjm":
        run_pjm(args)
    else:
        from benchmarks.accuracy_etth1 import run_etth1

        args.epochs = args.max_epochs
        run_etth1(args)


if __name__ == "__main__":
    main()
