"""The ``plan`` command: every bad input exits 2 with one line before any simulation; a
small plan prints the table and the recommendation and writes the CSV and the figure."""

from __future__ import annotations

import pandas as pd
import pytest

from llmnas_transfer import cli
from llmnas_transfer.study.plan import PLAN_COLUMNS

SMALL = ["--compare", "stl-10:classification", "--trials", "4,8", "--iterations", "3",
         "--candidates", "10", "--studies", "20", "--no-progress"]


@pytest.fixture
def no_work(monkeypatch):
    """Make the simulation fail loudly if a check lets it start."""
    import llmnas_transfer.study.plan as plan_mod

    def boom(*a, **k):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(plan_mod, "simulate_studies", boom)


def run(argv, capsys):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, part", [
    (["--compare", "stl10:classification"], "did you mean 'stl-10'"),
    (["--compare", "stl-10:classifcation"], "did you mean 'classification'"),
    (["--compare", "stl-10"], "DATASET:TASK"),
    (["--compare", "cifar-10:classification"], "is the reference"),
    (["--reference", "cifar10:classification", "--compare", "stl-10:classification"],
     "did you mean 'cifar-10'"),
    (["--compare", "stl-10:classification", "--trials", "1,5"], "[2, 100000]"),
    (["--compare", "stl-10:classification", "--trials", "5,x"], "'x' is not an integer"),
    (["--compare", "stl-10:classification", "--width", "0"], "--width"),
    (["--compare", "stl-10:classification", "--width", "0.1", "--regime"], "not allowed"),
    (["--compare", "stl-10:classification", "--assurance", "1.5"], "--assurance"),
    (["--compare", "stl-10:classification", "--ci", "1"], "--ci"),
    (["--compare", "stl-10:classification", "--component", "gap"], "invalid choice"),
    (["--compare", "stl-10:classification", "--component", "trend", "--iterations", "1"],
     "at least 2 iterations"),
    (["--compare", "stl-10:classification", "--params", "lemr"], "did you mean 'lemur'"),
    (["--compare", "stl-10:classification", "--from", "/nonexistent/pilot.nc"], "not found"),
    (["--compare", "stl-10:classification", "--cost-per-candidate", "-1"],
     "--cost-per-candidate"),
    (["--compare", "stl-10:classification", "--studies", "3"], "--studies"),
    (["--compare", "stl-10:classification", "--seed", "-1"], "seed"),
    (["--compare", "stl-10:classification", "--devices", "0"], "--devices"),
    (["--compare", "stl-10:classification", "--coordinator", "h:1"], "all three or none"),
])
def test_bad_input_is_one_line_exit_2(argv, part, capsys, no_work):
    rc, _, err = run(["plan", *argv], capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert part in err, err


def test_unwritable_out(tmp_path, capsys, no_work):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run(["plan", *SMALL, "--out", f], capsys)
    assert rc == 2 and err.count("\n") == 1 and "folder" in err, err


def test_small_plan_writes_csv_and_figure(tmp_path, capsys):
    out = tmp_path / "plan"
    rc, text, err = run(["plan", *SMALL, "--component", "validity", "--width", "0.3",
                         "--cost-per-candidate", "0.25", "--out", out], capsys)
    assert rc == 0, err
    df = pd.read_csv(out / "plan.csv")
    assert list(df.columns) == list(PLAN_COLUMNS)
    assert len(df) == 2
    assert (out / "plan_assurance.png").stat().st_size > 0
    assert (out / "plan_assurance.pdf").stat().st_size > 0
    assert "simulated studies" in text and "true validity gap" in text
    rc, text, _ = run(["plan", *SMALL, "--component", "validity", "--format", "csv"], capsys)
    assert rc == 0
    header = text.splitlines()[0].split(",")
    assert header == [c for c in PLAN_COLUMNS if c != "cost"]


def test_help_lists_every_option_with_a_default(capsys):
    rc, text, _ = run(["plan", "--help"], capsys)
    assert rc == 0
    for opt in ("--reference", "--compare", "--component", "--width", "--regime", "--ci",
                "--assurance", "--trials", "--iterations", "--candidates", "--params",
                "--from", "--cost-per-candidate", "--format", "--out", "--seed",
                "--no-progress", "--devices", "--coordinator", "--num-processes",
                "--process-id", "--coordinator-timeout"):
        assert opt in text, opt
    assert "default 0.94" in text and "default 0.8" in text


def test_sweep_and_plan_share_the_process_options():
    parser = cli.build_parser()
    argv = ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1",
            "--coordinator-timeout", "9"]
    for cmd in (["sweep", "--out", "s.nc"], ["plan", "--compare", "stl-10:classification"]):
        a = parser.parse_args([*cmd, *argv])
        assert (a.coordinator, a.num_processes, a.process_id, a.coordinator_timeout) == \
            ("h:1", 2, 1, 9)
