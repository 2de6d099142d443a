"""The one atomic writer: temporary files beside the target, renamed into place on success.

Every file the package writes goes through :func:`atomic_paths` (or its one-file forms
:func:`atomic_write` and :func:`atomic_write_text`). Temporary names are unique
(:func:`tempfile.mkstemp`), so two processes writing at once never collide, and a failed
write leaves the target untouched and no partial file behind. :func:`check_writable`
checks an output path before any work starts.

Example
-------
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
>>> atomic_write_text(out, "hello")
>>> out.read_text()
'hello'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from llmnas_transfer.errors import UserInputError


def check_writable(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be written (creating missing parent folders).

    Raises :class:`~llmnas_transfer.errors.UserInputError` when the path is a folder, a
    parent is a file, or the folder is not writable.

    Example
    -------
    >>> import tempfile, pathlib
    >>> check_writable(pathlib.Path(tempfile.mkdtemp()) / "new" / "run.nc").name
    'run.nc'
    """
    p = Path(path).expanduser()
    if p.exists() and p.is_dir():
        raise UserInputError(f"{p}: is a folder; give a file name such as {p / 'results.nc'}")
    parent = p.parent
    for anc in (parent, *parent.parents):
        if anc.exists():
            if not anc.is_dir():
                raise UserInputError(f"{p}: cannot write here, {anc} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{p}: cannot create folder {parent} ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{p}: folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserInputError(f"{p}: file exists and is not writable")
    probe_folder(parent, what=str(p))
    return p


def probe_folder(folder: Path, *, what: str | None = None) -> None:
    """Create and remove a temporary file in ``folder``; a failure is a user error.

    Example
    -------
    >>> import tempfile, pathlib
    >>> probe_folder(pathlib.Path(tempfile.mkdtemp()))
    """
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserInputError(
            f"{what or folder}: cannot write in {folder} ({exc.strerror or exc})"
        ) from None


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_paths(paths: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths next to ``paths``; rename them into place on success.

    On any error the temporary files are removed and the targets are left untouched.

    Example
    -------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_paths([out]) as (tmp,):
    ...     _ = tmp.write_text("hello")
    >>> out.read_text()
    'hello'
    """
    tmps: list[Path] = []
    current = paths[0] if paths else None
    try:
        for p in paths:
            current = p
            fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
            os.close(fd)
            tmps.append(Path(name))
        yield tmps
        mode = 0o666 & ~umask()
        for tmp, p in zip(tmps, paths, strict=True):
            current = p
            os.chmod(tmp, mode)  # mkstemp creates 0600; give the usual permissions
            os.replace(tmp, p)
    except BaseException as exc:
        for tmp in tmps:
            with suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, UserInputError):
            raise UserInputError(f"{current}: cannot write ({exc.strerror or exc})") from None
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a unique temporary path, then rename it to ``path``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "b.txt"
    >>> atomic_write(out, lambda tmp: tmp.write_text("hi"))
    >>> out.read_text()
    'hi'
    """
    with atomic_paths([Path(path)]) as (tmp,):
        write(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
