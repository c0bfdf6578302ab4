"""Shared pieces of ``distill rkd | pkt | sp | nst | dask`` (and of crd, crcd, ccl, gmc, nce): the layer options,
RepDistiller's CE + KD + beta * loss combination, and the feature-map shape of a layer (for NST).

RepDistiller (HobbitLong/RepDistiller, ``train_student.py``) trains every student with
``gamma * CE + alpha * KD + beta * loss`` (``-r`` gamma default 1, ``-a`` alpha, ``-b`` beta, ``--kd_T`` 4); its
scripts (README, ``scripts/run_cifar_distill.sh``) run the relational methods with ``-a 0`` (no KD) and setting
``-a`` non-zero combines a method with KD. Here ``--task-weight`` is gamma, ``--kd-weight`` alpha and each
method's own weight beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmkdtool.engine.method import Batch
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses import hinton_kd, soft_bce_kd
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import Distiller
from cmkdtool.nn.gather import gather_rows
from cmkdtool.options import opt

NEEDS_MAPS = "distill nst needs feature maps: pick a cnn2d layer (see cmkdtool spectrum --list-layers)"


@dataclass
class RelationalOptions:
    """The options every relational method shares (RepDistiller's ``-r``, ``-a``, ``--kd_T``)."""

    student_layer: str = opt(
        "embedding", "Student layer whose batch relations are matched (cmkdtool spectrum --list-layers CKPT)."
    )
    teacher_layer: str = opt("embedding", "Teacher layer whose batch relations are imitated.")
    task_weight: float = opt(
        1.0, "Weight (>= 0) of the task loss with the labels (RepDistiller train_student.py -r, default 1).", ge=0
    )
    kd_weight: float = opt(
        0.0,
        "Weight (>= 0) of Hinton KD on the logits (RepDistiller -a; its scripts use -a 0 for these methods).",
        ge=0,
    )
    kd_temperature: float = opt(4.0, "KD softmax temperature T (> 0; RepDistiller --kd_T 4).", gt=0)


class RelationalDistiller(Distiller):
    """task_weight * CE + kd_weight * KD + weight * loss(student_layer, teacher_layer).

    Subclasses set ``term`` (the loss term's name), ``weight`` (the name of their weight field) and implement
    ``relation(student_features, teacher_features)``; features are (B, width) as ``forward_layers`` gives them.
    A method that needs the batch's row indices (memory banks) overrides ``batch_term`` instead.
    """

    term = "rel"
    weight = "weight"
    single_process_reason = None  # under DDP batch_term sees the whole global batch (nn.gather)

    def __init__(self, student, teacher, params, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        student.layer_width(params.student_layer)  # unknown layer names fail here, naming the model's layers
        teacher.layer_width(params.teacher_layer)
        self.loss_weights = {self.term: getattr(params, self.weight), "ce": params.task_weight, "kd": params.kd_weight}

    def teacher_layers(self) -> list[str]:
        layers = [self.params.teacher_layer]
        if self.params.kd_weight and "logits" not in layers:
            layers.append("logits")
        return layers

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def batch_term(self, student: Tensor, teacher: Tensor, batch: Batch) -> Tensor:
        """The relation over the whole batch; under DDP the rows of every process are gathered first (with
        gradients: the one-process gradient exactly, see ``nn.gather``)."""
        return self.relation(gather_rows(student), gather_rows(teacher))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        p = self.params
        logits, feats = self.student.forward_layers(batch.inputs, [p.student_layer])
        teacher = self.teacher_outputs(batch)
        terms = {self.term: self.batch_term(feats[p.student_layer], teacher[p.teacher_layer], batch)}
        terms.update(self.label_terms(logits, teacher, batch))
        return terms

    def label_terms(self, logits: Tensor, teacher: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        """``ce`` (when task_weight > 0) and ``kd`` (when kd_weight > 0) of the student's logits."""
        p, terms = self.params, {}
        if p.task_weight:
            terms["ce"] = task_loss(logits, batch.target, self.task)
        if p.kd_weight:
            t = p.kd_temperature
            if self.task == "multilabel":
                terms["kd"] = t**2 * soft_bce_kd(logits, teacher["logits"], t)
            else:
                terms["kd"] = hinton_kd(logits, teacher["logits"], t)
        return terms


def map_shape(model, layer: str) -> tuple[int, int, int]:
    """(C, H, W) of the output of ``layer`` of a CmkdModel, by one forward of a zero sample in eval mode.

    ``forward_layers`` flattens every output to (N, C*H*W) (row-major), so the map is recovered with
    ``x.reshape(N, C, H, W)``. Raises ``CmkdUsageError`` (``NEEDS_MAPS``) unless the layer is an encoder module
    whose output is a 2-D feature map.
    """
    model.layer_width(layer)  # an unknown layer fails with the list of layers
    module = dict(model.named_modules()).get(layer) if layer.startswith("encoders.") else None
    if module is None:
        raise CmkdUsageError(f"{NEEDS_MAPS}; {layer!r} is a vector layer")
    shapes: list[tuple[int, ...]] = []
    hook = module.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model.embed({n: torch.zeros(1, model.input_dims[n], device=device) for n in model.input_names})
    finally:
        hook.remove()
        model.train(was_training)
    if len(shapes) != 1 or len(shapes[0]) != 3:
        raise CmkdUsageError(f"{NEEDS_MAPS}; {layer!r} gives {list(shapes[0]) if shapes else '?'} per sample")
    c, h, w = shapes[0]
    return int(c), int(h), int(w)
