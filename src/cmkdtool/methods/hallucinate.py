"""``distill hallucinate``: the two-stage hallucination baselines that OS-MD replaces, as its authors ran them
(shicaiwei123/TMM-MMH ``hmdb51/lib/model_develop.py``; spec section 3.6), in one command on the same engine and
into the same composite model kind as ``distill osmd``.

Stage 1 (the first ``--stage1-epochs`` epochs) trains the task-shared (hallucination) encoder phi_s on the
ordinary column to imitate the frozen privileged teacher's features; stage 2 freezes it and trains the fusion
(OS-MD's CTN fusion, without its MSE) and the head of the composite model on the labels, the ordinary encoder
phi_o fixed as pretrained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.method import Batch, OptimizerSpec, Step
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses.mmd import dask
from cmkdtool.losses.relational import pkt
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import DistillContext, Distiller, val_metrics
from cmkdtool.methods.osmd import composite_student
from cmkdtool.methods.registry import register
from cmkdtool.nn.amid import Discriminator
from cmkdtool.nn.composite import FUSES
from cmkdtool.options import opt

# the authors' weights (TMM-MMH scripts): MARS alpha 50 on nn.MSELoss, ADDA (= PKT) 40000, DASK 1; ADMD: 1
DEFAULT_WEIGHTS = {"mse": 50.0, "pkt": 40000.0, "dask": 1.0, "adversarial": 1.0}


@dataclass
class HallucinateParams:
    ordinary: str | None = opt(
        None,
        "Pretrained ordinary-modality checkpoint (pretrain on the --input column): phi_o of the composite (required).",
        checkpoint=True,
    )
    loss: str = opt(
        "mse",
        "Stage-1 imitation of the privileged features: mse (MARS/MERS, nn.MSELoss), pkt (the OS-MD authors' "
        "'ADDA'), dask (RKD + MSE) or adversarial (ADMD: a least-squares GAN on the features).",
        choices=tuple(DEFAULT_WEIGHTS),
    )
    hallucination_weight: float | None = opt(
        None,
        "Weight of the stage-1 loss [default: mse 50, pkt 40000, dask 1, adversarial 1: the authors' scripts].",
        ge=0,
    )
    stage1_epochs: int = opt(20, "Epochs of stage 1 (the rest of --epochs is stage 2: fusion and head).", ge=1)
    teacher_layer: str = opt("embedding", "Privileged teacher layer to imitate.")
    ctn_fuse: str = opt("average", "Fusion of the two encoders (as distill osmd's CTN fusion).", choices=FUSES)
    disc_lr: float = opt(1e-4, "adversarial: Adam learning rate of the discriminator (ADMD: 1e-4).", gt=0)
    disc_hidden: int = opt(256, "adversarial: hidden width of the discriminator (3 linear layers).", ge=1)


@register(
    "hallucinate", HallucinateParams, "Two-stage hallucination baselines (MARS/MERS, ADDA, DASK, ADMD) for OS-MD."
)
class Hallucinate(Distiller):
    """Stage 1: ``weight * H(P(phi_s(x_o)), phi_p(x_p))``; stage 2: ``CE(g(fuse(phi_o, phi_s)))`` with phi_s and
    phi_o fixed. Validation selects among stage-2 epochs only (stage-1 accuracy is logged as NaN: the head is not
    trained yet)."""

    single_process_reason = "its two stages switch which parameters train (DDP fixes the set when it starts)"

    def __init__(self, student, teacher, ordinary, params: HallucinateParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        comp = composite_student(student, ordinary, task, params.ctn_fuse, False, freeze_ordinary=True)
        self.student = comp
        d, d_p = comp.embed_dim, teacher.layer_width(params.teacher_layer)
        self.projector = nn.Linear(d, d_p) if d != d_p else nn.Identity()
        self.disc = Discriminator(d_p, params.disc_hidden, 3) if params.loss == "adversarial" else None
        weight = params.hallucination_weight
        self.loss_weights = {"hall": DEFAULT_WEIGHTS[params.loss] if weight is None else weight, "ce": 1.0}
        self.stage = 1

    @classmethod
    def from_context(cls, student, params, ctx: DistillContext) -> Hallucinate:
        if "ordinary" not in ctx.teachers:
            raise CmkdUsageError("distill hallucinate needs --ordinary ORDINARY.safetensors (pretrain on --input)")
        return cls(student, ctx.teachers["teacher"], ctx.teachers["ordinary"], params, ctx.task, ctx.cache_teacher)

    def teacher_layers(self) -> list[str]:
        return [self.params.teacher_layer]

    def configure(self, cfg) -> None:
        super().configure(cfg)
        if cfg.epochs <= self.params.stage1_epochs:
            raise CmkdUsageError(
                f"--epochs {cfg.epochs} leaves no stage 2 after --stage1-epochs {self.params.stage1_epochs} (the "
                "fusion and head would stay untrained); raise --epochs or lower --stage1-epochs"
            )

    def frozen_modules(self) -> list[nn.Module]:
        return [*super().frozen_modules(), self.student.encoders["ordinary"]]  # phi_o as pretrained, in eval mode

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == 2:  # phi_s is fixed in stage 2: its BatchNorm statistics and dropout too
            self.student.encoders["shared"].eval()
        return self

    def optimizers(self) -> dict[str, OptimizerSpec]:
        if self.disc is None:
            return {}
        return {"disc": OptimizerSpec(list(self.disc.parameters()), "adam", lr=self.params.disc_lr)}

    def on_epoch_start(self, epoch: int) -> None:
        self.stage = 1 if epoch <= self.params.stage1_epochs else 2
        comp = self.student
        comp.encoders["shared"].requires_grad_(self.stage == 1)
        self.projector.requires_grad_(self.stage == 1)
        comp.ctn.requires_grad_(self.stage == 2)
        comp.head.requires_grad_(self.stage == 2)
        if self.stage == 2 and self.training:
            comp.encoders["shared"].eval()

    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        out = val_metrics(self.student, data, index, precision, batch_size, acer=self.select == "acer")
        if self.stage == 1:  # the head is untrained: not a candidate for the best epoch
            out = {**out, "accuracy": math.nan, "loss": math.inf, **({"acer": math.nan} if "acer" in out else {})}
        return out

    def _imitation(self, u: Tensor, target: Tensor) -> Tensor:
        loss = self.params.loss
        if loss == "mse":
            return F.mse_loss(u, target)
        if loss == "pkt":
            return pkt(u, target)
        if loss == "dask":
            return dask(u, target)
        return (torch.sigmoid(self.disc(u)) - 1).pow(2).mean()  # ADMD generator: mean (D(fake) - 1)^2

    def training_step(self, batch: Batch) -> Step:
        if self.stage == 1:
            z_s = self.student.branches(batch.inputs)[1]
            u = self.projector(z_s)
            target = self.teacher_outputs(batch)[self.params.teacher_layer]
            return Step({"hall": self._imitation(u, target)}, {"u": u.detach(), "target": target})
        logits = self.student(batch.inputs)
        return Step({"ce": task_loss(logits, batch.target, self.task)})

    def own_losses(self, batch: Batch, step: Step) -> dict[str, Tensor | None]:
        if self.disc is None or "u" not in step.outputs:
            return {}
        real, fake = torch.sigmoid(self.disc(step.outputs["target"])), torch.sigmoid(self.disc(step.outputs["u"]))
        return {"disc": (real - 1).pow(2).mean() + fake.pow(2).mean()}  # ADMD: least squares, real = privileged
