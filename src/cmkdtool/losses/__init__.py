"""Distillation losses: small typed pure functions of tensors (the wiring lives in the methods)."""

from cmkdtool.losses.alignment import DISTANCES, logit_distance
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

__all__ = [
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
]
