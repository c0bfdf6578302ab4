"""AMID's losses (Chen, Xing, Wang, Zhang, "Adversarial Mutual Information Distillation", CVPR 2023), as pure
functions: the class-aware contrastive bound on mutual information (Eqs. 7-9), the adversarial generator and
discriminator losses (Eqs. 11-13) with their same-class pairing and normaliser, and the dynamic weights (Eq. 14).

AMID has no public code; ``shared/specs/amid-osmd.md`` section 1 fixes every shape, reduction and gradient path
and names each open choice (A1-A11). The JSD of Eq. 16 is ``losses.contrastive.js_divergence`` (CCL's symmetric
KL is ``sym_kl``). Conventions as ``contrastive.py``: 0-d results, float64 stays float64, no host syncs (masks
are weights, never boolean indices), nothing detached here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkdtool.losses._precision import compute_dtype

__all__ = [
    "adversarial_loss",
    "discriminator_loss",
    "expected_pair_rows",
    "lambda_update",
    "mi_bound_loss",
    "same_class_pairs",
]


def log_softmax_complement(s: Tensor) -> Tensor:
    r"""``log(1 - softmax(s, dim=1))`` exactly:
    :math:`\mathrm{logsumexp}_{j \ne u} s_{ij} - \mathrm{logsumexp}_j s_{ij}`.

    With :math:`m_i` the row maximum and :math:`T_i = \sum_j e^{s_{ij} - m_i} \ge 1`: for a column other than the
    row's argmax, :math:`\log(T_i - e^{s_{iu} - m_i}) - \log T_i` (the argmax's term keeps the difference >= 1, so
    nothing cancels); for the argmax column, the log-sum-exp of the row without it (a direct sum, exact even when
    that column holds almost all the mass and ``log h`` rounds to 0).
    """
    lse = torch.logsumexp(s, dim=1, keepdim=True)
    m = s.max(dim=1, keepdim=True).values
    e = torch.exp(s - m)
    rest = torch.log((e.sum(1, keepdim=True) - e).clamp(min=torch.finfo(s.dtype).tiny)) + m - lse
    top = torch.nn.functional.one_hot(s.argmax(1), s.shape[1]).bool()
    without_top = torch.logsumexp(s.masked_fill(top, float("-inf")), dim=1, keepdim=True) - lse
    return torch.where(top, without_top, rest)


def mi_bound_loss(anchor: Tensor, candidates: Tensor, labels: Tensor, tau: float, reduction: str = "sum") -> Tensor:
    r"""AMID Eq. 8 (``L_MI_s``; Eq. 9 ``L_MI_a`` with the auxiliary features as candidates).

    With :math:`s_{iu} = \cos(M_i, S_u) / \tau` (rows: anchors ``anchor``, columns: ``candidates``, same batch) and
    the critic :math:`h(M_i, S_u) = \mathrm{softmax}_u(s_{iu})` over all B candidates (Eq. 7):

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_i\Big[\sum_{u \in P_i} \log h_{iu} + \sum_{u \in N_i} \log(1 - h_{iu})\Big]

    :math:`P_i` the candidates of the anchor's class (itself included), :math:`N_i` the others. ``reduction``
    ``sum`` is Eq. 8 as printed; ``mean`` divides each inner sum by its size, which is CCL's ``NCELoss`` (no
    epsilon here: :math:`\log h = s_{iu} - \mathrm{logsumexp}_j s_{ij}`, :math:`\log(1-h)` by
    ``log_softmax_complement``; CCL adds
    1e-10 inside its logs). An empty :math:`N_i` (a one-class batch) contributes 0. B must be at least 2
    (:math:`1 - h = 0` for B = 1).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if anchor.ndim != 2 or candidates.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            f"anchor and candidates must be (batch, width) and labels (batch,), got {tuple(anchor.shape)}, "
            f"{tuple(candidates.shape)}, {tuple(labels.shape)}"
        )
    if not anchor.shape[0] == candidates.shape[0] == labels.shape[0]:
        raise ValueError(
            f"batch sizes differ: anchor {anchor.shape[0]}, candidates {candidates.shape[0]}, labels "
            f"{labels.shape[0]}; pass the rows of one batch"
        )
    if anchor.shape[0] < 2:
        raise ValueError(
            "the MI bound needs a batch of at least 2 rows (log(1 - h) is -inf for one); raise --batch-size"
        )
    a, c = F.normalize(compute_dtype(anchor), dim=1), F.normalize(compute_dtype(candidates), dim=1)
    with torch.autocast(a.device.type, enabled=False):
        s = a @ c.T / tau
    log_h = s - torch.logsumexp(s, dim=1, keepdim=True)
    log_not_h = log_softmax_complement(s)
    pos = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(s.dtype)
    neg = 1 - pos
    pos_sum, neg_sum = (log_h * pos).sum(1), (log_not_h * neg).sum(1)
    if reduction == "mean":
        pos_sum, neg_sum = pos_sum / pos.sum(1), neg_sum / neg.sum(1).clamp(min=1)
    return -(pos_sum + neg_sum).mean()


def same_class_pairs(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    r"""AMID's :math:`\eta_1` (choice A6): for each row, the next row of its class in batch order (cyclically), and
    a 0/1 weight that is 1 when the row's class occurs at least twice in the batch (the set :math:`V`).

    Returns ``(partner, weight)``, both (B,): ``partner[v]`` indexes the batch; for rows outside :math:`V` it is the
    row itself and the weight 0. Computed on the device without host syncs.
    """
    b = labels.shape[0]
    lab = labels.long()
    pos = torch.arange(b, device=labels.device)
    order = torch.argsort(lab * b + pos)  # rows grouped by class, batch order inside a class
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device).scatter_add_(0, lab, torch.ones_like(lab))
    start = torch.cumsum(counts, 0) - counts
    sorted_lab = lab[order]
    rank = pos - start[sorted_lab]
    nxt = order[start[sorted_lab] + (rank + 1) % counts[sorted_lab]]
    partner = torch.empty_like(order).scatter_(0, order, nxt)
    weight = (counts[lab] >= 2).float()
    return partner, weight


def expected_pair_rows(class_counts: list[int], batch_size: int) -> float:
    r"""The expected number of rows whose class occurs at least twice in a batch of ``batch_size`` rows drawn
    without replacement from a split with ``class_counts`` rows per class: AMID's D2 normaliser ``d`` (choice A5,
    ``--d2-norm expected``).

    .. math::
        E[w] = \sum_c \Big(\frac{B n_c}{n} - P(X_c = 1)\Big),\qquad
        P(X_c = 1) = n_c \binom{n - n_c}{B - 1} \Big/ \binom{n}{B}

    with :math:`X_c` hypergeometric, evaluated with ``lgamma``. ``batch_size`` is capped at ``n``.
    """
    n = sum(class_counts)
    if n < 1:
        raise ValueError("class_counts must hold at least one row")
    b = min(int(batch_size), n)

    def log_choose(a: int, k: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1)

    total = 0.0
    for nc in class_counts:
        if nc == 0:
            continue
        p1 = 0.0
        if n - nc >= b - 1:
            p1 = nc * math.exp(log_choose(n - nc, b - 1) - log_choose(n, b))
        total += b * nc / n - p1
    return total


def adversarial_loss(
    d1_student: Tensor, d2_partner: Tensor, pair_weight: Tensor, lam1: Tensor | float, lam2: Tensor | float, d_norm
) -> Tensor:
    r"""AMID Eqs. 11-12, the generator side (minimised by the student):

    .. math::
        \mathcal{L}_{adv} = \frac{\lambda_1}{B}\sum_i \mathrm{softplus}(-D_1(S_i))
                          + \frac{\lambda_2}{d}\sum_{v \in V} \mathrm{softplus}(-D_2(S_{\eta_1(v)}))

    (``-log sigmoid(l) = softplus(-l)``: the non-saturating ``-log D(S)`` of Eq. 11). ``d1_student`` (B,) are D1's
    logits on the student representations, ``d2_partner`` (B,) D2's logits on each row's same-class partner,
    ``pair_weight`` (B,) the 0/1 membership of V, ``d_norm`` the normaliser ``d`` (a float or a 0-d tensor).
    """
    b = d1_student.shape[0]
    return lam1 * F.softplus(-d1_student).sum() / b + lam2 * (pair_weight * F.softplus(-d2_partner)).sum() / d_norm


def discriminator_loss(
    d1_teacher: Tensor,
    d1_student: Tensor,
    d2_teacher: Tensor,
    d2_partner: Tensor,
    pair_weight: Tensor,
    lam1: Tensor | float,
    lam2: Tensor | float,
    d_norm,
) -> Tensor:
    r"""AMID Eq. 13 (minimised by D1 and D2 on detached inputs; real = teacher M, fake = student S):

    .. math::
        \mathcal{L}_D = \frac{\lambda_1}{B}\sum_i\big[\mathrm{softplus}(-D_1(M_i)) + \mathrm{softplus}(D_1(S_i))\big]
                      + \frac{\lambda_2}{d}\sum_{v \in V}\big[\mathrm{softplus}(-D_2(M_v))
                      + \mathrm{softplus}(D_2(S_{\eta_1(v)}))\big]
    """
    b = d1_teacher.shape[0]
    d1 = (F.softplus(-d1_teacher) + F.softplus(d1_student)).sum() / b
    d2 = (pair_weight * (F.softplus(-d2_teacher) + F.softplus(d2_partner))).sum() / d_norm
    return lam1 * d1 + lam2 * d2


def lambda_update(
    lt: Tensor, cos_sample: Tensor | float, cos_class: Tensor | float, beta: float
) -> tuple[Tensor, Tensor]:
    r"""AMID Eq. 14, once per epoch: :math:`l_k \leftarrow \beta l_k + (1 - \beta)(1 - c_k)`,
    :math:`(\lambda_1, \lambda_2) = \mathrm{softmax}(l_1, l_2)`.

    ``lt`` (2,) the running values, ``cos_sample`` (:math:`c_1`) the epoch's mean cosine of :math:`(M_i, S_i)`,
    ``cos_class`` (:math:`c_2`) that of same-class pairs :math:`(M_i, S_j)`, :math:`i \ne j`. Returns the new
    ``lt`` and ``lam``.
    """
    c = torch.stack([torch.as_tensor(cos_sample, dtype=lt.dtype), torch.as_tensor(cos_class, dtype=lt.dtype)])
    new = beta * lt + (1 - beta) * (1 - c.to(lt.device))
    return new, torch.softmax(new, dim=0)
