"""Where training batches come from: the trainer asks a ``BatchSource`` for each epoch's batches.

``IndexBatches`` (the only source today) slices tensors that already sit on the device: each epoch draws a
permutation of the train rows from the trainer's generator and hands out index slices (no DataLoader, no copies
of columns a step does not read). A streaming source for tables bigger than memory, or a per-rank shard under
DDP, implements the same two members.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData
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

    A lone last row joins the previous batch (BatchNorm cannot train on one sample).
    """

    def __init__(self, data: TensorData, index: Tensor, batch_size: int | None) -> None:
        self.data, self.index = data, index
        self.rows = n = len(index)
        self.batch_size = bs = n if batch_size is None else min(batch_size, n)
        self.steps_per_epoch = max(1, n // bs + (n % bs > 1)) if n else 0

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        n, bs, steps = self.rows, self.batch_size, self.steps_per_epoch
        idx_all = self.index
        perm = idx_all[torch.randperm(n, generator=generator).to(idx_all.device)] if bs < n else idx_all
        target = self.data.target
        for s in range(steps):
            idx = perm[s * bs : n if s == steps - 1 else (s + 1) * bs]
            yield Batch(LazyRows(self.data.inputs, idx), None if target is None else target[idx], idx)


def make_batches(data: TensorData, index: Tensor, batch_size: int | None, dist=None) -> BatchSource:
    """The trainer's batch source for the ``index`` rows of ``data``: the data's own (``data.train_batches``: a
    host or streamed placement) when it has one, else ``IndexBatches`` over the device tensors."""
    own = getattr(data, "train_batches", None)
    if own is not None:
        return own(index, batch_size, dist)
    return IndexBatches(data, index, batch_size)


__all__ = ["BatchSource", "IndexBatches", "make_batches"]
