"""The compiled NUTS sampler: reused across fits of the same shapes with the same draws,
padded runs that leave the log density unchanged, and the sampler statistics of a fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import potential_energy

from llmnas_transfer.fit import sampling
from llmnas_transfer.fit.laplace import laplace_start
from llmnas_transfer.fit.model import prior_medians, runs_model
from llmnas_transfer.fit.preparation import pad_runs, prepare, run_bucket
from llmnas_transfer.fit.sampling import (
    STAT_FIELDS,
    ModelNutsProgram,
    model_nuts_program,
    nuts_program,
    sample_nuts,
)
from llmnas_transfer.io.runs import toy_runs


@pytest.fixture(scope="module")
def prep():
    return prepare(toy_runs(num_iterations=2))


@pytest.fixture(scope="module")
def start(prep):
    return laplace_start(jax.random.key(0), prep, 2)


def test_run_bucket_bounds_the_padding():
    for n in range(1, 3000, 7):
        b = run_bucket(n)
        assert b >= n and (b <= 8 or b <= 1.25 * n)
    assert run_bucket(90) == run_bucket(96) == 96


def test_padded_runs_leave_the_log_density_unchanged(prep):
    # empty runs contribute log 1 = 0 up to the filter's float32 rescaling (~1e-6 a cell)
    data, spec = prep.data, prep.spec
    padded = pad_runs(data, 16)
    assert padded.n_generated.shape[0] == 16
    from numpyro.infer import init_to_value
    from numpyro.infer.util import initialize_model

    info = initialize_model(jax.random.key(1), runs_model, model_args=(data,),
                            model_kwargs={"spec": spec, "n_valid": data.n_valid,
                                          "deterministic": False},
                            init_strategy=init_to_value(values=prior_medians()))
    z = info.param_info.z
    for shift in (0.0, 0.3, -0.5):
        zz = jax.tree.map(lambda a, s=shift: a + s, z)
        a, b = (float(potential_energy(runs_model, (d,), {"spec": spec, "n_valid": d.n_valid,
                                                         "deterministic": False}, zz))
                for d in (data, padded))
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (shift, a, b)


def test_reused_sampler_gives_the_same_draws(prep, start):
    kw = {"chains": 2, "draws": 15, "warmup": 15}
    before = nuts_program.cache_info()
    first = sample_nuts(jax.random.key(3), prep, start, **kw)
    mid = nuts_program.cache_info()
    second = sample_nuts(jax.random.key(3), prep, start, **kw)
    after = nuts_program.cache_info()
    assert mid.currsize <= before.currsize + 1
    assert after.hits == mid.hits + 1 and after.currsize == mid.currsize  # no new program
    for k, v in first.samples.items():
        np.testing.assert_array_equal(v, second.samples[k], err_msg=k)
    for k, v in first.stats.items():
        np.testing.assert_array_equal(v, second.stats[k], err_msg=k)
    other = sample_nuts(jax.random.key(4), prep, start, **kw)
    assert not np.array_equal(other.samples["kappa"], first.samples["kappa"])


def test_chains_give_the_same_draws_on_any_number_of_threads(prep, monkeypatch):
    """Chain i keeps its key and start: 3 chains run 3 at a time (each from its own
    thread) and one after another give bit-identical draws and statistics; each way
    compiles one program for all its chains."""
    st = laplace_start(jax.random.key(0), prep, 3)
    kw = {"chains": 3, "draws": 12, "warmup": 12}
    monkeypatch.setattr(sampling, "sampling_threads", lambda chains: 3)
    before = nuts_program.cache_info()
    par = sample_nuts(jax.random.key(7), prep, st, **kw)
    monkeypatch.setattr(sampling, "sampling_threads", lambda chains: 1)
    seq = sample_nuts(jax.random.key(7), prep, st, **kw)
    assert nuts_program.cache_info().misses == before.misses + 2  # one program each
    assert (par.attrs["chain_method"], seq.attrs["chain_method"]) == ("parallel", "sequential")
    for k, v in par.samples.items():
        np.testing.assert_array_equal(v, seq.samples[k], err_msg=k)
    for k, v in par.stats.items():
        np.testing.assert_array_equal(v, seq.stats[k], err_msg=k)


def test_sampler_statistics(prep, start):
    s = sample_nuts(jax.random.key(5), prep, start, chains=2, draws=15, warmup=15)
    assert set(s.stats) == set(STAT_FIELDS)
    for k, v in s.stats.items():
        assert isinstance(v, np.ndarray) and v.shape == (2, 15), k
    assert s.stats["diverging"].dtype == bool
    assert np.all(s.stats["num_steps"] >= 1) and np.all(s.stats["step_size"] > 0)
    assert s.samples["kappa"].shape == (2, 15)
    assert s.attrs["metric"] == ("laplace" if start.converged else "adapted")


def test_one_chain(prep):
    st = laplace_start(jax.random.key(0), prep, 1)
    s = sample_nuts(jax.random.key(6), prep, st, chains=1, draws=10, warmup=10,
                    dense_mass=False)
    assert s.samples["kappa"].shape == (1, 10)
    assert s.attrs["chain_method"] == "sequential"


def test_short_fit_has_the_sampler_statistics(tmp_path):
    from llmnas_transfer.fit.fitfile import load_fit, save_fit
    from llmnas_transfer.fit.inference import fit_runs

    seen = []
    dt = fit_runs(toy_runs(num_iterations=2), chains=2, draws=20, warmup=20, seed=0,
                  prior_draws=5, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (80, 80)  # every NUTS iteration of both chains reported
    ss = dt["sample_stats"].dataset
    for name in ("lp", "energy", "n_steps", "tree_depth", "acceptance_rate", "diverging",
                 "step_size", "reached_max_tree_depth"):
        assert name in ss, name
        assert isinstance(ss[name].data, np.ndarray), name
        assert ss[name].dims == ("chain", "draw"), name
    assert ss["diverging"].dtype == bool
    np.testing.assert_array_equal(
        ss["tree_depth"].values, np.log2(ss["n_steps"].values).astype(int) + 1)
    # lp is the log density: minus the potential energy, below the total energy's minus
    assert np.all(-ss["lp"].values <= ss["energy"].values + 1e-3)
    path = tmp_path / "f.nc"
    save_fit(dt, path)
    assert "step_size" in load_fit(path)["sample_stats"].dataset
    assert jnp.isfinite(float(dt["posterior"].dataset["kappa"].mean()))


def test_laplace_start_ends_at_the_mode(prep, start):
    # the batched L-BFGS with its finite-difference Hessian: a Newton step from the mode
    # is tiny against the posterior sds (below 1e-3 sds here; 0.004-0.005 on
    # examples/runs_counts.csv for keys 0, 1, 2)
    from llmnas_transfer.fit.laplace import mode_newton_step

    assert start.converged
    in_sds = mode_newton_step(prep, start)
    assert np.max(in_sds) < 0.01, in_sds
    assert np.all(np.linalg.eigvalsh(start.cov) > 0)


# ------------------------------------------------------------- any model: model_nuts_program
def _normal_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sd = numpyro.sample("sd", dist.HalfNormal(2.0))
    numpyro.deterministic("mu_twice", 2.0 * mu)
    numpyro.sample("y", dist.Normal(mu, sd), obs=y)


def _model_prog(threads: int, chains: int = 3, draws: int = 40):
    return ModelNutsProgram(_normal_model, (), chains, warmup=60, draws=draws,
                            target_accept=0.8, threads=threads)


Y = jnp.asarray(np.random.default_rng(0).normal(1.5, 0.7, size=50), jnp.float32)


def test_any_model_same_draws_on_any_number_of_threads_or_devices(tmp_path):
    """Chain i of a generic model has the i-th key: 3 chains 3 at a time, one at a time
    and in a process with 4 JAX CPU devices give bit-identical draws and statistics."""
    par = model_nuts_program(_model_prog(3))(jax.random.key(4), (Y,))
    seq = model_nuts_program(_model_prog(1))(jax.random.key(4), (Y,))
    for a, b in zip(jax.tree.leaves(par), jax.tree.leaves(seq), strict=True):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "draws.npy"
    script = (
        "import jax; jax.config.update('jax_num_cpu_devices', 4)\n"
        "import numpy as np, jax.numpy as jnp\n"
        "from tests.fit.test_sampling import Y, _model_prog\n"
        "from llmnas_transfer.fit.sampling import model_nuts_program\n"
        "assert jax.local_device_count() == 4\n"
        "d, _ = model_nuts_program(_model_prog(2))(jax.random.key(4), (Y,))\n"
        f"np.save({str(out)!r}, d['mu'])\n")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root,
                   env={**os.environ, "LLMNAS_TRANSFER_CACHE": "off"})
    np.testing.assert_array_equal(np.load(out), par[0]["mu"])


def test_any_model_draws_and_progress(monkeypatch):
    """Latent and deterministic sites and the statistics come as (chain, draw); the
    progress callback sees every segment of every chain; segments of another length
    (here 7 iterations: 15 segments, the last one 5 past the end) give the same draws."""
    plain = model_nuts_program(_model_prog(2, chains=2))(jax.random.key(1), (Y,))
    monkeypatch.setattr(sampling, "SEGMENT", 7)
    model_nuts_program.cache_clear()
    seen = []
    try:  # no program built with 7-iteration segments outlives the test
        draws, stats = model_nuts_program(_model_prog(2, chains=2))(
            jax.random.key(1), (Y,), progress=lambda done, total: seen.append((done, total)))
    finally:
        model_nuts_program.cache_clear()
    assert set(draws) == {"mu", "sd", "mu_twice"} and draws["mu"].shape == (2, 40)
    np.testing.assert_allclose(draws["mu_twice"], 2 * draws["mu"], rtol=1e-6)
    assert set(stats) == set(STAT_FIELDS) and stats["num_steps"].shape == (2, 40)
    assert len(seen) == 2 * 15 and seen[-1] == (200, 200)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves((draws, stats)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_any_model_recovers_a_normal_mean():
    """Known truth: the posterior mean of mu is the conjugate one up to 4 Monte Carlo
    standard errors (ESS from ArviZ), with r_hat below 1.01 and no divergences."""
    import arviz as az

    draws, stats = model_nuts_program(_model_prog(2, chains=4, draws=500))(
        jax.random.key(2), (Y,))
    mu = draws["mu"]
    assert stats["diverging"].sum() == 0
    assert float(az.rhat(mu)) < 1.01
    se = float(mu.std()) / float(az.ess(mu)) ** 0.5
    # with the flat-ish prior the posterior mean is the sample mean (the prior's pull,
    # (s^2 / n) / 10^2 of it, is about 1e-4, far below one standard error of 0.003)
    assert abs(float(mu.mean()) - float(Y.mean())) < 4 * se
