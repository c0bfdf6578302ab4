"""``distill nst``: neuron selectivity transfer (Huang & Wang 2017), as RepDistiller runs it, on feature maps."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.losses.relational import nst
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions, map_shape
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class NSTParams(RelationalOptions):
    nst_weight: float = opt(
        50.0, "Weight (>= 0) of the NST loss (RepDistiller scripts/run_cifar_distill.sh: -b 50).", ge=0
    )


@register("nst", NSTParams, "Neuron selectivity transfer (NST): polynomial-kernel MMD between channel maps.")
class NST(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + nst_weight * MMD^2 (polynomial kernel, d=2, c=0) of channel maps.

    Both layers must be 2-D feature maps (``encoders.<col>.<i>`` of a cnn2d or resnet18 model, before the
    global pooling); ``forward_layers`` and the teacher cache give them flattened, and they are reshaped to
    (B, C, H, W) with each model's map shape. Channel counts and spatial sizes may differ (the larger map is
    average-pooled to the smaller, as in the reference). Vector layers are refused with a usage error.
    """

    term = "nst"
    weight = "nst_weight"

    def __init__(self, student, teacher, params: NSTParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        self.student_shape = map_shape(student, params.student_layer)
        self.teacher_shape = map_shape(teacher, params.teacher_layer)

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        return nst(student.reshape(-1, *self.student_shape), teacher.reshape(-1, *self.teacher_shape))
