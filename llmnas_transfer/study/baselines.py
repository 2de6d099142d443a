"""Naive forecasters of a run's next validity rates, the baselines of rolling-origin tests.

Each forecaster takes one run's past counts (``n_valid[:k]``, ``n_generated[:k]``, the
first ``k >= 1`` iterations), the candidate counts of the next ``H`` iterations
(``n_future``) and returns predictive draws of the **observed** future rates
``n_valid / n_generated``, shape ``(num_draws, H)``. They share the signature
``f(n_valid, n_generated, n_future, *, num_draws=1000, rng=None)``; ``rng`` is a
``numpy.random.Generator`` or a seed.

* :func:`replay` - each future rate is one of the past rates, drawn uniformly.
* :func:`last_mean_binomial` - binomial counts at the pooled rate of the last ``window``
  iterations (``"last4_binomial"`` in :data:`BASELINES` uses ``window=4``).
* :func:`beta_binomial` - beta-binomial counts with ``alpha, beta`` fitted to the past
  counts by maximum likelihood (:func:`fit_beta_binomial`).

Example
-------
>>> nv, ng, nf = np.array([10, 30, 0]), np.array([50, 50, 50]), np.array([50, 50])
>>> sorted(BASELINES)
['beta_binomial', 'last4_binomial', 'replay']
>>> {name: f(nv, ng, nf, num_draws=5, rng=0).shape for name, f in BASELINES.items()}
{'replay': (5, 2), 'last4_binomial': (5, 2), 'beta_binomial': (5, 2)}
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from scipy import optimize, special

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.validate import check_int, check_size

#: Bounds of ``log alpha`` and ``log beta`` in :func:`fit_beta_binomial`.
LOG_PARAM_BOUNDS: tuple[float, float] = (-7.0, 12.0)

_MAX_DRAWS = 10**8

Forecaster = Callable[..., np.ndarray]


def _counts(name: str, x, *, low: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise UserInputError(f"{name} must be a non-empty 1-d array, got shape {a.shape}")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or (
            np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))
            and np.all(a == np.round(a)))):
        raise UserInputError(f"{name} must hold integers")
    a = a.astype(np.int64)
    if np.any(a < low):
        raise UserInputError(f"{name} must be at least {low}, got {int(a.min())}")
    return a


def _past(n_valid, n_generated) -> tuple[np.ndarray, np.ndarray]:
    """The past counts, checked: of equal length, valid counts within generated ones."""
    nv = _counts("n_valid", n_valid, low=0)
    ng = _counts("n_generated", n_generated, low=1)
    if nv.shape != ng.shape:
        raise UserInputError(f"n_valid and n_generated must have the same length (k >= 1), "
                             f"got {nv.size} and {ng.size}")
    if np.any(nv > ng):
        raise UserInputError("n_valid must not exceed n_generated")
    return nv, ng


def _inputs(n_valid, n_generated, n_future, num_draws: int, rng):
    nv, ng = _past(n_valid, n_generated)
    nf = _counts("n_future", n_future, low=1)
    check_size("num_draws", num_draws, _MAX_DRAWS)
    if num_draws * nf.size > _MAX_DRAWS:
        raise UserInputError(f"num_draws x horizon = {num_draws * nf.size} is absurdly large "
                             f"(limit {_MAX_DRAWS})")
    if not isinstance(rng, np.random.Generator):
        if rng is not None:
            check_int("rng", rng, 0)
        rng = np.random.default_rng(rng)
    return nv, ng, nf, rng


def replay(n_valid, n_generated, n_future, *, num_draws: int = 1000,
           rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Each future rate drawn uniformly (with replacement) from the past observed rates.

    Its predictive quantiles are the empirical quantiles of the past rates (whatever
    ``n_future``).

    Example
    -------
    >>> d = replay([1, 3], [4, 4], [4, 4, 4], num_draws=1000, rng=1)
    >>> d.shape, sorted(set(d.ravel().tolist()))
    ((1000, 3), [0.25, 0.75])
    """
    nv, ng, nf, rng = _inputs(n_valid, n_generated, n_future, num_draws, rng)
    rates = nv / ng
    return rates[rng.integers(0, rates.size, size=(num_draws, nf.size))]


def last_mean_binomial(n_valid, n_generated, n_future, *, window: int = 4,
                       num_draws: int = 1000,
                       rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Binomial counts at the pooled rate of the last ``window`` iterations.

    ``p = sum(n_valid[-window:]) / sum(n_generated[-window:])`` (fewer iterations when
    ``k < window``); the future count of iteration ``h`` is ``Binomial(n_future[h], p)`` and
    the returned rate is ``count / n_future[h]``.

    Example
    -------
    >>> d = last_mean_binomial([0, 10, 20, 30, 40], [50] * 5, [50], num_draws=4000, rng=0)
    >>> round(float(d.mean()), 2)  # p = 100 / 200
    0.5
    """
    nv, ng, nf, rng = _inputs(n_valid, n_generated, n_future, num_draws, rng)
    w = check_int("window", window, 1)
    p = nv[-w:].sum() / ng[-w:].sum()
    return rng.binomial(nf, p, size=(num_draws, nf.size)) / nf


def _neg_log_lik(theta: np.ndarray, nv: np.ndarray, ng: np.ndarray) -> float:
    """Negative beta-binomial log likelihood (without the binomial coefficients)."""
    a, b = np.exp(theta)
    return -float(np.sum(special.betaln(nv + a, ng - nv + b) - special.betaln(a, b)))


def fit_beta_binomial(n_valid, n_generated) -> tuple[float, float]:
    """Maximum-likelihood ``(alpha, beta)`` of a beta-binomial fitted to counts.

    ``n_valid[i] ~ BetaBinomial(n_generated[i], alpha, beta)`` independently. The fit
    maximises over ``log alpha, log beta`` with L-BFGS-B inside
    :data:`LOG_PARAM_BOUNDS`, from the method-of-moments mean with concentration 2 (and
    from concentration ``e**10``, keeping the better), so that counts without
    overdispersion (the MLE at infinite concentration) end at the upper bound and all-zero
    or all-full counts at the matching edge.

    Example
    -------
    >>> a, b = fit_beta_binomial([5, 5, 5, 5], [10, 10, 10, 10])  # no spread at all
    >>> round(a / (a + b), 3), a + b > 1e4
    (0.5, True)
    """
    nv, ng = _past(n_valid, n_generated)
    lo, hi = LOG_PARAM_BOUNDS
    m = float(np.clip((nv.sum() + 0.5) / (ng.sum() + 1.0), 1e-3, 1 - 1e-3))
    best = None
    for conc in (2.0, np.exp(10.0)):
        start = np.clip(np.log([m * conc, (1 - m) * conc]), lo, hi)
        res = optimize.minimize(_neg_log_lik, start, args=(nv, ng), method="L-BFGS-B",
                                bounds=[(lo, hi), (lo, hi)])
        if best is None or res.fun < best.fun:
            best = res
    a, b = np.exp(best.x)
    return float(a), float(b)


def beta_binomial(n_valid, n_generated, n_future, *, num_draws: int = 1000,
                  rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Beta-binomial counts with ``alpha, beta`` fitted to the past counts.

    ``(alpha, beta)`` from :func:`fit_beta_binomial`; each future iteration draws its own
    ``p ~ Beta(alpha, beta)`` and count ``~ Binomial(n_future[h], p)``; the rate is
    ``count / n_future[h]``.

    Example
    -------
    >>> d = beta_binomial([0, 50, 25, 10, 40], [50] * 5, [50, 50], num_draws=2000, rng=0)
    >>> d.shape, bool(d.std() > 0.2)
    ((2000, 2), True)
    """
    nv, ng, nf, rng = _inputs(n_valid, n_generated, n_future, num_draws, rng)
    a, b = fit_beta_binomial(nv, ng)
    p = rng.beta(a, b, size=(num_draws, nf.size))
    return rng.binomial(nf, p) / nf


#: The baselines by name, all with the signature
#: ``f(n_valid, n_generated, n_future, *, num_draws=1000, rng=None) -> (num_draws, H)``.
BASELINES: dict[str, Forecaster] = {
    "replay": replay,
    "last4_binomial": partial(last_mean_binomial, window=4),
    "beta_binomial": beta_binomial,
}
