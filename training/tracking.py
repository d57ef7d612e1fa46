"""Experiment tracking with MLflow, through Lightning's `MLFlowLogger`: every training, sweep trial and
retraining is one MLflow run holding its settings (params: the training config's dotted keys), one point
per epoch of `train_loss`, `val_loss` and `epoch_seconds` (step = epoch, the figures the bundle's training
summary keeps), the test-period scores (`test_mae`, `test_rmse`, ...) and the bundle itself as artifacts
under `bundle/`.

Where runs go, decided once, here (`resolve_uri`): `--no-tracking` switches it off; `--tracking-uri URI`
names an MLflow tracking server (`http://host:5000`), a database (`sqlite:///...`, `postgresql://...`) or a
folder (the local store in that folder); else `ENERGYOPT_TRACKING=off` switches it off, else
`MLFLOW_TRACKING_URI` names it, else the local store `runs/mlflow.db` (SQLite, artifacts in
`runs/mlartifacts/`), which `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows.

Tracking never fails a training: a store that cannot be reached is a `TrackingWarning` and the run goes on
untracked (the probe gives up at once: no HTTP retries, a short timeout); a logging call that fails later
(the server went away, an artifact upload) is one warning, and the tracker stays silent for the rest of
the run. MLflow is imported only when tracking is on.

For other entry points (a retraining job):

    logger = tracking.logger_for(experiment, run_name, uri, enabled, params=tracking.config_params(cfg))
    ... build_trainer(..., logger=logger) / fit_best(..., logger=logger) ...   # per-epoch losses
    tracking.log_bundle(logger, bundle_dir, bundle.metrics)                    # ends the run FINISHED
    tracking.end(logger, "FAILED")                                             # or this, on failure

Every function takes `logger=None` (tracking off) and then does nothing.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

SWITCH_ENV = "ENERGYOPT_TRACKING"  # "off" (or 0/false/no): no tracking unless a command asks for it
URI_ENV = "MLFLOW_TRACKING_URI"
LOCAL_DIR = Path("runs")  # the default local store, relative to the working directory (as runs/sweep etc.)
DB_FILE, ARTIFACT_DIR = "mlflow.db", "mlartifacts"
BUNDLE_ARTIFACTS = "bundle"  # artifact folder the bundle's files go to
PROBE_TIMEOUT_S = 3  # seconds the reachability probe waits for an HTTP server
EPOCH_KEYS = ("train_loss", "val_loss")  # logged once per epoch by `log_epoch`, not per Lightning step
_OFF = ("0", "off", "false", "no")
_TEST_KEYS = ("mae", "rmse", "mape", "mase", "pinball", "coverage_80")  # a forecaster's summary, in this order


class TrackingWarning(UserWarning):
    """Tracking could not be done (a store out of reach, a failed upload); the training went on without it."""


# ------------------------------------------------------------------------------------------ where to log

def resolve_uri(uri: str | None = None, enabled: bool | None = None) -> str | None:
    """The tracking URI a command logs to, or None for no tracking: `enabled=False` is off; a given `uri`
    is used (a path without a scheme: the local store in that folder); else ENERGYOPT_TRACKING=off is off,
    else MLFLOW_TRACKING_URI, else the local store in runs/."""
    if enabled is False:
        return None
    if not uri:
        if enabled is None and os.environ.get(SWITCH_ENV, "").strip().lower() in _OFF:
            return None
        uri = os.environ.get(URI_ENV) or None
    if not uri:
        return local_store(LOCAL_DIR)
    if "://" not in uri and not uri.startswith("file:"):
        return local_store(Path(uri))
    db = _sqlite_path(uri)
    if db is not None:  # absolute: Ray workers may run in another folder
        query = uri.partition("?")[2]
        return f"sqlite:///{db}" + (f"?{query}" if query else "")
    return uri


def local_store(folder: str | Path) -> str:
    """The local store in `folder`: a SQLite database (`mlflow.db`) beside the artifacts (`mlartifacts/`)."""
    return f"sqlite:///{(Path(folder) / DB_FILE).resolve()}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store's database, as an absolute file URI
    (so `mlflow ui` finds them from any working directory); elsewhere the server's default (None)."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "default"
    return (db.parent / ARTIFACT_DIR / slug).as_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite URI (resolved), else None."""
    path = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    return Path(path).resolve() if path and path != ":memory:" else None


# --------------------------------------------------------------------------------------------- the logger

class Tracker(MLFlowLogger):
    """Lightning's MLFlowLogger that never fails the fit: the first failed call is a TrackingWarning and
    the logger is silent after it (but for one quick try to end the run, noting the error). It logs the
    epoch log's per-epoch losses (`log_epoch`, step = epoch) instead of Lightning's per-step stream of the
    same names, leaves the run open when the fit ends (the bundle is logged after it: `log_bundle` ends the
    run) and leaves MLflow's process-wide tracking URI as it found it."""

    error: str | None = None  # the first failure; the tracker logs nothing after it

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def experiment(self) -> Any:
        with _keep_global_uri():  # MLFlowLogger sets mlflow's global URI (and MLFLOW_TRACKING_URI) once
            return super().experiment

    def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        if self.broken:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - tracking must never fail the training
            self.error = f"{what} failed ({_short(err)})"
            warnings.warn(f"MLflow tracking at {self._tracking_uri}: {self.error}; the training goes on without "
                          "tracking", TrackingWarning, stacklevel=3)

    def log_hyperparams(self, params: Any) -> None:
        """Lightning's module hyper-parameters: ignored, the run's params are the training config (`log_params`)."""

    @rank_zero_only
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._guarded("logging params",
                          lambda chunk=items[i: i + 100]: self.experiment.log_batch(self.run_id, params=chunk))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Lightning's per-step stream, less what `log_epoch` logs once per epoch."""
        self.log_values({k: v for k, v in metrics.items() if k not in (*EPOCH_KEYS, "epoch")}, step)

    @rank_zero_only
    def log_epoch(self, entry: Mapping[str, float]) -> None:
        """One epoch of the epoch log (training.pipeline.EpochLog): losses and seconds, step = epoch."""
        values = {k: float(entry[k]) for k in EPOCH_KEYS if k in entry}
        values["epoch_seconds"] = float(entry.get("seconds", float("nan")))
        self.log_values({k: v for k, v in values.items() if v == v}, int(entry.get("epoch", 0)))  # no NaN points

    @rank_zero_only
    def log_values(self, metrics: Mapping[str, float], step: int | None = 0) -> None:
        """Metrics under exactly these names, at `step`."""
        if metrics:
            self._guarded("logging metrics", lambda: MLFlowLogger.log_metrics(self, dict(metrics), step))

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        if items:
            self._guarded("setting tags", lambda: self.experiment.log_batch(self.run_id, tags=items))

    @rank_zero_only
    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self._guarded(f"uploading {folder}",
                      lambda: self.experiment.log_artifacts(self.run_id, str(folder), artifact_path))

    @rank_zero_only
    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended: FINISHED, FAILED or KILLED. After a failure, one quick try (no retries), noting
        the error in the tag `energyopt.tracking_error`, and no second warning."""
        if not self.broken:
            self._guarded("ending the run", lambda: self.experiment.set_terminated(self.run_id, status))
            return
        if self._initialized:
            try:
                with _fail_fast():
                    self.experiment.set_tag(self.run_id, "energyopt.tracking_error", self.error[:5000])
                    self.experiment.set_terminated(self.run_id, status)
            except Exception:  # noqa: BLE001 - the failure has been reported once already
                pass

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """The fit's end: a successful fit leaves the run open for its bundle; a failed one ends it FAILED."""
        if status != "success" and self._initialized:
            self.end("FAILED" if status == "failed" else "KILLED")  # "finished": stopped by a signal


def logger_for(experiment: str, run_name: str | None = None, uri: str | None = None, enabled: bool | None = None,
               *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> Tracker | None:
    """A new MLflow run `run_name` in `experiment` (created if new) as a Lightning logger, with `params` and
    `tags` logged; None when tracking is off (`resolve_uri(uri, enabled)`) or the store cannot be reached
    (with a TrackingWarning)."""
    target = resolve_uri(uri, enabled)
    if target is None:
        return None
    if not prepare(target, experiment):
        return None
    try:
        logger = Tracker(experiment_name=experiment, run_name=run_name, tracking_uri=target,
                         tags={str(k): str(v) for k, v in (tags or {}).items()},
                         artifact_location=artifact_location(target, experiment))
        with _fail_fast():
            _ = logger.run_id  # creates the run now: a store that fails here fails before training starts
    except Exception as err:  # noqa: BLE001 - tracking must never fail the training
        _warn_unreachable(target, err)
        return None
    if params:
        logger.log_params(params)
    if logger.broken:  # warned; the run is ended if the store still answers
        logger.end("FAILED")
        return None
    return logger


def resume(uri: str, run_id: str) -> Tracker | None:
    """The logger of an existing run (a Ray Train worker logging to the run its driver opened, a sweep's
    best trial); None, with a TrackingWarning, when the store cannot be opened."""
    try:
        return Tracker(tracking_uri=uri, run_id=run_id)
    except Exception as err:  # noqa: BLE001 - tracking must never fail the training
        _warn_unreachable(uri, err)
        return None


def prepare(uri: str, experiment: str | None = None) -> bool:
    """Whether the store at `uri` answers (created, and migrated, if it is a new local database), making
    `experiment` if it does not exist yet; a TrackingWarning says why not. Gives up at once on a server
    that does not answer: no retries, a short timeout."""
    try:
        db = _sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        with _fail_fast():
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment) if experiment else None
            if experiment is None:
                client.search_experiments(max_results=1)
            elif found is None:
                try:
                    client.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))
                except Exception:
                    if client.get_experiment_by_name(experiment) is None:  # not made by another process meanwhile
                        raise
            elif found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
    except Exception as err:  # noqa: BLE001 - any failure means: no tracking, and say why
        _warn_unreachable(uri, err)
        return False
    return True


def _warn_unreachable(uri: str, err: BaseException) -> None:
    warnings.warn(f"MLflow tracking at {uri} is unavailable ({_short(err)}); the training goes on without tracking",
                  TrackingWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ what a run records

def config_params(config: Any) -> dict[str, Any]:
    """A training config (pydantic model or mapping) as MLflow params: dotted keys (`training.lr`,
    `model.params.hidden_size`), the names a sweep's space uses."""
    raw = config.model_dump() if hasattr(config, "model_dump") else dict(config)
    return _flatten(raw)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def summary_metrics(metrics: Mapping[str, Any] | None, name: str | None = None) -> dict[str, float]:
    """The test-period figures of a bundle's metrics.json as `test_<metric>`: a forecaster's summary for its
    own model (`name`, else the first), or an anomaly detector's summary scores."""
    summary = (metrics or {}).get("summary") or {}
    if summary and all(isinstance(v, Mapping) for v in summary.values()):
        summary = summary.get(name) or next(iter(summary.values()))
    numbers = {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    ordered = [k for k in _TEST_KEYS if k in numbers] + sorted(k for k in numbers if k not in _TEST_KEYS)
    return {f"test_{k}": numbers[k] for k in ordered}


def log_bundle(logger: Tracker | None, bundle_dir: str | Path, metrics: Mapping[str, Any] | None = None, *,
               tags: Mapping[str, Any] | None = None, finish: bool = True) -> None:
    """Log a saved bundle to the run: its files under `bundle/`, its test-period scores (`metrics`, the
    bundle's metrics.json) as `test_*` metrics, its best validation loss and training time, and its name
    and version as tags; then end the run FINISHED (with `finish`)."""
    if logger is None:
        return
    bundle_dir = Path(bundle_dir)
    config = _bundle_config(bundle_dir)
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    logger.set_tags({"bundle.path": str(bundle_dir.resolve()),
                     **{f"bundle.{k}": config[k] for k in ("name", "version", "kind") if config.get(k) is not None},
                     **(tags or {})})
    summary = {"best_val_loss": training.get("best_val_loss"), "training_seconds": training.get("seconds")}
    logger.log_values({**{k: float(v) for k, v in summary.items() if isinstance(v, int | float)},
                       **summary_metrics(metrics, config.get("name"))})
    logger.log_artifacts(bundle_dir, BUNDLE_ARTIFACTS)
    if finish:
        logger.end("FINISHED")


def tracked(logger: Tracker | None, bundle_dir: str | Path, train: Callable[[], Any]) -> Any:
    """`train()` (it returns the bundle) under `logger`'s run: the bundle and its metrics logged once it is
    written, the run ended FAILED (KILLED on Ctrl-C) if it raises."""
    try:
        bundle = train()
    except BaseException as err:
        end(logger, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    log_bundle(logger, bundle_dir, bundle.metrics)
    return bundle


def end(logger: Tracker | None, status: str = "FINISHED", *, tags: Mapping[str, Any] | None = None) -> None:
    """End the run (FINISHED, FAILED or KILLED), setting `tags` first."""
    if logger is None:
        return
    logger.set_tags(tags or {})
    logger.end(status)


def _bundle_config(bundle_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((bundle_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


# ------------------------------------------------------------------------------------------------ helpers

@contextmanager
def _fail_fast() -> Iterator[None]:
    """No HTTP retries and a short timeout while a store is probed (MLflow retries for minutes by default)."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    settings = {MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: "0", MLFLOW_HTTP_REQUEST_TIMEOUT.name: str(PROBE_TIMEOUT_S)}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _keep_global_uri() -> Iterator[None]:
    """Put back mlflow's process-wide tracking URI and MLFLOW_TRACKING_URI after a call that sets them."""
    from mlflow.tracking._tracking_service import utils

    uri, env = getattr(utils, "_tracking_uri", None), os.environ.get(URI_ENV)
    try:
        yield
    finally:
        if hasattr(utils, "_tracking_uri"):
            utils._tracking_uri = uri
        if env is None:
            os.environ.pop(URI_ENV, None)
        else:
            os.environ[URI_ENV] = env


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."
