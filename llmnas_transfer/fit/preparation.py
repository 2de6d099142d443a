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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.model import GRID_SIZE, ModelSpec, NormalStats, RunsData
from llmnas_transfer.io.runs import ObservedRuns
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.gaps import DEFAULT_REFERENCE
from llmnas_transfer.validate import check_choice, check_int

#: defaults assumed for a dataset that is not in the registry and has no attributes
DEFAULT_NEW_DATASET = {"modality": "image", "resolution": 32, "num_classes": 10}


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
    modality = check_choice(f"dataset {name!r}: modality", str(a["modality"]).strip().lower(),
                            registry.MODALITIES)
    try:
        res, ncls = int(a["resolution"]), int(a["num_classes"])
    except (TypeError, ValueError):
        raise UserInputError(
            f"dataset {name!r}: resolution and num_classes must be integers"
        ) from None
    res = check_int(f"dataset {name!r}: resolution", res, 1)
    ncls = check_int(f"dataset {name!r}: num_classes", ncls, 1)
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
    num_forecast = check_int("forecast", num_forecast, 0, 1000)
    grid_size = check_int("grid_size", grid_size, 8, 512)
    notices: list[str] = list(runs.notices)
    ref = parse_reference(reference)
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


__all__ = ["DEFAULT_NEW_DATASET", "Prepared", "parse_reference", "prepare"]
