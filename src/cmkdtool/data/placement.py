"""Where a training run's feature columns live: ``device`` (today's tensors), ``host`` or ``stream``, and the
``auto`` choice from the Parquet footer and the memory budgets.

- ``device``: every feature column on the training device (``data.tensors.load_tensor_data``); batches are index
  slices there.
- ``host``: the columns stay in host memory; each batch is gathered there and copied to the training device.
  The trainer draws the same permutation, so the batches (and, on the CPU, the weights) are those of ``device``.
- ``stream``: the train rows are read from the table's row groups every epoch, never held whole. Epoch e permutes
  the row groups with the trainer's generator (seeded from the run seed, advanced each epoch), reads them through
  a ring of ``shuffle_buffer`` reusable row-group slots and permutes the rows within each filled buffer: every
  train row exactly once per epoch, an approximate shuffle (a block shuffle). The val rows are gathered into
  memory once. Under W processes each rank reads its own contiguous part of the permuted row groups (balanced by
  train rows), every rank runs the same number of steps, and ``Batch.share`` weights each rank's part.

Nothing here imports ``engine`` (layering): the batch source returns ``Batch`` objects through a factory the
trainer's protocol needs only by shape (``inputs``, ``target``, ``index``, ``share``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData, _to_tensor, batch_plan
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.tables import TableSource, table_format

PLACEMENTS = ("auto", "device", "host", "stream")
BUDGET_ENV = "CMKDTOOL_MEMORY_BUDGET"
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


# ------------------------------------------------------------------------------------------------- budgets


def parse_size(text: str) -> int:
    """'256MB', '2GB', '1.5GiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise CmkdUsageError(f"{BUDGET_ENV}={text!r}: give a size such as 256MB, 2GB or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def host_budget() -> int:
    """0.7 x MemAvailable, capped by the cgroup's memory limit (v2 memory.max or v1 memory.limit_in_bytes)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 1 << 40
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw.isdigit() and int(raw) < 1 << 60:
                avail = min(avail, int(raw))
        except OSError:
            continue
    return int(0.7 * avail)


def device_budget(device: torch.device) -> int | None:
    """0.8 x free CUDA memory (None for the CPU: the device is host memory)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(0.8 * free)


def budgets(device: torch.device) -> tuple[int | None, int, str]:
    """(device budget, host budget, where they come from); ``CMKDTOOL_MEMORY_BUDGET`` overrides both."""
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        b = parse_size(env)
        return (b if device.type == "cuda" else None), b, f"{BUDGET_ENV}={env}"
    return device_budget(device), host_budget(), "0.8 x free device memory, 0.7 x available host memory"


@dataclass
class Estimate:
    """Bytes a placement would hold, from the footers alone."""

    rows: int
    features: int  # every input column, all rows, float32
    group_bytes: int  # the largest row group of the inputs, float32
    val_fraction: float = 0.1


def estimate(sources: Mapping[str, TableSource], inputs: Sequence[str]) -> Estimate:
    feats, group = 0, 0
    rows = 0
    for c in inputs:
        src = sources[c]
        d = src.column_dim(c)
        rows = src.num_rows
        feats += src.num_rows * d * 4
        group += max((g[3] for g in src.groups), default=0) * d * 4
    return Estimate(rows, feats, group)


def choose(
    requested: str, device: torch.device, est: Estimate, shuffle_buffer: int, *, name: str, val_bytes: int = 0
) -> tuple[str, int, str | None]:
    """(placement, ring slots, note): ``requested`` unless ``auto``; ``auto`` takes the first that fits: device,
    host (CUDA only: on the CPU they are the same memory), stream. The ring of a streamed run is cut to what the
    host budget holds (at least one row group)."""
    dev_b, host_b, why = budgets(device)
    placement = requested
    note = None
    if requested == "auto":
        if dev_b is not None and est.features <= dev_b:
            placement = "device"
        elif device.type != "cuda" and est.features <= host_b:
            placement = "device"
        elif dev_b is not None and est.features <= host_b:
            placement = "host"
            note = (f"{name}: {human(est.features)} of features do not fit in {human(dev_b)} ({device}); holding "
                    f"them in host memory ({human(host_b)}, {why}), batches copied to the device")  # fmt: skip
        else:
            placement = "stream"
    slots = shuffle_buffer
    if placement == "stream":
        room = max(0, host_b - val_bytes)
        fit = max(1, int(room // (2 * max(1, est.group_bytes))))  # a slot plus the transient of reading one
        slots = min(shuffle_buffer, fit)
        where = f"{human(dev_b)} ({device}) / " if dev_b is not None else ""
        cut = f" (cut from --shuffle-buffer {shuffle_buffer} to fit)" if slots < shuffle_buffer else ""
        if requested == "auto":
            note = (
                f"{name}: {human(est.features)} of features do not fit in {where}{human(host_b)} (host; {why}); "
                f"streaming row groups with a block shuffle of {slots} row groups{cut}"
            )
        elif slots < shuffle_buffer:
            note = f"{name}: streaming with a block shuffle of {slots} row groups{cut}; budget {human(host_b)} ({why})"
    return placement, slots, note


# ------------------------------------------------------------------------------------------------- host


class HostColumn:
    """A feature column held in host memory; ``column[rows]`` gathers the rows there and copies them to the
    training device (the values of a device tensor's ``[rows]``)."""

    def __init__(self, host: Tensor, device: torch.device) -> None:
        self.host, self.device = host, device
        self.shape, self.dtype = host.shape, host.dtype

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, rows) -> Tensor:
        if isinstance(rows, Tensor):
            rows = rows.cpu()
        out = self.host[rows]
        if self.device.type == "cuda":
            return out.pin_memory().to(self.device, non_blocking=True)
        return out.to(self.device)


def host_data(data: TensorData, device: torch.device) -> TensorData:
    """``data`` (loaded on the CPU) with its feature columns kept on the host and the rest on ``device``."""
    data.inputs = {c: HostColumn(t, device) for c, t in data.inputs.items()}
    if data.target is not None:
        data.target = data.target.to(device)
    data.place = device
    data.placement = "host"
    return data


# ------------------------------------------------------------------------------------------------- stream


class RowsHeld:
    """The rows of a column held in memory (the val rows of a streamed table): ``column[rows]`` for global row
    indices among them; another row is an error (the streamed train rows arrive by batch)."""

    def __init__(self, rows: np.ndarray, values: Tensor, total: int) -> None:
        self.values, self.device = values, values.device
        self.shape = (total, *values.shape[1:])
        self.dtype = values.dtype
        pos = np.full(total, -1, np.int64)
        pos[rows] = np.arange(len(rows))
        self.pos = torch.as_tensor(pos, device=values.device)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> Tensor:
        if isinstance(rows, slice):
            rows = torch.arange(*rows.indices(self.shape[0]), device=self.device)
        elif isinstance(rows, int):
            rows = torch.tensor([rows], device=self.device)
            return self[rows][0]
        p = self.pos[rows.to(self.device)]
        if bool((p < 0).any()):
            raise CmkdError(
                "a streamed table holds only its val rows in memory; this step reads other rows "
                "(use --data-placement device or host)"
            )
        return self.values[p]


class StreamSource:
    """Row groups of the input columns of one or more aligned tables, read on demand."""

    def __init__(self, sources: Mapping[str, TableSource], inputs: Sequence[str]) -> None:
        self.sources, self.inputs = sources, list(inputs)
        first = sources[self.inputs[0]]
        self.units = [(g[2], g[2] + g[3]) for g in first.groups]  # (start, stop) global rows
        self.dims = {c: sources[c].column_dim(c) for c in self.inputs}

    def read_column(self, k: int, column: str) -> np.ndarray:
        start, stop = self.units[k]
        return _read_range(self.sources[column], column, start, stop, self.dims[column])


def _read_range(src: TableSource, column: str, start: int, stop: int, dim: int) -> np.ndarray:
    parts = []
    for k, (_, _, s, n) in enumerate(src.groups):
        if s + n <= start or s >= stop:
            continue
        a = src.group_array(k, column, dim)
        parts.append(a[max(0, start - s) : min(n, stop - s)])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class StreamBatches:
    """The trainer's batch source for a streamed table (see the module docstring)."""

    def __init__(self, data: StreamData, index: Tensor, batch_size: int | None, dist=None) -> None:
        self.data = data
        self.rank, self.world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        train = np.zeros(len(data), bool)
        train[index.cpu().numpy()] = True
        self.train = train
        self.unit_rows = np.asarray([int(train[a:b].sum()) for a, b in data.stream.units])
        self.rows = n = int(train.sum())
        self.batch_size, self.steps_per_epoch = batch_plan(n, batch_size, self.world)
        # a row group holding more than 1/(4 W) of the train rows (few row groups: small tables): whole row groups
        # cannot be shared out evenly, so every process reads every row group and keeps every W-th train row of
        # it (no process is left with fewer rows than steps: an empty batch would give a NaN loss)
        self.interleave = self.world > 1 and int(self.unit_rows.max(initial=0)) * 4 * self.world > n

    def _my_rows(self, units, rank: int | None = None) -> int:
        """Train rows of ``units`` that process ``rank`` (default: this one) reads."""
        rows = self.unit_rows[np.asarray(units, dtype=np.int64)]
        if not self.interleave:
            return int(rows.sum())
        r = self.rank if rank is None else rank
        return int(np.maximum(0, (rows - r + self.world - 1) // self.world).sum())

    def plan(self, generator: torch.Generator) -> tuple[list[int], list[list[int]]]:
        """This rank's row groups in epoch order and every rank's batch sizes (one permutation per epoch)."""
        order = torch.randperm(len(self.unit_rows), generator=generator).numpy()
        order = order[self.unit_rows[order] > 0]
        if self.world == 1:
            mine = list(order)
            n, bs, steps = self.rows, self.batch_size, self.steps_per_epoch
            sizes = [[bs] * (steps - 1) + [n - bs * (steps - 1)]]
            return mine, sizes
        if self.interleave:
            sizes = [
                [len(a) for a in np.array_split(np.arange(self._my_rows(order, r)), self.steps_per_epoch)]
                for r in range(self.world)
            ]
            return list(order), sizes
        before = np.concatenate([[0], np.cumsum(self.unit_rows[order])[:-1]])
        owner = np.minimum(self.world - 1, (before * self.world) // max(1, self.rows))
        sizes = []
        for r in range(self.world):
            n_r = int(self.unit_rows[order][owner == r].sum())
            sizes.append([len(a) for a in np.array_split(np.arange(n_r), self.steps_per_epoch)])
        return list(order[owner == self.rank]), sizes

    def epoch(self, generator: torch.Generator) -> Iterator:
        mine, sizes = self.plan(generator)
        my, steps = sizes[self.rank], self.steps_per_epoch
        totals = [sum(s[i] for s in sizes) for i in range(steps)]
        data, stream = self.data, self.data.stream
        dims = stream.dims
        carry_idx = np.zeros(0, np.int64)
        carry = {c: np.zeros((0, d), np.float32) for c, d in dims.items()}
        step = 0
        for b in range(0, len(mine), data.slots):
            block = mine[b : b + data.slots]
            n_block = self._my_rows(block)
            ring = data.ring(n_block)  # reusable slots: no new block-sized arrays per block (allocator growth)
            rows = np.empty(n_block, np.int64)
            off = 0
            for k in block:
                start, stop = stream.units[int(k)]
                keep = np.nonzero(self.train[start:stop])[0]
                if self.interleave:
                    keep = keep[self.rank :: self.world]
                for c in dims:  # one column of one row group at a time
                    ring[c][off : off + len(keep)] = stream.read_column(int(k), c)[keep]
                rows[off : off + len(keep)] = keep + start
                off += len(keep)
            perm = torch.randperm(n_block, generator=generator).numpy()
            pos = 0
            while step < steps and len(carry_idx) + n_block - pos >= my[step]:
                need = my[step]
                c_n = min(len(carry_idx), need)
                p = perm[pos : pos + need - c_n]
                pos += len(p)
                idx = np.concatenate([carry_idx[:c_n], rows[p]])
                inputs = {c: np.concatenate([carry[c][:c_n], ring[c][p]]) for c in dims}
                carry_idx, carry = carry_idx[c_n:], {c: v[c_n:] for c, v in carry.items()}
                yield self._batch(idx, inputs, totals[step])
                step += 1
            p = perm[pos:]  # fewer rows than the next batch: copied out of the ring before it is refilled
            carry_idx = np.concatenate([carry_idx, rows[p]])
            carry = {c: np.concatenate([carry[c], ring[c][p]]) for c in dims}
        while step < steps:  # W > 1 only: a rank whose rows ran out (its batches are sized to its rows)
            yield self._batch(carry_idx, carry, totals[step])
            carry_idx, carry = carry_idx[:0], {c: v[:0] for c, v in carry.items()}
            step += 1

    def _batch(self, idx: np.ndarray, inputs: dict[str, np.ndarray], total: int):
        device = self.data.device
        index = torch.as_tensor(idx, device=device)
        cols = {c: torch.from_numpy(v).to(device) for c, v in inputs.items()}
        target = self.data.target
        share = len(idx) * self.world / total if self.world > 1 else 1.0
        return StreamBatch(cols, None if target is None else target[index], index, share)


@dataclass
class StreamBatch:
    """A streamed training batch (the fields of ``engine.method.Batch``, which ``data`` does not import)."""

    inputs: dict[str, Tensor]
    target: Tensor | None
    index: Tensor
    share: float = 1.0


@dataclass
class StreamData(TensorData):
    """A table too big for memory: the small columns and the val rows in memory, the train rows streamed."""

    stream: StreamSource | None = None
    slots: int = 8
    _ring: dict | None = None
    _ring_rows: int = 0

    def ring(self, rows: int) -> dict[str, np.ndarray]:
        if self._ring is None or rows > self._ring_rows:
            self._ring_rows = max(rows, self._ring_rows)
            self._ring = {c: np.empty((self._ring_rows, d), np.float32) for c, d in self.stream.dims.items()}
        return self._ring

    def train_batches(self, index: Tensor, batch_size: int | None, dist=None) -> StreamBatches:
        return StreamBatches(self, index, batch_size, dist)

    def stream_rows(self, index: Tensor, columns: Sequence[str] | None = None) -> Iterator[tuple[Tensor, dict]]:
        """Rows ``index`` (a subset, taken in file order) as (global indices, {column: device tensor}) chunks of
        one row group each: a streamed pass (input statistics, a teacher's cache)."""
        want = np.zeros(len(self), bool)
        want[index.cpu().numpy()] = True
        for k, (start, stop) in enumerate(self.stream.units):
            keep = np.nonzero(want[start:stop])[0]
            if not len(keep):
                continue
            cols = {c: torch.from_numpy(self.stream.read_column(k, c)[keep]).to(self.device)
                    for c in (columns or self.stream.inputs)}  # fmt: skip
            yield torch.as_tensor(keep + start, device=self.device), cols


def stream_data(
    base: TensorData, sources: Mapping[str, TableSource], inputs: Sequence[str], device: torch.device, slots: int
) -> StreamData:
    """``base`` (the small columns, loaded without features) as a streamed table: val rows gathered once."""
    stream = StreamSource(sources, inputs)
    val = np.nonzero(base.split == "val")[0]
    held = {}
    for c in inputs:
        values = np.empty((len(val), stream.dims[c]), np.float32)
        if len(val):
            starts = np.asarray([u[0] for u in stream.units])
            which = np.searchsorted(starts, val, side="right") - 1
            for k in np.unique(which):
                sel = np.nonzero(which == k)[0]
                start, stop = stream.units[int(k)]
                values[sel] = _read_range(sources[c], c, start, stop, stream.dims[c])[val[sel] - start]
        held[c] = RowsHeld(val, _to_tensor(values, device), len(base))
    fields = {f: getattr(base, f) for f in TensorData.__dataclass_fields__}
    fields.update(inputs=held, place=device, placement="stream")
    data = StreamData(**fields, stream=stream, slots=slots)
    for c, col in held.items():  # a streamed pass over a column (input statistics: nn.models.Standardize.fit)
        col.stream_rows = lambda index, c=c: ((i, cols[c]) for i, cols in data.stream_rows(index, [c]))
    return data


SHUFFLE_QUALITY = 0.9
"""The fraction of the classes a stream's buffer of row groups should hold on average (else a note says so)."""


def _classes_per_buffer(unit_classes: list[np.ndarray], slots: int, classes: int, draws: int = 64) -> float:
    """Mean fraction of the classes in ``slots`` row groups drawn at random (a fixed generator: the same note on
    every run)."""
    rng = np.random.default_rng(0)
    k = min(slots, len(unit_classes))
    seen = [len(np.unique(np.concatenate([unit_classes[i] for i in rng.choice(len(unit_classes), k, False)])))
            for _ in range(draws)]  # fmt: skip
    return float(np.mean(seen)) / classes


def shuffle_quality(data: StreamData) -> str | None:
    """A note when the stream's block shuffle mixes classes poorly: rows grouped by class (``extract`` writes class
    folders in order) put few classes in each row group, so a buffer of ``--shuffle-buffer`` row groups holds few
    classes and batches are far from a uniform draw (spec B7). None when the buffer holds 90 % of the classes on
    average, or for multi-label tables."""
    if data.task != "multiclass" or data.labels is None or not data.num_classes:
        return None
    train = data.split == "train"
    units = [np.unique(data.labels[a:b][train[a:b]]) for a, b in data.stream.units]
    units = [u for u in units if len(u)]
    classes = len(np.unique(np.concatenate(units))) if units else 0
    have = _classes_per_buffer(units, data.slots, classes) if classes >= 2 else 1.0
    if have >= SHUFFLE_QUALITY:
        return None
    need = next((k for k in range(data.slots + 1, len(units) + 1)
                 if _classes_per_buffer(units, k, classes) >= SHUFFLE_QUALITY), len(units))  # fmt: skip
    return (
        f"{data.source}: a buffer of {data.slots} row groups holds {have:.0%} of the {classes} classes on average "
        f"(rows grouped by class?), so streamed batches mix classes poorly; use --shuffle-buffer {need} or shuffle "
        "the table's rows once"
    )


def check_stream_input(path: str) -> None:
    if str(path) == "-":
        raise CmkdUsageError(
            "'-' (stdin) cannot be streamed: every epoch reads the table again; write it to a file first "
            "(cmkdtool table convert - -o data.arrow) or use --data-placement device"
        )
    if table_format(path) == "ipc-stream":
        raise CmkdUsageError(f"{path}: an Arrow IPC stream cannot be streamed; cmkdtool table convert it to a file")


def note(msg: str | None, quiet: bool) -> None:
    if msg and not quiet:
        print(f"note: {msg}", file=sys.stderr)


__all__ = [
    "PLACEMENTS",
    "HostColumn",
    "RowsHeld",
    "StreamBatches",
    "StreamData",
    "budgets",
    "choose",
    "estimate",
    "host_data",
    "parse_size",
    "stream_data",
]
