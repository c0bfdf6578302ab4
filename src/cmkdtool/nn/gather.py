"""Rows of a batch from every process of a DDP run, with gradients: what a loss that relates the rows of a batch
to each other (in-batch negatives) needs so that N processes compute the loss of the whole global batch.

``gather_rows(x)`` concatenates every process's ``x`` in rank order (the order of the global batch: the trainer
splits it with ``tensor_split``); autograd sends each process the gradient of its own rows, summed over the
processes (``torch.distributed.nn.functional.all_gather``). With the trainer's per-process loss weight (its
share of the global batch, summing to N over processes) and DDP's average over processes, the parameters get
exactly the one-process gradient of the global loss. Without a process group (or with one process) ``x`` is
returned as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: Tensor) -> Tensor:
    """``cat([x of process 0, x of process 1, ...])`` along the first dimension, differentiable; the processes
    may hold different numbers of rows (63 over 2 processes: 32 + 31)."""
    world = _world()
    if world == 1:
        return x
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]  # one small host sync per call
    most = max(counts)
    if x.shape[0] < most:  # all_gather needs one shape: pad, then drop the padding (it gets no gradient)
        x = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])])
    parts = all_gather(x)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


__all__ = ["gather_rows"]
