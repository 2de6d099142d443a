"""Assemble a fit's ArviZ ``DataTree`` from posterior draws: every group and the attributes.

:func:`assemble_tree` takes the draws of :mod:`llmnas_transfer.fit.sampling` and builds the
groups ``posterior``, ``sample_stats`` (NUTS) or ``optimization`` (SVI losses),
``prior``, ``prior_predictive``, ``observed_data``, ``constant_data``,
``posterior_predictive``, ``log_likelihood`` (per run, the state marginalised) and
``predictions`` (forecast pooled validity rates per setting). The per-run groups use
evenly thinned draws when the data are large (their ``draw`` coordinate says which).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import xarray as xr
from numpyro.infer import Predictive

from llmnas_transfer import __version__
from llmnas_transfer.fit.fitfile import FIT_FORMAT
from llmnas_transfer.fit.model import (
    BURST_SITES,
    DETERMINISTIC_DIMS,
    MATRIX_DIMS,
    ModelSpec,
    RunsData,
    forecast_n_generated,
    forecast_runs,
    observed_datasets,
    params_from_sample,
    runs_loglik,
    runs_model,
)
from llmnas_transfer.fit.preparation import Prepared
from llmnas_transfer.fit.sampling import MAX_TREE_DEPTH, Sampled
from llmnas_transfer.io.runs import ObservedRuns

#: the sites :func:`~llmnas_transfer.fit.model.params_from_sample` reads
_NEEDED = ("kappa", "state_noise", "init_sd", "validity_slope", "accuracy_slope",
           "accuracy_noise", "novelty_intercept", "novelty_slope", "novelty_noise",
           "validity_offset", "accuracy_offset", "novelty_offset", "rate_offset",
           "asymptote", "feedback_validity", "feedback_accuracy", *BURST_SITES)


class DrawsAdapter:
    """Lets :func:`arviz.from_numpyro` convert draws given as arrays (NUTS and SVI).

    ``stats`` are the sampler's per-draw statistics named as NumPyro's MCMC
    ``extra_fields`` (``potential_energy``, ``num_steps``, ...) and ``step_size``; ArviZ
    renames them (``lp``, ``n_steps``, ...) and adds ``tree_depth``. ``None`` (SVI): no
    ``sample_stats``.
    """

    def __new__(cls, samples, model, args, kwargs, stats: dict | None = None,
                max_tree_depth: int | None = None):
        from arviz_base.io_numpyro import NumPyroInferenceAdapter

        class Adapter(NumPyroInferenceAdapter):
            _max_tree_depth = max_tree_depth

            @property
            def sample_dims(self):
                return ["chain", "draw"]

            def get_samples(self, seed=None, **kw):
                return samples

            def get_sample_stats(self, **kw):
                if not stats:
                    return {}
                out = {k: np.asarray(v) for k, v in stats.items() if k != "step_size"}
                if "step_size" in stats:
                    out["adapt_state.step_size"] = np.asarray(stats["step_size"])
                return out

        shape = next(iter(samples.values())).shape[:2]
        return Adapter(None, model, args, kwargs, shape)


def _to_host(dt: xr.DataTree) -> xr.DataTree:
    """The tree with every variable a NumPy array.

    ``from_numpyro`` keeps sampler statistics and observed data as JAX arrays; ArviZ
    indexes with them (the trace plot's divergence mask), which under x32 casts to
    int64 and warns, and a saved or pickled tree should not need a device.
    """
    for node in dt.subtree:
        ds = node.dataset
        jaxed = [n for n, v in ds.data_vars.items() if not isinstance(v.data, np.ndarray)]
        if jaxed:
            node.dataset = ds.assign({n: ds[n].copy(data=np.asarray(ds[n].data))
                                      for n in jaxed})
    return dt


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


@partial(jax.jit, static_argnames=("spec", "num_samples"))
def _prior_predictive(key, data: RunsData, spec: ModelSpec, num_samples: int) -> dict:
    """Prior and prior predictive draws of every site, in one compiled program (run
    eagerly, NumPyro's ``Predictive`` dispatches the model op by op: about 3.4 s a fit
    for 500 draws of ``examples/runs_counts.csv``)."""
    return Predictive(runs_model, num_samples=num_samples)(key, data, spec=spec)


@partial(jax.jit, static_argnames=("spec",))
def _posterior_predictive(key, flat: dict, data: RunsData, spec: ModelSpec) -> jax.Array:
    """Posterior predictive valid counts of the runs for flat draws, compiled."""
    return Predictive(runs_model, posterior_samples=flat, return_sites=["n_valid"],
                      batch_ndims=1)(key, data, spec=spec)["n_valid"]


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


def _needed(samples: dict) -> dict:
    """The sites :func:`~llmnas_transfer.fit.model.params_from_sample` reads."""
    return {k: jnp.asarray(v) for k, v in samples.items() if k in _NEEDED}


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


def run_forecasts(key: jax.Array, samples: dict, prep: Prepared,
                  n_generated: np.ndarray) -> np.ndarray:
    """Posterior predictive valid counts of each run over the horizon, one per draw.

    ``samples`` are ``(chain, draw, ...)`` arrays of a fit of ``prep``;
    ``n_generated`` (N, T + K) the candidates behind each count (``T`` and ``K`` from
    ``prep.spec``). Returns (chain x draw, N, T + K) counts: the observed iterations'
    at the runs' own states, then the forecast
    (:func:`~llmnas_transfer.fit.model.forecast_runs`).
    """
    n = prep.data.n_generated.shape[0]
    eye = jnp.eye(n, dtype=jnp.float32)
    return np.asarray(_forecast_kernel(key, _needed(samples), prep.data, prep.spec,
                                       jnp.asarray(n_generated, jnp.float32), eye))


def _loglik_per_run(samples, prep: Prepared) -> np.ndarray:
    shape = next(iter(samples.values())).shape[:2]
    ll = _loglik_kernel(_needed(samples), prep.data, prep.spec)
    return np.asarray(ll).reshape(shape + (prep.data.n_generated.shape[0],))


def _coords(prep: Prepared) -> dict:
    coords = prep.spec.coords()
    obs, unobs = observed_datasets(prep.spec)
    coords["observed_dataset"] = [prep.spec.datasets[i] for i in obs]
    coords["unobserved_dataset"] = [prep.spec.datasets[i] for i in unobs]
    coords["run"] = [f"{d}|{t}|{r}" for d, t, r in
                     zip(prep.run_dataset, prep.run_task, prep.run_trial, strict=True)]
    return coords


def _constant_data(prep: Prepared, coords: dict) -> xr.Dataset:
    data = prep.data
    constant = {
        "n_generated": np.asarray(data.n_generated),
        "run_dataset": np.asarray(prep.run_dataset, dtype=str),
        "run_task": np.asarray(prep.run_task, dtype=str),
        "run_trial": np.asarray(prep.run_trial, dtype=str),
        "accuracy_count": np.asarray(data.accuracy.n),
        "novelty_count": np.asarray(data.novelty.n),
    }
    return xr.Dataset({
        k: (("run", "iteration") if np.ndim(v) == 2 else ("run",), np.asarray(v))
        for k, v in constant.items()
    }, coords={"run": coords["run"], "iteration": coords["iteration"]})


def assemble_tree(
    prep: Prepared,
    sampled: Sampled,
    runs: ObservedRuns,
    *,
    keys: Sequence[jax.Array],
    prior_draws: int,
    max_pointwise: float = 2e7,
    attrs: Mapping[str, object] | None = None,
) -> xr.DataTree:
    """Build the fit's ``DataTree`` from posterior draws.

    ``keys`` are three PRNG keys: prior draws, posterior predictive, forecasts.
    ``max_pointwise`` bounds draws x (run, iteration) cells for the per-run groups
    (posterior predictive, log-likelihood, forecasts). ``attrs`` are recorded with the
    fit's own attributes (format, inference, spec, data report, notices, the sampler's
    settings, versions), before the sampler's settings.

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> from llmnas_transfer.fit.sampling import sample_svi
    >>> runs = toy_runs(num_iterations=1)
    >>> p = prepare(runs)
    >>> s = sample_svi(jax.random.key(0), p, steps=20, learning_rate=0.01, draws=10)
    >>> dt = assemble_tree(p, s, runs, keys=jax.random.split(jax.random.key(1), 3),
    ...               prior_draws=5, attrs={"seed": 1})
    >>> dt["log_likelihood"].dataset["n_valid"].dims, dt.attrs["seed"]
    (('chain', 'draw', 'run'), 1)
    """
    import arviz as az

    k_prior, k_ppc, k_fc = keys
    spec, data = prep.spec, prep.data
    samples = sampled.samples
    coords = _coords(prep)
    extra_dims = {**DETERMINISTIC_DIMS, **MATRIX_DIMS}
    # multivariate-normal sites: their event dim is not a plate
    extra_dims.update({"difficulty_observed": ["observed_dataset"],
                       "accuracy_level_observed": ["observed_dataset"]})
    posterior = DrawsAdapter(samples, runs_model, (data,),
                             {"spec": spec, "n_valid": data.n_valid},
                             stats=sampled.stats, max_tree_depth=MAX_TREE_DEPTH)

    prior = _prior_predictive(k_prior, data, spec, int(prior_draws))
    # per-run computations (posterior predictive, pointwise log-likelihood, forecasts)
    # use evenly thinned draws when the data are large, to bound time and memory
    sub, draw_idx = _thin(samples, max_pointwise, int(np.prod(data.n_generated.shape)))
    shape = next(iter(sub.values())).shape[:2]
    flat = _flat({k: jnp.asarray(v) for k, v in sub.items()})
    ppc = _posterior_predictive(k_ppc, flat, data, spec)
    ppc_counts = np.asarray(ppc).reshape(shape + data.n_generated.shape)
    if ppc_counts.max(initial=0) < 2**15:
        ppc_counts = ppc_counts.astype(np.int16)

    dt = az.from_numpyro(
        posterior, prior=jax.device_get(prior), coords=coords, extra_event_dims=extra_dims,
        log_likelihood=False,
    )
    dt = _to_host(dt)
    sub_coords = {"chain": np.arange(shape[0]), "draw": draw_idx}
    dt["posterior_predictive"] = xr.DataTree(xr.Dataset(
        {"n_valid": (("chain", "draw", "run", "iteration"), ppc_counts)},
        coords={**sub_coords, "run": coords["run"], "iteration": coords["iteration"]}))
    dt["constant_data"] = xr.DataTree(_constant_data(prep, coords))
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
    if sampled.losses is not None:
        if "sample_stats" in dt.children:  # SVI has no sampler statistics
            del dt["sample_stats"]
        dt["optimization"] = xr.DataTree(xr.Dataset(
            {"loss": (("step",), np.asarray(sampled.losses, np.float64))},
            coords={"step": np.arange(1, len(sampled.losses) + 1)}))
    dt.attrs.update({
        "format": FIT_FORMAT,
        "inference": sampled.method,
        "spec": json.dumps(spec.to_attrs()),
        "source": runs.source,
        "data_form": runs.form,
        "report": runs.report(),
        "notices": json.dumps(list(prep.notices)),
        **(attrs or {}),
        **sampled.attrs,
        "pointwise_draws": int(len(draw_idx) * shape[0]),
        "numpyro_version": numpyro.__version__,
        "jax_version": jax.__version__,
        "arviz_version": az.__version__,
        "llmnas_transfer_version": __version__,
    })
    return dt


__all__ = ["DrawsAdapter", "assemble_tree", "run_forecasts"]
