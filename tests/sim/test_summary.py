"""Summary path: exact samplers, the one documented approximation, and agreement with the
per-candidate path. Statistical tolerances are in standard errors (fixed seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p
from scipy import integrate, special, stats

from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim import dynamics
from llmnas_transfer.sim import summary as sf
from llmnas_transfer.sim.params import load_defaults


def _lanes(seed, n):
    return dynamics.key_words(jax.random.split(jax.random.key(seed), n))


# ----------------------------------------------------------------------------- bits
def test_threefry_block_is_jax_threefry():
    k0, k1 = _lanes(0, 9)
    hi = jnp.arange(9, dtype=jnp.uint32) * 7919
    lo = jnp.arange(9, dtype=jnp.uint32) + jnp.uint32(2**31)
    ours = dynamics.threefry_block(k0, k1, hi, lo)
    ref = threefry2x32_p.bind(k0, k1, hi, lo)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bit_transforms_are_jax_random_transforms():
    key = jax.random.key(11)
    bits = jax.random.bits(key, (4096,), jnp.uint32)
    np.testing.assert_array_equal(dynamics.bits_to_uniform(bits), jax.random.uniform(key, (4096,)))
    np.testing.assert_array_equal(dynamics.bits_to_normal(bits), jax.random.normal(key, (4096,)))


def test_candidate_noise_follows_documented_stream_layout():
    key = jax.random.key(5)
    u, z = dynamics.candidate_noise(key, 7)
    k0, k1 = dynamics.key_words(key)
    # word j of stream h: first word of block (h, j) for j < 4, else second of (h, j - 4)
    for h, got in ((0, dynamics.bits_to_uniform), (1, dynamics.bits_to_normal),
                   (2, dynamics.bits_to_normal)):
        b1, b2 = threefry2x32_p.bind(*(jnp.broadcast_to(jnp.uint32(x), (4,)) for x in
                                       (k0, k1, h)), jnp.arange(4, dtype=jnp.uint32))
        words = np.concatenate([b1, b2])[:7]
        want = got(jnp.asarray(words))
        np.testing.assert_array_equal(u if h == 0 else z[h - 1], want)


def test_non_threefry_keys_work():
    u, z = dynamics.candidate_noise(jax.random.key(0, impl="rbg"), 5)
    assert u.shape == (5,) and z.shape == (2, 5)
    assert np.all((np.asarray(u) >= 0) & (np.asarray(u) < 1))


# ----------------------------------------------------------------------------- binomial
BINOMIAL_CASES = [
    (20, 0.3), (20, 0.5), (15, 0.9), (50, 0.19), (50, 0.21), (1000, 0.5), (1000, 0.002),
    (1000, 0.999), (100_000, 0.3), (10**6, 1e-5), (7, 0.5), (400, 0.03),
]
LANES = 20_000


DEGENERATE = [(0, 0.5, 0), (5, 0.0, 0), (5, 1.0, 5), (10**6, 1.0, 10**6), (0, 1.0, 0),
              (3, 0.0, 0)]


@pytest.fixture(scope="module")
def binomial_draws():
    n = np.repeat([c[0] for c in BINOMIAL_CASES], LANES).astype(np.int32)
    p = np.repeat([c[1] for c in BINOMIAL_CASES], LANES).astype(np.float32)
    n = np.concatenate([n, [c[0] for c in DEGENERATE]]).astype(np.int32)
    p = np.concatenate([p, [c[1] for c in DEGENERATE]]).astype(np.float32)
    k0, k1 = _lanes(1, n.size)
    f = jax.jit(lambda k0, k1, n, p: sf.binomial(k0, k1, 3, n, p))
    x = np.asarray(f(k0, k1, jnp.asarray(n), jnp.asarray(p)))
    # the same lanes in reverse order: a lane's draw must not depend on its neighbours
    rev = np.asarray(f(k0[::-1], k1[::-1], jnp.asarray(n[::-1]), jnp.asarray(p[::-1])))[::-1]
    m = len(BINOMIAL_CASES) * LANES
    return (x[:m].reshape(len(BINOMIAL_CASES), LANES), rev[:m].reshape(len(BINOMIAL_CASES), LANES),
            x[m:])


@pytest.mark.parametrize("case", range(len(BINOMIAL_CASES)))
def test_binomial_is_exact(binomial_draws, case):
    n, p = BINOMIAL_CASES[case]
    x = binomial_draws[0][case]
    assert x.min() >= 0 and x.max() <= n
    mean, var = n * p, n * p * (1 - p)
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / LANES)
    # SE of a sample variance: sqrt((mu4 - var^2) / L), mu4 of the binomial
    mu4 = var * (1 + 3 * (n - 2) * p * (1 - p))
    assert abs(x.var() - var) < 5 * np.sqrt((mu4 - var**2) / LANES)
    # chi-square goodness of fit on all values with expected count >= 5 (tails pooled)
    ks = np.arange(n + 1) if n <= 2000 else np.arange(int(mean - 8 * np.sqrt(var)),
                                                       int(mean + 8 * np.sqrt(var)))
    pmf = stats.binom.pmf(ks, n, p)
    keep = pmf * LANES >= 5
    obs = np.array([(x == k).sum() for k in ks[keep]])
    exp = pmf[keep] * LANES
    rest_obs, rest_exp = LANES - obs.sum(), LANES - exp.sum()
    chi2 = ((obs - exp) ** 2 / exp).sum() + ((rest_obs - rest_exp) ** 2 / max(rest_exp, 1e-9)
                                              if rest_exp > 1 else 0.0)
    assert stats.chi2.sf(chi2, keep.sum()) > 1e-4


def test_binomial_lane_does_not_depend_on_batch(binomial_draws):
    np.testing.assert_array_equal(binomial_draws[0], binomial_draws[1])


def test_binomial_degenerate_cases(binomial_draws):
    np.testing.assert_array_equal(binomial_draws[2], [c[2] for c in DEGENERATE])


# ----------------------------------------------------------------------------- histogram
HIST_CASES = [  # n, mu, sigma
    (500, -1.0, 0.41), (20, 0.3, 0.8), (1000, 2.5, 1.5), (3, 0.0, 1.0), (0, 0.0, 1.0),
    (700, -6.0, 0.5), (300, 5.0, 0.3), (150, -0.3, 0.8),
]
HLANES = 10_000
BINS = 20


@pytest.fixture(scope="module")
def hist_draws():
    n = np.repeat([c[0] for c in HIST_CASES], HLANES).astype(np.int32)
    mu = np.repeat([c[1] for c in HIST_CASES], HLANES).astype(np.float32)
    sd = np.repeat([c[2] for c in HIST_CASES], HLANES).astype(np.float32)
    k0, k1 = _lanes(4, n.size)
    h = jax.jit(lambda *a: sf.logitnormal_hist(*a[:2], 9, *a[2:], BINS))(
        k0, k1, jnp.asarray(n), jnp.asarray(mu), jnp.asarray(sd))
    return np.asarray(h).reshape(len(HIST_CASES), HLANES, BINS)


def _bin_probs(mu, sd):
    e = np.arange(BINS + 1) / BINS
    with np.errstate(divide="ignore"):
        z = (np.log(e / (1 - e)) - mu) / sd
    return np.diff(stats.norm.cdf(z))


@pytest.mark.parametrize("case", range(len(HIST_CASES)))
def test_histogram_is_exact_multinomial(hist_draws, case):
    n, mu, sd = HIST_CASES[case]
    h = hist_draws[case]
    np.testing.assert_array_equal(h.sum(1), n)
    p = _bin_probs(mu, sd)
    np.testing.assert_allclose(np.asarray(sf.logitnormal_bin_probs(jnp.float32(mu),
                                                                  jnp.float32(sd), BINS)),
                               p, atol=2e-6)
    if n == 0:
        return
    se = np.sqrt(n * p * (1 - p) / HLANES)
    live = p * n * HLANES > 1
    assert np.all(np.abs(h.mean(0) - n * p)[live] < 5 * se[live] + 1e-12)
    # multinomial covariance of the two largest bins: -n p_i p_j
    i, j = np.argsort(p)[-2:]
    if min(p[i], p[j]) * n > 2:
        cov = np.cov(h[:, i], h[:, j])[0, 1]
        want = -n * p[i] * p[j]
        sd_i, sd_j = np.sqrt(n * p[i] * (1 - p[i])), np.sqrt(n * p[j] * (1 - p[j]))
        assert abs(cov - want) < 5 * sd_i * sd_j * np.sqrt(2 / HLANES)
    # pooled counts are Multinomial(n L, p)
    tot, exp = h.sum(0), p * n * HLANES
    keep = exp >= 5
    chi2 = ((tot[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    assert stats.chi2.sf(chi2, max(keep.sum() - 1, 1)) > 1e-4


def test_histogram_lane_does_not_depend_on_batch(hist_draws):
    """Each lane's counts are the same drawn alone as in the batch of 80 000 lanes with
    very different chain lengths (every case; the first 3 lanes of each)."""
    k0, k1 = _lanes(4, len(HIST_CASES) * HLANES)
    for c, (n, mu, sd) in enumerate(HIST_CASES):
        for i in range(3):
            lane = c * HLANES + i
            one = sf.logitnormal_hist(k0[lane:lane + 1], k1[lane:lane + 1], 9,
                                      jnp.asarray([n], jnp.int32),
                                      jnp.asarray([mu], jnp.float32),
                                      jnp.asarray([sd], jnp.float32), BINS)
            np.testing.assert_array_equal(np.asarray(one)[0], hist_draws[c, i])


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
    z = dynamics.bits_to_normal(dynamics.stream_bits(k0, k1, 1, sf.EXACT_TERMS + 2))
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


def test_many_lane_draw_equals_vmapped_draw_candidates():
    """The kernel's all-lanes draw is dynamics.draw_candidates lane by lane (the same
    validity draws; values equal up to 1 ulp, XLA fusing the two programs differently)."""
    d = load_defaults()
    p = d.dynamics_params()
    e = jax.tree.map(lambda x: x[0], d.effects(["svhn"], ["detection"]))
    keys = jax.random.split(jax.random.key(3), 33)
    s = jnp.linspace(-0.5, 1.5, 33, dtype=jnp.float32)
    many = dynamics.draw_candidates_many(keys, s, p, e, 7)
    one = jax.vmap(lambda k, x: dynamics.draw_candidates(k, x, p, e, 7))(keys, s)
    np.testing.assert_array_equal(many.valid.T, one.valid)
    np.testing.assert_allclose(many.accuracy.T, one.accuracy, rtol=3e-7)
    np.testing.assert_allclose(many.novelty.T, one.novelty, rtol=3e-7)
