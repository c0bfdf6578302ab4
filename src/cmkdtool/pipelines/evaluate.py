"""``cmkdtool eval`` as a library call: a checkpoint's metrics on a split of its tables, and its predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmkdtool.data.tensors import TensorData


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
) -> Evaluation:
    """Open ``checkpoint`` with ``tables`` (its split rule unless given; ``mask`` adds a channel mask for this
    evaluation) and compute its metrics on ``split`` (see ``analysis.evaluate``)."""
    from cmkdtool.analysis.evaluate import evaluate
    from cmkdtool.engine.device import resolve_precision
    from cmkdtool.pipelines.open import open_checkpoint, show_notes

    opened = open_checkpoint(
        checkpoint, tables, device, split_ratio=split_ratio, split_seed=split_seed, mask=mask, mask_seed=0
    )
    show_notes(opened.notes, quiet)
    model, data = opened.model, opened.data
    metrics, scores, rows = evaluate(
        model,
        data,
        split=split,
        topk=topk,
        retrieval=retrieval,
        gallery_split=gallery,
        precision=resolve_precision(precision, data.device),
    )
    result = {"checkpoint": checkpoint, "split": split, **metrics}
    if model.spec.get("mask"):
        m = model.spec["mask"]
        result["mask"] = f"{m['keep']} {m['ratio']:g} of {m['layer']}"
    return Evaluation(result, scores, rows, data, opened.spec)


__all__ = ["Evaluation", "run_eval"]
