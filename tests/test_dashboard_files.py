"""The dashboard's static files without a server (the real-browser tests drive the page itself): what
`GET /dashboard/NAME` serves and refuses, the page's references, and the fleet CSV's columns against
DispatchSite in dispatch.proto."""

from __future__ import annotations

import csv
import re

import pandas as pd
import pytest

from serving.api.energyopt.v1 import dispatch_pb2 as dpb
from serving.app import DASHBOARD_DIR, dashboard_file

SERVED = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css",
          "fleet-example.csv": "text/csv", "vendor/uPlot.iife.min.js": "text/javascript",
          "vendor/uPlot.min.css": "text/css", "vendor/LICENSE-uPlot": "text/plain"}


@pytest.mark.parametrize("name", sorted(SERVED))
def test_each_file_is_served_with_its_type_and_caching(name: str):
    response = dashboard_file(name)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == SERVED[name]
    assert str(response.path) == str(DASHBOARD_DIR / name)
    vendored = name.startswith("vendor/")
    assert response.headers["cache-control"] == ("public, max-age=86400" if vendored else "no-cache")
    # revalidation: the same ETag is a 304 without a body, another one the file again
    etag = response.headers["etag"]
    again = dashboard_file(name, f'"other", {etag}')
    assert again.status_code == 304 and again.body == b"" and again.headers["etag"] == etag
    assert dashboard_file(name, '"other"').status_code == 200


@pytest.mark.parametrize("name", ["../app.py", "vendor/../../app.py", "/etc/passwd", "vendor", "", "nope.js",
                                  "x\0y", "../../pyproject.toml"])
def test_anything_else_is_a_404_naming_it(name: str):
    response = dashboard_file(name)
    assert response.status_code == 404
    assert response.body.decode().startswith('{"code":"NOT_FOUND","message":"no dashboard file')


def test_the_page_loads_only_files_that_are_served_and_has_every_page():
    html = (DASHBOARD_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="/dashboard/([^"]+)"', html)
    assert {"app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "fleet-example.csv"} <= set(refs)
    for ref in refs:
        assert dashboard_file(ref).status_code == 200, ref
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html), "no CDN: the page must work offline"
    for page in ("overview", "accuracy", "anomalies", "dispatch", "model"):
        for needle in (f'data-page="{page}"', f'data-nav="{page}"', f'data-message="{page}"'):
            assert needle in html, needle
    assert "(v1.6.32)" in (DASHBOARD_DIR / "vendor" / "uPlot.iife.min.js").read_text()[:100]  # docs name it
    assert "MIT" in (DASHBOARD_DIR / "vendor" / "LICENSE-uPlot").read_text()


def test_fleet_columns_are_dispatch_site_fields():
    """The CSV columns app.js accepts are DispatchSite's scalar fields (export_price: a flat rate), so a field
    renamed in dispatch.proto fails here; the example uses only them, in the bundled PJM data's zones."""
    fields = dpb.DispatchSite.DESCRIPTOR.fields_by_name
    source = (DASHBOARD_DIR / "app.js").read_text()
    numbers = re.search(r"const SITE_NUMBERS = \[(.*?)\];", source, re.S).group(1)
    columns = ["name", "zone", *re.findall(r'"(\w+)"', numbers)]
    scalar = {name for name, f in fields.items() if not f.is_repeated}
    assert set(columns) - {"export_price"} == scalar, set(columns) ^ scalar
    assert "export_price" in fields
    with (DASHBOARD_DIR / "fleet-example.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) <= set(columns)
    zones = set(pd.read_parquet(DASHBOARD_DIR.parent.parent / "models" / "assets" / "pjm_hourly.parquet",
                                columns=["zone"])["zone"])
    assert {r["zone"] for r in rows} <= zones
    assert len({r["name"] for r in rows}) == len(rows)
