"""``distill dask``: DASK as the OS-MD authors ran it (Ni et al., ICASSP 2022; TMM-MMH ``dask``): RKD + MSE."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.losses.mmd import dask
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.base import projector, projector_option
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class DASKParams(RelationalOptions):
    dask_weight: float = opt(
        1.0,
        "Weight (>= 0) of the DASK loss (TMM-MMH hmdb51/lib/model_develop.py: CE + lambda_kd * DASK(); no script "
        "sets lambda_kd for dask, so 1, the loss's own unit weighting).",
        ge=0,
    )
    w_rkd: float = opt(1.0, "Weight (>= 0) of RKD(w_d, w_a) inside DASK (TMM-MMH loss/kd/dask.py: 1).", ge=0)
    w_mse: float = opt(1.0, "Weight (>= 0) of the element-mean MSE inside DASK (TMM-MMH loss/kd/dask.py: 1).", ge=0)
    w_d: float = opt(25.0, "Weight (>= 0) of RKD's distance term (DASK uses RepDistiller RKDLoss w_d=25).", ge=0)
    w_a: float = opt(50.0, "Weight (>= 0) of RKD's angle term (DASK uses RepDistiller RKDLoss w_a=50).", ge=0)
    projector: str = projector_option(": the MSE needs equal widths")


@register("dask", DASKParams, "DASK (OS-MD authors' version): RKD (25, 50) plus feature MSE between named layers.")
class DASK(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + dask_weight * (w_rkd * RKD(P(s), t) + w_mse * MSE(P(s), t)).

    P is a learned linear projector when the widths differ (or ``--projector linear``), as in ``distill
    feature``; it serves training only and is not part of the deployed student.
    """

    term = "dask"
    weight = "dask_weight"

    def __init__(self, student, teacher, params: DASKParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        s_dim, t_dim = student.layer_width(params.student_layer), teacher.layer_width(params.teacher_layer)
        why = "DASK's MSE needs equal widths: "
        self.projector = projector(params.projector, params.student_layer, s_dim, params.teacher_layer, t_dim, why)

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        p = self.params
        return dask(self.projector(student), teacher, w_mse=p.w_mse, w_rkd=p.w_rkd, w_d=p.w_d, w_a=p.w_a)
