"""Parallel Optuna sweeps on Ray (training/sweep.py): a real SQLite study, a real killed driver process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from models.bundle import load_bundle
from training.config import ConfigError
from training.sweep import load_sweep_config, run_sweep

TINY_SWEEP = {
    "name": "tiny-sweep",
    "base": "lstm",
    "overrides": {
        "model.horizon": 24,
        "model.params": {"hidden_size": 8, "num_layers": 1, "patch_len": 24, "context_size": 8, "step_embed": 4,
                         "mlp_hidden": 16},
        "data.val_days": 30, "data.test_days": 30,
        "training.max_epochs": 3, "training.samples_per_epoch": 256, "training.val_samples": 128,
        "training.batch_size": 64,
    },
    "space": {"training.lr": {"low": 0.001, "high": 0.01, "log": True},
              "model.params.hidden_size": {"choices": [8, 16]}},
    "sampler_startup_trials": 2, "pruner_startup_trials": 2, "pruner_warmup_epochs": 1,
}


def trials_by_state(storage: str) -> dict[TrialState, list[optuna.trial.FrozenTrial]]:
    try:
        study = optuna.load_study(study_name="tiny-sweep", storage=storage)
    except KeyError:  # the driver has not created the study yet
        return {}
    out: dict[TrialState, list] = {}
    for t in study.get_trials():
        out.setdefault(t.state, []).append(t)
    return out


def state_counts(db: Path) -> dict[str, int]:
    """Trial states read straight from the SQLite file, read-only: polling must not race the driver's
    creation of the schema. RUNNING_SAMPLED counts the running trials that have drawn their parameters and
    started after the first trial finished: one of the first pair may be a moment from its end when its
    partner completes, and would finish before the kill reaches it."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            counts = dict(conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
            counts["RUNNING_SAMPLED"] = conn.execute(
                "SELECT COUNT(DISTINCT t.trial_id) FROM trials t JOIN trial_params p ON p.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND t.datetime_start > "
                "(SELECT MIN(datetime_complete) FROM trials WHERE state = 'COMPLETE')").fetchone()[0]
            return counts
    except sqlite3.OperationalError:  # no file or no tables yet
        return {}


def test_sweep_resumes_after_its_driver_is_killed(ray_session, synthetic_csv: Path, tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(TINY_SWEEP))
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    args = ["--config", str(config), "--trials", "4", "--parallel", "2", "--out", str(out), "--data",
            str(synthetic_csv), "--heartbeat", "1"]
    # the first run: `energyopt sweep` in its own process, joined to the session's Ray instance
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    log = (tmp_path / "first-run.log").open("w")
    driver = subprocess.Popen([sys.executable, "-c", "from energyopt.cli import app; app()", "sweep", *args],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and driver.poll() is None:
        counts = state_counts(out / "study.db")
        if counts.get("COMPLETE") and counts.get("RUNNING_SAMPLED"):  # a trial to re-run with its parameters
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)  # no clean-up: trials are left RUNNING in the study
    driver.wait()
    states = trials_by_state(storage)
    assert states.get(TrialState.COMPLETE) and states.get(TrialState.RUNNING), (
        (tmp_path / "first-run.log").read_text()[-3000:])
    completed_before = {t.number: (t.params, t.value) for t in states[TrialState.COMPLETE]}
    killed = {t.number: t.params for t in states[TrialState.RUNNING]}

    # the second run resumes the same study in this process
    lines: list[str] = []
    result = run_sweep(config, out, trials=4, parallel=2, data=synthetic_csv, heartbeat_s=1, log=lines.append)

    after = trials_by_state(storage)
    finished = after.get(TrialState.COMPLETE, []) + after.get(TrialState.PRUNED, [])
    assert len(finished) == 4 and result.finished == 4
    assert not after.get(TrialState.RUNNING) and not after.get(TrialState.WAITING)
    for number, (params, value) in completed_before.items():  # kept, not re-run
        kept = next(t for t in after[TrialState.COMPLETE] if t.number == number)
        assert (kept.params, kept.value) == (params, value)
    failed = {t.number for t in after.get(TrialState.FAIL, [])}
    assert set(killed) <= failed  # the interrupted trials are marked failed ...
    retried = {t.system_attrs.get("failed_trial"): t for t in finished if "failed_trial" in t.system_attrs}
    for number, params in killed.items():  # ... and each that had started ran again with the same parameters
        if params:
            # a trial killed between two draws is retried with the parameters it had drawn, the rest drawn anew
            assert number in retried and retried[number].params.items() >= params.items()
    assert any(killed.values())
    assert any("/4" in line for line in lines)  # progress: trial n/N with the best so far
    best = load_bundle(result.best_bundle)
    assert best.meta["sweep"]["trial"] == result.best_trial
    assert result.best_value == min(t.value for t in after[TrialState.COMPLETE])
    # the exported model is scored once on the test period, as any trained bundle is
    test = best.metrics["summary"][best.name]
    assert test["mae"] > 0 and 0 <= test["coverage_80"] <= 1
    assert not (out / "trials" / str(result.best_trial) / "metrics.json").exists()


def test_sweep_config_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_SWEEP, "space": {"training.lr": {"low": 0.1, "high": 0.01}}}))
    with pytest.raises(ConfigError, match="space.training.lr.*low"):
        load_sweep_config(bad)
    bad.write_text(yaml.safe_dump({**TINY_SWEEP, "space": {"data.val_days": {"low": 10, "high": 20}}}))
    with pytest.raises(ConfigError, match="data split is prepared once"):
        load_sweep_config(bad)
    bad.write_text(yaml.safe_dump({**TINY_SWEEP, "overrides": {"training.max_epoch": 3}}))
    with pytest.raises(ConfigError, match="max_epoch"):
        load_sweep_config(bad)
    for shipped in ("lstm", "transformer", "lstm_region"):
        assert load_sweep_config(Path(__file__).parent.parent / "configs" / "sweep" / f"{shipped}.yaml").space


def test_a_trial_failed_as_stale_leaves_no_bundle(synthetic_csv: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The race a starved machine runs into: a live trial is declared stale (and re-queued) while it
    finishes. Its own report is then refused; the bundle it wrote must not stay behind as a result."""
    import models.bundle
    from training.pipeline import prepare_data
    from training.sweep import SweepConfig, _run_trial, open_storage, storage_url

    sweep = SweepConfig.model_validate({**TINY_SWEEP, "overrides": {**TINY_SWEEP["overrides"],
                                                                   "training.max_epochs": 1}})
    out = tmp_path / "sweep"
    url = storage_url(None, out)
    out.mkdir()
    storage = open_storage(url, heartbeat_s=10, max_retries=1)
    optuna.create_study(study_name="tiny-sweep", storage=storage, direction="minimize")
    save = models.bundle.save_bundle

    def save_then_be_declared_stale(path, *args, **kwargs):
        save(path, *args, **kwargs)
        assert Path(path).is_dir()
        (running,) = optuna.load_study(study_name="tiny-sweep", storage=storage).get_trials(
            states=(TrialState.RUNNING,))
        storage.set_trial_state_values(running._trial_id, TrialState.FAIL)  # what _recover does to it

    monkeypatch.setattr(models.bundle, "save_bundle", save_then_be_declared_stale)
    outcome = _run_trial(sweep, url, "tiny-sweep", 0, prepare_data(sweep.base_config(), synthetic_csv), 10,
                         str(synthetic_csv), str(out))
    assert outcome["state"] == "FAIL" and outcome["value"] is None
    assert not (out / "trials" / str(outcome["trial"])).exists()

    def broken_disk(path, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(models.bundle, "save_bundle", broken_disk)  # the objective's own failure still surfaces
    with pytest.raises(OSError, match="No space left"):
        _run_trial(sweep, url, "tiny-sweep", 1, prepare_data(sweep.base_config(), synthetic_csv), 10,
                   str(synthetic_csv), str(out))
