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


def test_expected_with_setting_trends_and_feedback_matches_monte_carlo(trend_defaults):
    """Per-setting rates and asymptotes are exact; feedback is moment-matched.

    Tolerance: 4.5 Monte Carlo SEs plus the moment-matching bias, which at these strong
    feedback strengths (phi_v = 0.8, phi_a = -0.6, 20 candidates) measured up to 1.3
    points of validity and 0.4 points of accuracy over 20,000 trials on both paths.
    """
    d, R, T = trend_defaults, 6000, 6
    ds, ts = ["cifar-10", "audioset"], ["classification", "generation"]
    r = simulate(11, datasets=ds, tasks=ts, num_trials=R, num_iterations=T,
                 num_candidates=20, bins=0, defaults=d, path="summary")
    ev = expected(d.dynamics_params(), d.effects(ds, ts), T, 20)
    rate = r["validity_rate"].values.reshape(4, R, T)
    se = rate.std(1, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(rate.mean(1) - np.asarray(ev.validity)) < 4.5 * se + 0.015)
    nv = r["n_valid"].values.reshape(4, R, T)
    acc = r["accuracy_sum"].values.reshape(4, R, T)
    A = acc.sum(1) / nv.sum(1)
    se_a = (acc - A[:, None, :] * nv).std(1, ddof=1) * np.sqrt(R) / nv.sum(1)
    assert np.all(np.abs(A - np.asarray(ev.accuracy)) < 4.5 * se_a + 0.005)
    # AudioSet's slower rate and lower asymptote show in the expected gain
    gain = np.asarray(ev.validity[:, -1] - ev.validity[:, 0])
    assert gain[2] < gain[0] and gain[3] < gain[1]


def test_expected_accuracy_never_below_chance():
    """Even a hopeless setting is expected at (not below) the accuracy of guessing."""
    d = load_defaults()
    ds = ["cifar-10", "cifar-100", "nlp-sst2", "imagenet"]
    eff = d.effects(ds, ["classification", "segmentation"])
    eff = eff._replace(accuracy_offset=eff.accuracy_offset - 12.0)
    ev = expected(d.dynamics_params(), eff, 4)
    chance = np.asarray(eff.chance)[:, None]
    assert np.all(np.asarray(ev.accuracy) >= chance - 1e-6)
    assert np.all(np.asarray(ev.accuracy) < chance + 1e-3)
    np.testing.assert_allclose(np.asarray(eff.chance).reshape(4, 2)[:, 0],
                               [0.1, 0.01, 0.5, 0.001])
    assert np.all(np.asarray(eff.chance).reshape(4, 2)[:, 1] == 0.0)
