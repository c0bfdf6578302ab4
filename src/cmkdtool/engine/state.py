"""Training state for ``--resume``, stored beside the output as ``<out>.state.safetensors`` (no pickle).

Tensors: the trainable modules' weights and buffers (``model.*``: method state such as memory banks included),
each optimizer's per-parameter state (``optim.<name>.<i>.<key>``: ``main`` and a method's own optimizers), the
best weights so far (``best.*``) and RNG states (``rng.*``). Metadata: the epoch reached, each optimizer's
hyperparameters and schedule position, the fp16 loss scale, the best score, the history so far and a
fingerprint of the settings, so a resume with different settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from cmkdtool.errors import CmkdError
from cmkdtool.io.atomic import atomic_path
from cmkdtool.io.safetensors_io import save_safetensors

STATE_FORMAT = "cmkdtool-train-state/2"


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
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, object],
    best: dict | None,
    rng: dict[str, torch.Tensor],
    meta: dict,
) -> None:
    """Write the training state: ``optimizers`` by name (``main`` and a method's own), their ``schedulers``
    (LambdaLR, by the same names), the model and best weights, RNG states and ``meta`` (JSON)."""
    tensors = {f"model.{k}": v for k, v in model.items()}
    opt_meta: dict[str, dict] = {}
    for name, optimizer in optimizers.items():
        opt_sd = optimizer.state_dict()
        scalars: dict[str, dict] = {}
        for pid, st in opt_sd["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{name}.{pid}.{key}"] = val
                else:
                    scalars.setdefault(str(pid), {})[key] = val
        opt_meta[name] = {"param_groups": opt_sd["param_groups"], "scalars": scalars}
        if name in schedulers:
            opt_meta[name]["scheduler"] = {k: v for k, v in schedulers[name].state_dict().items() if k != "lr_lambdas"}
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"format": STATE_FORMAT, "optimizers": opt_meta, **meta}
    with atomic_path(path) as tmp:
        save_safetensors(tmp, tensors, {"cmkdtool.state": json.dumps(header, default=str, sort_keys=True)})


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


def restore_optimizers(
    optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, object], tensors: dict, header: dict
) -> None:
    """Load what ``save_state`` wrote into ``optimizers`` and ``schedulers`` (by name)."""
    saved = header.get("optimizers", {})
    if set(saved) != set(optimizers):
        raise CmkdError(f"the training state holds optimizers {sorted(saved)}, this run has {sorted(optimizers)}")
    for name, optimizer in optimizers.items():
        state: dict = {}
        prefix = f"optim.{name}."
        for key, val in tensors.items():
            if key.startswith(prefix):
                pid, key_name = key[len(prefix) :].split(".", 1)
                state.setdefault(int(pid), {})[key_name] = val
        for pid, vals in saved[name].get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(vals)
        optimizer.load_state_dict({"state": state, "param_groups": saved[name]["param_groups"]})
        if name in schedulers:
            sched = schedulers[name]
            sched.load_state_dict({**sched.state_dict(), **saved[name]["scheduler"]})


def prefixed(tensors: dict, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}
