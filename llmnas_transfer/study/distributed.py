"""Multi-process set-up with ``jax.distributed``: options, environment, start-up checks, agreement.

A run over several processes (one per host, or several on one host) is started by calling
:func:`initialize` in every process before JAX starts its backend. The settings come from,
in order: the arguments (``--coordinator``, ``--num-processes``, ``--process-id``), the
standard environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``, and JAX's own cluster auto-detection (SLURM, Open MPI, Cloud TPU, and
Kubernetes with the ``kubernetes`` package), used only when such an environment is
detected. With none of these the run is a single process and nothing is initialised.

Failures are bounded in time:

* a process other than 0 that cannot reach the coordinator within ``timeout_s`` stops with
  a one-line :class:`~llmnas_transfer.errors.UserInputError` (exit status 2 from the CLI);
* a coordinator port already in use on process 0 is the same kind of error, at once;
* a peer that dies mid-run makes the next collective fail (:class:`PeerLostError`); a peer
  that stops answering is declared dead by JAX's coordination service after ``timeout_s``
  without a heartbeat, which then ends the remaining processes.

Example
-------
>>> opts = resolve_options(environ={})
>>> opts.active, opts.num_processes
(False, 1)
>>> resolve_options("127.0.0.1:1234", 2, 1, environ={}).describe()
'process 1 of 2, coordinator 127.0.0.1:1234'
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.validate import check_int

if TYPE_CHECKING:
    import jax

#: seconds to wait for the coordinator (and, on process 0, for every process to register)
DEFAULT_TIMEOUT_S = 60
#: largest process count accepted
MAX_PROCESSES = 65536
#: environment variables read when the options are not given
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")

class PeerLostError(RuntimeError):
    """Another process of a multi-process run died or became unreachable mid-run."""


class DistributedOptions(NamedTuple):
    """How this process joins a multi-process run.

    ``coordinator`` is ``HOST:PORT`` of process 0; ``None`` with ``auto=True`` lets JAX
    detect the cluster (SLURM, Open MPI, TPU pods, Kubernetes). ``active`` is False for a
    single-process run.

    Example
    -------
    >>> DistributedOptions("10.0.0.1:1234", 4, 0).active
    True
    """

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    timeout_s: int = DEFAULT_TIMEOUT_S
    auto: bool = False

    @property
    def active(self) -> bool:
        """Whether :func:`initialize` will start ``jax.distributed``."""
        return self.auto or self.coordinator is not None

    def describe(self) -> str:
        """A short description for messages.

        Example
        -------
        >>> DistributedOptions().describe()
        'single process'
        """
        if self.auto:
            return "cluster auto-detected by JAX"
        if not self.active:
            return "single process"
        return f"process {self.process_id} of {self.num_processes}, coordinator {self.coordinator}"


def check_coordinator(address: str) -> str:
    """Check a ``HOST:PORT`` address (IPv6 hosts in brackets) and return it stripped.

    Example
    -------
    >>> check_coordinator(" node-0:1234 ")
    'node-0:1234'
    >>> check_coordinator("node-0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: coordinator must be HOST:PORT ... got 'node-0'
    """
    text = str(address).strip()
    host, sep, port = text.rpartition(":")
    host_ok = bool(host) and (not host.startswith("[") or host.endswith("]"))
    if not sep or not host_ok or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserInputError(f"coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {address!r}")
    return text


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise UserInputError(f"environment variable {name} must be an integer, got {value!r}") \
            from None


def cluster_detected() -> bool:
    """Whether JAX's cluster auto-detection recognises this environment (SLURM, Open MPI,
    Cloud TPU, Kubernetes); False when the JAX version offers no such check.

    Example
    -------
    >>> isinstance(cluster_detected(), bool)
    True
    """
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # pragma: no cover - layout of another JAX version
        return False
    try:
        return any(not env.opt_in_only_method and env.is_env_present()
                   for env in ClusterEnv._cluster_types)
    except Exception:  # noqa: BLE001 - a broken detector means "not detected"
        return False


def resolve_options(coordinator: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None, *, timeout_s: int = DEFAULT_TIMEOUT_S,
                    environ: Mapping[str, str] | None = None,
                    detect: Callable[[], bool] = cluster_detected) -> DistributedOptions:
    """The run's :class:`DistributedOptions` from arguments, then environment, then JAX's
    cluster detection.

    The three arguments go together: all or none. Missing ones are read from
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; if none of
    those is set either, ``detect()`` decides between JAX's auto-detection and a single
    process. Every value is checked here, before any work.

    Example
    -------
    >>> resolve_options(environ={"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2",
    ...                          "JAX_PROCESS_ID": "1"}).process_id
    1
    >>> resolve_options("h:9", 2, None, environ={})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: ... go together: ... (missing: --process-id)
    """
    env = os.environ if environ is None else environ
    timeout = check_int("timeout_s", timeout_s, 1, 86400)
    given = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    source = "option"
    if all(v is None for v in given.values()):
        given = {"--coordinator": env.get(ENV_COORDINATOR) or None,
                 "--num-processes": _env_int(env, ENV_NUM_PROCESSES),
                 "--process-id": _env_int(env, ENV_PROCESS_ID)}
        source = "environment"
        if all(v is None for v in given.values()):
            return DistributedOptions(timeout_s=timeout, auto=bool(detect()))
    missing = [k for k, v in given.items() if v is None]
    if missing:
        names = {"--coordinator": ENV_COORDINATOR, "--num-processes": ENV_NUM_PROCESSES,
                 "--process-id": ENV_PROCESS_ID}
        if source == "environment":
            raise UserInputError(
                f"{', '.join(names.values())} go together: set all three or none "
                f"(missing: {', '.join(names[k] for k in missing)})")
        raise UserInputError("--coordinator, --num-processes and --process-id go together: "
                             f"give all three or none (missing: {', '.join(missing)})")
    n = check_int("num_processes", given["--num-processes"], 1, MAX_PROCESSES)
    i = check_int("process_id", given["--process-id"], 0, n - 1)
    return DistributedOptions(check_coordinator(given["--coordinator"]), n, i, timeout)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Try TCP connections to ``address`` until one succeeds or ``timeout_s`` passes.

    Raises :class:`~llmnas_transfer.errors.UserInputError` (one line) when it never
    answers: JAX itself would end the process with a C++ abort instead.

    Example
    -------
    >>> wait_for_coordinator("127.0.0.1:1", 0.2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: cannot reach the coordinator 127.0.0.1:1 within 0.2 s ...
    """
    host, port = _split(address)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(left, 2.0), 0.05)):
                return
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise UserInputError(
                f"cannot reach the coordinator {address} within {timeout_s:g} s ({last}); "
                "start process 0 first, check HOST:PORT and the firewall, or raise the "
                "timeout")
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))


def _check_port_free(address: str) -> None:
    _, port = _split(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserInputError(
                    f"coordinator port {port} is already in use on this host (process 0 "
                    "binds it); choose another port") from None


def initialize(options: DistributedOptions) -> bool:
    """Start ``jax.distributed`` for ``options``; returns whether it was started.

    Must run before JAX starts its backend (before any array is made). Sets
    ``jax_cpu_collectives_implementation="gloo"`` so that CPU devices of different
    processes can exchange data. Calling it again in a process where ``jax.distributed``
    is already running is a no-op when the process count and id agree.

    Example
    -------
    >>> initialize(DistributedOptions())  # single process: nothing to start
    False
    """
    if not options.active:
        return False
    import jax
    from jax._src import distributed as jdist
    from jax._src import xla_bridge

    if jax.distributed.is_initialized():
        state = jdist.global_state
        if options.auto or (state.num_processes == options.num_processes
                            and state.process_id == options.process_id):
            return True
        raise UserInputError(
            f"jax.distributed already runs as process {state.process_id} of "
            f"{state.num_processes}; cannot join as {options.describe()}")
    if xla_bridge.backends_are_initialized():
        raise UserInputError(
            "the multi-process options must be applied before JAX starts: call "
            "llmnas_transfer.study.distributed.initialize (or pass them to the first JAX "
            "work of the process)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = dict(initialization_timeout=int(options.timeout_s),
                    heartbeat_timeout_seconds=int(options.timeout_s),
                    shutdown_timeout_seconds=int(options.timeout_s))
    if options.auto:
        try:
            jax.distributed.initialize(**timeouts)
        except (ValueError, RuntimeError) as exc:
            raise UserInputError(f"JAX's cluster auto-detection failed: {exc}") from None
        return True
    if options.num_processes > 1:
        if options.process_id == 0:
            _check_port_free(options.coordinator)
        else:
            wait_for_coordinator(options.coordinator, options.timeout_s)
    jax.distributed.initialize(coordinator_address=options.coordinator,
                               num_processes=options.num_processes,
                               process_id=options.process_id, **timeouts)
    return True


def is_primary() -> bool:
    """Whether this is process 0, the one that writes outputs and checkpoints.

    Example
    -------
    >>> is_primary()
    True
    """
    import jax

    return jax.process_index() == 0


def global_array(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``x``, a host array with the same value on every process, as a global ``jax.Array``
    with ``sharding`` (over the devices of all processes); each process fills only the
    shards of its own devices. Works the same with one process.

    Example
    -------
    >>> import jax, numpy as np
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec
    >>> mesh = Mesh(np.array(jax.devices()), ("trials",))
    >>> a = global_array(np.arange(4.0), NamedSharding(mesh, PartitionSpec()))
    >>> a.shape, a.is_fully_replicated
    ((4,), True)
    """
    import jax
    import numpy as np

    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


_REPLICATORS: dict[tuple, Any] = {}


def gather_rows(parts: Sequence[Any], devices: Sequence[jax.Device]) -> Any:
    """Concatenate, on every process, one pytree of arrays per device of ``devices``
    along their leading axis, in the order of ``devices`` (the devices of every
    process). Each process passes the parts of its own devices (each part committed to
    its device, every part of the same shapes); the result is a pytree of global
    ``jax.Array`` values, fully replicated, that ``numpy.asarray`` reads on any process.

    The collective only copies data: the values keep their bits. With one process no
    collective runs.

    Example
    -------
    >>> import jax, numpy as np
    >>> devs = jax.local_devices()
    >>> parts = [jax.device_put(np.full(2, i), d) for i, d in enumerate(devs)]
    >>> rows = np.asarray(gather_rows(parts, devs)).tolist()  # [0, 0, 1, 1, ...]
    >>> rows == [i for i in range(len(devs)) for _ in range(2)]
    True
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = tuple(devices)
    mesh = Mesh(np.array(devices), ("rows",))
    sharding = NamedSharding(mesh, PartitionSpec("rows"))

    def concat(*leaves):
        shape = (len(devices) * leaves[0].shape[0], *leaves[0].shape[1:])
        return jax.make_array_from_single_device_arrays(shape, sharding, list(leaves))

    out = jax.tree.map(concat, *parts)
    if jax.process_count() == 1:
        return out
    if devices not in _REPLICATORS:
        _REPLICATORS[devices] = jax.jit(lambda x: x,
                                        out_shardings=NamedSharding(mesh, PartitionSpec()))
    return _REPLICATORS[devices](out)


def agree[T](fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on process 0 only and share whether it raised a
    :class:`~llmnas_transfer.errors.UserInputError`: every process then raises (process 0
    its own message, the others a pointer to it), so no process waits for a peer that
    stopped. Returns ``fn()`` on process 0, ``None`` elsewhere.

    Use it for checks of files that only process 0 reads or writes.

    Example
    -------
    >>> agree(lambda: 3)
    3
    """
    import jax

    if jax.process_count() == 1:
        return fn()
    import numpy as np
    from jax.experimental.multihost_utils import broadcast_one_to_all

    error, result = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except UserInputError as exc:
            error = exc
    flag = broadcast_one_to_all(np.array([error is not None], np.int32))
    if error is not None:
        raise error
    if int(flag[0]):
        raise UserInputError("process 0 stopped with an error (see its message); stopping too")
    return result


def agree_all[T](fn: Callable[[], T]) -> T:
    """Run ``fn`` on every process and share whether it raised a
    :class:`~llmnas_transfer.errors.UserInputError` anywhere: then every process raises
    (a process that failed its own message, the others a pointer to the first process
    that failed), so no process waits for a peer that stopped. Returns ``fn()``.

    Use it for checks that every process makes on its own, such as reading an input file
    that each process needs (a file missing on one host stops them all).

    Example
    -------
    >>> agree_all(lambda: 3)
    3
    """
    import jax

    if jax.process_count() == 1:
        return fn()
    import numpy as np
    from jax.experimental.multihost_utils import process_allgather

    error, result = None, None
    try:
        result = fn()
    except UserInputError as exc:
        error = exc
    flags = np.asarray(process_allgather(np.array([error is not None], np.int32))).ravel()
    if error is not None:
        raise error
    if flags.any():
        first = int(np.flatnonzero(flags)[0])
        raise UserInputError(f"process {first} stopped with an error (see its message); "
                             "stopping too")
    return result


def peer_lost(exc: BaseException) -> PeerLostError:
    """The :class:`PeerLostError` for a collective that failed with ``exc``: one line that
    names this process and the first line of JAX's message.

    Example
    -------
    >>> str(peer_lost(RuntimeError("gloo: connection closed by peer\\nmore")))
    'process 0 of 1 lost contact with another process (gloo: connection closed by peer)'
    """
    import jax

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return PeerLostError(f"process {jax.process_index()} of {jax.process_count()} lost "
                         f"contact with another process ({first[:300]})")


def exit_now(code: int) -> None:
    """Flush the standard streams and end the process at once with ``code``.

    For a process whose peer died: JAX's shutdown at exit would otherwise wait for the
    dead peer and then abort.

    Example
    -------
    >>> callable(exit_now)
    True
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
