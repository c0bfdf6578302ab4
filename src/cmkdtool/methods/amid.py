"""``distill amid``: adversarial mutual information distillation (Chen, Xing, Wang, Zhang, CVPR 2023), an online
full-modality teacher trained with the student. No public code: ``shared/specs/amid-osmd.md`` section 1 fixes
every equation, shape and gradient path; the choices it names (A1-A11) are options with its proposed defaults."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.device import autocast
from cmkdtool.engine.method import Batch, OptimizerSpec, Step
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses.amid import (
    adversarial_loss,
    discriminator_loss,
    expected_pair_rows,
    lambda_update,
    mi_bound_loss,
    same_class_pairs,
)
from cmkdtool.losses.contrastive import class_nce, info_nce, js_divergence, sym_kl
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import PROJECTOR_MODES, DistillContext, Distiller, projector, val_metrics
from cmkdtool.methods.registry import register
from cmkdtool.nn.amid import Discriminator, Fusion
from cmkdtool.nn.inference import LazyRows, map_rows
from cmkdtool.nn.models import Standardize
from cmkdtool.options import opt, parse_floats

ABLATIONS = ("d2", "dynamic", "adv", "mi-a", "mi-s", "jsd", "warmup", "fixed")


def _names(text: str) -> list[str]:
    return [t for t in (text or "").replace(" ", "").split(",") if t]


def _check_ablate(value: list[str]) -> None:
    bad = [v for v in value if v not in ABLATIONS]
    if bad:
        raise CmkdUsageError(f"--ablate takes a comma list of {', '.join(ABLATIONS)}; got '{bad[0]}'")


def _check_lambda(value: list[float]) -> None:
    if len(value) != 2:
        raise CmkdUsageError(f"--lambda-init takes two numbers (l1,l2), e.g. 0,1; got {len(value)}")


@dataclass
class AMIDParams:
    aux: list[str] = opt(
        [],
        "Auxiliary column(s) the online teacher fuses with the student (required; comma list, e.g. audio): "
        "features, standardised with train statistics; not student inputs.",
        column=True,
        cli=str,
        parse=_names,
        show=lambda v: ",".join(v),
    )
    tau: float = opt(0.5, "Temperature tau (> 0) of the MI critic, Eq. 7 (paper: 0.5 video, 0.6 IEMOCAP).", gt=0)
    mi_weight: float = opt(4.0, "a1 (>= 0): weight of L_MI_s, Eq. 8 (paper 4).", ge=0)
    mi_aux_weight: float = opt(1.6, "a2 (>= 0): weight of L_MI_a, Eq. 9 (paper 1.6).", ge=0)
    adv_weight: float = opt(1.0, "a3 (>= 0): weight of the adversarial loss, Eqs. 11-12 (paper 1).", ge=0)
    adv_start: int = opt(
        20, "T_start: warm-up epochs of CE + JSD only before the MI and adversarial terms (paper 20).", ge=0
    )
    beta: float = opt(
        0.9, "Momentum beta of the dynamic discriminator weights, Eq. 14, in [0, 1) (paper 0.9).", ge=0, lt=1
    )
    lambda_init: list[float] = opt(
        [0.0, 1.0],
        "Initial running values l(1) of Eq. 14 (lam = softmax(l); paper 0,1).",
        cli=str,
        parse=lambda t: parse_floats(t, "--lambda-init"),
        show=lambda v: ",".join(f"{x:g}" for x in v),
        check=_check_lambda,
    )
    mi_reduction: str = opt(
        "sum",
        "Eq. 8's inner sums: sum (as printed) or mean (each divided by its set size; = CCL's NCELoss).",
        choices=("sum", "mean"),
    )
    mi_loss: str = opt(
        "amid",
        "MI bound: amid (Eq. 8), ccl (CCL's NCELoss both ways: Table 4 'AMID with L_nce') or infonce (instance level).",
        choices=("amid", "ccl", "infonce"),
    )
    mi_symmetric: bool = opt(False, "Add the S-anchored direction to Eq. 8 (CCL style; the paper: M-anchored only).")
    jsd: str = opt(
        "js",
        "Eq. 16: js (Jensen-Shannon, the paper's definition) or sym-kl (CCL's JSDLoss, 0.5 (KL(p||q) + KL(q||p))).",
        choices=("js", "sym-kl"),
    )
    disc_lr: float = opt(1e-4, "Learning rate of the discriminators (Adam, betas 0.5, 0.999; paper lr 1e-4).", gt=0)
    disc_hidden: int = opt(0, "Hidden width of D1 and D2 (0: the student's embedding width).", ge=0)
    d2_norm: str = opt(
        "expected",
        "D2's normaliser d: expected (the expected number of rows with a same-class partner in a batch), batch "
        "(this batch's count) or batch-size.",
        choices=("expected", "batch", "batch-size"),
    )
    aux_projector: str = opt(
        "auto",
        "Map of the auxiliary features to the embedding width: auto (linear when widths differ), linear, none.",
        choices=PROJECTOR_MODES,
    )
    ablate: list[str] = opt(
        [],
        f"Ablations, comma list of {', '.join(ABLATIONS)} (Table 5, supp. Tables 2-3): dynamic = uniform weights "
        "0.5, 0.5; d2 = D1 alone; warmup = no warm-up; fixed = the teacher (F and the aux projector) trained "
        "during the warm-up only, then fixed (Table 5's fixed teacher).",
        cli=str,
        parse=_names,
        show=lambda v: ",".join(v),
        check=_check_ablate,
    )


@register("amid", AMIDParams, "AMID: an online full-modality teacher, MI bounds and two discriminators (CVPR 2023).")
class AMID(Distiller):
    """CE(g(S)) + CE(g(M)) + JSD + a1 L_MI_s + a2 L_MI_a + a3 L_adv (Eq. 17) after ``adv_start`` warm-up epochs of
    CE + JSD; then one discriminator step on Eq. 13 (own Adam optimizer) after every student step.

    ``S`` = the student's embedding, ``A`` = the standardised ``aux`` columns (through a projector when widths
    differ), ``M = F([S, A])`` (``nn.amid.Fusion``, trained with the student), ``g`` = the student's head, shared by
    both. Fusion, projector and discriminators serve training only; the checkpoint is the student.
    """

    needs_teacher = False
    single_process_reason = "its same-class pairs, MI negatives and discriminator statistics span the whole batch"

    def __init__(self, student, params: AMIDParams, task: str):
        super().__init__(student, None, params, task)
        if not params.aux:
            raise CmkdUsageError("distill amid needs --aux COL: the auxiliary modality the online teacher fuses")
        overlap = [c for c in params.aux if c in student.input_names]
        if overlap:
            raise CmkdUsageError(f"--aux {overlap[0]} is also a student --input; the auxiliary modality must differ")
        self.off = set(params.ablate)
        self.dim = student.layer_width("embedding")
        hidden = params.disc_hidden or self.dim
        self.disc1 = Discriminator(self.dim, hidden, 5)
        self.disc2 = Discriminator(self.dim, hidden, 3)
        lam0 = torch.tensor([1.0, 0.0]) if "d2" in self.off else torch.softmax(torch.tensor(params.lambda_init), 0)
        if "dynamic" in self.off and "d2" not in self.off:
            lam0 = torch.tensor([0.5, 0.5])
        self.register_buffer("lt", torch.tensor(params.lambda_init, dtype=torch.float32))
        self.register_buffer("lam", lam0.float())
        self.register_buffer("cos_sums", torch.zeros(4))  # sum c1, count c1, sum c2, count c2 (this epoch)
        self.aux_norm = nn.ModuleDict()
        self.aux_projector: nn.Module = nn.Identity()
        self.fusion: Fusion | None = None
        self.class_counts: list[int] = []
        self.num_classes = student.layer_width("logits")
        self.phase = False
        self.frozen_teacher = False
        self._d_norm: dict[int, float] = {}
        w = {"ce_s": 1.0, "ce_m": 1.0, "jsd": 0.0 if "jsd" in self.off else 1.0}
        w.update(mi_s=params.mi_weight, mi_a=params.mi_aux_weight, adv=params.adv_weight)
        self.loss_weights = w

    @classmethod
    def from_context(cls, student, params, ctx: DistillContext) -> AMID:
        if ctx.teachers:
            raise CmkdUsageError("distill amid trains its teacher online: drop --teacher")
        return cls(student, params, ctx.task)

    # ---- set-up ------------------------------------------------------------------------------------------------

    def setup(self, data: TensorData) -> None:
        super().setup(data)
        if data.task != "multiclass":
            raise CmkdUsageError(
                f"distill amid's MI bounds are class-aware: it needs a single-label table, not {data.task}"
            )
        train = data.index("train")
        widths = {}
        for c in self.params.aux:
            x = data.inputs[c]
            widths[c] = int(x[0].numel())
            norm = Standardize(widths[c]).to(data.device)
            norm.fit(x, train)
            self.aux_norm[c] = norm
        names = (f"--aux {','.join(self.params.aux)}", "the student's embedding")
        self.aux_projector = projector(
            self.params.aux_projector, "", sum(widths.values()), "", self.dim, names=names, flag="--aux-projector"
        ).to(data.device)
        self.fusion = Fusion(2 * self.dim, self.dim).to(data.device)
        labels = data.target[train]
        self.class_counts = torch.bincount(labels, minlength=self.num_classes).tolist()

    def optimizers(self) -> dict[str, OptimizerSpec]:
        params = [*self.disc1.parameters(), *self.disc2.parameters()]
        return {"disc": OptimizerSpec(params, "adam", lr=self.params.disc_lr, betas=(0.5, 0.999))}

    # ---- the representations -----------------------------------------------------------------------------------

    def aux_features(self, inputs) -> Tensor:
        parts = [self.aux_norm[c](inputs[c].flatten(1)) for c in self.params.aux]
        return self.aux_projector(parts[0] if len(parts) == 1 else torch.cat(parts, 1))

    def represent(self, inputs) -> tuple[Tensor, Tensor, Tensor]:
        """(S, A, M) of a batch of inputs. With ``--ablate fixed``, after the warm-up M is a constant of the step
        (F and the projector are no longer trained, and M passes no gradient to the student)."""
        s = self.student.embed(inputs)
        if self.frozen_teacher:
            with torch.no_grad():
                a = self.aux_features(inputs)
                return s, a, self.fusion(torch.cat([s, a], 1))
        a = self.aux_features(inputs)
        return s, a, self.fusion(torch.cat([s, a], 1))

    def teacher_logits(self, inputs) -> Tensor:
        """g(M): the online teacher's prediction (both modalities)."""
        return self.student.head(self.represent(inputs)[2])

    # ---- the epoch -----------------------------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int) -> None:
        self.phase = epoch > (0 if "warmup" in self.off else self.params.adv_start)
        self.frozen_teacher = self.phase and "fixed" in self.off
        self.cos_sums.zero_()

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        c = self.cos_sums
        c1, c2 = c[0] / c[1].clamp(min=1), c[2] / c[3].clamp(min=1)
        metrics["train/lam1"], metrics["train/lam2"] = float(self.lam[0]), float(self.lam[1])
        metrics["train/cos_sample"], metrics["train/cos_class"] = float(c1), float(c2)
        if self.phase and not self.off & {"dynamic", "d2"}:
            lt, lam = lambda_update(self.lt, c1, c2, self.params.beta)
            self.lt.copy_(lt)
            self.lam.copy_(lam)

    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        out = val_metrics(self.student, data, index, precision, batch_size, acer=self.select == "acer")

        def run(rows: Tensor) -> Tensor:
            with autocast(precision, data.device):
                return self.teacher_logits(LazyRows(data.inputs, rows)).float()

        parts = map_rows(run, index, self, chunk=batch_size)
        if parts:
            out["teacher_accuracy"] = float((torch.cat(parts).argmax(1) == data.target[index]).float().mean())
        return out

    # ---- the step ------------------------------------------------------------------------------------------------

    def _mi(self, anchor: Tensor, cand: Tensor, y: Tensor) -> Tensor:
        p = self.params
        if p.mi_loss == "ccl":
            return class_nce(cand, anchor, y, p.tau) + class_nce(anchor, cand, y, p.tau)
        if p.mi_loss == "infonce":
            return info_nce(anchor, cand, p.tau, symmetric=p.mi_symmetric)
        loss = mi_bound_loss(anchor, cand, y, p.tau, p.mi_reduction)
        return loss + mi_bound_loss(cand, anchor, y, p.tau, p.mi_reduction) if p.mi_symmetric else loss

    def d_norm(self, b: int, weight: Tensor):
        mode = self.params.d2_norm
        if mode == "batch":
            return weight.sum().clamp(min=1)
        if mode == "batch-size":
            return float(b)
        if b not in self._d_norm:
            self._d_norm[b] = max(expected_pair_rows(self.class_counts, b), 1e-12)
        return self._d_norm[b]

    @torch.no_grad()
    def _cosines(self, s: Tensor, m: Tensor, y: Tensor) -> None:
        """Accumulate Eq. 14's c1 (cos(M_i, S_i)) and c2 (cos(M_i, S_j), i != j, same class) for this epoch."""
        cos = nn.functional.normalize(m.float(), dim=1) @ nn.functional.normalize(s.float(), dim=1).T
        same = (y.unsqueeze(1) == y.unsqueeze(0)).float()
        same.fill_diagonal_(0)
        upd = torch.stack([cos.diagonal().sum(), cos.new_tensor(len(y)), (cos * same).sum(), same.sum()])
        self.cos_sums.add_(upd)

    def training_step(self, batch: Batch) -> Step:
        y = batch.target
        s, a, m = self.represent(batch.inputs)
        logits_s, logits_m = self.student.head(s), self.student.head(m)
        terms = {"ce_s": task_loss(logits_s, y, self.task), "ce_m": task_loss(logits_m, y, self.task)}
        if "jsd" not in self.off:
            terms["jsd"] = js_divergence(logits_s, logits_m) if self.params.jsd == "js" else sym_kl(logits_s, logits_m)
        self._cosines(s.detach(), m.detach(), y)
        outputs: dict = {}
        if self.phase:
            if "mi-s" not in self.off:
                terms["mi_s"] = self._mi(m, s, y)
            if "mi-a" not in self.off:
                terms["mi_a"] = self._mi(m, a, y)
            if "adv" not in self.off:
                partner, weight = same_class_pairs(y, self.num_classes)
                d_norm = self.d_norm(len(y), weight)
                lam1, lam2 = self.lam[0], self.lam[1]
                d2 = self.disc2(s[partner]) if "d2" not in self.off else torch.zeros_like(weight)
                terms["adv"] = adversarial_loss(self.disc1(s), d2, weight, lam1, lam2, d_norm)
                outputs = {"s": s.detach(), "m": m.detach(), "partner": partner, "weight": weight, "d_norm": d_norm}
        return Step(terms, outputs)

    def own_losses(self, batch: Batch, step: Step) -> dict[str, Tensor | None]:
        o = step.outputs
        if "s" not in o:
            return {}
        s, m, partner, weight = o["s"], o["m"], o["partner"], o["weight"]
        if "d2" in self.off:
            d2_t = d2_s = torch.zeros_like(weight)
        else:
            d2_t, d2_s = self.disc2(m), self.disc2(s[partner])
        loss = discriminator_loss(
            self.disc1(m), self.disc1(s), d2_t, d2_s, weight, self.lam[0], self.lam[1], o["d_norm"]
        )
        return {"disc": loss}
