"""ETTh1 under the standard long-horizon protocol, so our Transformer stands beside published tables.

Protocol (Informer / Autoformer / PatchTST code): ETTh1's 7 channels, train = the first 12 months
(8640 h), validation = the next 4, test = the 4 after (2880 h each); z-scored with training statistics;
input 336 h; horizons 96/192/336/720; MSE and MAE on the normalized test set over every channel and every
test window (stride 1). Channel-independent: each channel is one series of our global model, without
calendar covariates. The model is `models/transformer.py` with PatchTST/42's ETTh1 settings, trained by
the project's LightningModule with MSE (a point model: no quantiles).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.common import write_result
from models.data import Series, Split
from models.features import FeatureSpec
from models.forecaster import ForecasterConfig
from training.module import ForecastModule, WindowDataModule
from training.windows import WindowDataset

ETTH1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ett" / "ETTh1.csv"
INPUT = 336
TRAIN_END, VAL_END, TEST_END = 12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24
PATCHTST_42 = {"d_model": 16, "n_heads": 4, "e_layers": 3, "d_ff": 128, "dropout": 0.3, "fc_dropout": 0.3,
               "head_dropout": 0.0, "patch_len": 16, "stride": 8}
# PatchTST paper, Table 3, ETTh1, PatchTST/42 (input 336); DLinear (input 336) for reference.
PUBLISHED = {
    "PatchTST/42": {"mse": {96: 0.375, 192: 0.414, 336: 0.431, 720: 0.449},
                    "mae": {96: 0.399, 192: 0.421, 336: 0.436, 720: 0.466}},
    "DLinear": {"mse": {96: 0.375, 192: 0.405, 336: 0.439, 720: 0.472}},
}
NO_COVARIATES = FeatureSpec(calendar=False, holiday_country=None)


def etth1_split(path: Path = ETTH1) -> tuple[Split, list[str]]:
    """Normalized channels as Series: train, then validation and test with INPUT hours of context."""
    frame = pd.read_csv(path, parse_dates=["date"])
    channels = [c for c in frame.columns if c != "date"]
    values = frame[channels].to_numpy(np.float64)[:TEST_END]
    mean, std = values[:TRAIN_END].mean(axis=0), values[:TRAIN_END].std(axis=0)
    z = ((values - mean) / std).astype(np.float32)
    stamps = pd.DatetimeIndex(frame["date"][:TEST_END])

    def part(start: int, end: int, target: int | None) -> list[Series]:
        return [Series(c, stamps[start:end], z[start:end, j], target_start=None if target is None else stamps[target])
                for j, c in enumerate(channels)]

    split = Split(train=part(0, TRAIN_END, None), val=part(TRAIN_END - INPUT, VAL_END, TRAIN_END),
                  test=part(VAL_END - INPUT, TEST_END, VAL_END))
    return split, channels


@torch.no_grad()
def test_errors(module: ForecastModule, windows: WindowDataset) -> tuple[float, float]:
    module.eval()
    se = ae = count = 0.0
    for history, past, future, target in DataLoader(windows, batch_size=1024):
        pred = module.model(history, past, future)[..., 0]
        se += float(((pred - target) ** 2).sum())
        ae += float((pred - target).abs().sum())
        count += target.numel()
    return se / count, ae / count


def run_horizon(split: Split, horizon: int, args: argparse.Namespace) -> dict:
    config = ForecasterConfig("transformer", INPUT, horizon, (), 0, dict(PATCHTST_42))
    pl.seed_everything(args.seed, verbose=False)
    data = WindowDataModule(split, config, NO_COVARIATES, batch_size=args.batch_size,
                            samples_per_epoch=args.samples_per_epoch, val_samples=args.val_samples, seed=args.seed)
    data.setup()
    module = ForecastModule(config.to_dict(), lr=args.lr, weight_decay=0.0, loss_units=args.loss_units)
    started = time.perf_counter()
    with_ckpt = ModelCheckpoint(dirpath=f"{args.workdir}/h{horizon}", monitor="val_loss", save_top_k=1)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[with_ckpt, EarlyStopping("val_loss", patience=args.patience)])
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    state = torch.load(with_ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    test = WindowDataset(split.test, INPUT, horizon, NO_COVARIATES)
    mse, mae = test_errors(module, test)
    published = PUBLISHED["PatchTST/42"]["mse"][horizon]
    row = {"horizon": horizon, "model": "transformer", "mse": round(mse, 4), "mae": round(mae, 4),
           "patchtst_mse": published, "mse_ratio_to_patchtst": round(mse / published, 4),
           "within_5pct": bool(mse <= 1.05 * published), "epochs": trainer.current_epoch,
           "seconds_per_epoch": round(seconds / max(1, trainer.current_epoch), 1), "test_windows": len(test),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(row, flush=True)
    return row


def run_etth1(args: argparse.Namespace) -> Path:
    for name, default in (("horizons", [96, 192, 336, 720]), ("epochs", 10), ("patience", 3), ("lr", 5e-4),
                          ("batch_size", 128), ("samples_per_epoch", 20_000), ("val_samples", 10_000),
                          ("seed", 2021), ("loss_units", "data"), ("workdir", "runs/bench/etth1")):
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    torch.set_num_threads(2)
    split, channels = etth1_split()
    rows = [run_horizon(split, h, args) for h in args.horizons]
    config = {"dataset": "ETTh1 (7 channels, hourly)", "channels": channels,
              "protocol": "train/val/test 12/4/4 months, z-score with training statistics, input 336, "
                          "MSE/MAE on the normalized test set, every window, channel-independent",
              "model": {"type": "transformer", "params": PATCHTST_42},
              "training": {k: getattr(args, k) for k in ("epochs", "patience", "lr", "batch_size",
                                                        "samples_per_epoch", "seed", "loss_units")},
              "published": {k: {m: {str(h): x for h, x in v.items()} for m, v in d.items()}
                            for k, d in PUBLISHED.items()}}
    summary = {f"mse_{r['horizon']}": r["mse"] for r in rows}
    summary |= {f"mse_ratio_to_patchtst_{r['horizon']}": r["mse_ratio_to_patchtst"] for r in rows}
    summary["all_within_5pct"] = all(r["within_5pct"] for r in rows)
    path = write_result("accuracy_etth1", config, rows, summary)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizons", type=int, nargs="+")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--samples-per-epoch", type=int)
    parser.add_argument("--loss-units", choices=["data", "window"],
                        help="MSE in the z-scored data's units (default, as PatchTST) or per-window units")
    parser.add_argument("--workdir")
    run_etth1(parser.parse_args())
