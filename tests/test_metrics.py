"""Prometheus metrics, alert rules and the Grafana board, with real components only.

A. A server of its own (`python -m serving.server` in a subprocess, its own local Ray, its metrics export
   port) scraped every second by a real Prometheus (/usr/bin/prometheus on loopback). The test makes a
   known number of requests over gRPC and HTTP (some failing with known codes) and feeds readings (some
   rejected, one zone behind the others); PromQL through Prometheus's HTTP API gives back those counts, a
   latency quantile consistent with what the client measured, each zone's data age and newest reading,
   the open anomaly events, the model in use with its backtest MAPE, the scheduled forecasts the store
   holds, and the live accuracy GetForecastAccuracy answers.
B. The alert rules: `promtool check rules` and `promtool test rules` (cluster/monitoring/alerts_test.yaml).
C. The Grafana board and the rules name only metrics a real scrape of the server has.
D. Every rejection reason the store gives falls in one of the metric's fixed classes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
import yaml
from servers import REPO, ServerProcess, running, schedule_config, server_process

from models import archive
from models.store import Store, ZoneSpec
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc
from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc
from serving.metrics import LATENCY_BOUNDS_S, OTHER_REASON, bucket_label, reason_class

MONITORING = REPO / "cluster" / "monitoring"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
ZONES = ("Z000", "Z001", "Z002")
FED = 24  # hours of the synthetic data kept out of the seed
FRESH_HOURS, BEHIND = 6, 3  # Z000 and Z001 get 6 new hours, Z002 the first 3 only

needs_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                      reason="needs prometheus and promtool (Debian: apt-get install prometheus)")


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory, tiny_bundle_dir: Path, synthetic_csv: Path) -> Iterator[ServerProcess]:
    """One Forecaster replica and the Scheduler on the data clock (a slot per new hour of readings), store
    gauges every second; Ray exports metrics every second (default 10 s)."""
    root = tmp_path_factory.mktemp("metrics")
    frame = pd.read_csv(synthetic_csv, parse_dates=["timestamp"])
    hours = sorted(frame["timestamp"].unique())
    seed = root / "seed.csv"
    frame[frame["timestamp"] < hours[-FED]].to_csv(seed, index=False)
    config = schedule_config(root, clock="data", poll_s=0.5, horizon=24, metrics_every_s=1, accuracy_every_s=1,
                             scan_every_s=3600)
    args = {"store": str(root / "store.db"), "data": str(seed), "region": "SYN"}
    server = server_process(root, model=tiny_bundle_dir, args=args, replicas=1, config=config)
    server.env["RAY_metrics_report_interval_ms"] = "1000"
    server.truth = frame.set_index(["zone", "timestamp"]).sort_index()
    server.fed = [pd.Timestamp(h) for h in hours[-FED:]]
    with running(server):
        yield server


class Prometheus:
    """A real Prometheus scraping `target` every second, queried through its HTTP API."""

    def __init__(self, root: Path, target: str) -> None:
        from serving.server import free_ports

        self.port = free_ports(1)[0]
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "energyopt", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = root / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                                          f"--web.listen-address=127.0.0.1:{self.port}"],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Prometheus did not start: {self.log.read_text()[-2000:]}", pytrace=False)
                time.sleep(0.2)

    def query(self, promql: str) -> list[dict]:
        """The instant vector `promql` gives now: [{"metric": {...}, "value": float}, ...]."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in body["data"]["result"]]

    def value(self, promql: str) -> float | None:
        """The one value `promql` gives (None: no series)."""
        found = self.query(promql)
        assert len(found) <= 1, (promql, found)
        return found[0]["value"] if found else None

    def wait_for(self, promql: str, expected: Callable[[Any], bool], timeout_s: float = 60) -> Any:
        """Poll `promql` (a single value, or a {label tuple: value} dict for several) until `expected`."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.query(promql)
            got = (found[0]["value"] if len(found) == 1 and not found[0]["metric"] else
                   {tuple(sorted(r["metric"].items())): r["value"] for r in found})
            if expected(got):
                return got
            assert time.monotonic() < deadline, f"{promql} gave {got} after {timeout_s:.0f} s"
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def prometheus(metrics_server: ServerProcess, tmp_path_factory) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("needs prometheus (Debian: apt-get install prometheus)")
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{metrics_server.metrics_port}")
    try:
        yield server
    finally:
        server.stop()


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as response:
        return response.read().decode()


def _http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


# ---------------------------------------------------------------------------------------------- A: the export

def test_request_counts_and_latency_are_what_the_client_did(metrics_server: ServerProcess, prometheus: Prometheus):
    """ForecastRegion over gRPC: 2 before Prometheus has a sample, 10 after (the rate's window), 3 NOT_FOUND,
    2 INVALID_ARGUMENT; over HTTP 5 OK and 2 NOT_FOUND. The Scheduler's own ForecastRegion calls (through
    Serve's handle) are not client requests and are not counted."""
    stub = pb_grpc.ForecastServiceStub(metrics_server.channel)
    ok = pb.ForecastRegionRequest(region="SYN", horizon=24)

    def timed_ok() -> float:
        start = time.perf_counter()
        stub.ForecastRegion(ok, timeout=60)
        return time.perf_counter() - start

    first = [timed_ok() for _ in range(2)]
    grpc_ok = 'ray_energyopt_requests_total{method="ForecastRegion",transport="grpc",code="OK"}'
    prometheus.wait_for(f"sum({grpc_ok})", lambda v: v == 2)
    time.sleep(2)  # a second sample of the count before the measured requests
    latencies = [timed_ok() for _ in range(10)]
    for request, code, n in ((pb.ForecastRegionRequest(region="NOPE", horizon=24), grpc.StatusCode.NOT_FOUND, 3),
                             (pb.ForecastRegionRequest(region="SYN", horizon=24, quantiles=[1.5]),
                              grpc.StatusCode.INVALID_ARGUMENT, 2)):
        for _ in range(n):
            with pytest.raises(grpc.RpcError) as err:
                stub.ForecastRegion(request, timeout=60)
            assert err.value.code() == code, err.value.details()
    base = f"http://127.0.0.1:{metrics_server.http_port}/v1/forecast/region"
    assert [_http(f"{base}?region=SYN&horizon=24") for _ in range(5)] == [200] * 5
    assert [_http(f"{base}?region=NOPE&horizon=24") for _ in range(2)] == [404] * 2

    counts = prometheus.wait_for(
        'sum by (transport, code) (ray_energyopt_requests_total{method="ForecastRegion"})',
        lambda got: isinstance(got, dict) and got.get((("code", "OK"), ("transport", "grpc"))) == 12
        and len(got) == 5 and got.get((("code", "NOT_FOUND"), ("transport", "http"))) == 2)
    assert counts == {(("code", "OK"), ("transport", "grpc")): 12, (("code", "NOT_FOUND"), ("transport", "grpc")): 3,
                      (("code", "INVALID_ARGUMENT"), ("transport", "grpc")): 2,
                      (("code", "OK"), ("transport", "http")): 5, (("code", "NOT_FOUND"), ("transport", "http")): 2}

    # the latency histogram: every request observed once, in seconds, no longer than the client waited
    hist = 'ray_energyopt_request_duration_seconds{method="ForecastRegion",transport="grpc",code="OK"}'
    histogram = hist.replace("{", "_bucket{", 1)
    assert prometheus.value(f"sum({hist.replace('{', '_count{', 1)})") == 12
    mean = prometheus.value(f"sum({hist.replace('{', '_sum{', 1)}) / sum({hist.replace('{', '_count{', 1)})")
    # Ray exports a histogram's _sum from its bucket counts (each observation at its bucket's midpoint), so the
    # mean of all 12 is known to a bucket: at most the bound of the bucket holding the slowest of them
    assert 0 < mean <= next(b for b in LATENCY_BOUNDS_S if b >= max(first + latencies)), (mean, first + latencies)
    # p99 of the 10 measured requests: from the buckets' rate, below the bucket bound that holds the slowest
    # request the client saw (the server's time is a part of the client's), and above zero
    p99 = prometheus.value(f"histogram_quantile(0.99, sum by (le) (rate({histogram}[30s])))")
    bound = next(b for b in LATENCY_BOUNDS_S if b >= max(latencies))
    assert p99 is not None and 0 < p99 <= bound, (p99, latencies)
    over_all = prometheus.value(f"histogram_quantile(0.99, sum by (le) ({histogram}))")
    assert 0 < over_all <= next(b for b in LATENCY_BOUNDS_S if b >= max(latencies))


def _readings(server: ServerProcess, zone: str, hour: pd.Timestamp) -> rpb.Reading:
    return rpb.Reading(zone=zone, timestamp=hour.tz_localize("UTC").isoformat(),
                       value=float(server.truth.loc[(zone, hour), "load_mw"]))


def test_readings_data_age_and_open_anomalies(metrics_server: ServerProcess, prometheus: Prometheus):
    """6 new hours of Z000 and Z001, 3 of Z002 (so Z002 is 3 h behind on the data clock); the first batch
    holds two hours (so the schedule issues the older one's slot late), and the last three readings the
    ingest refuses: a negative value (which opens a zero_readings event on Z002), an unknown zone and a
    time in the future. Then a StreamReadings resending two hours (unchanged)."""
    stub = rpb_grpc.ReadingsServiceStub(metrics_server.channel)
    fed = metrics_server.fed[:FRESH_HOURS]
    batches = [fed[:2], *([hour] for hour in fed[2:])]
    inserted = 0
    for k, hours in enumerate(batches):
        batch = [_readings(metrics_server, z, hour) for hour in hours for z in ZONES
                 if z != "Z002" or hour < fed[BEHIND]]
        if k == len(batches) - 1:
            stamp = hours[0].tz_localize("UTC").isoformat()
            batch += [rpb.Reading(zone="Z002", timestamp=stamp, value=-5.0),
                      rpb.Reading(zone="NOPE", timestamp=stamp, value=1.0),
                      rpb.Reading(zone="Z000", timestamp="2099-01-01T00:00:00Z", value=100.0)]
        ack = stub.IngestReadings(rpb.IngestReadingsRequest(readings=batch), timeout=60)
        inserted += ack.inserted
        assert ack.inserted == len(batch) - (3 if k == len(batches) - 1 else 0), ack
    assert [r.reason.split(" ")[0:2] for r in ack.rejected] == [["value", "-5"], ["unknown", "zone"], ["time", "is"]]
    # the first two batches again, as one stream: stored already, so unchanged (and counted as one request)
    resent = [rpb.IngestReadingsRequest(readings=[_readings(metrics_server, z, hour) for z in ZONES])
              for hour in fed[:2]]
    acks = list(stub.StreamReadings(iter(resent), timeout=60))
    assert [a.unchanged for a in acks] == [3, 3]

    streams = prometheus.wait_for('sum(ray_energyopt_requests_total{method="StreamReadings"})', lambda v: v == 1)
    assert prometheus.value('sum(ray_energyopt_requests_total{method="StreamReadings",code="OK"})') == streams
    assert prometheus.wait_for('sum(ray_energyopt_readings_ingested_total{outcome="unchanged"})', lambda v: v == 6)
    rejected = prometheus.wait_for("sum by (reason) (ray_energyopt_readings_rejected_total)",
                                   lambda got: isinstance(got, dict) and len(got) == 3)
    assert rejected == {(("reason", "not_positive"),): 1, (("reason", "unknown_zone"),): 1, (("reason", "future"),): 1}
    assert prometheus.value('sum(ray_energyopt_readings_ingested_total{outcome="inserted"})') == inserted == 15

    newest = {z: int(fed[-1 if z != "Z002" else BEHIND - 1].tz_localize("UTC").timestamp()) for z in ZONES}
    ages = prometheus.wait_for(
        'max by (zone) (ray_energyopt_data_age_seconds{region="SYN"})',
        lambda got: isinstance(got, dict) and got.get((("zone", "Z002"),)) == (FRESH_HOURS - BEHIND) * 3600)
    assert ages == {(("zone", "Z000"),): 0, (("zone", "Z001"),): 0, (("zone", "Z002"),): (FRESH_HOURS - BEHIND) * 3600}
    stamps = prometheus.query('max by (zone) (ray_energyopt_newest_reading_timestamp_seconds{region="SYN"})')
    assert {r["metric"]["zone"]: r["value"] for r in stamps} == newest
    opened = prometheus.wait_for('sum by (zone, kind) (ray_energyopt_open_anomalies{region="SYN"} > 0)',
                                 lambda got: isinstance(got, dict) and len(got) == 1)
    assert opened == {(("kind", "zero_readings"), ("zone", "Z002")): 1}


def test_model_schedule_and_live_accuracy_gauges(metrics_server: ServerProcess, prometheus: Prometheus):
    """The model in use and its backtest MAPE as GetModelInfo gives them; the scheduled forecasts issued
    and late as the archive holds them; the live MAE and MAPE as GetForecastAccuracy answers them
    (after the readings of the previous test: forecasts issued from the fed hours, scored on later ones)."""
    stub = pb_grpc.ForecastServiceStub(metrics_server.channel)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    assert prometheus.value(f'max(ray_energyopt_model_info{{model="{info.name}",version="{info.version}"}})') == 1
    mape = prometheus.value(f'max(ray_energyopt_model_backtest_mape{{version="{info.version}"}})')
    assert mape == pytest.approx(info.metrics["mape"], rel=1e-9)

    store = Store.open(metrics_server.store_path)
    try:
        def issued() -> tuple[tuple[float, float], tuple[int, int]]:
            held = archive.list_forecasts(store, "SYN", scheduled_only=True, headers_only=True, limit=100_000)
            exported = (prometheus.value('sum(ray_energyopt_forecasts_issued_total{region="SYN"})'),
                        prometheus.value('sum(ray_energyopt_forecasts_late_total{region="SYN"})'))
            return exported, (len(held), sum(f.late for f in held))

        deadline = time.monotonic() + 60
        while (found := issued())[0] != found[1]:  # the schedule may still be catching up with the feed
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        # the seed's next hour, then the slots up to Z002's hours (the region's clock waits for a zone
        # less than 6 h behind): the older hour of the two-hour batch late
        assert found[1][0] >= 3 and found[1][1] >= 1, found
    finally:
        store.close()

    answer = stub.GetForecastAccuracy(pb.GetForecastAccuracyRequest(region="SYN"), timeout=120)
    expected = {(r.zone, bucket_label(r.first_step, r.last_step)): (r.mae, r.mape, r.points) for r in answer.rows}
    assert ("TOTAL", "1-6") in expected and ("Z000", "1-6") in expected, expected

    def gauges(name: str) -> dict:
        return {(r["metric"]["zone"], r["metric"]["bucket"]): r["value"]
                for r in prometheus.query(f'max by (zone, bucket) (ray_energyopt_live_{name}{{region="SYN"}})')}

    deadline = time.monotonic() + 60
    while {k: v[2] for k, v in expected.items()} != gauges("points"):
        assert time.monotonic() < deadline, (gauges("points"), expected)
        time.sleep(0.5)
    mae, mape = gauges("mae"), gauges("mape")
    for key, (want_mae, want_mape, _) in expected.items():
        assert mae[key] == pytest.approx(want_mae, rel=1e-9) and mape[key] == pytest.approx(want_mape, rel=1e-9), key


# ---------------------------------------------------------------------------------------------- B: the rules

@needs_prometheus
def test_alert_rules_are_valid_and_their_unit_tests_pass():
    check = subprocess.run([PROMTOOL, "check", "rules", str(MONITORING / "alerts.yaml")], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=MONITORING, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    tests = yaml.safe_load((MONITORING / "alerts_test.yaml").read_text())
    firing = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert firing == {a["alert"] for a in alerts}, "every alert has a unit test that makes it fire"
    for a in alerts:
        assert a.get("for") and a["labels"].get("severity") in ("warning", "critical"), a["alert"]
        assert a["annotations"].get("summary") and a["annotations"].get("description"), a["alert"]


def test_scrape_configs_target_the_ray_metrics_port_of_every_ray_pod(tmp_path: Path):
    """The PodMonitor scrapes the port named `metrics` of every Ray pod, which the RayService names on the head
    and every worker group; the plain scrape config passes `promtool check config` (its Kubernetes job
    aside when this promtool lacks Kubernetes discovery, as Debian's does)."""
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    service = yaml.safe_load((REPO / "cluster" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [service["headGroupSpec"], *service["workerGroupSpecs"]]
    for group in groups:
        ports = {p["name"]: p["containerPort"] for c in group["template"]["spec"]["containers"] for p in c["ports"]}
        assert ports.get("metrics") == 8080, group.get("groupName", "head")
    if PROMTOOL is None:
        pytest.skip("needs promtool")
    config = yaml.safe_load((MONITORING / "prometheus-scrape.yaml").read_text())
    shutil.copy(MONITORING / "alerts.yaml", tmp_path / "alerts.yaml")
    for keep_kubernetes in (True, False):
        if not keep_kubernetes:
            config["scrape_configs"] = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        checked = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
                                 capture_output=True, text=True, timeout=120)
        if checked.returncode == 0 or "kubernetes_sd_configs not found" not in checked.stdout + checked.stderr:
            break
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:8080"]


# ---------------------------------------------------------------------------------------------- C: names

_PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta",
                 "histogram_quantile", "absent", "time", "vector", "scalar", "clamp_min", "clamp_max", "topk",
                 "bottomk", "le", "inf", "nan", "label_replace", "changes", "resets", "max_over_time",
                 "min_over_time", "avg_over_time", "last_over_time", "absent_over_time", "count_over_time"}


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers outside label matchers, strings and ranges that
    are not functions, keywords or a grouping clause's label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\w+", "", text)  # Grafana variables ($__rate_interval, ...)
    text = re.sub(r"\b\d[\w.]*", "", text)  # numbers and durations (0.99, 1e9, offset 30m)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


def exported_names(text: str) -> set[str]:
    """Metric names in a Prometheus scrape, with a histogram's or summary's base name beside its series."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0)
            names.add(name)
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def grafana_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' panels included."""
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            out.extend((panel.get("title", ""), t["expr"]) for t in panel.get("targets", []) if t.get("expr"))

    walk(board["panels"])
    return out


def test_grafana_board_and_rules_name_only_exported_metrics(metrics_server: ServerProcess,
                                                            prometheus: Prometheus):
    """(after A's tests: every metric has been recorded at least once)"""
    board = json.loads((MONITORING / "grafana-energyopt.json").read_text())
    assert board["schemaVersion"] >= 36 and board["title"]
    datasources = {json.dumps(t.get("datasource", panel.get("datasource")))
                   for panel in board["panels"] for t in panel.get("targets", [])}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${DS_PROMETHEUS}"})}, datasources
    queries = grafana_queries(board)
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    queries += [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    assert len(queries) >= 20
    deadline = time.monotonic() + 60
    while True:  # Serve's and the Scheduler's series appear within seconds of their first record
        exported = exported_names(scrape(metrics_server))
        missing = {(title, name) for title, expr in queries for name in metric_names(expr) if name not in exported}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"names no scrape has: {sorted(missing)}"
    def base(names: set[str]) -> set[str]:
        return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}

    ours = {n for n in exported if n.startswith("ray_energyopt_")}
    shown = {n for _, expr in grafana_queries(board) for n in metric_names(expr)}
    assert base(ours) - base(shown) == set(), "a metric no panel shows"


def test_metric_names_are_read_from_promql():
    assert metric_names('sum by (le, method) (rate(ray_a_bucket{method=~"X|Y"}[5m])) / on () group_left () '
                        '1.5 * max(ray_b and on (model) (ray_c == 1)) > 2 * 3600') == {"ray_a_bucket", "ray_b", "ray_c"}
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(ray_x[$__rate_interval])))') == {"ray_x"}
    assert metric_names("count(ray_y unless ray_y offset 30m) >= 3 * 1e3") == {"ray_y"}


def test_every_http_route_is_counted_as_the_rpc_it_mirrors():
    """`mirrored_rpc` finds one RPC in each `_api` route's body (routes added later included), so no
    route is labelled with its own function name."""
    from serving.app import Forecaster
    from serving.metrics import mirrored_rpc, rpc_names

    # the class as written (Serve's ingress subclasses it)
    written = next(c for c in Forecaster.func_or_class.__mro__ if "http_forecast_region" in vars(c))
    routes = {name: f.__wrapped__ for name, f in vars(written).items()
              if name.startswith("http_") and hasattr(f, "__wrapped__")}
    assert len(routes) >= 12, sorted(routes)
    labels = {name: mirrored_rpc(route) for name, route in routes.items()}
    assert all(label in rpc_names() for label in labels.values()), labels
    assert labels["http_forecast_region_get"] == labels["http_forecast_region"] == "ForecastRegion"
    assert labels["http_forecast_accuracy"] == "GetForecastAccuracy"


def test_store_gauges_on_the_wall_and_the_data_clock(tmp_path: Path):
    """StoreGauges on a real store: data age against the wall clock and against the region's newest reading,
    and an open zero_readings event that drops back to 0 once a valid reading closes it."""
    from serving.metrics import StoreGauges, app_metrics
    from serving.scans import Scanner, record_rejected_zeros

    store = Store.open(tmp_path / "store.db")
    try:
        t0 = int(pd.Timestamp("2024-03-01T12:00:00Z").timestamp())
        specs = [ZoneSpec("A", "R", 3600, "UTC"), ZoneSpec("B", "R", 3600, "UTC")]
        store.ingest(["A", "B"], ["2024-03-01T12:00:00Z", "2024-03-01T10:00:00Z"], [100.0, 90.0], register=specs,
                     now=t0)
        gauges, m = StoreGauges(store), app_metrics()
        assert gauges.freshness("wall", now=t0 + 600) == {"A": 600, "B": 2 * 3600 + 600}
        assert m.newest_reading.value({"region": "R", "zone": "B"}) == t0 - 7200
        assert gauges.freshness("data") == {"A": 0, "B": 7200}
        assert m.data_age.value({"region": "R", "zone": "B"}) == 7200
        zero_tags = {"region": "R", "zone": "B", "kind": "zero_readings"}
        assert m.open_anomalies.value(zero_tags) == 0
        record_rejected_zeros(store, store.ingest(["B"], ["2024-03-01T11:00:00Z"], [0.0], now=t0), now=t0)
        gauges.freshness("data")
        assert m.open_anomalies.value(zero_tags) == 1
        store.ingest(["B"], ["2024-03-01T12:00:00Z"], [95.0], now=t0)
        asyncio.run(Scanner(store).scan(None))  # a valid reading closes the event at the next scan
        gauges.freshness("data")
        assert m.open_anomalies.value(zero_tags) == 0 and m.data_age.value({"region": "R", "zone": "B"}) == 0
        # a zone removed from the store leaves the gauges (no last value exported for ever)
        from models.events import forget_zones
        from models.store import readings_table, zones_table

        with store.engine.begin() as conn:
            forget_zones(conn, ["B"])
            conn.execute(readings_table.delete().where(readings_table.c.zone == "B"))
            conn.execute(zones_table.delete().where(zones_table.c.zone == "B"))
        assert gauges.freshness("data") == {"A": 0}
        assert m.data_age.value({"region": "R", "zone": "B"}) is None and m.open_anomalies.value(zero_tags) is None
        assert m.data_age.value({"region": "R", "zone": "A"}) == 0
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- D: reasons

def test_every_rejection_reason_of_the_store_has_a_class(tmp_path: Path):
    """Each reason class from a real ingest (one batch per case, after ten days of readings that give the
    absurd-value rule its reference), and the two that only a batch can give (a repeated reading, a
    repeated wall-clock hour appearing once)."""
    store = Store.open(tmp_path / "store.db")
    start = pd.Timestamp("2024-02-20T00:00:00Z")
    stamps = [(start + pd.Timedelta(hours=h)).isoformat() for h in range(240)]
    store.ingest(["A"] * 240, stamps, [100.0 + h % 5 for h in range(240)],
                 register=[ZoneSpec("A", "R", 3600, "UTC"), ZoneSpec("NY", "R_NY", 3600, "America/New_York")])
    cases = {
        "not_finite": [("A", "2024-02-29T10:00:00Z", float("nan"))],
        "unknown_zone": [("B", "2024-02-29T10:00:00Z", 100.0)],
        "bad_time": [("A", "yesterday", 100.0)],
        "off_grid": [("A", "2024-02-29T10:30:00Z", 100.0)],
        "future": [("A", "2099-01-01T00:00:00Z", 100.0)],
        "repeated": [("A", "2024-02-29T11:00:00Z", 101.0), ("A", "2024-02-29T11:00:00Z", 102.0)],
        "not_positive": [("A", "2024-02-29T12:00:00Z", -1.0)],
        "absurd": [("A", "2024-02-29T13:00:00Z", 1e9)],
    }
    daylight = [[("NY", "2024-03-10T02:00:00", 100.0)], [("NY", "2024-11-03T01:00:00", 100.0)]]  # skipped; once
    try:
        found = {}
        for name, rows in [*cases.items(), *(("bad_time", rows) for rows in daylight)]:
            result = store.ingest([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
            assert len(result.rejected) == 1, (name, result)
            found.setdefault(name, []).append(reason_class(result.rejected[0].reason))
    finally:
        store.close()
    assert found == {name: [name] * (3 if name == "bad_time" else 1) for name in cases}
    assert reason_class("something new") == OTHER_REASON
