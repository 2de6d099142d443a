"""Saving and loading results: round trips, tidy layout, atomic writes, bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from llmnas_transfer import simulate
from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.io import results as rio

GRID = dict(datasets="svhn,cifar-10,audioset", tasks="generation,classification",
            num_trials=3, num_iterations=2, num_candidates=4, bins=5)


@pytest.fixture(scope="module")
def results():
    return simulate(7, per_candidate=True, **GRID)


@pytest.fixture(scope="module")
def summary_only():
    return simulate(7, **GRID)


@pytest.mark.parametrize("suffix", [".nc", ".parquet", ".csv"])
def test_round_trip_keeps_values_dtypes_and_order(results, tmp_path, suffix):
    path = rio.save_results(results, tmp_path / f"run{suffix}")
    back = rio.load_results(path)
    xr.testing.assert_equal(results.drop_attrs(), back.drop_attrs())
    for name, var in results.data_vars.items():
        assert back[name].dtype == var.dtype, name
    # the grid's order is kept, not sorted
    assert [str(d) for d in back["dataset"].values] == ["svhn", "cifar-10", "audioset"]
    assert [str(t) for t in back["task"].values] == ["generation", "classification"]
    if suffix != ".csv":
        assert back.attrs["seed"] == results.attrs["seed"]
        assert int(back.attrs["num_candidates"]) == 4


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_table_layout_is_tidy(results, tmp_path, suffix):
    path = rio.save_results(results, tmp_path / f"run{suffix}")
    table = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    n_rows = 3 * 2 * 3 * 2
    assert len(table) == n_rows
    assert list(table.columns[:4]) == ["dataset", "task", "trial", "iteration"]
    for col in ("n_valid", "validity_rate", "accuracy_mean", "novelty_mean", "state", "p_valid",
                "n_generated", "accuracy_hist_00", "accuracy_hist_04", "novelty_hist_04"):
        assert col in table.columns
    assert not table.duplicated(["dataset", "task", "trial", "iteration"]).any()
    row = table[(table["dataset"] == "audioset") & (table["task"] == "classification")
                & (table["trial"] == 2) & (table["iteration"] == 1)]
    want = results.sel(dataset="audioset", task="classification", trial=2, iteration=1)
    assert int(row["n_valid"].item()) == int(want["n_valid"])
    hist = row[[f"accuracy_hist_{i:02d}" for i in range(5)]].to_numpy().ravel()
    np.testing.assert_array_equal(hist, want["accuracy_hist"].values)
    cand_path = rio.candidates_path(path)
    cands = pd.read_parquet(cand_path) if suffix == ".parquet" else pd.read_csv(cand_path)
    assert len(cands) == n_rows * 4
    assert list(cands.columns) == ["dataset", "task", "trial", "iteration", "candidate",
                                   "valid", "accuracy", "novelty"]
    # invalid candidates carry no accuracy
    assert cands.loc[~cands["valid"].astype(bool), "accuracy"].isna().all()


def test_candidates_file_only_when_present_or_asked(results, summary_only, tmp_path):
    rio.save_results(summary_only, tmp_path / "a.csv")
    assert not rio.candidates_path(tmp_path / "a.csv").exists()
    rio.save_results(results, tmp_path / "b.csv", candidates=False)
    assert not rio.candidates_path(tmp_path / "b.csv").exists()
    assert "accuracy" not in rio.load_results(tmp_path / "b.csv")
    with pytest.raises(UserInputError, match="per_candidate=True"):
        rio.save_results(summary_only, tmp_path / "c.csv", candidates=True)
    with pytest.raises(UserInputError, match="not found"):
        rio.load_results(tmp_path / "a.csv", candidates=True)


def test_same_results_same_bytes(results, tmp_path):
    a = rio.save_results(results, tmp_path / "a.csv")
    b = rio.save_results(results, tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("name", ["run.txt", "run", "run.json"])
def test_unknown_suffix_is_a_user_error(results, tmp_path, name):
    with pytest.raises(UserInputError, match="unknown results format"):
        rio.save_results(results, tmp_path / name)
    with pytest.raises(UserInputError, match="unknown results format"):
        rio.load_results(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_bad_destinations(results, tmp_path):
    (tmp_path / "folder.nc").mkdir()
    with pytest.raises(UserInputError, match="is a folder"):
        rio.save_results(results, tmp_path / "folder.nc")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        rio.save_results(results, tmp_path / "file" / "run.nc")
    with pytest.raises(UserInputError, match="xarray.Dataset"):
        rio.save_results({"a": 1}, tmp_path / "run.nc")


def test_missing_parent_folders_are_created(results, tmp_path):
    p = rio.save_results(results, tmp_path / "a" / "b" / "run.parquet")
    assert p.is_file()


@pytest.mark.parametrize("suffix", [".nc", ".parquet", ".csv"])
def test_failed_write_leaves_nothing_and_keeps_old_file(results, tmp_path, monkeypatch, suffix):
    target = tmp_path / f"run{suffix}"
    target.write_bytes(b"old contents")

    def boom(*args, **kwargs):
        path = args[1] if len(args) > 1 else args[0]
        if not isinstance(path, (str, bytes)) and hasattr(path, "write_bytes"):
            path.write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    if suffix == ".nc":
        monkeypatch.setattr(xr.Dataset, "to_netcdf", lambda self, p, **k: boom(self, p))
    else:
        monkeypatch.setattr(rio, "_write_table", lambda df, tmp, *a: boom(df, tmp))
    with pytest.raises(RuntimeError, match="disk on fire"):
        rio.save_results(results, target)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_load_errors_name_file_row_and_column(summary_only, tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        rio.load_results(tmp_path / "missing.csv")
    table = rio.to_table(summary_only)

    bad = table.drop(columns=["trial"])
    bad.to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(DataFormatError, match=r"nocol\.csv: row 1: missing column\(s\) trial"):
        rio.load_results(tmp_path / "nocol.csv")

    dup = pd.concat([table, table.iloc[[3]]], ignore_index=True)
    dup.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataFormatError, match=r"dup\.csv: row \d+: columns dataset, task"):
        rio.load_results(tmp_path / "dup.csv")

    gap = table.drop(index=[5])
    gap.to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(DataFormatError, match="incomplete grid"):
        rio.load_results(tmp_path / "gap.csv")

    frac = table.astype({"trial": object})
    frac.loc[4, "trial"] = "two"
    frac.to_csv(tmp_path / "frac.csv", index=False)
    with pytest.raises(DataFormatError, match=r"frac\.csv: row 6: column trial: 'two'"):
        rio.load_results(tmp_path / "frac.csv")

    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataFormatError, match=r"junk\.parquet: row 1: cannot read"):
        rio.load_results(tmp_path / "junk.parquet")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(DataFormatError, match=r"junk\.nc: row 1: cannot read"):
        rio.load_results(tmp_path / "junk.nc")


def test_from_table_inverts_to_table(summary_only):
    back = rio.from_table(rio.to_table(summary_only))
    xr.testing.assert_equal(summary_only.drop_attrs(), back)
    np.testing.assert_allclose(back["accuracy_bin"].values, summary_only["accuracy_bin"].values)


def test_variables_without_a_table_place_are_refused(summary_only, tmp_path):
    odd = summary_only.assign(extra=(("dataset",), np.zeros(3)))
    with pytest.raises(UserInputError, match="save as .nc"):
        rio.save_results(odd, tmp_path / "odd.csv")
    rio.save_results(odd, tmp_path / "odd.nc")  # netCDF keeps anything
    assert "extra" in rio.load_results(tmp_path / "odd.nc")


def test_chance_is_one_value_per_setting_in_tables(summary_only):
    t = rio.to_table(summary_only)
    per_setting = t.groupby(["dataset", "task"], sort=False)["chance"].agg(["min", "max"])
    assert (per_setting["min"] == per_setting["max"]).all()
    assert per_setting.loc[("svhn", "classification"), "min"] == pytest.approx(0.1)
    assert per_setting.loc[("svhn", "generation"), "min"] == 0.0
    t.loc[0, "chance"] = 0.3
    with pytest.raises(DataFormatError, match="column chance: must be constant"):
        rio.from_table(t)
