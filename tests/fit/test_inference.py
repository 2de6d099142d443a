"""Fitting: parameter recovery against known truth, forecasts, SVI, netCDF round trip.

The default run fits a reduced study (8 settings) once per module; the paper-size
recovery and forecast coverage run under ``-m slow``. Compilation dominates the cost of a
fit (the sampling itself takes seconds), and JAX compiles once per data shape and model
spec: so the short NUTS fits (same seed, metric choice) and the Laplace start use the
reduced study's runs and spec too, and one short fit serves several tests.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import llmnas_transfer.fit.inference as inf
from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.checks import recovery_table, truth_from_defaults
from llmnas_transfer.fit.fitfile import fit_info, load_fit, save_fit, spec_of
from llmnas_transfer.fit.inference import fit_runs
from llmnas_transfer.fit.preparation import prepare
from llmnas_transfer.io.runs import runs_from_frame, runs_from_simulation
from llmnas_transfer.sim.params import load_defaults
from llmnas_transfer.summarize.posterior import diagnostics, posterior_gaps, trajectory

REDUCED = dict(datasets="cifar-10,svhn,audioset,nlp-sst2", tasks="classification,generation",
               num_trials=10, num_iterations=10, num_candidates=20)
HOLD_OUT = 2
#: a short NUTS fit of the reduced runs (same spec and shapes as the reduced fit, so the
#: compiled Laplace start and post-processing are shared)
SHORT = dict(chains=1, draws=30, warmup=30, prior_draws=10, seed=5, forecast=HOLD_OUT)


@pytest.fixture(scope="module")
def reduced_runs():
    """Simulate 8 settings x 10 trials x 10 iterations x 20 candidates at the shipped
    parameters; the runs keep the first 8 iterations."""
    sim = simulate(11, per_candidate=True, bins=0, **REDUCED)
    return sim, runs_from_simulation(sim.isel(iteration=slice(0, -HOLD_OUT)), novelty=False)


@pytest.fixture(scope="module")
def reduced_fit(reduced_runs):
    """NUTS fit of the reduced runs, forecasting the 2 held-out iterations."""
    sim, runs = reduced_runs
    # 2 x 2000 draws: the max r_hat over the parameters was 1.0032, 1.0023 and 1.0019 for
    # fit seeds 1, 2, 3 (800 draws: 1.0077, 1.0076, 1.0065), so the test's 1.01 is above
    # the worst seed by 5x the spread between seeds; sampling is a few seconds of a fit
    # that compilation dominates. The metric comes from the Laplace start, so a warmup
    # of 300 adapts the step size (no divergences for any of the 3 seeds).
    dt = fit_runs(runs, chains=2, draws=2000, warmup=300, seed=1, forecast=HOLD_OUT,
                  prior_draws=100)
    return sim, runs, dt


@pytest.fixture(scope="module")
def short_fit(reduced_runs):
    return fit_runs(reduced_runs[1], **SHORT)


def test_groups_and_dims(reduced_fit):
    _, runs, dt = reduced_fit
    for g in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "prior",
              "prior_predictive", "observed_data", "constant_data", "predictions"):
        assert g in dt.children, g
    post = dt["posterior"].dataset
    assert post["difficulty"].dims == ("chain", "draw", "dataset")
    assert post["validity"].dims == ("chain", "draw", "dataset", "task", "horizon")
    assert post["task_complexity_free"].dims[-1] == "free_task"
    assert dt["observed_data"].dataset["n_valid"].dims == ("run", "iteration")
    assert dt["log_likelihood"].dataset["n_valid"].dims == ("chain", "draw", "run")
    for f in ("potential_energy", "energy", "num_steps", "accept_prob", "diverging"):
        name = {"potential_energy": "lp", "num_steps": "n_steps",
                "accept_prob": "acceptance_rate"}.get(f, f)
        assert name in dt["sample_stats"].dataset, name
    assert int(dt["observed_data"].dataset["n_valid"].sum()) == int(runs.cells["n_valid"].sum())


def test_reduced_recovery(reduced_fit):
    """Truth inside the 94% HDI for >= 90% of the parameters; r_hat <= 1.01; no
    divergences."""
    _, _, dt = reduced_fit
    spec = spec_of(dt)
    truth = truth_from_defaults(load_defaults(), spec)
    rec = recovery_table(dt, truth)
    assert len(rec) >= 25
    frac = rec["inside"].mean()
    assert frac >= 0.90, rec[~rec["inside"]].to_string()
    d = diagnostics(dt)
    assert d.stats["divergences"] == 0
    assert d.stats["max_r_hat"] <= 1.01, d.text()


def test_forecast_covers_held_out_rates(reduced_fit):
    """90% intervals of the forecast pooled rates (8 settings x 2 held-out iterations)
    cover the simulated values. With 16 correlated intervals the count of misses is
    checked loosely: at most 4 (binomial(16, 0.1) exceeds 4 with probability 0.017)."""
    sim, _, dt = reduced_fit
    tr = trajectory(dt, ci=0.90)
    held = sim["n_valid"].sum("trial") / (sim.sizes["trial"] * float(sim["n_generated"]))
    fc = tr[tr["forecast"]]
    assert len(fc) == 8 * HOLD_OUT
    miss = 0
    for row in fc.itertuples():
        true = float(held.sel(dataset=row.dataset, task=row.task, iteration=row.iteration))
        miss += not (row.hdi_low - 1e-9 <= true <= row.hdi_high + 1e-9)
    assert miss <= 4, fc.to_string()
    obs = tr[~tr["forecast"]]
    assert obs["observed_rate"].notna().all()


def test_gaps_of_unobserved_settings_are_wider(reduced_fit):
    sim, runs, dt = reduced_fit
    g = posterior_gaps(dt)
    assert set(g["component"]) == {"validity", "accuracy", "combined", "raw_accuracy",
                                   "trend"}
    assert g.loc[(g.dataset == "cifar-10") & (g.task == "classification"), "mean"].abs().max() \
        < 1e-6
    probs = g.loc[g.component != "trend", ["p_easy", "p_moderate", "p_hard"]].sum(axis=1)
    np.testing.assert_allclose(probs, 1.0, atol=1e-9)
    assert g["observed"].all()


def test_netcdf_round_trip(reduced_fit, tmp_path):
    _, _, dt = reduced_fit
    p = save_fit(dt, tmp_path / "fit.nc")
    back = load_fit(p)
    assert set(back.children) == set(dt.children)
    for g in dt.children:
        a, b = dt[g].dataset, back[g].dataset
        for v in a.data_vars:
            if a[v].dtype.kind in "fiub":
                np.testing.assert_array_equal(a[v].values, b[v].values)
            else:
                assert [str(x) for x in a[v].values.ravel()] == \
                    [str(x) for x in b[v].values.ravel()]
    assert back.attrs["spec"] == dt.attrs["spec"]
    pd.testing.assert_frame_equal(posterior_gaps(dt), posterior_gaps(back))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_same_seed_same_numbers(reduced_runs, short_fit):
    a, b = short_fit, fit_runs(reduced_runs[1], **SHORT)
    for g in ("posterior", "posterior_predictive", "predictions", "prior"):
        xr.testing.assert_equal(a[g].dataset, b[g].dataset)


def test_fit_info_reads_the_fit(short_fit):
    """fit_runs returns its settings and timings in the fit; fit_info reads them back."""
    info = fit_info(short_fit)
    assert (info.method, info.chains, info.draws, info.warmup) == ("nuts", 1, 30, 30)
    assert info.chain_method == "sequential" and info.losses is None
    assert 0 < info.seconds_sampling <= info.seconds_total
    assert short_fit.attrs["seed"] == 5


def test_laplace_start_is_the_mode(reduced_runs):
    """The mode search ends at a point where the potential's gradient vanishes and the
    Hessian is positive definite; its inverse is the dense metric, its diagonal the
    diagonal one; a failed approximation gives no metric (NUTS then adapts one)."""
    from llmnas_transfer.fit.laplace import LaplaceStart, laplace_start, mode_newton_step

    prep = prepare(reduced_runs[1], num_forecast=HOLD_OUT)  # the spec of the fits above
    start = laplace_start(jax.random.key(0), prep, 2)
    assert start.converged
    # |gradient| small against the curvature: a Newton step from the mode is tiny (0.018
    # posterior sds at most on these runs, for keys 0, 1 and 2: the bound 0.05 is 2.8x that)
    in_sds = mode_newton_step(prep, start)
    assert np.max(in_sds) < 0.05, in_sds
    assert np.all(np.linalg.eigvalsh(start.cov) > 0)
    assert all(v.shape[0] == 2 for v in start.init_params.values())
    dense = start.inverse_mass_matrix(True)
    np.testing.assert_allclose(np.asarray(next(iter(dense.values()))), start.cov, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(start.inverse_mass_matrix(False)),
                               np.diag(start.cov), rtol=1e-6)
    failed = LaplaceStart(start.mode, np.eye(len(start.cov)), start.init_params, False, np.nan)
    assert failed.inverse_mass_matrix(True) is None


def test_metric_fallback_and_adapted_metric(reduced_runs, short_fit, monkeypatch):
    """adapt_metric=True adapts the metric; so does the default when the Laplace
    approximation failed (a non-positive-definite Hessian)."""
    runs = reduced_runs[1]
    assert short_fit.attrs["metric"] == "laplace"
    assert fit_runs(runs, adapt_metric=True, **SHORT).attrs["metric"] == "adapted"
    real = inf.laplace_start

    def failing(*a, **k):
        return real(*a, **k)._replace(converged=False)

    monkeypatch.setattr(inf, "laplace_start", failing)
    dt = fit_runs(runs, **SHORT)
    assert dt.attrs["metric"] == "adapted"
    assert np.isfinite(dt["posterior"].dataset["kappa"].values).all()


def test_prepare_levels_and_notices():
    df = pd.DataFrame({"dataset": ["my-audio"] * 2 + ["cifar-10"] * 2,
                       "task": ["captioning"] * 2 + ["classification"] * 2, "trial": 1,
                       "iteration": [1, 2, 1, 2], "n_generated": 10, "n_valid": [3, 4, 5, 6]})
    runs = runs_from_frame(df)
    p = prepare(runs, dataset_attrs={"my-audio": {"modality": "audio", "resolution": 64,
                                                   "num_classes": 50}})
    assert p.spec.datasets == ("cifar-10", "my-audio")
    assert p.spec.tasks == ("classification", "captioning")
    assert p.spec.modalities == ("image", "audio")
    assert any("'my-audio' is not in the registry" in n and "(given)" in n for n in p.notices)
    assert any("task 'captioning'" in n for n in p.notices)
    with pytest.raises(UserInputError, match="'my-audio' is not in the registry"):
        prepare(runs)  # a new dataset needs its attributes (none are assumed)
    audio = {"my-audio": {"modality": "audio", "resolution": 64, "num_classes": 50}}
    with pytest.raises(UserInputError, match="is in the registry"):
        prepare(runs, dataset_attrs={**audio, "cifar-10": {"modality": "audio"}})
    with pytest.raises(UserInputError, match="modality"):
        prepare(runs, dataset_attrs={"my-audio": {"modality": "smell"}})
    with pytest.raises(UserInputError, match="DATASET:TASK"):
        prepare(runs, reference="cifar-10", dataset_attrs=audio)
    r = prepare(runs, reference="svhn:classification", dataset_attrs=audio)
    assert any("has no data" in n for n in r.notices)


def test_bad_arguments():
    df = pd.DataFrame({"dataset": "cifar-10", "task": "classification", "trial": 1,
                       "iteration": [1], "n_generated": 10, "n_valid": [3]})
    runs = runs_from_frame(df)
    for kw in ({"method": "hmc"}, {"chains": 0}, {"draws": -1}, {"target_accept": 1.5},
               {"seed": -3}, {"forecast": -1}):
        with pytest.raises(UserInputError):
            fit_runs(runs, **kw)


def test_svi_fit_and_summaries():
    """SVI with a full-rank guide: runs end to end and recovers the validity level."""
    sim = simulate(6, datasets="cifar-10,svhn", tasks="classification,generation",
                   num_trials=10, num_iterations=6, num_candidates=20, per_candidate=True,
                   bins=0)
    runs = runs_from_simulation(sim, novelty=False)
    dt = fit_runs(runs, method="svi", svi_steps=1500, draws=400, seed=0, prior_draws=20,
                  forecast=1)
    assert dt.attrs["inference"] == "svi"
    assert "optimization" in dt.children and "sample_stats" not in dt.children
    info = fit_info(dt)
    assert info.chain_method == "svi" and info.losses.shape == (1500,)
    d = diagnostics(dt)
    assert np.isfinite(d.stats["final_loss"])
    # the expected final validity of each setting is inside its 94% HDI... of the
    # posterior of the expected rate: compare with the simulator's exact expectation
    from llmnas_transfer.sim.expectation import expected

    de = load_defaults()
    spec = spec_of(dt)
    ev = np.asarray(expected(de.dynamics_params(), de.effects(list(spec.datasets),
                                                              list(spec.tasks)), 7).validity)
    v = dt["posterior"].dataset["validity"].sel(horizon=6)
    lo, hi = v.quantile([0.001, 0.999], dim=("chain", "draw")).values
    inside = (lo <= ev[:, 5].reshape(lo.shape)) & (ev[:, 5].reshape(hi.shape) <= hi)
    assert inside.mean() >= 0.75, (lo, hi, ev[:, 5])
    json.loads(dt.attrs["notices"])


@pytest.mark.slow
def test_paper_size_recovery_and_forecast():
    """Paper size: 32 settings x 15 trials x 10 iterations x 20 candidates; NUTS 4 chains.

    >= 90% of parameters inside the 94% HDI, r_hat <= 1.01, no divergences; the 90%
    forecast intervals of the last 2 (held-out) iterations cover the simulated pooled
    rates at 90% +- 3 binomial SE over 64 intervals (0.90 +- 0.11).
    """
    sim = simulate(2026, num_trials=15, num_iterations=10, num_candidates=20,
                   per_candidate=True, bins=0)
    runs = runs_from_simulation(sim.isel(iteration=slice(0, -HOLD_OUT)))
    dt = fit_runs(runs, chains=jax.local_device_count() if jax.local_device_count() > 1 else 2,
                  draws=1000, warmup=1000, seed=0, forecast=HOLD_OUT, prior_draws=100)
    truth = truth_from_defaults(load_defaults(), spec_of(dt))
    rec = recovery_table(dt, truth)
    assert rec["inside"].mean() >= 0.90, rec[~rec["inside"]].to_string()
    d = diagnostics(dt)
    assert d.stats["divergences"] == 0 and d.stats["max_r_hat"] <= 1.01, d.text()
    tr = trajectory(dt, ci=0.90)
    held = sim["n_valid"].sum("trial") / (sim.sizes["trial"] * float(sim["n_generated"]))
    fc = tr[tr["forecast"]]
    cover = np.mean([
        r.hdi_low <= float(held.sel(dataset=r.dataset, task=r.task, iteration=r.iteration))
        <= r.hdi_high for r in fc.itertuples()])
    se = np.sqrt(0.9 * 0.1 / len(fc))
    assert abs(cover - 0.90) <= 3 * se, cover
