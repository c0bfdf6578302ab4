"""Relational distillation losses: RKD, PKT, SP and NST, each as its reference code computes it.

These losses compare how the samples of one batch relate to each other (distances, angles, similarities,
kernel statistics) in the student and in the teacher, so the student and teacher feature sizes may differ;
only the batch (the same rows, in the same order) must match. They depend on the batch composition by nature.

Each function reproduces the arithmetic of HobbitLong/RepDistiller (the reference the spec names for them),
commit b84f547c5db6a35318d4671d7d5c4de74c822403, `distiller_zoo/{RKD,PKT,SP,NST}.py`: the same reductions,
normalisations and eps, checked against the parity fixtures in `shared/parity` (relative error < 1e-9 in
float64). Every deviation from the reference is listed in the function's docstring; the ones common to all:

* The teacher is not detached. The reference computes the teacher side of RKD under `torch.no_grad()` and
  detaches NST's teacher-teacher kernel term; here, as in `kd.py` and `feature.py`, detaching is the method's
  decision (a frozen teacher carries no gradient anyway). Values and student gradients are identical.
* The result is a 0-d tensor (the reference's SP returns shape (1,)).
* Inputs are cast to float32 (float64 stays float64, so `torch.autograd.gradcheck` works) and the matrix
  products run with autocast disabled, so the result is float32 under bf16 autocast.
* No host syncs: boolean-mask indexing (`d[d > 0].mean()`) is replaced by an equal masked sum / count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkdtool.losses._precision import compute_dtype

__all__ = ["nst", "pkt", "rkd", "rkd_angle", "rkd_distance", "sp"]

REFERENCE = "HobbitLong/RepDistiller@b84f547c5db6a35318d4671d7d5c4de74c822403"


def _check_batch(student: Tensor, teacher: Tensor, what: str, min_ndim: int) -> None:
    for side, x in (("student", student), ("teacher", teacher)):
        if x.ndim < min_ndim:
            raise ValueError(
                f"{side} {what} must be (batch, ...) with at least {min_ndim} dimensions, got shape "
                f"{tuple(x.shape)}; add a feature dimension (e.g. x.unsqueeze(1))"
            )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} have different "
            f"batch sizes ({student.shape[0]} vs {teacher.shape[0]}); a relational loss compares the samples of "
            "one batch with each other, so pass the student and teacher outputs for the same rows "
            "(their feature sizes may differ)"
        )
    if student.shape[0] == 0:
        raise ValueError(f"{what} have an empty batch (0 rows); a loss over no samples is undefined")


def _flat_pair(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Check the batch and return both as (B, D_s), (B, D_t) tensors in the compute dtype."""
    _check_batch(student, teacher, "features", 2)
    return compute_dtype(student).flatten(1), compute_dtype(teacher).flatten(1)


def _check_eps(eps: float, positive: bool) -> None:
    ok = isinstance(eps, (int, float)) and math.isfinite(eps) and (eps > 0 if positive else eps >= 0)
    if not ok:
        raise ValueError(f"eps must be a finite number {'> 0' if positive else '>= 0'}, got {eps!r}")


# ---------------------------------------------------------------- RKD (Park et al. 2019)


def _normalised_pdist(e: Tensor, eps: float) -> Tensor:
    """Pairwise distances divided by the mean of the positive (= off-diagonal) ones, diagonal 0.

    As RepDistiller's ``RKDLoss.pdist``: ``sqrt(clamp(|e_i|^2 + |e_j|^2 - 2 <e_i, e_j>, min=eps))`` with the
    diagonal then set to 0. Because of the clamp every off-diagonal entry is >= sqrt(eps) > 0, so the
    reference's ``d[d > 0].mean()`` is the mean over the B (B - 1) off-diagonal entries (coinciding rows
    count with distance sqrt(eps), and their gradient is 0).
    """
    sq = e.square().sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.T)).clamp(min=eps).sqrt()
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    d = torch.where(off_diagonal, d, torch.zeros((), dtype=d.dtype, device=d.device))
    return d / (d.sum() / (d > 0).sum())


def rkd_distance(student: Tensor, teacher: Tensor, eps: float = 1e-12) -> Tensor:
    """RKD distance term: Huber loss between mean-normalised pairwise distance matrices.

    Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019, Sec. 3.2 (distance-wise loss), as
    computed by RepDistiller's ``RKDLoss`` (`distiller_zoo/RKD.py`, the ``loss_d`` part)::

        d_ij   = sqrt(max(|e_i|^2 + |e_j|^2 - 2 <e_i, e_j>, eps))  for i != j,   d_ii = 0
        psi_ij = d_ij / mu,   mu = mean_{i != j} d_ij                       (per side)
        rkd_distance = (1 / B^2) sum_{i,j} huber(psi^s_ij - psi^t_ij),
        huber(x) = x^2 / 2 if |x| < 1 else |x| - 1/2                       (smooth_l1, beta = 1)

    The mean is over all B^2 entries, the zero diagonal included (the reference's ``F.smooth_l1_loss``
    default), not over the B (B - 1) pairs. The squared distances use the Gram-matrix expansion of the
    reference, so for rows much closer to each other than to the origin they lose precision in float32.
    Both sides are normalised by their own mean distance: the loss is invariant to scaling either side.

    Deviations from the reference: the teacher is not detached (see the module docstring); a batch of one
    row raises a ValueError (the reference returns NaN, the mean of no distances).

    Args:
        student: (B, ...) student features; non-batch dimensions are flattened.
        teacher: (B, ...) teacher features for the same rows; the feature size may differ.
        eps: floor of the squared distances (> 0: it keeps the gradient of sqrt finite for coinciding rows).

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs), >= 0.

    Raises:
        ValueError: on different batch sizes, fewer than 2 dimensions, fewer than 2 rows, or eps <= 0.
    """
    _check_eps(eps, positive=True)
    s, t = _flat_pair(student, teacher)
    if s.shape[0] < 2:
        raise ValueError(
            f"rkd_distance needs at least 2 rows to form a pair, got a batch of {s.shape[0]}; "
            "drop a last batch of one row (DataLoader(drop_last=True))"
        )
    with torch.autocast(s.device.type, enabled=False):
        return F.smooth_l1_loss(_normalised_pdist(s, eps), _normalised_pdist(t, eps), beta=1.0)


def _triplet_cosines(e: Tensor) -> Tensor:
    """``a[i, j, k] = <n(e_j - e_i), n(e_k - e_i)>``, n = F.normalize (eps 1e-12: a zero vector stays zero)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[i, j] = n(e_j - e_i)
    return diff @ diff.transpose(1, 2)


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle term: Huber loss between the cosines of all triplet angles.

    Park et al., CVPR 2019, Sec. 3.2 (angle-wise loss), as computed by RepDistiller's ``RKDLoss`` (the
    ``loss_a`` part)::

        a_ijk = < n(e_j - e_i), n(e_k - e_i) >,   n(v) = v / max(|v|, 1e-12)   (cosine of the angle at e_i)
        rkd_angle = (1 / B^3) sum_{i,j,k} huber(a^s_ijk - a^t_ijk)           (smooth_l1, beta = 1)

    All B^3 index triples are used, degenerate ones included: when j = i or k = i the difference vector is
    zero, so a = 0 on both sides, and j = k gives a = 1 on both sides; these add nothing to the sum but count
    in the 1 / B^3 mean (the paper sums over distinct triplets). With B <= 2 the result is 0 (up to rounding).
    Memory is O(B^2 D + B^3). Invariant to scaling and translating either side.

    Deviation from the reference: the teacher is not detached (see the module docstring).

    Args:
        student: (B, ...) student features; non-batch dimensions are flattened.
        teacher: (B, ...) teacher features for the same rows; the feature size may differ.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs), >= 0.

    Raises:
        ValueError: on different batch sizes, fewer than 2 dimensions or an empty batch.
    """
    s, t = _flat_pair(student, teacher)
    with torch.autocast(s.device.type, enabled=False):
        return F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t), beta=1.0)


def rkd(student: Tensor, teacher: Tensor, w_d: float = 25.0, w_a: float = 50.0) -> Tensor:
    """Relational knowledge distillation: ``w_d * rkd_distance + w_a * rkd_angle``.

    Park et al., CVPR 2019, Sec. 3.2 (L = lambda_D L_RKD-D + lambda_A L_RKD-A), with the weights of
    RepDistiller's ``RKDLoss(w_d=25, w_a=50)``, which OS-MD's author also runs inside DASK (the official
    lenscloth/RKD examples pass 1 and 2 on the command line). See `rkd_distance` (eps 1e-12) and `rkd_angle`
    for the terms and the deviations.

    Args:
        student: (B, ...) student features; non-batch dimensions are flattened.
        teacher: (B, ...) teacher features for the same rows; the feature size may differ.
        w_d: weight of the distance term (finite, >= 0).
        w_a: weight of the angle term (finite, >= 0).

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs), >= 0.

    Raises:
        ValueError: as `rkd_distance`, and for a negative or non-finite weight.
    """
    for name, w in (("w_d", w_d), ("w_a", w_a)):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    return w_d * rkd_distance(student, teacher) + w_a * rkd_angle(student, teacher)


# ---------------------------------------------------------------- PKT (Passalis & Tefas 2018)


def _pkt_probabilities(e: Tensor, eps: float) -> Tensor:
    u = e / (torch.linalg.vector_norm(e, dim=1, keepdim=True) + eps)
    c = (u @ u.T + 1.0) / 2.0
    return c / c.sum(dim=1, keepdim=True)


def pkt(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: KL(teacher || student) between cosine-kernel affinity distributions.

    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018
    (cosine-similarity kernel, KL divergence between the teacher's and the student's conditional
    probabilities), as computed by RepDistiller's ``PKT.cosine_similarity_loss`` (`distiller_zoo/PKT.py`)::

        u_i  = e_i / (|e_i|_2 + eps)                           (per side)
        c_ij = (<u_i, u_j> + 1) / 2                            in [0, 1]
        p_ij = c_ij / sum_k c_ik                               rows are probability distributions
        pkt  = (1 / B^2) sum_{i,j} p^t_ij * log((p^t_ij + eps) / (p^s_ij + eps))

    As in the reference the self-similarities (j = i) are part of each row's distribution and of the sum,
    and the reduction is the mean over all B^2 entries, i.e. the per-row KL averaged over rows and divided by
    B once more (the script weight 30000 compensates). eps = 1e-7 is used both in the normalisation and in
    the log. An all-zero row becomes u = 0 (cosines 0, c = 1/2).

    Deviations from the reference: the norm is `torch.linalg.vector_norm`, whose own gradient at an all-zero
    row is 0, so the loss's gradient there is finite (of order 1 / eps, from the division); the reference's
    ``sqrt(sum(x ** 2))`` makes it NaN. Values are identical. The reference's ``x[x != x] = 0`` after the
    normalisation is dropped: it only fires for non-finite inputs, which here propagate as NaN instead of
    being silently zeroed.

    Args:
        student: (B, ...) student features; non-batch dimensions are flattened.
        teacher: (B, ...) teacher features for the same rows; the feature size may differ.
        eps: the reference's 1e-7 (>= 0; with 0 an all-zero row gives NaN).

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs); 0 when both sides have the same cosines.

    Raises:
        ValueError: on different batch sizes, fewer than 2 dimensions, an empty batch or eps < 0.
    """
    _check_eps(eps, positive=False)
    s, t = _flat_pair(student, teacher)
    with torch.autocast(s.device.type, enabled=False):
        p_s, p_t = _pkt_probabilities(s, eps), _pkt_probabilities(t, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ---------------------------------------------------------------- SP (Tung & Mori 2019)


def sp(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving distillation: squared difference of row-normalised batch Gram matrices.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (G = Q Q^T, row-wise L2
    normalisation, squared Frobenius norm / b^2), as computed by RepDistiller's
    ``Similarity.similarity_loss`` (`distiller_zoo/SP.py`)::

        G   = f f^T                                 (B x B; f is (B, D), per side)
        G~_i = G_i / max(|G_i|_2, 1e-12)            row-wise (F.normalize)
        sp  = (1 / B^2) sum_{i,j} (G~^t_ij - G~^s_ij)^2

    The row normalisation makes G~ asymmetric and the loss invariant to scaling either side.

    Deviation from the reference: returns a 0-d tensor (the reference returns shape (1,)).

    Args:
        student: (B, ...) student features or maps; non-batch dimensions are flattened.
        teacher: (B, ...) teacher features for the same rows; the feature size may differ.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs), >= 0.

    Raises:
        ValueError: on different batch sizes, fewer than 2 dimensions or an empty batch.
    """
    s, t = _flat_pair(student, teacher)
    b = s.shape[0]
    with torch.autocast(s.device.type, enabled=False):
        g_s = F.normalize(s @ s.T, p=2, dim=1)
        g_t = F.normalize(t @ t.T, p=2, dim=1)
        return (g_t - g_s).square().sum() / (b * b)


# ---------------------------------------------------------------- NST (Huang & Wang 2017)


def nst(student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
    """Neuron selectivity transfer: squared MMD with the polynomial kernel between channel activation maps.

    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv 1707.01219,
    2017 (MMD^2 with the polynomial kernel k(x, y) = (x^T y + c)^d, d = 2, c = 0, over the L2-normalised
    spatial activation vectors of each channel), as computed by RepDistiller's ``NSTLoss.nst_loss``
    (`distiller_zoo/NST.py`)::

        f_bc = vec(map_bc) / max(|vec(map_bc)|_2, 1e-12)     per sample b, channel c (HW positions)
        K^xy = mean_{b, c, c'} <f^x_bc, f^y_bc'>^2
        nst  = K^tt + K^ss - 2 K^st

    The means are over B x C_x x C_y, so the channel counts may differ. When the spatial sizes differ, the
    larger map is reduced with `F.adaptive_avg_pool2d` to the smaller size before flattening, as in the
    reference. Invariant to a positive rescaling of any channel.

    Deviations from the reference: it compares heights only and pools to a square (H, H), so it crashes on
    non-square maps of different sizes; here each map is pooled to (min(H_s, H_t), min(W_s, W_t)) where it
    differs (the same as the reference for square maps). The teacher-teacher term is not detached (see the
    module docstring); the reference detaches only that term, so even there a teacher that requires grad
    receives one through K^st.

    Args:
        student_maps: (B, C_s, H_s, W_s) student feature maps (a cnn2d layer's output before pooling).
        teacher_maps: (B, C_t, H_t, W_t) teacher feature maps for the same rows.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs), >= 0 (up to rounding).

    Raises:
        ValueError: on inputs that are not 4-D feature maps, different batch sizes or an empty batch.
    """
    for side, x in (("student", student_maps), ("teacher", teacher_maps)):
        if x.ndim != 4:
            raise ValueError(
                f"nst needs feature maps (batch, channels, height, width), got {side} shape {tuple(x.shape)}; "
                "NST matches how each channel's activations spread over spatial positions, so use a cnn2d "
                "layer's output before global pooling, not pooled (batch, features) vectors"
            )
    _check_batch(student_maps, teacher_maps, "maps", 4)
    s, t = compute_dtype(student_maps), compute_dtype(teacher_maps)
    with torch.autocast(s.device.type, enabled=False):
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        if tuple(s.shape[2:]) != size:
            s = F.adaptive_avg_pool2d(s, size)
        if tuple(t.shape[2:]) != size:
            t = F.adaptive_avg_pool2d(t, size)
        f_s = F.normalize(s.flatten(2), p=2, dim=2)
        f_t = F.normalize(t.flatten(2), p=2, dim=2)

        def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
            return (a @ b.transpose(1, 2)).square().mean()

        return kernel_mean(f_t, f_t) + kernel_mean(f_s, f_s) - 2.0 * kernel_mean(f_s, f_t)
