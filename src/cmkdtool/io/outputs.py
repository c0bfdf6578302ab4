"""Writers of cmkdtool's other table outputs: the spectrum table and per-row predictions (salience tables:
``io/salience.py``). Each is one call, with the provenance header in its metadata."""

from __future__ import annotations

import json

import numpy as np

from cmkdtool.io.tables import META_KEY, build_table, write_table


def write_spectrum(path: str, labels: list[str], sigmas: list, meta: dict) -> None:
    """Every singular value (input label, 1-based index, sigma), with ``meta`` (e.g. the summaries) attached."""
    import pyarrow as pa

    counts = [len(s) for s in sigmas]
    schema = pa.schema(
        [
            pa.field("input", pa.string(), nullable=False),
            pa.field("index", pa.int32(), nullable=False),
            pa.field("sigma", pa.float64(), nullable=False),
        ],
        metadata={META_KEY: json.dumps(meta).encode()},
    )
    table = pa.Table.from_arrays(
        [
            pa.array(np.repeat(np.asarray(labels, dtype=object), counts).tolist(), pa.string()),
            pa.array(np.concatenate([np.arange(1, c + 1) for c in counts] or [np.zeros(0)]).astype(np.int32)),
            pa.array(np.concatenate(sigmas or [np.zeros(0)]).astype(np.float64)),
        ],
        schema=schema,
    )
    write_table(table, path)


def write_predictions(path: str, ids, task: str | None, labels, scores: np.ndarray, meta: dict) -> None:
    """id, label (or labels), prediction (argmax, or the classes with a positive logit) and scores (logits) per
    row, shaped as a feature table (``scores`` is a feature column)."""
    import pyarrow as pa

    if task == "multilabel":
        table = build_table(ids, {"scores": scores}, labels=labels, meta=meta)
        pred = pa.array([np.flatnonzero(s > 0).tolist() for s in scores], pa.list_(pa.int64()))
        field = pa.field("prediction", pa.list_(pa.int64()), nullable=False)
    else:
        table = build_table(ids, {"scores": scores}, label=labels, meta=meta)
        pred = pa.array(scores.argmax(1).astype(np.int64))
        field = pa.field("prediction", pa.int64(), nullable=False)
    write_table(table.add_column(2, field, pred), path)


__all__ = ["write_predictions", "write_spectrum"]
