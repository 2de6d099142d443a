"""Command line: ``backtest`` end to end on a short bursty run, and its one-line errors."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from llmnas_transfer.cli import main
from llmnas_transfer.study.backtest import MODEL, SCORE_COLUMNS, SUMMARY_COLUMNS
from llmnas_transfer.study.baselines import BASELINES
from llmnas_transfer.study.bursty import bursty_runs


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("bt") / "runs.csv"
    bursty_runs(5, num_iterations=12).to_csv(p, index=False)
    return p


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own errors (exit status 2)
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_backtest_writes_scores_summary_and_fan_chart(runs_csv, tmp_path):
    """Two origins (8 and 10) of a 12-iteration run, 2 ahead: 4 targets per method."""
    scores, fig = tmp_path / "scores.csv", tmp_path / "fan"
    code, out, err = _run(["backtest", str(runs_csv), "--origin", "8", "--horizon", "2",
                           "--step", "2", "--chains", "1", "--warmup", "150", "--draws",
                           "150", "--out", str(scores), "--figure", str(fig),
                           "--format", "json", "--bursts", "on"])
    assert code == 0, err
    res = json.loads(out)
    summary = pd.DataFrame(res["summary"])
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary["method"].tolist() == [MODEL, *BASELINES]
    assert (summary["targets"] == 4).all()
    assert [f["origin"] for f in res["fits"]] == [8, 10]
    df = pd.read_csv(scores)
    assert list(df.columns) == list(SCORE_COLUMNS)
    assert len(df) == 4 * (1 + len(BASELINES))
    q = df[[c for c in df.columns if c.startswith("q0")]].to_numpy()
    assert (q[:, 1:] >= q[:, :-1] - 1e-12).all() and ((q >= 0) & (q <= 1)).all()
    assert (df["quantile_score"] >= 0).all() and (df["crps"] >= 0).all()
    assert (tmp_path / "fan.png").stat().st_size > 0 and (tmp_path / "fan.pdf").exists()


@pytest.mark.parametrize("args, parts", [
    (["--origin", "12", "--horizon", "2"], ["leaves no iteration", "12 iterations"]),
    (["--origin", "0", "--horizon", "2"], ["--origin"]),
    (["--origin", "8", "--horizon", "2", "--bursts", "maybe"], ["--bursts"]),
])
def test_errors_are_one_line_exit_2(args, parts, runs_csv):
    code, out, err = _run(["backtest", str(runs_csv), *args])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 or err.startswith("usage")
    for p in parts:
        assert p in err


def test_unwritable_output_is_refused_before_reading_or_fitting(runs_csv, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(["backtest", str(runs_csv), "--origin", "8", "--horizon", "2",
                         "--out", str(blocker / "scores.csv")])
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
