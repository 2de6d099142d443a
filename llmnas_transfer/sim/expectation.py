"""Differentiable expected values of the simulator (Gauss-Hermite quadrature).

Without feedback the state is linear-Gaussian, ``s_t ~ N(m_t, v_t)`` exactly
(:func:`llmnas_transfer.sim.dynamics.state_moments`). With feedback the next state depends
on what the iteration drew, and :func:`expected_state_moments` propagates the mean and
variance by Gauss-Hermite quadrature over the state (moment matching: the state is then
taken as Gaussian, an approximation the Monte Carlo tests bound). Expectations of the
emissions are one- or two-dimensional Gaussian integrals, computed here by Gauss-Hermite
quadrature. They are what the calibration fits and what the Monte Carlo tests compare
against.

Bursts (:mod:`llmnas_transfer.sim.dynamics`): a trial starts in the stationary regime
distribution, so every iteration is collapsed with probability
``pi = collapse_stationary(params)``, and without feedback the regime is independent of
the state: the expected validity is exactly ``(1 - pi) E[sigmoid(eta(s_t))] + pi
sigmoid(collapse_validity)``, and the pooled accuracy and novelty weight the two regimes
by their expected valid counts. Dispersion changes no mean. With feedback the regime
enters the state's moments as a mixture (see :func:`expected_state_moments` for what that
leaves out).

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
    collapse_stationary,
    novelty_logit,
    setting_rate,
    validity_logit,
)
from llmnas_transfer.sim.params import DynamicsParams, SettingEffects
from llmnas_transfer.sim.types import Array

_GH_X, _GH_W = np.polynomial.hermite.hermgauss(40)
# NumPy, not jnp: creating a JAX array at import would start JAX's backend, after which
# the number of CPU devices (a sweep's shards) can no longer be set
_NODES = (_GH_X * np.sqrt(2.0)).astype(np.float32)  # standard-normal nodes
_WEIGHTS = (_GH_W / np.sqrt(np.pi)).astype(np.float32)


class Expected(NamedTuple):
    """Expected values per (setting, iteration).

    validity : E[P(valid)], the expected validity rate.
    accuracy : E[acc | valid] pooled over candidates, i.e. E[p A] / E[p]; never below the
        setting's chance level.
    novelty : E[novelty | valid] pooled over candidates.
    accuracy_norm : the pooled chance-normalised accuracy ``(accuracy - c) / (1 - c)``.
    """

    validity: Array
    accuracy: Array
    novelty: Array
    accuracy_norm: Array


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


def _none_valid(p: Array, n: Array, rho: Array) -> Array:
    """P(no valid candidate among ``n``) at rate ``p``: ``(1 - p)^n``, or with dispersion
    ``rho > 0`` the beta-binomial ``B(a, b + n) / B(a, b)``, ``a = p (1 - rho) / rho``,
    ``b = (1 - p) (1 - rho) / rho`` (safe to differentiate on either side)."""
    plain = (1.0 - p) ** n
    r = jnp.where(rho > 0, rho, 0.5)
    scale = (1.0 - r) / r
    q = jnp.clip(p, 1e-7, 1.0 - 1e-7)
    a, b = q * scale, (1.0 - q) * scale
    lg = jax.scipy.special.gammaln
    bb = jnp.exp(lg(b + n) + lg(a + b) - lg(b) - lg(a + b + n))
    return jnp.where(rho > 0, bb, plain)


def _regime_feedback(p, x1, x2, n, rho, phi_v, phi_a):
    """Mean and sampling variance of the feedback shift given the state, in one regime of
    validity rate ``p`` (the valid fraction has variance ``p (1 - p) (1 + (n - 1) rho) / n``:
    beta-binomial)."""
    none = _none_valid(p, n, rho)
    f = phi_v * (p - 0.5) + phi_a * ((1.0 - none) * x1 + none * 0.5 - 0.5)
    over = jnp.where(rho > 0, 1.0 + (n - 1.0) * rho, 1.0)
    sampling = (phi_v**2 * p * (1.0 - p) / n * over + phi_a**2
                * jnp.maximum(x2 - x1 * x1, 0.0) / jnp.maximum(n * p, 1.0))
    return f, sampling


def expected_state_moments(
    params: DynamicsParams, effects: SettingEffects, num_iterations: int,
    num_candidates: int = 20,
) -> tuple[Array, Array]:
    """Mean and variance of ``s_t``, shape ``(S, T)``, with the feedback drawn by the model.

    Given ``s_t = s``, the iteration's valid fraction has mean ``p(s)`` and variance
    ``p (1 - p) / N``; its mean normalised accuracy has mean ``E[x | s]`` (``1/2`` with
    probability ``(1 - p)^N`` that nothing is valid) and variance about
    ``Var[x | s] / (N p)``. The next mean and variance follow by quadrature over
    ``s ~ N(m_t, v_t)``. Without feedback every feedback term is exactly 0 and these are
    the exact moments of :func:`~llmnas_transfer.sim.dynamics.state_moments`.

    Bursts: the feedback's conditional mean is the mixture ``(1 - pi) f_h(s) + pi f_c(s)``
    of the healthy regime's and the collapsed regime's (valid fraction
    ``sigmoid(collapse_validity)`` whatever ``s``), and its conditional variance adds the
    regime's ``pi (1 - pi) (f_h - f_c)^2``; dispersion ``rho`` inflates the valid
    fraction's variance by ``1 + (N - 1) rho`` and sets the chance that nothing is valid
    to the beta-binomial one. Approximate, beyond the Gaussian moment matching: the
    regime is taken as independent of the current state, whereas with feedback a collapse
    at ``t - 1`` both lowers ``s_t`` and (when ``collapse_exit < 1 - collapse_enter``)
    makes a collapse at ``t`` likelier; and the mean accuracy's variance keeps its
    ``1 / (N p)`` form under dispersion.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> m, v = expected_state_moments(d.dynamics_params(), d.effects(["svhn"], None), 4)
    >>> m.shape
    (4, 4)
    """
    nodes, weights = jnp.asarray(_NODES), jnp.asarray(_WEIGHTS)
    rate = setting_rate(params, effects)
    target = jnp.asarray(effects.asymptote)
    base = jnp.shape(effects.validity_offset)
    rate, target = jnp.broadcast_to(rate, base), jnp.broadcast_to(target, base)
    vo, ao = effects.validity_offset[..., None], effects.accuracy_offset[..., None]
    n = jnp.float32(num_candidates)
    phi_v, phi_a = params.feedback_validity, params.feedback_accuracy
    pi = collapse_stationary(params)
    p_low = jax.nn.sigmoid(jnp.asarray(params.collapse_validity, jnp.float32))
    rho = jnp.asarray(params.validity_dispersion, jnp.float32)

    def body(carry, _):
        m, v = carry
        sd = jnp.sqrt(v)
        s = m[..., None] + sd[..., None] * nodes  # (S, K)
        p = jax.nn.sigmoid(validity_logit(s, params, vo))
        mu = accuracy_logit(s, params, ao)
        x1 = logitnormal_mean(mu, params.accuracy_noise)
        x2 = gauss_normal_mean(lambda y: jax.nn.sigmoid(y) ** 2, mu,
                               jnp.broadcast_to(params.accuracy_noise, jnp.shape(mu)))
        f_h, samp_h = _regime_feedback(p, x1, x2, n, rho, phi_v, phi_a)
        f_c, samp_c = _regime_feedback(p_low, x1, x2, n, rho, phi_v, phi_a)
        # exactly the healthy terms when bursts are off (pi = 0)
        f = jnp.where(pi > 0, (1.0 - pi) * f_h + pi * f_c, f_h)
        samp = jnp.where(pi > 0, (1.0 - pi) * samp_h + pi * samp_c
                         + pi * (1.0 - pi) * (f_h - f_c) ** 2, samp_h)
        ef = jnp.sum(weights * f, axis=-1)
        cov = jnp.sum(weights * (s - m[..., None]) * (f - ef[..., None]), axis=-1)
        var_f = jnp.sum(weights * (f - ef[..., None]) ** 2, axis=-1)
        sampling = jnp.sum(weights * samp, axis=-1)
        keep = 1.0 - rate
        nxt = (m + rate * (target - m) + ef,
               keep**2 * v + 2.0 * keep * cov + var_f + sampling + params.state_noise**2)
        return nxt, carry

    init = (jnp.zeros(base, jnp.float32), params.init_sd**2 + jnp.zeros(base, jnp.float32))
    _, (m, v) = jax.lax.scan(body, init, None, length=num_iterations)
    return jnp.moveaxis(m, 0, -1), jnp.moveaxis(v, 0, -1)


def expected(params: DynamicsParams, effects: SettingEffects, num_iterations: int,
             num_candidates: int = 20) -> Expected:
    """Expected validity, pooled accuracy and pooled novelty, shape ``(S, T)``.

    ``num_candidates`` matters only with feedback (the noise of what an iteration shows).
    With bursts the validity is ``(1 - pi) E[p(s_t)] + pi sigmoid(collapse_validity)``
    (``pi``: :func:`~llmnas_transfer.sim.dynamics.collapse_stationary`), and accuracy
    and novelty are pooled over both regimes, each weighted by its expected valid count:
    ``E[acc | valid] = ((1 - pi) E[p A] + pi p_c E[A]) / validity``. Exact without
    feedback (given the quadrature); with feedback the state moments are approximate
    (:func:`expected_state_moments`).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> ev = expected(d.dynamics_params(), d.effects(["svhn", "imagenet"], ["detection"]), 3)
    >>> ev.accuracy.shape
    (2, 3)
    """
    m, v = expected_state_moments(params, effects, num_iterations, num_candidates)  # (S, T)
    nodes, weights = jnp.asarray(_NODES), jnp.asarray(_WEIGHTS)
    s = m[..., None] + jnp.sqrt(v)[..., None] * nodes  # (S, T, K) state nodes
    vo = effects.validity_offset[:, None, None]
    p = jax.nn.sigmoid(validity_logit(s, params, vo))  # (S, T, K)
    a = logitnormal_mean(
        accuracy_logit(s, params, effects.accuracy_offset[:, None, None]),
        params.accuracy_noise,
    )
    n = logitnormal_mean(
        novelty_logit(s, params, effects.novelty_offset[:, None, None]),
        params.novelty_noise,
    )
    ep = jnp.sum(weights * p, axis=-1)
    epa = jnp.sum(weights * p * a, axis=-1)
    epn = jnp.sum(weights * p * n, axis=-1)
    # bursts: collapsed iterations (probability pi) are valid at p_low whatever the state
    pi = collapse_stationary(params)
    p_low = jax.nn.sigmoid(jnp.asarray(params.collapse_validity, jnp.float32))
    ep = jnp.where(pi > 0, (1.0 - pi) * ep + pi * p_low, ep)
    epa = jnp.where(pi > 0, (1.0 - pi) * epa + pi * p_low * jnp.sum(weights * a, axis=-1), epa)
    epn = jnp.where(pi > 0, (1.0 - pi) * epn + pi * p_low * jnp.sum(weights * n, axis=-1), epn)
    norm = epa / ep
    c = jnp.asarray(effects.chance)[..., None]
    return Expected(ep, c + (1.0 - c) * norm, epn / ep, norm)
