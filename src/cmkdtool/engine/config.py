"""Training settings shared by every training command. Torch-free, so the CLI can build options from it.

Each field's metadata holds its help text (with units) and, where the command line spells a value
differently from Python, ``cli`` (the type typed on the command line) and ``parse`` (text -> value).
These dataclasses are the single source of the CLI options, their defaults and what the checkpoint records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cmkdtool.errors import CmkdUsageError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ARCHS = ("linear", "mlp", "cnn2d", "cnn1d", "resnet18", "gru")
"""Model architectures (nn/models.py): the encoder trunk each input column goes through."""
CHANNEL_ARCHS = ("cnn2d", "cnn1d", "gru")
"""Architectures whose trunk widths come from ``ModelOptions.channels`` (spec key ``channels``)."""
BOTTLENECK_KINDS = ("dvib", "attention", "vqvae")
KIND_KEYS = {"attention": ("tokens", "d_model", "heads"), "vqvae": ("codebook_size", "groups", "beta")}
"""Spec keys each bottleneck kind adds to the common ones."""


def opt(default, help: str, **extra):
    """A dataclass field carrying its CLI help (and optional ``cli`` type, ``parse`` function, ``flag``)."""
    meta = {"help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def parse_ints(text: str, what: str) -> list[int]:
    text = (text or "").strip()
    if not text:
        return []
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise CmkdUsageError(f"{what} must be comma-separated integers like 256,128; got '{text}'") from e


def parse_batch_size(text: str) -> int | None:
    if str(text).strip().lower() == "full":
        return None
    try:
        v = int(text)
    except ValueError as e:
        raise CmkdUsageError(f"--batch-size must be a positive integer or 'full'; got '{text}'") from e
    if v < 1:
        raise CmkdUsageError(f"--batch-size must be a positive integer or 'full'; got '{text}'")
    return v


@dataclass
class TrainConfig:
    """Optimisation settings (recorded in the checkpoint under ``config``)."""

    epochs: int = opt(100, "Training epochs.")
    batch_size: int | None = opt(
        64, "Batch size in rows, or 'full' for full-batch training.", cli=str, parse=parse_batch_size
    )
    optimizer: str = opt("adamw", "adamw or sgd.")
    lr: float = opt(1e-3, "Base learning rate.")
    momentum: float = opt(0.9, "SGD momentum.")
    nesterov: bool = opt(False, "Nesterov momentum for SGD.")
    weight_decay: float = opt(0.0, "Weight decay (decoupled for adamw).")
    schedule: str = opt("constant", "Learning-rate schedule: constant, step or cosine (after warm-up).")
    milestones: list[int] = opt(
        [],
        "Epochs at which 'step' multiplies the rate by --gamma, e.g. 30,60.",
        cli=str,
        parse=lambda t: parse_ints(t, "--milestones"),
    )
    gamma: float = opt(0.1, "Rate multiplier at each milestone of the 'step' schedule.")
    warmup_epochs: int = opt(0, "Epochs of linear learning-rate warm-up.")
    clip_grad: float | None = opt(None, "Clip the global gradient norm to this value (off by default).")
    select: str = opt("best", "Keep the 'best' epoch on the val split (accuracy, or mAP) or the 'last'.")
    seed: int = field(default=0, metadata={"cli": None})  # set from --seed
    precision: str = field(default="fp32", metadata={"cli": None})  # resolved from --precision
    eval_batch_size: int = field(default=8192, metadata={"cli": None})

    def validate(self) -> None:
        if self.epochs < 1:
            raise CmkdUsageError("--epochs must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise CmkdUsageError("--batch-size must be a positive integer or 'full'")
        if self.optimizer not in OPTIMIZERS:
            raise CmkdUsageError(f"unknown optimizer '{self.optimizer}'; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise CmkdUsageError(f"unknown schedule '{self.schedule}'; choose one of {', '.join(SCHEDULES)}")
        if self.select not in ("best", "last"):
            raise CmkdUsageError(f"--select must be best or last, not '{self.select}'")
        if self.lr <= 0:
            raise CmkdUsageError("--lr must be positive")
        if self.warmup_epochs < 0 or (self.warmup_epochs > 0 and self.warmup_epochs >= self.epochs):
            raise CmkdUsageError("--warmup-epochs must be smaller than --epochs")

    def record(self) -> dict:
        return asdict(self)


@dataclass
class ModelOptions:
    """Architecture of a model that cmkdtool trains (pretrain, or a distillation student)."""

    arch: str = opt(
        "mlp",
        "Encoder of each input: linear (softmax regression), mlp, cnn2d ([C,H,W] samples), cnn1d ([C,T]), "
        "resnet18 ([C,H,W], torchvision, 512 features) or gru ([T,D] sequences).",
    )
    channels: list[int] = opt(
        [32, 64],
        "Trunk widths, comma-separated: output channels of each conv block (3x3 conv, max-pool 2) for cnn2d and "
        "cnn1d, or the hidden size of each stacked GRU layer for gru; the last one is the trunk's feature count. "
        "Ignored by linear, mlp and resnet18.",
        cli=str,
        parse=lambda t: parse_ints(t, "--channels"),
    )
    hidden: list[int] = opt(
        [256],
        "Encoder hidden sizes, comma-separated: the MLP layers of mlp, or the fully connected layers after the "
        "pooled trunk of cnn2d, cnn1d, resnet18 and gru ('' = none there).",
        cli=str,
        parse=lambda t: parse_ints(t, "--hidden"),
    )
    head_hidden: list[int] = opt(
        [],
        "Hidden sizes of the head after fusion ('' = one linear layer).",
        cli=str,
        parse=lambda t: parse_ints(t, "--head-hidden"),
    )
    activation: str = opt("relu", "relu, leaky_relu, gelu or identity (a linear feature extractor).")
    dropout: float = opt(0.0, "Dropout probability after hidden layers.")
    batch_norm: bool = opt(False, "BatchNorm after hidden layers and after each conv of cnn2d/cnn1d.")

    def spec(self, data, role: str, inputs: list[str] | None = None) -> dict:
        """The JSON model spec (see nn/models.py) for ``inputs`` (default: all) and the classes of ``data``."""
        spec = {
            "role": role,
            "arch": self.arch,
            "inputs": [{"name": n, "shape": list(data.shapes[n])} for n in (inputs or list(data.inputs))],
            "hidden": list(self.hidden) if self.arch != "linear" else [],
            "head_hidden": list(self.head_hidden),
            "activation": self.activation,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
            "num_classes": data.num_classes,
            "task": data.task,
            "class_names": data.class_names,
        }
        if self.arch in CHANNEL_ARCHS:
            spec["channels"] = list(self.channels)
        return spec


@dataclass
class BottleneckOptions:
    """A cross-modal information bottleneck (nn/bottleneck.py) that ``fit-bottleneck`` trains."""

    kind: str = opt("dvib", f"Bottleneck model: {', '.join(BOTTLENECK_KINDS)} (CIBA Sec. 4.1; others: Sec. 5.2.2).")
    hidden: list[int] = opt(
        [256],
        "Encoder hidden sizes, comma-separated; the decoder mirrors them.",
        cli=str,
        parse=lambda t: parse_ints(t, "--hidden"),
    )
    activation: str = opt("relu", "relu | leaky_relu | gelu | identity.")
    kl_weight: float = opt(1e-3, "lambda of Eq. 7 / Algorithm 1: weight of KL(p(h'|z') || N(0, I)) (dvib, attention).")
    tokens: int = opt(8, "attention: number of tokens the encoder output is split into.")
    d_model: int = opt(32, "attention: token width.")
    heads: int = opt(4, "attention: attention heads (must divide --d-model).")
    codebook_size: int = opt(512, "vqvae: number of codebook vectors.")
    groups: int = opt(1, "vqvae: quantise H as this many groups of H/groups dimensions (product quantisation).")
    beta: float = opt(0.25, "vqvae: commitment weight (van den Oord et al. 2017).")

    def spec(self, in_dim: int, out_dim: int, dim: int, **records) -> dict:
        if self.kind not in BOTTLENECK_KINDS:
            raise CmkdUsageError(f"unknown --kind '{self.kind}'; choose one of {', '.join(BOTTLENECK_KINDS)}")
        if self.kl_weight < 0:
            raise CmkdUsageError(f"--kl-weight must be non-negative; got {self.kl_weight}")
        if self.beta < 0:
            raise CmkdUsageError(f"--beta must be non-negative; got {self.beta}")
        spec = {
            "role": "bottleneck",
            "kind": self.kind,
            "in_dim": int(in_dim),
            "out_dim": int(out_dim),
            "dim": int(dim),
            "hidden": list(self.hidden),
            "activation": self.activation,
            "kl_weight": self.kl_weight if self.kind != "vqvae" else None,
            **{k: getattr(self, k) for k in KIND_KEYS.get(self.kind, ())},
            **records,
        }
        return spec
