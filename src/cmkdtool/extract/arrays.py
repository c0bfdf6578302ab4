"""``cmkdtool extract array``: features you already have (``.npy``, ``.npz``, ``.csv``, ``.safetensors``) with ids,
labels and splits from the same file or from a sidecar file.

:func:`read_array_source` returns an :class:`ArraySource`; the command writes it as a feature table.

Sources (the kind is taken from the suffix; ``.npy``/``.npz`` are also recognised by their first bytes):

- ``.npy``: one numeric array ``(N, ...)``: row ``i`` is sample ``i``, its shape ``...`` is kept (a ``(N, 3, 8, 8)``
  array gives samples of shape ``[3, 8, 8]``). Nothing is ever unpickled (``allow_pickle=False``); the file is
  memory-mapped while it is converted to float32.
- ``.npz``: the features are the array ``key``; without ``key``, the one array named ``features``, ``x``,
  ``embeddings`` or ``embedding`` (any case), else the only floating-point array other than the arrays below.
  Optional arrays: ``id`` or ``ids`` (strings or integers), ``label`` or ``labels`` (1-D: integer class indices or
  class-name strings; 2-D ``(N, C)`` of 0/1: multi-label), ``split`` (strings).
- ``.safetensors``: the features are the tensor ``key``; without it, as for ``.npz`` (only the floating tensor,
  ``bfloat16`` included). An integer tensor ``label``/``labels`` is read as for ``.npz``. safetensors holds no
  strings, so ids and splits come from a sidecar. Read without torch.
- ``.csv`` (``.tsv``): columns ``id``, ``label`` (integers, or strings that become class names), ``labels``
  (multi-label, see below) and ``split`` are optional; every other column is one feature, in column order, and
  must be numeric (a column that is not is an error naming it: remove it or rename it). Empty cells and ``nan``
  in feature columns are errors.

Sidecar ``meta`` (``.csv``, ``.tsv`` or ``.parquet``): optional columns ``id``, ``label`` (integers or class
names), ``labels`` (multi-label: a list column in Parquet; in CSV a string of class names or indices separated by
``;``, empty for none) and ``split`` (``train``/``val``/``test``); other columns are ignored.
When both the source and the sidecar have ids, the sidecar is joined by id (every source id needs a sidecar row;
extra sidecar rows are ignored and counted in ``config["meta_unused_rows"]``). Otherwise the sidecar is read in
the order of the source rows and must have as many rows. ``label``/``labels``/``split`` may come from the source
or the sidecar, not both.

Ids: from the source, else from the sidecar, else the row numbers ``"0"``, ``"1"``, ... (fragile: give real ids
when the table will be joined with another modality). Ids must be unique and non-empty.

Labels: string class names become class indices in sorted order and are returned as ``class_names``; names that
are all non-negative integers (``"0"``, ``"3"``) are read as the integers themselves. Multi-label rows are sorted
and deduplicated; a null row means no label (``[]``). Negative labels are errors.

Every problem is one :class:`~cmkdtool.errors.CmkdError` line naming the file (and the row id where one is
at fault): missing or unreadable files, pickled or non-numeric arrays, 0-d and 1-d arrays (a 1-d array is
ambiguous: reshape it to ``(N, 1)`` for one value per sample or ``(1, D)`` for one sample), empty arrays, row
count mismatches, duplicate, null or missing ids, NaN/inf values, negative or null labels, split values other
than train/val/test.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from cmkdtool.errors import CmkdError

SPLITS = ("train", "val", "test")
ID_NAMES = ("id", "ids")
LABEL_NAMES = ("label", "labels")
RESERVED = (*ID_NAMES, *LABEL_NAMES, "split")
FEATURE_NAMES = ("features", "x", "embeddings", "embedding")
SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".safetensors")
META_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_CHUNK = 65536
_INT_RE = re.compile(r"[0-9]+")


@dataclass
class ArraySource:
    """Features and their ids, labels and splits, ready to be written as a feature table.

    ``values`` is float32 ``(N, ...)`` (C-contiguous, the per-sample shape kept); ``label`` int64 ``(N,)``
    (multi-class) or ``labels`` (multi-label lists), ``split`` strings in train/val/test, ``class_names[i]`` the
    name of class ``i`` when labels were strings; ``config`` records where each part came from.
    """

    ids: list[str]
    values: np.ndarray
    label: np.ndarray | None = None
    labels: list[list[int]] | None = None
    split: list[str] | None = None
    class_names: list[str] | None = None
    config: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])


@dataclass
class _Part:
    """A column of ids / label / labels / split as read, before validation."""

    values: object  # np.ndarray, pa.Array or list
    origin: str  # e.g. "x.npz array 'label'", for messages and provenance
    file: str


@dataclass
class _Raw:
    values: np.ndarray
    key: str | None
    parts: dict[str, _Part] = field(default_factory=dict)
    dtype: str | None = None  # the stored dtype when ``values`` is already converted (BF16)


# --------------------------------------------------------------------------------------------------------------
# entry point


def read_array_source(
    path: str | os.PathLike, key: str | None = None, meta: str | os.PathLike | None = None
) -> ArraySource:
    """Read features (and ids, labels, splits) from ``path`` and the optional sidecar ``meta``; see the module doc."""
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise CmkdError(f"{name}: no such file")
    if p.is_dir():
        raise CmkdError(f"{name}: is a folder; give one .npy, .npz, .csv or .safetensors file")
    kind = _kind(p)
    if kind == "npy":
        if key is not None:
            raise CmkdError(f"{name}: a .npy file holds one array, --key {key} does not apply; drop --key")
        raw = _read_npy(p, name)
    elif kind == "npz":
        raw = _read_npz(p, name, key)
    elif kind == "safetensors":
        raw = _read_safetensors(p, name, key)
    else:
        if key is not None:
            raise CmkdError(f"{name}: --key {key} does not apply to CSV (every non-reserved column is a feature)")
        raw = _read_csv_source(p, name, kind == "tsv")

    values = raw.values
    if values.ndim < 2:
        what = "a single number (0-d)" if values.ndim == 0 else f"a 1-d array of {values.shape[0]} values"
        raise CmkdError(
            f"{name}: the features are {what}; save them as (N, D): x.reshape(-1, 1) for one value per sample, "
            "x.reshape(1, -1) for a single sample"
        )
    n = values.shape[0]
    if n == 0:
        raise CmkdError(f"{name}: the features have no rows (shape {list(values.shape)}); nothing to extract")
    if int(np.prod(values.shape[1:])) == 0:
        raise CmkdError(f"{name}: the features have an empty sample shape {list(values.shape[1:])}")
    config = {
        "source": p.name,
        "format": kind,
        "key": raw.key,
        "dtype": raw.dtype or str(values.dtype),
        "shape": [int(s) for s in values.shape[1:]],
        "rows": int(n),
    }

    parts = dict(raw.parts)
    for part in parts.values():
        if _length(part.values) != n:
            raise CmkdError(
                f"{part.file}: {part.origin} has {_length(part.values)} rows but the features have {n}; "
                "they must describe the same rows"
            )

    # ---- sidecar
    if meta is not None:
        meta_parts, meta_cfg = _read_meta(meta, n, parts.get("id"))
        for part_name in ("label", "labels", "split"):
            if part_name in meta_parts:
                clash = [k for k in ((part_name,) if part_name == "split" else LABEL_NAMES) if k in parts]
                if clash:
                    raise CmkdError(
                        f"{meta}: column '{part_name}' conflicts with {parts[clash[0]].origin}; "
                        "give labels and splits in one place only"
                    )
        if "label" in meta_parts and "labels" in meta_parts:
            raise CmkdError(f"{meta}: has both 'label' and 'labels' columns; keep one (multi-class or multi-label)")
        parts.update({k: v for k, v in meta_parts.items() if not (k == "id" and "id" in parts)})
        config.update(meta_cfg)

    # ---- ids
    if "id" in parts:
        ids = _ids(parts["id"])
        config["ids"] = parts["id"].origin
    else:
        ids = [str(i) for i in range(n)]
        config["ids"] = "row numbers"

    out = ArraySource(ids=ids, values=_to_float32(values, name, ids), config=config)

    # ---- labels and split
    if "label" in parts and "labels" in parts:
        raise CmkdError(
            f"{name}: has both {parts['label'].origin} and {parts['labels'].origin}; "
            "keep one (multi-class or multi-label)"
        )
    if "label" in parts:
        part = parts["label"]
        if _is_multi_hot(part.values):
            out.labels = _multi_hot(part, ids)
            config["labels"] = part.origin
        else:
            out.label, out.class_names = _single_labels(part, ids)
            config["label"] = part.origin
    if "labels" in parts:
        part = parts["labels"]
        if _is_multi_hot(part.values):
            out.labels = _multi_hot(part, ids)
            config["labels"] = part.origin
        elif isinstance(part.values, np.ndarray):  # a 1-d array 'labels' in .npz/.safetensors: one class per row
            out.label, out.class_names = _single_labels(part, ids)
            config["label"] = part.origin
        else:  # a CSV/Parquet column: multi-label
            out.labels, out.class_names = _multi_labels(part, ids)
            config["labels"] = part.origin
    if "split" in parts:
        out.split = _splits(parts["split"], ids)
        config["split"] = parts["split"].origin
    if out.class_names is not None:
        config["class_names"] = out.class_names
    return out


def _kind(p: Path) -> str:
    suffix = p.suffix.lower()
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CmkdError(f"{p}: cannot be read ({e.strerror or e})") from e
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if suffix in (".npy", ".npz") and head.startswith(b"PK"):
        return "npz"
    if suffix in SUFFIXES:
        return suffix[1:]
    raise CmkdError(f"{p}: unknown array file type '{suffix}'; give a .npy, .npz, .csv, .tsv or .safetensors file")


def _length(values) -> int:
    return values.shape[0] if isinstance(values, np.ndarray) else len(values)


# --------------------------------------------------------------------------------------------------------------
# numpy


def _npy_error(name: str, e: Exception, what: str = "file") -> CmkdError:
    msg = str(e)
    low = msg.lower()
    if "pickle" in low or "object arrays" in low or "python objects" in low:
        return CmkdError(
            f"{name}: the {what} holds Python objects (pickle), which cmkdtool never loads; "
            "save numeric arrays (e.g. np.save(path, x.astype(np.float32)))"
        )
    detail = " ".join(msg.split())[:160]
    return CmkdError(f"{name}: not a readable NumPy {what} ({detail}); the file may be truncated, write it again")


def _read_npy(p: Path, name: str) -> _Raw:
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise _npy_error(name, e, ".npy file") from e
    return _Raw(values=_numeric(arr, name, "the array"), key=None)


def _read_npz(p: Path, name: str, key: str | None) -> _Raw:
    try:
        npz = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _npy_error(name, e, ".npz archive") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CmkdError(f"{name}: is a .npy file, not an .npz archive; rename it to .npy")
    with npz:
        arrays = {}
        for k in npz.files:
            try:
                arrays[k] = npz[k]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise _npy_error(name, e, f"array '{k}' of the .npz archive") from e
    if not arrays:
        raise CmkdError(f"{name}: the .npz archive holds no arrays")
    infos = {k: (a.dtype.kind == "f", a.shape, str(a.dtype)) for k, a in arrays.items()}
    chosen = _pick_key(name, infos, key, "array")
    raw = _Raw(values=_numeric(arrays[chosen], name, f"array '{chosen}'"), key=chosen)
    _reserved_parts(raw, arrays, chosen, name, "array")
    return raw


def _reserved_parts(raw: _Raw, arrays: dict, chosen: str, name: str, noun: str) -> None:
    for group, part_name in ((ID_NAMES, "id"), (LABEL_NAMES, None), (("split",), "split")):
        present = [k for k in group if k in arrays and k != chosen]
        if part_name is not None and len(present) > 1:
            raise CmkdError(f"{name}: has both {noun}s {present[0]!r} and {present[1]!r}; keep one")
        for k in present:
            a = arrays[k]
            if not isinstance(a, np.ndarray) or a.ndim not in (1, 2) or (a.ndim == 2 and part_name is not None):
                raise CmkdError(f"{name}: {noun} '{k}' has shape {list(a.shape)}; expected one value per row (1-d)")
            raw.parts[part_name or k] = _Part(a, f"{noun} '{k}'", name)


def _pick_key(name: str, infos: dict[str, tuple[bool, tuple, str]], key: str | None, noun: str) -> str:
    listing = ", ".join(f"{k} {list(shape)} {dtype}" for k, (_, shape, dtype) in infos.items())
    if key is not None:
        if key not in infos:
            raise CmkdError(f"{name}: no {noun} '{key}'; it has: {listing}; pass --key with one of them")
        return key
    preferred = [k for k in infos if k.lower() in FEATURE_NAMES]
    if len(preferred) == 1:
        return preferred[0]
    floats = [k for k, (is_float, _, _) in infos.items() if is_float and k not in RESERVED]
    candidates = preferred or floats
    if len(candidates) == 1:
        return candidates[0]
    why = "several candidate" if candidates else "no floating-point"
    raise CmkdError(f"{name}: {why} feature {noun}s ({listing}); pass --key NAME to choose the features")


def _numeric(arr: np.ndarray, name: str, what: str) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise CmkdError(
            f"{name}: {what} has dtype {arr.dtype}, not numbers; save the features as a float array "
            "(e.g. x.astype(np.float32))"
        )
    return arr


def _to_float32(values: np.ndarray, name: str, ids: list[str]) -> np.ndarray:
    """Copy to C-contiguous float32 and reject NaN/inf (also float64 values too large for float32)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(values, dtype=np.float32, order="C")
    flat = out.reshape(out.shape[0], -1)
    for start in range(0, flat.shape[0], _CHUNK):
        ok = np.isfinite(flat[start : start + _CHUNK]).all(axis=1)
        if not ok.all():
            row = start + int(np.flatnonzero(~ok)[0])
            col = int(np.flatnonzero(~np.isfinite(flat[row]))[0])
            bad = int((~np.isfinite(flat)).any(axis=1).sum())
            raise CmkdError(
                f"{name}: sample id '{ids[row]}' (row {row}) has a non-finite value {flat[row, col]} at flat index "
                f"{col} ({bad} rows in all: NaN, inf or too large for float32); drop or fill those rows"
            )
    return out


# --------------------------------------------------------------------------------------------------------------
# safetensors


def _read_safetensors(p: Path, name: str, key: str | None) -> _Raw:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            keys = list(f.keys())
            infos = {}
            for k in keys:
                sl = f.get_slice(k)
                dtype = sl.get_dtype()
                infos[k] = (dtype.startswith(("F", "BF")), tuple(sl.get_shape()), dtype)
            if not keys:
                raise CmkdError(f"{name}: the safetensors file holds no tensors")
            chosen = _pick_key(name, infos, key, "tensor")
            wanted = [chosen] + [k for k in RESERVED if k in infos and k != chosen]
            arrays = {}
            for k in wanted:
                dtype = infos[k][2]
                if dtype == "BF16":
                    arrays[k] = _bf16(p, k)
                elif dtype in ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64"):
                    arrays[k] = f.get_tensor(k)
                else:
                    raise CmkdError(f"{name}: tensor '{k}' has dtype {dtype}, which NumPy cannot read; save it as F32")
    except CmkdError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        detail = " ".join(str(e).split())[:160]
        raise CmkdError(
            f"{name}: not a readable safetensors file ({detail}); it may be truncated, write it again"
        ) from e
    if "id" in arrays or "ids" in arrays or "split" in arrays:
        raise CmkdError(f"{name}: safetensors cannot hold string ids or splits; give them in a sidecar (--meta)")
    raw = _Raw(values=_numeric(arrays[chosen], name, f"tensor '{chosen}'"), key=chosen, dtype=infos[chosen][2])
    _reserved_parts(raw, arrays, chosen, name, "tensor")
    return raw


def _bf16(p: Path, k: str) -> np.ndarray:
    """A BF16 tensor as float32 (NumPy has no bfloat16): read the raw bytes at the header's offsets."""
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    start, end = header[k]["data_offsets"]
    bits = np.fromfile(p, dtype="<u2", count=(end - start) // 2, offset=8 + n + start)
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(header[k]["shape"])


# --------------------------------------------------------------------------------------------------------------
# CSV / Parquet


def _read_csv_table(p: Path | str, name: str, tsv: bool) -> pa.Table:
    import pyarrow.csv as pacsv

    columns = {c: pa.string() for c in ("id", "split")}
    delimiter = "\t" if tsv else ","
    try:
        with open(p, "rb") as f:
            header = f.readline()
        # with a single column, an empty line is an empty value (e.g. a row without labels), not a line to skip
        single = delimiter.encode() not in header
        return pacsv.read_csv(
            str(p),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=not single),
            convert_options=pacsv.ConvertOptions(column_types=columns, strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())[:200]
        raise CmkdError(f"{name}: not a readable {'TSV' if tsv else 'CSV'} file ({detail}); fix the file") from e


def _read_csv_source(p: Path, name: str, tsv: bool) -> _Raw:
    table = _read_csv_table(p, name, tsv)
    if table.num_rows == 0:
        raise CmkdError(f"{name}: no rows (only a header); nothing to extract")
    if "id" in table.column_names:
        # ids name the rows in the messages below
        ids_for_msgs = table.column("id").to_pylist()
    else:
        ids_for_msgs = [str(i) for i in range(table.num_rows)]
    features = [c for c in table.column_names if c not in RESERVED]
    if not features:
        raise CmkdError(f"{name}: no feature columns (only {', '.join(table.column_names)}); add numeric columns")
    for c in features:
        col = table.column(c)
        t = col.type
        if pa.types.is_null(t):
            raise CmkdError(f"{name}: column '{c}' is empty; fill it or remove it")
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            values = col.to_pylist()
            row = next((i for i, v in enumerate(values) if v is not None and not _is_number(v)), 0)
            raise CmkdError(
                f"{name}: column '{c}' is not numeric (id '{ids_for_msgs[row]}' has {values[row]!r}); every column "
                "other than id, label, labels and split is a feature: remove or rename it"
            )
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise CmkdError(
                f"{name}: column '{c}' has {col.null_count} empty or NaN values (first at id '{ids_for_msgs[row]}'); "
                "fill them or drop those rows"
            )
    values = np.column_stack([np.asarray(table.column(c).to_numpy(), dtype=np.float64) for c in features])
    raw = _Raw(values=values, key=None)
    for c in RESERVED:
        if c in table.column_names:
            raw.parts[c] = _Part(table.column(c).combine_chunks(), f"column '{c}'", name)
    return raw


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _read_meta(meta: str | os.PathLike, n: int, source_ids: _Part | None) -> tuple[dict[str, _Part], dict]:
    name = str(meta)
    p = Path(meta)
    if not p.exists():
        raise CmkdError(f"{name}: no such file (the sidecar with ids, labels and splits)")
    if p.is_dir():
        raise CmkdError(f"{name}: is a folder; the sidecar must be a .csv, .tsv or .parquet file")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        table = _read_csv_table(p, name, suffix == ".tsv")
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            detail = " ".join(str(e).split())[:160]
            raise CmkdError(
                f"{name}: not a readable Parquet file ({detail}); it may be truncated, write it again"
            ) from e
    else:
        raise CmkdError(f"{name}: unknown sidecar type '{suffix}'; give a .csv, .tsv or .parquet file")
    cols = [c for c in ("id", "label", "labels", "split") if c in table.column_names]
    if not cols:
        raise CmkdError(
            f"{name}: no id, label, labels or split column (it has: {', '.join(table.column_names)}); "
            "rename the columns"
        )
    cfg: dict = {"meta": p.name, "meta_columns": cols}
    table = table.select(cols).combine_chunks()
    if "id" in table.column_names and source_ids is not None:
        src = _ids(source_ids)
        meta_ids = _ids(_Part(table.column("id"), "column 'id'", name))
        where = {v: i for i, v in enumerate(meta_ids)}
        order = []
        for i, v in enumerate(src):
            j = where.get(v)
            if j is None:
                missing = sum(1 for s in src if s not in where)
                raise CmkdError(
                    f"{name}: no row for id '{v}' (row {i} of {source_ids.file}; {missing} ids in all); "
                    "the sidecar needs a row for every sample"
                )
            order.append(j)
        cfg["join"] = "id"
        cfg["meta_unused_rows"] = table.num_rows - len(order)
        table = table.take(pa.array(order, type=pa.int64()))
    else:
        if table.num_rows != n:
            raise CmkdError(
                f"{name}: has {table.num_rows} rows but the features have {n}; without ids on both sides the "
                "sidecar must list the samples in the same order, one row each"
            )
        cfg["join"] = "row order"
    parts = {c: _Part(table.column(c).combine_chunks(), f"column '{c}' of {p.name}", name) for c in cols}
    return parts, cfg


# --------------------------------------------------------------------------------------------------------------
# ids, labels, splits


def _as_list(values) -> list:
    """A column as a Python list (bytes decoded as UTF-8)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "S":
            return [b.decode("utf-8", errors="replace") for b in values.tolist()]
        return values.tolist()
    return list(values)


def _kind_of(values) -> str:
    """'int', 'float', 'bool', 'str', 'list' or 'other' for a column."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        t = values.type
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_floating(t):
            return "float"
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "str"
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return "list"
        if pa.types.is_null(t):
            return "null"
        return "other"
    k = values.dtype.kind
    return {"i": "int", "u": "int", "f": "float", "b": "bool", "U": "str", "S": "str"}.get(k, "other")


def _type_name(values) -> str:
    return str(values.type) if isinstance(values, (pa.Array, pa.ChunkedArray)) else str(values.dtype)


def _first_null(part: _Part, ids: list[str] | None, what: str) -> None:
    vals = _as_list(part.values)
    for i, v in enumerate(vals):
        if v is None:
            who = f"id '{ids[i]}'" if ids is not None else f"row {i}"
            raise CmkdError(f"{part.file}: {part.origin} is empty for {who}; {what}")


def _ids(part: _Part) -> list[str]:
    kind = _kind_of(part.values)
    if kind not in ("str", "int"):
        raise CmkdError(f"{part.file}: {part.origin} holds {_type_name(part.values)}, expected string (or integer) ids")
    vals = _as_list(part.values)
    seen: dict[str, int] = {}
    out = []
    for i, v in enumerate(vals):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise CmkdError(f"{part.file}: {part.origin} is empty at row {i}; every sample needs a unique id")
        s = str(v)
        if s in seen:
            raise CmkdError(
                f"{part.file}: duplicate id '{s}' (rows {seen[s]} and {i}) in {part.origin}; ids must be unique"
            )
        seen[s] = i
        out.append(s)
    return out


def _names_to_indices(names: list[str]) -> tuple[dict[str, int], list[str] | None]:
    """Class index of each name: the integers themselves when all names are non-negative integers, else the rank
    of the name in sorted order (then also returns the sorted names)."""
    unique = sorted(set(names))
    if unique and all(_INT_RE.fullmatch(u) for u in unique):
        return {u: int(u) for u in unique}, None
    return {u: i for i, u in enumerate(unique)}, unique


def _single_labels(part: _Part, ids: list[str]) -> tuple[np.ndarray, list[str] | None]:
    kind = _kind_of(part.values)
    fix = "every row needs a class (or use a multi-label 'labels' column)"
    if kind == "null":
        raise CmkdError(f"{part.file}: {part.origin} is empty; fill it or remove it")
    if kind not in ("int", "float", "bool", "str"):
        raise CmkdError(
            f"{part.file}: {part.origin} holds {_type_name(part.values)}; labels must be integer class indices "
            "or class-name strings"
        )
    _first_null(part, ids, fix)
    vals = _as_list(part.values)
    if kind == "str":
        names = [v.strip() for v in vals]
        for i, v in enumerate(names):
            if not v:
                raise CmkdError(f"{part.file}: {part.origin} is empty for id '{ids[i]}'; {fix}")
        index, class_names = _names_to_indices(names)
        return np.array([index[v] for v in names], dtype=np.int64), class_names
    arr = np.asarray(vals, dtype=np.float64 if kind == "float" else np.int64)
    if kind == "float":
        bad = ~(np.isfinite(arr) & (arr == np.round(arr)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CmkdError(
                f"{part.file}: {part.origin} has the non-integer label {vals[i]} for id '{ids[i]}'; "
                "labels must be class indices 0..C-1 or class names"
            )
        arr = arr.astype(np.int64)
    neg = np.flatnonzero(arr < 0)
    if neg.size:
        i = int(neg[0])
        raise CmkdError(
            f"{part.file}: {part.origin} has the negative label {int(arr[i])} for id '{ids[i]}'; "
            "labels must be class indices 0..C-1 (drop unlabelled rows)"
        )
    return arr, None


def _is_multi_hot(values) -> bool:
    return isinstance(values, np.ndarray) and values.ndim == 2


def _multi_hot(part: _Part, ids: list[str]) -> list[list[int]]:
    arr = part.values
    if arr.dtype.kind not in "iufb":
        raise CmkdError(f"{part.file}: {part.origin} is a 2-d {arr.dtype} array; a multi-hot label matrix holds 0/1")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise CmkdError(
            f"{part.file}: {part.origin} is 2-d but id '{ids[i]}' has values other than 0 and 1; a multi-hot "
            "label matrix (N, C) holds 0/1"
        )
    return [np.flatnonzero(row).tolist() for row in arr]


def _multi_labels(part: _Part, ids: list[str]) -> tuple[list[list[int]], list[str] | None]:
    kind = _kind_of(part.values)
    vals = _as_list(part.values)
    rows: list[list] = []
    if kind == "str":  # CSV: "cat;dog", "" or null for none
        rows = [[] if v is None else [t.strip() for t in v.split(";") if t.strip()] for v in vals]
    elif kind == "int":  # CSV where every row has at most one label
        rows = [[] if v is None else [v] for v in vals]
    elif kind != "list":
        raise CmkdError(
            f"{part.file}: {part.origin} holds {_type_name(part.values)}; multi-label 'labels' must be a list column "
            "(Parquet) or class names/indices separated by ';' (CSV)"
        )
    else:
        for i, v in enumerate(vals):
            if v is None:
                rows.append([])
            elif any(x is None for x in v):
                raise CmkdError(f"{part.file}: {part.origin} has a null inside the labels of id '{ids[i]}'; remove it")
            else:
                rows.append(list(v))
    flat = [x for r in rows for x in r]
    if all(isinstance(x, str) for x in flat):
        index, class_names = _names_to_indices(flat)
        out = [sorted({index[x] for x in r}) for r in rows]
        return out, class_names
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in flat):
        for i, r in enumerate(rows):
            if any(x < 0 for x in r):
                raise CmkdError(
                    f"{part.file}: {part.origin} has a negative label for id '{ids[i]}'; "
                    "labels are class indices 0..C-1"
                )
        return [sorted({int(x) for x in r}) for r in rows], None
    raise CmkdError(
        f"{part.file}: {part.origin} holds {_type_name(part.values)}; multi-label rows must be lists of class indices "
        "or class names"
    )


def _splits(part: _Part, ids: list[str]) -> list[str]:
    if _kind_of(part.values) != "str":
        raise CmkdError(
            f"{part.file}: {part.origin} holds {_type_name(part.values)}; split must be strings train, val or test"
        )
    vals = _as_list(part.values)
    out = []
    for i, v in enumerate(vals):
        s = v.strip() if isinstance(v, str) else v
        if not s:
            raise CmkdError(f"{part.file}: {part.origin} is empty for id '{ids[i]}'; split must be train, val or test")
        if s not in SPLITS:
            raise CmkdError(f"{part.file}: {part.origin} has {v!r} for id '{ids[i]}'; split must be train, val or test")
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------------------------
# shared with the manifests of the media kinds (extract/sources.py)


def label_column(values, origin: str, file: str, ids: list[str], multi: bool) -> tuple[list, list[str] | None]:
    """A ``label`` (``multi=False``: one class per row) or ``labels`` column as class indices, and the class names
    when they were strings; the rules and errors of ``extract array`` (see the module docstring)."""
    part = _Part(values, origin, file)
    if multi:
        return _multi_labels(part, ids)
    label, names = _single_labels(part, ids)
    return label.tolist(), names


def split_column(values, origin: str, file: str, ids: list[str]) -> list[str]:
    """A ``split`` column as train/val/test strings (an empty or other value is an error naming the id)."""
    return _splits(_Part(values, origin, file), ids)
