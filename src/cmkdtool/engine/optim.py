"""Optimizers and learning-rate schedules (``--optimizer``, ``--lr``, ``--schedule``, ``--warmup-epochs``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.method import OptimizerSpec
from cmkdtool.errors import CmkdUsageError

ONECYCLE_DIV = 25.0
"""One-cycle: the rate starts at lr / 25 (torch OneCycleLR ``div_factor``)."""
ONECYCLE_FINAL_DIV = 1e4
"""One-cycle: the rate ends at lr / 25 / 1e4 (torch OneCycleLR ``final_div_factor``)."""
ONECYCLE_PCT = 0.3
"""One-cycle: share of the steps spent rising when --warmup-epochs is 0 (torch OneCycleLR ``pct_start``)."""


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over parameter groups; a group's ``lr_scale`` multiplies the base rate."""
    params = [
        {k: v for k, v in {**g, "lr": cfg.lr * g.get("lr_scale", 1.0)}.items() if k != "lr_scale"} for g in groups
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_own_optimizer(name: str, spec: OptimizerSpec, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer a method declared (``Method.optimizers``)."""
    lr = cfg.lr if spec.lr is None else spec.lr
    params = [p for p in spec.params if p.requires_grad]
    if not params:
        raise CmkdUsageError(f"own optimizer '{name}' has no trainable parameters")
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay)
    raise CmkdUsageError(f"own optimizer '{name}': unknown kind '{spec.optimizer}'; use adam, adamw or sgd")


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step`` (linear warm-up, then the schedule).

    ``onecycle`` follows torch's ``OneCycleLR`` (two phases, cosine annealing) from lr/25 up to lr over the
    warm-up epochs (30% of the steps when there are none), then down to lr/25/1e4 at the last step.
    """
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    milestones = sorted(int(m) for m in cfg.milestones)
    if cfg.schedule == "onecycle":
        rise = float(warm) - 1 if warm else ONECYCLE_PCT * total - 1
        initial, final = 1.0 / ONECYCLE_DIV, 1.0 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV

        def cos(start: float, end: float, t: float) -> float:
            return end + (start - end) / 2.0 * (math.cos(math.pi * t) + 1)

        def onecycle(step: int) -> float:
            if step <= rise:
                return cos(initial, 1.0, step / rise) if rise > 0 else 1.0
            fall = total - 1 - rise
            return cos(1.0, final, min(1.0, (step - rise) / fall)) if fall > 0 else final

        return onecycle

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in milestones)
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return factor


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps_per_epoch))


__all__ = ["lr_factor", "make_optimizer", "make_own_optimizer", "make_schedule"]
