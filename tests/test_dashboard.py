"""The operator dashboard (`GET /`, serving/dashboard/) in a real headless Chromium, driven by Playwright,
against a live server: every check compares what the page drew with what the HTTP API serves.

The server: `python -m serving.server` in a subprocess of its own (tests/servers.py), one Forecaster replica,
on PJM's five bundled zones from 2018-06-01, seeded up to FEED_FROM; the rest (49 hours) is replayed into it
with `energyopt replay` when the module starts, and the Scheduler, on the data clock, issues and archives a
forecast for every replayed hour. The model is a seasonal-naive bundle (nothing to train), which serves any
zone, so the 100-zone timing runs on the same server: region SYN100, 100 synthetic zones registered and fed
through IngestReadings by that test only. The tests feed readings of their own (a distinctive value, a flat
line, a zero) at the hours after the replay, and the last one stops the server for real.

Chromium: the system's (CHROMIUM, as CI installs it) through `playwright.sync_api`; one browser per module, a
fresh context per test. Screenshots of every page go to the test's temporary directory and, when
ENERGYOPT_SCREENSHOTS=DIR is set, to DIR as dashboard-<page>.png (the README's images: docs/img).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from servers import REPO, ServerProcess, running, schedule_config, server_process

from serving.api.energyopt.v1 import readings_pb2 as rpb
from serving.client import ReadingsClient

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright drives the browser (the dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # the system's (.ci/run installs it)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")

REGION, TIME_ZONE = "PJM", "America/New_York"
HISTORY_FROM = "2018-06-01"  # the seeded history starts here: the model reads two weeks, the overview shows one
FEED_FROM = "2018-08-01 00:00"  # seeded before this (wall clock, as the data gives it); replayed from it on
BIG_REGION, BIG_ZONES, BIG_HOURS = "SYN100", 100, 400
PAGES = ("overview", "accuracy", "anomalies", "dispatch", "model")
HOUR_S = 3600


# ---------------------------------------------------------------------------------------------- the service

@dataclass
class Service:
    """The running server and what the tests need of it: its URL, a readings client and JSON reads."""

    server: ServerProcess
    url: str
    readings: ReadingsClient
    tmp: Path

    def get(self, path: str, **params: Any) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}{'?' + query if query else ''}", timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def last_readings(self, region: str = REGION) -> dict[str, int]:
        """zone -> its newest reading (UTC seconds)."""
        return {z["spec"]["zone"]: _epoch(z["last_reading"]) for z in self.get("/v1/zones", region=region)["zones"]}

    def newest_forecast(self, region: str = REGION) -> dict | None:
        found = self.get("/v1/forecasts", region=region, scheduled_only="true", limit=1).get("forecasts", [])
        return found[0] if found else None


def _epoch(text: str, tz: str = "UTC") -> int:
    """UTC seconds of an ISO 8601 time; one without an offset is wall-clock time in `tz` (forecast hours)."""
    stamp = pd.Timestamp(text)
    return int((stamp.tz_localize(tz) if stamp.tz is None else stamp).timestamp())


def eventually(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.25) -> Any:
    """`check()`'s first result that is not falsy and raised no AssertionError, within `timeout_s`; else the
    last AssertionError (or a failure naming `what`)."""
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError as err:
            last = err
        if time.monotonic() > deadline:
            if last is not None:
                raise last
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)


def _seasonal_naive(data: Path, out: Path) -> Path:
    """The seasonal-naive bundle (same hour last week; quantiles from week-on-week changes): built, not trained."""
    from training.config import load_config
    from training.pipeline import train

    config = load_config(model="seasonal_naive", **{"data.val_days": 7, "data.test_days": 7})
    train(config, data, out, progress=False, evaluate=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("dashboard")
    frame = pd.read_parquet(REPO / "models" / "assets" / "pjm_hourly.parquet")
    frame = frame[frame["timestamp"] >= HISTORY_FROM]
    data = root / "pjm.csv"
    frame.to_csv(data, index=False)
    seeded = root / "seeded.csv"
    frame[frame["timestamp"] < FEED_FROM].to_csv(seeded, index=False)
    bundle = _seasonal_naive(seeded, root / "model")
    args = {"store": str(root / "store.db"), "data": str(data), "seed_until": FEED_FROM, "region": REGION,
            "time_zone": TIME_ZONE}
    server = server_process(root, model=bundle, args=args, replicas=1, config=schedule_config(
        root, clock="data", poll_s=0.5, horizon=48, scan_every_s=2))  # a forecast per replayed hour; quick scans
    with running(server):
        readings = ReadingsClient(f"127.0.0.1:{server.grpc_port}", timeout=60)
        service = Service(server, f"http://127.0.0.1:{server.http_port}", readings, root)
        replay = subprocess.run([sys.executable, "-m", "energyopt", "replay", "--data", str(data), "--from", FEED_FROM,
                                 "--speed", "100", "--server", f"127.0.0.1:{server.grpc_port}"],
                                cwd=REPO, capture_output=True, text=True, timeout=180)
        assert replay.returncode == 0 and "replayed 49 hours" in replay.stdout, replay.stdout + replay.stderr
        last = service.last_readings()
        assert set(last) == {"AEP", "COMED", "DAYTON", "DOM", "EKPC"}
        assert max(last.values()) == _epoch("2018-08-03T00:00", TIME_ZONE)

        def issued_from_the_newest_readings() -> bool:  # the data clock has caught up with the replay
            newest = service.newest_forecast()
            return newest is not None and all(_epoch(z["last_reading"]) == last[z["name"]] for z in newest["zones"])

        eventually(issued_from_the_newest_readings, 90, "a scheduled forecast from the replayed readings")
        try:
            yield service
        finally:
            readings.close()


def _next_hour(service: Service, zone: str) -> tuple[int, float]:
    """The hour after `zone`'s newest reading and that reading's value."""
    last = service.last_readings()[zone]
    value = service.get("/v1/readings", region=REGION, zones=zone, hours=1)["series"][0]["values"][-1]
    return last + HOUR_S, float(value)


def _ingest(service: Service, readings: list[tuple[str, int, float]]) -> rpb.IngestAck:
    return service.readings.ingest([(zone, pd.Timestamp(ts, unit="s", tz="UTC").isoformat(), value)
                                    for zone, ts, value in readings])


# ---------------------------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Page:
    """A page of its own browser context (nothing cached from another test) and what its console said."""

    page: Any
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def chart(self, name: str) -> dict | None:
        """The chart's uPlot data (x: UTC seconds, then one column per series), labels and attributes."""
        return self.page.evaluate("""(name) => {
            const u = window.energyopt && window.energyopt.charts[name];
            const node = document.querySelector(`[data-chart="${name}"]`);
            if (!u || !node) return null;
            const box = node.getBoundingClientRect();
            return { x: Array.from(u.data[0]), columns: u.data.slice(1).map((c) => Array.from(c)),
                     labels: u.series.slice(1).map((s) => s.label), points: node.dataset.points,
                     series: node.dataset.series, marks: node.dataset.marks,
                     box: { left: box.left, right: box.right, width: box.width } };
        }""", name)

    def timings(self) -> dict:
        return self.page.evaluate("() => ({ ...window.energyopt.timings })")


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Page]]:
    contexts = []

    def open_(url: str, width: int = 1366, height: int = 768) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = Page(context.new_page())
        page.page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.page.on("pageerror", lambda err: page.errors.append(f"uncaught: {err}"))
        page.page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


def _wait_overview(page: Page, timeout_s: float = 20) -> None:
    page.page.wait_for_function("() => window.energyopt && window.energyopt.timings.overviewData > 0",
                                timeout=timeout_s * 1000)


def _pairs(chart: dict, label: str) -> dict[int, float]:
    """The series `label` of a chart as {UTC seconds: value} over its finite points."""
    column = chart["columns"][chart["labels"].index(label)]
    return {int(x): v for x, v in zip(chart["x"], column, strict=True) if v is not None and np.isfinite(v)}


def _finite(chart: dict) -> int:
    return sum(1 for column in chart["columns"] for v in column if v is not None and np.isfinite(v))


# ---------------------------------------------------------------------------------------------- the tests

def _expected_overview(service: Service) -> tuple[dict[str, dict[int, float]], dict]:
    """Per zone (and TOTAL: the zones' sum at the hours every zone reported) the readings the overview shows,
    from GET /v1/readings, and the newest archived forecast."""
    answer = service.get("/v1/readings", region=REGION, hours=168)
    readings = {s["zone"]: {_epoch(t): float(v) for t, v in zip(s["timestamps"], s["values"], strict=True)}
                for s in answer["series"]}
    common = set.intersection(*(set(r) for r in readings.values()))
    readings["TOTAL"] = {t: sum(r[t] for zone, r in readings.items()) for t in sorted(common)}
    return readings, service.newest_forecast()


def _check_chart(chart: dict | None, readings: dict[int, float], forecast: dict) -> None:
    assert chart is not None, "the chart is not drawn"
    assert chart["labels"] == ["readings", "forecast", "q10", "q90"], chart["labels"]
    assert chart["series"] == "readings,forecast,q10,q90"
    drawn = _pairs(chart, "readings")
    assert drawn.keys() == readings.keys()
    assert list(drawn.values()) == pytest.approx([readings[t] for t in drawn], rel=1e-12)
    hours = [_epoch(t, TIME_ZONE) for t in forecast["timestamps"]]
    bands = {round(float(q["level"]), 6): q["values"] for q in forecast["quantiles"]}
    for label, values in (("forecast", forecast["point"]), ("q10", bands[0.1]), ("q90", bands[0.9])):
        assert _pairs(chart, label) == pytest.approx(dict(zip(hours, map(float, values), strict=True)), rel=1e-9), label
    assert int(chart["points"]) == _finite(chart) == len(readings) + 3 * len(hours)


def test_the_overview_draws_every_zone_s_served_readings_and_forecast(service: Service, open_page):
    page = open_page(f"{service.url}/")
    _wait_overview(page)
    zones = sorted(service.last_readings())

    def drawn_as_served() -> bool:  # the page polls: compare once it drew the state the API serves now
        readings, forecast = _expected_overview(service)
        by_zone = {f["name"]: f for f in forecast["zones"]} | {"TOTAL": forecast["total"]}
        for zone in [*zones, "TOTAL"]:
            name = "overview-total" if zone == "TOTAL" else f"overview-zone-{zone}"
            _check_chart(page.chart(name), readings[zone], by_zone[zone])
        return True

    eventually(drawn_as_served, 15, "the overview charts equal to the API's answers")
    assert len(page.chart("overview-total")["x"]) >= 168
    status = page.page.locator("#status")
    assert status.get_attribute("data-state") == "ok" and status.inner_text().startswith("Updated ")
    assert page.page.locator('[data-message="overview"]').is_hidden()
    rows = page.page.locator('table[data-table="freshness"] tr[data-zone]')
    assert sorted(rows.evaluate_all("(rs) => rs.map((r) => r.dataset.zone)")) == zones
    assert rows.evaluate_all("(rs) => rs.map((r) => r.dataset.fallback)") == ["false"] * len(zones)
    last = pd.Timestamp(service.last_readings()["AEP"], unit="s").strftime("%Y-%m-%d %H:%M")
    assert last in page.page.locator('table[data-table="freshness"] tr[data-zone="AEP"]').inner_text()
    assert page.errors == []


def test_an_ingested_reading_is_on_the_page_within_10_s(service: Service, open_page):
    page = open_page(f"{service.url}/")  # the default poll: every 2 s
    _wait_overview(page)
    hour, last = _next_hour(service, "AEP")
    value = round(last * 1.0137, 1) + 0.25  # distinctive, and within the ingest's absurd-value rule
    ack = _ingest(service, [("AEP", hour, value)])
    assert ack.inserted == 1 and not ack.rejected, ack
    sent = time.monotonic()

    def on_the_chart() -> bool:
        return _pairs(page.chart("overview-zone-AEP") or {"x": [], "columns": [[]], "labels": ["readings"]},
                      "readings").get(hour) == value

    eventually(on_the_chart, 10, f"AEP's reading {value} at {hour} on the overview chart", every_s=0.1)
    print(f"\ningested reading on the page after {time.monotonic() - sent:.2f} s (poll every 2 s)")
    assert page.errors == []


def test_an_anomaly_in_the_feed_is_listed_and_marked_on_its_zone_s_chart(service: Service, open_page):
    """A stuck meter (DAYTON: its last value five more hours: a flat line, found by the scan on arrival) and a
    zero reading (COMED: refused by the ingest, stored as a zero_readings event at once)."""
    flat_from, value = _next_hour(service, "DAYTON")
    zero_at, _ = _next_hour(service, "COMED")
    ack = _ingest(service, [*(("DAYTON", flat_from + k * HOUR_S, value) for k in range(5)), ("COMED", zero_at, 0.0)])
    assert ack.inserted == 5 and [r.zone for r in ack.rejected] == ["COMED"], ack

    def events() -> dict[str, dict]:
        found = {e["zone"]: e for e in service.get("/v1/anomalies/events", region=REGION).get("events", [])
                 if (e["zone"], e["kind"]) in (("DAYTON", "flat_line"), ("COMED", "zero_readings"))}
        assert set(found) == {"DAYTON", "COMED"}, found
        assert _epoch(found["DAYTON"]["end"]) == flat_from + 4 * HOUR_S, found["DAYTON"]  # the scan saw all 5 h
        return found

    expected = eventually(events, 30, "the flat line and the zero reading among the anomaly events")
    assert _epoch(expected["COMED"]["start"]) == zero_at
    page = open_page(f"{service.url}/?poll=1000#anomalies")

    def listed() -> list[dict]:
        every = service.get("/v1/anomalies/events", region=REGION).get("events", [])
        rows = page.page.locator('table[data-table="anomalies"] tr[data-event-id]')
        assert rows.evaluate_all("(rs) => rs.map((r) => r.dataset.eventId)") == [e["id"] for e in every]
        return every

    every = eventually(listed, 15, "the anomalies table listing the API's events")
    assert page.page.locator('[data-page="anomalies"]').is_visible()
    for zone, event in expected.items():
        cells = page.page.locator(f'tr[data-event-id="{event["id"]}"] td').all_inner_texts()
        start = pd.Timestamp(event["start"]).strftime("%Y-%m-%d %H:%M")
        end = pd.Timestamp(event["end"]).strftime("%Y-%m-%d %H:%M")
        assert cells[:4] == [zone, event["kind"], start, end], cells
        assert cells[4] == f"{float(event['severity']):.0f} h"
        assert cells[6] == ("open" if event.get("open") else "closed")
    readings = {s["zone"]: s for s in service.get("/v1/readings", region=REGION, hours=168)["series"]}
    for zone in expected:
        chart = eventually(lambda z=zone: page.chart(f"anomaly-{z}"), 10, f"the anomaly chart of {zone}")
        first, last = _epoch(readings[zone]["timestamps"][0]), _epoch(readings[zone]["timestamps"][-1])
        spans = [(_epoch(e["start"]), _epoch(e["end"]) + HOUR_S) for e in every if e["zone"] == zone]
        assert int(chart["marks"]) == sum(1 for s, e in spans if e > first and s <= last + HOUR_S) >= 1
        assert _pairs(chart, "readings") == pytest.approx(
            {_epoch(t): v for t, v in zip(readings[zone]["timestamps"], readings[zone]["values"], strict=True)})
    flat = _pairs(page.chart("anomaly-DAYTON"), "readings")
    assert [flat[flat_from + k * HOUR_S] for k in range(5)] == [value] * 5  # the stuck meter is on the chart
    assert page.errors == []


def test_the_accuracy_and_model_pages_show_the_api_s_figures(service: Service, open_page):
    page = open_page(f"{service.url}/?poll=1000#accuracy")
    zone = sorted(service.last_readings())[0]  # the zone picker starts at the region's first zone

    def drawn_as_served() -> bool:
        rows = service.get("/v1/forecasts/accuracy", region=REGION, window_days=7).get("rows", [])
        assert rows, "no live accuracy yet"
        buckets = sorted({(int(r["first_step"]), int(r["last_step"])) for r in rows})
        mape = {(r["zone"], int(r["first_step"])): float(r["mape"]) for r in rows}
        chart = page.chart("accuracy-buckets")
        assert chart is not None and chart["labels"][:2] == ["TOTAL MAPE %", f"{zone} MAPE %"], chart
        assert chart["columns"][0] == pytest.approx([mape[("TOTAL", a)] for a, _ in buckets], rel=1e-9)
        assert chart["columns"][1] == pytest.approx([mape[(zone, a)] for a, _ in buckets], rel=1e-9)
        # forecast vs actual: each archived forecast drawn is the archive's, beside the readings
        archived = {pd.Timestamp(f["issue_time"]).strftime("%Y-%m-%d %H:%M"): f for f in service.get(
            "/v1/forecasts", region=REGION, scheduled_only="true", limit=1000)["forecasts"]}
        total = page.chart("accuracy-TOTAL")
        readings, _ = _expected_overview(service)
        assert _pairs(total, "readings") == pytest.approx(readings["TOTAL"], rel=1e-12)
        issued = [label for label in total["labels"] if label.startswith("issued ")]
        assert len(issued) >= 3, total["labels"]
        for label in issued:
            f = archived[label.removeprefix("issued ")]["total"]
            hours = [_epoch(t, TIME_ZONE) for t in f["timestamps"]]
            assert _pairs(total, label) == pytest.approx(dict(zip(hours, map(float, f["point"]), strict=True)))
        return True

    eventually(drawn_as_served, 15, "the accuracy page's charts equal to the API's answers")
    assert page.page.locator('[data-message="accuracy"]').is_hidden()
    page.page.evaluate("() => { location.hash = 'model'; }")
    model = service.get("/v1/model")
    page.page.locator('table[data-table="model"] tr[data-key="name"]').wait_for()
    shown = dict(page.page.locator('table[data-table="model"] tr[data-key]').evaluate_all(
        "(rows) => rows.map((r) => [r.dataset.key, r.querySelector('td').textContent])"))
    assert (shown["name"], shown["version"], shown["max horizon"], shown["quantiles"]) == (
        model["name"], model["version"], f"{model['max_horizon']} h", ", ".join(f"{q:g}" for q in model["quantiles"]))
    assert page.errors == []


FLEET = """\
name,zone,zone_share,battery_kwh,soc_min_kwh,soc_initial_kwh,soc_terminal_kwh,charge_kw,discharge_kw,demand_charge
Test plant,AEP,0.0002,1500,150,750,750,400,400,12
Test depot,DOM,0.0001,800,80,400,400,200,200,8
"""


def test_the_dispatch_page_schedules_an_uploaded_fleet_and_names_a_bad_csv(service: Service, open_page,
                                                                          tmp_path: Path):
    page = open_page(f"{service.url}/#dispatch")
    page.page.wait_for_function("() => window.energyopt.lastUpdate !== null")
    fleet = tmp_path / "my-fleet.csv"
    fleet.write_text(FLEET)
    page.page.set_input_files('input[data-input="fleet-csv"]', str(fleet))
    with page.page.expect_request("**/v1/dispatch") as sent:
        page.page.click('button[data-action="optimize"]')
    summary = page.page.locator('[data-summary="dispatch"]')
    summary.wait_for(state="visible", timeout=60_000)
    body = json.loads(sent.value.post_data)
    rows = [line.split(",") for line in FLEET.strip().splitlines()]
    header = rows[0]
    assert [(s["name"], s["zone"]) for s in body["sites"]] == [(r[0], r[1]) for r in rows[1:]]
    for site, row in zip(body["sites"], rows[1:], strict=True):  # the CSV's numbers, as sent
        assert {k: site[k] for k in header[2:]} == {k: float(v) for k, v in zip(header[2:], row[2:], strict=True)}
        assert len(site["import_price"]) == 48

    status, answer = service.post("/v1/dispatch", body)  # the same sites, straight to the API
    assert status == 200, answer
    optimal = [s for s in answer["sites"] if s["status"] == "optimal"]
    assert len(optimal) == 2
    shown = {k: float(summary.get_attribute(f"data-{k}")) for k in ("cost", "cost-without", "peak", "peak-without")}
    assert shown == pytest.approx({"cost": answer["total_cost"], "cost-without": answer["total_cost_without_battery"],
                                   "peak": sum(s["peak_kw"] for s in optimal),
                                   "peak-without": sum(s["peak_without_battery_kw"] for s in optimal)}, rel=1e-6)
    assert shown["cost"] < shown["cost-without"]  # the batteries pay for themselves
    chart = page.chart("dispatch-schedule")  # the first site's schedule
    site = optimal[0]
    assert chart["labels"][:5] == ["load kW", "import kW", "charge kW", "discharge kW", "SoC kWh"]
    for label, key in (("load kW", "load_kw"), ("import kW", "import_kw"), ("SoC kWh", "soc_kwh")):
        column = chart["columns"][chart["labels"].index(label)]
        assert column == pytest.approx([float(v) for v in site[key]], rel=1e-6, abs=1e-6), label
    assert int(chart["points"]) == _finite(chart) >= 6 * 48
    assert page.errors == []

    bad = tmp_path / "bad-fleet.csv"
    bad.write_text(FLEET.replace("Test depot,DOM,0.0001,800", "Test depot,DOM,0.0001,lots"))
    page.page.set_input_files('input[data-input="fleet-csv"]', str(bad))
    page.page.click('button[data-action="optimize"]')
    message = page.page.locator('[data-message="dispatch"]')
    expect = 'bad-fleet.csv, row 3, column battery_kwh: "lots" is not a number'
    eventually(lambda: expect in message.inner_text(), 10, f"the message {expect!r}")
    assert message.is_visible()
    unknown = tmp_path / "elsewhere.csv"
    unknown.write_text(FLEET.replace(",AEP,", ",NOPE,"))
    page.page.set_input_files('input[data-input="fleet-csv"]', str(unknown))
    page.page.click('button[data-action="optimize"]')
    eventually(lambda: 'row 2, column zone: "NOPE" is not a zone of region PJM' in message.inner_text(), 10,
               "the unknown zone named")


def _ready(page: Page, name: str) -> None:
    """Wait until page `name` shows what it loads (a chart, rows, or its message)."""
    what = {"overview": '[data-chart="overview-total"][data-points]',
            "accuracy": '[data-chart="accuracy-TOTAL"][data-points], [data-message="accuracy"]:not([hidden])',
            "anomalies": 'table[data-table="anomalies"] tr[data-event-id], [data-message="anomalies"]:not([hidden])',
            "dispatch": '[data-summary="dispatch"]:not([hidden]), [data-message="dispatch"]:not([hidden])',
            "model": 'table[data-table="model"] tr'}[name]
    page.page.locator(f'section[data-page="{name}"]').wait_for(state="visible")
    page.page.locator(what).first.wait_for(state="attached", timeout=20_000)


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (390, 844)])
def test_every_page_fits_the_viewport_and_is_screenshot(service: Service, open_page, width: int, height: int,
                                                        tmp_path: Path):
    page = open_page(f"{service.url}/?region={REGION}", width, height)
    _wait_overview(page)
    extra = os.environ.get("ENERGYOPT_SCREENSHOTS")  # e.g. docs/img, the README's pictures
    shots = [tmp_path, *([Path(extra)] if extra else [])]
    for name in PAGES:
        page.page.evaluate("(name) => { location.hash = name; }", name)
        _ready(page, name)
        if name == "dispatch" and width == 1366:  # the bundled example fleet, for a schedule on the picture
            page.page.click('button[data-action="optimize"]')
            page.page.locator('[data-summary="dispatch"]').wait_for(state="visible", timeout=60_000)
            assert "5 of 5 sites scheduled" in page.page.locator('[data-summary="dispatch"]').inner_text()
        page.page.wait_for_timeout(300)  # charts resized to the page (a ResizeObserver)
        layout = page.page.evaluate("""() => ({
            scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
            charts: [...document.querySelectorAll('[data-chart]')].filter((n) => n.offsetParent !== null)
                .map((n) => { const b = n.getBoundingClientRect();
                              return { name: n.dataset.chart, left: b.left, right: b.right }; }) })""")
        assert layout["scroll"] <= layout["inner"], (name, width, layout["scroll"], layout["inner"])
        outside = [c for c in layout["charts"] if c["left"] < 0 or c["right"] > layout["inner"] + 0.5]
        assert not outside, (name, width, outside)
        if width == 1366:
            for folder in shots:
                folder.mkdir(parents=True, exist_ok=True)
                page.page.screenshot(path=str(folder / f"dashboard-{name}.png"))
    if width == 1366:
        sizes = {p.name: p.stat().st_size for p in tmp_path.glob("dashboard-*.png")}
        assert len(sizes) == len(PAGES) and max(sizes.values()) < 300_000, sizes
    assert page.errors == []


def _load_timings(page: Page) -> dict:
    _wait_overview(page, 30)
    return page.timings()


def test_first_paint_and_overview_data_are_measured_with_pjm_and_with_100_zones(service: Service, open_page):
    cold = open_page(f"{service.url}/?region={REGION}")
    first = _load_timings(cold)
    cold.page.reload()
    warm = _load_timings(cold)
    _big_region(service)
    cold_big = open_page(f"{service.url}/?region={BIG_REGION}")
    first_big = _load_timings(cold_big)
    cold_big.page.reload()
    warm_big = _load_timings(cold_big)
    measured = {"PJM": {"zones": 5, "cold": first, "warm": warm},
                BIG_REGION: {"zones": BIG_ZONES, "cold": first_big, "warm": warm_big}}
    print(f"\ndashboard timings (ms since navigation): {measured}")
    # The figures, not bounds: speed targets live in benchmarks (benchmarks/dashboard.py runs this test with
    # ENERGYOPT_DASHBOARD_TIMINGS set and checks the 1 s / 2 s / 3 s on a quiet machine).
    if os.environ.get("ENERGYOPT_DASHBOARD_TIMINGS"):
        Path(os.environ["ENERGYOPT_DASHBOARD_TIMINGS"]).write_text(json.dumps(measured, indent=1))
    for t in (first, warm, first_big, warm_big):  # both moments recorded, in order
        assert 0 < t["firstPaint"] <= t["overviewData"], t
    # the 100 zones' total is drawn from all of them: the sum of the served readings
    answer = service.get("/v1/readings", region=BIG_REGION, hours=168)
    assert len(answer["series"]) == BIG_ZONES
    total = np.sum([s["values"] for s in answer["series"]], axis=0)
    drawn = _pairs(cold_big.chart("overview-total"), "readings")
    assert list(drawn) == [_epoch(t) for t in answer["series"][0]["timestamps"]]
    assert list(drawn.values()) == pytest.approx(total.tolist(), rel=1e-9)
    assert cold.errors == [] and cold_big.errors == []


def _big_region(service: Service) -> None:
    """Region BIG_REGION: BIG_ZONES synthetic zones of BIG_HOURS hours each, registered and fed through
    IngestReadings; waits for the Scheduler's first forecast of it (so that nothing else runs during the
    measurement)."""
    from training.synthetic import synthetic_load

    frame = synthetic_load(n_zones=BIG_ZONES, hours=BIG_HOURS, seed=11)
    frame["zone"] = "S" + frame["zone"].str[1:]
    stamps = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()
    readings = list(zip(frame["zone"], stamps, frame["load_mw"].astype(float), strict=True))
    register = [rpb.ZoneSpec(zone=z, region=BIG_REGION, time_zone="UTC") for z in sorted(frame["zone"].unique())]
    for i in range(0, len(readings), 10_000):
        ack = service.readings.ingest(readings[i:i + 10_000], register if i == 0 else ())
        assert ack.inserted == min(10_000, len(readings) - i) and not ack.rejected, ack.rejected[:3]
    assert len(service.last_readings(BIG_REGION)) == BIG_ZONES

    def first_forecast() -> dict | None:
        try:
            return service.newest_forecast(BIG_REGION)
        except urllib.error.HTTPError as err:  # 404 until the replica has read the new zones
            assert err.code == 404, err
            return None

    eventually(first_forecast, 90, f"the Scheduler's first forecast of {BIG_REGION}")


def test_a_stopped_service_shows_its_error_not_a_blank_chart(service: Service, open_page):
    """Last: the server is killed for real (kill -9 of its whole process group)."""
    page = open_page(f"{service.url}/?region={REGION}&poll=1000")
    _wait_overview(page)
    drawn = int(page.chart("overview-total")["points"])
    service.server.kill()
    message = page.page.locator('[data-message="overview"]')
    eventually(lambda: message.is_visible() and message.inner_text().startswith("Cannot reach the energyopt API"),
               15, "the overview's message that the API cannot be reached")
    assert "retrying every 1 s" in message.inner_text(), message.inner_text()
    status = page.page.locator("#status")
    assert status.get_attribute("data-state") == "error" and status.inner_text(), status.inner_text()
    assert int(page.chart("overview-total")["points"]) == drawn  # the last data stays drawn, marked stale
    assert any("Cannot reach the energyopt API" in e for e in page.page.evaluate("() => window.energyopt.errors"))
