"""Parquet feature tables (see docs/formats.md).

A feature table has an ``id`` string column (unique, non-null), optionally ``label`` (int64) or ``labels``
(list<int64>, multi-label), optionally ``split`` (train/val/test), and one column per modality stored as
``fixed_size_list<float32>[D]`` (row-major flattened; field metadata ``shape`` gives the sample shape when it
is not a vector). Schema metadata key ``cmkdtool`` holds JSON provenance.

Several tables join on ``id`` (inner join, in the order of the first table). ``-`` reads or writes an Arrow
IPC stream on stdin/stdout, since Parquet cannot be streamed through a pipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (registers pa.compute)
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.atomic import atomic_path

META_KEY = b"cmkdtool"
RESERVED = ("id", "label", "labels", "split")
SPLITS = ("train", "val", "test")
ROW_GROUP_SIZE = 65536


def _display(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


@dataclass
class FeatureTable:
    """An Arrow table of features plus what cmkdtool knows about it (sources, provenance metadata)."""

    table: pa.Table
    sources: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: every field of the files read (also those not loaded), for hints about missing or misspelled columns
    available: list[pa.Field] = field(default_factory=list)
    #: feature columns already checked for NaN/inf while reading (``array`` skips its N x D check for them)
    finite: set[str] = field(default_factory=set)
    #: feature columns left on disk (a streamed run): column -> its ``TableSource``; ``require`` and ``shape``
    #: answer for them from the footer, ``array`` refuses them
    lazy: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return " + ".join(self.sources) or "<table>"

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.table.column_names)

    def modality_columns(self) -> list[str]:
        """Columns holding features (every list-of-float column that is not reserved)."""
        return _feature_names(self.table.schema)

    def require(self, column: str, what: str = "column") -> None:
        if column not in self.table.column_names and column not in self.lazy:
            fields = _union_fields([*self.table.schema, *self.available])
            have = ", ".join(_feature_names(fields)) or "none"
            hint = _closest(column, [f.name for f in fields])
            raise CmkdError(
                f"{self.name}: no {what} '{column}'"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; feature columns here: {have}"
            )

    def ids(self) -> np.ndarray:
        return np.asarray(self.table.column("id").to_numpy(zero_copy_only=False), dtype=object)

    def shape(self, column: str) -> tuple[int, ...]:
        """Per-sample shape of a modality column: field metadata ``shape`` or ``[D]``."""
        self.require(column)
        if column in self.lazy:
            src = self.lazy[column]
            f, dim = src.schema.field(column), src.column_dim(column)
        else:
            f = self.table.schema.field(column)
            dim = _column_dim(self.table.column(column), f, self.name)
        if f.metadata and b"shape" in f.metadata:
            try:
                shape = tuple(int(s) for s in json.loads(f.metadata[b"shape"]))
            except (ValueError, TypeError) as e:
                raise CmkdError(f"{self.name}: column '{column}' has unreadable shape metadata: {e}") from e
            if int(np.prod(shape)) != dim:
                raise CmkdError(
                    f"{self.name}: column '{column}' shape metadata {list(shape)} does not match its width {dim}"
                )
            return shape
        return (dim,)

    def array(self, column: str, check_finite: bool = True) -> np.ndarray:
        """The column as a float32 (N, D) array; zero-copy when the column is one null-free chunk."""
        self.require(column)
        if column in self.lazy:
            raise CmkdError(f"{self.name}: column '{column}' is streamed from disk (--data-placement stream), not held")
        f = self.table.schema.field(column)
        col = self.table.column(column)
        dim = _column_dim(col, f, self.name)
        arr = _column_numpy(col, column, self.name, self.num_rows, dim)
        if check_finite and column not in self.finite:
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.nonzero(bad.any(axis=1))[0]
                has_id = "id" in self.column_names
                first = self.table.column("id")[int(rows[0])].as_py() if has_id else rows[0]
                raise CmkdError(
                    f"{self.name}: column '{column}' has {int(bad.sum())} NaN/inf values in {len(rows)} rows "
                    f"(first at id '{first}'); clean or impute them before using this table"
                )
        return arr

    def has_labels(self) -> bool:
        return "label" in self.column_names or "labels" in self.column_names

    def task(self) -> str:
        if "label" in self.column_names:
            return "multiclass"
        if "labels" in self.column_names:
            return "multilabel"
        raise CmkdError(f"{self.name}: no 'label' (int) or 'labels' (list<int>) column; this command needs labels")

    def class_names(self) -> list[str] | None:
        names = self.meta.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else None

    def label_array(self) -> np.ndarray:
        """``label`` as int64 (N,), or ``labels`` as a list-of-index object array (N,)."""
        if self.task() == "multiclass":
            col = self.table.column("label")
            if not pa.types.is_integer(col.type):
                raise CmkdError(f"{self.name}: column 'label' must be integer class indices, found {col.type}")
            if col.null_count:
                raise CmkdError(f"{self.name}: column 'label' has {col.null_count} null rows; drop them")
            return col.to_numpy().astype(np.int64)
        col = self.table.column("labels")
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not pa.types.is_integer(
            col.type.value_type
        ):
            raise CmkdError(f"{self.name}: column 'labels' must be list<int64> of class indices, found {col.type}")
        if col.null_count:
            raise CmkdError(f"{self.name}: column 'labels' has {col.null_count} null rows; use [] for none")
        return np.asarray([np.asarray(v, dtype=np.int64) for v in col.to_pylist()], dtype=object)

    def split_array(self, ratio: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
        """The ``split`` column, or a deterministic split from hashing each id with ``seed`` (see docs)."""
        if "split" in self.column_names:
            col = self.table.column("split")
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                raise CmkdError(f"{self.name}: column 'split' must be strings (train/val/test), found {col.type}")
            codes = pa.compute.index_in(col, value_set=pa.array(SPLITS, col.type))
            if codes.null_count:
                bad = pa.compute.unique(pa.compute.filter(col, pa.compute.is_null(codes))).to_pylist()
                bad = sorted(str(v) for v in bad)
                raise CmkdError(f"{self.name}: column 'split' has values {bad[:5]}; allowed are train, val, test")
            return np.asarray(SPLITS, dtype=object)[codes.to_numpy(zero_copy_only=False)]
        return hash_split(self.ids(), ratio, seed)


def _feature_names(fields: Iterable[pa.Field]) -> list[str]:
    out = []
    for f in fields:
        if f.name in RESERVED:
            continue
        if pa.types.is_fixed_size_list(f.type) or pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            if pa.types.is_floating(f.type.value_type):
                out.append(f.name)
    return out


def _union_fields(fields: Iterable[pa.Field]) -> list[pa.Field]:
    seen: dict[str, pa.Field] = {}
    for f in fields:
        seen.setdefault(f.name, f)
    return list(seen.values())


def hash_split(ids: Iterable[str], ratio: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Assign train/val/test by hashing ``f"{seed}:{id}"``: stable across row order, joins and machines."""
    r = np.asarray(ratio, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or r.sum() <= 0:
        raise CmkdError(f"split ratio must be three non-negative numbers train,val,test; got {list(ratio)}")
    edges = np.cumsum(r / r.sum())

    def unit(i: object) -> float:
        digest = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64

    u = np.fromiter((unit(i) for i in ids), dtype=np.float64)
    which = np.searchsorted(edges, u, side="right").clip(0, 2)
    return np.asarray(SPLITS, dtype=object)[which]


def _closest(name: str, options: Iterable[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return m[0] if m else None


def _column_dim(col: pa.ChunkedArray, f: pa.Field, name: str) -> int:
    t = f.type
    if pa.types.is_fixed_size_list(t):
        if not pa.types.is_floating(t.value_type):
            raise CmkdError(f"{name}: column '{f.name}' holds {t.value_type}, expected float32 features")
        return t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not pa.types.is_floating(t.value_type):
            raise CmkdError(f"{name}: column '{f.name}' holds {t.value_type}, expected float32 features")
        lengths = set()
        for c in col.chunks:
            lengths.update(np.unique(c.value_lengths().drop_null().to_numpy(zero_copy_only=False)).tolist())
        if len(lengths) > 1:
            raise CmkdError(
                f"{name}: column '{f.name}' has rows of different lengths {sorted(lengths)[:4]}; "
                "every sample of a modality must have the same size"
            )
        return int(lengths.pop()) if lengths else 0
    raise CmkdError(f"{name}: column '{f.name}' is {t}, not a feature column (fixed_size_list<float32>)")


# ----------------------------------------------------------------------------------------------- reading


PARQUET_MAGIC = b"PAR1"
ARROW_MAGIC = b"ARROW1"
SHARD_SUFFIXES = (".parquet", ".arrow", ".ipc", ".feather")


def table_format(path: str | os.PathLike) -> str:
    """What ``path`` holds: ``stdin`` (``-``), ``folder`` (a folder of shards), ``ipc`` (an Arrow IPC file, by its
    magic bytes ``ARROW1``), ``ipc-stream`` (an Arrow IPC stream written to a file) or ``parquet`` (anything else;
    the Parquet reader says what is wrong with a foreign file)."""
    if str(path) == "-":
        return "stdin"
    p = Path(path)
    if not p.exists():
        raise CmkdError(f"{path}: no such file")
    if p.is_dir():
        return "folder"
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CmkdError(f"{path}: cannot read ({e.strerror or e})") from e
    if head.startswith(ARROW_MAGIC):
        return "ipc"
    if head.startswith(b"\xff\xff\xff\xff"):
        return "ipc-stream"
    return "parquet"


def shard_paths(folder: str | os.PathLike) -> list[str]:
    """The shards of a folder table: its Parquet / Arrow IPC files (``*.parquet``, ``*.arrow``, ``*.ipc``,
    ``*.feather``; not hidden, not starting with ``_``) in sorted name order."""
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.endswith(SHARD_SUFFIXES) and not n.startswith((".", "_")) and (Path(folder) / n).is_file()
    )
    if not names:
        raise CmkdError(
            f"{folder}: is a folder with no table shards (*.parquet or *.arrow files); give a Parquet file or a "
            "folder of shards"
        )
    return [str(Path(folder) / n) for n in names]


def _foreign(path: str, e: BaseException) -> CmkdError:
    return CmkdError(
        f"{path}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); give a "
        "table written by cmkdtool or by pyarrow as docs/formats.md describes"
    )


class _Part:
    """One file of a table (a Parquet file or a memory-mapped Arrow IPC file) and its row groups (record batches
    for IPC), addressable one at a time."""

    def __init__(self, path: str, kind: str) -> None:
        self.path, self.kind = path, kind
        try:
            if kind == "ipc":
                self._reader = ipc.open_file(pa.memory_map(path, "r"))
                self.schema = self._reader.schema
                self.group_rows = [self._reader.get_batch(i).num_rows for i in range(self._reader.num_record_batches)]
            else:
                # no pre-buffering of whole column chunks, buffered page reads: a row group read holds about its
                # decoded bytes plus 1 MiB, not its compressed chunk as well (measured: pool peak 46 MB, not 107)
                self._reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
                self.schema = self._reader.schema_arrow
                md = self._reader.metadata
                self.group_rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            if kind == "ipc":
                raise CmkdError(f"{path}: not a readable Arrow IPC file ({str(e).splitlines()[0]})") from e
            raise _foreign(path, e) from e
        self.num_rows = int(sum(self.group_rows))

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        """The whole file (only ``columns``, in file order, when given)."""
        sel = None if columns is None else [c for c in self.schema.names if c in set(columns)]
        try:
            if self.kind == "ipc":
                t = self._reader.read_all()
                return t if sel is None else t.select(sel)
            return self._reader.read(columns=sel)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise _foreign(self.path, e) from e

    def read_group(self, g: int, columns: Sequence[str]) -> pa.Table:
        """Row group (record batch) ``g``, columns ``columns``."""
        try:
            if self.kind == "ipc":
                batch = self._reader.get_batch(g)
                return pa.Table.from_batches([batch]).select(list(columns))
            return self._reader.read_row_group(g, columns=list(columns))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise _foreign(self.path, e) from e


class TableSource:
    """A table on disk read lazily: a Parquet file, a memory-mapped Arrow IPC file, or a folder of such shards
    (sorted names; one logical table). Its row groups (record batches of IPC files) are numbered across the
    shards in order; ``groups[k] = (part, group, first_row, rows)``. Nothing but the footers is read on opening."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        kind = table_format(path)
        if kind == "stdin":
            raise CmkdError("'-' (stdin) cannot be read row group by row group; write the table to a file first")
        if kind == "ipc-stream":
            raise CmkdError(
                f"{path}: an Arrow IPC stream, which cannot be read row group by row group; convert it with "
                f"cmkdtool table convert {path} -o FILE.arrow"
            )
        files = shard_paths(path) if kind == "folder" else [self.path]
        self.parts = []
        for f in files:
            k = table_format(f) if kind == "folder" else kind
            if k == "ipc-stream":
                raise CmkdError(f"{f}: an Arrow IPC stream, not a file; convert it with cmkdtool table convert")
            self.parts.append(_Part(f, k))
        self.kind = kind
        self.schema = self.parts[0].schema
        self.groups: list[tuple[int, int, int, int]] = []
        start = 0
        for i, part in enumerate(self.parts):
            for g, n in enumerate(part.group_rows):
                self.groups.append((i, g, start, n))
                start += n
        self.num_rows = start

    @property
    def name(self) -> str:
        return self.path

    def column_dim(self, column: str) -> int:
        """The width of feature column ``column`` from the schema (for ``list<float>`` columns: the first row)."""
        if column not in self.schema.names:
            hint = _closest(column, self.schema.names)
            raise CmkdError(
                f"{self.name}: no column '{column}'" + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; feature columns here: {', '.join(_feature_names(self.schema)) or 'none'}"
            )  # fmt: skip
        f = self.schema.field(column)
        if pa.types.is_fixed_size_list(f.type):
            if not pa.types.is_floating(f.type.value_type):
                raise CmkdError(f"{self.name}: column '{column}' holds {f.type.value_type}, expected float32 features")
            return f.type.list_size
        first = next((k for k, g in enumerate(self.groups) if g[3]), None)
        if first is None:
            return 0
        part, g, _, _ = self.groups[first]
        col = self.parts[part].read_group(g, [column]).column(column)
        return _column_dim(col, f, self.name)

    def group_array(self, k: int, column: str, dim: int | None = None) -> np.ndarray:
        """Row group ``k`` of feature column ``column`` as a float32 (rows, D) array (zero-copy from a
        memory-mapped IPC file when it is float32 without nulls), checked for nulls and NaN/inf."""
        part, g, start, n = self.groups[k]
        p = self.parts[part]
        t = p.read_group(g, [column])
        col = t.column(column)
        if dim is None:
            dim = _column_dim(col, t.schema.field(column), p.path)
        arr = _column_numpy(col, column, p.path, n, dim)
        _check_finite_chunk(arr, column, p, g, start)
        return arr

    def check_shards(self, columns: Sequence[str]) -> None:
        """Every shard of a folder has the ``columns`` of the first with the same type and metadata."""
        first = self.parts[0]
        for p in self.parts[1:]:
            for c in columns:
                if c not in p.schema.names:
                    raise CmkdError(f"{p.path}: no column '{c}', which {first.path} has; shards need the same columns")
                a, b = first.schema.field(c), p.schema.field(c)
                if a.type != b.type or (a.metadata or {}).get(b"shape") != (b.metadata or {}).get(b"shape"):
                    what = "width" if _is_feature_type(a.type) else "type"
                    raise CmkdError(
                        f"{p.path}: column '{c}' is {b.type} but {first.path} has {a.type}; shards of one table need "
                        f"the same {what} for every column"
                    )

    def read_column(self, column: str) -> tuple[pa.FixedSizeListArray, bool]:
        """Feature column ``column`` read row group by row group into one preallocated float32 array, wrapped as a
        ``fixed_size_list<float32>[D]`` Arrow array without a copy; and whether every value is finite (checked
        per row group, so the load needs no N x D temporary). Nulls and ragged rows are errors, as for
        ``FeatureTable.array``."""
        dim = self.column_dim(column)
        out = np.empty((self.num_rows, dim), np.float32)
        finite = True
        for part, g, start, n in self.groups:
            for offset, arr in self._group_chunks(part, g, column, dim, 8192):
                out[start + offset : start + offset + len(arr)] = arr
                finite = finite and bool(np.isfinite(arr).all())
            if n * dim * 4 >= 1 << 24:
                pa.default_memory_pool().release_unused()
        flat = pa.array(out.reshape(-1))  # zero-copy: Arrow shares the numpy buffer (kept alive by the array)
        return pa.FixedSizeListArray.from_arrays(flat, dim), finite

    def iter_column_chunks(self, column: str, chunk_rows: int = 8192) -> Iterator[np.ndarray]:
        """Float32 (n, D) arrays of ``column`` in row order, row group by row group, at most ``chunk_rows`` rows
        each, each checked for NaN/inf. Parquet row groups are decoded ``chunk_rows`` at a time (memory: a chunk,
        not a row group)."""
        dim = self.column_dim(column)
        for part, g, start, _ in self.groups:
            for offset, arr in self._group_chunks(part, g, column, dim, chunk_rows):
                _check_finite_chunk(arr, column, self.parts[part], g, start, offset)
                yield arr

    def _group_chunks(self, part: int, g: int, column: str, dim: int, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(offset in the row group, float32 (n, D) array) of row group ``g`` of part ``part``, at most ``rows``
        rows at a time: zero-copy views of a memory-mapped IPC batch, or Parquet pages decoded ``rows`` at a
        time (a chunk's memory, not the row group's). Nulls and ragged rows are one-line errors."""
        p = self.parts[part]
        if p.kind == "ipc":
            t = p.read_group(g, [column])
            arr = _column_numpy(t.column(column), column, p.path, t.num_rows, dim)
            for s in range(0, len(arr), rows):
                yield s, arr[s : s + rows]
            return
        try:
            offset = 0
            for b in p._reader.iter_batches(batch_size=rows, row_groups=[g], columns=[column], use_threads=False):
                col = pa.chunked_array([b.column(0)])
                _column_dim(col, b.schema.field(0), p.path)  # ragged list rows: the one-line error
                yield offset, _column_numpy(col, column, p.path, b.num_rows, dim)
                offset += b.num_rows
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise _foreign(p.path, e) from e


def _column_numpy(col: pa.ChunkedArray, column: str, name: str, n: int, dim: int) -> np.ndarray:
    """A feature column's values as a float32 (n, dim) array (zero-copy when they are float32 in one chunk);
    null rows or null values inside rows are errors."""
    if col.null_count:
        raise CmkdError(f"{name}: column '{column}' has {col.null_count} null rows; drop or fill them")
    chunks = col.chunks
    if len(chunks) == 1:
        values = chunks[0].flatten()
    else:
        values = pa.concat_arrays([c.flatten() for c in chunks]) if chunks else pa.array([], pa.float32())
    if values.null_count:
        raise CmkdError(f"{name}: column '{column}' has null values inside rows; fill them")
    arr = values.to_numpy(zero_copy_only=False)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr.reshape(n, dim)


def _check_finite_chunk(arr: np.ndarray, column: str, part: _Part, g: int, start: int, offset: int = 0) -> None:
    """``arr`` (rows ``offset``... of row group ``g``, which starts at table row ``start``) is finite, else a
    one-line error naming the first bad row's id."""
    if np.isfinite(arr).all():
        return
    bad = ~np.isfinite(arr)
    rows = np.nonzero(bad.any(axis=1))[0] + offset
    try:
        ids = part.read_group(g, ["id"]).column("id")
        first = f"id '{ids[int(rows[0])].as_py()}'"
    except Exception:  # noqa: BLE001  (no id column: name the row)
        first = f"row {start + int(rows[0])}"
    raise CmkdError(
        f"{part.path}: column '{column}' has NaN/inf values ({int(bad.sum())} in {len(rows)} rows of row group {g}; "
        f"first at {first}); clean or impute them before using this table"
    )


def open_source(path: str | os.PathLike) -> TableSource:
    """A lazily read table: a Parquet file, an Arrow IPC file (memory-mapped) or a folder of shards."""
    return TableSource(path)


def iter_column_chunks(path: str | os.PathLike, column: str, *, chunk_rows: int = 8192) -> Iterator[np.ndarray]:
    """The feature column ``column`` of the table at ``path`` (a Parquet file, an Arrow IPC file or a folder of
    shards) as float32 ``(n, D)`` arrays in file row order, row group by row group, at most ``chunk_rows`` rows
    each; each chunk is checked for nulls and NaN/inf (a one-line error naming the column). Memory: about one row
    group at a time."""
    if chunk_rows < 1:
        raise CmkdUsageError("chunk_rows must be at least 1")
    yield from open_source(path).iter_column_chunks(column, chunk_rows)


def _is_feature_type(t: pa.DataType) -> bool:
    return (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def _read_one(path: str, columns: Sequence[str] | None) -> tuple[pa.Table, pa.Schema, set[str]]:
    """The table (only ``columns`` when given), the full schema of the file and the feature columns known to be
    finite (checked chunk by chunk while reading).

    Feature columns (lists of floats, not reserved) are read row group by row group into one preallocated float32
    array each, wrapped as ``fixed_size_list<float32>`` without a copy: the read holds about 1x the feature bytes
    plus a row group, not the 4x of a whole-file read. A folder of shards reads as one table."""
    if str(path) == "-":
        if sys.stdin.isatty():
            raise CmkdError("'-' reads an Arrow IPC stream from stdin, but stdin is a terminal; pipe a table in")
        try:
            reader = ipc.open_stream(sys.stdin.buffer)
            table = reader.read_all()
        except pa.ArrowInvalid as e:
            raise CmkdError(f"<stdin>: not an Arrow IPC stream ({e}); pipe the output of a cmkdtool command") from e
        schema = table.schema
        return (table.select([c for c in columns if c in table.column_names]) if columns else table), schema, set()
    src = TableSource(path)
    schema = src.schema
    sel = schema.names if columns is None else [c for c in schema.names if c in set(columns)]
    src.check_shards(sel)
    feats = [c for c in sel if c not in RESERVED and _is_feature_type(schema.field(c).type)]
    small = [c for c in sel if c not in feats]
    parts = [p.read(small) for p in src.parts]
    small_t = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    if len(parts) > 1:
        _check_shard_ids(src, small_t)
    finite: set[str] = set()
    fields, arrays = [], []
    for c in sel:
        f = schema.field(c)
        if c in small:
            fields.append(small_t.schema.field(c))
            arrays.append(small_t.column(c))
            continue
        try:
            values, ok = src.read_column(c)
        except CmkdError:  # nulls, ragged rows: read as they are; FeatureTable says what is wrong when used
            pa.default_memory_pool().release_unused()
            whole = [p.read([c]).column(c) for p in src.parts]
            fields.append(f)
            arrays.append(pa.chunked_array([ch for w in whole for ch in w.chunks], type=f.type))
            continue
        if ok:
            finite.add(c)
        fields.append(pa.field(c, values.type, nullable=f.nullable, metadata=f.metadata))
        arrays.append(values)
    pa.default_memory_pool().release_unused()
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))
    return table, schema, finite


def _check_shard_ids(src: TableSource, small: pa.Table) -> None:
    """ids unique across the shards of a folder: a duplicate names both files."""
    if "id" not in small.column_names or small.column("id").null_count:
        return  # _check_ids says what is wrong
    ids = small.column("id")
    if len(pa.compute.unique(ids)) == small.num_rows:
        return
    counts = pa.compute.value_counts(ids)
    dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
    rows = np.nonzero(pa.compute.equal(ids, dup).to_numpy(zero_copy_only=False))[0][:2]
    starts = np.cumsum([0, *[p.num_rows for p in src.parts]])
    files = [src.parts[int(np.searchsorted(starts, r, side="right")) - 1].path for r in rows]
    where = f"in both {files[0]} and {files[1]}" if files[0] != files[1] else f"twice in {files[0]}"
    raise CmkdError(f"{src.path}: id '{dup}' is {where}; ids must be unique across the shards of a folder table")


def _meta_of(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(META_KEY)
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
        return meta if isinstance(meta, dict) else {}
    except ValueError:
        return {}


def _check_ids(table: pa.Table, name: str) -> None:
    if "id" not in table.column_names:
        raise CmkdError(f"{name}: no 'id' column; every feature table needs a unique string id per row")
    col = table.column("id")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise CmkdError(f"{name}: column 'id' must be strings, found {col.type}; cast it with str()")
    if col.null_count:
        raise CmkdError(f"{name}: column 'id' has {col.null_count} null values; every row needs an id")
    n_unique = len(pa.compute.unique(col))
    if n_unique != table.num_rows:
        counts = pa.compute.value_counts(col)
        dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
        raise CmkdError(
            f"{name}: {table.num_rows - n_unique} duplicate ids (e.g. '{dup}'); ids must be unique within a table"
        )


def read_tables(paths: Sequence[str], columns: Sequence[str] | None = None) -> FeatureTable:
    """Read one or more feature tables and inner-join them on ``id``.

    ``columns`` limits what is read (``id``, ``label``, ``labels``, ``split`` are always read when present).
    Columns that appear in several tables: ``label``/``labels``/``split`` must agree; a feature column may
    live in one table only. Rows missing from any table are dropped and the count is recorded in ``notes``.
    """
    if not paths:
        raise CmkdError("no feature table given")
    if sum(1 for p in paths if str(p) == "-") > 1:
        raise CmkdUsageError("'-' (stdin) can be given only once")
    want = None if columns is None else list(dict.fromkeys([*RESERVED, *columns]))
    merged: pa.Table | None = None
    meta: dict = {}
    notes: list[str] = []
    owner: dict[str, str] = {}
    available: list[pa.Field] = []
    finite: set[str] = set()
    for path in paths:
        name = _display(path)
        t, schema, ok = _read_one(path, want)
        finite |= ok
        available.extend(schema)
        _check_ids(t, name)
        m = _meta_of(t)
        if not meta or (m.get("class_names") and not meta.get("class_names")):
            meta = m
        if merged is None:
            merged = t
            owner = {c: name for c in t.column_names}
            continue
        merged = _join(merged, t, owner, name, notes)
    assert merged is not None
    ft = FeatureTable(merged, [_display(p) for p in paths], meta, notes, _union_fields(available), finite)
    if columns is not None:
        for c in columns:
            ft.require(c)
    return ft


def _join(left: pa.Table, right: pa.Table, owner: dict[str, str], rname: str, notes: list[str]) -> pa.Table:
    lid = left.column("id")
    rid = right.column("id")
    pos = pa.compute.index_in(lid, value_set=rid)
    keep = pa.compute.is_valid(pos).to_numpy(zero_copy_only=False)
    lrows = np.nonzero(keep)[0]
    rrows = pos.drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
    dropped_left = left.num_rows - len(lrows)
    dropped_right = right.num_rows - len(rrows)
    if dropped_left or dropped_right:
        notes.append(
            f"join on id with {rname}: kept {len(lrows)} rows; dropped {dropped_left} rows with no match in "
            f"{rname} and {dropped_right} rows of {rname} with no match in "
            f"{', '.join(sorted(set(owner.values())))}"
        )
    if len(lrows) == 0:
        raise CmkdError(
            f"{rname}: no id in common with {', '.join(sorted(set(owner.values())))}; "
            "tables of different modalities must share the 'id' of each sample"
        )
    aligned = len(lrows) == left.num_rows and len(rrows) == right.num_rows and bool((rrows == lrows).all())
    if not aligned:  # rows already in the same id order (one extraction, several tables): no copies
        left = left.take(pa.array(lrows))
        right = right.take(pa.array(rrows))
    for c in right.column_names:
        if c == "id":
            continue
        if c in left.column_names:
            if c in RESERVED:
                if not left.column(c).equals(right.column(c)):
                    raise CmkdError(
                        f"{rname}: column '{c}' disagrees with {owner[c]} on the same ids; keep it in one table"
                    )
                continue
            raise CmkdError(f"column '{c}' is in both {owner[c]} and {rname}; rename one of them")
        left = left.append_column(right.schema.field(c), right.column(c))
        owner[c] = rname
    return left


# ----------------------------------------------------------------------------------------------- writing


def feature_field(name: str, shape: Sequence[int]) -> pa.Field:
    """A modality column's field: fixed_size_list<float32>[prod(shape)], ``shape`` metadata if not 1-D."""
    dim = int(np.prod(shape)) if len(shape) else 1
    meta = {b"shape": json.dumps([int(s) for s in shape]).encode()} if len(shape) != 1 else None
    return pa.field(name, pa.list_(pa.float32(), dim), nullable=False, metadata=meta)


def feature_array(values: np.ndarray) -> pa.FixedSizeListArray:
    """(N, ...) float array -> FixedSizeListArray of float32, flattened row-major, without copying float32."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    n = v.shape[0]
    flat = v.reshape(n, -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def build_table(
    ids: Sequence[str],
    features: dict[str, np.ndarray],
    *,
    label: np.ndarray | None = None,
    labels: Sequence[Sequence[int]] | None = None,
    split: Sequence[str] | None = None,
    shapes: dict[str, Sequence[int]] | None = None,
    meta: dict | None = None,
) -> pa.Table:
    """A feature table in cmkdtool's layout; ``features[name]`` is (N, ...) and keeps its sample shape."""
    shapes = dict(shapes or {})
    fields = [pa.field("id", pa.string(), nullable=False)]
    arrays: list[pa.Array] = [pa.array([str(i) for i in ids], pa.string())]
    if label is not None:
        fields.append(pa.field("label", pa.int64(), nullable=False))
        arrays.append(pa.array(np.asarray(label, dtype=np.int64)))
    if labels is not None:
        fields.append(pa.field("labels", pa.list_(pa.int64()), nullable=False))
        arrays.append(pa.array([[int(x) for x in row] for row in labels], pa.list_(pa.int64())))
    if split is not None:
        fields.append(pa.field("split", pa.string(), nullable=False))
        arrays.append(pa.array([str(s) for s in split], pa.string()))
    for name, values in features.items():
        values = np.asarray(values)
        shape = tuple(shapes.get(name, values.shape[1:]))
        fields.append(feature_field(name, shape))
        arrays.append(feature_array(values))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta or {}, sort_keys=True).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def write_table(table: pa.Table, path: str | os.PathLike, row_group_size: int | None = None) -> None:
    """Write a table as Parquet (zstd, row groups, atomic rename) or, for ``-``, an Arrow stream on stdout.

    ``row_group_size`` (rows per Parquet row group and per stream batch) defaults to ``ROW_GROUP_SIZE``.
    """
    row_group_size = int(row_group_size or ROW_GROUP_SIZE)
    if str(path) == "-":
        if sys.stdout.isatty():
            raise CmkdError("refusing to write a binary table to a terminal; redirect stdout or give -o FILE")
        out = sys.stdout.buffer
        with ipc.new_stream(out, table.schema) as w:
            for batch in table.to_batches(max_chunksize=row_group_size):
                w.write_batch(batch)
        out.flush()
        return
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, table.schema, compression="zstd") as w:
            # write_table cuts row groups of row_group_size rows across chunks (write_batch per chunk would
            # make one row group per chunk: thousands of tiny ones for a table assembled from small batches)
            w.write_table(table, row_group_size=row_group_size)


def file_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a file (None for stdin), for provenance metadata. A folder of shards: the sha256 of its lines
    ``name size sha256`` (one per shard, sorted by name)."""
    if str(path) == "-":
        return None
    if os.path.isdir(path):
        lines = [f"{Path(p).name} {os.path.getsize(p)} {file_sha256(p)}\n" for p in shard_paths(path)]
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
