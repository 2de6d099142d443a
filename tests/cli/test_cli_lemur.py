"""``llmnas-transfer lemur`` and ``llmnas-transfer scenario``: exit codes and outputs."""

from __future__ import annotations

import pandas as pd
import pytest

from llmnas_transfer.cli import main


def test_lemur_needs_out(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lemur"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["lemur", "--out", "x", "--seed", "-3"],
    ["lemur", "--out", "x", "--chains", "0"],
    ["scenario", "khalid2026", "--out", "x", "--trials", "many"],
])
def test_bad_numbers_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["lemur", "--out", str(f), "--quick", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and len(err.strip().splitlines()) == 1


def test_write_priors_refuses_quick(tmp_path, capsys):
    assert main(["lemur", "--out", str(tmp_path), "--quick", "--write-priors"]) == 2
    assert "--write-priors needs the full fit" in capsys.readouterr().err


def test_unknown_scenario_exits_2(tmp_path, capsys):
    assert main(["scenario", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "khalid2026" in err and "Traceback" not in err


def test_scenario_takes_the_parameter_set(tmp_path, capsys):
    assert main(["scenario", "khalid2026", "--out", str(tmp_path), "--params", "lemr"]) == 2
    assert "did you mean 'lemur'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert main(["scenario", "khalid2026-base", "--out", str(tmp_path), "--trials", "50",
                 "--params", "lemur"]) == 0
    from llmnas_transfer.sim.params import load_param_set

    t = pd.read_csv(tmp_path / "scenario_khalid2026-base_parameters.csv").set_index("parameter")
    lemur = load_param_set("lemur").dynamics
    assert t.loc["accuracy_noise", "default"] == pytest.approx(lemur["accuracy_noise"], rel=1e-5)


def test_scenario_command_writes_comparison(tmp_path, capsys):
    assert main(["scenario", "khalid2026", "--out", str(tmp_path), "--trials", "100"]) == 0
    out = capsys.readouterr().out
    assert "validity_peak" in out
    t = pd.read_csv(tmp_path / "scenario_khalid2026_comparison.csv")
    assert t["published"].notna().all()
    assert (tmp_path / "scenario_khalid2026.png").stat().st_size > 0


@pytest.mark.slow
def test_lemur_quick_command(tmp_path, capsys):
    assert main(["lemur", "--out", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "held-out coverage" in out
    cov = pd.read_csv(tmp_path / "lemur_holdout_coverage.csv")
    assert "all" in set(cov["dataset"])
    assert (tmp_path / "lemur_gap_forest.png").exists()
