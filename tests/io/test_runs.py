"""Observed-runs loading and validation: both forms, three file types, every error."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.fit.model import accuracy_stats
from llmnas_transfer.io.runs import (
    CELL_COLUMNS,
    parse_dataset_attrs,
    read_levels,
    read_runs,
    runs_from_frame,
    runs_from_simulation,
    simulation_to_frame,
    write_runs,
)

CAND = (
    "dataset,task,trial,iteration,valid,first_epoch_accuracy\n"
    "cifar-10,classification,1,1,1,0.30\n"
    "cifar-10,classification,1,1,0,\n"
    "cifar-10,classification,1,2,true,0.35\n"
    "svhn,classification,a,1,FALSE,\n"
)
COUNTS = (
    "dataset,task,trial,iteration,n_generated,n_valid,accuracy_mean,accuracy_sd\n"
    "cifar-10,classification,1,1,20,9,0.30,0.05\n"
    "cifar-10,classification,1,2,20,12,0.32,\n"
    "audioset,classification,1,1,20,0,,\n"
)
ERR = re.compile(r"^\S.*: row \d+(, column [a-z_]+)?: .+$")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _fails(path_or_df, *parts):
    with pytest.raises(DataFormatError) as exc:
        if isinstance(path_or_df, pd.DataFrame):
            runs_from_frame(path_or_df)
        else:
            read_runs(path_or_df)
    msg = str(exc.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, msg
    return msg


# ----------------------------------------------------------------------------- happy paths
def test_candidate_csv(tmp_path):
    r = read_runs(_write(tmp_path, "r.csv", CAND))
    assert r.form == "candidates" and r.num_records == 4
    assert list(r.cells.columns) == list(CELL_COLUMNS)
    c = r.cells.set_index(["dataset", "trial", "iteration"])
    assert c.loc[("cifar-10", "1", 1), "n_generated"] == 2
    assert c.loc[("cifar-10", "1", 1), "n_valid"] == 1
    assert c.loc[("svhn", "a", 1), "n_valid"] == 0
    assert r.has_accuracy and not r.has_novelty
    # the logit statistics equal model.accuracy_stats on the same values
    n, sz, szz, lj = accuracy_stats(np.asarray([0.30]))
    row = c.loc[("cifar-10", "1", 1)]
    np.testing.assert_allclose([row.acc_k, row.acc_sum, row.acc_sumsq, row.acc_const],
                               [float(n), float(sz), float(szz), float(lj)], rtol=1e-5)
    assert "4 records" in r.report() and "2 settings" in r.report()


def test_formats_agree(tmp_path):
    df = pd.read_csv(_write(tmp_path, "r.csv", CAND), dtype={"trial": str})
    a = read_runs(tmp_path / "r.csv").cells
    for name in ("r.parquet", "r.jsonl"):
        write_runs(df, tmp_path / name)
        b = read_runs(tmp_path / name).cells
        pd.testing.assert_frame_equal(a, b)
    (tmp_path / "r.csv.gz").write_bytes(gzip.compress(CAND.encode()))
    pd.testing.assert_frame_equal(a, read_runs(tmp_path / "r.csv.gz").cells)


def test_write_runs_is_atomic_and_compresses_gz(tmp_path):
    df = pd.read_csv(_write(tmp_path, "r.csv", CAND), dtype={"trial": str})
    a = read_runs(tmp_path / "r.csv").cells
    for name in ("w.csv.gz", "w.jsonl.gz"):
        write_runs(df, tmp_path / name)
        gzip.decompress((tmp_path / name).read_bytes())  # really gzip, not plain text
        pd.testing.assert_frame_equal(a, read_runs(tmp_path / name).cells)
    # two writers never share a temporary name, and none is left behind
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserInputError, match="cannot write"):
        write_runs(df, tmp_path / "missing-folder" / "w.csv")


def test_counts_csv(tmp_path):
    r = read_runs(_write(tmp_path, "c.csv", COUNTS))
    assert r.form == "counts" and r.has_accuracy
    c = r.cells
    full, mean_only, none = c.iloc[0], c.iloc[1], c.iloc[2]
    assert full.acc_k == 9 and full.acc_n == 9  # mean and sd: 9 Normal terms
    assert mean_only.acc_k == 1 and mean_only.acc_n == 12  # mean only: one term
    assert none.acc_k == 0
    z = np.log(0.3 / 0.7)
    assert full.acc_sum == pytest.approx(9 * z)
    sd_z = 0.05 / (0.3 * 0.7)
    assert full.acc_sumsq == pytest.approx(8 * sd_z**2 + 9 * z**2)


def test_blank_lines_and_extra_columns_are_noted(tmp_path):
    text = CAND.replace("\n", "\n\n", 1) + "\n"
    text = text.replace("first_epoch_accuracy", "first_epoch_accuracy")
    r = read_runs(_write(tmp_path, "r.csv", text))
    assert r.num_records == 4
    assert any("blank" in n for n in r.notices)
    df = pd.read_csv(tmp_path / "r.csv").assign(prompt="p", llm=["a", "b", "a", "a"])
    r = runs_from_frame(df)
    assert any("not used: prompt" in n for n in r.notices)
    assert any("2 LLMs" in n for n in r.notices)


def test_invalid_rows_with_accuracy_are_noted_not_used():
    df = pd.DataFrame({"dataset": "x", "task": "y", "trial": 1, "iteration": [1, 1],
                       "valid": [1, 0], "first_epoch_accuracy": [0.3, 0.9]})
    r = runs_from_frame(df)
    assert r.cells["acc_k"].item() == 1
    assert any("invalid candidates carry" in n for n in r.notices)


def test_holes_are_noted():
    df = pd.DataFrame({"dataset": "x", "task": "y", "trial": 1, "iteration": [1, 3],
                       "n_generated": 5, "n_valid": 1})
    assert any("skip iterations" in n for n in runs_from_frame(df).notices)


def test_simulation_paths_agree():
    from llmnas_transfer import simulate

    ds = simulate(3, datasets="cifar-10,svhn", tasks="classification", num_trials=3,
                  num_iterations=2, num_candidates=5, per_candidate=True, bins=0)
    direct = runs_from_simulation(ds, novelty=False).cells
    via = runs_from_frame(simulation_to_frame(ds)).cells
    key = ["dataset", "task", "trial", "iteration"]
    a = direct.sort_values(key).reset_index(drop=True)
    b = via.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-5)
    assert int(a["n_valid"].sum()) == int(ds["n_valid"].sum())


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("edit, parts", [
    (lambda t: t.replace(",valid,", ",ok,"), ["row 1", "column valid", "missing column"]),
    (lambda t: t.replace("trial,", "run,"), ["row 1", "column trial", "missing column"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,1,maybe,0.30"), ["row 2", "column valid",
                                                             "not boolean"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,1,1,1.30"), ["row 2", "first_epoch_accuracy",
                                                         "above 1"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,1,1,"), ["row 2", "first_epoch_accuracy",
                                                     "missing value"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,1,1,abc"), ["row 2", "first_epoch_accuracy",
                                                        "not a number"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,0,1,0.30"), ["row 2", "column iteration",
                                                         "below 1"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,1.5,1,0.30"), ["row 2", "column iteration",
                                                           "not an integer"]),
    (lambda t: t.replace(",1,1,1,0.30", ",1,,1,0.30"), ["row 2", "column iteration",
                                                        "missing value"]),
    (lambda t: t.replace("svhn,", ",", 1), ["row 5", "column dataset", "missing value"]),
    (lambda t: t.replace("svhn,classification,a,1,FALSE,", "svhn,classification,a,1"),
     ["row 5", "column valid", "missing value"]),
    (lambda t: t.replace("svhn,classification,a,1,FALSE,", "svhn,classification,a,1,0,,7"),
     ["row 5", "expected 6 fields, found 7"]),
])
def test_candidate_errors(tmp_path, edit, parts):
    msg = _fails(_write(tmp_path, "r.csv", edit(CAND)), "r.csv", *parts)
    assert ERR.match(msg), msg


@pytest.mark.parametrize("edit, parts", [
    (lambda t: t.replace("20,9,", "20,21,"), ["row 2", "column n_valid", "more than n_generated"]),
    (lambda t: t.replace("20,9,", "-20,9,"), ["row 2", "column n_generated", "negative count"]),
    (lambda t: t.replace("20,9,", "20,-1,"), ["row 2", "column n_valid", "negative count"]),
    (lambda t: t.replace("20,9,", "0,0,"), ["row 2", "n_generated", "at least 1"]),
    (lambda t: t.replace("0.30,0.05", "1.30,0.05"), ["row 2", "accuracy_mean", "above 1"]),
    (lambda t: t.replace("20,0,,", "20,0,0.3,"), ["row 4", "accuracy_mean", "n_valid = 0"]),
    (lambda t: t.replace("0.30,0.05", ",0.05"), ["row 2", "accuracy_sd", "without"]),
    (lambda t: t.replace("audioset,classification,1,1", "cifar-10,classification,1,1"),
     ["row 4", "second row", "first in row 2"]),
])
def test_count_errors(tmp_path, edit, parts):
    _fails(_write(tmp_path, "c.csv", edit(COUNTS)), "c.csv", *parts)


def test_duplicate_candidate_id():
    df = pd.DataFrame({"dataset": "x", "task": "y", "trial": 1, "iteration": 1,
                       "valid": [1, 0, 1], "candidate_id": ["a", "b", "a"]})
    _fails(df, "row 3, column candidate_id", "duplicate id 'a'", "first seen in row 1")


def test_file_level_errors(tmp_path):
    _fails(tmp_path / "nope.csv", "file not found")
    _fails(_write(tmp_path, "e.csv", ""), "the file is empty")
    _fails(_write(tmp_path, "h.csv", "dataset,task,trial,iteration,valid\n"), "no records")
    (tmp_path / "bad.csv").write_bytes(b"dataset,task,trial,iteration,valid\nx,y,1,1,\xff\n")
    _fails(tmp_path / "bad.csv", "row 2", "UTF-8")
    _fails(_write(tmp_path, "r.txt", CAND), "unknown file type")
    _fails(_write(tmp_path, "r.parquet", CAND), "not a readable Parquet")
    _fails(_write(tmp_path, "r.jsonl", '{"dataset": "x"}\n[1, 2]\n'), "row 2", "JSON object")
    _fails(_write(tmp_path, "s.jsonl", '{"dataset": "x"}\n{oops\n'), "row 2", "not valid JSON")
    _fails(_write(tmp_path, "d.csv", "dataset,task,trial,iteration,valid,valid\n"
                  "x,y,1,1,1,1\n"), "row 1", "appears twice")
    _fails(_write(tmp_path, "b.csv", "dataset,task,trial,iteration,valid,n_valid\n"
                  "x,y,1,1,1,1\n"), "one form per file")
    (tmp_path / "dir.csv").mkdir()
    _fails(tmp_path / "dir.csv", "directory")


def test_jsonl_types(tmp_path):
    rows = [{"dataset": "x", "task": "y", "trial": 1, "iteration": 1, "valid": True},
            {"dataset": "x", "task": "y", "trial": 1, "iteration": True, "valid": False}]
    p = _write(tmp_path, "r.jsonl", "\n".join(json.dumps(r) for r in rows))
    _fails(p, "row 2, column iteration", "boolean")
    rows[1] = {"dataset": "x", "task": "y", "trial": [1], "iteration": 1, "valid": False}
    p = _write(tmp_path, "r.jsonl", "\n".join(json.dumps(r) for r in rows))
    _fails(p, "row 2, column trial", "wrong type")


def test_levels_and_attrs(tmp_path):
    assert parse_dataset_attrs("foo:modality=text,num_classes=3") == {
        "foo": {"modality": "text", "num_classes": "3"}}
    for bad in ("foo", "foo:colour=red", ":modality=text"):
        with pytest.raises(UserInputError):
            parse_dataset_attrs(bad)
    p = _write(tmp_path, "l.csv", "name,modality,resolution\nfoo,audio,64\n")
    assert read_levels(p) == {"foo": {"modality": "audio", "resolution": 64}}
    with pytest.raises(DataFormatError, match="row 1, column colour: unknown column"):
        read_levels(_write(tmp_path, "m.csv", "name,modality,colour\nfoo,audio,red\n"))
    with pytest.raises(DataFormatError, match="row 3, column name: 'foo' appears twice"):
        read_levels(_write(tmp_path, "n.csv", "name,modality\nfoo,audio\nfoo,text\n"))


# ----------------------------------------------------------------------------- fuzzing
_CELL = st.one_of(
    st.sampled_from(["", "1", "0", "true", "x", "-3", "2.5", "1e9", "nan", "0.4", "ü", '"',
                     "cifar-10", "classification", ",", "inf"]),
    st.text(max_size=6),
)


@st.composite
def _mutated_csv(draw):
    lines = [ln.split(",") for ln in CAND.strip().split("\n")]
    n = draw(st.integers(1, 4))
    for _ in range(n):
        kind = draw(st.sampled_from(["cell", "drop_col", "drop_row", "dup_row", "add_col",
                                     "truncate"]))
        if kind == "cell":
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines[i]) - 1)) if lines[i] else 0
            if lines[i]:
                lines[i][j] = draw(_CELL)
        elif kind == "drop_col" and len(lines[0]) > 1:
            j = draw(st.integers(0, len(lines[0]) - 1))
            lines = [r[:j] + r[j + 1:] for r in lines]
        elif kind == "drop_row" and len(lines) > 1:
            del lines[draw(st.integers(1, len(lines) - 1))]
        elif kind == "dup_row" and len(lines) > 1:
            lines.append(list(lines[draw(st.integers(1, len(lines) - 1))]))
        elif kind == "add_col":
            lines = [r + [draw(_CELL)] for r in lines]
        elif kind == "truncate":
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(",".join(r) for r in lines) + "\n"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutated_csv())
def test_fuzz_csv_clear_error_or_full_accounting(tmp_path, text):
    p = tmp_path / "fuzz.csv"
    p.write_text(text)
    try:
        r = read_runs(p)
    except UserInputError as exc:  # DataFormatError is a UserInputError
        msg = str(exc)
        assert msg.startswith(str(p)) and "\n" not in msg
        return
    # accepted: every record read is in the cells (blank lines are noted), nothing dropped
    if r.form == "candidates":
        assert int(r.cells["n_generated"].sum()) == r.num_records
    else:
        assert len(r.cells) == r.num_records
    lines = [ln for ln in text.split("\n")[1:] if ln.strip(" ,")]
    if '"' not in text:  # no quoted fields: one record per non-blank line
        assert r.num_records == len(lines)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_fuzz_bytes_never_crash(tmp_path, data, suffix):
    p = tmp_path / ("blob" + suffix)
    p.write_bytes(data)
    try:
        read_runs(p)
    except UserInputError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({
    "dataset": st.one_of(st.sampled_from(["cifar-10", "svhn"]), st.integers(), st.none()),
    "task": st.sampled_from(["classification", "detection"]),
    "trial": st.one_of(st.integers(0, 3), st.text(max_size=3), st.floats()),
    "iteration": st.one_of(st.integers(-1, 4), st.floats(), st.booleans(), st.text(max_size=2)),
    "n_generated": st.one_of(st.integers(-2, 30), st.floats(allow_nan=True)),
    "n_valid": st.one_of(st.integers(-2, 30), st.none()),
    "accuracy_mean": st.one_of(st.floats(-1, 2), st.none()),
}), min_size=1, max_size=6))
def test_fuzz_counts_frames(rows):
    df = pd.DataFrame(rows)
    try:
        r = runs_from_frame(df)
    except UserInputError as exc:
        assert str(exc).startswith("<frame>: ") and "\n" not in str(exc)
        return
    assert r.num_records == len(df)
    assert len(r.cells) == len(df)  # one cell per counts row: nothing dropped
    assert (r.cells["n_valid"] <= r.cells["n_generated"]).all()


def test_dataset_rows_point_at_the_file(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("dataset,task,trial,iteration,valid\n"
                 "cifar-10,classification,1,1,1\n\n"
                 "svhn,classification,1,1,0\n"
                 "cifar-10,classification,1,2,1\n")
    assert dict(read_runs(p).dataset_rows) == {"cifar-10": 2, "svhn": 4}
