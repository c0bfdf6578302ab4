"""``cmkdtool fit-bottleneck``: the cross-modal information bottleneck of CIBA (Eq. 7, Algorithm 1), and the sweep
over its dimension H (Sec. 5.1.3, Fig. 5b)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    SplitSeedOpt,
    check_output,
    note,
    run_params,
    train_setup,
)
from cmkdtool.engine.config import TrainConfig
from cmkdtool.nn.specs import BottleneckOptions
from cmkdtool.options import parse_split_ratio

A = Annotated
PANEL = "Bottleneck"
PANEL_SWEEP = "Dimension sweep"


PARAMS = [
    o.param("teacher", A[str, typer.Argument(help="Teacher checkpoint (trained without distillation).")]),
    o.param("baseline", A[str, typer.Argument(help="Student baseline checkpoint (trained without distillation).")]),
    o.param("tables", A[list[str], typer.Argument(help="Feature table(s) with both models' input columns.")]),
    o.param("output", A[str, typer.Option("--output", "-o", help="Bottleneck checkpoint to write (.safetensors).")]),
    o.param(
        "dim",
        A[int | None, typer.Option(help="Bottleneck dimension H (default 8 when --dims is not given).")],
        None,
        ge=1,
    ),
    o.param(
        "dims",
        A[
            str | None,
            typer.Option(
                help="Fit one bottleneck per H (comma-separated, e.g. 1,2,4,8,16,32), report each and write the "
                "H whose decoded-output spectrum stops changing to OUTPUT.",
                rich_help_panel=PANEL_SWEEP,
            ),
        ],
        None,
    ),
    o.param(
        "tol",
        A[
            float,
            typer.Option(
                help="Sweep rule: the smallest H whose log10 spectrum is within TOL decades (mean absolute "
                "difference) of every larger H's.",
                rich_help_panel=PANEL_SWEEP,
            ),
        ],
        0.1,
        ge=0,
    ),
    o.param(
        "save_all",
        A[
            bool,
            typer.Option(
                "--save-all",
                help="Also write every H of the sweep as OUTPUT-stem.hH.safetensors.",
                rich_help_panel=PANEL_SWEEP,
            ),
        ],
        False,
    ),
    o.param(
        "plot",
        A[
            str | None,
            typer.Option(help="PNG of the decoded-output spectra per H (CIBA Fig. 5b).", rich_help_panel=PANEL_SWEEP),
        ],
        None,
    ),
    o.param(
        "eval_split",
        A[str, typer.Option(help="Rows for the reported error and spectra: val, test or train.")],
        "val",
    ),
    o.param(
        "teacher_layer",
        A[str, typer.Option(help="Teacher layer giving z' (see spectrum --list-layers).", rich_help_panel=PANEL)],
        "embedding",
    ),
    o.param(
        "student_layer",
        A[str, typer.Option(help="Baseline layer giving the target z.", rich_help_panel=PANEL)],
        "embedding",
    ),
    o.param(
        "split_ratio",
        A[
            str | None,
            typer.Option(help="train,val,test fractions for tables without a 'split' column [default: the teacher's]."),
        ],
        None,
        check=parse_split_ratio,
    ),
    o.param("split_seed", SplitSeedOpt, None),
    *run_params(),
]


def _params() -> list:
    return PARAMS + o.dataclass_params(BottleneckOptions, PANEL) + o.dataclass_params(TrainConfig, "Optimisation")


def _run(kw: dict) -> None:
    from cmkdtool.errors import CmkdUsageError
    from cmkdtool.options import parse_ints
    from cmkdtool.pipelines.bottleneck import run_fit_bottleneck

    teacher, baseline, tables, output, quiet = kw["teacher"], kw["baseline"], kw["tables"], kw["output"], kw["quiet"]
    check_output(output, teacher, baseline, *tables)
    if kw["plot"]:
        check_output(kw["plot"], teacher, baseline, *tables)
    if kw["dim"] is not None and kw["dims"]:
        raise CmkdUsageError("give --dim H or --dims H1,H2,..., not both")
    dims = parse_ints(kw["dims"], "--dims") if kw["dims"] else [kw["dim"] if kw["dim"] is not None else 8]
    options = o.build(BottleneckOptions, kw)
    cfg, dev = train_setup(kw)

    def report(p) -> None:
        m = p.metrics
        note(f"H={p.dim}: recon {m['recon']:.4g}, r2 {m['r2']:.3f}, effective rank {p.summary['rankme']:.1f}", quiet)

    run = run_fit_bottleneck(
        teacher, baseline, tables, dims, options=options, config=cfg, tol=kw["tol"], eval_split=kw["eval_split"],
        teacher_layer=kw["teacher_layer"], student_layer=kw["student_layer"], split_ratio=kw["split_ratio"],
        split_seed=kw["split_seed"], device=dev, quiet=quiet, on_fit=report,
    )  # fmt: skip
    for path in run.save(output, save_all=kw["save_all"]):
        note(f"wrote {path}", quiet)
    if kw["plot"]:
        run.plot(kw["plot"])
        note(f"wrote {kw['plot']}", quiet)
    sys.stdout.write(_table(run.rows, len(run.points) > 1, kw["tol"]))
    note(f"wrote {output} (H = {run.chosen}) and {output}.history.jsonl", quiet)


def _table(rows: list[dict], is_sweep: bool, tol: float) -> str:
    cols = ["H", "recon", "r2", "kl", "codebook", "commit", "rankme", "change"]
    cols = [c for c in cols if c in rows[0] and (c != "change" or is_sweep)]
    head = " ".join(f"{c:>10}" for c in cols) + ("  chosen" if is_sweep else "")
    lines = [head]
    for r in rows:
        cells = [f"{r[c]:>10d}" if c == "H" else f"{r[c]:>10.4g}" for c in cols]
        lines.append(" ".join(cells) + ("  <-" if is_sweep and r["chosen"] else ""))
    if is_sweep:
        lines.append(
            f"recon: ||z_hat - z||^2 per row on the eval rows; r2: share of z's variance explained; rankme: effective "
            f"rank of z_hat; change: largest mean |log10 sigma| difference to a larger H (chosen: first <= {tol:g})"
        )
    return "\n".join(lines) + "\n"


def fit_bottleneck_command():
    return o.make_command(
        _run,
        _params(),
        """Fit the cross-modal information bottleneck of CIBA (Eq. 7, Algorithm 1).

        From TEACHER and BASELINE, two models trained without distillation, take the teacher's features z'
        and the student baseline's features z on TABLES, and train an encoder p(h'|z') with an H-dimensional
        h' and a decoder q(z|h') that generates the student's feature from the teacher's: loss
        ||z_hat - z||^2 + lambda * KL(p(h'|z') || N(0, I)) (dvib, attention) or the VQ-VAE codebook and
        commitment terms (vqvae), on the train rows, keeping the epoch with the lowest val loss. With --dims,
        fits one per H, prints each H's reconstruction error and decoded-output spectrum, and writes the H where
        the spectrum stops changing (Sec. 5.1.3). Writes OUTPUT (for distill ciba --bottleneck) and
        OUTPUT.history.jsonl.
        """,
    )
