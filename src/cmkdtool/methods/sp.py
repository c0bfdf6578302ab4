"""``distill sp``: similarity-preserving distillation (Tung & Mori, ICCV 2019), as RepDistiller runs it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.losses.relational import sp
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class SPParams(RelationalOptions):
    sp_weight: float = opt(
        3000.0, "Weight (>= 0) of the SP loss (RepDistiller scripts/run_cifar_distill.sh: -b 3000).", ge=0
    )


@register("sp", SPParams, "Similarity-preserving KD (SP): match the batch's row-normalised Gram matrices.")
class SP(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + sp_weight * |G~_t - G~_s|^2 / B^2 (row-normalised batch Gram matrices).

    The Gram matrices are B x B, so the student and teacher widths may differ.
    """

    term = "sp"
    weight = "sp_weight"

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        return sp(student, teacher)
