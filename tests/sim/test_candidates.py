"""Simulator: reference implementation, stream stability, compile counts, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmnas_transfer.errors import UnknownSettingError, UserInputError
from llmnas_transfer.sim import dynamics, registry
from llmnas_transfer.sim.candidates import as_key, simulate
from llmnas_transfer.sim.params import load_defaults

CONFIGS = [
    # (datasets, tasks, trials, iterations, candidates)
    (["cifar-10"], ["classification"], 1, 1, 1),
    (["cifar-10", "audioset"], ["classification", "generation"], 3, 4, 5),
    (["svhn", "imagenet", "nlp-sst2"], ["detection"], 2, 10, 20),
]


@pytest.mark.parametrize("ds,ts,R,T,N", CONFIGS)
def test_shapes_and_dtypes(ds, ts, R, T, N, strict_jax):
    r = simulate(0, datasets=ds, tasks=ts, num_trials=R, num_iterations=T, num_candidates=N,
                 per_candidate=True)
    assert r["n_valid"].shape == (len(ds), len(ts), R, T)
    assert r["n_valid"].dtype == np.int32
    assert r["valid"].shape == (len(ds), len(ts), R, T, N)
    assert r["accuracy_hist"].shape == (len(ds), len(ts), R, T, 20)
    assert np.all((r["validity_rate"] >= 0) & (r["validity_rate"] <= 1))
    assert list(r["iteration"].values) == list(range(1, T + 1))
    assert (r["valid"].sum("candidate") == r["n_valid"]).all()
    assert (r["accuracy_hist"].sum("accuracy_bin") == r["n_valid"]).all()


def _reference_trial(key, p, vo, ao, no, T, N, chance=0.0, rate=None, target=1.0):
    """Plain-Python loop over iterations and candidates, same keys as the simulator.

    The setting's chance level maps the accuracy, ``rate``/``target`` are the setting's
    refinement rate and asymptote, and the iteration's valid fraction and mean
    chance-normalised accuracy feed back into the next state.
    """
    rate = float(p.kappa) if rate is None else rate
    s = float(p.init_sd) * float(jax.random.normal(jax.random.fold_in(key, 0), (), jnp.float32))
    rows = []
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    for t in range(1, T + 1):
        k = jax.random.fold_in(key, t)
        k_cand, k_state = jax.random.split(k)
        u, z = (np.asarray(x) for x in dynamics.candidate_noise(k_cand, N))
        pv = sig(float(p.validity_intercept) + float(p.validity_slope) * s - vo)
        n_valid, acc_sum, nov_sum, norm_sum = 0, 0.0, 0.0, 0.0
        for j in range(N):
            if u[j] < pv:
                n_valid += 1
                x = sig(ao + float(p.accuracy_slope) * s + float(p.accuracy_noise) * z[0, j])
                norm_sum += x
                acc_sum += chance + (1.0 - chance) * x
                nov_sum += sig(float(p.novelty_intercept) + no + float(p.novelty_slope) * s
                               + float(p.novelty_noise) * z[1, j])
        rows.append((s, n_valid, acc_sum, nov_sum))
        eps = float(jax.random.normal(k_state, (), jnp.float32))
        shown = norm_sum / n_valid if n_valid else 0.5
        s = (s + rate * (target - s) + float(p.feedback_validity) * (n_valid / N - 0.5)
             + float(p.feedback_accuracy) * (shown - 0.5) + float(p.state_noise) * eps)
    return rows


@pytest.mark.parametrize("shared", [True, False], ids=["shared-trend", "setting-trend"])
def test_scan_vmap_equals_plain_python_loop(shared, trend_defaults):
    d = load_defaults() if shared else trend_defaults
    p = d.dynamics_params()
    ds, ts, R, T, N = ["cifar-10", "audioset"], ["classification", "generation"], 3, 5, 6
    r = simulate(7, datasets=ds, tasks=ts, num_trials=R, num_iterations=T, num_candidates=N,
                 defaults=d)
    eff = d.effects(ds, ts)
    rates = np.asarray(dynamics.setting_rate(p, eff))
    key = as_key(7)
    for si, (dn, tn) in enumerate([(a, b) for a in ds for b in ts]):
        skey = jax.random.fold_in(key, registry.setting_id(dn, tn))
        chance = registry.chance_level(registry.get_dataset(dn), registry.get_task(tn))
        assert float(eff.chance[si]) == pytest.approx(chance)
        for trial in range(R):
            ref = _reference_trial(jax.random.fold_in(skey, trial), p,
                                   float(eff.validity_offset[si]), float(eff.accuracy_offset[si]),
                                   float(eff.novelty_offset[si]), T, N, chance=chance,
                                   rate=float(rates[si]), target=float(eff.asymptote[si]))
            got = r.sel(dataset=dn, task=tn, trial=trial)
            np.testing.assert_allclose(got["state"].values, [x[0] for x in ref], rtol=1e-5,
                                       atol=1e-5)
            np.testing.assert_array_equal(got["n_valid"].values, [x[1] for x in ref])
            np.testing.assert_allclose(got["accuracy_sum"].values, [x[2] for x in ref],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["novelty_sum"].values, [x[3] for x in ref],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"num_trials": 0}, "at least 1"),
    ({"num_trials": -3}, "at least 1"),
    ({"num_iterations": 10**9}, "absurdly large"),
    ({"num_candidates": 2.5}, "integer"),
    ({"chunk_size": 0}, "at least 1"),
    ({"bins": -1}, "bins"),
    ({"trial_offset": -1}, "trial_offset"),
    ({"key": -5}, "seed"),
    ({"key": "abc"}, "seed"),
])
def test_bad_sizes_are_clear_errors(kw, match):
    args = {"datasets": "cifar-10", "tasks": "classification", "num_trials": 2,
            "num_iterations": 2, "num_candidates": 2, **kw}
    key = args.pop("key", 0)
    with pytest.raises(UserInputError, match=match):
        simulate(key, **args)


def test_unknown_names_are_clear_errors():
    with pytest.raises(UnknownSettingError, match="known datasets: cifar-10"):
        simulate(0, datasets="cifar-11")
    with pytest.raises(UnknownSettingError, match="register_task"):
        simulate(0, tasks="translation")


def test_too_large_request_is_refused_with_advice():
    with pytest.raises(UserInputError, match="GiB.*sweep"):
        simulate(0, num_trials=10**8, num_iterations=100, num_candidates=1000,
                 per_candidate=True)


def test_user_registered_setting_simulates():
    registry.register_dataset("speech-commands", modality="audio", resolution=40,
                              num_classes=35, replace=True)
    try:
        r = simulate(0, datasets="speech-commands,cifar-10", tasks="classification",
                     num_trials=2, num_iterations=2, num_candidates=4)
        assert list(r["dataset"].values) == ["speech-commands", "cifar-10"]
    finally:
        registry.unregister_dataset("speech-commands")
