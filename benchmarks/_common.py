"""Shared helpers for the benchmark scripts: versions, devices, timing, memory, JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """CPU model, core count, load average and memory of this machine."""
    model = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = int(fh.readline().split()[1]) / 2**20
    except OSError:
        pass
    return {"cpu": model, "nproc": os.cpu_count(), "loadavg": os.getloadavg(),
            "mem_gb": mem_gb, "python": platform.python_version(),
            "platform": platform.platform()}


def versions() -> dict:
    import jax
    import jaxlib
    import numpy as np

    out = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__}
    try:
        import llmnas_transfer

        out["llmnas_transfer"] = llmnas_transfer.__version__
    except ImportError:
        pass
    return out


def devices() -> list[str]:
    import jax

    return [str(d) for d in jax.devices()]


def header(name: str) -> dict:
    """Print and return versions, devices and the machine (every script starts with it)."""
    info = {"benchmark": name, "versions": versions(), "devices": devices(),
            "machine": machine()}
    print(f"# {name}")
    print(f"# versions: {info['versions']}")
    print(f"# devices: {info['devices']}")
    m = info["machine"]
    print(f"# machine: {m['cpu']}, {m['nproc']} cores, load {m['loadavg']}")
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mb() -> float | None:
    """Peak bytes in use on the default accelerator, if the backend reports it."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def time_call(fn: Callable[[], object], repeats: int) -> tuple[float, float, list[float]]:
    """``(first_s, best_s, all_s)``: the first call (compile included) and the minimum of
    ``repeats`` further calls, wall clock, each blocked until its results are ready."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, min(times), times


def write_json(path: str | os.PathLike, obj) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, p)


def run_python(script: Path, args: list[str], env: dict | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a benchmark script in a fresh process (so its peak memory is its own)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=timeout)
