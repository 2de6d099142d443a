"""Pure refinement dynamics: initial state, transition, emissions, one step.

Everything here is a pure function over NamedTuple PyTrees with the key first. The
simulator (:mod:`llmnas_transfer.simulate`) scans :func:`step` over iterations; the
NumPyro model (:mod:`llmnas_transfer.model`) reuses :func:`transition_mean`,
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
>>> from llmnas_transfer.params import load_defaults
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

from llmnas_transfer._types import Array, PRNGKey
from llmnas_transfer.params import DynamicsParams, SettingEffects


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


def draw_candidates(
    key: PRNGKey, s: Array, params: DynamicsParams, effects: SettingEffects, num_candidates: int
) -> Candidates:
    """Draw ``num_candidates`` candidates at state ``s`` (one uniform, two normals each)."""
    k_u, k_z = jax.random.split(key)
    u = jax.random.uniform(k_u, (num_candidates,), jnp.float32)
    z = jax.random.normal(k_z, (2, num_candidates), jnp.float32)
    p = jax.nn.sigmoid(validity_logit(s, params, effects.validity_offset))
    valid = u < p
    acc = jax.nn.sigmoid(accuracy_logit(s, params, effects.accuracy_offset)
                         + params.accuracy_noise * z[0])
    nov = jax.nn.sigmoid(novelty_logit(s, params, effects.novelty_offset)
                         + params.novelty_noise * z[1])
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
    >>> from llmnas_transfer.params import load_defaults
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
