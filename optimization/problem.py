"""Battery and flexible-load dispatch as linear programs: the one definition every solver uses.

A batch holds N sites over the same horizon of T steps of `dt_hours`. Per site and step t:

    variables     charge c_t, discharge d_t (kW), state of charge s_t (kWh, end of step t),
                  grid import g_t, export e_t (kW), flexible load f_t (kW), peak slack q_t;
                  and one peak import p (kW) per site
    balance       g_t - e_t = load_t + f_t + c_t - d_t
    battery       s_t = s_{t-1} + dt * (eta_c * c_t - d_t / eta_d),   s_{-1} = initial SoC
    peak          g_t + q_t = p                                        (so p >= every g_t)
    flexible      sum over day k of dt * f_t = flex energy of day k   (f_t = 0 outside allowed hours)
    bounds        0 <= c <= charge_kw, 0 <= d <= discharge_kw, soc_min <= s <= capacity,
                  s_{T-1} >= terminal SoC, 0 <= g <= import limit, 0 <= e <= export limit,
                  0 <= f_t <= flex_max_kw * allowed_t, q >= 0, p >= peak already set this billing period
    cost          sum_t dt * (import_price_t g_t - export_price_t e_t + degradation * (c_t + d_t))
                  + demand_charge * p

`standard_form` states this LP in scaled units (powers in units of the site's power scale P0, energies
in P0 * dt, costs in C0): the batched solver (`optimization.solver`), the HiGHS reference
(`optimization.highs`, through `sparse_matrix`) and the feasibility check (`violation`) all read it, so
the three can never disagree about what the problem is. Scaling makes every row and bound O(1); the
"violation of a constraint relative to its scale" used in tests and benchmarks is the violation in these
units (a fraction of the site's power or energy-per-step scale).

`diagnose` finds infeasible sites before solving and says why (terminal state of charge unreachable, load
that cannot be served, flexible energy that does not fit its hours, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

VARIABLES = ("charge", "discharge", "soc", "grid_import", "grid_export", "flex", "peak_slack")
NV = len(VARIABLES)  # per-step variables; the site's peak p is one more (the last column)
C, D, S, G, E, F, Q = range(NV)
# rows: per step "balance", "battery", "peak"; then one "flexible" row per day


class ProblemError(ValueError):
    """Input data that cannot describe a dispatch problem; the message names the site and field."""


def _quoted(name: str, limit: int = 80) -> str:
    """A site name as an error quotes it: cut to `limit` characters with its length after it (the rule of
    models.series.shown, which this package does not import: a huge name must not make a huge error)."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}… ({len(name):,} chars)"

@dataclass
class DispatchProblems:
    """N sites' dispatch problems over one horizon. Per-step arrays are (N, T), per-site ones (N,).

    Units: kW, kWh, currency per kWh (prices, degradation) and per kW (demand charge). Efficiencies are
    the one-way efficiencies (round trip = charge_efficiency * discharge_efficiency).
    """

    site: list[str]
    dt_hours: float
    load_kw: np.ndarray                      # (N, T) forecast load; negative = net generation (PV)
    import_price: np.ndarray                 # (N, T)
    export_price: np.ndarray                 # (N, T) must not exceed the import price
    battery_kwh: np.ndarray                  # (N,) capacity (0: no battery)
    soc_min_kwh: np.ndarray
    soc_initial_kwh: np.ndarray
    soc_terminal_kwh: np.ndarray             # state of charge at least this at the end of the horizon
    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    charge_efficiency: np.ndarray
    discharge_efficiency: np.ndarray
    degradation_cost: np.ndarray             # per kWh charged plus discharged
    demand_charge: np.ndarray                # per kW of the peak import over the horizon
    peak_floor_kw: np.ndarray                # peak already reached in the billing period
    import_limit_kw: np.ndarray              # inf: unlimited
    export_limit_kw: np.ndarray              # inf: unlimited, 0: no export
    flex_kwh_per_day: np.ndarray             # shiftable energy per (full) day
    flex_max_kw: np.ndarray
    flex_allowed: np.ndarray                 # (N, T) bool: hours in which the flexible load may run
    day_index: np.ndarray = None             # (T,) day of each step (default: 24 h days from the start)

    def __post_init__(self) -> None:
        self.site = [str(s) for s in self.site]
        n = len(self.site)
        if n == 0:
            raise ProblemError("no sites")
        if len(set(self.site)) != n:
            raise ProblemError("site names must be unique")
        self.dt_hours = float(self.dt_hours)
        if not (0 < self.dt_hours <= 24):
            raise ProblemError(f"dt_hours: must be in (0, 24], got {self.dt_hours}")
        self.load_kw = np.asarray(self.load_kw, dtype=np.float64)
        if self.load_kw.ndim != 2 or self.load_kw.shape[0] != n or self.load_kw.shape[1] < 1:
            raise ProblemError(f"load_kw: expected shape ({n}, T), got {self.load_kw.shape}")
        t = self.load_kw.shape[1]
        for f in fields(self):
            if f.name in ("site", "dt_hours", "day_index"):
                continue
            value = getattr(self, f.name)
            if f.name == "flex_allowed":
                arr = np.broadcast_to(np.asarray(value, dtype=bool), (n, t)).copy()
            elif f.name in ("load_kw", "import_price", "export_price"):
                arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n, t)).copy()
            else:
                arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
            setattr(self, f.name, arr)
        if self.day_index is None:
            self.day_index = (np.arange(t) * self.dt_hours // 24).astype(np.int64)
        self.day_index = np.asarray(self.day_index, dtype=np.int64)
        steps = np.diff(self.day_index)
        if self.day_index.shape != (t,) or self.day_index[0] != 0 or np.any((steps < 0) | (steps > 1)):
            raise ProblemError(f"day_index: must have {t} entries counting days 0, 1, ... in order")
        self._validate()

    @property
    def n(self) -> int:
        return len(self.site)

    @property
    def horizon(self) -> int:
        return self.load_kw.shape[1]

    @property
    def days(self) -> int:
        return int(self.day_index[-1]) + 1

    def day_hours(self) -> np.ndarray:
        """Hours of the horizon in each day (a partial last day gets its share of the daily energy)."""
        return np.bincount(self.day_index, minlength=self.days) * self.dt_hours

    def flex_energy_kwh(self) -> np.ndarray:
        """(N, K) flexible energy to serve in each day of the horizon."""
        return self.flex_kwh_per_day[:, None] * self.day_hours()[None, :] / 24.0

    def subset(self, index: np.ndarray | list[int]) -> DispatchProblems:
        idx = np.asarray(index, dtype=np.int64)
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "site":
                kw[f.name] = [v[i] for i in idx]
            elif f.name in ("dt_hours", "day_index"):
                kw[f.name] = v
            else:
                kw[f.name] = v[idx]
        return DispatchProblems(**kw)

    def without_battery(self) -> DispatchProblems:
        """The same sites with no battery (the reference for savings)."""
        zero = np.zeros(self.n)
        return replace(self, battery_kwh=zero, soc_min_kwh=zero, soc_initial_kwh=zero, soc_terminal_kwh=zero,
                       charge_kw=zero, discharge_kw=zero, degradation_cost=zero)

    def _validate(self) -> None:
        def bad(mask: np.ndarray, name: str, rule: str) -> None:
            rows = np.flatnonzero(mask.reshape(self.n, -1).any(axis=1))
            if rows.size:
                i = rows[0]
                more = f" (and {rows.size - 1} more sites)" if rows.size > 1 else ""
                raise ProblemError(f"{name}: {rule} (site {_quoted(self.site[i])}{more})")

        for name in ("load_kw", "import_price", "export_price", "battery_kwh", "soc_min_kwh", "soc_initial_kwh",
                     "soc_terminal_kwh", "charge_kw", "discharge_kw", "charge_efficiency", "discharge_efficiency",
                     "degradation_cost", "demand_charge", "peak_floor_kw", "flex_kwh_per_day", "flex_max_kw"):
            bad(~np.isfinite(getattr(self, name)), name, "must be finite")
        for name in ("import_limit_kw", "export_limit_kw"):
            bad(np.isnan(getattr(self, name)), name, "must be a number (inf for no limit)")
        for name in ("battery_kwh", "soc_min_kwh", "charge_kw", "discharge_kw", "degradation_cost", "demand_charge",
                     "peak_floor_kw", "import_limit_kw", "export_limit_kw", "flex_kwh_per_day", "flex_max_kw"):
            bad(getattr(self, name) < 0, name, "must not be negative")
        for name in ("charge_efficiency", "discharge_efficiency"):
            v = getattr(self, name)
            bad((v <= 0) | (v > 1), name, "must be in (0, 1]")
        bad(self.soc_min_kwh > self.battery_kwh, "soc_min_kwh", "must not exceed battery_kwh")
        bad((self.soc_initial_kwh < self.soc_min_kwh) | (self.soc_initial_kwh > self.battery_kwh),
            "soc_initial_kwh", "must be within [soc_min_kwh, battery_kwh]")
        bad(self.export_price > self.import_price, "export_price",
            "must not exceed the import price (buying to sell back would be unbounded)")


@dataclass
class StandardForm:
    """The LP in scaled units, batched: min cost.x  s.t.  A x = rhs,  lower <= x <= upper.

    x per site is (NV, T) per-step variables plus the peak p; rows per site are balance, battery and
    peak per step (3, T) and one flexible-energy row per day (K,). Arrays are numpy, sites first.
    """

    cost: np.ndarray          # (N, NV, T)
    cost_peak: np.ndarray     # (N,)
    lower: np.ndarray         # (N, NV, T)
    upper: np.ndarray         # (N, NV, T), inf where unbounded
    lower_peak: np.ndarray    # (N,)
    rhs: np.ndarray           # (N, 3, T): balance, battery, peak rows
    rhs_day: np.ndarray       # (N, K)
    eta_c: np.ndarray         # (N,) coefficients of the battery rows
    eta_d: np.ndarray
    day_index: np.ndarray     # (T,)
    power_scale: np.ndarray   # (N,) kW per unit of power
    energy_scale: np.ndarray  # (N,) kWh per unit of energy (power_scale * dt)
    cost_scale: np.ndarray    # (N,) currency per unit of objective

    @property
    def n(self) -> int:
        return self.cost.shape[0]

    @property
    def horizon(self) -> int:
        return self.cost.shape[2]

    @property
    def days(self) -> int:
        return self.rhs_day.shape[1]

    def take(self, rows: slice | np.ndarray) -> StandardForm:
        """The LPs of some sites (a slice or index array)."""
        return StandardForm(**{f.name: (getattr(self, f.name) if f.name == "day_index" else getattr(self, f.name)[rows])
                               for f in fields(self)})


def standard_form(problems: DispatchProblems) -> StandardForm:
    """The batch's LPs in scaled units (see the module docstring)."""
    pr = problems
    n, t, dt = pr.n, pr.horizon, pr.dt_hours
    p0 = np.maximum.reduce([np.abs(pr.load_kw).max(axis=1), pr.charge_kw, pr.discharge_kw, pr.flex_max_kw,
                            pr.battery_kwh / (dt * t), np.full(n, 1e-3)])
    e0 = p0 * dt
    price_ref = np.maximum.reduce([np.abs(pr.import_price).max(axis=1), np.abs(pr.export_price).max(axis=1),
                                   pr.degradation_cost, pr.demand_charge / (dt * t), np.full(n, 1e-6)])
    c0 = e0 * price_ref
    col = lambda v: v[:, None]  # noqa: E731 - per-site scalar against per-step arrays

    cost = np.zeros((n, NV, t))
    cost[:, C] = cost[:, D] = col(pr.degradation_cost / price_ref)
    cost[:, G] = pr.import_price / col(price_ref)
    cost[:, E] = -pr.export_price / col(price_ref)
    lower = np.zeros((n, NV, t))
    upper = np.full((n, NV, t), np.inf)
    upper[:, C] = col(pr.charge_kw / p0)
    upper[:, D] = col(pr.discharge_kw / p0)
    lower[:, S] = col(pr.soc_min_kwh / e0)
    upper[:, S] = col(pr.battery_kwh / e0)
    lower[:, S, -1] = np.maximum(pr.soc_min_kwh, pr.soc_terminal_kwh) / e0
    upper[:, G] = col(pr.import_limit_kw / p0)
    upper[:, E] = col(pr.export_limit_kw / p0)
    upper[:, F] = np.where(pr.flex_allowed, col(pr.flex_max_kw / p0), 0.0)
    rhs = np.zeros((n, 3, t))
    rhs[:, 0] = pr.load_kw / col(p0)
    rhs[:, 1, 0] = pr.soc_initial_kwh / e0
    return StandardForm(
        cost=cost, cost_peak=pr.demand_charge * p0 / c0, lower=lower, upper=upper, lower_peak=pr.peak_floor_kw / p0,
        rhs=rhs, rhs_day=pr.flex_energy_kwh() / col(e0), eta_c=pr.charge_efficiency.copy(),
        eta_d=pr.discharge_efficiency.copy(), day_index=pr.day_index.copy(), power_scale=p0, energy_scale=e0,
        cost_scale=c0)


# ----------------------------------------------------------------------------------------------------------
# The constraint operator, written out: in structured form (numpy, for checks) and as a sparse matrix (HiGHS)
# ----------------------------------------------------------------------------------------------------------

def apply_rows(sf: StandardForm, x: np.ndarray, peak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A x for every site: ((N, 3, T) balance/battery/peak rows, (N, K) flexible rows)."""
    c, d, s, g, e, f, q = (x[:, i] for i in range(NV))
    s_prev = np.concatenate([np.zeros_like(s[:, :1]), s[:, :-1]], axis=1)
    rows = np.stack([g - e - c + d - f,
                     s - s_prev - sf.eta_c[:, None] * c + d / sf.eta_d[:, None],
                     g + q - peak[:, None]], axis=1)
    day = np.zeros((x.shape[0], sf.days))
    np.add.at(day, (slice(None), sf.day_index), f)
    return rows, day


def violation(sf: StandardForm, x: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """(N,) largest violation of any row or bound, in scaled units (fractions of the site's scales)."""
    rows, day = apply_rows(sf, x, peak)
    worst = [np.abs(rows - sf.rhs).max(axis=(1, 2)), np.abs(day - sf.rhs_day).max(axis=1, initial=0.0),
             np.maximum(sf.lower - x, 0).max(axis=(1, 2)), np.maximum(x - sf.upper, 0).max(axis=(1, 2)),
             np.maximum(sf.lower_peak - peak, 0)]
    return np.max(worst, axis=0)


def objective(sf: StandardForm, x: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """(N,) cost in currency."""
    return ((sf.cost * x).sum(axis=(1, 2)) + sf.cost_peak * peak) * sf.cost_scale


def sparse_matrix(sf: StandardForm, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Site i's constraint matrix in coordinate form (rows, cols, values), same order as apply_rows:
    rows [balance_0..T-1, battery_0..T-1, peak_0..T-1, flexible_0..K-1], columns [var-major per-step
    variables (VARIABLES order), peak]."""
    t = sf.horizon
    steps = np.arange(t)
    col = lambda var: var * t + steps  # noqa: E731
    bal, bat, pk = steps, t + steps, 2 * t + steps
    peak_col = NV * t
    entries = [
        (bal, col(G), 1.0), (bal, col(E), -1.0), (bal, col(C), -1.0), (bal, col(D), 1.0), (bal, col(F), -1.0),
        (bat, col(S), 1.0), (bat[1:], col(S)[:-1], -1.0), (bat, col(C), -sf.eta_c[i]), (bat, col(D), 1.0 / sf.eta_d[i]),
        (pk, col(G), 1.0), (pk, col(Q), 1.0), (pk, np.full(t, peak_col), -1.0),
        (3 * t + sf.day_index, col(F), 1.0),
    ]
    rows = np.concatenate([r for r, _, _ in entries])
    cols = np.concatenate([c for _, c, _ in entries])
    vals = np.concatenate([np.broadcast_to(np.asarray(v, dtype=np.float64), r.shape) for r, _, v in entries])
    return rows, cols, vals


# ----------------------------------------------------------------------------------------------------------
# Infeasibility: which sites cannot be scheduled at all, and why
# ----------------------------------------------------------------------------------------------------------

def diagnose(problems: DispatchProblems) -> list[str | None]:
    """A reason for every site that has no feasible schedule (None where this finds none).

    Exact for the battery and grid limits (the reachable state of charge is an interval, propagated step
    by step with the flexible load at zero); the flexible energy is checked against its allowed hours.
    A site these checks pass can still be infeasible through the flexible load and the grid limits
    together: the solver reports that case from its own iterations.
    """
    pr = problems
    reasons: list[str | None] = [None] * pr.n
    dt = pr.dt_hours

    def note(mask: np.ndarray, message) -> None:  # noqa: ANN001
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = message(i)

    need = pr.flex_energy_kwh()
    room = np.zeros_like(need)
    np.add.at(room, (slice(None), pr.day_index), np.where(pr.flex_allowed, pr.flex_max_kw[:, None] * dt, 0.0))
    short = need > room * (1 + 1e-9) + 1e-9
    note(short.any(axis=1), lambda i: (
        f"flexible load needs {need[i][short[i]][0]:.6g} kWh on day {np.flatnonzero(short[i])[0]} but its allowed "
        f"hours at {pr.flex_max_kw[i]:.6g} kW give at most {room[i][short[i]][0]:.6g} kWh"))

    # net battery power n_t = c_t - d_t must keep the grid within limits: -export_limit <= load + n <= import_limit
    hi_net = np.minimum(pr.charge_kw[:, None], pr.import_limit_kw[:, None] - pr.load_kw)
    lo_net = np.maximum(-pr.discharge_kw[:, None], -pr.export_limit_kw[:, None] - pr.load_kw)
    step_bad = lo_net > hi_net + 1e-9
    first = np.argmax(step_bad, axis=1)
    note(step_bad.any(axis=1) & (pr.load_kw[np.arange(pr.n), first] > 0), lambda i: (
        f"step {first[i]}: load {pr.load_kw[i, first[i]]:.6g} kW exceeds the import limit "
        f"{pr.import_limit_kw[i]:.6g} kW plus the battery's {pr.discharge_kw[i]:.6g} kW discharge"))
    note(step_bad.any(axis=1), lambda i: (
        f"step {first[i]}: net generation {-pr.load_kw[i, first[i]]:.6g} kW exceeds the export limit "
        f"{pr.export_limit_kw[i]:.6g} kW plus the battery's {pr.charge_kw[i]:.6g} kW charge"))

    # state of charge change per step for the most and the least net battery power
    eta_c, eta_d = pr.charge_efficiency[:, None], pr.discharge_efficiency[:, None]
    gain = lambda net: dt * np.where(net >= 0, eta_c * net, net / eta_d)  # noqa: E731
    max_gain, min_gain = gain(hi_net), gain(lo_net)
    lo = hi = pr.soc_initial_kwh.copy()
    floor = pr.soc_min_kwh
    for t in range(pr.horizon):
        if t == pr.horizon - 1:
            floor = np.maximum(pr.soc_min_kwh, pr.soc_terminal_kwh)
        hi = np.minimum(pr.battery_kwh, hi + max_gain[:, t])
        lo = np.maximum(floor, lo + min_gain[:, t])
        stuck = (lo > hi + 1e-9 * np.maximum(1.0, pr.battery_kwh)) & ~step_bad.any(axis=1)
        if t == pr.horizon - 1:
            note(stuck & (pr.soc_terminal_kwh > pr.soc_min_kwh), lambda i, h=hi.copy(): (
                f"terminal state of charge {pr.soc_terminal_kwh[i]:.6g} kWh is unreachable: at most "
                f"{max(h[i], 0):.6g} kWh by the end of the horizon (from {pr.soc_initial_kwh[i]:.6g} kWh, "
                f"charging at most {pr.charge_kw[i]:.6g} kW within the import limit)"))
        note(stuck, lambda i, t=t, lo_=lo.copy(), hi_=hi.copy(): (
            f"step {t}: the battery cannot stay within [{pr.soc_min_kwh[i]:.6g}, {pr.battery_kwh[i]:.6g}] kWh "
            f"while keeping the grid within its limits (reachable {hi_[i]:.6g} kWh, needed {lo_[i]:.6g} kWh)"))
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # keep propagating the sites already noted
    return reasons


# ----------------------------------------------------------------------------------------------------------
# Seeded synthetic sites
# ----------------------------------------------------------------------------------------------------------

def synthetic_problems(n: int, horizon: int = 48, *, step_minutes: int = 60, seed: int = 0,
                       zero_battery: float = 0.05, flat_prices: float = 0.05, binding_terminal: float = 0.1,
                       export_limited: float = 0.2) -> DispatchProblems:
    """N feasible commercial sites: daily load shapes (some with rooftop PV), time-of-use prices, batteries of
    0-4 hours, demand charges and a shiftable load. Fractions of the sites are degenerate on purpose:
    zero-capacity batteries, flat prices, and terminal states of charge the battery can only just reach."""
    if n < 1 or horizon < 1:
        raise ProblemError(f"need n >= 1 and horizon >= 1, got n={n}, horizon={horizon}")
    if step_minutes <= 0 or (24 * 60) % step_minutes:
        raise ProblemError(f"step_minutes: must divide a day, got {step_minutes}")
    rng = np.random.default_rng(seed)
    dt = step_minutes / 60.0
    hours = np.arange(horizon) * dt
    hod = hours % 24
    start = rng.uniform(0, 24, size=(n, 1)).round()  # local hour the horizon starts at
    hod = (hod[None, :] + start) % 24

    base = rng.uniform(50, 500, size=(n, 1))
    shape = 0.6 + 0.4 * np.clip(np.sin((hod - 6) / 24 * 2 * np.pi), -0.3, None) + 0.15 * rng.random((n, 1))
    load = base * shape * (1 + 0.05 * rng.standard_normal((n, horizon)))
    pv = rng.random((n, 1)) < 0.3
    sun = np.clip(np.sin((hod - 6) / 12 * np.pi), 0, None)
    load = load - pv * base * rng.uniform(0.5, 1.6, size=(n, 1)) * sun

    peak_price = rng.uniform(0.15, 0.45, size=(n, 1))
    off_price = peak_price * rng.uniform(0.3, 0.7, size=(n, 1))
    on_peak = (hod >= 16) & (hod < 21)
    import_price = np.where(on_peak, peak_price, off_price) * (1 + 0.1 * rng.standard_normal((n, horizon)))
    import_price = np.clip(import_price, 0.01, None)
    flat = rng.random(n) < flat_prices
    import_price[flat] = peak_price[flat]
    export_price = import_price * rng.uniform(0.0, 0.8, size=(n, 1))

    zero = rng.random(n) < zero_battery
    battery = np.where(zero, 0.0, base[:, 0] * rng.uniform(0.5, 4.0, size=n))
    power = base[:, 0] * rng.uniform(0.25, 1.0, size=n)  # zero capacity with power left: s fixed at 0
    power = np.where(zero & (rng.random(n) < 0.5), 0.0, np.where(zero, power, battery / rng.uniform(1.0, 4.0, size=n)))
    soc_min = battery * rng.uniform(0.0, 0.2, size=n)
    soc0 = soc_min + (battery - soc_min) * rng.uniform(0.0, 1.0, size=n)
    eta_c = rng.uniform(0.9, 0.98, size=n)
    eta_d = rng.uniform(0.9, 0.98, size=n)
    terminal = soc_min + (soc0 - soc_min) * rng.uniform(0.5, 1.0, size=n)
    flex_day = base[:, 0] * rng.uniform(0.0, 3.0, size=n) * (rng.random(n) < 0.7)
    window = rng.integers(0, 3, size=n)  # night, midday, any time
    allowed = np.where(window[:, None] == 0, (hod < 7) | (hod >= 22),
                       np.where(window[:, None] == 1, (hod >= 9) & (hod < 16), True))
    # every day needs some allowed hours; the power cap leaves room to shift (1.5-3x the tightest day's need)
    day = (np.arange(horizon) * dt // 24).astype(np.int64)
    allowed_h = np.zeros((n, day[-1] + 1))
    np.add.at(allowed_h, (slice(None), day), allowed * dt)
    allowed[(allowed_h == 0).any(axis=1)] = True
    allowed_h = np.zeros((n, day[-1] + 1))
    np.add.at(allowed_h, (slice(None), day), allowed * dt)
    day_share = np.bincount(day) * dt / 24
    flex_max = flex_day * (day_share / allowed_h).max(axis=1) * rng.uniform(1.5, 3.0, size=n)
    export_limit = np.where(rng.random(n) < export_limited, base[:, 0] * rng.uniform(0.0, 0.5, size=n), np.inf)
    # an export-limited PV site must still be able to export its surplus (otherwise it may have to charge a
    # full battery)
    export_limit = np.maximum(export_limit, np.clip(-load, 0, None).max(axis=1))
    problems = DispatchProblems(
        site=[f"site{i:05d}" for i in range(n)], dt_hours=dt, load_kw=load, import_price=import_price,
        export_price=export_price, battery_kwh=battery, soc_min_kwh=soc_min, soc_initial_kwh=soc0,
        soc_terminal_kwh=terminal, charge_kw=power, discharge_kw=power, charge_efficiency=eta_c,
        discharge_efficiency=eta_d, degradation_cost=rng.uniform(0.0, 0.02, size=n) * (rng.random(n) < 0.5),
        demand_charge=rng.uniform(0.0, 20.0, size=n) * (rng.random(n) < 0.8),
        peak_floor_kw=np.where(rng.random(n) < 0.2, base[:, 0] * rng.uniform(0.5, 1.0, size=n), 0.0),
        import_limit_kw=np.full(n, np.inf), export_limit_kw=export_limit, flex_kwh_per_day=flex_day,
        flex_max_kw=flex_max, flex_allowed=allowed)
    # binding terminal condition: the most the battery can hold at the end (so the LP sits on that bound)
    binding = (rng.random(n) < binding_terminal) & ~zero
    if binding.any():
        reach = _reachable_soc(problems)
        problems.soc_terminal_kwh[binding] = reach[binding] * (1 - 1e-9)
    return problems


def _reachable_soc(problems: DispatchProblems) -> np.ndarray:
    """Highest state of charge each site's battery can have at the end of the horizon."""
    pr = problems
    hi_net = np.minimum(pr.charge_kw[:, None], pr.import_limit_kw[:, None] - pr.load_kw)
    gain = pr.dt_hours * np.where(hi_net >= 0, pr.charge_efficiency[:, None] * hi_net,
                                  hi_net / pr.discharge_efficiency[:, None])
    hi = pr.soc_initial_kwh.copy()
    for t in range(pr.horizon):
        hi = np.minimum(pr.battery_kwh, hi + gain[:, t])
    return hi
