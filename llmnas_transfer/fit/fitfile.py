"""Fit files: write a fit as netCDF (atomically), read it back, and read what it records.

:func:`save_fit` writes a fit's ``DataTree`` through :mod:`llmnas_transfer.io.atomic`;
:func:`load_fit` reads it fully into memory and checks :data:`FIT_FORMAT`.
:func:`spec_of`, :func:`notices_of` and :func:`fit_info` read the model description,
the notices and the run's settings and timings (:class:`FitInfo`) from its attributes.

Example
-------
>>> import xarray as xr, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "fit.nc"
>>> dt = xr.DataTree(xr.Dataset({"a": ("x", [1.0])}))
>>> dt.attrs["format"] = FIT_FORMAT
>>> float(load_fit(save_fit(dt, p))["a"][0])
1.0
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.model import ModelSpec
from llmnas_transfer.io.atomic import atomic_write

FIT_FORMAT = "llmnas-transfer fit v1"


class FitInfo(NamedTuple):
    """What happened during a fit (method, settings, timings, SVI losses)."""

    method: str
    seconds_sampling: float
    seconds_total: float
    chains: int
    draws: int
    warmup: int
    chain_method: str
    losses: np.ndarray | None = None


def save_fit(dt: xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a fit as netCDF (h5netcdf), atomically: a temporary file, then a rename.

    Example
    -------
    >>> import xarray as xr, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "fit.nc"
    >>> _ = save_fit(xr.DataTree(xr.Dataset({"a": ("x", [1.0])})), p)
    >>> float(load_fit(p, check=False)["a"][0])
    1.0
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserInputError(f"{path}: is a directory; give a file name such as fit.nc")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UserInputError(f"{path}: the folder {parent} does not exist")
    encoding = {}
    for node in dt.subtree:
        enc = {}
        for name, var in node.dataset.data_vars.items():
            if var.dtype.kind in "fiu" and var.size > 1000:
                enc[name] = {"zlib": True, "complevel": 4}
        if enc:
            encoding[node.path] = enc
    atomic_write(path, lambda tmp: dt.to_netcdf(tmp, engine="h5netcdf",
                                                encoding=encoding or None))
    return path


def load_fit(path: str | os.PathLike, *, check: bool = True) -> xr.DataTree:
    """Read a fit written by :func:`save_fit` (fully into memory).

    Example
    -------
    >>> load_fit("no-such-file.nc")
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: no-such-file.nc: file not found
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory, not a fit file")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            dt = dt.load()
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable netCDF fit file ({exc})") from None
    if check and dt.attrs.get("format") != FIT_FORMAT:
        raise UserInputError(
            f"{path}: not a fit written by 'llmnas-transfer fit' (format attribute missing)"
        )
    return dt


def spec_of(dt: xr.DataTree) -> ModelSpec:
    """The :class:`~llmnas_transfer.fit.model.ModelSpec` stored in a fit.

    Example
    -------
    >>> spec_of(xr.DataTree())
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: the fit file lacks a valid model description ('spec')
    """
    try:
        return ModelSpec.from_attrs(json.loads(dt.attrs["spec"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UserInputError(f"the fit file lacks a valid model description ({exc})") from None


def notices_of(dt: xr.DataTree) -> list[str]:
    """Notices recorded when the fit was made.

    Example
    -------
    >>> dt = xr.DataTree()
    >>> dt.attrs["notices"] = '["task \\'x\\' is new"]'
    >>> notices_of(dt)
    ["task 'x' is new"]
    """
    try:
        return list(json.loads(dt.attrs.get("notices", "[]")))
    except ValueError:
        return []


def fit_info(dt: xr.DataTree) -> FitInfo:
    """The method, settings and timings of a fit (and SVI's losses), from the fit itself.

    Example
    -------
    >>> dt = xr.DataTree()
    >>> dt.attrs.update({"inference": "nuts", "seconds_sampling": 1.5, "seconds_total": 2.0,
    ...                  "chains": 2, "draws": 100, "warmup": 100,
    ...                  "chain_method": "parallel"})
    >>> fit_info(dt).chain_method, fit_info(dt).losses is None
    ('parallel', True)
    """
    a = dt.attrs
    try:
        losses = (np.asarray(dt["optimization"].dataset["loss"].values)
                  if "optimization" in dt.children else None)
        return FitInfo(str(a["inference"]), float(a["seconds_sampling"]),
                       float(a["seconds_total"]), int(a["chains"]), int(a["draws"]),
                       int(a["warmup"]), str(a["chain_method"]), losses)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserInputError(f"the fit file lacks its run settings ({exc})") from None


__all__ = ["FIT_FORMAT", "FitInfo", "fit_info", "load_fit", "notices_of", "save_fit",
           "spec_of"]
