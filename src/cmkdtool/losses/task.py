"""The supervised task loss every method combines with its distillation terms."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def task_loss(logits: Tensor, target: Tensor, task: str | None) -> Tensor:
    """Cross-entropy (batch mean) for multi-class targets ``(B,)``; binary cross-entropy with logits (mean over
    batch and classes) for multi-hot targets ``(B, C)`` of a ``multilabel`` task."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)
