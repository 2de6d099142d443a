"""Simulate a dataset x task grid: scan over iterations, trials in lanes, vmap over settings.

Keys follow the one scheme of :mod:`llmnas_transfer.sim.keys`: the key of a setting is
``fold_in(key, setting_id(dataset, task))``, the key of a trial is
``fold_in(setting_key, trial_index)`` and the key of an iteration is
``fold_in(trial_key, iteration)``. A trial's outcome therefore depends only on the seed,
the setting's names and the trial index: adding settings, trials or iterations, or
changing the chunk size, never changes numbers already produced.

Example
-------
>>> from llmnas_transfer import simulate
>>> ds = simulate(0, datasets=["cifar-10"], tasks=["classification"], num_trials=4,
...               num_iterations=3, num_candidates=5)
>>> dict(ds.sizes)
{'dataset': 1, 'task': 1, 'trial': 4, 'iteration': 3, 'accuracy_bin': 20, 'novelty_bin': 20}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.progress import progress_bar
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.dynamics import Candidates, fixed_sum0, from_accuracy, run_trials
from llmnas_transfer.sim.keys import as_key, trial_keys
from llmnas_transfer.sim.params import DynamicsParams, ModelDefaults, SettingEffects, load_defaults
from llmnas_transfer.sim.summary import IterationSummary, summary_chunk
from llmnas_transfer.sim.types import Array, PRNGKey
from llmnas_transfer.validate import check_choice, check_int, check_size

MAX_TRIALS = 10**9
MAX_ITERATIONS = 10_000
MAX_CANDIDATES = 10**6
MAX_RESULT_BYTES = 4 * 2**30  # results held in host memory at once
DEFAULT_CHUNK = 1024
MAX_BINS = 1000
#: trial indices must stay below this (they are int32 on the device)
MAX_TRIAL_INDEX = 2**31 - 1

_UNROLL_HIST = 64  # candidates per iteration up to which the histogram loop is unrolled


def _hist(x: Array, valid: Array, bins: int) -> Array:
    """Histogram counts per lane of ``x`` (candidate axis first); returns ``L + (bins,)``."""
    idx = jnp.clip(jnp.floor(jnp.where(valid, x, 0.0) * bins).astype(jnp.int32), 0, bins - 1)
    idx = jnp.where(valid, idx, bins)
    edges = jnp.arange(bins, dtype=jnp.int32).reshape((bins,) + (1,) * (idx.ndim - 1))
    if idx.shape[0] <= _UNROLL_HIST:
        # elementwise adds over the few candidates: one fused loop, vectorised over lanes
        counts = jnp.zeros((bins,) + idx.shape[1:], jnp.int32)
        for j in range(idx.shape[0]):
            counts = counts + (idx[j][None] == edges).astype(jnp.int32)
    else:  # many candidates: a rolled loop keeps the program small
        counts = jax.lax.fori_loop(
            0, idx.shape[0],
            lambda j, c: c + (jax.lax.dynamic_index_in_dim(idx, j, 0, keepdims=True)
                              == edges).astype(jnp.int32),
            jnp.zeros((bins,) + idx.shape[1:], jnp.int32))
    return jnp.moveaxis(counts, 0, -1)


def summarize_candidates(c: Candidates, bins: int, chance: Array = 0.0) -> IterationSummary:
    """Reduce one iteration's candidates (candidate axis first) to :class:`IterationSummary`.

    The accuracy histogram bins the chance-normalised accuracy ``(A - c) / (1 - c)`` on
    [0, 1] (as the summary path does); sums are of the accuracy itself.

    Works for one trial (``valid`` of shape ``(N,)``) or a lane of trials (``(N,) + L``);
    sums run in a fixed order, so a trial's numbers do not depend on the lanes beside it.

    Example
    -------
    >>> from llmnas_transfer.sim.dynamics import draw_candidates
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    >>> c = draw_candidates(jax.random.key(0), jnp.float32(0.5), d.dynamics_params(), e, 8)
    >>> summarize_candidates(c, bins=4, chance=e.chance).accuracy_hist.shape
    (4,)
    """
    acc = jnp.where(c.valid, c.accuracy, 0.0)
    nov = jnp.where(c.valid, c.novelty, 0.0)
    lanes = c.valid.shape[1:]
    chance = jnp.broadcast_to(chance, lanes)
    chance = chance.reshape((1,) + chance.shape)  # candidate axis in front
    return IterationSummary(
        jnp.sum(c.valid, axis=0, dtype=jnp.int32),  # integers: exact in any order
        fixed_sum0(acc), fixed_sum0(acc * acc), fixed_sum0(nov), fixed_sum0(nov * nov),
        c.state, c.p_valid,
        (_hist(from_accuracy(c.accuracy, chance), c.valid, bins) if bins
         else jnp.zeros(lanes + (0,), jnp.int32)),
        _hist(c.novelty, c.valid, bins) if bins else jnp.zeros(lanes + (0,), jnp.int32),
    )


def _candidate_reduce(bins: int, per_candidate: bool, chance: Array = 0.0):
    def reduce(c: Candidates):
        return summarize_candidates(c, bins, chance), (c if per_candidate else None)

    return reduce


def simulate_trial(
    key: PRNGKey,
    params: DynamicsParams,
    effects: SettingEffects,
    *,
    num_iterations: int,
    num_candidates: int,
    bins: int = 20,
    per_candidate: bool = False,
) -> tuple[IterationSummary, Candidates | None]:
    """One trial of one setting: :func:`~llmnas_transfer.sim.dynamics.run_trials` on its key.

    ``key`` is the trial key (:func:`~llmnas_transfer.sim.keys.trial_key`). Returns
    per-iteration summaries (leading axis ``iteration``) and, if asked, the per-candidate
    draws (``iteration x candidate``): the draws :func:`simulate` makes for this trial
    (accuracy and novelty equal up to an ulp, see
    :func:`~llmnas_transfer.sim.dynamics.candidate_noise`).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> e = jax.tree.map(lambda x: x[0], d.effects(["cifar-10"], ["classification"]))
    >>> summ, cands = simulate_trial(jax.random.key(0), d.dynamics_params(), e,
    ...                              num_iterations=3, num_candidates=5, per_candidate=True)
    >>> summ.n_valid.shape, cands.valid.shape
    ((3,), (3, 5))
    """
    return run_trials(key, params, effects, num_iterations=num_iterations,
                      num_candidates=num_candidates,
                      reduce=_candidate_reduce(bins, per_candidate, effects.chance))


PATHS = ("candidates", "summary")


def chunk_kernel(
    key: PRNGKey,
    params: DynamicsParams,
    effects: SettingEffects,
    setting_ids: Array,
    trial_ids: Array,
    *,
    num_iterations: int,
    num_candidates: int,
    bins: int = 20,
    per_candidate: bool = False,
    path: str = "candidates",
    feedback: bool = False,
    bursts: bool = True,
) -> tuple[IterationSummary, Candidates | None]:
    """The kernel of a chunk: settings (vmap) x trials (lanes) x iterations (scan).

    :func:`simulate_chunk` is its jitted form; the streaming sweep traces it inside its
    own jitted, sharded kernel. Summary leaves have shape
    ``(setting, trial, iteration, ...)``; per-candidate leaves (when ``per_candidate``)
    have shape ``(setting, iteration, candidate, trial)`` for ``valid``, ``accuracy`` and
    ``novelty`` and ``(setting, iteration, trial)`` for ``p_valid`` and ``state``: the
    order the kernel produces them in, trials on the minor axis (:func:`simulate`
    rearranges them as a view on the host). ``path="summary"`` draws each pair's
    summaries directly (:mod:`llmnas_transfer.sim.summary`); it has no per-candidate
    output. ``feedback`` (static) tells the summary path whether the feedback strengths
    may be nonzero (:func:`has_feedback`); the candidate path always feeds back.
    ``bursts`` (static) tells the summary path whether collapse or dispersion may be on
    (:func:`has_bursts`; ``False`` runs the program of earlier versions, ``True`` is right
    for any parameters); the candidate path always draws them (at the cost of one hash
    per trial and iteration when they are off, with unchanged numbers).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> summ, _ = simulate_chunk(jax.random.key(0), d.dynamics_params(),
    ...                          d.effects(["svhn"], ["detection"]), jnp.array([7], "uint32"),
    ...                          jnp.arange(3), num_iterations=2, num_candidates=4)
    >>> summ.n_valid.shape, summ.accuracy_hist.shape
    ((1, 3, 2), (1, 3, 2, 20))
    """
    if path == "summary":
        return summary_chunk(key, params, effects, setting_ids, trial_ids,
                             num_iterations=num_iterations, num_candidates=num_candidates,
                             bins=bins, feedback=feedback, bursts=bursts), None

    # The scan over iterations runs outside the trials: each step works on all trials of
    # the chunk at once (trials on the minor axis), and the stacked per-candidate output
    # needs no transpose.
    def one_setting(eff: SettingEffects, tkeys: PRNGKey):
        return run_trials(tkeys, params, eff, num_iterations=num_iterations,
                          num_candidates=num_candidates,
                          reduce=_candidate_reduce(bins, per_candidate, eff.chance))

    tkeys = trial_keys(key, setting_ids, trial_ids)  # (setting, trial)
    summ, cands = jax.vmap(one_setting)(effects, tkeys)  # (setting, iteration, ...)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 1, 2), summ), cands


#: :func:`chunk_kernel` jitted (one compile per shape and static setting)
simulate_chunk = jax.jit(
    chunk_kernel,
    static_argnames=("num_iterations", "num_candidates", "bins", "per_candidate", "path",
                     "feedback", "bursts"),
)


def has_feedback(params: DynamicsParams) -> bool:
    """Whether either feedback strength is nonzero (concrete parameters only).

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> has_feedback(load_defaults().dynamics_params()._replace(feedback_accuracy=0.5))
    True
    """
    return bool(np.asarray(params.feedback_validity) != 0
                or np.asarray(params.feedback_accuracy) != 0)


def has_bursts(params: DynamicsParams) -> bool:
    """Whether collapse regimes or validity dispersion are on (concrete parameters only):
    ``collapse_enter > 0`` or ``validity_dispersion > 0``.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> p = load_defaults().dynamics_params()
    >>> has_bursts(p), has_bursts(p._replace(collapse_enter=0.1))
    (False, True)
    """
    return bool(np.asarray(params.collapse_enter) > 0
                or np.asarray(params.validity_dispersion) > 0)


def simulate(
    key: int | PRNGKey = 0,
    *,
    datasets: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    num_trials: int = 15,
    num_iterations: int = 10,
    num_candidates: int = 20,
    trial_offset: int = 0,
    per_candidate: bool = False,
    bins: int = 20,
    chunk_size: int | None = None,
    defaults: ModelDefaults | None = None,
    progress: bool | Callable[[int, int], None] = False,
    path: str = "candidates",
) -> xr.Dataset:
    """Simulate every (dataset, task) cell and return an :class:`xarray.Dataset`.

    Parameters
    ----------
    key : integer seed or PRNG key.
    datasets, tasks : registry names (``None`` = the built-ins; a comma-separated string
        is accepted).
    num_trials, num_iterations, num_candidates : trials per setting, refinement
        iterations, candidates generated per iteration.
    trial_offset : index of the first trial (trials ``offset .. offset+R-1`` are run).
    per_candidate : also return per-candidate ``valid``, ``accuracy``, ``novelty``.
    bins : number of fixed accuracy/novelty histogram bins on [0, 1] (0 disables).
    chunk_size : trials per compiled call (results do not depend on it).
    defaults : parameters; the shipped calibrated defaults if ``None``.
    progress : ``True`` for a rich progress bar, or a callback ``f(done, total)``.
    path : ``"candidates"`` draws every candidate (exact; needed for ``per_candidate``);
        ``"summary"`` draws each (trial, iteration)'s summaries directly, at a cost that
        does not grow with ``num_candidates`` (:mod:`llmnas_transfer.sim.summary`: exact
        counts and histograms, accuracy/novelty sums exact up to 16 valid candidates and a
        tested normal approximation beyond).

    Returns
    -------
    xarray.Dataset with dims ``(dataset, task, trial, iteration)`` holding ``n_valid``,
    ``validity_rate``, accuracy and novelty sums, means and sds over valid candidates,
    the latent ``state``, ``p_valid``, histograms, and (optionally) per-candidate values.

    Example
    -------
    >>> ds = simulate(1, datasets="cifar-10,audioset", tasks="classification",
    ...               num_trials=3, num_iterations=2, num_candidates=4, per_candidate=True)
    >>> ds["valid"].dims
    ('dataset', 'task', 'trial', 'iteration', 'candidate')
    """
    num_trials = check_size("num_trials", num_trials, MAX_TRIALS)
    num_iterations = check_size("num_iterations", num_iterations, MAX_ITERATIONS)
    num_candidates = check_size("num_candidates", num_candidates, MAX_CANDIDATES)
    trial_offset = check_int("trial_offset", trial_offset, 0, MAX_TRIAL_INDEX - num_trials)
    bins = check_int("bins", bins, 0, MAX_BINS)
    path = check_choice("path", path, PATHS)
    if path == "summary" and per_candidate:
        raise UserInputError("per_candidate=True needs path='candidates' (the summary path "
                             "never draws individual candidates)")
    key = as_key(key)
    defaults = defaults or load_defaults()
    ds_list, task_list = registry.resolve(datasets, tasks)
    params = defaults.dynamics_params()
    effects = defaults.effects([d.name for d in ds_list], [t.name for t in task_list])
    n_set = len(ds_list) * len(task_list)
    sids = np.array(
        [registry.setting_id(d.name, t.name) for d in ds_list for t in task_list], np.uint32
    )

    per_trial_bytes = n_set * num_iterations * (4 * 7 + 8 * bins)
    if per_candidate:
        per_trial_bytes += n_set * num_iterations * num_candidates * 9
    total = per_trial_bytes * num_trials
    if total > MAX_RESULT_BYTES:
        raise UserInputError(
            f"the requested results need about {total / 2**30:.1f} GiB in memory "
            f"(limit {MAX_RESULT_BYTES / 2**30:.0f} GiB); reduce num_trials, drop "
            "per_candidate/bins, or stream summaries with llmnas_transfer.study.sweeps"
        )
    if chunk_size is None:
        budget = max(1, (256 * 2**20) // max(per_trial_bytes, 1))
        # the candidate path holds (setting, candidate, trial) arrays at each iteration
        work = 2**24 // (n_set * num_candidates) if path == "candidates" else DEFAULT_CHUNK
        chunk_size = int(min(num_trials, DEFAULT_CHUNK, budget, max(1, work)))
    chunk_size = check_size("chunk_size", chunk_size, MAX_TRIALS)
    chunk_size = min(chunk_size, num_trials)

    n_chunks = math.ceil(num_trials / chunk_size)
    summaries, cand_chunks = [], []
    bar = progress_bar(progress, n_chunks, label="simulating", unit="chunks", min_total=2)
    try:
        for c in range(n_chunks):
            lo = trial_offset + c * chunk_size
            ids = np.arange(lo, lo + chunk_size, dtype=np.int32)
            summ, cands = simulate_chunk(
                key, params, effects, jnp.asarray(sids), jnp.asarray(ids),
                num_iterations=num_iterations, num_candidates=num_candidates,
                bins=bins, per_candidate=per_candidate, path=path,
                feedback=has_feedback(params), bursts=has_bursts(params),
            )
            n_keep = min(chunk_size, num_trials - c * chunk_size)
            summaries.append(jax.tree.map(lambda x, n=n_keep: np.asarray(x[:, :n]), summ))
            if per_candidate:  # (setting, iteration, [candidate,] trial)
                cand_chunks.append(
                    jax.tree.map(lambda x, n=n_keep: np.asarray(x[..., :n]), cands))
            bar(c + 1, n_chunks)
    finally:
        bar(None, n_chunks)
    summ = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *summaries)
    cands = (  # concatenate over trials, then view as (setting, trial, iteration, ...)
        jax.tree.map(lambda *xs: np.moveaxis(np.concatenate(xs, axis=-1), -1, 1),
                     *cand_chunks)
        if per_candidate else None
    )
    return to_dataset(
        summ, cands, [d.name for d in ds_list], [t.name for t in task_list],
        trial_ids=np.arange(trial_offset, trial_offset + num_trials),
        num_candidates=num_candidates, chance=np.asarray(effects.chance), attrs={
            "seed": str(jax.random.key_data(key).tolist()),
            "num_candidates": num_candidates,
            "path": path,
            "model": "llmnas_transfer state-space refinement model",
        },
    )


def to_dataset(
    summ: IterationSummary,
    cands: Candidates | None,
    datasets: list[str],
    tasks: list[str],
    *,
    trial_ids: np.ndarray,
    num_candidates: int,
    chance: np.ndarray | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Arrange kernel outputs ``(setting, trial, iteration, ...)`` as an xarray Dataset.

    ``chance`` (one per setting, dataset-major; 0 if not given) is stored as the
    ``chance`` variable: the floor of each setting's accuracy, which also maps the
    chance-normalised ``accuracy_bin`` centres to accuracies, ``c + (1 - c) x``.

    Example
    -------
    >>> from llmnas_transfer.sim.params import load_defaults
    >>> d = load_defaults()
    >>> summ, _ = simulate_chunk(jax.random.key(0), d.dynamics_params(),
    ...                          d.effects(["svhn"], ["detection"]), jnp.array([7], "uint32"),
    ...                          jnp.arange(3), num_iterations=2, num_candidates=4)
    >>> ds = to_dataset(summ, None, ["svhn"], ["detection"], trial_ids=np.arange(3),
    ...                 num_candidates=4)
    >>> ds["n_valid"].dims
    ('dataset', 'task', 'trial', 'iteration')
    """
    nd, nt = len(datasets), len(tasks)

    def grid(x):
        x = np.asarray(x)
        return x.reshape((nd, nt) + x.shape[1:])

    dims = ("dataset", "task", "trial", "iteration")
    n_valid = grid(summ.n_valid)
    nv = np.where(n_valid > 0, n_valid, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_mean = grid(summ.accuracy_sum) / nv
        acc_var = grid(summ.accuracy_sumsq) / nv - acc_mean**2
        nov_mean = grid(summ.novelty_sum) / nv
        nov_var = grid(summ.novelty_sumsq) / nv - nov_mean**2
    n_iter = n_valid.shape[3]
    data = {
        "n_valid": (dims, n_valid),
        "validity_rate": (dims, n_valid / float(num_candidates)),
        "accuracy_sum": (dims, grid(summ.accuracy_sum)),
        "accuracy_sumsq": (dims, grid(summ.accuracy_sumsq)),
        "accuracy_mean": (dims, acc_mean),
        "accuracy_sd": (dims, np.sqrt(np.clip(acc_var, 0, None))),
        "novelty_sum": (dims, grid(summ.novelty_sum)),
        "novelty_sumsq": (dims, grid(summ.novelty_sumsq)),
        "novelty_mean": (dims, nov_mean),
        "novelty_sd": (dims, np.sqrt(np.clip(nov_var, 0, None))),
        "state": (dims, grid(summ.state)),
        "p_valid": (dims, grid(summ.p_valid)),
    }
    coords = {
        "dataset": list(datasets), "task": list(tasks),
        "trial": np.asarray(trial_ids, np.int64),
        "iteration": np.arange(1, n_iter + 1),
    }
    bins = np.asarray(summ.accuracy_hist).shape[-1]
    if bins:
        edges = np.linspace(0, 1, bins + 1)
        data["accuracy_hist"] = (dims + ("accuracy_bin",), grid(summ.accuracy_hist))
        data["novelty_hist"] = (dims + ("novelty_bin",), grid(summ.novelty_hist))
        centres = 0.5 * (edges[1:] + edges[:-1])
        coords["accuracy_bin"] = centres
        coords["novelty_bin"] = centres
    if cands is not None:
        cdims = dims + ("candidate",)
        data["valid"] = (cdims, grid(cands.valid))
        data["accuracy"] = (cdims, grid(cands.accuracy))
        data["novelty"] = (cdims, grid(cands.novelty))
        coords["candidate"] = np.arange(num_candidates)
    out = xr.Dataset(data, coords=coords, attrs=dict(attrs or {}))
    out["n_generated"] = xr.DataArray(num_candidates)
    ch = np.zeros(nd * nt) if chance is None else np.asarray(chance, float).reshape(-1)
    out["chance"] = xr.DataArray(ch.reshape(nd, nt), dims=("dataset", "task"),
                                 coords={"dataset": list(datasets), "task": list(tasks)},
                                 attrs={"units": "accuracy of guessing (fraction); 0 if "
                                                 "the metric has no chance level"})
    units = {
        "validity_rate": "fraction of generated candidates",
        "accuracy_mean": "first-epoch accuracy (fraction)",
        "novelty_mean": "structural novelty score in [0, 1]",
    }
    for k, u in units.items():
        out[k].attrs["units"] = u
    if "accuracy_hist" in out:
        out["accuracy_hist"].attrs["description"] = (
            "counts of valid candidates by chance-normalised accuracy (A - chance) / "
            "(1 - chance); bin centres map to accuracies as chance + (1 - chance) x")
    return out
