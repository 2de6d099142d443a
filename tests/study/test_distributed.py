"""Multi-process sweeps and plans with jax.distributed on loopback: same bytes as one
process, resume after a killed process, a one-line error for an unreachable coordinator,
option checks."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from llmnas_transfer.cli import main
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study.distributed import DistributedOptions, resolve_options

LIMIT_S = 240  # bound on every launched process
CLI = "import sys; from llmnas_transfer.cli import main; sys.exit(main())"
GRID = ["--datasets", "cifar-10", "--tasks", "classification", "--iterations", "2",
        "--candidates", "300", "--bins", "0", "--path", "summary", "--seed", "5",
        "--no-progress"]
#: a small plan in 3 chunks of studies (512 studies each, the last one padded): with 2
#: processes, the second round leaves process 1 a padding chunk whose results are dropped
PLAN = ["--compare", "stl-10:classification", "--trials", "4,32", "--iterations", "4",
        "--candidates", "10", "--studies", "1100", "--component", "validity",
        "--method", "final", "--width", "0.2", "--seed", "3", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                "SLURM_", "OMPI_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", PYTHONUNBUFFERED="1")
    return env


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _launch(out, trials: int, chunk: int, *extra: str) -> subprocess.Popen:
    return _start(["sweep", "--out", str(out), "--trials", str(trials), "--chunk-size",
                   str(chunk), *GRID, *extra])


def _processes(coord: str, n: int, i: int) -> list[str]:
    return ["--coordinator", coord, "--num-processes", str(n), "--process-id", str(i),
            "--coordinator-timeout", "60"]


def _finish(p: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"process did not end within {LIMIT_S} s: {err[-2000:]}")
    return p.returncode, out, err


def _pair(out, trials: int, chunk: int, *extra: str) -> list[subprocess.Popen]:
    coord = f"127.0.0.1:{_free_port()}"
    return [_launch(out, trials, chunk, *_processes(coord, 2, i), *extra) for i in range(2)]


def test_two_processes_write_the_bytes_of_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    procs = [_launch(one / "s.nc", 300, 128)] + _pair(two / "s.nc", 300, 128)
    results = [_finish(p) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert (one / "s.nc").read_bytes() == (two / "s.nc").read_bytes()
    assert sorted(os.listdir(two)) == ["s.nc"]  # process 1 wrote nothing; checkpoint removed
    assert "process 1 of 2: done" in results[2][1]


def test_two_process_plan_writes_the_bytes_of_one(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    coord = f"127.0.0.1:{_free_port()}"
    procs = [_start(["plan", *PLAN, "--out", str(two), *_processes(coord, 2, i)])
             for i in range(2)]
    assert main(["plan", *PLAN, "--out", str(one)]) == 0  # one process, one device
    alone = capsys.readouterr().out
    results = [_finish(p) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert (one / "plan.csv").read_bytes() == (two / "plan.csv").read_bytes()
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    # process 0 prints what one process prints; process 1 only says it is done
    own = [[ln.replace(str(d), "OUT") for ln in text.splitlines()
            if not ln.startswith("[Gloo]")]  # gloo's own connection message
           for d, text in ((one, alone), (two, results[0][1]), (two, results[1][1]))]
    assert own[0] == own[1]
    assert own[2] == ["process 1 of 2: done; process 0 writes OUT"]


def test_resume_after_a_killed_process_gives_the_same_bytes(tmp_path):
    trials, chunk = 64 * 400, 128  # 200 small chunks: the kill lands mid-run
    ref = _launch(tmp_path / "ref.nc", trials, chunk)
    out = tmp_path / "s.nc"
    ckpt = tmp_path / "s.nc.ckpt.npz"
    p0, p1 = _pair(out, trials, chunk)
    deadline = time.monotonic() + LIMIT_S
    while not ckpt.exists() and p1.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p1.kill()
    _finish(p1)
    t = time.monotonic()
    rc, _, err = _finish(p0)
    assert time.monotonic() - t < 120, "the surviving process must stop within its timeout"
    assert rc == 1, err[-3000:]
    last = [ln for ln in err.splitlines() if ln.startswith("llmnas-transfer")]
    assert last and "lost contact" in last[-1] and "--resume" in last[-1]
    assert not out.exists()
    with np.load(ckpt) as z:  # the last checkpoint is whole and marks an unfinished run
        meta = json.loads(str(z["meta"]))
    assert not meta["complete"] and 0 < meta["next_trial"] < trials
    rc, _, err = _finish(_launch(out, trials, chunk, "--resume"))  # one process now
    assert rc == 0, err[-3000:]
    assert _finish(ref)[0] == 0
    assert out.read_bytes() == (tmp_path / "ref.nc").read_bytes()
    assert not ckpt.exists()


PY_SWEEP = """
import sys, numpy as np
from llmnas_transfer.study.sweeps import sweep
ds = sweep(3, num_trials=200, chunk_size=128, datasets="cifar-10", tasks="classification",
           num_iterations=2, num_candidates=300, bins=0, path="summary",
           coordinator=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
np.savez(sys.argv[3] + sys.argv[2] + ".npz", **{v: ds[v].values for v in ds.data_vars})
"""


def test_python_api_every_process_gets_the_one_process_result(tmp_path):
    from llmnas_transfer.study.sweeps import sweep

    coord = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", PY_SWEEP, coord, str(i),
                               str(tmp_path / "p")], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        rc, _, err = _finish(p)
        assert rc == 0, err[-3000:]
    ref = sweep(3, num_trials=200, chunk_size=64, datasets="cifar-10", tasks="classification",
                num_iterations=2, num_candidates=300, bins=0, path="summary", devices=1)
    for i in range(2):
        with np.load(tmp_path / f"p{i}.npz") as z:
            assert set(z.files) == set(ref.data_vars)
            for v in z.files:
                np.testing.assert_array_equal(z[v], ref[v].values, err_msg=v)


@pytest.mark.parametrize("command", ["sweep", "plan"])
def test_unreachable_coordinator_is_a_one_line_error_within_the_timeout(tmp_path, command):
    t = time.monotonic()
    dist = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
            "--process-id", "1", "--coordinator-timeout", "3"]
    p = (_launch(tmp_path / "s.nc", 64, 64, *dist) if command == "sweep"
         else _start(["plan", *PLAN, "--out", str(tmp_path / "plan"), *dist]))
    rc, _, err = _finish(p)
    elapsed = time.monotonic() - t
    assert rc == 2
    assert err.count("\n") == 1 and "cannot reach the coordinator" in err, err
    assert 3 <= elapsed < 3 + 30  # the timeout, plus interpreter start-up on a busy machine


@pytest.mark.parametrize("extra,match", [
    (["--coordinator", "h:1", "--num-processes", "2"], "all three or none"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "process_id"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "num-processes"),
])
@pytest.mark.parametrize("command", ["sweep", "plan"])
def test_cli_checks_the_process_options_first(tmp_path, capsys, extra, match, command):
    argv = (["sweep", "--out", str(tmp_path / "s.nc"), *GRID] if command == "sweep"
            else ["plan", "--out", str(tmp_path / "plan"), *PLAN])
    try:  # argparse's own checks exit; the library's return the status
        rc = main([*argv, *extra])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_options_come_from_arguments_then_environment_then_detection():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:99", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert resolve_options(environ=env) == DistributedOptions("10.0.0.1:99", 4, 3)
    assert resolve_options("h:1", 2, 0, environ=env) == DistributedOptions("h:1", 2, 0)
    assert resolve_options(environ={}, detect=lambda: True).auto
    assert not resolve_options(environ={}, detect=lambda: False).active
    with pytest.raises(UserInputError, match="JAX_PROCESS_ID"):
        resolve_options(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(UserInputError, match="must be an integer"):
        resolve_options(environ={**env, "JAX_PROCESS_ID": "x"})
    with pytest.raises(UserInputError, match="timeout_s"):
        resolve_options(environ={}, timeout_s=0)
