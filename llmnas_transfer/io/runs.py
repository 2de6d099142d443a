"""Load and validate observed refinement runs (CSV, Parquet, JSON Lines).

Two forms are accepted (see ``docs/data-format.md``):

* **candidate form** - one row per generated candidate: ``dataset, task, trial,
  iteration, valid`` and optionally ``first_epoch_accuracy``, ``novelty``, ``llm``,
  ``candidate_id``;
* **counts form** - one row per (dataset, task, trial, iteration): ``n_generated,
  n_valid`` and optionally ``accuracy_mean``, ``accuracy_sd``.

Every problem raises :class:`~llmnas_transfer.errors.DataFormatError` with a one-line
message ``FILE: row R, column C: what is wrong``. Rows count like a spreadsheet: in CSV the
header is row 1 (so the first record is row 2); in JSON Lines and Parquet the first
record is row 1. Nothing is dropped silently: blank lines, ignored columns and unused
values are listed in :attr:`ObservedRuns.notices`.

Example
-------
>>> import pandas as pd
>>> df = pd.DataFrame({"dataset": ["cifar-10"] * 3, "task": "classification",
...                    "trial": 1, "iteration": [1, 1, 2], "valid": [1, 0, 1]})
>>> runs = runs_from_frame(df)
>>> runs.form, int(runs.cells["n_valid"].sum())
('candidates', 2)
>>> runs_from_frame(df.assign(iteration=[1, 0, 2]))
Traceback (most recent call last):
...
llmnas_transfer.errors.DataFormatError: <frame>: row 2, column iteration: 0 is below 1
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.io.atomic import atomic_write

CANDIDATE_REQUIRED: tuple[str, ...] = ("dataset", "task", "trial", "iteration", "valid")
CANDIDATE_OPTIONAL: tuple[str, ...] = ("first_epoch_accuracy", "novelty", "llm", "candidate_id")
COUNTS_REQUIRED: tuple[str, ...] = (
    "dataset", "task", "trial", "iteration", "n_generated", "n_valid",
)
COUNTS_OPTIONAL: tuple[str, ...] = ("accuracy_mean", "accuracy_sd")
#: columns of :attr:`ObservedRuns.cells`
CELL_COLUMNS: tuple[str, ...] = (
    "dataset", "task", "trial", "iteration", "n_generated", "n_valid",
    "acc_k", "acc_n", "acc_sum", "acc_sumsq", "acc_const",
    "nov_k", "nov_n", "nov_sum", "nov_sumsq", "nov_const",
)
MAX_ITERATION = 10_000
MAX_COUNT = 10**9
#: accuracies and novelties are clipped to [EPS, 1 - EPS] before the logit
EPS = 1e-4
_MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "n/a"})
_TRUE = frozenset({"1", "true", "1.0"})
_FALSE = frozenset({"0", "false", "0.0"})
SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class ObservedRuns:
    """Validated observed runs, reduced to one row per (dataset, task, trial, iteration).

    Attributes
    ----------
    source : the file name (or ``<frame>``) used in messages.
    form : ``"candidates"`` or ``"counts"``.
    cells : DataFrame with :data:`CELL_COLUMNS`; the ``acc_*`` and ``nov_*`` columns are
        logit-scale sufficient statistics (see :class:`llmnas_transfer.fit.model.NormalStats`).
    num_records : records read from the source (blank lines excluded).
    has_accuracy, has_novelty : whether accuracy / novelty observations exist.
    notices : human-readable notes on everything not used as-is.
    dataset_rows : ``(dataset, row)`` pairs: the row where each dataset name first appears
        (counted as in the error messages), so later checks can point at the file.
    """

    source: str
    form: str
    cells: pd.DataFrame
    num_records: int
    has_accuracy: bool
    has_novelty: bool
    notices: tuple[str, ...] = ()
    dataset_rows: tuple[tuple[str, int], ...] = ()

    @property
    def settings(self) -> list[tuple[str, str]]:
        """Observed (dataset, task) settings, in order of first appearance."""
        pairs = self.cells[["dataset", "task"]].drop_duplicates()
        return [(str(d), str(t)) for d, t in pairs.itertuples(index=False)]

    @property
    def num_trials(self) -> int:
        """Number of runs (distinct trials of a setting)."""
        return int(self.cells[["dataset", "task", "trial"]].drop_duplicates().shape[0])

    def report(self) -> str:
        """One-paragraph account of what was read and used.

        Example
        -------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"dataset": "svhn", "task": "classification", "trial": 1,
        ...                    "iteration": [1], "n_generated": [10], "n_valid": [4]})
        >>> print(runs_from_frame(df).report())  # doctest: +NORMALIZE_WHITESPACE
        <frame>: 1 record (counts form); used 1 record: 1 setting, 1 trial, 1
        (trial, iteration) cell, iterations 1-1, 10 candidates generated, 4 valid.
        """
        c = self.cells
        it = c["iteration"]
        n_acc = int(c["acc_n"].sum())
        parts = [
            f"{self.source}: {_plural(self.num_records, 'record')} ({self.form} form); "
            f"used {_plural(self.num_records, 'record')}: "
            f"{_plural(len(self.settings), 'setting')}, {_plural(self.num_trials, 'trial')}, "
            f"{_plural(len(c), '(trial, iteration) cell')}, iterations {int(it.min())}-"
            f"{int(it.max())}, {int(c['n_generated'].sum())} candidates generated, "
            f"{int(c['n_valid'].sum())} valid"
        ]
        if self.has_accuracy:
            parts.append(f"{n_acc} accuracies")
        if self.has_novelty:
            parts.append(f"{int(c['nov_n'].sum())} novelty scores")
        return ", ".join(parts) + "."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------- reading
def read_runs(path: str | Path) -> ObservedRuns:
    """Read and validate an observed-runs file (``.csv``, ``.parquet``, ``.jsonl``).

    ``.csv.gz`` and ``.jsonl.gz`` are read too. The form is detected from the columns.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
    >>> _ = p.write_text("dataset,task,trial,iteration,valid\\n"
    ...                  "cifar-10,classification,1,1,true\\n")
    >>> read_runs(p).cells["n_valid"].tolist()
    [1]
    """
    path = Path(path)
    name = str(path)
    frame, rows = _read_table(path, name)
    return _validate(frame, rows, name)


def runs_from_frame(df: pd.DataFrame, source: str = "<frame>") -> ObservedRuns:
    """Validate an in-memory table (rows are numbered from 1).

    Example
    -------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"dataset": ["x"], "task": ["y"], "trial": [1], "iteration": [1],
    ...                    "n_generated": [5], "n_valid": [6]})
    >>> runs_from_frame(df)
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.DataFormatError: <frame>: row 1, column n_valid: 6 is more \
than n_generated (5)
    """
    if not isinstance(df, pd.DataFrame):
        raise DataFormatError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    frame = df.reset_index(drop=True).copy()
    frame.columns = [_clean_header(c) for c in frame.columns]
    _check_header(list(frame.columns), source)
    return _validate(frame, np.arange(1, len(frame) + 1), source)


def toy_runs(num_trials: int = 3, num_iterations: int = 2,
             num_generated: int = 10) -> ObservedRuns:
    """A tiny counts-form data set for examples and smoke checks: one setting
    (cifar-10 classification), ``4 + iteration // 2`` valid candidates per iteration.

    Example
    -------
    >>> toy_runs(num_iterations=1).cells["n_valid"].tolist()
    [4, 4, 4]
    """
    rows = [{"dataset": "cifar-10", "task": "classification", "trial": r, "iteration": t,
             "n_generated": num_generated, "n_valid": 4 + t // 2}
            for r in range(num_trials) for t in range(1, num_iterations + 1)]
    return runs_from_frame(pd.DataFrame(rows), source="<toy runs>")


def _clean_header(c) -> str:
    return str(c).strip().lower()


def _check_header(cols: list[str], name: str) -> None:
    seen = set()
    for c in cols:
        if c == "":
            raise DataFormatError(f"{name}: row 1: a column has an empty name")
        if c in seen:
            raise DataFormatError(f"{name}: row 1, column {c}: the column appears twice")
        seen.add(c)


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DataFormatError(f"{name}: is a directory, not a file") from None
    except OSError as exc:
        raise DataFormatError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    if name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataFormatError(f"{name}: not a readable gzip file ({exc})") from None
    if not data.strip():
        raise DataFormatError(f"{name}: the file is empty")
    return data


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataFormatError(
            f"{name}: row {line}: not valid UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def _suffix(name: str) -> str:
    low = name.lower()
    if low.endswith(".gz"):
        low = low[:-3]
    for s in SUFFIXES:
        if low.endswith(s):
            return s
    raise DataFormatError(
        f"{name}: unknown file type; use .csv, .parquet or .jsonl (optionally .csv.gz, .jsonl.gz)"
    )


def _read_table(path: Path, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    kind = _suffix(name)
    data = _read_bytes(path, name)
    if kind in (".parquet", ".pq"):
        return _read_parquet(data, name)
    text = _decode(data, name)
    if kind == ".csv":
        return _read_csv(text, name)
    return _read_jsonl(text, name)


def _read_csv(text: str, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    lines = text.splitlines()
    header_line = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if header_line is None:
        raise DataFormatError(f"{name}: the file is empty")
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False,
            skip_blank_lines=False, skipinitialspace=True, header=header_line,
        )
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{name}: the file is empty") from None
    except pd.errors.ParserError as exc:
        msg = str(exc)
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
        if m:
            raise DataFormatError(
                f"{name}: row {m.group(2)}: expected {m.group(1)} fields, found {m.group(3)}"
            ) from None
        raise DataFormatError(f"{name}: not a readable CSV file ({msg.splitlines()[-1]})") from None
    except (ValueError, UnicodeError) as exc:
        raise DataFormatError(f"{name}: not a readable CSV file ({exc})") from None
    raw_cols = [str(c) for c in frame.columns]
    # pandas renames duplicate headers to 'x.1'; check the header line itself
    try:
        header = next(iter(csv.reader([lines[header_line]])))
    except Exception:  # pragma: no cover - the csv module accepts any single line
        header = raw_cols
    cols = [_clean_header(c) for c in header] if len(header) == len(raw_cols) else [
        _clean_header(c) for c in raw_cols]
    _check_header(cols, name)
    frame.columns = cols
    rows = np.arange(len(frame)) + header_line + 2
    return frame, rows


def _read_jsonl(text: str, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    records, rows = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = getattr(exc, "msg", "too deeply nested")
            raise DataFormatError(f"{name}: row {i}: not valid JSON ({msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(
                f"{name}: row {i}: expected a JSON object like {{\"dataset\": ...}}, "
                f"got {type(obj).__name__}"
            )
        clean = {}
        for k, v in obj.items():
            ck = _clean_header(k)
            if ck == "":
                raise DataFormatError(f"{name}: row {i}: a field has an empty name")
            if ck in clean:
                raise DataFormatError(f"{name}: row {i}, column {ck}: the field appears twice")
            clean[ck] = v
        records.append(clean)
        rows.append(i)
    if not records:
        raise DataFormatError(f"{name}: the file is empty")
    cols: dict[str, None] = {}
    for r in records:
        cols.update(dict.fromkeys(r))
    frame = pd.DataFrame({c: [r.get(c, None) for r in records] for c in cols}, dtype=object)
    return frame, np.asarray(rows)


def _read_parquet(data: bytes, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataFormatError(f"{name}: not a readable Parquet file ({exc})") from None
    if table.num_rows == 0:
        raise DataFormatError(f"{name}: the file is empty (no records)")
    names = [_clean_header(c) for c in table.column_names]
    _check_header(names, name)
    cols = {}
    for c, col in zip(names, table.columns, strict=True):
        t = col.type
        if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            raise DataFormatError(f"{name}: row 1, column {c}: wrong type ({t})")
        try:
            cols[c] = pd.Series(col.to_pylist(), dtype=object)
        except (pa.ArrowException, ValueError, OverflowError) as exc:
            raise DataFormatError(f"{name}: column {c}: cannot be read ({exc})") from None
    return pd.DataFrame(cols), np.arange(1, table.num_rows + 1)


# --------------------------------------------------------------------------- cells
class _Col:
    """Parsing helpers for one column; errors name the file, row and column."""

    def __init__(self, frame: pd.DataFrame, rows: np.ndarray, name: str):
        self.frame, self.rows, self.name = frame, rows, name

    def fail(self, mask: np.ndarray, col: str, what) -> None:
        bad = np.flatnonzero(mask)
        if bad.size:
            i = int(bad[0])
            v = self.frame[col].iloc[i]
            more = f" (and {bad.size - 1} more rows)" if bad.size > 1 else ""
            text = what(v) if callable(what) else what
            raise DataFormatError(f"{self.name}: row {self.rows[i]}, column {col}: {text}{more}")

    def _text_mask(self, col: str, test) -> np.ndarray:
        """Missing values (NaN/None), plus the text values for which ``test`` (applied to
        the stripped strings) is true."""
        s = self.frame[col]
        out = np.array(s.isna().to_numpy(), dtype=bool)
        obj = s.to_numpy(dtype=object)
        is_str = np.fromiter((isinstance(v, str) for v in obj), bool, len(obj))
        if is_str.any():
            out[is_str] = test(pd.Series(obj[is_str]).str.strip()).to_numpy()
        return out

    def missing(self, col: str) -> np.ndarray:
        return self._text_mask(col, lambda t: t.str.lower().isin(_MISSING_TOKENS))

    def blank(self, col: str) -> np.ndarray:
        return self._text_mask(col, lambda t: t.eq(""))

    def label(self, col: str, *, name_rules: bool) -> np.ndarray:
        s = self.frame[col]
        obj = s.to_numpy(dtype=object)
        self.fail(self.blank(col), col, "missing value")
        bad_type = np.fromiter(
            (not isinstance(v, (str, int, float, np.integer, np.floating))
             or isinstance(v, (bool, np.bool_)) for v in obj), bool, len(obj))
        self.fail(bad_type, col, lambda v: f"wrong type ({type(v).__name__}); expected text")
        out = np.empty(len(obj), dtype=object)
        for i, v in enumerate(obj):
            if isinstance(v, (float, np.floating)):
                if not math.isfinite(v):
                    self.fail(np.arange(len(obj)) == i, col, f"{v!r} is not a valid label")
                out[i] = str(int(v)) if float(v).is_integer() else repr(float(v))
            else:
                out[i] = str(v).strip()
        if name_rules:
            out = np.asarray([x.lower() for x in out], dtype=object)
            bad = np.fromiter((any(c in x for c in ",|\n\t") for x in out), bool, len(out))
            self.fail(bad, col, lambda v: f"name {v!r} may not contain ',', '|', tab or newline")
        return out

    def number(self, col: str, *, integer: bool, lo: float | None = None,
               hi: float | None = None, required: np.ndarray | bool = True,
               lo_text: str | None = None) -> np.ndarray:
        """Parse numbers; returns float64 with NaN where missing and not required."""
        s = self.frame[col]
        obj = s.to_numpy(dtype=object)
        miss = self.missing(col)
        req = np.broadcast_to(np.asarray(required, bool), miss.shape)
        self.fail(miss & req, col, "missing value")
        is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in obj), bool, len(obj))
        self.fail(is_bool & ~miss, col, lambda v: f"wrong type ({v!r} is a boolean, not a number)")
        vals = np.where(miss, None, obj)
        num = pd.to_numeric(pd.Series(vals, dtype=object), errors="coerce").to_numpy(
            dtype=float, na_value=np.nan)
        self.fail(~miss & np.isnan(num), col, lambda v: f"wrong type ({v!r} is not a number)")
        self.fail(~miss & ~np.isfinite(num), col, lambda v: f"{v!r} is not a finite number")
        if integer:
            with np.errstate(invalid="ignore"):
                frac = ~miss & (np.floor(num) != num)
            self.fail(frac, col, lambda v: f"{v!r} is not an integer")
        if lo is not None:
            with np.errstate(invalid="ignore"):
                below = ~miss & (num < lo)
            self.fail(below, col, lambda v: f"{_fmt(v)} is below {_fmt(lo)}"
                      if lo_text is None else lo_text.format(v=_fmt(v)))
        if hi is not None:
            with np.errstate(invalid="ignore"):
                above = ~miss & (num > hi)
            self.fail(above, col, lambda v: f"{_fmt(v)} is above {_fmt(hi)}")
        return np.where(miss, np.nan, num)

    def boolean(self, col: str) -> np.ndarray:
        obj = self.frame[col].to_numpy(dtype=object)
        self.fail(self.missing(col), col, "missing value (use 0/1 or true/false)")
        out = np.zeros(len(obj), bool)
        bad = np.zeros(len(obj), bool)
        for i, v in enumerate(obj):
            if isinstance(v, (bool, np.bool_)):
                out[i] = bool(v)
            elif isinstance(v, (int, float, np.integer, np.floating)):
                if v in (0, 1):
                    out[i] = bool(v)
                else:
                    bad[i] = True
            elif isinstance(v, str):
                t = v.strip().lower()
                if t in _TRUE:
                    out[i] = True
                elif t not in _FALSE:
                    bad[i] = True
            else:
                bad[i] = True
        self.fail(bad, col, lambda v: f"{v!r} is not boolean (use 0/1 or true/false)")
        return out


def _fmt(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return repr(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def _logit_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.clip(x, EPS, 1.0 - EPS)
    return np.log(a) - np.log1p(-a), -(np.log(a) + np.log1p(-a))


def _validate(frame: pd.DataFrame, rows: np.ndarray, name: str) -> ObservedRuns:
    notices: list[str] = []
    cols = list(frame.columns)
    # blank lines (CSV rows with every field empty) are not records
    if len(frame):
        empty = np.ones(len(frame), bool)
        for c in cols:
            empty &= _Col(frame, rows, name).blank(c)
        if empty.any():
            notices.append(f"{int(empty.sum())} blank lines ignored")
            frame = frame.loc[~empty].reset_index(drop=True)
            rows = rows[~empty]
    if len(frame) == 0:
        raise DataFormatError(f"{name}: the file has a header but no records")
    has_valid = "valid" in cols
    has_counts = "n_generated" in cols or "n_valid" in cols
    if has_valid and has_counts:
        raise DataFormatError(
            f"{name}: row 1: has both 'valid' (candidate form) and 'n_generated'/'n_valid' "
            "(counts form) columns; use one form per file"
        )
    if has_valid:
        form, required, optional = "candidates", CANDIDATE_REQUIRED, CANDIDATE_OPTIONAL
    elif has_counts:
        form, required, optional = "counts", COUNTS_REQUIRED, COUNTS_OPTIONAL
    else:
        raise DataFormatError(
            f"{name}: row 1, column valid: missing column; the candidate form needs "
            f"{', '.join(CANDIDATE_REQUIRED)} and the counts form needs "
            f"{', '.join(COUNTS_REQUIRED)}"
        )
    for c in required:
        if c not in cols:
            raise DataFormatError(
                f"{name}: row 1, column {c}: missing column (the {form} form needs "
                f"{', '.join(required)})"
            )
    extra = [c for c in cols if c not in required + optional]
    if extra:
        notices.append(f"columns not used: {', '.join(extra)}")
    p = _Col(frame, rows, name)
    dataset = p.label("dataset", name_rules=True)
    task = p.label("task", name_rules=True)
    trial = p.label("trial", name_rules=False)
    iteration = p.number("iteration", integer=True, lo=1, hi=MAX_ITERATION).astype(np.int64)
    if form == "candidates":
        cells = _candidate_cells(frame, p, dataset, task, trial, iteration, notices)
    else:
        cells = _count_cells(frame, p, dataset, task, trial, iteration, notices)
    has_acc = bool(cells["acc_k"].gt(0).any())
    has_nov = bool(cells["nov_k"].gt(0).any())
    # iterations missing inside a trial are unobserved, not an error
    span = cells.groupby(["dataset", "task", "trial"], sort=False)["iteration"].agg(
        ["min", "max", "size"])
    holes = int((span["max"] - span["min"] + 1 - span["size"]).gt(0).sum())
    late = int(span["min"].gt(1).sum())
    if holes:
        notices.append(f"{holes} trials skip iterations; the skipped ones count as unobserved")
    if late:
        notices.append(f"{late} trials start after iteration 1; earlier ones are unobserved")
    first_rows: dict[str, int] = {}
    for d, r in zip(dataset, rows, strict=True):
        first_rows.setdefault(str(d), int(r))
    return ObservedRuns(name, form, cells, len(frame), has_acc, has_nov, tuple(notices),
                        tuple(first_rows.items()))


def _candidate_cells(frame, p: _Col, dataset, task, trial, iteration, notices) -> pd.DataFrame:
    cols = set(frame.columns)
    valid = p.boolean("valid")
    n = len(valid)
    acc = np.full(n, np.nan)
    nov = np.full(n, np.nan)
    if "first_epoch_accuracy" in cols:
        acc = p.number("first_epoch_accuracy", integer=False, lo=0.0, hi=1.0, required=valid)
        stray = ~valid & ~np.isnan(acc)
        if stray.any():
            notices.append(
                f"{int(stray.sum())} invalid candidates carry a first_epoch_accuracy; "
                "it is not used (invalid candidates are not trained)"
            )
            acc = np.where(valid, acc, np.nan)
    if "novelty" in cols:
        nov = p.number("novelty", integer=False, lo=0.0, hi=1.0, required=False)
        gaps = valid & np.isnan(nov)
        if gaps.any() and (~np.isnan(nov)).any():
            notices.append(f"{int(gaps.sum())} valid candidates have no novelty score")
        stray = ~valid & ~np.isnan(nov)
        if stray.any():
            notices.append(f"{int(stray.sum())} invalid candidates carry a novelty; not used")
            nov = np.where(valid, nov, np.nan)
    if "candidate_id" in cols:
        ids = p.label("candidate_id", name_rules=False)
        dup = pd.Series(ids).duplicated(keep="first").to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            first = int(np.flatnonzero(ids == ids[i])[0])
            raise DataFormatError(
                f"{p.name}: row {p.rows[i]}, column candidate_id: duplicate id {ids[i]!r} "
                f"(first seen in row {p.rows[first]})"
            )
    if "llm" in cols:
        llm = pd.Series(frame["llm"], dtype=object)
        names = sorted({str(v).strip() for v in llm.dropna() if str(v).strip()})
        if len(names) > 1:
            notices.append(f"runs from {len(names)} LLMs are pooled: {', '.join(names)}")
    has_acc = ~np.isnan(acc)
    has_nov = ~np.isnan(nov)
    za, ja = _logit_parts(np.where(has_acc, acc, 0.5))
    zn, jn = _logit_parts(np.where(has_nov, nov, 0.5))
    work = pd.DataFrame({
        "dataset": dataset, "task": task, "trial": trial, "iteration": iteration,
        "n_generated": 1, "n_valid": valid.astype(np.int64),
        "acc_k": has_acc.astype(float), "acc_sum": np.where(has_acc, za, 0.0),
        "acc_sumsq": np.where(has_acc, za * za, 0.0), "acc_const": np.where(has_acc, ja, 0.0),
        "nov_k": has_nov.astype(float), "nov_sum": np.where(has_nov, zn, 0.0),
        "nov_sumsq": np.where(has_nov, zn * zn, 0.0), "nov_const": np.where(has_nov, jn, 0.0),
    })
    cells = work.groupby(["dataset", "task", "trial", "iteration"], sort=False).sum().reset_index()
    cells["acc_n"] = cells["acc_k"]
    cells["nov_n"] = cells["nov_k"]
    return cells[list(CELL_COLUMNS)]


def _count_cells(frame, p: _Col, dataset, task, trial, iteration, notices) -> pd.DataFrame:
    cols = set(frame.columns)
    ng = p.number("n_generated", integer=True, lo=0, hi=MAX_COUNT,
                  lo_text="negative count ({v})")
    p.fail(ng == 0, "n_generated", "0 candidates generated; n_generated must be at least 1")
    nv = p.number("n_valid", integer=True, lo=0, hi=MAX_COUNT, lo_text="negative count ({v})")
    over = nv > ng
    p.fail(over, "n_valid",
           lambda v: f"{_fmt(v)} is more than n_generated ({_fmt(ng[np.flatnonzero(over)[0]])})")
    key = pd.DataFrame({"d": dataset, "t": task, "r": trial, "i": iteration})
    dup = key.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((key == key.iloc[i]).all(axis=1).to_numpy())[0])
        raise DataFormatError(
            f"{p.name}: row {p.rows[i]}, column iteration: a second row for dataset "
            f"{dataset[i]!r}, task {task[i]!r}, trial {trial[i]!r}, iteration {iteration[i]} "
            f"(first in row {p.rows[first]})"
        )
    n = len(ng)
    mean = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    if "accuracy_mean" in cols:
        mean = p.number("accuracy_mean", integer=False, lo=0.0, hi=1.0, required=False)
        p.fail(~np.isnan(mean) & (nv == 0), "accuracy_mean",
               "given on a row with n_valid = 0 (no valid candidate has an accuracy)")
        blank = np.isnan(mean) & (nv > 0)
        if blank.any():
            notices.append(
                f"accuracy_mean is blank on {int(blank.sum())} rows with valid candidates; "
                "their accuracy is treated as unobserved"
            )
    if "accuracy_sd" in cols:
        sd = p.number("accuracy_sd", integer=False, lo=0.0, hi=0.5, required=False)
        p.fail(~np.isnan(sd) & np.isnan(mean), "accuracy_sd", "given without accuracy_mean")
        p.fail(~np.isnan(sd) & (nv == 1) & (sd > 0), "accuracy_sd",
               "must be 0 (or blank) when n_valid is 1")
    has_mean = ~np.isnan(mean)
    full = has_mean & ~np.isnan(sd)
    m = np.clip(np.where(has_mean, mean, 0.5), EPS, 1 - EPS)
    zbar, jac = _logit_parts(m)
    sd_z = np.where(full, sd, 0.0) / (m * (1 - m))  # delta method
    cnt = nv.astype(float)
    acc_k = np.where(full, cnt, np.where(has_mean, 1.0, 0.0))
    acc_n = np.where(has_mean, cnt, 0.0)
    acc_sum = acc_n * zbar
    acc_sumsq = np.where(full, np.maximum(cnt - 1, 0) * sd_z**2 + cnt * zbar**2,
                         np.where(has_mean, cnt * zbar**2, 0.0))
    acc_const = np.where(full, cnt * jac,
                         np.where(has_mean, 0.5 * np.log(np.maximum(cnt, 1)) + jac, 0.0))
    zero = np.zeros(n)
    cells = pd.DataFrame({
        "dataset": dataset, "task": task, "trial": trial, "iteration": iteration,
        "n_generated": ng.astype(np.int64), "n_valid": nv.astype(np.int64),
        "acc_k": acc_k, "acc_n": acc_n, "acc_sum": acc_sum, "acc_sumsq": acc_sumsq,
        "acc_const": acc_const, "nov_k": zero, "nov_n": zero, "nov_sum": zero,
        "nov_sumsq": zero, "nov_const": zero,
    })
    return cells[list(CELL_COLUMNS)]


# --------------------------------------------------------------------------- simulation
def runs_from_simulation(ds, *, accuracy: bool = True, novelty: bool = True,
                         source: str = "<simulation>") -> ObservedRuns:
    """Observed runs from :func:`llmnas_transfer.sim.candidates` output (``per_candidate=True``).

    The sufficient statistics are computed directly from the per-candidate arrays
    (the same numbers the candidate form of the same data gives).

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> ds = simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
    ...               num_iterations=3, num_candidates=4, per_candidate=True, bins=0)
    >>> runs_from_simulation(ds).cells.shape[0]
    6
    """
    if "valid" not in ds:
        raise DataFormatError(f"{source}: simulate with per_candidate=True to fit the runs")
    valid = np.asarray(ds["valid"].values, bool)  # (D, K, R, T, C)
    nd, nk, nr, nt, nc = valid.shape

    def stats(x, use):
        mask = valid & ~np.isnan(x) if use else np.zeros_like(valid)
        z, j = _logit_parts(np.where(mask, x, 0.5))
        return (mask.sum(-1).astype(float), (mask * z).sum(-1), (mask * z * z).sum(-1),
                (mask * j).sum(-1))

    ak, asum, asq, aj = stats(np.asarray(ds["accuracy"].values, float), accuracy)
    nk_, nsum, nsq, nj = stats(np.asarray(ds["novelty"].values, float), novelty)
    grid = np.meshgrid(np.asarray(ds["dataset"].values, object),
                       np.asarray(ds["task"].values, object),
                       np.asarray([str(r) for r in ds["trial"].values], object),
                       np.asarray(ds["iteration"].values, np.int64), indexing="ij")
    flat = {
        "dataset": grid[0], "task": grid[1], "trial": grid[2], "iteration": grid[3],
        "n_generated": np.full(valid.shape[:4], nc, np.int64),
        "n_valid": valid.sum(-1).astype(np.int64),
        "acc_k": ak, "acc_n": ak, "acc_sum": asum, "acc_sumsq": asq, "acc_const": aj,
        "nov_k": nk_, "nov_n": nk_, "nov_sum": nsum, "nov_sumsq": nsq, "nov_const": nj,
    }
    cells = pd.DataFrame({k: np.asarray(v).reshape(-1) for k, v in flat.items()})
    return ObservedRuns(source, "candidates", cells[list(CELL_COLUMNS)], int(valid.size),
                        bool(ak.sum() > 0), bool(nk_.sum() > 0))


def simulation_to_frame(ds, *, accuracy: bool = True, novelty: bool = False) -> pd.DataFrame:
    """Candidate-form table (one row per candidate) of per-candidate simulator output.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> ds = simulate(0, datasets="svhn", tasks="classification", num_trials=1,
    ...               num_iterations=2, num_candidates=3, per_candidate=True, bins=0)
    >>> list(simulation_to_frame(ds).columns)
    ['dataset', 'task', 'trial', 'iteration', 'valid', 'first_epoch_accuracy']
    """
    v = ds["valid"].to_dataframe().reset_index()
    out = pd.DataFrame({
        "dataset": v["dataset"].astype(str), "task": v["task"].astype(str),
        "trial": v["trial"], "iteration": v["iteration"], "valid": v["valid"].astype(int),
    })
    if accuracy:
        out["first_epoch_accuracy"] = ds["accuracy"].to_dataframe().reset_index()["accuracy"]
    if novelty:
        out["novelty"] = ds["novelty"].to_dataframe().reset_index()["novelty"]
    return out


def write_runs(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a runs table as CSV, Parquet or JSON Lines (by suffix), atomically.

    Example
    -------
    >>> import pandas as pd, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.jsonl"
    >>> _ = write_runs(pd.DataFrame({"a": [1]}), p)
    >>> p.read_text().strip()
    '{"a":1}'
    """
    path = Path(path)
    kind = _suffix(str(path))
    # the temporary name ends in .tmp, so the compression is named, not inferred
    gz = "gzip" if path.name.lower().endswith(".gz") else None
    if kind == ".csv":
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, compression=gz))
    elif kind in (".parquet", ".pq"):
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: df.to_json(tmp, orient="records", lines=True,
                                                  compression=gz))
    return path


# --------------------------------------------------------------------------- levels
LEVEL_FIELDS: tuple[str, ...] = ("modality", "resolution", "num_classes")


def parse_dataset_attrs(text: str) -> dict[str, dict[str, str]]:
    """Parse ``NAME:modality=audio,resolution=64,num_classes=50`` (the ``--dataset-attrs``
    option) into ``{name: {field: value}}``.

    Example
    -------
    >>> parse_dataset_attrs("esc-50:modality=audio,resolution=64,num_classes=50")
    {'esc-50': {'modality': 'audio', 'resolution': '64', 'num_classes': '50'}}
    """
    name, sep, rest = str(text).partition(":")
    name = name.strip().lower()
    if not sep or not name or not rest.strip():
        raise UserInputError(
            f"dataset attributes must look like NAME:modality=audio,resolution=64,"
            f"num_classes=50, got {text!r}"
        )
    out: dict[str, str] = {}
    for part in rest.split(","):
        k, eq, v = part.partition("=")
        k = k.strip().lower()
        if not eq or k not in LEVEL_FIELDS or not v.strip():
            raise UserInputError(
                f"dataset attributes for {name!r}: {part.strip()!r} is not one of "
                f"{', '.join(f + '=...' for f in LEVEL_FIELDS)}"
            )
        out[k] = v.strip()
    return {name: out}


def read_levels(path: str | Path) -> dict[str, dict[str, object]]:
    """Read a side file of dataset attributes (CSV or JSON Lines): columns ``name`` plus
    any of ``modality``, ``resolution``, ``num_classes``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "levels.csv"
    >>> _ = p.write_text("name,modality,resolution,num_classes\\nesc-50,audio,64,50\\n")
    >>> read_levels(p)
    {'esc-50': {'modality': 'audio', 'resolution': 64, 'num_classes': 50}}
    """
    path = Path(path)
    name = str(path)
    kind = _suffix(name)
    if kind in (".parquet", ".pq"):
        frame, rows = _read_parquet(_read_bytes(path, name), name)
    else:
        text = _decode(_read_bytes(path, name), name)
        frame, rows = _read_csv(text, name) if kind == ".csv" else _read_jsonl(text, name)
    if "name" not in frame.columns:
        raise DataFormatError(f"{name}: row 1, column name: missing column")
    unknown = [c for c in frame.columns if c not in ("name",) + LEVEL_FIELDS]
    if unknown:
        raise DataFormatError(
            f"{name}: row 1, column {unknown[0]}: unknown column (use name, "
            f"{', '.join(LEVEL_FIELDS)})"
        )
    p = _Col(frame, rows, name)
    names = p.label("name", name_rules=True)
    out: dict[str, dict[str, object]] = {}
    res = p.number("resolution", integer=True, lo=1, required=False) \
        if "resolution" in frame.columns else None
    cls = p.number("num_classes", integer=True, lo=1, required=False) \
        if "num_classes" in frame.columns else None
    mod = p.label("modality", name_rules=True) if "modality" in frame.columns else None
    for i, n in enumerate(names):
        if n in out:
            raise DataFormatError(f"{name}: row {rows[i]}, column name: {n!r} appears twice")
        entry: dict[str, object] = {}
        if mod is not None:
            entry["modality"] = mod[i]
        if res is not None and not np.isnan(res[i]):
            entry["resolution"] = int(res[i])
        if cls is not None and not np.isnan(cls[i]):
            entry["num_classes"] = int(cls[i])
        out[n] = entry
    return out
