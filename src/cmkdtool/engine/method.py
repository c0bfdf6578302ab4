"""What the engine trains: a ``Method`` (modules, loss terms, hooks) and the ``Batch`` it is handed.

The seams a method may use, in the order the trainer calls them each step (see ``engine/trainer.py``):

1. ``training_step(batch)`` returns the loss as named terms (``dict``), or a ``Step`` with the terms and any
   outputs the method wants back later (representations, logits). The trainer weights the terms with
   ``loss_weights`` and sums them.
2. ``backward(loss, terms, scale)``: the default is ``scale(loss).backward()``. A method that needs the live
   graph (GradNorm's per-term gradient norms) takes it over; ``scale`` applies the fp16 loss scale.
3. The trainer clips and steps the main optimizer (every trainable parameter not claimed by an own optimizer)
   and the schedule.
4. ``own_losses(batch, step)``: one loss per *own optimizer* that the method declared in ``optimizers()``
   (discriminators, loss weights), in declaration order; the trainer zeroes that optimizer, back-propagates the
   loss (scaled under fp16) and steps it. ``None`` steps it with the gradients the method already set (e.g. in
   ``backward``). Own optimizers are created, scaled, scheduled (``OptimizerSpec.schedule``), and saved and
   restored by ``--resume`` by the trainer.
5. ``after_step(batch, step, index)`` with the step's live outputs and terms.

Per epoch: ``on_epoch_start(epoch)``, then after validation ``on_epoch_end(epoch, metrics)`` with the epoch's
history row. ``validate`` supplies the validation metrics (the engine computes none itself), ``selection``
names the one that picks the best epoch. Buffers of non-frozen modules (memory banks, running statistics,
dynamic weights) are method state: saved in the training state and restored by ``--resume``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.nn.inference import LazyRows

__all__ = ["Batch", "LazyRows", "Method", "OptimizerSpec", "Step"]


@dataclass
class Batch:
    """One training batch: inputs and targets sliced on the device, and the row indices they came from.

    ``share`` is this process's part of the global batch times the number of processes (``rows x W / global
    rows``): the trainer multiplies the loss by it, so that DDP's gradient average over processes equals the
    gradient of the global batch's mean loss when the batch does not split evenly (1 in one process)."""

    inputs: Mapping[str, Tensor]
    target: Tensor | None
    index: Tensor
    share: float = 1.0


@dataclass
class Step:
    """What ``training_step`` may return instead of a plain dict of terms: the terms and named outputs."""

    terms: dict[str, Tensor]
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerSpec:
    """An optimizer the method owns; the trainer builds it over ``params``.

    ``optimizer``: adam, adamw or sgd; ``lr`` (None: the main --lr); ``schedule``: follow the main learning-rate
    schedule (warm-up included) instead of a constant rate.
    """

    params: list[nn.Parameter]
    optimizer: str = "adam"
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: bool = False


class Method(nn.Module):
    """Base class of everything the engine trains.

    Subclasses set ``self.student`` (the deployable model) and implement ``training_step`` and ``validate``.
    ``loss_weights`` maps term names to weights (a term not listed has weight 1). Frozen modules (teachers) are
    listed by ``frozen_modules`` and excluded from training and from the saved training state.
    """

    name = "method"
    single_process_reason: str | None = None
    """Why the method cannot train under several processes (torchrun), or None when it can: a loss that couples
    the rows of a batch (negatives, pairs, batch statistics) would see 1/W of each batch per process. The
    trainer refuses such a method with this reason."""

    def __init__(self) -> None:
        super().__init__()
        self.loss_weights: dict[str, float] = {}
        self.select = "best"  # the trainer's --select: 'acer' asks validate for the val ACER (see TaskMethod)

    # ---- parameters and optimizers ---------------------------------------------------------------------

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """The method's own optimizers by name (identifiers other than ``main``; stepped after the main one, in
        this order; an optimizer that no gradient reached in a step is not stepped). Default: none."""
        return {}

    def own_optimizer_parameters(self) -> list[nn.Parameter]:
        """Parameters that an own optimizer updates (excluded from the main optimizer)."""
        return [p for spec in self.optimizers().values() for p in spec.params]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the main optimizer updates: every one with requires_grad, minus the own optimizers'."""
        own = {id(p) for p in self.own_optimizer_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in own]

    def param_groups(self) -> list[dict]:
        """Main optimizer parameter groups. Default: one group of ``trainable_parameters``. A method may return
        several, each a dict with ``params`` and optionally ``lr_scale`` (multiplies --lr) and
        ``weight_decay``; all follow the schedule."""
        return [{"params": self.trainable_parameters()}]

    # ---- the step --------------------------------------------------------------------------------------

    def training_step(self, batch: Batch) -> dict[str, Tensor] | Step:
        raise NotImplementedError

    def backward(self, loss: Tensor, terms: dict[str, Tensor], scale: Callable[[Tensor], Tensor]) -> None:
        """Back-propagate the weighted total ``loss`` (default). ``terms`` are the live, unweighted terms.

        A method that sets gradients itself (of parameters an own optimizer steps) sets ``scale(grad)``: the engine
        unscales every optimizer before stepping it (under fp16; in fp32 ``scale`` is the identity)."""
        scale(loss).backward()

    def own_losses(self, batch: Batch, step: Step) -> dict[str, Tensor | None]:
        """One loss per own optimizer (by name), computed after the main step; None: step as the grads are."""
        return {}

    def after_step(self, batch: Batch, step: Step, index: int) -> None:
        """Called after every step (main and own optimizers) with the step's live terms and outputs."""

    # ---- the epoch -------------------------------------------------------------------------------------

    def configure(self, cfg) -> None:
        """Called once by the trainer with its ``TrainConfig`` before ``setup``: a method may refuse settings it
        cannot train with (a usage error) or read them. Default: keep ``cfg.select`` ('acer' asks ``validate``
        for the val ACER)."""
        self.select = cfg.select

    def setup(self, data: TensorData) -> None:
        """Called once before training (e.g. to cache frozen-teacher outputs on the device)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of each epoch (warm-up)."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """Called after each epoch's validation with its history row (dynamic weights)."""

    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        """Validation metrics on rows ``index``; must include ``loss`` (tie-breaker) and the ``selection`` key.
        Extra keys (an online teacher's accuracy) are logged as ``val/<key>``."""
        raise NotImplementedError(f"{type(self).__name__} supplies no validation metrics")

    def selection(self, task: str | None) -> tuple[str, bool]:
        """The validation metric that picks the best epoch, and whether higher is better."""
        return "loss", False

    # ---- frozen modules --------------------------------------------------------------------------------

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def train(self, mode: bool = True):  # frozen submodules stay in eval mode
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def record(self) -> dict:
        """Hyperparameters that identify this run (part of the resume fingerprint)."""
        return {}
