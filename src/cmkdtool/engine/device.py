"""Device and precision resolution. An explicit device that does not exist is an error, never a fallback."""

from __future__ import annotations

import contextlib

import torch

from cmkdtool.errors import CmkdError, CmkdUsageError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N', 'mps'."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise CmkdUsageError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CmkdError(f"device '{spec}' requested but CUDA is not available here; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CmkdError(f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise CmkdError(f"device '{spec}' requested but MPS is not available; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise CmkdUsageError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    return dev


PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast on CUDA devices that support it, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise CmkdUsageError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("fp16", "tf32") and device.type != "cuda":
        raise CmkdUsageError(f"--precision {precision} needs a CUDA device; use fp32 or bf16 on the CPU")
    return precision


@contextlib.contextmanager
def _tf32():
    """float32 storage, TF32 tensor-core matmuls and convolutions (about 10 significant bits in the products)."""
    before = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = cudnn


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (a no-op for fp32; tf32: float32 tensors, TF32 matmuls)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "tf32":
        return _tf32()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
