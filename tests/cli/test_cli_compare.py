"""Command line: ``compare A.nc B.nc`` (PSIS-LOO of two fits of the same runs)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from llmnas_transfer import simulate
from llmnas_transfer.cli import main
from llmnas_transfer.io.runs import simulation_to_frame


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory):
    """The same runs fitted with --trend setting and --trend shared (short chains)."""
    d = tmp_path_factory.mktemp("compare")
    sim = simulate(3, datasets="cifar-10,svhn", tasks="classification", num_trials=4,
                   num_iterations=4, num_candidates=10, per_candidate=True, bins=0)
    runs = d / "runs.csv"
    simulation_to_frame(sim, accuracy=False).to_csv(runs, index=False)
    fits = {}
    for trend in ("setting", "shared"):
        out = d / f"{trend}.nc"
        rc, _, err = _run(["fit", str(runs), "--out", str(out), "--chains", "1", "--draws",
                           "60", "--warmup", "60", "--prior-draws", "10", "--no-progress",
                           "--trend", trend])
        assert rc == 0 and out.exists(), err
        fits[trend] = out
    return fits


def test_compare_prints_preference_and_pareto_k(two_fits):
    rc, out, _ = _run(["compare", str(two_fits["setting"]), str(two_fits["shared"])])
    assert rc == 0
    assert "preferred:" in out and "elpd difference" in out and "se" in out
    assert "trend setting" in out and "trend shared" in out
    assert "Pareto k > 0.7" in out
    rc, out, _ = _run(["compare", str(two_fits["setting"]), str(two_fits["shared"]),
                       "--format", "json"])
    res = json.loads(out)
    assert rc == 0 and res["preferred"] in res["models"]
    assert res["elpd_diff"] >= 0 and res["dse"] >= 0
    assert {m["trend"] for m in res["models"].values()} == {"setting", "shared"}


def test_compare_bad_inputs_are_one_line_errors(two_fits, tmp_path):
    import xarray as xr

    from llmnas_transfer.fit.fitfile import load_fit, save_fit

    a = str(two_fits["setting"])
    rc, _, err = _run(["compare", a, str(tmp_path / "missing.nc")])
    assert rc == 2 and "file not found" in err and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.nc"
    junk.write_text("not a fit")
    rc, _, err = _run(["compare", a, str(junk)])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    # a fit of other data: the observed counts differ
    other = load_fit(two_fits["shared"])
    obs = other["observed_data"].dataset.copy()
    obs["n_valid"] = obs["n_valid"] + 1
    other["observed_data"] = xr.DataTree(obs)
    save_fit(other, tmp_path / "other.nc")
    rc, _, err = _run(["compare", a, str(tmp_path / "other.nc")])
    assert rc == 2 and "different data" in err and len(err.strip().splitlines()) == 1
