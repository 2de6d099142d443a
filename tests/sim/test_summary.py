"""Summary path: the one documented approximation (sums beyond EXACT_TERMS) and agreement
with the per-candidate path. Statistical tolerances are in standard errors (fixed seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim import keys
from llmnas_transfer.sim import summary as sf
from llmnas_transfer.sim.params import load_defaults


def _lanes(seed, n):
    return keys.key_words(jax.random.split(jax.random.key(seed), n))


# ----------------------------------------------------------------------------- moments
@pytest.mark.parametrize("mu,sd,tol", [(-1.0, 0.41, 1e-5), (0.3, 0.8, 1e-5), (-4.0, 1.0, 1e-4),
                                       (3.0, 0.1, 1e-5), (0.0, 1.5, 3e-3)])
def test_logitnormal_moments_match_quadrature(mu, sd, tol):
    def e(f):
        return integrate.quad(lambda z: f(special.expit(mu + sd * z)) * stats.norm.pdf(z),
                              -12, 12, epsabs=1e-13, limit=200)[0]

    m = e(lambda a: a)
    want = [m] + [e(lambda a, k=k: (a - m) ** k) for k in (2, 3, 4)]
    got = [float(x) for x in sf.logitnormal_moments(jnp.float32(mu), jnp.float32(sd))]
    v = want[1]
    scale = [np.sqrt(v), v, v**1.5, v**2]  # errors relative to the natural scale
    for g, w, s in zip(got, want, scale, strict=True):
        assert abs(g - w) < tol * s + 1e-7


def test_sums_are_exact_up_to_exact_terms():
    k0, k1 = _lanes(6, SUM_LANES)
    n = jnp.arange(SUM_LANES, dtype=jnp.int32) % (sf.EXACT_TERMS + 1)
    mu, sd = jnp.float32(-0.7), jnp.float32(0.6)
    s1, s2 = _sums(k0, k1, n, mu, sd)
    z = keys.bits_to_normal(keys.stream_bits(k0, k1, 1, sf.EXACT_TERMS + 2)).T
    a = np.asarray(jax.nn.sigmoid(mu + sd * z[:, :sf.EXACT_TERMS]), np.float64)
    a = np.where(np.arange(sf.EXACT_TERMS) < np.asarray(n)[:, None], a, 0.0)
    np.testing.assert_allclose(s1, a.sum(1), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(s2, (a * a).sum(1), rtol=2e-6, atol=1e-6)


SUM_LANES = 20_000
_sums = jax.jit(lambda k0, k1, n, mu, sd: sf.logitnormal_sums(k0, k1, 1, n, mu, sd))


@pytest.mark.parametrize("n,mu,sd", [(17, -1.0, 0.41), (40, -0.5, 0.8), (300, -1.0, 0.41),
                                     (1000, -0.5, 0.8)])
def test_sums_beyond_exact_terms_match_monte_carlo(n, mu, sd):
    """The normal approximation for the terms beyond EXACT_TERMS: moments within 5 SE
    and the distribution of the mean (KS) indistinguishable at 20,000 lanes."""
    k0, k1 = _lanes(7 + n, SUM_LANES)
    s1, s2 = _sums(k0, k1, jnp.int32(n), jnp.float32(mu), jnp.float32(sd))
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    rng = np.random.default_rng(n)
    a = special.expit(mu + sd * rng.standard_normal((SUM_LANES, n)))
    r1, r2 = a.sum(1), (a * a).sum(1)
    for got, ref in ((s1, r1), (s2, r2)):
        se = np.sqrt(ref.var() / SUM_LANES + got.var() / SUM_LANES)
        assert abs(got.mean() - ref.mean()) < 5 * se
        # variance ratio: SE of log variance ~ sqrt(2 / L) each
        assert abs(np.log(got.var() / ref.var())) < 5 * np.sqrt(4 / SUM_LANES)
    assert stats.ks_2samp(s1, r1).pvalue > 1e-3
    # the within-pair sd the tables report
    sd_got = np.sqrt(np.clip(s2 / n - (s1 / n) ** 2, 0, None))
    sd_ref = np.sqrt(np.clip(r2 / n - (r1 / n) ** 2, 0, None))
    assert abs(sd_got.mean() - sd_ref.mean()) < 5 * np.sqrt(
        sd_ref.var() / SUM_LANES + sd_got.var() / SUM_LANES)
    assert np.all((s1 >= 0) & (s1 <= n) & (s2 <= s1 + 1e-4))


# ----------------------------------------------------------------------------- simulate
KW = dict(datasets="cifar-10,audioset", tasks="classification", num_iterations=3,
          num_candidates=200, bins=10, chunk_size=1024)


@pytest.fixture(scope="module")
def both_paths():
    R = 3000
    a = simulate(21, num_trials=R, path="summary", **KW)
    b = simulate(21, num_trials=R, path="candidates", **KW)
    return a, b


def test_summary_path_shapes_and_shared_states(both_paths):
    a, b = both_paths
    assert a["accuracy_hist"].shape == b["accuracy_hist"].shape
    np.testing.assert_array_equal(a["state"].values, b["state"].values)
    # same formula; XLA may fuse it differently in the two programs (<= 1 ulp)
    np.testing.assert_allclose(a["p_valid"].values, b["p_valid"].values, rtol=3e-7)
    np.testing.assert_array_equal(a["accuracy_hist"].sum("accuracy_bin"), a["n_valid"])
    np.testing.assert_array_equal(a["novelty_hist"].sum("novelty_bin"), a["n_valid"])
    assert a.attrs["path"] == "summary"


def test_summary_path_matches_candidate_path_in_distribution(both_paths):
    a, b = both_paths
    N = KW["num_candidates"]
    # validity: paired on the same state, n_a - n_b has mean 0 and variance 2 N p (1 - p)
    p = a["p_valid"].values
    d = (a["n_valid"].values - b["n_valid"].values).astype(np.float64)
    z = d.sum(axis=2) / np.sqrt((2 * N * p * (1 - p)).sum(axis=2))
    assert np.all(np.abs(z) < 5)
    assert abs(np.log(d.var() / (2 * N * p * (1 - p)).mean())) < 5 * np.sqrt(2 / d.size)
    for var in ("accuracy_mean", "accuracy_sd", "novelty_mean", "novelty_sd"):
        x, y = a[var].values, b[var].values
        se = np.sqrt(np.nanvar(x, axis=2) / x.shape[2] + np.nanvar(y, axis=2) / y.shape[2])
        assert np.all(np.abs(np.nanmean(x, 2) - np.nanmean(y, 2)) < 5 * se), var
    for var, dim in (("accuracy_hist", "accuracy_bin"), ("novelty_hist", "novelty_bin")):
        ha = a[var].sum("trial").values.reshape(-1, KW["bins"])
        hb = b[var].sum("trial").values.reshape(-1, KW["bins"])
        for ra, rb in zip(ha, hb, strict=True):
            keep = (ra + rb) >= 10
            table = np.stack([ra[keep], rb[keep]])
            assert stats.chi2_contingency(table)[1] > 1e-4, var


def test_summary_cost_does_not_grow_with_candidates():
    """No array in the summary-path program has a candidate-sized axis."""
    d = load_defaults()
    N = 99_991  # prime: appears in no other shape
    eff = d.effects(["cifar-10"], ["classification"])
    jaxpr = jax.make_jaxpr(lambda k: sf.summary_chunk(
        k, d.dynamics_params(), eff, jnp.array([1], jnp.uint32), jnp.arange(8),
        num_iterations=2, num_candidates=N, bins=5))(jax.random.key(0))

    def inner(p):
        if hasattr(p, "eqns"):
            yield p
        elif hasattr(getattr(p, "jaxpr", None), "eqns"):
            yield p.jaxpr
        elif isinstance(p, (tuple, list)):
            for q in p:
                yield from inner(q)

    def shapes(jx):
        for eqn in jx.eqns:
            for v in eqn.outvars:
                yield tuple(getattr(v.aval, "shape", ()))
            for p in eqn.params.values():
                for sub in inner(p):
                    yield from shapes(sub)

    seen = list(shapes(jaxpr.jaxpr))
    assert len(seen) > 100  # the walk reached the program
    assert all(N not in s for s in shapes(jaxpr.jaxpr))


def test_summary_path_rejects_per_candidate_and_unknown_path():
    with pytest.raises(UserInputError, match="per_candidate"):
        simulate(0, num_trials=2, path="summary", per_candidate=True)
    with pytest.raises(UserInputError, match="path must be one of"):
        simulate(0, num_trials=2, path="fast")


@pytest.mark.slow
def test_summary_path_matches_candidate_path_at_scale():
    """N = 1000 candidates, many trials: per-trial accuracy mean/sd distributions agree."""
    kw = dict(datasets="cifar-10,nlp-sst2", tasks="classification,generation",
              num_iterations=4, num_candidates=1000, bins=20)
    a = simulate(31, num_trials=4000, path="summary", **kw)
    b = simulate(31, num_trials=4000, path="candidates", **kw)
    for var in ("accuracy_mean", "accuracy_sd", "novelty_mean", "novelty_sd", "n_valid"):
        x = a[var].values.reshape(-1, 4000, 4)
        y = b[var].values.reshape(-1, 4000, 4)
        for i in range(x.shape[0]):
            for t in range(4):
                u, v = x[i, :, t], y[i, :, t]
                u, v = u[np.isfinite(u)], v[np.isfinite(v)]
                assert stats.ks_2samp(u, v).pvalue > 1e-4, (var, i, t)


def test_feedback_paths_agree_in_distribution_and_do_not_depend_on_chunks(trend_defaults):
    """With feedback the two paths draw different states; their laws must agree."""
    kw = dict(datasets="cifar-10,audioset", tasks="classification,generation",
              num_iterations=4, num_candidates=20, bins=0, defaults=trend_defaults)
    R = 3000
    a = simulate(5, num_trials=R, path="summary", **kw)
    b = simulate(5, num_trials=R, path="candidates", **kw)
    for var in ("validity_rate", "state"):
        x, y = a[var].values, b[var].values  # (D, K, R, T)
        se = np.sqrt(x.var(2, ddof=1) / R + y.var(2, ddof=1) / R)
        assert np.all(np.abs(x.mean(2) - y.mean(2)) < 5 * se), var
    # a trial's numbers depend only on (seed, setting, trial): not on the chunk size
    c = simulate(5, num_trials=7, path="summary", chunk_size=3, **kw)
    np.testing.assert_array_equal(c["n_valid"].values, a["n_valid"].values[:, :, :7])
    np.testing.assert_array_equal(c["state"].values, a["state"].values[:, :, :7])


# ----------------------------------------------------------------------------- bursts
def _bursty(defaults, **extra):
    import dataclasses

    dyn = {**defaults.dynamics, "collapse_enter": 0.2, "collapse_exit": 0.5,
           "collapse_validity": -6.0, "validity_dispersion": 0.3, **extra}
    return dataclasses.replace(defaults, dynamics=dyn)


def test_count_path_dispersion_is_beta_binomial():
    """Counts at a fixed state with rho = 0.3: mean N p and variance
    N p (1 - p) (1 + (N - 1) rho) within 4 SE (SE of a sample variance from the sample's
    fourth central moment); rho = 0 (or bursts=False) gives the binomial counts."""
    d = load_defaults()
    p = d.dynamics_params()._replace(validity_dispersion=jnp.float32(0.3))
    e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    R, N, rho = 40_000, 20, 0.3
    k0, k1 = _lanes(17, R)
    s = jnp.full(R, 0.5, jnp.float32)
    run = jax.jit(lambda p, b: sf.summarize_pairs(k0, k1, s, p, e, num_candidates=N, bins=0,
                                                  bursts=b).n_valid, static_argnums=1)
    n = np.asarray(run(p, True), np.float64)
    q = float(jax.nn.sigmoid(p.validity_intercept + p.validity_slope * 0.5 - e.validity_offset))
    want = N * q * (1 - q) * (1 + (N - 1) * rho)
    assert abs(n.mean() - N * q) < 4 * np.sqrt(want / R)
    v, m4 = n.var(ddof=1), np.mean((n - n.mean()) ** 4)
    assert abs(v - want) < 4 * np.sqrt((m4 - v * v) / R), (v, want)
    p0 = p._replace(validity_dispersion=jnp.float32(0.0))
    np.testing.assert_array_equal(run(p0, True), run(p0, False))


@pytest.fixture(scope="module")
def bursty_paths():
    d = _bursty(load_defaults())
    kw = dict(datasets="cifar-10,audioset", tasks="classification", num_iterations=4,
              num_candidates=30, bins=0, defaults=d)
    R = 4000
    return (simulate(23, num_trials=R, path="summary", **kw),
            simulate(23, num_trials=R, path="candidates", **kw), kw)


def test_bursty_paths_share_regimes_and_agree_in_distribution(bursty_paths):
    """Without feedback both paths draw the same states and regimes (p_valid equal up to
    an ulp); the mean valid count per (setting, iteration) agrees within 4 SE (two
    independent samples of R trials), and so does its variance (SE from fourth moments)."""
    a, b, _ = bursty_paths
    np.testing.assert_array_equal(a["state"].values, b["state"].values)
    np.testing.assert_allclose(a["p_valid"].values, b["p_valid"].values, rtol=3e-7)
    low = np.float32(special.expit(-6.0))
    collapsed = np.isclose(a["p_valid"].values, low, rtol=1e-5, atol=0)
    pi = 0.2 / 0.7
    assert abs(collapsed.mean() - pi) < 4 * np.sqrt(pi * (1 - pi) / collapsed[..., 0].size)
    x, y = (r["n_valid"].values.astype(np.float64) for r in (a, b))  # (D, K, R, T)
    R = x.shape[2]
    se = np.sqrt(x.var(2, ddof=1) / R + y.var(2, ddof=1) / R)
    assert np.all(np.abs(x.mean(2) - y.mean(2)) < 4 * se)

    def var_se(z):
        c = z - z.mean(2, keepdims=True)
        return np.sqrt((np.mean(c**4, 2) - z.var(2, ddof=1) ** 2) / R)

    assert np.all(np.abs(x.var(2, ddof=1) - y.var(2, ddof=1))
                  < 4 * np.sqrt(var_se(x) ** 2 + var_se(y) ** 2))
    # collapsed iterations are valid at sigmoid(-6) on both paths
    for r in (a, b):
        nv = r["n_valid"].values[collapsed]
        n = nv.size * 30
        assert abs(nv.sum() / n - low) < 4 * np.sqrt(low * (1 - low) / n)


def test_bursty_feedback_paths_agree_and_do_not_depend_on_chunks(trend_defaults,
                                                                 bursty_paths):
    """With feedback and bursts the paths draw different states; the mean valid count and
    state agree within 4 SE. A trial's numbers depend only on (seed, setting, trial)."""
    d = _bursty(trend_defaults)
    kw = dict(datasets="cifar-10,audioset", tasks="classification,generation",
              num_iterations=4, num_candidates=20, bins=0, defaults=d)
    R = 3000
    a = simulate(5, num_trials=R, path="summary", **kw)
    b = simulate(5, num_trials=R, path="candidates", **kw)
    for var in ("n_valid", "state"):
        x, y = a[var].values.astype(np.float64), b[var].values.astype(np.float64)
        se = np.sqrt(x.var(2, ddof=1) / R + y.var(2, ddof=1) / R)
        assert np.all(np.abs(x.mean(2) - y.mean(2)) < 4 * se), var
    for path, full in (("summary", a), ("candidates", b)):
        c = simulate(5, num_trials=7, path=path, chunk_size=3, **kw)
        for var in ("n_valid", "state", "p_valid"):
            np.testing.assert_array_equal(c[var].values, full[var].values[:, :, :7])
    # and without feedback, on both paths
    s_full, c_full, kw0 = bursty_paths
    for path, full in (("summary", s_full), ("candidates", c_full)):
        c = simulate(23, num_trials=5, path=path, chunk_size=2, **kw0)
        for var in ("n_valid", "state", "p_valid"):
            np.testing.assert_array_equal(c[var].values, full[var].values[:, :, :5])
