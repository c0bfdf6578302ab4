"""A composite deployable model (OS-MD, Wei, Luo, Luo 2023): one input column read by two encoders, the pretrained
*ordinary* encoder phi_o and the *task-shared* (hallucination) encoder phi_s, joined by OS-MD's cross translation
network (two shared transform blocks and a fusion) and a classification head.

Spec (``kind: "composite"``; see docs/formats.md)::

    kind          "composite"
    inputs        [{"name": column, "shape": [..]}]     exactly one column
    ordinary      encoder spec of phi_o: arch, channels, hidden, activation, dropout, batch_norm
    shared        encoder spec of phi_s (same keys)
    ctn           {"fuse": "average" | "concat4" | "concat", "bn": bool, "activation": ...}
    head_hidden, num_classes, task, class_names, role  as for the plain models

Forward: ``z_o = phi_o(n_o(x))``, ``z_s = phi_s(n_s(x))`` (each encoder keeps its own input standardisation:
phi_o's from its checkpoint, phi_s's from this table's train split), ``T_k(z) = act(Linear(D, D/2) z)`` (``k =
1, 2``, each applied to both), fusion ``average`` (the authors' ``Cross_Translation``): ``act(W cat((T1 z_o +
T1 z_s)/2, (T2 z_s + T2 z_o)/2))``, or ``concat4`` (the paper's text): ``act(W cat(T1 z_o, T1 z_s, T2 z_o, T2
z_s))``, or ``concat`` (no translation, Table 5's ablation): ``act(W cat(z_o, z_s))``; the fused ``D``-vector is
the *embedding*, the head maps it to logits. Layers: ``input.<col>``,
``encoders.ordinary.<i>``, ``encoders.shared.<i>``, ``ctn.t1``, ``ctn.t2``, ``ctn.fuse``, ``embedding``,
``head.<i>``, ``logits``. Channel masks are not supported on composite models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.nn.models import ACTIVATIONS, Standardize, encoder, mlp, trunk_shape
from cmkdtool.nn.specs import ARCHS

ENCODER_KEYS = ("arch", "channels", "hidden", "activation", "dropout", "batch_norm")
FUSES = ("average", "concat4", "concat")
BRANCHES = ("ordinary", "shared")


def encoder_spec(spec: dict) -> dict:
    """The encoder part of a plain model's spec (what a composite keeps for each branch)."""
    return {k: spec[k] for k in ENCODER_KEYS if k in spec}


class Transform(nn.Module):
    """OS-MD's transform block for vectors: ``Linear(D, D/2) -> [BatchNorm1d] -> activation``."""

    def __init__(self, dim: int, activation: str, bn: bool):
        super().__init__()
        out = max(1, dim // 2)
        self.net = nn.Sequential(nn.Linear(dim, out), *([nn.BatchNorm1d(out)] if bn else []), ACTIVATIONS[activation]())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CTN(nn.Module):
    """The cross translation network: ``t1``, ``t2`` shared by both branches and the fusion ``fuse``."""

    def __init__(self, dim: int, fuse: str, activation: str, bn: bool):
        super().__init__()
        if fuse not in FUSES:
            raise CmkdUsageError(f"unknown CTN fusion {fuse!r}; choose one of {', '.join(FUSES)}")
        self.fuse_mode = fuse
        self.t1 = Transform(dim, activation, bn)
        self.t2 = Transform(dim, activation, bn)
        half = max(1, dim // 2)
        width = {"average": 2 * half, "concat4": 4 * half, "concat": 2 * dim}[fuse]
        self.fuse = nn.Sequential(nn.Linear(width, dim), ACTIVATIONS[activation]())

    def parts(self, z_o: Tensor, z_s: Tensor) -> dict[str, Tensor]:
        """The transformed features and the fused embedding."""
        t1o, t1s, t2o, t2s = self.t1(z_o), self.t1(z_s), self.t2(z_o), self.t2(z_s)
        if self.fuse_mode == "average":
            joint = torch.cat([(t1o + t1s) / 2, (t2s + t2o) / 2], dim=1)
        elif self.fuse_mode == "concat4":
            joint = torch.cat([t1o, t1s, t2o, t2s], dim=1)
        else:  # no translation (OS-MD Table 5's "-CTN"): the two encoders' features side by side
            joint = torch.cat([z_o, z_s], dim=1)
        return {"t1_o": t1o, "t1_s": t1s, "t2_o": t2o, "t2_s": t2s, "embedding": self.fuse(joint)}


def _validate(spec: dict) -> None:
    if len(spec.get("inputs") or []) != 1:
        raise CmkdUsageError("a composite model reads exactly one input column")
    for branch in BRANCHES:
        sub = spec.get(branch) or {}
        if sub.get("arch") not in ARCHS or sub.get("arch") == "linear":
            raise CmkdUsageError(
                f"the {branch} encoder needs an encoder architecture (mlp, cnn2d, cnn1d, resnet18, gru), "
                f"not {sub.get('arch')!r}"
            )
    if int(spec.get("num_classes", 0)) < 1:
        raise CmkdError("a model needs at least one class")


class CompositeModel(nn.Module):
    """phi_o and phi_s on one column, the CTN fusion and a head (see the module docstring)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        _validate(spec)
        self.spec = spec
        (inp,) = spec["inputs"]
        self.column = inp["name"]
        self.input_names = [self.column]
        self.input_dims = {self.column: int(math.prod(inp["shape"]))}
        self.norm = nn.ModuleDict({b: Standardize(self.input_dims[self.column]) for b in BRANCHES})
        built = {b: encoder(spec[b]["arch"], trunk_shape(spec[b]["arch"], self.column, inp["shape"]), spec[b])
                 for b in BRANCHES}  # fmt: skip
        self.encoders = nn.ModuleDict({b: enc for b, (enc, _) in built.items()})
        self._encoder_widths = {f"encoders.{b}.{i}": w for b, (_, ws) in built.items() for i, w in enumerate(ws)}
        widths = {b: ws[-1] for b, (_, ws) in built.items()}
        if widths["ordinary"] != widths["shared"]:
            raise CmkdUsageError(
                f"the ordinary encoder gives {widths['ordinary']} features but the shared one {widths['shared']}; "
                "give the student the ordinary model's architecture (--arch, --channels, --hidden)"
            )
        self.embed_dim = widths["ordinary"]
        ctn = spec.get("ctn") or {}
        act = ctn.get("activation", spec["ordinary"].get("activation", "relu"))
        self.ctn = CTN(self.embed_dim, ctn.get("fuse", "average"), act, bool(ctn.get("bn")))
        head_hidden = [int(h) for h in spec.get("head_hidden") or []]
        self.head = nn.Sequential(
            *mlp(self.embed_dim, head_hidden, act, 0.0, False),
            nn.Linear(head_hidden[-1] if head_hidden else self.embed_dim, int(spec["num_classes"])),
        )
        self.channel_mask = None

    # ---- the plain model's interface (eval, spectrum, inference) ----------------------------------------------

    def set_mask(self, mask: dict | None) -> None:
        if mask is not None:
            raise CmkdUsageError("channel masks are not supported on composite (OS-MD) models")

    def maskable_layers(self) -> list[str]:
        return []

    def normed_input(self, name: str, x: Tensor, branch: str = "shared") -> Tensor:
        return self.norm[branch](x.flatten(1))

    def branches(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(z_o, z_s): the two encoders' features."""
        x = inputs[self.column]
        return self.encoders["ordinary"](self.norm["ordinary"](x.flatten(1))), self.encoders["shared"](
            self.norm["shared"](x.flatten(1))
        )

    def parts(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """z_o, z_s, the transformed features (t1_o, t1_s, t2_o, t2_s), the fused embedding and the logits."""
        z_o, z_s = self.branches(inputs)
        out = {"z_o": z_o, "z_s": z_s, **self.ctn.parts(z_o, z_s)}
        out["logits"] = self.head(out["embedding"])
        return out

    def embed(self, inputs: dict[str, Tensor]) -> Tensor:
        z_o, z_s = self.branches(inputs)
        return self.ctn.parts(z_o, z_s)["embedding"]

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.head(self.embed(inputs))

    def layer_names(self) -> list[str]:
        names = [f"input.{self.column}"]
        names += [f"encoders.{b}.{i}" for b in BRANCHES for i in range(len(self.encoders[b]))]
        names += ["ctn.t1", "ctn.t2", "ctn.fuse", "embedding"]
        names += [f"head.{i}" for i in range(len(self.head))]
        return [*names, "logits"]

    def layer_width(self, layer: str) -> int:
        if layer == f"input.{self.column}":
            return self.input_dims[self.column]
        if layer in ("embedding", "ctn.fuse"):
            return self.embed_dim
        if layer == "logits":
            return int(self.spec["num_classes"])
        if layer in ("ctn.t1", "ctn.t2"):
            return 2 * max(1, self.embed_dim // 2)  # both branches' outputs, side by side
        widths = dict(self._encoder_widths)
        d = self.embed_dim
        for i, m in enumerate(self.head):
            d = m.out_features if isinstance(m, nn.Linear) else d
            widths[f"head.{i}"] = d
        if layer not in widths:
            raise CmkdError(f"unknown layer {layer!r}; layers of this model: {', '.join(self.layer_names())}")
        return widths[layer]

    def forward_layers(self, inputs: dict[str, Tensor], names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the outputs of the named layers, flattened (``ctn.t1``/``ctn.t2``: ordinary then shared)."""
        unknown = [n for n in names if n not in self.layer_names()]
        if unknown:
            raise CmkdError(f"unknown layer {unknown[0]!r}; layers of this model: {', '.join(self.layer_names())}")
        out: dict[str, Tensor] = {}
        modules = dict(self.named_modules())
        hooks = [
            modules[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o))
            for n in names
            if n.startswith(("encoders.", "head."))
        ]
        try:
            if f"input.{self.column}" in names:
                out[f"input.{self.column}"] = self.norm["shared"](inputs[self.column].flatten(1))
            p = self.parts(inputs)
        finally:
            for h in hooks:
                h.remove()
        out.update({"ctn.t1": torch.cat([p["t1_o"], p["t1_s"]], 1), "ctn.t2": torch.cat([p["t2_o"], p["t2_s"]], 1)})
        out.update({"ctn.fuse": p["embedding"], "embedding": p["embedding"], "logits": p["logits"]})
        return p["logits"], {n: out[n].flatten(1) for n in names}


def composite_spec(column: dict, ordinary: dict, shared: dict, *, num_classes: int, task: str,
                   class_names=None, fuse: str = "average", bn: bool = False, head_hidden=None) -> dict:  # fmt: skip
    """The spec of a composite student on ``column`` ({"name", "shape"}) from two encoder specs."""
    spec = {
        "kind": "composite",
        "inputs": [dict(column)],
        "ordinary": encoder_spec(ordinary),
        "shared": encoder_spec(shared),
        "ctn": {"fuse": fuse, "bn": bool(bn)},
        "head_hidden": list(head_hidden or []),
        "num_classes": int(num_classes),
        "task": task,
        "role": "student",
    }
    if class_names is not None:
        spec["class_names"] = list(class_names)
    return spec


__all__ = ["CTN", "CompositeModel", "Transform", "composite_spec", "encoder_spec"]
