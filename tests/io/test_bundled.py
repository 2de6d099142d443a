"""Bundled real data: LEMUR loaders and published anchors (offline)."""

from __future__ import annotations

import gzip
import socket

import numpy as np
import pandas as pd
import pytest

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.io import bundled as datasets
from llmnas_transfer.io.bundled import load_lemur, published_anchors, published_value

ARCH_COLUMNS = ["task", "dataset", "metric", "nn", "family", "source", "n_trials_e1", "e1_max",
                "e1_mean", "e1_median", "e1_min", "e1_std", "max_epoch_recorded",
                "best_any_epoch"]
TRIAL_COLUMNS = ["task", "dataset", "metric", "nn", "family", "source", "epoch", "trial",
                 "value", "batch", "lr", "momentum", "dropout", "duration_s", "transform", "uid"]


def test_architecture_table_columns_dtypes_counts():
    df = load_lemur("architecture")
    assert len(df) == 7415
    assert list(df.columns) == ARCH_COLUMNS
    for c in datasets.NAME_COLUMNS:
        assert isinstance(df[c].dtype, pd.CategoricalDtype), c
    assert df["n_trials_e1"].dtype == np.int64
    assert df["e1_mean"].dtype == np.float64
    assert df["e1_mean"].between(0, 1).all()
    assert not df.duplicated(["task", "dataset", "metric", "nn"]).any()
    assert set(df["source"].cat.categories) == {
        "llm", "human", "human_variant", "algorithmic_ga", "algorithmic_ast", "rag_extracted"}


def test_trial_table_columns_dtypes_counts():
    df = load_lemur("trial")
    assert len(df) == 38696
    assert list(df.columns) == TRIAL_COLUMNS
    assert df["value"].dtype == np.float64 and df["batch"].dtype == np.int64
    assert isinstance(df["transform"].dtype, pd.CategoricalDtype)
    assert (df["epoch"] == 1).all()
    # missing hyperparameters stay NaN, nothing else is missing
    assert df["dropout"].isna().any()
    assert not df[["value", "lr", "batch"]].isna().any().any()


def test_trial_and_architecture_tables_agree():
    a = load_lemur("architecture")
    t = load_lemur("trial")
    g = t.groupby(["task", "dataset", "metric", "nn"], observed=True)["value"].agg(
        ["size", "mean"])
    m = a.set_index(["task", "dataset", "metric", "nn"]).join(g)
    assert (m["size"] == m["n_trials_e1"]).all()
    assert np.abs(m["mean"] - m["e1_mean"]).max() < 1e-5  # e1_mean is stored to 6 digits


@pytest.mark.parametrize("kw, n", [
    ({"dataset": "cifar-10", "source": "llm"}, 58),
    ({"dataset": ["cifar-10", "svhn"], "source": "llm"}, 115),
    ({"dataset": "cifar-10,svhn", "source": "llm"}, 115),
    ({"task": "obj-detection"}, 4),
])
def test_filters(kw, n):
    df = load_lemur(**kw)
    assert len(df) == n
    # unused categories are dropped so that groupby/plots see only what is there
    if "dataset" in kw:
        assert len(df["dataset"].cat.categories) == len(datasets._as_list(kw["dataset"], "d"))


def test_returned_frames_are_copies():
    df = load_lemur(dataset="svhn")
    df["e1_mean"] = 0.0
    assert load_lemur(dataset="svhn")["e1_mean"].max() > 0


def test_unknown_level_lists_valid_values():
    with pytest.raises(UserInputError, match="architecture, trial"):
        load_lemur("arch")


def test_unknown_filter_value_lists_valid_values():
    with pytest.raises(UserInputError, match=r"unknown dataset 'imagenet'.*cifar-10.*svhn"):
        load_lemur(dataset="imagenet")
    with pytest.raises(UserInputError, match="valid values: .*algorithmic_ga"):
        load_lemur(source="gpt")


def test_filter_matching_nothing_lists_combinations():
    with pytest.raises(UserInputError, match="obj-detection/coco/human"):
        load_lemur(task="obj-detection", source="llm")
    with pytest.raises(UserInputError, match="img-classification/svhn/llm"):
        load_lemur(dataset="svhn", source="algorithmic_ast")


def test_loading_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    datasets._bundled.cache_clear()
    datasets._anchors.cache_clear()
    assert len(load_lemur("trial")) == 38696
    assert len(load_lemur()) == 7415
    assert len(published_anchors()) > 0


def _write_arch(path, df):
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, index=False)


def test_bad_file_names_file_row_and_column(tmp_path):
    df = load_lemur(dataset="svhn", source="llm").astype({"e1_mean": object})
    df.loc[2, "e1_mean"] = "n/a"
    p = tmp_path / "bad.csv.gz"
    _write_arch(p, df)
    with pytest.raises(DataFormatError, match=r"bad\.csv\.gz: row 4, column e1_mean"):
        load_lemur(path=p)


def test_bad_file_missing_column(tmp_path):
    p = tmp_path / "short.csv.gz"
    _write_arch(p, load_lemur(dataset="svhn").drop(columns=["e1_max"]))
    with pytest.raises(DataFormatError, match="missing column.*e1_max"):
        load_lemur(path=p)
    with pytest.raises(DataFormatError, match="not found"):
        load_lemur(path=tmp_path / "nope.csv")


def test_good_external_file_round_trips(tmp_path):
    src = load_lemur(dataset="svhn")
    p = tmp_path / "svhn.csv.gz"
    _write_arch(p, src)
    back = load_lemur(path=p)
    pd.testing.assert_frame_equal(back, src, check_categorical=False)


def test_published_anchors():
    a = published_anchors()
    assert list(a.columns) == [*datasets.ANCHOR_COLUMNS, "value_numeric"]
    k = a[a["study"].str.contains("Khalid")].set_index("quantity")
    assert k.loc["valid_rate_peak", "value"] == "74.5"  # kept as published
    assert k.loc["valid_rate_peak", "value_numeric"] == 74.5
    multi = a[a["value"] == "85.5 / 85.2 / 80.6"]
    assert len(multi) == 1 and np.isnan(multi["value_numeric"].iloc[0])
    assert published_value("frac_acc_gt_40_last") == 96.81
    assert published_value("n_sft_cycles") == 22


def test_published_anchor_errors():
    with pytest.raises(UserInputError, match="valid values: .*valid_rate_peak"):
        published_value("validity")
    with pytest.raises(UserInputError, match="studies: .*Khalid"):
        published_anchors("nobody")
    with pytest.raises(UserInputError, match="not a plain number"):
        published_value("acc_epoch1_start_to_best", study="Gu et al")


def test_parse_number():
    assert datasets.parse_number(" 1e3 ") == 1000.0
    for s in ("28.2 -> 69.2", ">5000", "73 (of 1289 targets)", ""):
        assert np.isnan(datasets.parse_number(s))


def test_lemur_map_names_bundled_datasets():
    have = set(datasets.lemur_valid_values("dataset"))
    assert set(datasets.LEMUR_MAP.values()) <= have
    assert datasets.LEMUR_MAP["imagenet"] == "imagenette"


def test_lemur_accuracy_priors_round_trip_and_errors(tmp_path):
    shipped = datasets.load_lemur_accuracy_priors()
    assert set(shipped["datasets"]) == set(datasets.LEMUR_MAP)
    assert datasets.priors_path().name == datasets.PRIORS_FILE
    p = {"datasets": {"cifar-10": {"logit_level_mean": -0.87}}, "provenance": {}}
    path = datasets.save_lemur_accuracy_priors(p, tmp_path / "new" / "p.json")
    assert datasets.load_lemur_accuracy_priors(path) == p
    assert not [f for f in path.parent.iterdir() if f.name.endswith(".tmp")]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserInputError, match="bad.json: line 1"):
        datasets.load_lemur_accuracy_priors(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(UserInputError, match="not a LEMUR priors file"):
        datasets.load_lemur_accuracy_priors(tmp_path / "list.json")
    with pytest.raises(UserInputError, match="not found"):
        datasets.load_lemur_accuracy_priors(tmp_path / "missing.json")
