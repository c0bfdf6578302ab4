"""Optimisation settings shared by every training command. Torch-free, so the CLI can build options from it.

``TrainConfig`` is the single source of the optimisation options (``--epochs``, ``--lr``, ...), their defaults,
allowed values and ranges (``cmkdtool.options.opt`` metadata), and of what the checkpoint records under
``config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cmkdtool.errors import CmkdUsageError
from cmkdtool.options import check, ints_field, opt, parse_batch_size

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
SELECTS = ("best", "last", "acer")
PLACEMENTS = ("auto", "device", "host", "stream")
COMPILES = ("off", "default", "reduce-overhead")


@dataclass
class TrainConfig:
    """Optimisation settings (recorded in the checkpoint under ``config``)."""

    epochs: int = opt(100, "Training epochs.", ge=1)
    batch_size: int | None = opt(
        64,
        "Batch size in rows, or 'full' for full-batch training.",
        cli=str,
        parse=parse_batch_size,
        show=lambda v: "full" if v is None else str(v),
    )
    optimizer: str = opt("adamw", "Optimizer (adamw: decoupled weight decay).", choices=OPTIMIZERS)
    lr: float = opt(1e-3, "Base learning rate (> 0).", gt=0)
    momentum: float = opt(0.9, "SGD momentum, in [0, 1).", ge=0, lt=1)
    nesterov: bool = opt(False, "Nesterov momentum for SGD.")
    weight_decay: float = opt(0.0, "Weight decay (>= 0; decoupled for adamw).", ge=0)
    schedule: str = opt(
        "constant",
        "Learning-rate schedule after warm-up: constant, step (x --gamma at --milestones), cosine (to 0), or "
        "onecycle (cosine rise from lr/25 over 30% of the steps, or over --warmup-epochs, then cosine fall to "
        "lr/25e4; torch's OneCycleLR defaults).",
        choices=SCHEDULES,
    )
    milestones: list[int] = ints_field(
        [], "Epochs at which 'step' multiplies the rate by --gamma, e.g. 30,60.", "--milestones", item_ge=1
    )
    gamma: float = opt(0.1, "Rate multiplier at each milestone of the 'step' schedule (> 0).", gt=0)
    warmup_epochs: int = opt(0, "Epochs of linear learning-rate warm-up (onecycle: of its rise).", ge=0)
    clip_grad: float | None = opt(None, "Clip the global gradient norm to this value (> 0; off by default).", gt=0)
    select: str = opt(
        "best",
        "Keep the 'best' epoch on the val split (accuracy, or mAP), the 'last', or with 'acer' the lowest val ACER "
        "(two-class presentation-attack tasks: bona fide = class 1, threshold 0.5; ISO/IEC 30107-3).",
        choices=SELECTS,
    )
    data_placement: str = opt(
        "auto",
        "Where the feature columns live while training: 'device' (all rows on the training device), 'host' (host "
        "memory or a memory-mapped Arrow file, batches copied to the device; the same batches as 'device'), "
        "'stream' (row groups read from disk each epoch through a block shuffle of --shuffle-buffer row groups; "
        "an approximate shuffle), or 'auto' (the first that fits the memory budget: device, host, stream; "
        "CMKDTOOL_MEMORY_BUDGET, e.g. 256MB, overrides the measured budgets).",
        choices=PLACEMENTS,
    )
    shuffle_buffer: int = opt(8, "Row groups held and shuffled together by the 'stream' placement (>= 1).", ge=1)
    compile: str = opt(
        "off",
        "torch.compile the training step's modules: off, default, or reduce-overhead (CUDA graphs; CUDA only). "
        "Pays a compile time of seconds to minutes once per run.",
        choices=COMPILES,
    )
    seed: int = field(default=0, metadata={"cli": None, "ge": 0})  # set from --seed
    precision: str = field(default="fp32", metadata={"cli": None, "choices": PRECISIONS[1:]})  # from --precision
    eval_batch_size: int = field(default=8192, metadata={"cli": None, "ge": 1})

    def validate(self) -> None:
        check(self)
        if self.batch_size is not None and self.batch_size < 1:
            raise CmkdUsageError("--batch-size must be a positive integer or 'full'")
        if self.warmup_epochs >= self.epochs:
            raise CmkdUsageError(
                f"--warmup-epochs ({self.warmup_epochs}) must be smaller than --epochs ({self.epochs})"
            )

    def record(self) -> dict:
        return asdict(self)
