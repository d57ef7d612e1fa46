"""MLflow tracking (training/tracking.py): real local SQLite stores in tmp_path, read back with MlflowClient."""

from __future__ import annotations

import socket
import time
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from energyopt.cli import app
from models.bundle import load_bundle
from training import tracking
from training.tracking import TrackingWarning, local_store, resolve_uri

TEST_METRICS = {"test_mae", "test_rmse", "test_mape", "test_mase", "test_pinball", "test_coverage_80"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local store for the module's runs (a new one costs its migrations, seconds); each test logs to its
    own experiment."""
    return tmp_path_factory.mktemp("mlflow") / "store"


@pytest.fixture
def config_file(tiny_config, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config.model_dump()))
    return path


def only_run(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    (run,) = client.search_runs([found.experiment_id])
    return client, run


def test_a_training_run_is_in_the_local_store_with_its_metrics_and_bundle(config_file, synthetic_csv, tmp_path,
                                                                           store, monkeypatch):
    """`energyopt train --tracking-uri FOLDER`: the local store in that folder, over ENERGYOPT_TRACKING=off
    (the tests' default); nothing in the working directory's runs/."""
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--config", config_file, "--data", synthetic_csv, "--out", tmp_path / "model", "--quiet",
                 "--tracking-uri", store)
    assert result.exit_code == 0, result.output
    assert (store / "mlflow.db").is_file() and not (tmp_path / "runs").exists()
    bundle = load_bundle(tmp_path / "model")

    client, run = only_run(local_store(store), "tiny-lstm")
    assert run.info.status == "FINISHED" and run.info.run_id in result.output
    params = run.data.params
    assert params["model.type"] == "lstm" and params["model.params.hidden_size"] == "16"
    assert params["training.max_epochs"] == "2" and float(params["training.lr"]) == bundle.meta["training"][
        "config"]["training"]["lr"]
    for name in ("train_loss", "val_loss", "epoch_seconds"):  # one point per epoch, step = epoch
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    epochs = bundle.meta["training"]["epochs"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")] == pytest.approx(
        [e["val_loss"] for e in epochs])
    metrics = run.data.metrics
    assert set(metrics) >= TEST_METRICS | {"best_val_loss", "training_seconds"}
    summary = bundle.metrics["summary"]["tiny-lstm"]
    assert metrics["test_mae"] == pytest.approx(summary["mae"])
    assert metrics["test_coverage_80"] == pytest.approx(summary["coverage_80"])
    assert run.data.tags["bundle.version"] == bundle.version and run.data.tags["energyopt.command"] == "train"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert artifacts == {"bundle/config.json", "bundle/model.safetensors", "bundle/metrics.json",
                         "bundle/checksums.json"}
    # beside the database, at an absolute location: `mlflow ui` finds them from any working directory
    assert run.info.artifact_uri.startswith((store / "mlartifacts").resolve().as_uri())
    on_disk = store / "mlartifacts" / "tiny-lstm" / run.info.run_id / "artifacts" / "bundle" / "model.safetensors"
    assert on_disk.read_bytes() == (tmp_path / "model" / "model.safetensors").read_bytes()


def test_an_unreachable_server_is_a_warning_and_the_training_completes(tiny_config, synthetic_csv, tmp_path):
    from training.pipeline import train

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_config.model_copy(deep=True)
    cfg.training.max_epochs = 1
    started = time.perf_counter()
    with pytest.warns(TrackingWarning, match=f"127.0.0.1:{port}.*without tracking"):
        bundle = train(cfg, synthetic_csv, tmp_path / "model", progress=False, log=lambda _: None,
                       tracking_uri=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - started < 60  # the probe gives up at once, no minutes of retries
    assert load_bundle(tmp_path / "model").version == bundle.version and bundle.metrics["summary"]


def test_a_failure_while_logging_is_one_warning_and_the_training_completes(tiny_config, synthetic_csv, tmp_path,
                                                                           store, monkeypatch):
    """The store answers at the start, then the upload of the bundle fails: a warning, a saved bundle, and
    the run ended with the error noted."""
    from mlflow import MlflowClient

    from training.pipeline import train

    def refuse(*args, **kwargs):
        raise OSError("artifact store is full")

    monkeypatch.setattr(MlflowClient, "log_artifacts", refuse)
    cfg = tiny_config.model_copy(deep=True)
    cfg.name, cfg.training.max_epochs = "tiny-upload-fails", 1
    uri = local_store(store)
    with pytest.warns(TrackingWarning, match="artifact store is full") as caught:
        train(cfg, synthetic_csv, tmp_path / "model", progress=False, log=lambda _: None, tracking_uri=uri)
    assert len([w for w in caught if w.category is TrackingWarning]) == 1
    assert load_bundle(tmp_path / "model").metrics["summary"]
    _, run = only_run(uri, "tiny-upload-fails")
    assert run.info.status == "FINISHED" and "artifact store is full" in run.data.tags["energyopt.tracking_error"]
    assert TEST_METRICS <= set(run.data.metrics)  # logged before the upload failed


def test_tracking_off_logs_nothing(config_file, synthetic_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_store(elsewhere))
    monkeypatch.delenv("ENERGYOPT_TRACKING")
    cfg = yaml.safe_load(config_file.read_text())
    cfg["training"]["max_epochs"] = 1
    config_file.write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        result = cli("train", "--config", config_file, "--data", synthetic_csv, "--out", tmp_path / "model",
                     "--quiet", "--no-tracking")
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "model").metrics and "MLflow" not in result.output
    assert not elsewhere.exists() and not (tmp_path / "runs").exists()


def test_where_runs_go(tmp_path, monkeypatch):
    """resolve_uri: --no-tracking, --tracking-uri, ENERGYOPT_TRACKING=off, MLFLOW_TRACKING_URI, runs/ (and
    deciding creates nothing)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENERGYOPT_TRACKING")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert resolve_uri("http://mlflow:5000", enabled=False) is None
    assert resolve_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert resolve_uri("other") == f"sqlite:///{tmp_path.resolve() / 'other' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://shared:5000")
    assert resolve_uri() == "http://shared:5000"
    monkeypatch.setenv("ENERGYOPT_TRACKING", "off")
    assert resolve_uri() is None and resolve_uri(enabled=True) == "http://shared:5000"
    assert resolve_uri("sqlite:///x.db") == f"sqlite:///{tmp_path.resolve() / 'x.db'}"  # over the switch
    assert tracking.logger_for("x", enabled=False) is None and tracking.logger_for("x") is None
    assert not list(tmp_path.iterdir())


def test_each_sweep_trial_is_a_run_in_the_studys_experiment(synthetic_csv, tmp_path, store):
    """A trial (run as a Ray task runs it) logs to the study's experiment; exporting the best trial adds its
    test-period scores to its run."""
    import optuna

    from training.pipeline import prepare_data
    from training.sweep import SweepConfig, _best, _export_best, _run_trial, open_storage, storage_url

    sweep = SweepConfig.model_validate({
        "name": "tiny-sweep", "base": "lstm",
        "overrides": {"model.horizon": 24, "model.params": {"hidden_size": 8, "num_layers": 1, "patch_len": 24},
                      "data.val_days": 30, "data.test_days": 30, "training.max_epochs": 2,
                      "training.samples_per_epoch": 256, "training.val_samples": 128, "training.batch_size": 64},
        "space": {"training.lr": {"low": 0.001, "high": 0.01, "log": True},
                  "model.params.hidden_size": {"choices": [8, 16]}},
    })
    out = tmp_path / "sweep"
    out.mkdir()
    url, uri = storage_url(None, out), local_store(store)
    storage = open_storage(url, heartbeat_s=10, max_retries=1)
    study = optuna.create_study(study_name="tiny-sweep", storage=storage, direction="minimize")
    assert tracking.prepare(uri, "tiny-sweep")  # what run_sweep does before it starts the trials
    prepared = prepare_data(sweep.base_config(), synthetic_csv)
    outcome = _run_trial(sweep, url, "tiny-sweep", 0, prepared, 10, str(synthetic_csv), str(out), uri)
    assert outcome["state"] == "COMPLETE"

    client, run = only_run(uri, "tiny-sweep")
    (trial,) = study.get_trials()
    assert run.info.run_name == "trial-0" and run.info.status == "FINISHED"
    assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    assert run.data.params["model.params.hidden_size"] == str(trial.params["model.params.hidden_size"])
    assert float(run.data.params["training.lr"]) == trial.params["training.lr"]
    assert run.data.tags["optuna.state"] == "COMPLETE" and run.data.tags["optuna.study"] == "tiny-sweep"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
    assert run.data.metrics["best_val_loss"] == pytest.approx(trial.value)
    assert not TEST_METRICS & set(run.data.metrics)  # trials are compared on validation only

    _export_best(_best(study), out, prepared[0], lambda _: None, uri)
    _, run = only_run(uri, "tiny-sweep")
    assert run.data.tags["sweep.best"] == "true" and TEST_METRICS <= set(run.data.metrics)
    assert "bundle/metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
