"""Contrastive losses of the CMKD baselines, each as its reference code computes it.

* ``crd_nce``: the NCE objective of CRD (Tian et al., ICLR 2020, Eq. 18 in its NCE form) on normalised scores,
  HobbitLong/RepDistiller@b84f547 ``crd/criterion.py`` (``ContrastLoss``); CRCD (Zhu et al., CVPR 2021) uses the
  same function on relation scores (Lechatelia/CRCD ``crcd/criterion.py``).
* ``crd_scores`` / ``crcd_scores``: the exponentiated scores of an anchor against memory rows (before division
  by the normalisation constant Z), RepDistiller ``crd/memory.py`` and Lechatelia/CRCD ``crcd/memory.py``.
* ``class_nce``: CCL's class-aware contrastive loss (Chen et al., CVPR 2021; yanbeic/CCL@b590483
  ``loss/nce_loss.py``), one direction.
* ``sym_kl``: CCL's ``JSDLoss`` (``loss/jsd_loss.py``), named JSD but a weighted symmetric KL.
* ``js_divergence``: the true Jensen-Shannon divergence of two softmax distributions (Lin 1991), in nats.
* ``info_nce``: instance-level InfoNCE (van den Oord et al. 2018; CMC, Tian et al. 2020) over the batch.
* ``gmc_nt_xent``: GMC's joint-modality NT-Xent (Poklukar et al., ICML 2022; miguelsvasco/gmc@bc4eada
  ``gmc_code/supervised/architectures/models/gmc.py``, ``super_gmc_loss`` without its supervised term).

Conventions shared with ``relational.py``: 0-d results; float64 inputs stay float64 (parity to 1e-9 and
``gradcheck``), narrower ones are computed in float32 with autocast off; no host syncs (no boolean indexing, no
``.item()``); nothing is detached here (stop-gradients are the method's decision). Deviations from a reference
are listed in each docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkdtool.losses._precision import compute_dtype

__all__ = [
    "class_nce",
    "crcd_scores",
    "crd_nce",
    "crd_scores",
    "crd_scores_shared",
    "gmc_nt_xent",
    "info_nce",
    "js_divergence",
    "sym_kl",
]

CRD_EPS = 1e-7  # RepDistiller crd/criterion.py eps
CCL_EPS = 1e-10  # yanbeic/CCL loss/nce_loss.py and jsd_loss.py


def _rows(name: str, x: Tensor, ndim: int = 2) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (batch first), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (0 rows); a loss over no samples is undefined")


def _same_batch(*named: tuple[str, Tensor]) -> None:
    sizes = {name: x.shape[0] for name, x in named}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch sizes differ: {sizes}; pass the outputs for the same rows, in the same order")


def crd_nce(scores: Tensor, n_data: int, eps: float = CRD_EPS) -> Tensor:
    r"""CRD's NCE loss on normalised scores ``x`` of shape (B, 1 + K): column 0 the positive, the rest negatives.

    With the noise probability :math:`P_n = 1/N` (``n_data`` = the number of training samples) and
    :math:`m = K P_n`:

    .. math::
        \mathcal{L} = -\frac{1}{B}\Big[\sum_b \log\frac{x_{b0}}{x_{b0} + m + \epsilon}
                      + \sum_{b, k \ge 1} \log\frac{m}{x_{bk} + m + \epsilon}\Big]

    (RepDistiller ``ContrastLoss``; CRD Eq. 18 with the NCE estimate of :math:`h`). The scores are
    :math:`x = \exp(\langle u, v\rangle / T) / Z` from ``crd_scores`` (or ``crcd_scores``) divided by the
    normalisation constant. Deviation: returns a 0-d tensor (the reference returns shape (1,)).
    """
    _rows("scores", scores)
    if scores.shape[1] < 2:
        raise ValueError(f"scores must have a positive and at least one negative column, got {tuple(scores.shape)}")
    if n_data < 1:
        raise ValueError(f"n_data must be >= 1 (the number of training samples), got {n_data}")
    x = compute_dtype(scores)
    b, k = x.shape[0], x.shape[1] - 1
    m = k / float(n_data)
    # sum_b log D1 + sum_{b,k} log D0 = -sum_{b,k>=0} log1p((x_bk + eps) / m) + sum_b (log x_b0 - log m): one pass
    # over the (B, 1 + K) matrix and no slice of it; log1p keeps each small summand accurate (float32 included)
    log_m = math.log(m)
    total = (torch.log(x[:, 0]) - log_m).sum() - torch.log1p((x + eps) / m).sum()
    return -total / b


def crd_scores(anchor: Tensor, memory: Tensor, contrast_idx: Tensor, temperature: float) -> Tensor:
    r"""Exponentiated scores :math:`\exp(\langle \text{memory}[i_{bk}], a_b\rangle / T)`, shape (B, 1 + K).

    ``anchor`` (B, d) is one side's embedding, ``memory`` (N, d) the *other* side's memory bank, ``contrast_idx``
    (B, 1 + K) its row indices (column 0 the positive). RepDistiller ``ContrastMemory.forward``: ``out_v1`` =
    ``crd_scores(student_embedding, memory_teacher, idx, T)``, ``out_v2`` = ``crd_scores(teacher_embedding,
    memory_student, idx, T)``. The memory rows carry no gradient in the reference (they are buffers).

    Two equal ways to compute it, whichever moves fewer numbers: gather the B x (1 + K) rows and take B batched
    dot products (the reference), or, when the bank is not larger than what that gather would copy (N <= (1 + K)
    d), score every row of the bank with one (B, d) x (d, N) product and pick the (B, 1 + K) entries.
    """
    _rows("anchor", anchor)
    _same_batch(("anchor", anchor), ("contrast_idx", contrast_idx))
    a, mem = compute_dtype(anchor), compute_dtype(memory)
    with torch.autocast(a.device.type, enabled=False):
        if mem.shape[0] <= contrast_idx.shape[1] * mem.shape[1]:
            return (a @ mem.T).gather(1, contrast_idx).div_(temperature).exp_()  # in place: fresh tensors
        weight = mem[contrast_idx]  # (B, 1 + K, d)
        return torch.bmm(weight, a.unsqueeze(2)).squeeze(2).div_(temperature).exp_()


def crd_scores_shared(
    anchor: Tensor, memory: Tensor, positive: Tensor, negatives: Tensor, temperature: float
) -> Tensor:
    r"""``crd_scores`` with one set of K negatives shared by the whole batch, shape (B, 1 + K).

    Column 0 is :math:`\exp(\langle \text{memory}[p_b], a_b\rangle / T)` for the positives ``positive`` (B,);
    columns 1..K are :math:`\exp(\langle \text{memory}[n_k], a_b\rangle / T)` for the shared rows ``negatives``
    (K,), one (B, d) x (d, K) matrix product instead of B x (1 + K) gathers. The same NCE objective, estimated with
    negatives that are shared across the batch (and drawn uniformly, so a negative may share the anchor's class).
    """
    _rows("anchor", anchor)
    _same_batch(("anchor", anchor), ("positive", positive))
    a, mem = compute_dtype(anchor), compute_dtype(memory)
    with torch.autocast(a.device.type, enabled=False):
        pos = (mem[positive] * a).sum(1, keepdim=True)
        neg = a @ mem[negatives].T
        return torch.cat([pos, neg], dim=1).div_(temperature).exp_()  # in place: a fresh tensor


def crcd_scores(
    anchor: Tensor, memory: Tensor, index: Tensor, contrast_idx: Tensor, temperature: float, eps: float = 1e-6
) -> Tensor:
    r"""CRCD's relation scores, shape (B * B, 1 + K) (Lechatelia/CRCD ``ContrastMemory.forward``).

    Anchors are the memory rows of the batch's own samples, :math:`c_a = \text{memory}[y_a]`. For anchor ``a`` and
    sample ``b``, the live relation :math:`r_{ba} = n(v_b - c_a + \epsilon)` is contrasted with the memory
    relations :math:`q_{bak} = n(\text{memory}[i_{bk}] - c_a + \epsilon)`:
    :math:`\exp(\langle q_{bak}, r_{ba}\rangle / T)`, row ``b * B + a``; :math:`n` is L2 normalisation
    (``F.normalize``, eps 1e-12) and :math:`\epsilon = 10^{-6}` is added to every coordinate, as in the code.
    ``anchor`` is ``v`` (B, d), ``memory`` the other side's bank, ``index`` the batch's rows (B,).
    """
    _rows("anchor", anchor)
    _same_batch(("anchor", anchor), ("index", index), ("contrast_idx", contrast_idx))
    v, mem = compute_dtype(anchor), compute_dtype(memory)
    b, d = v.shape
    with torch.autocast(v.device.type, enabled=False):
        centre = mem[index]  # (B_a, d)
        live = F.normalize((v.unsqueeze(1) - centre.unsqueeze(0) + eps).reshape(b * b, d), dim=1)
        rel = mem[contrast_idx].unsqueeze(1) - centre.unsqueeze(1).unsqueeze(0) + eps  # (B, B_a, 1 + K, d)
        rel = F.normalize(rel.reshape(b * b, -1, d), dim=2)
        return torch.exp(torch.bmm(rel, live.unsqueeze(2)).squeeze(2) / temperature)


def class_nce(f1: Tensor, f2: Tensor, labels: Tensor, temperature: float, eps: float = CCL_EPS) -> Tensor:
    r"""CCL's class-aware contrastive loss, one direction (rows of ``f1`` against the columns of ``f2``).

    Rows are L2-normalised; :math:`c_{ij} = 1 - \tfrac12\lVert f1_i - f2_j\rVert^2` (the cosine),
    :math:`p_{ij} = \mathrm{softmax}_j(c_{ij} / T)` over all B columns; with :math:`P_i` the columns of the same
    label (the diagonal included) and :math:`N_i` the others:

    .. math::
        \ell_i = \frac{1}{|P_i|}\sum_{j\in P_i} -\log(p_{ij} + \epsilon)
               + \frac{1}{|N_i|}\sum_{j\in N_i} -\log(1 - p_{ij} + \epsilon),\qquad
        \mathcal{L} = \frac{1}{B}\sum_i \ell_i

    (yanbeic/CCL ``NCELoss``; CCL sums it both ways, ``class_nce(a, b) + class_nce(b, a)``).
    Deviations: the reference's ``(1 - self_mask)`` on a bool mask raises on torch >= 1.2 (``~mask`` here, the old
    uint8 behaviour); a row with no other-label column (a one-class batch) divides 0/0 (NaN) in the reference: here
    its negative term is 0, the paper's intent (no negatives, nothing to push away). Normalisation is
    ``F.normalize`` (eps 1e-12; the reference divides by the norm, NaN for a zero row).
    """
    _rows("f1", f1)
    _rows("f2", f2)
    _rows("labels", labels, 1)
    _same_batch(("f1", f1), ("f2", f2), ("labels", labels))
    a, b = F.normalize(compute_dtype(f1), dim=1), F.normalize(compute_dtype(f2), dim=1)
    with torch.autocast(a.device.type, enabled=False):
        cos = 1 - 0.5 * torch.cdist(a, b).pow(2)  # the reference's form (equal to a @ b.T up to rounding)
    p = torch.softmax(cos / temperature, dim=1)
    pos = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(p.dtype)
    neg = 1 - pos
    pos_term = (-torch.log(p + eps) * pos).sum(1) / pos.sum(1)
    neg_term = (-torch.log(1 - p + eps) * neg).sum(1) / neg.sum(1).clamp(min=1)
    return (pos_term + neg_term).mean()


def sym_kl(logits_p: Tensor, logits_q: Tensor, weight: float = 0.5, eps: float = CCL_EPS) -> Tensor:
    r"""CCL's "JSD" (yanbeic/CCL ``JSDLoss(weight=0.5)``): a weighted symmetric KL of the two softmaxes.

    .. math::
        \mathcal{L} = w\,\frac{1}{B}\sum_i \sum_c \Big[p_{ic}\log\big(\tfrac{p_{ic}}{q_{ic}} + \epsilon\big)
                                                  + q_{ic}\log\big(\tfrac{q_{ic}}{p_{ic}} + \epsilon\big)\Big]

    with :math:`p = \mathrm{softmax}(\text{logits}_p)`, :math:`q = \mathrm{softmax}(\text{logits}_q)`, ``weight``
    0.5 as CCL uses it. Not a Jensen-Shannon divergence (see ``js_divergence``).
    """
    _rows("logits_p", logits_p)
    _rows("logits_q", logits_q)
    _same_batch(("logits_p", logits_p), ("logits_q", logits_q))
    p, q = torch.softmax(compute_dtype(logits_p), 1), torch.softmax(compute_dtype(logits_q), 1)
    return weight * ((p * torch.log(p / q + eps)).sum(1) + (q * torch.log(q / p + eps)).sum(1)).mean()


def js_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    r"""Jensen-Shannon divergence of :math:`p = \mathrm{softmax}(\text{logits}_p)` and ``q``, batch mean, in nats.

    :math:`\mathrm{JS}(p, q) = \tfrac12 \mathrm{KL}(p \,\|\, r) + \tfrac12 \mathrm{KL}(q \,\|\, r)`,
    :math:`r = (p + q)/2` (Lin 1991; AMID Eq. 16). Computed from log-probabilities (no epsilon): finite for any
    logits, bounded by :math:`\log 2`.
    """
    _rows("logits_p", logits_p)
    _rows("logits_q", logits_q)
    _same_batch(("logits_p", logits_p), ("logits_q", logits_q))
    lp, lq = torch.log_softmax(compute_dtype(logits_p), 1), torch.log_softmax(compute_dtype(logits_q), 1)
    lr = torch.logaddexp(lp, lq) - torch.log(torch.tensor(2.0, dtype=lp.dtype, device=lp.device))
    kl_p = (lp.exp() * (lp - lr)).sum(1)
    kl_q = (lq.exp() * (lq - lr)).sum(1)
    return (0.5 * (kl_p + kl_q)).mean()


def info_nce(a: Tensor, b: Tensor, temperature: float, symmetric: bool = True) -> Tensor:
    r"""Instance-level InfoNCE over the batch: row ``i`` of ``a`` and row ``i`` of ``b`` are the positive pair.

    Rows are L2-normalised, :math:`s_{ij} = \langle a_i, b_j\rangle / T`,
    :math:`\mathcal{L}_{a\to b} = \frac{1}{B}\sum_i -\log\frac{e^{s_{ii}}}{\sum_j e^{s_{ij}}}`; ``symmetric``
    averages both directions, :math:`\tfrac12(\mathcal{L}_{a\to b} + \mathcal{L}_{b\to a})` (CMC, CLIP), else
    :math:`\mathcal{L}_{a\to b}` only. Computed with log-softmax (stable at small T).
    """
    _rows("a", a)
    _rows("b", b)
    _same_batch(("a", a), ("b", b))
    x, y = F.normalize(compute_dtype(a), dim=1), F.normalize(compute_dtype(b), dim=1)
    with torch.autocast(x.device.type, enabled=False):
        s = x @ y.T / temperature
    target = torch.arange(s.shape[0], device=s.device)
    loss = F.cross_entropy(s, target)
    return 0.5 * (loss + F.cross_entropy(s.T, target)) if symmetric else loss


def gmc_nt_xent(joint: Tensor, modalities: Sequence[Tensor], temperature: float) -> Tensor:
    r"""GMC's joint-modality NT-Xent (miguelsvasco/gmc ``super_gmc_loss``, contrastive part).

    For each modality :math:`m`, the 2B rows :math:`Z = [z_{joint}; z_m]` (already L2-normalised, as GMC's shared
    projection head outputs them), :math:`S = \exp(Z Z^\top / \tau)` without its diagonal; the positive of row
    ``i`` is :math:`\exp(\langle z_{joint,i}, z_{m,i}\rangle/\tau)` (both halves):

    .. math::
        \ell^m_r = -\log\frac{\text{pos}_r}{\sum_{s \ne r} S_{rs}},\qquad
        \mathcal{L} = \frac{1}{2B}\sum_{r=1}^{2B}\sum_m \ell^m_r

    As the reference: no max-subtraction inside ``exp`` (safe at :math:`\tau \ge 0.1` with unit vectors).
    """
    _rows("joint", joint)
    if not modalities:
        raise ValueError("gmc_nt_xent needs at least one modality representation")
    for i, z in enumerate(modalities):
        _rows(f"modalities[{i}]", z)
        _same_batch(("joint", joint), (f"modalities[{i}]", z))
    j = compute_dtype(joint)
    n = 2 * j.shape[0]
    off_diag = 1 - torch.eye(n, dtype=j.dtype, device=j.device)
    total = j.new_zeros(n)
    with torch.autocast(j.device.type, enabled=False):
        for z in modalities:
            m = compute_dtype(z)
            both = torch.cat([j, m])
            sim = torch.exp(both @ both.T / temperature)
            row_sum = (sim * off_diag).sum(1)
            pos = torch.exp((j * m).sum(1) / temperature)
            total = total - torch.log(torch.cat([pos, pos]) / row_sum)
    return total.mean()
