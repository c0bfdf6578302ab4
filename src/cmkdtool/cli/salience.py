"""``cmkdtool rank-salience``: rank channels by their modality-general decisive information (MFH Algorithm 1)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    check_output,
    command_line,
    note,
    parse_floats,
    run_params,
    split_params,
    train_setup,
)
from cmkdtool.engine.config import ModelOptions, TrainConfig

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
    o.param("top", A[int, typer.Option(help="Channels listed at each end of the ranking on stdout (0: none).")], 10),
    *split_params(),
    *run_params(),
    *o.dataclass_params(ModelOptions, "Joint training: networks"),
    *o.dataclass_params(TrainConfig, "Joint training: optimisation"),
]


def _run(kw: dict) -> None:
    from dataclasses import asdict

    from cmkdtool.analysis.salience import NORMALIZE, joint_train, rank_network, recovered
    from cmkdtool.data.tensors import check_model_inputs, load_tensor_data
    from cmkdtool.errors import CmkdUsageError
    from cmkdtool.io.checkpoints import load_model, read_metadata
    from cmkdtool.io.tables import file_sha256, read_tables
    from cmkdtool.losses.alignment import DISTANCES

    tables, output, quiet = kw["tables"], kw["output"], kw["quiet"]
    a, b = kw["teacher_input"], kw["student_input"]
    given = [m for m in (kw["teacher_model"], kw["student_model"]) if m]
    check_output(output, *tables, *given)
    if len(given) == 1:
        raise CmkdUsageError("give both --teacher-model and --student-model, or neither (to train them jointly)")
    if a == b:
        raise CmkdUsageError("--teacher-input and --student-input name the same column; give one per modality")
    if kw["distance"] not in DISTANCES:
        raise CmkdUsageError(f"unknown --distance '{kw['distance']}'; choose one of {', '.join(DISTANCES)}")
    if kw["normalize"] not in NORMALIZE:
        raise CmkdUsageError(f"unknown --normalize '{kw['normalize']}'; choose one of {', '.join(NORMALIZE)}")
    if kw["split"] not in SPLITS:
        raise CmkdUsageError(f"unknown --split '{kw['split']}'; choose one of {', '.join(SPLITS)}")
    if kw["repeats"] < 1:
        raise CmkdUsageError("--repeats must be at least 1")
    ratio = parse_floats(kw["split_ratio"], "--split-ratio", 3)
    cfg, dev = train_setup(kw)  # checked now even when two trained networks make it unused
    table = read_tables(tables, columns=[a, b])
    for n in table.notes:
        note(n, quiet)
    data = load_tensor_data(table, [a, b], dev, split_ratio=ratio, split_seed=kw["split_seed"])

    record: dict = {}
    if given:
        net_a, net_b = load_model(kw["teacher_model"], dev), load_model(kw["student_model"], dev)
        for path, net, col in ((kw["teacher_model"], net_a, a), (kw["student_model"], net_b, b)):
            spec, _ = read_metadata(path)
            if net.input_names != [col]:
                raise CmkdUsageError(f"{path} reads {net.input_names}, not the single column '{col}'")
            check_model_inputs(table, spec, path)
        record["models"] = [{"path": p, "sha256": file_sha256(p)} for p in given]
    else:
        if data.target is None:
            raise CmkdUsageError(f"{table.name}: no labels for the joint training (Eq. 28); add a label column")
        model = o.build(ModelOptions, kw)
        net_a, net_b, result = joint_train(data, a, b, model=model, config=cfg, distance=kw["distance"], quiet=quiet)
        record["joint_training"] = {
            "model": asdict(model),
            "config": cfg.record(),
            "best_epoch": result.best_epoch,
            "final_metrics": result.final_metrics,
        }
        note(f"aligned the two networks (Eq. 28): {_metrics_text(result.final_metrics)}", quiet)

    rows = data.index(kw["split"]) if kw["split"] != "all" else _all_rows(data)
    if len(rows) < 2:
        raise CmkdUsageError(f"{table.name}: the {kw['split']} split has {len(rows)} rows; pick another --split")
    common = {
        "repeats": kw["repeats"],
        "seed": kw["seed"],
        "distance": kw["distance"],
        "how": kw["normalize"],
        "quiet": quiet,
    }
    results = [rank_network(net_a, net_b, data, rows, layer=kw["layer"], **common)]
    if kw["both"]:
        layer_b = kw["student_layer"]
        if layer_b is None and kw["layer"]:
            layer_b = kw["layer"].replace(f"input.{a}", f"input.{b}").replace(f"encoders.{a}.", f"encoders.{b}.")
        results.append(rank_network(net_b, net_a, data, rows, layer=layer_b, **common))

    truth = (table.meta.get("synth") or {}) if isinstance(table.meta, dict) else {}
    meta = {
        "format": "cmkdtool.salience",
        "command": command_line(),
        "paper": "Xue et al. 2023 (MFH), App. B.4 Algorithm 1",
        "inputs": {"teacher": a, "student": b},
        "layers": {r.input: r.layer for r in results},
        "distance": kw["distance"],
        "repeats": kw["repeats"],
        "seed": kw["seed"],
        "normalize": kw["normalize"],
        "split": kw["split"],
        "rows": len(rows),
        "data": [{"path": t, "sha256": file_sha256(t)} for t in tables],
        **record,
    }
    shared = {"xa": truth.get("general_a"), "xb": truth.get("general_b")}  # synth mfh's ground truth
    recovery = {
        r.input: (recovered(r, shared[r.input]), len(shared[r.input]))
        for r in results
        if shared.get(r.input) is not None and r.layer == f"input.{r.input}"
    }
    if recovery:
        meta["recovered_shared"] = {k: v[0] for k, v in recovery.items()}
    _write(output, results, meta)
    sys.stdout.write(_summary(results, kw["top"], recovery))
    note(f"wrote {output} ({sum(len(r.raw) for r in results)} channels)", quiet)


def _all_rows(data):
    import torch

    return torch.arange(len(data), device=data.device)


def _metrics_text(metrics: dict) -> str:
    keys = [k for k in ("train/dist", "train/ce_a", "train/ce_b", "val/accuracy") if k in metrics]
    return ", ".join(f"{k.split('/')[1]} {metrics[k]:.4f}" for k in keys)


def _write(path: str, results: list, meta: dict) -> None:
    import numpy as np
    import pyarrow as pa

    from cmkdtool.io.tables import META_KEY, write_table

    schema = pa.schema(
        [
            pa.field("input", pa.string(), nullable=False),
            pa.field("layer", pa.string(), nullable=False),
            pa.field("channel", pa.int32(), nullable=False),
            pa.field("salience", pa.float32(), nullable=False),
            pa.field("rank", pa.int32(), nullable=False),
            pa.field("distance", pa.float64(), nullable=False),
        ],
        metadata={META_KEY: json.dumps(meta).encode()},
    )
    cols = [
        pa.array([r.input for r in results for _ in r.raw], pa.string()),
        pa.array([r.layer for r in results for _ in r.raw], pa.string()),
        pa.array(np.concatenate([np.arange(len(r.raw)) for r in results]).astype(np.int32)),
        pa.array(np.concatenate([r.salience for r in results]).astype(np.float32)),
        pa.array(np.concatenate([r.rank for r in results]).astype(np.int32)),
        pa.array(np.concatenate([r.raw for r in results]).astype(np.float64)),
    ]
    write_table(pa.Table.from_arrays(cols, schema=schema), path)


def _channels(result, idx) -> str:
    return "  ".join(f"{int(i)}:{result.salience[i]:.3f}" for i in idx)


def _summary(results: list, top: int, recovery: dict) -> str:
    """The most and least salient channels of each ranked layer and, with ``recovery`` (input -> (share found,
    number of truly shared channels)), how many of the truly shared channels rank on top."""
    import numpy as np

    lines = []
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
