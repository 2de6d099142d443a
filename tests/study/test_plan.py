"""Tests of study planning: known truth, Monte Carlo tolerances, streams, chunking, inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim.params import load_defaults
from llmnas_transfer.study.plan import (
    PLAN_COLUMNS,
    StudyAnalyses,
    plan,
    simulate_studies,
    study_runs,
    summarize_studies,
)

REF, CMP = "cifar-10:classification", "audioset:classification"


@pytest.fixture(scope="module")
def no_spread():
    """The shipped defaults without trial-to-trial spread: a deterministic state path, so
    a trial's final valid count is exactly Binomial(N, p_T) with a known p_T."""
    d = load_defaults()
    return dataclasses.replace(d, dynamics={**d.dynamics, "init_sd": 0.0, "state_noise": 0.0})


@pytest.fixture(scope="module")
def final_grid():
    """Validity gap, final-iteration analysis, 2 x 2 designs (shared by two tests)."""
    return simulate_studies(REF, CMP, component="validity", trials=(10, 40), iterations=10,
                            candidates=(20, 80), studies=100, seed=1, method="final")


#: designs of the stream tests (one compiled kernel per candidate count, shared)
SMALL = dict(component="combined", trials=(4, 8), iterations=(3, 5))


def _p_path(defaults, setting: str, T: int) -> np.ndarray:
    """Validity probabilities of iterations 1..T on the deterministic state path."""
    d, t = setting.split(":")
    dyn = defaults.dynamics
    s = 1.0 - (1.0 - dyn["kappa"]) ** np.arange(T)  # s_1 = 0, s_{t+1} = s_t + kappa (1 - s_t)
    delta = float(defaults.effects([d], [t]).validity_offset[0])
    return 1.0 / (1.0 + np.exp(-(dyn["validity_intercept"] + dyn["validity_slope"] * s
                                 - delta)))


@pytest.mark.parametrize("method", ["final", "model"])
def test_binomial_design_matches_analytic_se(no_spread, method):
    """Without spread the counts are independent binomials with known ``p_t``. ``final``:
    the SE of a mean of final rates; ``model``: the binomial MLE of the setting's offset,
    ``Var = 1 / (R N sum_t p_t (1 - p_t))``, carried to ``p_T`` by the delta method. The
    validity gap's SE follows by the delta method; the simulated estimates' sd, the
    reported SEs and the coverage must match it."""
    R, T, N, B = 10, 5, 20, 300
    a = simulate_studies(REF, CMP, component="validity", trials=R, iterations=T,
                         candidates=N, defaults=no_spread, studies=B, seed=3, method=method)
    p_r, p_s = _p_path(no_spread, REF, T), _p_path(no_spread, CMP, T)

    def var_final(p):
        if method == "final":
            return p[-1] * (1 - p[-1]) / (N * R)
        return (p[-1] * (1 - p[-1])) ** 2 / (R * N * np.sum(p * (1 - p)))

    v_r, v_s = p_r[-1], p_s[-1]
    truth = 1 - v_s / v_r
    se = math.sqrt(var_final(p_s) / v_r**2 + (v_s / v_r**2) ** 2 * var_final(p_r))
    est = a.estimate[:, 0, 0, 0, 0]
    assert a.truth[0, 0, 0, 0, 0] == pytest.approx(truth, abs=2e-5)
    # mean within 5 Monte Carlo SEs (plus the O(1/(NR)) bias of a ratio, ~0.003 here)
    assert abs(est.mean() - truth) < 5 * se / math.sqrt(B) + 0.003
    # the sd of B draws has a relative SE of 1/sqrt(2(B-1)) = 4.1%: 5 SEs
    assert abs(est.std(ddof=1) / se - 1) < 5 / math.sqrt(2 * (B - 1))
    assert abs(np.median(a.se[:, 0, 0, 0, 0]) / se - 1) < 0.1
    cover = np.mean((a.low <= a.truth) & (a.truth <= a.high))
    assert abs(cover - 0.94) < 5 * math.sqrt(0.94 * 0.06 / B)


def test_more_candidates_is_not_more_trials(final_grid):
    """Width^2 = (spread + binomial / N) / R: 4x the trials halves the validity interval
    at any N, while 4x the candidates only shrinks the binomial part (not 1/sqrt(4))."""
    a = final_grid
    w = np.median(a.high - a.low, axis=0)[:, 0, :, 0]  # (trials, candidates)
    # 4x trials: 1/2 (t quantiles 9 -> 39 df add ~8%); 100 studies: medians within ~5%
    assert w[1, 0] / w[0, 0] == pytest.approx(0.5 / 1.08, rel=0.12)
    assert w[1, 1] / w[0, 1] == pytest.approx(0.5 / 1.08, rel=0.12)
    more_cands = w[0, 1] / w[0, 0]
    assert 0.6 < more_cands < 0.95  # 1/sqrt(4) = 0.5 only if there were no spread


def test_same_seed_same_numbers_and_chunking():
    kw = dict(**SMALL, candidates=10, studies=7)
    a = simulate_studies(REF, CMP, seed=5, **kw)
    again = simulate_studies(REF, CMP, seed=5, **kw)
    b = simulate_studies(REF, CMP, seed=5, chunk_studies=4, **kw)
    c = simulate_studies(REF, CMP, seed=6, **kw)
    for f in ("estimate", "se", "low", "high", "truth"):
        np.testing.assert_array_equal(getattr(a, f), getattr(again, f))
        # the simulated data do not depend on the chunking (bitwise, see
        # test_study_runs_are_the_analysed_data); the analysis is float32 arithmetic
        # vectorised over a chunk: equal up to rounding
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-5, atol=1e-7)
    assert not np.allclose(a.estimate, c.estimate)


def test_more_devices_same_bits():
    """Chunks dealt to 2 devices (the second round pads one device with a chunk whose
    results are dropped) give the bits of one device."""
    import jax

    if len(jax.local_devices()) < 2:
        pytest.skip("needs 2 local devices (tests/conftest.py makes 2 CPU devices)")
    kw = dict(**SMALL, candidates=10, studies=9, chunk_studies=4, seed=5)
    a = simulate_studies(REF, CMP, **kw)
    b = simulate_studies(REF, CMP, devices_per_process=2, **kw)
    for f in StudyAnalyses._fields[4:]:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    # one more device than this process has (another test in the same worker may have
    # asked JAX for more CPU devices than conftest's 2)
    more = len(jax.local_devices()) + 1
    with pytest.raises(UserInputError, match=f"JAX_NUM_CPU_DEVICES={more}"):
        simulate_studies(REF, CMP, devices_per_process=more, **kw)


def test_study_depends_only_on_seed_design_and_index():
    """Studies 3..6 alone, and one design alone, give the numbers of the full run."""
    a = simulate_studies(REF, CMP, **SMALL, candidates=(10, 20), studies=7, seed=2)
    b = simulate_studies(REF, CMP, component="combined", trials=8, iterations=5,
                         candidates=20, studies=4, study_offset=3, seed=2, chunk_studies=8)
    np.testing.assert_allclose(a.estimate[3:, 1, 1, 1], b.estimate[:, 0, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(a.se[3:, 1, 1, 1], b.se[:, 0, 0, 0], rtol=1e-5)


def test_study_runs_are_the_analysed_data(final_grid):
    df = study_runs(2, REF, CMP, trials=10, iterations=10, candidates=20, seed=1)
    y = df[df.iteration == 10].groupby("dataset")["n_valid"].mean() / 20
    assert 1 - y["audioset"] / y["cifar-10"] == pytest.approx(
        final_grid.estimate[2, 0, 0, 0, 0], abs=1e-6)
    again = study_runs(2, REF, CMP, trials=10, iterations=10, candidates=20, seed=1)
    pd.testing.assert_frame_equal(df, again)
    shorter = study_runs(2, REF, CMP, trials=6, iterations=4, candidates=20, seed=1)
    np.testing.assert_array_equal(  # fewer trials and iterations: the same numbers
        shorter.n_valid, df[(df.trial < 6) & (df.iteration <= 4)].n_valid)


def test_counts_with_bursts_match_the_candidate_path():
    """With collapse and dispersion on, the valid counts the planner draws (its counts-only
    kernel) have the mean and variance of the simulator's per-candidate path, iteration by
    iteration, within 4 Monte Carlo SEs (independent seeds, so independent samples of R
    trials each; SE of a sample variance from the fourth central moment). The same draws
    without bursts (a plain binomial at the state's rate) miss by far more."""
    import jax
    import jax.numpy as jnp

    from llmnas_transfer.sim import registry
    from llmnas_transfer.sim.candidates import simulate
    from llmnas_transfer.sim.keys import as_key
    from llmnas_transfer.study.plan import _counts

    d = load_defaults()
    bursty = dataclasses.replace(d, dynamics={
        **d.dynamics, "collapse_enter": 0.2, "collapse_exit": 0.5, "collapse_validity": -6.0,
        "validity_dispersion": 0.2})
    R, T, N = 10_000, 3, 20
    p = bursty.dynamics_params()
    e = bursty.effects(["cifar-10"], ["classification"])
    sids = jnp.asarray([registry.setting_id("cifar-10", "classification")], jnp.uint32)
    counts = jax.jit(_counts, static_argnums=(4, 5, 7))
    planned = np.asarray(counts(as_key(7), p, e, sids, R, T, jnp.int32(N), True))[0]
    plain = np.asarray(counts(as_key(7), p, e, sids, R, T, jnp.int32(N), False))[0]
    sim = simulate(8, datasets="cifar-10", tasks="classification", num_trials=R,
                   num_iterations=T, num_candidates=N, bins=0, defaults=bursty,
                   path="candidates")["n_valid"].values.reshape(R, T)

    def moments(x):  # per iteration: mean, variance and their squared SEs
        x = x.astype(float)
        m, v = x.mean(0), x.var(0, ddof=1)
        m4 = ((x - m) ** 4).mean(0)
        return m, v, v / R, (m4 - v**2) / R

    m_s, v_s, sm_s, sv_s = moments(sim)
    for x, ok in ((planned, True), (plain, False)):
        m, v, sm, sv = moments(x)
        z = np.concatenate([np.abs(m - m_s) / np.sqrt(sm + sm_s),
                            np.abs(v - v_s) / np.sqrt(sv + sv_s)])
        assert (z < 4).all() if ok else (z > 4).any(), z


def test_plan_table_and_recommendation():
    df = plan(REF, CMP, **SMALL, width=0.5, candidates=(10, 20), studies=7, seed=0,
              cost_per_candidate=0.5)
    assert list(df.columns) == list(PLAN_COLUMNS)
    assert len(df) == 8
    assert (df.candidates_total == df.trials * df.iterations * df.candidates * 2).all()
    assert np.allclose(df.cost, df.candidates_total * 0.5)
    ok = df[df.assurance >= 0.8]
    assert df.recommended.sum() == (1 if len(ok) else 0)
    if len(ok):
        assert df[df.recommended].candidates_total.iloc[0] == ok.candidates_total.min()
    no_cost = plan(REF, CMP, **SMALL, candidates=10, studies=7)
    assert "cost" not in no_cost.columns and no_cost.attrs["goal"] == "regime"


def test_regime_call_needs_the_whole_interval_in_one_regime():
    from llmnas_transfer.study.plan import StudyAnalyses

    z = np.zeros((3, 1, 1, 1, 1))
    a = StudyAnalyses((10,), (10,), (20,), (("stl-10", "classification"),),
                      estimate=z + 0.05, se=z, df=z + 9,
                      low=np.array([0.01, 0.08, 0.01]).reshape(3, 1, 1, 1, 1),
                      high=np.array([0.09, 0.12, 0.099]).reshape(3, 1, 1, 1, 1), truth=z + 0.05)
    df = summarize_studies(a, width=None)
    assert df.p_regime_correct.iloc[0] == pytest.approx(2 / 3)
    assert df.assurance.iloc[0] == pytest.approx(2 / 3)


@pytest.mark.parametrize("kw, msg", [
    (dict(compare="stl10:classification"), "did you mean 'stl-10'"),
    (dict(compare=REF), "is the reference"),
    (dict(trials=(1, 5)), "trials must be an integer in [2"),
    (dict(component="gap"), "component must be one of"),
    (dict(width=0.0), "width must be > 0"),
    (dict(assurance=1.0), "assurance must be in (0, 1)"),
    (dict(compare="stl-10"), "DATASET:TASK"),
])
def test_bad_inputs(kw, msg):
    args = dict(compare=CMP, trials=(4,), iterations=3, candidates=10, studies=5)
    args.update(kw)
    with pytest.raises(UserInputError, match=None) as exc:
        plan(REF, **args)
    assert msg in str(exc.value) and "\n" not in str(exc.value)


def test_plan_is_exported():
    import llmnas_transfer

    assert llmnas_transfer.plan is plan
    assert isinstance(plan.__doc__, str) and isinstance(pd.DataFrame, type)


@pytest.mark.slow
def test_widths_match_nuts():
    """The planner's intervals against full NUTS fits of the same simulated studies
    (``docs/planning.md``; about 5 minutes a fit on 2 cores): mean widths within 15%."""
    from llmnas_transfer.fit.inference import fit_runs
    from llmnas_transfer.io.runs import runs_from_frame
    from llmnas_transfer.summarize.posterior import posterior_gaps

    R, T, N, k = 15, 10, 20, 2
    a = simulate_studies(REF, CMP, component="validity", trials=R, iterations=T,
                         candidates=N, studies=k, seed=0)
    nuts = []
    for j in range(k):
        runs = runs_from_frame(study_runs(j, REF, CMP, trials=R, iterations=T, candidates=N,
                                          seed=0))
        dt = fit_runs(runs, chains=2, draws=400, warmup=400, seed=j, reference=REF,
                      prior_draws=20)
        g = posterior_gaps(dt, ci=0.94)
        row = g[(g.dataset == "audioset") & (g.component == "validity")].iloc[0]
        nuts.append(row.hdi_high - row.hdi_low)
    planner = float(np.mean((a.high - a.low)[:, 0, 0, 0, 0]))
    assert planner / float(np.mean(nuts)) == pytest.approx(1.0, abs=0.15)
