"""LEMUR fit: data preparation, recovery, gaps, rank transfer, held-out coverage, priors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from matplotlib.figure import Figure
from numpyro.infer import Predictive

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io import bundled
from llmnas_transfer.io.bundled import load_lemur
from llmnas_transfer.sim.expectation import logitnormal_mean
from llmnas_transfer.study import lemur
from llmnas_transfer.summarize.figures import save_figure

# ------------------------------------------------------------------ synthetic data
DATASETS = ("cifar-10", "d1", "d2", "d3")
SOURCES = ("llm", "human", "algorithmic_ga")
G_DATASET = np.repeat(np.arange(4), 3).astype(np.int32)
G_SOURCE = np.tile(np.arange(3), 4).astype(np.int32)
# known truth built like the model: dataset level + source shift + small cell deviation
TRUE_MU = (np.array([-1.0, -2.6, 0.6, -1.3])[G_DATASET] + np.array([0.0, 0.3, -0.4])[G_SOURCE]
           + np.array([0.1, -0.15, 0.05, -0.2, 0.25, 0.0, 0.15, -0.1, -0.05, 0.0, 0.2, -0.25]))
TRUE_SIGMA = np.exp(np.log([0.4, 0.6, 0.8, 0.35])[G_DATASET] + np.array([0.0, -0.2, 0.1])[
    G_SOURCE] + np.array([0.05, -0.1, 0.0, 0.1, -0.05, 0.05, -0.1, 0.0, 0.1, 0.05, 0.0, -0.05]))


def synthetic(counts=(60, 25, 200), seed: int = 1) -> lemur.LemurData:
    """Four datasets x three sources with known logit location and spread per group;
    ``counts`` architectures per source (as in LEMUR, few human, many GA).

    Architecture ``<source>-a<i>`` exists on every dataset, so the held-out split removes
    it everywhere.
    """
    rng = np.random.default_rng(seed)
    n = np.asarray(counts)[G_SOURCE]
    arch_group = np.repeat(np.arange(12), n).astype(np.int32)
    z = TRUE_MU[arch_group] + TRUE_SIGMA[arch_group] * rng.standard_normal(arch_group.size)
    idx = np.concatenate([np.arange(c) for c in n])
    names = np.asarray([f"{SOURCES[G_SOURCE[g]]}-a{i}" for g, i in zip(arch_group, idx,
                                                                        strict=True)])
    labels = tuple(f"{DATASETS[d]}/{SOURCES[s]}" for d, s in zip(G_DATASET, G_SOURCE,
                                                                 strict=True))
    return lemur.LemurData(DATASETS, SOURCES, G_DATASET, G_SOURCE, labels, arch_group,
                           1.0 / (1.0 + np.exp(-z)), names, "e1_mean")


#: Draws of the shared synthetic fit. The convergence checks of
#: test_recovery_on_synthetic_data need 1000 warmup + 1000 draws a chain: with 500 + 500,
#: seeds 0-3 gave max r_hat 1.009-1.019, min bulk ESS 187-311 and one divergence (seed 1).
#: With 1000 + 1000, seeds 0-5 gave max r_hat 1.0033-1.0070 and min bulk ESS 491-684
#: (NumPyro's MCMC), 1.0069-1.0180 and 323-654 (the compiled chains in one scan) and
#: 1.0040-1.0088 and 468-704 with 0-1 divergences (the chains in compiled segments,
#: model_nuts_program). Another CPU's rounding gives another sample at the same seed (a
#: fresh clone once gave 1.0102 where this machine gave 1.0070), so the limits below
#: sit outside that whole spread rather than at one seed's result.
SYNTHETIC_DRAWS = {"num_warmup": 1000, "num_samples": 1000, "num_chains": 2}
#: r_hat limit of the synthetic fit: above the largest of the runs in SYNTHETIC_DRAWS
RHAT_LIMIT = 1.025


@pytest.fixture(scope="module")
def synthetic_fit():
    return lemur.fit_lemur(synthetic(), seed=3, **SYNTHETIC_DRAWS)


# ------------------------------------------------------------------ data
def test_arrange_orders_reference_first_and_counts():
    d = lemur.arrange_lemur_data()
    assert d.datasets[0] == "cifar-10" and d.sources[0] == "llm"
    assert len(d.accuracy) == len(load_lemur(task="img-classification"))
    assert d.num_groups == 35
    g = d.group_of("cifar-100", "llm")
    assert (d.arch_group == g).sum() == 60


def test_arrange_errors():
    with pytest.raises(UserInputError, match="e1_mean, e1_median, e1_max"):
        lemur.arrange_lemur_data(statistic="e1_mode")
    with pytest.raises(UserInputError, match="available task/metric"):
        lemur.arrange_lemur_data(load_lemur(dataset="svhn"), task="img-segmentation")
    with pytest.raises(UserInputError, match="groups: "):
        lemur.arrange_lemur_data(load_lemur(dataset="svhn")).group_of("svhn", "algorithmic_ast")


def test_group_stats_match_numpy():
    d = synthetic((20, 5, 7))
    s = lemur.group_stats(d)
    for g in range(d.num_groups):
        z = lemur.logit(d.accuracy[d.arch_group == g])
        np.testing.assert_allclose(float(s.n[g]), z.size)
        np.testing.assert_allclose(float(s.sum_z[g]), z.sum(), rtol=1e-5)
        np.testing.assert_allclose(float(s.sumsq_z[g]), (z * z).sum(), rtol=1e-5)


def test_prior_predictive_is_generative_and_plausible():
    d = synthetic((10, 3, 4))
    draws = Predictive(lemur.lemur_model, num_samples=200)(
        jax.random.key(0), *lemur._model_args(d), None, **lemur._model_kwargs(d))
    z = np.asarray(draws["logit_accuracy"])
    assert z.shape == (200, d.accuracy.size) and np.isfinite(z).all()
    acc = 1 / (1 + np.exp(-z))
    assert 0.05 < np.median(acc) < 0.6  # prior centred on logit -1 (about 0.27)
    assert np.all(np.asarray(draws["sigma"]) > 0)


# ------------------------------------------------------------------ recovery
def test_recovery_on_synthetic_data(synthetic_fit):
    import arviz as az

    s = az.summary(synthetic_fit.tree, var_names=["mu", "sigma"], ci_kind="hdi",
                   ci_prob=0.94, round_to="none")
    truth = np.concatenate([TRUE_MU, TRUE_SIGMA])
    inside = (s["hdi94_lb"].to_numpy() <= truth) & (truth <= s["hdi94_ub"].to_numpy())
    # 24 parameters in 94% HDIs: P(fewer than 19 inside) = 0.5% under a calibrated fit
    # (scipy.stats.binom(24, 0.94).cdf(18) = 0.0051)
    assert inside.sum() >= 19, s.assign(truth=truth)
    assert np.all(np.abs(s["mean"].to_numpy() - truth) < 4 * s["sd"].to_numpy())
    d = lemur.convergence_summary(synthetic_fit)
    # 18 seed-and-sampler runs (SYNTHETIC_DRAWS) gave max r_hat 1.0033-1.0180 and min bulk
    # ESS 323-704: a failure here means the chains disagree, not an unlucky seed
    assert d["max_r_hat"] < RHAT_LIMIT, d  # seed 3: 1.0088
    # up to 1 divergence in 2000 draws at seeds 0-5; up to 0.2% of the draws (4) allows
    # for a CPU's rounding, more would mean a geometry the sampler cannot follow
    assert d["divergences"] <= 0.002 * d["draws"], d
    assert d["min_ess_bulk"] > 250, d  # seed 3: 517
    # ArviZ's other checks (E-BFMI, its ESS and r_hat, the latter at the same limit) all
    # pass; its divergence check flags any divergence, so the count is checked above
    _, checks = az.diagnose(synthetic_fit.tree, show_diagnostics=False,
                            return_diagnostics=True, rhat_max=RHAT_LIMIT)
    assert not checks["bfmi"]["failed_chains"], checks["bfmi"]
    assert not checks["ess"]["bad_params"], checks["ess"]
    assert not checks["rhat"]["bad_params"], checks["rhat"]


def test_gaps_contain_truth_and_match_metrics_convention(synthetic_fit):
    gaps = lemur.accuracy_gaps(synthetic_fit).set_index("dataset")
    true_a = np.asarray(logitnormal_mean(jnp.asarray(TRUE_MU), jnp.asarray(TRUE_SIGMA)))
    for d, g in (("d1", 3), ("d2", 6), ("d3", 9)):
        diff = true_a[g] - true_a[0]
        r = gaps.loc[d]
        assert abs(r["accuracy_difference"] - diff) < 4 * r["accuracy_difference_sd"]
        assert r["accuracy_difference_hdi_lo"] < r["accuracy_difference"] < \
            r["accuracy_difference_hdi_hi"]
    # accuracy_gap = 1 - A_d / A_ref, as in metrics.gap_components
    A = lemur._posterior(synthetic_fit, "mean_accuracy")
    np.testing.assert_allclose(gaps.loc["d1", "accuracy_gap"],
                               np.mean(1 - A[..., 3] / A[..., 0]), rtol=1e-6)
    assert gaps.loc["d1", "accuracy_gap"] > 0 > gaps.loc["d2", "accuracy_gap"]


def test_figures_are_backend_free_and_save(synthetic_fit, tmp_path):
    """Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot, no backend)."""
    gaps = lemur.accuracy_gaps(synthetic_fit)
    ranks = pd.DataFrame({"reference": "cifar-10", "dataset": ["d1", "d1", "d2"],
                          "source": ["llm", "all", "llm"], "spearman": [0.5, 0.4, 0.2],
                          "spearman_lo": [0.3, 0.2, 0.0], "spearman_hi": [0.7, 0.6, 0.4]})
    cov = pd.DataFrame({"dataset": ["d1", "all"], "n": [100, 400], "coverage": [0.9, 0.88],
                        "nominal": 0.9, "band_lo": [0.81, 0.855], "band_hi": [0.99, 0.945]})
    for stem, fig in (("gaps", lemur.plot_gap_forest(gaps)),
                      ("ranks", lemur.plot_rank_transfer(ranks)),
                      ("coverage", lemur.plot_coverage(cov))):
        assert isinstance(fig, Figure) and fig.canvas.manager is None
        paths = save_figure(fig, tmp_path / stem, dpi=lemur.FIGURE_DPI, bbox_inches="tight")
        assert all(p.stat().st_size > 1000 for p in paths)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".pdf"] * 3 + [".png"] * 3


def test_group_table(synthetic_fit):
    t = lemur.group_table(synthetic_fit)
    assert len(t) == 12 and list(t["n"][:3]) == [60, 25, 200]
    assert (t["predictive_q05"] < t["predictive_q50"]).all()
    assert (t["predictive_q50"] < t["predictive_q95"]).all()
    assert (t["mean_accuracy_hdi_lo"] < t["mean_accuracy_hdi_hi"]).all()


@pytest.mark.slow  # one more NUTS fit (about 10 s): the shared fit is the first
def test_same_seed_same_numbers(synthetic_fit):
    again = lemur.fit_lemur(synthetic(), seed=3, **SYNTHETIC_DRAWS)
    np.testing.assert_array_equal(lemur._posterior(again, "mu"),
                                  lemur._posterior(synthetic_fit, "mu"))


def test_fit_argument_errors():
    d = synthetic((5, 5, 5))
    with pytest.raises(UserInputError, match="num_chains"):
        lemur.fit_lemur(d, num_chains=0)
    with pytest.raises(UserInputError, match="target_accept"):
        lemur.fit_lemur(d, target_accept=1.5)
    with pytest.raises(UserInputError, match="seed"):
        lemur.fit_lemur(d, seed=-1)


# ------------------------------------------------------------------ held-out coverage
def test_coverage_band():
    lo, hi = lemur.coverage_band(225, 0.9, 3.0)
    assert lo == pytest.approx(0.9 - 3 * 0.02) and hi == pytest.approx(0.9 + 3 * 0.02)
    assert lemur.coverage_band(4)[1] == 1.0


def test_holdout_split_holds_out_whole_architectures():
    d = synthetic((50, 20, 30))
    held = lemur.holdout_split(d, 0.2, seed=0)
    names = np.unique(d.nn)
    held_names = np.unique(d.nn[held])
    assert held_names.size == round(0.2 * names.size)
    assert not np.isin(d.nn[~held], held_names).any()
    np.testing.assert_array_equal(held, lemur.holdout_split(d, 0.2, seed=0))
    assert not np.array_equal(held, lemur.holdout_split(d, 0.2, seed=1))
    with pytest.raises(UserInputError, match="fraction"):
        lemur.holdout_split(d, 1.0)


def test_centring_rule():
    s = lemur.group_stats(synthetic((10, 20, 300)))
    np.testing.assert_array_equal(lemur.centring(s), np.tile([False, False, True], 4))


def test_holdout_coverage_within_binomial_band_when_model_is_right():
    """Data drawn from the model: held-out coverage of 90% intervals per dataset must lie
    within 0.90 +- 3 binomial SE (about 112 held out per dataset: band about +-0.085). The
    large third source is fitted centred, the others non-centred."""
    cov, fit = lemur.holdout_check(synthetic((100, 60, 400), seed=2), seed=4,
                                   num_warmup=300, num_samples=300, num_chains=2)
    assert set(cov["dataset"]) == {*DATASETS, "all"}
    assert cov["within_band"].all(), cov
    assert fit.tree.attrs["num_train_architectures"] == 4 * 560 - cov.set_index(
        "dataset").loc["all", "n"]
    assert fit.centred.sum() == 4
    # replaying the draws with the fit's parameterisation gives back the fitted levels
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in fit.samples.items()}
    d = fit.data
    again = Predictive(lemur.lemur_model, flat, return_sites=["mu", "sigma"])(
        jax.random.key(0), *lemur._model_args(d), None, jnp.asarray(fit.centred),
        **lemur._model_kwargs(d))
    np.testing.assert_allclose(again["mu"], flat["mu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again["sigma"], flat["sigma"], rtol=1e-5)


# ------------------------------------------------------------------ rank transfer
def test_rank_transfer_matches_scipy():
    df = load_lemur(dataset="cifar-10,svhn")
    t = lemur.rank_transfer(df, n_boot=100).set_index(["dataset", "source"])
    a = df[(df["dataset"] == "cifar-10") & (df["source"] == "llm")]
    b = df[(df["dataset"] == "svhn")]
    m = a[["nn", "e1_mean"]].astype({"nn": str}).merge(
        b[["nn", "e1_mean"]].astype({"nn": str}), on="nn")
    r = t.loc[("svhn", "llm")]
    assert r["n"] == len(m) == 57
    assert r["spearman"] == pytest.approx(scipy.stats.spearmanr(m.e1_mean_x, m.e1_mean_y)[0])
    assert r["kendall"] == pytest.approx(scipy.stats.kendalltau(m.e1_mean_x, m.e1_mean_y)[0])
    assert r["spearman_lo"] < r["spearman"] < r["spearman_hi"]
    assert ("svhn", "all") in t.index


def test_bootstrap_correlations_equal_scipy_on_each_resample():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=40), 1)  # ties in x
    y = np.round(x + rng.normal(size=40), 1)
    idx = rng.integers(0, 40, size=(5, 40))
    w = np.zeros((5, 40))
    np.add.at(w, (np.repeat(np.arange(5), 40), idx.ravel()), 1.0)
    tau = lemur._kendall_tau_b_weighted(x, y, w)
    rho = lemur._spearman_rows(x[idx], y[idx])
    for b in range(5):
        assert tau[b] == pytest.approx(scipy.stats.kendalltau(x[idx[b]], y[idx[b]])[0])
        assert rho[b] == pytest.approx(scipy.stats.spearmanr(x[idx[b]], y[idx[b]])[0])


def test_bootstrap_interval_covers_truth_for_bivariate_normal():
    """Spearman of a bivariate normal with r = 0.6 is 6/pi asin(0.3) = 0.5824."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    y = 0.6 * x + 0.8 * rng.normal(size=400)
    r = lemur.bootstrap_correlations(x, y, n_boot=400, seed=2)
    assert r == lemur.bootstrap_correlations(x, y, n_boot=400, seed=2)  # same seed
    truth = 6 / np.pi * np.arcsin(0.3)
    assert r["spearman_lo"] < truth < r["spearman_hi"]
    assert r["kendall_lo"] < 2 / np.pi * np.arcsin(0.6) < r["kendall_hi"]


def test_rank_transfer_errors():
    with pytest.raises(UserInputError, match="valid values"):
        lemur.rank_transfer(load_lemur(dataset="svhn,mnist"))
    with pytest.raises(UserInputError, match="at least 3"):
        lemur.bootstrap_correlations([1, 2], [2, 1])


# ------------------------------------------------------------------ priors
def test_shipped_priors_match_the_data():
    p = lemur.load_lemur_accuracy_priors()
    ds = p["datasets"]
    assert set(ds) == {"cifar-10", "cifar-100", "svhn", "imagenet", "fashion-mnist"}
    assert ds["imagenet"]["lemur_dataset"] == "imagenette"
    assert ds["fashion-mnist"]["relation"] == "upper bound"
    assert p["provenance"]["divergences"] == 0 and p["provenance"]["max_r_hat"] < 1.01
    assert p["provenance"]["quick"] is False
    for name, r in ds.items():
        x = load_lemur(dataset=r["lemur_dataset"], source="llm")["e1_mean"].to_numpy()
        z = lemur.logit(x)
        se = z.std(ddof=1) / np.sqrt(z.size)
        assert r["n_architectures"] == z.size
        # partial pooling moves the level a little from the group's own mean
        assert abs(r["logit_level_mean"] - z.mean()) < 3 * se, name
        assert 0.5 * se < r["logit_level_sd"] < 2 * se, name
        assert abs(r["mean_accuracy_mean"] - x.mean()) < 0.02, name


def test_priors_save_load_round_trip(tmp_path):
    """Reading and writing live in io.bundled (tested there); lemur re-exports the reader."""
    assert lemur.load_lemur_accuracy_priors is bundled.load_lemur_accuracy_priors
    p = {"datasets": {"cifar-10": {"logit_level_mean": -0.87}}, "provenance": {}}
    path = bundled.save_lemur_accuracy_priors(p, tmp_path / "p.json")
    assert json.loads(path.read_text()) == p == lemur.load_lemur_accuracy_priors(path)
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(UserInputError, match="not a LEMUR priors file"):
        lemur.load_lemur_accuracy_priors(tmp_path / "other.json")


# ------------------------------------------------------------------ real data (slow)
@pytest.mark.slow
def test_real_data_fit_and_holdout_coverage():
    """The documented check (docs/real-data.md): all classification architectures, 20% held
    out (seed 0). Pooled coverage of the 90% intervals must lie within 0.90 +- 3 binomial
    SE, and no dataset may fall below its band (intervals too narrow). SVHN over-covers
    (chance-level floor; see the docs), so only the lower side is asserted per dataset.
    The split is fixed: on one of the five splits in the docs (seed 3) CelebA-gender falls
    below its band."""
    cov, fit = lemur.holdout_check(seed=0, num_warmup=500, num_samples=500, num_chains=2)
    d = lemur.convergence_summary(fit)
    assert d["divergences"] == 0 and d["max_r_hat"] < 1.02
    c = cov.set_index("dataset")
    assert c.loc["all", "within_band"], cov
    assert (c["coverage"] >= c["band_lo"]).all(), cov


@pytest.mark.slow
def test_run_lemur_quick_writes_everything(tmp_path):
    rep = lemur.run_lemur(tmp_path, quick=True)
    names = {p.name for p in rep.files}
    for stem in ("lemur_real_vs_simulated", "lemur_gap_forest", "lemur_rank_transfer",
                 "lemur_holdout_coverage"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    for f in ("lemur_groups.csv", "lemur_gaps.csv", "lemur_rank_transfer.csv",
              "lemur_holdout_coverage.csv", "lemur_real_vs_simulated.csv",
              "lemur_accuracy_priors.json", "lemur_posterior.nc"):
        assert (tmp_path / f).stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))
    assert set(rep.real_vs_simulated["study_dataset"]) == {
        "cifar-10", "cifar-100", "svhn", "imagenet", "fashion-mnist"}
