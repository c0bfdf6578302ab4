"""``cmkdtool fit-bottleneck``: the cross-modal information bottleneck of CIBA (Eq. 7, Algorithm 1), and the sweep
over its dimension H (Sec. 5.1.3, Fig. 5b)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    SplitSeedOpt,
    check_output,
    command_line,
    note,
    run_params,
    split_rule,
    train_setup,
)
from cmkdtool.engine.config import BottleneckOptions, TrainConfig

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
    ),
    o.param("split_seed", SplitSeedOpt, None),
    *run_params(),
]


def _params() -> list:
    return PARAMS + o.dataclass_params(BottleneckOptions, PANEL) + o.dataclass_params(TrainConfig, "Optimisation")


def _run(kw: dict) -> None:
    from dataclasses import asdict

    import torch

    from cmkdtool import __version__
    from cmkdtool.data.tensors import check_model_inputs, load_tensor_data
    from cmkdtool.engine.config import parse_ints
    from cmkdtool.engine.loop import predict_layers
    from cmkdtool.engine.state import tensor_digest
    from cmkdtool.errors import CmkdUsageError
    from cmkdtool.io.checkpoints import load_model, read_metadata, save_checkpoint
    from cmkdtool.io.history import write_history
    from cmkdtool.io.tables import file_sha256, read_tables
    from cmkdtool.methods.bottleneck import choose_dim, feature_data, sweep

    teacher, baseline, tables, output, quiet = kw["teacher"], kw["baseline"], kw["tables"], kw["output"], kw["quiet"]
    check_output(output, teacher, baseline, *tables)
    if kw["dim"] is not None and kw["dims"]:
        raise CmkdUsageError("give --dim H or --dims H1,H2,..., not both")
    dims = parse_ints(kw["dims"], "--dims") if kw["dims"] else [kw["dim"] if kw["dim"] is not None else 8]
    if not dims or min(dims) < 1:
        raise CmkdUsageError(f"bottleneck dimensions must be positive integers; got {kw['dims'] or kw['dim']}")
    if kw["eval_split"] not in ("train", "val", "test"):
        raise CmkdUsageError(f"--eval-split must be train, val or test, not '{kw['eval_split']}'")
    if not kw["tol"] >= 0:
        raise CmkdUsageError(f"--tol must be non-negative; got {kw['tol']}")
    options = o.build(BottleneckOptions, kw)
    options.spec(1, 1, 1)  # check the options before reading any data
    cfg, dev = train_setup(kw)
    tspec, ttrain = read_metadata(teacher)
    bspec, _ = read_metadata(baseline)
    ratio, sseed = split_rule(kw["split_ratio"], kw["split_seed"], ttrain)
    t_cols, b_cols = [i["name"] for i in tspec.get("inputs", [])], [i["name"] for i in bspec.get("inputs", [])]
    columns = list(dict.fromkeys(t_cols + b_cols))
    t_net, b_net = load_model(teacher, dev), load_model(baseline, dev)
    table = read_tables(tables, columns=columns)
    for n in table.notes:
        note(n, quiet)
    check_model_inputs(table, tspec, teacher)
    check_model_inputs(table, bspec, baseline)
    data = load_tensor_data(table, columns, dev, split_ratio=ratio, split_seed=sseed)
    rows = torch.arange(len(data), device=data.device)
    zt = predict_layers(t_net, data, rows, [kw["teacher_layer"]])[kw["teacher_layer"]]
    zs = predict_layers(b_net, data, rows, [kw["student_layer"]])[kw["student_layer"]]
    fdata = feature_data(zt, zs, data.split, data.ids, table.name)
    if fdata.count("train") == 0:
        raise CmkdUsageError(f"{table.name}: no train rows; add a 'split' column or change --split-ratio")
    records = {
        "teacher": {
            "path": teacher,
            "sha256": file_sha256(teacher),
            "weights": tensor_digest(t_net.state_dict()),
            "layer": kw["teacher_layer"],
            "inputs": t_cols,
        },
        "student": {"path": baseline, "sha256": file_sha256(baseline), "layer": kw["student_layer"], "inputs": b_cols},
    }
    note(
        f"z' = {teacher} {kw['teacher_layer']} ({zt.shape[1]} dims), z = {baseline} {kw['student_layer']} "
        f"({zs.shape[1]} dims); {fdata.count('train')} train rows",
        quiet,
    )

    def report(p) -> None:
        m = p.metrics
        note(f"H={p.dim}: recon {m['recon']:.4g}, r2 {m['r2']:.3f}, effective rank {p.summary['rankme']:.1f}", quiet)

    points = sweep(fdata, dims, options, cfg, eval_split=kw["eval_split"], records=records, quiet=quiet, on_fit=report)
    chosen, worst = choose_dim({p.dim: p.spectrum for p in points}, kw["tol"])
    rows = [
        {
            "H": p.dim,
            **{k: float(v) for k, v in p.metrics.items()},
            "rankme": float(p.summary["rankme"]),
            "change": worst[p.dim],
            "chosen": p.dim == chosen,
        }
        for p in points
    ]
    best = next(p for p in points if p.dim == chosen)
    record = {
        "command": command_line(),
        "version": __version__,
        "options": asdict(options),
        "config": cfg.record(),
        "device": str(dev),
        "split_ratio": ratio,
        "split_seed": sseed,
        "data": [{"path": t, "sha256": file_sha256(t)} for t in tables],
        "rows": {s: fdata.count(s) for s in ("train", "val", "test")},
        "eval_split": kw["eval_split"],
        "sweep": rows,
        "rule": f"smallest H within {kw['tol']} decades (mean |log10 sigma| difference) of every larger H",
        "best_epoch": best.result.best_epoch,
        "best_metrics": best.result.best_metrics,
        "final_metrics": best.result.final_metrics,
    }
    save_checkpoint(output, best.bottleneck.state_dict(), best.bottleneck.spec, record)
    write_history(output, best.result.history)
    if kw["save_all"] and len(points) > 1:
        stem = Path(output)
        for p in points:
            path = stem.with_name(f"{stem.stem}.h{p.dim}{stem.suffix or '.safetensors'}")
            save_checkpoint(path, p.bottleneck.state_dict(), p.bottleneck.spec, {**record, "H": p.dim})
            note(f"wrote {path}", quiet)
    if kw["plot"]:
        _plot(kw["plot"], points, chosen)
        note(f"wrote {kw['plot']}", quiet)
    sys.stdout.write(_table(rows, len(points) > 1, kw["tol"]))
    note(f"wrote {output} (H = {chosen}) and {output}.history.jsonl", quiet)


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


def _plot(path: str, points: list, chosen: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cmkdtool.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(points)))
    for color, p in zip(colors, points, strict=True):
        sv = np.maximum(p.spectrum, 1e-12)
        ax.plot(
            np.arange(1, len(sv) + 1),
            np.log10(sv),
            color=color,
            lw=2.4 if p.dim == chosen else 1.2,
            label=f"H = {p.dim}" + (" (chosen)" if p.dim == chosen else ""),
        )
    ax.set_xlabel("singular value index")
    ax.set_ylabel(r"$\log_{10}\ \sigma_i$ of the decoded $\hat z$")
    ax.set_title("Bottleneck output spectrum per H (CIBA Fig. 5b)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


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
