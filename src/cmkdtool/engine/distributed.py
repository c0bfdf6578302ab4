"""The distributed context the trainer consults: which process this is and how to combine across processes.

In one process (the only mode today) every member is a no-op: rank 0 of 1 writes every file and shows
progress, reductions return their input. Multi-process training (torchrun DDP) provides the same members, so
the trainer's loop does not change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, the history and progress (rank 0)."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over processes (in one process: the tensor itself)."""
        return tensor

    def barrier(self) -> None:
        """Wait for every process (in one process: return)."""


SINGLE = DistContext()
"""The context of a one-process run."""


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun: ``WORLD_SIZE``) started; 1 without one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


__all__ = ["SINGLE", "DistContext", "launched_world_size"]
