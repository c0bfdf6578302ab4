"""Options that make model and bottleneck specs (the JSON a checkpoint rebuilds its module from).

Torch-free (nn/models.py and nn/bottleneck.py build the modules), so the CLI can list these options without
importing torch. These dataclasses are the single source of the options, their defaults and allowed values,
and what the checkpoint records.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmkdtool.options import check, ints_field, opt

ARCHS = ("linear", "mlp", "cnn2d", "cnn1d", "resnet18", "gru")
"""Model architectures (nn/models.py): the encoder trunk each input column goes through."""
CHANNEL_ARCHS = ("cnn2d", "cnn1d", "gru")
"""Architectures whose trunk widths come from ``ModelOptions.channels`` (spec key ``channels``)."""
ACTIVATION_NAMES = ("relu", "leaky_relu", "gelu", "identity")
BOTTLENECK_KINDS = ("dvib", "attention", "vqvae")
KIND_KEYS = {"attention": ("tokens", "d_model", "heads"), "vqvae": ("codebook_size", "groups", "beta")}
"""Spec keys each bottleneck kind adds to the common ones."""


@dataclass
class ModelOptions:
    """Architecture of a model that cmkdtool trains (pretrain, or a distillation student)."""

    arch: str = opt(
        "mlp",
        "Encoder of each input: linear (softmax regression), mlp, cnn2d ([C,H,W] samples), cnn1d ([C,T]), "
        "resnet18 ([C,H,W], torchvision, 512 features) or gru ([T,D] sequences).",
        choices=ARCHS,
    )
    channels: list[int] = ints_field(
        [32, 64],
        "Trunk widths, comma-separated: output channels of each conv block (3x3 conv, max-pool 2) for cnn2d and "
        "cnn1d, or the hidden size of each stacked GRU layer for gru; the last one is the trunk's feature count. "
        "Ignored by linear, mlp and resnet18.",
        "--channels",
        item_ge=1,
    )
    hidden: list[int] = ints_field(
        [256],
        "Encoder hidden sizes, comma-separated: the MLP layers of mlp, or the fully connected layers after the "
        "pooled trunk of cnn2d, cnn1d, resnet18 and gru ('' = none there).",
        "--hidden",
        item_ge=1,
    )
    head_hidden: list[int] = ints_field(
        [], "Hidden sizes of the head after fusion ('' = one linear layer).", "--head-hidden", item_ge=1
    )
    activation: str = opt(
        "relu", "relu, leaky_relu, gelu or identity (a linear feature extractor).", choices=ACTIVATION_NAMES
    )
    dropout: float = opt(0.0, "Dropout probability after hidden layers, in [0, 1).", ge=0, lt=1)
    batch_norm: bool = opt(False, "BatchNorm after hidden layers and after each conv of cnn2d/cnn1d.")

    def spec(self, data, role: str, inputs: list[str] | None = None) -> dict:
        """The JSON model spec (see nn/models.py) for ``inputs`` (default: all) and the classes of ``data``."""
        check(self)
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

    kind: str = opt(
        "dvib", "Bottleneck model (CIBA Sec. 4.1; attention and vqvae: Sec. 5.2.2).", choices=BOTTLENECK_KINDS
    )
    hidden: list[int] = ints_field(
        [256], "Encoder hidden sizes, comma-separated; the decoder mirrors them.", "--hidden", item_ge=1
    )
    activation: str = opt("relu", "Activation of the hidden layers.", choices=ACTIVATION_NAMES)
    kl_weight: float = opt(
        1e-3, "lambda of Eq. 7 / Algorithm 1: weight of KL(p(h'|z') || N(0, I)) (dvib, attention).", ge=0
    )
    tokens: int = opt(8, "attention: number of tokens the encoder output is split into.", ge=1)
    d_model: int = opt(32, "attention: token width.", ge=1)
    heads: int = opt(4, "attention: attention heads (must divide --d-model).", ge=1)
    codebook_size: int = opt(512, "vqvae: number of codebook vectors.", ge=1)
    groups: int = opt(1, "vqvae: quantise H as this many groups of H/groups dimensions (product quantisation).", ge=1)
    beta: float = opt(0.25, "vqvae: commitment weight (van den Oord et al. 2017).", ge=0)

    def spec(self, in_dim: int, out_dim: int, dim: int, **records) -> dict:
        check(self)
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
