"""``distill rkd``: relational knowledge distillation (Park et al., CVPR 2019), as RepDistiller runs it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.losses.relational import rkd
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class RKDParams(RelationalOptions):
    rkd_weight: float = opt(
        1.0, "Weight (>= 0) of the RKD loss (RepDistiller scripts/run_cifar_distill.sh: -b 1 for rkd).", ge=0
    )
    w_d: float = opt(25.0, "Weight (>= 0) of the distance term (RepDistiller RKDLoss w_d=25).", ge=0)
    w_a: float = opt(50.0, "Weight (>= 0) of the angle term (RepDistiller RKDLoss w_a=50).", ge=0)


@register("rkd", RKDParams, "Relational KD (RKD): match the batch's pairwise distances and triplet angles.")
class RKD(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + rkd_weight * (w_d * RKD-D + w_a * RKD-A) on the named layers.

    Distances and angles are compared within the batch, so the student and teacher widths may differ.
    """

    term = "rkd"
    weight = "rkd_weight"

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        return rkd(student, teacher, w_d=self.params.w_d, w_a=self.params.w_a)
