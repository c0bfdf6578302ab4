"""Fitting a cross-modal information bottleneck (CIBA Algorithm 1) as a method of the shared engine.

The bottleneck is the trained module: loss ``||z_hat - z||^2 + lambda * KL`` (dvib, attention) or
``||z_hat - z||^2 + codebook + commit`` (vqvae) from teacher features z' (input ``teacher``) to student features z
(input ``student``), both of models trained without distillation; the best epoch has the lowest validation loss.
``pipelines.bottleneck`` runs it (``fit_bottleneck``, ``sweep``, ``choose_dim``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.method import Batch, Method
from cmkdtool.errors import CmkdError
from cmkdtool.nn.bottleneck import VQIB, Bottleneck
from cmkdtool.nn.inference import map_rows


class BottleneckFit(Method):
    """The engine's view of Algorithm 1: the bottleneck is the trained ("student") module."""

    name = "fit-bottleneck"

    def __init__(self, bottleneck: Bottleneck, kl_weight: float, seed: int = 0) -> None:
        super().__init__()
        self.student = bottleneck
        self.loss_weights = {"kl": kl_weight}
        self.seed = seed

    def setup(self, data: TensorData) -> None:
        if isinstance(self.student, VQIB):
            train = data.index("train")
            self.student.init_codebook(data.inputs["teacher"][train], torch.Generator().manual_seed(self.seed))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        return self.student.losses(batch.inputs["teacher"], batch.inputs["student"], sample=True)

    @torch.no_grad()
    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        return evaluate(self.student, data, index, self.loss_weights, batch_size)

    def selection(self, task: str | None) -> tuple[str, bool]:
        return "loss", False

    def record(self) -> dict:
        return {"spec": {k: v for k, v in self.student.spec.items() if k not in ("teacher", "student")}}


@torch.no_grad()
def evaluate(
    bottleneck: Bottleneck, data: TensorData, index: Tensor, weights: dict[str, float], batch_size: int = 8192
) -> dict[str, float]:
    """Deterministic loss terms (h' = its mean or code) on rows ``index``, their weighted sum ``loss``, and
    ``r2 = 1 - recon / sum of the variances of z`` (the share of the student feature's variance explained)."""

    def run(idx: Tensor) -> dict[str, float]:
        terms = bottleneck.losses(data.inputs["teacher"][idx], data.inputs["student"][idx], sample=False)
        return {k: float(v) * len(idx) for k, v in terms.items()}

    sums: dict[str, float] = {}
    for part in map_rows(run, index, bottleneck, chunk=batch_size):
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + v
    n = max(len(index), 1)
    out = {k: v / n for k, v in sums.items()}
    out["loss"] = sum(weights.get(k, 1.0) * v for k, v in out.items())
    z = data.inputs["student"][index].double()
    total = float(z.var(0, unbiased=False).sum()) if len(index) else 0.0
    out["r2"] = 1.0 - out["recon"] / total if total > 0 else float("nan")
    return out


def feature_data(teacher: Tensor, student: Tensor, split: np.ndarray, ids: np.ndarray, source: str) -> TensorData:
    """A TensorData holding the two feature matrices as inputs ``teacher`` and ``student`` (no labels)."""
    if len(teacher) != len(student):
        raise CmkdError(f"{len(teacher)} teacher feature rows but {len(student)} student feature rows")
    for name, x in (("teacher", teacher), ("student", student)):
        if not torch.isfinite(x).all():
            raise CmkdError(f"{source}: the {name} features contain NaN or inf; check the checkpoint and the table")
    return TensorData(
        ids=ids,
        inputs={"teacher": teacher.float(), "student": student.float()},
        shapes={"teacher": (teacher.shape[1],), "student": (student.shape[1],)},
        target=None,
        labels=None,
        split=split,
        task=None,
        num_classes=None,
        class_names=None,
        source=source,
    )


__all__ = ["BottleneckFit", "evaluate", "feature_data"]
