"""Summary path: draw each (trial, iteration)'s sufficient statistics directly.

The per-candidate path draws every candidate and reduces. When only summaries are wanted,
this module draws the summaries themselves, so the cost grows with the number of
(trial, iteration) pairs and not with the number of candidates ``N``:

* **validity count** ``n ~ Binomial(N, p_t)`` - exact (:func:`binomial`: inversion for
  small means, Hormann's BTRS transformed rejection otherwise, both vectorised with
  per-lane random streams);
* **histograms** of accuracy and novelty over ``bins`` fixed bins on [0, 1] - exact
  ``Multinomial(n, pi)`` by conditional binomials from the median bin outwards
  (:func:`logitnormal_hist`), ``pi_b`` from the normal CDF at the logit of the bin edges;
* **accuracy and novelty sums and sums of squares** over the ``n`` valid candidates -
  exact for ``n <= EXACT_TERMS`` (the first ``min(n, K)`` terms are drawn one by one) and,
  for the ``n - K`` terms beyond, a bivariate normal (central limit) approximation with the
  exact mean and covariance of ``(A, A^2)`` for a logit-normal ``A``, computed by
  Gauss-Hermite quadrature (:func:`logitnormal_sums`). This is the one approximation; its
  error is bounded and tested (see ``docs/performance.md``).

The latent state, ``p_valid`` and the key scheme are shared with the per-candidate path:
the key of iteration ``t`` is split into ``(k_cand, k_state)`` exactly as in
:func:`llmnas_transfer.sim.dynamics.step`, so both paths follow the same state trajectory for
the same seed; only ``k_cand``'s use differs. Statistic ``x`` of a pair reads its own
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
    bits_to_normal,
    bits_to_uniform,
    init_state,
    key_words,
    novelty_logit,
    threefry_block,
    transition,
    validity_logit,
)
from llmnas_transfer.sim.params import DynamicsParams, SettingEffects
from llmnas_transfer.sim.types import Array, PRNGKey

#: candidates per pair whose accuracy/novelty are drawn one by one (exact below this)
EXACT_TERMS = 16
#: Gauss-Hermite nodes for the logit-normal moments
QUAD_NODES = 32
#: binomial means below this use inversion, above it BTRS (which needs n q >= 10)
INVERSION_MEAN = 10.0
#: histogram chains finish their last (at most this many) draws one by one
TAIL_DRAWS = 4

STREAM_VALID = 0
STREAM_ACCURACY = 1
STREAM_NOVELTY = 2
STREAM_ACCURACY_HIST = 1 << 20  # + bin index
STREAM_NOVELTY_HIST = 2 << 20  # + bin index

_GH_X, _GH_W = np.polynomial.hermite.hermgauss(QUAD_NODES)
_NODES = (_GH_X * np.sqrt(2.0)).astype(np.float32)
_WEIGHTS = (_GH_W / np.sqrt(np.pi)).astype(np.float32)

# log(k!) - [(k + 1/2) log(k + 1) - (k + 1) + log(2 pi)/2] for k = 0..9 (Stirling tail)
_FC_TABLE = np.array([
    0.0810614667953272, 0.0413406959554092, 0.0276779256849983, 0.02079067210376509,
    0.0166446911898211, 0.0138761288230707, 0.0118967099458917, 0.0104112652619720,
    0.00925546218271273, 0.00833056343336287,
], np.float32)


# ----------------------------------------------------------------------------- binomial
def _stirling_tail(k: Array) -> Array:
    """``log k! - [(k + 1/2) log(k + 1) - (k + 1) + log(2 pi) / 2]`` for float ``k >= 0``."""
    table = jnp.asarray(_FC_TABLE)[jnp.clip(k, 0, 9).astype(jnp.int32)]
    k1 = k + 1.0
    k1sq = k1 * k1
    approx = (1.0 / 12 - (1.0 / 360 - 1.0 / 1260 / k1sq) / k1sq) / k1
    return jnp.where(k <= 9, table, approx)


def _run_lanes(step, consts, carry, active: Array, cap: int):
    """Iterate ``carry = step(consts, carry)`` on every lane where ``active`` until none is.

    ``step(consts, carry) -> (new_carry, still_active)`` works elementwise on pytrees of
    arrays of the lane shape (``active.shape``); ``consts`` are per-lane inputs that never
    change (kept out of the loop carry). While more than ``cap`` lanes are active the step
    runs on all lanes (inactive lanes keep their carry); the last ``<= cap`` active lanes
    are gathered into a buffer and finished there, so a few slow lanes never cost
    full-width iterations. The result of a lane depends only on its own inputs.
    Returns the final carry.
    """
    shape = active.shape
    size = int(np.prod(shape, dtype=np.int64))
    cap = max(1, min(size, cap))

    def masked_step(cst, cr, act):
        new, still = step(cst, cr)
        return jax.tree.map(lambda a, b: jnp.where(act, a, b), new, cr), act & still

    def wide(c):
        return masked_step(consts, *c)

    def narrow(c):
        cr, act = c
        idx = jnp.nonzero(act.ravel(), size=cap, fill_value=size)[0]
        take = jnp.minimum(idx, size - 1)
        cb = jax.tree.map(lambda x: x.ravel()[take], consts)
        rb = jax.tree.map(lambda x: x.ravel()[take], cr)
        rb, _ = jax.lax.while_loop(lambda z: jnp.any(z[1]),
                                   lambda z: masked_step(cb, *z), (rb, idx < size))
        cr = jax.tree.map(
            lambda x, y: x.ravel().at[idx].set(y, mode="drop").reshape(shape), cr, rb)
        act = act.ravel().at[idx].set(False, mode="drop").reshape(shape)
        return cr, act

    def body(c):
        return jax.lax.cond(jnp.sum(c[1], dtype=jnp.int32) > cap, wide, narrow, c)

    return jax.lax.while_loop(lambda c: jnp.any(c[1]), body, (carry, active))[0]


class _InversionConsts(NamedTuple):
    u: Array
    n: Array
    r: Array
    mean: Array


def _inversion_step(c: _InversionConsts, carry):
    i, pmf, cdf = carry  # i: the last value tested
    i1 = i + 1.0
    pmf = pmf * c.r * (c.n - i) / i1
    cdf = cdf + pmf
    spent = (i1 > c.mean) & (pmf <= cdf * jnp.float32(2.0**-26))
    return (i1, pmf, cdf), (c.u > cdf) & (i1 < c.n) & ~spent


def _binomial_inversion(u: Array, n: Array, q: Array, active: Array, cap: int) -> Array:
    """Inversion by sequential search from 0, for lanes with small mean ``n q``.

    Returns the smallest ``k`` with ``u <= F(k)`` (float). A lane stops at ``n`` or once
    the rest of its tail cannot move the float32 CDF any more.
    """
    pmf = jnp.exp(n * jnp.log1p(-q))
    consts = _InversionConsts(u, n, q / (1.0 - q), n * q)
    return _run_lanes(_inversion_step, consts, (jnp.zeros_like(u), pmf, pmf),
                      active & (u > pmf), cap)[0]


class _BtrsConstants(NamedTuple):
    n: Array
    q: Array
    a: Array
    b: Array
    c: Array
    v_r: Array
    alpha: Array
    m: Array
    fc_m: Array


def _btrs_constants(n: Array, q: Array) -> _BtrsConstants:
    spq = jnp.sqrt(n * q * (1.0 - q))
    b = 1.15 + 2.53 * spq
    m = jnp.floor((n + 1.0) * q)
    return _BtrsConstants(
        n, q, -0.0873 + 0.0248 * b + 0.01 * q, b, n * q + 0.5, 0.92 - 4.2 / b,
        (2.83 + 5.1 / b) * spq, m, _stirling_tail(m) + _stirling_tail(n - m),
    )


def _btrs_attempt(cst: _BtrsConstants, w1: Array, w2: Array) -> tuple[Array, Array]:
    """One BTRS proposal from two words; returns ``(k, accepted)``."""
    n, q, m = cst.n, cst.q, cst.m
    u = bits_to_uniform(w1) - 0.5
    v = bits_to_uniform(w2)
    us = 0.5 - jnp.abs(u)
    k = jnp.floor((2.0 * cst.a / us + cst.b) * u + cst.c)
    in_range = (k >= 0.0) & (k <= n)
    squeeze = (us >= 0.07) & (v <= cst.v_r)
    kc = jnp.clip(k, 0.0, n)
    log_v = jnp.log(v * cst.alpha / (cst.a / (us * us) + cst.b))
    # log f(k)/f(m), arranged so that no O(n) terms cancel
    bound = (
        (m + 0.5) * jnp.log1p((m - kc) / (kc + 1.0))
        + (n - m + 0.5) * jnp.log1p((kc - m) / (n - kc + 1.0))
        + (kc - m) * jnp.log1p((q * (n + 2.0) - (kc + 1.0)) / ((1.0 - q) * (kc + 1.0)))
        + cst.fc_m - _stirling_tail(kc) - _stirling_tail(n - kc)
    )
    return kc, in_range & (squeeze | (log_v <= bound))


class _BtrsInputs(NamedTuple):
    k0: Array
    k1: Array
    stream: Array
    cst: _BtrsConstants


def _btrs_step(c: _BtrsInputs, carry):
    rnd, _ = carry
    kn, acc = _btrs_attempt(c.cst, *threefry_block(c.k0, c.k1, c.stream, rnd))
    return (rnd + jnp.uint32(1), kn), ~acc


def _btrs(k0, k1, stream, n, q, active, cap: int) -> Array:
    """Hormann (1993) BTRS transformed rejection for lanes with ``n q >= 10``, ``q <= 1/2``.

    Round ``i`` of a lane reads threefry block ``(stream, i)``.
    """
    shape = jnp.shape(n)
    consts = _BtrsInputs(k0, k1, jnp.broadcast_to(jnp.asarray(stream, jnp.uint32), shape),
                         _btrs_constants(n, q))
    carry = (jnp.zeros(shape, jnp.uint32), jnp.zeros(shape, jnp.float32))
    return _run_lanes(_btrs_step, consts, carry, active, cap)[1]


def binomial(k0: Array, k1: Array, stream, n: Array, p: Array) -> Array:
    """Exact ``Binomial(n, p)`` draws (int32), elementwise over broadcast arrays.

    ``(k0, k1)`` are the key words of each lane (:func:`~llmnas_transfer.sim.dynamics.key_words`)
    and ``stream`` (broadcastable) selects the lane's random stream; round ``i`` of the
    sampler reads threefry block ``(stream, i)``. Means ``n min(p, 1-p)`` below
    :data:`INVERSION_MEAN` use inversion, larger ones BTRS; both loop until every lane has
    its draw, so the result of a lane never depends on the other lanes. Exact up to
    float32 arithmetic.

    Example
    -------
    >>> from llmnas_transfer.sim.dynamics import key_words
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 3))
    >>> binomial(k0, k1, 0, jnp.array([10, 1000, 0]), jnp.array([0.5, 0.3, 0.2])).dtype
    dtype('int32')
    """
    n = jnp.asarray(n, jnp.int32)
    p = jnp.asarray(p, jnp.float32)
    shape = jnp.broadcast_shapes(jnp.shape(k0), jnp.shape(n), jnp.shape(p), jnp.shape(stream))
    k0, k1 = jnp.broadcast_to(k0, shape), jnp.broadcast_to(k1, shape)
    n, p = jnp.broadcast_to(n, shape), jnp.broadcast_to(p, shape)
    nf = n.astype(jnp.float32)
    flip = p > 0.5
    q = jnp.clip(jnp.where(flip, 1.0 - p, p), 0.0, 0.5)
    inv = nf * q < INVERSION_MEAN
    size = int(np.prod(shape, dtype=np.int64))
    cap = max(256, size // 8)
    w1, _ = threefry_block(k0, k1, stream, jnp.uint32(0))
    k_inv = _binomial_inversion(bits_to_uniform(w1), jnp.where(inv, nf, 0.0),
                                jnp.where(inv, q, 0.0), inv, cap)
    k_btrs = jax.lax.cond(  # skip even BTRS's set-up when no lane needs it
        jnp.all(inv), lambda: jnp.zeros(shape, jnp.float32),
        lambda: _btrs(k0, k1, stream, jnp.where(inv, 100.0, nf), jnp.where(inv, 0.5, q),
                      ~inv, cap))
    k = jnp.where(inv, k_inv, k_btrs).astype(jnp.int32)
    return jnp.where(flip, n - k, k)


# ----------------------------------------------------------------------------- histograms
def logit_edges(bins: int) -> np.ndarray:
    """Logit of the edges ``b / bins``, ``b = 0..bins`` (``-inf`` and ``+inf`` at the ends).

    Example
    -------
    >>> logit_edges(2).tolist()
    [-inf, 0.0, inf]
    """
    e = np.arange(0, bins + 1, dtype=np.float64) / bins
    with np.errstate(divide="ignore"):
        return np.log(e / (1.0 - e)).astype(np.float32)


def logitnormal_bin_probs(mu: Array, sigma: Array, bins: int) -> Array:
    """``P(sigmoid(N(mu, sigma^2)) in [b/bins, (b+1)/bins))``, trailing ``bins`` axis.

    Example
    -------
    >>> [round(float(x), 3) for x in logitnormal_bin_probs(jnp.float32(0.0), 1.0, 2)]
    [0.5, 0.5]
    """
    from jax.scipy.special import ndtr

    z = (jnp.asarray(logit_edges(bins)) - jnp.asarray(mu)[..., None]) / sigma
    lo, hi = z[..., :-1], z[..., 1:]
    return jnp.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))


def logitnormal_hist(k0, k1, stream, n: Array, mu: Array, sigma: Array, bins: int,
                     tail_draws: int = TAIL_DRAWS):
    """Exact ``Multinomial(n, pi)`` counts of ``n`` logit-normal draws in ``bins`` bins.

    ``pi_b = P(sigmoid(mu + sigma Z) in [b/bins, (b+1)/bins))``. Sampled by conditional
    binomials in a lane-dependent order that starts at the bin ``c`` holding the median:
    one binomial splits ``n`` into the draws at or above the lower edge of ``c`` and those
    below it; then an upward chain (``c, c+1, ...``: bin ``b`` gets
    ``Binomial(rest, pi_b / P(X >= b/bins))``) and a downward chain (``c-1, c-2, ...``)
    run side by side; each chain stops at its first step with at most ``tail_draws`` draws
    left (per lane, so a lane's counts do not depend on the other lanes of the batch).
    Those last draws are made one by one from the normal truncated to the bins not yet
    visited (inverse CDF) and binned like the per-candidate path bins, which is exact too.

    Streams: ``stream`` (the split), ``stream + 2 + 2 j`` / ``stream + 3 + 2 j`` (up / down
    chain, step ``j``), ``stream + 2 bins + 2`` / ``+ 3`` (the last draws, one block each).
    Returns int32 counts with a trailing bin axis.

    Example
    -------
    >>> from llmnas_transfer.sim.dynamics import key_words
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 2))
    >>> h = logitnormal_hist(k0, k1, 0, jnp.array([50, 7]), jnp.zeros(2), 1.0, 10)
    >>> h.sum(-1).tolist()
    [50, 7]
    """
    from jax.scipy.special import ndtr, ndtri

    n = jnp.asarray(n, jnp.int32)
    mu = jnp.asarray(mu, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    stream = jnp.asarray(stream, jnp.uint32)
    shape = jnp.broadcast_shapes(jnp.shape(k0), n.shape, mu.shape, sigma.shape, stream.shape)
    k0, k1 = jnp.broadcast_to(k0, shape), jnp.broadcast_to(k1, shape)
    n, mu = jnp.broadcast_to(n, shape), jnp.broadcast_to(mu, shape)
    sigma, stream = jnp.broadcast_to(sigma, shape), jnp.broadcast_to(stream, shape)
    edges = jnp.asarray(logit_edges(bins))
    centre = jnp.clip(jnp.floor(jax.nn.sigmoid(mu) * bins), 0, bins - 1).astype(jnp.int32)

    def zedge(b, m, sd):  # standardised logit of edge b (clamped to 0..bins)
        return (edges[jnp.clip(b, 0, bins)] - m) / sd

    rest0 = jnp.stack([n, jnp.zeros_like(n)])  # (2, ...): up chain, down chain
    up = jnp.broadcast_to((jnp.arange(2, dtype=jnp.int32) == 0).reshape(
        (2,) + (1,) * len(shape)), (2,) + shape)
    kk0, kk1 = jnp.stack([k0, k0]), jnp.stack([k1, k1])
    mu2, c2, sig2 = jnp.stack([mu, mu]), jnp.stack([centre, centre]), jnp.stack([sigma, sigma])
    base = jnp.stack([stream, stream]) + (~up).astype(jnp.uint32)
    split_p = ndtr(-zedge(c2, mu2, sig2))  # P(X >= lower edge of the centre bin)

    def cond(c):
        j, rest, _, _ = c
        return (j < 0) | ((j < bins) & jnp.any(rest > tail_draws))

    def body(c):
        # step -1 splits n between the chains (up lane; the down lane holds 0 draws);
        # step j >= 0 draws bin centre + j (up) and centre - 1 - j (down). A chain stops
        # for good at the first step with at most tail_draws draws left, whatever the
        # other lanes do: its numbers never depend on the batch it is drawn in.
        j, rest, counts, steps = c
        done = (j >= 0) & (rest <= tail_draws)  # rest never grows: done stays done
        steps = jnp.where(done, steps, j + 1)
        b = jnp.where(up, c2 + j, c2 - 1 - j)
        lo, hi = zedge(b, mu2, sig2), zedge(b + 1, mu2, sig2)
        # up: pi_b / P(X >= lower edge) = (S(lo) - S(hi)) / S(lo), S(x) = ndtr(-x);
        # down: pi_b / P(X < upper edge) = (F(hi) - F(lo)) / F(hi), F = ndtr
        x1 = jnp.where(up, -lo, hi)
        x2 = jnp.where(up, -hi, lo)
        f1 = ndtr(x1)
        pc = (f1 - ndtr(x2)) / f1
        pc = jnp.where((b < 0) | (b >= bins) | ~jnp.isfinite(pc), 1.0, jnp.clip(pc, 0.0, 1.0))
        pc = jnp.where(j < 0, split_p, pc)
        nb = binomial(kk0, kk1, base + 2 * (j + 1).astype(jnp.uint32), rest, pc)
        nb = jnp.where(done, 0, nb)
        counts = jax.lax.dynamic_update_index_in_dim(counts, nb, j + 1, 0)
        rest = jnp.where(j < 0, jnp.stack([nb[0], rest[0] - nb[0]]), rest - nb)
        return j + 1, rest, counts, steps

    counts = jnp.zeros((bins + 1, 2) + shape, jnp.int32)  # slot 0: the split step
    steps0 = jnp.zeros((2,) + shape, jnp.int32)  # chain steps made, per lane and chain
    _, rest, counts, steps = jax.lax.while_loop(
        cond, body, (jnp.int32(-1), rest0, counts, steps0))
    counts = counts[1:]
    bidx = jnp.broadcast_to(jnp.arange(bins, dtype=jnp.int32).reshape(
        (bins,) + (1,) * len(shape)), (bins,) + shape)
    j_up = jnp.clip(bidx - centre[None], 0, bins - 1)
    j_dn = jnp.clip(centre[None] - 1 - bidx, 0, bins - 1)
    h_up = jnp.take_along_axis(counts[:, 0], j_up, axis=0)
    h_dn = jnp.take_along_axis(counts[:, 1], j_dn, axis=0)
    hist = jnp.where(bidx >= centre[None], h_up, h_dn)

    # the last <= tail_draws draws of each chain, one by one from the normal truncated to
    # the bins the chain has not visited (inverse CDF); draw t of a chain reads the first
    # word of block (stream + 2 bins + 2 + chain, t)
    first = jnp.where(up, c2 + steps, c2 - 1 - steps)  # first bin not visited
    mass = jnp.where(up, ndtr(-zedge(first, mu2, sig2)), ndtr(zedge(first + 1, mu2, sig2)))
    sgn = jnp.where(up, -1.0, 1.0)
    tail_stream = base + jnp.uint32(2 * bins + 2)
    b2idx = jnp.broadcast_to(jnp.arange(bins, dtype=jnp.int32).reshape(
        (bins, 1) + (1,) * len(shape)), (bins, 2) + shape)

    def tail(t, hist2):
        w, _ = threefry_block(kk0, kk1, tail_stream, t.astype(jnp.uint32))
        u = ((w >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-23)  # (0, 1)
        x = mu2 + sgn * sig2 * ndtri(u * mass)
        bt = jnp.clip(jnp.floor(jax.nn.sigmoid(x) * bins).astype(jnp.int32), 0, bins - 1)
        bt = jnp.where(up, jnp.maximum(bt, first), jnp.minimum(bt, first))
        live = t < rest
        return hist2 + ((b2idx == bt[None]) & live[None]).astype(jnp.int32)

    hist2 = jax.lax.fori_loop(0, tail_draws, tail, jnp.zeros((bins, 2) + shape, jnp.int32))
    return jnp.moveaxis(hist + hist2[:, 0] + hist2[:, 1], 0, -1)


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


def logitnormal_sums(k0, k1, stream, n: Array, mu: Array, sigma: Array,
                     exact_terms: int = EXACT_TERMS) -> tuple[Array, Array]:
    """``(sum A_j, sum A_j^2)`` over ``n`` iid ``A_j = sigmoid(mu + sigma Z_j)``.

    The first ``min(n, K)`` terms (``K = exact_terms``) are drawn exactly. The remaining
    ``m = n - K`` terms are replaced by their bivariate normal limit
    ``m (E A, E A^2) + sqrt(m) L (z1, z2)`` with ``L`` the Cholesky factor of
    ``Cov(A, A^2)`` from :func:`logitnormal_moments`. The total is clipped to the feasible
    set ``0 <= S1 <= n``, ``S1^2 / n <= S2 <= S1`` (a many-sigma event for ``m > 0``).
    Stream words (:func:`~llmnas_transfer.sim.dynamics.stream_bits` layout): ``K`` normals for
    the exact terms, then ``z1, z2``.

    Example
    -------
    >>> from llmnas_transfer.sim.dynamics import key_words
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
):
    """Summaries of (trial, iteration) pairs at states ``s`` with candidate key words.

    All arguments broadcast elementwise (``effects`` fields against ``s``). Returns a
    :class:`~llmnas_transfer.sim.candidates.IterationSummary`.

    Example
    -------
    >>> from llmnas_transfer.sim.dynamics import key_words
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = d.effects(["cifar-10"], ["classification"])
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 3))
    >>> out = summarize_pairs(k0, k1, jnp.zeros(3), d.dynamics_params(), e,
    ...                       num_candidates=100, bins=5)
    >>> out.accuracy_hist.shape
    (3, 5)
    """
    from llmnas_transfer.sim.candidates import IterationSummary

    p = jax.nn.sigmoid(validity_logit(s, params, effects.validity_offset))
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
    return IterationSummary(n, sums[0][0], sums[1][0], sums[0][1], sums[1][1], s, p,
                            hist[0], hist[1])


def trial_states(key: PRNGKey, params: DynamicsParams, num_iterations: int):
    """Candidate keys and latent states of one trial: ``(k_cand (T,), s (T,))``.

    Uses the key scheme of :func:`llmnas_transfer.sim.candidates.simulate_trial` and the same
    :func:`~llmnas_transfer.sim.dynamics.transition`, so the states equal the per-candidate
    path's.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> kc, s = trial_states(jax.random.key(0), load_defaults().dynamics_params(), 4)
    >>> s.shape
    (4,)
    """
    state = init_state(jax.random.fold_in(key, 0), params)
    iter_keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(
        jnp.arange(1, num_iterations + 1, dtype=jnp.uint32)
    )
    pairs = jax.vmap(jax.random.split)(iter_keys)

    def body(carry: SimState, ks):
        return transition(ks, carry, params), carry.refinement

    _, states = jax.lax.scan(body, state, pairs[:, 1])
    return pairs[:, 0], states


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
):
    """Summary-path kernel with leaves of shape ``(setting, trial, iteration, ...)``.

    Not jitted itself; :func:`llmnas_transfer.sim.candidates.simulate_chunk` jits it.
    """

    def one_setting(sid):
        skey = jax.random.fold_in(key, sid)
        return jax.vmap(lambda tid: trial_states(jax.random.fold_in(skey, tid), params,
                                                 num_iterations))(trial_ids)

    kc, states = jax.vmap(one_setting)(setting_ids)  # (S, C, T)
    shape = states.shape
    k0, k1 = key_words(kc)
    # one flat lane axis: XLA vectorises along the minor axis, which must not be T (~10)
    eff = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x)[:, None, None], shape).ravel(),
                       effects)
    out = summarize_pairs(k0.ravel(), k1.ravel(), states.ravel(), params, eff,
                          num_candidates=num_candidates, bins=bins)
    return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), out)
