"""Named scenarios: the Khalid et al. 2026 run, its fit, simulation and comparison."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim.candidates import simulate
from llmnas_transfer.sim.params import load_defaults
from llmnas_transfer.study import scenarios


@pytest.fixture(scope="module")
def khalid():
    return scenarios.get("khalid2026")


@pytest.fixture(scope="module")
def khalid_base():
    return scenarios.get("khalid2026-base")


def _default_scenario(T=6, N=7, drift=(0.0, 0.5)):
    d = load_defaults()
    eff = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    return scenarios.Scenario(
        "test", "", "cifar-10", "classification", T, N, d.dynamics_params(), eff,
        scenarios.AmbitionDrift(jnp.float32(drift[0]), jnp.float32(drift[1])), {},
        pd.DataFrame(), np.zeros(0))


def test_unknown_scenario_lists_names():
    with pytest.raises(UserInputError, match="khalid2026, khalid2026-base"):
        scenarios.get("khalid")


def test_targets_come_from_the_bundled_csv():
    t = scenarios.khalid2026_targets()
    assert t == pytest.approx({
        "validity_first": 0.44, "validity_peak": 0.745, "validity_settled": 0.506,
        "accuracy_first": 0.2806, "accuracy_last": 0.5099, "share_above_first": 0.0204,
        "share_above_last": 0.9681})


def test_drift_path():
    d = scenarios.drift_path(scenarios.AmbitionDrift(jnp.float32(2.0), jnp.float32(0.25)), 4)
    np.testing.assert_allclose(d, [0.0, 0.5, 0.875, 1.15625], rtol=1e-6)


def test_zero_drift_simulation_equals_simulate():
    """With no drift the scenario kernel is the package simulator, draw for draw."""
    sc = _default_scenario()
    ds = scenarios.simulate_scenario(11, sc, num_trials=5)
    ref = simulate(11, datasets="cifar-10", tasks="classification", num_trials=5,
                   num_iterations=sc.num_iterations, num_candidates=sc.num_candidates, bins=0)
    r = ref.sel(dataset="cifar-10", task="classification")
    np.testing.assert_array_equal(ds["n_valid"].values, r["n_valid"].values)
    np.testing.assert_allclose(ds["accuracy_mean"].values, r["accuracy_mean"].values,
                               rtol=1e-5)
    np.testing.assert_allclose(ds["state"].values, r["state"].values, rtol=1e-6)


def test_expected_curves_match_monte_carlo(khalid):
    """Exact expectations against 4,000 simulated runs: within 5 Monte Carlo SEs."""
    ds = scenarios.simulate_scenario(3, khalid, num_trials=4000)
    cur = scenarios.expected_curves(khalid.params, khalid.effects, khalid.drift, 22)
    for var, key in (("validity_rate", "validity"), ("accuracy_mean", "accuracy"),
                     ("share_above", "share_above")):
        x = ds[var].values
        m = np.nanmean(x, 0)
        se = np.nanstd(x, 0, ddof=1) / np.sqrt(np.isfinite(x).sum(0))
        z = (m - np.asarray(cur[key])) / se
        assert np.all(np.abs(z) < 5), (var, np.round(z, 1))
    # pooled over runs differs from the mean of per-run means (weighting by validity)
    nv = ds["n_valid"].values
    pooled = np.nansum(ds["accuracy_mean"].values * nv, 0) / nv.sum(0)
    assert abs(pooled[0] - float(cur["accuracy_pooled"][0])) < 0.005


def test_expected_peak_matches_simulation(khalid):
    comp = scenarios.compare(khalid, num_trials=3000, seed=1).set_index("statistic")
    r = comp.loc["validity_peak"]
    # the peak's expectation uses a normal approximation of the binomial cycle rate
    assert abs(r["expected"] - r["simulated"]) < max(5 * r["simulated_se"], 0.006)


def test_khalid_fit_matches_every_published_number(khalid):
    """The drift scenario matches all seven published numbers within half a point."""
    rep = khalid.fit_report.set_index("statistic")
    assert set(rep.index) == set(scenarios.STATISTICS)
    assert (rep["miss"].abs() < 0.005).all(), rep
    assert khalid.losses[-1] < 0.01 * khalid.losses[0]
    assert float(khalid.drift.size) > 0.5  # the mechanism is used


def test_khalid_shape_rises_then_settles(khalid):
    v = np.asarray(scenarios.expected_curves(khalid.params, khalid.effects, khalid.drift,
                                             22)["validity"])
    k = int(np.argmax(v))
    assert 1 <= k <= 15  # interior peak
    assert v[k] - v[-1] > 0.05 and v[k] - v[0] > 0.05
    assert abs(v[-1] - v[-2]) < 0.01  # settled


def test_base_model_is_monotone_and_misses_the_shape(khalid_base):
    sc = khalid_base
    assert float(sc.drift.size) == 0.0
    v = np.asarray(scenarios.expected_curves(sc.params, sc.effects, sc.drift, 22)["validity"])
    assert np.all(np.diff(v) > -1e-6)
    rep = sc.fit_report.set_index("statistic")
    drop = rep.loc["validity_peak", "expected"] - rep.loc["validity_settled", "expected"]
    assert drop < 0.239 - 0.05  # published drop 74.5 - 50.6 = 23.9 points


def test_compare_table(khalid):
    t = scenarios.compare(khalid, num_trials=400)
    assert list(t["statistic"]) == [*scenarios.STATISTICS, "validity_drop"]
    assert (t["simulated_se"] > 0).all() and (t["run_sd"] > t["simulated_se"]).all()
    assert (t["run_q05"] <= t["run_q95"]).all()
    np.testing.assert_allclose(t["published"].iloc[1], 0.745)
    drop = t.set_index("statistic").loc["validity_drop"]
    assert drop["published"] == pytest.approx(0.745 - 0.506)
    # the fitted scenario puts the published run in the middle of its simulated runs
    assert (t["z_run"].abs() < 2).all(), t


def test_same_seed_same_runs(khalid):
    a = scenarios.simulate_scenario(5, khalid, num_trials=20)
    b = scenarios.simulate_scenario(5, khalid, num_trials=20)
    np.testing.assert_array_equal(a["n_valid"].values, b["n_valid"].values)
    c = scenarios.simulate_scenario(6, khalid, num_trials=20)
    assert not np.array_equal(a["n_valid"].values, c["n_valid"].values)


def test_implied_logit_normal_round_trip():
    loc, sd = scenarios.implied_logit_normal(0.5099, 0.9681)
    from scipy.stats import norm

    z = np.random.default_rng(0).standard_normal(400_000)
    a = 1 / (1 + np.exp(-(loc + sd * z)))
    assert abs(a.mean() - 0.5099) < 5 * a.std() / np.sqrt(z.size)
    assert 1 - norm.cdf((np.log(0.4 / 0.6) - loc) / sd) == pytest.approx(0.9681, abs=1e-6)
    with pytest.raises(UserInputError):
        scenarios.implied_logit_normal(1.2, 0.5)


def test_fit_scenario_errors_and_small_fit():
    with pytest.raises(UserInputError, match="valid values: validity_first"):
        scenarios.fit_scenario({"validity": 0.5})
    p, e, d, rep, losses = scenarios.fit_scenario({"validity_first": 0.44}, steps=300,
                                                  num_iterations=4, drift=False)
    assert abs(rep["miss"].iloc[0]) < 0.01
    assert float(d.size) == 0.0


def test_run_scenario_writes_files(tmp_path, khalid):
    out = scenarios.run_scenario("khalid2026", tmp_path / "sc", num_trials=50)
    names = {p.name for p in out["files"]}
    assert {"scenario_khalid2026_comparison.csv", "scenario_khalid2026.png",
            "scenario_khalid2026.pdf", "scenario_khalid2026_parameters.csv"} <= names
    back = pd.read_csv(tmp_path / "sc" / "scenario_khalid2026_comparison.csv")
    assert len(back) == len(scenarios.STATISTICS) + 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="not a folder"):
        scenarios.run_scenario("khalid2026", tmp_path / "file", num_trials=5)
