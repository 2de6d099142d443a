"""A bursty candidate-level generator of refinement runs, calibrated to one real run.

Real LLM architecture-generator runs are bursty: the prompt collapses for a stretch of
candidates that may span iteration boundaries, and between collapses the validity rate
wanders far more than binomial noise allows. :func:`bursty_candidates` generates such runs
**one candidate at a time**, by a mechanism that the library's model (an iteration-level
two-regime hidden Markov model with beta-binomial counts) does not contain, so that
forecasts and fits can be back-tested against data the model cannot reproduce exactly.

Mechanism (a semi-Markov chain over the flattened candidate sequence)
    * **Healthy** state: each candidate is valid with probability ``p``. After each healthy
      candidate, with probability ``collapse_rate`` the prompt collapses, and with
      probability ``change_rate`` ``p`` is redrawn (a change point, not aligned with
      iterations) from ``Beta`` with mean ``healthy_mean`` and concentration
      ``healthy_concentration``.
    * **Collapsed** state: every candidate is valid with probability ``collapse_valid``
      (0 by default). A collapse lasts ``max(1, round(L))`` candidates with ``L``
      log-normal of median ``collapse_median`` and log-scale sd ``collapse_sigma``.
    * **Fresh prompt** (recovery): when a collapse ends the prompt is reset. For
      ``max(1, round(M))`` candidates, ``M`` log-normal of median ``reset_median`` and
      log-scale sd ``reset_sigma``, each candidate is valid with probability ``p`` drawn
      from ``Beta`` with mean ``reset_mean`` and concentration ``reset_concentration``; a
      fresh prompt neither collapses nor changes. Then the healthy state resumes with a
      new ``p`` from the healthy ``Beta``.
    * The chain runs for :data:`BURN_IN` candidates before the first recorded one, so a
      run starts near stationarity and has no trend.

Calibration
    :data:`REAL_RUN_STATS` holds the statistics of one measured run (CIFAR-10, 24
    iterations of 50 candidates). :func:`calibrate_bursty` simulates ``num_runs`` runs of
    every knob combination of a grid (the same seeds for every combination), averages each
    statistic of :func:`run_statistics` over the runs and keeps the combination closest to
    the targets (:func:`calibration_distance`). :data:`DEFAULT_KNOBS` is its result with the
    default arguments; regenerate it with::

        .venv/bin/python -c "from llmnas_transfer.study.bursty import calibrate_bursty; \\
print(calibrate_bursty())"

    (one to two minutes on one core). With the defaults, 1,000 runs
    (``average_statistics(1000, seed=1)``) average: mean 0.483, sd 0.342, empty
    iterations 2.74, longest invalid streak 116, lag-1 autocorrelation 0.21, recovery
    fraction 0.58, slope 0.000. The recovery fraction is the target the grid meets worst
    (0.58 against 1.0).

Example
-------
>>> valid = bursty_candidates(0)
>>> valid.shape, valid.dtype
((24, 50), dtype('bool'))
>>> sorted(run_statistics(valid))[:3]
['binomial_sd', 'empty_iterations', 'lag1_autocorr']
>>> bursty_runs(0, num_runs=2).shape
(48, 6)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.validate import check_float, check_int, check_size, did_you_mean

#: Statistics of one measured real run on CIFAR-10 (about 1,200 consecutive candidates in
#: 24 iterations of 50): the targets of :func:`calibrate_bursty`. Keys are those of
#: :func:`run_statistics`. ``binomial_sd`` is what binomial noise alone would give at the
#: mean rate (0.07). ``recovery_fraction`` records that every collapse was followed by an
#: iteration above 0.9 "within a few iterations" (read here as within 3); ``slope`` is 0
#: because the run showed no upward trend.
REAL_RUN_STATS: dict[str, float] = {
    "mean": 0.48,
    "sd": 0.32,
    "binomial_sd": 0.07,
    "empty_iterations": 3.0,
    "longest_invalid_streak": 112.0,
    "lag1_autocorr": 0.19,
    "recovery_fraction": 1.0,
    "slope": 0.0,
}

#: Scale of each statistic in :func:`calibration_distance` (a squared distance in these
#: units, summed). ``binomial_sd`` follows from ``mean`` and ``slope`` is 0 by construction,
#: so neither is used.
CALIBRATION_SCALES: dict[str, float] = {
    "mean": 0.02,
    "sd": 0.02,
    "empty_iterations": 0.5,
    "longest_invalid_streak": 15.0,
    "lag1_autocorr": 0.05,
    "recovery_fraction": 0.25,
}

#: Candidates simulated and dropped before the first recorded one.
BURN_IN = 1000

#: Knobs not searched by :func:`calibrate_bursty` (fixed by design).
FIXED_KNOBS: dict[str, float] = {
    "collapse_sigma": 0.4,
    "collapse_valid": 0.0,
    "reset_mean": 0.97,
    "reset_concentration": 40.0,
    "reset_sigma": 0.5,
}

#: The grid searched by :func:`calibrate_bursty` by default (729 combinations).
#: ``change_rate`` stays at or below 0.04 (healthy segments of 25 or more candidates on
#: average) so that healthy iterations differ from each other, as in the real run; faster
#: change points fit the autocorrelation a little better but average ``p`` out within an
#: iteration. ``healthy_concentration`` stays at or above 1.5: below it the healthy Beta
#: puts so much mass near 0 that healthy and collapsed stretches look alike.
CALIBRATION_GRID: dict[str, tuple[float, ...]] = {
    "collapse_rate": (0.005, 0.007, 0.01),
    "collapse_median": (55.0, 70.0, 90.0),
    "healthy_mean": (0.4, 0.45, 0.5),
    "healthy_concentration": (1.5, 2.0, 3.0),
    "change_rate": (0.01, 0.02, 0.04),
    "reset_median": (50.0, 75.0, 100.0),
}

#: The knobs :func:`calibrate_bursty` returns with its default arguments (see the module
#: docstring for the command that regenerates them).
DEFAULT_KNOBS: dict[str, float] = {
    "collapse_rate": 0.007,
    "collapse_median": 70.0,
    "healthy_mean": 0.45,
    "healthy_concentration": 1.5,
    "change_rate": 0.02,
    "reset_median": 75.0,
    **FIXED_KNOBS,
}

#: Bounds of each knob: (low, high, low_open, high_open).
_KNOB_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "collapse_rate": (0.0, 1.0, False, False),
    "change_rate": (0.0, 1.0, False, False),
    "collapse_median": (1.0, 1e6, False, False),
    "collapse_sigma": (0.0, 10.0, False, False),
    "collapse_valid": (0.0, 1.0, False, False),
    "healthy_mean": (0.0, 1.0, True, True),
    "healthy_concentration": (0.0, 1e6, True, False),
    "reset_mean": (0.0, 1.0, True, True),
    "reset_concentration": (0.0, 1e6, True, False),
    "reset_median": (1.0, 1e6, False, False),
    "reset_sigma": (0.0, 10.0, False, False),
}

_MAX_SIZE = 10**7


def _knobs(overrides: Mapping[str, float]) -> dict[str, float]:
    """The default knobs updated with ``overrides``, checked."""
    out = dict(DEFAULT_KNOBS)
    for name, value in overrides.items():
        if name not in _KNOB_BOUNDS:
            raise UserInputError(
                f"unknown knob {name!r}{did_you_mean(name, list(_KNOB_BOUNDS))}; "
                f"knobs: {', '.join(sorted(_KNOB_BOUNDS))}")
        low, high, low_open, high_open = _KNOB_BOUNDS[name]
        out[name] = check_float(name, value, low, high, low_open=low_open, high_open=high_open)
    if out["collapse_rate"] + out["change_rate"] > 1.0:
        raise UserInputError(
            f"collapse_rate + change_rate must be at most 1, got "
            f"{out['collapse_rate'] + out['change_rate']:g}")
    return out


def _beta(rng: np.random.Generator, mean: float, concentration: float) -> float:
    return float(rng.beta(mean * concentration, (1.0 - mean) * concentration))


def _lognormal_length(rng: np.random.Generator, median: float, sigma: float) -> int:
    return max(1, round(float(np.exp(rng.normal(np.log(median), sigma)))))


def _fill(rng: np.random.Generator, out: np.ndarray, pos: int, length: int, p: float) -> int:
    """Draw ``out[pos:pos + length]`` (clipped at the end) as Bernoulli(p); the new pos."""
    length = min(length, out.size - pos)
    out[pos:pos + length] = rng.random(length) < p
    return pos + length


def _simulate(rng: np.random.Generator, total: int, k: Mapping[str, float]) -> np.ndarray:
    """``total`` candidates' validity (flat) after :data:`BURN_IN` dropped ones."""
    n = BURN_IN + total
    out = np.empty(n, dtype=bool)
    hazard = k["collapse_rate"] + k["change_rate"]
    p = _beta(rng, k["healthy_mean"], k["healthy_concentration"])
    pos = 0
    while pos < n:
        # drifting healthy segment: ends at the first event (collapse or change point)
        seg = int(rng.geometric(hazard)) if hazard > 0 else n
        pos = _fill(rng, out, pos, seg, p)
        if pos >= n:
            break
        if rng.random() * hazard >= k["collapse_rate"]:  # change point
            p = _beta(rng, k["healthy_mean"], k["healthy_concentration"])
            continue
        pos = _fill(rng, out, pos, _lognormal_length(rng, k["collapse_median"],
                                                     k["collapse_sigma"]), k["collapse_valid"])
        # fresh prompt after the collapse, then drifting again
        p = _beta(rng, k["reset_mean"], k["reset_concentration"])
        pos = _fill(rng, out, pos, _lognormal_length(rng, k["reset_median"],
                                                     k["reset_sigma"]), p)
        p = _beta(rng, k["healthy_mean"], k["healthy_concentration"])
    return out[BURN_IN:]


def bursty_candidates(seed: int | Sequence[int], *, num_iterations: int = 24,
                      num_candidates: int = 50, **knobs: float) -> np.ndarray:
    """Validity of every candidate of one bursty run, generated candidate by candidate.

    Parameters
    ----------
    seed : int or sequence of int
        Seed of ``np.random.default_rng`` (non-negative).
    num_iterations, num_candidates : int
        Iterations of the run and candidates per iteration.
    **knobs : float
        Overrides of :data:`DEFAULT_KNOBS` (see the module docstring for their meaning).

    Returns
    -------
    numpy.ndarray
        ``(num_iterations, num_candidates)`` bool, ``True`` for a valid candidate; row
        ``t`` holds iteration ``t + 1`` in generation order.

    Example
    -------
    >>> v = bursty_candidates(3, num_iterations=4, num_candidates=10)
    >>> v.shape
    (4, 10)
    >>> bool((bursty_candidates(1, collapse_rate=0.0, healthy_mean=0.999,
    ...                         healthy_concentration=1e5, change_rate=0.5)).mean() > 0.99)
    True
    """
    seeds = [seed] if np.ndim(seed) == 0 else list(seed)
    for s in seeds:
        check_int("seed", s, 0)
    t = check_size("num_iterations", num_iterations, _MAX_SIZE)
    c = check_size("num_candidates", num_candidates, _MAX_SIZE)
    if t * c > _MAX_SIZE:
        raise UserInputError(f"num_iterations x num_candidates = {t * c} is absurdly large "
                             f"(limit {_MAX_SIZE})")
    k = _knobs(knobs)
    rng = np.random.default_rng(seed)
    return _simulate(rng, t * c, k).reshape(t, c)


def _longest_false(flat: np.ndarray) -> int:
    """Length of the longest run of ``False`` in a 1-d bool array."""
    x = np.concatenate(([True], flat.astype(bool), [True]))
    where = np.flatnonzero(x)
    return int(np.max(np.diff(where)) - 1)


def run_statistics(valid: np.ndarray, *, collapse_rate: float = 0.05,
                   recovery_rate: float = 0.9, within: int = 3) -> dict[str, float]:
    """Burstiness statistics of one run from its candidates' validity.

    Parameters
    ----------
    valid : numpy.ndarray
        ``(iterations, candidates)`` bool (or 0/1), rows in generation order.
    collapse_rate : float
        An iteration whose validity rate is at most this is a collapse (empty or near
        empty); consecutive collapsed iterations form one collapse.
    recovery_rate, within : float, int
        A collapse recovers when one of the ``within`` iterations after it has a rate above
        ``recovery_rate``.

    Returns
    -------
    dict
        ``mean`` and ``sd`` (n-1 denominator) across iterations of the rates;
        ``binomial_sd`` = ``sqrt(mean (1 - mean) / candidates)``; ``empty_iterations``
        (no valid candidate); ``longest_invalid_streak`` over the flattened candidate
        sequence (across iteration boundaries); ``lag1_autocorr`` of the rates (the usual
        estimator ``sum (r_t - m)(r_{t+1} - m) / sum (r_t - m)^2``, ``nan`` if the rates are
        constant); ``recovery_fraction``: the fraction of collapses followed by a recovery,
        among collapses with ``within`` iterations after them (``nan`` if none);
        ``slope``: least-squares slope of rate on iteration number.

    Example
    -------
    >>> v = np.zeros((4, 10), dtype=bool)
    >>> v[1] = True; v[3, 5:] = True
    >>> s = run_statistics(v)
    >>> s["mean"], s["empty_iterations"], s["longest_invalid_streak"]
    (0.375, 2.0, 15.0)
    """
    v = np.asarray(valid)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 1:
        raise UserInputError(f"valid must be a 2-d (iterations >= 2, candidates >= 1) array, "
                             f"got shape {v.shape}")
    if not (v.dtype == bool or np.all((v == 0) | (v == 1))):
        raise UserInputError("valid must hold only booleans or 0/1")
    check_float("collapse_rate", collapse_rate, 0.0, 1.0)
    check_float("recovery_rate", recovery_rate, 0.0, 1.0)
    check_int("within", within, 1)
    v = v.astype(bool)
    t, n = v.shape
    rates = v.mean(axis=1)
    m = float(rates.mean())
    dev = rates - m
    ss = float(np.sum(dev**2))
    lag1 = float(np.sum(dev[:-1] * dev[1:]) / ss) if ss > 0 else float("nan")
    it = np.arange(1, t + 1, dtype=float)
    slope = float(np.sum((it - it.mean()) * dev) / np.sum((it - it.mean())**2))
    collapsed = rates <= collapse_rate
    recovered = eligible = 0
    i = 0
    while i < t:
        if collapsed[i]:
            j = i
            while j + 1 < t and collapsed[j + 1]:
                j += 1
            if j + within < t:
                eligible += 1
                recovered += bool(np.any(rates[j + 1:j + 1 + within] > recovery_rate))
            i = j + 1
        else:
            i += 1
    return {
        "mean": m,
        "sd": float(rates.std(ddof=1)),
        "binomial_sd": float(np.sqrt(m * (1.0 - m) / n)),
        "empty_iterations": float(np.sum(~v.any(axis=1))),
        "longest_invalid_streak": float(_longest_false(v.ravel())),
        "lag1_autocorr": lag1,
        "recovery_fraction": recovered / eligible if eligible else float("nan"),
        "slope": slope,
    }


def average_statistics(num_runs: int = 200, *, seed: int = 0, num_iterations: int = 24,
                       num_candidates: int = 50, **knobs: float) -> dict[str, float]:
    """Mean (ignoring ``nan``) of each :func:`run_statistics` over simulated runs.

    Run ``r`` (1-based) uses ``np.random.default_rng([seed, r])``, as trial ``r`` of
    :func:`bursty_runs`.

    Example
    -------
    >>> s = average_statistics(5)
    >>> 0.0 < s["mean"] < 1.0
    True
    """
    check_size("num_runs", num_runs, _MAX_SIZE)
    stats = [run_statistics(bursty_candidates([seed, r], num_iterations=num_iterations,
                                              num_candidates=num_candidates, **knobs))
             for r in range(1, num_runs + 1)]
    keys = stats[0].keys()
    out = {}
    for key in keys:
        vals = np.array([s[key] for s in stats], dtype=float)
        out[key] = float(np.nanmean(vals)) if np.any(np.isfinite(vals)) else float("nan")
    return out


def calibration_distance(stats: Mapping[str, float],
                         targets: Mapping[str, float] = REAL_RUN_STATS) -> float:
    """Sum over :data:`CALIBRATION_SCALES` of ``((stats - target) / scale)**2``.

    Example
    -------
    >>> calibration_distance(REAL_RUN_STATS)
    0.0
    """
    total = 0.0
    for key, scale in CALIBRATION_SCALES.items():
        d = (stats[key] - targets[key]) / scale
        total += d * d if np.isfinite(d) else np.inf
    return float(total)


def calibrate_bursty(grid: Mapping[str, Sequence[float]] | None = None, *,
                     num_runs: int = 200, seed: int = 0,
                     targets: Mapping[str, float] = REAL_RUN_STATS) -> dict[str, float]:
    """The knobs of ``grid`` whose average statistics are closest to ``targets``.

    Every combination is simulated with the same ``num_runs`` seeds
    (:func:`average_statistics`), so the comparison is between knobs, not seeds. Knobs not
    in ``grid`` take their :data:`DEFAULT_KNOBS` value. Ties go to the first combination in
    grid order.

    Parameters
    ----------
    grid : mapping of knob -> values, optional
        Defaults to :data:`CALIBRATION_GRID` (729 combinations; one to two minutes).
    num_runs, seed : int
        Runs per combination and the base seed.
    targets : mapping
        Target statistics, keys of :data:`CALIBRATION_SCALES`.

    Returns
    -------
    dict
        All knobs (the chosen grid values and the others at their defaults).

    Example
    -------
    >>> knobs = calibrate_bursty({"change_rate": (0.01, 0.02)}, num_runs=20)
    >>> sorted(knobs) == sorted(DEFAULT_KNOBS)
    True
    """
    grid = dict(CALIBRATION_GRID if grid is None else grid)
    names = list(grid)
    _knobs({name: vals[0] for name, vals in grid.items() if len(vals)})
    if any(len(vals) == 0 for vals in grid.values()):
        raise UserInputError("calibrate_bursty: every grid knob needs at least one value")
    best, best_d = None, np.inf
    for combo in itertools.product(*(grid[name] for name in names)):
        knobs = dict(zip(names, combo, strict=True))
        d = calibration_distance(average_statistics(num_runs, seed=seed, **knobs), targets)
        if d < best_d:
            best, best_d = knobs, d
    if best is None:
        raise UserInputError("calibrate_bursty: no grid combination gave finite statistics")
    return _knobs(best)


def bursty_runs(seed: int, *, num_runs: int = 1, dataset: str = "cifar-10",
                task: str = "classification", num_iterations: int = 24,
                num_candidates: int = 50, **knobs: float) -> pd.DataFrame:
    """Bursty runs in the counts form (``docs/data-format.md``).

    Trial ``r`` (1-based) is :func:`bursty_candidates` with seed ``[seed, r]``: each run has
    its own stream, so a run does not depend on ``num_runs``.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, task, trial, iteration, n_generated, n_valid`` (trial and
        iteration 1-based), one row per trial and iteration.

    Example
    -------
    >>> df = bursty_runs(7, num_runs=3)
    >>> list(df.columns)
    ['dataset', 'task', 'trial', 'iteration', 'n_generated', 'n_valid']
    >>> df.equals(bursty_runs(7, num_runs=3))
    True
    """
    check_int("seed", seed, 0)
    r = check_size("num_runs", num_runs, _MAX_SIZE)
    t = check_size("num_iterations", num_iterations, _MAX_SIZE)
    if not isinstance(dataset, str) or not dataset:
        raise UserInputError(f"dataset must be a non-empty string, got {dataset!r}")
    if not isinstance(task, str) or not task:
        raise UserInputError(f"task must be a non-empty string, got {task!r}")
    counts = np.stack([
        bursty_candidates([seed, trial], num_iterations=t, num_candidates=num_candidates,
                          **knobs).sum(axis=1)
        for trial in range(1, r + 1)])
    return pd.DataFrame({
        "dataset": [dataset] * (r * t),
        "task": [task] * (r * t),
        "trial": np.repeat(np.arange(1, r + 1, dtype=np.int64), t),
        "iteration": np.tile(np.arange(1, t + 1, dtype=np.int64), r),
        "n_generated": np.full(r * t, num_candidates, dtype=np.int64),
        "n_valid": counts.ravel().astype(np.int64),
    })
