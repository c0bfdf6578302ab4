"""``cmkdtool pretrain``: train a teacher or a baseline student (unimodal or late fusion) on its labels.

Model and optimisation options come from ``ModelOptions`` and ``TrainConfig`` (engine/config.py), the same
dataclasses that ``distill`` uses, so both commands spell, default and record them identically.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    check_output,
    end_processes,
    is_main_process,
    mask_options,
    note,
    run_params,
    split_params,
    train_setup,
)
from cmkdtool.data.masks import MaskOptions
from cmkdtool.engine.config import TrainConfig
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.options import parse_split_ratio

A = Annotated


def _role(text: str) -> str:
    if text not in ("teacher", "student"):
        raise typer.BadParameter(f"must be teacher or student, not '{text}'")
    return text


PARAMS = [
    o.param(
        "tables", A[list[str], typer.Argument(help="Feature table(s), joined on id ('-': Arrow stream on stdin).")]
    ),
    o.param(
        "input",
        A[
            list[str],
            typer.Option(
                "--input", "-i", help="Input column; repeat for a late-fusion model (e.g. -i audio -i image)."
            ),
        ],
    ),
    o.param("output", A[str, typer.Option("--output", "-o", help="Output checkpoint (.safetensors).")]),
    o.param(
        "role",
        A[str, typer.Option(help="Recorded role: teacher or student.", rich_help_panel="Model", parser=_role)],
        "teacher",
    ),
    o.param("resume", A[bool, typer.Option(help="Continue an interrupted run from OUTPUT.state.safetensors.")], False),
    *split_params(),
    *run_params(),
    *o.dataclass_params(ModelOptions, "Model"),
    *o.dataclass_params(TrainConfig, "Optimisation"),
    *o.dataclass_params(MaskOptions, "Channel mask"),
]


def _run(kw: dict) -> None:
    from cmkdtool.engine.state import state_path
    from cmkdtool.pipelines.train import run_pretrain

    tables, output, quiet = kw["tables"], kw["output"], kw["quiet"]
    check_output(output, *tables)
    cfg, dev = train_setup(kw, processes=True)
    quiet = kw["quiet"]  # every process but rank 0 is quiet under torchrun
    trained = run_pretrain(
        tables,
        kw["input"],
        model=o.build(ModelOptions, kw),
        config=cfg,
        mask=mask_options(kw),
        role=kw["role"],
        split_ratio=parse_split_ratio(kw["split_ratio"]),
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


pretrain = o.make_command(
    _run,
    PARAMS,
    """Train a model on labelled features and write a self-describing checkpoint.

    One --input trains a unimodal model; several train a late-fusion model (an encoder per input,
    concatenation, head). Inputs are standardised with train-split statistics kept in the checkpoint.
    --mask SALIENCE nullifies channels (MFH modality-general / -specific / random teachers); the mask is
    stored in the checkpoint and applied wherever it is used afterwards.
    Writes OUTPUT, OUTPUT.history.jsonl (per-epoch losses and val metrics) and OUTPUT.state.safetensors
    (training state for --resume).
    """,
)
