"""Prior predictive, truth mapping between simulator and model, and SBC."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from llmnas_transfer import registry
from llmnas_transfer.calibration import (
    defaults_from_draw,
    prior_predictive,
    sbc,
    sbc_spec,
    truth_from_defaults,
    uniformity_pvalues,
)
from llmnas_transfer.expectation import expected
from llmnas_transfer.model import ModelSpec, NormalStats, RunsData
from llmnas_transfer.params import load_defaults

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
        assert ((pp[k] > 0) & (pp[k] < 1)).all(), k
    assert (pp["validity_gap"] < 1).all() and (pp["combined_gap"] < 1).all()
    # the prior is wide but not absurd: validity rates spread over most of (0, 1)
    q = np.quantile(pp["validity"][..., -1], [0.05, 0.95])
    assert q[0] < 0.2 and q[1] > 0.8
    assert 0 < np.median(pp["kappa"]) < 0.5


def test_truth_maps_back_to_the_same_simulator():
    """truth_from_defaults and defaults_from_draw are inverse up to the absorbed b0:
    the exact expected validity and accuracy of every setting agree."""
    d = load_defaults()
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
