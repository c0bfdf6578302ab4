"""Atomic output: write to a temporary file in the destination folder, then rename into place.

An interrupted command never leaves a truncated file and never damages an existing one. The result has the
permissions a plain ``open(path, "w")`` would give it: those of the file it replaces, else 0o666 minus umask
(``tempfile.mkstemp`` alone would leave every output readable by its owner only).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from cmkdtool.errors import CmkdError


def _create_temp(folder: Path, name: str) -> Path:
    """A new empty file beside the destination, created with mode 0o666 so that the umask applies."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file in {folder}")


def check_output_path(path: str | os.PathLike) -> None:
    """Fail early (before any work) when ``path`` cannot be an output file: a folder, or below a file."""
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise CmkdError(f"{path}: is a folder; give a file name for the output")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CmkdError(f"{path}: {existing} is a file, not a folder; choose another output path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed.

    A symbolic link is followed (its target is replaced, the link stays). A path that exists but is not a
    regular file (``/dev/null``, a named pipe) cannot be renamed over: it is written directly.
    """
    check_output_path(path)
    dest = Path(os.path.realpath(path))
    if dest.exists() and not dest.is_file():
        yield dest
        return
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp(folder, dest.name)
    except OSError as e:  # a read-only or full disk, no permission
        raise CmkdError(f"{path}: cannot write here ({e.strerror or e}); choose another output path") from e
    try:
        yield tmp_path
        with contextlib.suppress(OSError):  # keep the mode of a file being replaced, else 0666 minus umask
            mode = stat.S_IMODE(os.stat(dest).st_mode) if dest.exists() else 0o666 & ~_umask()
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
