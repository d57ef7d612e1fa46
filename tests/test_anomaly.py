"""Anomaly detection: injector, scoring and events, the autoencoder bundle, CLI, Ray Data and gRPC.

The tiny autoencoder (tests/conftest.py `tiny_anomaly_bundle_dir`) is trained once per session on three
synthetic zones; gRPC tests run against the session's one Serve application (`serve_app`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from models.anomaly import COMPONENTS, Calibration, _flagged_runs, detection_segments, find_events, fit_threshold
from models.series import LOAD, TIMESTAMP, ZONE
from training.anomalies import ANOMALY_TYPES, inject_anomalies

HOUR = pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def frame(synthetic_csv: Path) -> pd.DataFrame:
    return pd.read_csv(synthetic_csv, parse_dates=[TIMESTAMP])[[ZONE, TIMESTAMP, LOAD]]


@pytest.fixture(scope="module")
def planted(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    """Large anomalies in the last 60 days of zones Z000 and Z001 (Z002 untouched), as a CSV."""
    start = frame[TIMESTAMP].max() - pd.Timedelta(days=60)
    table, labels = inject_anomalies(frame, seed=3, per_kind=1, kinds=["spike", "dropout", "stuck", "level_shift"],
                                     zones=["Z000", "Z001"], start=start, margin_hours=72)
    path = tmp_path_factory.mktemp("planted") / "planted.csv"
    table.to_csv(path, index=False)
    return table, labels, path


# ---------------------------------------------------------------------------------------------- injector

def test_injector_is_seeded_labels_exact_and_everything_else_untouched(frame: pd.DataFrame):
    a, labels_a = inject_anomalies(frame, seed=11, per_kind=2)
    b, labels_b = inject_anomalies(frame, seed=11, per_kind=2)
    c, labels_c = inject_anomalies(frame, seed=12, per_kind=2)
    assert labels_a == labels_b and a.equals(b)
    assert labels_a != labels_c
    assert len(labels_a) == 3 * 2 * len(ANOMALY_TYPES)
    assert {x.kind for x in labels_a} == set(ANOMALY_TYPES)

    inside = np.zeros(len(frame), bool)
    for lab in labels_a:
        rows = ((frame[ZONE] == lab.zone) & (frame[TIMESTAMP] >= lab.start) & (frame[TIMESTAMP] <= lab.end)).to_numpy()
        assert rows.sum() == lab.hours
        inside |= rows
        before, after = frame[LOAD].to_numpy()[rows], a[LOAD].to_numpy()[rows]
        prev = frame[LOAD].to_numpy()[np.flatnonzero(rows)[0] - 1]
        if lab.kind in ("spike", "dip", "level_shift"):
            np.testing.assert_allclose(after, before * (1 + lab.magnitude))
        elif lab.kind == "dropout":
            assert (after == 0).all()
        elif lab.kind == "stuck":
            assert (after == prev).all()
        elif lab.kind == "lost_pattern":
            assert lab.start.hour == 0 and lab.hours % 24 == 0
            np.testing.assert_allclose(after.reshape(-1, 24).mean(1), before.reshape(-1, 24).mean(1))
            assert (np.ptp(after.reshape(-1, 24), axis=1) == 0).all()
        elif lab.kind == "drift":
            ramp = np.arange(1, lab.hours + 1) / lab.hours
            np.testing.assert_allclose(after, before * (1 + lab.magnitude * ramp), rtol=1e-12)
    # labelled anomalies never touch or overlap each other, and nothing outside them changed
    by_zone = sorted(labels_a, key=lambda x: (x.zone, x.start))
    for x, y in zip(by_zone, by_zone[1:]):
        assert x.zone != y.zone or y.start - x.end >= 168 * HOUR
    pd.testing.assert_frame_equal(a[~inside], frame[~inside])


def test_injector_refuses_gaps_unknown_kinds_and_overfull_periods(frame: pd.DataFrame):
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        inject_anomalies(frame, seed=0, kinds=["meteor"])
    with pytest.raises(ValueError, match="without gaps"):
        inject_anomalies(frame.drop(index=[100, 101]), seed=0)
    with pytest.raises(ValueError, match="cannot fit"):
        inject_anomalies(frame, seed=0, per_kind=40)


# ---------------------------------------------------------------------------------------------- scoring

def test_flagged_hours_merge_into_events_with_severity_and_energy():
    stamps = pd.date_range("2021-03-01", periods=40, freq="h")
    score = np.full(40, 0.2)
    score[[3, 4, 5]] = [1.5, 3.0, 1.2]  # one run
    score[[9, 10]] = [2.0, 1.1]  # 3 h later: joined with merge gap 4, separate with 2
    score[30] = 5.0
    score[20] = np.nan  # unscored hours never alarm
    which = np.zeros(40, int)
    which[30] = 1
    expected, observed = np.full(40, 100.0), np.full(40, 100.0)
    observed[3:6] = 200.0
    events = find_events("Z", stamps, score, which, expected, observed, merge_gap_hours=4)
    assert [(e.start, e.end) for e in events] == [(stamps[3], stamps[10]), (stamps[30], stamps[30])]
    first, second = events
    assert first.severity == 3.0 and first.hours == 8 and first.expected == 800.0 and first.observed == 1100.0
    assert second.component == "jump" and second.to_dict()["start"] == stamps[30].isoformat()
    assert len(find_events("Z", stamps, score, which, expected, observed, merge_gap_hours=2)) == 3
    assert _flagged_runs(np.full(5, np.nan), 6) == []


def test_peaks_over_threshold_extrapolates_a_known_tail():
    """Exponential scores: the GPD tail (shape 0) is exact, so POT finds the 1e-5 quantile from 20k
    samples, where the empirical quantile can only return the largest sample."""
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 20_000)
    true = -np.log(1e-5)  # 11.5
    assert abs(fit_threshold(x, method="pot", risk=1e-5) - true) < 1.0
    assert fit_threshold(x, method="quantile", risk=1e-3) == pytest.approx(-np.log(1e-3), rel=0.1)
    with pytest.raises(ValueError, match="at least 100"):
        fit_threshold(x[:50])


def test_detection_input_keeps_zeros_merges_duplicates_and_splits_long_gaps():
    stamps = pd.date_range("2021-01-01", periods=100, freq="h")
    load = np.full(100, 50.0)
    load[10] = 0.0  # a zero reading: kept
    table = pd.DataFrame({ZONE: "A", TIMESTAMP: stamps, LOAD: load})
    table = pd.concat([table, table.iloc[[20]].assign(**{LOAD: 70.0})])  # duplicate hour: mean 60
    table.loc[table.index[30:33], LOAD] = np.nan  # short hole: interpolated
    table = table.drop(index=range(60, 70))  # 10 h missing: split
    segments, notes = detection_segments(table, max_interpolate_hours=6)
    assert [len(s) for s in segments] == [60, 30]
    assert segments[0].load[10] == 0.0 and segments[0].load[20] == 60.0 and np.isfinite(segments[0].load).all()
    assert "1 duplicate hours merged" in notes[0] and "1 gaps longer than 6 h" in notes[0]


# ---------------------------------------------------------------------------------------------- the model

def test_threshold_is_stored_in_the_bundle_and_reloaded(tiny_anomaly_bundle_dir: Path):
    from models.autoencoder import detector_of
    from models.bundle import load_bundle

    config = json.loads((tiny_anomaly_bundle_dir / "config.json").read_text())
    assert config["kind"] == "autoencoder" and config["model"]["type"] == "autoencoder"
    bundle = load_bundle(tiny_anomaly_bundle_dir)
    model, calibration = detector_of(bundle)
    assert calibration == Calibration.from_dict(config["detector"])
    assert len(calibration.thresholds) == len(COMPONENTS) and all(t > 0 for t in calibration.thresholds)
    assert set(calibration.scales) == {"Z000", "Z001", "Z002"}
    assert calibration.validation["false_alarms_per_zone_month"] <= 0.1
    assert not model.training


def test_tiny_autoencoder_finds_large_planted_anomalies(tiny_anomaly_bundle_dir: Path, planted):
    from models.autoencoder import detect_segments
    from models.bundle import load_bundle

    table, labels, _ = planted
    bundle = load_bundle(tiny_anomaly_bundle_dir)
    segments, _ = detection_segments(table)
    results, _ = detect_segments(bundle, segments)
    start = labels[0].start - pd.Timedelta(days=30)
    events = [e for r in results for e in r.events if e.end >= start]
    for lab in labels:
        assert any(e.zone == lab.zone and e.start <= lab.end and e.end >= lab.start for e in events), lab
    false = [e for e in events if not any(e.zone == x.zone and e.start <= x.end and e.end >= x.start for x in labels)]
    true = [e for e in events if e not in false]
    assert len(false) <= 4, false  # 3 zones x 3 months scanned
    assert max((e.severity for e in false), default=0) < min(e.severity for e in true)  # planted ones rank first
    dropout = next(x for x in labels if x.kind == "dropout")
    hit = next(e for e in events if e.zone == dropout.zone and e.start <= dropout.end and e.end >= dropout.start)
    assert hit.observed < 0.8 * hit.expected and hit.severity > 1


def test_bundles_of_the_wrong_kind_are_refused(tiny_bundle_dir: Path):
    from models.autoencoder import detector_of
    from models.bundle import load_bundle

    with pytest.raises(ValueError, match="not an anomaly detector"):
        detector_of(load_bundle(tiny_bundle_dir))


# ---------------------------------------------------------------------------------------------- CLI and batch

def test_cli_detect_writes_events_as_json(tiny_anomaly_bundle_dir: Path, planted, tmp_path: Path):
    from typer.testing import CliRunner

    from energyopt.cli import app

    _, labels, path = planted
    out = tmp_path / "events.json"
    result = CliRunner().invoke(app, ["detect", "--model", str(tiny_anomaly_bundle_dir), "--data", str(path),
                                      "--json", str(out), "--start", str(labels[0].start - pd.Timedelta(days=20))])
    assert result.exit_code == 0, result.output
    events = json.loads(out.read_text())
    assert isinstance(events, list) and events
    for e in events:
        assert {"zone", "start", "end", "severity", "expected", "observed"} <= set(e)
        assert pd.Timestamp(e["start"]) <= pd.Timestamp(e["end"]) and e["severity"] > 1
    assert {e["zone"] for e in events} >= {"Z000", "Z001"}

    bad = CliRunner().invoke(app, ["detect", "--model", str(tiny_anomaly_bundle_dir), "--data", str(path),
                                   "--zone", "MARS"])
    assert bad.exit_code == 2 and "unknown zone" in bad.output and "Traceback" not in bad.output


def test_batch_detection_on_ray_data_equals_in_process(ray_session, tiny_anomaly_bundle_dir: Path, planted,
                                                       tmp_path: Path):
    from models.autoencoder import detect_segments
    from models.bundle import load_bundle
    from serving.detect import detect_parquet, read_events

    table, _, _ = planted
    table = table[table[TIMESTAMP] >= table[TIMESTAMP].max() - pd.Timedelta(days=120)]  # the planted period
    parquet = tmp_path / "in.parquet"
    table.to_parquet(parquet)
    n = detect_parquet(tiny_anomaly_bundle_dir, parquet, tmp_path / "events")
    got = read_events(tmp_path / "events")
    results, _ = detect_segments(load_bundle(tiny_anomaly_bundle_dir), detection_segments(table)[0])
    want = sorted((e for r in results for e in r.events), key=lambda e: (e.start, e.zone))
    assert n == len(got) == len(want) > 0
    assert list(got.zone) == [e.zone for e in want]
    assert list(pd.to_datetime(got.start)) == [e.start for e in want]
    np.testing.assert_allclose(got.severity, [e.severity for e in want], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- gRPC

@pytest.fixture(scope="module")
def anomaly_stub(serve_app):
    from serving.api.energyopt.v1 import anomaly_pb2_grpc

    with grpc.insecure_channel(serve_app.target) as channel:
        yield anomaly_pb2_grpc.AnomalyServiceStub(channel)


def test_grpc_detect_on_server_history_and_client_series(anomaly_stub, serve_app, planted,
                                                         tiny_anomaly_bundle_dir: Path):
    from models.autoencoder import detect_segments
    from models.bundle import load_bundle
    from serving.api.energyopt.v1 import anomaly_pb2 as apb

    # server-held history (the synthetic zones as recorded): a range and a zone
    resp = anomaly_stub.DetectAnomalies(apb.DetectAnomaliesRequest(zones=["Z002"], include_scores=True), timeout=60)
    assert resp.model.name == "tiny-autoencoder" and resp.reference_hours == 4 * 168
    assert resp.scored_hours == 30 * 24 and len(resp.scores) == 1 and len(resp.scores[0].score) == 30 * 24
    assert len(resp.events) <= 2  # untouched synthetic data

    # client series: the planted zone Z000, its last 120 days
    table, labels, _ = planted
    z = table[table[ZONE] == "Z000"].tail(120 * 24)
    request = apb.DetectAnomaliesRequest(series=[apb.LoadSeries(name="meter-1", values=z[LOAD].tolist(),
                                                                start=z[TIMESTAMP].iloc[0].isoformat())])
    resp = anomaly_stub.DetectAnomalies(request, timeout=60)
    segments, _ = detection_segments(z.assign(**{ZONE: "meter-1"}))  # an unknown series: its own scales
    results, _ = detect_segments(load_bundle(tiny_anomaly_bundle_dir), segments)
    first = z[TIMESTAMP].iloc[0] + resp.reference_hours * HOUR
    want = [e for e in results[0].events if e.end >= first]
    assert [(e.start, e.end) for e in resp.events] == [(w.start.isoformat(), w.end.isoformat()) for w in want]
    assert all(e.zone == "meter-1" for e in resp.events)
    for lab in (x for x in labels if x.zone == "Z000"):
        assert any(e.start <= lab.end.isoformat() and e.end >= lab.start.isoformat() for e in resp.events), lab


def _values(n: int, nan_at: int | None = None) -> list:
    v: list = [1000.0 + 100 * np.sin(2 * np.pi * h / 24) for h in range(n)]
    if nan_at is not None:
        v[nan_at] = "NaN"  # proto3 JSON spelling of a NaN double
    return v


@pytest.mark.parametrize("request_kwargs, code, field", [
    ({"zones": ["MARS"]}, "NOT_FOUND", "zones[0]"),
    ({"zones": ["Z000", "Z000"]}, "INVALID_ARGUMENT", "zones[1]"),
    ({"start": "2019-01-01T00:00:00"}, "INVALID_ARGUMENT", "start"),  # needs 4 weeks of history before it
    ({"start": "yesterday"}, "INVALID_ARGUMENT", "start"),
    ({"end": "2031-01-01T00:00:00"}, "INVALID_ARGUMENT", "end"),
    ({"model": "gpt"}, "NOT_FOUND", "model"),
    ({"series": [{"name": "m", "values": _values(300), "start": "2021-01-01T00:00:00"}]}, "INVALID_ARGUMENT",
     "series[0].values"),  # too short
    ({"series": [{"name": "m", "values": _values(900, nan_at=5), "start": "2021-01-01T00:00:00"}]},
     "INVALID_ARGUMENT", "series[0].values"),
    ({"series": [{"name": "m", "values": _values(900)}]}, "INVALID_ARGUMENT", "series[0].start"),
    ({"series": [{"name": "m", "values": _values(900), "start": "2021-01-01T00:00:00"}], "zones": ["Z000"]},
     "INVALID_ARGUMENT", "series"),
])
def test_grpc_detect_bad_input_names_the_field(anomaly_stub, request_kwargs, code, field):
    from google.protobuf import json_format

    from serving.api.energyopt.v1 import anomaly_pb2 as apb

    request = json_format.ParseDict(request_kwargs, apb.DetectAnomaliesRequest())
    with pytest.raises(grpc.RpcError) as err:
        anomaly_stub.DetectAnomalies(request, timeout=60)
    assert err.value.code().name == code, err.value.details()
    assert err.value.details().startswith(f"{field}:"), err.value.details()
    assert "Traceback" not in err.value.details()


def test_a_gap_in_server_history_is_refused(tiny_anomaly_bundle_dir: Path, synthetic_csv: Path):
    """The synthetic CSV has no gaps: a hole is punched in the history the replica's engine holds."""
    from models.bundle import load_bundle
    from serving.anomaly import AnomalyEngine, raw_histories
    from serving.api.energyopt.v1 import anomaly_pb2 as apb
    from serving.engine import ApiError, Limits

    histories = raw_histories(synthetic_csv)
    histories["Z000"].values[-100:-90] = np.nan
    engine = AnomalyEngine(load_bundle(tiny_anomaly_bundle_dir), histories, Limits())
    with pytest.raises(ApiError, match="has a gap") as err:
        engine.detect(apb.DetectAnomaliesRequest(zones=["Z000"]))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_http_mirror_and_missing_anomaly_model(serve_app):
    import urllib.error
    import urllib.request

    from serving import server

    def post(body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(serve_app.url + "/v1/anomalies", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, body = post({"zones": ["Z001"], "start": "2021-04-01T00:00:00", "end": "2021-04-10T23:00:00"})
    assert status == 200 and body["scored_hours"] == "240" and body["model"]["name"] == "tiny-autoencoder"
    assert post({"zones": ["MARS"]})[0] == 404

    # without an anomaly model the replica answers FAILED_PRECONDITION (a user_config change, no restart)
    from serving.api.energyopt.v1 import anomaly_pb2 as apb
    from serving.api.energyopt.v1 import anomaly_pb2_grpc

    def detect_error(want_model: bool) -> grpc.RpcError | None:
        """DetectAnomalies' error, polled until the replica has applied the last user_config (Serve can
        report the application RUNNING before a busy replica has run reconfigure)."""
        deadline = time.monotonic() + 60
        while True:
            with grpc.insecure_channel(serve_app.target) as channel:
                try:
                    anomaly_pb2_grpc.AnomalyServiceStub(channel).DetectAnomalies(
                        apb.DetectAnomaliesRequest(zones=["Z001"]), timeout=30)
                    error = None
                except grpc.RpcError as err:
                    error = err
            configured = error is None or error.code() != grpc.StatusCode.FAILED_PRECONDITION
            if configured == want_model or time.monotonic() > deadline:
                return error
            time.sleep(0.5)

    config = json.loads(json.dumps(serve_app.config))
    config["applications"][0]["deployments"][0]["user_config"]["anomaly_model"] = None
    server.deploy(config)
    try:
        err = detect_error(want_model=False)
        assert err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no anomaly model configured" in err.details()
    finally:
        server.deploy(serve_app.config)
        assert detect_error(want_model=True) is None  # the model is back for the tests after this one


def test_cli_train_autoencoder_writes_a_detector_bundle(synthetic_csv: Path, tmp_path: Path):
    """`energyopt train --model autoencoder` end to end on a tiny config (a 60-day test period is too
    short to plant every kind, which training reports instead of failing)."""
    import yaml
    from typer.testing import CliRunner

    from energyopt.cli import app
    from training.config import CONFIG_DIR

    config = yaml.safe_load((CONFIG_DIR / "models" / "autoencoder.yaml").read_text())
    config["model"]["params"].update(hidden=8, layers=1)
    config["data"].update(val_days=60, test_days=60)
    config["training"].update(max_epochs=1, samples_per_epoch=512, val_samples=128, batch_size=128)
    (tmp_path / "ae.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--model", "autoencoder", "--config", str(tmp_path / "ae.yaml"),
                                      "--data", str(synthetic_csv), "--out", str(tmp_path / "ae"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "threshold calibration on validation" in result.output and "no planted-anomaly evaluation" in result.output
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["detector"]["thresholds"]


def test_anomaly_proto_documents_every_field():
    import re

    from serving import gen_proto

    lines = (Path(gen_proto.PROTO_ROOT) / "energyopt" / "v1" / "anomaly.proto").read_text().splitlines()
    field = re.compile(r"^\s*(repeated\s+|optional\s+)?(map<[^>]+>|[\w.]+)\s+\w+\s*=\s*\d+\s*;")
    undocumented = [line for i, line in enumerate(lines)
                    if (field.match(line) or re.match(r"^\s*(service|rpc|message)\s", line))
                    and not lines[i - 1].strip().startswith("//")]
    assert not undocumented, undocumented
