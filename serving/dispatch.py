"""OptimizeDispatch: request validation, the batched solve (`optimization.solver`) and the response.

The replica (`serving.app`) supplies zone forecasts for sites that name a zone instead of sending their
load; everything else happens here, without Serve, so it can be called and tested directly.
Validation follows the forecasting API: INVALID_ARGUMENT with the field's path
(`sites[3].import_price: ...`), NOT_FOUND for an unknown zone, RESOURCE_EXHAUSTED over the limits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from models.kernels import kernels_enabled
from optimization.problem import DispatchProblems, ProblemError
from optimization.solver import SolveDeadlineError, solve
from serving.api.energyopt.v1 import dispatch_pb2 as pb
from serving.engine import ApiError, Limits, invalid, not_found, shown

HOUR_STEPS = 60


@dataclass(frozen=True)
class DispatchLimits:
    max_sites: int = 10_000
    max_values: int = 2_000_000   # sites x steps
    max_horizon: int = 24 * 14    # steps


def zones_needed(request: pb.OptimizeDispatchRequest, known_zones: Sequence[str]) -> dict[str, int]:
    """Zones whose forecast the request needs, with the horizon (steps); checks the zones exist."""
    needed: dict[str, int] = {}
    for i, site in enumerate(request.sites):
        if len(site.load_kw) or not site.zone:
            continue
        if site.zone not in known_zones:
            raise not_found(f"sites[{i}].zone: unknown zone {shown(site.zone)}; this server has {sorted(known_zones)}")
        if (request.step_minutes or HOUR_STEPS) != HOUR_STEPS:
            raise invalid(f"sites[{i}].zone: zone forecasts are hourly; step_minutes must be 60 "
                          f"(got {request.step_minutes})")
        needed[site.zone] = max(needed.get(site.zone, 0), len(site.import_price))
    return needed


def problems_from_request(request: pb.OptimizeDispatchRequest, zone_load_mw: Mapping[str, np.ndarray],
                          limits: DispatchLimits = DispatchLimits()) -> DispatchProblems:
    """The request's sites as a batch; raises ApiError naming the field."""
    sites = request.sites
    if not sites:
        raise invalid("sites: at least one site is required")
    if len(sites) > limits.max_sites:
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"sites: {len(sites)} sites, more than this server's limit of {limits.max_sites}")
    step = request.step_minutes or HOUR_STEPS
    if (24 * 60) % step:
        raise invalid(f"step_minutes: must divide a day, got {step}")
    horizon = len(sites[0].import_price)
    if horizon == 0:
        raise invalid("sites[0].import_price: required (one price per step; its length is the horizon)")
    if horizon > limits.max_horizon:
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"sites[0].import_price: {horizon} steps, more than this server's limit of {limits.max_horizon}")
    if len(sites) * horizon > limits.max_values:
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"sites: {len(sites)} sites x {horizon} steps, more than this server's limit of "
                       f"{limits.max_values} values")
    names, loads, exports, allowed = [], [], [], []
    for i, s in enumerate(sites):
        where = f"sites[{i}]"
        if not s.name:
            raise invalid(f"{where}.name: required")
        if s.name in names:
            raise invalid(f"{where}.name: {shown(s.name)} is used by another site")
        names.append(s.name)
        if len(s.import_price) != horizon:
            raise invalid(f"{where}.import_price: {len(s.import_price)} steps; every site needs the same horizon "
                          f"({horizon}, from sites[0])")
        if len(s.load_kw):
            load = np.asarray(s.load_kw, dtype=np.float64)
        elif s.zone:
            load = (s.zone_share or 1.0) * 1000.0 * np.asarray(zone_load_mw[s.zone][:horizon], dtype=np.float64)
        else:
            raise invalid(f"{where}.load_kw: required (or name a zone whose forecast the server supplies)")
        for field, values in (("load_kw", load), ("export_price", s.export_price), ("flex_allowed", s.flex_allowed)):
            if len(values) not in ((0, horizon) if field != "load_kw" else (horizon,)):
                raise invalid(f"{where}.{field}: {len(values)} values; expected {horizon} (one per step)")
        loads.append(load)
        exports.append(np.asarray(s.export_price, dtype=np.float64) if len(s.export_price) else np.zeros(horizon))
        allowed.append(np.asarray(s.flex_allowed, dtype=bool) if len(s.flex_allowed) else np.ones(horizon, bool))

    def per_site(field: str, default: float | None = None) -> np.ndarray:
        values = np.array([getattr(s, field) for s in sites], dtype=np.float64)
        return np.where(values == 0, default, values) if default is not None else values

    scalars = ("battery_kwh", "soc_min_kwh", "soc_initial_kwh", "soc_terminal_kwh", "charge_kw", "discharge_kw",
               "degradation_cost", "demand_charge", "peak_floor_kw", "flex_kwh_per_day", "flex_max_kw")
    limit_fields = ("import_limit_kw", "export_limit_kw")  # unset: no limit
    try:
        return DispatchProblems(
            site=names, dt_hours=step / 60.0, load_kw=np.stack(loads),
            import_price=np.stack([np.asarray(s.import_price, dtype=np.float64) for s in sites]),
            export_price=np.stack(exports), flex_allowed=np.stack(allowed),
            charge_efficiency=per_site("charge_efficiency", 0.95),
            discharge_efficiency=per_site("discharge_efficiency", 0.95), **{f: per_site(f) for f in scalars},
            **{f: np.array([getattr(s, f) if s.HasField(f) else np.inf for s in sites]) for f in limit_fields})
    except ProblemError as err:  # names the field and the site
        raise invalid(f"sites: {err}") from None


def optimize(request: pb.OptimizeDispatchRequest, zone_load_mw: Mapping[str, np.ndarray] | None = None,
             limits: DispatchLimits = DispatchLimits(), device: str = "cpu",
             deadline_s: float = Limits.deadline_s) -> pb.OptimizeDispatchResponse:
    """Solve the request's sites with and without their batteries and build the response; DEADLINE_EXCEEDED
    once both solves together run past `deadline_s` (the caller has stopped waiting by then)."""
    deadline = time.monotonic() + deadline_s
    problems = problems_from_request(request, zone_load_mw or {}, limits)
    kernel = kernels_enabled(device)  # ENERGYOPT_KERNELS decides, as for the forecasters' kernels
    try:
        solution = solve(problems, device=device, kernel=kernel, deadline=deadline)
        baseline = solve(problems.without_battery(), device=device, kernel=kernel, deadline=deadline)
    except SolveDeadlineError:
        raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                       f"sites: the solve of {problems.n:,} sites ran past this server's {deadline_s:g} s limit "
                       "(deadline_s); send fewer sites or a shorter horizon per request") from None
    with_b, without = solution.schedule(), baseline.schedule()
    response = pb.OptimizeDispatchResponse(solve_seconds=solution.seconds + baseline.seconds)
    for i, name in enumerate(problems.site):
        site = response.sites.add(name=name, status=solution.status[i], reason=solution.reason[i] or "",
                                  iterations=int(solution.iterations[i]), load_kw=problems.load_kw[i].tolist())
        if solution.status[i] != "optimal":
            continue
        site.cost = float(solution.objective[i])
        site.cost_without_battery = float(baseline.objective[i])
        site.peak_kw = float(with_b["import_kw"][i].max())
        site.peak_without_battery_kw = float(without["import_kw"][i].max())
        for field in ("charge_kw", "discharge_kw", "soc_kwh", "import_kw", "export_kw", "flex_kw"):
            getattr(site, field).extend(with_b[field][i].tolist())
        response.total_cost += site.cost
        response.total_cost_without_battery += site.cost_without_battery
    return response
