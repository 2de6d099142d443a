"""Every bad input is caught before any work: one line on stderr, exit 2, no traceback
(the sampler and the calibration are replaced by functions that fail if called), plus
the shared flags (``--no-progress``), help texts with defaults, ``calibrate``
without ``--out`` and the import of the CLI leaving JAX's backend unstarted."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pandas as pd
import pytest

from llmnas_transfer import cli, load_defaults
from llmnas_transfer.cli import options

EXAMPLE = "examples/runs_counts.csv"


@pytest.fixture
def no_work(monkeypatch):
    """Make fitting, calibrating and simulating fail loudly if a check lets them start."""
    import llmnas_transfer.fit.inference as inference
    import llmnas_transfer.sim.candidates as candidates
    from llmnas_transfer.study import derive

    def boom(*a, **k):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(inference, "fit_runs", boom)
    monkeypatch.setattr(derive, "calibrate", boom)
    monkeypatch.setattr(candidates, "simulate", boom)


def run(argv, capsys):
    t0 = time.perf_counter()
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err, time.perf_counter() - t0


def one_line_error(argv, capsys, *parts):
    rc, _, err, _ = run(argv, capsys)
    assert rc == 2, (argv, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in err, (argv, err)
    return err


@pytest.fixture
def runs_csv(tmp_path):
    p = tmp_path / "runs.csv"
    p.write_text("dataset,task,trial,iteration,n_generated,n_valid\n"
                 "cifar-10,classification,1,1,10,4\n"
                 "svhn,classification,1,1,10,3\n")
    return p


# ------------------------------------------------------------------ fit --out
def test_fit_out_unwritable_is_refused_before_work(runs_csv, capsys, no_work):
    one_line_error(["fit", runs_csv, "--out", "/proc/x.nc"], capsys, "/proc/x.nc",
                   "cannot write")


def test_fit_out_must_end_in_nc(runs_csv, tmp_path, capsys, no_work):
    one_line_error(["fit", runs_csv, "--out", tmp_path / "x.txt"], capsys, "x.txt", ".nc")
    assert not (tmp_path / "x.txt").exists()


def test_fit_out_under_a_file(runs_csv, tmp_path, capsys, no_work):
    (tmp_path / "a_file").write_text("x")
    one_line_error(["fit", runs_csv, "--out", tmp_path / "a_file" / "f.nc"], capsys,
                   "a_file")


# ------------------------------------------------------------------ check --out
def test_check_out_unwritable_is_refused_first(tmp_path, capsys):
    one_line_error(["check", tmp_path / "missing.nc", "--out", "/proc/chk"], capsys,
                   "/proc/chk", "cannot write")
    (tmp_path / "a_file").write_text("x")
    one_line_error(["check", tmp_path / "missing.nc", "--out", tmp_path / "a_file" / "c"],
                   capsys, "a_file", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("command", ["gaps", "trajectory"])
def test_gaps_out_is_checked_before_reading_the_fit(command, tmp_path, capsys):
    one_line_error([command, tmp_path / "missing.nc", "--out", "/proc/g.csv"], capsys,
                   "/proc/g.csv", "cannot write")
    one_line_error([command, tmp_path / "missing.nc", "--out", tmp_path / "no" / "g.csv"],
                   capsys, "does not exist")


def test_count_files():
    from llmnas_transfer.cli.fit import _count_files

    assert _count_files({"trace": ["t.png", "t.pdf"], "loo": "loo.json"}) == 3


# ------------------------------------------------------------------ --params
@pytest.mark.parametrize("content, part", [
    (bytes(range(256)), "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"dynamics": {}}', "lacks the field"),
])
def test_bad_params_file_is_one_line(content, part, tmp_path, capsys, no_work):
    bad = tmp_path / "params.json"
    bad.write_bytes(content)
    one_line_error(["simulate", "--out", tmp_path / "s.nc", "--params", bad], capsys,
                   str(bad), part)


def test_params_folder_is_one_line(tmp_path, capsys, no_work):
    one_line_error(["simulate", "--out", tmp_path / "s.nc", "--params", tmp_path], capsys,
                   str(tmp_path), "folder")


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("extra, parts", [
    (["--reference", "cifar10:classification"], ["reference dataset 'cifar10'",
                                                 "did you mean 'cifar-10'?"]),
    (["--reference", "cifar-10:clasification"], ["reference task", "'classification'"]),
    (["--reference", "esc-50:classification"], ["reference dataset 'esc-50'", "known:"]),
    (["--datasets", "cifar100"], ["extra dataset 'cifar100'", "did you mean 'cifar-100'?"]),
    (["--datasets", "esc-50"], ["extra dataset 'esc-50'", "--dataset-attrs"]),
    (["--tasks", "detecton"], ["extra task 'detecton'", "did you mean 'detection'?"]),
    (["--dataset-attrs", "esc-50:modality=audio"], ["'esc-50'", "resolution, num_classes"]),
])
def test_unknown_names_are_refused(extra, parts, runs_csv, capsys, no_work):
    one_line_error(["fit", runs_csv, "--out", runs_csv.with_name("f.nc"), *extra,
                    *(["--datasets", "esc-50"] if extra[0] == "--dataset-attrs" else [])],
                   capsys, *parts)


def test_misspelled_dataset_in_the_data(tmp_path, capsys, no_work):
    p = tmp_path / "runs.csv"
    p.write_text("dataset,task,trial,iteration,n_generated,n_valid\n"
                 "cifar-10,classification,1,1,10,4\n"
                 "cifar10,classification,1,1,10,3\n")
    one_line_error(["fit", p, "--out", tmp_path / "f.nc"], capsys,
                   f"{p}: row 3, column dataset: unknown dataset 'cifar10'",
                   "did you mean 'cifar-10'?")


def test_new_dataset_in_the_data_needs_attributes(tmp_path, capsys, no_work):
    p = tmp_path / "runs.jsonl"
    p.write_text('{"dataset": "cifar-10", "task": "classification", "trial": 1, '
                 '"iteration": 1, "n_generated": 10, "n_valid": 4}\n'
                 '{"dataset": "esc-50", "task": "classification", "trial": 1, '
                 '"iteration": 1, "n_generated": 10, "n_valid": 4}\n')
    one_line_error(["fit", p, "--out", tmp_path / "f.nc"], capsys,
                   f"{p}: row 2, column dataset: dataset 'esc-50' is not in the registry",
                   "--dataset-attrs")


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("option, value", [
    ("--chains", "0"), ("--chains", "65"), ("--draws", "0"), ("--draws", "x"),
    ("--warmup", "-1"), ("--target-accept", "1"), ("--target-accept", "0.2"),
    ("--svi-steps", "0"), ("--svi-learning-rate", "0"), ("--svi-learning-rate", "nan"),
    ("--prior-draws", "0"), ("--forecast", "-1"), ("--forecast", "1001"),
])
def test_fit_numbers_are_checked_at_parse_time(option, value, runs_csv, capsys, no_work):
    one_line_error(["fit", runs_csv, "--out", runs_csv.with_name("f.nc"), option, value],
                   capsys, f"argument {option}")


def test_nuts_needs_warmup(runs_csv, capsys, no_work):
    one_line_error(["fit", runs_csv, "--out", runs_csv.with_name("f.nc"), "--warmup", "0"],
                   capsys, "--warmup")


@pytest.mark.parametrize("command", ["gaps", "trajectory", "check"])
@pytest.mark.parametrize("ci", ["0", "1", "1.5", "x"])
def test_ci_is_checked_at_parse_time(command, ci, tmp_path, capsys):
    argv = [command, tmp_path / "f.nc", "--ci", ci]
    if command == "check":
        argv += ["--out", tmp_path / "chk"]
    one_line_error(argv, capsys, "argument --ci")


@pytest.mark.parametrize("levels", ["0,0.5", "0.5,x", "0.5,0.5", ""])
def test_trajectory_quantiles_checked_before_the_fit_is_read(levels, tmp_path, capsys):
    one_line_error(["trajectory", tmp_path / "missing.nc", "--quantiles", levels], capsys,
                   "--quantiles")


def test_gaps_iteration_is_checked(tmp_path, capsys):
    one_line_error(["gaps", tmp_path / "f.nc", "--iteration", "0"], capsys,
                   "argument --iteration")


# ------------------------------------------------------------------ progress, help
@pytest.mark.parametrize("argv", [
    ["fit", "r.csv", "--out", "f.nc"], ["lemur", "--out", "d"], ["sweep", "--out", "s.nc"],
    ["simulate", "--out", "s.nc"], ["reproduce", "--out", "d"], ["calibrate"],
])
def test_no_progress_everywhere(argv):
    parser = cli.build_parser()
    assert parser.parse_args([*argv, "--no-progress"]).no_progress is True
    args = parser.parse_args(argv)
    assert args.no_progress is False
    assert not hasattr(args, "progress")
    assert options.show_progress(args) is False  # stderr is not a terminal under pytest


def test_show_progress_follows_the_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    assert options.show_progress(argparse.Namespace(no_progress=False)) is True
    assert options.show_progress(argparse.Namespace(no_progress=True)) is False


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_with_its_default():
    parser = cli.build_parser()
    for name, sub in _subparsers(parser).items():
        text = sub.format_help()
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.dest}: no help"
            has_default = a.default not in (None, False, [], argparse.SUPPRESS)
            if a.option_strings and has_default:
                assert "default" in sub._get_formatter()._get_help_string(a).lower() \
                    or "default" in (a.help or "").lower(), f"{name} {a.dest}"
        assert "default" in text
    fit_help = " ".join(_subparsers(parser)["fit"].format_help().split())
    for part in ("(default: nuts)", "(default: 4)", "(default: 1000)", "(default: 0.9)",
                 "(default: 2000)", "(default: 0.01)", "(default: 500)", "random seed"):
        assert part in fit_help, part


def test_top_level_help_is_plain_text():
    text = cli.build_parser().format_help()
    assert "``" not in text and ":mod:" not in text
    assert "fit" in text


# ------------------------------------------------------------------ calibrate
def test_calibrate_needs_out_or_in_place(capsys, no_work):
    from llmnas_transfer.study import derive

    before = derive.default_params_path().read_bytes()
    one_line_error(["calibrate", "--steps", "3"], capsys, "--out", "--in-place")
    one_line_error(["calibrate", "--out", "p.json", "--in-place"], capsys, "not both")
    assert derive.default_params_path().read_bytes() == before


def test_calibrate_in_place_writes_the_shipped_file(tmp_path, monkeypatch, capsys):
    from llmnas_transfer.study import derive

    shipped = tmp_path / "default_params.json"
    report = pd.DataFrame({"target": ["t"], "paper_value": [0.5], "paper_text": ["0.5"],
                           "expected_value": [0.5], "met": [True], "fitted": [True],
                           "role": ["target"]})

    class Result:
        defaults = load_defaults()
        heldout = None

    Result.report = report
    monkeypatch.setattr(derive, "default_params_path", lambda *a, **k: shipped)
    monkeypatch.setattr(derive, "calibrate", lambda **k: Result)
    rc, out, err, _ = run(["calibrate", "--in-place", "--steps", "3", "--no-progress"], capsys)
    assert rc == 0, err
    assert f"wrote {shipped}" in out
    assert load_defaults(shipped) == load_defaults()


# ------------------------------------------------------------------ JAX stays unstarted
def test_importing_the_cli_does_not_start_jax():
    code = ("import llmnas_transfer.cli, llmnas_transfer.sim.expectation; "
            "from llmnas_transfer.cli import fit, study, lemur, sweep; "
            "from jax._src import xla_bridge as xb; assert not xb._backends, xb._backends; "
            "import jax; jax.config.update('jax_num_cpu_devices', 2); "
            "print(jax.local_device_count())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "2"
