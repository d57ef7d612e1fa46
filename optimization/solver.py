"""The batched dispatch solver: a primal-dual interior point method (Mehrotra predictor-corrector) that
advances N dispatch LPs together, in float64, on CPU or GPU.

Why an interior point method and not restarted PDHG (PDLP). We need every site within 1e-4 of HiGHS's
objective and 1e-5 of feasibility. First-order methods reach that slowly on these LPs: the state of
charge is a chain over the horizon (conditioning grows with T^2) and the demand charge couples every
step, and PDHG's iteration count varies by orders of magnitude between sites, so a batch waits for its
slowest member. An IPM needs 15-40 iterations for 1e-8 on every site, whatever its data. Its usual cost,
a sparse factorization per iteration, disappears here because the structure is known: with the Newton
system written as normal equations over the rows,

  * each step's balance and peak rows couple only to that step's battery row, so they are eliminated
    in closed form (no subtraction of large numbers, see `kkt_solve`);
  * what remains over the battery rows is tridiagonal (s_t links steps t and t+1): a Thomas sweep,
    O(T) per site, vectorised over all sites;
  * the flexible-energy rows (one per day) and the peak column are a border of K+1 columns, handled by
    a (K+1) x (K+1) Schur complement per site.

So one iteration costs O(N T), like a PDHG iteration, but only a few dozen are needed. The
constraint operator is never formed: `rows_of` (A x) and `cols_of` (A^T y) apply it from its
structure. The sequential part (the Thomas sweeps) is a fused Triton kernel on the GPU
(`optimization.kernel`); everywhere else PyTorch runs the same arithmetic (`kkt_solve`).

Per site: convergence on the relative primal residual, dual residual and duality gap (all <= tol);
converged sites are frozen (their step is zero) and dropped from the working batch once enough have
finished; infeasible sites are found before solving (`problem.diagnose`, with the reason) or, for the
rarer joint cases, by the iterations themselves (the dual objective diverging while the primal residual
stays: a Farkas certificate in the limit).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from optimization.problem import NV, DispatchProblems, F, S, StandardForm, diagnose, standard_form

REGULARIZATION = 1e-10   # added to the normal equations' diagonal: keeps rows of fixed variables solvable
STEP_TO_BOUNDARY = 0.995  # fraction of the way to the nearest bound a step may go
NARROW_BOX = 1e-9         # relative width below which a variable counts as fixed
REFINE = 1  # rounds of iterative refinement of the corrector direction


@dataclass
class Solution:
    """Per-site results. `x` and `peak` are in the scaled units of `standard_form`; `schedule()` gives kW/kWh."""

    site: list[str]
    status: list[str]                 # "optimal", "infeasible", "iteration_limit" or "numerical_error"
    reason: list[str | None]       # why a site is infeasible (None otherwise)
    objective: np.ndarray             # (N,) cost in currency (nan when infeasible)
    iterations: np.ndarray            # (N,)
    primal_residual: np.ndarray       # (N,) relative: ||b - Ax||_inf / (1 + ||b||_inf)
    dual_residual: np.ndarray         # (N,) relative: ||c - A^T y - z||_inf / (1 + ||c||_inf)
    gap: np.ndarray                   # (N,) relative duality gap
    x: np.ndarray                     # (N, NV, T)
    peak: np.ndarray                  # (N,)
    seconds: float = 0.0
    device: str = "cpu"
    kernel: bool = False
    sf: StandardForm = field(default=None, repr=False)

    def schedule(self) -> dict[str, np.ndarray]:
        """Physical schedules: (N, T) kW for powers, kWh for the state of charge; peak (N,) kW."""
        p0, e0 = self.sf.power_scale[:, None], self.sf.energy_scale[:, None]
        out = {name: self.x[:, i] * (e0 if i == S else p0) for i, name in
               enumerate(("charge_kw", "discharge_kw", "soc_kwh", "import_kw", "export_kw", "flex_kw"))}
        out["peak_kw"] = self.peak * self.sf.power_scale
        return out

    @property
    def ok(self) -> np.ndarray:
        return np.array([s == "optimal" for s in self.status])


# ----------------------------------------------------------------------------------------------------------
# The constraint operator in structured form. Layout: per-step arrays are (T, N) (sites last: contiguous
# per step, which the Thomas sweep and the GPU kernel want); x is (NV, T, N), rows are (3, T, N) + (K, N).
# ----------------------------------------------------------------------------------------------------------

def _prev(v: torch.Tensor) -> torch.Tensor:
    """v shifted one step later along T (first step 0): s_{t-1}."""
    return torch.cat([torch.zeros_like(v[:1]), v[:-1]])


def _next(v: torch.Tensor) -> torch.Tensor:
    """v shifted one step earlier along T (last step 0): y_{t+1}."""
    return torch.cat([v[1:], torch.zeros_like(v[:1])])


def rows_of(x: torch.Tensor, peak: torch.Tensor, eta_c: torch.Tensor, eta_d: torch.Tensor,
            day_index: torch.Tensor, days: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A x: balance, battery and peak rows (3, T, N) and the flexible-energy rows (K, N)."""
    c, d, s, g, e, f, q = x
    rows = torch.stack([g - e - c + d - f, s - _prev(s) - eta_c * c + d / eta_d, g + q - peak])
    day = torch.zeros(days, x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, day_index, f)
    return rows, day


def cols_of(y: torch.Tensor, y_day: torch.Tensor, eta_c: torch.Tensor, eta_d: torch.Tensor,
            day_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A^T y: per-step columns (NV, T, N) and the peak column (N,)."""
    yb, ys, yp = y
    cols = torch.stack([-yb - eta_c * ys, yb + ys / eta_d, ys - _next(ys), yb + yp, -yb, -yb + y_day[day_index], yp])
    return cols, -yp.sum(0)


# ----------------------------------------------------------------------------------------------------------
# The Newton system's structured solve (the PyTorch reference of the Triton kernel)
# ----------------------------------------------------------------------------------------------------------

def kkt_solve(dx: torch.Tensor, eta_c: torch.Tensor, eta_d: torch.Tensor, rhs: torch.Tensor,
              delta: float = REGULARIZATION) -> torch.Tensor:
    """Solve (A_t diag(dx) A_t^T + delta I) y = rhs over the balance, battery and peak rows of every site.

    dx: (NV, T, N) the scaling of each per-step variable (0 for fixed ones); rhs: (3, T, M, N), M
    right-hand sides per site. Returns y (3, T, M, N). Per step, the peak row is eliminated into the
    balance row and that into the battery row, written so that no large numbers are subtracted; the
    battery rows then form a tridiagonal system solved by one forward and one backward sweep.
    """
    dc, dd, ds, dg, de, df, dq = (v.unsqueeze(1) for v in dx)  # (T, 1, N): broadcast over the M columns
    eta_c, eta_d = eta_c.unsqueeze(0), eta_d.unsqueeze(0)       # (1, N)
    pk = dg + dq + delta                                        # peak row's diagonal
    rest = de + df + delta + dg * (dq + delta) / pk             # balance row's diagonal besides the battery
    bal = dc + dd + rest                                        # balance row after eliminating the peak row
    bs = eta_c * dc + dd / eta_d                                # balance-battery coupling
    ss = eta_c * eta_c * dc + dd / (eta_d * eta_d)
    own = delta + (dc * dd * (eta_c - 1 / eta_d) ** 2 + rest * ss) / bal  # battery row's diagonal besides s
    r_bal, r_bat, r_pk = rhs
    r_bal = r_bal - dg * r_pk / pk
    r_bat = r_bat - bs * r_bal / bal
    y_bat = _chain_solve(ds, own, r_bat)
    y_bal = (r_bal - bs * y_bat) / bal
    y_pk = (r_pk - dg * y_bal) / pk
    return torch.stack([y_bal, y_bat, y_pk])


def _chain_solve(ds: torch.Tensor, own: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve the battery rows' tridiagonal system along T (batched over the rest): row t has diagonal
    ds_t + ds_{t-1} + own_t and -ds_t linking it to row t+1 (both rows hold s_t).

    Thomas's algorithm, with each pivot kept as ds_t + excess_t and the excess carried by its own
    recursion: the textbook pivot diag_t - ds_{t-1}^2 / pivot_{t-1} subtracts two numbers of the size of
    ds (up to 1e10 late in the solve) to get one that may be 1e-10.
    """
    t = ds.shape[0]
    ds, own = ds.expand_as(rhs), own.expand_as(rhs)
    pivot = torch.empty_like(rhs)
    z = torch.empty_like(rhs)
    excess = own[0]
    pivot[0] = ds[0] + excess
    z[0] = rhs[0] / pivot[0]
    for k in range(1, t):
        link = ds[k - 1] / pivot[k - 1]
        excess = own[k] + link * excess
        pivot[k] = ds[k] + excess
        z[k] = (rhs[k] + ds[k - 1] * z[k - 1]) / pivot[k]
    for k in range(t - 2, -1, -1):
        z[k] += ds[k] / pivot[k] * z[k + 1]
    return z


# ----------------------------------------------------------------------------------------------------------
# The batch on the device
# ----------------------------------------------------------------------------------------------------------

class _Batch:
    """The working sites' LP data as tensors with sites last; variables flattened to (V, N), V = NV*T + 1.

    Bounds are stored so that the iteration needs no masks: a fixed variable gets a lower bound one unit
    below it (its bound dual stays 0 and its scaling 0, so it never moves), a variable without an upper
    bound gets +inf (its upper dual stays 0 and it never limits a step).
    """

    def __init__(self, sf: StandardForm, device: torch.device) -> None:
        n, t = sf.n, sf.horizon
        f64 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=device)  # noqa: E731
        flat = lambda per_step, peak: f64(np.concatenate([per_step.reshape(n, -1), peak[:, None]], axis=1).T)  # noqa: E731
        self.t, self.days = t, sf.days
        self.cost = flat(sf.cost, sf.cost_peak)
        lower = flat(sf.lower, sf.lower_peak)
        upper = flat(sf.upper, np.full(n, np.inf))
        # a box narrower than this is a fixed variable at its midpoint (an interior point cannot live in it;
        # the LP changes by far less than the solver's tolerance)
        fixed = (upper - lower) <= NARROW_BOX * (1 + lower.abs())
        lower = torch.where(fixed, 0.5 * (lower + upper.clamp_max(1e300)), lower)
        has_up = torch.isfinite(upper) & ~fixed
        self.fixed_value = torch.where(fixed, lower, 0.0)            # for the dual objective
        self.lower_dual = torch.where(fixed, 0.0, lower)             # bound values the duals multiply
        self.upper_dual = torch.where(has_up, upper, 0.0)
        self.lower = torch.where(fixed, lower - 1.0, lower)          # see the class docstring
        self.upper = torch.where(has_up, upper, torch.inf)
        self.free = (~fixed).to(torch.float64)                       # 1 where the variable can move
        self.bounded_up = has_up.to(torch.float64)
        self.fixed_inf = torch.where(fixed, torch.inf, 0.0)          # masks for divisions and step lengths
        self.unbounded_inf = torch.where(has_up, 0.0, torch.inf)
        self.rhs = f64(sf.rhs.transpose(1, 2, 0))                   # (3, T, N)
        self.rhs_day = f64(sf.rhs_day.T)                            # (K, N)
        self.eta_c, self.eta_d = f64(sf.eta_c), f64(sf.eta_d)
        self.day_index = torch.as_tensor(sf.day_index, device=device)
        self.day_onehot = torch.nn.functional.one_hot(self.day_index, self.days).to(torch.float64)  # (T, K)
        self.n_comp = self.free.sum(0) + self.bounded_up.sum(0)
        self.b_norm = torch.maximum(self.rhs.abs().amax((0, 1)), self.rhs_day.abs().amax(0))
        self.c_norm = self.cost.abs().amax(0)

    def take(self, idx: torch.Tensor) -> _Batch:
        new = object.__new__(_Batch)
        for name, value in vars(self).items():
            keep = name in ("t", "days", "day_index", "day_onehot")
            setattr(new, name, value if keep else value.index_select(-1, idx))
        return new

    def rows(self, xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = xv[:-1].view(NV, self.t, -1)
        return rows_of(x, xv[-1], self.eta_c, self.eta_d, self.day_index, self.days)

    def cols(self, y: torch.Tensor, y_day: torch.Tensor) -> torch.Tensor:
        cols, col_peak = cols_of(y, y_day, self.eta_c, self.eta_d, self.day_index)
        return torch.cat([cols.reshape(-1, cols.shape[-1]), col_peak[None]])


@dataclass
class _State:
    x: torch.Tensor      # (V, N) primal
    zl: torch.Tensor     # (V, N) duals of the lower bounds (0 where fixed)
    zu: torch.Tensor     # (V, N) duals of the upper bounds (0 where unbounded or fixed)
    y: torch.Tensor      # (3, T, N) duals of the per-step rows
    y_day: torch.Tensor  # (K, N)

    def take(self, idx: torch.Tensor) -> _State:
        return _State(*(v.index_select(-1, idx) for v in vars(self).values()))


def _initial_state(b: _Batch) -> _State:
    """Mid-box for bounded variables, one unit above the bound for the rest; unit bound duals."""
    x = torch.where(b.bounded_up > 0, 0.5 * (b.lower + b.upper.clamp_max(1e300)), b.lower + 1.0)
    n = x.shape[1]
    return _State(x=x, zl=b.free.clone(), zu=b.bounded_up.clone(),
                  y=torch.zeros(3, b.t, n, dtype=x.dtype, device=x.device),
                  y_day=torch.zeros(b.days, n, dtype=x.dtype, device=x.device))


# ----------------------------------------------------------------------------------------------------------
# One predictor-corrector iteration
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Measures:
    primal: torch.Tensor    # relative residuals and gap, (N,)
    dual: torch.Tensor
    gap: torch.Tensor
    pobj: torch.Tensor
    dobj: torch.Tensor


def _measure(b: _Batch, st: _State) -> tuple[_Measures, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residuals and objectives of the current iterate (rd is meaningless, and unused, for fixed variables)."""
    rows, day = b.rows(st.x)
    rp, rp_day = b.rhs - rows, b.rhs_day - day
    aty = b.cols(st.y, st.y_day)
    rd = b.cost - aty - st.zl + st.zu
    pobj = (b.cost * st.x).sum(0)
    dobj = ((b.rhs * st.y).sum((0, 1)) + (b.rhs_day * st.y_day).sum(0)
            + (b.lower_dual * st.zl - b.upper_dual * st.zu + b.fixed_value * (b.cost - aty)).sum(0))
    primal = torch.maximum(rp.abs().amax((0, 1)), rp_day.abs().amax(0)) / (1 + b.b_norm)
    m = _Measures(primal=primal, dual=(rd * b.free).abs().amax(0) / (1 + b.c_norm),
                  gap=(pobj - dobj).abs() / (1 + pobj.abs() + dobj.abs()), pobj=pobj, dobj=dobj)
    return m, rp, rp_day, rd


def _step_length(v: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Largest a <= 1 with v + a dv >= 0 (v > 0, +inf where unconstrained), per site."""
    return 1 / (-dv / v).amax(0).clamp_min(1.0)


class _Iteration:
    """The Newton direction for one scaling of the variables: the structured solve plus the border."""

    def __init__(self, b: _Batch, st: _State, solve: Callable) -> None:
        self.b, self.solve = b, solve
        # distances to the bounds (kept positive: a coordinate can round onto its bound late in the solve)
        self.xl = (st.x - b.lower).clamp_min(1e-300)
        self.xu = (b.upper - st.x).clamp_min(1e-300)
        self.h = h = st.zl / self.xl + st.zu / self.xu
        self.dx = 1 / (h + b.fixed_inf)                              # (V, N), 0 for fixed variables
        self.h_peak = h[-1]
        dt_ = self.dx[:-1].view(NV, b.t, -1)
        self.dt_ = dt_
        # border columns: the flexible rows (bal rows of day k carry -df) and the peak column (-1 on peak rows)
        n = h.shape[1]
        border = torch.zeros(3, b.t, b.days + 1, n, dtype=h.dtype, device=h.device)
        border[0, :, : b.days] = -dt_[F].unsqueeze(1) * b.day_onehot.unsqueeze(-1)
        border[2, :, b.days] = -1.0
        self.border = border
        self.border_solved = None
        corner = torch.zeros(n, b.days + 1, b.days + 1, dtype=h.dtype, device=h.device)
        idx = torch.arange(b.days + 1, device=h.device)
        flex_diag = (dt_[F].T @ b.day_onehot) + REGULARIZATION     # (N, K)
        corner[:, idx, idx] = torch.cat([flex_diag, -self.h_peak[:, None]], dim=1)
        self.corner = corner
        self.schur_lu = None

    def _border_t(self, v: torch.Tensor) -> torch.Tensor:
        """B^T v for v (3, T, M, N): (K+1, M, N)."""
        # index_add over the day of each step: einsum with the one-hot (T, K) matrix was 15% of a CPU solve
        weighted = -self.dt_[F].unsqueeze(1) * v[0]                 # (T, M, N)
        flex = weighted.new_zeros((self.b.days,) + weighted.shape[1:]).index_add_(0, self.b.day_index, weighted)
        return torch.cat([flex, -v[2].sum(0, keepdim=True)])

    def newton(self, rp: torch.Tensor, rp_day: torch.Tensor, r_hat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Solve  A dx = rp (rows and days),  A^T dy - H dx = r_hat  for (dx, dy, dy_day)."""
        b = self.b
        dr = self.dx * r_hat
        rows, day = rows_of(dr[:-1].view(NV, b.t, -1), torch.zeros_like(dr[-1]), b.eta_c, b.eta_d, b.day_index, b.days)
        r_rows = rp + rows
        r_border = torch.cat([rp_day + day, r_hat[-1:]])            # (K+1, N)
        if self.border_solved is None:                              # first solve: the border columns too
            z = self.solve(self.dt_, b.eta_c, b.eta_d, torch.cat([r_rows.unsqueeze(2), self.border], dim=2))
            z_r, self.border_solved = z[:, :, :1], z[:, :, 1:]
            schur = self.corner - self._border_t(self.border_solved).permute(2, 0, 1)
            self.schur_lu = torch.linalg.lu_factor_ex(schur)[:2]
        else:
            z_r = self.solve(self.dt_, b.eta_c, b.eta_d, r_rows.unsqueeze(2))
        w_rhs = (r_border - self._border_t(z_r)[:, 0]).T.unsqueeze(-1)   # (N, K+1, 1)
        w = torch.linalg.lu_solve(*self.schur_lu, w_rhs)[..., 0].T         # (K+1, N)
        dy = z_r[:, :, 0] - (self.border_solved * w).sum(2)
        dy_day, d_peak = w[:-1], w[-1]
        dxv = self.dx * (b.cols(dy, dy_day) - r_hat)
        dxv[-1] = d_peak
        return dxv, dy, dy_day

    def direction(self, rp: torch.Tensor, rp_day: torch.Tensor, rd: torch.Tensor, st: _State,
                  rl: torch.Tensor, ru: torch.Tensor, refine: int = 0) -> tuple[torch.Tensor, ...]:
        """Newton direction for complementarity targets rl (lower) and ru (upper).

        `refine` rounds of iterative refinement: the peak column is a border with a huge scaling once the
        peak is settled, and eliminating the rows before it loses digits; one round restores them.
        """
        b = self.b
        r_hat = rd - rl / self.xl + ru / self.xu
        dxv, dy, dy_day = self.newton(rp, rp_day, r_hat)
        for _ in range(refine):
            rows, day = b.rows(dxv)
            e_rows, e_day = rp - rows, rp_day - day
            scale = 1e-12 + torch.maximum(rp.abs().amax((0, 1)), rp_day.abs().amax(0))
            if not bool((e_rows.abs().amax((0, 1)) > 1e-6 * scale).any()):
                break
            e_hat = (r_hat - b.cols(dy, dy_day) + dxv * self.h) * b.free
            ex, ey, ey_day = self.newton(e_rows, e_day, e_hat)
            dxv, dy, dy_day = dxv + ex, dy + ey, dy_day + ey_day
        dzl = (rl - st.zl * dxv) / self.xl
        dzu = (ru + st.zu * dxv) / self.xu
        return dxv, dy, dy_day, dzl, dzu

    def steps(self, st: _State, dxv: torch.Tensor, dzl: torch.Tensor, dzu: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ap = torch.minimum(_step_length(self.xl, dxv), _step_length(self.xu, -dxv))
        ad = torch.minimum(_step_length(st.zl + self.b.fixed_inf, dzl), _step_length(st.zu + self.b.unbounded_inf, dzu))
        return ap, ad


def _iterate(b: _Batch, st: _State, rp: torch.Tensor, rp_day: torch.Tensor, rd: torch.Tensor,
             frozen: torch.Tensor, solve: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """One Mehrotra predictor-corrector step for every site not frozen; returns the primal/dual step sizes."""
    it = _Iteration(b, st, solve)
    xl, xu = it.xl, it.xu
    comp_l = xl * st.zl                                  # 0 for fixed variables (zl = 0)
    comp_u = xu.clamp_max(1e300) * st.zu                 # 0 where unbounded (zu = 0, xu = inf)
    mu = (comp_l.sum(0) + comp_u.sum(0)) / b.n_comp
    # predictor: aim straight at complementarity 0
    dxv, dy, dy_day, dzl, dzu = it.direction(rp, rp_day, rd, st, -comp_l, -comp_u)
    ap, ad = it.steps(st, dxv, dzl, dzu)
    mu_aff = (((xl + ap * dxv) * (st.zl + ad * dzl)).sum(0)
              + ((xu.clamp_max(1e300) - ap * dxv) * (st.zu + ad * dzu) * b.bounded_up).sum(0)) / b.n_comp
    sigma = torch.where(mu > 0, mu_aff / mu, 0.0).clamp(0, 1) ** 3
    # corrector: centre by sigma * mu and correct for the predictor's second-order term
    target = sigma * mu
    rl = target * b.free - comp_l - dxv * dzl
    ru = target * b.bounded_up - comp_u + dxv * dzu
    dxv, dy, dy_day, dzl, dzu = it.direction(rp, rp_day, rd, st, rl, ru, refine=REFINE)
    ap, ad = it.steps(st, dxv, dzl, dzu)
    ap = torch.where(frozen, 0.0, (STEP_TO_BOUNDARY * ap).clamp(max=1.0))
    ad = torch.where(frozen, 0.0, (STEP_TO_BOUNDARY * ad).clamp(max=1.0))
    st.x += ap * dxv
    st.zl += ad * dzl
    st.zu += ad * dzu
    st.y += ad * dy
    st.y_day += ad * dy_day
    return ap, ad


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------

HAVE_TRITON = importlib.util.find_spec("triton") is not None


def choose_kkt_solve(device: torch.device, kernel: bool | None = None) -> tuple[Callable, bool]:
    """The structured solve to use on `device`: the Triton kernel or the PyTorch reference.

    kernel=None: the kernel for CUDA (when Triton is installed), PyTorch elsewhere; True/False decides.
    The solver reads no environment: callers that honour ENERGYOPT_KERNELS (the Serve replica, `energyopt
    optimize`) ask `models.kernels.kernels_enabled` and pass its answer.
    """
    if kernel is None:
        kernel = HAVE_TRITON and device.type == "cuda"
    if not kernel:
        return kkt_solve, False
    from optimization.kernel import kkt_solve_kernel

    return kkt_solve_kernel, True


CPU_CHUNK = 2048  # sites per working batch on CPU: keeps the (V, N) arrays in cache (4x faster at N=10,000)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory_in_heap() -> bool:
    """Ask glibc malloc to keep freed blocks of up to 64 MB in the heap instead of handing them back to the
    kernel. Returns whether it took effect (glibc only; a no-op elsewhere).

    Every elementwise step of a CPU solve allocates a (V, N) temporary of several MB. By default glibc
    serves such blocks with mmap, or trims the heap top once more than twice the last such block is free,
    so the next temporary faults its pages in (zeroed) afresh: 15-25 % of a CPU solve at N = 10,000 on the
    development machine. This changes the whole process's allocator (freed memory up to 1 GiB is kept for
    reuse), so the library never calls it on its own: `energyopt optimize` and the solver benchmark do.
    The environment variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ do the same from outside.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 64 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20)))


class SolveDeadlineError(TimeoutError):
    """The solve's deadline passed before every site finished (nothing partial is returned)."""


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise SolveDeadlineError("the dispatch solve ran past its deadline")


def solve(problems: DispatchProblems, *, device: str | torch.device = "cpu", tol: float = 1e-8, max_iter: int = 100,
          kernel: bool | None = None, progress: Callable[[int, int, int], None] | None = None,
          chunk: int | None = None, deadline: float | None = None) -> Solution:
    """Solve every site's dispatch LP together.

    device: where the batch lives ("cpu", "cuda"). kernel: use the Triton kernel for the structured solve
    (None: on CUDA; see `choose_kkt_solve`). progress(done, total, iteration) is called after each
    iteration. Infeasible sites are reported with a reason and never stop the others. chunk: most sites
    per working batch (default: CPU_CHUNK on CPU, all on a GPU); larger batches are solved chunk by chunk.
    deadline: a `time.monotonic()` time; past it, between iterations, the solve stops with SolveDeadlineError
    (a server request's answer would be too late, so its work ends with it).
    """
    device = torch.device(device)
    chunk = chunk or (CPU_CHUNK if device.type == "cpu" else problems.n)
    if problems.n > chunk:
        return _solve_in_chunks(problems, chunk, device=device, tol=tol, max_iter=max_iter, kernel=kernel,
                                progress=progress, deadline=deadline)
    started = time.perf_counter()
    sf = standard_form(problems)
    n, t = sf.n, sf.horizon
    kkt, used_kernel = choose_kkt_solve(device, kernel)
    outcome = _Outcome(n, NV * t + 1, diagnose(problems))
    work = torch.as_tensor([i for i in range(n) if outcome.reasons[i] is None], dtype=torch.long)
    if len(work):
        _iterate_until_finished(_Batch(sf.take(work.numpy()), device), work.to(device), outcome, tol, max_iter,
                                kkt, progress, deadline)
    objective = np.where(np.array(outcome.status) == "infeasible", np.nan, outcome.measures["pobj"] * sf.cost_scale)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Solution(site=list(problems.site), status=outcome.status, reason=outcome.reasons, objective=objective,
                    iterations=outcome.iterations, primal_residual=outcome.measures["primal"],
                    dual_residual=outcome.measures["dual"], gap=outcome.measures["gap"],
                    x=outcome.x[:, :-1].reshape(n, NV, t), peak=outcome.x[:, -1],
                    seconds=time.perf_counter() - started, device=str(device), kernel=used_kernel, sf=sf)


def _solve_in_chunks(problems: DispatchProblems, chunk: int, *, device: torch.device, tol: float, max_iter: int,
                     kernel: bool | None, progress: Callable[[int, int, int], None] | None,
                     deadline: float | None = None) -> Solution:
    """`solve` over consecutive chunks of `chunk` sites, concatenated into one Solution."""
    started = time.perf_counter()
    parts, offset = [], 0
    for lo in range(0, problems.n, chunk):
        idx = np.arange(lo, min(lo + chunk, problems.n))
        report = None if progress is None else (lambda d, _n, it, o=offset: progress(o + d, problems.n, it))
        parts.append(solve(problems.subset(idx), device=device, tol=tol, max_iter=max_iter, kernel=kernel,
                           progress=report, chunk=chunk, deadline=deadline))
        offset += len(idx)
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return Solution(site=list(problems.site), status=sum((p.status for p in parts), []),
                    reason=sum((p.reason for p in parts), []), objective=cat("objective"),
                    iterations=cat("iterations"), primal_residual=cat("primal_residual"),
                    dual_residual=cat("dual_residual"), gap=cat("gap"), x=cat("x"), peak=cat("peak"),
                    seconds=time.perf_counter() - started, device=str(device), kernel=parts[0].kernel,
                    sf=standard_form(problems))


FAILURE_REASONS = {
    "numerical_error": "the iterations broke down numerically (please report this site's data)",
    "infeasible": "no schedule meets the flexible load, the battery and the grid limits together "
                  "(the solver's primal residual stalls while its dual diverges)",
}


class _Outcome:
    """Every site's result, filled in as sites finish; sites `diagnose` found infeasible start finished."""

    def __init__(self, n: int, width: int, reasons: list[str | None]) -> None:
        self.reasons = reasons
        self.status = ["iteration_limit" if r is None else "infeasible" for r in reasons]
        self.x = np.full((n, width), np.nan)  # (N, V): the flattened variables and the peak last
        self.measures = {k: np.full(n, np.nan) for k in ("primal", "dual", "gap", "pobj")}
        self.iterations = np.zeros(n, dtype=np.int64)

    def record(self, ids: np.ndarray, sel: torch.Tensor, m: _Measures, st: _State, label: str, it: int) -> None:
        """Sites `ids` (the working batch's `sel`) finished at iteration `it` with status `label`."""
        for key, values in self.measures.items():
            values[ids] = getattr(m, key)[sel].cpu().numpy()
        self.x[ids] = st.x[:, sel].T.cpu().numpy()
        self.iterations[ids] = it
        for i in ids:
            self.status[i] = label
            self.reasons[i] = FAILURE_REASONS.get(label, self.reasons[i])


def _iterate_until_finished(b: _Batch, work: torch.Tensor, outcome: _Outcome, tol: float, max_iter: int,
                            kkt: Callable, progress: Callable[[int, int, int], None] | None,
                            deadline: float | None = None) -> None:
    """Iterate the working sites `work` (indices into the whole batch) until each has converged, diverged,
    broken down or reached max_iter, recording each in `outcome` as it finishes."""
    n = len(outcome.status)
    st = _initial_state(b)
    finished = torch.zeros(len(work), dtype=torch.bool, device=work.device)
    for it in range(max_iter + 1):
        m, rp, rp_day, rd = _measure(b, st)
        done = (m.primal <= tol) & (m.dual <= tol) & (m.gap <= tol) & ~finished
        # primal infeasible: the dual objective runs away (a Farkas ray) while the dual stays feasible and
        # the primal residual stays; by weak duality no feasible schedule could cost that much
        diverged = (~finished & ~done & (m.primal > 1e3 * tol) & (m.dual < 1e-3)
                    & (m.dobj - m.pobj > 1e6 * (1 + m.pobj.abs())))
        broken = ~finished & ~done & ~diverged & ~torch.isfinite(m.primal + m.dual + m.gap)
        ends = [(done, "optimal"), (diverged, "infeasible"), (broken, "numerical_error")]
        if it == max_iter:
            ends.append((~finished & ~done & ~diverged & ~broken, "iteration_limit"))
        for mask, label in ends:
            if mask.any():
                outcome.record(work[mask].cpu().numpy(), mask, m, st, label, it)
                finished |= mask
        if progress is not None:
            progress(n - len(work) + int(finished.sum()), n, it)
        if bool(finished.all()) or it == max_iter:
            return
        _check_deadline(deadline)
        # drop finished sites from the working batch once they are a quarter of it
        if finished.float().mean() >= 0.25:
            keep = torch.nonzero(~finished)[:, 0]
            b, st, work, finished = b.take(keep), st.take(keep), work[keep], finished[keep]
            m, rp, rp_day, rd = _measure(b, st)
        _iterate(b, st, rp, rp_day, rd, finished, kkt)
