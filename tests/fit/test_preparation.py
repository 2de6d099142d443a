"""Names a fit uses are checked before any work (:func:`check_levels`): misspelled
datasets in the data, unknown references, extra names and incomplete attributes."""

from __future__ import annotations

import pandas as pd
import pytest

from llmnas_transfer.errors import DataFormatError, UserInputError
from llmnas_transfer.fit.preparation import check_levels, prepare
from llmnas_transfer.io.runs import runs_from_frame
from llmnas_transfer.validate import did_you_mean

AUDIO = {"modality": "audio", "resolution": 64, "num_classes": 50}


def _runs(*datasets):
    return runs_from_frame(pd.DataFrame({
        "dataset": list(datasets), "task": "classification", "trial": 1, "iteration": 1,
        "n_generated": 10, "n_valid": 4}))


def test_did_you_mean():
    assert did_you_mean("cifar10", ["cifar-10", "svhn"]) == "; did you mean 'cifar-10'?"
    assert did_you_mean("esc-50", ["cifar-10", "svhn"]) == ""


def test_known_names_pass():
    runs = _runs("cifar-10", "svhn")
    assert check_levels(runs) == ("cifar-10", "classification")
    assert check_levels(runs, reference="imagenet:detection", datasets=["stl-10"],
                        tasks=["generation"]) == ("imagenet", "detection")
    assert check_levels(_runs("cifar-10", "esc-50"), dataset_attrs={"ESC-50": AUDIO},
                        reference="esc-50:classification") == ("esc-50", "classification")


def test_misspelled_dataset_in_the_data_names_row_and_suggestion():
    with pytest.raises(DataFormatError, match=r"<frame>: row 2, column dataset: unknown "
                       r"dataset 'cifar10'; did you mean 'cifar-10'\?"):
        check_levels(_runs("svhn", "cifar10"))


def test_new_dataset_needs_attributes():
    with pytest.raises(DataFormatError, match="row 2, column dataset: dataset 'esc-50' is "
                       "not in the registry; give its attributes"):
        check_levels(_runs("cifar-10", "esc-50"))
    with pytest.raises(UserInputError, match="lacks the attribute"):
        check_levels(_runs("esc-50"), dataset_attrs={"esc-50": {"modality": "audio"}})
    with pytest.raises(UserInputError, match="modality"):
        check_levels(_runs("esc-50"), dataset_attrs={"esc-50": {**AUDIO, "modality": "x"}})
    p = prepare(_runs("esc-50"), dataset_attrs={"esc-50": AUDIO})
    assert p.spec.datasets == ("cifar-10", "esc-50")
    assert any("'esc-50'" in n and "(given)" in n for n in p.notices)


@pytest.mark.parametrize("kw, match", [
    (dict(reference="cifar10:classification"), "reference dataset 'cifar10'.*'cifar-10'"),
    (dict(reference="cifar-10:clasification"), "reference task.*'classification'"),
    (dict(reference="esc-50:classification"), "reference dataset 'esc-50'.*known: "),
    (dict(datasets=["cifar100"]), "extra dataset 'cifar100'.*'cifar-100'"),
    (dict(datasets=["esc-50"]), "extra dataset 'esc-50'.*give its attributes"),
    (dict(tasks=["detecton"]), "extra task 'detecton'.*'detection'"),
    (dict(tasks=["captioning"]), "extra task 'captioning'.*known: "),
])
def test_unknown_names_are_errors(kw, match):
    with pytest.raises(UserInputError, match=match):
        check_levels(_runs("cifar-10"), **kw)
    with pytest.raises(UserInputError, match=match):
        prepare(_runs("cifar-10"), **kw)
