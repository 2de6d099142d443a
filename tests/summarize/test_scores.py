"""Forecast scores against plain-Python references, closed forms and known values."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.summarize import scores
from llmnas_transfer.summarize.scores import (
    crps_from_samples,
    interval_coverage,
    pinball_loss,
    pinball_losses,
    pit_coverage,
    quantile_levels,
    sample_quantiles,
)


def _pinball_loop(q, levels, y):
    out = np.empty(y.shape)
    for i in np.ndindex(y.shape):
        total = 0.0
        for j, a in enumerate(levels):
            d = y[i] - q[i + (j,)]
            total += a * d if d >= 0 else (a - 1) * d
        out[i] = total / len(levels)
    return out


def _crps_brute(x, y):
    """Fair CRPS with the O(S^2) pair sum."""
    s = len(x)
    first = sum(abs(xi - y) for xi in x) / s
    pairs = sum(abs(xi - xj) for xi in x for xj in x) / (2 * s * (s - 1))
    return first - pairs


def _crps_normal(mu, sigma, y):
    z = (y - mu) / sigma
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def test_quantile_levels():
    lv = quantile_levels()
    assert lv.shape == (19,)
    np.testing.assert_allclose(lv, np.arange(1, 20) * 0.05, atol=1e-12)
    assert lv[0] == 0.05 and lv[-1] == 0.95


def test_pinball_matches_loop(rng):
    levels = quantile_levels()
    q = np.sort(rng.normal(size=(3, 4, 19)), axis=-1)
    y = rng.normal(size=(3, 4))
    np.testing.assert_allclose(pinball_losses(q, levels, y), _pinball_loop(q, levels, y),
                               rtol=1e-12)
    assert pinball_loss(q, levels, y) == pytest.approx(_pinball_loop(q, levels, y).mean())


def test_pinball_known_values():
    # level 0.9, q = 0 : y = 1 -> 0.9 ; y = -1 -> 0.1
    assert pinball_loss(np.array([[0.0], [0.0]]), [0.9], np.array([1.0, -1.0])) == \
        pytest.approx(0.5)
    # median level: half the absolute error
    assert pinball_loss(np.array([[2.0]]), [0.5], np.array([5.0])) == pytest.approx(1.5)
    # perfect point forecast at every level
    assert pinball_loss(np.full((1, 19), 0.3), quantile_levels(), np.array([0.3])) == 0.0


def test_twice_pinball_approximates_crps():
    # Exact normal quantiles at 999 levels: 2 x mean pinball -> CRPS (closed form).
    from scipy import stats

    levels = quantile_levels(999)
    q = stats.norm.ppf(levels)[None, :]
    for y in (0.0, 0.7, -2.0):
        approx = 2 * pinball_loss(q, levels, np.array([y]))
        assert approx == pytest.approx(_crps_normal(0.0, 1.0, y), rel=5e-3)


def test_crps_matches_brute_force(rng):
    x = rng.normal(size=(5, 37))
    y = rng.normal(size=5)
    got = crps_from_samples(x, y)
    want = [_crps_brute(list(x[i]), y[i]) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # ties and an observation outside the draws
    np.testing.assert_allclose(crps_from_samples(np.array([1.0, 1.0, 2.0, 5.0]), 9.0),
                               _crps_brute([1.0, 1.0, 2.0, 5.0], 9.0))


def test_crps_normal_closed_form(rng):
    # Fair CRPS from S draws of N(mu, sigma) is unbiased for the closed form. Over R
    # replicates, |mean - truth| < 5 SE (SE = sd of the R estimates / sqrt(R)).
    mu, sigma, s, reps = 0.3, 1.7, 200, 400
    for y in (0.3, 2.0, -4.0):
        est = crps_from_samples(rng.normal(mu, sigma, size=(reps, s)), np.full(reps, y))
        se = est.std(ddof=1) / math.sqrt(reps)
        assert abs(est.mean() - _crps_normal(mu, sigma, y)) < 5 * se


def test_crps_point_mass_is_absolute_error():
    assert crps_from_samples(np.full(10, 2.0), 5.0) == pytest.approx(3.0)


def test_coverage_known_values():
    draws = np.tile(np.arange(101.0), (4, 1))  # quantile at a is 100 a exactly
    y = np.array([5.0, 25.0, 50.0, 95.5])
    # 90%: [5, 95] -> 5 (closed end), 25, 50 in; 95.5 out
    assert interval_coverage(draws, y, 0.9) == 0.75
    # 50%: [25, 75] -> 25, 50 in
    assert interval_coverage(draws, y, 0.5) == 0.5
    levels = quantile_levels()
    q = sample_quantiles(draws, levels)
    assert interval_coverage(q, y, 0.9, levels=levels) == 0.75
    assert interval_coverage(q, y, 0.5, levels=levels) == 0.5


def test_coverage_from_quantiles_needs_end_levels():
    q = np.zeros((2, 3))
    with pytest.raises(UserInputError, match="levels must contain 0.05"):
        interval_coverage(q, np.zeros(2), 0.9, levels=[0.1, 0.5, 0.9])


def test_coverage_calibrated_normal(rng):
    # y from the predictive itself: coverage ~ Binomial(n, level)/n, within 5 SE, plus
    # 0.01 for the interval ends estimated from 400 draws: E F(X_(k)) = k / (S + 1) puts the
    # expected coverage of the linear-method ends at 0.8955 (90%) and 0.4975 (50%).
    n = 4000
    draws = rng.normal(size=(n, 400))
    y = rng.normal(size=n)
    for level in (0.5, 0.9):
        se = math.sqrt(level * (1 - level) / n)
        assert abs(interval_coverage(draws, y, level) - level) < 5 * se + 0.01


def test_sample_quantiles_linear():
    x = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 4.0, 8.0, 8.0]])
    np.testing.assert_allclose(sample_quantiles(x, [0.5, 0.25]),
                               np.quantile(x, [0.5, 0.25], axis=-1, method="linear").T)
    np.testing.assert_allclose(sample_quantiles(x, [0.5]), [[1.5], [6.0]])


@pytest.mark.parametrize("call, match", [
    (lambda: pinball_loss(np.zeros((2, 3)), [0.1, 0.5], np.zeros(2)), "3 levels"),
    (lambda: pinball_loss(np.zeros((2, 2)), [0.0, 0.5], np.zeros(2)), "strictly between"),
    (lambda: pinball_loss(np.zeros((3, 2)), [0.1, 0.5], np.zeros(2)), "shape"),
    (lambda: crps_from_samples(np.zeros((2, 1)), np.zeros(2)), "at least 2 draws"),
    (lambda: crps_from_samples(np.array([np.nan, 1.0]), 0.0), "finite"),
    (lambda: interval_coverage(np.zeros((2, 5)), np.zeros(2), 1.0), "level must be"),
    (lambda: quantile_levels(0), "at least 1"),
])
def test_errors_are_one_line(call, match):
    with pytest.raises(UserInputError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_docstring_examples():
    assert doctest.testmod(scores).failed == 0


def test_pit_coverage_of_a_calibrated_discrete_forecast(rng):
    """Rates of 50 binomial draws at p = 0.97 (an end tie at 1 for most targets): the
    mean PIT coverage of the 90% interval is 0.90 within 4 SE (SE of a mean of 4000
    values in [0, 1] with variance at most 0.25: 0.0079); the closed quantile interval
    counts every rate at 1 as covered and overshoots."""
    n, p = 50, 0.97
    draws = rng.binomial(n, p, size=(4000, 2000)) / n
    y = rng.binomial(n, p, size=4000) / n
    cov = pit_coverage(draws, y, 0.9)
    assert cov.shape == (4000,) and ((cov >= 0) & (cov <= 1)).all()
    assert abs(cov.mean() - 0.9) < 4 * 0.5 / np.sqrt(4000)
    assert interval_coverage(draws, y, 0.9) > 0.97


def test_pit_coverage_without_ties_is_the_interval_indicator(rng):
    """Continuous draws: 0 or 1, the closed interval's verdict except where ``y`` falls
    between the draws next to an end (the interval interpolates its ends, the PIT uses
    the empirical CDF): expected about 300 x 2 / 1000 such targets, allowed 1%."""
    draws = rng.normal(size=(300, 1000))
    y = rng.normal(size=300) * 1.5
    cov = pit_coverage(draws, y, 0.5)
    assert set(np.unique(cov)) <= {0.0, 1.0}
    ref = [interval_coverage(d[None], np.array([v]), 0.5) for d, v in zip(draws, y)]
    assert np.mean(cov != np.array(ref)) <= 0.01
