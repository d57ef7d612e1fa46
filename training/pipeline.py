"""The training pipeline, written once: data -> windows -> Trainer -> best weights -> calibration ->
metadata -> test-period score -> bundle. Local fit (`train`, behind `energyopt train`), Ray Train
(training/distributed.py), sweep trials (training/sweep.py) and the anomaly autoencoder all go through
`data_module`, `build_trainer` and `finish_fit`; `evaluate_bundle` compares a bundle with freshly fitted
baselines on the evaluation protocol (training/evaluate.py). A fit given a tracker (training/tracking.py)
logs its settings, epochs, test scores and bundle to MLflow."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader, Dataset

import models.bundle  # save_bundle looked up at call time: tests stand in for the disk through it
from models.anomaly import COMPONENTS, Calibration
from models.autoencoder import WEEK, AutoencoderConfig, AutoencoderParams, ConvAutoencoder, calibrate_detector
from models.bundle import Bundle, ForecasterBundle
from models.data import RepairReport, Split, auto_validation_days, clean, fingerprint, read_table, split_by_time
from models.features import FeatureSpec
from models.forecaster import ForecasterConfig, QuantileForecaster
from models.runtime import torch_threads
from models.series import BUNDLED_PJM
from training import tracking
from training.anomalies import evaluate_detector
from training.config import AUTOENCODER, ConfigError, TrainConfig, TrainingSection, load_config
from training.ensemble import ENSEMBLE, check_member, member_configs
from training.evaluate import backtest, score, score_test_period
from training.module import AutoencoderModule, ForecastModule, WindowDataModule, weight_averaging
from training.tracking import Tracker

Prepared = tuple[Split, RepairReport, str]  # what prepare_data returns: split, repairs, data fingerprint


class EpochLog(Callback):
    """Keeps per-epoch validation loss and wall time for the bundle's training summary, and gives each epoch
    to the Trainer's tracker (training/tracking.py), if it has one."""

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
        if isinstance(trainer.logger, Tracker):
            trainer.logger.log_epoch(self.epochs[-1])
        if self._log:
            e = self.epochs[-1]
            self._log(f"epoch {e['epoch']}: train_loss {e['train_loss']:.4f}, val_loss {e['val_loss']:.4f} "
                      f"({e['seconds']:.0f} s)")


class BestWeights(Callback):
    """Keeps the weights of the best validation epoch in memory (no checkpoint files)."""

    def __init__(self) -> None:
        self.loss, self.state = float("inf"), None

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loss = float(trainer.callback_metrics.get("val_loss", float("inf")))
        if not trainer.sanity_checking and loss < self.loss:
            self.loss = loss
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ the steps

def prepare_data(config: TrainConfig, data: str | Path | None) -> Prepared:
    """Read, repair and split the data as the config says; also returns the raw data's fingerprint. A
    validation period of "auto" days becomes the number of days it stands for on this data, in `config`."""
    table = read_table(data if data is not None else BUNDLED_PJM)
    series, report = clean(table, max_interpolate_hours=config.data.max_interpolate_hours)
    if config.data.val_days == "auto":  # settled here, once, so everything after reads the days used
        config.data.val_days = auto_validation_days(series, config.data.test_days)
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
    if model_cfg.type == ENSEMBLE:  # members named by config: their types and params
        model_cfg.params = {"members": [{"type": m.model.type, "params": dict(m.model.params)}
                                        for m in member_configs(config)]}
    return QuantileForecaster(model_cfg)


def data_module(split: Split, model_config: ForecasterConfig | AutoencoderConfig, features: FeatureSpec,
                tr: TrainingSection, *, workers: int = 1) -> WindowDataModule:
    """The windows a fit draws. Each of `workers` DDP workers draws its share of every epoch's windows in its
    share of the batch, so the optimizer steps are those of a single-process fit."""
    return WindowDataModule(split, model_config, features,
                            batch_size=max(1, min(tr.batch_size, tr.samples_per_epoch) // workers),
                            samples_per_epoch=max(1, tr.samples_per_epoch // workers), val_samples=tr.val_samples,
                            seed=tr.seed, mixup=tr.mixup)


def build_trainer(tr: TrainingSection, epochs: EpochLog, *callbacks: Callback, progress: bool = False,
                  accelerator: str | None = None, devices: int | str = 1, logger: Logger | None = None,
                  **options: Any) -> pl.Trainer:
    """The one Trainer: early stopping on validation loss, the epoch log, the caller's callbacks (what keeps
    the best weights), weight averaging last (so those see the averaged weights); `logger` (a tracker from
    training/tracking.py; None: no logging); `options` such as a distributed strategy go to pl.Trainer as
    they are."""
    steps = max(1, tr.samples_per_epoch // max(1, min(tr.batch_size, tr.samples_per_epoch)))
    return pl.Trainer(
        max_epochs=tr.max_epochs, accelerator=accelerator or tr.accelerator, devices=devices,
        precision=_precision(tr), gradient_clip_val=tr.gradient_clip or None, logger=logger or False,
        log_every_n_steps=min(50, steps),  # Lightning warns when an epoch has fewer steps than this
        enable_progress_bar=progress, enable_model_summary=progress, enable_checkpointing=False,
        callbacks=[EarlyStopping("val_loss", patience=tr.patience), epochs, *callbacks, *weight_averaging(tr)],
        **options,
    )


def fit_best(module: pl.LightningModule, dm: WindowDataModule, tr: TrainingSection, epochs: EpochLog,
             *callbacks: Callback, progress: bool = False, accelerator: str | None = None,
             logger: Logger | None = None) -> BestWeights:
    """Fit `module` in one process and leave it at its best validation epoch's weights."""
    best = BestWeights()
    build_trainer(tr, epochs, best, *callbacks, progress=progress, accelerator=accelerator,
                  logger=logger).fit(module, datamodule=dm)
    if best.state is not None:
        module.load_state_dict(best.state)
    return best


def finish_fit(cfg: TrainConfig, model: QuantileForecaster | ConvAutoencoder, dm: WindowDataModule,
               prepared: Prepared, data: str | Path | None, epochs: EpochLog, started: float, out: str | Path, *,
               evaluate: bool = True, log: Callable[[str], None] = print,
               meta: dict[str, Any] | None = None) -> Bundle:
    """The end of every fit: calibrate the trained `model` on validation (a forecaster's intervals or a
    detector's thresholds), write the metadata (plus `meta`; a mapping there extends the entry of its
    name), score the test period (with `evaluate`) and save the bundle at `out`."""
    split, report, data_fp = prepared
    model = model.cpu().float().eval()
    features = cfg.features.spec()
    detector = None
    if isinstance(model, ConvAutoencoder):
        detector = _calibrate_detector(cfg, model, split, log)
    else:
        dm.setup()
        scales = calibrate_intervals(model, dm.val_set)
        log(f"interval calibration on validation: {dict(zip(model.config.quantiles, np.round(scales, 3)))}")
    info = _metadata(cfg, split, report, data_fp, data, epochs, time.perf_counter() - started)
    if detector is not None:
        info["detector"] = detector.to_dict()
    for key, value in (meta or {}).items():
        info[key] = {**info[key], **value} if isinstance(value, dict) and isinstance(info.get(key), dict) else value
    version = new_version()
    metrics = None
    if evaluate and detector is None:
        bundle = ForecasterBundle(model=model, features=features, name=cfg.name, version=version, meta=info)
        metrics = _score_forecaster(bundle, split, log)
    elif evaluate:
        metrics = _score_detector(cfg, model, detector, split, log)
    models.bundle.save_bundle(out, model, features, name=cfg.name, version=version, meta=info, metrics=metrics)
    return models.bundle.load_bundle(out)


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


def _score_forecaster(bundle: Bundle, split: Split, log: Callable[[str], None]) -> dict | None:
    try:
        return score_test_period(bundle, split)
    except ValueError as err:  # a test period too short for one forecast origin: keep the model anyway
        log(f"test period: no evaluation ({err})")
        return None


def _calibrate_detector(cfg: TrainConfig, model: ConvAutoencoder, split: Split,
                        log: Callable[[str], None]) -> Calibration:
    """The detector's thresholds from the validation period (stored in config.json under "detector")."""
    d = cfg.detection
    calibration = calibrate_detector(model, cfg.features.spec(), split.val, method=d.method, risk=d.risk,
                                     merge_gap_hours=d.merge_gap_hours,
                                     max_false_alarms_per_month=d.max_false_alarms_per_month)
    log(f"threshold calibration on validation ({d.method}, risk {d.risk:g}/h): thresholds "
        f"{dict(zip(COMPONENTS, np.round(calibration.thresholds, 2)))}, "
        f"{calibration.validation['false_alarms_per_zone_month']} false alarms per zone-month")
    return calibration


def _score_detector(cfg: TrainConfig, model: ConvAutoencoder, calibration: Calibration, split: Split,
                    log: Callable[[str], None]) -> dict | None:
    """The detector's event scores on anomalies planted in the test period."""
    try:
        metrics = evaluate_detector(model, cfg.features.spec(), calibration, split.test, seed=cfg.training.seed)
    except ValueError as err:  # a test period too short to plant every kind with quiet margins
        log(f"test period: no planted-anomaly evaluation ({err})")
        return None
    log(f"test period: event F1 {metrics['summary']['f1']:.3f} on injected anomalies, "
        f"{metrics['summary']['false_alarms_per_zone_month']:.2f} false alarms per zone-month untouched")
    return metrics


def _precision(tr: TrainingSection) -> str:
    if tr.precision != "auto":
        return tr.precision
    return "bf16-mixed" if torch.cuda.is_available() and tr.accelerator != "cpu" else "32-true"


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


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
        "data": {"source": data_source(data),
                 "fingerprint": data_fp, "repairs": report.to_dict()},
        "split": {"val_days": cfg.data.val_days, "test_days": cfg.data.test_days,
                  "test_start": {s.zone: str(s.target_start) for s in split.test}},
        "training": {"config": cfg.model_dump(), "epochs": epochs.epochs, "seconds": round(seconds, 1),
                     "best_val_loss": min((e["val_loss"] for e in epochs.epochs), default=None)},
    }


def data_source(data: Any) -> str:
    """How the bundle and the tracker name the training data."""
    return str(data) if data is not None else "bundled:pjm_hourly.parquet"


# ------------------------------------------------------------------------------------ the local fit

def train(
    config: TrainConfig,
    data: str | Path | None,
    out: str | Path,
    *,
    progress: bool = True,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
    tracking_uri: str | None = None,
) -> Bundle:
    """Train (or, for the seasonal naive, just build), calibrate, evaluate and save a bundle at `out`: a
    forecaster, or the anomaly autoencoder with its thresholds.

    With `tracking_uri` (what `training.tracking.resolve_uri` gives a command; None: no tracking) the run is
    logged to MLflow under the experiment named after the config; a tracker out of reach is a warning.

    `training.num_threads` holds for this call only: the caller's torch thread count is put back after."""
    tracker = tracking.logger_for(config.name, f"{config.name}-{new_version()}", tracking_uri,
                                  enabled=tracking_uri is not None, params=tracking.config_params(config),
                                  tags={"energyopt.command": "train", "data": data_source(data)})
    if tracker is not None:
        log(f"MLflow: run {tracker.run_id} in experiment {config.name!r} at {tracking_uri}")
    return tracking.tracked(tracker, out, lambda: _train(config, data, out, progress=progress, evaluate=evaluate,
                                                         log=log, tracker=tracker))


def _train(config: TrainConfig, data: str | Path | None, out: str | Path, *, progress: bool, evaluate: bool,
           log: Callable[[str], None], tracker: Tracker | None) -> Bundle:
    tr = config.training
    if config.model.type == ENSEMBLE:  # members trained by their own configs, then combined
        return train_ensemble(config, data, out, progress=progress, evaluate=evaluate, log=log)
    with torch_threads(tr.num_threads):
        pl.seed_everything(tr.seed, verbose=False)
        prepared = prepare_data(config, data)
        for line in prepared[1].summary_lines():
            log(f"  {line}")
        detector = config.model.type == AUTOENCODER
        model = ConvAutoencoder(config.autoencoder_config()) if detector else build_model(config)
        dm = data_module(prepared[0], model.config, config.features.spec(), tr)
        dm.setup()
        log(f"windows: {len(dm.train_set):,} training {'starts' if detector else 'origins'} "
            f"({tr.samples_per_epoch:,} drawn per epoch), {len(dm.val_set):,} validation")
        epochs = EpochLog(None if progress else log)
        started = time.perf_counter()
        if any(p.requires_grad for p in model.parameters()):
            module = (AutoencoderModule if detector else ForecastModule).for_model(model, tr)
            fit_best(module, dm, tr, epochs, progress=progress, logger=tracker)
            model = module.model
        return finish_fit(config, model, dm, prepared, data, epochs, started, out, evaluate=evaluate, log=log)


# ------------------------------------------------------------------------------------------ ensembles

def assemble(config: TrainConfig, members: Sequence[ForecasterBundle], data: str | Path | None, out: str | Path, *,
             evaluate: bool = True, log: Callable[[str], None] = print, started: float | None = None) -> Bundle:
    """One ensemble bundle at `out` from trained member bundles: their weights and interval scales, the
    ensemble's own intervals calibrated on validation, its test-period score (with `evaluate`)."""
    prepared = prepare_data(config, data)  # first: the split's days in config are then the ones used
    for m in members:
        check_member(config, m.name, m.config.type, m.input_length, m.quantiles, m.features,
                      (m.meta.get("split", {}).get("val_days"), m.meta.get("split", {}).get("test_days")))
        if m.max_horizon != config.model.horizon:
            raise ConfigError(f"config {config.name}: member {m.name} forecasts {m.max_horizon} h, the ensemble "
                              f"{config.model.horizon} h")
    model_config = config.forecaster_config()
    model_config.params = {"members": [{"type": m.config.type, "params": dict(m.config.params)} for m in members]}
    model = QuantileForecaster(model_config)
    for k, m in enumerate(members):
        model.backbone.members[k].load_state_dict(m.model.backbone.state_dict())
        model.backbone.member_scales[k].copy_(m.model.interval_scale)
    dm = data_module(prepared[0], model.config, config.features.spec(), config.training)
    log(f"ensemble of {', '.join(m.name for m in members)}")
    meta = {"training": {"members": [{"name": m.name, "version": m.version,
                                      "seconds": m.meta.get("training", {}).get("seconds"),
                                      "best_val_loss": m.meta.get("training", {}).get("best_val_loss"),
                                      "epochs": len(m.meta.get("training", {}).get("epochs", []))}
                                     for m in members]}}
    return finish_fit(config, model, dm, prepared, data, EpochLog(None), started or time.perf_counter(), out,
                      evaluate=evaluate, log=log, meta=meta)


def train_ensemble(config: TrainConfig, data: str | Path | None, out: str | Path, *, progress: bool,
                   evaluate: bool, log: Callable[[str], None]) -> Bundle:
    """Train every member (bundles beside `out`, in <out>.members/<name>), then assemble them at `out`."""
    started = time.perf_counter()
    members = []
    for member in member_configs(config):
        where = Path(f"{Path(out)}.members") / member.name
        log(f"training ensemble member {member.name} -> {where}")
        members.append(_train(member, data, where, progress=progress, evaluate=False,
                              log=lambda line, n=member.name: log(f"[{n}] {line}"), tracker=None))
    return assemble(config, members, data, out, evaluate=evaluate, log=log, started=started)


# ------------------------------------------------------------------------------ bundle vs baselines

BASELINES = ("seasonal_naive_168", "linear")


def evaluate_bundle(
    bundle: Bundle,
    data: str | Path | None = None,
    *,
    horizon: int = 48,
    baselines: bool = True,
    log: Callable[[str], None] = print,
    issue_times: pd.DatetimeIndex | None = None,
) -> dict:
    """Backtest `bundle` on `data` (default: the bundled PJM zones) with the split it was trained with,
    and, in the same run, the seasonal naive and a freshly fitted linear baseline on the same origins
    (the protocol's daily ones, or `issue_times`)."""
    split_cfg = bundle.meta.get("split", {})
    overrides = {"data.val_days": split_cfg.get("val_days"), "data.test_days": split_cfg.get("test_days"),
                 # every model must see the same origins, so all read at least the bundle's history length
                 "model.input_length": max(bundle.input_length, 336)}
    cfg = load_config(model="linear", **overrides)
    split, _, _ = prepare_data(cfg, data)
    frame = backtest(bundle, split.test, horizon=horizon, issue_times=issue_times)
    names = [bundle.name]
    if baselines:
        naive_cfg = load_config(model="seasonal_naive", **overrides)
        naive_cfg.model.quantiles = list(bundle.quantiles)
        naive = ForecasterBundle(build_model(naive_cfg).eval(), bundle.features, BASELINES[0], "baseline")
        log("fitting the linear baseline on the same training data ...")
        cfg.model.quantiles = list(bundle.quantiles)
        with tempfile.TemporaryDirectory() as tmp:
            linear = train(cfg, data, Path(tmp) / "linear", progress=False, evaluate=False, log=lambda _: None)
        for other, name in ((naive, BASELINES[0]), (linear, BASELINES[1])):
            extra = backtest(other, split.test, horizon=horizon, column=name, issue_times=issue_times)
            frame = frame.merge(extra.drop(columns="y"), on=["zone", "cutoff", "ds", "step"], how="left")
            names.append(name)
    return {"horizon": horizon, **score(frame, names, split.train)}
