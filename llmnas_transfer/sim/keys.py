"""The one key scheme: seeds to keys, the setting/trial/iteration keys, and raw random bits.

Every random draw of the package comes from keys derived here (all with
:func:`jax.random.fold_in`)::

    setting key   = fold_in(key, setting_id(dataset, task))
    trial key     = fold_in(setting key, trial index)
    init key      = fold_in(trial key, 0)                    draws s_1
    iteration key = fold_in(trial key, t),  t = 1..T
    (candidate key, state key) = split(iteration key)        candidates of t, s_t -> s_{t+1}

Bursts (:mod:`llmnas_transfer.sim.dynamics`) read their own streams of these keys
(:func:`stream_uniform`, :func:`stream_key`), counters that no other draw uses::

    regime of t = 1      word 0 of stream STREAM_REGIME of the init key
    regime of t + 1      word 0 of stream STREAM_REGIME of the state key of t
    validity rate of t   Beta draw under stream_key(candidate key of t, STREAM_DISPERSION)

With bursts off these words are read but change nothing, so the numbers of runs without
bursts are those of earlier versions.

A trial's outcome therefore depends only on the seed, the setting's names and the trial
index: adding settings, trials or iterations, or changing the chunk size, never changes
numbers already produced. Every function here works on keys with any leading lane shape
(``()`` for one key); the results are the same whatever the lane shape.

Per-candidate randomness is read from a key as whole threefry2x32 blocks
(:func:`stream_bits`): each block yields two 32-bit words, half the cost of
``jax.random.bits``, which in JAX's default "partitionable" mode spends one block per
word. :func:`bits_to_uniform` and :func:`bits_to_normal` are ``jax.random``'s transforms.

Example
-------
>>> import jax.numpy as jnp
>>> tk = trial_keys(as_key(0), jnp.array([3, 5], "uint32"), jnp.arange(4))
>>> tk.shape
(2, 4)
>>> one = iteration_key(trial_key(setting_key(as_key(0), 5), 2), 1)
>>> bool((jax.random.key_data(iteration_key(tk, 1)[1, 2]) == jax.random.key_data(one)).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim.types import Array, PRNGKey

# ----------------------------------------------------------------------------- keys


def as_key(seed: int | PRNGKey) -> PRNGKey:
    """Turn an integer seed (or a key) into a typed PRNG key.

    Example
    -------
    >>> as_key(7).shape
    ()
    >>> as_key(-1)
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: seed must be a non-negative integer below 2**63, got -1
    """
    if isinstance(seed, (int, np.integer)):
        if seed < 0 or seed >= 2**63:
            raise UserInputError(f"seed must be a non-negative integer below 2**63, got {seed}")
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if isinstance(seed, jax.Array) and seed.dtype == jnp.uint32 and seed.shape == (2,):
        return jax.random.wrap_key_data(seed)
    raise UserInputError(f"seed must be an integer or a jax PRNG key, got {type(seed).__name__}")


def _fold_in(key: PRNGKey, data: int | Array) -> PRNGKey:
    """``jax.random.fold_in`` broadcast over the shapes of ``key`` and ``data``.

    ``data`` is taken as uint32, as ``fold_in`` itself does.
    """
    data = jnp.asarray(data, jnp.uint32)
    shape = jnp.broadcast_shapes(jnp.shape(key), jnp.shape(data))
    if not shape:
        return jax.random.fold_in(key, data)
    flat_key = jnp.broadcast_to(key, shape).reshape(-1)
    flat_data = jnp.broadcast_to(data, shape).reshape(-1)
    return jax.vmap(jax.random.fold_in)(flat_key, flat_data).reshape(shape)


def setting_key(key: PRNGKey, setting_id: int | Array) -> PRNGKey:
    """Key of a setting: ``fold_in(key, setting_id)`` (shape of ``setting_id``).

    ``setting_id`` is :func:`llmnas_transfer.sim.registry.setting_id` of the
    (dataset, task) pair, or an array of them.

    Example
    -------
    >>> setting_key(as_key(0), jnp.array([1, 2], "uint32")).shape
    (2,)
    """
    return _fold_in(key, setting_id)


def trial_key(setting_key: PRNGKey, trial: int | Array) -> PRNGKey:
    """Key of a trial: ``fold_in(setting_key, trial)`` (broadcast shapes).

    Example
    -------
    >>> trial_key(as_key(0), jnp.arange(3)).shape
    (3,)
    """
    return _fold_in(setting_key, trial)


def trial_keys(key: PRNGKey, setting_ids: Array, trial_ids: Array) -> PRNGKey:
    """Trial keys of a chunk: shape ``(setting, trial)`` for 1-d ids.

    Example
    -------
    >>> trial_keys(as_key(0), jnp.array([1, 2, 3], "uint32"), jnp.arange(5)).shape
    (3, 5)
    """
    sk = setting_key(key, jnp.asarray(setting_ids))
    return trial_key(sk[..., None], jnp.asarray(trial_ids)[None])


def init_key(trial_key: PRNGKey) -> PRNGKey:
    """Key of a trial's initial state: ``fold_in(trial_key, 0)``.

    Example
    -------
    >>> init_key(as_key(0)).shape
    ()
    """
    return _fold_in(trial_key, jnp.uint32(0))


def iteration_key(trial_key: PRNGKey, t: int | Array) -> PRNGKey:
    """Key of iteration ``t`` (``1..T``) of a trial: ``fold_in(trial_key, t)``.

    Example
    -------
    >>> iteration_key(jax.random.split(as_key(0), 4), 3).shape
    (4,)
    """
    return _fold_in(trial_key, jnp.asarray(t, jnp.uint32))


def iteration_keys(trial_key: PRNGKey, num_iterations: int) -> PRNGKey:
    """Keys of iterations ``1..T``, iteration axis first: shape ``(T,) + trial_key.shape``.

    Example
    -------
    >>> iteration_keys(as_key(0), 5).shape
    (5,)
    """
    t = jnp.arange(1, num_iterations + 1, dtype=jnp.uint32)
    return iteration_key(trial_key[None], t.reshape(t.shape + (1,) * jnp.ndim(trial_key)))


def split_iteration_key(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """``(candidate key, state key)`` of an iteration key: ``jax.random.split(key)``.

    The candidate key feeds the candidates' noise (or the summary path's samplers), the
    state key the transition to the next state.

    Example
    -------
    >>> k_cand, k_state = split_iteration_key(jax.random.split(as_key(0), 3))
    >>> k_cand.shape, k_state.shape
    ((3,), (3,))
    """
    if not jnp.shape(key):
        pair = jax.random.split(key)
        return pair[0], pair[1]
    pairs = jax.vmap(jax.random.split)(key.reshape(-1))
    return pairs[:, 0].reshape(key.shape), pairs[:, 1].reshape(key.shape)


def normal_per_key(key: PRNGKey) -> Array:
    """One float32 standard normal per key, ``jax.random.normal(k, ())`` (shape of ``key``).

    Example
    -------
    >>> normal_per_key(jax.random.split(as_key(0), 3)).shape
    (3,)
    """
    if not jnp.shape(key):
        return jax.random.normal(key, (), jnp.float32)
    flat = jax.vmap(lambda k: jax.random.normal(k, (), jnp.float32))(key.reshape(-1))
    return flat.reshape(key.shape)


# ----------------------------------------------------------------------------- random bits
# Word ``j`` of stream ``h`` comes from the threefry2x32 block at counter
# ``(hi=h, lo=j mod m)``, ``m = ceil(n / 2)``: the first output word for ``j < m``, the
# second for ``j >= m`` (see :func:`stream_bits`).

_THREEFRY = "threefry2x32"
#: stream (threefry counter ``hi``) of the collapse regime's uniform, read from a trial's
#: init key and from each iteration's state key; no other draw reads it
STREAM_REGIME = 3 << 20
#: stream of each iteration's candidate key whose first block keys the Beta draw of the
#: iteration's validity rate (``validity_dispersion``); no other draw reads it
STREAM_DISPERSION = 4 << 20
_SQRT2 = np.float32(np.sqrt(2.0))
_NORMAL_LO = np.nextafter(np.float32(-1.0), np.float32(0.0))
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


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


def _rotl(x: Array, d: int) -> Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry_block(k0: Array, k1: Array, hi: Array, lo: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds) of the counter ``(hi, lo)`` under the key ``(k0, k1)``.

    The same hash as ``jax.extend.random.threefry2x32_p`` (tested bit for bit), written
    with plain ``jax.numpy`` operations so that XLA fuses it with what consumes its output
    and so that arguments broadcast against each other without being materialised.

    Example
    -------
    >>> x0, x1 = threefry_block(jnp.uint32(0), jnp.uint32(0), jnp.uint32(0), jnp.arange(2))
    >>> x0.shape, x0.dtype
    ((2,), dtype('uint32'))
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


def stream_bits(k0: Array, k1: Array, stream: int | Sequence[int], n: int) -> Array:
    """``n`` uint32 words of stream(s) ``stream`` for each key, word axis before key axes.

    Word ``j`` of stream ``h`` is the first output word of block ``(hi=h, lo=j)`` for
    ``j < m`` and the second output word of block ``(h, j - m)`` otherwise, where
    ``m = ceil(n / 2)``. ``stream`` is an int (result shape ``(n,) + k0.shape``) or a
    1-d sequence of ints (result shape ``(len(stream), n) + k0.shape``). Keys stay on the
    minor axes, so that XLA vectorises along them.

    Example
    -------
    >>> k0, k1 = key_words(jax.random.key(0))
    >>> stream_bits(k0, k1, 0, 5).shape
    (5,)
    >>> stream_bits(k0, k1, [1, 2], 5).shape
    (2, 5)
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 3))
    >>> stream_bits(k0, k1, [1, 2], 5).shape
    (2, 5, 3)
    """
    k0, k1 = jnp.asarray(k0), jnp.asarray(k1)
    lanes = (1,) * k0.ndim
    m = (n + 1) // 2
    lo = jnp.arange(m, dtype=jnp.uint32).reshape((m,) + lanes)
    hi = jnp.asarray(stream, jnp.uint32)
    lead = (1,)
    if hi.ndim:
        hi = hi.reshape(hi.shape + (1,) + lanes)
        lo = lo[None]
        lead = (1, 1)
    b1, b2 = threefry_block(k0.reshape(lead + k0.shape), k1.reshape(lead + k1.shape), hi, lo)
    axis = len(lead) - 1
    return jax.lax.slice_in_dim(jnp.concatenate([b1, b2], axis=axis), 0, n, axis=axis)


def stream_uniform(key: PRNGKey, stream: int) -> Array:
    """One float32 uniform per key: word 0 of stream ``stream`` (shape of ``key``).

    Example
    -------
    >>> u = stream_uniform(jax.random.split(as_key(0), 3), STREAM_REGIME)
    >>> u.shape, bool(((u >= 0) & (u < 1)).all())
    ((3,), True)
    """
    k0, k1 = key_words(key)
    return bits_to_uniform(threefry_block(k0, k1, stream, 0)[0])


def stream_key(k0: Array, k1: Array, stream: int) -> PRNGKey:
    """A threefry key per lane of key words: the block ``(stream, 0)`` of ``(k0, k1)``.

    It keys draws made with ``jax.random`` (e.g. ``jax.random.beta``) inside a stream of
    their own.

    Example
    -------
    >>> k0, k1 = key_words(jax.random.split(as_key(0), 3))
    >>> stream_key(k0, k1, STREAM_DISPERSION).shape
    (3,)
    """
    w0, w1 = threefry_block(k0, k1, stream, 0)
    return jax.random.wrap_key_data(jnp.stack([w0, w1], axis=-1), impl=_THREEFRY)


def bits_to_uniform(bits: Array) -> Array:
    """float32 uniform on [0, 1) from uint32 words (the transform of ``jax.random.uniform``).

    Example
    -------
    >>> float(bits_to_uniform(jnp.uint32(0)))
    0.0
    """
    f = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return f - jnp.float32(1.0)


def bits_to_normal(bits: Array) -> Array:
    """float32 standard normal from uint32 words (the transform of ``jax.random.normal``).

    Example
    -------
    >>> bits_to_normal(jnp.arange(3, dtype=jnp.uint32)).dtype
    dtype('float32')
    """
    u = bits_to_uniform(bits) * (jnp.float32(1.0) - _NORMAL_LO) + _NORMAL_LO
    return _SQRT2 * jax.lax.erf_inv(jnp.maximum(_NORMAL_LO, u))
