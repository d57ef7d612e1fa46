"""Distributed fit on Ray Train: the same LightningModule, DataModule and Trainer as `training/pipeline.py`, run by N
workers with Lightning's DDP through Ray's strategy and cluster environment, checkpointed through Ray
Train, ending in the same model bundle as a local run.

    energyopt train --model lstm --out DIR --num-workers 4 [--use-gpu]

What stays equal to a local run: the optimizer steps. Each worker draws `samples_per_epoch / N` random
windows per epoch (its own seed) in batches of `batch_size / N`, so the global batch, the number of
steps and the one-cycle schedule are those of `energyopt train`. Validation loss is averaged over the
workers (`sync_dist`). The best epoch's weights (lowest validation loss) come back from Ray Train's
checkpoints; the driver then calibrates, evaluates and saves the bundle through the pipeline's `finish_fit`,
as `train()` does.

Fault tolerance: with `--max-failures K`, a failed worker group restarts from the latest Ray Train
checkpoint (the Lightning checkpoint holds the optimizer and early-stopping state). CPU workers talk
through gloo, GPU workers through NCCL. The data is read and cleaned once by the driver and shipped to
the workers through the object store, so workers need no shared filesystem; checkpoints go to
`--storage` (a local folder by default; use a shared path or s3:// URI on a multi-node cluster).

Tracking (training/tracking.py): the driver opens the MLflow run, the rank-0 worker logs each epoch to
it, and the driver logs the bundle and ends it. On a multi-node cluster the tracking URI must be a server
(or database) the workers reach; a local SQLite store works only with every worker on the driver's node.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from models.bundle import Bundle
from models.runtime import ensure_ray
from training import tracking
from training.config import TrainConfig
from training.module import ForecastModule
from training.pipeline import (
    EpochLog,
    build_model,
    build_trainer,
    data_module,
    data_source,
    finish_fit,
    new_version,
    prepare_data,
)

CHECKPOINT_FILE, EPOCHS_FILE = "checkpoint.ckpt", "epochs.json"


class ReportCheckpoint(pl.Callback):
    """Each epoch: save a Lightning checkpoint (rank 0 writes it) and report it with the validation loss
    and the epoch log to Ray Train."""

    def __init__(self, epochs: EpochLog) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        import ray.train

        metrics = {**{k: float(v) for k, v in trainer.callback_metrics.items()}, "epoch": trainer.current_epoch}
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CHECKPOINT_FILE)  # collective; rank 0 writes
            checkpoint = None
            if trainer.global_rank == 0:
                (Path(tmp) / EPOCHS_FILE).write_text(json.dumps(self.epochs.epochs))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    cfg = TrainConfig.model_validate(config["config"])
    tr = cfg.training
    split = ray.get(config["split"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    pl.seed_everything(tr.seed, verbose=False)  # identical initial weights (DDP also broadcasts rank 0's)
    model = build_model(cfg)
    module = ForecastModule.for_model(model, tr)
    dm = data_module(split, model.config, cfg.features.spec(), tr, workers=world)
    torch.manual_seed(tr.seed + 1000 * (rank + 1))  # each worker draws its own training windows
    epochs = EpochLog()
    run = config.get("tracking")  # (uri, run_id) of the driver's MLflow run: rank 0 logs the epochs to it
    logger = tracking.resume(*run) if run and rank == 0 else None
    trainer = prepare_trainer(build_trainer(
        tr, epochs, ReportCheckpoint(epochs), accelerator="gpu" if config["use_gpu"] else "cpu", devices="auto",
        strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], use_distributed_sampler=False,
        logger=logger))
    resume = ray.train.get_checkpoint()  # set when a failed worker group restarts
    with resume.as_directory() if resume else nullcontext() as ckpt:
        trainer.fit(module, datamodule=dm, ckpt_path=str(Path(ckpt) / CHECKPOINT_FILE) if resume else None)


def train_distributed(
    config: TrainConfig,
    data: str | Path | None,
    out: str | Path,
    *,
    num_workers: int,
    use_gpu: bool = False,
    storage: str | Path | None = None,
    max_failures: int = 0,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
    tracking_uri: str | None = None,
) -> Bundle:
    """Train with `num_workers` Ray Train workers and write the bundle at `out` (as `training.pipeline.train`,
    `tracking_uri` too)."""
    if num_workers < 1:
        raise ValueError("--num-workers must be at least 1")
    if config.model.type not in ("lstm", "transformer", "linear"):
        raise ValueError(f"distributed training serves the trained forecasters (lstm, transformer, linear), "
                         f"not {config.model.type!r}; train it with `energyopt train` without --num-workers")
    run = {"framework": "ray.train.torch.TorchTrainer", "num_workers": num_workers, "use_gpu": use_gpu,
           "backend": "nccl" if use_gpu else "gloo"}
    tracker = tracking.logger_for(config.name, f"{config.name}-{new_version()}", tracking_uri,
                                  enabled=tracking_uri is not None, params=tracking.config_params(config),
                                  tags={"energyopt.command": "train", "data": data_source(data),
                                        **{f"distributed.{k}": v for k, v in run.items()}})
    if tracker is not None:
        log(f"MLflow: run {tracker.run_id} in experiment {config.name!r} at {tracking_uri}")
    return tracking.tracked(tracker, out, lambda: _fit(
        config, data, out, num_workers=num_workers, use_gpu=use_gpu, storage=storage, max_failures=max_failures,
        evaluate=evaluate, log=log, run=run, tracking_run=(tracking_uri, tracker.run_id) if tracker is not None
        else None))


def _fit(config: TrainConfig, data: str | Path | None, out: str | Path, *, num_workers: int, use_gpu: bool,
         storage: str | Path | None, max_failures: int, evaluate: bool, log: Callable[[str], None],
         run: dict[str, Any], tracking_run: tuple[str, str] | None) -> Bundle:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.perf_counter()
    prepared = prepare_data(config, data)
    for line in prepared[1].summary_lines():
        log(f"  {line}")
    ensure_ray()
    backend = run["backend"]
    cpus = ray.cluster_resources().get("CPU", 1)
    threads = config.training.num_threads or max(1, int(cpus // num_workers))
    storage_path = str(storage) if storage else str(Path(tempfile.gettempdir()) / "energyopt-ray-train")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.model_dump(), "split": ray.put(prepared[0]), "use_gpu": use_gpu,
                           "threads": 0 if use_gpu else threads, "tracking": tracking_run},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": min(1.0, cpus / num_workers)}),
        run_config=RunConfig(
            name=f"{config.name}-{new_version()}", storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=max_failures)),
    )
    log(f"Ray Train: {num_workers} worker(s) ({'GPU' if use_gpu else 'CPU'}, {backend}), checkpoints in {storage_path}")
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"distributed training failed: {result.error}")
    best_ckpt, _ = min(result.best_checkpoints, key=lambda cm: cm[1].get("val_loss", float("inf")))
    module = ForecastModule(build_model(config).config.to_dict())
    with best_ckpt.as_directory() as ckpt:
        state = torch.load(Path(ckpt) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    with result.checkpoint.as_directory() as ckpt:  # the latest checkpoint holds the whole epoch log
        epochs = EpochLog()
        epochs.epochs = json.loads((Path(ckpt) / EPOCHS_FILE).read_text())
    for e in epochs.epochs:
        log(f"epoch {e['epoch']}: train_loss {e['train_loss']:.4f}, val_loss {e['val_loss']:.4f}")
    dm = data_module(prepared[0], module.model.config, config.features.spec(), config.training)
    return finish_fit(config, module.model, dm, prepared, data, epochs, started, out, evaluate=evaluate, log=log,
                      meta={"training": {"distributed": run}})
