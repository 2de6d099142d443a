"""The persistent compilation cache: where it lives, how to turn it off."""

import jax
import pytest

from llmnas_transfer import cache


def test_cache_folder_follows_xdg_and_the_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_folder() == tmp_path / "xdg" / "llmnas-transfer" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_folder() == tmp_path / "home" / ".cache" / "llmnas-transfer" / "jax"
    for off in ("off", "OFF", "0", "false"):
        monkeypatch.setenv(cache.ENV_VAR, off)
        assert cache.cache_folder() is None
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "mine"))
    assert cache.cache_folder() == tmp_path / "mine"


@pytest.fixture
def restore_cache_dir():
    old = jax.config.jax_compilation_cache_dir
    old_max = jax.config.jax_compilation_cache_max_size
    yield
    jax.config.update("jax_compilation_cache_dir", old)
    jax.config.update("jax_compilation_cache_max_size", old_max)


def test_enable_sets_jax_and_creates_the_folder(monkeypatch, tmp_path, restore_cache_dir):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "c"))
    assert cache.enable_compilation_cache() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    # bounded, so JAX locks each entry's read and write (parallel processes never load a
    # half-written program); the lock needs filelock, a dependency
    assert jax.config.jax_compilation_cache_max_size == cache.MAX_BYTES > 0


def test_bounded_cache_locks_reads_and_writes(tmp_path):
    from jax._src.lru_cache import LRUCache

    c = LRUCache(str(tmp_path / "c"), max_size=cache.MAX_BYTES)
    assert c.eviction_enabled
    c.put("k", b"program")
    assert c.get("k") == b"program" and (tmp_path / "c" / ".lockfile").exists()


def test_unusable_folder_or_off_leaves_the_cache_alone(monkeypatch, tmp_path,
                                                       restore_cache_dir):
    before = jax.config.jax_compilation_cache_dir
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "file" / "sub"))
    assert cache.enable_compilation_cache() is None
    monkeypatch.setenv(cache.ENV_VAR, "off")
    assert cache.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_small_programs_get_a_disk_entry(tmp_path):
    """A program that compiles in milliseconds is kept too (``MIN_COMPILE_SECONDS`` is 0):
    a fit's many small programs otherwise recompile in every process. A fresh process,
    since JAX sets its cache up once, at the first compilation."""
    import os
    import subprocess
    import sys

    code = ("import jax, jax.numpy as jnp\n"
            "from llmnas_transfer import cache\n"
            "assert cache.enable_compilation_cache() is not None\n"
            "jax.jit(lambda x: jnp.sin(x) + 1.0)(jnp.ones(3)).block_until_ready()\n")
    env = {**os.environ, cache.ENV_VAR: str(tmp_path / "c"), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    entries = [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith("-cache")]
    assert any(name.startswith("jit__lambda") for name in entries), entries


def _mappings() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def test_release_compiled_empties_the_registered_caches_and_jax(monkeypatch):
    import gc
    import os

    import jax.numpy as jnp

    emptied = []
    monkeypatch.setattr(cache, "_PROGRAM_CACHES", [])
    cache.register_program_cache(lambda: emptied.append(True))
    if not os.path.exists("/proc/self/maps"):
        cache.release_compiled()
        assert emptied == [True]
        return
    before = _mappings()
    fns = [jax.jit(lambda x, i=i: jnp.sin(x) * i) for i in range(60)]
    for i, f in enumerate(fns):
        f(jnp.ones(i + 1)).block_until_ready()
    grown = _mappings() - before
    assert grown > 60  # every compiled program maps memory of its own
    del fns
    cache.release_compiled()
    gc.collect()
    assert emptied == [True]
    # JAX's caches held the programs: freeing them gives back most of their mappings
    assert _mappings() - before < grown / 2
