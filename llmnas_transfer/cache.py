"""JAX's persistent compilation cache for the package's commands (on by default).

Compiled programs (the NUTS sampler, the simulator kernels, the Laplace start) are kept
on disk under ``$XDG_CACHE_HOME/llmnas-transfer/jax`` (``~/.cache/llmnas-transfer/jax``
when ``XDG_CACHE_HOME`` is unset), so a second run of the same shapes loads them instead
of compiling again. ``LLMNAS_TRANSFER_CACHE=off`` disables it; any other value of
``LLMNAS_TRANSFER_CACHE`` names the folder to use instead.

The cache is bounded (:data:`MAX_BYTES`, least recently used entries go first). The bound
also makes JAX take a file lock around every read and write of an entry: JAX writes an
entry in place, so without the lock a process that reads it while another one writes it
(test workers, parallel fits, the processes of a sweep) can load a partial program and
crash. A process killed mid-write can still leave a damaged entry: delete the folder if
a command crashes inside JAX's cache reader.

Compiled programs also live in the process: JAX keeps every one it built, and so do the
package's own program caches. Each XLA CPU executable holds memory mappings of its own,
and a process that builds thousands of them (a long notebook session, a test run) can pass
the kernel's limit on mappings (``vm.max_map_count``, 65530 by default on Linux) and
crash in the next compile. :func:`release_compiled` frees them all.

Example
-------
>>> cache_folder().name
'jax'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: the ``clear`` functions of the package's in-process program caches (see
#: :func:`register_program_cache`)
_PROGRAM_CACHES: list[Callable[[], None]] = []

ENV_VAR = "LLMNAS_TRANSFER_CACHE"
#: programs that compile faster than this get no disk entry (seconds). 0 keeps them all:
#: a fit's hundreds of small programs (NumPyro's eager model trace, random draws, the
#: start's reshaping) otherwise recompile in every process, about 12 s a CLI fit
MIN_COMPILE_SECONDS = 0.0
#: size bound of the cache folder (bytes); setting one turns on JAX's file lock
MAX_BYTES = 4 * 2**30


def cache_folder() -> Path | None:
    """The cache folder the environment asks for, or ``None`` when it is turned off.

    Example
    -------
    >>> import os
    >>> os.environ["LLMNAS_TRANSFER_CACHE"] = "/tmp/llmnas-cache"
    >>> str(cache_folder())
    '/tmp/llmnas-cache'
    >>> del os.environ["LLMNAS_TRANSFER_CACHE"]
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value and value.lower() not in ("on", "1", "true", "yes"):
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "llmnas-transfer" / "jax"


def enable_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at :func:`cache_folder`; return it.

    Creates the folder. A folder that cannot be created or written leaves the cache off
    (compiling costs time, never a result), and so does ``LLMNAS_TRANSFER_CACHE=off``.
    Needs no JAX backend: call it before the first compilation.

    Example
    -------
    >>> import os
    >>> os.environ["LLMNAS_TRANSFER_CACHE"] = "off"
    >>> enable_compilation_cache() is None
    True
    >>> del os.environ["LLMNAS_TRANSFER_CACHE"]
    """
    folder = cache_folder()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            return None
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder


def register_program_cache(clear: Callable[[], None]) -> Callable[[], None]:
    """Record ``clear``, the function that empties one in-process cache of compiled
    programs, so that :func:`release_compiled` empties it too. Returns ``clear``.

    Example
    -------
    >>> programs = {}
    >>> _ = register_program_cache(programs.clear)
    """
    _PROGRAM_CACHES.append(clear)
    return clear


def release_compiled() -> None:
    """Free the compiled programs this process holds: the package's program caches and
    JAX's own (:func:`jax.clear_caches`). The next call of each program compiles it again
    (or loads it from the persistent cache). Results do not change.

    Example
    -------
    >>> release_compiled()
    """
    for clear in _PROGRAM_CACHES:
        clear()
    import jax

    jax.clear_caches()
