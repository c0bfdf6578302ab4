"""Base class of distillation methods: a trainable student, a frozen teacher, named loss terms."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.loop import Batch, Method


class Distiller(Method):
    """A student taught by a frozen teacher.

    The teacher is kept in eval mode with ``requires_grad`` off and never updated. Because a frozen teacher
    in eval mode is deterministic, the outputs a method asks for (``teacher_layers()``: logits and/or named
    features) are computed once for every row and kept on the device; ``teacher_outputs(batch)`` slices
    them by the batch's row indices (``cache_teacher=False`` recomputes them every step instead).
    Subclasses implement ``training_step`` and may add trainable modules (projectors) as attributes.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, params, task: str, cache_teacher: bool = True):
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.params = params
        self.task = task
        self.cache_teacher = cache_teacher
        self._cache: dict[str, Tensor] | None = None

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

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
        if not self.cache_teacher:
            return
        chunks: dict[str, list[Tensor]] = {}
        n = len(data)
        for start in range(0, n, 8192):
            x = {k: v[start : start + 8192] for k, v in data.inputs.items()}
            for k, v in self._teacher_forward(x).items():
                chunks.setdefault(k, []).append(v)
        self._cache = {k: torch.cat(v) for k, v in chunks.items()}

    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        if self._cache is not None:
            return {k: v[batch.index] for k, v in self._cache.items()}
        return self._teacher_forward(batch.inputs)
