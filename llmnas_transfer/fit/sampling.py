"""Sample the posterior of prepared runs: NUTS (NumPyro's NUTS kernel) or SVI (a Gaussian guide).

:func:`sample_nuts` runs NUTS from a :class:`~llmnas_transfer.fit.laplace.LaplaceStart`
(up to one chain per core at a time, see :func:`sampling_threads`) as calls of one
compiled program per model, padded data shape and sampler settings (:func:`nuts_program`:
segments of :func:`segment_length` iterations, the progress reported between them),
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

    Every chain is made of calls of one compiled program on the default device, from its
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


#: NUTS iterations of one compiled segment: a chain runs its warmup and draws as calls of
#: one program of about this many iterations (:func:`segment_length`), and progress is
#: reported between the calls
SEGMENT = 100


def segment_length(iterations: int) -> int:
    """Iterations of each compiled NUTS segment for a chain of ``iterations`` (warmup plus
    draws): segments of at most :data:`SEGMENT` iterations, as even as can be. The last
    segment may run past the end by fewer iterations than there are segments; those
    iterations are discarded.

    Example
    -------
    >>> segment_length(2000), segment_length(1050), segment_length(60)
    (100, 96, 60)
    """
    n = check_int("iterations", iterations, 1)
    return -(-n // -(-n // SEGMENT))


class _ChainSpec(NamedTuple):
    """What the chains' programs are built from (static): the model, its keyword
    arguments as sorted pairs, the warmup and draws, the step-size target, whether the
    warmup adapts the metric and whether it is dense, and whether the draws keep the
    model's deterministic sites."""

    model: Callable
    kwargs: tuple
    warmup: int
    draws: int
    target_accept: float
    adapt_metric: bool
    dense_mass: bool
    deterministic: bool


def _potential_gen(model: Callable) -> Callable:
    """NumPyro's ``potential_fn_gen`` for :func:`numpyro.infer.hmc.hmc`: the potential of
    ``model`` at given model arguments."""
    from numpyro.infer.util import potential_energy

    return lambda *args, **kwargs: partial(potential_energy, model, args, kwargs)


def _nuts_kernel(c: _ChainSpec, args: tuple, z, key, inverse_mass_matrix):
    """NumPyro's functional NUTS bound to the model arguments ``args`` of the program
    being traced: the initial state at ``z`` and the sample kernel.

    NumPyro's ``init_kernel`` sets the ``sample_kernel``'s warmup schedule and adapter,
    which hold the model's potential at ``args``: :func:`_segment` starts a chain inside
    a branch of ``lax.cond``, then binds a kernel again outside it and discards that
    state (XLA drops its work)."""
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn_gen=_potential_gen(c.model), algo="NUTS")
    block = tuple(sorted(z))
    metric = {}
    if inverse_mass_matrix is not None:
        metric = {"inverse_mass_matrix": inverse_mass_matrix,
                  "dense_mass": [block] if c.dense_mass else []}
    state = init_kernel(z, c.warmup, adapt_mass_matrix=c.adapt_metric,
                        target_accept_prob=c.target_accept, model_args=args,
                        model_kwargs=dict(c.kwargs), rng_key=key, **metric)
    return state, sample_kernel


def _initial_state(c: _ChainSpec, start: Callable, start_args: tuple, args: tuple):
    """A chain's initial NUTS state: ``start(start_args, args)`` gives its unconstrained
    start, key and metric."""
    return _nuts_kernel(c, args, *start(start_args, args))[0]


def _segment(start_args: tuple, state, first, args: tuple, c: _ChainSpec, length: int,
             start: Callable):
    """``length`` NUTS iterations of one chain in one scan: from ``state``, or with
    ``first`` from the chain's initial state (``start(start_args, args)`` gives its
    unconstrained start, key and metric). Returns the new state, the draws on the model's
    scale (with its deterministic sites when ``c.deterministic``) and their statistics
    (:data:`STAT_FIELDS`), one row per iteration."""
    from numpyro.infer.util import constrain_fn

    state = jax.lax.cond(first, lambda: _initial_state(c, start, start_args, args),
                         lambda: state)
    _, sample_kernel = _nuts_kernel(c, args, state.z, state.rng_key,
                                    state.adapt_state.inverse_mass_matrix)
    kwargs = dict(c.kwargs)

    def step(s, _):
        s = sample_kernel(s, model_args=args, model_kwargs=kwargs)
        draw = constrain_fn(c.model, args, kwargs, s.z, return_deterministic=c.deterministic)
        return s, (draw, {"potential_energy": s.potential_energy, "energy": s.energy,
                          "num_steps": s.num_steps, "accept_prob": s.accept_prob,
                          "diverging": s.diverging, "step_size": s.adapt_state.step_size})

    return jax.lax.scan(step, state, None, length=length)


class _ChainRunner:
    """Runs NUTS chains as calls of one compiled program per argument shapes: a segment of
    :func:`segment_length` iterations, called until the warmup and draws are done (the
    first call of a chain starts it: ``start(start_args, args)`` gives its
    unconstrained start, key and metric). The program is compiled before the threads
    start; ``threads`` chains run at a time, each from its own thread, and every chain is
    a call of the same executable on the default device, so chain ``i`` gives the same
    numbers whatever the number of threads or devices, and whether progress is shown.
    Results are stacked along a new leading chain axis."""

    def __init__(self, start: Callable, c: _ChainSpec, threads: int):
        self.c, self.threads, self.start = c, int(threads), start
        n = c.warmup + c.draws
        self.length = segment_length(n)
        self.segments = -(-n // self.length)
        self.jitted = jax.jit(partial(_segment, c=c, length=self.length, start=start))
        self.compiled: dict = {}

    def _program(self, start_args: tuple, args: tuple):
        leaves, tree = jax.tree.flatten((start_args, args))
        sig = (tree, tuple((jnp.shape(x), str(jnp.result_type(x))) for x in leaves))
        if sig not in self.compiled:
            state = jax.eval_shape(partial(_initial_state, self.c, self.start),
                                   start_args, args)
            exe = self.jitted.lower(start_args, state, True, args).compile()
            self.compiled[sig] = (exe, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                                    state))
        return self.compiled[sig]

    def __call__(self, starts: list[tuple], args: tuple, progress=False):
        """Run one chain per element of ``starts`` (its ``start_args``) on the model
        arguments ``args``; ``progress`` is a
        :func:`~llmnas_transfer.progress.progress_bar` argument (iterations of all
        chains). Returns the draws and the statistics, ``(chain, draw, ...)``."""
        segment, blank = self._program(starts[0], args)
        c = self.c
        total = len(starts) * (c.warmup + c.draws)
        update = progress_bar(progress, total, label="NUTS", unit="iterations")
        lock, done = threading.Lock(), [0]

        def one(start_args):
            state, parts, left = blank, [], c.warmup + c.draws
            for i in range(self.segments):
                state, part = segment(start_args, state, i == 0, args)
                parts.append(jax.device_get(part))
                with lock:
                    done[0] += min(self.length, left)
                    update(done[0], total)
                left -= self.length
            return jax.tree.map(
                lambda *xs: np.concatenate(xs)[c.warmup:c.warmup + c.draws], *parts)

        try:
            if self.threads > 1:
                with ThreadPoolExecutor(self.threads) as pool:
                    outs = list(pool.map(one, starts))
            else:
                outs = [one(s) for s in starts]
        finally:
            update(None, 0)
        return jax.tree.map(lambda *xs: np.stack(xs), *outs)


def _observed_runs_model(data: RunsData, *, spec: ModelSpec) -> None:
    """:func:`~llmnas_transfer.fit.model.runs_model` conditioned on the runs' own valid
    counts, without its deterministic sites (NUTS samples this)."""
    runs_model(data, spec=spec, n_valid=data.n_valid, deterministic=False)


def _laplace_start(start_args: tuple, args: tuple):
    """Where a chain of the runs model starts (``start_args``: its key, its Laplace start
    and the Laplace metric): the unconstrained start, the key and the metric."""
    key, z0, inverse_mass_matrix = start_args
    return z0, key, {tuple(sorted(z0)): inverse_mass_matrix}


@lru_cache(maxsize=32)
def nuts_program(prog: NutsProgram):
    """The compiled NUTS run for a model and sampler settings, built once per process.

    Returns ``run(key, data, init_params, inverse_mass_matrix, progress=False)``:
    ``data`` a :class:`~llmnas_transfer.fit.model.RunsData` (any runs of the same shapes:
    pad them with :func:`~llmnas_transfer.fit.preparation.pad_runs`), ``init_params`` the
    unconstrained start of every chain (a leading chain axis), ``inverse_mass_matrix``
    the initial metric over the sorted latent sites (dense ``(n, n)`` or diagonal
    ``(n,)``), ``progress`` a :func:`~llmnas_transfer.progress.progress_bar` argument.
    It gives the constrained draws of the latent sites and the sampler's statistics
    (:data:`STAT_FIELDS`), each ``(chain, draw, ...)``.

    The data are arguments, never constants of the program: fits of data of the same
    shapes share it in a process, and across processes JAX's persistent compilation
    cache (:mod:`llmnas_transfer.cache`) finds it. A chain is calls of that program, a
    segment of :func:`segment_length` iterations each (the first call starts the chain;
    the progress is reported between calls); ``prog.threads`` chains run at a time, each
    from its own thread (:func:`sampling_threads`), so chain ``i`` gives the same draws
    whatever the number of threads.
    """
    # (A pmap or sharded program over JAX CPU devices grew the process's memory by about
    # 20 MB a second while it ran, and one jitted call per CPU device compiles once per
    # device. Chains vmapped in one program were 4 times slower on the 2-core CPU: each
    # NUTS step of the batch runs to the longest tree.)
    c = _ChainSpec(_observed_runs_model, (("spec", prog.spec),), prog.warmup, prog.draws,
                   prog.target_accept, prog.adapt_metric, prog.dense_mass, False)
    chains = _ChainRunner(_laplace_start, c, prog.threads)

    def run(key, data, init_params, inverse_mass_matrix, progress=False):
        keys = jax.random.split(key, prog.chains)
        return chains([(keys[i], jax.tree.map(lambda a: a[i], init_params),
                        inverse_mass_matrix) for i in range(prog.chains)], (data,), progress)

    return run


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


def _model_start(c: _ChainSpec, start_args: tuple, args: tuple):
    """Where a chain of ``c.model`` starts (``start_args``: its key): NumPyro's uniform
    start, the key and the default metric (diagonal, adapted in the warmup)."""
    k_init, k_run = jax.random.split(start_args[0])
    return _uniform_start(k_init, c.model, args, dict(c.kwargs)), k_run, None


@lru_cache(maxsize=8)
def model_nuts_program(prog: ModelNutsProgram):
    """NUTS for any NumPyro model, compiled once per process and model arguments' shapes:
    the chains run as in :func:`nuts_program` (the same three programs, up to
    ``prog.threads`` chains at a time, chain ``i`` with the ``i``-th key of
    ``jax.random.split(key, chains)``), so the draws depend only on the key, whatever the
    number of cores or JAX devices and whether progress is shown.

    Returns ``run(key, args, progress=False)``: ``args`` the model's positional
    arguments (arrays, NamedTuples of arrays or ``None``); ``progress`` a
    :func:`~llmnas_transfer.progress.progress_bar` argument (the bar counts the NUTS
    iterations of all chains). It gives the draws of every latent and deterministic site
    and the sampler's statistics (:data:`STAT_FIELDS`), each ``(chain, draw, ...)`` NumPy
    arrays. Each chain starts uniformly in ``(-2, 2)`` on the unconstrained scale and
    adapts the step size and a diagonal metric in its warmup (NumPyro's ``NUTS``
    defaults).

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
    c = _ChainSpec(prog.model, prog.kwargs, prog.warmup, prog.draws, prog.target_accept,
                   True, False, True)
    chains = _ChainRunner(partial(_model_start, c), c, prog.threads)

    def run(key, args: tuple, progress=False):
        keys = jax.random.split(key, prog.chains)
        return chains([(keys[i],) for i in range(prog.chains)], tuple(args), progress)

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
    progress: bool | Callable[[int, int], None] = False,
) -> Sampled:
    """Run NUTS on prepared runs from a Laplace start (NumPyro's functional NUTS kernel).

    The chains start at ``start.init_params``; the metric is the Laplace covariance,
    adapted in the warmup only where the approximation failed (``adapt_metric=None``) or
    when ``adapt_metric`` is True. Up to one chain per core runs at a time
    (:func:`sampling_threads`); chain ``i`` has the same key and start, and gives the same
    draws, whatever the number of cores. The sampler is compiled once per
    model, padded data shape and settings (:func:`nuts_program`) and reused by later
    fits. ``progress``: ``True`` for a bar of the NUTS iterations (all chains) with the
    time left, on stderr, or a callback ``f(done, total)``; the draws do not depend on it.

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
    latent, stats = run(key, data, init, imm, progress)
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
