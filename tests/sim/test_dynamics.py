import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmnas_transfer.sim import dynamics
from llmnas_transfer.sim.params import load_defaults


@pytest.fixture
def setup():
    d = load_defaults()
    p = d.dynamics_params()
    e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    return p, e


def test_step_shapes_and_dtypes(key, setup, strict_jax):
    p, e = setup
    s0 = dynamics.init_state(key, p)
    s1, c = dynamics.step(jax.random.fold_in(key, 1), s0, p, e, num_candidates=7)
    assert s1.refinement.shape == () and s1.refinement.dtype == jnp.float32
    assert c.valid.shape == (7,) and c.valid.dtype == jnp.bool_
    acc = np.asarray(c.accuracy)
    assert np.all(np.isnan(acc[~np.asarray(c.valid)]))
    assert np.all((acc[np.asarray(c.valid)] > 0) & (acc[np.asarray(c.valid)] < 1))


def test_zero_noise_transition_is_closed_form(key, setup):
    p, e = setup
    p = p._replace(state_noise=jnp.float32(0.0), init_sd=jnp.float32(0.0))
    s = dynamics.init_state(key, p)
    kappa = float(p.kappa)
    for t in range(1, 8):
        assert float(s.refinement) == pytest.approx(1 - (1 - kappa) ** (t - 1), abs=1e-6)
        s = dynamics.transition(jax.random.fold_in(key, t), s, p)


def test_state_moments_match_monte_carlo(key, setup):
    p, _ = setup
    m, v = dynamics.state_moments(p, 6)
    R = 40_000
    keys = jax.random.split(key, R)

    def run(k):
        s = dynamics.init_state(jax.random.fold_in(k, 0), p)
        out = []
        for t in range(6):
            out.append(s.refinement)
            s = dynamics.transition(jax.random.fold_in(k, t + 1), s, p)
        return jnp.stack(out)

    x = np.asarray(jax.vmap(run)(keys))
    se_mean = np.sqrt(np.asarray(v) / R)
    assert np.all(np.abs(x.mean(0) - np.asarray(m)) < 5 * se_mean)
    # variance of a sample variance of a Gaussian: 2 v^2 / (R - 1)
    se_var = np.sqrt(2 * np.asarray(v) ** 2 / (R - 1))
    assert np.all(np.abs(x.var(0, ddof=1) - np.asarray(v)) < 5 * se_var)


def test_validity_is_bernoulli_with_sigmoid_probability(key, setup):
    p, e = setup
    s = jnp.float32(0.4)
    N = 200_000
    c = dynamics.draw_candidates(key, s, p, e, N)
    prob = float(jax.nn.sigmoid(dynamics.validity_logit(s, p, e.validity_offset)))
    se = np.sqrt(prob * (1 - prob) / N)
    assert abs(float(np.mean(c.valid)) - prob) < 5 * se
    # logit accuracy of valid candidates ~ N(alpha + lambda s, sigma_a^2)
    z = np.log(np.asarray(c.accuracy)[np.asarray(c.valid)])
    z = z - np.log1p(-np.asarray(c.accuracy)[np.asarray(c.valid)])
    mu = float(dynamics.accuracy_logit(s, p, e.accuracy_offset))
    sd = float(p.accuracy_noise)
    assert abs(z.mean() - mu) < 5 * sd / np.sqrt(z.size)
    assert abs(z.std() - sd) < 5 * sd / np.sqrt(2 * z.size)


def test_emissions_monotone_in_state(setup):
    p, e = setup
    s = jnp.linspace(-1, 2, 11)
    assert np.all(np.diff(np.asarray(dynamics.validity_logit(s, p, e.validity_offset))) > 0)
    assert np.all(np.diff(np.asarray(dynamics.accuracy_logit(s, p, e.accuracy_offset))) >= 0)


def test_candidate_noise_marginals_and_independence(key):
    from scipy import stats

    u, z = dynamics.candidate_noise(key, 100_001)  # odd length exercises the split halves
    u, z = np.asarray(u), np.asarray(z)
    assert u.dtype == np.float32 and np.all((u >= 0) & (u < 1))
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(z[0], "norm").pvalue > 1e-3
    assert stats.kstest(z[1], "norm").pvalue > 1e-3
    # streams are uncorrelated: |r| < 5 / sqrt(n)
    r = np.corrcoef(np.vstack([u, z]))
    assert np.all(np.abs(r[np.triu_indices(3, 1)]) < 5 / np.sqrt(u.size))
    # different keys give different noise
    u2, _ = dynamics.candidate_noise(jax.random.fold_in(key, 1), 16)
    assert not np.array_equal(u[:16], np.asarray(u2))
