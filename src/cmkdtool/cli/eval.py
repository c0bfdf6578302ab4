"""``cmkdtool eval``: metrics of a checkpoint on a split of a feature table."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cmkdtool.analysis.pad import PadOptions
from cmkdtool.cli import options as o
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
)
from cmkdtool.data.masks import MaskOptions
from cmkdtool.errors import CmkdUsageError
from cmkdtool.options import parse_split_ratio

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
    "n_bona_fide",
    "n_attack",
    "pad_threshold",
    "apcer",  # then apcer[<type>] per attack type
    "apcer_max",
    "bpcer",
    "acer",
    "hter",
    "eer",
    "eer_threshold",
    "tpr@apcer=0.01",
    "tpr@apcer=0.001",
    "tpr@apcer=0.0001",
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
    keys = []
    for k in ORDER:
        keys += [k] if k in flat else []
        keys += [t for t in flat if t.startswith("apcer[")] if k == "apcer" else []
    keys += [k for k in flat if k not in keys]
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


A = Annotated

PARAMS = [
    o.param("checkpoint", A[str, typer.Argument(help="Checkpoint (.safetensors) written by cmkdtool.")]),
    o.param("tables", A[list[str], typer.Argument(help="Feature table(s) with the model's input columns and labels.")]),
    o.param("split", A[str, typer.Option(help="Split to evaluate: train, val, test or all.")], "test"),
    o.param("format", A[str, typer.Option("--format", "-f", help="table (for people), json, jsonl or csv.")], "table"),
    o.param(
        "predictions",
        A[
            str | None,
            typer.Option(help="Also write per-row predictions (id, label, prediction, scores) to this Parquet."),
        ],
        None,
    ),
    o.param("topk", A[str, typer.Option(help="Top-k accuracies to report, comma-separated.")], "1,5"),
    o.param(
        "retrieval",
        A[bool, typer.Option("--retrieval/--no-retrieval", help="kNN retrieval R@1/5/10 against the gallery split.")],
        True,
    ),
    o.param("gallery", A[str, typer.Option(help="Gallery split for retrieval.")], "train"),
    o.param(
        "split_ratio",
        A[
            str | None,
            typer.Option(
                help="train,val,test fractions for tables without a 'split' column [default: the checkpoint's]."
            ),
        ],
        None,
        check=parse_split_ratio,
    ),
    o.param("split_seed", SplitSeedOpt, None),
    o.param("device", DeviceOpt, "auto"),
    o.param("precision", PrecisionOpt, "auto"),
    o.param("quiet", QuietOpt, False),
    *o.dataclass_params(MaskOptions, "Channel mask"),
    *o.dataclass_params(PadOptions, "Presentation attack detection"),
]


def _run(kw: dict) -> None:
    checkpoint, tables, fmt, topk = kw["checkpoint"], kw["tables"], kw["format"], kw["topk"]
    predictions, quiet = kw["predictions"], kw["quiet"]
    mask = mask_options(kw)
    pad = o.build(PadOptions, kw)
    pad.validate()
    if fmt not in FORMATS:
        raise CmkdUsageError(f"unknown --format '{fmt}'; choose one of {', '.join(FORMATS)}")
    ks = parse_ints(topk, "--topk")
    if not ks or min(ks) < 1:
        raise CmkdUsageError(f"--topk must be positive integers like 1,5; got '{topk}'")
    if predictions:
        if predictions == "-":
            raise CmkdUsageError("--predictions - would mix a binary table into the metrics on stdout; give a file")
        check_output(predictions, checkpoint, *tables)
    from cmkdtool.pipelines.evaluate import run_eval

    ev = run_eval(
        checkpoint, tables, split=kw["split"], topk=ks, retrieval=kw["retrieval"], gallery=kw["gallery"],
        split_ratio=kw["split_ratio"], split_seed=kw["split_seed"], device=kw["device"], precision=kw["precision"],
        mask=mask, quiet=quiet, pad=pad,
    )  # fmt: skip
    if predictions:
        ev.write_predictions(predictions)
        note(f"wrote {predictions} ({len(ev.rows)} rows)", quiet)
    sys.stdout.write(_render(ev.metrics, fmt))


evaluate = o.make_command(
    _run,
    PARAMS,
    """Evaluate CHECKPOINT on a split of TABLES and print its metrics to stdout.

    Multi-class: accuracy (= WA), UA (mean per-class recall), top-k, macro/micro precision, recall and F1,
    confusion matrix. Multi-label: mAP, subset and Hamming accuracy, F1. Retrieval: R@k of split rows
    (queries) against gallery rows by cosine similarity of the model's embedding. --pad (a two-class bona
    fide/attack model): APCER (pooled, per attack type, max), BPCER, ACER, HTER, EER, TPR@APCER (ISO/IEC
    30107-3). A mask stored in the checkpoint is always applied; --mask adds one to a checkpoint without one,
    for this evaluation only.
    """,
)
