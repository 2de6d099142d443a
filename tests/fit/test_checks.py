"""Prior predictive, truth mapping between simulator and model, and SBC."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from llmnas_transfer.fit.checks import (
    defaults_from_draw,
    prior_predictive,
    rank_pit,
    sbc,
    sbc_spec,
    truth_from_defaults,
    uniformity_pvalues,
)
from llmnas_transfer.fit.model import ModelSpec, NormalStats, RunsData
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.expectation import expected
from llmnas_transfer.sim.params import load_defaults

NAMES = ("cifar-10", "svhn", "audioset", "nlp-sst2")
TASKS = ("classification", "segmentation", "generation")


def _spec(**kw):
    ds = [registry.get_dataset(d) for d in NAMES]
    obs = tuple((i, k) for i in range(3) for k in range(len(TASKS)))  # nlp-sst2 unobserved
    return ModelSpec(NAMES, TASKS, tuple(d.modality for d in ds),
                     tuple(d.features() for d in ds), obs, (0, 0), 6, **kw)


def _template(spec, trials=3, cand=20):
    obs = [o for o in spec.observed for _ in range(trials)]
    z = np.zeros((len(obs), spec.num_iterations), np.float32)
    return RunsData(np.asarray([o[0] for o in obs], np.int32),
                    np.asarray([o[1] for o in obs], np.int32), z + cand, z,
                    NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))


def test_prior_predictive_finite_and_in_range():
    spec = _spec(num_forecast=3, has_accuracy=True, has_novelty=True)
    pp = prior_predictive(jax.random.key(0), _template(spec), spec, 300)
    for k, v in pp.items():
        assert np.isfinite(v).all(), k
    assert ((pp["n_valid"] >= 0) & (pp["n_valid"] <= 20)).all()
    assert np.array_equal(pp["n_valid"], np.round(pp["n_valid"]))
    for k in ("validity", "accuracy"):
        # in [0, 1]; float32 rounds a few extreme draws (large asymptotes) to 0 or 1
        assert ((pp[k] >= 0) & (pp[k] <= 1)).all(), k
        assert ((pp[k] == 0) | (pp[k] == 1)).mean() < 0.01, k
    for k in ("validity_gap", "combined_gap"):
        # below 1 (the setting's rate is positive); float32 rounds the rare draw whose
        # rate underflows to a gap of exactly 1
        assert (pp[k] <= 1).all() and (pp[k] == 1).mean() < 0.01, k
    # the prior is wide but not absurd: validity rates spread over most of (0, 1)
    q = np.quantile(pp["validity"][..., -1], [0.05, 0.95])
    assert q[0] < 0.2 and q[1] > 0.8
    assert 0 < np.median(pp["kappa"]) < 0.5


def test_truth_maps_back_to_the_same_simulator():
    """truth_from_defaults and defaults_from_draw are inverse up to the absorbed b0:
    the exact expected validity and accuracy of every setting agree (one cell with its
    own validity level)."""
    import dataclasses

    d = dataclasses.replace(load_defaults(), validity_setting={"svhn:segmentation": 0.7})
    spec = _spec(has_accuracy=True, has_novelty=True)
    t = truth_from_defaults(d, spec)
    draw = dict(t)
    draw["task_complexity"] = t["task_complexity"]
    draw["accuracy_level"] = t["accuracy_level"]
    back = defaults_from_draw(draw, spec)
    assert back.dynamics["validity_intercept"] == 0.0
    e1 = expected(d.dynamics_params(), d.effects(list(NAMES), list(TASKS)), 6)
    e2 = expected(back.dynamics_params(), back.effects(list(NAMES), list(TASKS)), 6)
    np.testing.assert_allclose(np.asarray(e1.validity), np.asarray(e2.validity), atol=1e-5)
    np.testing.assert_allclose(np.asarray(e1.accuracy), np.asarray(e2.accuracy), atol=1e-5)
    np.testing.assert_allclose(np.asarray(e1.novelty), np.asarray(e2.novelty), atol=1e-5)
    assert back.validity_setting["svhn:segmentation"] == pytest.approx(0.7, abs=1e-6)
    assert float(d.effects(["svhn"], ["segmentation"]).validity_offset[0]) == pytest.approx(
        float(load_defaults().effects(["svhn"], ["segmentation"]).validity_offset[0]) + 0.7,
        abs=1e-5)


def test_truth_in_centred_units_is_the_same_simulator(trend_defaults):
    """The fit centres the trend offsets over the settings with data (kappa is the rate
    of their logit-average, the geometric mean of their asymptotes is 1). A simulator
    whose offsets are not centred, expressed that way by truth_from_defaults (kappa and
    the state's unit moved), gives the same expected validity, accuracy and novelty (to
    1e-5: float32 of the same exact recursion); defaults_from_draw maps a prior draw to
    simulator tables with the draw's rate offsets and asymptotes."""
    import dataclasses

    from llmnas_transfer.sim.params import dynamics_from_dict

    tables = {k: dict(v) for k, v in trend_defaults.trend.items()}
    tables["rate_dataset"]["cifar-10"] = 0.4
    tables["asymptote_task"]["classification"] = -0.3
    d = dataclasses.replace(trend_defaults, trend=tables)
    spec = _spec(has_accuracy=True, has_novelty=True, trend="setting")
    t = truth_from_defaults(d, spec)
    obs = tuple(np.asarray(spec.observed).T)
    assert abs(t["rate_offset"][obs].mean()) < 1e-12
    assert abs(np.log(t["asymptote"][obs]).mean()) < 1e-12
    eff = d.effects(list(NAMES), list(TASKS))
    e1 = expected(d.dynamics_params(), eff, 6)
    moved = dynamics_from_dict({**d.dynamics, **{k: float(t[k]) for k in (
        "kappa", "state_noise", "init_sd", "validity_slope", "accuracy_slope",
        "novelty_slope", "feedback_validity", "feedback_accuracy")}})
    e2 = expected(moved, eff._replace(rate_offset=t["rate_offset"].reshape(-1),
                                      asymptote=t["asymptote"].reshape(-1)), 6)
    # the units did move (so the equality below is not trivial)
    assert abs(float(moved.kappa) - float(d.dynamics_params().kappa)) > 1e-3
    assert abs(float(moved.state_noise) / float(d.dynamics_params().state_noise) - 1) > 0.05
    for name in ("validity", "accuracy", "novelty"):
        np.testing.assert_allclose(np.asarray(getattr(e2, name)),
                                   np.asarray(getattr(e1, name)), atol=1e-5)
    # a prior draw of the model, mapped to simulator tables, has the draw's offsets
    from numpyro import handlers

    from llmnas_transfer.fit.model import runs_model

    tr = handlers.trace(handlers.seed(runs_model, 3)).get_trace(_template(spec), spec=spec)
    draw = {k: np.asarray(v["value"]) for k, v in tr.items() if k != "n_valid"}
    back = defaults_from_draw(draw, spec).effects(list(NAMES), list(TASKS))
    np.testing.assert_allclose(np.asarray(back.rate_offset).reshape(4, 3),
                               draw["rate_offset"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(back.asymptote).reshape(4, 3),
                               draw["asymptote"], rtol=1e-5)


def _ar1_draws(rng, centre, sd, phi, shape):
    """Chains of an AR(1) with stationary law N(centre, sd^2), started in it."""
    z = np.empty(shape)
    z[:, 0] = rng.normal(size=shape[0])
    for t in range(1, shape[1]):
        z[:, t] = phi * z[:, t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=shape[0])
    return centre + sd * z


@pytest.mark.parametrize("phi", [0.0, 0.9])
def test_rank_pit_uniform_for_exact_posterior(phi):
    """Conjugate normal model, mu ~ N(0, 1), y ~ N(mu, 1), so mu | y ~ N(y/2, 1/2): the
    PITs of draws from the exact posterior (independent, or autocorrelated chains with
    phi = 0.9, ESS about 5% of the draws) are uniform - Kolmogorov-Smirnov p > 0.001 over
    400 replicates - with none at 0 or 1; the same draws shifted by one posterior sd
    fail (p < 1e-6)."""
    from scipy import stats

    rng = np.random.default_rng(7)
    pit, shifted = [], []
    for _ in range(400):
        mu = rng.normal()
        y = mu + rng.normal()
        x = _ar1_draws(rng, y / 2, np.sqrt(0.5), phi, (2, 300))
        pit.append(rank_pit(x, mu, rng.uniform()))
        shifted.append(rank_pit(x + np.sqrt(0.5), mu, rng.uniform()))
    pit = np.asarray(pit)
    assert 0 < pit.min() and pit.max() < 1
    assert stats.kstest(pit, "uniform").pvalue > 1e-3
    assert stats.kstest(shifted, "uniform").pvalue < 1e-6


def test_rank_pit_without_thinning_would_fail():
    """Negative control for the thinning: the plain fraction of autocorrelated draws
    below the truth (phi = 0.99) piles up at 0 and 1, and ArviZ's test rejects it."""
    import arviz as az  # noqa: F401 - registers the azstats accessor
    import xarray as xr

    rng = np.random.default_rng(8)
    plain, ranked = [], []
    for _ in range(200):
        mu = rng.normal()
        y = mu + rng.normal()
        x = _ar1_draws(rng, y / 2, np.sqrt(0.5), 0.99, (2, 300))
        plain.append(np.mean(x < mu))
        ranked.append(rank_pit(x, mu, rng.uniform()))
    ds = xr.Dataset({"plain": (("chain", "draw"), np.asarray(plain)[None]),
                     "ranked": (("chain", "draw"), np.asarray(ranked)[None])})
    p = ds.azstats.uniformity_test()[0]
    assert float(p["plain"]) < 1e-3
    assert float(p["ranked"]) > 1e-3


def test_sbc_machinery_small():
    """Two replicates end to end (the calibration itself is the slow test below)."""
    spec = sbc_spec(num_iterations=3)
    dt = sbc(jax.random.key(1), spec, num_replicates=2, num_trials=2, warmup=20, draws=20,
             chains=1)
    pit = dt["prior_sbc"].dataset
    assert set(pit.data_vars) >= {"kappa", "validity_slope", "accuracy_noise"}
    assert pit["kappa"].shape == (1, 2)
    assert ((pit["kappa"] >= 0) & (pit["kappa"] <= 1)).all()
    assert "biased_sbc" in dt.children


@pytest.mark.slow
def test_sbc_uniform_and_negative_control_fails():
    """SBC over 100 prior draws: every PIT passes ArviZ's uniformity test at level
    0.01 / (number of sites) (Bonferroni), and the biased negative control (the same
    posteriors shifted by one posterior sd) fails it."""
    spec = sbc_spec()
    dt = sbc(jax.random.key(2026), spec, num_replicates=100)
    p = uniformity_pvalues(dt, "prior_sbc")
    assert min(p.values()) > 0.01 / len(p), p
    pb = uniformity_pvalues(dt, "biased_sbc")
    assert max(pb.values()) < 0.01, pb
