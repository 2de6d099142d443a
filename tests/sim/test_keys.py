"""The key scheme and the raw random bits: fold_in chains, lane shapes, threefry, transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim import keys


def _data(k):
    return np.asarray(jax.random.key_data(k))


def _lanes(seed, n):
    return keys.key_words(jax.random.split(jax.random.key(seed), n))


# ----------------------------------------------------------------------------- key scheme
def test_scheme_is_the_documented_fold_in_chain():
    root = keys.as_key(42)
    sid, trial, t = 123456789, 17, 4
    skey = jax.random.fold_in(root, sid)
    tkey = jax.random.fold_in(skey, trial)
    np.testing.assert_array_equal(_data(keys.setting_key(root, jnp.uint32(sid))), _data(skey))
    np.testing.assert_array_equal(_data(keys.trial_key(skey, trial)), _data(tkey))
    np.testing.assert_array_equal(_data(keys.init_key(tkey)),
                                  _data(jax.random.fold_in(tkey, 0)))
    np.testing.assert_array_equal(_data(keys.iteration_key(tkey, t)),
                                  _data(jax.random.fold_in(tkey, t)))
    k_cand, k_state = keys.split_iteration_key(jax.random.fold_in(tkey, t))
    pair = jax.random.split(jax.random.fold_in(tkey, t))
    np.testing.assert_array_equal(_data(k_cand), _data(pair[0]))
    np.testing.assert_array_equal(_data(k_state), _data(pair[1]))


def test_lanes_give_the_keys_of_one_key_at_a_time():
    root = keys.as_key(3)
    sids = jnp.array([5, 2**31 - 1, 77], jnp.uint32)
    tids = jnp.arange(4, dtype=jnp.int32) + 1000
    grid = keys.trial_keys(root, sids, tids)
    assert grid.shape == (3, 4)
    its = keys.iteration_keys(grid, 5)
    assert its.shape == (5, 3, 4)
    kc, ks = keys.split_iteration_key(its)
    normals = keys.normal_per_key(ks)
    for i, sid in enumerate(sids):
        for j, tid in enumerate(tids):
            tkey = keys.trial_key(keys.setting_key(root, sid), tid)
            np.testing.assert_array_equal(_data(grid[i, j]), _data(tkey))
            for t in range(1, 6):
                one = keys.iteration_key(tkey, t)
                np.testing.assert_array_equal(_data(its[t - 1, i, j]), _data(one))
                c1, s1 = keys.split_iteration_key(one)
                np.testing.assert_array_equal(_data(kc[t - 1, i, j]), _data(c1))
                assert float(normals[t - 1, i, j]) == float(keys.normal_per_key(s1))


def test_as_key_accepts_ints_keys_and_raw_words():
    k = keys.as_key(9)
    assert keys.as_key(k) is k
    raw = jax.random.key_data(k)
    np.testing.assert_array_equal(_data(keys.as_key(raw)), _data(k))
    np.testing.assert_array_equal(_data(keys.as_key(np.int64(9))), _data(k))


@pytest.mark.parametrize("seed", [-1, 2**63, "abc", 1.5])
def test_as_key_rejects_bad_seeds(seed):
    with pytest.raises(UserInputError, match="seed"):
        keys.as_key(seed)


# ----------------------------------------------------------------------------- bits
def test_threefry_block_is_jax_threefry():
    k0, k1 = _lanes(0, 9)
    hi = jnp.arange(9, dtype=jnp.uint32) * 7919
    lo = jnp.arange(9, dtype=jnp.uint32) + jnp.uint32(2**31)
    ours = keys.threefry_block(k0, k1, hi, lo)
    ref = threefry2x32_p.bind(k0, k1, hi, lo)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bit_transforms_are_jax_random_transforms():
    key = jax.random.key(11)
    bits = jax.random.bits(key, (4096,), jnp.uint32)
    np.testing.assert_array_equal(keys.bits_to_uniform(bits), jax.random.uniform(key, (4096,)))
    np.testing.assert_array_equal(keys.bits_to_normal(bits), jax.random.normal(key, (4096,)))


@pytest.mark.parametrize("n", [1, 6, 7])
def test_stream_bits_layout_for_one_key_and_for_lanes(n):
    k0, k1 = _lanes(2, 5)
    lanes = np.asarray(keys.stream_bits(k0, k1, (0, 3), n))
    assert lanes.shape == (2, n, 5)
    m = (n + 1) // 2
    for i in range(5):
        one = np.asarray(keys.stream_bits(k0[i], k1[i], 3, n))
        np.testing.assert_array_equal(lanes[1, :, i], one)
        # word j: first word of block (h, j) for j < m, else the second of (h, j - m)
        b1, b2 = threefry2x32_p.bind(*(jnp.broadcast_to(jnp.uint32(x), (m,)) for x in
                                       (k0[i], k1[i], 3)), jnp.arange(m, dtype=jnp.uint32))
        np.testing.assert_array_equal(one, np.concatenate([b1, b2])[:n])


def test_non_threefry_keys_have_key_words():
    k0, k1 = keys.key_words(jax.random.split(jax.random.key(0, impl="rbg"), 3))
    assert k0.shape == (3,) and k0.dtype == jnp.uint32
    assert not np.array_equal(np.asarray(k0), np.asarray(k1))
