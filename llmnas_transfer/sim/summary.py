"""Summary path: draw each (trial, iteration)'s sufficient statistics directly.

The per-candidate path draws every candidate and reduces. When only summaries are wanted,
this module draws the summaries themselves, so the cost grows with the number of
(trial, iteration) pairs and not with the number of candidates ``N``:

* **validity count** ``n ~ Binomial(N, q_t)`` - exact
  (:func:`llmnas_transfer.sim.samplers.binomial`: inversion for small means, Hormann's
  BTRS transformed rejection otherwise, both vectorised with per-lane random streams).
  ``q_t`` is the candidate path's rate: ``p_t`` given the state and the collapse regime
  (:func:`~llmnas_transfer.sim.dynamics.regime_validity`), drawn from its Beta law when
  ``validity_dispersion > 0`` (:func:`~llmnas_transfer.sim.dynamics.dispersed_rate`,
  with the same key and stream as there), which makes the count beta-binomial;
* **histograms** of accuracy and novelty over ``bins`` fixed bins on [0, 1] - exact
  ``Multinomial(n, pi)`` by conditional binomials from the median bin outwards
  (:func:`llmnas_transfer.sim.samplers.logitnormal_hist`), ``pi_b`` from the normal CDF at
  the logit of the bin edges;
* **accuracy and novelty sums and sums of squares** over the ``n`` valid candidates -
  exact for ``n <= EXACT_TERMS`` (the first ``min(n, K)`` terms are drawn one by one) and,
  for the ``n - K`` terms beyond, a bivariate normal (central limit) approximation with the
  exact mean and covariance of ``(A, A^2)`` for a logit-normal ``A``, computed by
  Gauss-Hermite quadrature (:func:`logitnormal_sums`). This is the one approximation; its
  error is bounded and tested (see ``docs/performance.md``).

The latent state, ``p_valid`` and the key scheme (:mod:`llmnas_transfer.sim.keys`) are
shared with the per-candidate path: the key of iteration ``t`` is split into
``(k_cand, k_state)`` by :func:`~llmnas_transfer.sim.keys.split_iteration_key`, as in
:func:`llmnas_transfer.sim.dynamics.step`, so both paths follow the same state trajectory for
the same seed (and the same collapse regimes: the regime chain reads the init and state
keys, :func:`trial_path`); only ``k_cand``'s use differs. Statistic ``x`` of a pair reads its own
stream of ``k_cand`` (``STREAM_*`` below), so every pair's result depends only on its own
key: chunking, sharding and batch composition never change a number.

Within a pair the histograms and the moments are drawn independently given ``n`` and the
state (the per-candidate path makes them dependent through shared candidates); each is
correct marginally, which is what every downstream table uses.

Example
-------
>>> import jax
>>> from llmnas_transfer.sim.params import load_defaults
>>> d = load_defaults()
>>> eff = d.effects(["cifar-10"], ["classification"])
>>> out = summary_chunk(jax.random.key(0), d.dynamics_params(), eff,
...                     jax.numpy.array([1], "uint32"), jax.numpy.arange(4),
...                     num_iterations=3, num_candidates=1000, bins=20)
>>> out.n_valid.shape, out.accuracy_hist.shape
((1, 4, 3), (1, 4, 3, 20))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llmnas_transfer.sim.dynamics import (
    SimState,
    accuracy_logit,
    dispersed_rate,
    feedback_from_sums,
    init_state,
    novelty_logit,
    regime_validity,
    transition,
    validity_logit,
)
from llmnas_transfer.sim.keys import (
    bits_to_normal,
    init_key,
    iteration_keys,
    key_words,
    split_iteration_key,
    threefry_block,
    trial_keys,
)
from llmnas_transfer.sim.params import DynamicsParams, SettingEffects
from llmnas_transfer.sim.samplers import binomial, logitnormal_hist
from llmnas_transfer.sim.types import Array, PRNGKey

#: candidates per pair whose accuracy/novelty are drawn one by one (exact below this)
EXACT_TERMS = 16
#: Gauss-Hermite nodes for the logit-normal moments
QUAD_NODES = 32

STREAM_VALID = 0
STREAM_ACCURACY = 1
STREAM_NOVELTY = 2
STREAM_ACCURACY_HIST = 1 << 20  # + bin index
STREAM_NOVELTY_HIST = 2 << 20  # + bin index

_GH_X, _GH_W = np.polynomial.hermite.hermgauss(QUAD_NODES)
_NODES = (_GH_X * np.sqrt(2.0)).astype(np.float32)
_WEIGHTS = (_GH_W / np.sqrt(np.pi)).astype(np.float32)


class IterationSummary(NamedTuple):
    """Sufficient statistics of one (trial, iteration); sums run over valid candidates.

    Both paths return it: the candidate path reduces drawn candidates to it
    (:func:`llmnas_transfer.sim.candidates.summarize_candidates`), the summary path draws
    it directly (:func:`summarize_pairs`).
    """

    n_valid: Array
    accuracy_sum: Array
    accuracy_sumsq: Array
    novelty_sum: Array
    novelty_sumsq: Array
    state: Array
    p_valid: Array
    accuracy_hist: Array
    novelty_hist: Array


# ----------------------------------------------------------------------------- moments
_NODE_GROUP = 4  # nodes per loop step (QUAD_NODES is a multiple)


def logitnormal_moments(mu: Array, sigma: Array) -> tuple[Array, Array, Array, Array]:
    """Mean and 2nd-4th central moments of ``A = sigmoid(mu + sigma Z)`` (Gauss-Hermite).

    One pass over the nodes, accumulating powers of ``A - sigmoid(mu)`` (a shift close to
    the mean, so float32 central moments lose no digits to cancellation).

    Example
    -------
    >>> m, v, c3, c4 = logitnormal_moments(jnp.float32(0.0), jnp.float32(1.0))
    >>> round(float(m), 4)
    0.5
    """
    mu = jnp.asarray(mu, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    a0 = jax.nn.sigmoid(mu)
    nodes = jnp.asarray(_NODES.reshape(-1, _NODE_GROUP))
    weights = jnp.asarray(_WEIGHTS.reshape(-1, _NODE_GROUP))

    def body(i, m):
        m1, m2, m3, m4 = m
        for g in range(_NODE_GROUP):  # a few nodes per step: small program, few passes
            x = jax.nn.sigmoid(mu + sigma * nodes[i, g]) - a0
            x2 = x * x
            w = weights[i, g]
            m1, m2, m3, m4 = m1 + w * x, m2 + w * x2, m3 + w * (x2 * x), m4 + w * (x2 * x2)
        return m1, m2, m3, m4

    zero = jnp.zeros(jnp.broadcast_shapes(mu.shape, sigma.shape), jnp.float32)
    d, m2, m3, m4 = jax.lax.fori_loop(0, nodes.shape[0], body, (zero,) * 4)
    var = m2 - d * d
    c3 = m3 - 3.0 * d * m2 + 2.0 * d * d * d
    c4 = m4 - 4.0 * d * m3 + 6.0 * d * d * m2 - 3.0 * d * d * d * d
    return a0 + d, var, c3, c4


def logitnormal_sums(k0: Array, k1: Array, stream: int | Array, n: Array, mu: Array,
                     sigma: Array, exact_terms: int = EXACT_TERMS) -> tuple[Array, Array]:
    """``(sum A_j, sum A_j^2)`` over ``n`` iid ``A_j = sigmoid(mu + sigma Z_j)``.

    The first ``min(n, K)`` terms (``K = exact_terms``) are drawn exactly. The remaining
    ``m = n - K`` terms are replaced by their bivariate normal limit
    ``m (E A, E A^2) + sqrt(m) L (z1, z2)`` with ``L`` the Cholesky factor of
    ``Cov(A, A^2)`` from :func:`logitnormal_moments`. The total is clipped to the feasible
    set ``0 <= S1 <= n``, ``S1^2 / n <= S2 <= S1`` (a many-sigma event for ``m > 0``).
    Stream words (:func:`~llmnas_transfer.sim.keys.stream_bits` layout): ``K`` normals for
    the exact terms, then ``z1, z2``.

    Example
    -------
    >>> from llmnas_transfer.sim.keys import key_words
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 2))
    >>> s1, s2 = logitnormal_sums(k0, k1, 1, jnp.array([0, 500]), jnp.float32(-1.0), 0.4)
    >>> float(s1[0]), bool(100 < float(s1[1]) < 200)
    (0.0, True)
    """
    n = jnp.asarray(n, jnp.int32)
    mu = jnp.asarray(mu, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    shape = jnp.broadcast_shapes(jnp.shape(k0), n.shape, mu.shape, sigma.shape,
                                 jnp.shape(stream))
    half = (exact_terms + 3) // 2  # block i holds words i and i + half

    def body(i, c):
        s1, s2, z1, z2 = c
        w1, w2 = threefry_block(k0, k1, stream, i.astype(jnp.uint32))
        za, zb = bits_to_normal(w1), bits_to_normal(w2)
        jb = i + half
        a = jnp.where((i < exact_terms) & (i < n), jax.nn.sigmoid(mu + sigma * za), 0.0)
        b = jnp.where((jb < exact_terms) & (jb < n), jax.nn.sigmoid(mu + sigma * zb), 0.0)
        z1 = jnp.where(jb == exact_terms, zb, jnp.where(i == exact_terms, za, z1))
        z2 = jnp.where(jb == exact_terms + 1, zb, jnp.where(i == exact_terms + 1, za, z2))
        return s1 + a + b, s2 + a * a + b * b, z1, z2

    zero = jnp.zeros(shape, jnp.float32)
    s1, s2, z1, z2 = jax.lax.fori_loop(0, half, body, (zero,) * 4)

    mean, var, c3, c4 = logitnormal_moments(mu, sigma)
    m = jnp.maximum(n - exact_terms, 0).astype(jnp.float32)
    pos = var > 0
    l11 = jnp.sqrt(jnp.maximum(var, 0.0))
    safe = jnp.where(pos, var, 1.0)
    l21 = jnp.where(pos, (2.0 * mean * var + c3) / jnp.sqrt(safe), 0.0)
    l22 = jnp.where(pos, jnp.sqrt(jnp.maximum(c4 - var * var - c3 * c3 / safe, 0.0)), 0.0)
    rm = jnp.sqrt(m)
    s1 = s1 + m * mean + rm * l11 * z1
    s2 = s2 + m * (mean * mean + var) + rm * (l21 * z1 + l22 * z2)
    nf = n.astype(jnp.float32)
    s1 = jnp.clip(s1, 0.0, nf)
    s2 = jnp.clip(s2, s1 * s1 / jnp.maximum(nf, 1.0), s1)
    return s1, s2


# ----------------------------------------------------------------------------- kernel
def summarize_pairs(
    k0: Array,
    k1: Array,
    s: Array,
    params: DynamicsParams,
    effects: SettingEffects,
    *,
    num_candidates: int,
    bins: int = 20,
    collapsed: Array | None = None,
    bursts: bool = True,
) -> IterationSummary:
    """Summaries of (trial, iteration) pairs at states ``s`` with candidate key words.

    All arguments broadcast elementwise (``effects`` fields against ``s``). ``collapsed``
    (bool, healthy if ``None``) is each pair's regime. ``bursts`` (static) ``False``
    leaves out the regime and the dispersion draw: for parameters without bursts it is the
    same law, run by exactly the program of earlier versions. Returns an
    :class:`IterationSummary` (``p_valid`` is the rate given state and regime, before the
    dispersion draw).

    Example
    -------
    >>> from llmnas_transfer.sim.keys import key_words
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = d.effects(["cifar-10"], ["classification"])
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 3))
    >>> out = summarize_pairs(k0, k1, jnp.zeros(3), d.dynamics_params(), e,
    ...                       num_candidates=100, bins=5)
    >>> out.accuracy_hist.shape
    (3, 5)
    """
    p = jax.nn.sigmoid(validity_logit(s, params, effects.validity_offset))
    if bursts:
        p = regime_validity(p, collapsed, params)
        n = binomial(k0, k1, STREAM_VALID, jnp.int32(num_candidates),
                     dispersed_rate(k0, k1, p, params))
    else:
        n = binomial(k0, k1, STREAM_VALID, jnp.int32(num_candidates), p)
    # accuracy and novelty side by side on a leading axis of 2: one traced copy of each
    # sampler and twice the lanes per vectorised step
    shape = jnp.shape(n)
    lead = (2,) + (1,) * len(shape)
    mu = jnp.stack([accuracy_logit(s, params, effects.accuracy_offset),
                    novelty_logit(s, params, effects.novelty_offset)])
    sigma = jnp.stack([params.accuracy_noise, params.novelty_noise]).reshape(lead)
    kk0, kk1 = jnp.stack([k0, k0]), jnp.stack([k1, k1])
    nn = jnp.stack([n, n])
    sums = logitnormal_sums(
        kk0, kk1, jnp.array([STREAM_ACCURACY, STREAM_NOVELTY], jnp.uint32).reshape(lead),
        nn, mu, sigma)
    if bins:
        # one histogram call each: a call's loop runs until its slowest chain ends, and
        # the accuracy chains (narrow) end far sooner than the novelty ones. Lanes are
        # independent, so this gives the numbers a stacked call would.
        hist = jnp.stack([
            logitnormal_hist(k0, k1, STREAM_ACCURACY_HIST, n, mu[0], sigma[0], bins),
            logitnormal_hist(k0, k1, STREAM_NOVELTY_HIST, n, mu[1], sigma[1], bins)])
    else:
        hist = jnp.zeros((2,) + shape + (0,), jnp.int32)
    # sums of the chance-normalised accuracy x; the accuracy is c + (1 - c) x
    c = jnp.asarray(effects.chance, jnp.float32)
    nf = n.astype(jnp.float32)
    # (sums[m][q]: moment m of quantity q, accuracy q = 0 and novelty q = 1)
    acc1 = c * nf + (1.0 - c) * sums[0][0]
    acc2 = c * c * nf + 2.0 * c * (1.0 - c) * sums[0][0] + (1.0 - c) ** 2 * sums[1][0]
    return IterationSummary(n, acc1, acc2, sums[0][1], sums[1][1], s, p, hist[0], hist[1])


def trial_path(key: PRNGKey, params: DynamicsParams, num_iterations: int,
               effects: SettingEffects | None = None) -> tuple[PRNGKey, Array, Array]:
    """Candidate keys, latent states and collapse regimes of one trial without feedback:
    ``(k_cand (T,), s (T,), collapsed (T,))``.

    Uses the key scheme of :mod:`llmnas_transfer.sim.keys` and the same
    :func:`~llmnas_transfer.sim.dynamics.init_state` and
    :func:`~llmnas_transfer.sim.dynamics.transition` as
    :func:`~llmnas_transfer.sim.dynamics.run_trials`, so the states and regimes equal the
    per-candidate path's.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> kc, s, c = trial_path(jax.random.key(0), load_defaults().dynamics_params(), 4)
    >>> s.shape, bool(c.any())
    ((4,), False)
    """
    state = init_state(init_key(key), params)
    k_cand, k_state = split_iteration_key(iteration_keys(key, num_iterations))

    def body(carry: SimState, ks):
        return transition(ks, carry, params, effects), (carry.refinement, carry.collapsed)

    _, (states, collapsed) = jax.lax.scan(body, state, k_state)
    return k_cand, states, collapsed


def trial_states(key: PRNGKey, params: DynamicsParams, num_iterations: int,
                 effects: SettingEffects | None = None) -> tuple[PRNGKey, Array]:
    """Candidate keys and latent states of one trial: ``(k_cand (T,), s (T,))``, the first
    two parts of :func:`trial_path` (which also gives the collapse regimes).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> kc, s = trial_states(jax.random.key(0), load_defaults().dynamics_params(), 4)
    >>> s.shape
    (4,)
    """
    k_cand, states, _ = trial_path(key, params, num_iterations, effects)
    return k_cand, states


def summary_chunk(
    key: PRNGKey,
    params: DynamicsParams,
    effects: SettingEffects,
    setting_ids: Array,
    trial_ids: Array,
    *,
    num_iterations: int,
    num_candidates: int,
    bins: int = 20,
    feedback: bool = False,
    bursts: bool = True,
) -> IterationSummary:
    """Summary-path kernel with leaves of shape ``(setting, trial, iteration, ...)``.

    Not jitted itself; :func:`llmnas_transfer.sim.candidates.simulate_chunk` jits it.
    Trial keys come from :func:`~llmnas_transfer.sim.keys.trial_keys`, as on the
    candidate path. Without feedback (``feedback=False``: both feedback strengths are 0)
    the states are drawn first and every (trial, iteration) pair is summarised in one
    flat call; with feedback each iteration's summaries feed its transition, so the
    pairs are summarised iteration by iteration inside a scan (same keys and streams).
    ``bursts`` (static; :func:`llmnas_transfer.sim.candidates.has_bursts`) ``False``
    promises that collapse and dispersion are off and runs the program without them (the
    numbers are those of the general program up to an ulp of ``p_valid``, and exactly
    those of earlier versions); ``True`` is right for any parameters.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> out = summary_chunk(jax.random.key(0), d.dynamics_params(),
    ...                     d.effects(["svhn"], ["detection"]), jnp.array([4], "uint32"),
    ...                     jnp.arange(2), num_iterations=3, num_candidates=500, bins=0)
    >>> out.n_valid.shape, out.accuracy_hist.shape
    ((1, 2, 3), (1, 2, 3, 0))
    """
    tkeys = trial_keys(key, setting_ids, trial_ids)  # (S, C)
    if feedback:
        return _summary_chunk_feedback(tkeys, params, effects, num_iterations,
                                       num_candidates, bins, bursts)
    kc, states, collapsed = jax.vmap(jax.vmap(
        lambda k, e: trial_path(k, params, num_iterations, e),
        in_axes=(0, None)))(tkeys, effects)  # (S, C, T)
    shape = states.shape
    k0, k1 = key_words(kc)
    # one flat lane axis: XLA vectorises along the minor axis, which must not be T (~10)
    eff = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x)[:, None, None], shape).ravel(),
                       effects)
    out = summarize_pairs(k0.ravel(), k1.ravel(), states.ravel(), params, eff,
                          num_candidates=num_candidates, bins=bins,
                          collapsed=collapsed.ravel(), bursts=bursts)
    return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), out)


def _summary_chunk_feedback(tkeys, params, effects, num_iterations, num_candidates, bins,
                            bursts):
    """The summary path with feedback: a scan over iterations, lanes = (setting, trial)."""
    S, C = tkeys.shape
    flat = tkeys.ravel()
    eff = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x)[:, None], (S, C)).ravel(),
                       effects)
    k_cand, k_state = split_iteration_key(jax.vmap(
        lambda k: iteration_keys(k, num_iterations))(flat))  # (L, T)
    state0 = init_state(init_key(flat), params)

    def body(state: SimState, ks):
        kc, kst = ks
        k0, k1 = key_words(kc)
        out = summarize_pairs(k0, k1, state.refinement, params, eff,
                              num_candidates=num_candidates, bins=bins,
                              collapsed=state.collapsed, bursts=bursts)
        c = eff.chance
        span = jnp.where(c < 1.0, 1.0 - c, 1.0)
        norm_sum = (out.accuracy_sum - c * out.n_valid.astype(jnp.float32)) / span
        fb = feedback_from_sums(out.n_valid, num_candidates, norm_sum)
        return transition(kst, state, params, eff, fb), out

    _, out = jax.lax.scan(body, state0, (k_cand.T, k_state.T))  # leaves (T, L, ...)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape((S, C) + x.shape[0:1]
                                                                + x.shape[2:]), out)
