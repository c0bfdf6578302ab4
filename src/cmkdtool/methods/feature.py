"""``distill feature``: feature distillation between named layers (FitNets; CIBA Eq. 1 for mse, App. E.5 for ce,
Table 1's CLIP and Margin base losses)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.engine.method import Batch
from cmkdtool.losses import FEATURE_LOSSES
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import Distiller, projector, projector_option
from cmkdtool.methods.registry import register
from cmkdtool.nn.criteria import FeatureCriterion
from cmkdtool.options import opt


@dataclass
class FeatureLossOptions:
    """Hyperparameters of the feature losses that have any (shared by ``distill feature`` and ``distill ciba``)."""

    temperature: float | None = opt(
        None, "ce: softmax temperature T (> 0) [default 1]; clip: (initial) temperature tau [default 0.07].", gt=0
    )
    learn_temperature: bool = opt(True, "clip: learn the temperature (as CLIP; 1/tau clamped at 100), else fix it.")
    margin: float | None = opt(None, "margin: the hinge margin m (>= 0) on cosine similarity [default 0.2].", ge=0)

    def criterion(self, name: str) -> FeatureCriterion:
        return FeatureCriterion(
            name, temperature=self.temperature, learn_temperature=self.learn_temperature, margin=self.margin
        )


LOSS_HELP = (
    "mse (0.5*||s-t||^2 per row, batch mean; CIBA Eq. 1), l1, cosine, ce (cross-entropy of softmax features; "
    "App. E.5), clip (symmetric InfoNCE over the batch) or margin (cosine hinge with in-batch negatives)."
)


@dataclass
class FeatureParams(FeatureLossOptions):
    loss: str = opt("mse", LOSS_HELP, choices=tuple(FEATURE_LOSSES))
    student_layer: str = opt("embedding", "Student layer to match (names: cmkdtool spectrum --list-layers CKPT).")
    teacher_layer: str = opt("embedding", "Teacher layer to imitate.")
    feature_weight: float = opt(1.0, "Weight (>= 0) of the feature loss.", ge=0)
    task_weight: float = opt(
        1.0, "Weight (>= 0) of the task loss with the labels (0: feature distillation only).", ge=0
    )
    projector: str = projector_option()


@register(
    "feature",
    FeatureParams,
    "Feature distillation (FitNets-style) between named layers: mse, l1, cosine, ce, clip, margin.",
)
class Feature(Distiller):
    """task_weight * CE + feature_weight * loss(P(student_layer), teacher_layer).

    P is a learned linear projector when the widths differ (or ``--projector linear``); it serves training
    only and is not part of the deployed student.
    """

    def __init__(self, student, teacher, params: FeatureParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        self.criterion = params.criterion(params.loss)
        s_dim, t_dim = student.layer_width(params.student_layer), teacher.layer_width(params.teacher_layer)
        self.projector = projector(params.projector, params.student_layer, s_dim, params.teacher_layer, t_dim)
        self.loss_weights = {"feat": params.feature_weight, "ce": params.task_weight}

    def teacher_layers(self) -> list[str]:
        return [self.params.teacher_layer]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits, feats = self.student.forward_layers(batch.inputs, [self.params.student_layer])
        target = self.teacher_outputs(batch)[self.params.teacher_layer]
        terms = {"feat": self.criterion(self.projector(feats[self.params.student_layer]), target)}
        if self.params.task_weight:
            terms["ce"] = task_loss(logits, batch.target, self.task)
        return terms
