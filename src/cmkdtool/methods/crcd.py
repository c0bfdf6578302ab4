"""``distill crcd``: complementary relation contrastive distillation (Zhu et al., CVPR 2021), after the authors'
partial re-implementation Lechatelia/CRCD (``crcd/criterion.py``, ``crcd/memory.py``), which does not run as
published (a syntax error in ``train_student.py``, ``.cuda()`` in the memory): the relation loss is implemented
from its code and paper, in CRD's frame."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.engine.method import Batch
from cmkdtool.losses.contrastive import crcd_scores
from cmkdtool.methods._memory import MemoryDistiller, MemoryOptions
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class CRCDParams(MemoryOptions):
    crcd_weight: float = opt(0.8, "Weight (>= 0) of the CRCD loss (the CRD code base's -b 0.8).", ge=0)
    nce_k: int = opt(
        500,
        "Negatives per sample (Lechatelia/CRCD --nce_k 500). Memory: batch^2 x (1+K) x feat_dim floats per side "
        "(64^2 x 501 x 128 x 4 B = 1 GiB at the defaults): lower it on a CPU.",
        ge=1,
    )
    nce_t: float = opt(0.05, "Temperature T of the relation scores (> 0; Lechatelia/CRCD --nce_t 0.05).", gt=0)


@register(
    "crcd", CRCDParams, "Complementary relation contrastive distillation (CRCD): NCE on anchor-relative relations."
)
class CRCD(MemoryDistiller):
    """task_weight * CE + kd_weight * KD + crcd_weight * (NCE(student relations) + NCE(teacher relations)).

    As CRD, with relations instead of embeddings: for the batch's memory rows as anchors, the live relation
    ``n(v_b - anchor)`` is contrasted with the other bank's ``n(memory[i] - anchor)`` at the positive and K
    negatives (``losses.crcd_scores``, B x B rows per side). Banks start normalised, as in the CRCD code. Not
    implemented: the paper's gradient-relation term (the code adds it as a product of two losses).
    """

    term = "crcd"
    weight = "crcd_weight"
    normalized_banks = True

    def scores(self, v_s: Tensor, v_t: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        p, mem = self.params, self.memory
        idx = self.contrast_index(batch, p.nce_k)
        return (
            crcd_scores(v_s, mem.memory_teacher, batch.index, idx, p.nce_t),
            crcd_scores(v_t, mem.memory_student, batch.index, idx, p.nce_t),
        )
