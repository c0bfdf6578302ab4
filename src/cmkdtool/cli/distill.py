"""``cmkdtool distill METHOD``: one subcommand per registered method, options from its dataclass.

The methods (and torch) are imported only when ``distill`` itself runs, so ``cmkdtool --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    SplitSeedOpt,
    SummaryGroup,
    check_output,
    end_processes,
    guard,
    is_main_process,
    mask_options,
    note,
    run_params,
    train_setup,
)
from cmkdtool.options import parse_split_ratio

PANEL_METHOD = "Method"
PANEL_STUDENT = "Student model"
PANEL_OPT = "Optimisation"


def _common_params() -> list:
    A = Annotated
    return [
        o.param(
            "tables",
            A[
                list[str],
                typer.Argument(help="Feature table(s) with the student's and teacher's columns, joined on id."),
            ],
        ),
        o.param(
            "teacher",
            A[
                str | None,
                typer.Option(
                    "--teacher",
                    "-t",
                    help="Teacher checkpoint (frozen; reads its own input columns). Required by "
                    "every method with a frozen teacher.",
                ),
            ],
            None,
        ),
        o.param(
            "input",
            A[list[str], typer.Option("--input", "-i", help="Student input column(s); repeat for a fusion student.")],
        ),
        o.param("output", A[str, typer.Option("--output", "-o", help="Student checkpoint to write (.safetensors).")]),
        o.param(
            "init",
            A[
                str | None,
                typer.Option(
                    help="Start the student from this checkpoint instead of from scratch.",
                    rich_help_panel=PANEL_STUDENT,
                ),
            ],
            None,
        ),
        o.param(
            "resume", A[bool, typer.Option(help="Continue an interrupted run from OUTPUT.state.safetensors.")], False
        ),
        o.param(
            "cache_teacher",
            A[
                bool,
                typer.Option(
                    "--cache-teacher/--no-cache-teacher",
                    help="Compute the frozen teacher's outputs once and keep them on the device.",
                ),
            ],
            True,
        ),
        o.param(
            "split_ratio",
            A[
                str | None,
                typer.Option(
                    help="train,val,test fractions for tables without a 'split' column [default: the teacher's]."
                ),
            ],
            None,
            check=parse_split_ratio,
        ),
        o.param("split_seed", SplitSeedOpt, None),
        *run_params(),
    ]


def _run(info, kw: dict) -> None:
    from cmkdtool.engine.state import state_path
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines.train import run_distill

    tables, teacher, output, quiet = kw["tables"], kw["teacher"], kw["output"], kw["quiet"]
    check_output(output, *tables, *([teacher] if teacher else []))
    params = o.build(info.params, kw)
    model = o.build(ModelOptions, kw)
    cfg, dev = train_setup(kw, processes=True)
    quiet = kw["quiet"]  # every process but rank 0 is quiet under torchrun
    trained = run_distill(
        info,
        tables,
        teacher,
        kw["input"],
        params=params,
        model=model,
        config=cfg,
        mask=mask_options(kw),
        init=kw["init"],
        cache_teacher=kw["cache_teacher"],
        split_ratio=kw["split_ratio"],
        split_seed=kw["split_seed"],
        device=dev,
        quiet=quiet,
        state_file=state_path(output),
        resume=kw["resume"],
    )
    if is_main_process():  # rank 0 alone writes under torchrun
        history = trained.save(output)
        note(f"wrote {output} ({trained.summary()}) and {history}", quiet)
    end_processes()


def method_command(info) -> typer.core.TyperCommand:
    """The click command of one registered method."""
    from cmkdtool.data.masks import MaskOptions
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.nn.specs import ModelOptions

    params = (
        _common_params()
        + o.dataclass_params(info.params, PANEL_METHOD)
        + o.dataclass_params(ModelOptions, PANEL_STUDENT)
        + o.dataclass_params(TrainConfig, PANEL_OPT)
        + o.dataclass_params(MaskOptions, "Teacher channel mask")
    )
    taught = (
        "taught by the frozen --teacher checkpoint (with any mask it carries; --mask adds one for this run)"
        if getattr(info.cls, "needs_teacher", True)
        else "with a teacher trained alongside it (no --teacher)"
    )
    doc = (
        f"{info.summary}\n\nTrains a student on --input columns of TABLES, {taught}. "
        f"Writes OUTPUT, OUTPUT.history.jsonl and OUTPUT.state.safetensors (for --resume). "
        f"Equations, defaults and deviations: docs/methods.md#{info.name}."
    )
    cmd = o.make_command(lambda kw: _run(info, kw), params, doc)
    t = typer.Typer(rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    t.command(info.name, no_args_is_help=True, short_help=info.summary)(guard(cmd))
    t.command("_unused", hidden=True)(lambda: None)  # keep typer from collapsing a one-command app
    return typer.main.get_command(t).get_command(None, info.name)


class DistillGroup(SummaryGroup):
    """A group whose subcommands come from the method registry, loaded on first use."""

    def list_commands(self, ctx) -> list[str]:
        from cmkdtool.methods.registry import methods

        return list(methods())

    def get_command(self, ctx, name: str):
        from cmkdtool.methods.registry import methods

        info = methods().get(name)
        return None if info is None else method_command(info)


app = typer.Typer(
    cls=DistillGroup,
    help=(
        "Distil a teacher (frozen, or trained alongside as in amid) into a student with a registered method "
        "(see `cmkdtool distill METHOD --help`)."
    ),
    no_args_is_help=True,
)
