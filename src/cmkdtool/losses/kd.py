"""Output-level (logit) distillation losses.

Pure functions of tensors: no module state, no host syncs. Every function casts its inputs to float32
(float64 stays float64, so `torch.autograd.gradcheck` works), so the result is float32 under bf16 autocast
and the softmaxes never run in reduced precision.

The teacher input is *not* detached: a frozen teacher already carries no gradient, and a method that trains
both sides (online / mutual distillation) decides for itself what to detach.

References:
    Xue et al., "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation",
    ICLR 2023, Eq. 1: L = rho * L_task + (1 - rho) * L_kd, with L_kd the KL divergence between the teacher's
    and the student's predictions. The weighting (rho) belongs to the method; these functions give L_kd.
    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015: softened softmax with
    temperature T and the T^2 factor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hinton_kd", "kd_kl", "soft_bce_kd"]


def _compute_dtype(x: Tensor) -> Tensor:
    """Float32 for anything narrower (bf16, fp16, ints); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; both must be (batch, num_classes) over the same classes"
        )
    if student_logits.ndim != 2:
        raise ValueError(
            f"logits must be 2-D (batch, num_classes), got shape {tuple(student_logits.shape)}; "
            "flatten extra dimensions into the batch first"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("logits have an empty batch (0 rows); a loss over no samples is undefined")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(t / T) || softmax(s / T)), summed over classes and averaged over the batch.

    This is L_kd of Xue et al. 2023, Eq. 1 (and Hinton et al. 2015 without the T^2 factor):

        kd_kl = (1 / B) * sum_i sum_k p_ik * (log p_ik - log q_ik),
        p_i = softmax(t_i / T),  q_i = softmax(s_i / T).

    Computed stably from log-softmaxes (`kl_div(..., log_target=True, reduction="batchmean")`). Its gradient
    with respect to the student logits is (q - p) / (T * B). No T^2 factor is applied here: use `hinton_kd`
    or multiply in the caller.

    Args:
        student_logits: (B, K) unnormalised student scores.
        teacher_logits: (B, K) unnormalised teacher scores over the same K classes.
        temperature: softmax temperature T > 0.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs), >= 0, zero iff the two softmaxes agree.

    Raises:
        ValueError: on a shape mismatch, non-2-D logits, an empty batch or a temperature <= 0.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    s = _compute_dtype(student_logits) / temperature
    t = _compute_dtype(teacher_logits) / temperature
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="batchmean")


def hinton_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. 2015 distillation loss: T^2 * kd_kl(student_logits, teacher_logits, T).

    For large T the gradient of kd_kl, (q - p) / (T * B), shrinks as 1/T^2; the T^2 factor keeps the gradient
    magnitudes comparable across temperatures, so the weight of this term against the task loss
    (rho in Xue et al. 2023, Eq. 1) need not be retuned when T changes. For T -> infinity and zero-mean
    logits it tends to (1 / (2 K B)) * sum_i ||s_i - t_i||^2 (logit matching).

    Args and raises: as `kd_kl`; the default temperature is 4.
    """
    return temperature**2 * kd_kl(student_logits, teacher_logits, temperature)


def soft_bce_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Multi-label distillation: per-class Bernoulli KL(sigmoid(t / T) || sigmoid(s / T)), mean over batch and classes.

    For multi-label tasks each class is an independent Bernoulli, so the softmax KL of Xue et al. 2023 Eq. 1
    becomes, with p = sigmoid(t / T) as soft targets and q = sigmoid(s / T):

        soft_bce_kd = mean_{i,k} [ BCE(q_ik; p_ik) - H(p_ik) ]
                    = mean_{i,k} [ p log(p / q) + (1 - p) log((1 - p) / (1 - q)) ],

    i.e. the binary cross-entropy against the teacher's soft targets minus the teacher's own entropy, so the
    loss is 0 when s == t and its minimum does not depend on the teacher's confidence. Both terms are computed
    with `binary_cross_entropy_with_logits` (stable for large logits). The gradient with respect to the student
    logits is (q - p) / (T * B * K).

    Unlike `kd_kl` the mean is over classes too (the usual BCE convention), and no T^2 factor is applied: the
    caller multiplies by T^2 (or any weight) when it wants Hinton's scaling.

    Args and raises: as `kd_kl`.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    s = _compute_dtype(student_logits) / temperature
    t = _compute_dtype(teacher_logits) / temperature
    p = torch.sigmoid(t)
    cross = F.binary_cross_entropy_with_logits(s, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
    return (cross - entropy).mean()
