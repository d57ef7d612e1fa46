"""Hyper-parameter sweeps: an Optuna study whose trials run K at a time as Ray tasks.

    energyopt sweep --config configs/sweep/lstm.yaml --trials 40 --parallel 4 [--storage URL] [--study NAME]

Why Optuna driving Ray tasks rather than Ray Tune with OptunaSearch: the Optuna storage is then the one
source of truth. Every trial, its per-epoch validation losses and its state live in the study's storage
(SQLite by default, any RDB URL such as PostgreSQL on a shared cluster, or a journal file), so

- resuming is re-running the same command: finished trials are kept; a trial whose process died stops
  sending heartbeats, is marked FAIL and re-queued with the same parameters (Optuna's
  `RetryFailedTrialCallback`) — Tune's OptunaSearch keeps its study in memory and resumes from Tune's
  own experiment state instead;
- pruning is Optuna's pruner (median of earlier trials at the same epoch), fed every epoch's validation
  loss from inside the trial — with Tune the Optuna pruners do not apply (Tune has its own schedulers);
- `optuna-dashboard <storage URL>` shows the study live, and several `energyopt sweep` drivers (or
  machines) can work on one study at once.

Ray contributes what Optuna lacks: placing trials on a cluster with per-trial CPU/GPU requests and
shipping the prepared data to them once (object store). Each Ray task runs
`study.optimize(objective, n_trials=1)` against the shared storage, so sampling (TPE with the
constant liar for parallel trials), heartbeats and stale-trial recovery are Optuna's own code. With
SQLite, all trials must run on the machine that holds the file: use PostgreSQL (or a journal file on a
shared filesystem) on a multi-node cluster. Journal files have no heartbeats: a new run then assumes
no other driver is working on the study and retries every trial it finds still running.

Each trial writes its bundle to `<out>/trials/<number>` before it is marked complete (so a completed
trial always has its model, even when the driver is killed right after), and the best trial's bundle
is copied to `<out>/best` at the end. On a multi-node cluster `--out` must be a shared filesystem (the
RayJob example in cluster/ uses the shared volume).

With tracking on (training/tracking.py), every trial is an MLflow run `trial-<number>` in the experiment
named after the study: its params (the training config's dotted keys, the trial's sampled ones among
them), per-epoch losses and bundle; a pruned trial ends with the tag `optuna.state` PRUNED. The best
trial's run gets its test-period scores and the tag `sweep.best` when it is exported. Trials on several
nodes need a tracking server (or a database) every node reaches, as for the Optuna storage.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from pydantic import Field, model_validator

from models.bundle import load_bundle, write_metrics
from models.runtime import ensure_ray, torch_threads
from training import tracking
from training.config import ConfigError, TrainConfig, _Strict, load_config, model_config_path, read_yaml, validated
from training.ensemble import ENSEMBLE
from training.evaluate import score_test_period
from training.module import ForecastModule
from training.pipeline import EpochLog, Prepared, build_model, data_module, finish_fit, fit_best, prepare_data

STUDY_FILE = "study.db"
# heartbeats and stale-trial recovery are marked experimental in Optuna; they are what resume relies on
warnings.filterwarnings("ignore", category=ExperimentalWarning)


class Dimension(_Strict):
    """One searched setting: a float or int range (`low`, `high`, optional `log`/`step`) or `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty `choices` or `low` and `high`")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs `low` < `high`")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs `low` > 0")
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):  # written as integers
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


class SweepConfig(_Strict):
    """configs/sweep/<model>.yaml: the base training config, fixed overrides and the search space."""

    name: str = "sweep"
    base: str = "lstm"  # a configs/models/<name>.yaml, or a path to a training config
    overrides: dict[str, Any] = Field(default_factory=dict)  # dotted keys applied to every trial
    space: dict[str, Dimension]  # dotted keys, e.g. training.lr or model.params.hidden_size
    sampler_seed: int = 42
    sampler_startup_trials: int = Field(5, ge=1)  # random trials before TPE takes over
    pruner_startup_trials: int = Field(2, ge=0)  # trials that are never pruned
    pruner_warmup_epochs: int = Field(1, ge=0)  # epochs of every trial that are never pruned
    max_retries: int = Field(2, ge=0)  # how often a trial whose process died is re-run
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _fixed_split(self) -> SweepConfig:
        fixed = [k for k in self.space if k.startswith("data.") or k == "model.input_length" or k == "model.type"]
        if fixed:
            raise ValueError(f"{fixed} cannot be searched: the data split is prepared once per sweep")
        return self

    def base_config(self, data_overrides: dict[str, Any] | None = None) -> TrainConfig:
        return load_config(model_config_path(self.base), **{**self.overrides, **(data_overrides or {})})


def load_sweep_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    cfg = validated(SweepConfig, read_yaml(path, "sweep config"), f"sweep config {path}")
    cfg.base_config()  # a broken base config or override fails now, not in every trial
    return cfg


# --------------------------------------------------------------------------------------------- storage

def storage_url(storage: str | None, out: Path) -> str:
    """Default: SQLite file in the output folder. A path ending in .log/.jsonl is an Optuna journal file."""
    return f"sqlite:///{(out / STUDY_FILE).resolve()}" if storage is None else storage


def open_storage(url: str, *, heartbeat_s: int, max_retries: int) -> Any:
    if "://" not in url:  # a journal file
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    try:
        # heartbeats: a trial whose process stopped beating for 3 intervals is failed and re-queued;
        # SQLite waits for the lock rather than failing when two trials write at the same moment
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
            heartbeat_stale_trial_callback=_retry_callback(max_retries),
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
    except (optuna.exceptions.StorageInternalError, ValueError, ImportError) as err:
        raise ConfigError(f"cannot open the study storage {url}: {err}") from None


def _retry_callback(max_retries: int) -> Any:
    """Optuna's re-queue of a failed trial with the same parameters (`failed_trial` system attribute)."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)


def _recover(study: Any, url: str, heartbeat_s: int, max_retries: int) -> int:
    """Mark trials of dead processes failed (re-queueing those that had started); returns how many."""
    if "://" not in url:  # journal storages have no heartbeats: fail and re-queue every trial left RUNNING
        orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in orphans:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            _retry_callback(max_retries)(study, study._storage.get_trial(t._trial_id))
        return len(orphans)
    before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    optuna.storages.fail_stale_trials(study)  # heartbeats stopped: FAIL, and re-queued by the callback
    # A process killed between creating a trial and its first heartbeat leaves a RUNNING trial that no
    # heartbeat check ever sees; it had not sampled parameters yet (the objective's first step), so
    # past the grace period it is dead and there is nothing to re-run.
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=3 * heartbeat_s)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not t.params and t.datetime_start is not None and t.datetime_start < cutoff:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before


# ----------------------------------------------------------------------------------------------- trial

class ReportToOptuna(pl.Callback):
    """Feeds each epoch's validation loss to the pruner; a pruned trial stops training at once."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.trial.report(float(trainer.callback_metrics["val_loss"]), step=trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch}")


def _load_study(sweep: SweepConfig, storage: Any, study_name: str, seed: int) -> optuna.Study:
    """The study as a trial samples it: TPE with the constant liar (parallel trials), median pruning."""
    return optuna.load_study(
        study_name=study_name, storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.sampler_startup_trials,
                                           constant_liar=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                           n_warmup_steps=sweep.pruner_warmup_epochs))


def _fit_trial(sweep: SweepConfig, trial: optuna.Trial, prepared: Prepared, data: str | None, out: str,
               tracking_uri: str | None = None) -> float:
    """The objective: train the trial's settings through the pipeline, save the bundle (its test period is
    scored only for the best trial, at the end), and return the best validation loss. With `tracking_uri`,
    the trial is an MLflow run in the study's experiment."""
    params = {key: dim.suggest(trial, key) for key, dim in sweep.space.items()}
    cfg = sweep.base_config({**params, "name": sweep.name})  # the trial's settings, under the sweep's name
    tr = cfg.training
    study = trial.study.study_name
    tracker = tracking.logger_for(study, f"trial-{trial.number}", tracking_uri, enabled=tracking_uri is not None,
                                  params=tracking.config_params(cfg),
                                  tags={"energyopt.command": "sweep", "optuna.study": study,
                                        "optuna.trial": trial.number, "optuna.searched": ",".join(params)})
    if tracker is not None:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
    bundle_dir = Path(out) / "trials" / str(trial.number)
    try:
        with torch_threads(max(1, int(sweep.cpus_per_trial))):
            pl.seed_everything(tr.seed, verbose=False)
            model = build_model(cfg)
            dm = data_module(prepared[0], model.config, cfg.features.spec(), tr)
            module = ForecastModule.for_model(model, tr)
            epochs = EpochLog()
            started = time.perf_counter()
            best = fit_best(module, dm, tr, epochs, ReportToOptuna(trial),
                            accelerator="gpu" if sweep.gpus_per_trial else "cpu", logger=tracker)
            finish_fit(cfg, module.model, dm, prepared, data, epochs, started, bundle_dir, evaluate=False,
                       log=lambda _: None, meta={"sweep": {"study": study, "trial": trial.number, "params": params}})
    except optuna.TrialPruned:
        tracking.end(tracker, "FINISHED", tags={"optuna.state": "PRUNED"})
        raise
    except BaseException:
        tracking.end(tracker, "FAILED", tags={"optuna.state": "FAIL"})
        raise
    tracking.log_bundle(tracker, bundle_dir, tags={"optuna.state": "COMPLETE"})
    return best.loss


def _run_trial(sweep: SweepConfig, url: str, study_name: str, seed: int, split_ref: Any, heartbeat_s: int,
               data: str | None, out: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Ray task: one `study.optimize(n_trials=1)`; returns the trial's number, state and value. A
    completed trial's bundle is written to `<out>/trials/<number>` before Optuna marks it COMPLETE, so
    a completed trial always has its model, whenever the driver stops."""
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepared = ray.get(split_ref) if isinstance(split_ref, ray.ObjectRef) else split_ref
    storage = open_storage(url, heartbeat_s=heartbeat_s, max_retries=sweep.max_retries)
    study = _load_study(sweep, storage, study_name, seed)
    result: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        result["trial_id"] = trial._trial_id
        try:
            return _fit_trial(sweep, trial, prepared, data, out, tracking_uri)
        except (optuna.exceptions.UpdateFinishedTrialError, optuna.TrialPruned):
            raise  # a refused report (the trial was failed elsewhere), or pruning: not the objective's fault
        except BaseException:
            result["objective_failed"] = True
            raise

    try:
        study.optimize(objective, n_trials=1, catch=(ValueError, RuntimeError))
    except Exception:
        # A driver or another worker saw this trial's heartbeat go stale (a machine starved of CPU) and
        # failed it, re-queueing its parameters, while it ran. Optuna then refuses this worker's own report,
        # with an error that depends on when it lands (UpdateFinishedTrialError, "Cannot tell a FAIL
        # trial", an internal assertion). The retry stands for the trial, under its own number, and the
        # sweep goes on; the bundle this failed trial wrote would pass for a result, so it goes.
        if "trial_id" not in result or result.get("objective_failed"):
            raise
        stale = storage.get_trial(result["trial_id"])
        if stale.state != TrialState.FAIL:
            raise
        shutil.rmtree(Path(out) / "trials" / str(stale.number), ignore_errors=True)
    if "trial_id" not in result:
        return {"trial": None, "state": None, "value": None}
    trial = storage.get_trial(result.pop("trial_id"))
    return {"trial": trial.number, "state": trial.state.name, "value": trial.value}


# ---------------------------------------------------------------------------------------------- driver

@dataclass
class SweepResult:
    study: str
    storage: str
    finished: int  # completed + pruned trials
    failed: int
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_bundle: Path | None


def run_sweep(config: str | Path, out: str | Path, *, trials: int, parallel: int = 2, storage: str | None = None,
              study_name: str | None = None, data: str | Path | None = None, heartbeat_s: int = 10,
              log: Callable[[str], None] = print, tracking_uri: str | None = None) -> SweepResult:
    """Run (or resume) the study until it has `trials` finished (completed or pruned) trials, at most
    `parallel` at a time, then export the best trial's bundle to `<out>/best`. With `tracking_uri`
    (`training.tracking.resolve_uri`; None: no tracking) every trial is an MLflow run in the experiment
    named after the study."""
    if trials < 1 or parallel < 1:
        raise ConfigError("--trials and --parallel must be at least 1")
    sweep = load_sweep_config(config)
    if sweep.base_config().model.type == ENSEMBLE:  # its members are trained by their own configs
        raise ConfigError(f"sweep {sweep.name}: an ensemble is not swept; sweep each member's config, then train "
                          "the ensemble with the settings found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out)
    name = study_name or sweep.name
    study = _open_study(sweep, url, name, heartbeat_s, log)
    done, running, failed = _counts(study)
    log(f"study {name!r} in {url}: {done} finished, {running} running elsewhere or interrupted, {failed} failed; "
        f"target {trials} trials, {parallel} at a time")
    if tracking_uri is not None:  # made here once, before parallel trials write to it
        tracking_uri = tracking_uri if tracking.prepare(tracking_uri, name) else None
        if tracking_uri is not None:
            log(f"MLflow: trials are runs in experiment {name!r} at {tracking_uri}")
    ensure_ray()
    base = sweep.base_config()
    prepared = prepare_data(base, data)
    # every trial trains on this split: the days an "auto" validation period came to on this data
    sweep = sweep.model_copy(update={"overrides": {**sweep.overrides, "data.val_days": base.data.val_days}})
    done, failed = _run_trials(sweep, study, url, prepared, trials, parallel, heartbeat_s, data, out, log,
                               tracking_uri)
    best = _best(study)
    best_dir = _export_best(best, out, prepared[0], log, tracking_uri) if best is not None else None
    return SweepResult(study=name, storage=url, finished=done, failed=failed,
                       best_trial=best.number if best else None, best_value=best.value if best else None,
                       best_params=dict(best.params) if best else {}, best_bundle=best_dir)


def _open_study(sweep: SweepConfig, url: str, name: str, heartbeat_s: int, log: Callable[[str], None]) -> Any:
    """Create or load the study, failing (and re-queueing) the trials an interrupted run left behind."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url, heartbeat_s=heartbeat_s, max_retries=sweep.max_retries)
    study = optuna.create_study(study_name=name, storage=store, direction="minimize", load_if_exists=True)
    recovered = _recover(study, url, heartbeat_s, sweep.max_retries)
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Trials left running: by a live driver elsewhere (they keep beating) or by a dead one (their
        # heartbeats stop). Wait out the grace period once, so the dead ones are failed and re-queued
        # before new trials start, and the study ends with the target count.
        log(f"waiting {3 * heartbeat_s} s for trials marked running to go stale or prove alive ...")
        time.sleep(3 * heartbeat_s + 1)
        recovered += _recover(study, url, heartbeat_s, sweep.max_retries)
    if recovered:
        log(f"{recovered} trial(s) of an interrupted run marked failed; those that had started are re-queued")
    return study


def _counts(study: Any) -> tuple[int, int, int]:
    """Finished (completed or pruned), running and failed trials."""
    ts = study.get_trials(deepcopy=False)
    return (sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts),
            sum(t.state == TrialState.RUNNING for t in ts), sum(t.state == TrialState.FAIL for t in ts))


def _run_trials(sweep: SweepConfig, study: Any, url: str, prepared: Prepared, trials: int, parallel: int,
                heartbeat_s: int, data: str | Path | None, out: Path, log: Callable[[str], None],
                tracking_uri: str | None = None) -> tuple[int, int]:
    """Keep up to `parallel` trial tasks on Ray until the study has `trials` finished trials; returns the
    finished and failed counts."""
    import ray

    split_ref = ray.put(prepared)
    task = ray.remote(_run_trial).options(num_cpus=sweep.cpus_per_trial, num_gpus=sweep.gpus_per_trial,
                                          max_retries=0)
    in_flight: list[Any] = []
    launched = 0
    while True:
        done, running, failed = _counts(study)
        if done >= trials and not in_flight:
            return done, failed
        while done + len(in_flight) < trials and len(in_flight) < parallel:
            seed = sweep.sampler_seed + done + launched  # distinct per task: parallel TPE samples differ
            in_flight.append(task.remote(sweep, url, study.study_name, seed, split_ref, heartbeat_s,
                                         None if data is None else str(data), str(out.resolve()), tracking_uri))
            launched += 1
        if not in_flight:  # others are running the remaining trials: wait for them, or for them to go stale
            time.sleep(heartbeat_s)
            _recover(study, url, heartbeat_s, sweep.max_retries)
            continue
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        outcome = ray.get(ready[0])
        _recover(study, url, heartbeat_s, sweep.max_retries)
        done, running, failed = _counts(study)
        best = _best(study)
        value = "" if outcome["value"] is None else f", val_loss {outcome['value']:.4f}"
        best_text = "" if best is None else f"; best #{best.number} {best.value:.4f}"
        log(f"trial {done}/{trials}: #{outcome['trial']} {outcome['state']}{value}{best_text}")


def _export_best(best: Any, out: Path, split: Any, log: Callable[[str], None], tracking_uri: str | None = None) -> Path:
    """Copy the best trial's bundle to `<out>/best` (atomically) with its test-period scores. Only the chosen
    model is scored on the test period, once: trials are compared on validation only, so the test figures
    stay unbiased, and the exported bundle carries them like any trained bundle does. With tracking, the
    trial's run gets the scores, the exported bundle and the tag `sweep.best`."""
    source = out / "trials" / str(best.number)
    if not source.is_dir():
        raise ConfigError(f"the best trial #{best.number} has no saved model in {source}: was --out "
                          "different in the run that made it, or not shared by every node?")
    best_dir = out / "best"
    tmp = out / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    metrics = None
    try:
        metrics = score_test_period(load_bundle(tmp), split)
    except ValueError as err:  # a test period too short for one forecast origin
        log(f"best trial: no test-period evaluation ({err})")
    else:
        write_metrics(tmp, metrics)
        overall = next(iter(metrics["summary"].values()))
        log(f"best trial on the test period: MAE {overall['mae']:.4g}, MAPE {overall['mape']:.3g} %, "
            f"80 % coverage {overall['coverage_80']:.3f}")
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(tmp, best_dir)
    log(f"best trial #{best.number}: val_loss {best.value:.4f} {best.params} -> {best_dir}")
    run_id = best.user_attrs.get("mlflow_run_id")
    if tracking_uri is not None and run_id:
        tracking.log_bundle(tracking.resume(tracking_uri, run_id), best_dir, metrics, tags={"sweep.best": "true"})
    return best_dir


def _best(study: Any) -> Any:
    return min(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, default=None)

