"""Exact counting samplers: binomial and logit-normal histogram counts are exact in
distribution and a lane's draw never depends on the other lanes. Statistical tolerances
are in standard errors (fixed seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llmnas_transfer.sim import keys, samplers


def _lanes(seed, n):
    return keys.key_words(jax.random.split(jax.random.key(seed), n))


# ----------------------------------------------------------------------------- binomial
BINOMIAL_CASES = [
    (20, 0.3), (20, 0.5), (15, 0.9), (50, 0.19), (50, 0.21), (1000, 0.5), (1000, 0.002),
    (1000, 0.999), (100_000, 0.3), (10**6, 1e-5), (7, 0.5), (400, 0.03),
]
LANES = 20_000


DEGENERATE = [(0, 0.5, 0), (5, 0.0, 0), (5, 1.0, 5), (10**6, 1.0, 10**6), (0, 1.0, 0),
              (3, 0.0, 0)]


@pytest.fixture(scope="module")
def binomial_draws():
    n = np.repeat([c[0] for c in BINOMIAL_CASES], LANES).astype(np.int32)
    p = np.repeat([c[1] for c in BINOMIAL_CASES], LANES).astype(np.float32)
    n = np.concatenate([n, [c[0] for c in DEGENERATE]]).astype(np.int32)
    p = np.concatenate([p, [c[1] for c in DEGENERATE]]).astype(np.float32)
    k0, k1 = _lanes(1, n.size)
    f = jax.jit(lambda k0, k1, n, p: samplers.binomial(k0, k1, 3, n, p))
    x = np.asarray(f(k0, k1, jnp.asarray(n), jnp.asarray(p)))
    # the same lanes in reverse order: a lane's draw must not depend on its neighbours
    rev = np.asarray(f(k0[::-1], k1[::-1], jnp.asarray(n[::-1]), jnp.asarray(p[::-1])))[::-1]
    m = len(BINOMIAL_CASES) * LANES
    return (x[:m].reshape(len(BINOMIAL_CASES), LANES), rev[:m].reshape(len(BINOMIAL_CASES), LANES),
            x[m:])


@pytest.mark.parametrize("case", range(len(BINOMIAL_CASES)))
def test_binomial_is_exact(binomial_draws, case):
    n, p = BINOMIAL_CASES[case]
    x = binomial_draws[0][case]
    assert x.min() >= 0 and x.max() <= n
    mean, var = n * p, n * p * (1 - p)
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / LANES)
    # SE of a sample variance: sqrt((mu4 - var^2) / L), mu4 of the binomial
    mu4 = var * (1 + 3 * (n - 2) * p * (1 - p))
    assert abs(x.var() - var) < 5 * np.sqrt((mu4 - var**2) / LANES)
    # chi-square goodness of fit on all values with expected count >= 5 (tails pooled)
    ks = np.arange(n + 1) if n <= 2000 else np.arange(int(mean - 8 * np.sqrt(var)),
                                                       int(mean + 8 * np.sqrt(var)))
    pmf = stats.binom.pmf(ks, n, p)
    keep = pmf * LANES >= 5
    obs = np.array([(x == k).sum() for k in ks[keep]])
    exp = pmf[keep] * LANES
    rest_obs, rest_exp = LANES - obs.sum(), LANES - exp.sum()
    chi2 = ((obs - exp) ** 2 / exp).sum() + ((rest_obs - rest_exp) ** 2 / max(rest_exp, 1e-9)
                                              if rest_exp > 1 else 0.0)
    assert stats.chi2.sf(chi2, keep.sum()) > 1e-4


def test_binomial_lane_does_not_depend_on_batch(binomial_draws):
    np.testing.assert_array_equal(binomial_draws[0], binomial_draws[1])


def test_binomial_degenerate_cases(binomial_draws):
    np.testing.assert_array_equal(binomial_draws[2], [c[2] for c in DEGENERATE])


# ----------------------------------------------------------------------------- histogram
HIST_CASES = [  # n, mu, sigma
    (500, -1.0, 0.41), (20, 0.3, 0.8), (1000, 2.5, 1.5), (3, 0.0, 1.0), (0, 0.0, 1.0),
    (700, -6.0, 0.5), (300, 5.0, 0.3), (150, -0.3, 0.8),
]
HLANES = 10_000
BINS = 20


@pytest.fixture(scope="module")
def hist_draws():
    n = np.repeat([c[0] for c in HIST_CASES], HLANES).astype(np.int32)
    mu = np.repeat([c[1] for c in HIST_CASES], HLANES).astype(np.float32)
    sd = np.repeat([c[2] for c in HIST_CASES], HLANES).astype(np.float32)
    k0, k1 = _lanes(4, n.size)
    h = jax.jit(lambda *a: samplers.logitnormal_hist(*a[:2], 9, *a[2:], BINS))(
        k0, k1, jnp.asarray(n), jnp.asarray(mu), jnp.asarray(sd))
    return np.asarray(h).reshape(len(HIST_CASES), HLANES, BINS)


def _bin_probs(mu, sd):
    e = np.arange(BINS + 1) / BINS
    with np.errstate(divide="ignore"):
        z = (np.log(e / (1 - e)) - mu) / sd
    return np.diff(stats.norm.cdf(z))


@pytest.mark.parametrize("case", range(len(HIST_CASES)))
def test_histogram_is_exact_multinomial(hist_draws, case):
    n, mu, sd = HIST_CASES[case]
    h = hist_draws[case]
    np.testing.assert_array_equal(h.sum(1), n)
    p = _bin_probs(mu, sd)
    np.testing.assert_allclose(np.asarray(samplers.logitnormal_bin_probs(jnp.float32(mu),
                                                                        jnp.float32(sd), BINS)),
                               p, atol=2e-6)
    if n == 0:
        return
    se = np.sqrt(n * p * (1 - p) / HLANES)
    live = p * n * HLANES > 1
    assert np.all(np.abs(h.mean(0) - n * p)[live] < 5 * se[live] + 1e-12)
    # multinomial covariance of the two largest bins: -n p_i p_j
    i, j = np.argsort(p)[-2:]
    if min(p[i], p[j]) * n > 2:
        cov = np.cov(h[:, i], h[:, j])[0, 1]
        want = -n * p[i] * p[j]
        sd_i, sd_j = np.sqrt(n * p[i] * (1 - p[i])), np.sqrt(n * p[j] * (1 - p[j]))
        assert abs(cov - want) < 5 * sd_i * sd_j * np.sqrt(2 / HLANES)
    # pooled counts are Multinomial(n L, p)
    tot, exp = h.sum(0), p * n * HLANES
    keep = exp >= 5
    chi2 = ((tot[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    assert stats.chi2.sf(chi2, max(keep.sum() - 1, 1)) > 1e-4


def test_histogram_lane_does_not_depend_on_batch(hist_draws):
    """Each lane's counts are the same drawn alone as in the batch of 80 000 lanes with
    very different chain lengths (every case; the first 3 lanes of each)."""
    k0, k1 = _lanes(4, len(HIST_CASES) * HLANES)
    for c, (n, mu, sd) in enumerate(HIST_CASES):
        for i in range(3):
            lane = c * HLANES + i
            one = samplers.logitnormal_hist(k0[lane:lane + 1], k1[lane:lane + 1], 9,
                                            jnp.asarray([n], jnp.int32),
                                            jnp.asarray([mu], jnp.float32),
                                            jnp.asarray([sd], jnp.float32), BINS)
            np.testing.assert_array_equal(np.asarray(one)[0], hist_draws[c, i])
