"""Simulator: reference implementation, stream stability, compile counts, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmnas_transfer.errors import UnknownSettingError, UserInputError
from llmnas_transfer.sim import dynamics, registry
from llmnas_transfer.sim.candidates import as_key, simulate, simulate_chunk
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


def _reference_trial(key, p, vo, ao, no, T, N):
    """Plain-Python loop over iterations and candidates, same keys as the simulator."""
    s = float(p.init_sd) * float(jax.random.normal(jax.random.fold_in(key, 0), (), jnp.float32))
    rows = []
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    for t in range(1, T + 1):
        k = jax.random.fold_in(key, t)
        k_cand, k_state = jax.random.split(k)
        u, z = (np.asarray(x) for x in dynamics.candidate_noise(k_cand, N))
        pv = sig(float(p.validity_intercept) + float(p.validity_slope) * s - vo)
        n_valid, acc_sum, nov_sum = 0, 0.0, 0.0
        for j in range(N):
            if u[j] < pv:
                n_valid += 1
                acc_sum += sig(ao + float(p.accuracy_slope) * s + float(p.accuracy_noise) * z[0, j])
                nov_sum += sig(float(p.novelty_intercept) + no + float(p.novelty_slope) * s
                               + float(p.novelty_noise) * z[1, j])
        rows.append((s, n_valid, acc_sum, nov_sum))
        eps = float(jax.random.normal(k_state, (), jnp.float32))
        s = s + float(p.kappa) * (1 - s) + float(p.state_noise) * eps
    return rows


def test_scan_vmap_equals_plain_python_loop():
    d = load_defaults()
    p = d.dynamics_params()
    ds, ts, R, T, N = ["cifar-10", "audioset"], ["classification", "generation"], 3, 5, 6
    r = simulate(7, datasets=ds, tasks=ts, num_trials=R, num_iterations=T, num_candidates=N)
    eff = d.effects(ds, ts)
    key = as_key(7)
    for si, (dn, tn) in enumerate([(a, b) for a in ds for b in ts]):
        skey = jax.random.fold_in(key, registry.setting_id(dn, tn))
        for trial in range(R):
            ref = _reference_trial(jax.random.fold_in(skey, trial), p,
                                   float(eff.validity_offset[si]), float(eff.accuracy_offset[si]),
                                   float(eff.novelty_offset[si]), T, N)
            got = r.sel(dataset=dn, task=tn, trial=trial)
            np.testing.assert_allclose(got["state"].values, [x[0] for x in ref], rtol=1e-5,
                                       atol=1e-5)
            np.testing.assert_array_equal(got["n_valid"].values, [x[1] for x in ref])
            np.testing.assert_allclose(got["accuracy_sum"].values, [x[2] for x in ref],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["novelty_sum"].values, [x[3] for x in ref],
                                       rtol=1e-5, atol=1e-5)


def _same(a, b, var="n_valid"):
    np.testing.assert_array_equal(a[var].values, b[var].values)
    np.testing.assert_array_equal(a["accuracy_sum"].values, b["accuracy_sum"].values)


def test_streams_stable_when_grid_grows():
    small = simulate(3, datasets=["svhn"], tasks=["detection"], num_trials=4,
                     num_iterations=3, num_candidates=8)
    big = simulate(3, datasets=["cifar-10", "svhn", "audioset"],
                   tasks=["classification", "detection"], num_trials=6, num_iterations=5,
                   num_candidates=8)
    _same(small.sel(dataset="svhn", task="detection"),
          big.sel(dataset="svhn", task="detection", trial=range(4), iteration=[1, 2, 3]))


def test_same_seed_same_numbers_and_chunking_invariance():
    a = simulate(5, datasets="cifar-10,nlp-sst2", tasks="segmentation", num_trials=10,
                 num_iterations=4, num_candidates=9)
    b = simulate(5, datasets="cifar-10,nlp-sst2", tasks="segmentation", num_trials=10,
                 num_iterations=4, num_candidates=9, chunk_size=3)
    _same(a, b)
    c = simulate(5, datasets="cifar-10,nlp-sst2", tasks="segmentation", num_trials=4,
                 num_iterations=4, num_candidates=9, trial_offset=6)
    _same(a.sel(trial=range(6, 10)), c)
    other = simulate(6, datasets="cifar-10,nlp-sst2", tasks="segmentation", num_trials=10,
                     num_iterations=4, num_candidates=9)
    assert not np.array_equal(a["accuracy_sum"].values, other["accuracy_sum"].values)


def test_one_trace_per_shape():
    kw = dict(datasets="stl-10", tasks="generation", num_iterations=3, num_candidates=11)
    simulate(0, num_trials=4, **kw)
    n0 = simulate_chunk._cache_size()
    simulate(1, num_trials=4, **kw)  # new seed, same shapes: no new trace
    assert simulate_chunk._cache_size() == n0
    simulate(0, num_trials=10, chunk_size=4, **kw)  # 3 padded chunks of one shape
    assert simulate_chunk._cache_size() == n0  # chunk of 4 trials already compiled


def test_zero_noise_limit_validity_is_binomial():
    """With no state noise the validity count is Binomial(N, p_t) with closed-form p_t."""
    d = load_defaults()
    dyn = dict(d.dynamics, state_noise=0.0, init_sd=0.0)
    d0 = type(d)(**{**d.__dict__, "dynamics": dyn})
    R, T, N = 4000, 5, 10
    r = simulate(9, datasets="cifar-10", tasks="classification", num_trials=R, num_iterations=T,
                 num_candidates=N, defaults=d0, bins=0)
    kappa = dyn["kappa"]
    s = 1 - (1 - kappa) ** np.arange(T)
    delta = float(d0.effects(["cifar-10"], ["classification"]).validity_offset[0])
    p = 1 / (1 + np.exp(-(dyn["validity_intercept"] + dyn["validity_slope"] * s - delta)))
    np.testing.assert_allclose(r["state"].values[0, 0, 0], s, atol=1e-6)
    rate = r["validity_rate"].values[0, 0]
    se = np.sqrt(p * (1 - p) / (N * R))
    assert np.all(np.abs(rate.mean(0) - p) < 5 * se)
    # binomial variance of the per-trial rate: p(1-p)/N
    var_se = np.sqrt(2 / (R - 1)) * p * (1 - p) / N
    assert np.all(np.abs(rate.var(0, ddof=1) - p * (1 - p) / N) < 5 * var_se)


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
