"""Streaming sweeps: any number of trials in bounded memory, resumable, across devices.

:func:`sweep` runs the simulator chunk by chunk and keeps only running totals per
(dataset, task, iteration): validity counts, sums and sums of squares of the per-trial
validity rate, accuracy and novelty (pooled over candidates and per trial), the latent
state, and histogram totals. Memory is bounded by the chunk size, not by the number of
trials; a sweep of 10^9 candidates needs a few hundred MB.

Identical numbers whatever the chunk size or the number of devices
    Trials are grouped into fixed blocks of :data:`BLOCK` consecutive trial indices.
    Inside a block the device adds per-trial float32 values by a fixed pairwise tree;
    the host adds block totals into float64 accumulators strictly in block order.
    Integer counts are summed exactly. Each trial's values depend only on its key, so the
    result is bitwise the same for any chunk size (a multiple of ``BLOCK`` per device) and
    any number of devices.

Resumable
    With ``checkpoint=PATH`` the accumulators and the index of the next trial are written
    after every chunk, to a temporary file renamed into place (never a partial file).
    ``resume=True`` continues from the last finished chunk; the run's settings are checked
    against the checkpoint first.

Many devices, many processes
    Trials of a chunk are sharded over a 1-d mesh (axis ``"trials"``) with
    :func:`jax.shard_map`; each device simulates and block-reduces its own trials, then the
    block totals are all-gathered over the mesh (one collective per chunk) so that every
    process adds the same blocks in the same order. On CPU, make several devices with
    ``JAX_NUM_CPU_DEVICES=n`` (or ``XLA_FLAGS=--xla_force_host_platform_device_count=n``)
    before JAX starts. Across processes or hosts (``jax.distributed``, set up by
    :mod:`llmnas_transfer.study.distributed` or the ``coordinator``/``num_processes``/
    ``process_id`` arguments), the mesh spans every process's devices; the numbers are the
    same bits as on one process, and only process 0 writes the checkpoint. See
    ``docs/scaling-out.md``.

Example
-------
>>> ds = sweep(0, datasets="cifar-10", tasks="classification", num_trials=100,
...            num_iterations=3, num_candidates=1000, bins=0)
>>> float(ds["validity_rate"].sel(iteration=1).squeeze()) > 0
True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmnas_transfer.cache import register_program_cache
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io.atomic import atomic_write
from llmnas_transfer.progress import progress_bar
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.candidates import (
    MAX_BINS,
    MAX_CANDIDATES,
    MAX_ITERATIONS,
    PATHS,
    chunk_kernel,
    has_bursts,
    has_feedback,
)
from llmnas_transfer.sim.keys import as_key
from llmnas_transfer.sim.params import DynamicsParams, ModelDefaults, SettingEffects, load_defaults
from llmnas_transfer.sim.types import Array, PRNGKey
from llmnas_transfer.study.distributed import (
    agree,
    global_array,
    initialize,
    peer_lost,
    resolve_options,
)
from llmnas_transfer.validate import check_choice, check_int, check_size

#: trials per reduction block (chunks hold a whole number of blocks per device)
BLOCK = 64
MAX_SWEEP_TRIALS = 2**31 - 1
CHECKPOINT_VERSION = 1

#: float64 accumulators per (setting, iteration): sums over trials of per-trial values
FLOAT_FIELDS: tuple[str, ...] = (
    "rate_sum", "rate_sumsq",
    "accuracy_sum", "accuracy_sumsq", "accuracy_trial_sum", "accuracy_trial_sumsq",
    "novelty_sum", "novelty_sumsq", "novelty_trial_sum", "novelty_trial_sumsq",
    "state_sum", "state_sumsq", "p_valid_sum",
)
#: int64 accumulators per (setting, iteration)
INT_FIELDS: tuple[str, ...] = ("n_valid", "trials_with_valid")


# ----------------------------------------------------------------------------- kernel
def _tree_sum_axis1(x: Array) -> Array:
    """Sum over axis 1 by a fixed pairwise tree (axis length a power of two)."""
    while x.shape[1] > 1:
        h = x.shape[1] // 2
        x = x[:, :h] + x[:, h:]
    return x[:, 0]


def _block_partials(summ, mask: Array, num_candidates: int):
    """Per-trial summaries ``(S, C, T, ...)`` -> per-block totals ``(S, C // BLOCK, T, ...)``.

    ``mask`` (C,) zeroes padded trials. Float totals use a fixed tree, ints exact sums.
    """
    s_, c_, t_ = summ.n_valid.shape
    m = mask[None, :, None]
    n = summ.n_valid
    nf = n.astype(jnp.float32)
    has = (n > 0) & m
    safe = jnp.where(n > 0, nf, 1.0)
    rate = nf / jnp.float32(num_candidates)
    acc_mean = jnp.where(has, summ.accuracy_sum / safe, 0.0)
    nov_mean = jnp.where(has, summ.novelty_sum / safe, 0.0)

    def z(x):
        return jnp.where(m, x, 0.0)

    floats = jnp.stack([
        z(rate), z(rate * rate),
        z(summ.accuracy_sum), z(summ.accuracy_sumsq), acc_mean, acc_mean * acc_mean,
        z(summ.novelty_sum), z(summ.novelty_sumsq), nov_mean, nov_mean * nov_mean,
        z(summ.state), z(summ.state * summ.state), z(summ.p_valid),
    ], axis=-1)  # (S, C, T, F)
    nb = c_ // BLOCK
    floats = _tree_sum_axis1(floats.reshape(s_ * nb, BLOCK, t_, len(FLOAT_FIELDS)))
    floats = floats.reshape(s_, nb, t_, len(FLOAT_FIELDS))
    ints = jnp.stack([jnp.where(m, n, 0), has.astype(jnp.int32)], axis=-1)
    ints = jnp.sum(ints.reshape(s_, nb, BLOCK, t_, len(INT_FIELDS)), axis=2)
    hm = m[..., None]
    ah = jnp.sum(jnp.where(hm, summ.accuracy_hist, 0).reshape(s_, nb, BLOCK, t_, -1), axis=2)
    nh = jnp.sum(jnp.where(hm, summ.novelty_hist, 0).reshape(s_, nb, BLOCK, t_, -1), axis=2)
    return floats, ints, ah, nh


def _chunk_partials(key, params, effects, setting_ids, trial_ids, mask, *, num_iterations,
                    num_candidates, bins, path, feedback, bursts):
    summ, _ = chunk_kernel(key, params, effects, setting_ids, trial_ids,
                           num_iterations=num_iterations, num_candidates=num_candidates,
                           bins=bins, per_candidate=False, path=path, feedback=feedback,
                           bursts=bursts)
    return _block_partials(summ, mask, num_candidates)


_STATIC = ("num_iterations", "num_candidates", "bins", "path", "feedback", "bursts")


@partial(jax.jit, static_argnames=_STATIC)
def _single_device_kernel(key, params, effects, setting_ids, trial_ids, mask, **kw):
    return _chunk_partials(key, params, effects, setting_ids, trial_ids, mask, **kw)


_SHARDED_CACHE: dict[tuple, Callable] = {}
register_program_cache(_SHARDED_CACHE.clear)


def _sharded_kernel(devices: tuple, **kw) -> tuple[Callable, Callable, Mesh]:
    """The chunk kernel sharded over ``devices`` (of one or many processes) on the trial
    axis, the all-gather that gives every process every block total, and the mesh (cached
    per setup). The gather is a program of its own, so the kernel's arithmetic is the
    same program with one process or many."""
    cache_key = (devices, tuple(sorted(kw.items())))
    if cache_key not in _SHARDED_CACHE:
        mesh = Mesh(np.array(devices), ("trials",))
        rep, tr = PartitionSpec(), PartitionSpec("trials")
        body = jax.shard_map(
            partial(_chunk_partials, **kw), mesh=mesh,
            in_specs=(rep, rep, rep, rep, tr, tr),
            out_specs=PartitionSpec(None, "trials"),
            check_vma=False,
        )
        gather = jax.jit(lambda parts: parts, out_shardings=NamedSharding(mesh, rep))
        _SHARDED_CACHE[cache_key] = (jax.jit(body), gather, mesh)
    return _SHARDED_CACHE[cache_key]


# ----------------------------------------------------------------------------- host side
def _accumulate(acc: dict[str, np.ndarray], floats, ints, ah, nh) -> None:
    """Add one chunk's block totals to the float64/int64 accumulators, in block order."""
    floats = np.asarray(floats, np.float64)  # (S, nb, T, F)
    fsum = acc["floats"]
    for b in range(floats.shape[1]):  # strictly sequential: same bits for any chunking
        fsum += floats[:, b]
    acc["ints"] += np.asarray(ints, np.int64).sum(axis=1)
    acc["accuracy_hist"] += np.asarray(ah, np.int64).sum(axis=1)
    acc["novelty_hist"] += np.asarray(nh, np.int64).sum(axis=1)


def _new_accumulators(n_set: int, num_iterations: int, bins: int) -> dict[str, np.ndarray]:
    return {
        "floats": np.zeros((n_set, num_iterations, len(FLOAT_FIELDS)), np.float64),
        "ints": np.zeros((n_set, num_iterations, len(INT_FIELDS)), np.int64),
        "accuracy_hist": np.zeros((n_set, num_iterations, bins), np.int64),
        "novelty_hist": np.zeros((n_set, num_iterations, bins), np.int64),
    }


def _save_checkpoint(path: Path, meta: dict, acc: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **acc)

    atomic_write(path, write)


def _load_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            acc = {k: np.array(z[k]) for k in ("floats", "ints", "accuracy_hist",
                                               "novelty_hist")}
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"{path}: not a readable sweep checkpoint ({exc})") from None
    return meta, acc


def _run_meta(key, ds_names, task_names, num_trials, num_iterations, num_candidates, bins,
              path, trial_offset, params: DynamicsParams, effects: SettingEffects) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "seed": np.asarray(jax.random.key_data(key)).tolist(),
        "key_impl": str(jax.random.key_impl(key)),
        "datasets": list(ds_names), "tasks": list(task_names),
        "num_trials": num_trials, "num_iterations": num_iterations,
        "num_candidates": num_candidates, "bins": bins, "path": path,
        "trial_offset": trial_offset, "block": BLOCK,
        "params": {f: float(getattr(params, f)) for f in DynamicsParams._fields},
        "effects": {f: np.asarray(getattr(effects, f), np.float64).tolist()
                    for f in SettingEffects._fields},
    }


def _check_resume(path: Path, meta: dict, saved: dict) -> None:
    for k, v in meta.items():
        if saved.get(k) != v:
            raise UserInputError(
                f"{path}: checkpoint was written by a different sweep ({k} = {saved.get(k)!r},"
                f" this run has {v!r}); use a new checkpoint file or the original settings"
            )


def _resolve_devices(devices) -> tuple:
    if jax.process_count() > 1:
        if devices is not None:
            raise UserInputError(
                "devices cannot be chosen in a multi-process run: every process uses all its "
                "local devices (on CPU set JAX_NUM_CPU_DEVICES per process)")
        return tuple(jax.devices())
    if devices is None:
        return tuple(jax.local_devices())
    if isinstance(devices, (int, np.integer)):
        avail = jax.local_devices()
        devices = check_size("devices", devices, 2**31 - 1)
        if devices > len(avail):
            hint = (" (on CPU start with JAX_NUM_CPU_DEVICES=" f"{devices})"
                    if avail[0].platform == "cpu" else "")
            raise UserInputError(
                f"asked for {devices} devices but only {len(avail)} are available{hint}")
        return tuple(avail[:devices])
    out = tuple(devices)
    if not out:
        raise UserInputError("devices must not be empty")
    return out


#: candidates per iteration from which ``path="auto"`` takes the summary path (measured
#: crossover on a 2-core CPU, ``benchmarks/bench_scaling.py``): with / without histograms
AUTO_SUMMARY_FROM = (200, 50)


def auto_path(num_candidates: int, bins: int) -> str:
    """The faster path for this many candidates: ``"summary"`` or ``"candidates"``.

    Example
    -------
    >>> auto_path(20, 20), auto_path(1000, 20)
    ('candidates', 'summary')
    """
    return "summary" if num_candidates >= AUTO_SUMMARY_FROM[0 if bins else 1] else "candidates"


def default_chunk_trials(n_set: int, num_iterations: int, num_candidates: int, path: str,
                         n_devices: int) -> int:
    """Trials per chunk: about 2^14 (trial, iteration) pairs per device on the summary path
    (its samplers loop over lanes; small batches stay in cache: measured fastest on a
    2-core CPU), 2^22 candidates per device on the candidate path; always a multiple of
    ``BLOCK * n_devices``.

    Example
    -------
    >>> default_chunk_trials(32, 10, 20, "candidates", 2) % (BLOCK * 2)
    0
    """
    per_trial = n_set * num_iterations * (1 if path == "summary" else num_candidates)
    target = (2**14 if path == "summary" else 2**22) // max(per_trial, 1)
    blocks = max(1, target // BLOCK)
    return blocks * BLOCK * n_devices


def sweep(
    key: int | PRNGKey = 0,
    *,
    datasets: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    num_trials: int = 1000,
    num_iterations: int = 10,
    num_candidates: int = 20,
    bins: int = 20,
    path: str = "auto",
    trial_offset: int = 0,
    chunk_size: int | None = None,
    devices: int | Sequence[Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    defaults: ModelDefaults | None = None,
    progress: bool | Callable[[int, int], None] = False,
    on_chunk: Callable[[int, int], None] | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> xr.Dataset:
    """Run a streaming sweep and return totals per (dataset, task, iteration).

    Parameters
    ----------
    key : integer seed or PRNG key (streams as in :func:`llmnas_transfer.sim.candidates`).
    datasets, tasks : registry names (``None`` = all built-ins).
    num_trials, num_iterations, num_candidates : as in :func:`~llmnas_transfer.sim.candidates`.
    bins : histogram bins on [0, 1] (0 disables).
    path : ``"summary"`` (cost independent of ``num_candidates``; accuracy/novelty sums
        beyond 16 valid candidates are a tested normal approximation), ``"candidates"``
        (every candidate drawn; exact) or ``"auto"`` (default: the faster of the two for
        this ``num_candidates``, :func:`auto_path`). The result records the path used.
    trial_offset : index of the first trial.
    chunk_size : trials per chunk; rounded up to a multiple of ``BLOCK * n_devices``.
        Results do not depend on it.
    devices : number of local devices, a sequence of devices, or ``None`` (all local; in a
        multi-process run, all devices of all processes, and only ``None`` is accepted).
        Results do not depend on it.
    checkpoint : file (``.npz``) written atomically after every chunk (by process 0 only).
    resume : continue from ``checkpoint`` if it exists (its settings must match); the
        checkpoint may come from a run with another number of processes or devices.
    defaults : parameters (shipped calibrated defaults if ``None``).
    progress : ``True`` for a rich progress bar with time remaining, or ``f(done, total)``.
    on_chunk : called as ``on_chunk(chunks_done, chunks_total)`` after each chunk has been
        added and checkpointed (an exception raised here stops the sweep; the checkpoint
        keeps every finished chunk).
    coordinator, num_processes, process_id : join a multi-process run (``HOST:PORT`` of
        process 0, the process count, this process's index; all three or none), as
        :func:`llmnas_transfer.study.distributed.initialize` does. Must come before any
        other JAX work of the process. Every process calls ``sweep`` with the same
        arguments and gets the same result; a peer that dies mid-run raises
        :class:`~llmnas_transfer.study.distributed.PeerLostError`.

    Returns
    -------
    xarray.Dataset with dims ``(dataset, task, iteration[, accuracy_bin, novelty_bin])``:
    ``n_trials``, ``n_generated``, ``n_valid``, ``validity_rate`` (pooled) and
    ``validity_rate_se`` (across trials), ``accuracy_mean``/``accuracy_sd`` pooled over
    valid candidates, ``accuracy_trial_mean``/``accuracy_trial_se`` (mean over trials with a
    valid candidate of the per-trial mean), the same for novelty, ``state_mean``,
    ``state_sd``, ``p_valid_mean``, histogram totals and the raw float64/int64 totals.

    Example
    -------
    >>> ds = sweep(1, datasets="cifar-10,audioset", tasks="classification",
    ...            num_trials=64, num_iterations=2, num_candidates=50, chunk_size=64)
    >>> ds["validity_rate"].dims
    ('dataset', 'task', 'iteration')
    """
    if (coordinator, num_processes, process_id) != (None, None, None):
        initialize(resolve_options(coordinator, num_processes, process_id))
    path = check_choice("path", path, PATHS + ("auto",))
    num_trials = check_size("num_trials", num_trials, MAX_SWEEP_TRIALS)
    num_iterations = check_size("num_iterations", num_iterations, MAX_ITERATIONS)
    num_candidates = check_size("num_candidates", num_candidates, MAX_CANDIDATES)
    bins = check_int("bins", bins, 0, MAX_BINS)
    if path == "auto":
        path = auto_path(num_candidates, bins)
    trial_offset = check_int("trial_offset", trial_offset, 0, MAX_SWEEP_TRIALS - num_trials)
    key = as_key(key)
    defaults = defaults or load_defaults()
    ds_list, task_list = registry.resolve(datasets, tasks)
    ds_names, task_names = [d.name for d in ds_list], [t.name for t in task_list]
    params = defaults.dynamics_params()
    effects = defaults.effects(ds_names, task_names)
    n_set = len(ds_names) * len(task_names)
    sids = jnp.asarray(np.array(
        [registry.setting_id(d, t) for d in ds_names for t in task_names], np.uint32))
    devs = _resolve_devices(devices)
    n_dev = len(devs)
    quantum = BLOCK * n_dev
    if chunk_size is None:
        chunk_size = default_chunk_trials(n_set, num_iterations, num_candidates, path, n_dev)
    chunk_size = check_size("chunk_size", chunk_size, MAX_SWEEP_TRIALS)
    chunk_size = quantum * math.ceil(min(chunk_size, num_trials) / quantum)
    n_chunks_total = math.ceil(num_trials / chunk_size)

    meta = _run_meta(key, ds_names, task_names, num_trials, num_iterations, num_candidates,
                     bins, path, trial_offset, params, effects)
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    multi = jax.process_count() > 1
    primary = jax.process_index() == 0

    def read_checkpoint() -> tuple[int, dict[str, np.ndarray]]:
        acc = _new_accumulators(n_set, num_iterations, bins)
        start = 0  # trials done (relative to trial_offset), a multiple of BLOCK
        if ckpt is not None:
            if not ckpt.parent.is_dir():
                raise UserInputError(f"{ckpt}: folder {ckpt.parent} does not exist")
            if resume and ckpt.exists():
                saved, acc = _load_checkpoint(ckpt)
                _check_resume(ckpt, meta, saved)
                start = int(saved["next_trial"])
                if start % BLOCK and start != num_trials:
                    raise UserInputError(f"{ckpt}: corrupt checkpoint (next_trial={start})")
        return start, acc

    if multi:  # process 0 reads the checkpoint; every process continues from its state
        start, acc = _share_state(agree(read_checkpoint),
                                  _new_accumulators(n_set, num_iterations, bins))
    else:
        start, acc = read_checkpoint()
    write_ckpt = ckpt is not None and primary

    kw = dict(num_iterations=num_iterations, num_candidates=num_candidates, bins=bins,
              path=path, feedback=has_feedback(params), bursts=has_bursts(params))
    if n_dev == 1 and not multi:
        dev = devs[0]

        def run(ids, mask):
            with jax.default_device(dev):
                return _single_device_kernel(key, params, effects, sids, jnp.asarray(ids),
                                             jnp.asarray(mask), **kw)
    else:
        fn, gather, mesh = _sharded_kernel(devs, **kw)
        shard = NamedSharding(mesh, PartitionSpec("trials"))
        key_data, fixed = jax.tree.map(
            partial(global_array, sharding=NamedSharding(mesh, PartitionSpec())),
            (jax.random.key_data(key), (params, effects, sids)))
        fixed = (jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(key)), *fixed)

        def run(ids, mask):
            out = fn(*fixed, global_array(ids, shard), global_array(mask, shard))
            if not multi:
                return out
            try:
                return tuple(np.asarray(x) for x in gather(out))
            except Exception as exc:  # noqa: BLE001 - any failure of the collective
                raise peer_lost(exc) from exc

    remaining = math.ceil((num_trials - start) / chunk_size) if start < num_trials else 0
    done_before = n_chunks_total - remaining
    bar = progress_bar(progress if primary else False, n_chunks_total, label="sweep",
                       unit="chunks",
                       items_per_step=num_trials * n_set * num_iterations * num_candidates
                       / max(n_chunks_total, 1), transient=False)
    try:
        bar(done_before, n_chunks_total)
        lo = start
        while lo < num_trials:
            ids = np.arange(trial_offset + lo, trial_offset + lo + chunk_size, dtype=np.int32)
            mask = np.arange(lo, lo + chunk_size) < num_trials
            _accumulate(acc, *run(ids, mask))
            lo += chunk_size
            if write_ckpt:
                _save_checkpoint(ckpt, {**meta, "next_trial": min(lo, num_trials),
                                        "complete": lo >= num_trials}, acc)
            done_before += 1
            bar(done_before, n_chunks_total)
            if on_chunk is not None:
                on_chunk(done_before, n_chunks_total)
    finally:
        bar(None, n_chunks_total)
    return _to_dataset(acc, ds_names, task_names, num_trials, num_iterations, num_candidates,
                       bins, attrs={
                           "seed": str(meta["seed"]), "path": path,
                           "num_trials": num_trials, "num_candidates": num_candidates,
                           "trial_offset": trial_offset,
                           "model": "llmnas_transfer state-space refinement model",
                       })


def _share_state(state: tuple[int, dict[str, np.ndarray]] | None,
                 zeros: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
    """Process 0's ``(start, accumulators)`` on every process, bit for bit (64-bit values
    travel as pairs of 32-bit words, so no conversion can round them)."""
    from jax.experimental.multihost_utils import broadcast_one_to_all

    start, acc = state if state is not None else (0, zeros)
    words = {k: np.ascontiguousarray(v).view(np.uint32) for k, v in acc.items() if v.size}
    words["start"] = np.array([start], np.uint32)
    got = broadcast_one_to_all(words)
    out = {k: np.array(got[k], np.uint32, copy=True).view(v.dtype).reshape(v.shape)
           if v.size else v.copy() for k, v in zeros.items()}
    return int(got["start"][0]), out


def _to_dataset(acc, ds_names, task_names, num_trials, num_iterations, num_candidates, bins,
                attrs) -> xr.Dataset:
    nd, nt = len(ds_names), len(task_names)

    def grid(x):
        return np.asarray(x).reshape((nd, nt) + x.shape[1:])

    f = {k: grid(acc["floats"][..., i]) for i, k in enumerate(FLOAT_FIELDS)}
    ints = {k: grid(acc["ints"][..., i]) for i, k in enumerate(INT_FIELDS)}
    R = float(num_trials)
    n_gen = num_trials * num_candidates
    nv = ints["n_valid"].astype(np.float64)
    tv = ints["trials_with_valid"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_mean = f["rate_sum"] / R
        rate_var = np.clip(f["rate_sumsq"] / R - rate_mean**2, 0, None) * R / max(R - 1, 1)

        def pooled(s1, s2):
            m = np.where(nv > 0, s1 / nv, np.nan)
            return m, np.sqrt(np.clip(s2 / nv - m**2, 0, None))

        def trialwise(s1, s2):
            m = np.where(tv > 0, s1 / tv, np.nan)
            var = np.clip(s2 / tv - m**2, 0, None) * tv / np.maximum(tv - 1, 1)
            return m, np.sqrt(var / tv)

        acc_m, acc_sd = pooled(f["accuracy_sum"], f["accuracy_sumsq"])
        nov_m, nov_sd = pooled(f["novelty_sum"], f["novelty_sumsq"])
        acc_tm, acc_tse = trialwise(f["accuracy_trial_sum"], f["accuracy_trial_sumsq"])
        nov_tm, nov_tse = trialwise(f["novelty_trial_sum"], f["novelty_trial_sumsq"])
        state_m = f["state_sum"] / R
        state_sd = np.sqrt(np.clip(f["state_sumsq"] / R - state_m**2, 0, None))
    dims = ("dataset", "task", "iteration")
    data = {
        "n_trials": ((), num_trials),
        "n_generated": ((), n_gen),
        "n_valid": (dims, ints["n_valid"]),
        "trials_with_valid": (dims, ints["trials_with_valid"]),
        "validity_rate": (dims, nv / n_gen),
        "validity_rate_se": (dims, np.sqrt(rate_var / R)),
        "accuracy_mean": (dims, acc_m), "accuracy_sd": (dims, acc_sd),
        "accuracy_trial_mean": (dims, acc_tm), "accuracy_trial_se": (dims, acc_tse),
        "novelty_mean": (dims, nov_m), "novelty_sd": (dims, nov_sd),
        "novelty_trial_mean": (dims, nov_tm), "novelty_trial_se": (dims, nov_tse),
        "state_mean": (dims, state_m), "state_sd": (dims, state_sd),
        "p_valid_mean": (dims, f["p_valid_sum"] / R),
    }
    for k in FLOAT_FIELDS:
        data[f"total_{k}"] = (dims, f[k])
    coords = {"dataset": list(ds_names), "task": list(task_names),
              "iteration": np.arange(1, num_iterations + 1)}
    if bins:
        edges = np.linspace(0, 1, bins + 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        data["accuracy_hist"] = (dims + ("accuracy_bin",), grid(acc["accuracy_hist"]))
        data["novelty_hist"] = (dims + ("novelty_bin",), grid(acc["novelty_hist"]))
        coords["accuracy_bin"] = centres
        coords["novelty_bin"] = centres
    out = xr.Dataset(data, coords=coords, attrs=dict(attrs))
    out["validity_rate"].attrs["units"] = "fraction of generated candidates"
    out["accuracy_mean"].attrs["units"] = "first-epoch accuracy (fraction)"
    return out


def combine(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Add sweeps of disjoint trial ranges (e.g. one per host) into one result.

    The parts must have the same seed, grid, iterations, candidates, bins and path, and
    cover different trials (``trial_offset``). Counts add exactly; float totals add in
    float64, so the result equals one sweep over all the trials up to float64 rounding.

    Example
    -------
    >>> kw = dict(datasets="cifar-10", tasks="classification", num_iterations=2,
    ...           num_candidates=50, bins=0)
    >>> a = sweep(0, num_trials=64, **kw)
    >>> b = sweep(0, num_trials=64, trial_offset=64, **kw)
    >>> int(combine([a, b])["n_trials"])
    128
    """
    if not parts:
        raise UserInputError("combine needs at least one sweep result")
    first = parts[0]
    for other in parts[1:]:
        for k in ("seed", "path", "num_candidates"):
            if other.attrs.get(k) != first.attrs.get(k):
                raise UserInputError(f"cannot combine sweeps with different {k}: "
                                     f"{first.attrs.get(k)!r} and {other.attrs.get(k)!r}")
        for dim in ("dataset", "task", "iteration", "accuracy_bin"):
            if dim in first.coords and not np.array_equal(first[dim].values,
                                                          other[dim].values):
                raise UserInputError(f"cannot combine sweeps over different {dim}s")
    offsets = sorted((int(p.attrs.get("trial_offset", 0)), int(p["n_trials"])) for p in parts)
    for (o1, n1), (o2, _) in zip(offsets, offsets[1:], strict=False):
        if o1 + n1 > o2:
            raise UserInputError(f"sweeps overlap: trials {o1}..{o1 + n1 - 1} and from {o2}")
    n_set = first.sizes["dataset"] * first.sizes["task"]
    n_it = first.sizes["iteration"]
    bins = first.sizes.get("accuracy_bin", 0)

    def flat(ds, var):
        return np.asarray(ds[var].values).reshape((n_set, n_it) + ds[var].shape[3:])

    acc = _new_accumulators(n_set, n_it, bins)
    for part in parts:
        acc["floats"] += np.stack([flat(part, f"total_{k}") for k in FLOAT_FIELDS], -1)
        acc["ints"] += np.stack([flat(part, k) for k in INT_FIELDS], -1).astype(np.int64)
        if bins:
            acc["accuracy_hist"] += flat(part, "accuracy_hist").astype(np.int64)
            acc["novelty_hist"] += flat(part, "novelty_hist").astype(np.int64)
    num_trials = sum(int(p["n_trials"]) for p in parts)
    attrs = {**first.attrs, "num_trials": num_trials, "trial_offset": offsets[0][0]}
    return _to_dataset(acc, list(first["dataset"].values), list(first["task"].values),
                       num_trials, n_it, int(first.attrs["num_candidates"]), bins, attrs)


def save_sweep(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write sweep results atomically: ``.nc`` (netCDF) or ``.csv`` (tidy table).

    Example
    -------
    >>> import tempfile, pathlib
    >>> ds = sweep(0, datasets="cifar-10", tasks="classification", num_trials=64,
    ...            num_iterations=2, num_candidates=10, bins=0)
    >>> save_sweep(ds, pathlib.Path(tempfile.mkdtemp()) / "s.csv").suffix
    '.csv'
    """
    p = Path(path).expanduser()
    if p.suffix not in (".nc", ".csv"):
        raise UserInputError(f"{p}: output must end in .nc or .csv")
    if not p.parent.is_dir():
        raise UserInputError(f"{p}: folder {p.parent} does not exist")
    if p.suffix == ".nc":
        atomic_write(p, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    else:
        dims = ("dataset", "task", "iteration")
        table = ds[[v for v in ds.data_vars if ds[v].dims == dims]].to_dataframe()
        atomic_write(p, lambda tmp: table.to_csv(tmp))
    return p
