"""``cmkdtool eval``: metrics of a checkpoint on a split of a feature table."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cmkdtool.cli.common import (
    DeviceOpt,
    PrecisionOpt,
    QuietOpt,
    SplitSeedOpt,
    check_output,
    csv_text,
    mask_options,
    note,
    parse_ints,
    split_rule,
)
from cmkdtool.errors import CmkdUsageError

FORMATS = ("table", "json", "jsonl", "csv")
ORDER = [
    "n",
    "accuracy",
    "wa",
    "ua",
    "top1",
    "top5",
    "map",
    "hamming_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "r@1",
    "r@5",
    "r@10",
]


def _json_safe(v):
    """NaN/inf (e.g. mAP with no positive) -> null, so the output stays valid JSON."""
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return None
    return v


def _render(result: dict, fmt: str) -> str:
    result = {k: _json_safe(v) for k, v in result.items()}
    flat = {k: v for k, v in result.items() if k != "confusion"}
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt == "jsonl":
        return json.dumps(result) + "\n"
    if fmt == "csv":
        return csv_text([flat], list(flat))
    keys = [k for k in ORDER if k in flat] + [k for k in flat if k not in ORDER]
    width = max(len(k) for k in keys)
    lines = []
    for k in keys:
        v = flat[k]
        lines.append(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    conf = result.get("confusion")
    if conf is not None and len(conf) <= 20:
        lines.append("confusion (rows: true, cols: predicted)")
        cw = max(len(str(x)) for row in conf for x in row)
        lines.extend("  " + " ".join(f"{x:>{cw}}" for x in row) for row in conf)
    return "\n".join(lines) + "\n"


def _options(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint (.safetensors) written by cmkdtool.")],
    tables: Annotated[list[str], typer.Argument(help="Feature table(s) with the model's input columns and labels.")],
    split: Annotated[str, typer.Option(help="Split to evaluate: train, val, test or all.")] = "test",
    format: Annotated[str, typer.Option("--format", "-f", help="table (for people), json, jsonl or csv.")] = "table",
    predictions: Annotated[
        str | None,
        typer.Option(help="Also write per-row predictions (id, label, prediction, scores) to this Parquet."),
    ] = None,
    topk: Annotated[str, typer.Option(help="Top-k accuracies to report, comma-separated.")] = "1,5",
    retrieval: Annotated[
        bool,
        typer.Option("--retrieval/--no-retrieval", help="kNN retrieval R@1/5/10 against the gallery split."),
    ] = True,
    gallery: Annotated[str, typer.Option(help="Gallery split for retrieval.")] = "train",
    split_ratio: Annotated[
        str | None,
        typer.Option(help="train,val,test fractions for tables without a 'split' column [default: the checkpoint's]."),
    ] = None,
    split_seed: SplitSeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """The options of ``eval`` (its signature); the channel-mask options are added from ``MaskOptions``."""


def _run(kw: dict) -> None:
    from cmkdtool.cli import options as o
    from cmkdtool.data.masks import MaskOptions

    _evaluate(mask=mask_options(kw), **{k: v for k, v in kw.items() if k not in o.names(MaskOptions)})


def _evaluate(
    checkpoint, tables, split, format, predictions, topk, retrieval, gallery, split_ratio, split_seed, device,
    precision, quiet, mask,
) -> None:  # fmt: skip
    if format not in FORMATS:
        raise CmkdUsageError(f"unknown --format '{format}'; choose one of {', '.join(FORMATS)}")
    ks = parse_ints(topk, "--topk")
    if predictions:
        if predictions == "-":
            raise CmkdUsageError("--predictions - would mix a binary table into the metrics on stdout; give a file")
        check_output(predictions, checkpoint, *tables)

    from cmkdtool.analysis.evaluate import evaluate as run
    from cmkdtool.data.masks import apply_mask
    from cmkdtool.data.tensors import check_model_inputs, load_tensor_data
    from cmkdtool.engine.device import resolve_device, resolve_precision
    from cmkdtool.errors import CmkdError
    from cmkdtool.io.checkpoints import load_model, read_metadata
    from cmkdtool.io.tables import read_tables

    spec, train = read_metadata(checkpoint)
    ratio, sseed = split_rule(split_ratio, split_seed, train)
    dev = resolve_device(device)
    model = load_model(checkpoint, dev)
    inputs = [i["name"] for i in spec["inputs"]]
    table = read_tables(tables, columns=inputs)
    for n in table.notes:
        note(n, quiet)
    check_model_inputs(table, spec, checkpoint)
    data = load_tensor_data(
        table, inputs, dev, num_classes=int(spec["num_classes"]), split_ratio=ratio, split_seed=sseed
    )
    if data.task != spec.get("task", data.task):
        raise CmkdError(f"{table.name}: a {data.task} table but {checkpoint} is a {spec.get('task')} model")
    applied = apply_mask(model, mask, 0, data, what=checkpoint)
    if applied:
        note(f"masking {len(applied['removed'])} of {applied['dim']} channels of {applied['layer']}", quiet)
    metrics, scores, rows = run(
        model,
        data,
        split=split,
        topk=ks,
        retrieval=retrieval,
        gallery_split=gallery,
        precision=resolve_precision(precision, dev),
    )
    result = {"checkpoint": checkpoint, "split": split, **metrics}
    if model.spec.get("mask"):
        m = model.spec["mask"]
        result["mask"] = f"{m['keep']} {m['ratio']:g} of {m['layer']}"
    if predictions:
        _write_predictions(predictions, data, rows, scores, checkpoint, split, spec)
        note(f"wrote {predictions} ({len(rows)} rows)", quiet)
    sys.stdout.write(_render(result, format))


def _write_predictions(path: str, data, rows, scores, checkpoint: str, split: str, spec: dict) -> None:
    """id, label(s), prediction, scores (logits) per evaluated row, as a feature-table-shaped Parquet."""
    import numpy as np
    import pyarrow as pa

    from cmkdtool.io.tables import build_table, write_table

    meta = {"checkpoint": checkpoint, "split": split, "class_names": spec.get("class_names")}
    if data.task == "multilabel":
        table = build_table(data.ids[rows], {"scores": scores}, labels=data.labels[rows], meta=meta)
        pred = pa.array([np.flatnonzero(s > 0).tolist() for s in scores], pa.list_(pa.int64()))
        field = pa.field("prediction", pa.list_(pa.int64()), nullable=False)
    else:
        table = build_table(data.ids[rows], {"scores": scores}, label=data.labels[rows], meta=meta)
        pred = pa.array(scores.argmax(1).astype(np.int64))
        field = pa.field("prediction", pa.int64(), nullable=False)
    write_table(table.add_column(2, field, pred), path)


def _build():
    import inspect
    import typing

    from cmkdtool.cli import options as o
    from cmkdtool.data.masks import MaskOptions

    hints = typing.get_type_hints(_options, include_extras=True)
    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
        for p in inspect.signature(_options).parameters.values()
    ]
    return o.make_command(
        _run,
        params + o.dataclass_params(MaskOptions, "Channel mask"),
        """Evaluate CHECKPOINT on a split of TABLES and print its metrics to stdout.

    Multi-class: accuracy (= WA), UA (mean per-class recall), top-k, macro/micro precision, recall and F1,
    confusion matrix. Multi-label: mAP, subset and Hamming accuracy, F1. Retrieval: R@k of split rows
    (queries) against gallery rows by cosine similarity of the model's embedding. A mask stored in the
    checkpoint is always applied; --mask adds one to a checkpoint without one, for this evaluation only.
    """,
    )


evaluate = _build()
