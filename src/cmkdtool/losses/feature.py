"""Feature-level distillation losses between student and teacher (or bottleneck) features.

Pure functions of tensors: no module state, no host syncs. Inputs are (B, ...) and every non-batch dimension
is flattened into the feature vector of a sample. Every function casts its inputs to float32 (float64 stays
float64, so `torch.autograd.gradcheck` works), so the result is float32 under bf16 autocast.

Each loss is a per-sample distance averaged over the batch, so its scale does not depend on the batch size.
The teacher input is not detached: a frozen teacher carries no gradient anyway, and a method that trains
both sides decides what to detach.

`FEATURE_LOSSES` is the single place that maps the names used on the command line to these functions.

Contrastive losses (`feature_clip`, `feature_margin`) compare every student row with every teacher row of the
batch, so they depend on the batch composition by nature; a batch of one row has no negatives and gives 0.

Reference:
    "Understanding Dimensional Collapse in Cross-Modal Feature Distillation" (CIBA), Eq. 1:
    L_FD = 1/2 * sum_{i=1..N} ||W' x'_i - W x_i||_2^2; App. E.5 (cross-entropy between features);
    Table 1 (CLIP and Margin losses as base losses).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FEATURE_LOSSES",
    "FeatureLoss",
    "feature_ce",
    "feature_clip",
    "feature_cosine",
    "feature_l1",
    "feature_margin",
    "feature_mse",
]

FeatureLoss = Callable[[Tensor, Tensor], Tensor]

COSINE_EPS = 1e-8


def _compute_dtype(x: Tensor) -> Tensor:
    """Float32 for anything narrower (bf16, fp16, ints); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def check_pair(student: Tensor, teacher: Tensor, why: str = "") -> None:
    """Raise ValueError unless ``student`` and ``teacher`` are (B, ...) features of one shape with B >= 1
    (``why`` says what needs equal shapes, in the message)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
            f"differ in shape; {why}add a projector"
        )
    if student.ndim < 2:
        raise ValueError(
            f"features must be (batch, ...) with at least 2 dimensions, got shape {tuple(student.shape)}; "
            "add a feature dimension (e.g. x.unsqueeze(1))"
        )
    if student.shape[0] == 0:
        raise ValueError("features have an empty batch (0 rows); a loss over no samples is undefined")


def _flat_pair(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Check the shapes and return both as (B, D) tensors in one compute dtype (float64 when either is)."""
    check_pair(student, teacher)
    s, t = _compute_dtype(student).flatten(1), _compute_dtype(teacher).flatten(1)
    return (s.double(), t.double()) if torch.float64 in (s.dtype, t.dtype) else (s, t)


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


def feature_ce(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy between softmax-normalised features, averaged over the batch (CIBA App. E.5).

    ``p'_i = softmax(t_i / T)``, ``p_i = softmax(s_i / T)`` over the feature dimensions; the loss is
    (1 / B) * sum_i -<p'_i, log p_i>. Its gradient with respect to ``s_i`` is (p_i - p'_i) / (B T), the one
    App. E.5 derives (for T = 1). It is the cross-entropy, not the KL divergence: the two differ by the
    teacher's entropy, a constant for a frozen teacher, so the gradients are equal and only the reported value
    differs (its minimum is the teacher's entropy, not 0). No T^2 factor (T = 1 in the paper).

    Args:
        student: (B, ...) student features (after any projector).
        teacher: (B, ...) teacher or bottleneck features, same shape.
        temperature: T > 0.

    Returns and raises as `feature_mse` (and ValueError for T <= 0).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s, t = _flat_pair(student, teacher)
    p_t = torch.softmax(t / temperature, dim=1)
    return -(p_t * torch.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()


def _logit_scale(scale: Tensor | float, like: Tensor) -> Tensor:
    scale = torch.as_tensor(scale, device=like.device)
    return scale.to(like.dtype)


def _cosine_matrix(s: Tensor, t: Tensor) -> Tensor:
    """``c_ij = cos(s_i, t_j)`` in the inputs' (float32/64) dtype, also under autocast (no bf16 matmul)."""
    with torch.autocast(s.device.type, enabled=False):
        return F.normalize(s, dim=1, eps=COSINE_EPS) @ F.normalize(t, dim=1, eps=COSINE_EPS).T


def feature_clip(student: Tensor, teacher: Tensor, logit_scale: Tensor | float = 1.0 / 0.07) -> Tensor:
    """Symmetric InfoNCE over the batch (CLIP, Radford et al. 2021), the 'CLIP' base loss of CIBA Table 1.

    With unit-normalised rows ``u_i = s_i / ||s_i||`` and ``v_j = t_j / ||t_j||`` and logits
    ``L_ij = scale * <u_i, v_j>`` (scale = 1 / tau)::

        loss = 1/2 * [ (1/B) sum_i -log softmax_j(L_ij)[i]  +  (1/B) sum_j -log softmax_i(L_ij)[j] ]

    Row i of the teacher batch is the positive of student row i; the other B - 1 rows are negatives.
    ``logit_scale`` may be a learnable tensor (the caller owns it and any clamping); gradients flow to it.
    Unnormalisable zero rows use eps 1e-8, as `feature_cosine`. B = 1 gives 0 (no negatives).

    Returns and raises as `feature_mse`.
    """
    s, t = _flat_pair(student, teacher)
    logits = _logit_scale(logit_scale, s) * _cosine_matrix(s, t)
    target = torch.arange(len(s), device=s.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def feature_margin(student: Tensor, teacher: Tensor, margin: float = 0.2) -> Tensor:
    """Bidirectional contrastive hinge on cosine similarity with in-batch negatives ('Margin' of CIBA Table 1).

    With ``c_ij = cos(s_i, t_j)`` (eps 1e-8) and margin m, averaged over all B (B - 1) ordered negative pairs::

        loss = 1 / (B (B - 1)) * sum_i sum_{j != i} 1/2 * [ max(0, m - c_ii + c_ij) + max(0, m - c_ii + c_ji) ]

    The first hinge ranks the true teacher row above every other teacher row for student row i; the second
    ranks student row i above every other student row for teacher row i (the sum-of-hinges ranking loss of
    visual-semantic embeddings, Kiros et al. 2014 / Faghri et al. 2018, without hard-negative mining). The
    loss is 0 once every positive beats every negative by m; its value lies in [0, m + 2]. B = 1 gives 0.

    Returns and raises as `feature_mse` (and ValueError for a negative margin).
    """
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    s, t = _flat_pair(student, teacher)
    b = len(s)
    c = _cosine_matrix(s, t)
    pos = c.diagonal()
    off = ~torch.eye(b, dtype=torch.bool, device=c.device)
    hinge = (margin - pos[:, None] + c).clamp_min(0) + (margin - pos[None, :] + c).clamp_min(0)
    # summed over the off-diagonal, the second hinge is sum_i sum_{j != i} max(0, m - c_ii + c_ji) with i, j swapped
    return 0.5 * (hinge * off).sum() / max(b * (b - 1), 1)


FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "mse": feature_mse,
    "l1": feature_l1,
    "cosine": feature_cosine,
    "ce": feature_ce,
    "clip": feature_clip,
    "margin": feature_margin,
}
