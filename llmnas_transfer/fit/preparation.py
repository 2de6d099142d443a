"""Prepare observed runs for the model: levels of the hierarchy, run arrays, notices.

:func:`prepare` turns validated runs (:class:`~llmnas_transfer.io.runs.ObservedRuns`) into a
:class:`Prepared`: the :class:`~llmnas_transfer.fit.model.ModelSpec` (datasets, tasks,
observed settings, reference, horizon) and the :class:`~llmnas_transfer.fit.model.RunsData`
arrays, one row per run in a fixed order, with notices about new levels.
:func:`parse_reference` reads a ``DATASET:TASK`` reference.

Example
-------
>>> import pandas as pd
>>> from llmnas_transfer.io.runs import runs_from_frame
>>> df = pd.DataFrame({"dataset": "cifar-10", "task": "classification", "trial": [1, 2],
...                    "iteration": 1, "n_generated": 10, "n_valid": [3, 5]})
>>> p = prepare(runs_from_frame(df))
>>> p.run_trial, p.spec.observed
(('1', '2'), ((0, 0),))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.fit.model import GRID_SIZE, TRENDS, ModelSpec, NormalStats, RunsData
from llmnas_transfer.io.runs import ObservedRuns
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.gaps import DEFAULT_REFERENCE
from llmnas_transfer.validate import check_choice, check_int, did_you_mean

#: attributes a new dataset (not in the registry) must be given
NEW_DATASET_FIELDS: tuple[str, ...] = ("modality", "resolution", "num_classes")
#: chance-normalised accuracies at or below this are clipped to it before the logit
ACCURACY_FLOOR = 0.01
#: the bursts choices of :func:`prepare`
BURSTS: tuple[str, ...] = ("auto", "on", "off")
#: ``bursts="auto"`` switches bursts on when successive iteration rates differ this many
#: times as much as binomial noise allows (:func:`burst_dispersion`)
BURST_THRESHOLD = 3.0
#: fewer observed iterations than this in every run: too short to tell collapses apart
MIN_BURST_ITERATIONS = 8
_ATTRS_HINT = ("give its attributes with --dataset-attrs "
               "NAME:modality=...,resolution=...,num_classes=... or --levels FILE "
               "(dataset_attrs in Python)")


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


def parse_reference(reference: str | Sequence[str]) -> tuple[str, str]:
    """The (dataset, task) of a reference given as ``"DATASET:TASK"`` or a pair, lower-cased.

    Example
    -------
    >>> parse_reference("CIFAR-10:classification")
    ('cifar-10', 'classification')
    >>> parse_reference(("svhn", "detection"))
    ('svhn', 'detection')
    """
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


def _lower_attrs(attrs: Mapping[str, Mapping] | None) -> dict[str, Mapping]:
    return {str(k).strip().lower(): v for k, v in (attrs or {}).items()}


def check_levels(
    runs: ObservedRuns,
    *,
    reference: str | Sequence[str] = DEFAULT_REFERENCE,
    datasets: Sequence[str] = (),
    tasks: Sequence[str] = (),
    dataset_attrs: Mapping[str, Mapping] | None = None,
) -> tuple[str, str]:
    """Check every name a fit would use before any work; returns the parsed reference.

    * a dataset in the data that is not in the registry needs attributes; when a
      registered name is a close match, the error names the file, row and column and the
      suggestion (a misspelled dataset would otherwise become a new setting);
    * the reference and the extra ``datasets``/``tasks`` must be in the data or the
      registry (a new extra dataset needs attributes); unknown names get a did-you-mean.

    Example
    -------
    >>> import pandas as pd
    >>> from llmnas_transfer.io.runs import runs_from_frame
    >>> df = pd.DataFrame({"dataset": "cifar-10", "task": "classification", "trial": [1],
    ...                    "iteration": 1, "n_generated": 10, "n_valid": [3]})
    >>> check_levels(runs_from_frame(df), reference="cifar10:classification")
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: reference dataset 'cifar10' is neither in the \
data nor in the registry; did you mean 'cifar-10'?
    """
    ref = parse_reference(reference)
    attrs = _lower_attrs(dataset_attrs)
    cells = runs.cells
    data_d = list(dict.fromkeys(cells["dataset"].astype(str)))
    data_t = list(dict.fromkeys(cells["task"].astype(str)))
    reg_d, reg_t = registry.dataset_names(), registry.task_names()
    rows = dict(runs.dataset_rows)
    for d in data_d:
        if d in reg_d or d in attrs:
            continue
        where = (f"{runs.source}: row {rows[d]}, column dataset" if d in rows
                 else f"{runs.source}: column dataset")
        hint = did_you_mean(d, reg_d)
        if hint:
            raise DataFormatError(f"{where}: unknown dataset {d!r}{hint} (for a new "
                                  f"dataset, {_ATTRS_HINT})")
        raise DataFormatError(f"{where}: dataset {d!r} is not in the registry; {_ATTRS_HINT}")
    known_d = list(dict.fromkeys([*data_d, *reg_d, *attrs]))
    known_t = list(dict.fromkeys([*data_t, *reg_t]))
    if ref[0] not in known_d:
        raise UserInputError(
            f"reference dataset {ref[0]!r} is neither in the data nor in the registry"
            + (did_you_mean(ref[0], known_d) or f" (known: {', '.join(known_d)})"))
    if ref[1] not in known_t:
        raise UserInputError(
            f"reference task {ref[1]!r} is neither in the data nor in the registry"
            + (did_you_mean(ref[1], known_t) or f" (known: {', '.join(known_t)})"))
    for d in (str(x).strip().lower() for x in datasets):
        if d not in known_d:
            hint = did_you_mean(d, known_d)
            raise UserInputError(
                f"extra dataset {d!r} is neither in the data nor in the registry"
                + (hint or f"; for a new dataset, {_ATTRS_HINT}"))
    for t in (str(x).strip().lower() for x in tasks):
        if t not in known_t:
            raise UserInputError(
                f"extra task {t!r} is neither in the data nor in the registry"
                + (did_you_mean(t, known_t) or f" (known: {', '.join(known_t)})"))
    used = dict.fromkeys([ref[0], *data_d, *(str(x).strip().lower() for x in datasets)])
    for d in used:  # attributes of the new datasets: complete and valid
        _dataset_entry(d, attrs, [])
    return ref


def _dataset_entry(name: str, attrs: Mapping[str, Mapping], notices: list[str]):
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
    given = dict(attrs.get(name) or {})
    unknown = set(given) - set(NEW_DATASET_FIELDS)
    if unknown:
        raise UserInputError(
            f"dataset {name!r}: unknown attributes {sorted(unknown)}; use modality, "
            "resolution, num_classes"
        )
    if "modality" in given:
        modality = check_choice(f"dataset {name!r}: modality",
                                str(given["modality"]).strip().lower(), registry.MODALITIES)
    missing = [f for f in NEW_DATASET_FIELDS if f not in given]
    if missing:
        raise UserInputError(
            f"dataset {name!r} is not in the registry and lacks the attribute(s) "
            f"{', '.join(missing)}; {_ATTRS_HINT}"
        )
    try:
        res, ncls = int(given["resolution"]), int(given["num_classes"])
    except (TypeError, ValueError):
        raise UserInputError(
            f"dataset {name!r}: resolution and num_classes must be integers"
        ) from None
    res = check_int(f"dataset {name!r}: resolution", res, 1)
    ncls = check_int(f"dataset {name!r}: num_classes", ncls, 1)
    notices.append(
        f"dataset {name!r} is not in the registry: a new level of the hierarchy with "
        f"modality {modality}, resolution {res}, {ncls} classes (given)"
    )
    return registry.Dataset(name, modality, res, ncls)


def _task_entry(name: str) -> registry.Task:
    try:
        return registry.get_task(name)
    except registry.UnknownSettingError:
        return registry.Task(name)  # a new task: no chance level


def normalise_accuracy(stats: NormalStats, chance: np.ndarray
                       ) -> tuple[NormalStats, np.ndarray, int, int]:
    """Accuracy statistics on the logit scale of the chance-normalised accuracy.

    ``stats`` are logit-scale statistics of the accuracies as measured, (N, T) arrays;
    ``chance`` the chance level of each run, (N,). Returns the statistics of
    ``y = logit((acc - c) / (1 - c))``, the feedback (mean chance-normalised accuracy of
    each cell, 1/2 where it has none), and the numbers of cells and of accuracies whose
    (mean) accuracy was at or below ``c + ACCURACY_FLOOR (1 - c)`` and was clipped to it.

    Where ``c = 0`` the statistics are unchanged (exact). Elsewhere the cells hold only
    the sum and sum of squares of the logits, so each cell is mapped through ``y(z)`` at
    its mean logit (delta method: ``sd_y = y'(zbar) sd_z``); for one value per cell (a
    candidate row, or a reported mean) this is exact.

    Example
    -------
    >>> z = np.zeros((1, 1))
    >>> st = NormalStats(z + 1, z + 1, z + 0.0, z + 0.0, z + 1.386)  # one accuracy of 0.5
    >>> out, fb, cells, values = normalise_accuracy(st, np.asarray([0.5]))
    >>> round(float(fb[0, 0]), 6), cells, values  # at chance: clipped
    (0.01, 1, 1)
    """
    k, n, sm, sq, const = (np.asarray(x, np.float64) for x in stats)
    has = n > 0
    nn = np.maximum(n, 1.0)
    zbar = sm / nn
    var_z = np.maximum(sq / nn - zbar**2, 0.0)
    c = np.broadcast_to(np.asarray(chance, np.float64)[:, None], zbar.shape)
    # mean accuracy of the cell (logit-normal mean, probit approximation)
    mean_acc = 1.0 / (1.0 + np.exp(-zbar / np.sqrt(1.0 + np.pi * var_z / 8.0)))
    feedback = np.where(has, np.maximum((mean_acc - c) / (1.0 - c), 0.0), 0.5)
    floor = c + ACCURACY_FLOOR * (1.0 - c)
    acc = 1.0 / (1.0 + np.exp(-zbar))
    low = has & (c > 0) & (acc <= floor)
    acc = np.where(low, floor, acc)
    # cells without accuracies keep their (zero) statistics; map them at the midpoint
    # between chance and 1 so that nothing below is evaluated at chance
    acc = np.where(has, acc, c + 0.5 * (1.0 - c))
    x = (acc - c) / (1.0 - c)
    y = np.log(x) - np.log1p(-x)
    slope = (1.0 - c) * acc / (acc - c)  # dy/dz at zbar (1 where c = 0)
    var_y = slope**2 * var_z
    logjac_y = np.log1p(-c) - np.log(acc - c) - np.log1p(-acc)  # log dy/dacc
    logjac_z = -(np.log(acc) + np.log1p(-acc))
    mean_only = k < n  # a reported mean: const = log(n)/2 + log-Jacobian at the mean
    new_const = np.where(mean_only, const - logjac_z + logjac_y, k * logjac_y)
    exact = ~has | (c <= 0)
    out = NormalStats(
        jnp.asarray(k, jnp.float32), jnp.asarray(n, jnp.float32),
        jnp.asarray(np.where(exact, sm, n * y), jnp.float32),
        jnp.asarray(np.where(exact, sq, np.where(mean_only, n * y * y,
                                                  n * (y * y + var_y))), jnp.float32),
        jnp.asarray(np.where(exact, const, new_const), jnp.float32),
    )
    feedback = np.where(has & (c > 0) & low, ACCURACY_FLOOR, feedback)
    return out, feedback.astype(np.float32), int(low.sum()), int(n[low].sum())


def run_bucket(n: int) -> int:
    """The padded number of runs for ``n`` runs: up to 8 the next power of two, above
    ``n`` rounded up to a multiple of a quarter of the power of two below it, so at most
    25% padding beyond 8 (a single long run is not padded: its filter's cost is all
    sampling).

    Fits whose run counts share a bucket share the compiled sampler and Laplace start.

    Example
    -------
    >>> [run_bucket(n) for n in (1, 3, 8, 9, 45, 90, 100, 1000)]
    [1, 4, 8, 10, 48, 96, 112, 1024]
    """
    n = max(int(n), 1)
    if n <= 8:
        return 1 << (n - 1).bit_length()
    step = max(2, (1 << (n.bit_length() - 1)) // 4)
    return -(-n // step) * step


def pad_runs(data: RunsData, size: int | None = None) -> RunsData:
    """``data`` with empty runs appended up to ``size`` rows (default :func:`run_bucket`).

    An empty run has ``n_generated == 0`` and zero statistics at every iteration, as an
    unobserved cell: its log-likelihood is 0 (to about 1e-6 per cell, the filter's
    rescaling in float32), so the posterior is that of the unpadded data.

    Example
    -------
    >>> z = jnp.zeros((3, 2))
    >>> d = RunsData(jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32), z + 10, z + 4,
    ...              NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))
    >>> pad_runs(d).n_generated.shape, float(pad_runs(d).n_generated[3:].sum())
    ((4, 2), 0.0)
    """
    n = int(data.n_generated.shape[0])
    size = run_bucket(n) if size is None else int(size)
    if size < n:
        raise ValueError(f"cannot pad {n} runs to {size}")
    if size == n:
        return data
    extra = size - n

    def pad(x, value=0.0):
        x = jnp.asarray(x)
        fill = jnp.full((extra,) + x.shape[1:], value, x.dtype)
        return jnp.concatenate([x, fill], axis=0)

    return RunsData(
        pad(data.dataset_idx), pad(data.task_idx), pad(data.n_generated),
        pad(data.n_valid), NormalStats(*(pad(x) for x in data.accuracy)),
        NormalStats(*(pad(x) for x in data.novelty)),
        None if data.accuracy_feedback is None else pad(data.accuracy_feedback, 0.5),
    )


def burst_dispersion(n_valid: np.ndarray, n_generated: np.ndarray) -> float:
    """How much more successive iteration rates differ than binomial noise allows.

    Over every pair of consecutive observed iterations of every run, the sum of
    squared rate differences ``(r_{t+1} - r_t)^2`` over the sum of their binomial
    variances ``rbar (1 - rbar) (1/n_t + 1/n_{t+1})`` at the run's pooled rate ``rbar``.
    About 1 for binomial noise about a slowly moving rate (a trend adds its squared
    steps); NaN without such a pair.

    Example
    -------
    >>> ng = np.full((1, 4), 50.0)
    >>> round(burst_dispersion(np.asarray([[25.0, 0, 50, 0]]), ng), 1)
    50.0
    """
    nv, ng = np.asarray(n_valid, float), np.asarray(n_generated, float)
    seen = ng > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(seen, nv / np.where(seen, ng, 1.0), 0.0)
        rbar = nv.sum(1, keepdims=True) / ng.sum(1, keepdims=True)
        pair = seen[:, 1:] & seen[:, :-1]
        inv = np.where(seen, 1.0 / np.where(seen, ng, 1.0), 0.0)
    sq = np.where(pair, np.diff(rate, axis=1) ** 2, 0.0).sum()
    var = np.where(pair, np.nan_to_num(rbar * (1 - rbar)) * (inv[:, 1:] + inv[:, :-1]),
                   0.0).sum()
    return float(sq / var) if var > 0 else math.nan


def choose_bursts(bursts: str, data_nv: np.ndarray, n_gen: np.ndarray,
                   notes: list[str]) -> bool:
    """Whether the model has bursts (``"auto"``: :data:`BURST_THRESHOLD`); appends to
    ``notes`` what ``"auto"`` chose and why, and when the runs are too short to say much.

    Example
    -------
    >>> notes = []
    >>> choose_bursts("auto", np.asarray([[25.0, 0, 50, 0]]), np.full((1, 4), 50.0), notes)
    False
    >>> notes[0].startswith("bursts off (auto)")
    True
    """
    ratio = burst_dispersion(data_nv, n_gen)
    longest = int((n_gen > 0).sum(1).max()) if n_gen.size else 0
    said = "n/a" if math.isnan(ratio) else f"{ratio:.1f}"
    if bursts == "auto":
        on = (not math.isnan(ratio) and ratio > BURST_THRESHOLD
              and longest >= MIN_BURST_ITERATIONS)
        notes.append(
            f"bursts {'on' if on else 'off'} (auto): successive iteration rates differ "
            f"{said}x as much as binomial noise allows (on above {BURST_THRESHOLD:g}, "
            f"with a run of {MIN_BURST_ITERATIONS} or more iterations; this data's "
            f"longest run has {longest}); --bursts on or off overrides")
    else:
        on = bursts == "on"
    if on and longest < MIN_BURST_ITERATIONS:
        notes.append(
            f"bursts on, but no run has more than {longest} iterations: too few to tell "
            "collapses apart, so the collapse parameters mostly follow their priors")
    return on


def prepare(
    runs: ObservedRuns,
    *,
    reference: str | Sequence[str] = DEFAULT_REFERENCE,
    datasets: Sequence[str] = (),
    tasks: Sequence[str] = (),
    dataset_attrs: Mapping[str, Mapping] | None = None,
    num_forecast: int = 0,
    grid_size: int = GRID_SIZE,
    trend: str = "setting",
    bursts: str = "auto",
) -> Prepared:
    """Build the :class:`~llmnas_transfer.fit.model.ModelSpec` and arrays for observed runs.

    The levels are the datasets and tasks in the data, the reference, and any extra
    ``datasets``/``tasks`` to predict. Every dataset x task combination is a setting of
    the model; those without data are predicted through the hierarchy. ``trend`` is
    the trend model (:attr:`~llmnas_transfer.fit.model.ModelSpec.trend`). Accuracies
    enter relative to each setting's chance level (:func:`normalise_accuracy`).
    ``bursts`` (:data:`BURSTS`) gives the model collapse episodes and overdispersed
    counts (:attr:`~llmnas_transfer.fit.model.ModelSpec.bursts`): ``"on"``, ``"off"``, or
    ``"auto"`` (default), on when the data's successive iteration rates vary more than
    :data:`BURST_THRESHOLD` times what binomial noise allows (:func:`burst_dispersion`)
    and some run has :data:`MIN_BURST_ITERATIONS` iterations; the notes say which.

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
    num_forecast = check_int("forecast", num_forecast, 0, 1000)
    grid_size = check_int("grid_size", grid_size, 8, 512)
    trend = check_choice("trend", trend, TRENDS)
    bursts = check_choice("bursts", bursts, BURSTS)
    notices: list[str] = list(runs.notices)
    ref = check_levels(runs, reference=reference, datasets=datasets, tasks=tasks,
                       dataset_attrs=dataset_attrs)
    attrs = _lower_attrs(dataset_attrs)
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
    entries = [_dataset_entry(d, attrs, notices) for d in d_names]
    unused = set(attrs) - set(d_names)
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

    tasks_reg = [_task_entry(t) for t in t_names]
    chance = np.asarray([[registry.chance_level(e, t) for t in tasks_reg] for e in entries],
                        np.float32)
    d_idx = np.asarray([d_names.index(r[0]) for r in order], np.int32)
    k_idx = np.asarray([t_names.index(r[1]) for r in order], np.int32)
    acc_raw = NormalStats(*(grid("acc_" + c) for c in ("k", "n", "sum", "sumsq", "const")))
    acc, feedback, low_cells, low_values = normalise_accuracy(acc_raw, chance[d_idx, k_idx])
    notes: list[str] = []
    if low_cells:
        notes.append(
            f"{low_values} accuracies in {low_cells} (trial, iteration) cells were at or "
            f"below the setting's chance level (cell mean); they enter the fit at chance + "
            f"{ACCURACY_FLOOR:g} x (1 - chance)")
    n_gen = np.asarray(grid("n_generated"))
    data = RunsData(
        jnp.asarray(d_idx), jnp.asarray(k_idx), jnp.asarray(n_gen), grid("n_valid"), acc,
        NormalStats(*(grid("nov_" + c) for c in ("k", "n", "sum", "sumsq", "const"))),
        jnp.asarray(feedback) if runs.has_accuracy else None,
    )
    seen = n_gen[n_gen > 0]
    with_bursts = choose_bursts(bursts, np.asarray(data.n_valid), n_gen, notes)
    spec = ModelSpec(
        tuple(d_names), tuple(t_names), tuple(e.modality for e in entries),
        tuple(tuple(float(x) for x in e.features()) for e in entries), tuple(observed),
        ref_idx, T, int(num_forecast), T, bool(runs.has_accuracy), bool(runs.has_novelty),
        grid_size, notes=tuple(notes), trend=trend,
        chance=tuple(tuple(float(x) for x in row) for row in chance),
        num_candidates=max(1, int(round(float(np.median(seen))))) if seen.size else 20,
        bursts=with_bursts,
    )
    notices.extend(notes)
    return Prepared(spec, data, tuple(r[0] for r in order), tuple(r[1] for r in order),
                    tuple(str(r[2]) for r in order), tuple(notices))


__all__ = ["ACCURACY_FLOOR", "BURSTS", "BURST_THRESHOLD", "MIN_BURST_ITERATIONS",
           "burst_dispersion", "choose_bursts", "NEW_DATASET_FIELDS", "Prepared", "check_levels",
           "normalise_accuracy", "pad_runs", "parse_reference", "prepare", "run_bucket"]
