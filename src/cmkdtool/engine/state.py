"""Training state for ``--resume``, stored beside the output as ``<out>.state.safetensors`` (no pickle).

Tensors: the trainable modules' weights (``model.*``), the optimizer's per-parameter state (``optim.<i>.<key>``),
the best weights so far (``best.*``) and RNG states (``rng.*``). Metadata: the epoch reached, scheduler and
optimizer hyperparameters, the best score, the history so far and a fingerprint of the settings, so a resume
with different settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from cmkdtool.errors import CmkdError
from cmkdtool.io.atomic import atomic_path

STATE_FORMAT = "cmkdtool-train-state/1"


def state_path(output: str | os.PathLike) -> str:
    return f"{output}.state.safetensors"


def fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and bytes of tensors (the state a run starts from)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_state(
    path: str,
    *,
    model: dict,
    optimizer: torch.optim.Optimizer,
    scheduler,
    best: dict | None,
    rng: dict[str, torch.Tensor],
    meta: dict,
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in model.items()}
    opt_sd = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, st in opt_sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {
        "format": STATE_FORMAT,
        "param_groups": opt_sd["param_groups"],
        "optim_scalars": scalars,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        **meta,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"cmkdtool.state": json.dumps(header, default=str)})


def load_state(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise CmkdError(f"{path}: no training state to resume from; run without --resume first")
    try:
        with safe_open(path, framework="pt") as f:
            header = json.loads((f.metadata() or {})["cmkdtool.state"])
        tensors = load_file(path)
    except Exception as e:
        raise CmkdError(f"{path}: not a readable cmkdtool training state ({str(e).splitlines()[0]})") from e
    if header.get("format") != STATE_FORMAT:
        raise CmkdError(f"{path}: not a cmkdtool training state; delete it and run without --resume")
    return tensors, header


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, header: dict) -> None:
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, vals in header.get("optim_scalars", {}).items():
        state.setdefault(int(pid), {}).update(vals)
    optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})


def prefixed(tensors: dict, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}
