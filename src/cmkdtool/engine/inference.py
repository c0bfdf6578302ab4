"""Predictions of a trained model on rows of a table, chunked, in eval mode (``nn.inference.map_rows``)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.device import autocast
from cmkdtool.nn.inference import CHUNK_ROWS, LazyRows, layer_outputs, map_rows


def predict(
    model: nn.Module,
    data: TensorData,
    index: Tensor,
    *,
    precision: str = "fp32",
    batch_size: int = CHUNK_ROWS,
    embeddings: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Logits (float32) and optionally embeddings of rows ``index``, in eval mode, chunked."""

    def run(idx: Tensor) -> tuple[Tensor, Tensor | None]:
        x = LazyRows(data.inputs, idx)  # gathers only the columns the model reads
        with autocast(precision, data.device):
            if embeddings:
                e = model.embed(x)
                return model.head(e).float(), e.float()
            return model(x).float(), None

    parts = map_rows(run, index, model, chunk=batch_size)
    n_out = getattr(model, "spec", {}).get("num_classes", 0)
    logits = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, n_out, device=data.device)
    if not embeddings:
        return logits, None
    embs = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, 0, device=data.device)
    return logits, embs


def predict_layers(
    model: nn.Module,
    data: TensorData,
    index: Tensor,
    layers: list[str],
    *,
    batch_size: int = CHUNK_ROWS,
    precision: str = "fp32",
) -> dict[str, Tensor]:
    """Float32 outputs of the named ``layers`` (``CmkdModel.layer_names``) on rows ``index``, in eval mode, chunked,
    on ``data``'s device. Raises ``CmkdError`` for an unknown layer; no rows give ``(0, width)`` tensors."""
    return layer_outputs(
        model, data.inputs, index, layers, chunk=batch_size, context=functools.partial(autocast, precision, data.device)
    )


__all__ = ["predict", "predict_layers"]
