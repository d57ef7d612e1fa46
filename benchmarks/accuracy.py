"""Accuracy benchmark: our forecasters against the baselines under one protocol, in one run.

    python benchmarks/accuracy.py --dataset pjm     -> benchmarks/results/accuracy_pjm.json
    python benchmarks/accuracy.py --dataset nem     -> benchmarks/results/accuracy_nem.json
    python benchmarks/accuracy.py --dataset etth1   -> benchmarks/results/accuracy_etth1.json

Peers (benchmarks/peers.py), fitted and scored in the same run on the same rows: ridge regressions, LightGBM
through mlforecast and neuralforecast's NHITS. The last two need the `bench` extra, which needs pandas < 3,
so run the benchmark from a venv of its own (pyproject.toml says how); without it only the ridges run.

PJM: the five bundled zones; each model is trained by `training.pipeline.train` (the code behind `energyopt
train`) in its own process, so its training time per epoch and its peak memory are its own. All models
are then backtested on the same origins (daily at 00:00 over each zone's last 365 days, 48 h ahead) and
scored together by `training.evaluate.score`.

`lstm_region` and `transformer_region` are the same models reading the region context as well: every
zone's load over the history window and which zone the series is (configs/models/*_region.yaml).
`ensemble_region` (`ensemble_nem`) is the mean of the two as one bundle, assembled from the members this
run trained (its training time is theirs).

Every model is trained for the protocol's 48 h (`--horizon`), one model per horizon as in the ETTh1
protocol and PatchTST, the baselines included. The shipped configs train 168 h models, because serving
answers up to a week ahead; `--horizon 168` scores those (a longer horizon costs accuracy at 48 h: the
loss then spreads over seven days).

NEM: the five states of the bundled NEM file (resampled to hours), test = each state's last 365 days,
validation = the 120 days before; the `_nem` models read each state's temperature, the region and the
state's holidays, the baselines get the states' holidays. Every model is scored twice: with the observed
weather of the forecast hours (GEFCom's perfect weather forecast) and with a realistic weather forecast
(training.evaluate.WeatherForecastError, the same forecast for every model, peers included).

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

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result

PJM_MODELS = ("lstm", "transformer", "lstm_region", "transformer_region", "ensemble_region", "linear",
              "seasonal_naive")
NEM_MODELS = ("lstm_nem", "transformer_nem", "ensemble_nem", "linear", "seasonal_naive")
PEERS = ("ridge", "lightgbm", "nhits")


def dataset_overrides(dataset: str, model: str) -> dict:
    """Config overrides of `model` on `dataset`: on the NEM, the baselines take the NEM protocol's periods
    and the states' holidays from the `_nem` configs (one place for them)."""
    if dataset != "nem" or model.endswith("_nem"):
        return {}
    from training.config import load_config

    nem = load_config(model="lstm_nem")
    return {"features.holiday_country": nem.features.holiday_country,
            "features.holiday_zones": dict(nem.features.holiday_zones),
            "data.val_days": nem.data.val_days, "data.test_days": nem.data.test_days}


def dataset_path(dataset: str) -> Path | None:
    from models.series import BUNDLED_NEM

    return BUNDLED_NEM if dataset == "nem" else None  # None: the bundled PJM zones


def _train_in_child(model: str, out: Path, max_epochs: int | None, horizon: int, dataset: str,
                    queue: mp.Queue) -> None:
    import torch

    from training.config import load_config
    from training.pipeline import train

    torch.set_num_threads(2)
    cfg = load_config(model=model, **{"training.max_epochs": max_epochs, "model.horizon": horizon,
                                      **dataset_overrides(dataset, model)})
    started = time.perf_counter()
    bundle = train(cfg, dataset_path(dataset), out, progress=False, evaluate=False,
                   log=lambda line: print(f"[{model}] {line}"))
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


def _train(args: argparse.Namespace) -> tuple[dict, dict]:
    """Train (or with --reuse load) every model of the run, each in its own process -> (bundles, training)."""
    from models.bundle import BundleError, load_bundle

    workdir = Path(args.workdir)
    training, bundles = {}, {}
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
        if _assembled(args, model, out, bundles, training):
            continue
        print(f"training {model} ...", flush=True)
        queue: mp.Queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(
            target=_train_in_child, args=(model, out, args.max_epochs, args.horizon, args.dataset, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"training {model} failed (exit code {child.exitcode})")
        stats = queue.get()
        training[stats["model"]] = stats
        print(f"  {stats}", flush=True)
        bundles[model] = load_bundle(out)
    return bundles, training


def _assembled(args: argparse.Namespace, model: str, out: Path, bundles: dict, training: dict) -> bool:
    """An ensemble whose members this run has trained is assembled from them (not trained again); its
    training time is theirs, its memory the most any of them took."""
    from models.bundle import load_bundle
    from training.config import load_config
    from training.ensemble import ENSEMBLE
    from training.pipeline import assemble

    cfg = load_config(model=model, **{"model.horizon": args.horizon, **dataset_overrides(args.dataset, model)})
    members = cfg.model.params.get("members") if cfg.model.type == ENSEMBLE else None
    if not members or not all(m in bundles for m in members):
        return False
    print(f"assembling {model} from {', '.join(members)}", flush=True)
    started = time.perf_counter()
    assemble(cfg, [bundles[m] for m in members], dataset_path(args.dataset), out, evaluate=False,
             log=lambda line: print(f"[{model}] {line}"))
    bundles[model] = load_bundle(out)
    parts = [training.get(bundles[m].name, {}) for m in members]
    training[bundles[model].name] = {
        "members": members, "assemble_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(sum(p.get("train_seconds", 0) for p in parts) + time.perf_counter() - started, 1),
        "peak_rss_mb": max((p.get("peak_rss_mb", 0) for p in parts), default=None)}
    return True


def _peer_frames(args: argparse.Namespace, split, conventions: dict) -> tuple[dict[str, list[pd.DataFrame]], dict]:
    """The peers' backtest rows on the run's period under each weather convention, and their training time
    and memory (each fitted once, on observed weather)."""
    from benchmarks import peers
    from training.config import load_config

    features = load_config(model="lstm_nem" if args.dataset == "nem" else "lstm").features.spec()
    protocol = peers.Protocol.from_split(split, features)
    frames: dict[str, list[pd.DataFrame]] = {label: [] for label in conventions}
    if "ridge" in args.peers:
        variants = [("ridge_zone", False, False), ("ridge_region", True, False)]
        if protocol.temperature is not None:
            variants += [("ridge_temperature", False, True), ("ridge_region_temperature", True, True)]
        for label, weather in conventions.items():
            protocol.weather = weather
            for name, neighbours, temperature in variants:
                frames[label].append(peers.ridge_frame(protocol, name, neighbours=neighbours, weather=temperature,
                                                       period=args.period))
        protocol.weather = None
    for peer, make in (("lightgbm", peers.lightgbm_frame), ("nhits", peers.nhits_frame)):
        if peer not in args.peers:
            continue
        print(f"fitting the {peer} peer ...", flush=True)
        options = {"max_steps": args.nhits_max_steps} if peer == "nhits" else {}
        for label, frame in make(protocol, conventions, period=args.period, **options).items():
            frames[label].append(frame)
    return frames, protocol.timings


def _missing_peers(requested: list[str]) -> dict[str, str]:
    """Peers asked for whose package is not installed -> why they are left out."""
    import importlib.util

    packages = {"lightgbm": "mlforecast", "nhits": "neuralforecast"}
    return {p: f"{packages[p]} is not installed (the bench extra, in a venv with pandas < 3)"
            for p in requested if p in packages and importlib.util.find_spec(packages[p]) is None}


def _scored(frame: pd.DataFrame, names: list[str], split) -> tuple[dict, list]:
    from training.evaluate import score

    results = score(frame, names, split.train)
    return results["summary"], results["rows"]


def run_region(args: argparse.Namespace) -> Path:
    """PJM or NEM: our models, the baselines and the peers, trained, backtested and scored together."""
    from training.config import load_config
    from training.evaluate import WeatherForecastError, backtest
    from training.pipeline import prepare_data

    bundles, training = _train(args)
    split, _, _ = prepare_data(load_config(model="linear", **dataset_overrides(args.dataset, "linear")),
                               dataset_path(args.dataset))
    skipped = _missing_peers(args.peers)
    args.peers = [p for p in args.peers if p not in skipped]
    conventions = {"perfect": None, "forecast": WeatherForecastError()} if args.dataset == "nem" else {"none": None}
    peer_frames, peer_training = _peer_frames(args, split, conventions)
    results = {}
    for convention, weather in conventions.items():
        frame, names = None, []
        for bundle in bundles.values():
            part = backtest(bundle, getattr(split, args.period), horizon=48, column=bundle.name, weather=weather)
            frame = part if frame is None else frame.merge(part.drop(columns=["y", "ds"]),
                                                           on=["zone", "cutoff", "step"])
            names.append(bundle.name)
        frame["cutoff"] = pd.to_datetime(frame["cutoff"]).astype("datetime64[ns]")
        rows = len(frame)
        for part in peer_frames[convention]:
            part["cutoff"] = part["cutoff"].astype("datetime64[ns]")
            name = part.columns[3]
            frame = frame.merge(part, on=["zone", "cutoff", "step"], how="left")
            if frame[name].isna().any():
                raise SystemExit(f"{name} has no forecast for {int(frame[name].isna().sum())} protocol rows")
            names.append(name)
        assert len(frame) == rows
        overall, per_zone = _scored(frame, names, split)
        results[convention] = {"overall": overall, "rows": per_zone,
                               "origins": int(frame.groupby(["zone", "cutoff"]).ngroups)}
    return _write(args, bundles, training, peer_training, skipped, results)


def _ratios(overall: dict, deep: list[str], references: list[str]) -> dict:
    return {f"{d}_mae_vs_{r}": round(overall[d]["mae"] / overall[r]["mae"], 4)
            for d in deep if d in overall for r in references if r in overall}


def _write(args: argparse.Namespace, bundles: dict, training: dict, peer_training: dict, skipped: dict,
           results: dict) -> Path:
    deep = [b.name for b in bundles.values() if b.name not in ("linear", "seasonal_naive_168")]
    peer_names = [n for n in next(iter(results.values()))["overall"] if n not in {b.name for b in bundles.values()}]
    references = ["linear", "seasonal_naive_168", *peer_names]
    summary: dict = {"training": training, "peer_training": peer_training, "peers_left_out": skipped}
    rows = []
    for convention, result in results.items():
        key = "" if convention == "none" else f"{convention}_weather"
        block = {"overall": result["overall"], **_ratios(result["overall"], deep, references)}
        if key:
            summary[key] = block
        else:
            summary.update(block)
        rows += [{**row, **({"weather": convention} if key else {})} for row in result["rows"]]
    if args.dataset == "nem":
        dataset = "NEM half-hourly demand and temperature of NSW QLD SA TAS VIC, 2012-2014, hourly means (bundled)"
        protocol = ("per state: test = last 365 days, validation = 120 days before, train = all before; origins "
                    f"daily at 00:00 local (AEST) in the {args.period} period; horizon 48 h; history 336 h; "
                    "metrics over all steps; weather of the forecast hours: 'perfect' = observed, 'forecast' = "
                    "observed + training.evaluate.WeatherForecastError (seed 0)")
        targets = {"mae_vs_ridge_temperature_max": 0.75, "mae_vs_lightgbm_max": 0.95, "mape_max": 3.3,
                   "coverage_80": [0.75, 0.85]}
    else:
        dataset = "PJM hourly load, zones AEP COMED DAYTON DOM EKPC (bundled)"
        protocol = ("per zone: test = last 365 days, validation = 365 days before, train = all before; origins "
                    f"daily at 00:00 in the {args.period} period; horizon 48 h; history 336 h; metrics over all "
                    "steps")
        targets = {"mae_vs_best_peer_max": 0.95, "mae_vs_linear_max": 0.90, "coverage_80": [0.75, 0.85]}
    config = {
        "dataset": dataset, "protocol": protocol, "period": args.period,
        "trained_horizon": {b.name: b.max_horizon for b in bundles.values()},
        "origins": next(iter(results.values()))["origins"],
        "models": {b.name: b.meta["training"]["config"]["model"] for b in bundles.values()},
        "peers": "benchmarks/peers.py", "targets": targets,
    }
    name = f"accuracy_{args.dataset}" + ("" if args.period == "test" else "_val")
    path = write_result(name, config, rows, summary)
    for convention, result in results.items():
        print(f"-- weather: {convention}")
        for model, m in result["overall"].items():
            print(f"{model:>26}: MAE {m['mae']:8.1f}  MAPE {m['mape']:5.2f} %  pinball {m['pinball']:7.1f}  "
                  f"coverage {m.get('coverage_80', float('nan')):.3f}")
    print(f"wrote {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("pjm", "nem", "etth1"), default="pjm")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"models to train and score (PJM: {' '.join(PJM_MODELS)}; NEM: {' '.join(NEM_MODELS)})")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                        help="peers fitted in the same run (lightgbm and nhits need the bench extra)")
    parser.add_argument("--nhits-max-steps", type=int, default=None, help="NHITS's training steps at most")
    parser.add_argument("--workdir", default=None, help="where trained models go (default runs/bench/<dataset>)")
    parser.add_argument("--reuse", action="store_true", help="PJM, NEM: score existing bundles instead of training")
    parser.add_argument("--max-epochs", type=int, default=None, help="override each model's max_epochs")
    parser.add_argument("--horizon", type=int, default=48,
                        help="PJM: hours ahead each model is trained for (the protocol scores 48)")
    parser.add_argument("--period", choices=("test", "val"), default="test",
                        help="PJM: the year scored (val: for comparing settings without spending the test year)")
    args = parser.parse_args()
    if args.period == "val" and args.dataset == "etth1":
        parser.error("--period val is for --dataset pjm or nem (ETTh1 has its published protocol)")
    if args.horizon < 48:
        parser.error("--horizon must be at least the protocol's 48 h")
    args.workdir = args.workdir or f"runs/bench/{args.dataset}"
    args.models = args.models or list(NEM_MODELS if args.dataset == "nem" else PJM_MODELS)
    if args.dataset != "etth1":
        run_region(args)
    else:
        from benchmarks.accuracy_etth1 import run_etth1

        args.epochs = args.max_epochs
        run_etth1(args)


if __name__ == "__main__":
    main()
