"""Pure refinement dynamics: initial state, transition, emissions, one step.

Everything here is a pure function over NamedTuple PyTrees with the key first. The
simulator (:mod:`llmnas_transfer.sim.candidates`) scans :func:`step` over iterations; the
NumPyro model (:mod:`llmnas_transfer.fit.model`) reuses :func:`transition_mean`,
:func:`validity_logit`, :func:`accuracy_logit` and :func:`novelty_logit`.

Model (one trial of one setting; ``t = 1..T``)::

    s_1       ~ N(0, init_sd^2)
    s_{t+1}   = s_t + kappa (1 - s_t) + state_noise * e_t,        e_t ~ N(0, 1)
    valid_tj  ~ Bernoulli(sigmoid(b0 + b_s s_t - delta))
    acc_tj    = sigmoid(alpha + lambda s_t + sigma_a z_tj),       z_tj ~ N(0, 1)
    nov_tj    = sigmoid(nu0 + nu + nu_s s_t + sigma_n z'_tj),     z'_tj ~ N(0, 1)

Example
-------
>>> import jax
>>> from llmnas_transfer.sim.params import load_defaults
>>> d = load_defaults()
>>> p, e = d.dynamics_params(), d.effects(["cifar-10"], ["classification"])
>>> row = jax.tree.map(lambda x: x[0], e)
>>> s0 = init_state(jax.random.key(0), p)
>>> s1, out = step(jax.random.key(1), s0, p, row, num_candidates=4)
>>> out.valid.shape
(4,)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llmnas_transfer.sim.params import DynamicsParams, SettingEffects
from llmnas_transfer.sim.types import Array, PRNGKey


class SimState(NamedTuple):
    """Latent refinement state of one trial (scalar ``s_t``)."""

    refinement: Array


class Candidates(NamedTuple):
    """Per-candidate draws of one iteration. Accuracy and novelty are NaN if invalid."""

    valid: Array
    accuracy: Array
    novelty: Array
    p_valid: Array
    state: Array


def init_state(key: PRNGKey, params: DynamicsParams) -> SimState:
    """Draw ``s_1 ~ N(0, init_sd^2)``."""
    return SimState(params.init_sd * jax.random.normal(key, (), jnp.float32))


def transition_mean(s: Array, params: DynamicsParams) -> Array:
    """Deterministic part of the transition, ``s + kappa (1 - s)``."""
    return s + params.kappa * (1.0 - s)


def transition(key: PRNGKey, state: SimState, params: DynamicsParams) -> SimState:
    """One noisy state-space transition."""
    eps = jax.random.normal(key, (), jnp.float32)
    return SimState(transition_mean(state.refinement, params) + params.state_noise * eps)


def validity_logit(s: Array, params: DynamicsParams, validity_offset: Array) -> Array:
    """``b0 + b_s s - delta``."""
    return params.validity_intercept + params.validity_slope * s - validity_offset


def accuracy_logit(s: Array, params: DynamicsParams, accuracy_offset: Array) -> Array:
    """Mean of the logit first-epoch accuracy of a valid candidate, ``alpha + lambda s``."""
    return accuracy_offset + params.accuracy_slope * s


def novelty_logit(s: Array, params: DynamicsParams, novelty_offset: Array) -> Array:
    """Mean of the logit structural novelty of a valid candidate."""
    return params.novelty_intercept + novelty_offset + params.novelty_slope * s


# ----------------------------------------------------------------------------- random bits
# Per-candidate randomness is drawn from a key as whole threefry2x32 blocks: word ``j`` of
# stream ``h`` comes from the block at counter ``(hi=h, lo=j // 2)`` (first output word for
# the first half of the stream, second output word for the second half; see
# :func:`stream_bits`). Each block yields two 32-bit words, half the cost of
# ``jax.random.bits``, which in JAX's default "partitionable" mode spends one block per word.

_THREEFRY = "threefry2x32"
_SQRT2 = np.float32(np.sqrt(2.0))
_NORMAL_LO = np.nextafter(np.float32(-1.0), np.float32(0.0))


def key_words(key: PRNGKey) -> tuple[Array, Array]:
    """The two uint32 words of a threefry key (leading key axes kept).

    Keys of another implementation are first turned into threefry key words with
    ``jax.random.bits(key, (2,))``, so every key type works.

    Example
    -------
    >>> k0, k1 = key_words(jax.random.key(0))
    >>> k0.dtype
    dtype('uint32')
    """
    impl = jax.random.key_impl(key)
    if getattr(impl, "name", str(impl)) == _THREEFRY or str(impl) == _THREEFRY:
        data = jax.random.key_data(key)
    else:
        data = jax.random.bits(key, (2,), jnp.uint32) if key.ndim == 0 else jax.vmap(
            lambda k: jax.random.bits(k, (2,), jnp.uint32))(key.reshape(-1)).reshape(
            key.shape + (2,))
    return data[..., 0], data[..., 1]


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x: Array, d: int) -> Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry_block(k0: Array, k1: Array, hi: Array, lo: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds) of the counter ``(hi, lo)`` under the key ``(k0, k1)``.

    The same hash as ``jax.extend.random.threefry2x32_p`` (tested bit for bit), written
    with plain ``jax.numpy`` operations so that XLA fuses it with what consumes its output
    and so that arguments broadcast against each other without being materialised.
    """
    k0, k1, hi, lo = (jnp.asarray(a, jnp.uint32) for a in (k0, k1, hi, lo))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = hi + ks[0], lo + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def stream_bits(k0: Array, k1: Array, stream, n: int) -> Array:
    """``n`` uint32 words of stream(s) ``stream`` for each key.

    Word ``j`` of stream ``h`` is the first output word of block ``(hi=h, lo=j)`` for
    ``j < m`` and the second output word of block ``(h, j - m)`` otherwise, where
    ``m = ceil(n / 2)``. ``stream`` is an int (result shape ``k0.shape + (n,)``) or a
    1-d sequence of ints (result shape ``k0.shape + (len(stream), n)``).

    Example
    -------
    >>> k0, k1 = key_words(jax.random.key(0))
    >>> stream_bits(k0, k1, 0, 5).shape
    (5,)
    >>> stream_bits(k0, k1, [1, 2], 5).shape
    (2, 5)
    """
    m = (n + 1) // 2
    lo = jnp.arange(m, dtype=jnp.uint32)
    hi = jnp.asarray(stream, jnp.uint32)
    if hi.ndim:
        hi, lo = hi[:, None], lo[None, :]
    kx = (Ellipsis,) + (None,) * lo.ndim
    b1, b2 = threefry_block(jnp.asarray(k0)[kx], jnp.asarray(k1)[kx], hi, lo)
    return jnp.concatenate([b1, b2], axis=-1)[..., :n]


def bits_to_uniform(bits: Array) -> Array:
    """float32 uniform on [0, 1) from uint32 words (the transform of ``jax.random.uniform``)."""
    f = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return f - jnp.float32(1.0)


def bits_to_normal(bits: Array) -> Array:
    """float32 standard normal from uint32 words (the transform of ``jax.random.normal``)."""
    u = bits_to_uniform(bits) * (jnp.float32(1.0) - _NORMAL_LO) + _NORMAL_LO
    return _SQRT2 * jax.lax.erf_inv(jnp.maximum(_NORMAL_LO, u))


def candidate_noise(key: PRNGKey, num_candidates: int) -> tuple[Array, Array]:
    """The raw noise of one iteration's candidates: ``u`` (N,) uniform, ``z`` (2, N) normal.

    ``u`` is stream 0 of the key, ``z[0]`` (accuracy) stream 1 and ``z[1]`` (novelty)
    stream 2 (:func:`stream_bits`). A candidate is valid if ``u < P(valid)``.

    Example
    -------
    >>> u, z = candidate_noise(jax.random.key(0), 3)
    >>> u.shape, z.shape
    ((3,), (2, 3))
    """
    k0, k1 = key_words(key)
    w = stream_bits(k0, k1, (0, 1, 2), num_candidates)
    return bits_to_uniform(w[..., 0, :]), bits_to_normal(w[..., 1:, :])


def draw_candidates(
    key: PRNGKey, s: Array, params: DynamicsParams, effects: SettingEffects, num_candidates: int
) -> Candidates:
    """Draw ``num_candidates`` candidates at state ``s`` (one uniform, two normals each).

    The noise comes from :func:`candidate_noise`.
    """
    u, z = candidate_noise(key, num_candidates)
    p = jax.nn.sigmoid(validity_logit(s, params, effects.validity_offset))
    valid = u < p
    acc = jax.nn.sigmoid(accuracy_logit(s, params, effects.accuracy_offset)
                         + params.accuracy_noise * z[0])
    nov = jax.nn.sigmoid(novelty_logit(s, params, effects.novelty_offset)
                         + params.novelty_noise * z[1])
    nan = jnp.float32(jnp.nan)
    return Candidates(valid, jnp.where(valid, acc, nan), jnp.where(valid, nov, nan), p, s)


def draw_candidates_many(
    keys: PRNGKey, s: Array, params: DynamicsParams, effects: SettingEffects,
    num_candidates: int,
) -> Candidates:
    """:func:`draw_candidates` for a batch of lanes at once, candidate axis first.

    ``keys`` and ``s`` have shape ``(L,)`` (one candidate key and state per lane; the
    ``effects`` fields are scalars or ``(L,)``). Returns :class:`Candidates` whose
    ``valid``, ``accuracy`` and ``novelty`` have shape ``(num_candidates, L)`` and equal
    ``jax.vmap(draw_candidates)`` transposed. Lanes on the minor axis let XLA vectorise
    the sums over candidates.
    """
    k0, k1 = key_words(keys)
    m = (num_candidates + 1) // 2
    lo = jnp.arange(m, dtype=jnp.uint32)[:, None]

    def words(h):
        b1, b2 = threefry_block(k0[None], k1[None], jnp.uint32(h), lo)
        return jnp.concatenate([b1, b2], axis=0)[:num_candidates]

    u = bits_to_uniform(words(0))
    p = jax.nn.sigmoid(validity_logit(s, params, effects.validity_offset))
    valid = u < p[None]
    acc = jax.nn.sigmoid(accuracy_logit(s, params, effects.accuracy_offset)[None]
                         + params.accuracy_noise * bits_to_normal(words(1)))
    nov = jax.nn.sigmoid(novelty_logit(s, params, effects.novelty_offset)[None]
                         + params.novelty_noise * bits_to_normal(words(2)))
    nan = jnp.float32(jnp.nan)
    return Candidates(valid, jnp.where(valid, acc, nan), jnp.where(valid, nov, nan), p, s)


def step(
    key: PRNGKey,
    state: SimState,
    params: DynamicsParams,
    effects: SettingEffects,
    *,
    num_candidates: int,
) -> tuple[SimState, Candidates]:
    """Generate one iteration's candidates from ``state``, then transition.

    Returns ``(next_state, candidates)`` as :func:`jax.lax.scan` expects. ``effects`` is
    the row of one setting (scalar fields).
    """
    k_cand, k_state = jax.random.split(key)
    cands = draw_candidates(k_cand, state.refinement, params, effects, num_candidates)
    return transition(k_state, state, params), cands


def state_moments(params: DynamicsParams, num_iterations: int) -> tuple[Array, Array]:
    """Exact mean and variance of ``s_t`` for ``t = 1..T`` (the state is Gaussian).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> m, v = state_moments(load_defaults().dynamics_params(), 3)
    >>> m.shape
    (3,)
    """

    def body(carry, _):
        m, v = carry
        rho = 1.0 - params.kappa
        nxt = (m + params.kappa * (1.0 - m), rho**2 * v + params.state_noise**2)
        return nxt, carry

    init = (jnp.zeros_like(params.kappa), params.init_sd**2 + jnp.zeros_like(params.kappa))
    _, (m, v) = jax.lax.scan(body, init, None, length=num_iterations)
    return m, v
