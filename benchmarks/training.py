"""Training throughput: plain Lightning (`training.pipeline.train`) vs Ray Train with 1 and 2 DDP workers
(`training.distributed.train_distributed`), same config, same data, same number of optimizer steps.

    python benchmarks/training.py [--zones 5] [--epochs 3] [--samples 6400]
    -> benchmarks/results/training.json

Samples/s counts training windows over the summed epoch times the runs log (the Trainer's epoch loop
including validation), so Ray's start-up and the final evaluation are not in it; wall time is reported
beside it. Synthetic zones; the demo LSTM architecture (configs/models/demo.yaml).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zones", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=6400, help="training windows per epoch")
    args = parser.parse_args()

    import ray
    import torch

    from training.config import CONFIG_DIR, load_config
    from training.distributed import train_distributed
    from training.pipeline import train
    from training.synthetic import synthetic_load

    cfg = load_config(CONFIG_DIR / "models" / "demo.yaml", **{
        "training.max_epochs": args.epochs, "training.samples_per_epoch": args.samples, "training.val_samples": 1000,
        "training.patience": args.epochs, "data.val_days": 60, "data.test_days": 60})
    rows = []
    with tempfile.TemporaryDirectory(prefix="energyopt-training-") as tmp:
        data = Path(tmp) / "data.csv"
        synthetic_load(n_zones=args.zones, hours=24 * 700, seed=0).to_csv(data, index=False)
        # plain Lightning twice: torch's default intra-op threads, and 1 thread (what each Ray worker gets
        # on 2 CPUs); on a shared, oversubscribed machine the thread count alone changes a lot
        cases = [("lightning", 0, None), ("lightning", 0, 1), ("ray_train", 1, None), ("ray_train", 2, None)]
        for case, workers, threads in cases:
            out = Path(tmp) / f"{case}-{workers}-{threads}"
            started = time.perf_counter()
            if case == "lightning":
                local = cfg.model_copy(deep=True)
                local.training.num_threads = threads
                bundle = train(local, data, out, progress=False, evaluate=False, log=lambda _: None)
            else:
                if not ray.is_initialized():
                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
                    started = time.perf_counter()
                bundle = train_distributed(cfg, data, out, num_workers=workers, evaluate=False,
                                           storage=Path(tmp) / "ray-train", log=lambda _: None)
            wall = time.perf_counter() - started
            epochs = bundle.meta["training"]["epochs"]
            fit_s = sum(e["seconds"] for e in epochs)
            torch_threads = (threads or torch.get_num_threads()) if case == "lightning" else max(1, 2 // workers)
            rows.append({"case": case, "workers": workers, "torch_threads": torch_threads, "epochs": len(epochs),
                         "samples_per_epoch": args.samples,
                         "fit_seconds": round(fit_s, 1), "wall_seconds": round(wall, 1),
                         "samples_per_s": round(len(epochs) * args.samples / fit_s, 1),
                         "best_val_loss": round(bundle.meta["training"]["best_val_loss"], 4)})
            print(rows[-1], flush=True)
    base = rows[0]["samples_per_s"]
    summary = {"lightning_samples_per_s": base,
               "lightning_1_thread_samples_per_s": rows[1]["samples_per_s"],
               "ray_1_worker_samples_per_s": rows[2]["samples_per_s"],
               "ray_2_workers_samples_per_s": rows[3]["samples_per_s"],
               "ray_1_worker_vs_lightning": round(rows[2]["samples_per_s"] / base, 2),
               "ray_2_workers_vs_lightning": round(rows[3]["samples_per_s"] / base, 2),
               "ray_2_workers_vs_lightning_1_thread": round(rows[3]["samples_per_s"] / rows[1]["samples_per_s"], 2),
               "ray_2_vs_1_workers": round(rows[3]["samples_per_s"] / rows[2]["samples_per_s"], 2)}
    config = {"zones": args.zones, "epochs": args.epochs, "samples_per_epoch": args.samples,
              "model": "demo LSTM (configs/models/demo.yaml)",
              "ray": "local, num_cpus=2, gloo, 1 torch thread per worker",
              "note": "2 CPU cores shared with other jobs during the run; compare rows of this run only"}
    print(write_result("training", config, rows, summary))


if __name__ == "__main__":
    main()
