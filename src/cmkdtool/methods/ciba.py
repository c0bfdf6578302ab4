"""``distill ciba``: sub-dimensional distillation of a bottleneck feature (CIBA Sec. 4.2, Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmkdtool.engine.method import Batch
from cmkdtool.engine.state import tensor_digest
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.losses import FEATURE_LOSSES
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import Distiller
from cmkdtool.methods.feature import LOSS_HELP, FeatureLossOptions
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class CibaParams(FeatureLossOptions):
    bottleneck: str | None = opt(None, "Bottleneck checkpoint from `cmkdtool fit-bottleneck` (required).")
    base: str = opt(
        "mse",
        "Base loss on the first H dimensions: " + LOSS_HELP + " For mse CIBA takes Algorithm 2's ||z[:H] - h'||^2 "
        "per row (batch mean), twice distill feature's 0.5*||s-t||^2 (--feature-weight 0.5 gives the Eq. 1 scale).",
        choices=tuple(FEATURE_LOSSES),
    )
    student_layer: str | None = opt(
        None, "Student layer whose first H dimensions learn h' [default: the bottleneck's student layer]."
    )
    feature_weight: float = opt(
        1.0, "Weight (>= 0) of the sub-dimensional feature loss (paper: equal to the task loss).", ge=0
    )
    task_weight: float = opt(1.0, "Weight (>= 0) of the task loss with the labels.", ge=0)


ALGORITHM2_SCALE = {"mse": 2.0}
"""Factor on the base loss so that ``--base mse`` is Algorithm 2's ``||h'_i - z_i[0:H]||_2^2`` (no 1/2; the shared
``feature_mse`` is Eq. 1's ``1/2 ||.||^2``); the other base losses carry no such factor and are used as they are."""


def subdim_loss(criterion, z: Tensor, code: Tensor) -> Tensor:
    """Algorithm 2's sub-dimensional term: ``criterion(z[:, :H], h')`` with H = ``code``'s width, scaled by
    ``ALGORITHM2_SCALE`` (mse: ``(1/B) sum_i ||z_i[0:H] - h'_i||^2``, the paper's sum over rows divided by B)."""
    return ALGORITHM2_SCALE.get(criterion.name, 1.0) * criterion(z[:, : code.shape[1]], code)


@register("ciba", CibaParams, "CIBA: a bottleneck feature h' of the teacher distilled into the student's first H dims.")
class Ciba(Distiller):
    """task_weight * CE + feature_weight * base(z[:, :H], h'),  h' = the bottleneck's code of the teacher feature.

    With ``base`` mse the feature term is Algorithm 2's ``||z_i[0:H] - h'_i||^2`` averaged over the batch
    (``subdim_loss``), without Eq. 1's factor 1/2 that ``distill feature --loss mse`` keeps.

    h' is the mean of the bottleneck encoder (dvib, attention) or its quantised code (vqvae) on the frozen
    teacher's feature at the layer the bottleneck was fitted on (Algorithm 2 line 1). Only the first H dimensions
    of the student's feature receive the distillation loss (line 3); the other dimensions are free and learn from
    the task loss alone. No projector: the student layer must be at least H wide.
    """

    def __init__(self, student, teacher, params: CibaParams, task: str, cache_teacher: bool = True):
        from cmkdtool.io.checkpoints import load_bottleneck

        super().__init__(student, teacher, params, task, cache_teacher)
        if not params.bottleneck:
            raise CmkdUsageError(
                "distill ciba needs --bottleneck BOTTLENECK.safetensors (make one with cmkdtool fit-bottleneck)"
            )
        device = next(teacher.parameters()).device
        self.bottleneck = load_bottleneck(params.bottleneck, str(device)).requires_grad_(False)
        spec = self.bottleneck.spec
        self.dim = int(spec["dim"])
        self.teacher_layer = spec.get("teacher", {}).get("layer", "embedding")
        self.student_layer = params.student_layer or spec.get("student", {}).get("layer", "embedding")
        self.criterion = params.criterion(params.base)
        recorded = spec.get("teacher", {})
        if recorded.get("weights") and recorded["weights"] != tensor_digest(teacher.state_dict()):
            raise CmkdError(
                f"{params.bottleneck} was fitted on another teacher ({recorded.get('path', '?')}; its weights or "
                "channel mask differ from this --teacher's); pass that teacher or refit the bottleneck on this one"
            )
        t_width = teacher.layer_width(self.teacher_layer)
        if t_width != int(spec["in_dim"]):
            raise CmkdError(
                f"{params.bottleneck} reads {spec['in_dim']}-wide teacher features of layer {self.teacher_layer!r}, "
                f"but this teacher's layer has {t_width}; use the teacher the bottleneck was fitted on"
            )
        s_width = student.layer_width(self.student_layer)
        if s_width < self.dim:
            raise CmkdError(
                f"student layer {self.student_layer!r} has {s_width} dimensions, fewer than the bottleneck's "
                f"H = {self.dim}; widen the student or fit a smaller bottleneck"
            )
        self.loss_weights = {"feat": params.feature_weight, "ce": params.task_weight}

    def frozen_modules(self):
        return [self.teacher, self.bottleneck]

    def teacher_layers(self) -> list[str]:
        return [self.teacher_layer]

    @torch.no_grad()
    def _teacher_forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = super()._teacher_forward(inputs)
        self.bottleneck.eval()
        return {"code": self.bottleneck.code(feats[self.teacher_layer]).float()}

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits, feats = self.student.forward_layers(batch.inputs, [self.student_layer])
        code = self.teacher_outputs(batch)["code"]
        terms = {"feat": subdim_loss(self.criterion, feats[self.student_layer], code)}
        if self.params.task_weight:
            terms["ce"] = task_loss(logits, batch.target, self.task)
        return terms
