"""MFH Algorithm 1 step 1 as a method: two unimodal networks aligned by Eq. 28 (``rank-salience``'s training)."""

from __future__ import annotations

from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.inference import predict
from cmkdtool.engine.method import Batch
from cmkdtool.losses.alignment import logit_distance
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import TaskMethod, logit_metrics


class Pair(nn.Module):
    """Both networks as one module (one state_dict); its forward is network a's, for val selection."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, inputs):
        return self.a(inputs)


class JointAlignment(TaskMethod):
    """MFH Eq. 28: Dist(f1(X^a), f2(X^b)) + CE(Y, f1(X^a)) + CE(Y, f2(X^b)), both networks trained."""

    name = "joint-alignment"

    def __init__(self, net_a: nn.Module, net_b: nn.Module, distance: str, task: str) -> None:
        super().__init__()
        self.student = Pair(net_a, net_b)
        self.distance = distance
        self.task = task

    def record(self) -> dict:
        return {"distance": self.distance}

    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        """Network a's task loss and accuracy (they pick the epoch), network b's accuracy (``accuracy_b``) and the
        Eq. 28 distance between the two networks' outputs (``dist``): how well the alignment went."""
        la, _ = predict(self.student.a, data, index, precision=precision, batch_size=batch_size)
        lb, _ = predict(self.student.b, data, index, precision=precision, batch_size=batch_size)
        out = logit_metrics(la, data.target[index], data.task, acer=self.select == "acer")
        if data.task != "multilabel":
            out["accuracy_b"] = float((lb.argmax(1) == data.target[index]).float().mean())
        out["dist"] = float(logit_distance(la, lb, self.distance))
        return out

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        la, lb = self.student.a(batch.inputs), self.student.b(batch.inputs)
        return {
            "dist": logit_distance(la, lb, self.distance),
            "ce_a": task_loss(la, batch.target, self.task),
            "ce_b": task_loss(lb, batch.target, self.task),
        }
