"""``distill feature``: feature distillation between named layers (FitNets; CIBA Eq. 1 for mse)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmkdtool.engine.config import opt
from cmkdtool.engine.loop import Batch, task_loss
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses import FEATURE_LOSSES
from cmkdtool.methods.base import Distiller
from cmkdtool.methods.registry import register


@dataclass
class FeatureParams:
    loss: str = opt("mse", "mse (0.5*||s-t||^2 per row, batch mean; CIBA Eq. 1), l1 or cosine.")
    student_layer: str = opt("embedding", "Student layer to match (names: cmkdtool spectrum --list-layers CKPT).")
    teacher_layer: str = opt("embedding", "Teacher layer to imitate.")
    feature_weight: float = opt(1.0, "Weight of the feature loss.")
    task_weight: float = opt(1.0, "Weight of the task loss with the labels (0: feature distillation only).")
    projector: str = opt(
        "auto", "auto (a learned linear map student->teacher width when widths differ), linear, or none."
    )


@register("feature", FeatureParams, "Feature distillation (FitNets-style) between named layers: mse, l1, cosine.")
class Feature(Distiller):
    """task_weight * CE + feature_weight * loss(P(student_layer), teacher_layer).

    P is a learned linear projector when the widths differ (or ``--projector linear``); it serves training
    only and is not part of the deployed student.
    """

    def __init__(self, student, teacher, params: FeatureParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        if params.loss not in FEATURE_LOSSES:
            raise CmkdUsageError(f"unknown --loss '{params.loss}'; choose one of {', '.join(FEATURE_LOSSES)}")
        if params.projector not in ("auto", "linear", "none"):
            raise CmkdUsageError(f"--projector must be auto, linear or none, not '{params.projector}'")
        self.loss_fn = FEATURE_LOSSES[params.loss]
        s_dim, t_dim = self._width(student, params.student_layer), self._width(teacher, params.teacher_layer)
        if params.projector == "linear" or (params.projector == "auto" and s_dim != t_dim):
            self.projector: nn.Module = nn.Linear(s_dim, t_dim)
        elif s_dim != t_dim:
            raise CmkdUsageError(
                f"student layer {params.student_layer} has width {s_dim} but teacher layer {params.teacher_layer} "
                f"has {t_dim}; use --projector auto"
            )
        else:
            self.projector = nn.Identity()
        self.loss_weights = {"feat": params.feature_weight, "ce": params.task_weight}

    @staticmethod
    @torch.no_grad()
    def _width(model, layer: str) -> int:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        x = {i["name"]: torch.zeros(2, *i["shape"], device=device) for i in model.spec["inputs"]}
        _, feats = model.forward_layers(x, [layer])
        model.train(was)
        return feats[layer].shape[1]

    def teacher_layers(self) -> list[str]:
        return [self.params.teacher_layer]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits, feats = self.student.forward_layers(batch.inputs, [self.params.student_layer])
        target = self.teacher_outputs(batch)[self.params.teacher_layer]
        terms = {"feat": self.loss_fn(self.projector(feats[self.params.student_layer]), target)}
        if self.params.task_weight:
            terms["ce"] = task_loss(logits, batch.target, self.task)
        return terms
