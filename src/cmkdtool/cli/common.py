"""Options and helpers shared by the subcommands. Nothing heavy is imported here."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Annotated

import typer

from cmkdtool.errors import CmkdError, CmkdUsageError

DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        envvar="CMKDTOOL_DEVICE",
        help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N. A device that is missing is an error.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", envvar="CMKDTOOL_SEED", help="Random seed (initialisation, batches).")]
PrecisionOpt = Annotated[
    str,
    typer.Option("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16 (CUDA only)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.")]
SplitRatioOpt = Annotated[
    str,
    typer.Option(
        "--split-ratio",
        help="train,val,test fractions used only when a table has no 'split' column (rows are assigned by "
        "hashing their id with --split-seed, so every command agrees).",
    ),
]
SplitSeedOpt = Annotated[int, typer.Option("--split-seed", help="Seed of the id-hash split (see --split-ratio).")]


def note(msg: str, quiet: bool = False) -> None:
    """A message for the person at the terminal: stderr, never stdout."""
    if not quiet:
        print(msg, file=sys.stderr)


def command_line() -> str:
    return shlex.join(["cmkdtool", *sys.argv[1:]])


def parse_ints(text: str, what: str) -> list[int]:
    text = (text or "").strip()
    if not text:
        return []
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise CmkdUsageError(f"{what} must be comma-separated integers like 256,128; got '{text}'") from e


def parse_floats(text: str, what: str, n: int | None = None) -> list[float]:
    try:
        vals = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise CmkdUsageError(f"{what} must be comma-separated numbers; got '{text}'") from e
    if n is not None and len(vals) != n:
        raise CmkdUsageError(f"{what} needs {n} comma-separated numbers; got '{text}'")
    return vals


def parse_batch_size(text: str) -> int | None:
    if text.strip().lower() == "full":
        return None
    try:
        v = int(text)
    except ValueError as e:
        raise CmkdUsageError(f"--batch-size must be a positive integer or 'full'; got '{text}'") from e
    if v < 1:
        raise CmkdUsageError(f"--batch-size must be a positive integer or 'full'; got '{text}'")
    return v


def check_output(path: str, *inputs: str, stream_ok: bool = False) -> None:
    """Refuse to overwrite an input with an output, a folder as output, and '-' where no stream is possible."""
    if path == "-":
        if not stream_ok:
            raise CmkdUsageError("this output cannot go to stdout ('-'); give a file name")
        return
    out = os.path.realpath(path)
    for p in inputs:
        if p != "-" and os.path.exists(p) and os.path.realpath(p) == out:
            raise CmkdUsageError(f"output {path} is also an input; write to another file")
    if os.path.isdir(path):
        raise CmkdError(f"{path}: is a folder; give a file name for the output")
    from cmkdtool.io.atomic import check_output_path

    check_output_path(path)


def debug_enabled() -> bool:
    return os.environ.get("CMKDTOOL_DEBUG", "").strip() not in ("", "0", "false", "no")


def guard(func):
    """Wrap a command: CmkdError -> one line on stderr and its exit status (no traceback unless debugging)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CmkdError as e:
            if debug_enabled():
                raise
            print(f"cmkdtool: error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # disk full, permission denied, read-only folder
            if debug_enabled():
                raise
            where = f"{e.filename}: " if e.filename else ""
            print(f"cmkdtool: error: {where}{e.strerror or e}; check the path and free space", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print("cmkdtool: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper
