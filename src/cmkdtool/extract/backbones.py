"""torchvision backbones for ``extract image`` and ``extract video``: build by name, load weights, take a layer.

- ``--backbone NAME``: any model of ``torchvision.models.list_models()`` (classification: resnet18/34/50,
  mobilenet_v3_large, efficientnet_b0, vit_b_16, ...; video: r2plus1d_18, r3d_18, mc3_18, ...).
- ``--weights NAME``: a torchvision weights name of that model (``IMAGENET1K_V1``, ``KINETICS400_V1``,
  ``DEFAULT``, or the full ``ResNet18_Weights.IMAGENET1K_V1``). They load through torch hub's cache
  (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), are downloaded there when
  missing and the network allows, and otherwise the error says which file to put where. Their preprocessing
  (resize, crop, mean, std) becomes the default.
- ``--checkpoint FILE``: local weights, a safetensors file or a ``.pth``/``.pt`` state dict loaded with
  ``torch.load(weights_only=True)`` (no pickled code runs); ``{"state_dict": ...}``/``{"model": ...}`` wrappers
  and DataParallel ``module.`` prefixes are unwrapped. A checkpoint whose last linear layer has another number
  of classes builds the model with that number.
- ``--layer NAME``: a module of the model (its ``named_modules()`` name: ``layer4``, ``avgpool``,
  ``features.8``, ``encoder.layers.encoder_layer_11``). Default: the input of the model's last ``nn.Linear``,
  i.e. the penultimate features every classifier is built on (512 for resnet18, 768 for vit_b_16's class
  token). The forward pass stops at that layer.
- ``--pool avg|max|none``: a layer output of more than two dimensions is averaged (or max-pooled) over its
  spatial/temporal axes (B, C, ...) -> (B, C), or for token sequences (B, N, D) over the tokens; ``none``
  keeps the whole map and stores it with its shape. The channels-last maps of the Swin models (B, H, W, C) are
  moved to (B, C, H, W) first.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from cmkdtool.errors import CmkdError, CmkdUsageError

POOLS = ("avg", "max", "none")


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the requested layer."""


def _torchvision_models():
    import torchvision

    return torchvision.models


def is_video_model(name: str) -> bool:
    models = _torchvision_models()
    return name in models.list_models(module=models.video)


def check_name(name: str) -> None:
    available = _torchvision_models().list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise CmkdUsageError(f"unknown torchvision model '{name}'; {hint}")


def resolve_weights(name: str, weights: str):
    """The torchvision weights enum member ``weights`` (short or full name, or DEFAULT) of model ``name``."""
    models = _torchvision_models()
    enum = models.get_model_weights(name)
    short = weights.split(".", 1)[1] if weights.startswith(f"{enum.__name__}.") else weights
    try:
        return enum[short] if short != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise CmkdUsageError(f"model '{name}' has no weights '{weights}'; choose one of {names}") from None


def weights_file(weights) -> Path:
    """Where torch hub keeps (or would keep) the file of a torchvision weights enum member."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _pretrained(name: str, weights, quiet: bool):
    """torchvision's own builder with its weights (it sets what those weights need, e.g. num_classes)."""
    import contextlib
    import io
    import sys

    path = weights_file(weights)
    try:  # torch hub prints "Downloading: ..." on stdout, where a table may be streaming: send it to stderr
        with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr):
            return _torchvision_models().get_model(name, weights=weights, progress=not quiet)
    except OSError as e:  # URLError: no network; a read-only cache
        raise CmkdError(
            f"weights {type(weights).__name__}.{weights.name} are not in the torch hub cache ({path}) and could not "
            f"be downloaded ({getattr(e, 'reason', e)}); copy {os.path.basename(weights.url)} there from a machine "
            "with network (or set TORCH_HOME), or pass --checkpoint FILE"
        ) from e


def read_state_dict(path: str) -> dict:
    """A state dict from safetensors or a weights-only torch file (never unpickles code)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CmkdError(f"{path}: no such checkpoint file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CmkdError(f"{path}: not a readable safetensors file ({e}); check the file") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, zip errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CmkdError(
                f"{path}: not a weights-only PyTorch state dict ({first}); save it with "
                "torch.save(model.state_dict(), ...) or convert it to safetensors"
            ) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CmkdError(f"{path}: does not hold a state dict of tensors; save model.state_dict()")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


CLASSIFIER_NAMES = ("classifier", "fc", "head", "heads")


def _last_linear(model) -> str:
    """The model's last ``nn.Linear`` (its classifier); for models whose classifier is a 1x1 convolution (s3d,
    squeezenet) the last top-level child named classifier/fc/head(s)."""
    from torch import nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if names:
        return names[-1]
    children = [n for n, _ in model.named_children() if n in CLASSIFIER_NAMES]
    if children:
        return children[-1]
    raise CmkdUsageError("this model has no linear classifier layer; name the layer to take with --layer")


def build_backbone(name: str, weights: str | None = None, checkpoint: str | None = None, quiet: bool = False):
    """The model in eval mode, and a provenance record (name, weights, checkpoint)."""
    check_name(name)
    if weights and checkpoint:
        raise CmkdUsageError("give --weights or --checkpoint, not both")
    models = _torchvision_models()
    record: dict = {"backbone": name}
    if weights:
        w = resolve_weights(name, weights)
        model = _pretrained(name, w, quiet)
        record["weights"] = f"{type(w).__name__}.{w.name}"
    elif checkpoint:
        state = read_state_dict(checkpoint)
        model = models.get_model(name, weights=None)
        last = _last_linear(model)
        out = state.get(f"{last}.weight")
        if out is not None and out.ndim == 2 and out.shape[0] != dict(model.named_modules())[last].out_features:
            model = models.get_model(name, weights=None, num_classes=int(out.shape[0]))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise CmkdError(
                f"{checkpoint}: does not fit torchvision's {name} ({detail[:300]}); check --backbone"
            ) from None
        from cmkdtool.io.tables import file_sha256

        record.update(checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint))
    else:
        raise CmkdUsageError(
            f"--backbone {name} needs weights: --weights NAME (e.g. DEFAULT) or --checkpoint FILE "
            "(random weights make meaningless features)"
        )
    return model.eval(), record


def default_transform(name: str, weights: str | None):
    """resize, crop, mean, std of the weights' own preprocessing (ImageNet / Kinetics-400 defaults without)."""
    check_name(name)
    if weights:
        t = resolve_weights(name, weights).transforms()
        return list(t.resize_size), list(t.crop_size), list(t.mean), list(t.std)
    if is_video_model(name):
        return [128, 171], [112, 112], [0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]
    return [256], [224, 224], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class LayerFeatures:
    """Run a model to one layer and pool its output: (B, ...) inputs -> (B, F) or (B, *map) features."""

    def __init__(self, model, layer: str | None = None, pool: str = "avg", channels_last: bool = False) -> None:
        if pool not in POOLS:
            raise CmkdUsageError(f"unknown --pool '{pool}'; choose one of {', '.join(POOLS)}")
        modules = dict(model.named_modules())
        self.model = model
        self.pool = pool
        self.layer = layer
        self.channels_last = channels_last
        self.take_input = layer is None
        target = _last_linear(model) if layer is None else layer
        if target not in modules or target == "":
            tops = ", ".join(n for n, _ in model.named_children())
            close = difflib.get_close_matches(target, list(modules), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"top-level layers: {tops}"
            raise CmkdUsageError(f"the model has no layer '{target}'; {hint}")
        self.target = target
        self._out = None
        m = modules[target]
        if self.take_input:
            m.register_forward_pre_hook(self._capture_input)
        else:
            m.register_forward_hook(self._capture_output)

    def describe(self) -> str:
        return f"input of {self.target}" if self.take_input else self.target

    def _capture_input(self, module, args):
        self._out = args[0]
        raise _Stop

    def _capture_output(self, module, args, output):
        self._out = output
        raise _Stop

    def __call__(self, x):
        self._out = None
        try:
            self.model(x)
        except _Stop:
            pass
        out = self._out
        self._out = None
        if out is None:
            raise CmkdError(f"layer '{self.target}' was not reached in the forward pass; choose another --layer")
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim >= 4 and self.channels_last:  # swin: (B, H, W, C) -> (B, C, H, W)
            out = out.movedim(-1, 1)
        if out.ndim <= 2 or self.pool == "none":
            return out
        dims = (1,) if out.ndim == 3 else tuple(range(2, out.ndim))
        return out.mean(dim=dims) if self.pool == "avg" else out.amax(dim=dims)
