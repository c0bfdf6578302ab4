"""``cmkdtool rank-salience``: rank channels by their modality-general decisive information (MFH Algorithm 1)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    check_output,
    note,
    run_params,
    split_params,
    train_setup,
)
from cmkdtool.engine.config import TrainConfig
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.options import parse_split_ratio
from cmkdtool.pipelines.salience import JOINT_MODEL, JOINT_TRAIN

A = Annotated
PANEL = "Salience"
SPLITS = ("train", "val", "test", "all")

PARAMS = [
    o.param("tables", A[list[str], typer.Argument(help="Feature table(s) with both modalities, joined on id.")]),
    o.param(
        "teacher_input",
        A[str, typer.Option("--teacher-input", "-a", help="Column of modality a (the teacher side), ranked.")],
    ),
    o.param(
        "student_input",
        A[str, typer.Option("--student-input", "-b", help="Column of modality b (the student side).")],
    ),
    o.param("output", A[str, typer.Option("--output", "-o", help="Salience table to write (.parquet).")]),
    o.param(
        "teacher_model",
        A[
            str | None,
            typer.Option(help="Trained network on modality a: skip the joint training (needs --student-model)."),
        ],
        None,
    ),
    o.param(
        "student_model",
        A[str | None, typer.Option(help="Trained network on modality b (with --teacher-model).")],
        None,
    ),
    o.param(
        "layer",
        A[
            str | None,
            typer.Option(
                help="Rank the features of this layer of network a instead of its input channels "
                "(e.g. encoders.xa.1; see spectrum --list-layers).",
                rich_help_panel=PANEL,
            ),
        ],
        None,
    ),
    o.param(
        "student_layer",
        A[
            str | None,
            typer.Option(
                help="With --both: the layer of network b [default: --layer with a's column renamed to b's].",
                rich_help_panel=PANEL,
            ),
        ],
        None,
    ),
    o.param(
        "both",
        A[bool, typer.Option("--both", help="Also rank the channels of modality b (against network a).")],
        False,
    ),
    o.param(
        "repeats",
        A[int, typer.Option("--repeats", "-M", help="Permutations M per channel (paper: 100).", rich_help_panel=PANEL)],
        100,
        ge=1,
    ),
    o.param(
        "distance",
        A[str, typer.Option(help="Dist of Eq. 28 and step 6: mse or l1 (mean over rows and classes).")],
        "mse",
    ),
    o.param(
        "normalize",
        A[
            str,
            typer.Option(
                help="Step 9: minmax ((p - min) / (max - min), the authors' code), max (p / max, the paper's "
                "text) or none.",
                rich_help_panel=PANEL,
            ),
        ],
        "minmax",
    ),
    o.param(
        "split",
        A[str, typer.Option(help="Rows permuted and scored: train, val, test or all.", rich_help_panel=PANEL)],
        "train",
    ),
    o.param(
        "top", A[int, typer.Option(help="Channels listed at each end of the ranking on stdout (0: none).")], 10, ge=0
    ),
    *split_params(),
    *run_params(),
    *o.dataclass_params(ModelOptions, "Joint training: networks", defaults=JOINT_MODEL),
    *o.dataclass_params(TrainConfig, "Joint training: optimisation", defaults=JOINT_TRAIN),
]


def _run(kw: dict) -> None:
    from cmkdtool.pipelines.salience import run_rank_salience

    tables, output, quiet = kw["tables"], kw["output"], kw["quiet"]
    check_output(output, *tables, *[m for m in (kw["teacher_model"], kw["student_model"]) if m])
    cfg, dev = train_setup(kw)
    run = run_rank_salience(
        tables, kw["teacher_input"], kw["student_input"], teacher_model=kw["teacher_model"],
        student_model=kw["student_model"], layer=kw["layer"], student_layer=kw["student_layer"], both=kw["both"],
        repeats=kw["repeats"], distance=kw["distance"], normalize=kw["normalize"], split=kw["split"],
        model=o.build(ModelOptions, kw), config=cfg, split_ratio=parse_split_ratio(kw["split_ratio"]),
        split_seed=kw["split_seed"], device=dev, quiet=quiet,
    )  # fmt: skip
    run.write(output)
    sys.stdout.write(_summary(run.results, kw["top"], run.recovery, run.quality))
    note(f"wrote {output} ({sum(len(r.raw) for r in run.results)} channels)", quiet)


def _channels(result, idx) -> str:
    return "  ".join(f"{int(i)}:{result.salience[i]:.3f}" for i in idx)


def _summary(results: list, top: int, recovery: dict, quality: dict) -> str:
    """The most and least salient channels of each ranked layer and, with ``recovery`` (input -> (share found,
    number of truly shared channels)), how many of the truly shared channels rank on top."""
    import numpy as np

    lines = []
    if quality:
        parts = [
            f"{k.replace('_', ' ')} {v}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v:.3f}"
            for k, v in quality.items()
        ]
        lines.append(f"joint training (Eq. 28) on val: {', '.join(parts)}")
    for r in results:
        order = np.argsort(r.rank)
        d = len(order)
        lines.append(f"{r.layer}: {d} channels")
        if top > 0:
            k = min(top, d)
            lines.append(f"  most salient   {_channels(r, order[:k])}")
            lines.append(f"  least salient  {_channels(r, order[::-1][:k])}")
        if r.input in recovery:
            found, n_true = recovery[r.input]
            lines.append(
                f"  recovered {found:.0%} of the {n_true} truly shared channels among the top {n_true} "
                "(synth ground truth)"
            )
    return "\n".join(lines) + "\n"


rank_salience = o.make_command(
    _run,
    PARAMS,
    """Rank the channels of modality a by their modality-general decisive information (MFH Algorithm 1).

    Step 1 trains two unimodal networks jointly (Eq. 28: Dist(f1(Xa), f2(Xb)) + CE + CE), or takes them
    from --teacher-model/--student-model. Then every channel (an input column, or a --layer feature) is
    permuted across the rows, --repeats times, and scored by the distance of the permuted network's
    outputs to the other network's: a large change marks a channel the two modalities share. Writes a
    salience table (input, layer, channel, salience in [0, 1], rank 1 = most salient, distance) for
    pretrain/distill/eval --mask, and prints the most and least salient channels.
    """,
)
