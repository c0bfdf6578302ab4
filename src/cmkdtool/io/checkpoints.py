"""safetensors checkpoints that rebuild their model with no other file (see docs/formats.md).

Tensors: the deployable model's state_dict. ``__metadata__``: ``cmkdtool.format``, ``cmkdtool.version``,
``cmkdtool.model`` (JSON model spec: role, architecture, inputs and shapes, classes, task, normalisation is in
the tensors), ``cmkdtool.train`` (JSON: command, method, hyperparameters, seed, data sha256s, metrics).
No pickle is ever read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cmkdtool import __version__
from cmkdtool.errors import CmkdError
from cmkdtool.io.atomic import atomic_path

FORMAT = "cmkdtool-checkpoint/1"
FORMAT_KEY = "cmkdtool.format"
MODEL_KEY = "cmkdtool.model"
TRAIN_KEY = "cmkdtool.train"
VERSION_KEY = "cmkdtool.version"


def save_checkpoint(
    path: str | os.PathLike, state_dict: dict, model_spec: dict, train_meta: dict | None = None
) -> None:
    """Write ``state_dict`` with the model spec and training record as safetensors metadata, atomically.

    Byte-identical for identical inputs, in any process (see :mod:`cmkdtool.io.safetensors_io`).
    """
    from cmkdtool.io.safetensors_io import save_safetensors

    tensors = {k: v.detach().to("cpu") for k, v in state_dict.items()}
    meta = {
        FORMAT_KEY: FORMAT,
        VERSION_KEY: __version__,
        MODEL_KEY: json.dumps(model_spec, sort_keys=True),
        TRAIN_KEY: json.dumps(train_meta or {}, sort_keys=True, default=str),
    }
    with atomic_path(path) as tmp:
        save_safetensors(tmp, tensors, meta)


def read_metadata(path: str | os.PathLike) -> tuple[dict, dict]:
    """(model spec, train record) of a cmkdtool checkpoint, reading only its header."""
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise CmkdError(f"{path}: no such file")
    if p.is_dir():
        raise CmkdError(f"{path}: is a folder, expected a .safetensors checkpoint")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for foreign and truncated files
        raise CmkdError(
            f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}); give a checkpoint written "
            "by cmkdtool pretrain/distill"
        ) from e
    if meta.get(FORMAT_KEY) != FORMAT:
        raise CmkdError(
            f"{path}: a safetensors file but not a cmkdtool checkpoint (metadata '{FORMAT_KEY}' is "
            f"{meta.get(FORMAT_KEY)!r}); give a checkpoint written by cmkdtool"
        )
    try:
        spec, train = json.loads(meta[MODEL_KEY]), json.loads(meta.get(TRAIN_KEY, "{}"))
    except (KeyError, ValueError) as e:
        raise CmkdError(f"{path}: damaged cmkdtool metadata ({e}); re-create the checkpoint") from e
    if not isinstance(spec, dict) or not isinstance(train, dict):
        raise CmkdError(f"{path}: damaged cmkdtool metadata (not JSON objects); re-create the checkpoint")
    return spec, train


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(tensors, model spec, train record). Tensors are loaded on the CPU."""
    from safetensors.torch import load_file

    spec, train = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:
        raise CmkdError(f"{path}: truncated or damaged tensor data ({str(e).splitlines()[0]})") from e
    return tensors, spec, train


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the model a cmkdtool checkpoint holds, with its weights, in eval mode."""
    from cmkdtool.nn.models import build_model

    tensors, spec, _ = read_checkpoint(path)
    if spec.get("role") == "bottleneck":
        raise CmkdError(
            f"{path}: a bottleneck checkpoint (cmkdtool fit-bottleneck), not a model; "
            "use it with `cmkdtool distill ciba --bottleneck`"
        )
    return _load_state(path, build_model, spec, tensors, device)


def load_bottleneck(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the bottleneck a ``cmkdtool fit-bottleneck`` checkpoint holds, in eval mode."""
    from cmkdtool.nn.bottleneck import build_bottleneck

    tensors, spec, _ = read_checkpoint(path)
    if spec.get("role") != "bottleneck":
        raise CmkdError(
            f"{path}: a {spec.get('role', 'model')} checkpoint, not a bottleneck; "
            "make one with `cmkdtool fit-bottleneck TEACHER BASELINE TABLE -o bottleneck.safetensors`"
        )
    return _load_state(path, build_bottleneck, spec, tensors, device)


def _load_state(path, build, spec: dict, tensors: dict, device):
    try:
        model = build(spec)
    except CmkdError as e:
        raise CmkdError(f"{path}: its model spec cannot be built ({e}); re-create the checkpoint") from e
    except (KeyError, TypeError, ValueError) as e:
        raise CmkdError(f"{path}: damaged model spec in its metadata ({e!r}); re-create it") from e
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        first = str(e).strip().splitlines()[-1].strip()
        raise CmkdError(f"{path}: tensors do not match the model its metadata describes ({first}); re-create it") from e
    if missing or unexpected:
        raise CmkdError(
            f"{path}: tensors do not match the model its metadata describes "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); re-create the checkpoint"
        )
    return model.to(device).eval()
