"""``cmkdtool eval`` as a library call: a checkpoint's metrics on a split of its tables, and its predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmkdtool.analysis.pad import ATTACK_TYPE_COLUMN, PadOptions
from cmkdtool.data.tensors import TensorData
from cmkdtool.errors import CmkdError


@dataclass
class Evaluation:
    """``metrics`` (checkpoint, split, the metrics and the mask it carries) and the logits of each row."""

    metrics: dict
    scores: np.ndarray
    rows: np.ndarray
    data: TensorData
    spec: dict

    def write_predictions(self, path: str, command: str | None = None) -> None:
        """Per-row id, label(s), prediction and scores, as a Parquet table (``eval --predictions``)."""
        from cmkdtool.io.outputs import write_predictions
        from cmkdtool.io.provenance import provenance

        checkpoint, split = self.metrics["checkpoint"], self.metrics["split"]
        meta = {
            **provenance(command, checkpoint=checkpoint),
            "split": split,
            "class_names": self.spec.get("class_names"),
        }
        d = self.data
        labels = d.labels[self.rows]
        write_predictions(path, d.ids[self.rows], d.task, labels, self.scores, meta)


def run_eval(
    checkpoint: str,
    tables: Sequence[str],
    *,
    split: str = "test",
    topk: Sequence[int] = (1, 5),
    retrieval: bool = True,
    gallery: str = "train",
    split_ratio=None,
    split_seed: int | None = None,
    device="auto",
    precision: str = "auto",
    mask=None,
    quiet: bool = False,
    pad: PadOptions | None = None,
) -> Evaluation:
    """Open ``checkpoint`` with ``tables`` (its split rule unless given; ``mask`` adds a channel mask for this
    evaluation) and compute its metrics on ``split`` (see ``analysis.evaluate``).

    ``pad`` (with ``pad.pad``) adds presentation attack detection metrics; attack types come from
    ``pad.attack_type_column``, else from an ``attack_type`` column when a Parquet table has one.
    """
    from cmkdtool.analysis.evaluate import evaluate
    from cmkdtool.engine.device import resolve_precision
    from cmkdtool.pipelines.open import open_checkpoint, show_notes

    pad = pad if pad is not None and pad.pad else None
    column = table = None
    if pad is not None:
        pad.validate()
        table, column = _table_with_attack_types(checkpoint, tables, pad)
    opened = open_checkpoint(
        checkpoint, tables, device, split_ratio=split_ratio, split_seed=split_seed, mask=mask, mask_seed=0,
        table=table,
    )  # fmt: skip
    show_notes(opened.notes, quiet)
    model, data = opened.model, opened.data
    attack_types = None
    if pad is not None:
        attack_types = _attack_types(opened.table, column) if column else None
        if column is None and ATTACK_TYPE_COLUMN in {f.name for f in opened.table.available}:
            show_notes(
                [
                    f"{opened.table.name}: the table read from stdin has an '{ATTACK_TYPE_COLUMN}' column; add "
                    f"--attack-type-column {ATTACK_TYPE_COLUMN} to read it (APCER is pooled over all attacks)"
                ],
                quiet,
            )
    metrics, scores, rows = evaluate(
        model,
        data,
        split=split,
        topk=topk,
        retrieval=retrieval,
        gallery_split=gallery,
        precision=resolve_precision(precision, data.device),
        pad=pad,
        attack_types=attack_types,
    )
    notes = metrics.pop("notes", [])
    show_notes([f"PAD metrics of the '{split}' split: {n}" for n in notes], quiet)
    result = {"checkpoint": checkpoint, "split": split, **metrics}
    if model.spec.get("mask"):
        m = model.spec["mask"]
        result["mask"] = f"{m['keep']} {m['ratio']:g} of {m['layer']}"
    return Evaluation(result, scores, rows, data, opened.spec)


def _attack_column(tables: Sequence[str], pad: PadOptions) -> str | None:
    """The column of attack types: the one named, else ``attack_type`` when a Parquet table has it (a table
    read from stdin cannot be looked into before it is read)."""
    import pyarrow.parquet as pq

    names: list[str] = []
    for path in tables:
        if str(path) == "-":
            continue
        try:
            names += pq.read_schema(path).names
        except Exception:  # a missing or unreadable file: read_tables says what is wrong with it
            return pad.attack_type_column
    named = pad.attack_type_column
    if named and named not in names and "-" not in [str(t) for t in tables]:
        raise CmkdError(
            f"{' + '.join(map(str, tables))}: no column '{named}' for --attack-type-column; columns here: "
            f"{', '.join(dict.fromkeys(names))}"
        )
    if named:
        return named
    return ATTACK_TYPE_COLUMN if ATTACK_TYPE_COLUMN in names else None


def _table_with_attack_types(checkpoint: str, tables: Sequence[str], pad: PadOptions):
    """(the tables read with the model's inputs and the attack-type column, that column), or (None, None)
    when there is no such column (``open_checkpoint`` then reads the tables itself)."""
    from cmkdtool.io.checkpoints import read_metadata
    from cmkdtool.io.tables import read_tables

    column = _attack_column(tables, pad)
    if column is None:
        return None, None
    spec, _ = read_metadata(checkpoint)
    if spec.get("role") == "bottleneck" or not isinstance(spec.get("inputs"), list):
        return None, None  # not a model: open_checkpoint says so
    inputs = [i["name"] for i in spec["inputs"]]
    return read_tables(list(tables), columns=list(dict.fromkeys([*inputs, column]))), column


def _attack_types(table, column: str) -> np.ndarray:
    """The attack-type column (strings or integers; null on bona fide rows is fine) as an object array."""
    import pyarrow as pa

    col = table.table.column(column)
    t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise CmkdError(
            f"{table.name}: column '{column}' must hold attack types as strings or integers, found {col.type}; "
            "name another column with --attack-type-column"
        )
    return np.asarray(col.to_pylist(), dtype=object)


__all__ = ["Evaluation", "run_eval"]
