"""``distill crd``: contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020), as RepDistiller
runs it (HobbitLong/RepDistiller@b84f547 ``crd/criterion.py``, ``crd/memory.py``, ``train_student.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.engine.method import Batch
from cmkdtool.losses.contrastive import crd_scores, crd_scores_shared
from cmkdtool.methods._memory import MemoryDistiller, MemoryOptions
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class CRDParams(MemoryOptions):
    crd_weight: float = opt(0.8, "Weight (>= 0) of the CRD loss (RepDistiller -b 0.8 for crd).", ge=0)
    nce_k: int = opt(
        16384,
        "Negatives per step (--nce_k 16384); drawn with replacement, so it may exceed the train rows.",
        ge=1,
    )
    nce_t: float = opt(0.07, "Temperature T of the scores (> 0; --nce_t 0.07).", gt=0)
    negatives: str = opt(
        "sample",
        "sample: K negatives per sample from the other classes (the reference; B x (1+K) bank gathers), or "
        "shared: one draw of K train rows for the whole batch, scored with one matrix product (faster; a "
        "different estimator of the same objective).",
        choices=("sample", "shared"),
    )


@register("crd", CRDParams, "Contrastive representation distillation (CRD): NCE against memory banks of embeddings.")
class CRD(MemoryDistiller):
    """task_weight * CE + kd_weight * KD + crd_weight * (NCE(student anchor) + NCE(teacher anchor)).

    The student and teacher layers are projected by learned heads (Linear + L2 norm, width ``feat_dim``); each
    anchor is scored against the other side's memory bank at its positive and K negatives, ``exp(<., .>/T) / Z``,
    and the NCE loss of CRD Eq. 18 (``losses.crd_nce``) is summed over both anchors.
    """

    term = "crd"
    weight = "crd_weight"

    def scores(self, v_s: Tensor, v_t: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        p, mem = self.params, self.memory
        if p.negatives == "shared":
            pos = self.sampler.positive(batch.index, relax=p.mode == "relax")
            neg = self.sampler.shared(p.nce_k)
            return (
                crd_scores_shared(v_s, mem.memory_teacher, pos, neg, p.nce_t),
                crd_scores_shared(v_t, mem.memory_student, pos, neg, p.nce_t),
            )
        idx = self.contrast_index(batch, p.nce_k)
        return crd_scores(v_s, mem.memory_teacher, idx, p.nce_t), crd_scores(v_t, mem.memory_student, idx, p.nce_t)
