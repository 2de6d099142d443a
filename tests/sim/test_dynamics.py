"""Dynamics: transitions, emissions, one step and a trial's scan; lanes of trials give the
numbers of one trial at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from llmnas_transfer.sim import dynamics, keys
from llmnas_transfer.sim.params import load_defaults


@pytest.fixture
def setup():
    d = load_defaults()
    p = d.dynamics_params()
    e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    return p, e


def test_step_shapes_and_dtypes(key, setup, strict_jax):
    p, e = setup
    s0 = dynamics.init_state(key, p)
    s1, c = dynamics.step(jax.random.fold_in(key, 1), s0, p, e, num_candidates=7)
    assert s1.refinement.shape == () and s1.refinement.dtype == jnp.float32
    assert c.valid.shape == (7,) and c.valid.dtype == jnp.bool_
    acc = np.asarray(c.accuracy)
    assert np.all(np.isnan(acc[~np.asarray(c.valid)]))
    assert np.all((acc[np.asarray(c.valid)] > 0) & (acc[np.asarray(c.valid)] < 1))


def test_zero_noise_transition_is_closed_form(key, setup):
    p, e = setup
    p = p._replace(state_noise=jnp.float32(0.0), init_sd=jnp.float32(0.0))
    s = dynamics.init_state(key, p)
    kappa = float(p.kappa)
    for t in range(1, 8):
        assert float(s.refinement) == pytest.approx(1 - (1 - kappa) ** (t - 1), abs=1e-6)
        s = dynamics.transition(jax.random.fold_in(key, t), s, p)


def test_state_moments_match_monte_carlo(key, setup):
    p, _ = setup
    m, v = dynamics.state_moments(p, 6)
    R = 40_000
    keys = jax.random.split(key, R)

    def run(k):
        s = dynamics.init_state(jax.random.fold_in(k, 0), p)
        out = []
        for t in range(6):
            out.append(s.refinement)
            s = dynamics.transition(jax.random.fold_in(k, t + 1), s, p)
        return jnp.stack(out)

    x = np.asarray(jax.vmap(run)(keys))
    se_mean = np.sqrt(np.asarray(v) / R)
    assert np.all(np.abs(x.mean(0) - np.asarray(m)) < 5 * se_mean)
    # variance of a sample variance of a Gaussian: 2 v^2 / (R - 1)
    se_var = np.sqrt(2 * np.asarray(v) ** 2 / (R - 1))
    assert np.all(np.abs(x.var(0, ddof=1) - np.asarray(v)) < 5 * se_var)


def test_validity_is_bernoulli_with_sigmoid_probability(key, setup):
    p, e = setup
    s = jnp.float32(0.4)
    N = 200_000
    c = dynamics.draw_candidates(key, s, p, e, N)
    prob = float(jax.nn.sigmoid(dynamics.validity_logit(s, p, e.validity_offset)))
    se = np.sqrt(prob * (1 - prob) / N)
    assert abs(float(np.mean(c.valid)) - prob) < 5 * se
    # logit chance-normalised accuracy of valid candidates ~ N(alpha + lambda s, sigma_a^2)
    ch = float(e.chance)
    x = (np.asarray(c.accuracy, np.float64)[np.asarray(c.valid)] - ch) / (1.0 - ch)
    assert x.min() > 0.0  # never below chance
    z = np.log(x) - np.log1p(-x)
    mu = float(dynamics.accuracy_logit(s, p, e.accuracy_offset))
    sd = float(p.accuracy_noise)
    assert abs(z.mean() - mu) < 5 * sd / np.sqrt(z.size)
    assert abs(z.std() - sd) < 5 * sd / np.sqrt(2 * z.size)


def test_emissions_monotone_in_state(setup):
    p, e = setup
    s = jnp.linspace(-1, 2, 11)
    assert np.all(np.diff(np.asarray(dynamics.validity_logit(s, p, e.validity_offset))) > 0)
    assert np.all(np.diff(np.asarray(dynamics.accuracy_logit(s, p, e.accuracy_offset))) >= 0)


def test_candidate_noise_marginals_and_independence(key):
    from scipy import stats

    u, z = dynamics.candidate_noise(key, 100_001)  # odd length exercises the split halves
    u, z = np.asarray(u), np.asarray(z)
    assert u.dtype == np.float32 and np.all((u >= 0) & (u < 1))
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(z[0], "norm").pvalue > 1e-3
    assert stats.kstest(z[1], "norm").pvalue > 1e-3
    # streams are uncorrelated: |r| < 5 / sqrt(n)
    r = np.corrcoef(np.vstack([u, z]))
    assert np.all(np.abs(r[np.triu_indices(3, 1)]) < 5 / np.sqrt(u.size))
    # different keys give different noise
    u2, _ = dynamics.candidate_noise(jax.random.fold_in(key, 1), 16)
    assert not np.array_equal(u[:16], np.asarray(u2))


def test_candidate_noise_follows_documented_stream_layout():
    key = jax.random.key(5)
    u, z = dynamics.candidate_noise(key, 7)
    k0, k1 = keys.key_words(key)
    # word j of stream h: first word of block (h, j) for j < 4, else second of (h, j - 4)
    for h, got in ((0, keys.bits_to_uniform), (1, keys.bits_to_normal),
                   (2, keys.bits_to_normal)):
        b1, b2 = threefry2x32_p.bind(*(jnp.broadcast_to(jnp.uint32(x), (4,)) for x in
                                       (k0, k1, h)), jnp.arange(4, dtype=jnp.uint32))
        words = np.concatenate([b1, b2])[:7]
        want = got(jnp.asarray(words))
        np.testing.assert_array_equal(u if h == 0 else z[h - 1], want)


def test_non_threefry_keys_work():
    u, z = dynamics.candidate_noise(jax.random.key(0, impl="rbg"), 5)
    assert u.shape == (5,) and z.shape == (2, 5)
    assert np.all((np.asarray(u) >= 0) & (np.asarray(u) < 1))


def _assert_same_draws(a, b):
    """The same validity draws, states and probabilities; accuracy and novelty equal up to
    1 ulp (XLA may fuse the float transforms of the two programs differently)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype == np.float32 and x.ndim == 2:
            np.testing.assert_allclose(x, y, rtol=3e-7)
        else:
            np.testing.assert_array_equal(x, y)


def test_a_lane_of_trials_draws_what_each_trial_draws_alone(setup):
    """One emission implementation: the lane form (candidate axis first, trials last, as
    the simulator's kernel runs it) equals vmapping the one-trial form."""
    p, e = setup
    ks = jax.random.split(jax.random.key(3), 33)
    s = jnp.linspace(-0.5, 1.5, 33, dtype=jnp.float32)
    lanes = jax.jit(lambda k, x: dynamics.draw_candidates(k, x, p, e, 7))(ks, s)
    one = jax.jit(jax.vmap(lambda k, x: dynamics.draw_candidates(k, x, p, e, 7),
                           out_axes=dynamics.Candidates(1, 1, 1, 0, 0)))(ks, s)
    assert lanes.valid.shape == (7, 33) and lanes.p_valid.shape == (33,)
    _assert_same_draws(lanes, one)
    nxt, c = jax.jit(lambda k, x: dynamics.step(k, dynamics.SimState(x), p, e,
                                                num_candidates=7))(ks, s)
    nxt1, c1 = jax.jit(jax.vmap(
        lambda k, x: dynamics.step(k, dynamics.SimState(x), p, e, num_candidates=7),
        out_axes=(0, dynamics.Candidates(1, 1, 1, 0, 0))))(ks, s)
    _assert_same_draws((nxt, c), (nxt1, c1))


def test_run_trials_lanes_and_drift(setup):
    p, e = setup
    tk = jax.random.split(jax.random.key(8), 6)

    def reduce(c):
        return jnp.sum(c.valid, axis=0, dtype=jnp.int32), c.state

    run = jax.jit(lambda k, shift: dynamics.run_trials(
        k, p, e, num_iterations=4, num_candidates=9, reduce=reduce, validity_shift=shift))
    zero = jnp.zeros(4, jnp.float32)
    n, s = run(tk, zero)
    assert n.shape == (4, 6) and s.shape == (4, 6)
    n1, s1 = jax.jit(jax.vmap(lambda k: run(k, zero)))(tk)
    np.testing.assert_array_equal(n, n1.T)
    np.testing.assert_array_equal(s, s1.T)
    # the state starts at the init key's draw and the shift moves validity only
    np.testing.assert_array_equal(
        s[0], np.asarray(dynamics.init_state(keys.init_key(tk), p).refinement))
    n_up, s_up = run(tk, jnp.full(4, 50.0, jnp.float32))
    np.testing.assert_array_equal(s_up, s)
    assert int(n_up.sum()) == 0


def test_setting_rate_value_and_gradient_at_and_off_zero():
    # value: kappa's own bits at a zero offset, sigmoid(logit kappa + r) elsewhere;
    # gradient in r: the sigmoid's slope, also at exactly 0 (reference: central
    # differences in float64 with NumPy)
    d = load_defaults()
    p = d.dynamics_params()
    e = d.effects(["cifar-10"], ["classification"])
    k = float(p.kappa)

    def rate(r):
        return dynamics.setting_rate(p, e._replace(rate_offset=jnp.reshape(r, (1,))))[0]

    assert float(rate(jnp.float32(0.0))) == k
    for r in (0.0, 0.7, -1.2):
        lk = np.log(k) - np.log1p(-k)
        sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
        want = (sig(lk + r + 1e-6) - sig(lk + r - 1e-6)) / 2e-6
        got = float(jax.grad(rate)(jnp.float32(r)))
        assert got == pytest.approx(want, rel=1e-4), (r, got, want)
        assert float(rate(jnp.float32(r))) == pytest.approx(sig(lk + r), rel=1e-6)
        # in kappa: d sigmoid(logit kappa + r) / d kappa
        want_k = (sig(np.log(k + 1e-7) - np.log1p(-k - 1e-7) + r)
                  - sig(np.log(k - 1e-7) - np.log1p(-k + 1e-7) + r)) / 2e-7
        got_k = float(jax.grad(lambda kk: dynamics.setting_rate(
            p._replace(kappa=kk), e._replace(rate_offset=jnp.full((1,), r, jnp.float32)))[0])(
            jnp.float32(k)))
        assert got_k == pytest.approx(want_k, rel=1e-4), (r, got_k, want_k)


# ----------------------------------------------------------------------------- bursts
BURSTS = dict(collapse_enter=0.2, collapse_exit=0.5, collapse_validity=-6.0)


def _with(p, **kw):
    return p._replace(**{k: jnp.float32(v) for k, v in kw.items()})


def _scan_steps(tkeys, p, e, num_iterations, num_candidates):
    """Scan :func:`dynamics.step` as run_trials does, keeping the regimes: per iteration
    ``(collapsed, n_valid, p_valid)``, each ``(T,) + lanes``."""
    state0 = dynamics.init_state(keys.init_key(tkeys), p)

    def body(state, t):
        nxt, c = dynamics.step(keys.iteration_key(tkeys, t), state, p, e,
                               num_candidates=num_candidates)
        return nxt, (state.collapsed, jnp.sum(c.valid, 0, dtype=jnp.int32), c.p_valid)

    t = jnp.arange(1, num_iterations + 1, dtype=jnp.uint32)
    return jax.lax.scan(body, state0, t)[1]


def test_bursts_off_keep_every_trial_healthy(setup):
    p, e = setup
    tk = jax.random.split(jax.random.key(2), 64)
    col, _, pv = jax.jit(lambda k: _scan_steps(k, p, e, 5, 4))(tk)
    assert not np.asarray(col).any()
    # the regime of t = 1 and of t + 1 read word 0 of STREAM_REGIME (init / state key)
    k0, k1 = keys.key_words(keys.init_key(tk))
    u = keys.bits_to_uniform(threefry2x32_p.bind(
        k0, k1, jnp.full(k0.shape, keys.STREAM_REGIME, jnp.uint32),
        jnp.zeros(k0.shape, jnp.uint32))[0])
    pb = _with(p, collapse_enter=0.3, collapse_exit=0.7)
    s = dynamics.init_state(keys.init_key(tk), pb)
    np.testing.assert_array_equal(s.collapsed, np.asarray(u) < 0.3)


def test_collapse_regime_is_the_stationary_markov_chain(setup):
    """Fraction collapsed = enter / (enter + exit), lag-1 persistence = 1 - exit,
    P(collapse | healthy) = enter, validity while collapsed = sigmoid(collapse_validity),
    each within 4 standard errors (trials independent; the transitions out of a given
    regime are independent Bernoulli draws given the past, so their binomial SE holds;
    the collapsed fraction's SE comes from the spread of per-trial means)."""
    p, e = setup
    p = _with(p, **BURSTS)
    R, T, N = 20_000, 8, 10
    tk = jax.random.split(jax.random.key(4), R)
    col, nv, pv = (np.asarray(x) for x in jax.jit(lambda k: _scan_steps(k, p, e, T, N))(tk))
    pi = float(dynamics.collapse_stationary(p))
    assert pi == pytest.approx(0.2 / 0.7)
    per_trial = col.mean(0)
    assert abs(per_trial.mean() - pi) < 4 * per_trial.std(ddof=1) / np.sqrt(R)
    # every iteration, not only on average: the chain starts stationary
    assert np.all(np.abs(col.mean(1) - pi) < 4 * np.sqrt(pi * (1 - pi) / R))
    prev, nxt = col[:-1], col[1:]
    stay = nxt[prev].mean()
    assert abs(stay - 0.5) < 4 * np.sqrt(0.25 / prev.sum())
    enter = nxt[~prev].mean()
    assert abs(enter - 0.2) < 4 * np.sqrt(0.16 / (~prev).sum())
    low = float(jax.nn.sigmoid(jnp.float32(-6.0)))
    assert np.all(pv[col] == np.float32(low))
    k = nv[col].sum()
    n = col.sum() * N
    assert abs(k / n - low) < 4 * np.sqrt(low * (1 - low) / n)
    # healthy iterations keep the state's rate
    healthy = float(nv[~col].sum()) / ((~col).sum() * N)
    assert healthy > 0.2


@pytest.mark.parametrize("s", [0.0, 1.0])
def test_dispersion_makes_the_valid_count_beta_binomial(setup, s):
    """Candidate path at a fixed state: mean N p and variance N p (1 - p) (1 + (N - 1) rho)
    within 4 SE (SE of a sample variance: sqrt((m4 - v^2) / R) from the sample's own
    fourth central moment)."""
    p, e = setup
    rho, N, R = 0.3, 20, 40_000
    p = _with(p, validity_dispersion=rho)
    ks = jax.random.split(jax.random.key(9), R)
    c = jax.jit(lambda k: dynamics.draw_candidates(k, jnp.full(R, s, jnp.float32), p, e, N))(ks)
    n = np.asarray(c.valid.sum(0), np.float64)
    q = float(jax.nn.sigmoid(dynamics.validity_logit(jnp.float32(s), p, e.validity_offset)))
    np.testing.assert_allclose(np.asarray(c.p_valid), q, rtol=1e-6)
    want = N * q * (1 - q) * (1 + (N - 1) * rho)
    assert abs(n.mean() - N * q) < 4 * np.sqrt(want / R)
    v = n.var(ddof=1)
    m4 = np.mean((n - n.mean()) ** 4)
    assert abs(v - want) < 4 * np.sqrt((m4 - v * v) / R), (v, want)
    # rho = 0 is exactly the binomial path: valid iff the candidate's uniform < p
    c0 = dynamics.draw_candidates(ks[:50], jnp.full(50, s, jnp.float32),
                                  _with(p, validity_dispersion=0.0), e, N)
    u, _ = dynamics.candidate_noise(ks[:50], N)
    np.testing.assert_array_equal(c0.valid, np.asarray(u) < np.asarray(c0.p_valid)[None])


def test_a_lane_of_trials_draws_what_each_trial_draws_alone_with_bursts(setup):
    """Lane form = one-trial form with collapse and dispersion on, regimes included."""
    p, e = setup
    p = _with(p, validity_dispersion=0.3, **BURSTS)
    ks = jax.random.split(jax.random.key(13), 33)
    s = jnp.linspace(-0.5, 1.5, 33, dtype=jnp.float32)
    col = jnp.arange(33) % 3 == 0
    axes = dynamics.Candidates(1, 1, 1, 0, 0)
    lanes = jax.jit(lambda k, x, c: dynamics.draw_candidates(k, x, p, e, 7, c))(ks, s, col)
    one = jax.jit(jax.vmap(lambda k, x, c: dynamics.draw_candidates(k, x, p, e, 7, c),
                           out_axes=axes))(ks, s, col)
    _assert_same_draws(lanes, one)
    assert np.all(np.asarray(lanes.p_valid)[np.asarray(col)]
                  == np.float32(jax.nn.sigmoid(jnp.float32(-6.0))))
    st = dynamics.SimState(s, col)
    nxt, c = jax.jit(lambda k, x: dynamics.step(k, x, p, e, num_candidates=7))(ks, st)
    nxt1, c1 = jax.jit(jax.vmap(lambda k, x: dynamics.step(k, x, p, e, num_candidates=7),
                                out_axes=(0, axes)))(ks, st)
    _assert_same_draws((nxt, c), (nxt1, c1))
    # whole trials: a lane of trials scanned at once = each trial scanned alone
    tk = jax.random.split(jax.random.key(14), 40)
    run = jax.jit(lambda k: _scan_steps(k, p, e, 6, 9))
    a = run(tk)
    b = jax.jit(jax.vmap(lambda k: _scan_steps(k, p, e, 6, 9), out_axes=1))(tk)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert np.asarray(a[0]).any() and not np.asarray(a[0]).all()
    # run_trials follows the same chain
    n = jax.jit(lambda k: dynamics.run_trials(
        k, p, e, num_iterations=6, num_candidates=9,
        reduce=lambda c: jnp.sum(c.valid, 0, dtype=jnp.int32)))(tk)
    np.testing.assert_array_equal(n, a[1])
