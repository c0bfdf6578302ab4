"""The ``cmkdtool`` command: joins the subcommands, turns errors into one line and an exit status."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Annotated

import typer

from cmkdtool import __version__
from cmkdtool.cli import bottleneck, distill, extract, pretrain, salience, spectrum, synth, table
from cmkdtool.cli import eval as eval_cmd
from cmkdtool.cli.common import OneLineGroup, debug_enabled, guard

app = typer.Typer(
    cls=OneLineGroup,
    name="cmkdtool",
    help="Cross-modal knowledge distillation: composable commands over Parquet feature tables and "
    "safetensors checkpoints. Data goes to files or stdout; progress and notes go to stderr.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cmkdtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also CMKDTOOL_DEBUG=1).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if debug:  # for this command only (several commands may run in one process, e.g. in tests)
        old = os.environ.get("CMKDTOOL_DEBUG")
        os.environ["CMKDTOOL_DEBUG"] = "1"
        ctx.call_on_close(
            lambda: os.environ.pop("CMKDTOOL_DEBUG") if old is None else os.environ.update(CMKDTOOL_DEBUG=old)
        )


app.add_typer(synth.app, name="synth")
app.add_typer(extract.app, name="extract")
app.command("rank-salience", no_args_is_help=True)(guard(salience.rank_salience))
app.command("fit-bottleneck", no_args_is_help=True)(guard(bottleneck.fit_bottleneck_command()))
app.add_typer(distill.app, name="distill")
app.command("pretrain", no_args_is_help=True)(guard(pretrain.pretrain))
app.command("eval", no_args_is_help=True)(guard(eval_cmd.evaluate))
app.command("spectrum", no_args_is_help=True)(guard(spectrum.spectrum))
app.add_typer(table.app, name="table")


class _PipeClosed(BaseException):
    """The reader of stdout (or stderr) went away: ``cmkdtool ... | head``. A BaseException, so that neither
    a command's ``guard`` (which reports every OSError as an error line) nor click's handlers intercept it;
    ``finally`` blocks and the atomic writers still run and clean up on the way out."""


class _PipeIO(io.FileIO):
    """Raw writes to a standard stream; a closed pipe (EPIPE) becomes ``_PipeClosed``."""

    def write(self, b):
        try:
            return super().write(b)
        except BrokenPipeError:
            raise _PipeClosed from None


EXIT_PIPE = 141  # 128 + SIGPIPE: the status a shell shows for `yes | head -1`


def _guard_stream(name: str):
    """Rebuild ``sys.<name>`` over ``_PipeIO`` with the same encoding and buffering; return the old stream
    (None where it is not a real file, e.g. in-process test runners: then it is left alone)."""
    old = getattr(sys, name)
    try:
        fd = old.fileno()
        old.flush()
    except (AttributeError, OSError, ValueError):
        return None
    raw = _PipeIO(fd, "wb", closefd=False)
    buffered = isinstance(getattr(old, "buffer", None), io.BufferedIOBase)  # stderr's is the raw file
    text = io.TextIOWrapper(
        io.BufferedWriter(raw) if buffered else raw,
        encoding=getattr(old, "encoding", None) or "utf-8",
        errors=getattr(old, "errors", None) or "strict",
        line_buffering=getattr(old, "line_buffering", False),
        write_through=getattr(old, "write_through", False),
    )
    setattr(sys, name, text)
    return old


def _to_devnull(*streams) -> None:
    """Point the streams' file descriptors at /dev/null: what is still buffered can then be flushed
    (at interpreter exit too) without an error."""
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(null, stream.fileno())
    os.close(null)


def _write_failed(e: OSError, status):
    """stdout cannot be written (disk full): one error line, unless the command has already failed (and said
    so); what is still buffered is dropped. Returns the exit status."""
    _to_devnull(sys.stdout)
    if status not in (0, None):
        return status
    with contextlib.suppress(OSError):  # stderr on the same full disk
        print(
            f"cmkdtool: error: {e.filename or 'stdout'}: {e.strerror or e}; check where the output goes",
            file=sys.stderr,
        )
    return 1


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cmkdtool`` console script.

    A closed stdout or stderr pipe (``cmkdtool synth mfh -o - | head -c 100``) ends the command as it ends a
    Unix tool: at once, silently, exit status 141 (128 + SIGPIPE). SIGPIPE itself stays ignored (Python's
    default): SIG_DFL would also kill the process, without a word, when a network socket is reset (a model
    download in ``extract``), and a command writing to a closed pipe still runs its cleanup here.
    """
    old = {name: _guard_stream(name) for name in ("stdout", "stderr")}
    status = 0
    try:
        try:
            app(args=argv, prog_name="cmkdtool")
        except SystemExit as e:  # click always ends with one
            status = e.code
        except OSError as e:  # outside a command's guard: --help or --version written to a full disk
            if debug_enabled():
                raise
            status = _write_failed(e, 0)
        try:  # data still buffered must reach stdout (or fail) now, not in the flush at interpreter exit
            sys.stdout.flush()
        except OSError as e:
            status = _write_failed(e, status)
    except _PipeClosed:
        _to_devnull(sys.stdout, sys.stderr)
        status = EXIT_PIPE
    finally:
        for name, stream in old.items():
            if stream is not None:
                with contextlib.suppress(OSError, ValueError, _PipeClosed):
                    getattr(sys, name).flush()
                setattr(sys, name, stream)
    sys.exit(status)
