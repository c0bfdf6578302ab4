"""Where training batches come from: the trainer asks a ``BatchSource`` for each epoch's batches.

``IndexBatches`` slices tensors that already sit on the device: each epoch draws a
permutation of the train rows from the trainer's generator and hands out index slices (no DataLoader, no copies
of columns a step does not read). A streaming source for tables bigger than memory, or a per-rank shard under
DDP, implements the same two members.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData, batch_plan
from cmkdtool.engine.method import Batch
from cmkdtool.nn.inference import LazyRows


class BatchSource(Protocol):
    steps_per_epoch: int
    rows: int

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """The batches of one epoch (shuffled with ``generator``)."""
        ...


class IndexBatches:
    """Batches of ``batch_size`` rows (None: all) of the ``index`` rows of ``data``, shuffled each epoch.

    ``batch_size`` is the global batch: under W processes (``dist``) every process draws the same permutation
    and takes its part of each global batch (``tensor_split``, sizes differing by at most one row), with
    ``Batch.share`` = its rows x W / the global batch's rows. A last batch of fewer than 2 W rows joins the
    previous one (in one process: a lone last row, which BatchNorm cannot train on).
    """

    def __init__(self, data: TensorData, index: Tensor, batch_size: int | None, dist=None) -> None:
        self.data, self.index = data, index
        self.rank, self.world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        self.rows = len(index)
        self.batch_size, self.steps_per_epoch = batch_plan(self.rows, batch_size, self.world)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        n, bs, steps = self.rows, self.batch_size, self.steps_per_epoch
        idx_all = self.index
        perm = idx_all[torch.randperm(n, generator=generator).to(idx_all.device)] if bs < n else idx_all
        target = self.data.target
        for s in range(steps):
            idx = perm[s * bs : n if s == steps - 1 else (s + 1) * bs]
            share = 1.0
            if self.world > 1:
                total = len(idx)
                idx = idx.tensor_split(self.world)[self.rank]
                share = len(idx) * self.world / total
            yield Batch(LazyRows(self.data.inputs, idx), None if target is None else target[idx], idx, share)


def make_batches(data: TensorData, index: Tensor, batch_size: int | None, dist=None) -> BatchSource:
    """The trainer's batch source for the ``index`` rows of ``data``: the data's own (``data.train_batches``: a
    host or streamed placement) when it has one, else ``IndexBatches`` over the device tensors."""
    own = getattr(data, "train_batches", None)
    if own is not None:
        return own(index, batch_size, dist)
    return IndexBatches(data, index, batch_size, dist)


__all__ = ["BatchSource", "IndexBatches", "make_batches"]
