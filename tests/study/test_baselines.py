"""Naive baseline forecasters: known truth, Monte Carlo moments in standard errors."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study import baselines
from llmnas_transfer.study.baselines import (
    BASELINES,
    beta_binomial,
    fit_beta_binomial,
    last_mean_binomial,
    replay,
)

NV = np.array([0, 12, 30, 45, 50, 20, 8])
NG = np.array([50, 50, 50, 50, 50, 40, 40])
NF = np.array([50, 25, 50])


def test_registry_shapes_and_ranges():
    assert set(BASELINES) == {"replay", "last4_binomial", "beta_binomial"}
    for name, f in BASELINES.items():
        d = f(NV, NG, NF, num_draws=300, rng=np.random.default_rng(1))
        assert d.shape == (300, 3), name
        assert np.all((d >= 0) & (d <= 1)), name
        # same seed, same draws
        np.testing.assert_array_equal(d, f(NV, NG, NF, num_draws=300, rng=1), name)


def test_replay_draws_past_rates_uniformly():
    rates = NV / NG
    n = 70_000
    d = replay(NV, NG, NF, num_draws=n, rng=2)
    assert set(np.unique(d)) <= set(rates)
    # each past rate with probability 1/k; binomial SE, 5 SE
    k = rates.size
    se = math.sqrt((1 / k) * (1 - 1 / k) / d.size)
    for r in np.unique(rates):
        share = np.mean(d == r) / np.sum(rates == r)
        assert abs(share - 1 / k) < 5 * se


def test_replay_quantiles_are_empirical_quantiles():
    # The predictive distribution is the empirical one: with many draws its quantiles (the
    # inverted-CDF definition) equal the past rates' empirical quantiles at levels away
    # from the CDF's jumps (multiples of 1/k).
    rates = NV / NG
    d = replay(NV, NG, NF, num_draws=50_000, rng=3)
    levels = np.array([0.05, 0.2, 0.5, 0.63, 0.95])
    want = np.quantile(rates, levels, method="inverted_cdf")
    for h in range(3):
        got = np.quantile(d[:, h], levels, method="inverted_cdf")
        np.testing.assert_array_equal(got, want)


def test_last4_binomial_mean_and_variance():
    p = NV[-4:].sum() / NG[-4:].sum()  # (45 + 50 + 20 + 8) / 180
    n = 20_000
    d = last_mean_binomial(NV, NG, NF, num_draws=n, rng=4)
    for h, m in enumerate(NF):
        var = p * (1 - p) / m
        # mean within 5 SE; variance within 5 SE of the sample variance (approx normal:
        # SE(var) ~ var sqrt(2 / n))
        assert abs(d[:, h].mean() - p) < 5 * math.sqrt(var / n)
        assert abs(d[:, h].var(ddof=1) - var) < 5 * var * math.sqrt(2 / n)
        # rates are counts over n_future
        np.testing.assert_allclose(d[:, h] * m, np.round(d[:, h] * m), atol=1e-9)
    # registry entry uses window 4
    np.testing.assert_array_equal(BASELINES["last4_binomial"](NV, NG, NF, num_draws=50,
                                                              rng=5),
                                  last_mean_binomial(NV, NG, NF, window=4, num_draws=50,
                                                     rng=5))


def test_last_window_longer_than_history():
    d = last_mean_binomial([10], [20], [20], window=4, num_draws=20_000, rng=6)
    assert abs(d.mean() - 0.5) < 5 * math.sqrt(0.25 / 20 / 20_000)


def test_beta_binomial_mle_recovers_truth():
    # 3,000 iterations of 50 candidates at alpha=2, beta=3. The MLE's sampling sd at this
    # size, measured over 200 replicates (seeds [99, r]): 2.7% relative for each of alpha
    # and beta, 0.0035 for alpha / (alpha + beta). Tolerances: 15% relative (5.5 sd) and
    # 0.0175 on the mean (5 sd).
    rng = np.random.default_rng(7)
    a, b, n, k = 2.0, 3.0, 50, 3000
    ng = np.full(k, n)
    nv = rng.binomial(ng, rng.beta(a, b, size=k))
    ah, bh = fit_beta_binomial(nv, ng)
    assert abs(ah / a - 1) < 0.15 and abs(bh / b - 1) < 0.15
    assert abs(ah / (ah + bh) - 0.4) < 0.0175


def test_beta_binomial_mle_is_a_maximum():
    # the fitted point beats small moves in every direction (plain-Python log likelihood)
    a, b = fit_beta_binomial(NV, NG)

    def ll(x, y):
        def lbeta(p, q):
            return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)
        return sum(lbeta(k + x, n - k + y) - lbeta(x, y) for k, n in zip(NV, NG, strict=True))

    for da, db in [(1.02, 1), (0.98, 1), (1, 1.02), (1, 0.98), (1.02, 1.02), (0.98, 0.98)]:
        assert ll(a, b) >= ll(a * da, b * db) - 1e-9


def test_beta_binomial_predictive_moments():
    # Draws come from BetaBinomial(n_future, alpha_hat, beta_hat); mean within 5 SE.
    a, b = fit_beta_binomial(NV, NG)
    n = 20_000
    d = beta_binomial(NV, NG, NF, num_draws=n, rng=8)
    mean = a / (a + b)
    for h, m in enumerate(NF):
        var = mean * (1 - mean) * (a + b + m) / (m * (a + b + 1))
        assert abs(d[:, h].mean() - mean) < 5 * math.sqrt(var / n)


def test_beta_binomial_edges_stay_finite():
    for nv in ([0, 0, 0], [20, 20, 20], [10, 10, 10]):
        d = beta_binomial(nv, [20, 20, 20], [20], num_draws=100, rng=9)
        assert np.all(np.isfinite(d))
    assert beta_binomial([0, 0, 0], [20] * 3, [20], num_draws=100, rng=9).max() <= 0.05


@pytest.mark.parametrize("args, kw, match", [
    (([], [], [5]), {}, "non-empty"),
    (([1, 2], [5], [5]), {}, "same length"),
    (([6], [5], [5]), {}, "must not exceed"),
    (([1], [0], [5]), {}, "n_generated must be at least 1"),
    (([1], [5], [0]), {}, "n_future must be at least 1"),
    (([1.5], [5], [5]), {}, "integers"),
    (([[1]], [[5]], [5]), {}, "1-d"),
    (([1], [5], [5]), {"num_draws": 0}, "num_draws"),
    (([1], [5], [5]), {"rng": -1}, "rng"),
])
def test_input_errors_are_one_line(args, kw, match):
    for f in BASELINES.values():
        with pytest.raises(UserInputError, match=match) as info:
            f(*args, **kw)
        assert "\n" not in str(info.value)


def test_window_must_be_positive():
    with pytest.raises(UserInputError, match="window"):
        last_mean_binomial([1], [5], [5], window=0)


def test_docstring_examples():
    assert doctest.testmod(baselines).failed == 0
