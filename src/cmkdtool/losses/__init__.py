"""Distillation losses: small typed pure functions of tensors (the wiring lives in the methods)."""

from cmkdtool.losses.alignment import DISTANCES, logit_distance
from cmkdtool.losses.contrastive import (
    class_nce,
    crcd_scores,
    crd_nce,
    crd_scores,
    crd_scores_shared,
    gmc_nt_xent,
    info_nce,
    js_divergence,
    sym_kl,
)
from cmkdtool.losses.feature import (
    FEATURE_LOSSES,
    FeatureLoss,
    feature_ce,
    feature_clip,
    feature_cosine,
    feature_l1,
    feature_margin,
    feature_mse,
)
from cmkdtool.losses.kd import hinton_kd, kd_kl, soft_bce_kd
from cmkdtool.losses.mmd import dask, mmd_multi_kernel
from cmkdtool.losses.relational import nst, pkt, rkd, rkd_angle, rkd_distance, sp
from cmkdtool.losses.task import task_loss

__all__ = [
    "class_nce",
    "crcd_scores",
    "crd_nce",
    "crd_scores",
    "crd_scores_shared",
    "gmc_nt_xent",
    "info_nce",
    "js_divergence",
    "sym_kl",
    "DISTANCES",
    "logit_distance",
    "FEATURE_LOSSES",
    "FeatureLoss",
    "feature_ce",
    "feature_clip",
    "feature_cosine",
    "feature_l1",
    "feature_margin",
    "feature_mse",
    "hinton_kd",
    "kd_kl",
    "soft_bce_kd",
    "dask",
    "mmd_multi_kernel",
    "nst",
    "pkt",
    "rkd",
    "rkd_angle",
    "rkd_distance",
    "sp",
    "task_loss",
]
