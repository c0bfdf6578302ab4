"""``distill gmc``: geometric multimodal contrastive learning (Poklukar et al., ICML 2022) as a CMKD baseline, after
the authors' supervised model (miguelsvasco/gmc@bc4eada ``gmc_code/supervised/architectures/models/gmc.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from cmkdtool.losses.contrastive import gmc_nt_xent
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.registry import register
from cmkdtool.nn.contrast import Embed
from cmkdtool.options import opt


@dataclass
class GMCParams(RelationalOptions):
    gmc_weight: float = opt(
        1.0, "Weight (>= 0) of the GMC loss (super_gmc_loss: contrastive + task, unweighted).", ge=0
    )
    temperature: float = opt(
        0.3, "Temperature tau (> 0) of the NT-Xent (GMC supervised MOSI/MOSEI: 0.3; unsupervised MHD: 0.1).", gt=0
    )
    common_dim: int = opt(60, "Width of each side's processor output (GMC MOSI/MOSEI common_dim 60).", ge=1)
    latent_dim: int = opt(60, "Width of the shared projection head (GMC MOSI/MOSEI latent_dim 60).", ge=1)


@register("gmc", GMCParams, "Geometric multimodal contrastive learning (GMC): NT-Xent of student and teacher views.")
class GMC(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + gmc_weight * NT-Xent(z_joint, [z_student]).

    The frozen (full-modality) teacher plays GMC's joint representation and the student its modality: each side
    has a linear processor to ``common_dim`` and one *shared* head (Linear to ``latent_dim`` + L2 norm, GMC's
    ``AffectEncoder``) maps both; ``losses.gmc_nt_xent`` contrasts them over the batch (AMID gives no GMC setup for
    CMKD: this mapping is cmkdtool's choice). Processors and head serve training only.
    """

    term = "gmc"
    weight = "gmc_weight"

    def __init__(self, student, teacher, params: GMCParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        s_dim, t_dim = student.layer_width(params.student_layer), teacher.layer_width(params.teacher_layer)
        self.process_student = nn.Linear(s_dim, params.common_dim)
        self.process_teacher = nn.Linear(t_dim, params.common_dim)
        self.head = Embed(params.common_dim, params.latent_dim)

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        joint = self.head(self.process_teacher(teacher))
        return gmc_nt_xent(joint, [self.head(self.process_student(student))], self.params.temperature)
