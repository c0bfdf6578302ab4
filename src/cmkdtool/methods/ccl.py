"""``distill ccl``: cross-modal contrastive learning with a composition teacher (Chen et al., CVPR 2021), as the
authors' code runs it (yanbeic/CCL@b590483 ``training.py``, ``loss/nce_loss.py``, ``loss/jsd_loss.py``,
``models/composition_classifier.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.method import Batch
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses.contrastive import class_nce, js_divergence, sym_kl
from cmkdtool.losses.task import task_loss
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.base import projector, projector_option
from cmkdtool.methods.registry import register
from cmkdtool.nn.contrast import Composition
from cmkdtool.options import opt


@dataclass
class CCLParams(RelationalOptions):
    temperature: float = opt(
        0.5,
        "Temperature T (> 0) of the class-aware NCE (CCL scripts: 0.5 with an audio teacher, 0.1 with an image one).",
        gt=0,
    )
    nce_weight: float = opt(1.0, "Weight (>= 0) of each NCE pair (CCL training.py: 1).", ge=0)
    jsd_weight: float = opt(1.0, "Weight (>= 0) of the prediction-consistency term (CCL training.py: 1).", ge=0)
    jsd: str = opt(
        "sym-kl",
        "Consistency of the student's and the composition's predictions: sym-kl (CCL's JSDLoss(weight=0.5) = "
        "0.5 (KL(p||q) + KL(q||p)), what CCL runs) or js (a true Jensen-Shannon divergence).",
        choices=("sym-kl", "js"),
    )
    projector: str = projector_option(": the NCE compares them")


@register("ccl", CCLParams, "Cross-modal contrastive learning (CCL): class-aware NCE with a composition teacher.")
class CCL(RelationalDistiller):
    """The student ``v`` (student layer, projected to the teacher width), the frozen teacher ``a`` (teacher layer)
    and a trained composition ``m = a + Linear([n(a), n(v)])`` with its own classifier.

    Student objective (CCL ``total_v``): ``ce + nce_vm + nce_va + jsd`` with ``nce_xy = class_nce(x, y) +
    class_nce(y, x)`` and ``jsd`` between the student's and the composition's predictions. Composition objective
    (``total_a``): ``ce_m + nce_vm + nce_ma + jsd``. As CCL's two backward passes, the student gets the gradient of
    its objective only and the composition that of both: the composition-objective terms (suffix ``_m``) are
    computed again on the detached student feature and logits. The composition serves training only.
    """

    term = "nce_vm"
    weight = "nce_weight"
    single_process_reason = "its class-aware NCE terms take their negatives from one process's rows (not gathered yet)"

    def __init__(self, student, teacher, params: CCLParams, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        s_dim, t_dim = student.layer_width(params.student_layer), teacher.layer_width(params.teacher_layer)
        why = "CCL's NCE compares the student and teacher features: "
        self.projector = projector(params.projector, params.student_layer, s_dim, params.teacher_layer, t_dim, why)
        self.composition = Composition(t_dim, t_dim, student.layer_width("logits"))
        n, j = params.nce_weight, params.jsd_weight
        self.loss_weights.update(nce_va=n, nce_ma=n, nce_vm_m=n, jsd=j, jsd_m=j, ce_m=params.task_weight)

    def setup(self, data: TensorData) -> None:
        if data.task != "multiclass":
            raise CmkdUsageError(
                f"distill ccl contrasts same-class and other-class rows: it needs a single-label (multiclass) "
                f"table, not {data.task}; for multi-label data use distill nce (instance positives) or crd"
            )
        super().setup(data)

    def _nce(self, x: Tensor, y: Tensor, labels: Tensor) -> Tensor:
        t = self.params.temperature
        return class_nce(x, y, labels, t) + class_nce(y, x, labels, t)

    def _consistency(self, p: Tensor, q: Tensor) -> Tensor:
        return sym_kl(p, q, weight=0.5) if self.params.jsd == "sym-kl" else js_divergence(p, q)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        p, y = self.params, batch.target
        logits, feats = self.student.forward_layers(batch.inputs, [p.student_layer])
        teacher = self.teacher_outputs(batch)
        v, a = self.projector(feats[p.student_layer]), teacher[p.teacher_layer]
        m, logits_m = self.composition(a, v)
        terms = {"nce_vm": self._nce(v, m, y), "nce_va": self._nce(v, a, y), "jsd": self._consistency(logits, logits_m)}
        v_, logits_ = v.detach(), logits.detach()  # the composition objective reaches the student not at all
        m_, logits_m_ = self.composition(a, v_)
        terms.update(
            ce_m=task_loss(logits_m_, y, self.task),
            nce_vm_m=self._nce(v_, m_, y),
            nce_ma=self._nce(m_, a, y),
            jsd_m=self._consistency(logits_, logits_m_),
        )
        terms.update(self.label_terms(logits, teacher, batch))
        return terms
