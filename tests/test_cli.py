"""The `energyopt` command: real files, real bundles; failures are one clear line, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from energyopt.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_data_inspect_reports_repairs(tmp_path):
    csv = tmp_path / "load.csv"
    csv.write_text("zone,timestamp,load_mw\n" + "".join(
        f"A,2021-01-01 {h:02d}:00,{1000 + h}\n" for h in (0, 1, 1, 2, 5, 3, 4)))
    result = run("data", "inspect", csv)
    assert result.exit_code == 0, result.output
    assert "1 duplicate hour merged" in result.output and "out of time order" in result.output
    report = json.loads(run("data", "inspect", csv, "--json").output)
    assert report["A"]["duplicate_hours_merged"] == 1 and report["A"]["non_monotonic"] is True


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("foo,bar\n1,2\n", "timestamp"),
    ("zone,timestamp,load_mw\nA,2021-01-01 00:00,\nA,2021-01-01 01:00,\n", "['A']: no valid load"),
    ("zone,timestamp,load_mw\nA,not-a-date,1\n", "not-a-date"),
])
def test_bad_data_is_one_clear_error(tmp_path, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    result = run("data", "inspect", csv)
    assert result.exit_code == 2
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_missing_files_and_bundles_are_clear_errors(tmp_path):
    result = run("data", "inspect", tmp_path / "nope.csv")
    assert result.exit_code == 2 and "nope.csv" in result.output
    result = run("forecast", "--model", tmp_path, "--horizon", "24")
    assert result.exit_code == 2 and "config.json" in result.output


def test_train_rejects_too_short_history(tmp_path):
    csv = tmp_path / "short.csv"
    csv.write_text("zone,timestamp,load_mw\n" + "".join(f"A,2021-01-01 {h:02d}:00,{1000 + h}\n" for h in range(24)))
    result = run("train", "--model", "linear", "--data", csv, "--out", tmp_path / "m", "--quiet")
    assert result.exit_code == 2 and "zone 'A' spans 24 hours" in result.output
    assert not (tmp_path / "m").exists()


def test_forecast_prints_every_zone_and_the_total(tiny_bundle_dir, synthetic_csv, tmp_path):
    result = run("forecast", "--model", tiny_bundle_dir, "--data", synthetic_csv, "--horizon", "24",
                 "--plot", tmp_path / "f.png")
    assert result.exit_code == 0, result.output
    for name in ("Z000", "Z001", "Z002", "TOTAL"):
        assert name in result.output
    assert (tmp_path / "f.png").stat().st_size > 10_000
    records = json.loads(run("forecast", "--model", tiny_bundle_dir, "--data", synthetic_csv, "--horizon", "24",
                             "--zone", "Z001", "--json").output)
    assert {r["zone"] for r in records} == {"Z001", "TOTAL"} and len(records) == 48
    result = run("forecast", "--model", tiny_bundle_dir, "--data", synthetic_csv, "--zone", "Z999")
    assert result.exit_code == 2 and "unknown zone" in result.output
    result = run("forecast", "--model", tiny_bundle_dir, "--data", synthetic_csv, "--horizon", "500")
    assert result.exit_code == 2 and "horizon must be between 1 and 48" in result.output


def test_evaluate_writes_protocol_json_with_baselines(tiny_bundle_dir, synthetic_csv, tmp_path):
    out = tmp_path / "eval.json"
    result = run("evaluate", "--model", tiny_bundle_dir, "--data", synthetic_csv, "--json", out)
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert set(results["summary"]) == {"tiny-lstm", "seasonal_naive_168", "linear"}
    assert {(r["zone"], r["model"]) for r in results["rows"]} >= {("Z000", "linear"), ("Z002", "tiny-lstm")}
    for metrics in results["summary"].values():
        assert set(metrics) == {"mae", "rmse", "mape", "mase", "pinball", "coverage_80"}


def test_demo_forecasts_the_bundled_region(tiny_bundle_dir, tmp_path):
    """The demo's forecast and plot on the bundled PJM data (training is skipped: a model exists)."""
    shutil.copytree(tiny_bundle_dir, tmp_path / "model")
    result = run("demo", "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("AEP", "COMED", "DAYTON", "DOM", "EKPC", "TOTAL"):
        assert name in result.output
    assert "2018-08-03 01:00" in result.output  # the hour after the last bundled hour
    assert (tmp_path / "forecast.png").exists()


def test_forecast_needs_a_model_or_a_server(tmp_path):
    result = run("forecast", "--horizon", "24")
    assert result.exit_code == 2 and "--model DIR" in result.output and "--server HOST:PORT" in result.output
    result = run("forecast", "--server", "127.0.0.1:9", "--region", "PJM", "--horizon", "24")
    assert result.exit_code == 2 and "UNAVAILABLE" in result.output and "energyopt serve" in result.output
