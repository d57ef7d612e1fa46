"""Batch scoring on Ray Data (serving/score.py): real Ray (the session instance), real Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import serving.score
from models.bundle import load_bundle
from serving.score import SKIPPED_FILE, SUCCESS_FILE, ScoringError, score, zone_ordered_units
from training.synthetic import synthetic_load

N_SERIES, HOURS = 2000, 360


@pytest.fixture(scope="module", params=["shuffled", "zone_runs"])
def histories(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, str]:
    """2,000 synthetic series as two Parquet files (a folder); three series are unusable. "shuffled": rows
    in random order (scoring must not rely on the input's order: the shuffle path); "zone_runs": rows
    written zone by zone in small row groups, one zone cut between the files (the no-shuffle path)."""
    table = synthetic_load(n_zones=N_SERIES, hours=HOURS, seed=3)[["zone", "timestamp", "load_mw"]]
    table = table[~((table.zone == "Z0007") & (table.timestamp == table.timestamp.max() - pd.Timedelta(hours=5)))]
    table.loc[(table.zone == "Z0011") & (table.timestamp == table.timestamp.max()), "load_mw"] = np.nan
    table = table[(table.zone != "Z0013") | (table.timestamp > table.timestamp.max() - pd.Timedelta(hours=100))]
    if request.param == "shuffled":
        table = table.sample(frac=1.0, random_state=0)
    else:
        table = table.sort_values(["zone", "timestamp"])
    folder = tmp_path_factory.mktemp("scoring") / "input"
    folder.mkdir()
    half = len(table) // 2 + 17  # not on a zone boundary
    table.iloc[:half].to_parquet(folder / "part-0.parquet", index=False, row_group_size=25_000)
    table.iloc[half:].to_parquet(folder / "part-1.parquet", index=False, row_group_size=25_000)
    return folder, table, request.param


def in_process(bundle_dir: Path, table: pd.DataFrame, horizon: int) -> tuple[list[str], np.ndarray, pd.DatetimeIndex]:
    """The reference: one `Bundle.predict` call over every usable series' last input_length hours."""
    bundle = load_bundle(bundle_dir)
    zones, windows, lasts = [], [], []
    for zone, g in table.sort_values("timestamp").groupby("zone"):
        if zone in ("Z0007", "Z0011", "Z0013"):
            continue
        zones.append(zone)
        windows.append(g.load_mw.to_numpy(np.float32)[-bundle.input_length:])
        lasts.append(g.timestamp.iloc[-1])
    return zones, bundle.predict(np.stack(windows), pd.DatetimeIndex(lasts), horizon), pd.DatetimeIndex(lasts)


def test_scoring_2000_series_equals_in_process_forecasts_row_for_row(ray_session, tiny_bundle_dir: Path,
                                                                    histories, tmp_path: Path, monkeypatch) -> None:
    folder, table, layout = histories
    out = tmp_path / "forecasts"
    monkeypatch.setattr(serving.score, "UNIT_ROWS", 100_000)  # several read units (zone runs); shuffled: too spread
    lines: list[str] = []
    result = score(tiny_bundle_dir, folder, out, num_workers=2, batch_size=256, horizon=24, log=lines.append)
    assert any("no shuffle" in line for line in lines) == (layout == "zone_runs"), lines
    assert result.series == N_SERIES - 3 and result.rows == (N_SERIES - 3) * 24
    assert [z for z, _ in result.skipped] == ["Z0007", "Z0011", "Z0013"]

    got = pd.read_parquet(out)  # Parquet readers skip _SUCCESS and _skipped.parquet
    assert list(got.columns) == ["zone", "origin", "timestamp", "horizon", "mean", "q0.1", "q0.5", "q0.9"]
    got = got.sort_values(["zone", "horizon"]).reset_index(drop=True)
    zones, expected, lasts = in_process(tiny_bundle_dir, table, 24)
    assert got.zone.unique().tolist() == zones
    quantiles = got[["q0.1", "q0.5", "q0.9"]].to_numpy().reshape(len(zones), 24, 3)
    # Same windows, same weights; only the float32 rounding may differ (in the last bit or two), because
    # the actors run torch with one thread on batches of 256 and the reference with two on one batch.
    np.testing.assert_allclose(quantiles, expected, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(got["mean"].to_numpy(), got["q0.5"].to_numpy())
    origin = np.repeat((lasts + pd.Timedelta(hours=1)).to_numpy(), 24)
    np.testing.assert_array_equal(got.origin.to_numpy(), origin)
    np.testing.assert_array_equal(got.timestamp.to_numpy(),
                                  origin + np.tile(np.arange(24), len(zones)).astype("timedelta64[h]"))
    np.testing.assert_array_equal(got.horizon.to_numpy(), np.tile(np.arange(1, 25), len(zones)))

    manifest = json.loads((out / SUCCESS_FILE).read_text())
    assert manifest["series"] == N_SERIES - 3 and manifest["skipped"] == 3
    skipped = pd.read_parquet(out / SKIPPED_FILE)
    assert "contiguous" in skipped.set_index("zone").loc["Z0007", "reason"]
    assert "NaN" in skipped.set_index("zone").loc["Z0011", "reason"]
    assert "hours of history" in skipped.set_index("zone").loc["Z0013", "reason"]


def test_read_tasks_own_every_zone_once_or_the_input_is_shuffled(tmp_path: Path, monkeypatch) -> None:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    monkeypatch.setattr(serving.score, "UNIT_ROWS", 500)
    fs = pafs.LocalFileSystem()
    table = synthetic_load(n_zones=12, hours=300, seed=2)[["zone", "timestamp", "load_mw"]]
    table = table.sort_values(["zone", "timestamp"]).reset_index(drop=True)
    ordered = tmp_path / "ordered"
    ordered.mkdir()
    table.iloc[:1900].to_parquet(ordered / "a.parquet", index=False, row_group_size=250)  # zones cut between
    table.iloc[1900:].to_parquet(ordered / "b.parquet", index=False, row_group_size=250)  # groups and files
    units = zone_ordered_units(fs, str(ordered))
    assert units is not None and len(units) > 1
    owned = []
    for unit in units:
        rows = []
        for file, row_groups in unit.parts:
            zone = pq.ParquetFile(file).read_row_groups(row_groups, columns=["zone"]).column(0)
            keep = [(unit.low is None or z >= unit.low) and (unit.high is None or z < unit.high)
                    for z in zone.to_pylist()]
            rows += [z for z, k in zip(zone.to_pylist(), keep) if k]
        owned.append(rows)
    counts = pd.Series([z for rows in owned for z in rows]).value_counts()
    assert counts.to_dict() == table.zone.value_counts().to_dict()  # every row of every zone, once
    assert sum(len(set(rows)) for rows in owned) == 12  # each zone whole in one task

    # row groups as large as a task's share, cut mid-zone (pyarrow's default cuts every 1,048,576 rows):
    # tasks grow to four row groups so that re-reading a neighbour's group for a split zone stays cheap
    coarse = tmp_path / "coarse.parquet"
    table.to_parquet(coarse, index=False, row_group_size=500)
    units = zone_ordered_units(fs, str(coarse))
    assert units is not None and len(units) == 2
    assert sum(len(groups) for unit in units for _, groups in unit.parts) <= 1.5 * 8  # 8 row groups in all

    spread = tmp_path / "spread.parquet"  # every row group holds every zone; too large for one task
    table.sample(frac=1.0, random_state=1).to_parquet(spread, index=False, row_group_size=100)
    assert zone_ordered_units(fs, str(spread)) is None
    no_stats = tmp_path / "nostats.parquet"
    table.to_parquet(no_stats, index=False, write_statistics=False)
    assert zone_ordered_units(fs, str(no_stats)) is None


def test_rerun_replaces_the_output_and_a_failed_run_leaves_it_intact(ray_session, tiny_bundle_dir: Path,
                                                                     tmp_path: Path) -> None:
    table = synthetic_load(n_zones=20, hours=400, seed=5)[["zone", "timestamp", "load_mw"]]
    table.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"left over from an older run")
    score(tiny_bundle_dir, tmp_path / "in.parquet", out, num_workers=1, horizon=6)
    assert not (out / "stale.parquet").exists() and (out / SUCCESS_FILE).is_file()
    before = sorted(p.name for p in out.iterdir())

    table.groupby("zone").tail(100).to_parquet(tmp_path / "short.parquet", index=False)  # nothing scorable
    with pytest.raises(ScoringError, match="no series .* could be scored"):
        score(tiny_bundle_dir, tmp_path / "short.parquet", out, num_workers=1, horizon=6)
    assert sorted(p.name for p in out.iterdir()) == before  # the previous result, whole
    assert len(pd.read_parquet(out)) == 20 * 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary left behind


def test_bad_inputs_give_clear_errors(ray_session, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    synthetic_load(n_zones=2, hours=400, seed=1)[["zone", "timestamp", "load_mw"]].to_parquet(good, index=False)
    out = tmp_path / "out"

    no_load = tmp_path / "no_load.parquet"
    pd.read_parquet(good).drop(columns="load_mw").to_parquet(no_load, index=False)
    with pytest.raises(ScoringError, match=r"lacks column\(s\) \['load_mw'\]"):
        score(tiny_bundle_dir, no_load, out)

    with pytest.raises(ScoringError, match="no model bundle at"):
        score(tmp_path / "no-such-model", good, out)

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ScoringError, match="cannot write the output"):
        score(tiny_bundle_dir, good, blocker / "out")

    empty = tmp_path / "empty.parquet"
    pd.read_parquet(good).iloc[:0].to_parquet(empty, index=False)
    with pytest.raises(ScoringError, match="has no rows"):
        score(tiny_bundle_dir, empty, out)

    with pytest.raises(ScoringError, match="does not exist"):
        score(tiny_bundle_dir, tmp_path / "missing.parquet", out)

    text_stamps = tmp_path / "text.parquet"
    pd.read_parquet(good).astype({"timestamp": str}).to_parquet(text_stamps, index=False)
    with pytest.raises(ScoringError, match="not a timestamp"):
        score(tiny_bundle_dir, text_stamps, out)

    # more actors than the free CPUs can hold beside their feeding tasks: an error, not a pipeline that waits
    with pytest.raises(ScoringError, match=r"64 worker\(s\) needs 33 free CPUs"):
        score(tiny_bundle_dir, good, out, num_workers=64)
    assert not out.exists()


def test_cli_score_prints_a_summary_and_fails_with_one_line(ray_session, tiny_bundle_dir: Path,
                                                           tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from energyopt.cli import app

    good = tmp_path / "in.parquet"
    synthetic_load(n_zones=4, hours=400, seed=2)[["zone", "timestamp", "load_mw"]].to_parquet(good, index=False)
    runner = CliRunner()
    ok = runner.invoke(app, ["score", "--model", str(tiny_bundle_dir), "--input", str(good), "--output",
                             str(tmp_path / "out"), "--num-workers", "1", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "for 4 series" in ok.output
    bad = runner.invoke(app, ["score", "--model", str(tmp_path / "nope"), "--input", str(good), "--output",
                              str(tmp_path / "out")])
    assert bad.exit_code == 2 and "no model bundle at" in bad.output and "Traceback" not in bad.output


# ---------------------------------------------------------------------------------------------- weather

@pytest.fixture(scope="module")
def weather_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) model that reads temperature_c: the plumbing is what is checked, against predict."""
    import torch

    from models.bundle import save_bundle
    from models.features import FeatureSpec
    from models.forecaster import ForecasterConfig, QuantileForecaster

    torch.manual_seed(0)
    spec = FeatureSpec(covariates=("temperature_c",))
    model = QuantileForecaster(ForecasterConfig(type="lstm", input_length=48, horizon=24, n_covariates=spec.size,
                                                params={"hidden_size": 8, "patch_len": 24}))
    return save_bundle(tmp_path_factory.mktemp("bundles") / "weather", model, spec, name="weather", version="1")


@pytest.mark.parametrize("layout", ["zone_runs", "shuffled"])
def test_a_weather_model_reads_each_series_weather_rows_after_its_last_load(ray_session, weather_bundle_dir: Path,
                                                                           tmp_path: Path, layout: str) -> None:
    """Rows after a series' last load carry its forecast hours' temperature; forecasts equal predict given
    the same values. Series whose weather is short, NaN or in °F are skipped with the reason."""
    table = synthetic_load(n_zones=8, hours=200, seed=5)[["zone", "timestamp", "load_mw", "temperature_c"]]
    end = table.timestamp.max() - pd.Timedelta(hours=24)  # the last 24 h of every zone: weather only
    table.loc[table.timestamp > end, "load_mw"] = np.nan
    table = table[(table.zone != "Z006") | (table.timestamp <= end + pd.Timedelta(hours=10))]  # 10 h ahead only
    table.loc[(table.zone == "Z005") & (table.timestamp == end - pd.Timedelta(hours=3)), "temperature_c"] = np.nan
    table.loc[table.zone == "Z007", "temperature_c"] = table.loc[table.zone == "Z007", "temperature_c"] * 1.8 + 32 + 30
    table = table.sample(frac=1.0, random_state=0) if layout == "shuffled" else table
    path = tmp_path / "weather.parquet"
    table.to_parquet(path, index=False, row_group_size=500)

    result = score(weather_bundle_dir, path, tmp_path / "out", num_workers=1, horizon=24)
    reasons = dict(result.skipped)
    assert sorted(reasons) == ["Z005", "Z006", "Z007"] and result.series == 5, result.skipped
    assert "24 forecast hours after the last load" in reasons["Z006"] and "not all there" in reasons["Z006"]
    assert "some are missing (NaN)" in reasons["Z005"]
    assert "temperature_c looks like degrees Fahrenheit" in reasons["Z007"]

    bundle = load_bundle(weather_bundle_dir)
    ordered = table.sort_values(["zone", "timestamp"])
    good = [z for z in sorted(ordered.zone.unique()) if z not in reasons]
    history = np.stack([ordered[(ordered.zone == z) & (ordered.timestamp <= end)].load_mw.to_numpy(np.float32)[-48:]
                        for z in good])
    temps = np.stack([ordered[ordered.zone == z].temperature_c.to_numpy(np.float32)[-72:] for z in good])
    want = bundle.predict(history, pd.DatetimeIndex([end] * len(good)), 24,
                          extra=(temps[:, :48, None], temps[:, 48:, None]))
    got = pd.read_parquet(tmp_path / "out").sort_values(["zone", "horizon"])
    assert got.zone.unique().tolist() == good
    assert (got.origin == end + pd.Timedelta(hours=1)).all()
    np.testing.assert_allclose(got[["q0.1", "q0.5", "q0.9"]].to_numpy().reshape(len(good), 24, 3), want, rtol=1e-5)

    with pytest.raises(ScoringError, match=r"lacks weather column\(s\) \['temperature_c'\] that the model reads"):
        score(weather_bundle_dir, _without_weather(table, tmp_path), tmp_path / "out2")


def _without_weather(table: pd.DataFrame, folder: Path) -> Path:
    path = folder / "no_weather.parquet"
    table.drop(columns="temperature_c").to_parquet(path, index=False)
    return path
