"""Sample the posterior of prepared runs: NUTS (NumPyro's NUTS kernel) or SVI (a Gaussian guide).

:func:`sample_nuts` runs NUTS from a :class:`~llmnas_transfer.fit.laplace.LaplaceStart`
(up to one chain per core at a time, see :func:`sampling_threads`) as one
compiled program per model, padded data shape and sampler settings (:func:`nuts_program`),
which later fits in the process reuse and later processes find in JAX's persistent cache;
:func:`sample_svi` fits a full-rank (or, above 200 latent dimensions, low-rank) Gaussian
guide with optax Adam and draws from it. Both return a :class:`Sampled`: the draws of
every site as ``(chain, draw, ...)`` arrays, deterministic sites included
(:func:`deterministic_sites`), and the settings to record with the fit.
:func:`model_nuts_program` runs NUTS the same way for any other NumPyro model (the
LEMUR fit, :func:`llmnas_transfer.study.lemur.fit_lemur`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import (
    SVI,
    Predictive,
    Trace_ELBO,
    init_to_median,
    init_to_uniform,
    init_to_value,
)
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal

from llmnas_transfer.cache import register_program_cache
from llmnas_transfer.fit.laplace import LaplaceStart
from llmnas_transfer.fit.model import (
    DETERMINISTIC_DIMS,
    ModelSpec,
    RunsData,
    derived_quantities,
    prior_medians,
    runs_model,
)
from llmnas_transfer.fit.preparation import Prepared, pad_runs
from llmnas_transfer.progress import progress_bar
from llmnas_transfer.validate import check_float, check_int

#: NUTS statistics kept per draw (ArviZ's ``sample_stats``), named as NumPyro's MCMC
#: ``extra_fields``
EXTRA_FIELDS = ("potential_energy", "energy", "num_steps", "accept_prob", "diverging")
#: what :func:`sample_nuts` returns per draw: :data:`EXTRA_FIELDS` and the step size
STAT_FIELDS = (*EXTRA_FIELDS, "step_size")
#: NumPyro's default maximum tree depth (ArviZ's ``reached_max_tree_depth``)
MAX_TREE_DEPTH = 10
#: SVI mini-batch (runs per step) used when there are more runs than this
SVI_BATCH = 2048
#: the SVI guide's initial scale is 0.1 up to about this many runs (paper size, where the
#: Laplace posterior sds of the dynamics are 0.06-0.07 on the unconstrained scale) and
#: shrinks as 1/sqrt(runs) beyond
SVI_SCALE_RUNS = 500


class Sampled(NamedTuple):
    """Posterior draws and how they were made.

    ``samples`` maps every site (latent and deterministic) to a ``(chain, draw, ...)``
    array; ``attrs`` holds the sampler's settings as recorded in the fit's attributes
    (chains, draws, warmup, chain_method, metric and, for SVI, svi_steps and
    svi_learning_rate). NUTS keeps the ``deterministic`` sites it added to the draws and
    its per-draw ``stats`` (:data:`STAT_FIELDS`, ``(chain, draw)`` NumPy arrays); SVI
    keeps its ELBO ``losses``.
    """

    method: str
    samples: dict
    attrs: dict
    deterministic: dict | None = None
    losses: np.ndarray | None = None
    stats: dict | None = None


def sampling_threads(chains: int) -> int:
    """How many chains :func:`sample_nuts` (and :func:`model_nuts_program`) run at the
    same time: one per chain, up to the cores.

    Every chain is a call of one compiled program on the default device, made from its
    own thread, so the chains run in parallel with one compilation. (One JAX CPU device
    per chain compiled the sampler once per device: 4 times for 4 chains.)

    Example
    -------
    >>> 1 <= sampling_threads(4) <= 4
    True
    """
    return max(1, min(int(chains), os.cpu_count() or 1))


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

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=1)
    >>> p = prepare(runs)
    >>> s = sample_svi(jax.random.key(0), p, steps=20, learning_rate=0.01, draws=5)
    >>> latent = {k: s.samples[k] for k in s.samples if k not in DETERMINISTIC_DIMS}
    >>> deterministic_sites(latent, p.spec)["validity"].shape[:2]
    (1, 5)
    """
    shape = next(iter(samples.values())).shape[:2]
    flat = {k: jnp.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in samples.items()}
    out = jax.device_get(_deterministic_kernel(flat, spec))
    return {k: np.asarray(v).reshape(shape + np.shape(v)[1:]) for k, v in out.items()}


class NutsProgram(NamedTuple):
    """What :func:`nuts_program` compiles for: the model and the sampler's sizes and settings
    (every field is a static argument of the compiled program)."""

    spec: ModelSpec
    chains: int
    warmup: int
    draws: int
    target_accept: float
    dense_mass: bool
    adapt_metric: bool
    threads: int


def _model_kwargs(data: RunsData, spec: ModelSpec) -> dict:
    return {"spec": spec, "n_valid": data.n_valid, "deterministic": False}


def _nuts_chain(key, z0: dict, data: RunsData, inverse_mass_matrix, prog: NutsProgram):
    """One NUTS chain (warmup and draws in one scan, so the sampler's step is compiled
    once): the constrained draws and the per-draw statistics (:data:`STAT_FIELDS`)."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import constrain_fn

    kwargs = _model_kwargs(data, prog.spec)
    init_kernel, sample_kernel = hmc(potential_fn_gen=_potential_gen(runs_model), algo="NUTS")
    block = tuple(sorted(z0))
    state = init_kernel(z0, prog.warmup, inverse_mass_matrix={block: inverse_mass_matrix},
                        adapt_mass_matrix=prog.adapt_metric,
                        dense_mass=[block] if prog.dense_mass else [],
                        target_accept_prob=prog.target_accept, model_args=(data,),
                        model_kwargs=kwargs, rng_key=key)
    zs, stats = _draws(sample_kernel, state, (data,), kwargs, prog.warmup, prog.draws)
    latent = jax.vmap(lambda z: constrain_fn(runs_model, (data,), kwargs, z))(zs)
    return latent, stats


def _potential_gen(model: Callable) -> Callable:
    """NumPyro's ``potential_fn_gen`` for :func:`numpyro.infer.hmc.hmc`: the potential of
    ``model`` at given model arguments."""
    from numpyro.infer.util import potential_energy

    return lambda *args, **kwargs: partial(potential_energy, model, args, kwargs)


def _draws(sample_kernel, state, args: tuple, kwargs: dict, warmup: int, draws: int,
           report_every: int = 0):
    """Warmup and draws of one chain in one scan (the sampler's step compiled once): the
    unconstrained draws after the warmup and their statistics (:data:`STAT_FIELDS`).
    With ``report_every`` > 0 the chain reports every that many iterations to the host's
    progress bar (:class:`_ChainProgress`)."""

    def step(s, i):
        s = sample_kernel(s, model_args=args, model_kwargs=kwargs)
        if report_every:
            jax.lax.cond((i + 1) % report_every == 0,
                         lambda: jax.debug.callback(_PROGRESS.tick, report_every),
                         lambda: None)
        return s, (s.z, {"potential_energy": s.potential_energy, "energy": s.energy,
                         "num_steps": s.num_steps, "accept_prob": s.accept_prob,
                         "diverging": s.diverging, "step_size": s.adapt_state.step_size})

    n = warmup + draws
    _, (zs, stats) = jax.lax.scan(step, state, jnp.arange(n) if report_every else None,
                                  length=n)
    return jax.tree.map(lambda a: a[warmup:], (zs, stats))


@lru_cache(maxsize=32)
def nuts_program(prog: NutsProgram):
    """The compiled NUTS run for a model and sampler settings, built once per process.

    Returns ``run(key, data, init_params, inverse_mass_matrix)``: ``data`` a
    :class:`~llmnas_transfer.fit.model.RunsData` (any runs of the same shapes: pad them
    with :func:`~llmnas_transfer.fit.preparation.pad_runs`), ``init_params`` the
    unconstrained start of every chain (a leading chain axis), ``inverse_mass_matrix``
    the initial metric over the sorted latent sites (dense ``(n, n)`` or diagonal
    ``(n,)``). It gives the constrained draws of the latent sites and the sampler's
    statistics (:data:`STAT_FIELDS`), each ``(chain, draw, ...)``.

    The data are arguments, never constants of the program: fits of data of the same
    shapes share it in a process, and across processes JAX's persistent compilation
    cache (:mod:`llmnas_transfer.cache`) finds it. Every chain is one call of the same
    program, compiled once per data shape; ``prog.threads`` chains run at the same time,
    each called from its own thread (:func:`sampling_threads`), so chain ``i`` gives the
    same draws whatever the number of threads.
    """
    # (A pmap or sharded program over JAX CPU devices grew the process's memory by about
    # 20 MB a second while it ran, and one jitted call per CPU device compiles once per
    # device. Chains vmapped in one program were 4 times slower on the 2-core CPU: each
    # NUTS step of the batch runs to the longest tree.)
    chains = _ChainRunner(jax.jit(partial(_nuts_chain, prog=prog)), prog.threads)

    def run(key, data, init_params, inverse_mass_matrix):
        keys = jax.random.split(key, prog.chains)
        return chains([(keys[i], jax.tree.map(lambda a: a[i], init_params), data,
                        inverse_mass_matrix) for i in range(prog.chains)])

    return run


class _ChainRunner:
    """Calls one jitted chain function once per chain, ``threads`` at a time, and stacks
    the results along a new leading chain axis.

    The program is compiled once per argument structure and shapes, before the threads
    start (not once per thread); every chain is a call of that one executable on the
    default device, so chain ``i`` gives the same numbers whatever the number of threads
    or devices."""

    def __init__(self, jitted, threads: int):
        self.jitted, self.threads, self.compiled = jitted, int(threads), {}

    def __call__(self, calls: list[tuple]):
        leaves, tree = jax.tree.flatten(calls[0])
        sig = (tree, tuple((jnp.shape(x), str(jnp.result_type(x))) for x in leaves))
        if sig not in self.compiled:
            self.compiled[sig] = self.jitted.lower(*calls[0]).compile()
        exe = self.compiled[sig]

        def one(args):
            return jax.device_get(exe(*args))

        if self.threads > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                outs = list(pool.map(one, calls))
        else:
            outs = [one(c) for c in calls]
        return jax.tree.map(lambda *xs: np.stack(xs), *outs)


register_program_cache(nuts_program.cache_clear)


class ModelNutsProgram(NamedTuple):
    """What :func:`model_nuts_program` compiles for (every field is static): a NumPyro
    model, its non-array keyword arguments as sorted ``(name, value)`` pairs, and the
    sampler's sizes and settings."""

    model: Callable
    kwargs: tuple
    chains: int
    warmup: int
    draws: int
    target_accept: float
    threads: int
    report_every: int = 0


def _uniform_start(key, model: Callable, args: tuple, kwargs: dict) -> dict:
    """Every latent site on its unconstrained scale, drawn by NumPyro's
    ``init_to_uniform`` (uniform in (-2, 2) there), in one compiled trace of the model
    (``numpyro.infer.util.initialize_model`` first checks the potential op by op)."""
    from numpyro.distributions.transforms import biject_to
    from numpyro.handlers import seed, substitute, trace

    tr = trace(substitute(seed(model, key), substitute_fn=init_to_uniform)).get_trace(
        *args, **kwargs)
    return {name: biject_to(site["fn"].support).inv(site["value"])
            for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]}


class _ChainProgress:
    """The host side of the chains' progress reports: iterations done, summed over the
    chains and threads, passed on to a :func:`~llmnas_transfer.progress.progress_bar`
    update function."""

    def __init__(self):
        self.lock, self.done, self.total, self.update = threading.Lock(), 0, 0, None

    def start(self, update, total: int) -> None:
        self.done, self.total, self.update = 0, int(total), update

    def tick(self, n) -> None:
        with self.lock:
            self.done += int(n)
            if self.update is not None:
                self.update(min(self.done, self.total), self.total)


_PROGRESS = _ChainProgress()


def _model_chain(key, args: tuple, prog: ModelNutsProgram):
    """One NUTS chain of ``prog.model`` from NumPyro's uniform start, adapting the step
    size and a diagonal metric in the warmup (NumPyro's ``NUTS`` defaults): the
    constrained draws of the latent and deterministic sites and the per-draw statistics
    (:data:`STAT_FIELDS`)."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import constrain_fn

    kwargs = dict(prog.kwargs)
    k_init, k_run = jax.random.split(key)
    init_kernel, sample_kernel = hmc(potential_fn_gen=_potential_gen(prog.model), algo="NUTS")
    state = init_kernel(_uniform_start(k_init, prog.model, args, kwargs), prog.warmup,
                        adapt_mass_matrix=True, target_accept_prob=prog.target_accept,
                        model_args=args, model_kwargs=kwargs, rng_key=k_run)
    zs, stats = _draws(sample_kernel, state, args, kwargs, prog.warmup, prog.draws,
                       prog.report_every)
    draws = jax.vmap(lambda z: constrain_fn(prog.model, args, kwargs, z,
                                            return_deterministic=True))(zs)
    return draws, stats


@lru_cache(maxsize=8)
def model_nuts_program(prog: ModelNutsProgram):
    """NUTS for any NumPyro model, compiled once per process and model arguments' shapes:
    the chains run as in :func:`nuts_program` (one executable, up to ``prog.threads`` at
    a time, chain ``i`` with the ``i``-th key of ``jax.random.split(key, chains)``), so
    the draws depend only on the key, whatever the number of cores or JAX devices.

    Returns ``run(key, args, progress=False)``: ``args`` the model's positional
    arguments (arrays, NamedTuples of arrays or ``None``); ``progress`` a
    :func:`~llmnas_transfer.progress.progress_bar` argument, shown when
    ``prog.report_every`` > 0 (the chains report every that many iterations; such a
    program is not kept in JAX's persistent cache). It gives the draws of every latent and
    deterministic site and the sampler's statistics (:data:`STAT_FIELDS`), each
    ``(chain, draw, ...)`` NumPy arrays. Each chain starts uniformly in
    ``(-2, 2)`` on the unconstrained scale and adapts the step size and a diagonal
    metric in its warmup (NumPyro's ``NUTS`` defaults).

    Example
    -------
    >>> import numpyro, numpyro.distributions as dist
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> run = model_nuts_program(ModelNutsProgram(model, (), chains=2, warmup=100,
    ...                                           draws=50, target_accept=0.8, threads=2))
    >>> draws, stats = run(jax.random.key(0), (jnp.array([1.0, 2.0, 3.0]),))
    >>> draws["mu"].shape, stats["diverging"].shape
    ((2, 50), (2, 50))
    """
    chains = _ChainRunner(jax.jit(partial(_model_chain, prog=prog)), prog.threads)

    def run(key, args: tuple, progress=False):
        keys = jax.random.split(key, prog.chains)
        total = prog.chains * (prog.warmup + prog.draws)
        update = progress_bar(progress if prog.report_every else False, total,
                              label="NUTS", unit="iterations")
        _PROGRESS.start(update, total)
        try:
            return chains([(keys[i], tuple(args)) for i in range(prog.chains)])
        finally:
            _PROGRESS.start(None, 0)
            update(None, 0)

    return run


register_program_cache(model_nuts_program.cache_clear)


def sample_nuts(
    key: jax.Array,
    prep: Prepared,
    start: LaplaceStart,
    *,
    chains: int,
    draws: int,
    warmup: int,
    target_accept: float = 0.9,
    dense_mass: bool = True,
    adapt_metric: bool | None = None,
    progress: bool = False,
) -> Sampled:
    """Run NUTS on prepared runs from a Laplace start (NumPyro's functional NUTS kernel).

    The chains start at ``start.init_params``; the metric is the Laplace covariance,
    adapted in the warmup only where the approximation failed (``adapt_metric=None``) or
    when ``adapt_metric`` is True. Up to one chain per core runs at a time
    (:func:`sampling_threads`); chain ``i`` has the same key and start, and gives the same
    draws, whatever the number of cores. The sampler is compiled once per
    model, padded data shape and settings (:func:`nuts_program`) and reused by later
    fits; ``progress`` is accepted for compatibility (the compiled run shows no bar).

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.laplace import laplace_start
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=2)
    >>> p = prepare(runs)
    >>> s = sample_nuts(jax.random.key(1), p, laplace_start(jax.random.key(0), p, 1),
    ...                 chains=1, draws=20, warmup=20)  # doctest: +SKIP
    >>> s.attrs["metric"], s.samples["kappa"].shape  # doctest: +SKIP
    ('laplace', (1, 20))
    """
    del progress
    chains = check_int("chains", chains, 1, 64)
    draws = check_int("draws", draws, 1, 10**6)
    warmup = check_int("warmup", warmup, 1, 10**6)
    target_accept = check_float("target_accept", target_accept, 0.5, 1.0, high_open=True)
    spec = prep.spec
    data = pad_runs(prep.data)
    threads = sampling_threads(chains)
    chain_method = "parallel" if threads > 1 else "sequential"
    adapt = (not start.converged) if adapt_metric is None else bool(adapt_metric)
    cov = np.asarray(start.cov, np.float32)  # the identity where the Laplace fit failed
    imm = jnp.asarray(cov if dense_mass else np.diag(cov))
    init = start.init_params
    if chains == 1:  # laplace_start gives a single chain's start without the chain axis
        init = jax.tree.map(lambda a: jnp.asarray(a)[None], init)
    run = nuts_program(NutsProgram(spec, chains, draws=draws, warmup=warmup,
                                   target_accept=float(target_accept),
                                   dense_mass=bool(dense_mass), adapt_metric=adapt,
                                   threads=threads))
    latent, stats = jax.device_get(run(key, data, init, imm))
    latent = {k: np.asarray(v) for k, v in latent.items()}
    stats = {k: np.asarray(v) for k, v in stats.items()}
    det = deterministic_sites(latent, spec)
    attrs = {"chains": chains, "draws": draws, "warmup": warmup,
             "chain_method": chain_method, "metric": "adapted" if adapt else "laplace"}
    return Sampled("nuts", {**latent, **det}, attrs, deterministic=det, stats=stats)


def sample_svi(
    key: jax.Array,
    prep: Prepared,
    *,
    steps: int,
    learning_rate: float,
    draws: int,
    batch: int | None = None,
    progress: bool = False,
) -> Sampled:
    """Fit a Gaussian guide by SVI (optax Adam, cosine decay) and draw from it.

    The guide is full rank (``AutoMultivariateNormal``) up to 200 latent dimensions, else
    low rank (rank 20). ``batch`` runs per step: by default all runs up to
    :data:`SVI_BATCH`, else random mini-batches of that size. The draws come as one chain.

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=1)
    >>> s = sample_svi(jax.random.key(0), prepare(runs),
    ...                steps=30, learning_rate=0.01, draws=10)
    >>> s.attrs["chain_method"], s.losses.shape
    ('svi', (30,))
    """
    import optax

    steps = check_int("svi_steps", steps, 1, 10**7)
    draws = check_int("draws", draws, 1, 10**6)
    spec, data = prep.spec, prep.data
    n_runs = int(data.n_generated.shape[0])
    if batch is None:
        batch = n_runs if n_runs <= SVI_BATCH else SVI_BATCH
    batch = check_int("svi_batch", batch, 1, 10**9)
    sub = None if batch >= n_runs else batch
    lr = check_float("svi_learning_rate", learning_rate, 0.0, 1.0, low_open=True,
                     high_open=True)
    k_init, k_run, k_draw = jax.random.split(key, 3)
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.05)
    optim = numpyro.optim.optax_to_numpyro(
        optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule)))
    # the guide starts at the prior centres of the dynamics, with a scale near that of
    # the posterior, which shrinks as 1/sqrt(runs) (Adam moves the scale by about the
    # learning rate per step, so a start 10x too wide costs hundreds of steps)
    init_scale = 0.1 * min(1.0, (SVI_SCALE_RUNS / n_runs) ** 0.5)
    guide = AutoMultivariateNormal(runs_model, init_loc_fn=init_to_value(values=prior_medians()),
                                   init_scale=init_scale)
    svi = SVI(runs_model, guide, optim, Trace_ELBO())
    res = svi.run(k_run, steps, data, spec=spec, n_valid=data.n_valid, subsample_size=sub,
                  progress_bar=progress)
    # the dimension of the latent space decides the guide: full rank up to 200 dimensions
    if guide.latent_dim > 200:  # full rank too costly: refit with a low-rank guide
        guide = AutoLowRankMultivariateNormal(runs_model, rank=20,
                                              init_loc_fn=init_to_median(num_samples=15))
        svi = SVI(runs_model, guide, optim, Trace_ELBO())
        res = svi.run(k_run, steps, data, spec=spec, n_valid=data.n_valid, subsample_size=sub,
                      progress_bar=progress)
    k_lat, k_det = jax.random.split(k_draw)
    latent = guide.sample_posterior(k_lat, res.params, data, spec=spec, n_valid=data.n_valid,
                                    sample_shape=(draws,))
    det = Predictive(runs_model, posterior_samples=latent,
                     return_sites=list(DETERMINISTIC_DIMS))(k_det, data, spec=spec,
                                                            n_valid=data.n_valid)
    samples = {k: np.asarray(v)[None] for k, v in {**latent, **det}.items()
               if k != "n_valid"}
    attrs = {"chains": 1, "draws": draws, "warmup": 0, "chain_method": "svi",
             "metric": "none", "svi_steps": steps, "svi_learning_rate": lr}
    return Sampled("svi", samples, attrs, losses=np.asarray(res.losses))


__all__ = [
    "EXTRA_FIELDS", "MAX_TREE_DEPTH", "STAT_FIELDS", "SVI_BATCH",
    "SVI_SCALE_RUNS", "ModelNutsProgram", "NutsProgram", "Sampled", "deterministic_sites",
    "model_nuts_program", "nuts_program", "sample_nuts", "sample_svi", "sampling_threads",
]
