"""Bundled real data: LEMUR first-epoch accuracies and published headline numbers.

Everything here reads files shipped inside the package (``llmnas_transfer/data``); nothing
touches the network.

* :func:`load_lemur` - the LEMUR neural-network dataset's first-epoch statistics, one row
  per architecture (7,415 rows) or per training trial (38,696 rows). Derived from
  github.com/ABrain-One/nn-dataset (MIT licence; see ``data/lemur/LICENSE.txt`` and
  ``data/lemur/README.md`` for provenance).
* :func:`published_anchors` - headline numbers of LLM-driven architecture synthesis
  papers (chiefly Khalid, Ignatov and Timofte 2026, arXiv 2601.02997).
* :data:`LEMUR_MAP` - which LEMUR dataset stands in for which study dataset.
* :func:`load_lemur_accuracy_priors` - the LEMUR accuracy priors shipped in
  ``data/lemur_accuracy_priors.json`` (derived by
  :func:`llmnas_transfer.study.lemur.derive_lemur_accuracy_priors`, written by
  :func:`save_lemur_accuracy_priors`).

Columns of ``load_lemur("architecture")`` (one row per task, dataset, metric, nn):

| column | dtype | meaning |
|---|---|---|
| task | category | LEMUR task, e.g. ``img-classification`` |
| dataset | category | e.g. ``cifar-10``, ``svhn``, ``imagenette`` |
| metric | category | ``acc``, ``iou``, ``map``, ``bleu``, ``ppl``, ``clip`` |
| nn | category | architecture name (same name = same architecture) |
| family | category | base family, e.g. ``AlexNet`` |
| source | category | ``llm``, ``human``, ``human_variant``, ``algorithmic_ga``, ... |
| n_trials_e1 | int64 | trials (hyperparameter settings) with an epoch-1 value |
| e1_max, e1_mean, e1_median, e1_min, e1_std | float64 | statistics of the epoch-1 values |
| max_epoch_recorded | int64 | last epoch LEMUR recorded for the architecture |
| best_any_epoch | float64 | best value at any recorded epoch |

``source`` is inferred from the name; its values are ``llm``, ``human``, ``human_variant``,
``algorithmic_ga``, ``algorithmic_ast`` and ``rag_extracted``.

``load_lemur("trial")`` has the six name columns above plus ``epoch`` (int64, always 1),
``trial`` (int64), ``value`` (float64: LEMUR's "accuracy", the task metric normalised so
that higher is better), ``batch`` (int64), ``lr``, ``momentum``, ``dropout`` (float64; NaN
where the trial did not record the hyperparameter), ``transform`` (category),
``duration_s`` (float64; NaN where not recorded) and ``uid`` (string).

LEMUR stores only models that trained: it says nothing about validity (failure) rates.

Example
-------
>>> df = load_lemur("architecture", dataset="cifar-10", source="llm")
>>> len(df), str(df["e1_mean"].dtype)
(58, 'float64')
>>> float(published_anchors().query("quantity == 'valid_rate_peak'")["value_numeric"].iloc[0])
74.5
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.io.atomic import atomic_write_text, check_writable

LEVELS: tuple[str, ...] = ("architecture", "trial")
NAME_COLUMNS: tuple[str, ...] = ("task", "dataset", "metric", "nn", "family", "source")

_FILES = {
    "architecture": "lemur/lemur_epoch1_by_arch.csv.gz",
    "trial": "lemur/lemur_epoch1_trials.csv.gz",
}
_NUMERIC = {
    "architecture": {
        "n_trials_e1": "int64", "e1_max": "float64", "e1_mean": "float64",
        "e1_median": "float64", "e1_min": "float64", "e1_std": "float64",
        "max_epoch_recorded": "int64", "best_any_epoch": "float64",
    },
    "trial": {
        "epoch": "int64", "trial": "int64", "value": "float64", "batch": "int64",
        "lr": "float64", "momentum": "float64", "dropout": "float64", "duration_s": "float64",
    },
}
#: numeric columns that may be empty in the bundled files (hyperparameter not recorded)
_MAY_BE_MISSING = {"momentum", "dropout", "duration_s", "e1_std"}
_OTHER = {"architecture": (), "trial": ("transform", "uid")}

#: which LEMUR dataset stands in for which study dataset (see docs/real-data.md)
LEMUR_MAP: dict[str, str] = {
    "cifar-10": "cifar-10", "cifar-100": "cifar-100", "svhn": "svhn",
    "imagenet": "imagenette", "fashion-mnist": "mnist",
}
#: file name of the LEMUR accuracy priors inside the package's data folder
PRIORS_FILE = "lemur_accuracy_priors.json"

ANCHOR_COLUMNS: tuple[str, ...] = (
    "study", "arxiv", "venue", "llm", "dataset", "quantity", "value", "unit", "where_reported",
)
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def _data_path(rel: str) -> Path:
    return Path(str(resources.files("llmnas_transfer.data").joinpath(rel)))


def _read_csv(path: Path, label: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise DataFormatError(f"{label}: file not found") from None
    except (OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise DataFormatError(f"{label}: cannot be read as CSV ({msg})") from None


def _tidy(raw: pd.DataFrame, level: str, label: str) -> pd.DataFrame:
    """Check columns and parse types; errors name the file, row and column."""
    needed = list(NAME_COLUMNS) + list(_NUMERIC[level]) + list(_OTHER[level])
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataFormatError(f"{label}: missing column(s) {', '.join(missing)}")
    out = {}
    for col in NAME_COLUMNS:
        s = raw[col]
        bad = s.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
            raise DataFormatError(f"{label}: row {row}, column {col}: empty name")
        out[col] = s.astype("category")
    for col, dtype in _NUMERIC[level].items():
        s = raw[col]
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if col not in _MAY_BE_MISSING:
            bad = bad | s.isna()
        if dtype == "int64":
            bad = bad | (num.notna() & (num != np.round(num)))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataFormatError(
                f"{label}: row {row + 2}, column {col}: expected a number, got {s.iloc[row]!r}"
            )
        out[col] = num.astype(dtype)
    if level == "trial":
        out["transform"] = raw["transform"].astype("category")
        out["uid"] = raw["uid"].astype("string")
    return pd.DataFrame(out)[needed]


@functools.lru_cache(maxsize=2)
def _bundled(level: str) -> pd.DataFrame:
    rel = _FILES[level]
    return _tidy(_read_csv(_data_path(rel), f"<package>/data/{rel}"), level,
                 f"<package>/data/{rel}")


def _as_list(value: str | Iterable[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        vals = [str(v) for v in value]
    except TypeError:
        raise UserInputError(f"{name} must be a name or a list of names, got {value!r}") from None
    return vals


def _apply_filter(df: pd.DataFrame, col: str, wanted: list[str] | None) -> pd.DataFrame:
    if wanted is None:
        return df
    valid = sorted(map(str, df[col].cat.categories if hasattr(df[col], "cat")
                       else df[col].unique()))
    unknown = [w for w in wanted if w not in valid]
    if unknown or not wanted:
        raise UserInputError(
            f"unknown {col} {', '.join(map(repr, unknown)) or '(empty)'}; "
            f"valid values: {', '.join(valid)}"
        )
    return df[df[col].isin(wanted)]


def load_lemur(
    level: str = "architecture",
    *,
    dataset: str | Iterable[str] | None = None,
    source: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    path: str | Path | None = None,
) -> pd.DataFrame:
    """Load the bundled LEMUR first-epoch table as a tidy DataFrame.

    Parameters
    ----------
    level : ``"architecture"`` (one row per task, dataset, metric and nn; 7,415 rows) or
        ``"trial"`` (one row per training trial after one epoch; 38,696 rows).
    dataset, source, task : keep only these values (a name, a comma-separated string or a
        list). An unknown value, or a combination that matches no row, raises
        :class:`~llmnas_transfer.errors.UserInputError` listing the valid values.
    path : read a file of the same format instead of the bundled one (for a newer LEMUR
        export). A malformed file raises :class:`~llmnas_transfer.errors.DataFormatError`
        naming the file, row and column.

    Returns
    -------
    pandas.DataFrame with the columns and dtypes listed in the module docstring, a fresh
    ``RangeIndex`` and name columns as ``category``.

    Example
    -------
    >>> load_lemur("trial", dataset="svhn", source="llm")["value"].between(0, 1).all()
    np.True_
    >>> load_lemur("level")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    UserInputError: unknown level 'level'; valid values: architecture, trial
    """
    if not isinstance(level, str) or level not in LEVELS:
        raise UserInputError(f"unknown level {level!r}; valid values: {', '.join(LEVELS)}")
    if path is None:
        df = _bundled(level)
    else:
        label = str(path)
        df = _tidy(_read_csv(Path(path), label), level, label)
    filters = {"task": _as_list(task, "task"), "dataset": _as_list(dataset, "dataset"),
               "source": _as_list(source, "source")}
    out = df
    for col, wanted in filters.items():
        out = _apply_filter(out, col, wanted)
    if out.empty:
        asked = ", ".join(f"{k}={','.join(v)}" for k, v in filters.items() if v is not None)
        combos = (df.groupby(["task", "dataset", "source"], observed=True).size()
                  .reset_index()[["task", "dataset", "source"]])
        scope = ""
        for cols in (("task", "dataset"), ("task",), ("dataset",)):
            keep = np.ones(len(combos), bool)
            for c in cols:
                if filters[c] is not None:
                    keep &= combos[c].isin(filters[c]).to_numpy()
            if keep.any() and any(filters[c] is not None for c in cols):
                combos, scope = combos[keep], " with that " + " and ".join(
                    c for c in cols if filters[c] is not None)
                break
        listing = "; ".join(f"{r.task}/{r.dataset}/{r.source}" for r in combos.itertuples())
        raise UserInputError(
            f"no LEMUR rows match {asked}; valid task/dataset/source combinations{scope}: "
            f"{listing}"
        )
    out = out.reset_index(drop=True).copy()
    for col in NAME_COLUMNS:
        out[col] = out[col].cat.remove_unused_categories()
    return out


def lemur_valid_values(column: str, level: str = "architecture") -> list[str]:
    """Sorted distinct values of a name column of the bundled table.

    Example
    -------
    >>> "cifar-10" in lemur_valid_values("dataset")
    True
    """
    if column not in NAME_COLUMNS:
        raise UserInputError(f"unknown column {column!r}; valid values: {', '.join(NAME_COLUMNS)}")
    return sorted(map(str, load_lemur(level)[column].cat.categories))


def parse_number(text: str) -> float:
    """The number in ``text`` if it is one plain number, else NaN.

    Example
    -------
    >>> parse_number("74.5"), parse_number("85.5 / 85.2")
    (74.5, nan)
    """
    if isinstance(text, str) and _NUMBER.match(text):
        return float(text)
    return float("nan")


@functools.lru_cache(maxsize=1)
def _anchors() -> pd.DataFrame:
    label = "<package>/data/published_llm_nas_numbers.csv"
    raw = _read_csv(_data_path("published_llm_nas_numbers.csv"), label)
    missing = [c for c in ANCHOR_COLUMNS if c not in raw.columns]
    if missing:
        raise DataFormatError(f"{label}: missing column(s) {', '.join(missing)}")
    for col in ("study", "quantity", "value"):
        bad = raw[col].isna().to_numpy()
        if bad.any():
            raise DataFormatError(f"{label}: row {int(np.flatnonzero(bad)[0]) + 2}, column "
                                  f"{col}: empty")
    out = raw[list(ANCHOR_COLUMNS)].copy()
    for col in ANCHOR_COLUMNS:
        out[col] = out[col].astype("string")
    out["value_numeric"] = np.asarray([parse_number(v) for v in raw["value"]], float)
    return out


def published_anchors(study: str | None = None) -> pd.DataFrame:
    """Published headline numbers of LLM-driven architecture synthesis (bundled CSV).

    Columns: ``study, arxiv, venue, llm, dataset, quantity, value, unit, where_reported``
    (strings, ``value`` exactly as published, e.g. ``"85.5 / 85.2 / 80.6"``) plus
    ``value_numeric`` (float64; NaN where ``value`` is not one plain number).

    Parameters
    ----------
    study : keep rows whose ``study`` contains this text (case-insensitive).

    Example
    -------
    >>> a = published_anchors("khalid")
    >>> a.set_index("quantity").loc["frac_acc_gt_40_last", "value_numeric"]
    np.float64(96.81)
    """
    df = _anchors()
    if study is not None:
        keep = df["study"].str.lower().str.contains(str(study).lower(), regex=False)
        if not keep.any():
            raise UserInputError(
                f"no published numbers for study {study!r}; studies: "
                + "; ".join(sorted(set(df["study"])))
            )
        df = df[keep]
    return df.reset_index(drop=True).copy()


def published_value(quantity: str, study: str = "Khalid") -> float:
    """One numeric published value, e.g. ``published_value("valid_rate_peak")`` -> 74.5.

    Example
    -------
    >>> published_value("mean_acc_epoch1_last")
    50.99
    """
    df = published_anchors(study)
    row = df[df["quantity"] == quantity]
    if row.empty:
        raise UserInputError(
            f"no quantity {quantity!r} for study {study!r}; valid values: "
            + ", ".join(sorted(set(df["quantity"])))
        )
    v = float(row["value_numeric"].iloc[0])
    if not np.isfinite(v):
        raise UserInputError(f"{quantity!r} is not a plain number: {row['value'].iloc[0]!r}")
    return v


# ------------------------------------------------------------------ LEMUR accuracy priors
def priors_path() -> Path:
    """Where the package keeps ``lemur_accuracy_priors.json``."""
    return _data_path(PRIORS_FILE)


def save_lemur_accuracy_priors(priors: dict, path: str | Path | None = None) -> Path:
    """Write LEMUR accuracy priors as JSON (atomically); the package's file when ``path``
    is ``None``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.json"
    >>> save_lemur_accuracy_priors({"datasets": {}}, p).name
    'p.json'
    """
    path = check_writable(priors_path() if path is None else Path(path))
    atomic_write_text(path, json.dumps(priors, indent=2, sort_keys=True) + "\n")
    return path


def load_lemur_accuracy_priors(path: str | Path | None = None) -> dict:
    """Read saved LEMUR accuracy priors (no refit); the shipped file when ``path`` is ``None``.

    Example
    -------
    >>> p = load_lemur_accuracy_priors()
    >>> p["datasets"]["cifar-10"]["lemur_dataset"]
    'cifar-10'
    """
    path = priors_path() if path is None else Path(path)
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path}: priors file not found; write it with "
                             "llmnas-transfer lemur --write-priors") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(d, dict) or "datasets" not in d:
        raise UserInputError(f"{path}: not a LEMUR priors file (no 'datasets' field)")
    return d
