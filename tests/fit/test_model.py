"""The fitting model: the marginalising grid filter against exact answers, the model's
generative side against the simulator's exact expectations, and the sufficient statistics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from scipy import stats

from llmnas_transfer.fit.model import (
    MarginalRuns,
    ModelSpec,
    NormalStats,
    RunsData,
    accuracy_stats,
    binomial_counts,
    forecast_n_generated,
    forecast_runs,
    forward_filter,
    logit_accuracy_loglik,
    normal_stats_loglik,
    prior_medians,
    runs_loglik,
    runs_model,
    scalar_priors,
    state_grid,
)
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.expectation import expected
from llmnas_transfer.sim.params import load_defaults


def _spec(datasets=("cifar-10",), tasks=("classification",), T=5, **kw):
    ds = [registry.get_dataset(d) for d in datasets]
    obs = tuple((i, k) for i in range(len(ds)) for k in range(len(tasks)))
    return ModelSpec(tuple(datasets), tuple(tasks), tuple(d.modality for d in ds),
                     tuple(d.features() for d in ds), obs, (0, 0), T, **kw)


def _data(n_gen, n_valid, d_idx=None, k_idx=None):
    n_gen = jnp.asarray(n_gen, jnp.float32)
    z = jnp.zeros_like(n_gen)
    n = n_gen.shape[0]
    d_idx = jnp.zeros(n, jnp.int32) if d_idx is None else jnp.asarray(d_idx, jnp.int32)
    k_idx = jnp.zeros(n, jnp.int32) if k_idx is None else jnp.asarray(k_idx, jnp.int32)
    return RunsData(d_idx, k_idx, n_gen, jnp.asarray(n_valid, jnp.float32),
                    NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))


def _kalman_loglik(y, kappa, q, sd0, r):
    """Exact log p(y_1..T) for s_1 ~ N(0, sd0^2), s' = s + kappa(1-s) + q e, y ~ N(s, r^2)."""
    m, v, ll = 0.0, sd0**2, 0.0
    for t, yt in enumerate(y):
        if t:
            m, v = m + kappa * (1 - m), (1 - kappa) ** 2 * v + q**2
        s2 = v + r**2
        ll += stats.norm.logpdf(yt, m, np.sqrt(s2))
        k = v / s2
        m, v = m + k * (yt - m), (1 - k) * v
    return ll


@pytest.mark.parametrize("grid_size, tol", [(32, 2e-3)])
def test_filter_matches_kalman_filter(grid_size, tol):
    """Linear-Gaussian emissions: the grid filter must give the exact Kalman likelihood."""
    p = load_defaults().dynamics_params()
    T = 8
    rng = np.random.default_rng(0)
    grid = state_grid(p, T, grid_size, rows=jnp.zeros(4, jnp.int32))
    for r in (0.1, 0.3):
        ys = rng.normal(0.5, 0.4, size=(4, T))
        s = np.asarray(grid.s[:, 0])  # (T, G): every run has the same grid
        log_em = stats.norm.logpdf(ys.T[:, :, None], s[:, None, :], r)  # (T, N, G)
        ll, filt = forward_filter(grid, jnp.asarray(log_em, jnp.float32))
        for i in range(4):
            exact = _kalman_loglik(ys[i], float(p.kappa), float(p.state_noise),
                                   float(p.init_sd), r)
            assert float(ll[i].sum()) == pytest.approx(exact, abs=tol * abs(exact) + 2e-3)
        np.testing.assert_allclose(np.asarray(filt.sum(-1)), 1.0, atol=1e-5)


def test_filter_matches_monte_carlo_binomial():
    """Binomial emissions: marginal likelihood of a run against Monte Carlo over paths."""
    d = load_defaults()
    p, e = d.dynamics_params(), d.effects(["audioset"], ["generation"])
    T = 6
    n_gen = np.full((1, T), 20.0)
    n_valid = np.asarray([[4.0, 6, 5, 9, 8, 11]])
    spec = _spec(("audioset",), ("generation",), T, has_accuracy=False)
    ll = float(runs_loglik(p, e, _data(n_gen, n_valid), spec).sum())
    # Monte Carlo: average the binomial likelihood over state paths from the prior
    rng = np.random.default_rng(1)
    M = 200_000
    s = np.zeros((M, T))
    s[:, 0] = float(p.init_sd) * rng.normal(size=M)
    for t in range(1, T):
        s[:, t] = s[:, t - 1] + float(p.kappa) * (1 - s[:, t - 1]) \
            + float(p.state_noise) * rng.normal(size=M)
    prob = 1 / (1 + np.exp(-(float(p.validity_intercept) + float(p.validity_slope) * s
                             - float(e.validity_offset[0]))))
    lik = np.exp(stats.binom.logpmf(n_valid, n_gen, prob).sum(-1))
    mc, se = np.log(lik.mean()), lik.std() / lik.mean() / np.sqrt(M)
    assert abs(ll - mc) < 6 * se + 1e-3, (ll, mc, se)


def test_unobserved_cells_contribute_nothing():
    d = load_defaults()
    spec = _spec(T=4, has_accuracy=False)
    ll = runs_loglik(d.dynamics_params(), d.effects(["cifar-10"], ["classification"]),
                     _data(np.zeros((3, 4)), np.zeros((3, 4))), spec)
    np.testing.assert_allclose(np.asarray(ll), 0.0, atol=1e-6)


def test_accuracy_only_equals_closed_form():
    """No validity data and accuracy_slope 0: the likelihood is the logit-normal one."""
    d = load_defaults()
    p = d.dynamics_params()._replace(accuracy_slope=jnp.float32(0.0))
    e = d.effects(["cifar-10"], ["classification"])
    acc = jnp.asarray([[0.2, 0.3, 0.35], [0.4, 0.25, 0.3]])
    n, sz, szz, lj = accuracy_stats(acc)
    st = NormalStats(*(x[:, None] for x in (n, n, sz, szz, lj)))
    data = _data(np.zeros((2, 1)), np.zeros((2, 1)))._replace(accuracy=st)
    ll = runs_loglik(p, e, data, _spec(T=1))
    ref = logit_accuracy_loglik(n, e.accuracy_offset[0], p.accuracy_noise, sz, szz, lj)
    # float32 sums of O(1) terms: an absolute tolerance of a few float32 ulps of 1
    np.testing.assert_allclose(np.asarray(ll[:, 0]), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # and it is the density of the accuracies themselves
    z = np.log(acc / (1 - acc))
    dens = stats.norm.logpdf(z, float(e.accuracy_offset[0]), float(p.accuracy_noise)) \
        - np.log(acc * (1 - acc))
    np.testing.assert_allclose(np.asarray(ref), dens.sum(-1), rtol=1e-5, atol=1e-5)


def test_mean_only_statistics():
    zbar, n, loc, sc = 0.4, 7.0, 0.1, 0.5
    st = NormalStats(*(jnp.asarray(v) for v in (1.0, n, n * zbar, n * zbar**2,
                                                 0.5 * np.log(n))))
    got = float(normal_stats_loglik(st, loc, sc))
    assert got == pytest.approx(stats.norm.logpdf(zbar, loc, sc / np.sqrt(n)), rel=1e-6)


def test_sample_matches_exact_expectation():
    """The generative side of MarginalRuns reproduces the simulator's exact E[rate]."""
    d = load_defaults()
    names = ["cifar-10", "nlp-sst2"]
    p, e = d.dynamics_params(), d.effects(names, ["classification"])
    T, N, C = 6, 4000, 20
    spec = _spec(tuple(names), ("classification",), T, has_accuracy=False)
    data = _data(np.full((N, T), C), np.zeros((N, T)), d_idx=np.arange(N) % 2)
    x = np.asarray(MarginalRuns(p, e, data, spec).sample(jax.random.key(3))) / C
    ev = np.asarray(expected(p, e, T).validity)  # (2, T)
    for i in range(2):
        r = x[i::2]
        se = r.std(0) / np.sqrt(r.shape[0])
        assert np.all(np.abs(r.mean(0) - ev[i]) < 6 * se), (r.mean(0), ev[i], se)


def test_prior_medians_are_medians():
    """Each start value of the mode search is its prior's median: CDF 0.5 to 1e-6."""
    med = prior_medians()
    assert set(med) == set(scalar_priors())
    for name, d in scalar_priors().items():
        assert abs(float(d.cdf(med[name])) - 0.5) < 1e-6, name


@pytest.mark.parametrize("n,p", [(20, 0.3), (20, 0.9), (500, 0.45), (3, 0.05)])
def test_binomial_counts_moments(n, p):
    """Mean within 5 SEs of n p and variance within 5 SEs of n p (1 - p); the same draws
    under vmap over keys as one key at a time."""
    keys = jax.random.split(jax.random.key(11), 4)
    draws = jax.jit(jax.vmap(lambda k: binomial_counts(k, jnp.full((50_000,), float(n)),
                                                       jnp.float32(p))))(keys)
    one = binomial_counts(keys[2], jnp.full((50_000,), float(n)), jnp.float32(p))
    np.testing.assert_array_equal(np.asarray(draws[2]), np.asarray(one))
    x = np.asarray(draws, np.float64).ravel()
    assert x.min() >= 0 and x.max() <= n and np.all(x == np.round(x))
    mean, var = n * p, n * p * (1 - p)
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / x.size)
    # sd of the sample variance: sqrt((mu4 - var^2) / size), mu4 of the binomial
    mu4 = var * (1 + 3 * (n - 2) * p * (1 - p))
    assert abs(x.var() - var) < 5 * np.sqrt((mu4 - var**2) / x.size)


def test_forecast_without_data_is_the_prior_predictive():
    d = load_defaults()
    p, e = d.dynamics_params(), d.effects(["svhn"], ["detection"])
    T, K, N, C = 3, 4, 3000, 20
    spec = _spec(("svhn",), ("detection",), T, num_forecast=K, has_accuracy=False)
    data = _data(np.zeros((N, T)), np.zeros((N, T)))
    ng = jnp.full((N, T + K), float(C))
    x = np.asarray(jax.jit(forecast_runs, static_argnames="spec")(
        jax.random.key(5), p, e, data, spec, ng)) / C
    ev = np.asarray(expected(p, e, T + K).validity)[0]
    se = x.std(0) / np.sqrt(N)
    assert np.all(np.abs(x.mean(0) - ev) < 6 * se)


def test_backward_sampling_draws_the_filtered_state():
    """The last FFBS state is drawn from the filtering distribution at the horizon."""
    d = load_defaults()
    p, e = d.dynamics_params(), d.effects(["cifar-10"], ["classification"])
    T = 5
    spec = _spec(T=T, has_accuracy=False)
    n_valid = np.asarray([[2.0, 5, 9, 14, 18]])
    data = _data(np.full((1, T), 20.0), n_valid)
    from llmnas_transfer.fit.model import emission_loglik, run_grid

    grid = run_grid(p, e, data, spec)
    log_em, _ = emission_loglik(grid.s, p, e, grid.rows, data, use_accuracy=False)
    _, filt = forward_filter(grid, log_em)
    p_last = np.asarray(jax.nn.sigmoid(p.validity_intercept
                                       + p.validity_slope * grid.s[-1, 0]
                                       - e.validity_offset[0]))
    expect = float((np.asarray(filt[-1, 0]) * p_last).sum())
    big = 1000  # binomial draws from the final state: mean rate = E[p(s_T) | data]
    ng = jnp.full((1, T), float(big))
    draws = jax.jit(jax.vmap(lambda k: forecast_runs(k, p, e, data, spec, ng)))(
        jax.random.split(jax.random.key(9), 1000))
    rate = np.asarray(draws[:, 0, -1]) / big
    assert abs(rate.mean() - expect) < 6 * rate.std() / np.sqrt(rate.size)


def test_forecast_n_generated_rules():
    ng = np.asarray([[10, 0, 10], [20, 20, 0]], np.float32)
    data = _data(ng, np.zeros_like(ng))
    out = forecast_n_generated(data, 2)
    # observed iterations keep the observed counts (0 where a run has no data), the
    # forecast continues with each run's last observed count
    assert out.tolist() == [[10, 0, 10, 10, 10], [20, 20, 0, 20, 20]]
    # an iteration no run of the setting observed uses every run's nearest count
    ng2 = np.asarray([[0, 10, 0], [0, 20, 30]], np.float32)
    assert forecast_n_generated(_data(ng2, np.zeros_like(ng2)), 1).tolist() == [
        [10, 10, 0, 10], [20, 20, 30, 30]]


def test_model_structure_partial_grid():
    """Free tasks, non-image modalities, unobserved datasets: sites and shapes."""
    names = ("cifar-10", "audioset", "nlp-sst2")
    tasks = ("classification", "generation")
    ds = [registry.get_dataset(x) for x in names]
    spec = ModelSpec(names, tasks, tuple(x.modality for x in ds),
                     tuple(x.features() for x in ds), ((0, 0), (1, 1)), (0, 0), 3,
                     num_forecast=2, has_accuracy=True, has_novelty=True)
    data = _data(np.full((4, 3), 10.0), np.full((4, 3), 4.0), d_idx=[0, 0, 1, 1],
                 k_idx=[0, 0, 1, 1])
    tr = handlers.trace(handlers.seed(runs_model, 0)).get_trace(data, spec=spec,
                                                               n_valid=data.n_valid)
    assert tr["difficulty_observed"]["value"].shape == (2,)
    assert tr["difficulty_z"]["value"].shape == (1,)  # nlp-sst2 has no data
    assert tr["interaction_free"]["value"].shape == (2, 1)
    assert tr["validity"]["value"].shape == (3, 2, 5)
    assert float(tr["task_complexity"]["value"][0]) == 0.0
    assert tr["n_valid"]["fn"].batch_shape == (4, 3)
    assert np.isfinite(float(tr["n_valid"]["fn"].log_prob(data.n_valid).sum()))
    g = tr["validity_gap"]["value"]
    assert float(g[0, 0]) == pytest.approx(0.0, abs=1e-6)
    sub = dataclasses.replace(spec, has_accuracy=False, has_novelty=False)
    tr = handlers.trace(handlers.seed(runs_model, 0)).get_trace(data, spec=sub)
    assert "accuracy_noise" not in tr and "combined_gap" not in tr
    assert tr["n_valid"]["value"].shape == (4, 3)


# --------------------------------------------------------------------------- bursts
_BURSTS = {"collapse_enter": 0.2, "collapse_exit": 0.5, "collapse_validity": -3.0,
           "validity_dispersion": 0.15}


def _bursty_params(d):
    return d.dynamics_params()._replace(**{k: jnp.float32(v) for k, v in _BURSTS.items()})


def _betabinom_logpmf(k, n, p, rho):
    c = (1 - rho) / rho
    return stats.betabinom.logpmf(k, n, p * c, (1 - p) * c)


def _paths(p, M, T, rng):
    """Prior state paths (M, T) and collapse indicators (M, T) of the bursts' chain."""
    s = np.zeros((M, T))
    s[:, 0] = float(p.init_sd) * rng.normal(size=M)
    pi = _BURSTS["collapse_enter"] / (_BURSTS["collapse_enter"] + _BURSTS["collapse_exit"])
    col = np.zeros((M, T), bool)
    col[:, 0] = rng.uniform(size=M) < pi
    for t in range(1, T):
        s[:, t] = s[:, t - 1] + float(p.kappa) * (1 - s[:, t - 1]) \
            + float(p.state_noise) * rng.normal(size=M)
        stay = np.where(col[:, t - 1], 1 - _BURSTS["collapse_exit"], _BURSTS["collapse_enter"])
        col[:, t] = rng.uniform(size=M) < stay
    return s, col


def test_bursts_filter_matches_monte_carlo():
    """Regimes and beta-binomial counts: the marginal likelihood of the product filter
    against Monte Carlo over regime and state paths (tolerance: 6 Monte Carlo SE plus
    the grid's 1e-3)."""
    d = load_defaults()
    p, e = _bursty_params(d), d.effects(["audioset"], ["generation"])
    T = 6
    n_gen = np.full((1, T), 20.0)
    n_valid = np.asarray([[4.0, 0, 1, 9, 12, 3]])
    spec = _spec(("audioset",), ("generation",), T, has_accuracy=False, bursts=True)
    ll = float(runs_loglik(p, e, _data(n_gen, n_valid), spec).sum())
    rng = np.random.default_rng(3)
    M = 200_000
    s, col = _paths(p, M, T, rng)
    prob = 1 / (1 + np.exp(-(float(p.validity_intercept) + float(p.validity_slope) * s
                             - float(e.validity_offset[0]))))
    prob = np.where(col, 1 / (1 + np.exp(-_BURSTS["collapse_validity"])), prob)
    lik = np.exp(_betabinom_logpmf(n_valid, n_gen, prob,
                                   _BURSTS["validity_dispersion"]).sum(-1))
    mc, se = np.log(lik.mean()), lik.std() / lik.mean() / np.sqrt(M)
    assert abs(ll - mc) < 6 * se + 1e-3, (ll, mc, se)


def test_bursts_switched_off_give_the_binomial_model():
    """No collapses: the collapse level and recovery chance do not matter; at the smallest
    dispersion each (run, iteration) is within 0.15 of the binomial model's
    log-likelihood: the beta-binomial at rho = 1e-3 has 1.019x the binomial's variance at
    20 candidates, which moves the log-density of a count z sd out by about
    z^2 / 2 x 0.019 (0.12 at z = 3.5; the least likely count here is near that)."""
    d = load_defaults()
    e = d.effects(["cifar-10"], ["classification"])
    p = d.dynamics_params()._replace(validity_dispersion=jnp.float32(0.0))
    rng = np.random.default_rng(0)
    n_valid = rng.binomial(20, 0.4, size=(3, 5)).astype(np.float32)
    data = _data(np.full((3, 5), 20.0), n_valid)
    plain = runs_loglik(p, e, data, _spec(T=5, has_accuracy=False))
    spec = _spec(T=5, has_accuracy=False, bursts=True)
    burst = runs_loglik(p, e, data, spec)
    assert float(jnp.abs(plain - burst).max()) < 0.15
    other = runs_loglik(p._replace(collapse_validity=jnp.float32(-1.0),
                                   collapse_exit=jnp.float32(0.1)), e, data, spec)
    np.testing.assert_allclose(np.asarray(other), np.asarray(burst), rtol=1e-6)


def test_bursts_forecast_without_data_is_the_prior_predictive():
    """Forecasts of runs without data: mean rate and share of empty iterations per
    iteration against Monte Carlo of the same chain (6 combined SE)."""
    d = load_defaults()
    p, e = _bursty_params(d), d.effects(["svhn"], ["detection"])
    T, K, N, C = 3, 4, 4000, 20
    spec = _spec(("svhn",), ("detection",), T, num_forecast=K, has_accuracy=False,
                 bursts=True)
    data = _data(np.zeros((N, T)), np.zeros((N, T)))
    x = np.asarray(jax.jit(forecast_runs, static_argnames="spec")(
        jax.random.key(5), p, e, data, spec, jnp.full((N, T + K), float(C))))
    rng = np.random.default_rng(4)
    s, col = _paths(p, N, T + K, rng)
    prob = 1 / (1 + np.exp(-(float(p.validity_intercept) + float(p.validity_slope) * s
                             - float(e.validity_offset[0]))))
    prob = np.where(col, 1 / (1 + np.exp(-_BURSTS["collapse_validity"])), prob)
    c = (1 - _BURSTS["validity_dispersion"]) / _BURSTS["validity_dispersion"]
    ref = rng.binomial(C, rng.beta(prob * c, (1 - prob) * c)).astype(float)
    for stat in (lambda v: v / C, lambda v: (v == 0).astype(float)):
        a, b = stat(x), stat(ref)
        se = np.sqrt(a.var(0) / N + b.var(0) / N)
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 6 * se + 1e-9)


def test_bursts_loglik_and_gradient_finite_at_extreme_rates():
    """A steep validity slope and a wide state put the far grid nodes at validity logits
    beyond +-40, where the rate rounds to 0 or 1 in float32. The log-likelihood and its
    gradient stay finite: a Beta shape that rounded to 0 made both NaN, and NUTS counted
    each such leapfrog step as a divergence (244 of 4000 draws on one bursty run). The
    value itself is checked against Monte Carlo above."""
    d = load_defaults()
    e = d.effects(["cifar-10"], ["classification"])
    p = _bursty_params(d)._replace(validity_slope=jnp.float32(30.0),
                                   init_sd=jnp.float32(2.0), state_noise=jnp.float32(1.0))
    n_valid = np.asarray([[0.0, 50, 3, 0, 49, 25]])
    data = _data(np.full((1, 6), 50.0), n_valid)
    spec = _spec(T=6, has_accuracy=False, bursts=True)

    def total(q):
        return runs_loglik(q, e, data, spec).sum()

    value, grad = jax.value_and_grad(total)(p)
    assert np.isfinite(float(value))
    for name, g in grad._asdict().items():
        assert np.all(np.isfinite(np.asarray(g))), name
