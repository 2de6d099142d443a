"""Command line: fit, gaps, trajectory, check; one-line errors with exit code 2.

One ``fit`` (module fixture) serves every test that reads a fit: compiling the model for
a new spec is most of a fit's time.
"""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from llmnas_transfer import simulate
from llmnas_transfer.cli import main
from llmnas_transfer.io.runs import simulation_to_frame


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    sim = simulate(8, datasets="cifar-10,svhn", tasks="classification,detection",
                   num_trials=4, num_iterations=4, num_candidates=10, per_candidate=True,
                   bins=0)
    df = simulation_to_frame(sim)
    df.loc[df["dataset"] == "svhn", "dataset"] = "my-speech"  # a new level
    p = d / "runs.csv"
    df.to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def fit_run(runs_csv, tmp_path_factory):
    """``fit --strict`` with 40 draws a chain, forecasting 2 iterations; attributes are
    given (``--dataset-attrs``) for the new dataset my-speech and for a dataset that is
    not in the data. Returns the fit file, the exit code and the captured stdout, stderr."""
    out = tmp_path_factory.mktemp("fit") / "fit.nc"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["fit", str(runs_csv), "--out", str(out), "--chains", "2", "--draws", "40",
                   "--warmup", "40", "--seed", "1", "--forecast", "2", "--prior-draws", "20",
                   "--strict", "--no-progress", "--dataset-attrs",
                   "my-audio:modality=audio,resolution=64,num_classes=35",
                   "--dataset-attrs", "my-speech:modality=audio,resolution=32,num_classes=10"])
    return out, rc, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def fitted(fit_run):
    assert fit_run[0].exists()
    return fit_run[0]


def test_fit_prints_report_and_diagnostics(fit_run):
    out, rc, stdout, stderr = fit_run
    assert out.exists()
    assert "640 records (candidates form)" in stderr
    assert "'my-speech' is not in the registry" in stderr and "(given)" in stderr
    assert "attributes given for datasets not in the fit: ['my-audio']" in stderr
    assert "r_hat" in stdout and "divergences" in stdout
    # 2 x 40 draws cannot pass the ESS check (100 a chain): --strict turns the warning
    # into exit 1, and the fit file is still written
    assert "warning:" in stdout and rc == 1


def test_gaps_formats(fitted, capsys):
    assert main(["gaps", str(fitted), "--format", "json", "--ci", "0.9"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["component"] for r in rows} == {"validity", "accuracy", "combined",
                                              "raw_accuracy", "trend"}
    assert set(rows[0]) >= {"dataset", "task", "component", "mean", "sd", "hdi_low",
                            "hdi_high", "p_easy", "p_moderate", "p_hard", "p_trend_small"}
    trend = [r for r in rows if r["component"] == "trend"]
    assert len(trend) == 4 and all(0 <= r["p_trend_small"] <= 1 for r in trend)
    assert main(["gaps", str(fitted), "--format", "csv", "--thresholds", "0.05,0.3"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith("dataset,task,component,mean,sd,hdi_low,hdi_high")
    assert main(["gaps", str(fitted)]) == 0
    assert "my-speech" in capsys.readouterr().out


def test_trajectory_csv(fitted, tmp_path):
    out = tmp_path / "traj.csv"
    assert main(["trajectory", str(fitted), "--format", "csv", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns)[:7] == ["dataset", "task", "iteration", "observed_rate", "mean",
                                    "hdi_low", "hdi_high"]
    assert df["iteration"].max() == 6
    assert df.loc[df["iteration"] > 4, "observed_rate"].isna().all()
    assert df.loc[df["iteration"] <= 4, "observed_rate"].notna().all()


def test_trajectory_quantiles(fitted, tmp_path):
    out = tmp_path / "traj.csv"
    assert main(["trajectory", str(fitted), "--format", "csv", "--out", str(out),
                 "--quantiles", "0.05,0.5,0.95"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns)[-3:] == ["q0.05", "q0.5", "q0.95"]
    assert ((df["q0.05"] <= df["q0.5"]) & (df["q0.5"] <= df["q0.95"])).all()


def test_check(fitted, tmp_path, capsys):
    assert main(["check", str(fitted), "--out", str(tmp_path / "chk")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "LOO (per run)" in out
    n_files = len([p for p in (tmp_path / "chk").iterdir() if p.is_file()])
    assert f"wrote {n_files} files to" in captured.err
    assert (tmp_path / "chk" / "trace.png").exists()
    assert (tmp_path / "chk" / "energy.pdf").exists()


@pytest.mark.parametrize("args, parts", [
    (["gaps", "missing.nc"], ["missing.nc", "file not found"]),
    (["trajectory", "RUNS"], ["not a readable netCDF"]),
    (["fit", "BAD", "--out", "X/f.nc"], ["does not exist"]),
    (["fit", "BAD", "--out", "OUT", "--method", "nuts", "--chains", "0"], ["chains"]),
    (["fit", "BAD", "--out", "OUT", "--dataset-attrs", "foo"], ["NAME:modality"]),
])
def test_errors_are_one_line_exit_2(args, parts, tmp_path, capsys, runs_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,task,trial,iteration,valid\ncifar-10,classification,1,0,1\n")
    args = [a.replace("BAD", str(bad)).replace("OUT", str(tmp_path / "o.nc"))
            .replace("RUNS", str(runs_csv)) for a in args]
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own errors (ranges checked at parse time)
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for p in parts:
        assert p in err


def test_bad_runs_file_names_row_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,task,trial,iteration,valid\ncifar-10,classification,1,0,1\n")
    assert main(["fit", str(bad), "--out", str(tmp_path / "o.nc")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: row 2, column iteration: 0 is below 1" in err
    assert not (tmp_path / "o.nc").exists()
