"""Site tables in and schedules out (pandas/pyarrow live here only; the solver never needs them).

A site table is long: one row per site and step, in step order,

    site, load_kw, import_price [, timestamp, export_price, flex_allowed, <site parameters>]

where the site parameters (`SITE_PARAMETERS`: battery_kwh, charge_kw, ...) are columns whose value is the
same on every row of a site (a column left out takes its default for every site). Every site needs the
same number of steps. The step length comes from the timestamps when present, else from `step_minutes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow

from optimization.problem import DispatchProblems, ProblemError
from optimization.solver import Solution

SITE_PARAMETERS: dict[str, float] = {
    "battery_kwh": 0.0, "soc_min_kwh": 0.0, "soc_initial_kwh": 0.0, "soc_terminal_kwh": 0.0,
    "charge_kw": 0.0, "discharge_kw": 0.0, "charge_efficiency": 0.95, "discharge_efficiency": 0.95,
    "degradation_cost": 0.0, "demand_charge": 0.0, "peak_floor_kw": 0.0,
    "import_limit_kw": np.inf, "export_limit_kw": np.inf, "flex_kwh_per_day": 0.0, "flex_max_kw": 0.0,
}
STEP_COLUMNS = ("load_kw", "import_price", "export_price", "flex_allowed")
REQUIRED = ("site", "load_kw", "import_price")


def read_table(path: str | Path) -> pd.DataFrame:
    """The site table of a CSV or Parquet file; ProblemError naming the file for one that cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no site table at {path}")
    kind = {".parquet": "Parquet", ".pq": "Parquet", ".csv": "CSV"}.get(path.suffix.lower())
    if kind is None:
        raise ProblemError(f"{path}: expected a .csv or .parquet site table")
    try:
        return pd.read_parquet(path) if kind == "Parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ProblemError(f"{path}: the site table is empty") from None
    except (ValueError, OSError, UnicodeDecodeError, pyarrow.ArrowException) as err:  # corrupt or not a table
        raise ProblemError(f"{path}: not a readable {kind} site table ({str(err).splitlines()[0][:200]})") from None


def problems_from_frame(frame: pd.DataFrame, *, step_minutes: float | None = None) -> DispatchProblems:
    """Build the batch from a long site table (see the module docstring)."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ProblemError(f"site table: missing column(s) {missing}; it has {list(frame.columns)}")
    unknown = sorted(set(frame.columns) - set(REQUIRED) - set(STEP_COLUMNS) - set(SITE_PARAMETERS) - {"timestamp"})
    if unknown:
        raise ProblemError(f"site table: unknown column(s) {unknown}; known site parameters are "
                           f"{sorted(SITE_PARAMETERS)}")
    if frame.empty:
        raise ProblemError("site table: no rows")
    frame = frame.copy()
    frame["site"] = frame["site"].astype(str)
    groups = frame.groupby("site", sort=False)
    sizes = groups.size()
    if sizes.nunique() != 1:
        raise ProblemError(f"site table: every site needs the same number of steps; got {sizes.to_dict()}")
    t = int(sizes.iloc[0])
    sites = list(groups.groups)
    dt = _step_hours(frame, groups, step_minutes)

    def steps(column: str, default: float | bool) -> np.ndarray:
        if column not in frame.columns:
            return np.full((len(sites), t), default)
        values = pd.to_numeric(frame[column], errors="coerce") if column != "flex_allowed" else frame[column]
        if column != "flex_allowed" and values.isna().any():
            bad = frame.loc[values.isna(), "site"].iloc[0]
            raise ProblemError(f"{column}: not a number at site {bad!r}")
        return np.stack([values[idx].to_numpy() for idx in groups.indices.values()])

    params = {}
    for name, default in SITE_PARAMETERS.items():
        if name not in frame.columns:
            params[name] = np.full(len(sites), default)
            continue
        values = pd.to_numeric(frame[name], errors="coerce")
        per_site = values.groupby(frame["site"], sort=False)
        if (per_site.nunique(dropna=False) > 1).any():
            bad = per_site.nunique(dropna=False).idxmax()
            raise ProblemError(f"{name}: a site parameter must be the same on all rows of a site (site {bad!r})")
        first = per_site.first().reindex(sites)
        params[name] = first.fillna(default).to_numpy(dtype=np.float64)
    allowed = steps("flex_allowed", True).astype(bool)
    import_price = steps("import_price", 0.0)
    return DispatchProblems(site=sites, dt_hours=dt, load_kw=steps("load_kw", 0.0), import_price=import_price,
                            export_price=steps("export_price", 0.0), flex_allowed=allowed, **params)


def _step_hours(frame: pd.DataFrame, groups, step_minutes: float | None) -> float:  # noqa: ANN001
    if "timestamp" not in frame.columns:
        return (step_minutes or 60) / 60.0
    stamps = pd.to_datetime(frame["timestamp"], errors="coerce")
    if stamps.isna().any():
        raise ProblemError("timestamp: could not parse every value as a date and time")
    steps = set()
    for idx in groups.indices.values():
        steps.update(np.diff(stamps.iloc[idx].to_numpy()).astype("timedelta64[s]").astype(np.int64).tolist())
    if len(steps) > 1 or (steps and min(steps) <= 0):
        raise ProblemError("timestamp: steps must be increasing and evenly spaced, the same for every site")
    return (steps.pop() / 3600.0) if steps else (step_minutes or 60) / 60.0


def read_sites(path: str | Path, *, step_minutes: float | None = None) -> DispatchProblems:
    """A site table from CSV or Parquet as a batch of dispatch problems."""
    return problems_from_frame(read_table(path), step_minutes=step_minutes)


def schedules_frame(problems: DispatchProblems, solution: Solution) -> pd.DataFrame:
    """One row per site and step: load, the schedule (kW, kWh) and the site's status."""
    n, t = problems.n, problems.horizon
    sched = solution.schedule()
    frame = pd.DataFrame({"site": np.repeat(problems.site, t), "step": np.tile(np.arange(t), n),
                          "load_kw": problems.load_kw.ravel()})
    for name in ("charge_kw", "discharge_kw", "soc_kwh", "import_kw", "export_kw", "flex_kw"):
        frame[name] = sched[name].ravel()
    frame["status"] = np.repeat(solution.status, t)
    return frame


def summary_frame(problems: DispatchProblems, solution: Solution, baseline: Solution) -> pd.DataFrame:
    """Per site: cost and peak import with the battery (the solution) and without it (the baseline)."""
    with_b, without = solution.schedule(), baseline.schedule()
    return pd.DataFrame({
        "site": problems.site, "status": solution.status,
        "cost": solution.objective, "cost_without_battery": baseline.objective,
        "savings": baseline.objective - solution.objective,
        "peak_kw": with_b["import_kw"].max(axis=1), "peak_without_battery_kw": without["import_kw"].max(axis=1),
        "iterations": solution.iterations,
        "reason": [r or "" for r in solution.reason],
    })
