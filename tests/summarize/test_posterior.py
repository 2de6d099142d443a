"""Summaries of a fit: gaps, regime probabilities, trajectories, diagnostics, checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.inference import fit_runs
from llmnas_transfer.io.runs import runs_from_frame, runs_from_simulation
from llmnas_transfer.sim.gaps import classify_regime
from llmnas_transfer.summarize.posterior import (
    GAP_COLUMNS,
    TRAJECTORY_COLUMNS,
    check,
    diagnostics,
    ecdf_band,
    format_table,
    observed_rates,
    plot_sbc,
    posterior_gaps,
    regime_probabilities,
    trajectory,
)


@pytest.fixture(scope="module")
def small_fit():
    sim = simulate(21, datasets="cifar-10,audioset", tasks="classification,generation",
                   num_trials=5, num_iterations=4, num_candidates=15, per_candidate=True,
                   bins=0)
    runs = runs_from_simulation(sim, novelty=False)
    dt = fit_runs(runs, chains=2, draws=150, warmup=150, seed=3, forecast=2,
                  datasets=["nlp-sst2"], prior_draws=50)
    return sim, dt


def test_fit_tree_holds_host_arrays(small_fit):
    # ArviZ indexes with these (e.g. the divergence mask of the trace plot); a JAX array
    # there is cast to int64 under x32 and warns
    _, dt = small_fit
    for node in dt.subtree:
        for name, var in node.dataset.data_vars.items():
            assert isinstance(var.data, np.ndarray), (node.path, name, type(var.data))


def test_gap_table(small_fit):
    _, dt = small_fit
    g = posterior_gaps(dt)
    assert list(g.columns) == list(GAP_COLUMNS)
    # datasets x tasks x components
    assert len(g) == 3 * 2 * 5
    assert set(g["component"]) == {"validity", "accuracy", "combined", "raw_accuracy",
                                   "trend"}
    ref = g[(g.dataset == "cifar-10") & (g.task == "classification")]
    assert np.allclose(ref[["mean", "sd"]].to_numpy(), 0.0, atol=1e-6)
    gaps, trend = g[g.component != "trend"], g[g.component == "trend"]
    np.testing.assert_allclose(gaps[["p_easy", "p_moderate", "p_hard"]].sum(axis=1), 1.0)
    assert gaps["p_trend_small"].isna().all() and trend["p_easy"].isna().all()
    assert trend["p_trend_small"].between(0, 1).all()
    # the reference's own trend gap is 0, so |trend gap| < 0.1 with probability 1
    assert float(trend.loc[(trend.dataset == "cifar-10")
                           & (trend.task == "classification"), "p_trend_small"].item()) == 1.0
    assert (g["hdi_low"] <= g["mean"] + 1e-9).all() and (g["mean"] <= g["hdi_high"] + 1e-9).all()
    # predicted (unobserved) settings carry wider intervals than their observed analogue
    obs = g[(g.dataset == "audioset") & (g.task == "generation") & (g.component == "validity")]
    new = g[(g.dataset == "nlp-sst2") & (g.task == "generation") & (g.component == "validity")]
    assert not bool(new["observed"].item()) and bool(obs["observed"].item())
    assert float(new["sd"].item()) > float(obs["sd"].item())


def test_gap_options(small_fit):
    _, dt = small_fit
    g = posterior_gaps(dt, reference="audioset:classification", iteration=6, ci=0.5,
                       thresholds=(0.0, 0.5))
    ref = g[(g.dataset == "audioset") & (g.task == "classification")]
    assert np.allclose(ref["mean"], 0.0, atol=1e-6)
    wide = posterior_gaps(dt, ci=0.99)
    narrow = posterior_gaps(dt, ci=0.5)
    assert ((wide.hdi_high - wide.hdi_low) >= (narrow.hdi_high - narrow.hdi_low) - 1e-9).all()
    for kw in ({"iteration": 7}, {"reference": "svhn:classification"}, {"ci": 1.5},
               {"thresholds": (0.3, 0.1)}, {"reference": "cifar-10"}):
        with pytest.raises(UserInputError):
            posterior_gaps(dt, **kw)


def test_regime_probabilities_follow_classify_regime():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.1, 0.4, size=(2, 500))
    pe, pm, ph = regime_probabilities(xr.DataArray(x, dims=("chain", "draw")))
    lab = classify_regime(x.ravel())
    assert (pe, pm, ph) == (np.mean(lab == "easy"), np.mean(lab == "moderate"),
                            np.mean(lab == "hard"))


def test_trajectory(small_fit):
    sim, dt = small_fit
    tr = trajectory(dt)
    assert list(tr.columns) == list(TRAJECTORY_COLUMNS)
    assert len(tr) == 3 * 2 * 6
    c = tr[(tr.dataset == "cifar-10") & (tr.task == "generation")]
    rate = sim["n_valid"].sel(dataset="cifar-10", task="generation").sum("trial") / (5 * 15)
    np.testing.assert_allclose(c["observed_rate"].to_numpy()[:4], rate.values)
    assert c["observed_rate"].iloc[4:].isna().all() and c["forecast"].iloc[4:].all()
    assert (tr[tr.dataset == "nlp-sst2"]["basis"] == "hierarchy").all()
    assert ((tr.hdi_low >= 0) & (tr.hdi_high <= 1)).all()
    r = observed_rates(dt)
    assert r.sel(dataset="nlp-sst2").isnull().all()


def test_trajectory_quantiles_are_those_of_the_predictive_draws(small_fit):
    """q columns named by the level as given; each is the plain quantile of the pooled
    predictive rate's draws (hierarchy settings: of the expected rate)."""
    _, dt = small_fit
    tr = trajectory(dt, quantiles="0.05,0.50,0.95")
    assert list(tr.columns) == [*TRAJECTORY_COLUMNS, "q0.05", "q0.50", "q0.95"]
    pred = dt["predictions"].dataset["pooled_rate"].sel(dataset="cifar-10", task="generation")
    expv = dt["posterior"].dataset["validity"].sel(dataset="nlp-sst2", task="generation")
    for (d, k), draws in ((("cifar-10", "generation"), pred), (("nlp-sst2", "generation"), expv)):
        c = tr[(tr.dataset == d) & (tr.task == k)]
        want = np.quantile(draws.values.reshape(-1, draws.shape[-1]), [0.05, 0.5, 0.95], axis=0)
        np.testing.assert_allclose(c[["q0.05", "q0.50", "q0.95"]].to_numpy().T, want,
                                   rtol=1e-6, atol=1e-9)
    assert (tr["q0.05"] <= tr["q0.50"]).all() and (tr["q0.50"] <= tr["q0.95"]).all()
    assert list(trajectory(dt, quantiles=[0.25]).columns)[-1] == "q0.25"
    with pytest.raises(UserInputError, match="quantiles"):
        trajectory(dt, quantiles="0.5,1")


def test_diagnostics_flag_problems():
    rng = np.random.default_rng(1)
    good = rng.normal(size=(2, 400))
    bad = good + np.asarray([[0.0], [3.0]])  # chains disagree
    div = np.zeros((2, 400), bool)
    div[0, :3] = True
    dt = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"kappa": (("chain", "draw"), bad)}),
        "sample_stats": xr.Dataset({"diverging": (("chain", "draw"), div)}),
    })
    dt.attrs["inference"] = "nuts"
    d = diagnostics(dt)
    assert not d.ok
    text = d.text()
    assert "r_hat" in text and "3 divergent" in text and "--target-accept" in text


def _svi_tree(loss):
    rng = np.random.default_rng(1)
    dt = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"kappa": (("chain", "draw"), rng.normal(size=(1, 200)))}),
        "optimization": xr.Dataset({"loss": (("step",), np.asarray(loss, np.float64))})})
    dt.attrs["inference"] = "svi"
    return dt


def test_svi_convergence_rule():
    """A flat but noisy mini-batch loss is converged even when its relative change is
    above the tolerance; a steady trend, or any change without noise, is not."""
    rng = np.random.default_rng(0)
    steps = np.arange(2000)
    flat = -3.4e6 + 3e4 * rng.normal(size=2000)  # window means differ by ~1e3 (~3e-4)
    d = diagnostics(_svi_tree(flat), tolerance=1e-5)
    assert d.stats["relative_change"] > 1e-5 and d.stats["change_in_se"] < 3, d.stats
    assert d.ok, d.text()
    trend = -3.4e6 - 200.0 * steps + 3e4 * rng.normal(size=2000)  # 4e4 per window, ~10 SE
    d = diagnostics(_svi_tree(trend), tolerance=1e-3)
    assert not d.ok and "increase --svi-steps" in d.text(), d.stats
    exact = -3.4e6 - 10.0 * steps  # no noise: the relative change decides
    assert not diagnostics(_svi_tree(exact), tolerance=1e-4).ok
    assert diagnostics(_svi_tree(exact), tolerance=1e-2).ok


def test_diagnostics_of_small_fit(small_fit):
    _, dt = small_fit
    d = diagnostics(dt)
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(d.summary.columns)
    assert "hdi94_lb" in d.summary.columns
    assert d.stats["chains"] == 2 and d.stats["draws"] == 150


def test_check_writes_everything(small_fit, tmp_path):
    _, dt = small_fit
    check(dt, tmp_path / "chk")
    for stem in ("ppc_rates", "ppc_counts", "trace", "forest_gaps", "energy"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "chk" / f"{stem}.{ext}").stat().st_size > 1000
    loo = json.loads((tmp_path / "chk" / "loo.json").read_text())
    assert loo["n_runs"] == 20 and np.isfinite(loo["elpd_loo"])
    ppc = pd.read_csv(tmp_path / "chk" / "ppc_statistics.csv")
    assert set(ppc["statistic"]) == {"pooled_rate", "last_iteration_rate", "between_run_sd"}
    assert ppc["p_value"].between(0, 1).all()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError):
        check(dt, tmp_path / "file")


def test_validity_only_fit_reports_validity_gaps():
    rows = [{"dataset": d, "task": "classification", "trial": r, "iteration": 3,
             "n_generated": 20, "n_valid": v} for d, v in (("cifar-10", 15), ("svhn", 12))
            for r in range(4)]
    dt = fit_runs(runs_from_frame(pd.DataFrame(rows)), chains=1, draws=40, warmup=40,
                  prior_draws=10)
    g = posterior_gaps(dt)
    assert set(g["component"]) == {"validity", "trend"}
    tr = trajectory(dt)
    assert tr["observed_rate"].notna().sum() == 2  # only iteration 3 was observed


def test_format_table():
    df = pd.DataFrame({"a": [0.5, np.nan], "b": ["x", "y"]})
    assert format_table(df, "csv").splitlines() == ["a,b", "0.5,x", ",y"]
    assert json.loads(format_table(df, "json"))[0] == {"a": 0.5, "b": "x"}
    assert "0.500" in format_table(df, "table")
    with pytest.raises(UserInputError):
        format_table(df, "xml")


@pytest.mark.parametrize("n", [20, 100])
def test_ecdf_band_has_its_simultaneous_coverage(n):
    """The ECDF of n uniforms lies inside the whole band with probability ``prob``.

    4000 fresh uniform sets (another seed than the band's own simulation); coverage within
    4 binomial SE (SE = sqrt(0.95 * 0.05 / 4000) = 0.0034).
    """
    z, lo, hi = ecdf_band(n, 0.95)
    rng = np.random.default_rng(123)
    u = np.sort(rng.random((4000, n)), axis=1)
    ecdf = np.stack([np.searchsorted(row, z) for row in u]) / n
    coverage = np.all((ecdf >= lo) & (ecdf <= hi), axis=1).mean()
    assert abs(coverage - 0.95) < 4 * np.sqrt(0.95 * 0.05 / 4000), coverage
    # PITs pushed towards 0 (u ** 1.5) leave it often: measured 0.40 (n = 20) and 0.91
    # (n = 100) of 500 sets; the bounds are about 4 binomial SE below those
    ecdf_biased = np.stack([np.searchsorted(row**1.5, z) for row in u[:500]]) / n
    outside = 1 - np.all((ecdf_biased >= lo) & (ecdf_biased <= hi), axis=1).mean()
    assert outside > (0.3 if n == 20 else 0.85), outside
    with pytest.raises(UserInputError, match="prob"):
        ecdf_band(n, 1.0)


def test_plot_sbc_panels():
    import arviz as az

    rng = np.random.default_rng(0)
    dt = az.from_dict({"prior_sbc": {k: rng.random((1, 60)) for k in ("a", "b", "c")}})
    fig = plot_sbc(dt, pvalues={"a": 0.5, "b": 0.01, "c": 0.2}, prob=0.99)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c"]
    assert all(ax.get_xlabel() == "PIT of the true value" for ax in visible)
    assert visible[0].get_ylabel() == "ECDF difference"
    assert "p = 0.01" in [t.get_text() for t in visible[1].texts]
    assert "60 replicates" in fig._suptitle.get_text()
    assert any("99% simultaneous band" == t.get_text()
               for t in visible[0].get_legend().get_texts())
