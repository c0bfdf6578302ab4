"""The ``cmkdtool`` command: joins the subcommands, turns errors into one line and an exit status."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cmkdtool import __version__
from cmkdtool.cli import bottleneck, distill, extract, pretrain, salience, spectrum, synth
from cmkdtool.cli import eval as eval_cmd
from cmkdtool.cli.common import guard

app = typer.Typer(
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cmkdtool`` console script."""
    app(args=argv, prog_name="cmkdtool")
