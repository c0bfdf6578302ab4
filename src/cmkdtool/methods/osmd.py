"""``distill osmd``: one-stage modality distillation (Wei, Luo, Luo, arXiv 2309.08204): a composite student on the
ordinary modality (the pretrained ordinary encoder and a task-shared encoder fused by the cross translation
network) trained in one stage with the joint adaptation network towards a frozen privileged teacher, the
auxiliary weights set by GradNorm. ``shared/specs/amid-osmd.md`` section 2 fixes the equations and choices O1-O11.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkdtool.engine.method import Batch, Step
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses.gradnorm import adam_update, gradnorm_weight_grad, renormalise
from cmkdtool.losses.kd import kd_kl, soft_bce_kd
from cmkdtool.losses.mmd import mmd_multi_kernel
from cmkdtool.losses.relational import rkd
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import DistillContext, Distiller
from cmkdtool.methods.registry import register
from cmkdtool.nn.composite import FUSES, CompositeModel, composite_spec
from cmkdtool.options import opt

JDN_TERMS = ("mmd", "kl", "fkd", "rkd")  # the JDN's terms (fkd, rkd: Table 4's replacements), weighted by alpha


@dataclass
class OSMDParams:
    ordinary: str | None = opt(
        None,
        "Pretrained ordinary-modality checkpoint (cmkdtool pretrain on the --input column): its encoder phi_o is "
        "copied into the student (required).",
        checkpoint=True,
    )
    teacher_layer: str = opt("embedding", "Privileged teacher layer phi_p that the MMD matches (O3).")
    balance: str = opt(
        "gradnorm",
        "Auxiliary weights alpha (JDN), beta (CTN): gradnorm (Eq. 9 with GradNorm, O9), magnitude (each aux loss "
        "at 0.1 x the task loss, every step; weights capped at 1) or fixed (--jdn-weight, --ctn-weight).",
        choices=("gradnorm", "magnitude", "fixed"),
    )
    jdn_weight: float = opt(0.1, "alpha with --balance fixed; GradNorm's start is aux_weight_sum / 2.", ge=0)
    ctn_weight: float = opt(0.1, "beta with --balance fixed.", ge=0)
    aux_weight_sum: float = opt(
        0.2, "GradNorm: alpha + beta after each update (an order of magnitude below the task weight 1; O9).", gt=0
    )
    gradnorm_alpha: float = opt(1.5, "GradNorm's asymmetry a (Chen et al. 2018, NYUv2 value; O9).", ge=0)
    gradnorm_lr: float = opt(0.025, "GradNorm: Adam learning rate of the weights (O9).", gt=0)
    mmd_kernels: int = opt(5, "MMD: number of Gaussian kernels, summed (the authors' MMD_loss: 5; O1).", ge=1)
    mmd_mul: float = opt(2.0, "MMD: ratio between consecutive bandwidths (the authors' code: 2).", gt=0)
    mmd_bandwidth: float | None = opt(
        None, "MMD: fixed centre bandwidth sigma (> 0) [default: data-dependent, the authors' code].", gt=0
    )
    kl_temperature: float = opt(1.0, "Softmax temperature of the JDN's KL (Eq. 6: 1, no T^2).", gt=0)
    ctn_fuse: str = opt(
        "average",
        "CTN fusion: average (the authors' Cross_Translation) or concat4 (the paper's text; O8).",
        choices=FUSES[:2],
    )
    jdn: str = opt(
        "full",
        "Joint adaptation: full (MMD + KL, Eqs. 1-7), none, or replaced by fkd (feature MSE) or rkd (RKD 25/50) "
        "between P(z_s) and z_p (Table 4's ablation).",
        choices=("full", "none", "fkd", "rkd"),
    )
    ctn: str = opt(
        "translate",
        "Cross translation: translate (Eq. 8 and the CTN fusion), none (the encoders' features concatenated, no "
        "translation loss), or ae (concatenated, plus an autoencoder AE(z_s) ~ z_o with MSE) (Table 5's ablation).",
        choices=("translate", "none", "ae"),
    )
    ctn_bn: bool = opt(False, "BatchNorm in the transform blocks (paper text; the code has none; O5).")
    freeze_ordinary: bool = opt(False, "Keep phi_o fixed (O6; default: fine-tuned, the one-stage reading).")
    hallucination_head: str = opt(
        "copy",
        "f_s, the head on the projected shared features whose prediction the KL matches: copy (a trainable copy "
        "of the teacher's head; needs --teacher-layer embedding) or new (O4).",
        choices=("copy", "new"),
    )


def composite_student(student, ordinary, task: str, fuse: str, bn: bool, freeze_ordinary: bool) -> CompositeModel:
    """The composite deployable model: ``ordinary``'s encoder (and its input standardisation) copied as phi_o, the
    freshly built ``student``'s encoder as phi_s, a new CTN fusion and head (shared by ``distill osmd`` and
    ``distill hallucinate``)."""
    if len(student.input_names) != 1:
        raise CmkdUsageError("a composite student reads one ordinary column: give exactly one --input")
    (col,) = student.input_names
    if ordinary.input_names != [col]:
        raise CmkdUsageError(
            f"--ordinary reads {','.join(ordinary.input_names)} but the student's --input is {col}; "
            f"pretrain the ordinary model on {col} alone"
        )
    if student.spec["arch"] == "linear" or ordinary.spec["arch"] == "linear":
        raise CmkdUsageError("a composite student needs encoders (mlp, cnn2d, ...): --arch linear has none")
    spec = composite_spec(
        student.spec["inputs"][0], ordinary.spec, student.spec, num_classes=student.layer_width("logits"),
        task=task, class_names=student.spec.get("class_names"), fuse=fuse, bn=bn,
        head_hidden=student.spec.get("head_hidden"),
    )  # fmt: skip
    comp = CompositeModel(spec)
    comp.encoders["ordinary"].load_state_dict(ordinary.encoders[col].state_dict())
    comp.norm["ordinary"].load_state_dict(ordinary.norm[col].state_dict())
    comp.encoders["shared"].load_state_dict(student.encoders[col].state_dict())
    comp.norm["shared"].load_state_dict(student.norm[col].state_dict())
    if freeze_ordinary:
        comp.encoders["ordinary"].requires_grad_(False)
    return comp


def _last_weight(module: nn.Module) -> nn.Parameter:
    """The weight of the last layer with a matrix (or conv kernel) weight: GradNorm's shared layer W."""
    weights = [m.weight for m in module.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)
               and m.weight.ndim >= 2]  # fmt: skip
    if not weights:
        raise CmkdUsageError("the shared encoder has no weight matrix for GradNorm; use --balance magnitude or fixed")
    return weights[-1]


@register("osmd", OSMDParams, "OS-MD: one-stage modality distillation into a composite ordinary-modality model.")
class OSMD(Distiller):
    """L = CE(g(CTN(phi_o, phi_s))) + alpha (MMD(P(z_s), z_p) + KL(f_p || f_s)) + beta L_CTN (Eqs. 1-9).

    The deployable student is a ``CompositeModel`` (one column, two encoders, CTN, head): phi_o copied from
    ``--ordinary``, phi_s built from the student options (same embedding width), the head new. Training-only:
    the projector P (when the widths differ) and the hallucination head f_s. The teacher (phi_p, f_p) is frozen
    and cached.
    """

    single_process_reason = "GradNorm balances its loss weights with gradient norms it takes outside the DDP step"

    def __init__(self, student, teacher, ordinary, params: OSMDParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        fuse = params.ctn_fuse if params.ctn == "translate" else "concat"
        comp = composite_student(student, ordinary, task, fuse, params.ctn_bn, params.freeze_ordinary)
        self.student = comp
        d, d_p = comp.embed_dim, teacher.layer_width(params.teacher_layer)
        self.projector = nn.Linear(d, d_p) if d != d_p else nn.Identity()
        if params.hallucination_head == "copy":
            if params.teacher_layer != "embedding":
                raise CmkdUsageError("--hallucination-head copy copies the head after the embedding: use "
                                     "--teacher-layer embedding or --hallucination-head new")  # fmt: skip
            head = copy.deepcopy(teacher.head)
            for m in head.modules():
                m._forward_hooks.clear()  # a teacher mask's hook belongs to the teacher
            self.hallucination = head.requires_grad_(True)
        else:
            self.hallucination = nn.Linear(d_p, comp.layer_width("logits"))
        half = max(1, comp.embed_dim // 2)
        self.autoencoder = (
            nn.Sequential(nn.Linear(comp.embed_dim, half), nn.ReLU(), nn.Linear(half, comp.embed_dim))
            if params.ctn == "ae"
            else None
        )
        self.shared_weight = _last_weight(comp.encoders["shared"])
        start = (
            [params.jdn_weight, params.ctn_weight]
            if params.balance == "fixed"
            else [params.aux_weight_sum / 2, params.aux_weight_sum / 2]
        )
        self.register_buffer("w", torch.tensor(start))  # alpha, beta: method state (--resume)
        self.register_buffer("loss0", torch.full((2,), -1.0))  # L_i(0) of GradNorm
        self.register_buffer("adam_m", torch.zeros(2))
        self.register_buffer("adam_v", torch.zeros(2))
        self.register_buffer("adam_step", torch.zeros(()))
        self._grad_norms: Tensor | None = None

    @property
    def loss_weights(self) -> dict:
        """eta = 1 for the task loss; alpha for the JDN's terms and beta for the CTN's, read from the buffer ``w`` at
        every step (so an update applies from the next step)."""
        return {"ce": 1.0, **{k: self.w[0] for k in JDN_TERMS}, "ctn": self.w[1]}

    @loss_weights.setter
    def loss_weights(self, value: dict) -> None:  # derived from ``w``: the engine's default assignment is ignored
        pass

    @classmethod
    def from_context(cls, student, params, ctx: DistillContext) -> OSMD:
        if "ordinary" not in ctx.teachers:
            raise CmkdUsageError("distill osmd needs --ordinary ORDINARY.safetensors (pretrain on the --input column)")
        return cls(student, ctx.teachers["teacher"], ctx.teachers["ordinary"], params, ctx.task, ctx.cache_teacher)

    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys([self.params.teacher_layer, "logits"]))

    def frozen_modules(self) -> list[nn.Module]:
        """The teacher, and with --freeze-ordinary phi_o (kept in eval mode: its BatchNorm statistics and dropout
        stay as pretrained)."""
        frozen = super().frozen_modules()
        return [*frozen, self.student.encoders["ordinary"]] if self.params.freeze_ordinary else frozen

    # ---- the step ----------------------------------------------------------------------------------------------

    def training_step(self, batch: Batch) -> Step:
        p = self.params
        parts = self.student.parts(batch.inputs)
        teacher = self.teacher_outputs(batch)
        u = self.projector(parts["z_s"])
        gamma_s = self.hallucination(u)
        if self.task == "multilabel":
            kl = soft_bce_kd(gamma_s, teacher["logits"], p.kl_temperature)
        else:
            kl = kd_kl(gamma_s, teacher["logits"], p.kl_temperature)
        z_p = teacher[p.teacher_layer]
        terms = {"ce": task_loss(parts["logits"], batch.target, self.task)}
        if p.jdn == "full":
            terms["mmd"] = mmd_multi_kernel(u, z_p, p.mmd_mul, p.mmd_kernels, p.mmd_bandwidth)
            terms["kl"] = kl
        elif p.jdn == "fkd":
            terms["fkd"] = F.mse_loss(u, z_p)
        elif p.jdn == "rkd":
            terms["rkd"] = rkd(u, z_p)
        if p.ctn == "translate":
            terms["ctn"] = F.mse_loss(parts["t1_s"], parts["t1_o"]) + F.mse_loss(parts["t2_s"], parts["t2_o"])
        elif p.ctn == "ae":
            terms["ctn"] = F.mse_loss(self.autoencoder(parts["z_s"]), parts["z_o"])
        if p.balance == "magnitude":
            with torch.no_grad():
                ce = terms["ce"].detach().float()
                aux = torch.stack([self._jdn(terms).detach().float(), self._ctn(terms).detach().float()])
                aux = aux.clamp(min=1e-12)
                self.w.copy_((0.1 * ce / aux).clamp(max=1.0))  # capped: a collapsed CTN (L -> 0) gets weight 1
        return Step(terms)

    def backward(self, loss: Tensor, terms: dict[str, Tensor], scale) -> None:
        p = self.params
        both = p.jdn != "none" and p.ctn != "none"  # GradNorm balances two terms; with one ablated, w stays S/2
        if p.balance == "gradnorm" and both and self.shared_weight.requires_grad:
            w = self.shared_weight
            norms = []
            for aux in (self._jdn(terms), self._ctn(terms)):
                (g,) = torch.autograd.grad(aux, w, retain_graph=True, allow_unused=True)
                norms.append(torch.zeros((), device=w.device) if g is None else g.float().norm())
            self._grad_norms = torch.stack(norms)
        scale(loss).backward()

    @torch.no_grad()
    def after_step(self, batch: Batch, step: Step, index: int) -> None:
        if self.params.balance != "gradnorm" or self._grad_norms is None:
            return
        t = step.terms
        losses = torch.stack([self._jdn(t).detach().float(), self._ctn(t).detach().float()])
        self.loss0.copy_(torch.where(self.loss0 < 0, losses, self.loss0))
        # GradNorm's own scale: weights summing to the number of tasks (2), where its learning rate was set; the
        # loss weights are those scaled to --aux-weight-sum (a uniform scale leaves the update's signs unchanged)
        tasks, total = 2.0, self.params.aux_weight_sum
        wn = self.w * (tasks / total)
        grad = gradnorm_weight_grad(wn, self._grad_norms, losses, self.loss0.clamp(min=1e-12),
                                    self.params.gradnorm_alpha)  # fmt: skip
        adam_update(wn, grad, self.adam_m, self.adam_v, self.adam_step, self.params.gradnorm_lr)
        self.w.copy_(renormalise(wn, tasks) * (total / tasks))
        self._grad_norms = None

    def _jdn(self, terms: dict[str, Tensor]) -> Tensor:
        """L_JDN of the step (0 when ablated)."""
        parts = [terms[k] for k in JDN_TERMS if k in terms]
        return sum(parts[1:], parts[0]) if parts else terms["ce"].new_zeros(())

    def _ctn(self, terms: dict[str, Tensor]) -> Tensor:
        return terms["ctn"] if "ctn" in terms else terms["ce"].new_zeros(())

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        metrics["train/alpha"], metrics["train/beta"] = float(self.w[0]), float(self.w[1])
