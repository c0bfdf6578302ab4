"""Base classes of the methods: a classifier trained on its labels, and a student taught by a frozen teacher."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.inference import predict
from cmkdtool.engine.method import Batch, Method
from cmkdtool.losses.task import task_loss
from cmkdtool.nn.inference import LazyRows, eval_mode, map_rows
from cmkdtool.options import check, opt

PROJECTOR_MODES = ("auto", "linear", "none")


def projector_option(reason: str = "", default: str = "auto"):
    """The ``--projector`` field of a method's dataclass (``reason``: why widths must agree, e.g. ": the MSE needs
    equal widths")."""
    return opt(
        default,
        f"auto (a learned linear map student->teacher width when widths differ{reason}), linear, or none.",
        choices=PROJECTOR_MODES,
    )


def projector(
    mode: str, student_layer: str, s_dim: int, teacher_layer: str, t_dim: int, why: str = "",
    *, names: tuple[str, str] | None = None, flag: str = "--projector",
) -> nn.Module:  # fmt: skip
    """The training-only map from a student layer to a teacher layer's width (``--projector``): a learned linear
    map for ``linear``, or for ``auto`` when the widths differ; the identity otherwise (``none`` with other widths is
    a usage error naming ``names``, default "student layer ..." / "teacher layer ...", and ``flag``)."""
    from cmkdtool.errors import CmkdUsageError

    if mode == "linear" or (mode == "auto" and s_dim != t_dim):
        return nn.Linear(s_dim, t_dim)
    if s_dim != t_dim:
        s_name, t_name = names or (f"student layer {student_layer}", f"teacher layer {teacher_layer}")
        raise CmkdUsageError(f"{s_name} has width {s_dim} but {t_name} has {t_dim}; {why}use {flag} auto")
    return nn.Identity()


def selection_key(task: str | None) -> str:
    return "map" if task == "multilabel" else "accuracy"


def val_metrics(
    model: nn.Module, data: TensorData, index: Tensor, precision: str, batch_size: int, acer: bool = False
) -> dict:
    """Task loss and the selection metric (accuracy, or mAP for multi-label; ``acer``: also the ACER) of ``model``
    on rows ``index``."""
    logits, _ = predict(model, data, index, precision=precision, batch_size=batch_size)
    return logit_metrics(logits, data.target[index], data.task, acer)


def logit_metrics(logits: Tensor, target: Tensor, task: str | None, acer: bool = False) -> dict:
    """Task loss and the selection metric (accuracy, or mAP for multi-label) of ``logits`` against ``target``;
    with ``acer`` also the ISO/IEC 30107-3 ACER of a two-class presentation-attack task (bona fide = class 1,
    threshold 0.5; ``analysis.pad``)."""
    out = {"loss": task_loss(logits, target, task)}
    if task == "multilabel":
        from cmkdtool.analysis.metrics import multilabel_metrics

        out["map"] = multilabel_metrics(target.cpu().numpy(), logits.cpu().numpy())["map"]
    else:
        out["accuracy"] = (logits.argmax(1) == target).float().mean()
    if acer:
        from cmkdtool.analysis.pad import bona_fide_scores, pad_metrics

        out["acer"] = pad_metrics(bona_fide_scores(logits.float().cpu().numpy()), target.cpu().numpy())["acer"]
    return {k: float(v) for k, v in out.items()}


class TaskMethod(Method):
    """A method whose deployable model (``student``) is a classifier: validated by its task loss and accuracy
    (mAP for multi-label), the best epoch picked by accuracy (mAP)."""

    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        return val_metrics(self.student, data, index, precision, batch_size, acer=self.select == "acer")

    def selection(self, task: str | None) -> tuple[str, bool]:
        return ("acer", False) if self.select == "acer" else (selection_key(task), True)


@dataclass
class DistillContext:
    """What the distill pipeline hands a method's ``from_context``: the frozen teachers by name (``teacher``
    is ``--teacher``; other names are the method's checkpoint options), the task, the extra input columns the
    method reads (its column options; not student inputs) and whether to cache frozen outputs."""

    teachers: dict[str, nn.Module] = field(default_factory=dict)
    task: str | None = "multiclass"
    cache_teacher: bool = True
    columns: dict[str, Any] = field(default_factory=dict)


class Distiller(TaskMethod):
    """A student taught by a frozen teacher.

    The teacher is kept in eval mode with ``requires_grad`` off and never updated. Because a frozen teacher
    in eval mode is deterministic, the outputs a method asks for (``teacher_layers()``: logits and/or named
    features) are computed once for every row and kept on the device; ``teacher_outputs(batch)`` slices
    them by the batch's row indices (``cache_teacher=False`` recomputes them every step instead).
    Subclasses implement ``training_step`` and may add trainable modules (projectors) as attributes.

    ``needs_teacher`` (class attribute): whether ``--teacher`` is required; a method with no frozen teacher (an
    online teacher trained jointly) sets it False and gets ``teacher`` None. A method with several frozen teachers
    or extra columns overrides ``from_context``.
    """

    needs_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params, task: str, cache_teacher: bool = True):
        super().__init__()
        if dataclasses.is_dataclass(params):
            check(params)  # the ranges and choices its fields declare, also for library callers
        self.student = student
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)
        self.params = params
        self.task = task
        self.cache_teacher = cache_teacher
        self._cache: dict[str, Tensor] | None = None
        self._rows: Tensor | None = None  # global row -> position in the cache (-1: not cached)

    @classmethod
    def from_context(cls, student: nn.Module, params, ctx: DistillContext) -> Distiller:
        """Build the method from what the distill pipeline opened (default: the one ``--teacher``)."""
        return cls(student, ctx.teachers.get("teacher"), params, ctx.task, cache_teacher=ctx.cache_teacher)

    def frozen_modules(self) -> list[nn.Module]:
        return [] if self.teacher is None else [self.teacher]

    def teacher_layers(self) -> list[str]:
        return ["logits"]

    def record(self) -> dict:
        return asdict(self.params)

    @torch.no_grad()
    def _teacher_forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.teacher.eval()
        _, feats = self.teacher.forward_layers(inputs, self.teacher_layers())
        return {k: v.float() for k, v in feats.items()}

    def setup(self, data: TensorData) -> None:
        """Cache the frozen teacher's outputs for the train rows (the only rows a step reads), indexed by global
        row through ``_rows`` (-1: not cached). In memory the teacher runs over contiguous chunks of every row, as
        it always has (the same values to the bit), and only the train rows are kept; a streamed table
        (``data.stream_rows``) gets one sequential pass over the row groups that hold train rows."""
        if not self.cache_teacher or self.teacher is None:
            return
        train = data.index("train")
        pos = torch.full((len(data),), -1, dtype=torch.long, device=data.device)
        pos[train] = torch.arange(len(train), device=data.device)
        stream = getattr(data, "stream_rows", None)
        if stream is not None:
            with eval_mode(self.teacher):
                parts = [(rows, self._teacher_forward(cols)) for rows, cols in stream(train)]
        else:
            is_train = pos >= 0

            def run(rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
                keep = is_train[rows]
                out = self._teacher_forward(LazyRows(data.inputs, rows))
                rows_kept = torch.arange(rows.start, rows.stop, device=data.device)[keep]
                return rows_kept, {k: v[keep] for k, v in out.items()}

            parts = map_rows(run, len(data))
        self._rows = pos
        self._cache = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]} if parts else {}
        if parts:  # rows arrive in file order, which is the order of ``train`` (sorted)
            order = torch.cat([p[0] for p in parts])
            if not torch.equal(order, train):
                at = torch.empty_like(order)
                at[pos[order]] = torch.arange(len(order), device=order.device)
                self._cache = {k: v[at] for k, v in self._cache.items()}

    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        if self._cache is not None:
            rows = self._rows[batch.index]
            return {k: v[rows] for k, v in self._cache.items()}
        return self._teacher_forward(batch.inputs)


__all__ = ["DistillContext", "Distiller", "TaskMethod", "selection_key", "val_metrics"]
