"""Fit observed runs end to end: prepare, start, sample (NUTS or SVI), assemble a DataTree.

:func:`fit_runs` is a composition of the steps, each in its own module:

1. :func:`~llmnas_transfer.fit.preparation.prepare` - read and validate the runs
   (:mod:`llmnas_transfer.io.runs`) and build the hierarchy and run arrays;
2. :func:`~llmnas_transfer.fit.laplace.laplace_start` - NUTS's starting points and
   metric from a Laplace approximation at the posterior mode;
3. :func:`~llmnas_transfer.fit.sampling.sample_nuts` or
   :func:`~llmnas_transfer.fit.sampling.sample_svi` - the posterior draws;
4. :func:`~llmnas_transfer.fit.assemble.assemble_tree` - one :class:`xarray.DataTree` with the
   groups ``posterior``, ``sample_stats`` (NUTS), ``log_likelihood`` (per run, the state
   marginalised), ``posterior_predictive``, ``prior``, ``prior_predictive``,
   ``observed_data``, ``constant_data`` and ``predictions`` (forecast pooled validity
   rates of the observed runs).

The fit records its settings and timings in its attributes
(:func:`~llmnas_transfer.fit.fitfile.fit_info` reads them back);
:func:`~llmnas_transfer.fit.fitfile.save_fit` writes it as netCDF atomically and
:func:`~llmnas_transfer.fit.fitfile.load_fit` reads it back.

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
>>> from llmnas_transfer.fit.fitfile import fit_info
>>> fit_info(dt).chain_method  # doctest: +SKIP
'sequential'
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

import jax
import xarray as xr

from llmnas_transfer.fit.assemble import assemble_tree
from llmnas_transfer.fit.laplace import laplace_start
from llmnas_transfer.fit.model import GRID_SIZE
from llmnas_transfer.fit.preparation import prepare
from llmnas_transfer.fit.sampling import sample_nuts, sample_svi
from llmnas_transfer.io.runs import ObservedRuns, read_runs
from llmnas_transfer.progress import Stages
from llmnas_transfer.sim.gaps import DEFAULT_REFERENCE
from llmnas_transfer.sim.keys import as_key
from llmnas_transfer.validate import check_choice, check_float, check_int


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
    progress: bool | Callable[[int, int], None] = False,
    trend: str = "setting",
    bursts: str = "auto",
) -> xr.DataTree:
    """Fit the hierarchical model to observed runs and return an ArviZ ``DataTree``.

    Parameters
    ----------
    runs : validated :class:`~llmnas_transfer.io.runs.ObservedRuns` or a file path.
    method : ``"nuts"`` (default) or ``"svi"`` (full-rank Gaussian guide, optax Adam).
    chains, draws, warmup : NUTS settings; up to one chain per core runs at a time
        (:func:`~llmnas_transfer.fit.sampling.sampling_threads`). For SVI, ``draws``
        is the number of draws taken from the fitted guide.
    seed : integer seed; the same seed gives the same numbers.
    reference : ``"dataset:task"`` the gaps are relative to.
    forecast : number of iterations to forecast past the data.
    datasets, tasks : extra levels to predict (unobserved settings).
    dataset_attrs : ``{name: {"modality":..., "resolution":..., "num_classes":...}}`` for
        datasets that are not in the registry.
    target_accept, dense_mass : NUTS step-size target and mass-matrix structure (the
        Laplace covariance, or with ``dense_mass=False`` its variances).
    adapt_metric : adapt the mass matrix during warmup. ``None`` (default): NUTS starts
        from the Laplace approximation at the posterior mode
        (:func:`~llmnas_transfer.fit.laplace.laplace_start`) and keeps its covariance as
        the metric, adapting only the step size; the metric is adapted (Stan's windowed
        scheme) only when the approximation failed. ``True`` adapts it in any case
        (better for strongly non-Gaussian posteriors, but it needs a long warmup: a dense
        metric estimated from a few hundred draws is worse than the Laplace one).
    svi_steps, svi_learning_rate, svi_batch : SVI optimisation settings (``svi_batch``
        runs per step; default all runs up to 2048, else random mini-batches of 2048).
    prior_draws : prior (and prior predictive) draws stored with the fit.
    grid_size : grid points of the marginalised state.
    max_pointwise : bound on draws x (run, iteration) cells for the per-run groups
        (posterior predictive, log-likelihood, forecasts); with more data those use
        evenly thinned draws (their ``draw`` coordinate says which).
    progress : ``True``: on a terminal, NUTS shows its stages (Laplace start, sampling,
        predictive draws and forecasts) with the time elapsed, and a bar of the sampling
        iterations with the time left; SVI shows its optimisation bar. A callback
        ``f(done, total)`` receives the NUTS iterations done (all chains). The draws do
        not depend on it.
    trend : ``"setting"`` (default: each setting has its own refinement rate and
        asymptote, partially pooled, and the feedback of each iteration moves the state)
        or ``"shared"`` (one drift for every setting, no feedback); see
        :mod:`llmnas_transfer.fit.model`.
    bursts : ``"auto"`` (default), ``"on"`` or ``"off"``: collapse episodes and
        overdispersed counts in the model (see
        :func:`~llmnas_transfer.fit.preparation.prepare`; the fit's notes say what
        ``"auto"`` chose and why).

    Returns
    -------
    xarray.DataTree (see the module docstring for its groups). Its attributes record
    the settings, the seed and the timings: :func:`~llmnas_transfer.fit.fitfile.fit_info`
    returns them as a :class:`~llmnas_transfer.fit.fitfile.FitInfo`.

    Example
    -------
    >>> dt = fit_runs("examples/runs_counts.csv", chains=2, seed=0)  # doctest: +SKIP
    >>> from llmnas_transfer.fit.fitfile import fit_info
    >>> fit_info(dt).seconds_sampling  # doctest: +SKIP
    41.2
    """
    t0 = time.perf_counter()
    method = check_choice("method", method, ("nuts", "svi"))
    chains = check_int("chains", chains, 1, 64)
    draws = check_int("draws", draws, 1, 10**6)
    warmup = check_int("warmup", warmup, 0 if method == "svi" else 1, 10**6)
    seed = check_int("seed", seed, 0, 2**63 - 1)  # the range as_key accepts
    prior_draws = check_int("prior_draws", prior_draws, 1, 10**5)
    target_accept = check_float("target_accept", target_accept, 0.5, 1.0, high_open=True)
    if method == "svi":
        svi_steps = check_int("svi_steps", svi_steps, 1, 10**7)
    if not isinstance(runs, ObservedRuns):
        runs = read_runs(runs)
    prep = prepare(runs, reference=reference, datasets=datasets, tasks=tasks,
                   dataset_attrs=dataset_attrs, num_forecast=forecast, grid_size=grid_size,
                   trend=trend, bursts=bursts)
    k_fit, k_prior, k_ppc, k_fc = jax.random.split(as_key(seed), 4)
    with ExitStack() as stack:
        # SVI's own bar (NumPyro's) is not a stage display's sub-bar
        stages = Stages(progress is True and method == "nuts", 3, stack, label="fit")
        t1 = time.perf_counter()
        if method == "nuts":
            k_init, k_fit = jax.random.split(k_fit)
            stages.stage("Laplace start")
            start = laplace_start(k_init, prep, chains)
            stages.advance()
            bar = stages.stage(f"NUTS, {chains} chains x ({warmup} + {draws})", "iterations")
            sampled = sample_nuts(k_fit, prep, start, chains=chains, draws=draws,
                                  warmup=warmup, target_accept=target_accept,
                                  dense_mass=dense_mass, adapt_metric=adapt_metric,
                                  progress=progress if callable(progress) else bar)
            stages.advance()
        else:
            sampled = sample_svi(k_fit, prep, steps=svi_steps, learning_rate=svi_learning_rate,
                                 draws=draws, batch=svi_batch, progress=progress is True)
        t_sampling = time.perf_counter() - t1
        stages.stage("predictive draws, checks and forecasts")
        dt = assemble_tree(prep, sampled, runs, keys=(k_prior, k_ppc, k_fc),
                           prior_draws=prior_draws, max_pointwise=max_pointwise,
                           attrs={"seed": seed, "target_accept": target_accept})
        stages.advance()
    dt.attrs["seconds_sampling"] = round(t_sampling, 3)
    dt.attrs["seconds_total"] = round(time.perf_counter() - t0, 3)
    return dt


__all__ = ["fit_runs"]
