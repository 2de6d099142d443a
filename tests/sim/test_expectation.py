import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from llmnas_transfer import simulate
from llmnas_transfer.sim.expectation import expected, logitnormal_mean
from llmnas_transfer.sim.params import load_defaults


@pytest.mark.parametrize("mu,sd", [(0.0, 1.0), (-2.0, 0.5), (1.5, 2.0)])
def test_logitnormal_mean_matches_numerical_integral(mu, sd):
    ref, _ = integrate.quad(lambda x: special.expit(x) * stats.norm.pdf(x, mu, sd), -40, 40)
    got = float(logitnormal_mean(jnp.float32(mu), jnp.float32(sd)))
    assert got == pytest.approx(ref, abs=2e-6)


def test_expected_matches_monte_carlo_within_standard_errors():
    d = load_defaults()
    R = 6000
    r = simulate(11, datasets="cifar-10,audioset", tasks="classification,generation",
                 num_trials=R, num_iterations=6, num_candidates=20, bins=0)
    ev = expected(d.dynamics_params(), d.effects(["cifar-10", "audioset"],
                                                 ["classification", "generation"]), 6)
    rate = r["validity_rate"].values.reshape(4, R, 6)
    mc = rate.mean(1)
    se = rate.std(1, ddof=1) / np.sqrt(R)
    z = (mc - np.asarray(ev.validity)) / se
    assert np.all(np.abs(z) < 4.5), z
    # pooled accuracy: ratio estimator; SE by the delta method over trials
    nv = r["n_valid"].values.reshape(4, R, 6)
    acc = r["accuracy_sum"].values.reshape(4, R, 6)
    A = acc.sum(1) / nv.sum(1)
    resid = acc - A[:, None, :] * nv
    se_a = resid.std(1, ddof=1) * np.sqrt(R) / nv.sum(1)
    za = (A - np.asarray(ev.accuracy)) / se_a
    assert np.all(np.abs(za) < 4.5), za


def test_expected_is_differentiable():
    d = load_defaults()
    p, e = d.dynamics_params(), d.effects(["cifar-10"], ["classification"])
    g = jax.grad(lambda k: expected(p._replace(kappa=k), e, 10).validity[0, -1])(p.kappa)
    assert np.isfinite(float(g)) and float(g) > 0  # faster refinement -> higher validity
