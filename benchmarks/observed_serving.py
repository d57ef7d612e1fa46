"""Watching the service costs its callers nothing: benchmarks/results/observed_serving.json.

The service (Ray Serve, local Ray in this process, metrics exported on Ray's metrics port) on a store seeded
with the bundled PJM zones and a replayed week (so every dashboard page has data: readings, archived
forecasts, live accuracy). ForecastRegion(PJM, 48 h) p99 at concurrency 8, alternating in one run (and
each of the two alone):

- quiet: nothing else talks to the service;
- observed: the operator dashboard open in a headless Chromium (the overview, polling every 2 s, and the
  forecast-vs-actual page in a second tab) while a real Prometheus scrapes the metrics every 5 s.

Must hold: p99 observed within 1.2x of quiet. Also measured: the dashboard's first paint and the overview's
data in the browser (PJM), and that Prometheus's scrapes succeeded.

    python benchmarks/observed_serving.py            # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import demo_forecaster, write_result  # noqa: E402
from benchmarks.live_accuracy import p99_closed_loop  # noqa: E402

FROM, REPLAY_DAYS, REGION = "2018-06-01T00:00:00", 7, "PJM"
LATENCY_RATIO_MAX = 1.2
SCRAPE_INTERVAL_S = 5

# The dashboard in a browser of its own (a subprocess: Playwright's sync API owns its thread). It prints the
# page's timings once the overview has drawn; then each line on stdin, "open" or "close", opens the dashboard
# in both tabs or leaves them on about:blank (so nothing of the browser polls), answered "ok".
BROWSER = r"""
import json, sys
from playwright.sync_api import sync_playwright
url = sys.argv[1]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=sys.argv[2], headless=True)
    pages = [browser.new_page(viewport={"width": 1366, "height": 768}) for _ in range(2)]
    errors = []
    for page in pages:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    pages[0].goto(url + "/?poll=2000#overview")
    pages[0].wait_for_function("window.energyopt?.timings?.overviewData", timeout=60000)
    print(json.dumps({"timings": pages[0].evaluate("window.energyopt.timings"), "errors": errors}), flush=True)
    for line in sys.stdin:
        for page, where in zip(pages, ("#overview", "#accuracy")):
            page.goto(url + "/?poll=2000" + where if line.strip() == "open" else "about:blank")
        print("ok", flush=True)
    browser.close()
"""


def prometheus(metrics_port: int, work: Path) -> tuple[subprocess.Popen, int]:
    """A real Prometheus scraping the service's metrics port every SCRAPE_INTERVAL_S; (process, its port)."""
    from serving.server import free_ports

    port = free_ports(1)[0]
    config = work / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [{"job_name": "energyopt",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}))
    proc = subprocess.Popen([shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def scrapes(prom_port: int) -> dict:
    """Prometheus's own account of the scrapes: targets up, and samples of the last scrape."""
    def query(q: str) -> list:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.request.quote(q)}"
        return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]

    up = query('up{job="energyopt"}')
    samples = query('scrape_samples_scraped{job="energyopt"}')
    app = query('count({__name__=~"ray_energyopt_.+"})')
    return {"up": [float(r["value"][1]) for r in up], "samples_last_scrape": [float(r["value"][1]) for r in samples],
            "energyopt_series": float(app[0]["value"][1]) if app else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    parser.add_argument("--latency-s", type=float, default=20.0, help="Seconds per latency phase.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternations of quiet / observed.")
    a = parser.parse_args()

    from serving import server

    bundle, _ = demo_forecaster(Path(a.model))
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    work = Path(tempfile.mkdtemp(prefix="energyopt-observed-"))
    grpc_port, http_port, metrics_port = server.free_ports(3)
    config = server.load_config(model=a.model, store=work / "store.db", grpc_port=grpc_port, http_port=http_port,
                                replicas=1, args={"seed_until": FROM})
    config = server.with_schedule(config, clock="data", poll_s=0.2, horizon=48, max_late_slots=100_000)
    target, url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    server.start(config, metrics_port=metrics_port, log=print)
    browser = prom = None
    try:
        until = (pd.Timestamp(FROM) + pd.Timedelta(days=REPLAY_DAYS)).isoformat()
        subprocess.run([sys.executable, "-m", "energyopt", "replay", "--from", FROM, "--until", until,
                        "--speed", "48", "--server", target], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        time.sleep(5)  # the scheduler catches up with the last replayed hours
        server.deploy(server.with_schedule(config, enabled=False))  # the same idle schedule in both phases

        prom, prom_port = prometheus(metrics_port, work)
        browser = subprocess.Popen([sys.executable, "-c", BROWSER, url, chromium], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        page = json.loads(browser.stdout.readline())
        print(f"dashboard: first paint {page['timings']['firstPaint']:.0f} ms, overview data "
              f"{page['timings']['overviewData']:.0f} ms, console errors {len(page['errors'])}")
        # quiet: the browser's tabs on about:blank and Prometheus stopped (SIGSTOP), so that the phases differ
        # in nothing else; "dashboard" and "scraped" (one of the two) say where the cost of "observed" is
        # every other round in the reverse order (ABBA), so that a machine drifting faster or slower over the
        # run (this VM does, by 30 % within minutes) weighs on every phase alike; each phase's p99 is its worst
        order = (("quiet", False, False), ("dashboard", True, False), ("scraped", False, True),
                 ("observed", True, True))
        phases = []
        for k in range(a.rounds):
            for name, dashboard, scraped in (order if k % 2 == 0 else order[::-1]):
                browser.stdin.write("open\n" if dashboard else "close\n")
                browser.stdin.flush()
                assert browser.stdout.readline().strip() == "ok"
                prom.send_signal(signal.SIGCONT if scraped else signal.SIGSTOP)
                time.sleep(2)
                result = p99_closed_loop(target, 8, a.latency_s)
                phases.append({"phase": name, **result})
                print(f"{name}: p99 {result['p99_ms']} ms, {result['rps']} req/s, {result['errors']} errors")
        prom.send_signal(signal.SIGCONT)
        time.sleep(SCRAPE_INTERVAL_S + 1)
        scraped = scrapes(prom_port)
        p99 = {n: max(p["p99_ms"] for p in phases if p["phase"] == n)
               for n in ("quiet", "dashboard", "scraped", "observed")}
        ratio = p99["observed"] / p99["quiet"]
        summary = {
            "p99_ms_quiet": p99["quiet"], "p99_ms_observed": p99["observed"], "p99_ratio": round(ratio, 3),
            "p99_ratio_dashboard_only": round(p99["dashboard"] / p99["quiet"], 3),
            "p99_ratio_scraped_only": round(p99["scraped"] / p99["quiet"], 3),
            "observing_costs_no_latency": ratio <= LATENCY_RATIO_MAX,
            "dashboard_first_paint_ms": round(page["timings"]["firstPaint"]),
            "dashboard_overview_data_ms": round(page["timings"]["overviewData"]),
            "dashboard_console_errors": len(page["errors"]),
            "prometheus_targets_up": scraped["up"], "prometheus_energyopt_series": scraped["energyopt_series"],
        }
        out = write_result("observed_serving", {
            "model": bundle.name, "version": bundle.version, "region": REGION, "latency_concurrency": 8,
            "latency_phase_s": a.latency_s, "rounds": a.rounds, "latency_ratio_max": LATENCY_RATIO_MAX,
            "dashboard": "overview (poll 2 s) + forecast vs actual, headless Chromium 1366x768",
            "scrape_interval_s": SCRAPE_INTERVAL_S}, [{"latency": phases}, {"prometheus": scraped},
                                                      {"dashboard": page}], summary)
        print(json.dumps(summary, indent=1))
        print(f"wrote {out}")
    finally:
        if browser is not None:  # end of stdin: the script closes its Chromium, then exits
            browser.stdin.close()
            try:
                browser.wait(20)
            except subprocess.TimeoutExpired:
                browser.kill()
        if prom is not None:
            prom.send_signal(signal.SIGCONT)
            prom.terminate()
            prom.wait(20)
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
