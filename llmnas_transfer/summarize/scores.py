"""Scores of probabilistic forecasts: pinball loss, CRPS from samples, interval coverage.

NumPy only. A forecast is given either as predictive draws (last axis ``S``) or as
quantiles (last axis ``L``) at probability levels ``levels``; the observed values ``y``
have the leading shape.

* :func:`pinball_loss` - the quantile (pinball) loss averaged over levels. Twice the mean
  pinball loss over a fine, evenly spread grid of levels approximates the CRPS.
* :func:`crps_from_samples` - the fair (unbiased) CRPS ``E|X - y| - E|X - X'| / 2`` from
  draws, in ``O(S log S)`` by sorting.
* :func:`interval_coverage` - the share of ``y`` inside central intervals.
* :func:`pit_coverage` - the same for discrete outcomes (counts, rates of counts), by the
  randomized probability integral transform, so that a calibrated forecast covers
  ``level`` on average even where its quantiles tie with the outcome (at 0 or 1).

Example
-------
>>> levels = quantile_levels()
>>> levels[[0, 9, -1]]
array([0.05, 0.5 , 0.95])
>>> draws = np.array([[0.1, 0.2, 0.3, 0.4]])
>>> round(float(crps_from_samples(draws, np.array([0.25]))[0]), 6)  # 0.1 - 1/12
0.016667
"""

from __future__ import annotations

import numpy as np

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.validate import check_float, check_size


def quantile_levels(n: int = 19) -> np.ndarray:
    """``n`` evenly spaced levels ``1/(n+1), ..., n/(n+1)`` (0.05, 0.10, ..., 0.95 for 19).

    Example
    -------
    >>> quantile_levels(3)
    array([0.25, 0.5 , 0.75])
    """
    n = check_size("n", n, 10**6)
    return np.round(np.arange(1, n + 1) / (n + 1), 12)


def _levels(levels) -> np.ndarray:
    a = np.asarray(levels, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise UserInputError(f"levels must be a non-empty 1-d array, got shape {a.shape}")
    if not np.all((a > 0) & (a < 1)):
        raise UserInputError("levels must lie strictly between 0 and 1")
    return a


def _finite(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(a)):
        raise UserInputError(f"{name} must be finite")
    return a


def sample_quantiles(samples, levels) -> np.ndarray:
    """Quantiles of draws along the last axis, by ``np.quantile`` with ``method="linear"``.

    Parameters
    ----------
    samples : array_like
        ``(..., S)`` draws.
    levels : array_like
        ``(L,)`` levels in (0, 1).

    Returns
    -------
    numpy.ndarray
        ``(..., L)``.

    Example
    -------
    >>> sample_quantiles(np.arange(5.0), [0.25, 0.5])
    array([1., 2.])
    """
    lv = _levels(levels)
    s = _finite("samples", samples)
    if s.ndim < 1 or s.shape[-1] == 0:
        raise UserInputError("samples must have at least one draw along the last axis")
    return np.moveaxis(np.quantile(s, lv, axis=-1, method="linear"), 0, -1)


def _check_pair(quantiles: np.ndarray, y: np.ndarray, what: str) -> None:
    if quantiles.ndim < 1 or quantiles.shape[:-1] != y.shape:
        raise UserInputError(f"{what} must have shape y.shape + (n,), got {quantiles.shape} "
                             f"for y of shape {y.shape}")


def pinball_losses(quantiles, levels, y) -> np.ndarray:
    """Pinball loss of each element, averaged over levels.

    For level ``a`` and quantile ``q`` the loss is ``max(a (y - q), (a - 1)(y - q))``.

    Parameters
    ----------
    quantiles : array_like
        ``(..., L)`` predicted quantiles at ``levels``.
    levels : array_like
        ``(L,)`` levels in (0, 1).
    y : array_like
        ``(...)`` observed values.

    Returns
    -------
    numpy.ndarray
        ``(...)`` mean over the ``L`` levels.

    Example
    -------
    >>> pinball_losses(np.array([[0.2, 0.5]]), [0.1, 0.5], np.array([0.4])).round(6)
    array([0.035])
    """
    lv = _levels(levels)
    q = _finite("quantiles", quantiles)
    yy = _finite("y", y)
    _check_pair(q, yy, "quantiles")
    if q.shape[-1] != lv.size:
        raise UserInputError(f"quantiles have {q.shape[-1]} levels, levels has {lv.size}")
    d = yy[..., None] - q
    return np.mean(np.maximum(lv * d, (lv - 1.0) * d), axis=-1)


def pinball_loss(quantiles, levels, y) -> float:
    """Mean pinball loss over elements and levels (see :func:`pinball_losses`).

    Twice the mean pinball loss over a fine grid of evenly spread levels approximates the
    CRPS.

    Example
    -------
    >>> q = np.array([[0.2, 0.5], [0.4, 0.4]])
    >>> round(pinball_loss(q, [0.1, 0.5], np.array([0.4, 0.4])), 6)
    0.0175
    """
    return float(np.mean(pinball_losses(quantiles, levels, y)))


def crps_from_samples(samples, y) -> np.ndarray:
    """Fair CRPS of each element from predictive draws.

    ``CRPS = mean_i |x_i - y| - sum_{i,j} |x_i - x_j| / (2 S (S - 1))``: the unbiased
    (fair) estimator of ``E|X - y| - E|X - X'| / 2``, exact for the predictive
    distribution the draws come from on average. The pair term uses the sorted draws,
    ``sum_{i<j} (x_(j) - x_(i)) = sum_k (2k - S - 1) x_(k)`` (1-based ``k``), so the cost is
    ``O(S log S)``.

    Parameters
    ----------
    samples : array_like
        ``(..., S)`` draws, ``S >= 2``.
    y : array_like
        ``(...)`` observed values.

    Returns
    -------
    numpy.ndarray
        ``(...)``.

    Example
    -------
    >>> crps_from_samples(np.array([[0.0, 1.0], [2.0, 2.0]]), np.array([0.0, 2.0]))
    array([0., 0.])
    """
    x = _finite("samples", samples)
    yy = _finite("y", y)
    _check_pair(x, yy, "samples")
    s = x.shape[-1]
    if s < 2:
        raise UserInputError(f"crps_from_samples needs at least 2 draws, got {s}")
    x = np.sort(x, axis=-1)
    first = np.mean(np.abs(x - yy[..., None]), axis=-1)
    k = np.arange(1, s + 1, dtype=float)
    pair_sum = np.sum((2.0 * k - s - 1.0) * x, axis=-1)  # sum_{i<j} |x_i - x_j|
    return first - pair_sum / (s * (s - 1.0))


def interval_coverage(samples_or_quantiles, y, level: float, *,
                      levels=None) -> float:
    """Share of ``y`` inside the closed central interval of probability ``level``.

    The interval is ``[q_{(1 - level)/2}, q_{(1 + level)/2}]``. From draws (``levels``
    omitted) its ends are :func:`sample_quantiles`; from quantiles, ``levels`` must contain
    both ends (to 1e-9).

    Parameters
    ----------
    samples_or_quantiles : array_like
        ``(..., S)`` draws or ``(..., L)`` quantiles.
    y : array_like
        ``(...)`` observed values.
    level : float
        Central probability in (0, 1), e.g. 0.5 or 0.9.
    levels : array_like, optional
        ``(L,)`` levels of the quantiles; ``None`` for draws.

    Returns
    -------
    float
        Fraction of elements covered.

    Example
    -------
    >>> q = np.array([[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]])
    >>> interval_coverage(q, np.array([0.9, 0.95]), 0.9, levels=[0.05, 0.5, 0.95])
    0.5
    """
    level = check_float("level", level, 0.0, 1.0, low_open=True, high_open=True)
    a = _finite("samples_or_quantiles", samples_or_quantiles)
    yy = _finite("y", y)
    _check_pair(a, yy, "samples_or_quantiles")
    ends = np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    if levels is None:
        lo_hi = sample_quantiles(a, ends)
    else:
        lv = _levels(levels)
        if lv.size != a.shape[-1]:
            raise UserInputError(f"quantiles have {a.shape[-1]} levels, levels has {lv.size}")
        idx = []
        for e in ends:
            hit = np.flatnonzero(np.abs(lv - e) < 1e-9)
            if hit.size == 0:
                raise UserInputError(f"levels must contain {e:g} for a {level:g} interval")
            idx.append(int(hit[0]))
        lo_hi = a[..., idx]
    inside = (yy >= lo_hi[..., 0]) & (yy <= lo_hi[..., 1])
    return float(np.mean(inside))


def pit_coverage(samples, y, level: float) -> np.ndarray:
    """Per element, the probability that the randomized PIT of ``y`` falls in the central
    interval ``[(1 - level)/2, (1 + level)/2]``: the coverage of a discrete forecast.

    With ``F`` the predictive CDF of the draws, the randomized PIT is uniform on
    ``[F(y-), F(y)]`` (Czado, Gneiting and Held 2009, *Biometrics* 65), and it is uniform
    on [0, 1] when the forecast is calibrated, so the mean of this over targets has
    expectation ``level``. For draws without ties at ``y`` it is 0 or 1, as
    :func:`interval_coverage`. The closed quantile interval instead counts every ``y`` at a
    tied end as covered: a forecast of rates whose 5% and 95% quantiles are 0 and 1, as a
    calibrated one of bursty runs is, covers every target by that count.

    Parameters
    ----------
    samples : array_like
        ``(..., S)`` predictive draws.
    y : array_like
        ``(...)`` observed values.
    level : float
        Central probability in (0, 1).

    Returns
    -------
    numpy.ndarray
        ``(...)`` values in [0, 1].

    Example
    -------
    >>> draws = np.array([[0.0, 0.0, 0.5, 1.0]])  # F(0-) = 0, F(0) = 1/2
    >>> float(pit_coverage(draws, np.array([0.0]), 0.9)[0])  # |[0.05, 0.5]| / 0.5
    0.9
    """
    level = check_float("level", level, 0.0, 1.0, low_open=True, high_open=True)
    a = _finite("samples", samples)
    yy = _finite("y", y)
    _check_pair(a, yy, "samples")
    lo, hi = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    below = np.mean(a < yy[..., None], axis=-1)
    upto = np.mean(a <= yy[..., None], axis=-1)
    mass = upto - below
    overlap = np.clip(np.minimum(upto, hi) - np.maximum(below, lo), 0.0, None)
    point = ((upto >= lo) & (upto <= hi)).astype(float)
    return np.where(mass > 0, overlap / np.where(mass > 0, mass, 1.0), point)
