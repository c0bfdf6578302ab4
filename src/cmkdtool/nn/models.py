"""Models built from a JSON spec, so that a checkpoint rebuilds its model with no code change.

A model sees one or more input columns. Each input is standardised (train-split mean and std, stored as
buffers in the state_dict), passed through its own encoder, the encoder outputs are concatenated (late fusion)
into the *embedding*, and a head maps the embedding to class logits.

An encoder is a *trunk* chosen by ``arch`` followed by fully connected ``hidden`` layers (an MLP):

  linear    no encoder at all (softmax regression on the standardised input); ``hidden`` must be empty
  mlp       no trunk: the flattened input goes through the ``hidden`` layers (at least one)
  cnn2d     samples [C, H, W] ([H, W] is read as C = 1): per entry of ``channels`` a block
            Conv2d 3x3 (padding 1) -> [BatchNorm2d] -> activation -> MaxPool2d 2 (a side of length 1 is not
            pooled; a block on a 1x1 map has no pool), then global average pooling: ``channels[-1]`` features
  cnn1d     samples [C, T] ([T] is read as C = 1): the same blocks with Conv1d / BatchNorm1d / MaxPool1d
  resnet18  samples [C, H, W] ([H, W] is read as C = 1): torchvision's ResNet-18 (random init), its conv1 made
            for C input channels, its fc removed: 512 features after global average pooling. Its own
            BatchNorm and ReLU are always there (``activation`` and ``batch_norm`` only shape the ``hidden``
            layers). Any input of at least 1x1 works (8x8 maps shrink to 1x1 after layer2).
  gru       samples [T, D] ([T] is read as D = 1), batch first: one unidirectional GRU per entry of
            ``channels`` (its hidden size); each passes its whole output sequence to the next, and the last
            one gives its final hidden state h_T: ``channels[-1]`` features

``hidden`` may be empty for cnn2d, cnn1d, resnet18 and gru (the pooled trunk output is the encoder output).
Every encoder module (a trunk module, a pooling step, an MLP layer) is one layer ``encoders.<col>.<i>``;
``forward_layers`` returns its output flattened row-major, and ``layer_width`` is that flattened width (e.g.
C*H*W for a conv block). A module of the trunk also accepts its input flattened, so any layer's flattened
output can be fed to the rest of the encoder (as permutation salience does), and a channel mask on a conv
layer masks single (channel, position) features of the flattened output.

Spec keys (see docs/formats.md):
  arch          linear | mlp | cnn2d | cnn1d | resnet18 | gru (ARCHS in nn/specs.py)
  inputs        [{"name": column, "shape": [..]}]
  channels      trunk widths of cnn2d, cnn1d (conv output channels per block) and gru (hidden size per GRU
                layer), e.g. [32, 64]; absent for the other archs
  hidden        encoder hidden sizes of the MLP after the trunk, e.g. [256, 128]
  head_hidden   hidden sizes of the head after fusion (default [] = one linear layer)
  activation    relu | leaky_relu | gelu | identity (identity: a linear feature extractor, as CIBA's
                synthetic two-layer linear model); used by the conv blocks and the MLP layers
  dropout       dropout probability after each hidden activation of the MLP layers (not in the trunk)
  batch_norm    BatchNorm1d after each hidden linear layer, and BatchNorm after each conv of cnn2d/cnn1d
  num_classes, task ("multiclass" | "multilabel"), class_names, role
  mask          optional channel mask (see ``ChannelMask``): {"layer", "dim", "removed", "fill", ...}; the
                removed channels of that layer are replaced by zero or by their train mean in every forward
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.nn.specs import ARCHS, CHANNEL_ARCHS

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "identity": nn.Identity}
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
        stream = getattr(x, "stream_rows", None)  # a streamed column (data.placement): one pass over row groups
        if stream is not None:
            return self._fit_chunks(rows for _, rows in stream(index))
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

    def _fit_chunks(self, chunks) -> None:
        """The same statistics from row blocks arriving one at a time (a streamed table): shifted by the first row,
        summed per block in float32, accumulated in float64."""
        n, shift, s1, s2 = 0, None, None, None
        for rows in chunks:
            if not len(rows):
                continue
            if shift is None:
                shift = rows[0].flatten()
                s1 = torch.zeros(self.mean.shape, dtype=torch.float64, device=rows.device)
                s2 = torch.zeros_like(s1)
            d = rows.flatten(1) - shift
            s1 += d.sum(0).double()
            s2 += d.square().sum(0).double()
            n += len(rows)
        if n == 0:
            return
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


class GlobalAvgPool(nn.Module):
    """Mean over every position of a (N, C, ...) feature map: (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(2)


class GRULayer(nn.GRU):
    """A one-layer, unidirectional, batch-first ``nn.GRU`` that returns a tensor: its output sequence (N, T, H),
    or with ``last=True`` its final hidden state h_T (N, H)."""

    def __init__(self, input_size: int, hidden_size: int, last: bool) -> None:
        super().__init__(input_size, hidden_size, batch_first=True)
        self.last = last

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        out, h = super().forward(x)
        return h[-1] if self.last else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, last={self.last}"


class AcceptFlat:
    """Forward pre-hook: a (N, prod(shape)) input is viewed as (N, *shape) (row-major) before the module runs."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        if x.dim() == 2:
            return (x.reshape(x.shape[0], *self.shape), *args[1:])
        return None


IMAGE_ARCHS = ("cnn2d", "resnet18")


def trunk_shape(arch: str, name: str, shape) -> tuple[int, ...]:
    """The shape the ``arch`` trunk reads the samples of column ``name`` (of sample ``shape``) as."""
    shape = tuple(int(s) for s in shape)
    if arch in ("linear", "mlp"):
        return (math.prod(shape),)
    if arch in IMAGE_ARCHS and len(shape) in (2, 3):
        return shape if len(shape) == 3 else (1, *shape)
    if arch == "cnn1d" and len(shape) in (1, 2):
        return shape if len(shape) == 2 else (1, *shape)
    if arch == "gru" and len(shape) in (1, 2):
        return shape if len(shape) == 2 else (*shape, 1)
    need = {"cnn2d": "[C, H, W]", "resnet18": "[C, H, W]", "cnn1d": "[C, T]", "gru": "[T, D]"}[arch]
    if arch in IMAGE_ARCHS:
        hint = "store them with their shape (e.g. extract image --raw) or use --arch mlp"
    elif len(shape) == 3:
        hint = "use --arch cnn2d, resnet18 or mlp"
    else:
        hint = "use --arch mlp"
    raise CmkdUsageError(f"column {name!r} has shape {list(shape)}; {arch} needs {need} samples ({hint})")


def conv_trunk(shape: tuple[int, ...], channels: list[int], activation: str, batch_norm: bool) -> list[nn.Module]:
    """Conv 3x3 -> [BatchNorm] -> activation -> MaxPool 2 per width, then global average pooling.

    ``shape`` is [C, H, W] (2-D convolutions) or [C, T] (1-D). A side of length 1 is not pooled (kernel 1 along
    it), and a block whose map is already 1 (x 1) has no pooling module, so small inputs (8x8) work.
    """
    two_d = len(shape) == 3
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
    c, *sides = shape
    layers: list[nn.Module] = []
    for width in channels:
        layers.append(conv(c, width, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(norm(width))
        layers.append(ACTIVATIONS[activation]())
        kernel = tuple(2 if s >= 2 else 1 for s in sides)
        if max(kernel) > 1:
            layers.append(pool(kernel if two_d else kernel[0]))
            sides = [s // k for s, k in zip(sides, kernel, strict=True)]
        c = width
    layers.append(GlobalAvgPool())
    return layers


def resnet18_trunk(in_channels: int) -> list[nn.Module]:
    """torchvision's ResNet-18 (no pretrained weights) up to its global average pooling: 512 features.

    conv1 is replaced by a 7x7/2 convolution from ``in_channels`` channels (Kaiming-initialised as torchvision
    initialises its convolutions); the stem's ReLU is not in place, so ``forward_layers`` sees bn1's output.
    """
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    return [conv1, net.bn1, nn.ReLU(), net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4, GlobalAvgPool()]


def gru_trunk(shape: tuple[int, ...], channels: list[int]) -> list[nn.Module]:
    """Stacked one-layer GRUs of hidden sizes ``channels`` on [T, D] samples; the last gives h_T."""
    layers: list[nn.Module] = []
    d = shape[1]
    for i, h in enumerate(channels):
        layers.append(GRULayer(d, h, last=i == len(channels) - 1))
        d = h
    return layers


def encoder(arch: str, shape: tuple[int, ...], spec: dict) -> tuple[nn.Sequential, list[int]]:
    """The encoder of one input of trunk shape ``shape`` (see ``trunk_shape``) and each module's output width.

    The widths (flattened, per sample) come from one forward of a zero sample in eval mode (no RNG is drawn and
    no statistic moves); every module whose input is not a vector gets an ``AcceptFlat`` pre-hook.
    """
    act, drop, bn = spec.get("activation", "relu"), float(spec.get("dropout", 0.0)), bool(spec.get("batch_norm"))
    channels = [int(c) for c in spec.get("channels") or []]
    if arch in ("cnn2d", "cnn1d"):
        trunk = conv_trunk(shape, channels, act, bn)
    elif arch == "resnet18":
        trunk = resnet18_trunk(shape[0])
    elif arch == "gru":
        trunk = gru_trunk(shape, channels)
    else:
        trunk = []
    hidden = [int(h) for h in spec.get("hidden") or []]
    widths: list[int] = []
    x = torch.zeros(1, *shape)
    with torch.no_grad():
        for m in trunk:
            m.eval()
            if x.dim() > 2:
                m.register_forward_pre_hook(AcceptFlat(tuple(x.shape[1:])))
            x = m(x)
            m.train()
            widths.append(int(math.prod(x.shape[1:])))
    head = mlp(int(x.shape[1]), hidden, act, drop, bn)  # every trunk ends in (N, features)
    d = int(x.shape[1])
    for m in head:
        d = m.out_features if isinstance(m, nn.Linear) else d
        widths.append(d)
    return nn.Sequential(*trunk, *head), widths


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
    if spec["arch"] in CHANNEL_ARCHS:
        channels = spec.get("channels") or []
        if not channels:
            raise CmkdUsageError(f"architecture {spec['arch']!r} needs trunk widths, e.g. --channels 32,64")
        if any(int(c) < 1 for c in channels):
            raise CmkdUsageError(f"--channels must be positive integers; got {','.join(map(str, channels))}")
    if not spec.get("inputs"):
        raise CmkdUsageError("a model needs at least one --input column")
    for i in spec["inputs"]:
        if "." in i["name"] or not i["name"]:
            raise CmkdError(f"input column name {i['name']!r} cannot be used as a layer name; rename the column")
        trunk_shape(spec["arch"], i["name"], i["shape"])
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
        built = {i["name"]: encoder(spec["arch"], trunk_shape(spec["arch"], i["name"], i["shape"]), spec)
                 for i in spec["inputs"]}  # fmt: skip
        self.encoders = nn.ModuleDict({n: enc for n, (enc, _) in built.items()})
        self._encoder_widths = {f"encoders.{n}.{i}": w for n, (_, ws) in built.items() for i, w in enumerate(ws)}
        self.embed_dim = sum(ws[-1] if ws else self.input_dims[n] for n, (_, ws) in built.items())
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
        if output.dim() == 2:
            return self.channel_mask(output)
        return self.channel_mask(output.flatten(1)).reshape(output.shape)  # a conv map or a GRU output sequence

    def _masked(self, layer: str, x: Tensor) -> Tensor:
        """``x`` (the output of ``layer``) with the mask applied if the mask sits on that layer."""
        m = self.channel_mask
        return m(x) if m is not None and self.spec["mask"]["layer"] == layer else x

    def normed_input(self, name: str, x: Tensor) -> Tensor:
        """Input column ``name`` (raw rows), masked if the mask is on it, then standardised: ``input.<name>``."""
        return self.norm[name](self._masked(f"input.{name}", x.flatten(1)))

    def layer_width(self, layer: str) -> int:
        """Number of channels (features) of a layer's output, flattened (C*H*W for a conv map)."""
        if layer.startswith("input."):
            return self.input_dims[layer[len("input.") :]]
        if layer == "embedding":
            return self.embed_dim
        if layer == "logits":
            return int(self.spec["num_classes"])
        widths = dict(self._encoder_widths)
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
    """Build an (untrained) model from its spec (``kind: "composite"``: an ``nn.composite.CompositeModel``)."""
    if spec.get("kind", "plain") == "composite":
        from cmkdtool.nn.composite import CompositeModel

        return CompositeModel(spec)
    if spec.get("kind", "plain") != "plain":
        raise CmkdError(
            f"unknown model kind {spec.get('kind')!r} (a newer cmkdtool wrote it?); kinds: plain, composite"
        )
    return CmkdModel(spec)


def new_model(data, options, role: str, inputs: list[str] | None = None) -> CmkdModel:
    """A fresh model (``options``: nn.specs.ModelOptions) on ``inputs`` of ``data`` (a TensorData), its
    input standardisation fitted on the train rows."""
    model = build_model(options.spec(data, role, inputs))
    train_idx = data.index("train")
    for n in model.input_names:
        model.norm[n].fit(data.inputs[n], train_idx)
    return model
