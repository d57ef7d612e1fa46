"""The batched dispatch solver against HiGHS, its infeasibility reports, its Triton kernel and its inputs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.kernels import kernels_enabled
from optimization.highs import solve_reference
from optimization.problem import (
    NV,
    DispatchProblems,
    ProblemError,
    apply_rows,
    diagnose,
    objective,
    sparse_matrix,
    standard_form,
    synthetic_problems,
    violation,
)
from optimization.solver import choose_kkt_solve, cols_of, kkt_solve, rows_of, solve

GAP, VIOLATION = 1e-4, 1e-5


def assert_matches_highs(problems: DispatchProblems) -> None:
    """Every site optimal, within GAP of HiGHS's objective and VIOLATION of feasibility (scaled)."""
    sol = solve(problems)
    ref = solve_reference(problems)
    assert ref.status == ["optimal"] * problems.n
    assert sol.status == ["optimal"] * problems.n, [(s, r) for s, r in zip(sol.status, sol.reason) if r]
    gap = np.abs(sol.objective - ref.objective) / np.maximum(1.0, np.abs(ref.objective))
    assert gap.max() <= GAP, (gap.max(), problems.site[int(gap.argmax())])
    assert violation(sol.sf, sol.x, sol.peak).max() <= VIOLATION
    # the reported objective is the schedule's cost
    np.testing.assert_allclose(objective(sol.sf, sol.x, sol.peak), sol.objective, rtol=1e-9, atol=1e-6)


def test_random_sites_match_highs() -> None:
    assert_matches_highs(synthetic_problems(40, 48, seed=11))


def test_quarter_hour_steps_and_a_partial_last_day_match_highs() -> None:
    assert_matches_highs(synthetic_problems(16, 100, step_minutes=15, seed=12))
    assert_matches_highs(synthetic_problems(16, 30, seed=13))


def _degenerate(n: int = 8, horizon: int = 24, seed: int = 5) -> DispatchProblems:
    return synthetic_problems(n, horizon, seed=seed, zero_battery=0.0, flat_prices=0.0, binding_terminal=0.0)


def test_degenerate_sites_match_highs() -> None:
    base = _degenerate()
    n = base.n
    zero = np.zeros(n)
    cases = {
        # no battery at all, and a zero-capacity battery that still has power (state of charge pinned at 0)
        "no battery": base.without_battery(),
        "zero capacity": replace(base, battery_kwh=zero, soc_min_kwh=zero, soc_initial_kwh=zero,
                                 soc_terminal_kwh=zero),
        # flat prices, no demand charge: a continuum of optimal schedules
        "flat prices": replace(base, import_price=np.full_like(base.import_price, 0.2),
                               export_price=np.full_like(base.export_price, 0.05), demand_charge=zero,
                               degradation_cost=zero),
        # the battery must end exactly as full as it can get
        "binding terminal": replace(base, soc_terminal_kwh=zero),
        # the flexible load needs every allowed hour at full power
        "flex at capacity": replace(base, flex_allowed=np.ones_like(base.flex_allowed),
                                    flex_max_kw=np.full(n, 20.0), flex_kwh_per_day=np.full(n, 480.0)),
    }
    from optimization.problem import _reachable_soc

    cases["binding terminal"].soc_terminal_kwh[:] = _reachable_soc(cases["binding terminal"])
    for name, problems in cases.items():
        problems = replace(problems, site=[f"{name}-{i}" for i in range(n)])
        assert_matches_highs(problems)


def test_binding_terminal_condition_holds_in_kwh() -> None:
    problems = _degenerate(seed=6)
    from optimization.problem import _reachable_soc

    problems.soc_terminal_kwh[:] = _reachable_soc(problems)
    sol = solve(problems)
    sched = sol.schedule()
    soc_end = sched["soc_kwh"][:, -1]
    assert np.all(soc_end >= problems.soc_terminal_kwh - 1e-5 * sol.sf.energy_scale)
    # the state of charge follows the charge and discharge powers
    prev = np.concatenate([problems.soc_initial_kwh[:, None], sched["soc_kwh"][:, :-1]], axis=1)
    change = problems.dt_hours * (problems.charge_efficiency[:, None] * sched["charge_kw"]
                                  - sched["discharge_kw"] / problems.discharge_efficiency[:, None])
    np.testing.assert_allclose(sched["soc_kwh"] - prev, change, atol=1e-5 * sol.sf.energy_scale.max())
    grid = sched["import_kw"] - sched["export_kw"]
    np.testing.assert_allclose(grid, problems.load_kw + sched["flex_kw"] + sched["charge_kw"] - sched["discharge_kw"],
                               atol=1e-5 * sol.sf.power_scale.max())


def test_infeasible_sites_are_named_with_a_reason_and_do_not_stop_the_others() -> None:
    problems = _degenerate(n=5, seed=7)
    problems.site = ["ok-a", "terminal", "flex", "import", "joint"]
    # terminal state of charge above what the battery can reach
    problems.soc_terminal_kwh[1] = problems.battery_kwh[1]
    problems.charge_kw[1] = 1e-3
    # flexible energy that does not fit in its allowed hours
    problems.flex_kwh_per_day[2], problems.flex_max_kw[2] = 100.0, 1.0
    # load above the import limit plus the battery's discharge
    problems.import_limit_kw[3], problems.discharge_kw[3] = 1.0, 1.0
    # the flexible load fits its hours and the grid fits the load, but not both together
    problems.load_kw[4] = 100.0
    problems.import_limit_kw[4] = 105.0
    problems.flex_kwh_per_day[4], problems.flex_max_kw[4] = 200.0, 40.0
    problems.flex_allowed[4] = True
    problems.battery_kwh[4], problems.soc_min_kwh[4], problems.soc_initial_kwh[4] = 10.0, 0.0, 5.0
    problems.soc_terminal_kwh[4], problems.charge_kw[4], problems.discharge_kw[4] = 0.0, 5.0, 5.0
    ref = solve_reference(problems)
    assert ref.status[0] == "optimal" and all(s != "optimal" for s in ref.status[1:])

    sol = solve(problems)
    assert sol.status == ["optimal"] + ["infeasible"] * 4
    assert sol.reason[0] is None
    assert "terminal state of charge" in sol.reason[1]
    assert "flexible load needs" in sol.reason[2]
    assert "exceeds the import limit" in sol.reason[3]
    assert "together" in sol.reason[4]
    assert np.isnan(sol.objective[1:]).all()
    assert abs(sol.objective[0] - ref.objective[0]) <= GAP * max(1.0, abs(ref.objective[0]))


def test_sites_converge_independently_and_report_their_measures() -> None:
    problems = synthetic_problems(30, 48, seed=21)
    seen = []
    sol = solve(problems, progress=lambda done, total, it: seen.append((done, it)))
    assert sol.ok.all()
    assert len(set(sol.iterations.tolist())) > 1            # frozen when solved, not when the batch is
    assert max(sol.primal_residual.max(), sol.dual_residual.max(), sol.gap.max()) <= 1e-8
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and dones[-1] == problems.n and dones[0] < problems.n
    # a site solved alone gets the same answer as in the batch, and so does a batch solved in chunks
    alone = solve(problems.subset([3]))
    np.testing.assert_allclose(alone.objective[0], sol.objective[3], rtol=1e-7)
    chunked = solve(problems, chunk=7)
    assert chunked.status == sol.status
    # (to the solver's tolerance: which sites share a batch decides when directions get refined)
    np.testing.assert_allclose(chunked.objective, sol.objective, rtol=1e-7)
    np.testing.assert_allclose(chunked.x, sol.x, atol=1e-6)


def test_structured_operator_equals_the_sparse_matrix_highs_gets() -> None:
    sf = standard_form(synthetic_problems(3, 30, seed=3))
    rng = np.random.default_rng(0)
    x, peak = rng.standard_normal((sf.n, NV, sf.horizon)), rng.standard_normal(sf.n)
    rows, day = apply_rows(sf, x, peak)
    for i in range(sf.n):
        r, c, v = sparse_matrix(sf, i)
        a = np.zeros((3 * sf.horizon + sf.days, NV * sf.horizon + 1))
        np.add.at(a, (r, c), v)
        np.testing.assert_allclose(a @ np.append(x[i].ravel(), peak[i]), np.append(rows[i].ravel(), day[i]),
                                   atol=1e-12)
    # the solver's torch operator and its transpose agree with it: y.(Ax) == (A^T y).x
    t64 = lambda a: torch.as_tensor(np.ascontiguousarray(a))  # noqa: E731
    xt, pt = t64(x.transpose(1, 2, 0)), t64(peak)
    args = (t64(sf.eta_c), t64(sf.eta_d))
    rows_t, day_t = rows_of(xt, pt, *args, torch.as_tensor(sf.day_index), sf.days)
    np.testing.assert_allclose(rows_t.numpy().transpose(2, 0, 1), rows, atol=1e-12)
    y, y_day = torch.randn(3, sf.horizon, sf.n, dtype=torch.float64), torch.randn(sf.days, sf.n, dtype=torch.float64)
    cols, col_peak = cols_of(y, y_day, *args, torch.as_tensor(sf.day_index))
    lhs = (y * rows_t).sum((0, 1)) + (y_day * day_t).sum(0)
    rhs = (cols * xt).sum((0, 1)) + col_peak * pt
    torch.testing.assert_close(lhs, rhs)


def test_kkt_solve_solves_the_normal_equations() -> None:
    """The structured solve against a dense solve of A diag(d) A^T + delta I, with extreme scalings."""
    t, n, m = 6, 3, 2
    g = torch.Generator().manual_seed(0)
    dx = torch.rand(NV, t, n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-6, 7, (NV, t, n), generator=g)
    dx[2, 1] = 0.0                                             # a fixed state of charge
    eta_c, eta_d = torch.full((n,), 0.95, dtype=torch.float64), torch.full((n,), 0.9, dtype=torch.float64)
    rhs = torch.randn(3, t, m, n, generator=g, dtype=torch.float64)
    y = kkt_solve(dx, eta_c, eta_d, rhs, delta=1e-8)
    for i in range(n):
        cols = []
        for j in range(NV * t):                                # A's columns from the operator itself
            e = torch.zeros(NV * t, dtype=torch.float64)
            e[j] = 1.0
            rows, _ = rows_of(e.view(NV, t, 1), torch.zeros(1, dtype=torch.float64), eta_c[i:i + 1], eta_d[i:i + 1],
                              torch.zeros(t, dtype=torch.long), 1)
            cols.append(rows.reshape(-1))
        a = torch.stack(cols, dim=1)
        mat = a @ torch.diag(dx[..., i].reshape(-1)) @ a.T + 1e-8 * torch.eye(3 * t, dtype=torch.float64)
        for k in range(m):
            b = rhs[:, :, k, i].reshape(-1)
            got = y[:, :, k, i].reshape(-1)
            assert torch.linalg.norm(mat @ got - b) <= 1e-7 * torch.linalg.norm(b) * torch.linalg.cond(mat) ** 0.5


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="the kernel needs CUDA or Triton's interpreter")
def test_triton_kernel_equals_the_pytorch_solve() -> None:
    pytest.importorskip("triton")
    from optimization.kernel import kkt_solve_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(1)
    t, n, m = 5, 6, 3
    dx = (torch.rand(NV, t, n, generator=g, dtype=torch.float64)
          * 10.0 ** torch.randint(-8, 9, (NV, t, n), generator=g)).to(device)
    dx[2, 0, 0] = 0.0
    eta_c = (0.9 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)).to(device)
    eta_d = (0.9 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)).to(device)
    rhs = torch.randn(3, t, m, n, generator=g, dtype=torch.float64).to(device)
    ref = kkt_solve(dx, eta_c, eta_d, rhs)
    got = kkt_solve_kernel(dx, eta_c, eta_d, rhs, block=4)   # two programs, the second one masked
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0.0)
    # the whole solver on the kernel path gives the PyTorch path's answer
    problems = synthetic_problems(3, 6, seed=2)
    a, b = solve(problems, device=device, kernel=False), solve(problems, device=device, kernel=True)
    assert b.kernel and not a.kernel
    assert a.status == b.status
    np.testing.assert_allclose(b.x, a.x, rtol=1e-9, atol=1e-12)


def test_kernel_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    # the solver takes the decision; callers that honour ENERGYOPT_KERNELS ask models.kernels for it
    def choose(device: torch.device) -> tuple:
        return choose_kkt_solve(device, kernels_enabled(device))

    monkeypatch.setenv("ENERGYOPT_KERNELS", "off")
    assert choose(torch.device("cuda"))[1] is False
    monkeypatch.setenv("ENERGYOPT_KERNELS", "auto")
    assert choose(torch.device("cpu"))[1] is False
    monkeypatch.setenv("ENERGYOPT_KERNELS", "maybe")
    with pytest.raises(ValueError, match="ENERGYOPT_KERNELS"):
        choose(torch.device("cpu"))


@pytest.mark.parametrize("change, message", [
    (dict(battery_kwh=-1.0), "battery_kwh: must not be negative (site 's0'"),
    (dict(charge_efficiency=1.5), "charge_efficiency: must be in (0, 1]"),
    (dict(soc_initial_kwh=1e6), "soc_initial_kwh: must be within"),
    (dict(export_price=10.0), "export_price: must not exceed the import price"),
    (dict(load_kw=np.full((2, 5), np.nan)), "load_kw: must be finite"),
    (dict(dt_hours=0.0), "dt_hours"),
    (dict(site=["s0", "s0"]), "site names must be unique"),
])
def test_bad_inputs_name_the_field_and_site(change: dict, message: str) -> None:
    problems = synthetic_problems(2, 5, seed=0)
    problems.site = ["s0", "s1"]
    kwargs = {f: getattr(problems, f) for f in problems.__dataclass_fields__}
    kwargs.update(change)
    with pytest.raises(ProblemError) as err:
        DispatchProblems(**kwargs)
    assert message in str(err.value)


def test_site_table_round_trip(tmp_path: Path) -> None:
    """A Parquet site table and a CSV one give the same problems and schedules."""
    from optimization.io import problems_from_frame, read_sites, schedules_frame

    problems = synthetic_problems(3, 24, seed=4)
    t = problems.horizon
    frame = pd.DataFrame({
        "site": np.repeat(problems.site, t),
        "timestamp": np.tile(pd.date_range("2024-06-01", periods=t, freq="h"), problems.n),
        "load_kw": problems.load_kw.ravel(), "import_price": problems.import_price.ravel(),
        "export_price": problems.export_price.ravel(), "flex_allowed": problems.flex_allowed.ravel(),
    })
    for name in ("battery_kwh", "soc_min_kwh", "soc_initial_kwh", "soc_terminal_kwh", "charge_kw", "discharge_kw",
                 "charge_efficiency", "discharge_efficiency", "degradation_cost", "demand_charge", "peak_floor_kw",
                 "import_limit_kw", "export_limit_kw", "flex_kwh_per_day", "flex_max_kw"):
        frame[name] = np.repeat(getattr(problems, name), t)
    frame.to_parquet(tmp_path / "sites.parquet")
    frame.to_csv(tmp_path / "sites.csv", index=False)
    from_parquet, from_csv = read_sites(tmp_path / "sites.parquet"), read_sites(tmp_path / "sites.csv")
    for read in (from_parquet, from_csv):
        assert read.site == problems.site and read.dt_hours == 1.0
        np.testing.assert_allclose(read.load_kw, problems.load_kw)
        np.testing.assert_array_equal(read.flex_allowed, problems.flex_allowed)
    sol = solve(from_parquet)
    np.testing.assert_allclose(sol.objective, solve(problems).objective, rtol=1e-9)
    out = schedules_frame(from_parquet, sol)
    assert len(out) == problems.n * t and set(out["status"]) == {"optimal"}

    with pytest.raises(ProblemError, match="missing column"):
        problems_from_frame(frame.drop(columns=["import_price"]))
    with pytest.raises(ProblemError, match="unknown column"):
        problems_from_frame(frame.assign(batery_kwh=1.0))
    uneven = frame.iloc[:-1]
    with pytest.raises(ProblemError, match="same number of steps"):
        problems_from_frame(uneven)
    varying = frame.assign(battery_kwh=np.arange(len(frame), dtype=float))
    with pytest.raises(ProblemError, match="same on all rows of a site"):
        problems_from_frame(varying)


def test_diagnose_finds_nothing_on_feasible_synthetic_sites() -> None:
    problems = synthetic_problems(300, 48, seed=9)
    assert diagnose(problems) == [None] * problems.n


def test_cli_optimize_writes_schedules_and_summary(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from energyopt.cli import app

    out = tmp_path / "plan.parquet"
    result = CliRunner().invoke(app, ["optimize", "--synthetic", "12", "--horizon", "24", "--out", str(out),
                                      "--quiet", "--threads", "1"])
    assert result.exit_code == 0, result.output
    schedules = pd.read_parquet(out)
    summary = pd.read_csv(out.with_suffix(".summary.csv"))
    assert len(schedules) == 12 * 24 and len(summary) == 12
    assert (summary["status"] == "optimal").all()
    # the summary is the solver's answer, with and without the batteries
    problems = synthetic_problems(12, 24, seed=0)
    np.testing.assert_allclose(summary["cost"], solve(problems).objective, rtol=1e-9)
    np.testing.assert_allclose(summary["cost_without_battery"], solve(problems.without_battery()).objective, rtol=1e-9)
    assert "total" in result.output

    bad = CliRunner().invoke(app, ["optimize", "--out", str(out)])
    assert bad.exit_code == 2 and "--sites FILE or --synthetic N" in bad.output
    missing = CliRunner().invoke(app, ["optimize", "--sites", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert missing.exit_code == 2 and "no site table" in missing.output


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc's mallopt")
def test_freed_memory_stays_in_the_heap_after_keep_freed_memory_in_heap() -> None:
    """The allocator setting `energyopt optimize` applies takes effect: after it, freeing a solver-sized
    temporary does not shrink the process (run in a child so this suite's allocator stays the default)."""
    import subprocess
    import sys

    probe = (
        "import sys, torch\n"
        "from optimization.solver import keep_freed_memory_in_heap\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "kept = '--keep' in sys.argv and keep_freed_memory_in_heap()\n"
        "a = torch.ones(40 << 20 >> 3, dtype=torch.float64)\n"  # 40 MB, above glibc's default mmap threshold
        "before = rss(); del a; after = rss()\n"
        "print(kept, before - after > 30 << 20)\n")
    root = Path(__file__).resolve().parent.parent
    default = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, check=True)
    kept = subprocess.run([sys.executable, "-c", probe, "--keep"], capture_output=True, text=True, cwd=root, check=True)
    assert default.stdout.split() == ["False", "True"]  # by default glibc hands the 40 MB back at once
    assert kept.stdout.split() == ["True", "False"]     # kept: it stays for the next temporary
