"""``cmkdtool table``: prepare a table once for many runs (a fast format, modalities aligned by id), out of core.

``convert_table`` rewrites a table (Parquet file, Arrow IPC file, folder of shards, or an IPC stream on stdin) as
an uncompressed Arrow IPC file (memory-mapped by every reader: no decode, pages shared between processes) or as
Parquet, row group by row group. ``join_tables`` writes the inner join of several tables on ``id`` in the first
table's row order: row group by row group when the tables are aligned (the same ids in the same order), otherwise
block by block (see ``join_tables``). Both hold a bounded number of rows in memory, never a whole table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.atomic import atomic_path
from cmkdtool.io.tables import RESERVED, ROW_GROUP_SIZE, TableSource, table_format

FORMATS = ("auto", "arrow", "parquet")
IPC_BATCH_ROWS = 8192
JOIN_BLOCK_ROWS = 65536
_ARROW_SUFFIXES = (".arrow", ".ipc", ".feather")


@dataclass
class TableWritten:
    """What a ``table`` command wrote."""

    path: str
    format: str
    rows: int
    columns: list[str]
    notes: list[str] = field(default_factory=list)


def output_format(output: str, fmt: str, input_format: str | None = None) -> str:
    """``arrow`` or ``parquet``: ``fmt`` when given, else from the output's suffix (.arrow/.ipc/.feather,
    .parquet), else the other format of the input (Parquet in, Arrow out)."""
    if fmt not in FORMATS:
        raise CmkdUsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    low = str(output).lower()
    if low.endswith(_ARROW_SUFFIXES):
        return "arrow"
    if low.endswith(".parquet"):
        return "parquet"
    return "parquet" if input_format == "ipc" else "arrow"


class _Writer:
    """Record batches out to an uncompressed Arrow IPC file (batches of ``rows``) or a zstd Parquet file (row
    groups of ``rows``), re-cut to that size whatever the incoming batch sizes."""

    def __init__(self, path, schema: pa.Schema, fmt: str, rows: int) -> None:
        self.fmt, self.rows, self.buf, self.count = fmt, rows, [], 0
        if fmt == "arrow":
            self.w = ipc.new_file(str(path), schema, options=ipc.IpcWriteOptions(compression=None))
        else:
            self.w = pq.ParquetWriter(str(path), schema, compression="zstd")
        self.schema = schema

    def write(self, table: pa.Table) -> None:
        self.buf.append(table)
        self.count += table.num_rows
        if self.count >= self.rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.buf:
            return
        t = pa.concat_tables(self.buf)
        cut = t.num_rows if final else t.num_rows - t.num_rows % self.rows
        head, rest = t.slice(0, cut), t.slice(cut)
        if head.num_rows:
            if self.fmt == "arrow":
                for b in head.combine_chunks().to_batches(max_chunksize=self.rows):
                    self.w.write_batch(b)
            else:
                self.w.write_table(head, row_group_size=self.rows)
        self.buf, self.count = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        self.w.close()


def _default_rows(fmt: str, rows: int | None) -> int:
    if rows is not None and rows < 1:
        raise CmkdUsageError("--batch-rows must be at least 1")
    return rows or (IPC_BATCH_ROWS if fmt == "arrow" else ROW_GROUP_SIZE)


def _stdin_batches() -> tuple[pa.Schema, Iterator[pa.Table]]:
    if sys.stdin.isatty():
        raise CmkdError("'-' reads an Arrow IPC stream from stdin, but stdin is a terminal; pipe a table in")
    try:
        reader = ipc.open_stream(sys.stdin.buffer)
    except pa.ArrowInvalid as e:
        raise CmkdError(f"<stdin>: not an Arrow IPC stream ({e}); pipe the output of a cmkdtool command") from e
    return reader.schema, (pa.Table.from_batches([b]) for b in reader)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def convert_table(input: str, output: str, *, format: str = "auto", batch_rows: int | None = None) -> TableWritten:
    """Rewrite table ``input`` (Parquet, Arrow IPC file, folder of shards, ``-``: an IPC stream on stdin) as
    ``output`` in ``format`` (``auto``: see ``output_format``): an uncompressed Arrow IPC file with record batches
    of ``batch_rows`` rows (default 8192), or Parquet (zstd) with row groups of ``batch_rows`` (default 65,536).
    Columns, types, field and schema metadata are kept. Reads one row group at a time; the output appears
    atomically."""
    if str(output) == "-":
        raise CmkdUsageError("table convert writes a file; give -o FILE.arrow or -o FILE.parquet")
    if str(input) != "-" and os.path.exists(output) and _same_file(input, output):
        raise CmkdUsageError(f"{output}: is also the input; write to another file")
    kind = table_format(input)
    fmt = output_format(output, format, kind)
    rows = _default_rows(fmt, batch_rows)
    if kind == "stdin":
        schema, tables = _stdin_batches()
    else:
        src = TableSource(input)
        src.check_shards(src.schema.names)
        schema = src.schema
        tables = (src.parts[p].read_group(g, schema.names) for p, g, _, _ in src.groups)
    n = 0
    with atomic_path(output) as tmp:
        w = _Writer(tmp, schema, fmt, rows)
        try:
            for t in tables:
                w.write(t.cast(schema) if t.schema != schema else t)
                n += t.num_rows
        finally:
            w.close()
    pa.default_memory_pool().release_unused()
    return TableWritten(str(output), fmt, n, list(schema.names))


def _ids(src: TableSource) -> pa.ChunkedArray:
    if "id" not in src.schema.names:
        raise CmkdError(f"{src.name}: no 'id' column; every feature table needs a unique string id per row")
    parts = [p.read(["id"]).column("id") for p in src.parts]
    ids = pa.chunked_array([c for p in parts for c in p.chunks], type=parts[0].type)
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise CmkdError(f"{src.name}: column 'id' must be strings, found {ids.type}; cast it with str()")
    if ids.null_count:
        raise CmkdError(f"{src.name}: column 'id' has {ids.null_count} null values; every row needs an id")
    if len(pc.unique(ids)) != len(ids):
        counts = pc.value_counts(ids)
        dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
        raise CmkdError(f"{src.name}: duplicate ids (e.g. '{dup}'); ids must be unique within a table")
    return ids


def _read_rows(src: TableSource, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows ``rows`` (global row numbers, any order) of ``columns`` of ``src``, reading only the row groups that
    hold them, one at a time."""
    starts = np.asarray([g[2] for g in src.groups] + [src.num_rows])
    which = np.searchsorted(starts, rows, side="right") - 1
    pieces, order = [], []
    for k in np.unique(which):
        sel = np.nonzero(which == k)[0]
        part, g, start, _ = src.groups[int(k)]
        t = src.parts[part].read_group(g, columns)
        pieces.append(t.take(pa.array(rows[sel] - start)))
        order.append(sel)
    if not pieces:
        return src.parts[0].read_group(0, columns).slice(0, 0) if src.groups else pa.table({})
    t = pa.concat_tables(pieces)
    inverse = np.empty(len(rows), np.int64)
    inverse[np.concatenate(order)] = np.arange(len(rows))
    return t.take(pa.array(inverse))


def join_tables(
    inputs: Sequence[str], output: str, *, format: str = "auto", batch_rows: int | None = None,
    block_rows: int = JOIN_BLOCK_ROWS,
) -> TableWritten:  # fmt: skip
    """Write the inner join on ``id`` of ``inputs`` (Parquet files, Arrow IPC files or folders of shards) to
    ``output``, in the first table's row order: the first table's columns, then each other table's columns but
    ``id``. ``label``/``labels``/``split`` present in several tables must agree; any other column may live in one
    table only. Rows missing from a table are dropped (counted in ``notes``).

    Memory: the id columns (read whole) plus about ``block_rows`` rows of every column. When every other table has
    the same ids in the same order (an aligned join), each table is read once, sequentially. Otherwise each block
    of ``block_rows`` output rows reads, from every other table, the row groups that hold its rows: a table in an
    unrelated order is then read up to (rows / ``block_rows``) times (raise ``--block-rows`` when memory allows).
    The output is aligned, so runs that read it stream it row group by row group."""
    if len(inputs) < 2:
        raise CmkdUsageError("table join needs at least two tables")
    if any(str(p) == "-" for p in inputs):
        raise CmkdUsageError("table join reads files, not stdin ('-'); write the stream to a file first")
    if str(output) == "-":
        raise CmkdUsageError("table join writes a file; give -o FILE.parquet or -o FILE.arrow")
    if block_rows < 1:
        raise CmkdUsageError("--block-rows must be at least 1")
    for p in inputs:
        if os.path.exists(output) and _same_file(p, output):
            raise CmkdUsageError(f"{output}: is also an input; write to another file")
    srcs = [TableSource(p) for p in inputs]
    for s in srcs:
        s.check_shards(s.schema.names)
    fmt = output_format(output, format, srcs[0].kind)
    rows = _default_rows(fmt, batch_rows)
    ids = [_ids(s) for s in srcs]
    notes: list[str] = []
    owner = {c: srcs[0].name for c in srcs[0].schema.names}
    fields = list(srcs[0].schema)
    cols: list[list[str]] = [list(srcs[0].schema.names)]
    agree: list[list[str]] = [[]]
    for s in srcs[1:]:
        mine, same = [], []
        for f in s.schema:
            if f.name == "id":
                continue
            if f.name in owner:
                if f.name not in RESERVED:
                    raise CmkdError(f"column '{f.name}' is in both {owner[f.name]} and {s.name}; rename one of them")
                same.append(f.name)
                continue
            owner[f.name] = s.name
            fields.append(f)
            mine.append(f.name)
        cols.append(mine)
        agree.append(same)
    keep = np.ones(len(ids[0]), bool)
    positions = []
    for other in ids[1:]:
        pos = pc.index_in(ids[0], value_set=other).to_numpy(zero_copy_only=False)
        found = ~np.isnan(pos) if pos.dtype.kind == "f" else np.ones(len(pos), bool)
        keep &= found
        positions.append(pos)
    lrows = np.nonzero(keep)[0]
    if len(lrows) == 0:
        raise CmkdError(
            f"{srcs[1].name}: no id in common with {srcs[0].name}; tables of different modalities must share the "
            "'id' of each sample"
        )
    for s, other in zip(srcs[1:], ids[1:], strict=True):
        matched = int(keep.sum())
        if len(other) != matched or len(ids[0]) != matched:
            notes.append(f"join on id with {s.name}: dropped {len(other) - matched} rows of {s.name} with no match")
    if len(lrows) != len(ids[0]):
        notes.append(f"join on id: dropped {len(ids[0]) - len(lrows)} rows of {srcs[0].name} missing elsewhere")
    rpos = [np.asarray(p[lrows], dtype=np.int64) for p in positions]
    aligned = len(lrows) == len(ids[0]) and all(
        len(r) == s.num_rows and bool((r == np.arange(len(r))).all()) for r, s in zip(rpos, srcs[1:], strict=True)
    )
    schema = pa.schema(fields, metadata=srcs[0].schema.metadata)
    step = max(block_rows, 1)
    with atomic_path(output) as tmp:
        w = _Writer(tmp, schema, fmt, rows)
        try:
            if aligned:
                for p, g, start, n in srcs[0].groups:
                    left = srcs[0].parts[p].read_group(g, cols[0])
                    w.write(_combine(left, srcs, cols, agree, [np.arange(start, start + n)] * len(rpos), schema))
            else:
                for b in range(0, len(lrows), step):
                    left = _read_rows(srcs[0], lrows[b : b + step], cols[0])
                    w.write(_combine(left, srcs, cols, agree, [r[b : b + step] for r in rpos], schema))
                    pa.default_memory_pool().release_unused()
        finally:
            w.close()
    pa.default_memory_pool().release_unused()
    if not aligned:
        notes.append(f"{srcs[0].name}: the tables are not aligned by id; joined block by block ({step} rows per block)")
    return TableWritten(str(output), fmt, int(len(lrows)), list(schema.names), notes)


def _combine(left: pa.Table, srcs, cols, agree, rows: list[np.ndarray], schema: pa.Schema) -> pa.Table:
    arrays = [left.column(c) for c in cols[0]]
    for s, mine, same, r in zip(srcs[1:], cols[1:], agree[1:], rows, strict=True):
        # aligned: a contiguous range, read by row groups in order (a range maps to consecutive groups)
        t = _read_rows(s, r, [*mine, *same])
        for c in same:
            if not t.column(c).equals(left.column(c)):
                raise CmkdError(
                    f"{s.name}: column '{c}' disagrees with {srcs[0].name} on the same ids; keep it in one table"
                )
        arrays.extend(t.column(c) for c in mine)
    return pa.Table.from_arrays(arrays, schema=schema)


__all__ = ["TableWritten", "convert_table", "join_tables", "output_format"]
