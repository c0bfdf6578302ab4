"""Feature-level distillation losses between student and teacher (or bottleneck) features.

Pure functions of tensors: no module state, no host syncs. Inputs are (B, ...) and every non-batch dimension
is flattened into the feature vector of a sample. Every function casts its inputs to float32 (float64 stays
float64, so `torch.autograd.gradcheck` works), so the result is float32 under bf16 autocast.

Each loss is a per-sample distance averaged over the batch, so its scale does not depend on the batch size.
The teacher input is not detached: a frozen teacher carries no gradient anyway, and a method that trains
both sides decides what to detach.

`FEATURE_LOSSES` is the single place that maps the names used on the command line to these functions.

Reference:
    "Understanding Dimensional Collapse in Cross-Modal Feature Distillation" (CIBA), Eq. 1:
    L_FD = 1/2 * sum_{i=1..N} ||W' x'_i - W x_i||_2^2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FEATURE_LOSSES", "FeatureLoss", "feature_cosine", "feature_l1", "feature_mse"]

FeatureLoss = Callable[[Tensor, Tensor], Tensor]

COSINE_EPS = 1e-8


def _compute_dtype(x: Tensor) -> Tensor:
    """Float32 for anything narrower (bf16, fp16, ints); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _flat_pair(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Check the shapes and return both as (B, D) tensors in the compute dtype."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
            "differ in shape; add a projector"
        )
    if student.ndim < 2:
        raise ValueError(
            f"features must be (batch, ...) with at least 2 dimensions, got shape {tuple(student.shape)}; "
            "add a feature dimension (e.g. x.unsqueeze(1))"
        )
    if student.shape[0] == 0:
        raise ValueError("features have an empty batch (0 rows); a loss over no samples is undefined")
    return _compute_dtype(student).flatten(1), _compute_dtype(teacher).flatten(1)


def feature_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Half squared Euclidean distance, averaged over the batch: (1 / B) * sum_i 1/2 * ||s_i - t_i||_2^2.

    CIBA Eq. 1 (L_FD = 1/2 * sum_i ||W' x'_i - W x_i||^2) divided by the batch size N. Deviation from the
    paper: the paper sums over samples; dividing by N keeps the loss, and the learning rate that suits it,
    independent of the batch size. The optimum is unchanged. The gradient with respect to the student is
    (s - t) / B. Features are summed (not averaged) over their dimensions, as in the paper.

    Args:
        student: (B, ...) student features (after any projector).
        teacher: (B, ...) teacher or bottleneck features, same shape.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs).

    Raises:
        ValueError: on a shape mismatch, fewer than 2 dimensions or an empty batch.
    """
    s, t = _flat_pair(student, teacher)
    return 0.5 * (s - t).square().sum(dim=1).mean()


def feature_l1(student: Tensor, teacher: Tensor) -> Tensor:
    """L1 distance, averaged over the batch: (1 / B) * sum_i ||s_i - t_i||_1.

    The L1 counterpart of `feature_mse` (CIBA Eq. 1 with the squared L2 norm replaced by the L1 norm, per-sample
    mean). Args, returns and raises as `feature_mse`.
    """
    s, t = _flat_pair(student, teacher)
    return (s - t).abs().sum(dim=1).mean()


def feature_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """Cosine distance, averaged over the batch: (1 / B) * sum_i (1 - cos(s_i, t_i)).

    cos is `torch.nn.functional.cosine_similarity` with eps = 1e-8, so a zero vector gives cos = 0 (loss 1)
    and a finite gradient. Scale-invariant in each sample; the result lies in [0, 2].
    Args, returns and raises as `feature_mse`.
    """
    s, t = _flat_pair(student, teacher)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=COSINE_EPS)).mean()


FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "mse": feature_mse,
    "l1": feature_l1,
    "cosine": feature_cosine,
}
