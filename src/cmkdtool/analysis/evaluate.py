"""Evaluate a model on one split of a table: classification metrics, kNN retrieval (AMID protocol) and, for
bona fide / attack models, presentation attack detection metrics (ISO/IEC 30107-3)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cmkdtool.analysis.metrics import classification_metrics, multilabel_metrics, retrieval_recall
from cmkdtool.analysis.pad import VAL_EER, PadOptions, bona_fide_scores, eer_threshold, pad_metrics
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
    pad: PadOptions | None = None,
    attack_types: np.ndarray | None = None,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of ``model`` on ``split`` and the (logits, row indices) they came from.

    Raises CmkdError (naming the table) where the metrics cannot be computed from these rows.

    Retrieval: the ``split`` rows are queries, the ``gallery_split`` rows the gallery, ranked by cosine
    similarity of the model's embedding (the input of its head); R@k as in the AMID paper.

    PAD (``pad.pad``, a two-class model): the metrics of ``analysis.pad.pad_metrics`` on the softmax probability
    of ``pad.bona_fide_class``, with ``attack_types`` (one per row of ``data``, or None) for per-type APCER.
    Their ``notes`` (why a rate is NaN) come back under the key ``notes``.
    """
    try:
        return _evaluate(model, data, split, topk, retrieval, gallery_split, ks, precision, pad, attack_types)
    except ValueError as e:
        raise CmkdError(f"{data.source}: cannot evaluate the '{split}' split: {e}") from e


def _pad(model, data, rows, scores, pad, attack_types, precision) -> dict:
    """PAD metrics of the ``split`` rows (logits ``scores``); with ``val-eer``, the threshold from the val rows."""
    if data.task != "multiclass" or data.num_classes != 2:
        kind = f"a {data.num_classes}-class" if data.task == "multiclass" else "a multi-label"
        raise CmkdError(
            f"{data.source}: --pad needs a two-class (bona fide / attack) model, and this is {kind} model; "
            "evaluate a binary checkpoint or leave out --pad"
        )
    bf = pad.bona_fide_class
    threshold = pad.pad_threshold
    if threshold == VAL_EER:
        vidx = data.index("val")
        if len(vidx) == 0:
            raise CmkdError(f"{data.source}: --pad-threshold {VAL_EER} needs rows in the 'val' split, and it has none")
        vlogits, _ = predict(model, data, vidx, precision=precision)
        threshold, _ = eer_threshold(bona_fide_scores(vlogits.cpu().numpy(), bf), data.labels[vidx.cpu().numpy()], bf)
        if threshold != threshold:  # NaN: one class missing
            raise CmkdError(
                f"{data.source}: --pad-threshold {VAL_EER} needs bona fide and attack rows in the 'val' split; "
                "give a number such as 0.5 instead"
            )
    types = None if attack_types is None else attack_types[rows]
    apcer = "max" if pad.apcer_max else "pooled"
    return pad_metrics(bona_fide_scores(scores, bf), data.labels[rows], threshold, types, bf, apcer=apcer)


def _evaluate(model, data, split, topk, retrieval, gallery_split, ks, precision, pad=None, attack_types=None):
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
    if pad is not None and pad.pad:
        metrics.update(_pad(model, data, rows, scores, pad, attack_types, precision))
    return metrics, scores, rows
