"""``llmnas-transfer reproduce | simulate | calibrate``: outputs and every bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmnas_transfer import cli, load_defaults
from llmnas_transfer.io.results import candidates_path, load_results
from llmnas_transfer.study import derive as calibrate
from llmnas_transfer.summarize.figures import FIGURE_NAMES

# one small simulation shape for most commands here (one compile)
SIM = ["--trials", "2", "--iterations", "3", "--candidates", "4"]


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("suffix", [".nc", ".parquet", ".csv"])
def test_simulate_writes_each_format(tmp_path, capsys, suffix):
    out = tmp_path / f"run{suffix}"
    rc, stdout, err = run(["simulate", "--out", out, "--datasets", "cifar-10,svhn",
                           "--tasks", "classification", "generation", "--seed", "3", *SIM,
                           "--no-progress"], capsys)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    ds = load_results(out)
    assert dict(ds.sizes)["dataset"] == 2 and dict(ds.sizes)["task"] == 2
    assert ds.sizes["trial"] == 2 and ds.sizes["iteration"] == 3
    assert int(ds["n_generated"]) == 4


def test_simulate_per_candidate_table_and_chunking(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    base = ["simulate", "--datasets", "audioset", "--tasks", "detection", *SIM,
            "--per-candidate", "--no-progress"]
    assert run([*base, "--out", a], capsys)[0] == 0
    assert run([*base, "--out", b, "--chunk-size", "1"], capsys)[0] == 0
    assert candidates_path(a).is_file()
    # chunking never changes the numbers
    assert a.read_bytes() == b.read_bytes()
    assert candidates_path(a).read_bytes() == candidates_path(b).read_bytes()
    assert "accuracy" in load_results(a)


def test_reproduce_small(tmp_path, capsys):
    out = tmp_path / "study"
    rc, stdout, err = run(["reproduce", "--out", out, *SIM, "--check-trials", "0",
                           "--no-progress"], capsys)
    assert rc == 0, err
    assert "Paper targets met:" in stdout and "judged on the expected value" in stdout
    assert (out / "tables" / "targets.csv").is_file()
    assert len(list((out / "figures").iterdir())) == 2 * len(FIGURE_NAMES)
    # a second run into the same study folder is allowed
    rc, _, err = run(["reproduce", "--out", out, *SIM, "--check-trials", "0",
                      "--no-progress", "--datasets", "cifar-10", "--tasks",
                      "classification"], capsys)
    assert rc == 0, err


def test_calibrate_writes_elsewhere_and_leaves_shipped_file(tmp_path, capsys):
    shipped = calibrate.default_params_path()
    before = shipped.read_bytes()
    out = tmp_path / "params.json"
    rc, stdout, err = run(["calibrate", "--out", out, "--steps", "3", "--no-heldout",
                           "--no-progress"], capsys)
    assert rc == 0, err
    assert "Targets: paper value vs the model's expected value" in stdout
    assert f"wrote {out}" in stdout
    d = load_defaults(out)
    assert d.provenance["optimizer"] == "optax adam, 3 steps"
    assert d.provenance["target_set"] == "paper"
    assert shipped.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["params.json"]


def test_calibrate_lemur_set_writes_the_heldout_report_beside(tmp_path, capsys):
    shipped = calibrate.default_params_path("lemur")
    before = shipped.read_bytes()
    out = tmp_path / "lemur.json"
    rc, stdout, err = run(["calibrate", "--set", "lemur", "--out", out, "--steps", "3",
                           "--no-progress"], capsys)
    assert rc == 0, err
    assert "held-out check (lemur.heldout.csv)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lemur.heldout.csv", "lemur.json"]
    d = load_defaults(out)
    assert d.provenance["target_set"] == "lemur" and d.provenance["heldout"]
    assert shipped.read_bytes() == before


def test_params_names_on_reproduce_and_simulate(tmp_path, capsys):
    import pandas as pd

    rc, stdout, err = run(["reproduce", "--out", tmp_path / "s", *SIM, "--check-trials", "0",
                           "--params", "lemur", "--no-progress"], capsys)
    assert rc == 0, err
    t = pd.read_csv(tmp_path / "s" / "tables" / "targets.csv")
    assert "lemur_iqr_cifar-100" in set(t["target"])  # the lemur set's own targets
    note = t.set_index("target").loc["regime_cifar-100", "note"]
    assert "LEMUR" in note  # why the paper statement fails under lemur
    paths = {}
    for name in ("paper", "lemur"):
        paths[name] = tmp_path / f"{name}.nc"
        rc, _, err = run(["simulate", "--out", paths[name], *SIM, "--datasets", "cifar-100",
                          "--tasks", "classification", "--params", name, "--no-progress"],
                         capsys)
        assert rc == 0, err
    acc = {n: float(load_results(p)["accuracy_sum"].sum() / load_results(p)["n_valid"].sum())
           for n, p in paths.items()}
    assert acc["lemur"] < 0.1 < acc["paper"]  # LEMUR's CIFAR-100 level is about 6%
    # a file path still works
    rc, _, err = run(["simulate", "--out", tmp_path / "f.nc", *SIM, "--params",
                      calibrate.default_params_path("lemur"), "--no-progress"], capsys)
    assert rc == 0, err


def _bad_cases(tmp_path):
    (tmp_path / "a_file").write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    f = tmp_path / "a_file"
    nc = tmp_path / "x.nc"
    return [
        # reproduce
        (["reproduce", "--out", f, *SIM], "is a file"),
        (["reproduce", "--out", f / "sub", *SIM], "is a file"),
        (["reproduce", "--out", busy, *SIM], "--force"),
        (["reproduce", "--out", tmp_path / "r", "--trials", "0"], "num_trials must be at least 1"),
        (["reproduce", "--out", tmp_path / "r", "--trials", "-5"], "num_trials must be at least"),
        (["reproduce", "--out", tmp_path / "r", "--iterations", "0"], "num_iterations"),
        (["reproduce", "--out", tmp_path / "r", "--iterations", "1000000"], "absurdly large"),
        (["reproduce", "--out", tmp_path / "r", "--candidates", "0"], "num_candidates"),
        (["reproduce", "--out", tmp_path / "r", "--candidates", "100000000"], "absurdly large"),
        (["reproduce", "--out", tmp_path / "r", "--trials", "1000000000"], "GiB in memory"),
        (["reproduce", "--out", tmp_path / "r", "--datasets", "mnist"],
         "known datasets: cifar-10"),
        (["reproduce", "--out", tmp_path / "r", "--tasks", "captioning"], "register_task"),
        (["reproduce", "--out", tmp_path / "r", "--seed", "-1"], "seed"),
        (["reproduce", "--out", tmp_path / "r", "--check-trials", "-1"], "check_trials"),
        (["reproduce", "--out", tmp_path / "r", "--params", tmp_path / "none.json"],
         "parameters file not found"),
        (["reproduce", "--out", tmp_path / "r", "--trials", "two"], "invalid int value"),
        (["reproduce", "--out", tmp_path / "r", "--params", "lemr"], "did you mean 'lemur'?"),
        (["reproduce", "--out", tmp_path / "r", "--params", "papers"], "valid sets: paper"),
        (["simulate", "--out", tmp_path / "x.nc", "--params", "lemr"], "did you mean 'lemur'?"),
        (["calibrate", "--out", tmp_path / "p.json", "--set", "lemr"], "invalid choice"),
        (["reproduce", *SIM], "--out"),
        # simulate
        (["simulate", "--out", tmp_path / "x.txt", *SIM], "unknown results format"),
        (["simulate", "--out", tmp_path, *SIM], "unknown results format"),
        (["simulate", "--out", f / "x.nc", *SIM], "is a file"),
        (["simulate", "--out", nc, "--datasets", "cifar-10,mnist", *SIM], "unknown dataset"),
        (["simulate", "--out", nc, "--datasets", ",", *SIM], "empty name list"),
        (["simulate", "--out", nc, "--datasets", "svhn,svhn", *SIM], "duplicate dataset"),
        (["simulate", "--out", nc, "--tasks", "nope", *SIM], "unknown task"),
        (["simulate", "--out", nc, "--trials", "0"], "num_trials"),
        (["simulate", "--out", nc, "--candidates", "-1"], "num_candidates"),
        (["simulate", "--out", nc, "--chunk-size", "0", *SIM], "chunk_size"),
        (["simulate", "--out", nc, "--bins", "-1", *SIM], "bins"),
        (["simulate", "--out", nc, "--bins", "5000", *SIM], "bins"),
        (["simulate", "--out", nc, "--trials", "1000000000", "--per-candidate"],
         "GiB in memory"),
        (["simulate", "--out", nc, "--seed", "x"], "invalid int value"),
        (["simulate", *SIM], "--out"),
        # calibrate
        (["calibrate", "--steps", "1"], "--in-place"),  # never overwrites the shipped file
        (["calibrate", "--out", tmp_path / "p.json", "--in-place"], "not both"),
        (["calibrate", "--out", tmp_path / "p.json", "--steps", "0"], "--steps"),
        (["calibrate", "--out", tmp_path / "p.json", "--steps", "-3"], "--steps"),
        (["calibrate", "--out", tmp_path / "p.txt", "--steps", "1"], ".json"),
        (["calibrate", "--out", f / "p.json", "--steps", "1"], "is a file"),
        (["calibrate", "--out", busy, "--steps", "1"], ".json"),
    ]


def test_every_bad_input_is_one_line_exit_2(tmp_path, capsys):
    cases = _bad_cases(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for argv, match in cases:
        try:
            rc, out, err = run(argv, capsys)
        except SystemExit as exc:  # argparse errors
            rc = exc.code
            out, err = capsys.readouterr()
        assert rc == 2, (argv, err)
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1, (argv, err)
        assert match in lines[0], (argv, lines[0])
    # nothing was written by any of them
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_unwritable_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, _, err = run(["simulate", "--out", ro / "x.nc", *SIM], capsys)
        assert rc == 2 and "not writable" in err
        rc, _, err = run(["reproduce", "--out", ro / "s", *SIM], capsys)
        assert rc == 2 and "not writable" in err
    finally:
        ro.chmod(0o700)


def test_unwritable_location_even_for_root(tmp_path, capsys):
    # /proc refuses new files for every user, root included
    rc, _, err = run(["simulate", "--out", "/proc/llmnas-test.nc", *SIM], capsys)
    assert rc == 2 and "cannot write" in err
    rc, _, err = run(["reproduce", "--out", "/proc/llmnas-test", *SIM], capsys)
    assert rc == 2 and "cannot write" in err


def test_console_entry_point_bad_input_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "llmnas_transfer", "simulate", "--out", str(tmp_path / "x.nc"),
         "--datasets", "cifar-11"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        p.stderr.strip(),
    ]
    assert "unknown dataset 'cifar-11'" in p.stderr and "register_dataset" in p.stderr
