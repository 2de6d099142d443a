"""Rolling-origin back-testing of validity-rate forecasts against naive baselines.

:func:`backtest` fits the model on each run's iterations ``1..k`` for the origins
``k = K, K + S, ...`` (below the last iteration), forecasts the next ``H`` iterations at
the runs' own candidate counts, and scores the forecasts of the observed rates with the
quantile (pinball) score over 19 levels, the CRPS and the coverage of central intervals.
The rates are counts over candidate counts, so a forecast's quantiles often tie with the
outcome (at 0 and 1 on bursty runs); coverage is counted by the randomized PIT
(:func:`~llmnas_transfer.summarize.scores.pit_coverage`), whose mean is the nominal level
for a calibrated forecast.
The naive baselines of :mod:`llmnas_transfer.study.baselines` are scored on the same
targets.

Every origin's fit uses the same compiled programs: the model is the one of the whole
runs with the iterations after ``k`` left unobserved (they add nothing to the
likelihood, so the posterior is that of the truncated runs), and only the forecast
kernel, which is small, is compiled per origin. Whether the model has bursts is decided
once, on the data up to the first origin (:func:`~llmnas_transfer.fit.preparation.
choose_bursts`), so no fit sees the iterations it is scored on.

Example
-------
>>> from llmnas_transfer.study.bursty import bursty_runs
>>> from llmnas_transfer.io.runs import runs_from_frame
>>> bt = backtest(runs_from_frame(bursty_runs(0)), origin=16, horizon=8,
...               chains=2, warmup=300, draws=300)  # doctest: +SKIP
>>> bt.summary[["method", "quantile_score", "coverage_90"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro.diagnostics import split_gelman_rubin

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.assemble import run_forecasts
from llmnas_transfer.fit.laplace import laplace_start
from llmnas_transfer.fit.model import RunsData
from llmnas_transfer.fit.preparation import BURSTS, Prepared, choose_bursts, prepare
from llmnas_transfer.fit.sampling import sample_nuts
from llmnas_transfer.io.runs import ObservedRuns, read_runs
from llmnas_transfer.sim.keys import as_key
from llmnas_transfer.study.baselines import BASELINES
from llmnas_transfer.summarize.scores import (
    crps_from_samples,
    pinball_losses,
    pit_coverage,
    quantile_levels,
    sample_quantiles,
)
from llmnas_transfer.validate import check_choice, check_float, check_int

#: the model's name in the score tables
MODEL = "model"
#: central intervals whose coverage is scored (the last is the default ``ci``)
COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.9)
#: quantile levels kept per target for the fan chart
FAN_LEVELS: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
#: columns of :attr:`Backtest.scores`
SCORE_COLUMNS: tuple[str, ...] = (
    "method", "origin", "run", "iteration", "step", "n_generated", "observed_rate",
    "quantile_score", "crps", *(f"in_{round(100 * c)}" for c in COVERAGE_LEVELS), "in_ci",
    *(f"q{lv:g}" for lv in FAN_LEVELS),
)
#: columns of :attr:`Backtest.summary`
SUMMARY_COLUMNS: tuple[str, ...] = (
    "method", "targets", "quantile_score", "crps",
    *(f"coverage_{round(100 * c)}" for c in COVERAGE_LEVELS), "coverage_ci",
    "relative_score",
)


class OriginFit(NamedTuple):
    """How the fit at one origin went."""

    origin: int
    seconds: float
    max_rhat: float
    divergences: int
    draws: int


class Backtest(NamedTuple):
    """Scores of every method on every target, their summary, and the fits' diagnostics.

    ``scores`` has :data:`SCORE_COLUMNS` (one row per method, origin, run and forecast
    iteration with an observed rate; ``in_50``, ``in_90`` and ``in_ci`` the probability that
    the target's randomized PIT lies in the central 50%, 90% and ``ci`` interval, ``q*``
    the predictive quantiles the fan chart draws); ``summary`` has
    :data:`SUMMARY_COLUMNS` (``relative_score``: the method's quantile score over the
    model's, lower is better); ``observed`` the observed rate per run and iteration;
    ``settings`` the arguments and the bursts choice.
    """

    scores: pd.DataFrame
    summary: pd.DataFrame
    fits: tuple[OriginFit, ...]
    observed: pd.DataFrame
    settings: dict
    notes: tuple[str, ...]


def _with_columns(d: RunsData, cut: Callable, feedback: Callable) -> RunsData:
    """``d`` with ``cut`` applied to every (run, iteration) array and ``feedback`` to the
    accuracy feedback (when there is one)."""
    fb = None if d.accuracy_feedback is None else feedback(d.accuracy_feedback)
    return RunsData(d.dataset_idx, d.task_idx, cut(d.n_generated), cut(d.n_valid),
                    jax.tree.map(cut, d.accuracy), jax.tree.map(cut, d.novelty), fb)


def mask_after(prep: Prepared, k: int) -> Prepared:
    """``prep`` with every iteration after ``k`` unobserved (same shapes and spec).

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> p = mask_after(prepare(toy_runs(num_iterations=4)), 2)
    >>> np.asarray(p.data.n_generated)[0].tolist()[2:]
    [0.0, 0.0]
    """
    keep = jnp.arange(prep.data.n_generated.shape[1]) < k
    data = _with_columns(prep.data, lambda x: jnp.where(keep, x, jnp.zeros_like(x)),
                         lambda fb: jnp.where(keep, fb, 0.5))
    return dataclasses.replace(prep, data=data)


def truncate(prep: Prepared, k: int, horizon: int) -> Prepared:
    """``prep`` cut to its first ``k`` iterations, forecasting ``horizon`` more."""
    data = _with_columns(prep.data, lambda x: x[:, :k], lambda fb: fb[:, :k])
    spec = dataclasses.replace(prep.spec, num_iterations=k, num_forecast=horizon,
                               gap_iteration=k)
    return dataclasses.replace(prep, spec=spec, data=data)


def _max_rhat(samples: dict, latent: set[str]) -> float:
    worst = 1.0
    for name in latent:
        x = np.asarray(samples[name], np.float64)
        if x.shape[0] < 2 or x.shape[1] < 4:
            return float("nan")
        r = np.asarray(split_gelman_rubin(x.reshape(x.shape[:2] + (-1,))))
        if np.isfinite(r).any():
            worst = max(worst, float(np.nanmax(r)))
    return worst


def origins_of(origin: int, horizon: int, step: int, num_iterations: int) -> list[int]:
    """The origins ``origin, origin + step, ...`` that leave at least one iteration.

    Example
    -------
    >>> origins_of(16, 8, 4, 24)
    [16, 20]
    """
    return list(range(origin, num_iterations, step))


def check_origins(origin: int, horizon: int, step: int, num_iterations: int) -> list[int]:
    """:func:`origins_of`, or a one-line error when no origin leaves an iteration.

    Example
    -------
    >>> check_origins(16, 8, 4, 24)
    [16, 20]
    """
    ks = origins_of(origin, horizon, step, num_iterations)
    if not ks:
        raise UserInputError(f"origin {origin} leaves no iteration to forecast: the runs "
                             f"have {num_iterations} iterations")
    return ks


def _score_rows(method: str, k: int, run: str, draws: np.ndarray, y: np.ndarray,
                ng: np.ndarray, its: np.ndarray, ci: float, levels: np.ndarray) -> list[dict]:
    """One row per target of one method's draws (S, H) of a run's rates."""
    cols = draws.T  # (H, S)
    q = sample_quantiles(cols, levels)
    pin = pinball_losses(q, levels, y)
    crps = crps_from_samples(cols, y)
    fan = sample_quantiles(cols, np.asarray(FAN_LEVELS))
    inside = {c: pit_coverage(cols, y, c) for c in (*COVERAGE_LEVELS, ci)}
    rows = []
    for h in range(len(y)):
        row = {"method": method, "origin": k, "run": run, "iteration": int(its[h]),
               "step": int(its[h]) - k, "n_generated": int(ng[h]),
               "observed_rate": float(y[h]), "quantile_score": float(pin[h]),
               "crps": float(crps[h])}
        for c in COVERAGE_LEVELS:
            row[f"in_{round(100 * c)}"] = float(inside[c][h])
        row["in_ci"] = float(inside[ci][h])
        for lv, v in zip(FAN_LEVELS, fan[h], strict=True):
            row[f"q{lv:g}"] = float(v)
        rows.append(row)
    return rows


def summarize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean scores and coverages per method (:data:`SUMMARY_COLUMNS`), the model first.

    Example
    -------
    >>> df = pd.DataFrame({"method": ["model", "replay"], "quantile_score": [0.1, 0.2],
    ...                    "crps": [0.2, 0.4], "in_50": [True, False],
    ...                    "in_90": [True, True], "in_ci": [True, True]})
    >>> summarize_scores(df)["relative_score"].tolist()
    [1.0, 2.0]
    """
    g = scores.groupby("method", sort=False)
    out = pd.DataFrame({
        "targets": g.size(),
        "quantile_score": g["quantile_score"].mean(),
        "crps": g["crps"].mean(),
        **{f"coverage_{round(100 * c)}": g[f"in_{round(100 * c)}"].mean()
           for c in COVERAGE_LEVELS},
        "coverage_ci": g["in_ci"].mean(),
    }).reset_index()
    ref = out.loc[out["method"] == MODEL, "quantile_score"]
    base = float(ref.iloc[0]) if len(ref) else float("nan")
    out["relative_score"] = out["quantile_score"] / base
    order = [MODEL, *BASELINES]
    out["_o"] = out["method"].map({m: i for i, m in enumerate(order)}).fillna(len(order))
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)[
        list(SUMMARY_COLUMNS)]


def backtest(
    runs: ObservedRuns | str,
    *,
    origin: int,
    horizon: int,
    step: int = 1,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    bursts: str = "auto",
    trend: str = "setting",
    target_accept: float = 0.9,
    ci: float = 0.94,
    baseline_draws: int = 4000,
    on_origin: Callable[[int, int, OriginFit], None] | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> Backtest:
    """Rolling-origin evaluation of the model's forecasts and the naive baselines.

    Parameters
    ----------
    runs : observed runs (or a file path); every run is scored.
    origin, horizon, step : fit on iterations ``1..k`` for ``k = origin, origin + step,
        ...`` below the runs' last iteration, and score iterations ``k + 1 .. k + horizon``
        where observed.
    chains, warmup, draws, seed, target_accept, trend : the NUTS fit at each origin
        (as :func:`~llmnas_transfer.fit.inference.fit_runs`; origin ``i`` uses the seed's
        ``i``-th key).
    bursts : ``"auto"``, ``"on"`` or ``"off"``; ``"auto"`` decides on the data up to the
        first origin, and every origin uses that choice.
    ci : central interval whose coverage is reported besides 50% and 90% (``in_ci``).
    baseline_draws : predictive draws of each baseline per target.
    on_origin : called as ``on_origin(i, n, fit)`` after each origin's fit.
    progress : ``True`` for a bar of each origin's NUTS iterations with the time left,
        on stderr, or a callback ``f(done, total)``; the draws do not depend on it.

    Returns
    -------
    :class:`Backtest`.
    """
    origin = check_int("origin", origin, 1, 10**6)
    horizon = check_int("horizon", horizon, 1, 10**6)
    step = check_int("step", step, 1, 10**6)
    chains = check_int("chains", chains, 1, 64)
    warmup = check_int("warmup", warmup, 1, 10**6)
    draws = check_int("draws", draws, 1, 10**6)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    ci = check_float("ci", ci, 0.0, 1.0, low_open=True, high_open=True)
    baseline_draws = check_int("baseline_draws", baseline_draws, 10, 10**7)
    bursts = check_choice("bursts", bursts, BURSTS)
    if not isinstance(runs, ObservedRuns):
        runs = read_runs(runs)
    full = prepare(runs, trend=trend, bursts="off")
    T = full.spec.num_iterations
    ks = check_origins(origin, horizon, step, T)
    nv = np.asarray(full.data.n_valid, np.float64)
    ng = np.asarray(full.data.n_generated, np.float64)
    notes: list[str] = []
    on = choose_bursts(bursts, nv[:, :ks[0]], ng[:, :ks[0]], notes)
    prep = dataclasses.replace(full, spec=dataclasses.replace(full.spec, bursts=on))
    levels = quantile_levels(19)
    names = [f"{d}|{t}|{r}" for d, t, r in zip(prep.run_dataset, prep.run_task,
                                                prep.run_trial, strict=True)]
    keys = jax.random.split(as_key(seed), len(ks))
    rng = np.random.default_rng([seed, 1])
    rows: list[dict] = []
    fits: list[OriginFit] = []
    for i, k in enumerate(ks):
        t0 = time.perf_counter()
        k_init, k_fit, k_fc = jax.random.split(keys[i], 3)
        masked = mask_after(prep, k)
        start = laplace_start(k_init, masked, chains)
        sampled = sample_nuts(k_fit, masked, start, chains=chains, draws=draws,
                              warmup=warmup, target_accept=target_accept, progress=progress)
        H = min(horizon, T - k)
        counts = run_forecasts(k_fc, sampled.samples, truncate(prep, k, H), ng[:, :k + H])
        latent = set(sampled.samples) - set(sampled.deterministic or {})
        fit = OriginFit(k, round(time.perf_counter() - t0, 3),
                        _max_rhat(sampled.samples, latent),
                        int(np.asarray(sampled.stats["diverging"]).sum()),
                        int(counts.shape[0]))
        fits.append(fit)
        for n, run in enumerate(names):
            its = np.arange(k, k + H)
            seen = ng[n, its] > 0
            past = ng[n, :k] > 0
            if not seen.any():
                continue
            if not past.any():
                notes.append(f"run {run} has no data before iteration {k + 1}: not scored "
                             f"at origin {k}")
                continue
            y = nv[n, its][seen] / ng[n, its][seen]
            fut = ng[n, its][seen]
            model = counts[:, n, k:k + H][:, seen] / fut
            rows += _score_rows(MODEL, k, run, model, y, fut, its[seen] + 1, ci, levels)
            for name, fn in BASELINES.items():
                d = fn(nv[n, :k][past], ng[n, :k][past], fut, num_draws=baseline_draws,
                       rng=rng)
                rows += _score_rows(name, k, run, d, y, fut, its[seen] + 1, ci, levels)
        if on_origin is not None:
            on_origin(i, len(ks), fit)
    if not rows:
        raise UserInputError("no forecast iteration has an observed rate to score")
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(ng > 0, nv / np.where(ng > 0, ng, 1.0), np.nan)
    observed = pd.DataFrame([
        {"run": run, "iteration": t + 1, "n_generated": int(ng[n, t]),
         "observed_rate": float(rate[n, t])}
        for n, run in enumerate(names) for t in range(T) if ng[n, t] > 0])
    settings = {"origin": origin, "horizon": horizon, "step": step, "origins": ks,
                "chains": chains, "warmup": warmup, "draws": draws, "seed": seed,
                "bursts": "on" if on else "off", "trend": trend, "ci": ci,
                "target_accept": target_accept, "levels": len(levels)}
    return Backtest(scores, summarize_scores(scores), tuple(fits), observed, settings,
                    tuple(notes))


__all__ = ["Backtest", "COVERAGE_LEVELS", "FAN_LEVELS", "MODEL", "OriginFit",
           "SCORE_COLUMNS", "SUMMARY_COLUMNS", "backtest", "check_origins", "mask_after",
           "origins_of", "summarize_scores", "truncate"]
