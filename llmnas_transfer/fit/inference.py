"""Fit observed runs: NUTS (parallel chains) or SVI, returning an ArviZ ``DataTree``.

:func:`fit_runs` reads and validates the runs (:mod:`llmnas_transfer.io.runs`), builds the
hierarchy (:func:`prepare`), samples the model of :mod:`llmnas_transfer.fit.model`, and
collects everything in one :class:`xarray.DataTree` with the groups ``posterior``,
``sample_stats`` (NUTS), ``log_likelihood`` (per run, the state marginalised),
``posterior_predictive``, ``prior``, ``prior_predictive``, ``observed_data``,
``constant_data`` and ``predictions`` (forecast pooled validity rates of the observed
runs). :func:`save_fit` writes it as netCDF atomically; :func:`load_fit` reads it back.

Example
-------
>>> import pandas as pd
>>> rows = [{"dataset": "cifar-10", "task": "classification", "trial": r, "iteration": t,
...          "n_generated": 10, "n_valid": 4 + t // 2} for r in range(3) for t in (1, 2, 3)]
>>> from llmnas_transfer.io.runs import runs_from_frame
>>> dt = fit_runs(runs_from_frame(pd.DataFrame(rows)), chains=1, draws=50, warmup=50,
...               seed=0, prior_draws=20)  # doctest: +SKIP
>>> sorted(dt.children)  # doctest: +SKIP
['constant_data', 'log_likelihood', 'observed_data', ...]
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import xarray as xr
from numpyro.infer import (
    MCMC,
    NUTS,
    SVI,
    Predictive,
    Trace_ELBO,
    init_to_median,
    init_to_value,
)
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.model import (
    DETERMINISTIC_DIMS,
    GRID_SIZE,
    ModelSpec,
    NormalStats,
    RunsData,
    derived_quantities,
    forecast_n_generated,
    forecast_runs,
    params_from_sample,
    prior_medians,
    runs_loglik,
    runs_model,
)
from llmnas_transfer.io.runs import ObservedRuns, read_runs
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.gaps import DEFAULT_REFERENCE

FIT_FORMAT = "llmnas-transfer fit v1"
EXTRA_FIELDS = ("potential_energy", "energy", "num_steps", "accept_prob", "diverging")
#: defaults assumed for a dataset that is not in the registry and has no attributes
DEFAULT_NEW_DATASET = {"modality": "image", "resolution": 32, "num_classes": 10}
#: SVI mini-batch (runs per step) used when there are more runs than this
SVI_BATCH = 2048
#: the SVI guide's initial scale is 0.1 up to about this many runs (paper size, where the
#: Laplace posterior sds of the dynamics are 0.06-0.07 on the unconstrained scale) and
#: shrinks as 1/sqrt(runs) beyond
SVI_SCALE_RUNS = 500


# --------------------------------------------------------------------------- preparation
@dataclass(frozen=True)
class Prepared:
    """Model inputs built from observed runs."""

    spec: ModelSpec
    data: RunsData
    run_dataset: tuple[str, ...]
    run_task: tuple[str, ...]
    run_trial: tuple[str, ...]
    notices: tuple[str, ...]


def _natural_key(label: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", label)]


def _parse_reference(reference) -> tuple[str, str]:
    if isinstance(reference, str):
        parts = reference.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise UserInputError(
                f"reference must look like DATASET:TASK (e.g. cifar-10:classification), "
                f"got {reference!r}"
            )
        reference = parts
    if len(reference) != 2:
        raise UserInputError("reference must be (dataset, task)")
    return str(reference[0]).strip().lower(), str(reference[1]).strip().lower()


def _dataset_entry(name: str, attrs: Mapping[str, Mapping] | None, notices: list[str]):
    attrs = {k.lower(): v for k, v in (attrs or {}).items()}
    try:
        ds = registry.get_dataset(name)
    except registry.UnknownSettingError:
        ds = None
    if ds is not None:
        if name in attrs:
            raise UserInputError(
                f"dataset {name!r} is in the registry; its attributes come from there "
                "(drop it from the dataset attributes)"
            )
        return ds
    given = attrs.get(name)
    a = dict(DEFAULT_NEW_DATASET)
    if given:
        unknown = set(given) - set(a)
        if unknown:
            raise UserInputError(
                f"dataset {name!r}: unknown attributes {sorted(unknown)}; use modality, "
                "resolution, num_classes"
            )
        a.update(given)
    modality = str(a["modality"]).strip().lower()
    if modality not in registry.MODALITIES:
        raise UserInputError(
            f"dataset {name!r}: modality {modality!r} is not one of "
            f"{', '.join(registry.MODALITIES)}"
        )
    try:
        res, ncls = int(a["resolution"]), int(a["num_classes"])
    except (TypeError, ValueError):
        raise UserInputError(
            f"dataset {name!r}: resolution and num_classes must be integers"
        ) from None
    if res < 1 or ncls < 1:
        raise UserInputError(f"dataset {name!r}: resolution and num_classes must be positive")
    how = "given" if given else "assumed (pass dataset attributes to set them)"
    notices.append(
        f"dataset {name!r} is not in the registry: a new level of the hierarchy with "
        f"modality {modality}, resolution {res}, {ncls} classes ({how})"
    )
    return registry.Dataset(name, modality, res, ncls)


def prepare(
    runs: ObservedRuns,
    *,
    reference: str | Sequence[str] = DEFAULT_REFERENCE,
    datasets: Sequence[str] = (),
    tasks: Sequence[str] = (),
    dataset_attrs: Mapping[str, Mapping] | None = None,
    num_forecast: int = 0,
    grid_size: int = GRID_SIZE,
) -> Prepared:
    """Build the :class:`~llmnas_transfer.fit.model.ModelSpec` and arrays for observed runs.

    The levels are the datasets and tasks in the data, the reference, and any extra
    ``datasets``/``tasks`` to predict. Every dataset x task combination is a setting of
    the model; those without data are predicted through the hierarchy.

    Example
    -------
    >>> import pandas as pd
    >>> from llmnas_transfer.io.runs import runs_from_frame
    >>> df = pd.DataFrame({"dataset": "svhn", "task": "detection", "trial": [1, 1],
    ...                    "iteration": [1, 2], "n_generated": 10, "n_valid": [3, 5]})
    >>> p = prepare(runs_from_frame(df))
    >>> p.spec.datasets, p.spec.tasks, p.spec.observed
    (('cifar-10', 'svhn'), ('classification', 'detection'), ((1, 1),))
    """
    if not isinstance(num_forecast, (int, np.integer)) or isinstance(num_forecast, bool) \
            or not 0 <= num_forecast <= 1000:
        raise UserInputError(f"forecast must be an integer in [0, 1000], got {num_forecast!r}")
    if not isinstance(grid_size, int) or not 8 <= grid_size <= 512:
        raise UserInputError(f"grid_size must be an integer in [8, 512], got {grid_size!r}")
    notices: list[str] = list(runs.notices)
    ref = _parse_reference(reference)
    cells = runs.cells
    d_names = list(dict.fromkeys([ref[0], *cells["dataset"].astype(str),
                                  *(str(d).strip().lower() for d in datasets)]))
    t_names = list(dict.fromkeys([ref[1], *cells["task"].astype(str),
                                  *(str(t).strip().lower() for t in tasks)]))
    builtin_d = [d for d in registry.dataset_names() if d in d_names]
    d_names = builtin_d + [d for d in d_names if d not in builtin_d]
    builtin_t = [t for t in registry.task_names() if t in t_names]
    t_names = builtin_t + [t for t in t_names if t not in builtin_t]
    for t in t_names:
        if t not in registry.task_names():
            notices.append(f"task {t!r} is not in the registry: a new level of the hierarchy")
    entries = [_dataset_entry(d, dataset_attrs, notices) for d in d_names]
    unused = set(k.lower() for k in (dataset_attrs or {})) - set(d_names)
    if unused:
        notices.append(f"attributes given for datasets not in the fit: {sorted(unused)}")
    observed = sorted({(d_names.index(d), t_names.index(t)) for d, t in runs.settings})
    ref_idx = (d_names.index(ref[0]), t_names.index(ref[1]))
    if ref_idx not in observed:
        notices.append(
            f"the reference {ref[0]}:{ref[1]} has no data; its rates (and all gaps) come "
            "from the hierarchy alone"
        )
    T = int(cells["iteration"].max())
    keys = cells[["dataset", "task", "trial"]].drop_duplicates()
    order = sorted(
        keys.itertuples(index=False),
        key=lambda r: (d_names.index(r[0]), t_names.index(r[1]), _natural_key(str(r[2]))),
    )
    run_index = {tuple(r): i for i, r in enumerate(order)}
    n = len(order)
    ridx = np.fromiter(
        (run_index[(d, t, r)] for d, t, r in zip(cells["dataset"], cells["task"],
                                                  cells["trial"], strict=True)),
        np.int64, len(cells))
    tidx = cells["iteration"].to_numpy(np.int64) - 1

    def grid(col):
        out = np.zeros((n, T), np.float32)
        out[ridx, tidx] = cells[col].to_numpy(np.float64)
        return jnp.asarray(out)

    data = RunsData(
        jnp.asarray([d_names.index(r[0]) for r in order], jnp.int32),
        jnp.asarray([t_names.index(r[1]) for r in order], jnp.int32),
        grid("n_generated"), grid("n_valid"),
        NormalStats(*(grid("acc_" + c) for c in ("k", "n", "sum", "sumsq", "const"))),
        NormalStats(*(grid("nov_" + c) for c in ("k", "n", "sum", "sumsq", "const"))),
    )
    spec = ModelSpec(
        tuple(d_names), tuple(t_names), tuple(e.modality for e in entries),
        tuple(tuple(float(x) for x in e.features()) for e in entries), tuple(observed),
        ref_idx, T, int(num_forecast), T, bool(runs.has_accuracy), bool(runs.has_novelty),
        grid_size,
    )
    return Prepared(spec, data, tuple(r[0] for r in order), tuple(r[1] for r in order),
                    tuple(str(r[2]) for r in order), tuple(notices))


# --------------------------------------------------------------------------- fitting
@dataclass
class FitInfo:
    """What happened during a fit (timings, settings, SVI losses)."""

    method: str
    seconds_sampling: float
    seconds_total: float
    chains: int
    draws: int
    warmup: int
    chain_method: str
    losses: np.ndarray | None = None


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not lo <= value <= hi:
        raise UserInputError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


class _DrawsAdapter:
    """Lets :func:`arviz.from_numpyro` convert draws that did not come from MCMC (SVI)."""

    def __new__(cls, samples, model, args, kwargs):
        from arviz_base.io_numpyro import NumPyroInferenceAdapter

        class Adapter(NumPyroInferenceAdapter):
            @property
            def sample_dims(self):
                return ["chain", "draw"]

            def get_samples(self, seed=None, **kw):
                return samples

        shape = next(iter(samples.values())).shape[:2]
        return Adapter(None, model, args, kwargs, shape)


def _thin(samples: dict, max_elements: float, per_draw: int) -> tuple[dict, np.ndarray]:
    """Evenly spaced draws of every chain such that draws x per_draw <= max_elements
    (at least 100 draws in all, or all of them)."""
    chains, draws = next(iter(samples.values())).shape[:2]
    keep = int(max(100, max_elements // max(per_draw, 1)) // chains)
    if keep >= draws:
        return samples, np.arange(draws)
    idx = np.unique(np.linspace(0, draws - 1, max(keep, 1)).round().astype(int))
    return {k: v[:, idx] for k, v in samples.items()}, idx


def _flat(samples: dict) -> dict:
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}


def _per_draw(fn: Callable, samples: dict, batch: int = 64):
    """``lax.map`` of ``fn(key_index, draw)`` over flat draws, in vmapped batches."""
    flat = _flat(samples)
    n = next(iter(flat.values())).shape[0]
    return jax.lax.map(lambda x: fn(x[0], x[1]), (jnp.arange(n), flat),
                       batch_size=min(batch, n))


@partial(jax.jit, static_argnames=("spec",))
def _forecast_kernel(key, samples, data: RunsData, spec: ModelSpec, ng, onehot_t):
    def one(i, draw):
        params, effects = params_from_sample(draw, spec)
        counts = forecast_runs(jax.random.fold_in(key, i), params, effects, data, spec, ng)
        return onehot_t @ counts

    return _per_draw(one, samples)


@partial(jax.jit, static_argnames=("spec",))
def _loglik_kernel(samples, data: RunsData, spec: ModelSpec):
    def one(i, draw):
        params, effects = params_from_sample(draw, spec)
        return runs_loglik(params, effects, data, spec, n_valid=data.n_valid).sum(-1)

    return _per_draw(one, samples)


def _pooled_forecast(key, samples, prep: Prepared) -> np.ndarray:
    """Predictive pooled validity rate per (chain, draw, dataset, task, horizon)."""
    spec, data = prep.spec, prep.data
    ng = jnp.asarray(forecast_n_generated(data, spec.num_forecast))
    nd, nk, H = len(spec.datasets), len(spec.tasks), spec.horizon
    row = np.asarray(data.dataset_idx) * nk + np.asarray(data.task_idx)
    onehot_t = jnp.asarray(np.eye(nd * nk, dtype=np.float32)[row].T)  # (S, N)
    denom = np.asarray(onehot_t @ ng)  # (S, H)
    num = np.asarray(_forecast_kernel(key, _needed(samples), data, spec, ng, onehot_t))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = num / denom[None]
    shape = next(iter(samples.values())).shape[:2]
    return rate.reshape(shape + (nd, nk, H))


def _loglik_per_run(samples, prep: Prepared) -> np.ndarray:
    shape = next(iter(samples.values())).shape[:2]
    ll = _loglik_kernel(_needed(samples), prep.data, prep.spec)
    return np.asarray(ll).reshape(shape + (prep.data.n_generated.shape[0],))


_NEEDED = ("kappa", "state_noise", "init_sd", "validity_slope", "accuracy_slope",
           "accuracy_noise", "novelty_intercept", "novelty_slope", "novelty_noise",
           "validity_offset", "accuracy_offset", "novelty_offset")


def _needed(samples: dict) -> dict:
    """The sites :func:`~llmnas_transfer.fit.model.params_from_sample` reads."""
    return {k: jnp.asarray(v) for k, v in samples.items() if k in _NEEDED}


class LaplaceStart(NamedTuple):
    """Starting points and initial metric of NUTS from a Laplace approximation.

    ``mode`` is the posterior mode in the unconstrained space (a dict of sites), ``cov``
    the inverse Hessian of the potential there (flattened in the order of
    :func:`jax.flatten_util.ravel_pytree`, i.e. sorted site names), ``init_params`` one
    draw per chain from ``N(mode, cov)`` and ``converged`` whether the Hessian was finite
    and positive definite (else ``cov`` is the identity and NUTS adapts from scratch).
    """

    mode: dict
    cov: np.ndarray
    init_params: dict
    converged: bool
    potential: float

    def inverse_mass_matrix(self, dense: bool):
        """Initial inverse mass matrix for NumPyro's NUTS (``None`` when not converged)."""
        if not self.converged:
            return None
        if dense:
            return {tuple(sorted(self.mode)): jnp.asarray(self.cov)}
        return jnp.asarray(np.diag(self.cov))


@partial(jax.jit, static_argnames=("spec", "values"))
def _unconstrained_init(key, data: RunsData, spec: ModelSpec, values: tuple) -> dict:
    """Unconstrained values of the latent sites: ``values`` (name, value) where given,
    else ``init_to_uniform`` draws (only their shapes are used by the caller).

    One compiled trace of the model. ``numpyro.infer.util.initialize_model`` gives the
    same sites, but first checks the potential and its gradient op by op: about 15 s
    of eager compilation on the first call for each data shape on the 2-core CPU."""
    from numpyro.distributions.transforms import biject_to
    from numpyro.handlers import seed, substitute, trace

    model = substitute(seed(runs_model, key), substitute_fn=init_to_value(values=dict(values)))
    tr = trace(model).get_trace(data, spec=spec, n_valid=data.n_valid, deterministic=False)
    return {name: biject_to(site["fn"].support).inv(site["value"])
            for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]}


@partial(jax.jit, static_argnames=("spec", "max_iter"))
def _laplace_solve(z0s: dict, data: RunsData, spec: ModelSpec, max_iter: int):
    """L-BFGS on the potential from each start (leading axis of ``z0s``, vmapped), then
    the Hessian at the best end point. Compiled once per data shape and spec, not once
    per fit. Returns ``(x, potential(x), hessian)``."""
    import optax
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], z0s))
    x0s = jax.vmap(lambda z: ravel_pytree(z)[0])(z0s)
    kwargs = {"spec": spec, "n_valid": data.n_valid, "deterministic": False}

    def potential(x):
        return potential_energy(runs_model, (data,), kwargs, unravel(x))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(potential)

    def solve(x0):
        def body(carry, _):
            x, state = carry
            v, g = value_and_grad(x, state=state)
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=potential)
            return (optax.apply_updates(x, u), state), v

        (x, _), _ = jax.lax.scan(body, (x0, opt.init(x0)), None, length=max_iter)
        return x, potential(x)

    xs, funs = jax.vmap(solve)(x0s)
    best = jnp.argmin(jnp.where(jnp.isfinite(funs), funs, jnp.inf))
    x = xs[best]
    return x, funs[best], jax.hessian(potential)(x)


def laplace_start(key, prep: Prepared, chains: int, *, max_iter: int = 150,
                  num_starts: int = 8) -> LaplaceStart:
    """Find the posterior mode (L-BFGS in the unconstrained space) and the curvature there.

    Starting NUTS from draws of this Gaussian approximation, with its covariance as the
    initial metric, spends the warmup on adapting rather than on finding the typical set
    (the first warmup trajectories from a poor start and a unit metric are hundreds of
    leapfrog steps long). The chains still start at different points, so r_hat keeps its
    power to show chains that have not mixed.

    The posterior can have minor local modes (SBC found one 30 nats below the main mode,
    with ``kappa`` near 0, that NUTS started there did not leave), so L-BFGS runs from
    ``num_starts`` points at once and the lowest potential wins. Start 0 puts the scalar
    dynamics at their prior medians and every other unconstrained coordinate at 0; the
    others keep the prior medians and draw the rest uniformly on (-2, 2), as NumPyro's
    ``init_to_uniform`` does.

    Example
    -------
    >>> import pandas as pd
    >>> from llmnas_transfer.io.runs import runs_from_frame
    >>> rows = [{"dataset": "cifar-10", "task": "classification", "trial": r, "iteration": t,
    ...          "n_generated": 10, "n_valid": 4 + t // 2} for r in range(3) for t in (1, 2)]
    >>> s = laplace_start(jax.random.key(0), prepare(runs_from_frame(pd.DataFrame(rows))), 2)
    >>> s.init_params["kappa"].shape, s.converged
    ((2,), True)
    """
    from jax.flatten_util import ravel_pytree

    num_starts = _check_int("num_starts", num_starts, 1, 1024)
    spec, data = prep.spec, prep.data
    k_model, k_draw = jax.random.split(key)
    k_starts = jax.random.fold_in(key, 2)
    # the optimiser starts from the prior centres of the dynamics (a random start can
    # end in a poor local mode, e.g. one with a negative validity slope)
    medians = prior_medians()
    z = _unconstrained_init(k_model, data, spec, tuple(sorted(medians.items())))
    fixed = set(medians)
    names = sorted(z)
    starts = {}
    for i, name in enumerate(names):
        v = jnp.asarray(z[name])
        if name in fixed:
            starts[name] = jnp.broadcast_to(v, (num_starts,) + v.shape)
        else:
            u = jax.random.uniform(jax.random.fold_in(k_starts, i), (num_starts,) + v.shape,
                                   v.dtype, -2.0, 2.0)
            starts[name] = u.at[0].set(0.0)
    _, unravel = ravel_pytree(z)
    x, fun, hess = jax.device_get(_laplace_solve(starts, data, spec, max_iter))
    n = x.shape[0]
    hess = 0.5 * (np.asarray(hess, np.float64) + np.asarray(hess, np.float64).T)
    ok = bool(np.all(np.isfinite(hess)) and np.isfinite(fun))
    if ok:
        w, v = np.linalg.eigh(hess)
        ok = bool(w.min() > 0)
    if ok:
        cov = (v / w) @ v.T
        chol = np.linalg.cholesky(cov + 1e-9 * np.eye(n))
    else:
        cov, chol = np.eye(n), np.eye(n) * 0.1
    zz = np.asarray(jax.random.normal(k_draw, (chains, n), jnp.float32), np.float64)
    chain_starts = np.asarray(x, np.float64) + zz @ chol.T
    init = jax.vmap(unravel)(jnp.asarray(chain_starts, jnp.float32))
    if chains == 1:  # NumPyro takes a single chain's start without the chain axis
        init = jax.tree.map(lambda a: a[0], init)
    return LaplaceStart(unravel(jnp.asarray(x)), cov, init, ok, float(fun))


@partial(jax.jit, static_argnames=("spec",))
def _deterministic_kernel(flat: dict, spec: ModelSpec) -> dict:
    def one(draw):
        out = derived_quantities(draw, spec)
        return {k: v for k, v in out.items() if k not in ("params", "effects")}

    n = next(iter(flat.values())).shape[0]
    return jax.lax.map(one, flat, batch_size=min(256, n))


def deterministic_sites(samples: dict, spec: ModelSpec) -> dict:
    """The model's deterministic sites (levels, offsets, expected rates, gaps) for every
    draw of its sampled sites (``(chain, draw, ...)`` arrays), in one compiled map.

    NUTS samples the model without them (``runs_model(..., deterministic=False)``): they
    do not enter the density, and leaving them out makes initialisation much cheaper.
    """
    shape = next(iter(samples.values())).shape[:2]
    flat = {k: jnp.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in samples.items()}
    out = jax.device_get(_deterministic_kernel(flat, spec))
    return {k: np.asarray(v).reshape(shape + np.shape(v)[1:]) for k, v in out.items()}


class _MCMCAdapter:
    """ArviZ's MCMC adapter with the deterministic sites added to the draws."""

    def __new__(cls, mcmc, extra: dict):
        from arviz_base.io_numpyro import MCMCAdapter

        class Adapter(MCMCAdapter):
            def get_samples(self, seed=None, **kw):
                return {**self.posterior.get_samples(group_by_chain=True), **extra}

        return Adapter(mcmc)


def _num_devices() -> int:
    return jax.local_device_count()


def fit_runs(
    runs: ObservedRuns | str | os.PathLike,
    *,
    method: str = "nuts",
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 0,
    reference: str | Sequence[str] = DEFAULT_REFERENCE,
    forecast: int = 0,
    datasets: Sequence[str] = (),
    tasks: Sequence[str] = (),
    dataset_attrs: Mapping[str, Mapping] | None = None,
    target_accept: float = 0.9,
    dense_mass: bool = True,
    adapt_metric: bool | None = None,
    svi_steps: int = 2000,
    svi_learning_rate: float = 0.01,
    svi_batch: int | None = None,
    prior_draws: int = 500,
    grid_size: int = GRID_SIZE,
    max_pointwise: float = 2e7,
    progress: bool = False,
    info: dict | None = None,
) -> xr.DataTree:
    """Fit the hierarchical model to observed runs and return an ArviZ ``DataTree``.

    Parameters
    ----------
    runs : validated :class:`~llmnas_transfer.io.runs.ObservedRuns` or a file path.
    method : ``"nuts"`` (default) or ``"svi"`` (full-rank Gaussian guide, optax Adam).
    chains, draws, warmup : NUTS settings; chains run in parallel when there are enough
        JAX devices (``jax_num_cpu_devices``), else one after another. For SVI, ``draws``
        is the number of draws taken from the fitted guide.
    seed : integer seed; the same seed gives the same numbers.
    reference : ``"dataset:task"`` the gaps are relative to.
    forecast : number of iterations to forecast past the data.
    datasets, tasks : extra levels to predict (unobserved settings).
    dataset_attrs : ``{name: {"modality":..., "resolution":..., "num_classes":...}}`` for
        datasets that are not in the registry.
    target_accept, dense_mass : NUTS step-size target and mass-matrix structure.
    adapt_metric : adapt the mass matrix during warmup. ``None`` (default): NUTS starts
        from the Laplace approximation at the posterior mode (:func:`laplace_start`) and
        keeps its covariance as the metric, adapting only the step size; the metric is
        adapted (Stan's windowed scheme) only when the approximation failed. ``True``
        adapts it in any case (better for strongly non-Gaussian posteriors, but it needs
        a long warmup: a dense metric estimated from a few hundred draws is worse than
        the Laplace one).
    svi_steps, svi_learning_rate, svi_batch : SVI optimisation settings (``svi_batch``
        runs per step; default all runs up to 2048, else random mini-batches of 2048).
    prior_draws : prior (and prior predictive) draws stored with the fit.
    grid_size : grid points of the marginalised state.
    max_pointwise : bound on draws x (run, iteration) cells for the per-run groups
        (posterior predictive, log-likelihood, forecasts); with more data those use
        evenly thinned draws (their ``draw`` coordinate says which).
    progress : show NumPyro's progress bar.
    info : if a dict is given, it is filled with :class:`FitInfo` fields.

    Returns
    -------
    xarray.DataTree (see the module docstring for its groups).
    """
    t0 = time.perf_counter()
    if method not in ("nuts", "svi"):
        raise UserInputError(f"method must be 'nuts' or 'svi', got {method!r}")
    chains = _check_int("chains", chains, 1, 64)
    draws = _check_int("draws", draws, 1, 10**6)
    warmup = _check_int("warmup", warmup, 0 if method == "svi" else 1, 10**6)
    seed = _check_int("seed", seed, 0, 2**32 - 1)
    prior_draws = _check_int("prior_draws", prior_draws, 1, 10**5)
    if not isinstance(target_accept, (int, float)) or not 0.5 <= target_accept < 1.0:
        raise UserInputError(f"target_accept must be in [0.5, 1), got {target_accept!r}")
    if not isinstance(runs, ObservedRuns):
        runs = read_runs(runs)
    prep = prepare(runs, reference=reference, datasets=datasets, tasks=tasks,
                   dataset_attrs=dataset_attrs, num_forecast=forecast, grid_size=grid_size)
    spec, data = prep.spec, prep.data
    key = jax.random.key(seed)
    k_fit, k_prior, k_ppc, k_fc = jax.random.split(key, 4)
    kwargs = {"spec": spec, "n_valid": data.n_valid}
    coords = _coords(prep)
    extra_dims = {k: v for k, v in DETERMINISTIC_DIMS.items()}
    # multivariate-normal sites: their event dim is not a plate
    extra_dims.update({"difficulty_observed": ["observed_dataset"],
                       "accuracy_level_observed": ["observed_dataset"]})

    if method == "nuts":
        chain_method = "parallel" if _num_devices() >= chains and chains > 1 else "sequential"
        nuts_kwargs = {**kwargs, "deterministic": False}
        k_init, k_fit = jax.random.split(k_fit)
        t1 = time.perf_counter()
        start = laplace_start(k_init, prep, chains)
        adapt = (not start.converged) if adapt_metric is None else bool(adapt_metric)
        kernel = NUTS(runs_model, target_accept_prob=float(target_accept),
                      dense_mass=dense_mass, adapt_mass_matrix=adapt,
                      inverse_mass_matrix=start.inverse_mass_matrix(dense_mass))
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                    chain_method=chain_method, progress_bar=progress)
        mcmc.run(k_fit, data, extra_fields=EXTRA_FIELDS, init_params=start.init_params,
                 **nuts_kwargs)
        latent = jax.device_get(mcmc.get_samples(group_by_chain=True))
        det = deterministic_sites(latent, spec)
        samples = {**latent, **det}
        t_sampling = time.perf_counter() - t1
        posterior, losses = _MCMCAdapter(mcmc, det), None
        metric = "adapted" if adapt else "laplace"
    else:
        chain_method = "svi"
        steps = _check_int("svi_steps", svi_steps, 1, 10**7)
        samples, losses, t_sampling = _fit_svi(
            k_fit, prep, steps=steps, lr=svi_learning_rate, draws=draws,
            batch=svi_batch, progress=progress)
        posterior = _DrawsAdapter(samples, runs_model, (data,), kwargs)
        chains, metric = 1, "none"

    prior = Predictive(runs_model, num_samples=prior_draws)(k_prior, data, spec=spec)
    # per-run computations (posterior predictive, pointwise log-likelihood, forecasts)
    # use evenly thinned draws when the data are large, to bound time and memory
    sub, draw_idx = _thin(samples, max_pointwise, int(np.prod(data.n_generated.shape)))
    shape = next(iter(sub.values())).shape[:2]
    flat = _flat({k: jnp.asarray(v) for k, v in sub.items()})
    ppc = Predictive(runs_model, posterior_samples=flat, return_sites=["n_valid"],
                     batch_ndims=1)(k_ppc, data, spec=spec)
    ppc_counts = np.asarray(ppc["n_valid"]).reshape(shape + data.n_generated.shape)
    if ppc_counts.max(initial=0) < 2**15:
        ppc_counts = ppc_counts.astype(np.int16)
    constant = {
        "n_generated": np.asarray(data.n_generated),
        "run_dataset": np.asarray(prep.run_dataset, dtype=str),
        "run_task": np.asarray(prep.run_task, dtype=str),
        "run_trial": np.asarray(prep.run_trial, dtype=str),
        "accuracy_count": np.asarray(data.accuracy.n),
        "novelty_count": np.asarray(data.novelty.n),
    }
    import arviz as az

    dt = az.from_numpyro(
        posterior, prior=jax.device_get(prior), coords=coords, extra_event_dims=extra_dims,
        log_likelihood=False,
    )
    sub_coords = {"chain": np.arange(shape[0]), "draw": draw_idx}
    dt["posterior_predictive"] = xr.DataTree(xr.Dataset(
        {"n_valid": (("chain", "draw", "run", "iteration"), ppc_counts)},
        coords={**sub_coords, "run": coords["run"], "iteration": coords["iteration"]}))
    cd = xr.Dataset({
        k: (("run", "iteration") if np.ndim(v) == 2 else ("run",), np.asarray(v))
        for k, v in constant.items()
    }, coords={"run": coords["run"], "iteration": coords["iteration"]})
    dt["constant_data"] = xr.DataTree(cd)
    ll = _loglik_per_run(sub, prep)
    dt["log_likelihood"] = xr.DataTree(xr.Dataset(
        {"n_valid": (("chain", "draw", "run"), ll)},
        coords={**sub_coords, "run": coords["run"]},
    ))
    rate = _pooled_forecast(k_fc, sub, prep)
    dt["predictions"] = xr.DataTree(xr.Dataset(
        {"pooled_rate": (("chain", "draw", "dataset", "task", "horizon"), rate)},
        coords={**sub_coords, "dataset": coords["dataset"], "task": coords["task"],
                "horizon": coords["horizon"]},
    ))
    if losses is not None:
        if "sample_stats" in dt.children:  # SVI has no sampler statistics
            del dt["sample_stats"]
        dt["optimization"] = xr.DataTree(xr.Dataset(
            {"loss": (("step",), np.asarray(losses, np.float64))},
            coords={"step": np.arange(1, len(losses) + 1)}))
    total = time.perf_counter() - t0
    dt.attrs.update({
        "format": FIT_FORMAT,
        "inference": method,
        "spec": json.dumps(spec.to_attrs()),
        "source": runs.source,
        "data_form": runs.form,
        "report": runs.report(),
        "notices": json.dumps(list(prep.notices)),
        "seed": seed,
        "chains": chains,
        "draws": draws,
        "warmup": warmup if method == "nuts" else 0,
        "chain_method": chain_method,
        "target_accept": float(target_accept),
        "metric": metric,
        "seconds_sampling": round(t_sampling, 3),
        "seconds_total": round(total, 3),
        "pointwise_draws": int(len(draw_idx) * shape[0]),
        "numpyro_version": numpyro.__version__,
        "jax_version": jax.__version__,
        "arviz_version": az.__version__,
        "llmnas_transfer_version": _version(),
    })
    if method == "svi":
        dt.attrs["svi_steps"] = int(svi_steps)
        dt.attrs["svi_learning_rate"] = float(svi_learning_rate)
    if info is not None:
        info.update(FitInfo(method, t_sampling, total, chains, draws,
                            warmup if method == "nuts" else 0, chain_method,
                            None if losses is None else np.asarray(losses)).__dict__)
    return dt


def _version() -> str:
    from llmnas_transfer import __version__

    return __version__


def _coords(prep: Prepared) -> dict:
    coords = prep.spec.coords()
    obs, unobs = _observed_datasets(prep.spec)
    coords["observed_dataset"] = [prep.spec.datasets[i] for i in obs]
    coords["unobserved_dataset"] = [prep.spec.datasets[i] for i in unobs]
    coords["run"] = [f"{d}|{t}|{r}" for d, t, r in
                     zip(prep.run_dataset, prep.run_task, prep.run_trial, strict=True)]
    return coords


def _observed_datasets(spec: ModelSpec):
    from llmnas_transfer.fit.model import observed_datasets

    return observed_datasets(spec)


def _fit_svi(key, prep: Prepared, *, steps: int, lr: float, draws: int, batch: int | None,
             progress: bool):
    import optax

    spec, data = prep.spec, prep.data
    n_runs = int(data.n_generated.shape[0])
    if batch is None:
        batch = n_runs if n_runs <= SVI_BATCH else SVI_BATCH
    batch = _check_int("svi_batch", batch, 1, 10**9)
    sub = None if batch >= n_runs else batch
    if not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise UserInputError(f"svi_learning_rate must be in (0, 1), got {lr!r}")
    # dimension of the latent space decides the guide: full rank up to 200 dimensions
    guide_cls = AutoMultivariateNormal
    k_init, k_run, k_draw = jax.random.split(key, 3)
    schedule = optax.cosine_decay_schedule(float(lr), steps, alpha=0.05)
    optim = numpyro.optim.optax_to_numpyro(
        optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule)))
    # the guide starts at the prior centres of the dynamics, with a scale near that of
    # the posterior, which shrinks as 1/sqrt(runs) (Adam moves the scale by about the
    # learning rate per step, so a start 10x too wide costs hundreds of steps)
    init_scale = 0.1 * min(1.0, (SVI_SCALE_RUNS / n_runs) ** 0.5)
    guide = guide_cls(runs_model, init_loc_fn=init_to_value(values=prior_medians()),
                      init_scale=init_scale)
    latent_dim = None
    svi = SVI(runs_model, guide, optim, Trace_ELBO())
    t1 = time.perf_counter()
    res = svi.run(k_run, steps, data, spec=spec, n_valid=data.n_valid, subsample_size=sub,
                  progress_bar=progress)
    params = res.params
    latent_dim = guide.latent_dim
    if latent_dim > 200:  # full rank too costly: refit with a low-rank guide
        guide = AutoLowRankMultivariateNormal(runs_model, rank=20,
                                              init_loc_fn=init_to_median(num_samples=15))
        svi = SVI(runs_model, guide, optim, Trace_ELBO())
        res = svi.run(k_run, steps, data, spec=spec, n_valid=data.n_valid, subsample_size=sub,
                      progress_bar=progress)
        params = res.params
    k_lat, k_det = jax.random.split(k_draw)
    latent = guide.sample_posterior(k_lat, params, data, spec=spec, n_valid=data.n_valid,
                                    sample_shape=(draws,))
    det = Predictive(runs_model, posterior_samples=latent,
                     return_sites=[k for k in DETERMINISTIC_DIMS])(k_det, data, spec=spec,
                                                                   n_valid=data.n_valid)
    t_sampling = time.perf_counter() - t1
    samples = {k: np.asarray(v)[None] for k, v in {**latent, **det}.items()
               if k != "n_valid"}
    return samples, np.asarray(res.losses), t_sampling


# --------------------------------------------------------------------------- files
def save_fit(dt: xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a fit as netCDF (h5netcdf), atomically: a temporary file, then a rename.

    Example
    -------
    >>> import xarray as xr, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "fit.nc"
    >>> _ = save_fit(xr.DataTree(xr.Dataset({"a": ("x", [1.0])})), p)
    >>> float(load_fit(p, check=False)["a"][0])
    1.0
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserInputError(f"{path}: is a directory; give a file name such as fit.nc")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UserInputError(f"{path}: the folder {parent} does not exist")
    encoding = {}
    for node in dt.subtree:
        enc = {}
        for name, var in node.dataset.data_vars.items():
            if var.dtype.kind in "fiu" and var.size > 1000:
                enc[name] = {"zlib": True, "complevel": 4}
        if enc:
            encoding[node.path] = enc
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        dt.to_netcdf(tmp, engine="h5netcdf", encoding=encoding or None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_fit(path: str | os.PathLike, *, check: bool = True) -> xr.DataTree:
    """Read a fit written by :func:`save_fit` (fully into memory).

    Example
    -------
    >>> load_fit("no-such-file.nc")
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: no-such-file.nc: file not found
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory, not a fit file")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            dt = dt.load()
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable netCDF fit file ({exc})") from None
    if check and dt.attrs.get("format") != FIT_FORMAT:
        raise UserInputError(
            f"{path}: not a fit written by 'llmnas-transfer fit' (format attribute missing)"
        )
    return dt


def spec_of(dt: xr.DataTree) -> ModelSpec:
    """The :class:`~llmnas_transfer.fit.model.ModelSpec` stored in a fit."""
    try:
        return ModelSpec.from_attrs(json.loads(dt.attrs["spec"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UserInputError(f"the fit file lacks a valid model description ({exc})") from None


def notices_of(dt: xr.DataTree) -> list[str]:
    """Notices recorded when the fit was made."""
    try:
        return list(json.loads(dt.attrs.get("notices", "[]")))
    except ValueError:
        return []


def set_cpu_devices(n: int) -> int:
    """Ask JAX for ``n`` CPU devices (parallel chains); must run before the first JAX op.

    Returns the number of devices available afterwards.
    """
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:
        pass  # the backend is already running: use what it has
    return jax.local_device_count()


__all__ = [
    "FitInfo", "Prepared", "fit_runs", "load_fit", "notices_of", "prepare", "save_fit",
    "set_cpu_devices", "spec_of",
]
