"""OptimizeDispatch on the session's one Serve application (tests/conftest.py `serve_app`): gRPC and HTTP
answer what the library answers, and bad requests get the forecasting API's status codes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from optimization.problem import synthetic_problems
from optimization.solver import solve
from serving.api.energyopt.v1 import dispatch_pb2 as pb
from serving.api.energyopt.v1 import dispatch_pb2_grpc as pb_grpc
from serving.dispatch import optimize, problems_from_request

FIELDS = ("charge_kw", "discharge_kw", "soc_kwh", "import_kw", "export_kw", "flex_kw")


@pytest.fixture(scope="module")
def stub(serve_app):
    with grpc.insecure_channel(serve_app.target) as channel:
        yield pb_grpc.DispatchServiceStub(channel)


def request_for(n: int = 4, horizon: int = 24, seed: int = 3) -> pb.OptimizeDispatchRequest:
    p = synthetic_problems(n, horizon, seed=seed)
    request = pb.OptimizeDispatchRequest(step_minutes=60)
    for i in range(n):
        site = request.sites.add(
            name=p.site[i], load_kw=p.load_kw[i].tolist(), import_price=p.import_price[i].tolist(),
            export_price=p.export_price[i].tolist(), battery_kwh=p.battery_kwh[i], soc_min_kwh=p.soc_min_kwh[i],
            soc_initial_kwh=p.soc_initial_kwh[i], soc_terminal_kwh=p.soc_terminal_kwh[i], charge_kw=p.charge_kw[i],
            discharge_kw=p.discharge_kw[i], charge_efficiency=p.charge_efficiency[i],
            discharge_efficiency=p.discharge_efficiency[i], degradation_cost=p.degradation_cost[i],
            demand_charge=p.demand_charge[i], peak_floor_kw=p.peak_floor_kw[i], flex_kwh_per_day=p.flex_kwh_per_day[i],
            flex_max_kw=p.flex_max_kw[i], flex_allowed=p.flex_allowed[i].tolist())
        if np.isfinite(p.export_limit_kw[i]):
            site.export_limit_kw = p.export_limit_kw[i]
    return request


def test_grpc_returns_the_library_schedules(stub) -> None:
    request = request_for()
    response = stub.OptimizeDispatch(request, timeout=60)
    problems = problems_from_request(request, {})
    library = solve(problems)
    sched = library.schedule()
    assert [s.name for s in response.sites] == problems.site
    for i, site in enumerate(response.sites):
        assert site.status == "optimal"
        np.testing.assert_allclose(site.cost, library.objective[i], rtol=1e-9)
        for field in FIELDS:
            np.testing.assert_allclose(getattr(site, field), sched[field][i], rtol=1e-7, atol=1e-6)
    baseline = solve(problems.without_battery())
    np.testing.assert_allclose([s.cost_without_battery for s in response.sites], baseline.objective, rtol=1e-9)
    assert response.total_cost == pytest.approx(library.objective.sum(), rel=1e-9)


def test_http_returns_what_grpc_returns(serve_app, stub) -> None:
    request = request_for(n=2, seed=4)
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)
    status, answer = _post(serve_app.url + "/v1/dispatch", body)
    assert status == 200
    want = optimize(request)
    for got, site in zip(answer["sites"], want.sites):
        assert got["name"] == site.name and got["status"] == "optimal"
        np.testing.assert_allclose(got["soc_kwh"], site.soc_kwh, rtol=1e-7, atol=1e-6)
    status, error = _post(serve_app.url + "/v1/dispatch", {"sites": []})
    assert status == 400 and error["code"] == "INVALID_ARGUMENT" and "sites" in error["message"]


def test_a_zone_site_uses_the_servers_forecast_and_infeasible_sites_come_back_with_a_reason(stub) -> None:
    request = pb.OptimizeDispatchRequest()
    request.sites.add(name="zone-site", zone="Z001", zone_share=0.001, import_price=[0.1] * 12 + [0.3] * 12,
                      battery_kwh=500, soc_initial_kwh=250, charge_kw=100, discharge_kw=100, demand_charge=5)
    request.sites.add(name="stuck", load_kw=[50.0] * 24, import_price=[0.2] * 24, battery_kwh=100,
                      soc_initial_kwh=0, soc_terminal_kwh=100, charge_kw=1, discharge_kw=1)
    response = stub.OptimizeDispatch(request, timeout=60)
    zone_site, stuck = response.sites
    assert zone_site.status == "optimal" and len(zone_site.load_kw) == 24 and min(zone_site.load_kw) > 0
    assert stuck.status == "infeasible" and "terminal state of charge" in stuck.reason


def _bad(**change: Any) -> pb.OptimizeDispatchRequest:
    request = request_for(n=2)
    site = request.sites[1]
    for key, value in change.items():
        if isinstance(value, list):
            del getattr(site, key)[:]
            getattr(site, key).extend(value)
        else:
            setattr(site, key, value)
    return request


@pytest.mark.parametrize("request_, code, field", [
    (pb.OptimizeDispatchRequest(), grpc.StatusCode.INVALID_ARGUMENT, "sites"),
    (_bad(name=""), grpc.StatusCode.INVALID_ARGUMENT, "sites[1].name"),
    (_bad(import_price=[0.1] * 5), grpc.StatusCode.INVALID_ARGUMENT, "sites[1].import_price"),
    (_bad(load_kw=[], zone="NOWHERE"), grpc.StatusCode.NOT_FOUND, "sites[1].zone"),
    (_bad(battery_kwh=-5.0), grpc.StatusCode.INVALID_ARGUMENT, "battery_kwh"),
    (_bad(export_price=[9.0] * 24), grpc.StatusCode.INVALID_ARGUMENT, "export_price"),
    (pb.OptimizeDispatchRequest(sites=[pb.DispatchSite(name="long", load_kw=[1.0] * 400, import_price=[0.1] * 400)]),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "import_price"),
])
def test_bad_requests_get_a_status_code_naming_the_field(stub, request_, code, field) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.OptimizeDispatch(request_, timeout=30)
    assert err.value.code() == code
    assert field in err.value.details() and "Traceback" not in err.value.details()


def _post(url: str, body: Any) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
