"""Differentiable expected values of the simulator (Gauss-Hermite quadrature).

Because the state is linear-Gaussian, ``s_t ~ N(m_t, v_t)`` exactly
(:func:`llmnas_transfer.sim.dynamics.state_moments`). Expectations of the emissions are
one- or two-dimensional Gaussian integrals, computed here by Gauss-Hermite quadrature.
They are what the calibration fits and what the Monte Carlo tests compare against.

Example
-------
>>> from llmnas_transfer.sim.params import load_defaults
>>> d = load_defaults()
>>> ev = expected(d.dynamics_params(), d.effects(["cifar-10"], ["classification"]), 10)
>>> ev.validity.shape
(1, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llmnas_transfer.sim.dynamics import (
    accuracy_logit,
    novelty_logit,
    state_moments,
    validity_logit,
)
from llmnas_transfer.sim.params import DynamicsParams, SettingEffects
from llmnas_transfer.sim.types import Array

_GH_X, _GH_W = np.polynomial.hermite.hermgauss(40)
# NumPy, not jnp: creating a JAX array at import would start JAX's backend, after which
# the number of CPU devices (one per chain) can no longer be set
_NODES = (_GH_X * np.sqrt(2.0)).astype(np.float32)  # standard-normal nodes
_WEIGHTS = (_GH_W / np.sqrt(np.pi)).astype(np.float32)


class Expected(NamedTuple):
    """Expected values per (setting, iteration).

    validity : E[P(valid)], the expected validity rate.
    accuracy : E[acc | valid] pooled over candidates, i.e. E[p A] / E[p].
    novelty : E[novelty | valid] pooled over candidates.
    """

    validity: Array
    accuracy: Array
    novelty: Array


def gauss_normal_mean(f: Callable[[Array], Array], mean: Array, sd: Array) -> Array:
    """``E[f(X)]`` for ``X ~ N(mean, sd^2)``; ``f`` acts elementwise on a trailing axis.

    Example
    -------
    >>> round(float(gauss_normal_mean(lambda x: x * x, jnp.float32(1.0), jnp.float32(2.0))), 4)
    5.0
    """
    x = mean[..., None] + sd[..., None] * jnp.asarray(_NODES)
    return jnp.sum(jnp.asarray(_WEIGHTS) * f(x), axis=-1)


def logitnormal_mean(mu: Array, sd: Array) -> Array:
    """``E[sigmoid(mu + sd Z)]`` for standard normal ``Z``.

    Example
    -------
    >>> round(float(logitnormal_mean(jnp.float32(0.0), jnp.float32(1.0))), 4)
    0.5
    """
    return gauss_normal_mean(jax.nn.sigmoid, mu, jnp.broadcast_to(sd, jnp.shape(mu)))


def expected(params: DynamicsParams, effects: SettingEffects, num_iterations: int) -> Expected:
    """Expected validity, pooled accuracy and pooled novelty, shape ``(S, T)``.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> ev = expected(d.dynamics_params(), d.effects(["svhn", "imagenet"], ["detection"]), 3)
    >>> ev.accuracy.shape
    (2, 3)
    """
    m, v = state_moments(params, num_iterations)  # (T,)
    nodes, weights = jnp.asarray(_NODES), jnp.asarray(_WEIGHTS)
    s = m[:, None] + jnp.sqrt(v)[:, None] * nodes  # (T, K) state nodes
    vo = effects.validity_offset[:, None, None]
    p = jax.nn.sigmoid(validity_logit(s[None], params, vo))  # (S, T, K)
    a = logitnormal_mean(
        accuracy_logit(s[None], params, effects.accuracy_offset[:, None, None]),
        params.accuracy_noise,
    )
    n = logitnormal_mean(
        novelty_logit(s[None], params, effects.novelty_offset[:, None, None]),
        params.novelty_noise,
    )
    ep = jnp.sum(weights * p, axis=-1)
    epa = jnp.sum(weights * p * a, axis=-1)
    epn = jnp.sum(weights * p * n, axis=-1)
    return Expected(ep, epa / ep, epn / ep)
