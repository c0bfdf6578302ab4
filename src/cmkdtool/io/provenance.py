"""Where a file came from: the one provenance header every output of cmkdtool carries.

``provenance(command, data=tables, ...)`` is ``{"tool": "cmkdtool", "version": ..., "command": ..., <role>:
[{"path", "sha256"}, ...]}``: the tool and version that wrote the file, the command line, and the sha256 of every
input file by role. Checkpoints (``cmkdtool.train``), salience and spectrum tables, predictions, synth and
extract tables all start their metadata with it.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

_COMMAND: list[str | None] = [None]


def set_command(argv: Sequence[str] | None) -> None:
    """Record the command line of this process (the CLI does, with its arguments); None forgets it."""
    _COMMAND[0] = None if argv is None else shlex.join(["cmkdtool", *argv])


def command_line() -> str:
    """The recorded cmkdtool command line, else this Python process's own (``python script.py args``)."""
    if _COMMAND[0] is not None:
        return _COMMAND[0]
    return shlex.join([os.path.basename(sys.executable) or "python", *sys.argv])


def file_record(path: str | os.PathLike, **extra) -> dict:
    """``{"path", "sha256", **extra}`` of one input file (``-``, a stream: no digest)."""
    from cmkdtool.io.tables import file_sha256

    p = str(path)
    return {"path": p, "sha256": None if p == "-" else file_sha256(p), **extra}


def provenance(command: str | None = None, **inputs: str | os.PathLike | Sequence[str] | None) -> dict:
    """The provenance header: tool, version, command line (default: :func:`command_line`) and, per role, the
    path and sha256 of each input file (a sequence of paths gives a list; None leaves the role out)."""
    from cmkdtool import __version__

    out: dict = {"tool": "cmkdtool", "version": __version__, "command": command or command_line()}
    for role, files in inputs.items():
        if files is None:
            continue
        if isinstance(files, str | os.PathLike):
            out[role] = file_record(files)
        else:
            out[role] = [file_record(f) for f in files]
    return out


__all__ = ["command_line", "file_record", "provenance", "set_command"]
