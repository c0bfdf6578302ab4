"""Feature-distillation criteria: a `losses.FEATURE_LOSSES` function with its hyperparameters (and, for
``clip``, a learnable temperature) bound in one module, shared by ``distill feature`` and ``distill ciba``.

The loss functions stay pure; this module only owns the state some of them need. Which options apply to which
loss is a table (``_OPTIONS``), not a branch per name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses import FEATURE_LOSSES
from cmkdtool.nn.gather import gather_rows

CLIP_TEMPERATURE = 0.07  # CLIP's initial temperature (Radford et al. 2021)
CLIP_MAX_SCALE = 100.0  # CLIP clamps the learned logit scale 1/tau at 100

# loss name -> (keyword of the loss function, the option feeding it, the default when the option is unset)
_OPTIONS: dict[str, tuple[str, str, float]] = {
    "ce": ("temperature", "temperature", 1.0),
    "clip": ("logit_scale", "temperature", CLIP_TEMPERATURE),
    "margin": ("margin", "margin", 0.2),
}


BATCH_COUPLED = ("clip", "margin")
"""Feature losses whose value couples the rows of a batch (each row's negatives are the batch's other rows)."""


class FeatureCriterion(nn.Module):
    """``loss(student, teacher)`` for a named feature loss.

    Args:
        name: a key of ``FEATURE_LOSSES`` (mse, l1, cosine, ce, clip, margin).
        temperature: T of ``ce`` (default 1) or the (initial) tau of ``clip`` (default 0.07); ignored otherwise.
        learn_temperature: ``clip`` only: learn log(1/tau) (initialised from ``temperature``, 1/tau clamped at
            100 as in CLIP), else keep tau fixed.
        margin: m of ``margin`` (default 0.2).
    """

    def __init__(
        self,
        name: str,
        *,
        temperature: float | None = None,
        learn_temperature: bool = True,
        margin: float | None = None,
    ) -> None:
        super().__init__()
        if name not in FEATURE_LOSSES:
            raise CmkdUsageError(f"unknown feature loss '{name}'; choose one of {', '.join(FEATURE_LOSSES)}")
        if temperature is not None and not temperature > 0:
            raise CmkdUsageError(f"--temperature must be positive; got {temperature}")
        if margin is not None and margin < 0:
            raise CmkdUsageError(f"--margin must be non-negative; got {margin}")
        self.name = name
        self.fn = FEATURE_LOSSES[name]
        self.kwargs: dict[str, float] = {}  # fixed keyword arguments of the loss function
        if name in _OPTIONS:
            kwarg, option, default = _OPTIONS[name]
            given = {"temperature": temperature, "margin": margin}[option]
            self.kwargs[kwarg] = default if given is None else given
        if name == "clip":  # the temperature becomes state: log(1 / tau), learned or fixed
            init = torch.tensor(math.log(1.0 / self.kwargs.pop("logit_scale")))
            if learn_temperature:
                self.log_scale = nn.Parameter(init)
            else:
                self.register_buffer("log_scale", init)

    @property
    def batch_coupled(self) -> bool:
        """Whether the loss compares every row of a batch with every other (clip, margin: in-batch negatives; under
        DDP the rows of every process are gathered first, ``nn.gather``)."""
        return self.name in BATCH_COUPLED

    def scale(self) -> Tensor:
        """1 / tau of ``clip`` (clamped at 100)."""
        return self.log_scale.clamp(max=math.log(CLIP_MAX_SCALE)).exp()

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.batch_coupled:  # under DDP: the negatives of the whole global batch, as in one process
            student, teacher = gather_rows(student), gather_rows(teacher)
        if self.name == "clip":
            return self.fn(student, teacher, logit_scale=self.scale())
        return self.fn(student, teacher, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join([self.name, *(f"{k}={v}" for k, v in self.kwargs.items())])
