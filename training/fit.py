"""Fit a forecaster (or the anomaly autoencoder) on a long-format table and write a model bundle (local, single
process)."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from models.anomaly import COMPONENTS
from models.autoencoder import WEEK, AutoencoderParams, ConvAutoencoder, calibrate_detector
from models.bundle import Bundle, ForecasterBundle, load_bundle, save_bundle
from models.data import RepairReport, Split, clean, fingerprint, read_table, split_by_time
from models.forecaster import QuantileForecaster
from models.series import BUNDLED_PJM
from training.config import AUTOENCODER, TrainConfig
from training.evaluate import score_test_period
from training.module import AutoencoderModule, ForecastModule, WindowDataModule, weight_averaging


class EpochLog(Callback):
    """Keeps per-epoch validation loss and wall time for the bundle's training summary."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.epochs: list[dict[str, float]] = []
        self._start = 0.0
        self._log = log  # one line per epoch, for runs without a progress bar

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.epochs.append({
            "epoch": trainer.current_epoch,
            "train_loss": float(metrics.get("train_loss", float("nan"))),
            "val_loss": float(metrics.get("val_loss", float("nan"))),
            "seconds": round(time.perf_counter() - self._start, 2),
        })
        if self._log:
            e = self.epochs[-1]
            self._log(f"epoch {e['epoch']}: train_loss {e['train_loss']:.4f}, val_loss {e['val_loss']:.4f} "
                      f"({e['seconds']:.0f} s)")


def prepare_data(config: TrainConfig, data: str | Path | None) -> tuple[Split, RepairReport, str]:
    """Read, repair and split the data as the config says; also returns the raw data's fingerprint."""
    table = read_table(data if data is not None else BUNDLED_PJM)
    series, report = clean(table, max_interpolate_hours=config.data.max_interpolate_hours)
    context = config.model.input_length
    if config.model.type == AUTOENCODER:  # windows read their reference weeks before them
        context = WEEK * AutoencoderParams(**config.model.params).reference_weeks
    split = split_by_time(series, val_hours=config.data.val_days * 24, test_hours=config.data.test_days * 24,
                          context_hours=context)
    return split, report, fingerprint(table)


def build_model(config: TrainConfig) -> QuantileForecaster:
    model_cfg = config.forecaster_config()
    if model_cfg.type == "seasonal_naive":  # quantiles come from the config, not from training
        model_cfg.params = {"quantiles": tuple(model_cfg.quantiles), **model_cfg.params}
    return QuantileForecaster(model_cfg)


@torch.no_grad()
def calibrate_intervals(model: QuantileForecaster, windows: Dataset, batch_size: int = 1024) -> list[float]:
    """Conformal scaling of each quantile's distance from the median, so that on held-out windows each
    quantile level is met (split conformal, one factor per quantile over all horizon steps)."""
    levels = model.config.quantiles
    if len(levels) < 2:
        return [1.0]
    model.interval_scale.fill_(1.0)
    model.eval()
    preds, targets = [], []
    for history, past, future, target in DataLoader(windows, batch_size=batch_size):
        preds.append(model(history, past, future))
        targets.append(target)
    pred, target = torch.cat(preds), torch.cat(targets)
    m = model.median_index
    mid = pred[..., m]
    factors = []
    for k, level in enumerate(levels):
        if k == m:
            factors.append(1.0)
            continue
        dist = pred[..., k] - mid
        ok = dist.abs() > 1e-6
        ratio = ((target - mid)[ok] / dist[ok]).double()
        # Upper quantiles need P(ratio <= s) = level; lower ones (dist < 0) need P(ratio >= s) = level.
        want = level if k > m else 1 - level
        factors.append(float(torch.quantile(ratio[: 2_000_000], want).clamp(0.25, 4.0)))
    model.interval_scale.copy_(torch.tensor(factors))
    return factors


def train(
    config: TrainConfig,
    data: str | Path | None,
    out: str | Path,
    *,
    progress: bool = True,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Train (or, for the seasonal naive, just build), calibrate, evaluate and save a bundle at `out`.

    `training.num_threads` holds for this call only: the caller's torch thread count is put back after."""
    threads = torch.get_num_threads()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    try:
        return _train(config, data, Path(out), progress=progress, evaluate=evaluate, log=log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, data: str | Path | None, out: Path, *, progress: bool, evaluate: bool,
           log: Callable[[str], None]) -> Bundle:
    tr = cfg.training
    pl.seed_everything(tr.seed, verbose=False)
    split, report, data_fp = prepare_data(cfg, data)
    for line in report.summary_lines():
        log(f"  {line}")
    features = cfg.features.spec()
    if cfg.model.type == AUTOENCODER:
        return _train_autoencoder(cfg, split, report, data_fp, data, out, progress=progress, evaluate=evaluate,
                                  log=log)
    model = build_model(cfg)
    dm = WindowDataModule(split, model.config, features, batch_size=min(tr.batch_size, tr.samples_per_epoch),
                          samples_per_epoch=tr.samples_per_epoch, val_samples=tr.val_samples, seed=tr.seed)
    dm.setup()
    log(f"windows: {len(dm.train_set):,} training origins ({tr.samples_per_epoch:,} drawn per epoch), "
        f"{len(dm.val_set):,} validation")
    epochs = EpochLog(None if progress else log)
    started = time.perf_counter()
    if any(p.requires_grad for p in model.parameters()):
        module = ForecastModule.for_model(model, tr)
        model = _fit(module, dm, tr, out, progress, epochs)
    scales = calibrate_intervals(model, dm.val_set)
    log(f"interval calibration on validation: {dict(zip(model.config.quantiles, np.round(scales, 3)))}")
    meta = _metadata(cfg, split, report, data_fp, data, epochs, time.perf_counter() - started)
    bundle = ForecasterBundle(model=model.eval(), features=features, name=cfg.name, version=_version(), meta=meta)
    metrics = None
    if evaluate:
        try:
            metrics = score_test_period(bundle, split)
        except ValueError as err:  # a test period too short for one forecast origin: keep the model anyway
            log(f"test period: no evaluation ({err})")
    save_bundle(out, model, features, name=cfg.name, version=bundle.version, meta=meta, metrics=metrics)
    return load_bundle(out)


def _fit(module: pl.LightningModule, dm: WindowDataModule, tr: Any, out: Path, progress: bool,
         epochs: EpochLog) -> torch.nn.Module:
    """The Lightning loop with early stopping; returns the module's model at its best validation loss."""
    with tempfile.TemporaryDirectory(prefix=".ckpt-", dir=out.parent if out.parent.exists() else None) as ckpt:
        best = ModelCheckpoint(dirpath=ckpt, monitor="val_loss", mode="min", save_top_k=1)
        trainer = pl.Trainer(
            max_epochs=tr.max_epochs, accelerator=tr.accelerator, devices=1, precision=_precision(tr),
            gradient_clip_val=tr.gradient_clip or None, logger=False, enable_progress_bar=progress,
            enable_model_summary=progress,
            callbacks=[best, EarlyStopping("val_loss", patience=tr.patience), epochs, *weight_averaging(tr)],
        )
        trainer.fit(module, datamodule=dm)
        if best.best_model_path:
            state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
    return module.model.cpu().float()


def _train_autoencoder(cfg: TrainConfig, split: Split, report: RepairReport, data_fp: str, data: Any, out: Path, *,
                       progress: bool, evaluate: bool, log: Callable[[str], None]) -> Bundle:
    """Train the anomaly autoencoder, calibrate its threshold on the validation period, save the bundle
    (the calibration is in config.json under "detector"), and evaluate it on the test period."""
    from training.anomalies import evaluate_detector

    tr, features = cfg.training, cfg.features.spec()
    model = ConvAutoencoder(cfg.autoencoder_config())
    dm = WindowDataModule(split, model.config, features, batch_size=min(tr.batch_size, tr.samples_per_epoch),
                          samples_per_epoch=tr.samples_per_epoch, val_samples=tr.val_samples, seed=tr.seed)
    dm.setup()
    log(f"windows: {len(dm.train_set):,} training starts ({tr.samples_per_epoch:,} drawn per epoch), "
        f"{len(dm.val_set):,} validation")
    epochs = EpochLog(None if progress else log)
    started = time.perf_counter()
    module = AutoencoderModule(model.config.to_dict(), lr=tr.lr, weight_decay=tr.weight_decay)
    module.model = model
    model = _fit(module, dm, tr, out, progress, epochs).eval()
    d = cfg.detection
    calibration = calibrate_detector(model, features, split.val, method=d.method, risk=d.risk,
                                     merge_gap_hours=d.merge_gap_hours,
                                     max_false_alarms_per_month=d.max_false_alarms_per_month)
    log(f"threshold calibration on validation ({d.method}, risk {d.risk:g}/h): thresholds "
        f"{dict(zip(COMPONENTS, np.round(calibration.thresholds, 2)))}, "
        f"{calibration.validation['false_alarms_per_zone_month']} false alarms per zone-month")
    meta = _metadata(cfg, split, report, data_fp, data, epochs, time.perf_counter() - started)
    meta["detector"] = calibration.to_dict()
    version = _version()
    metrics = None
    if evaluate:
        try:
            metrics = evaluate_detector(model, features, calibration, split.test, seed=tr.seed)
            log(f"test period: event F1 {metrics['summary']['f1']:.3f} on injected anomalies, "
                f"{metrics['summary']['false_alarms_per_zone_month']:.2f} false alarms per zone-month untouched")
        except ValueError as err:  # a test period too short to plant every kind with quiet margins
            log(f"test period: no planted-anomaly evaluation ({err})")
    save_bundle(out, model, features, name=cfg.name, version=version, meta=meta, metrics=metrics)
    return load_bundle(out)


def _precision(tr: Any) -> str:
    if tr.precision != "auto":
        return tr.precision
    return "bf16-mixed" if torch.cuda.is_available() and tr.accelerator != "cpu" else "32-true"


def _version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _metadata(cfg: TrainConfig, split: Split, report: RepairReport, data_fp: str, data: Any,
              epochs: EpochLog, seconds: float) -> dict[str, Any]:
    zones = sorted({s.zone for s in split.train})
    scaling = {}
    for zone in zones:
        values = np.concatenate([s.load for s in split.train if s.zone == zone])
        scaling[zone] = {"mean": float(values.mean()), "std": float(values.std())}
    return {
        "zones": zones,
        "scaling": scaling,
        "data": {"source": str(data) if data is not None else "bundled:pjm_hourly.parquet",
                 "fingerprint": data_fp, "repairs": report.to_dict()},
        "split": {"val_days": cfg.data.val_days, "test_days": cfg.data.test_days,
                  "test_start": {s.zone: str(s.target_start) for s in split.test}},
        "training": {"config": cfg.model_dump(), "epochs": epochs.epochs, "seconds": round(seconds, 1),
                     "best_val_loss": min((e["val_loss"] for e in epochs.epochs), default=None)},
    }
