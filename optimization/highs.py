"""The HiGHS reference: each site's LP from `problem.standard_form` (the same builder the batched solver
reads), solved one at a time by HiGHS's simplex, optionally spread over worker processes."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from dataclasses import dataclass

import numpy as np

from optimization.problem import NV, DispatchProblems, StandardForm, sparse_matrix, standard_form


@dataclass
class ReferenceSolutions:
    """HiGHS's answers for a batch: objective in currency (nan where not optimal), scaled solution."""

    status: list[str]
    objective: np.ndarray   # (N,)
    x: np.ndarray           # (N, NV, T) scaled, as in StandardForm
    peak: np.ndarray        # (N,)


def _lp(sf: StandardForm, i: int):  # noqa: ANN202 - highspy.HighsLp
    import highspy

    t = sf.horizon
    rows, cols, vals = sparse_matrix(sf, i)
    order = np.lexsort((rows, cols))
    rows, cols, vals = rows[order], cols[order], vals[order]
    ncol = NV * t + 1
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = 3 * t + sf.days
    lp.col_cost_ = np.append(sf.cost[i].ravel(), sf.cost_peak[i])
    lp.col_lower_ = np.append(sf.lower[i].ravel(), sf.lower_peak[i])
    lp.col_upper_ = np.append(np.minimum(sf.upper[i].ravel(), highspy.kHighsInf), highspy.kHighsInf)
    rhs = np.append(sf.rhs[i].ravel(), sf.rhs_day[i])
    lp.row_lower_ = rhs
    lp.row_upper_ = rhs
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.searchsorted(cols, np.arange(ncol + 1)).astype(np.int32)
    lp.a_matrix_.index_ = rows.astype(np.int32)
    lp.a_matrix_.value_ = vals
    return lp


_HIGHS = None  # one instance per process, reused: creating one costs more than solving a small LP


def solve_one(sf: StandardForm, i: int) -> tuple[str, float, np.ndarray]:
    """Site i with HiGHS (default options, one thread): (status, scaled objective, scaled column values)."""
    import highspy

    global _HIGHS
    if _HIGHS is None:
        _HIGHS = highspy.Highs()
        _HIGHS.setOptionValue("output_flag", False)
        _HIGHS.setOptionValue("threads", 1)
    h = _HIGHS
    h.clearModel()
    h.passModel(_lp(sf, i))
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        return h.modelStatusToString(status), float("nan"), np.full(NV * sf.horizon + 1, np.nan)
    return "optimal", h.getInfo().objective_function_value, np.asarray(h.getSolution().col_value)


def _solve_range(args: tuple[StandardForm, int, int]) -> list[tuple[str, float, np.ndarray]]:
    sf, start, stop = args
    part = sf.take(slice(start, stop))  # each worker gets only its sites' data
    return [solve_one(part, i) for i in range(part.n)]


def worker_pool(workers: int) -> multiprocessing.pool.Pool:
    """Worker processes for `solve_reference(pool=...)` (spawned: safe beside threads and CUDA)."""
    return multiprocessing.get_context("spawn").Pool(workers)


def solve_reference(problems: DispatchProblems | StandardForm, workers: int = 1,
                    pool: multiprocessing.pool.Pool | None = None) -> ReferenceSolutions:
    """Every site with HiGHS, in turn (workers=1), or spread over `workers` processes (a `pool` of them
    given here is reused, so its start-up is not paid again)."""
    sf = problems if isinstance(problems, StandardForm) else standard_form(problems)
    n, t = sf.n, sf.horizon
    if workers <= 1 and pool is None:
        answers = _solve_range((sf, 0, n))
    else:
        size = pool._processes if pool is not None else workers
        bounds = np.linspace(0, n, 4 * size + 1).astype(int)
        chunks = [(sf.take(slice(a, b)), 0, b - a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if pool is not None:
            answers = [a for part in pool.map(_solve_range, chunks) for a in part]
        else:
            with worker_pool(workers) as own:
                answers = [a for part in own.map(_solve_range, chunks) for a in part]
    cols = np.stack([a[2] for a in answers])
    return ReferenceSolutions(status=[a[0] for a in answers],
                              objective=np.array([a[1] for a in answers]) * sf.cost_scale,
                              x=cols[:, :-1].reshape(n, NV, t), peak=cols[:, -1])
