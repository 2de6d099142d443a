"""Pure refinement dynamics: initial state, transition, emissions, one step, a trial's scan.

Everything here is a pure function over NamedTuple PyTrees with the key first; keys come
from :mod:`llmnas_transfer.sim.keys`. Every random function works on one trial (scalar
state, scalar key) or on many trials at once (state and keys of a lane shape ``L``; the
candidate axis of the emissions comes first, lanes last, so XLA vectorises along the
trials), with the same draws for each trial either way (accuracy and novelty equal up
to an ulp: see :func:`candidate_noise`). :func:`run_trials` scans
:func:`step` over iterations; the simulator (:mod:`llmnas_transfer.sim.candidates`) and
the scenarios (:mod:`llmnas_transfer.study.scenarios`) run it. The NumPyro model
(:mod:`llmnas_transfer.fit.model`) reuses :func:`transition_mean`, :func:`state_moments`,
:func:`validity_logit`, :func:`accuracy_logit` and :func:`novelty_logit`.

Model (one trial of setting ``s``; ``t = 1..T``)::

    s_1       ~ N(0, init_sd^2)
    c_1       ~ Bernoulli(pi),   pi = enter / (enter + exit)          (collapse regime)
    p_t       = sigmoid(b0 + b_s s_t - delta)   if healthy (c_t = 0)
              = sigmoid(collapse_validity)      if collapsed (c_t = 1)
    q_t       ~ Beta(p_t (1 - rho) / rho, (1 - p_t) (1 - rho) / rho)  (q_t = p_t if rho = 0)
    valid_tj  ~ Bernoulli(q_t)
    acc_tj    = c + (1 - c) sigmoid(alpha + lambda s_t + sigma_a z_tj),   z_tj ~ N(0, 1)
    nov_tj    = sigmoid(nu0 + nu + nu_s s_t + sigma_n z'_tj),             z'_tj ~ N(0, 1)
    s_{t+1}   = s_t + kappa_s (mu_s - s_t)
                + phi_v (v_t - 1/2) + phi_a (a_t - 1/2) + state_noise * e_t,  e_t ~ N(0, 1)
    c_{t+1}   ~ Bernoulli(1 - exit) if c_t = 1, Bernoulli(enter) if c_t = 0

with the setting's rate ``kappa_s = sigmoid(logit kappa + r_s)``, asymptote ``mu_s`` and
chance level ``c`` (``1/num_classes`` for an accuracy, 0 for metrics without one), and the
iteration's feedback: ``v_t`` its valid fraction and ``a_t`` the mean chance-normalised
accuracy ``(acc - c) / (1 - c)`` of its valid candidates (``1/2`` if none is valid).
``r_s = 0``, ``mu_s = 1`` and ``phi_v = phi_a = 0`` give one drift shared by every setting.

Bursts (``enter = collapse_enter``, ``exit = collapse_exit``, ``rho =
validity_dispersion``; off by default: ``enter = 0``, ``rho = 0``). The regime ``c_t`` is
a two-state Markov chain started in its stationary distribution
(:func:`collapse_stationary`) and independent of the state; while collapsed the
generator's validity is ``sigmoid(collapse_validity)`` whatever the state, and accuracy
and novelty of valid candidates stay the functions of ``s_t`` above. The state moves on
as usual: its feedback is whatever the iteration drew, so a collapse also pulls the state
down through ``phi_v``. ``rho`` is the correlation of the validity of candidates of one
iteration: the valid count is beta-binomial, ``Var = N p (1 - p) (1 + (N - 1) rho)``, with
mean ``N p`` unchanged. ``p_valid`` (:class:`Candidates`) reports ``p_t``, the rate given
the state and the regime, not the drawn ``q_t``. Bursts draw from streams of their own
(:data:`~llmnas_transfer.sim.keys.STREAM_REGIME`,
:data:`~llmnas_transfer.sim.keys.STREAM_DISPERSION`), so with them off every number is
that of the model without them.

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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from llmnas_transfer.sim.keys import (
    STREAM_DISPERSION,
    STREAM_REGIME,
    bits_to_normal,
    bits_to_uniform,
    init_key,
    iteration_key,
    key_words,
    normal_per_key,
    split_iteration_key,
    stream_bits,
    stream_key,
    stream_uniform,
)
from llmnas_transfer.sim.params import DynamicsParams, SettingEffects
from llmnas_transfer.sim.types import Array, PRNGKey


class SimState(NamedTuple):
    """Latent refinement state ``s_t`` of one trial (a scalar) or of a lane of trials, and
    its collapse regime ``c_t`` (bool, ``True`` while collapsed; healthy if left out)."""

    refinement: Array
    collapsed: Array = False


class Feedback(NamedTuple):
    """What an iteration shows the generator: its valid fraction and the mean
    chance-normalised accuracy of its valid candidates (``1/2`` if none is valid)."""

    valid_fraction: Array
    accuracy: Array


class Candidates(NamedTuple):
    """Per-candidate draws of one iteration. Accuracy and novelty are NaN if invalid.

    ``valid``, ``accuracy`` and ``novelty`` have shape ``(N,) + L`` (candidate axis
    first); ``p_valid`` and ``state`` have the lane shape ``L`` (``()`` for one trial).
    """

    valid: Array
    accuracy: Array
    novelty: Array
    p_valid: Array
    state: Array


def init_state(key: PRNGKey, params: DynamicsParams) -> SimState:
    """Draw ``s_1 ~ N(0, init_sd^2)`` and the regime ``c_1`` from its stationary
    distribution, one per key (state shape = key shape).

    The regime reads word 0 of stream :data:`~llmnas_transfer.sim.keys.STREAM_REGIME` of
    the key (healthy whenever bursts are off), the state the key's own normal.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> s = init_state(jax.random.key(0), load_defaults().dynamics_params())
    >>> s.refinement.shape, bool(s.collapsed)
    ((), False)
    """
    u = stream_uniform(key, STREAM_REGIME)
    return SimState(params.init_sd * normal_per_key(key), u < collapse_stationary(params))


def next_regime(key: PRNGKey, collapsed: Array, params: DynamicsParams) -> Array:
    """The regime of the next iteration: collapsed ``c_t`` stays collapsed with
    probability ``1 - collapse_exit``, healthy collapses with ``collapse_enter``.

    Reads word 0 of stream :data:`~llmnas_transfer.sim.keys.STREAM_REGIME` of ``key``
    (the iteration's state key); shape of ``key``.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()._replace(collapse_exit=jnp.float32(0.0))
    >>> bool(next_regime(jax.random.key(0), jnp.bool_(True), p))
    True
    """
    u = stream_uniform(key, STREAM_REGIME)
    return jnp.where(collapsed, u >= params.collapse_exit, u < params.collapse_enter)


def regime_validity(p: Array, collapsed: Array | None, params: DynamicsParams) -> Array:
    """P(valid) given the regime: ``sigmoid(collapse_validity)`` while collapsed, else
    ``p`` (exactly ``p`` when ``collapsed`` is ``None`` or false).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()._replace(collapse_validity=jnp.float32(0.0))
    >>> regime_validity(jnp.array([0.9, 0.9]), jnp.array([False, True]), p).tolist()
    [0.8999999761581421, 0.5]
    """
    if collapsed is None:
        return p
    low = jax.nn.sigmoid(jnp.asarray(params.collapse_validity, jnp.float32))
    return jnp.where(collapsed, low, p)


def dispersed_rate(k0: Array, k1: Array, p: Array, params: DynamicsParams) -> Array:
    """The iteration's validity rate ``q ~ Beta(p (1 - rho) / rho, (1 - p) (1 - rho) / rho)``
    (``rho = validity_dispersion``); exactly ``p`` when ``rho = 0``.

    ``(k0, k1)`` are the words of each lane's candidate key
    (:func:`~llmnas_transfer.sim.keys.key_words`); the Beta draw is keyed by
    :func:`~llmnas_transfer.sim.keys.stream_key` on stream
    :data:`~llmnas_transfer.sim.keys.STREAM_DISPERSION`, one ``jax.random.beta`` per lane
    (the same program for one lane as for many, so a lane draws the same ``q`` either
    way). A ``lax.cond`` on ``rho > 0`` skips the draw when dispersion is off.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> k0, k1 = key_words(jax.random.split(jax.random.key(0), 4))
    >>> q = dispersed_rate(k0, k1, jnp.full(4, 0.3), p._replace(validity_dispersion=0.5))
    >>> q.shape, bool(((q >= 0) & (q <= 1)).all())
    ((4,), True)
    >>> bool((dispersed_rate(k0, k1, jnp.full(4, 0.3), p) == 0.3).all())
    True
    """
    rho = jnp.asarray(params.validity_dispersion, jnp.float32)
    shape = jnp.broadcast_shapes(jnp.shape(k0), jnp.shape(p))
    p = jnp.broadcast_to(jnp.asarray(p, jnp.float32), shape)

    def draw(p):
        r = jnp.where(rho > 0, rho, 0.5)  # a safe value where the draw is not used
        tiny = jnp.finfo(jnp.float32).tiny
        scale = (1.0 - r) / r
        a = jnp.maximum(p * scale, tiny).reshape(-1)
        b = jnp.maximum((1.0 - p) * scale, tiny).reshape(-1)
        keys = stream_key(jnp.broadcast_to(k0, shape), jnp.broadcast_to(k1, shape),
                          STREAM_DISPERSION).reshape(-1)
        q = jax.vmap(lambda k, x, y: jax.random.beta(k, x, y, (), jnp.float32))(keys, a, b)
        return q.reshape(shape)

    return jax.lax.cond(rho > 0, draw, lambda p: p, p)


def collapse_stationary(params: DynamicsParams) -> Array:
    """Stationary probability of the collapsed regime,
    ``collapse_enter / (collapse_enter + collapse_exit)`` (0 when bursts are off).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> float(collapse_stationary(p._replace(collapse_enter=0.1, collapse_exit=0.3)))
    0.25
    """
    enter = jnp.asarray(params.collapse_enter, jnp.float32)
    total = enter + jnp.asarray(params.collapse_exit, jnp.float32)
    return jnp.where(enter > 0, enter / jnp.where(enter > 0, total, 1.0), 0.0)


def setting_rate(params: DynamicsParams, effects: SettingEffects | None = None) -> Array:
    """Refinement rate ``kappa_s = sigmoid(logit kappa + r_s)`` (``kappa`` if no effects).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> bool(jnp.isclose(setting_rate(p), p.kappa))
    True
    """
    if effects is None:
        return jnp.asarray(params.kappa)
    return _offset_rate(jnp.asarray(params.kappa), jnp.asarray(effects.rate_offset))


@jax.custom_jvp
def _offset_rate(kappa: Array, r: Array) -> Array:
    # a zero offset keeps kappa's own bits: the shared drift is exactly the special case
    logit_k = jnp.log(kappa) - jnp.log1p(-kappa)
    return jnp.where(r == 0, kappa, jax.nn.sigmoid(logit_k + r))


@_offset_rate.defjvp
def _offset_rate_jvp(primals, tangents):
    # the sigmoid's derivatives everywhere, at r = 0 too (there the plain `where` would
    # give the offset a zero gradient, and a mode search starting at 0 would not move):
    # d/dr = s (1 - s), d/dkappa = s (1 - s) / (kappa (1 - kappa)), which is 1 at r = 0
    kappa, r = primals
    d_kappa, d_r = tangents
    out = _offset_rate(kappa, r)
    slope = out * (1.0 - out)
    per_kappa = jnp.where(r == 0, 1.0, slope / (kappa * (1.0 - kappa)))
    return out, per_kappa * d_kappa + slope * d_r


def feedback_shift(params: DynamicsParams, feedback: Feedback | None) -> Array:
    """``phi_v (v_t - 1/2) + phi_a (a_t - 1/2)``; 0 without feedback.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()._replace(feedback_validity=jnp.float32(2.0))
    >>> float(feedback_shift(p, Feedback(jnp.float32(0.75), jnp.float32(0.5))))
    0.5
    """
    if feedback is None:
        return jnp.float32(0.0)
    return (params.feedback_validity * (feedback.valid_fraction - 0.5)
            + params.feedback_accuracy * (feedback.accuracy - 0.5))


def transition_mean(
    s: Array, params: DynamicsParams, effects: SettingEffects | None = None,
    feedback: Feedback | None = None,
) -> Array:
    """Deterministic part of the transition, ``s + kappa_s (mu_s - s) + feedback shift``.

    Without ``effects`` the rate is ``kappa`` and the asymptote 1 (the shared drift).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> float(transition_mean(jnp.float32(1.0), load_defaults().dynamics_params()))
    1.0
    """
    rate = setting_rate(params, effects)
    target = 1.0 if effects is None else effects.asymptote
    return s + rate * (target - s) + feedback_shift(params, feedback)


def transition(
    key: PRNGKey, state: SimState, params: DynamicsParams,
    effects: SettingEffects | None = None, feedback: Feedback | None = None,
) -> SimState:
    """One noisy state-space transition (one normal per key; key shape = state shape),
    and the regime's step (:func:`next_regime`, from the same key's regime stream).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> transition(jax.random.key(1), SimState(jnp.float32(0.0)), p).refinement.dtype
    dtype('float32')
    """
    eps = normal_per_key(key)
    mean = transition_mean(state.refinement, params, effects, feedback)
    return SimState(mean + params.state_noise * eps,
                    next_regime(key, state.collapsed, params))


def fixed_sum0(x: Array) -> Array:
    """Sum over axis 0 by a fixed pairwise tree of elementwise adds.

    ``jnp.sum`` lets XLA pick the summation order, and its choice can change with the
    number of lanes; this order does not, so per-trial sums (and the feedback built from
    them) are the same bits whatever the chunk size.

    Example
    -------
    >>> float(fixed_sum0(jnp.arange(5.0)))
    10.0
    """
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = jnp.concatenate([x, jnp.zeros_like(x[:1])], 0)
        h = x.shape[0] // 2
        x = x[:h] + x[h:]
    return x[0]


def feedback_from_sums(n_valid: Array, num_candidates: int, accuracy_norm_sum: Array
                       ) -> Feedback:
    """:class:`Feedback` from an iteration's valid count and its sum of chance-normalised
    accuracies over the valid candidates.

    Example
    -------
    >>> fb = feedback_from_sums(jnp.int32(0), 4, jnp.float32(0.0))
    >>> float(fb.valid_fraction), float(fb.accuracy)
    (0.0, 0.5)
    """
    n = jnp.asarray(n_valid, jnp.float32)
    acc = jnp.where(n > 0, accuracy_norm_sum / jnp.maximum(n, 1.0), 0.5)
    return Feedback(n / num_candidates, acc)


def candidate_feedback(c: Candidates, chance: Array) -> Feedback:
    """:class:`Feedback` of one iteration's candidates (candidate axis first).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    >>> c = draw_candidates(jax.random.key(0), jnp.float32(0.5), d.dynamics_params(), e, 8)
    >>> fb = candidate_feedback(c, e.chance)
    >>> 0.0 <= float(fb.valid_fraction) <= 1.0
    True
    """
    chance = jnp.broadcast_to(chance, c.state.shape)
    chance = chance.reshape((1,) + chance.shape)  # candidate axis in front
    norm = jnp.where(c.valid, from_accuracy(c.accuracy, chance), 0.0)
    n = jnp.sum(c.valid, axis=0, dtype=jnp.int32)
    return feedback_from_sums(n, c.valid.shape[0], fixed_sum0(norm))


def validity_logit(s: Array, params: DynamicsParams, validity_offset: Array) -> Array:
    """``b0 + b_s s - delta``.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> bool(validity_logit(1.0, p, 0.0) > validity_logit(0.0, p, 0.0))
    True
    """
    return params.validity_intercept + params.validity_slope * s - validity_offset


def accuracy_logit(s: Array, params: DynamicsParams, accuracy_offset: Array) -> Array:
    """Mean logit of the chance-normalised first-epoch accuracy of a valid candidate,
    ``alpha + lambda s``; the accuracy is ``c + (1 - c) sigmoid(.)`` (:func:`to_accuracy`).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> float(accuracy_logit(0.0, load_defaults().dynamics_params(), -1.0))
    -1.0
    """
    return accuracy_offset + params.accuracy_slope * s


def to_accuracy(normalised: Array, chance: Array) -> Array:
    """Accuracy from chance-normalised accuracy: ``c + (1 - c) x`` (never below ``c``).

    Example
    -------
    >>> float(to_accuracy(jnp.float32(0.0), jnp.float32(0.5)))
    0.5
    """
    return chance + (1.0 - chance) * normalised


def from_accuracy(accuracy: Array, chance: Array) -> Array:
    """Chance-normalised accuracy ``(A - c) / (1 - c)``, the inverse of :func:`to_accuracy`
    (``A - c`` itself when ``c = 1``, a one-class metric with nothing to normalise).

    Example
    -------
    >>> float(from_accuracy(jnp.float32(0.75), jnp.float32(0.5)))
    0.5
    """
    return (accuracy - chance) / jnp.where(chance < 1.0, 1.0 - chance, 1.0)


def novelty_logit(s: Array, params: DynamicsParams, novelty_offset: Array) -> Array:
    """Mean of the logit structural novelty of a valid candidate.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> float(novelty_logit(0.0, p, 0.0)) == float(p.novelty_intercept)
    True
    """
    return params.novelty_intercept + novelty_offset + params.novelty_slope * s


# ----------------------------------------------------------------------------- emissions
def candidate_noise(key: PRNGKey, num_candidates: int) -> tuple[Array, Array]:
    """The raw noise of one iteration's candidates: ``u`` uniform, ``z`` normal.

    ``u`` is stream 0 of the key, ``z[0]`` (accuracy) stream 1 and ``z[1]`` (novelty)
    stream 2 (:func:`~llmnas_transfer.sim.keys.stream_bits`). A candidate is valid if
    ``u < P(valid)``. Shapes: ``u`` ``(N,) + key.shape``, ``z`` ``(2, N) + key.shape``.

    The words are the same whatever the key shape (an integer hash). One key draws its
    three streams as one ``(3, N)`` block, lanes of keys draw them stream by stream: the
    grouping the one-trial and the lane code have always used, which keeps XLA's fusion
    of the float transforms, and so every number of earlier runs, bit for bit (fused
    differently, a transform can land one ulp away).

    Example
    -------
    >>> u, z = candidate_noise(jax.random.key(0), 3)
    >>> u.shape, z.shape
    ((3,), (2, 3))
    """
    k0, k1 = key_words(key)
    if not jnp.ndim(k0):  # one trial: the three streams as one (3, N) block
        w = stream_bits(k0, k1, (0, 1, 2), num_candidates)
        return bits_to_uniform(w[0]), bits_to_normal(w[1:])
    # lanes of trials: stream by stream (the same words; see the docstring)
    u = bits_to_uniform(stream_bits(k0, k1, 0, num_candidates))
    return u, jnp.stack([bits_to_normal(stream_bits(k0, k1, h, num_candidates))
                         for h in (1, 2)])


def draw_candidates(
    key: PRNGKey, s: Array, params: DynamicsParams, effects: SettingEffects,
    num_candidates: int, collapsed: Array | None = None,
) -> Candidates:
    """Draw ``num_candidates`` candidates at state ``s`` (one uniform, two normals each).

    ``key`` and ``s`` have the lane shape ``L`` (``()`` for one trial; ``effects`` fields
    are scalars or of shape ``L``); ``valid``, ``accuracy`` and ``novelty`` have shape
    ``(num_candidates,) + L``. Each lane's draws depend only on its own key and state, so
    a batch of lanes draws what one call per lane draws. The noise comes from
    :func:`candidate_noise`. ``collapsed`` (bool, shape ``L``; healthy if ``None``) is the
    regime: collapsed lanes are valid with probability ``sigmoid(collapse_validity)``
    (:func:`regime_validity`). With ``validity_dispersion > 0`` the lane's rate is first
    drawn around that probability (:func:`dispersed_rate`, from the key's dispersion
    stream); a candidate is valid if its uniform is below the rate.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    >>> c = draw_candidates(jax.random.split(jax.random.key(0), 5), jnp.zeros(5),
    ...                     d.dynamics_params(), e, 3)
    >>> c.valid.shape, c.p_valid.shape
    ((3, 5), (5,))
    """
    u, z = candidate_noise(key, num_candidates)
    s = jnp.asarray(s)

    def lead(x):  # a candidate axis in front of the lane axes (explicit: rank-safe)
        x = jnp.asarray(x)
        return x.reshape((1,) + x.shape)

    p = regime_validity(jax.nn.sigmoid(validity_logit(s, params, effects.validity_offset)),
                        collapsed, params)
    valid = u < lead(dispersed_rate(*key_words(key), p, params))
    acc = to_accuracy(jax.nn.sigmoid(lead(accuracy_logit(s, params, effects.accuracy_offset))
                                     + params.accuracy_noise * z[0]),
                      lead(jnp.broadcast_to(effects.chance, s.shape)))
    nov = jax.nn.sigmoid(lead(novelty_logit(s, params, effects.novelty_offset))
                         + params.novelty_noise * z[1])
    nan = jnp.float32(jnp.nan)
    return Candidates(valid, jnp.where(valid, acc, nan), jnp.where(valid, nov, nan), p, s)


# ----------------------------------------------------------------------------- step, scan
def step(
    key: PRNGKey,
    state: SimState,
    params: DynamicsParams,
    effects: SettingEffects,
    *,
    num_candidates: int,
) -> tuple[SimState, Candidates]:
    """Generate one iteration's candidates from ``state`` (its refinement and regime), then
    transition (with the setting's rate and asymptote and the candidates'
    :class:`Feedback`; the regime steps too).

    ``key`` is the iteration key (:func:`~llmnas_transfer.sim.keys.iteration_key`), split
    into the candidate and the state key by
    :func:`~llmnas_transfer.sim.keys.split_iteration_key`. Returns
    ``(next_state, candidates)`` as :func:`jax.lax.scan` expects. ``key`` and
    ``state.refinement`` share a lane shape (``()`` for one trial, ``(C,)`` for the trials
    of a chunk stepped at once: ``jax.vmap(step)`` over trials with the candidate axis
    kept in front); ``effects`` fields are scalars or of that shape.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    >>> s1, c = step(jax.random.split(jax.random.key(1), 6), SimState(jnp.zeros(6)),
    ...              d.dynamics_params(), e, num_candidates=4)
    >>> s1.refinement.shape, c.valid.shape
    ((6,), (4, 6))
    """
    k_cand, k_state = split_iteration_key(key)
    cands = draw_candidates(k_cand, state.refinement, params, effects, num_candidates,
                            state.collapsed)
    fb = candidate_feedback(cands, effects.chance)
    return transition(k_state, state, params, effects, fb), cands


def run_trials(
    trial_key: PRNGKey,
    params: DynamicsParams,
    effects: SettingEffects,
    *,
    num_iterations: int,
    num_candidates: int,
    reduce: Callable[[Candidates], Any],
    validity_shift: Array | None = None,
) -> Any:
    """Scan :func:`step` over iterations ``1..T`` from the initial state of each trial.

    ``trial_key`` holds one trial key (shape ``()``) or a lane of them (the trials are
    then stepped at once, see :func:`step`); keys follow
    :mod:`llmnas_transfer.sim.keys`. ``reduce(candidates)`` turns each iteration's
    candidates into the per-iteration output; the outputs are stacked on a leading
    iteration axis. ``validity_shift`` (shape ``(T,)``, optional) is added to
    ``effects.validity_offset`` at each iteration (a scenario's ambition drift).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    >>> n = run_trials(jax.random.key(0), d.dynamics_params(), e, num_iterations=3,
    ...                num_candidates=5, reduce=lambda c: c.valid.sum(0))
    >>> n.shape
    (3,)
    """
    state0 = init_state(init_key(trial_key), params)
    t = jnp.arange(1, num_iterations + 1, dtype=jnp.uint32)

    def body(state: SimState, xs):
        t, shift = xs
        eff = effects if shift is None else effects._replace(
            validity_offset=effects.validity_offset + shift)
        nxt, cands = step(iteration_key(trial_key, t), state, params, eff,
                          num_candidates=num_candidates)
        return nxt, reduce(cands)

    _, out = jax.lax.scan(body, state0, (t, validity_shift))
    return out


# ----------------------------------------------------------------------------- moments
#: most steps of a short scan written out in the compiled program (see :func:`scan_unroll`)
MAX_UNROLL = 32


def scan_unroll(length: int) -> int:
    """Steps of a scan over iterations to write out per loop step: all of them up to
    :data:`MAX_UNROLL`. On the CPU a rolled loop pays a fixed cost per step and per
    operation; written out, XLA fuses across steps. One gradient of the fitting model's
    potential (its filter and these moments) took 1.53 and 1.64 times less time on
    ``examples/runs_counts.csv`` (6 iterations) and ``examples/runs_bursty.csv`` (24),
    and compiled 0.7 and 1.5 s longer (``benchmarks/bench_fit.py --gradient-only``).

    Example
    -------
    >>> scan_unroll(5), scan_unroll(100), scan_unroll(0)
    (5, 32, 1)
    """
    return max(1, min(int(length), MAX_UNROLL))


def state_moments(
    params: DynamicsParams, num_iterations: int, effects: SettingEffects | None = None,
    feedback: Feedback | None = None,
) -> tuple[Array, Array]:
    """Exact mean and variance of ``s_t`` for ``t = 1..T``, shape ``effects + (T,)``.

    Without feedback strengths, or given the feedback each iteration showed (fields of
    shape ``(..., T)``; the last column is unused), the state is Gaussian and these are
    its exact moments (conditional on that feedback). For the moments with feedback
    drawn by the model see :func:`llmnas_transfer.sim.expectation.expected_state_moments`.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> m, v = state_moments(load_defaults().dynamics_params(), 3)
    >>> m.shape
    (3,)
    """
    rate = setting_rate(params, effects)
    target = jnp.float32(1.0) if effects is None else jnp.asarray(effects.asymptote)
    if feedback is None:
        shift = jnp.zeros((num_iterations,), jnp.float32)
    else:
        shift = feedback_shift(params, feedback)
    base = jnp.broadcast_shapes(jnp.shape(rate), jnp.shape(target), jnp.shape(shift)[:-1])
    rate, target = jnp.broadcast_to(rate, base), jnp.broadcast_to(target, base)
    shift = jnp.moveaxis(jnp.broadcast_to(shift, base + (num_iterations,)), -1, 0)

    def body(carry, sh):
        m, v = carry
        nxt = (m + rate * (target - m) + sh, (1.0 - rate) ** 2 * v + params.state_noise**2)
        return nxt, carry

    init = (jnp.zeros(base, jnp.float32), params.init_sd**2 + jnp.zeros(base, jnp.float32))
    _, (m, v) = jax.lax.scan(body, init, shift, unroll=scan_unroll(num_iterations))
    return jnp.moveaxis(m, 0, -1), jnp.moveaxis(v, 0, -1)
