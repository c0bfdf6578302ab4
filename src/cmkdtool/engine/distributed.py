"""The distributed context the trainer consults: which process this is and how to combine across processes.

One process (no launcher) is ``SINGLE``: rank 0 of 1 writes every file and shows progress, reductions return
their input. Under ``torchrun`` (``WORLD_SIZE`` > 1) ``setup`` joins the process group from torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for the CPU, NCCL
for CUDA with one device per process (``cuda:LOCAL_RANK``). The context then reduces, gathers and broadcasts
through ``torch.distributed``; the trainer's loop is the same code in both cases (docs/scaling.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import Tensor, nn

from cmkdtool.errors import CmkdError, CmkdUsageError

TIMEOUT_ENV = "CMKDTOOL_DIST_TIMEOUT"
"""Seconds a collective may wait for the other processes before failing (default 1800, torch's gloo default)."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: bool = False  # joined a process group (torchrun, even with one process)

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, the history and progress (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether this process trains in a process group (under torchrun, also with one process: the DDP path)."""
        return self.group

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over processes (in one process: the tensor itself)."""
        if not self.active:
            return tensor
        out = tensor.detach().clone()
        torch.distributed.all_reduce(out)
        return out

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """``tensor`` of every process, in rank order (same shape on every process)."""
        if not self.active:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return parts

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of process ``src`` on every process (objects the processes made themselves, never a file's)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_(self, tensors: list[Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with process ``src``'s values, in place."""
        if self.active:
            for t in tensors:
                torch.distributed.broadcast(t, src=src)

    def average_grads(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of ``params`` over processes (parameters DDP does not manage: a method's own
        optimizers). A parameter no gradient reached on any process keeps ``grad`` None."""
        if not self.active or not params:
            return
        reached = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
        torch.distributed.all_reduce(reached)  # one host sync for the whole list
        for p, on_any in zip(params, reached.tolist(), strict=True):
            if not on_any:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(self.world_size)

    def barrier(self) -> None:
        """Wait for every process (in one process: return)."""
        if self.active:
            torch.distributed.barrier()

    @property
    def tag(self) -> str:
        """' [rank r/W]' in a process group (for error lines), '' without one."""
        return f" [rank {self.rank}/{self.world_size}]" if self.active else ""


SINGLE = DistContext()
"""The context of a one-process run."""

_current: DistContext | None = None


def launched() -> bool:
    """Whether a launcher (torchrun) started this process: its environment names a rank and a world size."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun: ``WORLD_SIZE``) started; 1 without one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError) as e:
        raise CmkdError(f"{name} is not set to an integer; start several processes with torchrun") from e


def device_for_rank(device: torch.device) -> torch.device:
    """The device of this process under a launcher: CUDA becomes ``cuda:LOCAL_RANK`` (one GPU per process); an
    explicit ``cuda:N`` with several processes is a usage error (they would share one GPU)."""
    if not launched() or device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.index is not None and device.index != local and launched_world_size() > 1:
        raise CmkdUsageError(
            f"--device {device} under {launched_world_size()} processes: every process would use that GPU; "
            "give --device cuda (each process takes cuda:LOCAL_RANK)"
        )
    if device.index is not None and launched_world_size() == 1:
        return device  # one process: the GPU it was given
    if local >= torch.cuda.device_count():
        raise CmkdError(
            f"process {local} of this node needs cuda:{local} but {torch.cuda.device_count()} CUDA device(s) are "
            "visible; start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local)


def setup(device: torch.device) -> DistContext:
    """Join the process group a launcher set up (idempotent) and return this process's context; ``SINGLE``
    without a launcher. gloo for the CPU, NCCL for CUDA (``device`` must be ``cuda:LOCAL_RANK``). One process
    started by torchrun joins a group too (the DDP path on one GPU, as ``benchmarks/gpu_check.sh`` runs it)."""
    global _current
    if _current is not None:
        return _current
    world = launched_world_size()
    if not launched():
        return SINGLE
    import torch.distributed as tdist

    if not tdist.is_available():
        raise CmkdError("this torch build has no torch.distributed; run one process")
    rank, local = _env_int("RANK"), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        if device.type == "cuda":
            torch.cuda.set_device(device)
            tdist.init_process_group("nccl", timeout=timeout, device_id=device)
        elif device.type == "cpu":
            tdist.init_process_group("gloo", timeout=timeout)
        else:
            raise CmkdUsageError(f"several processes need --device cpu or cuda, not {device.type}")
    _current = DistContext(rank=rank, world_size=world, local_rank=local, group=True)
    return _current


def current() -> DistContext:
    """The context ``setup`` made, or ``SINGLE``."""
    return _current or SINGLE


def shutdown() -> None:
    """Wait for every process, then leave the process group (after the last collective; no-op without one)."""
    global _current
    if _current is not None and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _current = None


__all__ = ["SINGLE", "DistContext", "current", "device_for_rank", "launched_world_size", "setup", "shutdown"]
