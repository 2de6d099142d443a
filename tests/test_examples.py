"""Every ``examples/*.py`` runs with tiny arguments.

Convention for examples (all helpers): each script accepts ``--quick`` (tiny sizes that
finish in well under a minute) and ``--out DIR`` (the only place it writes), and exits 0.
New examples are discovered automatically.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"reproduce_study.py", "custom_grid.py"} <= names


#: examples whose --quick run still fits NUTS for minutes on 2 cores: run with -m slow
HEAVY = {"fit_paper_counts", "plan_vs_nuts", "trend_transfer_check"}


@pytest.mark.parametrize("script", [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p for p in EXAMPLES
], ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick(script, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    p = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert p.returncode == 0, f"{script.name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert "Traceback" not in p.stderr
    # it wrote only under --out (cwd is tmp_path, so stray files would show up there)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
    assert any(f.is_file() and f.stat().st_size > 0 for f in out.rglob("*"))
