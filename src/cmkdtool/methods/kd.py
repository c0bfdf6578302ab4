"""``distill kd``: knowledge distillation on logits (Hinton et al. 2015; MFH Eq. 1 weighting)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.engine.method import Batch
from cmkdtool.losses import hinton_kd, soft_bce_kd
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import Distiller
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class KDParams:
    weighting: str = opt(
        "hinton",
        "hinton: ce-weight*CE + kd-weight*T^2*KL(teacher||student); mfh: rho*CE + (1-rho)*T^2*KL (MFH Eq. 1).",
        choices=("hinton", "mfh"),
    )
    temperature: float | None = opt(None, "Softmax temperature T (> 0) [default: 4 for hinton, 1 for mfh].", gt=0)
    ce_weight: float = opt(0.1, "Weight (>= 0) of the cross-entropy with the labels (hinton weighting).", ge=0)
    kd_weight: float = opt(0.9, "Weight (>= 0) of the distillation term (hinton weighting).", ge=0)
    rho: float = opt(0.5, "MFH rho in [0, 1]: weight of CE, 1-rho of KL (mfh weighting; paper: 0.5).", ge=0, le=1)


@register("kd", KDParams, "Knowledge distillation on the teacher's softened logits (Hinton; MFH Eq. 1).")
class KD(Distiller):
    """CE with the labels plus T^2 * KL(softmax(t/T) || softmax(s/T)), batchmean.

    Multi-label tasks use the per-class Bernoulli KL between sigmoid(t/T) and sigmoid(s/T) instead.
    """

    def __init__(self, student, teacher, params: KDParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        default_t = 4.0 if params.weighting == "hinton" else 1.0
        self.temperature = default_t if params.temperature is None else params.temperature
        if params.weighting == "mfh":
            self.loss_weights = {"ce": params.rho, "kd": 1.0 - params.rho}
        else:
            self.loss_weights = {"ce": params.ce_weight, "kd": params.kd_weight}

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.student(batch.inputs)
        teacher = self.teacher_outputs(batch)["logits"]
        if self.task == "multilabel":
            kd = self.temperature**2 * soft_bce_kd(logits, teacher, self.temperature)
        else:
            kd = hinton_kd(logits, teacher, self.temperature)
        terms = {"kd": kd}
        if self.loss_weights["ce"]:
            terms["ce"] = task_loss(logits, batch.target, self.task)
        return terms
