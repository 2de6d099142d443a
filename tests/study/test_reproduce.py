"""The one-command study: files, table columns, targets bookkeeping, folder rules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmnas_transfer import load_defaults
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study import derive as calibrate
from llmnas_transfer.study import reproduce
from llmnas_transfer.summarize import figures as plotting

# one small protocol shape for the whole module (one compile)
SMALL = dict(num_trials=3, num_iterations=10, num_candidates=5)
CHECK = 300

REQUIRED = {
    "validity": ["dataset", "task", "iteration", "validity_mean", "validity_se", "n_trials",
                 "ci_low", "ci_high"],
    "accuracy": ["dataset", "task", "accuracy_mean", "accuracy_sd", "accuracy_q05",
                 "accuracy_q50", "accuracy_q95", "novelty_mean"],
    "gaps": ["dataset", "task", "validity_gap", "accuracy_gap", "combined_gap", "regime",
             "validity_component", "accuracy_component", "combined_gap_se"],
    "targets": ["target", "role", "paper_value", "paper_text", "low", "high", "tolerance",
                "simulated_value", "simulated_se", "met", "met_basis", "expected_value",
                "large_trial_value", "large_trial_se", "p_reproduce_15", "replicates_15",
                "heldout", "note"],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    return reproduce.run_study(0, out_dir=out, check_trials=CHECK, **SMALL)


def test_writes_every_file(study):
    out = study.out_dir
    want = {f"figures/{n}.{e}" for n in plotting.FIGURE_NAMES for e in ("png", "pdf")}
    want |= {f"tables/{n}.csv" for n in reproduce.TABLE_NAMES}
    want |= {"results.nc", "study.json", "tables/targets.md"}
    got = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert got == want
    assert {str(p.relative_to(out)) for p in study.files} == want
    for p in study.files:
        assert p.stat().st_size > 0
    # no staging folder left next to the output
    assert [p.name for p in out.parent.iterdir()] == ["run"]


@pytest.mark.parametrize("name", list(REQUIRED))
def test_tables_have_required_columns(study, name):
    df = pd.read_csv(study.out_dir / "tables" / f"{name}.csv")
    assert set(REQUIRED[name]) <= set(df.columns)
    assert df[REQUIRED[name][0]].notna().all()
    if name == "validity":
        assert len(df) == 32 * 10 and (df["n_trials"] == 3).all()
    if name in ("accuracy", "gaps"):
        assert len(df) == 32
    if name == "gaps":
        assert set(df["regime"]) <= {"easy", "moderate", "hard"}
        comp = df["validity_component"] + df["accuracy_component"]
        np.testing.assert_allclose(comp, df["combined_gap"], atol=1e-12)


def test_tables_match_the_metrics_of_the_saved_results(study):
    from llmnas_transfer.io.results import load_results
    from llmnas_transfer.summarize import tables as metrics

    r = load_results(study.out_dir / "results.nc")
    vt = pd.read_csv(study.out_dir / "tables" / "validity.csv")
    np.testing.assert_allclose(vt["validity_mean"], metrics.validity_table(r)["validity_mean"])
    gt = pd.read_csv(study.out_dir / "tables" / "gaps.csv")
    np.testing.assert_allclose(gt["combined_gap"], metrics.gaps_table(r)["combined_gap"])


def test_targets_three_values_and_met_basis(study):
    t = study.targets
    assert (t["met_basis"] == f"simulation, {CHECK} trials").all()
    assert (t["met"] == t["met_large_trial"]).all()
    exp = calibrate.expected_report(load_defaults(), num_iterations=10)
    np.testing.assert_allclose(t["expected_value"], exp["expected_value"])
    assert list(t["target"]) == list(exp["target"])
    assert (t["protocol_trials"] == 3).all() and (t["large_trials"] == CHECK).all()
    # the large-trial simulation agrees with the exact expectation within 6 SE
    eq = t[(t["large_trial_se"] > 0) & t["target"].str.startswith(("validity_", "task_",
                                                                   "regime_", "accuracy_in"))]
    assert len(eq) >= 20
    z = (eq["large_trial_value"] - eq["expected_value"]) / eq["large_trial_se"]
    assert np.all(np.abs(z) < 6), eq.assign(z=z)[["target", "large_trial_value",
                                                  "expected_value"]]
    # the protocol's own values carry a larger SE than the large-trial check
    both = t[(t["simulated_se"] > 0) & (t["large_trial_se"] > 0)]
    assert (both["simulated_se"] > both["large_trial_se"]).mean() > 0.9
    np.testing.assert_allclose(
        t["protocol_z"], (t["simulated_value"] - t["expected_value"]) / t["simulated_se"])


def test_targets_markdown_has_a_row_per_target(study):
    md = (study.out_dir / "tables" / "targets.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| ")]
    assert len(rows) == 1 + len(study.targets)
    # below the table: why each target with an explanation is not met
    unmet = study.targets[~study.targets["met"].astype(bool) & (study.targets["note"] != "")]
    assert [line for line in md if line.startswith("- `")] == [
        f"- `{r.target}`: {r.note}" for r in unmet.itertuples()]
    assert md[2].startswith("| validity_cifar-10 | 76.5 | ")
    assert any(line.startswith("| regime_cifar-100 | [10, 20] | ") for line in md)
    n_claims = int((study.targets["role"] == "claim").sum())
    assert sum("(claim, not fitted)" in line for line in md) == n_claims
    n_checks = int((study.targets["role"] == "check").sum())
    assert sum("(check, not counted)" in line for line in md) == n_checks
    assert "**only when targeted**" in "\n".join(md)


def test_targets_numeric_bounds_probability_and_heldout(study):
    t = pd.read_csv(study.out_dir / "tables" / "targets.csv")
    r = t.set_index("target")
    assert r.loc["regime_cifar-100", ["low", "high"]].tolist() == [0.1, 0.2]
    assert r.loc["validity_cifar-10", ["low", "high"]].tolist() == pytest.approx([0.75, 0.78])
    assert r.loc["heatmap_lowest", "low"] == -np.inf
    # P(a 15-trial study meets it): from CHECK // 15 replicate studies
    assert (t["replicates_15"] == CHECK // 15).all()
    assert t["p_reproduce_15"].between(0, 1).all()
    # the held-out verdicts come from the shipped report, not a recalibration
    shipped = pd.read_csv(calibrate.heldout_path(calibrate.default_params_path()))
    got = r.loc[shipped["target"], "heldout"]
    assert list(got) == list(shipped["verdict"])
    assert (t.loc[~t["target"].isin(shipped["target"]), "heldout"].isna()).all()
    # vacuous rows are shown but not counted
    assert set(t.loc[t["target"].str.startswith("accuracy_in_lemur_range"), "role"]) == {
        "check"}
    assert r.loc["trajectories_rise", "role"] == "check"


def test_manifest(study):
    m = json.loads((study.out_dir / "study.json").read_text())
    assert m["num_trials"] == 3 and m["check_trials"] == CHECK and m["seed"] == 0
    counted = study.targets["role"] == "target"
    assert m["targets"]["targets"] == int(counted.sum())
    assert m["targets"]["targets_met"] == int(study.targets.loc[counted, "met"].sum())
    assert m["targets"]["checks"] == int((study.targets["role"] == "check").sum())
    assert "simulate" in m["timings_s"] and "jax" in m["versions"]


def test_summary_mentions_targets(study):
    from rich.console import Console

    console = Console(record=True, width=120)
    reproduce.print_summary(study, console=console)
    text = console.export_text()
    assert "Transfer gaps relative to cifar-10 classification" in text
    assert f"judged on the simulation, {CHECK} trials" in text
    assert "at the 3-trial protocol" in text and "a 15-trial study meets" in text
    assert "hold only when targeted" in text
    assert "nlp-sst2" in text


def test_same_seed_same_tables_and_rerun_allowed(study):
    again = reproduce.run_study(0, out_dir=study.out_dir, check_trials=0, **SMALL)
    pd.testing.assert_frame_equal(again.validity, study.validity)
    pd.testing.assert_frame_equal(again.gaps, study.gaps)
    assert (again.targets["met_basis"] == "expected value").all()
    assert (again.targets["met"] == again.targets["met_expected"]).all()
    assert again.targets["large_trial_value"].isna().all()


def test_partial_grid_adds_reference_and_skips_targets(tmp_path):
    out = reproduce.run_study(0, out_dir=tmp_path / "p", datasets="svhn,audioset",
                              tasks="generation", check_trials=CHECK, **SMALL)
    assert out.targets is None
    assert not (out.out_dir / "tables" / "targets.csv").exists()
    assert not (out.out_dir / "tables" / "targets.md").exists()
    assert list(out.results["dataset"].values) == ["cifar-10", "svhn", "audioset"]
    assert list(out.results["task"].values) == ["classification", "generation"]
    assert any("reference dataset cifar-10" in n for n in out.notes)
    assert any("targets.csv not written" in n for n in out.notes)
    assert (out.out_dir / "figures" / "fig4_transfer_gaps.png").stat().st_size > 0


def test_folder_rules(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        reproduce.check_out_dir(tmp_path / "file")
    with pytest.raises(UserInputError, match="is a file"):
        reproduce.check_out_dir(tmp_path / "file" / "sub")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="--force"):
        reproduce.check_out_dir(busy)
    assert reproduce.check_out_dir(busy, force=True) == busy
    (tmp_path / "empty").mkdir()
    assert reproduce.check_out_dir(tmp_path / "empty").is_dir()


def test_force_keeps_foreign_files(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    reproduce.run_study(0, out_dir=busy, datasets="cifar-10", tasks="classification",
                        check_trials=0, force=True, **SMALL)
    assert (busy / "notes.txt").read_text() == "mine"
    assert (busy / "tables" / "validity.csv").is_file()


def test_error_midway_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plotting, "study_figures", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        reproduce.run_study(0, out_dir=tmp_path / "never", datasets="cifar-10",
                            tasks="classification", check_trials=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_trials=0), "num_trials must be at least 1"),
    (dict(num_candidates=-2), "num_candidates must be at least 1"),
    (dict(num_iterations=10**6), "absurdly large"),
    (dict(datasets="mnist"), "unknown dataset 'mnist'"),
    (dict(tasks="captioning"), "unknown task 'captioning'"),
    (dict(check_trials=-1), "check_trials"),
    (dict(thresholds=(0.3, 0.1)), "easy <= hard"),
])
def test_bad_input_writes_nothing(tmp_path, kwargs, match):
    args = {**SMALL, "check_trials": 0, **kwargs}
    with pytest.raises(UserInputError, match=match):
        reproduce.run_study(0, out_dir=tmp_path / "x", **args)
    assert list(tmp_path.iterdir()) == []


def test_paper_regimes():
    assert reproduce.paper_regimes() == {
        "svhn": "easy", "fashion-mnist": "easy", "stl-10": "easy", "cifar-100": "moderate",
        "imagenet": "hard", "audioset": "hard", "nlp-sst2": "hard"}
