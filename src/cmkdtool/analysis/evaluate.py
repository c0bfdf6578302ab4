"""Evaluate a model on one split of a table: classification metrics and kNN retrieval (AMID protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cmkdtool.analysis.metrics import classification_metrics, multilabel_metrics, retrieval_recall
from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.inference import predict
from cmkdtool.errors import CmkdError, CmkdUsageError

SPLIT_CHOICES = ("train", "val", "test", "all")


def _rows(data: TensorData, split: str) -> torch.Tensor:
    if split == "all":
        return torch.arange(len(data), device=data.device)
    return data.index(split)


def evaluate(
    model: torch.nn.Module,
    data: TensorData,
    *,
    split: str = "test",
    topk: Sequence[int] = (1, 5),
    retrieval: bool = True,
    gallery_split: str = "train",
    ks: Sequence[int] = (1, 5, 10),
    precision: str = "fp32",
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of ``model`` on ``split`` and the (logits, row indices) they came from.

    Raises CmkdError (naming the table) where the metrics cannot be computed from these rows.

    Retrieval: the ``split`` rows are queries, the ``gallery_split`` rows the gallery, ranked by cosine
    similarity of the model's embedding (the input of its head); R@k as in the AMID paper.
    """
    try:
        return _evaluate(model, data, split, topk, retrieval, gallery_split, ks, precision)
    except ValueError as e:
        raise CmkdError(f"{data.source}: cannot evaluate the '{split}' split: {e}") from e


def _evaluate(model, data, split, topk, retrieval, gallery_split, ks, precision):
    if split not in SPLIT_CHOICES:
        raise CmkdUsageError(f"unknown split '{split}'; choose one of {', '.join(SPLIT_CHOICES)}")
    idx = _rows(data, split)
    if len(idx) == 0:
        raise CmkdError(f"{data.source}: no rows in the '{split}' split; choose another --split")
    logits, emb = predict(model, data, idx, precision=precision, embeddings=retrieval)
    scores = logits.cpu().numpy()
    rows = idx.cpu().numpy()
    if data.task == "multilabel":
        metrics = multilabel_metrics(data.target[idx].cpu().numpy(), scores)
    else:
        metrics = classification_metrics(data.labels[rows], scores, num_classes=data.num_classes, topk=topk)
    if retrieval and gallery_split != split and "all" not in (split, gallery_split):  # disjoint sets only
        gidx = _rows(data, gallery_split)
        if len(gidx):
            _, gemb = predict(model, data, gidx, precision=precision, embeddings=True)
            glab = gidx.cpu().numpy()
            if data.task == "multilabel":
                ql, gl = data.target[idx].cpu().numpy(), data.target[gidx].cpu().numpy()
            else:
                ql, gl = data.labels[rows], data.labels[glab]
            metrics.update(retrieval_recall(emb.cpu().numpy(), ql, gemb.cpu().numpy(), gl, ks=ks))
    return metrics, scores, rows
