"""Models built from a JSON spec, so that a checkpoint rebuilds its model with no code change.

A model sees one or more input columns. Each input is standardised (train-split mean and std, stored as
buffers in the state_dict), passed through its own encoder, the encoder outputs are concatenated (late fusion)
into the *embedding*, and a head maps the embedding to class logits.

Spec keys (see docs/formats.md):
  arch          "linear" (no encoder: logistic/softmax regression) or "mlp"
  inputs        [{"name": column, "shape": [..]}]
  hidden        encoder hidden sizes (mlp), e.g. [256, 128]
  head_hidden   hidden sizes of the head after fusion (default [] = one linear layer)
  activation    relu | leaky_relu | gelu | identity (identity: a linear feature extractor, as CIBA's
                synthetic two-layer linear model)
  dropout       dropout probability after each hidden activation
  batch_norm    BatchNorm1d after each hidden linear layer
  num_classes, task ("multiclass" | "multilabel"), class_names, role
  mask          optional channel mask (see ``ChannelMask``): {"layer", "dim", "removed", "fill", ...}; the
                removed channels of that layer are replaced by zero or by their train mean in every forward
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cmkdtool.errors import CmkdError, CmkdUsageError

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "identity": nn.Identity}
ARCHS = ("linear", "mlp")
ROLES = ("teacher", "student")


class Standardize(nn.Module):
    """(x - mean) / std with statistics from the train split, kept as buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor, index: Tensor | None = None, chunk: int = 16384) -> None:
        """Population mean and std of rows ``index`` of ``x`` (all rows if None), in one pass by chunks.

        Data are shifted by one sample row (so the sum of squares does not cancel), summed per chunk in
        float32 (torch's pairwise summation) and accumulated in float64. Contiguous rows are read as views;
        no full copy of the data is made.
        """
        n = x.shape[0] if index is None else len(index)
        if n == 0:
            return
        contiguous = index is None or int(index[-1]) - int(index[0]) + 1 == n
        first = 0 if index is None else int(index[0])
        shift = (x[first] if contiguous else x[index[0]]).flatten()
        s1 = torch.zeros(self.mean.shape, dtype=torch.float64, device=x.device)
        s2 = torch.zeros_like(s1)
        for start in range(0, n, chunk):
            rows = x[first + start : first + min(n, start + chunk)] if contiguous else x[index[start : start + chunk]]
            d = rows.flatten(1) - shift
            s1 += d.sum(0).double()
            s2 += d.square().sum(0).double()
        m1 = s1 / n
        std = (s2 / n - m1.square()).clamp_min(0).sqrt()
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.mean.copy_((shift.double() + m1).to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


MASK_FILLS = ("zero", "mean")


class ChannelMask(nn.Module):
    """Nullify channels of one layer: the removed channels are replaced by a fill value.

    ``fill`` is a buffer: zeros (``'zero'``) or the train-split mean of each channel (``'mean'``, set by
    ``cmkdtool.data.masks.fit_mask_fill``). With ``running=True`` (a mean-filled intermediate layer of a model in
    training, whose activations move) training batches use their own (detached) mean, as BatchNorm does, and
    update the buffer as a running mean; eval mode uses the buffer. Removed channels carry no gradient.
    """

    def __init__(self, dim: int, removed: list[int], running: bool = False) -> None:
        super().__init__()
        keep = torch.ones(dim, dtype=torch.bool)
        keep[torch.as_tensor(list(removed), dtype=torch.long)] = False
        self.register_buffer("keep", keep)
        self.register_buffer("fill", torch.zeros(dim))
        self.running = running
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        fill = self.fill
        if self.training and self.running:
            fill = x.detach().float().mean(0)
            with torch.no_grad():
                self.fill.lerp_(fill, 0.1)
        return torch.where(self.keep, x, fill.to(x.dtype))


def mlp(in_dim: int, hidden: list[int], activation: str, dropout: float, batch_norm: bool) -> nn.Sequential:
    """Linear -> [BatchNorm] -> activation -> [Dropout], for each hidden size."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    return nn.Sequential(*layers)


def _validate(spec: dict) -> None:
    if spec.get("arch") not in ARCHS:
        raise CmkdUsageError(f"unknown architecture {spec.get('arch')!r}; choose one of {', '.join(ARCHS)}")
    if spec.get("activation", "relu") not in ACTIVATIONS:
        raise CmkdUsageError(f"unknown activation {spec.get('activation')!r}; choose one of {', '.join(ACTIVATIONS)}")
    if spec["arch"] == "linear" and spec.get("hidden"):
        raise CmkdUsageError("architecture 'linear' has no hidden layers; drop --hidden or use --arch mlp")
    if spec["arch"] == "linear" and spec.get("head_hidden"):
        raise CmkdUsageError("architecture 'linear' has no hidden layers; drop --head-hidden or use --arch mlp")
    if spec.get("role", "teacher") not in ROLES:
        raise CmkdUsageError(f"unknown role {spec.get('role')!r}; choose one of {', '.join(ROLES)}")
    if spec["arch"] == "mlp" and not spec.get("hidden"):
        raise CmkdUsageError("architecture 'mlp' needs hidden sizes, e.g. --hidden 256,128")
    if not spec.get("inputs"):
        raise CmkdUsageError("a model needs at least one --input column")
    for i in spec["inputs"]:
        if "." in i["name"] or not i["name"]:
            raise CmkdError(f"input column name {i['name']!r} cannot be used as a layer name; rename the column")
    if int(spec.get("num_classes", 0)) < 1:
        raise CmkdError("a model needs at least one class")
    mask = spec.get("mask")
    if mask is not None:
        if mask.get("fill") not in MASK_FILLS:
            raise CmkdUsageError(f"unknown mask fill {mask.get('fill')!r}; choose one of {', '.join(MASK_FILLS)}")
        if mask.get("layer") == "logits":
            raise CmkdUsageError("the logits cannot be masked; choose an input or a hidden layer")


class CmkdModel(nn.Module):
    """Per-input standardisation and encoders, late fusion by concatenation, and a classification head."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        _validate(spec)
        self.spec = spec
        act, drop, bn = (
            spec.get("activation", "relu"),
            float(spec.get("dropout", 0.0)),
            bool(spec.get("batch_norm")),
        )
        self.input_names = [i["name"] for i in spec["inputs"]]
        self.input_dims = {i["name"]: int(math.prod(i["shape"])) for i in spec["inputs"]}
        self.norm = nn.ModuleDict({n: Standardize(d) for n, d in self.input_dims.items()})
        hidden = [int(h) for h in spec.get("hidden") or []]
        self.encoders = nn.ModuleDict({n: mlp(d, hidden, act, drop, bn) for n, d in self.input_dims.items()})
        self.embed_dim = sum(hidden[-1] if hidden else d for d in self.input_dims.values())
        head_hidden = [int(h) for h in spec.get("head_hidden") or []]
        self.head = nn.Sequential(
            *mlp(self.embed_dim, head_hidden, act, drop, bn),
            nn.Linear(head_hidden[-1] if head_hidden else self.embed_dim, int(spec["num_classes"])),
        )
        self.channel_mask: ChannelMask | None = None
        self._mask_handle = None
        if spec.get("mask") is not None:
            self.set_mask(spec["mask"])

    # ---- channel masks ------------------------------------------------------------------------------
    def set_mask(self, mask: dict | None) -> None:
        """Attach (or with None remove) the channel mask described by ``mask`` and record it in the spec.

        ``mask["layer"]`` is a layer name (``layer_names``): ``input.<col>`` masks the raw input before its
        standardisation (so the ``'mean'`` fill is the raw train mean and standardises to 0); other layers are
        masked on their output, as every later layer and ``forward_layers`` see it.
        """
        if self._mask_handle is not None:
            self._mask_handle.remove()
            self._mask_handle = None
        self.channel_mask = None
        self.spec = {k: v for k, v in self.spec.items() if k != "mask"}
        if mask is None:
            return
        layer = mask["layer"]
        if layer not in self.maskable_layers():
            raise CmkdError(
                f"cannot mask layer {layer!r} (the logits, or not a layer of this model); "
                f"layers that can be masked: {', '.join(self.maskable_layers())}"
            )
        width = self.layer_width(layer)
        if int(mask["dim"]) != width:
            raise CmkdError(f"the mask has {mask['dim']} channels but layer {layer!r} has {width}")
        bad = [c for c in mask["removed"] if not 0 <= int(c) < width]
        if bad:
            raise CmkdError(f"the mask removes channel {bad[0]} of layer {layer!r}, which has channels 0..{width - 1}")
        running = mask["fill"] == "mean" and not layer.startswith("input.")
        self.channel_mask = ChannelMask(width, mask["removed"], running).to(self.head[-1].weight.device)
        if layer.startswith(("encoders.", "head.")):
            self._mask_handle = dict(self.named_modules())[layer].register_forward_hook(self._mask_hook)
        self.spec = {**self.spec, "mask": dict(mask)}

    def maskable_layers(self) -> list[str]:
        """Layers a channel mask may sit on: every layer but the logits (``logits`` and the last head module)."""
        return [n for n in self.layer_names() if n not in ("logits", f"head.{len(self.head) - 1}")]

    def _mask_hook(self, module: nn.Module, args, output: Tensor) -> Tensor:
        return self.channel_mask(output)

    def _masked(self, layer: str, x: Tensor) -> Tensor:
        """``x`` (the output of ``layer``) with the mask applied if the mask sits on that layer."""
        m = self.channel_mask
        return m(x) if m is not None and self.spec["mask"]["layer"] == layer else x

    def normed_input(self, name: str, x: Tensor) -> Tensor:
        """Input column ``name`` (raw rows), masked if the mask is on it, then standardised: ``input.<name>``."""
        return self.norm[name](self._masked(f"input.{name}", x.flatten(1)))

    def layer_width(self, layer: str) -> int:
        """Number of channels (features) of a layer's output."""
        if layer.startswith("input."):
            return self.input_dims[layer[len("input.") :]]
        if layer == "embedding":
            return self.embed_dim
        if layer == "logits":
            return int(self.spec["num_classes"])
        widths = {}
        for n in self.input_names:
            d = self.input_dims[n]
            for i, m in enumerate(self.encoders[n]):
                d = m.out_features if isinstance(m, nn.Linear) else d
                widths[f"encoders.{n}.{i}"] = d
        d = self.embed_dim
        for i, m in enumerate(self.head):
            d = m.out_features if isinstance(m, nn.Linear) else d
            widths[f"head.{i}"] = d
        if layer not in widths:
            raise CmkdError(f"unknown layer {layer!r}; layers of this model: {', '.join(self.layer_names())}")
        return widths[layer]

    def embed(self, inputs: dict[str, Tensor]) -> Tensor:
        """The fused embedding (input of the head)."""
        parts = [self.encoders[n](self.normed_input(n, inputs[n])) for n in self.input_names]
        return self._masked("embedding", parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.head(self.embed(inputs))

    def layer_names(self) -> list[str]:
        """Stable names of the layers whose outputs can be distilled or analysed.

        ``input.<col>`` (the standardised input), every submodule of the encoders and the head by its
        state-dict prefix (``encoders.<col>.<i>``, ``head.<i>``), ``embedding`` (the fused encoder output, input
        of the head) and ``logits``.
        """
        names = [f"input.{n}" for n in self.input_names]
        names += [f"encoders.{n}.{i}" for n in self.input_names for i in range(len(self.encoders[n]))]
        names.append("embedding")
        names += [f"head.{i}" for i in range(len(self.head))]
        names.append("logits")
        return names

    def forward_layers(self, inputs: dict[str, Tensor], names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the outputs of the named layers (see ``layer_names``), flattened to (N, features)."""
        unknown = [n for n in names if n not in self.layer_names()]
        if unknown:
            raise CmkdError(f"unknown layer {unknown[0]!r}; layers of this model: {', '.join(self.layer_names())}")
        out: dict[str, Tensor] = {}
        modules = dict(self.named_modules())
        hooks = []
        for name in names:
            if name.startswith(("encoders.", "head.")):
                hooks.append(modules[name].register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o)))
        try:
            normed = {n: self.normed_input(n, inputs[n]) for n in self.input_names}
            for n in self.input_names:
                if f"input.{n}" in names:
                    out[f"input.{n}"] = normed[n]
            parts = [self.encoders[n](normed[n]) for n in self.input_names]
            emb = self._masked("embedding", parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
            logits = self.head(emb)
        finally:
            for h in hooks:
                h.remove()
        if "embedding" in names:
            out["embedding"] = emb
        if "logits" in names:
            out["logits"] = logits
        return logits, {n: out[n].flatten(1) for n in names}


def build_model(spec: dict) -> CmkdModel:
    """Build an (untrained) model from its spec."""
    return CmkdModel(spec)


def new_model(data, options, role: str, inputs: list[str] | None = None) -> CmkdModel:
    """A fresh model (``options``: engine.config.ModelOptions) on ``inputs`` of ``data`` (a TensorData), its
    input standardisation fitted on the train rows."""
    model = build_model(options.spec(data, role, inputs))
    train_idx = data.index("train")
    for n in model.input_names:
        model.norm[n].fit(data.inputs[n], train_idx)
    return model
