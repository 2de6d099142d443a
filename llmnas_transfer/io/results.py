"""Save and load simulation results: netCDF, Parquet or a tidy CSV table.

The format follows the file suffix:

* ``.nc`` - the :class:`xarray.Dataset` as netCDF-4 (``h5netcdf`` engine); everything is
  kept, attributes included.
* ``.parquet`` and ``.csv`` - a tidy table with one row per (dataset, task, trial,
  iteration) and one column per per-iteration variable (``n_valid``, ``validity_rate``,
  accuracy and novelty statistics, ``state``, ``p_valid``, the scalar ``n_generated``
  and the per-setting ``chance``, repeated on each row of its setting).
  Histogram counts become wide columns ``accuracy_hist_00``, ``accuracy_hist_01``, ...
  (bin ``i`` covers ``[i/B, (i+1)/B)``). Per-candidate values, when the results hold
  them, go to a second long table ``<stem>.candidates<suffix>`` with one row per
  (dataset, task, trial, iteration, candidate). Parquet keeps the run's attributes
  (seed, model) in its schema metadata; CSV keeps the data only.

Every write goes to a temporary file in the target folder and is renamed into place, so an
error never leaves a partial file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.io.atomic import atomic_paths, check_writable

INDEX: tuple[str, ...] = ("dataset", "task", "trial", "iteration")
CANDIDATE_INDEX: tuple[str, ...] = INDEX + ("candidate",)
SUFFIXES: tuple[str, ...] = (".nc", ".parquet", ".csv")
_META_KEY = b"llmnas_transfer"
#: dtypes of :func:`llmnas_transfer.sim.candidates` variables, restored when reading a CSV table
SIMULATE_DTYPES: dict[str, str] = {
    "n_valid": "int32", "accuracy_sum": "float32", "accuracy_sumsq": "float32",
    "novelty_sum": "float32", "novelty_sumsq": "float32", "state": "float32",
    "p_valid": "float32", "accuracy_hist": "int32", "novelty_hist": "int32",
    "valid": "bool", "accuracy": "float32", "novelty": "float32",
}


# ------------------------------------------------------------------ paths
def _suffix(path: Path) -> str:
    suf = path.suffix.lower()
    if suf not in SUFFIXES:
        raise UserInputError(
            f"{path}: unknown results format {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    return suf


def candidates_path(path: str | os.PathLike) -> Path:
    """Where the per-candidate long table of a table-format results file lives.

    Example
    -------
    >>> candidates_path("out/run.csv").name
    'run.candidates.csv'
    """
    p = Path(path)
    return p.with_name(p.stem + ".candidates" + p.suffix)


# ------------------------------------------------------------------ tables
#: per-setting variables: one value per (dataset, task), repeated on every row of a table
SETTING_DIMS: tuple[str, str] = ("dataset", "task")
SETTING_VARIABLES: tuple[str, ...] = ("chance",)


def _split_variables(ds: xr.Dataset) -> tuple[list[str], list[str], list[str], list[str]]:
    """Per-iteration (and per-setting), per-iteration-with-one-extra-dim, per-candidate
    and scalar vars."""
    flat, wide, cand, scalar = [], [], [], []
    for name, var in ds.data_vars.items():
        dims = tuple(var.dims)
        if dims == INDEX or (dims == SETTING_DIMS and name in SETTING_VARIABLES):
            flat.append(name)
        elif dims == CANDIDATE_INDEX:
            cand.append(name)
        elif len(dims) == 5 and dims[:4] == INDEX:
            wide.append(name)
        elif dims == ():
            scalar.append(name)
        else:
            raise UserInputError(
                f"variable {name!r} with dims {dims} has no place in a tidy table; "
                "save as .nc instead"
            )
    return flat, wide, cand, scalar


def _check_index(ds: xr.Dataset) -> None:
    missing = [d for d in INDEX if d not in ds.dims]
    if missing:
        raise UserInputError(
            f"results lack the dimension(s) {', '.join(missing)}; expected the output of "
            "llmnas_transfer.sim.candidates"
        )


def _index_frame(ds: xr.Dataset, dims: tuple[str, ...]) -> pd.DataFrame:
    grids = np.meshgrid(*[ds[d].values for d in dims], indexing="ij")
    return pd.DataFrame({d: g.ravel() for d, g in zip(dims, grids, strict=True)})


def to_table(ds: xr.Dataset) -> pd.DataFrame:
    """Tidy per-iteration table: one row per (dataset, task, trial, iteration).

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
    ...              num_iterations=3, num_candidates=4, bins=2)
    >>> t = to_table(r)
    >>> len(t), list(t.columns[:6])
    (6, ['dataset', 'task', 'trial', 'iteration', 'n_valid', 'validity_rate'])
    >>> [c for c in t.columns if c.startswith("accuracy_hist")]
    ['accuracy_hist_00', 'accuracy_hist_01']
    """
    _check_index(ds)
    flat, wide, _cand, scalar = _split_variables(ds)
    ds = ds.transpose(*INDEX, ...)
    df = _index_frame(ds, INDEX)
    cols: dict[str, np.ndarray] = {}
    for name in flat:
        cols[name] = ds[name].broadcast_like(ds["n_valid"]).transpose(*INDEX).values.ravel() \
            if ds[name].dims == SETTING_DIMS else ds[name].values.ravel()
    for name in wide:
        vals = ds[name].values
        nb = vals.shape[-1]
        width = max(2, len(str(nb - 1)))
        flat_vals = vals.reshape(-1, nb)
        for i in range(nb):
            cols[f"{name}_{i:0{width}d}"] = flat_vals[:, i]
    for name in scalar:
        cols[name] = np.full(len(df), ds[name].values.item())
    return pd.concat([df, pd.DataFrame(cols)], axis=1)


def candidates_table(ds: xr.Dataset) -> pd.DataFrame | None:
    """Long per-candidate table (``None`` when the results hold no per-candidate values).

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
    ...              num_iterations=2, num_candidates=3, per_candidate=True)
    >>> list(candidates_table(r).columns)
    ['dataset', 'task', 'trial', 'iteration', 'candidate', 'valid', 'accuracy', 'novelty']
    """
    _check_index(ds)
    _flat, _wide, cand, _scalar = _split_variables(ds)
    if not cand:
        return None
    ds = ds.transpose(*CANDIDATE_INDEX, ...)
    df = _index_frame(ds, CANDIDATE_INDEX)
    for name in cand:
        df[name] = ds[name].values.ravel()
    return df


def _first_seen(values: pd.Series) -> np.ndarray:
    return pd.unique(values)


def _grid_positions(df: pd.DataFrame, dims: tuple[str, ...], where: str):
    coords, codes = {}, []
    for d in dims:
        levels = _first_seen(df[d])
        coords[d] = levels
        codes.append(pd.Index(levels).get_indexer(df[d]))
    shape = tuple(len(coords[d]) for d in dims)
    flat = np.ravel_multi_index(tuple(codes), shape)
    if len(flat) != int(np.prod(shape)) or len(np.unique(flat)) != len(flat):
        counts = pd.Series(flat).value_counts()
        dup = counts[counts > 1]
        if len(dup):
            row = int(np.flatnonzero(flat == dup.index[0])[1])
            raise DataFormatError(
                f"{where}: row {row + 2}: columns {', '.join(dims)}: combination appears "
                "more than once"
            )
        raise DataFormatError(
            f"{where}: columns {', '.join(dims)}: incomplete grid ({len(flat)} rows for "
            f"{int(np.prod(shape))} combinations); every combination needs one row"
        )
    return coords, shape, flat


def _clean_index(df: pd.DataFrame, dims: tuple[str, ...], where: str) -> pd.DataFrame:
    df = df.copy()
    for c in dims:
        bad = df[c].isna().to_numpy()
        if bad.any():
            raise DataFormatError(f"{where}: row {int(np.flatnonzero(bad)[0]) + 2}: column {c}: "
                                  "missing value")
        if c in ("dataset", "task"):
            df[c] = df[c].astype(str)
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        bad = (num.isna() | (num != np.round(num))).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(f"{where}: row {row + 2}: column {c}: "
                                  f"{df[c].iloc[row]!r} is not an integer")
        df[c] = num.astype(np.int64)
    return df


def _place(values: np.ndarray, shape, flat) -> np.ndarray:
    out = np.empty(int(np.prod(shape)), dtype=values.dtype)
    out[flat] = values
    return out.reshape(shape)


def _add_candidates(candidates: pd.DataFrame, data: dict, coords: dict, where: str) -> None:
    """Add the variables of a per-candidate long table to ``data`` (and its ``candidate``
    coordinate to ``coords``), checking it matches the per-iteration table."""
    miss = [c for c in CANDIDATE_INDEX if c not in candidates.columns]
    if miss:
        raise DataFormatError(f"{where}: row 1: missing column(s) {', '.join(miss)}")
    candidates = _clean_index(candidates.reset_index(drop=True), CANDIDATE_INDEX, where)
    ccoords, cshape, cflat = _grid_positions(candidates, CANDIDATE_INDEX, where)
    for d in INDEX:
        if list(ccoords[d]) != list(coords[d]):
            raise DataFormatError(
                f"{where}: column {d}: values differ from the per-iteration table"
            )
    coords["candidate"] = np.asarray(ccoords["candidate"])
    for col in candidates.columns:
        if col not in CANDIDATE_INDEX:
            data[col] = (CANDIDATE_INDEX, _place(candidates[col].to_numpy(), cshape, cflat))


def _simulate_dtype(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` in the simulator's dtype of variable ``name`` when the cast loses nothing."""
    want = SIMULATE_DTYPES.get(name)
    if not want or arr.dtype == want:
        return arr
    cast = arr.astype(want)
    back = cast.astype(arr.dtype)
    if arr.dtype.kind == "f" and want.startswith("float"):
        # CSV stores float32 in its shortest round-trip form: accept a cast that
        # moves no value by more than float32 rounding
        same = np.allclose(back, arr, rtol=2.0**-24, atol=0.0, equal_nan=True)
    else:
        same = np.array_equal(back, arr)
    return cast if same else arr


def from_table(
    table: pd.DataFrame,
    candidates: pd.DataFrame | None = None,
    *,
    attrs: dict | None = None,
    where: str = "table",
) -> xr.Dataset:
    """Rebuild the results :class:`xarray.Dataset` from :func:`to_table` output.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,svhn", tasks="classification", num_trials=2,
    ...              num_iterations=2, num_candidates=3)
    >>> back = from_table(to_table(r))
    >>> back["n_valid"].dims
    ('dataset', 'task', 'trial', 'iteration')
    """
    missing = [c for c in INDEX if c not in table.columns]
    if missing:
        raise DataFormatError(f"{where}: row 1: missing column(s) {', '.join(missing)}")
    table = _clean_index(table.reset_index(drop=True), INDEX, where)
    coords, shape, flat = _grid_positions(table, INDEX, where)
    data: dict[str, tuple] = {}
    hist_groups: dict[str, list[str]] = {}
    scalars: dict[str, object] = {}
    for col in table.columns:
        if col in INDEX:
            continue
        base, _, tail = col.rpartition("_")
        if base.endswith("_hist") and tail.isdigit():
            hist_groups.setdefault(base, []).append(col)
            continue
        if col == "n_generated":
            vals = table[col].unique()
            if len(vals) != 1:
                raise DataFormatError(f"{where}: column n_generated: must be constant")
            scalars[col] = vals[0]
            continue
        if col in SETTING_VARIABLES:
            full = _place(table[col].to_numpy(dtype=float), shape, flat)
            full = full.reshape(shape[:2] + (-1,))
            first = full[..., 0]
            if np.any(full != first[..., None]):
                raise DataFormatError(
                    f"{where}: column {col}: must be constant within each dataset and task")
            data[col] = (SETTING_DIMS, first)
            continue
        data[col] = (INDEX, _place(table[col].to_numpy(), shape, flat))
    new_coords: dict[str, np.ndarray] = {d: np.asarray(coords[d]) for d in INDEX}
    for base, cols in hist_groups.items():
        cols = sorted(cols, key=lambda c: int(c.rpartition("_")[2]))
        arr = np.stack([_place(table[c].to_numpy(), shape, flat) for c in cols], axis=-1)
        bin_dim = base[: -len("_hist")] + "_bin"
        edges = np.linspace(0.0, 1.0, len(cols) + 1)
        new_coords[bin_dim] = 0.5 * (edges[1:] + edges[:-1])
        data[base] = (INDEX + (bin_dim,), arr)
    if candidates is not None:
        _add_candidates(candidates, data, new_coords, where.replace("table",
                                                                   "candidates table"))
    for name, (dims, arr) in data.items():
        data[name] = (dims, _simulate_dtype(name, arr))
    out = xr.Dataset(data, coords=new_coords, attrs=dict(attrs or {}))
    for k, v in scalars.items():
        out[k] = xr.DataArray(v)
    return out


# ------------------------------------------------------------------ save / load
def _write_table(df: pd.DataFrame, tmp: Path, suffix: str, attrs: dict) -> None:
    if suffix == ".csv":
        df.to_csv(tmp, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps({"attrs": attrs}, default=str).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp)


def _jsonable_attrs(attrs: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def save_results(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    candidates: bool | None = None,
) -> Path:
    """Write results to ``path``; the format follows the suffix (.nc, .parquet, .csv).

    Parameters
    ----------
    ds : results of :func:`llmnas_transfer.sim.candidates`.
    path : output file; missing parent folders are created.
    candidates : table formats only: write the per-candidate long table to
        :func:`candidates_path`. ``None`` (default) writes it when ``ds`` holds
        per-candidate values; ``True`` requires them.

    Returns
    -------
    The path written.

    Example
    -------
    >>> import tempfile, pathlib
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
    ...              num_iterations=2, num_candidates=3, per_candidate=True)
    >>> out = save_results(r, pathlib.Path(tempfile.mkdtemp()) / "run.csv")
    >>> candidates_path(out).exists()
    True
    """
    if not isinstance(ds, xr.Dataset):
        raise UserInputError(f"save_results needs an xarray.Dataset, got {type(ds).__name__}")
    p = Path(path).expanduser()
    suffix = _suffix(p)
    p = check_writable(p)
    if suffix == ".nc":
        with atomic_paths([p]) as (tmp,):
            ds.to_netcdf(tmp, engine="h5netcdf")
        return p
    table = to_table(ds)
    cand = candidates_table(ds)
    if candidates is True and cand is None:
        raise UserInputError(
            "candidates=True but the results hold no per-candidate values; "
            "simulate with per_candidate=True"
        )
    write_cand = cand is not None and candidates is not False
    targets = [p] + ([candidates_path(p)] if write_cand else [])
    attrs = _jsonable_attrs(dict(ds.attrs))
    with atomic_paths(targets) as tmps:
        _write_table(table, tmps[0], suffix, attrs)
        if write_cand:
            _write_table(cand, tmps[1], suffix, attrs)
    return p


def _read_table(p: Path, suffix: str) -> tuple[pd.DataFrame, dict]:
    try:
        if suffix == ".csv":
            return pd.read_csv(p, keep_default_na=True), {}
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        meta = (table.schema.metadata or {}).get(_META_KEY)
        attrs = json.loads(meta.decode())["attrs"] if meta else {}
        return table.to_pandas(), attrs
    except FileNotFoundError:
        raise UserInputError(f"{p}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            ValueError) as exc:
        raise DataFormatError(f"{p}: row 1: cannot read as {suffix[1:]} ({exc})") from None


def load_results(path: str | os.PathLike, *, candidates: bool | None = None) -> xr.Dataset:
    """Read results written by :func:`save_results` back into an :class:`xarray.Dataset`.

    ``candidates=None`` reads the per-candidate table when it exists next to ``path``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
    ...              num_iterations=2, num_candidates=3)
    >>> out = save_results(r, pathlib.Path(tempfile.mkdtemp()) / "run.nc")
    >>> load_results(out)["validity_rate"].shape
    (1, 1, 2, 2)
    """
    p = Path(path).expanduser()
    suffix = _suffix(p)
    if not p.exists():
        raise UserInputError(f"{p}: file not found")
    if p.is_dir():
        raise UserInputError(f"{p}: is a folder, not a results file")
    if suffix == ".nc":
        try:
            return xr.load_dataset(p, engine="h5netcdf")
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{p}: row 1: cannot read as netCDF ({exc})") from None
    table, attrs = _read_table(p, suffix)
    cpath = candidates_path(p)
    cand = None
    if candidates is True and not cpath.exists():
        raise UserInputError(f"{cpath}: per-candidate table not found")
    if candidates is not False and cpath.exists():
        cand, _ = _read_table(cpath, suffix)
    return from_table(table, cand, attrs=attrs, where=str(p))


def writer_for(path: str | os.PathLike) -> Callable[[xr.Dataset], Path]:
    """A one-argument writer bound to ``path`` (validates the suffix and folder now).

    Example
    -------
    >>> import tempfile, pathlib
    >>> w = writer_for(pathlib.Path(tempfile.mkdtemp()) / "run.parquet")
    >>> callable(w)
    True
    """
    p = Path(path).expanduser()
    _suffix(p)
    check_writable(p)
    return lambda ds: save_results(ds, p)
