"""Streaming sweeps: identical numbers for any chunk size or device count, resume after an
interruption, atomic checkpoints, agreement with simulate, and the ``sweep`` command."""

import json
import os

import jax
import numpy as np
import pytest

from llmnas_transfer import simulate
from llmnas_transfer.cli import main
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study import sweeps as sweep_mod
from llmnas_transfer.study.sweeps import BLOCK, sweep

# one shape per path, reused by every test so each kernel compiles once
SUMMARY = dict(datasets="cifar-10,svhn", tasks="classification", num_iterations=3,
               num_candidates=300, bins=0, path="summary")
CANDS = dict(datasets="cifar-10,svhn", tasks="classification", num_iterations=3,
             num_candidates=40, bins=4, path="candidates")
R = 200  # not a multiple of the block: the last block is padded and masked


def _assert_identical(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


@pytest.fixture(scope="module")
def summary_ref():
    return sweep(8, num_trials=R, chunk_size=BLOCK, devices=1, **SUMMARY)


@pytest.mark.parametrize("kw", [SUMMARY, CANDS], ids=["summary", "candidates"])
def test_results_do_not_depend_on_chunk_size_or_devices(kw, summary_ref):
    assert len(jax.devices()) >= 2, "tests/conftest.py sets jax_num_cpu_devices=2"
    a = summary_ref if kw is SUMMARY else sweep(8, num_trials=R, chunk_size=BLOCK,
                                                devices=1, **kw)
    b = sweep(8, num_trials=R, chunk_size=3 * BLOCK, devices=1, **kw)
    c = sweep(8, num_trials=R, chunk_size=2 * BLOCK, devices=2, **kw)
    _assert_identical(a, b)
    _assert_identical(a, c)
    assert int(a["n_trials"]) == R
    assert np.all(a["n_valid"].values > 0)


def test_sweep_totals_equal_simulate_totals():
    """The streamed totals are the sums of simulate's per-trial values."""
    s = sweep(4, num_trials=R, chunk_size=BLOCK, devices=1, **CANDS)
    kw = {k: v for k, v in CANDS.items()}
    r = simulate(4, num_trials=R, **kw)
    np.testing.assert_array_equal(s["n_valid"].values, r["n_valid"].sum("trial").values)
    np.testing.assert_array_equal(s["accuracy_hist"].values,
                                  r["accuracy_hist"].sum("trial").values)
    np.testing.assert_allclose(s["total_accuracy_sum"].values,
                               r["accuracy_sum"].astype(np.float64).sum("trial").values,
                               rtol=1e-6)
    np.testing.assert_allclose(s["validity_rate"].values, r["validity_rate"].mean("trial"),
                               rtol=1e-12)
    np.testing.assert_allclose(s["accuracy_trial_mean"].values,
                               r["accuracy_mean"].mean("trial", skipna=True).values, rtol=1e-5)
    np.testing.assert_allclose(s["state_mean"].values, r["state"].mean("trial").values,
                               rtol=1e-5, atol=1e-6)
    se = r["validity_rate"].std("trial", ddof=1).values / np.sqrt(R)
    np.testing.assert_allclose(s["validity_rate_se"].values, se, rtol=1e-4)


class _Stop(Exception):
    pass


def test_interrupted_sweep_resumes_from_last_finished_chunk(tmp_path, summary_ref):
    ckpt = tmp_path / "run.ckpt.npz"

    def stop_after_two(done, total):
        assert total == 4
        if done == 2:
            raise _Stop

    with pytest.raises(_Stop):
        sweep(8, num_trials=R, chunk_size=BLOCK, devices=1, checkpoint=ckpt,
              on_chunk=stop_after_two, **SUMMARY)
    with np.load(ckpt) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["next_trial"] == 2 * BLOCK and not meta["complete"]

    seen = []
    done = sweep(8, num_trials=R, chunk_size=BLOCK, devices=1, checkpoint=ckpt, resume=True,
                 on_chunk=lambda d, t: seen.append(d), **SUMMARY)
    assert seen == [3, 4]  # only the two unfinished chunks ran
    _assert_identical(done, summary_ref)
    # resuming a finished checkpoint runs nothing and gives the same answer
    again = sweep(8, num_trials=R, chunk_size=3 * BLOCK, devices=1, checkpoint=ckpt,
                  resume=True, on_chunk=lambda d, t: seen.append(d), **SUMMARY)
    assert seen == [3, 4]
    _assert_identical(again, summary_ref)


def test_resume_with_other_settings_is_refused(tmp_path):
    ckpt = tmp_path / "c.npz"
    sweep(8, num_trials=BLOCK, chunk_size=BLOCK, devices=1, checkpoint=ckpt, **SUMMARY)
    with pytest.raises(UserInputError, match="different sweep.*seed"):
        sweep(9, num_trials=BLOCK, chunk_size=BLOCK, devices=1, checkpoint=ckpt, resume=True,
              **SUMMARY)
    (tmp_path / "bad.npz").write_text("not a checkpoint")
    with pytest.raises(UserInputError, match="not a readable sweep checkpoint"):
        sweep(8, num_trials=BLOCK, chunk_size=BLOCK, devices=1,
              checkpoint=tmp_path / "bad.npz", resume=True, **SUMMARY)


def test_checkpoint_is_never_partially_written(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.npz"
    sweep(8, num_trials=BLOCK, chunk_size=BLOCK, devices=1, checkpoint=ckpt, **SUMMARY)
    before = ckpt.read_bytes()

    def broken_savez(fh, **kw):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(sweep_mod.np, "savez", broken_savez)
    with pytest.raises(UserInputError, match="cannot write.*disk full"):
        sweep(8, num_trials=BLOCK, chunk_size=BLOCK, devices=1, checkpoint=ckpt, **SUMMARY)
    assert ckpt.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_one_compile_per_chunk_shape(summary_ref):
    n0 = sweep_mod._single_device_kernel._cache_size()
    sweep(99, num_trials=3 * BLOCK + 5, chunk_size=BLOCK, devices=1, **SUMMARY)
    assert sweep_mod._single_device_kernel._cache_size() == n0


@pytest.mark.parametrize("kw,match", [
    ({"num_trials": 0}, "at least 1"),
    ({"path": "fast"}, "path must be one of"),
    ({"bins": -2}, "bins"),
    ({"devices": 99}, "only .* available"),
    ({"devices": 0}, "at least 1"),
    ({"chunk_size": 0}, "at least 1"),
])
def test_bad_input_is_a_clear_error(kw, match):
    args = {**SUMMARY, "num_trials": 10, **kw}
    with pytest.raises(UserInputError, match=match):
        sweep(0, **args)


def _cli_args(out, *extra):
    return ["sweep", "--out", str(out), "--datasets", "cifar-10,svhn", "--tasks",
            "classification", "--iterations", "3", "--candidates", "300", "--bins", "0",
            "--trials", str(R), "--chunk-size", str(BLOCK), "--devices", "1", "--seed", "8",
            "--no-progress", *extra]


def test_cli_sweep_writes_results_and_removes_checkpoint(tmp_path, capsys, summary_ref):
    out = tmp_path / "s.nc"
    assert main(_cli_args(out)) == 0
    import xarray as xr

    with xr.open_dataset(out, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["n_valid"].values, summary_ref["n_valid"].values)
    assert not (tmp_path / "s.nc.ckpt.npz").exists()
    assert "wrote" in capsys.readouterr().out
    assert main(_cli_args(tmp_path / "s.csv")) == 0
    assert (tmp_path / "s.csv").read_text().startswith("dataset,task,iteration")


def test_cli_sweep_resume_and_mistakes(tmp_path, capsys, summary_ref):
    out = tmp_path / "r.nc"
    ckpt = tmp_path / "r.nc.ckpt.npz"
    with pytest.raises(_Stop):
        sweep(8, num_trials=R, chunk_size=BLOCK, devices=1, checkpoint=ckpt,
              on_chunk=lambda d, t: (_ for _ in ()).throw(_Stop()), **SUMMARY)
    assert main(_cli_args(out)) == 2  # a checkpoint exists: refuse without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(_cli_args(out, "--resume")) == 0
    import xarray as xr

    with xr.open_dataset(out, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["n_valid"].values, summary_ref["n_valid"].values)
    assert main(_cli_args(tmp_path / "x.nc", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(_cli_args(tmp_path / "x.txt")) == 2
    assert main(_cli_args(tmp_path / "nope" / "x.nc")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2


def test_sweeps_of_disjoint_trial_ranges_combine(summary_ref):
    """The multi-host recipe: hosts sweep disjoint, block-aligned trial ranges and add."""
    from llmnas_transfer.study.sweeps import combine

    a = sweep(8, num_trials=2 * BLOCK, chunk_size=BLOCK, devices=1, **SUMMARY)
    b = sweep(8, num_trials=R - 2 * BLOCK, trial_offset=2 * BLOCK, chunk_size=BLOCK,
              devices=1, **SUMMARY)
    c = combine([b, a])
    for v in ("n_valid", "trials_with_valid", "n_trials", "n_generated"):
        np.testing.assert_array_equal(c[v].values, summary_ref[v].values)
    for v in ("validity_rate", "validity_rate_se", "accuracy_mean", "accuracy_trial_se",
              "novelty_trial_mean", "state_sd"):
        np.testing.assert_allclose(c[v].values, summary_ref[v].values, rtol=1e-12)
    with pytest.raises(UserInputError, match="overlap"):
        combine([a, a])


@pytest.mark.parametrize("N", [40, 50])
def test_per_trial_values_do_not_depend_on_chunk_size(N):
    """The kernel's per-trial sums are the same bits for any number of trials per call
    (XLA's own reduction order may change with the lane count; ours does not)."""
    import jax.numpy as jnp

    from llmnas_transfer.sim import registry
    from llmnas_transfer.sim.candidates import simulate_chunk
    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    eff = d.effects(["cifar-10"], ["classification"])
    sids = jnp.array([registry.setting_id("cifar-10", "classification")], jnp.uint32)
    out = []
    for C in (64, 128):
        s, _ = simulate_chunk(jax.random.key(0), d.dynamics_params(), eff, sids,
                              jnp.arange(C, dtype=jnp.int32), num_iterations=2,
                              num_candidates=N, bins=5)
        out.append(jax.tree.map(lambda x: np.asarray(x)[:, :64], s))
    for a, b in zip(out[0], out[1], strict=True):
        np.testing.assert_array_equal(a, b)
