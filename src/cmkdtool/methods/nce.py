"""``distill nce``: contrastive distillation with in-batch negatives: instance-level InfoNCE (van den Oord et al.
2018; CMC, Tian et al. 2020) or CCL's class-aware NCE (AMID Table 4's "with L_nce")."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.method import Batch
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses.contrastive import class_nce, info_nce
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.registry import register
from cmkdtool.nn.contrast import Embed
from cmkdtool.nn.gather import gather_rows
from cmkdtool.options import opt


@dataclass
class NCEParams(RelationalOptions):
    nce_weight: float = opt(1.0, "Weight (>= 0) of the contrastive loss.", ge=0)
    positives: str = opt(
        "instance",
        "instance: InfoNCE, the same row in the other network is the one positive (symmetric, CMC/CLIP); class: "
        "CCL's NCELoss both ways, every same-class row is a positive (AMID Table 4 'with L_nce'; multiclass).",
        choices=("instance", "class"),
    )
    temperature: float = opt(
        0.07, "Temperature T (> 0; CMC and CRD: 0.07; CCL: 0.5 with an audio teacher, 0.1 with an image one).", gt=0
    )
    feat_dim: int = opt(128, "Width of the two projection heads (Linear + L2 norm; CRD/CMC: 128).", ge=1)


@register("nce", NCEParams, "Contrastive distillation with in-batch negatives: InfoNCE or CCL's class-aware NCE.")
class NCE(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + nce_weight * NCE(h_s(student_layer), h_t(teacher_layer)).

    ``h_s``, ``h_t`` are learned heads (Linear + L2 norm) to ``feat_dim`` (training only). ``instance``:
    ``losses.info_nce`` (both directions averaged); ``class``: ``losses.class_nce`` summed both ways, as CCL.
    """

    term = "nce"
    weight = "nce_weight"

    def __init__(self, student, teacher, params: NCEParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        s_dim, t_dim = student.layer_width(params.student_layer), teacher.layer_width(params.teacher_layer)
        self.embed_student = Embed(s_dim, params.feat_dim)
        self.embed_teacher = Embed(t_dim, params.feat_dim)

    def setup(self, data: TensorData) -> None:
        if self.params.positives == "class" and data.task != "multiclass":
            raise CmkdUsageError(
                f"--positives class needs a single-label (multiclass) table, not {data.task}; use --positives instance"
            )
        super().setup(data)

    def batch_term(self, student: Tensor, teacher: Tensor, batch: Batch) -> Tensor:
        # under DDP the negatives are the whole global batch's rows (nn.gather)
        s, t, p = gather_rows(self.embed_student(student)), gather_rows(self.embed_teacher(teacher)), self.params
        if p.positives == "class":
            y = gather_rows(batch.target)
            return class_nce(s, t, y, p.temperature) + class_nce(t, s, y, p.temperature)
        return info_nce(s, t, p.temperature)
