"""Top-level CLI behaviour (help, unknown commands) and the shared options of cli.options."""

import argparse
import subprocess
import sys

import pytest

from llmnas_transfer import cli
from llmnas_transfer.cli import options
from llmnas_transfer.errors import UserInputError


def test_version_and_help(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "reproduce" in out or "COMMAND" in out


def test_unknown_command_exits_2_without_traceback():
    p = subprocess.run([sys.executable, "-m", "llmnas_transfer", "frobnicate"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2


def test_shared_options():
    p = argparse.ArgumentParser()
    options.add_grid_options(p, trials=7, trials_help="runs")
    options.add_seed_option(p)
    options.add_params_option(p)
    options.add_progress_option(p)
    a = p.parse_args(["--datasets", "cifar-10, svhn", "stl-10", "--seed", "5"])
    assert options.split_names(a.datasets) == ["cifar-10", "svhn", "stl-10"]
    assert (a.trials, a.iterations, a.candidates, a.seed, a.no_progress) == (7, 10, 20, 5, False)
    assert a.tasks is None and options.split_names(a.tasks) is None
    assert options.load_params(a.params) is None
    with pytest.raises(UserInputError, match="empty name list"):
        options.split_names([","])
    for bad, match in (("-1", "seed must be an integer in"), ("x", "invalid int value")):
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            options.seed_arg(bad)
    assert options.seed_arg(str(options.MAX_SEED)) == options.MAX_SEED
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1, got 0"):
        options.positive_int_arg("0")
    assert options.positive_int_arg("3") == 3
