"""NumPyro model of observed runs; it reuses :mod:`llmnas_transfer.sim.dynamics`.

The generative model is the simulator's (see :mod:`llmnas_transfer.sim.dynamics`)::

    s_1 ~ N(0, init_sd^2)
    s_{t+1} = s_t + kappa_s (mu_s - s_t) + phi_v (v_t - 1/2) + phi_a (a_t - 1/2)
              + state_noise e_t
    n_valid_t ~ Binomial(n_generated_t, sigmoid(validity_logit(s_t)))
    logit((acc - c) / (1 - c)) ~ N(accuracy_logit(s_t), accuracy_noise^2)   (valid candidates)
    logit nov ~ N(novelty_logit(s_t), novelty_noise^2)                     (valid candidates)

with the hierarchy of :class:`~llmnas_transfer.sim.params.SettingEffects`:
``delta_{d,k} = D_d + C_k + G_{m(d),k} + validity_sd_setting z_validity[d, k]``,
``D_d = features_d . w + tau_D z_d`` (non-centred), ``C_classification = 0``, ``G = 0`` for
images and for classification; the cell's own level (the last term, non-centred, only with
two or more datasets and two or more tasks, under either trend) lets a dataset x task cell
start higher or lower than its dataset and task effects predict,
``alpha_{d,k} = a0 + features_d . w_a + tau_a z'_d + alpha_k`` and
``nu_{d,k} = nu_{m(d)} + nu_k``. ``c`` is the setting's chance level
(:func:`~llmnas_transfer.sim.registry.chance_level`).

**The trend** (``ModelSpec.trend``). Under ``"setting"`` (the default) every setting has
its own refinement rate ``kappa_s = sigmoid(logit kappa + r_{d,k})`` and asymptote
``mu_{d,k}``, partially pooled over datasets and tasks (non-centred)::

    R_{d,k}  = rate_sd_dataset z_rate_dataset[d] + rate_sd_task z_rate_task[k]
               + rate_sd_setting z_rate_setting[d, k]
    A_{d,k}  = asymptote_sd_dataset z_asymptote_dataset[d]
               + asymptote_sd_task z_asymptote_task[k]
               + asymptote_sd_setting z_asymptote_setting[d, k]
    r_{d,k}  = R_{d,k} - mean_obs R,    mu_{d,k} = exp(A_{d,k} - mean_obs A)

(the setting level only with two or more datasets and two or more tasks: it lets one
dataset x task cell gain less than its dataset and task effects predict). The offsets are
centred over the settings with data (``mean_obs``): ``kappa`` is the rate of their
logit-average and the geometric mean of their asymptotes is 1, the unit of the state. A
shift common to all settings would only trade off against ``kappa`` and rescale the state,
which no data can identify.

and the feedback strengths ``phi_v``, ``phi_a`` are free; ``v_t`` and ``a_t`` are the
**observed** feedback of each run and iteration (its valid fraction and the mean
chance-normalised accuracy of its valid candidates, 1/2 when none is valid or the
iteration is unobserved). Under ``"shared"`` ``r = 0``, ``mu = 1`` and ``phi = 0``: one
drift for every setting (the special case).

**The per-trial latent state is marginalised, not sampled.** Given the global parameters
and the observed feedback, the state of one run is a linear-Gaussian Markov chain with
exact moments ``m[n, t]`` (per run: they depend on its feedback) and ``v[s, t]`` (per
setting: they do not), :func:`~llmnas_transfer.sim.dynamics.state_moments`. Each run
gets the grid ``s[n, t, j] = m[n, t] + sqrt(v[s(n), t]) x_j`` with ``x_j`` equally spaced on
``[-width, width]``. Between node ``j`` at ``t`` and node ``j'`` at ``t + 1`` the
transition density is ``N(sqrt(v_{t+1}) x_j' ; (1 - kappa_s) sqrt(v_t) x_j,
state_noise^2)``: it depends on the setting only, so there are ``(S, T - 1, G, G)``
transition matrices (normalised rows), gathered per run. The emission at each node is
the binomial log-pmf of ``n_valid`` plus the logit-normal accuracy and novelty
log-likelihoods from sufficient statistics. All runs are filtered at once inside
``lax.scan``, with per-step rescaling. NUTS then only sees the global parameters.

Example
-------
>>> import jax.numpy as jnp
>>> n, sz, szz, lj = accuracy_stats(jnp.asarray([0.3, 0.4]))
>>> ll = logit_accuracy_loglik(n, jnp.asarray(-0.6), jnp.asarray(0.4), sz, szz, lj)
>>> bool(jnp.isfinite(ll))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints

from llmnas_transfer.sim.dynamics import (
    Feedback,
    accuracy_logit,
    collapse_stationary,
    novelty_logit,
    scan_unroll,
    setting_rate,
    state_moments,
    transition_mean,
    validity_logit,
)
from llmnas_transfer.sim.expectation import expected, logitnormal_mean
from llmnas_transfer.sim.gaps import gap_components, trend_gap
from llmnas_transfer.sim.keys import key_words
from llmnas_transfer.sim.params import FEATURE_NAMES, DynamicsParams, SettingEffects
from llmnas_transfer.sim.samplers import binomial
from llmnas_transfer.sim.types import Array, PRNGKey

_LOG_2PI = math.log(2.0 * math.pi)
#: the trend models (:attr:`ModelSpec.trend`)
TRENDS: tuple[str, ...] = ("setting", "shared")

#: default number of grid points of the marginalised state and the grid half-width (in
#: prior standard deviations of the state at each iteration)
GRID_SIZE = 32
GRID_WIDTH = 5.0


# --------------------------------------------------------------------------- accuracy
def accuracy_stats(accuracy: Array, mask: Array | None = None, eps: float = 1e-4):
    """Sufficient statistics of first-epoch accuracies on the logit scale.

    Returns ``(n, sum_logit, sumsq_logit, sum_log_jacobian)``, summed over the last axis;
    ``mask`` marks the entries that are observed. Accuracies are clipped to
    ``[eps, 1 - eps]`` before the logit.

    Example
    -------
    >>> n, sz, szz, lj = accuracy_stats(jnp.asarray([0.5, 0.5]))
    >>> float(n), float(sz)
    (2.0, 0.0)
    """
    a = jnp.clip(jnp.nan_to_num(accuracy, nan=0.5), eps, 1 - eps)
    m = jnp.ones_like(a) if mask is None else mask.astype(a.dtype)
    z = jnp.log(a) - jnp.log1p(-a)
    logjac = -(jnp.log(a) + jnp.log1p(-a))  # d logit / d acc
    return m.sum(-1), (m * z).sum(-1), (m * z * z).sum(-1), (m * logjac).sum(-1)


def logit_accuracy_loglik(
    n: Array, loc: Array, scale: Array, sum_z: Array, sumsq_z: Array, sum_logjac: Array
) -> Array:
    """Log-likelihood of ``n`` accuracies with ``logit(acc) ~ Normal(loc, scale)``.

    Uses the sufficient statistics from :func:`accuracy_stats`; the Jacobian term makes it
    a density on the accuracy scale. Broadcasts over leading axes.

    Example
    -------
    >>> float(logit_accuracy_loglik(0.0, 0.0, 1.0, 0.0, 0.0, 0.0))
    0.0
    """
    quad = sumsq_z - 2.0 * loc * sum_z + n * loc**2
    return -0.5 * n * (_LOG_2PI + 2.0 * jnp.log(scale)) - 0.5 * quad / scale**2 + sum_logjac


def normal_stats_loglik(stats: NormalStats, loc: Array, scale: Array) -> Array:
    """Log-likelihood of logit-scale observations summarised by :class:`NormalStats`.

    Candidate data (``k == n``) give exactly :func:`logit_accuracy_loglik`; a reported
    mean of ``n`` values without their spread (``k == 1``) gives the density of the mean,
    ``N(zbar ; loc, scale^2 / n)``.

    Example
    -------
    >>> s = NormalStats(*(jnp.asarray(v) for v in (2.0, 2.0, 0.0, 0.5, 1.0)))
    >>> bool(jnp.isclose(normal_stats_loglik(s, 0.0, 1.0),
    ...                  logit_accuracy_loglik(2.0, 0.0, 1.0, 0.0, 0.5, 1.0)))
    True
    """
    quad = stats.sumsq - 2.0 * loc * stats.sum + stats.n * loc**2
    return (
        -0.5 * stats.k * (_LOG_2PI + 2.0 * jnp.log(scale)) - 0.5 * quad / scale**2 + stats.const
    )


# --------------------------------------------------------------------------- data
class NormalStats(NamedTuple):
    """Sufficient statistics of logit-normal observations per (run, iteration).

    ``k`` is the number of Normal terms in the likelihood (``n`` for candidate data, 1
    for a reported mean), ``n`` the number of values behind them, ``sum``/``sumsq`` the
    sum and sum of squares of the logit values (for a mean: ``n zbar`` and ``n zbar^2``),
    and ``const`` the parameter-free part (log-Jacobian of the logit, or ``log(n)/2``).
    """

    k: Array
    n: Array
    sum: Array
    sumsq: Array
    const: Array


class RunsData(NamedTuple):
    """Observed runs, one row per run (a trial of a setting), one column per iteration.

    Unobserved (run, iteration) cells have ``n_generated == 0`` and zero statistics.
    The accuracy statistics are on the logit scale of the chance-normalised accuracy
    ``(acc - c) / (1 - c)``. ``accuracy_feedback`` is the feedback each iteration showed:
    the mean chance-normalised accuracy of its valid candidates, 1/2 where none is valid,
    where the iteration is unobserved or where the data have no accuracies (``None``:
    1/2 everywhere). The valid-fraction feedback is read off the counts.
    """

    dataset_idx: Array  # (run,) int32
    task_idx: Array  # (run,) int32
    n_generated: Array  # (run, iteration) float32
    n_valid: Array  # (run, iteration) float32
    accuracy: NormalStats  # (run, iteration) each
    novelty: NormalStats  # (run, iteration) each
    accuracy_feedback: Array | None = None  # (run, iteration) float32


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the hierarchy: the levels, their attributes, the horizon.

    Attributes
    ----------
    datasets, tasks : level names (every combination is a setting of the model).
    modalities : modality of each dataset.
    features : attribute features of each dataset
        (:data:`~llmnas_transfer.sim.params.FEATURE_NAMES`).
    observed : ``(dataset_index, task_index)`` of the settings with data.
    reference : ``(dataset_index, task_index)`` the gaps are relative to.
    num_iterations : observed iterations ``T`` (the runs' columns).
    num_forecast : extra iterations to forecast ``K``; the horizon is ``T + K``.
    gap_iteration : iteration at which the gaps are defined (default ``T``).
    has_accuracy, has_novelty : whether those observations exist (else their parameters
        are not part of the model).
    grid_size, grid_width : grid of the marginalised state.
    notes : what the preparation changed in the data (not stored, not compared).
    trend : ``"setting"`` (per-setting rate and asymptote, free feedback strengths) or
        ``"shared"`` (one drift for every setting, no feedback).
    chance : chance level of every (dataset, task), ``()`` for 0 everywhere.
    num_candidates : candidates per iteration of a new trial (the setting-level
        expectations with feedback depend on it).
    bursts : whether the model has collapse episodes and overdispersed counts
        (:data:`BURST_SITES`; see :func:`runs_model`).
    """

    datasets: tuple[str, ...]
    tasks: tuple[str, ...]
    modalities: tuple[str, ...]
    features: tuple[tuple[float, ...], ...]
    observed: tuple[tuple[int, int], ...]
    reference: tuple[int, int]
    num_iterations: int
    num_forecast: int = 0
    gap_iteration: int | None = None
    has_accuracy: bool = True
    has_novelty: bool = False
    grid_size: int = GRID_SIZE
    grid_width: float = GRID_WIDTH
    notes: tuple[str, ...] = field(default=(), compare=False)
    trend: str = "setting"
    chance: tuple[tuple[float, ...], ...] = ()
    num_candidates: int = 20
    bursts: bool = False

    def __post_init__(self):
        if self.trend not in TRENDS:
            raise ValueError(f"trend must be one of {', '.join(TRENDS)}, got {self.trend!r}")

    def chance_grid(self) -> np.ndarray:
        """Chance level of every (dataset, task), (D, K) float32."""
        shape = (len(self.datasets), len(self.tasks))
        if not self.chance:
            return np.zeros(shape, np.float32)
        return np.asarray(self.chance, np.float32).reshape(shape)

    @property
    def horizon(self) -> int:
        return self.num_iterations + self.num_forecast

    @property
    def gap_t(self) -> int:
        return self.num_iterations if self.gap_iteration is None else self.gap_iteration

    @property
    def free_tasks(self) -> tuple[int, ...]:
        """Indices of tasks with a free complexity (all but classification)."""
        return tuple(i for i, t in enumerate(self.tasks) if t != "classification")

    @property
    def free_modalities(self) -> tuple[str, ...]:
        """Non-image modalities present (the ones with interaction and novelty effects)."""
        return tuple(m for m in ("audio", "text") if m in self.modalities)

    def coords(self) -> dict[str, list]:
        """Coordinates of every named dim of the model."""
        return {
            "dataset": list(self.datasets),
            "task": list(self.tasks),
            "free_task": [self.tasks[i] for i in self.free_tasks],
            "free_modality": list(self.free_modalities),
            "feature": list(FEATURE_NAMES),
            "horizon": list(range(1, self.horizon + 1)),
            "iteration": list(range(1, self.num_iterations + 1)),
        }

    def to_attrs(self) -> dict:
        """JSON-friendly description (stored in the fit file)."""
        return {
            "datasets": list(self.datasets), "tasks": list(self.tasks),
            "modalities": list(self.modalities), "features": [list(f) for f in self.features],
            "observed": [list(o) for o in self.observed], "reference": list(self.reference),
            "num_iterations": self.num_iterations, "num_forecast": self.num_forecast,
            "gap_iteration": self.gap_t, "has_accuracy": self.has_accuracy,
            "has_novelty": self.has_novelty, "grid_size": self.grid_size,
            "grid_width": self.grid_width, "trend": self.trend,
            "chance": [list(c) for c in self.chance], "num_candidates": self.num_candidates,
            "bursts": self.bursts,
        }

    @classmethod
    def from_attrs(cls, d: dict) -> ModelSpec:
        """Inverse of :meth:`to_attrs`. Fits written before the trend model have the
        shared trend and chance 0 (accuracy on the raw logit scale), those written
        before bursts have none."""
        return cls(
            tuple(d["datasets"]), tuple(d["tasks"]), tuple(d["modalities"]),
            tuple(tuple(float(v) for v in f) for f in d["features"]),
            tuple((int(a), int(b)) for a, b in d["observed"]),
            (int(d["reference"][0]), int(d["reference"][1])),
            int(d["num_iterations"]), int(d["num_forecast"]), int(d["gap_iteration"]),
            bool(d["has_accuracy"]), bool(d["has_novelty"]), int(d["grid_size"]),
            float(d["grid_width"]), (), str(d.get("trend", "shared")),
            tuple(tuple(float(v) for v in c) for c in d.get("chance", ())),
            int(d.get("num_candidates", 20)), bool(d.get("bursts", False)),
        )


# a ModelSpec is static metadata: JAX treats it as a leaf-less PyTree node, so it can be
# passed to jitted functions (and to MCMC with jit_model_args) without being traced
jax.tree_util.register_static(ModelSpec)


# --------------------------------------------------------------------------- priors
#: Priors of the model's sampled sites (logit scales). ``Normal(m, s)`` unless stated.
PRIOR_TEXT: dict[str, str] = {
    "kappa": "Beta(2, 5)",
    "state_noise": "LogNormal(log 0.1, 0.5)",
    "init_sd": "LogNormal(log 0.3, 0.5)",
    "validity_slope": "Normal(1.5, 1)",
    "difficulty_intercept": "Normal(0, 1.5) (the validity intercept b0 is absorbed: b0 = 0); "
                            "integrated out, then drawn from its exact conditional",
    "difficulty_coef": "Normal(0, 1) per feature; integrated out, then drawn from its exact "
                       "conditional",
    "difficulty_sd": "LogNormal(log 0.2, 0.6)",
    "difficulty_observed": "MultivariateNormal(X m0, X diag(s0^2) X^T + difficulty_sd^2 I) "
                           "over the datasets with data (the regression integrated out)",
    "difficulty_regression_z": "Normal(0, 1) per coefficient (intercept first): "
                               "(w0, w) = conditional mean + chol(conditional cov) z",
    "difficulty_z": "Normal(0, 1) per dataset without data (non-centred residual)",
    "task_complexity_free": "Normal(0.5, 1) per non-classification task",
    "interaction_free": "Normal(0, 0.5) per non-image modality x non-classification task",
    "validity_sd_setting": "HalfNormal(0.5) (a dataset x task cell's own validity level "
                           "beyond D_d + C_k + G; only with two or more datasets and tasks)",
    "validity_z_setting": "Normal(0, 1) per dataset x task (non-centred)",
    "accuracy_intercept": "Normal(-1, 1.5); integrated out, then drawn from its conditional",
    "accuracy_coef": "Normal(0, 0.5) per feature; integrated out, then drawn from its "
                     "conditional",
    "accuracy_sd": "LogNormal(log 0.2, 0.6)",
    "accuracy_level_observed": "MultivariateNormal(X m0, X diag(s0^2) X^T + accuracy_sd^2 I) "
                               "over the datasets with data (the regression integrated out)",
    "accuracy_regression_z": "Normal(0, 1) per coefficient, as difficulty_regression_z",
    "accuracy_level_z": "Normal(0, 1) per dataset without data (non-centred residual)",
    "task_accuracy_free": "Normal(0, 0.5) per non-classification task",
    "accuracy_slope": "Normal(0.3, 0.5)",
    "accuracy_noise": "LogNormal(log 0.4, 0.5)",
    "novelty_intercept": "Normal(0, 1.5)",
    "novelty_slope": "Normal(0, 1)",
    "novelty_noise": "LogNormal(log 0.8, 0.5)",
    "novelty_modality_free": "Normal(0, 0.5) per non-image modality",
    "novelty_task_free": "Normal(0, 0.5) per non-classification task",
    "rate_sd_dataset": "HalfNormal(1) (trend 'setting'; logit scale of the rate: an offset "
                       "of -1.2, a rate about 3x smaller, is about one prior sd away)",
    "rate_sd_task": "HalfNormal(1) (trend 'setting')",
    "rate_z_dataset": "Normal(0, 1) per dataset (non-centred rate offset; only with two "
                      "or more datasets; the offsets are centred over the settings "
                      "with data)",
    "rate_z_task": "Normal(0, 1) per task (only with two or more tasks)",
    "asymptote_sd_dataset": "HalfNormal(0.5) (trend 'setting'; log scale of the asymptote: "
                            "log 0.5 = -0.69, a gain about half as big, is within 1.4 prior "
                            "sd)",
    "asymptote_sd_task": "HalfNormal(0.5) (trend 'setting')",
    "asymptote_z_dataset": "Normal(0, 1) per dataset (non-centred log-asymptote offset)",
    "asymptote_z_task": "Normal(0, 1) per task",
    "rate_sd_setting": "HalfNormal(1) (trend 'setting'; a dataset x task cell's own rate "
                       "offset, beyond its dataset and task effects; only with two or more "
                       "datasets and tasks)",
    "rate_z_setting": "Normal(0, 1) per dataset x task (non-centred)",
    "asymptote_sd_setting": "HalfNormal(0.5) (trend 'setting'; the cell's own "
                            "log-asymptote offset)",
    "asymptote_z_setting": "Normal(0, 1) per dataset x task (non-centred)",
    "feedback_validity": "Normal(0, 0.5) (trend 'setting'; 0 under 'shared')",
    "feedback_accuracy": "Normal(0, 0.5) (trend 'setting' with accuracy data; else 0)",
    "collapse_enter": "Beta(1, 9) (bursts; chance per iteration that a healthy run "
                      "collapses, prior mean 0.1)",
    "collapse_exit": "Beta(2, 2) (bursts; chance per iteration that a collapsed run "
                     "recovers: a collapse lasts 1 / collapse_exit iterations on average)",
    "collapse_validity": "Normal(-4, 1.5) (bursts; validity logit while collapsed: "
                         "sigmoid(-4) = 0.018)",
    "validity_dispersion": "Beta(1, 4) (bursts; correlation of the candidates of one "
                           "iteration: the count is beta-binomial, binomial at 0; values "
                           "below 0.001 count as 0.001)",
}

#: Scalar parameters of the dynamics recorded in the posterior.
DYNAMICS_SITES: tuple[str, ...] = (
    "kappa", "state_noise", "init_sd", "validity_slope",
)
ACCURACY_SITES: tuple[str, ...] = ("accuracy_slope", "accuracy_noise")
NOVELTY_SITES: tuple[str, ...] = ("novelty_intercept", "novelty_slope", "novelty_noise")
#: sampled sites of the bursts (:attr:`ModelSpec.bursts`), fields of the same names of
#: :class:`~llmnas_transfer.sim.params.DynamicsParams`
BURST_SITES: tuple[str, ...] = ("collapse_enter", "collapse_exit", "collapse_validity",
                                "validity_dispersion")
#: smallest validity dispersion the likelihood uses (a beta-binomial with concentration
#: 999, within 5% of the binomial's variance at 50 candidates; below it float32 loses
#: the differences of log-gamma terms)
MIN_DISPERSION = 1e-3
#: smallest Beta shape of the beta-binomial log-pmf (see :func:`betabinomial_logpmf`)
MIN_SHAPE = 1e-20

#: event dims of deterministic sites (they are created outside plates)
DETERMINISTIC_DIMS: dict[str, list[str]] = {
    "difficulty_coef": ["feature"],
    "accuracy_coef": ["feature"],
    "difficulty": ["dataset"],
    "accuracy_level": ["dataset"],
    "task_complexity": ["task"],
    "task_accuracy": ["task"],
    "validity_offset": ["dataset", "task"],
    "accuracy_offset": ["dataset", "task"],
    "novelty_offset": ["dataset", "task"],
    "rate_offset": ["dataset", "task"],
    "asymptote": ["dataset", "task"],
    "validity": ["dataset", "task", "horizon"],
    "accuracy": ["dataset", "task", "horizon"],
    "novelty": ["dataset", "task", "horizon"],
    "validity_gap": ["dataset", "task"],
    "accuracy_gap": ["dataset", "task"],
    "raw_accuracy_gap": ["dataset", "task"],
    "combined_gap": ["dataset", "task"],
    "novelty_gap": ["dataset", "task"],
    "trend_gain": ["dataset", "task"],
    "trend_gap": ["dataset", "task"],
}
#: dims of the sampled two-dimensional sites (one event each, see :func:`runs_model`)
MATRIX_DIMS: dict[str, list[str]] = {
    "interaction_free": ["free_modality", "free_task"],
    "validity_z_setting": ["dataset", "task"],
    "rate_z_setting": ["dataset", "task"],
    "asymptote_z_setting": ["dataset", "task"],
}
#: sampled sites of the per-setting trend (:attr:`ModelSpec.trend` ``"setting"``)
TREND_SITES: tuple[str, ...] = (
    "rate_sd_dataset", "rate_sd_task", "asymptote_sd_dataset", "asymptote_sd_task",
    "rate_sd_setting", "asymptote_sd_setting", "feedback_validity", "feedback_accuracy",
)


# --------------------------------------------------------------------------- grid filter
class StateGrid(NamedTuple):
    """Discretised state of each run: nodes ``s`` (T, N, G), row-stochastic transitions of
    each setting ``trans`` (T-1, S, G, G), initial weights ``init`` (G,) and the setting
    row of each run ``rows`` (N,)."""

    s: Array
    trans: Array
    init: Array
    rows: Array


def _per_setting(effects: SettingEffects | None) -> SettingEffects:
    """Effects with every field as a (S,) float32 array (one setting without effects)."""
    if effects is None:
        effects = SettingEffects(0.0, 0.0, 0.0)
    n = math.prod(jnp.shape(effects.validity_offset))
    return SettingEffects(*(jnp.broadcast_to(jnp.reshape(jnp.asarray(f, jnp.float32), (-1,)),
                                             (n,)) for f in effects))


def _run_effects(effects: SettingEffects, data: RunsData, spec: ModelSpec) -> SettingEffects:
    """The effects of each run's setting, (N,) fields."""
    rows = data.dataset_idx * len(spec.tasks) + data.task_idx
    return jax.tree.map(lambda f: f[rows], _per_setting(effects))


def _drawn_feedback(s: Array, count: Array, n: Array, params: DynamicsParams,
                    eff: SettingEffects) -> Feedback:
    """Feedback of drawn counts at state ``s``: the valid fraction, and the expected mean
    chance-normalised accuracy of the valid candidates given ``s`` (1/2 if none)."""
    vf = jnp.where(n > 0, count / jnp.maximum(n, 1.0), 0.5)
    mean_acc = logitnormal_mean(accuracy_logit(s, params, eff.accuracy_offset),
                                params.accuracy_noise)
    return Feedback(vf, jnp.where(count > 0, mean_acc, 0.5))


def _validity_rate(s: Array, collapsed: Array | None, params: DynamicsParams,
                   eff: SettingEffects) -> Array:
    """P(valid) at state ``s``: ``sigmoid(collapse_validity)`` where ``collapsed``."""
    prob = jax.nn.sigmoid(validity_logit(s, params, eff.validity_offset))
    if collapsed is None:
        return prob
    return jnp.where(collapsed, jax.nn.sigmoid(params.collapse_validity), prob)


def _draw_counts(key: PRNGKey, n: Array, prob: Array, params: DynamicsParams,
                 bursts: bool) -> Array:
    """Valid counts of ``n`` candidates at rate ``prob``: binomial, or with ``bursts``
    beta-binomial (the iteration's rate drawn from its Beta first, with its own key)."""
    if bursts:
        c = _concentration(params.validity_dispersion)
        p = jnp.clip(prob, 1e-7, 1.0 - 1e-7)
        prob = jax.random.beta(jax.random.fold_in(key, 1), p * c, (1.0 - p) * c)
    return binomial_counts(key, n, prob)


def _next_regime(key: PRNGKey, collapsed: Array, params: DynamicsParams) -> Array:
    """The regime after ``collapsed`` (bool), one uniform per element."""
    p_collapse = jnp.where(collapsed, 1.0 - params.collapse_exit, params.collapse_enter)
    return jax.random.uniform(key, jnp.shape(collapsed)) < p_collapse


def _simulate_counts(key: PRNGKey, s0: Array, z_next: Array, n_generated: Array,
                     params: DynamicsParams, eff: SettingEffects,
                     collapsed0: Array | None = None) -> Array:
    """Counts of iterations simulated forward from state ``s0``: at each iteration draw
    the counts at the state, then transition with their feedback and the noise
    ``z_next`` (leading axis: iterations; ``n_generated`` likewise). With
    ``collapsed0`` (the regime of the first iteration, bool) the run has bursts: the
    regime moves on as a Markov chain and the counts are beta-binomial."""
    bursts = collapsed0 is not None

    def body(carry, inp):
        s, collapsed = carry
        z, n, t = inp
        k_t = jax.random.fold_in(key, t)
        c = _draw_counts(k_t, n, _validity_rate(s, collapsed, params, eff), params, bursts)
        fb = _drawn_feedback(s, c, n, params, eff)
        s_next = transition_mean(s, params, eff, fb) + params.state_noise * z
        if bursts:
            collapsed = _next_regime(jax.random.fold_in(k_t, 2), collapsed, params)
        return (s_next, collapsed), c

    steps = n_generated.shape[0]
    _, counts = jax.lax.scan(body, (s0, collapsed0), (z_next, n_generated, jnp.arange(steps)))
    return counts


def observed_feedback(data: RunsData, n_valid: Array | None = None) -> Feedback:
    """The feedback each run's iterations showed, (N, T) fields: the valid fraction
    ``n_valid / n_generated`` (1/2 where unobserved) and ``data.accuracy_feedback``
    (1/2 where absent).

    Example
    -------
    >>> z = jnp.zeros((1, 2))
    >>> d = RunsData(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
    ...              jnp.asarray([[10.0, 0.0]]), jnp.asarray([[4.0, 0.0]]),
    ...              NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))
    >>> observed_feedback(d).valid_fraction.tolist()
    [[0.4000000059604645, 0.5]]
    """
    nv = data.n_valid if n_valid is None else n_valid
    ng = data.n_generated
    vf = jnp.where(ng > 0, nv / jnp.maximum(ng, 1.0), 0.5)
    af = (jnp.full_like(vf, 0.5) if data.accuracy_feedback is None
          else jnp.asarray(data.accuracy_feedback, vf.dtype))
    return Feedback(vf, af)


def state_grid(params: DynamicsParams, num_iterations: int, grid_size: int = GRID_SIZE,
               grid_width: float = GRID_WIDTH, *, effects: SettingEffects | None = None,
               rows: Array | None = None, feedback: Feedback | None = None) -> StateGrid:
    """Per-run grids ``m[n, t] + sqrt(v[s(n), t]) x_j`` and the settings' transitions.

    ``effects`` are the settings' effects (S,) (``None``: one setting with the shared
    drift), ``rows`` the setting of each run (N,) (default: one run per setting) and
    ``feedback`` the observed :class:`~llmnas_transfer.sim.dynamics.Feedback` of each run,
    (N, T) fields (``None``: no feedback shift). The means ``m`` depend on the run's
    feedback, the variances ``v`` and the transitions only on the setting.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> g = state_grid(load_defaults().dynamics_params(), 4, 16)
    >>> g.s.shape, g.trans.shape
    ((4, 1, 16), (3, 1, 16, 16))
    """
    x = jnp.linspace(-grid_width, grid_width, grid_size, dtype=jnp.float32)
    eff = _per_setting(effects)
    n_set = eff.validity_offset.shape[0]
    rows = jnp.arange(n_set, dtype=jnp.int32) if rows is None else jnp.asarray(rows)
    _, v = state_moments(params, num_iterations, eff)  # (S, T)
    run_eff = jax.tree.map(lambda f: f[rows], eff)
    m, _ = state_moments(params, num_iterations, run_eff, feedback)  # (N, T)
    sd = jnp.sqrt(v)
    s = m.T[..., None] + sd[rows].T[..., None] * x  # (T, N, G)
    keep = (1.0 - setting_rate(params, eff))[:, None, None, None]  # (S, 1, 1, 1)
    z = (sd[:, 1:, None, None] * x - keep * sd[:, :-1, None, None] * x[:, None]) \
        / params.state_noise  # (S, T-1, G, G): from node j (axis 2) to node j' (axis 3)
    trans = jnp.swapaxes(jax.nn.softmax(-0.5 * z * z, axis=-1), 0, 1)
    init = jax.nn.softmax(-0.5 * x * x)
    return StateGrid(s, trans, init, rows)


def _run_transitions(trans_t: Array, rows: Array) -> Array:
    """(N, G, G) transition matrices of the runs from the settings' (S, G, G)."""
    return trans_t if trans_t.shape[0] == 1 else jnp.take(trans_t, rows, axis=0)


class Regimes(NamedTuple):
    """The healthy (0) / collapsed (1) chain of the bursts: initial probabilities
    ``init`` (2,) and the row-stochastic transition matrix ``trans`` (2, 2)."""

    init: Array
    trans: Array


def burst_regimes(params: DynamicsParams) -> Regimes:
    """The :class:`Regimes` of ``params``: stationary start, ``collapse_enter`` and
    ``collapse_exit`` per iteration.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()._replace(collapse_enter=0.2, collapse_exit=0.6)
    >>> [round(float(v), 2) for v in burst_regimes(p).init]
    [0.75, 0.25]
    """
    enter = jnp.asarray(params.collapse_enter, jnp.float32)
    leave = jnp.asarray(params.collapse_exit, jnp.float32)
    pi = collapse_stationary(params)
    trans = jnp.stack([jnp.stack([1.0 - enter, enter]), jnp.stack([leave, 1.0 - leave])])
    return Regimes(jnp.stack([1.0 - pi, pi]), trans)


def forward_filter(grid: StateGrid, log_em: Array,
                   regimes: Regimes | None = None) -> tuple[Array, Array]:
    """Forward algorithm with per-step rescaling.

    Parameters
    ----------
    grid : :class:`StateGrid` with ``T`` iterations and ``N`` runs.
    log_em : (T, N, G) log emission densities (0 where nothing was observed), or
        (T, N, R, G) with ``regimes``: the emission in each regime.
    regimes : the discrete regime chain (:class:`Regimes`), independent of the state;
        the filter runs on the product of regimes and grid nodes, so the regime is
        marginalised exactly.

    Returns
    -------
    loglik : (N, T) ``log p(y_t | y_{1:t-1})``; its sum over ``t`` is the run's marginal
        log-likelihood.
    filtered : (T, N, G) filtering distributions ``p(s_t = node | y_{1:t})``, or
        (T, N, R, G) joint with the regime.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> g = state_grid(load_defaults().dynamics_params(), 3, 8, rows=jnp.zeros(2, jnp.int32))
    >>> ll, f = forward_filter(g, jnp.zeros((3, 2, 8)))
    >>> bool(jnp.allclose(ll, 0.0, atol=1e-6)), f.shape
    (True, (3, 2, 8))
    """

    axes = (-1,) if regimes is None else (-2, -1)  # what one filtering distribution spans

    def update(pred, e):
        # the result does not depend on the shift, so no gradient flows through it
        mx = jax.lax.stop_gradient(jnp.max(e, axis=axes, keepdims=True))
        w = pred * jnp.exp(e - mx)
        c = jnp.sum(w, axis=axes, keepdims=True)
        return w / c, jnp.reshape(jnp.log(c) + mx, c.shape[:1])

    init = grid.init if regimes is None else regimes.init[:, None] * grid.init
    a1, l1 = update(jnp.broadcast_to(init, log_em.shape[1:]), log_em[0])

    def step(alpha, inp):
        trans, e = inp
        tr = _run_transitions(trans, grid.rows)
        tr = jnp.broadcast_to(tr, alpha.shape[:1] + tr.shape[1:])
        if regimes is None:
            pred = jnp.einsum("ng,ngh->nh", alpha, tr)
        else:  # the state moves alike in both regimes, then the regime switches
            pred = jnp.einsum("rq,nrh->nqh", regimes.trans,
                              jnp.einsum("nrg,ngh->nrh", alpha, tr))
        alpha, ll = update(pred + 1e-30, e)  # the floor keeps far outliers finite
        return alpha, (alpha, ll)

    _, (alphas, lls) = jax.lax.scan(step, a1, (grid.trans, log_em[1:]),
                                    unroll=scan_unroll(log_em.shape[0] - 1))
    filtered = jnp.concatenate([a1[None], alphas], axis=0)
    loglik = jnp.concatenate([l1[None], lls], axis=0)
    return loglik.T, filtered


def _concentration(rho: Array) -> Array:
    """Beta concentration ``(1 - rho) / rho`` of a dispersion clipped to
    ``[MIN_DISPERSION, 1 - 1e-6]``."""
    rho = jnp.clip(rho, MIN_DISPERSION, 1.0 - 1e-6)
    return (1.0 - rho) / rho


def _betabinomial_parts(k: Array, n: Array, logit_p: Array, c: Array) -> tuple[Array, Array]:
    """The beta-binomial log-pmf as (the part that depends on the rate, the rest), so the
    rest is evaluated once per count when the rate varies over grid nodes.

    The rate comes as its logit: the Beta's shapes are ``c sigmoid(logit_p)`` and
    ``c sigmoid(-logit_p)``, each accurate where the other rounds to ``c`` in float32, and
    floored at :data:`MIN_SHAPE` (far grid nodes of a steep validity slope have rates
    that round to 0 or 1, where ``gammaln(0)`` would make the log-pmf and its gradient
    NaN)."""
    a = jnp.maximum(c * jax.nn.sigmoid(logit_p), MIN_SHAPE)
    b = jnp.maximum(c * jax.nn.sigmoid(-logit_p), MIN_SHAPE)
    node = gammaln(k + a) - gammaln(a) + gammaln(n - k + b) - gammaln(b)
    rest = (gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)
            + gammaln(c) - gammaln(n + c))
    return node, rest


def betabinomial_logpmf(k: Array, n: Array, p: Array, rho: Array) -> Array:
    """``log BetaBinomial(k | n, p c, (1 - p) c)`` with ``c = (1 - rho) / rho``: ``n``
    candidates whose validity rate is drawn from a Beta of mean ``p`` and intra-class
    correlation ``rho`` (clipped to ``[MIN_DISPERSION, 1 - 1e-6]``).

    Example
    -------
    >>> from jax.scipy.stats import binom
    >>> lp = betabinomial_logpmf(3.0, 10.0, 0.4, MIN_DISPERSION)
    >>> bool(abs(lp - binom.logpmf(3, 10, 0.4)) < 0.02)
    True
    """
    p = jnp.asarray(p, jnp.float32)
    node, rest = _betabinomial_parts(k, n, jnp.log(p) - jnp.log1p(-p), _concentration(rho))
    return node + rest


def emission_loglik(
    s: Array, params: DynamicsParams, effects: SettingEffects, rows: Array, data: RunsData,
    *, n_valid: Array | None = None, use_accuracy: bool = True, use_novelty: bool = False,
    bursts: bool = False,
) -> tuple[Array, Array]:
    """Log emission densities on the runs' grids, split into a state-dependent and a
    constant part.

    ``s`` is the (T, N, G) grid of the runs (:attr:`StateGrid.s`), ``effects`` the
    per-setting offsets (S,) and ``rows`` the setting of each run (N,). The emission of
    run ``n`` at iteration ``t`` and node ``j`` is ``log_em[t, n, j] + const[n, t]``.

    Only the log-sigmoid of the validity logit is evaluated node by node. Everything else
    is a quadratic in the state with per-(run, iteration) coefficients, because the
    validity logit and the accuracy and novelty means are linear in ``s`` (their
    intercepts and slopes are read off the :mod:`~llmnas_transfer.sim.dynamics` functions
    at ``s = 0`` and ``s = 1``).

    With ``bursts`` the validity count is beta-binomial
    (:func:`betabinomial_logpmf`, dispersion ``params.validity_dispersion``) node by node,
    and ``log_em`` has a regime axis: healthy (the state's validity rate) and collapsed
    (``sigmoid(collapse_validity)`` at every node).

    Returns
    -------
    log_em : (T, N, G), or (T, N, 2, G) with ``bursts``
    const : (N, T)
    """
    nv = data.n_valid if n_valid is None else n_valid
    ng = data.n_generated
    # validity: nv log p + (ng - nv) log(1 - p) = ng log p - (ng - nv) eta
    delta = jnp.reshape(effects.validity_offset, (-1,))[rows]
    eta = validity_logit(s, params, delta[None, :, None])  # (T, N, G)
    log_p = -jax.nn.softplus(-eta)
    eta0 = validity_logit(0.0, params, delta)  # (N,) intercepts
    eta_slope = validity_logit(1.0, params, 0.0) - validity_logit(0.0, params, 0.0)
    if bursts:  # the validity part is evaluated node by node below
        lin = jnp.zeros_like(ng)
        const = jnp.zeros_like(ng)
    else:
        lin = -(ng - nv) * eta_slope  # coefficient of s, (N, T)
        const = gammaln(ng + 1.0) - gammaln(nv + 1.0) - gammaln(ng - nv + 1.0) \
            - (ng - nv) * eta0[:, None]
    quad = jnp.zeros_like(lin)  # coefficient of s^2

    def normal_part(st: NormalStats, mean_fn, offset, scale):
        # sum over values of log N(z; c + m s, scale^2) = fixed + lin * s + quad * s^2
        c = mean_fn(0.0, params, jnp.reshape(offset, (-1,)))[rows][:, None]
        m = mean_fn(1.0, params, 0.0) - mean_fn(0.0, params, 0.0)
        inv = 1.0 / scale**2
        fixed = (-0.5 * st.k * (_LOG_2PI + 2.0 * jnp.log(scale))
                 - 0.5 * inv * (st.sumsq - 2.0 * c * st.sum + st.n * c**2) + st.const)
        return fixed, inv * m * (st.sum - st.n * c), -0.5 * inv * st.n * m**2

    if use_accuracy:
        f, a, b = normal_part(data.accuracy, accuracy_logit, effects.accuracy_offset,
                              params.accuracy_noise)
        const, lin, quad = const + f, lin + a, quad + b
    if use_novelty:
        f, a, b = normal_part(data.novelty, novelty_logit, effects.novelty_offset,
                              params.novelty_noise)
        const, lin, quad = const + f, lin + a, quad + b
    if not bursts:
        log_em = ng.T[..., None] * log_p + lin.T[..., None] * s + quad.T[..., None] * s * s
        return log_em, const
    rest = lin.T[..., None] * s + quad.T[..., None] * s * s  # accuracy and novelty
    c = _concentration(params.validity_dispersion)
    k, n = nv.T, ng.T  # (T, N)
    healthy, common = _betabinomial_parts(k[..., None], n[..., None], eta, c)
    collapsed, _ = _betabinomial_parts(k, n, params.collapse_validity, c)
    const = const + common[..., 0].T
    return jnp.stack([healthy + rest, collapsed[..., None] + rest], axis=-2), const


def run_grid(params: DynamicsParams, effects: SettingEffects, data: RunsData,
             spec: ModelSpec, n_valid: Array | None = None,
             num_iterations: int | None = None) -> StateGrid:
    """The :class:`StateGrid` of the runs in ``data`` given their observed feedback."""
    rows = data.dataset_idx * len(spec.tasks) + data.task_idx
    fb = observed_feedback(data, n_valid)
    return state_grid(params, num_iterations or spec.num_iterations, spec.grid_size,
                      spec.grid_width, effects=effects, rows=rows, feedback=fb)


@partial(jax.jit, static_argnames=("spec",))
def runs_loglik(
    params: DynamicsParams, effects: SettingEffects, data: RunsData, spec: ModelSpec,
    n_valid: Array | None = None,
) -> Array:
    """Marginal log-likelihood contributions ``log p(y_t | y_{1:t-1})`` of each run, (N, T).

    ``effects`` are the full-grid setting effects (dataset-major, ``D*K`` rows). The
    valid-fraction feedback is taken from ``n_valid`` (default ``data.n_valid``).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> spec = ModelSpec(("cifar-10",), ("classification",), ("image",), ((0.,) * 4,),
    ...                  ((0, 0),), (0, 0), 2, has_accuracy=False)
    >>> z = jnp.zeros((1, 2))
    >>> data = RunsData(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), z + 10, z + 6,
    ...                 NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))
    >>> runs_loglik(d.dynamics_params(), d.effects(["cifar-10"], ["classification"]),
    ...             data, spec).shape
    (1, 2)
    """
    grid = run_grid(params, effects, data, spec, n_valid)
    log_em, const = emission_loglik(
        grid.s, params, effects, grid.rows, data, n_valid=n_valid,
        use_accuracy=spec.has_accuracy, use_novelty=spec.has_novelty, bursts=spec.bursts,
    )
    ll, _ = forward_filter(grid, log_em, burst_regimes(params) if spec.bursts else None)
    return ll + const


def binomial_counts(key: PRNGKey, n: Array, p: Array) -> Array:
    """Exact ``Binomial(n, p)`` draws as float32, one random stream per element.

    Uses the library's sampler (:func:`llmnas_transfer.sim.summary.binomial`: inversion or
    BTRS), about 5x faster on CPU than ``jax.random.binomial`` for the counts of the
    predictive checks and forecasts.

    Example
    -------
    >>> k = binomial_counts(jax.random.key(0), jnp.full((2, 3), 20.0), jnp.full((2, 3), 0.4))
    >>> k.shape, k.dtype, bool(((k >= 0) & (k <= 20)).all())
    ((2, 3), dtype('float32'), True)
    """
    shape = jnp.broadcast_shapes(jnp.shape(n), jnp.shape(p))
    k0, k1 = key_words(key)
    stream = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    return binomial(k0, k1, stream, jnp.broadcast_to(n, shape),
                    jnp.broadcast_to(p, shape)).astype(jnp.float32)


class MarginalRuns(dist.Distribution):
    """Validity counts of runs with the latent state marginalised (batch shape (N, T)).

    ``log_prob`` is the forward-algorithm decomposition ``log p(y_t | y_{1:t-1})`` (it
    also accounts for the accuracy and novelty statistics carried in ``data``);
    ``sample`` draws fresh states from the dynamics and binomial counts, iteration by
    iteration with the feedback of the drawn counts (the accuracy feedback is its
    expectation given the state), for prior and posterior predictive checks.
    """

    support = constraints.nonnegative_integer
    pytree_data_fields = ("params", "effects", "data")
    pytree_aux_fields = ("spec",)

    def __init__(self, params: DynamicsParams, effects: SettingEffects, data: RunsData,
                 spec: ModelSpec, *, validate_args=None):
        self.params, self.effects, self.data, self.spec = params, effects, data, spec
        super().__init__(batch_shape=jnp.shape(data.n_generated), event_shape=(),
                         validate_args=validate_args)

    def log_prob(self, value):
        return runs_loglik(self.params, self.effects, self.data, self.spec, n_valid=value)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        k_s, k_b = jax.random.split(key)
        z = jnp.moveaxis(jax.random.normal(k_s, shape, jnp.float32), -1, 0)  # (T, ..., N)
        p = self.params
        eff = _run_effects(self.effects, self.data, self.spec)
        ng = jnp.moveaxis(jnp.broadcast_to(self.data.n_generated, shape), -1, 0)
        z_next = jnp.concatenate([z[1:], jnp.zeros_like(z[:1])], axis=0)
        collapsed0 = None
        if self.spec.bursts:  # the regime of the first iteration, from the stationary start
            collapsed0 = jax.random.uniform(jax.random.fold_in(k_s, 1), z.shape[1:]) \
                < collapse_stationary(p)
        counts = _simulate_counts(k_b, p.init_sd * z[0], z_next, ng, p, eff, collapsed0)
        return jnp.moveaxis(counts, 0, -1)


# --------------------------------------------------------------------------- model
def _features(spec: ModelSpec) -> Array:
    return jnp.asarray(np.asarray(spec.features, np.float32).reshape(len(spec.datasets), -1))


def _scatter(n: int, idx: tuple[int, ...], values: Array | None) -> Array:
    out = jnp.zeros((n,), jnp.float32)
    if idx and values is not None:
        out = out.at[jnp.asarray(idx)].set(values)
    return out


def observed_datasets(spec: ModelSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Indices of datasets with data in some setting, and of those without."""
    seen = sorted({d for d, _ in spec.observed})
    return tuple(seen), tuple(i for i in range(len(spec.datasets)) if i not in seen)


class LevelPrior(NamedTuple):
    """Prior of a dataset-level effect ``L_d = x_d . beta + tau eps_d`` (``x_d = (1,
    features_d)``, ``beta ~ N(mean, diag(sd^2))``, ``eps_d ~ N(0, 1)``)."""

    mean: Array  # (P,) prior means of (intercept, coefficients)
    sd: Array  # (P,) prior standard deviations


#: priors of the two attribute regressions (intercept first, then one per feature)
#: (NumPy arrays: no JAX backend is started on import)
DIFFICULTY_PRIOR = LevelPrior(np.asarray([0.0, 0, 0, 0, 0], np.float32),
                              np.asarray([1.5, 1, 1, 1, 1], np.float32))
ACCURACY_PRIOR = LevelPrior(np.asarray([-1.0, 0, 0, 0, 0], np.float32),
                            np.asarray([1.5, 0.5, 0.5, 0.5, 0.5], np.float32))


def _design(spec: ModelSpec) -> Array:
    """(D, P) design matrix of the dataset levels: a column of ones, then the features."""
    return jnp.concatenate([jnp.ones((len(spec.datasets), 1), jnp.float32), _features(spec)],
                           axis=1)


def level_marginal(prior: LevelPrior, tau: Array, spec: ModelSpec) -> tuple[Array, Array]:
    """Mean and covariance of the observed datasets' levels with ``beta`` integrated out.

    ``L_obs ~ N(X_o m, X_o diag(s^2) X_o^T + tau^2 I)``. Sampling the levels from this
    marginal (and ``beta`` from its exact conditional, :func:`level_regression`) removes
    the funnel between ``tau`` and the coefficients that a model sampling ``beta`` and the
    levels jointly has when there are about as many datasets as coefficients.
    """
    obs, _ = observed_datasets(spec)
    x = _design(spec)[jnp.asarray(obs)]
    cov = (x * prior.sd**2) @ x.T + tau**2 * jnp.eye(len(obs), dtype=jnp.float32)
    return x @ prior.mean, cov


def level_regression(prior: LevelPrior, tau: Array, observed: Array, z: Array,
                     spec: ModelSpec) -> Array:
    """``beta`` given the observed levels and ``tau``: ``m + chol(C) z`` (exact conditional).

    ``C = (diag(s^-2) + X_o^T X_o / tau^2)^-1`` and ``m = C (m0 / s^2 + X_o^T L_obs / tau^2)``;
    with ``z ~ N(0, I)`` the result is a draw of ``beta | L_obs, tau``.

    Example
    -------
    >>> spec = ModelSpec(("cifar-10", "mnist"), ("classification",), ("image",) * 2,
    ...                  ((0.0, 0.0, 5.0, 1.0), (0.0, 0.0, 4.8, 1.0)), ((0, 0), (1, 0)),
    ...                  (0, 0), 3)
    >>> level_regression(DIFFICULTY_PRIOR, 0.2, jnp.zeros(2), jnp.zeros(5), spec).shape
    (5,)
    """
    obs, _ = observed_datasets(spec)
    x = _design(spec)[jnp.asarray(obs)]
    prec = jnp.diag(prior.sd**-2) + x.T @ x / tau**2
    chol = jnp.linalg.cholesky(prec)
    rhs = prior.mean / prior.sd**2 + x.T @ observed / tau**2
    m = jax.scipy.linalg.cho_solve((chol, True), rhs)
    return m + jax.scipy.linalg.solve_triangular(chol.T, z, lower=False)


def _sample_dataset_level(name: str, prefix: str, prior: LevelPrior, tau: Array,
                          spec: ModelSpec) -> dict:
    """Dataset levels of one regression: the observed datasets' levels from their marginal
    (centred: the data pin them down), the regression coefficients through the standard
    normal ``{prefix}_regression_z`` (non-centred about their exact conditional), the
    unobserved datasets' levels through ``{name}_z`` (non-centred residuals)."""
    obs, unobs = observed_datasets(spec)
    loc, cov = level_marginal(prior, tau, spec)
    out = {name + "_observed": numpyro.sample(
        name + "_observed", dist.MultivariateNormal(loc, covariance_matrix=cov))}
    with numpyro.plate(prefix + "_regression", prior.mean.shape[0]):
        out[prefix + "_regression_z"] = numpyro.sample(prefix + "_regression_z",
                                                       dist.Normal(0.0, 1.0))
    if unobs:
        with numpyro.plate("unobserved_dataset", len(unobs)):
            out[name + "_z"] = numpyro.sample(name + "_z", dist.Normal(0.0, 1.0))
    return out


def _compose_level(raw: dict, name: str, prefix: str, prior: LevelPrior, tau: Array,
                   spec: ModelSpec) -> tuple[Array, Array]:
    """(levels of every dataset, regression coefficients ``beta``) from the raw sites."""
    obs, unobs = observed_datasets(spec)
    observed = raw[name + "_observed"]
    beta = level_regression(prior, tau, observed, raw[prefix + "_regression_z"], spec)
    out = jnp.zeros(len(spec.datasets), jnp.float32).at[jnp.asarray(obs)].set(observed)
    if unobs:
        u = jnp.asarray(unobs)
        out = out.at[u].set(_design(spec)[u] @ beta + tau * raw[name + "_z"])
    return out, beta


@partial(jax.jit, static_argnames=("spec", "full"))
def derived_quantities(raw: dict, spec: ModelSpec, full: bool = True) -> dict:
    """Everything the model computes from its sampled sites, in one compiled function.

    Returns the deterministic sites (difficulties, offsets, expected validity and accuracy
    per setting and iteration, gaps) plus ``"params"`` and ``"effects"`` for the
    likelihood.
    """
    f32 = jnp.float32
    nd, nk = len(spec.datasets), len(spec.tasks)
    free_t, free_m = spec.free_tasks, spec.free_modalities
    out: dict = {}
    out["difficulty"], beta = _compose_level(raw, "difficulty", "difficulty", DIFFICULTY_PRIOR,
                                             raw["difficulty_sd"], spec)
    out["difficulty_intercept"], out["difficulty_coef"] = beta[0], beta[1:]
    out["task_complexity"] = _scatter(nk, free_t, raw.get("task_complexity_free"))
    inter = jnp.zeros((nd, nk), f32)
    if "interaction_free" in raw:
        g = raw["interaction_free"]
        for i, m in enumerate(spec.modalities):
            if m in free_m:
                inter = inter.at[i, jnp.asarray(free_t)].set(g[free_m.index(m)])
    delta = out["difficulty"][:, None] + out["task_complexity"][None, :] + inter
    if "validity_z_setting" in raw:
        delta = delta + raw["validity_sd_setting"] * raw["validity_z_setting"]
    out["validity_offset"] = delta
    if spec.has_accuracy:
        level, beta = _compose_level(raw, "accuracy_level", "accuracy", ACCURACY_PRIOR,
                                     raw["accuracy_sd"], spec)
        out["accuracy_intercept"], out["accuracy_coef"] = beta[0], beta[1:]
        task_acc = _scatter(nk, free_t, raw.get("task_accuracy_free"))
        alpha = level[:, None] + task_acc[None, :]
        out.update(accuracy_level=level, task_accuracy=task_acc, accuracy_offset=alpha)
        lam, sig_a = raw["accuracy_slope"], raw["accuracy_noise"]
    else:  # no accuracy data: the accuracy part is not in the model
        alpha = jnp.full((nd, nk), -1.0, f32)
        lam, sig_a = f32(0.0), f32(1.0)
    if spec.has_novelty:
        nu_m = jnp.zeros(nd, f32)
        if "novelty_modality_free" in raw:
            for i, m in enumerate(spec.modalities):
                if m in free_m:
                    nu_m = nu_m.at[i].set(raw["novelty_modality_free"][free_m.index(m)])
        nu = nu_m[:, None] + _scatter(nk, free_t, raw.get("novelty_task_free"))[None, :]
        out["novelty_offset"] = nu
        nu0, nus, sig_n = raw["novelty_intercept"], raw["novelty_slope"], raw["novelty_noise"]
    else:
        nu = jnp.zeros((nd, nk), f32)
        nu0, nus, sig_n = f32(0.0), f32(0.0), f32(1.0)
    rate, asym, fb_v, fb_a = _trend(raw, spec)
    if spec.trend == "setting":
        out["rate_offset"], out["asymptote"] = rate, asym
    # b0 = 0: the validity intercept is absorbed into the difficulties (only b0 - D_d is
    # identified by data)
    params = DynamicsParams(raw["kappa"], raw["state_noise"], raw["init_sd"],
                            jnp.zeros_like(raw["kappa"]), raw["validity_slope"], lam, sig_a,
                            nu0, nus, sig_n, fb_v, fb_a,
                            **_burst_params(raw, spec))
    chance = jnp.asarray(spec.chance_grid())
    effects = SettingEffects(delta.reshape(-1), alpha.reshape(-1), nu.reshape(-1),
                             rate.reshape(-1), asym.reshape(-1), chance.reshape(-1))
    if not full:  # only what the likelihood needs
        return {"params": params, "effects": effects}
    out.update(setting_summaries(params, effects, spec))
    out["params"], out["effects"] = params, effects
    return out


def _burst_params(sample: dict, spec: ModelSpec) -> dict:
    """The :data:`BURST_SITES` of a draw as float32 (their off values without bursts)."""
    return {name: jnp.asarray(sample[name] if spec.bursts else off, jnp.float32)
            for name, off in zip(BURST_SITES, _BURSTS_OFF, strict=True)}


#: values of the burst fields that switch them off (the simulator's defaults)
_BURSTS_OFF: tuple[float, ...] = tuple(DynamicsParams._field_defaults[n] for n in BURST_SITES)


def setting_summaries(params: DynamicsParams, effects: SettingEffects,
                      spec: ModelSpec) -> dict:
    """Setting-level expectations of a new trial and the transfer gaps, (D, K, ...) each.

    ``validity`` (and ``accuracy``, ``novelty`` where modelled) per horizon iteration;
    the gaps at the gap iteration (accuracy chance-normalised, ``raw_accuracy_gap`` the
    accuracy as measured); ``trend_gain`` the expected validity at the last observed
    iteration minus that at iteration 1 and ``trend_gap = 1 - gain / gain_ref``.
    """
    nd, nk, H = len(spec.datasets), len(spec.tasks), spec.horizon
    out = {}
    ev = expected(params, effects, H, spec.num_candidates)
    v = ev.validity.reshape(nd, nk, H)
    out["validity"] = v
    t, (ri, rk) = spec.gap_t - 1, spec.reference
    gain = v[..., spec.num_iterations - 1] - v[..., 0]
    out["trend_gain"] = gain
    out["trend_gap"] = trend_gap(gain, gain[ri, rk])
    if spec.has_accuracy:
        a = ev.accuracy.reshape(nd, nk, H)
        out["accuracy"] = a
        c = jnp.asarray(spec.chance_grid())
        g = gap_components(v[..., t], a[..., t], v[ri, rk, t], a[ri, rk, t],
                           chance_s=c, chance_ref=c[ri, rk])
        for name in ("validity_gap", "accuracy_gap", "raw_accuracy_gap", "combined_gap"):
            out[name] = g[name]
    else:  # without accuracy data only the validity gap is defined by the data
        out["validity_gap"] = 1.0 - v[..., t] / v[ri, rk, t]
    if spec.has_novelty:
        nov = ev.novelty.reshape(nd, nk, H)
        out["novelty"] = nov
        out["novelty_gap"] = 1.0 - nov[..., t] / nov[ri, rk, t]
    return out


def trend_levels(spec: ModelSpec) -> tuple[bool, bool]:
    """Whether the per-setting trend has a dataset level and a task level (a level with
    one member would only duplicate the global rate and asymptote)."""
    return len(spec.datasets) > 1, len(spec.tasks) > 1


def has_cell_level(spec: ModelSpec) -> bool:
    """Whether each dataset x task cell has its own level (validity offset, and under the
    per-setting trend rate and asymptote offsets): only with two or more datasets and two
    or more tasks, else a cell is its dataset or its task."""
    return all(trend_levels(spec))


def observed_index(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(dataset indices, task indices) of the settings with data."""
    obs = np.asarray(spec.observed, np.int32).reshape(-1, 2)
    return obs[:, 0], obs[:, 1]


def _trend(raw: dict, spec: ModelSpec) -> tuple[Array, Array, Array, Array]:
    """(rate offsets (D, K), asymptotes (D, K), phi_v, phi_a) from the raw sites."""
    f32 = jnp.float32
    nd, nk = len(spec.datasets), len(spec.tasks)
    rate, log_mu = jnp.zeros((nd, nk), f32), jnp.zeros((nd, nk), f32)
    zero = jnp.zeros_like(raw["kappa"])
    if spec.trend != "setting":
        return rate, jnp.exp(log_mu), zero, zero
    by_d, by_k = trend_levels(spec)
    if by_d:
        rate = rate + (raw["rate_sd_dataset"] * raw["rate_z_dataset"])[:, None]
        log_mu = log_mu + (raw["asymptote_sd_dataset"] * raw["asymptote_z_dataset"])[:, None]
    if by_k:
        rate = rate + (raw["rate_sd_task"] * raw["rate_z_task"])[None, :]
        log_mu = log_mu + (raw["asymptote_sd_task"] * raw["asymptote_z_task"])[None, :]
    if by_d and by_k:
        rate = rate + raw["rate_sd_setting"] * raw["rate_z_setting"]
        log_mu = log_mu + raw["asymptote_sd_setting"] * raw["asymptote_z_setting"]
    # centred over the settings with data (every setting treated alike): kappa is the
    # rate of their logit-average and the geometric mean of their asymptotes is 1. A
    # shift common to every setting's offsets would only trade off against kappa and
    # rescale the state (slopes, noise and feedback strengths scale with it), which no
    # data can tell apart; left free, it made NUTS's trees much deeper
    i, j = observed_index(spec)
    rate, log_mu = rate - rate[i, j].mean(), log_mu - log_mu[i, j].mean()
    return (rate, jnp.exp(log_mu), raw["feedback_validity"],
            raw.get("feedback_accuracy", zero))


@cache
def scalar_priors() -> dict[str, dist.Distribution]:
    """Priors of the scalar sites of :func:`runs_model`, kept in one place: the model
    samples them, and the mode search and the SVI guide start at their medians.

    Built on first use, so importing the model does not start JAX's backend (JAX's
    settings, such as the number of CPU devices, can still be set after the import),
    and built eagerly even when first asked for inside a trace, so the cached
    distributions hold constants, never tracers.

    Example
    -------
    >>> sorted(scalar_priors())[:3]
    ['accuracy_noise', 'accuracy_sd', 'accuracy_slope']
    """
    with jax.ensure_compile_time_eval():
        return _build_scalar_priors()


def _build_scalar_priors() -> dict[str, dist.Distribution]:
    return {
        "kappa": dist.Beta(2.0, 5.0),
        "state_noise": dist.LogNormal(math.log(0.1), 0.5),
        "init_sd": dist.LogNormal(math.log(0.3), 0.5),
        "validity_slope": dist.Normal(1.5, 1.0),
        "difficulty_sd": dist.LogNormal(math.log(0.2), 0.6),
        "accuracy_sd": dist.LogNormal(math.log(0.2), 0.6),
        "accuracy_slope": dist.Normal(0.3, 0.5),
        "accuracy_noise": dist.LogNormal(math.log(0.4), 0.5),
        "novelty_intercept": dist.Normal(0.0, 1.5),
        "novelty_slope": dist.Normal(0.0, 1.0),
        "novelty_noise": dist.LogNormal(math.log(0.8), 0.5),
        "validity_sd_setting": dist.HalfNormal(0.5),
        "rate_sd_dataset": dist.HalfNormal(1.0),
        "rate_sd_task": dist.HalfNormal(1.0),
        "asymptote_sd_dataset": dist.HalfNormal(0.5),
        "asymptote_sd_task": dist.HalfNormal(0.5),
        "rate_sd_setting": dist.HalfNormal(1.0),
        "asymptote_sd_setting": dist.HalfNormal(0.5),
        "feedback_validity": dist.Normal(0.0, 0.5),
        "feedback_accuracy": dist.Normal(0.0, 0.5),
        "collapse_enter": dist.Beta(1.0, 9.0),
        "collapse_exit": dist.Beta(2.0, 2.0),
        "collapse_validity": dist.Normal(-4.0, 1.5),
        "validity_dispersion": dist.Beta(1.0, 4.0),
    }


@cache
def _prior_medians() -> tuple[tuple[str, float], ...]:
    with jax.ensure_compile_time_eval():
        return _median_table()


def _median_table() -> tuple[tuple[str, float], ...]:
    out = []
    for name, d in scalar_priors().items():
        if isinstance(d, dist.LogNormal):
            out.append((name, math.exp(float(d.loc))))
        elif isinstance(d, dist.Normal):
            out.append((name, float(d.loc)))
        elif isinstance(d, dist.HalfNormal):  # median of |N(0, s)|: s * Phi^-1(3/4)
            out.append((name, float(d.scale) * 0.6744897501960817))
        elif isinstance(d, dist.Beta):  # no closed form: bisection on the CDF
            lo, hi = 0.0, 1.0
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if float(d.cdf(mid)) < 0.5 else (lo, mid)
            out.append((name, 0.5 * (lo + hi)))
        else:
            raise TypeError(f"no median rule for the prior of {name}: {type(d).__name__}")
    return tuple(out)


def prior_medians() -> dict[str, float]:
    """Medians of :func:`scalar_priors` (closed form, or bisection on the Beta's CDF).

    Example
    -------
    >>> m = prior_medians()
    >>> round(m["state_noise"], 4), round(m["validity_slope"], 4), round(m["kappa"], 3)
    (0.1, 1.5, 0.264)
    """
    return dict(_prior_medians())  # a fresh dict: callers may change it


def runs_model(data: RunsData, *, spec: ModelSpec, n_valid: Array | None = None,
               subsample_size: int | None = None, deterministic: bool = True) -> None:
    """The hierarchical model of observed runs (generative when ``n_valid`` is ``None``).

    Parameters
    ----------
    data : :class:`RunsData` (``data.n_valid`` is ignored; pass the counts as ``n_valid``).
    spec : :class:`ModelSpec`.
    n_valid : observed valid counts (run, iteration), or ``None`` to draw them.
    subsample_size : runs per SVI step (mini-batching over runs); ``None`` uses all.

    Example
    -------
    >>> from numpyro.infer import Predictive
    >>> spec = ModelSpec(("cifar-10",), ("classification",), ("image",), ((0.,) * 4,),
    ...                  ((0, 0),), (0, 0), 3, has_accuracy=False)
    >>> z = jnp.zeros((2, 3))
    >>> data = RunsData(jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32), z + 10, z,
    ...                 NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))
    >>> draws = Predictive(runs_model, num_samples=5)(jax.random.key(0), data, spec=spec)
    >>> draws["n_valid"].shape
    (5, 2, 3)
    """
    free_t, free_m = spec.free_tasks, spec.free_modalities
    raw: dict = {}

    def site(name, d):
        raw[name] = numpyro.sample(name, d)

    for name in ("kappa", "state_noise", "init_sd", "validity_slope"):
        site(name, scalar_priors()[name])
    # validity offsets: D_d + C_k + G_{m(d), k}, D_d ~ N(w0 + features_d . w, tau_D)
    # (w0, w) ~ N(DIFFICULTY_PRIOR) are integrated out of the observed levels' prior and
    # drawn from their exact conditional (see level_marginal / level_regression)
    site("difficulty_sd", scalar_priors()["difficulty_sd"])
    raw.update(_sample_dataset_level("difficulty", "difficulty", DIFFICULTY_PRIOR,
                                     raw["difficulty_sd"], spec))
    if free_t:
        with numpyro.plate("free_task", len(free_t)):
            site("task_complexity_free", dist.Normal(0.5, 1.0))
    # two-dimensional sites are one event each, not nested plates: a plate name keeps one
    # dim in every site (the SVI autoguides require it); MATRIX_DIMS names their axes
    if free_t and free_m:
        site("interaction_free",
             dist.Normal(0.0, 0.5).expand((len(free_m), len(free_t))).to_event(2))
    if has_cell_level(spec):  # the cells' own validity levels
        site("validity_sd_setting", scalar_priors()["validity_sd_setting"])
        site("validity_z_setting", dist.Normal(0.0, 1.0).expand(
            (len(spec.datasets), len(spec.tasks))).to_event(2))
    # accuracy offsets: alpha_d + alpha_k, alpha_d ~ N(a0 + features_d . w_a, tau_a)
    if spec.has_accuracy:
        site("accuracy_sd", scalar_priors()["accuracy_sd"])
        raw.update(_sample_dataset_level("accuracy_level", "accuracy",
                                         ACCURACY_PRIOR, raw["accuracy_sd"], spec))
        if free_t:
            with numpyro.plate("free_task", len(free_t)):
                site("task_accuracy_free", dist.Normal(0.0, 0.5))
        site("accuracy_slope", scalar_priors()["accuracy_slope"])
        site("accuracy_noise", scalar_priors()["accuracy_noise"])
    # novelty offsets: nu_{m(d)} + nu_k
    if spec.has_novelty:
        for name in ("novelty_intercept", "novelty_slope", "novelty_noise"):
            site(name, scalar_priors()[name])
        if free_m:
            with numpyro.plate("free_modality", len(free_m)):
                site("novelty_modality_free", dist.Normal(0.0, 0.5))
        if free_t:
            with numpyro.plate("free_task", len(free_t)):
                site("novelty_task_free", dist.Normal(0.0, 0.5))
    # per-setting trend: rate and asymptote offsets of datasets and tasks (non-centred),
    # feedback strengths
    if spec.trend == "setting":
        by_d, by_k = trend_levels(spec)
        for level, n, used in (("dataset", len(spec.datasets), by_d),
                               ("task", len(spec.tasks), by_k)):
            if not used:
                continue
            for part in ("rate", "asymptote"):
                site(f"{part}_sd_{level}", scalar_priors()[f"{part}_sd_{level}"])
                with numpyro.plate(level, n):
                    site(f"{part}_z_{level}", dist.Normal(0.0, 1.0))
        if has_cell_level(spec):
            for part in ("rate", "asymptote"):
                site(f"{part}_sd_setting", scalar_priors()[f"{part}_sd_setting"])
                site(f"{part}_z_setting", dist.Normal(0.0, 1.0).expand(
                    (len(spec.datasets), len(spec.tasks))).to_event(2))
        site("feedback_validity", scalar_priors()["feedback_validity"])
        if spec.has_accuracy:
            site("feedback_accuracy", scalar_priors()["feedback_accuracy"])
    if spec.bursts:  # collapse episodes and overdispersed counts
        for name in BURST_SITES:
            site(name, scalar_priors()[name])

    det = derived_quantities(raw, spec, full=deterministic)
    if deterministic:
        for name, value in det.items():
            if name not in ("params", "effects"):
                numpyro.deterministic(name, value)

    # likelihood: one row per run, the state marginalised by the grid filter
    n_runs, n_it = data.n_generated.shape
    with numpyro.plate("run", n_runs, dim=-2, subsample_size=subsample_size) as idx:
        sub = data if subsample_size is None else jax.tree.map(lambda x: x[idx], data)
        obs = None if n_valid is None else (n_valid if subsample_size is None else n_valid[idx])
        with numpyro.plate("iteration", n_it, dim=-1):
            numpyro.sample("n_valid", MarginalRuns(det["params"], det["effects"], sub, spec),
                           obs=obs)


# --------------------------------------------------------------------------- helpers
def params_from_sample(sample: dict, spec: ModelSpec) -> tuple[DynamicsParams, SettingEffects]:
    """Rebuild the dynamics and full-grid setting effects from one posterior draw.

    ``sample`` must hold the scalar sites and the ``validity_offset``/``accuracy_offset``
    deterministics; novelty, the feedback strengths and the ``rate_offset``/``asymptote``
    deterministics are taken from the draw when modelled (else 0, 0 and 0, 1), the
    :data:`BURST_SITES` when ``spec.bursts``.
    """
    f = jnp.float32
    get = sample.get
    params = DynamicsParams(
        sample["kappa"], sample["state_noise"], sample["init_sd"],
        jnp.zeros_like(sample["kappa"]), sample["validity_slope"],
        get("accuracy_slope", f(0.0)), get("accuracy_noise", f(1.0)),
        get("novelty_intercept", f(0.0)), get("novelty_slope", f(0.0)),
        get("novelty_noise", f(1.0)), get("feedback_validity", f(0.0)),
        get("feedback_accuracy", f(0.0)), **_burst_params(sample, spec),
    )
    nd, nk = len(spec.datasets), len(spec.tasks)
    nu = sample.get("novelty_offset", jnp.zeros((nd, nk), f))
    alpha = sample.get("accuracy_offset", jnp.zeros((nd, nk), f))
    effects = SettingEffects(
        jnp.reshape(sample["validity_offset"], (-1,)),
        jnp.reshape(alpha, (-1,)),
        jnp.reshape(nu, (-1,)),
        jnp.reshape(get("rate_offset", jnp.zeros((nd, nk), f)), (-1,)),
        jnp.reshape(get("asymptote", jnp.ones((nd, nk), f)), (-1,)),
        jnp.reshape(jnp.asarray(spec.chance_grid()), (-1,)),
    )
    return params, effects


def forecast_runs(
    key: PRNGKey, params: DynamicsParams, effects: SettingEffects, data: RunsData,
    spec: ModelSpec, n_generated: Array,
) -> Array:
    """Posterior predictive validity counts of the observed runs over the horizon.

    The states of the ``T`` observed iterations are drawn from their conditional
    distribution given the run's data (forward filtering, backward sampling on the runs'
    grids, with the observed feedback; with bursts jointly with the regimes), and counts
    are drawn at them (beta-binomial with bursts). The ``K`` forecast
    iterations are simulated forward from the last state: the transition out of
    iteration ``T`` uses its observed feedback, each later one the feedback of the counts
    drawn at that iteration (valid fraction) and the expected mean chance-normalised
    accuracy given the state. ``n_generated`` is (N, T + K).

    Returns (N, T + K) counts (float32).
    """
    T, K = spec.num_iterations, spec.num_forecast
    grid = run_grid(params, effects, data, spec)
    log_em, _ = emission_loglik(
        grid.s, params, effects, grid.rows, data,
        use_accuracy=spec.has_accuracy, use_novelty=spec.has_novelty, bursts=spec.bursts,
    )
    regimes = burst_regimes(params) if spec.bursts else None
    _, filt = forward_filter(grid, log_em, regimes)  # (T, N, G) or (T, N, 2, G)
    if regimes is None:  # one regime: the same code, with a regime axis of one
        filt, regimes = filt[:, :, None], Regimes(jnp.ones(1), jnp.ones((1, 1)))
    n, r, g = filt.shape[1:]
    keys = jax.random.split(key, T + 3)
    flat = jax.random.categorical(keys[T], jnp.log(filt[-1] + 1e-30).reshape(n, r * g),
                                  axis=-1)  # node of (regime, state), regime-major

    def back(k_next, inp):
        # p(regime, node at t | data to t, regime and node at t + 1)
        f_t, trans_t, k = inp
        tr = jnp.broadcast_to(_run_transitions(trans_t, grid.rows), (n, g, g))
        col = jnp.take_along_axis(tr, (k_next % g)[:, None, None], axis=2)[..., 0]  # (N, G)
        into = regimes.trans[:, k_next // g].T  # (N, R): from each regime to the next one
        logits = (jnp.log(f_t + 1e-30) + jnp.log(col + 1e-30)[:, None]
                  + jnp.log(into + 1e-30)[..., None])
        k_t = jax.random.categorical(k, logits.reshape(n, r * g), axis=-1)
        return k_t, k_t

    _, ks = jax.lax.scan(back, flat, (filt[:-1], grid.trans, keys[: T - 1]), reverse=True)
    idx = jnp.concatenate([ks, flat[None]], axis=0)  # (T, N)
    s = jnp.take_along_axis(grid.s, (idx % g)[..., None], axis=2)[..., 0]  # (T, N)
    collapsed = (idx // g == 1) if spec.bursts else None
    eff = _run_effects(effects, data, spec)
    prob = _validity_rate(s, collapsed, params, eff)
    counts = _draw_counts(keys[T + 1], n_generated[:, :T].T, prob, params,
                          spec.bursts)  # (T, N)
    if K:
        fb = observed_feedback(data)
        last = Feedback(fb.valid_fraction[:, -1], fb.accuracy[:, -1])
        z = jax.random.normal(keys[T + 2], (K + 1, n), jnp.float32)
        s_next = transition_mean(s[-1], params, eff, last) + params.state_noise * z[0]
        after = None
        if spec.bursts:
            after = _next_regime(jax.random.fold_in(keys[T + 2], 2), collapsed[-1], params)
        ahead = _simulate_counts(jax.random.fold_in(keys[T + 2], 1), s_next, z[1:],
                                 n_generated[:, T:].T, params, eff, after)
        counts = jnp.concatenate([counts, ahead], axis=0)
    return counts.T


def forecast_n_generated(data: RunsData, num_forecast: int) -> np.ndarray:
    """Candidates per (run, iteration) behind the predictive pooled rates, (N, T + K).

    Where some run of a setting was observed at iteration ``t``, the observed counts
    (0 for the runs without data at ``t``), so that the predictive pooled rate compares
    with the observed one. Elsewhere (iterations no run of the setting observed, and the
    forecast iterations) every run with its nearest observed ``n_generated`` (the last one
    before ``t``, else the first one after).

    Example
    -------
    >>> z = np.zeros((2, 3), np.float32)
    >>> ng = np.asarray([[0, 10, 0], [0, 20, 30]], np.float32)
    >>> d = RunsData(np.zeros(2, np.int32), np.zeros(2, np.int32), ng, z,
    ...              NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))
    >>> forecast_n_generated(d, 1).tolist()
    [[10.0, 10.0, 0.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    """
    ng = np.asarray(data.n_generated, np.float32)
    n, T = ng.shape
    nearest = np.zeros_like(ng)
    last = np.zeros(n, np.float32)
    for t in range(T):
        last = np.where(ng[:, t] > 0, ng[:, t], last)
        nearest[:, t] = last
    nxt = np.zeros(n, np.float32)
    for t in range(T - 1, -1, -1):
        nxt = np.where(ng[:, t] > 0, ng[:, t], nxt)
        nearest[:, t] = np.where(nearest[:, t] > 0, nearest[:, t], nxt)
    setting = np.asarray(data.dataset_idx, np.int64) * 100_003 + np.asarray(data.task_idx)
    out = np.empty_like(ng)
    for s in np.unique(setting):
        rows = setting == s
        seen = (ng[rows] > 0).any(axis=0)  # (T,)
        out[rows] = np.where(seen[None, :], ng[rows], nearest[rows])
    fut = np.repeat(nearest[:, -1:], num_forecast, axis=1)
    return np.concatenate([out, fut], axis=1)
