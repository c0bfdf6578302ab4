"""Supervised training of one model on its labels: what ``cmkdtool pretrain`` trains."""

from __future__ import annotations

from torch import Tensor, nn

from cmkdtool.engine.method import Batch
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import TaskMethod


class Supervised(TaskMethod):
    """Cross-entropy (multi-class) or binary cross-entropy (multi-label) on the model's logits."""

    name = "supervised"

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.student = model
        self.task = task

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        term = "bce" if self.task == "multilabel" else "ce"
        return {term: task_loss(self.student(batch.inputs), batch.target, self.task)}
