"""Chunked inference: the one place where a model runs over many rows without gradients.

Everything that evaluates a model on a table (validation, eval, spectrum features, caching a frozen teacher's
outputs, mask fills, salience, bottleneck sweeps) goes through :func:`map_rows`: rows are taken ``chunk`` at a
time by index (inputs stay where they are; :class:`LazyRows` gathers only the columns a model reads), the
modules run in eval mode and are put back in the mode they were in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

CHUNK_ROWS = 8192
"""Rows per chunk of inference (bounded memory; large enough that Python overhead does not matter)."""

T = TypeVar("T")


class LazyRows(Mapping):
    """The rows ``index`` of each column, gathered on first access: a batch never copies columns that the
    step does not read (e.g. a teacher's input when its outputs are cached)."""

    __slots__ = ("_columns", "_index", "_rows")

    def __init__(self, columns: Mapping[str, Tensor], index: Tensor | slice) -> None:
        self._columns, self._index, self._rows = columns, index, {}

    def __getitem__(self, key: str) -> Tensor:
        rows = self._rows.get(key)
        if rows is None:
            rows = self._rows[key] = self._columns[key][self._index]
        return rows

    def __iter__(self):
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode without gradients; restore their training flags afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was in zip(modules, modes, strict=True):
            m.train(was)


def map_rows(fn: Callable[[Tensor], T], index: Tensor | int, *modules: nn.Module, chunk: int = CHUNK_ROWS) -> list[T]:
    """``[fn(rows) for rows in chunks of index]`` with ``modules`` in eval mode and no gradients.

    ``index`` is a 1-d tensor of row indices, or a row count ``n`` (then each chunk is a ``slice`` of
    ``range(n)``, which reads contiguous rows as views)."""
    out: list[T] = []
    n = index if isinstance(index, int) else len(index)
    with eval_mode(*modules):
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk)) if isinstance(index, int) else index[start : start + chunk]
            out.append(fn(rows))
    return out


def layer_outputs(
    model: nn.Module,
    columns: Mapping[str, Tensor],
    index: Tensor | int,
    layers: list[str],
    *,
    chunk: int = CHUNK_ROWS,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Tensor]:
    """Float32 outputs of the named ``layers`` of ``model`` (a ``CmkdModel``: ``layer_names()``) on rows
    ``index`` of ``columns``; ``(0, width)`` tensors when there are no rows. ``context`` wraps each chunk
    (autocast)."""

    def run(rows) -> dict[str, Tensor]:
        with context():
            _, feats = model.forward_layers(LazyRows(columns, rows), layers)
        return {n: v.float() for n, v in feats.items()}

    parts = map_rows(run, index, model, chunk=chunk)
    if parts:
        return {n: torch.cat([p[n] for p in parts]) for n in layers}
    device = next(iter(columns.values())).device
    return {n: torch.zeros(0, model.layer_width(n), device=device) for n in layers}


__all__ = ["CHUNK_ROWS", "LazyRows", "eval_mode", "layer_outputs", "map_rows"]
