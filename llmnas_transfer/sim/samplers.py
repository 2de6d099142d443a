"""Exact counting samplers: binomial draws and logit-normal histogram (multinomial) counts.

Both are vectorised over lanes with per-lane random streams read as whole threefry blocks
(:func:`~llmnas_transfer.sim.keys.threefry_block`) and loop until every lane has its draw,
so the result of a lane never depends on the other lanes of a batch: chunking, sharding
and batch composition never change a number.

* :func:`binomial` - exact ``Binomial(n, p)``: inversion for small means, Hormann's BTRS
  transformed rejection otherwise.
* :func:`logitnormal_hist` - exact ``Multinomial(n, pi)`` counts of ``n`` logit-normal
  draws in fixed bins on [0, 1], by conditional binomials from the median bin outwards.

Example
-------
>>> import jax
>>> from llmnas_transfer.sim.keys import key_words
>>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 2))
>>> binomial(k0, k1, 0, jnp.array([20, 500]), jnp.array([0.5, 0.1])).shape
(2,)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from llmnas_transfer.sim.keys import bits_to_uniform, threefry_block
from llmnas_transfer.sim.types import Array

#: binomial means below this use inversion, above it BTRS (which needs n q >= 10)
INVERSION_MEAN = 10.0
#: histogram chains finish their last (at most this many) draws one by one
TAIL_DRAWS = 4

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


def binomial(k0: Array, k1: Array, stream: int | Array, n: Array, p: Array) -> Array:
    """Exact ``Binomial(n, p)`` draws (int32), elementwise over broadcast arrays.

    ``(k0, k1)`` are the key words of each lane (:func:`~llmnas_transfer.sim.keys.key_words`)
    and ``stream`` (broadcastable) selects the lane's random stream; round ``i`` of the
    sampler reads threefry block ``(stream, i)``. Means ``n min(p, 1-p)`` below
    :data:`INVERSION_MEAN` use inversion, larger ones BTRS; both loop until every lane has
    its draw, so the result of a lane never depends on the other lanes. Exact up to
    float32 arithmetic.

    Example
    -------
    >>> from llmnas_transfer.sim.keys import key_words
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
    z = (jnp.asarray(logit_edges(bins)) - jnp.asarray(mu)[..., None]) / sigma
    lo, hi = z[..., :-1], z[..., 1:]
    return jnp.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))


def logitnormal_hist(k0: Array, k1: Array, stream: int | Array, n: Array, mu: Array,
                     sigma: Array, bins: int, tail_draws: int = TAIL_DRAWS) -> Array:
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
    >>> from llmnas_transfer.sim.keys import key_words
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 2))
    >>> h = logitnormal_hist(k0, k1, 0, jnp.array([50, 7]), jnp.zeros(2), 1.0, 10)
    >>> h.sum(-1).tolist()
    [50, 7]
    """
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


