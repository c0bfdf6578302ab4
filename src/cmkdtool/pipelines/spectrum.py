"""``cmkdtool spectrum`` as a library call: singular value spectra of weights, features and table columns."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmkdtool.errors import CmkdError, CmkdUsageError

SPLITS = ("train", "val", "test", "all")
#: keys of one result in --format json/csv and in the -o metadata, in this order
KEYS = (
    "input",
    "source",
    "kind",
    "name",
    "split",
    "rows",
    "cols",
    "centered",
    "n_values",
    "effective_rank",
    "rankme",
    "rank90",
    "rank99",
    "rank_tol",
    "tol",
    "sigma_max",
    "tol_rule",
    "method",
    "note",
)


@dataclass
class Spectra:
    """One summary row per spectrum (``KEYS``) and its singular values."""

    results: list[dict] = field(default_factory=list)
    sigmas: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, source: str, sp) -> None:
        self.results.append(_result(label, source, sp))
        self.sigmas.append(sp.sigma)

    def write(self, path: str, command: str | None = None) -> None:
        """Every sigma as a Parquet table (input, index, sigma), the summaries in its metadata."""
        from cmkdtool.io.outputs import write_spectrum
        from cmkdtool.io.provenance import provenance

        meta = {**provenance(command), "spectra": self.results}
        write_spectrum(path, [r["input"] for r in self.results], self.sigmas, meta)

    def plot(self, path: str) -> None:
        """Log singular value against its 1-based index, one line per input (CIBA Fig. 3 / Fig. 5)."""
        from cmkdtool.analysis.spectrum import plot_spectra

        plot_spectra(path, [r["input"] for r in self.results], self.sigmas)


def run_spectrum(
    inputs: Sequence[str],
    *,
    layer: str | None = None,
    data: Sequence[str] = (),
    split: str = "test",
    columns: Sequence[str] = (),
    split_ratio=None,
    split_seed: int | None = None,
    device="auto",
) -> Spectra:
    """Spectra of ``inputs``: a checkpoint alone gives every weight matrix (or ``layer``'s); a checkpoint with
    ``data`` tables the features of ``layer`` (default embedding) on the ``split`` rows; a table each of its
    feature ``columns`` (default every one). A missing ``device`` is an error even when no model runs."""
    from cmkdtool.analysis import spectrum as lib
    from cmkdtool.io.checkpoints import read_checkpoint
    from cmkdtool.pipelines.open import open_checkpoint, resolve, split_rule

    if split not in SPLITS:
        raise CmkdUsageError(f"unknown --split '{split}'; choose one of {', '.join(SPLITS)}")
    dev = resolve(device)
    data, columns = list(data), list(columns)
    kinds = [kind_of(p) for p in inputs]
    if data and "checkpoint" not in kinds:
        raise CmkdUsageError("--data runs checkpoints on a table, but no input is a checkpoint")
    if columns and "table" not in kinds:
        raise CmkdUsageError("--column applies to table inputs, but no input is a feature table")
    out = Spectra()
    shared = None  # the --data tables, read once for every checkpoint
    for path, kind in zip(inputs, kinds, strict=True):
        if kind == "table":
            ratio, sseed = split_rule(split_ratio, split_seed)
            for label, sp in _table_spectra(path, columns, split, ratio, sseed):
                out.add(label, path, sp)
            continue
        if not data:
            tensors, _, _ = read_checkpoint(path)
            try:
                spectra = lib.weight_spectra(tensors, layer)
            except CmkdError as e:
                hint = ""
                if layer is not None and layer in _layer_names(path):
                    hint = f" ('{layer}' is a layer: give --data TABLE for the spectrum of its features)"
                raise CmkdError(f"{path}: {e}{hint}") from e
            for sp in spectra:
                out.add(f"{path}:{sp.name}", path, sp)
            continue
        if shared is None:
            shared = _read_data(data, inputs, kinds)
            out.notes.extend(shared.notes)
        name = layer or "embedding"
        opened = open_checkpoint(
            path, data, dev, split_ratio=split_ratio, split_seed=split_seed, need_labels=False, table=shared
        )
        if name not in opened.model.layer_names():
            raise CmkdError(
                f"{path}: unknown layer '{name}'; layers of this model: {', '.join(opened.model.layer_names())}"
            )
        out.add(f"{path}:{name}[{split}]", path, lib.feature_spectrum(opened.model, opened.data, name, split))
    return out


def _table_spectra(path: str, columns: list[str], split: str, ratio, seed: int):
    """(label, Spectrum) of each feature column of a table input, its rows streamed from the file chunk by chunk
    (only the id and split columns are read whole); a stream on stdin ('-') is read whole, then streamed."""
    from cmkdtool.analysis import spectrum as lib
    from cmkdtool.io.tables import iter_column_chunks, read_tables

    if path == "-":
        table = read_tables([path], columns=columns or None)
        cols = columns or table.modality_columns()
        if not cols:
            raise CmkdError(f"{table.name}: no feature column (a list of floats) to analyse")
        for c in cols:
            yield f"{table.name}:{c}[{split}]", lib.column_spectrum(table, c, split, ratio, seed)
        return
    table = _split_table(path)  # the split (or id) column alone: the split is known without the features
    fields = {f.name: f for f in table.available}
    cols = columns or _feature_columns(table)
    if not cols:
        raise CmkdError(f"{table.name}: no feature column (a list of floats) to analyse")
    for c in cols:
        if c not in fields:
            table.require(c)  # raises, naming the feature columns and the closest name
        width = _fixed_width(fields[c])
        step = lib.chunk_rows_for(width or 1)
        chunks = functools.partial(iter_column_chunks, path, c, chunk_rows=step)
        sp = lib.column_spectrum(table, c, split, ratio, seed, chunks=chunks, cols=width)
        yield f"{table.name}:{c}[{split}]", sp


def _split_table(path: str):
    """A ``FeatureTable`` of the table's ``split`` column alone (its ``id`` column for an id-hash split), read row
    group by row group (a Parquet file, an Arrow IPC file or a folder of shards), with the table's schema in
    ``available``. Lighter than ``read_tables(columns=[])`` (no id uniqueness check: a spectrum joins nothing):
    20 MB against 130 MB of peak memory for 1M rows."""
    import pyarrow as pa

    from cmkdtool.io.tables import FeatureTable, open_source

    src = open_source(path)
    schema = src.schema
    col = "split" if "split" in schema.names else "id"
    if col not in schema.names:
        raise CmkdError(f"{path}: no 'id' column; every feature table needs a unique string id per row")
    if src.kind == "folder":
        src.check_shards([col])
    parts = [src.parts[p].read_group(g, [col]).column(col) for p, g, _, _ in src.groups]
    column = pa.chunked_array([c for part in parts for c in part.chunks], type=schema.field(col).type)
    return FeatureTable(pa.table({col: column}), [path], available=list(schema))


def _feature_columns(table) -> list[str]:
    import pyarrow as pa

    from cmkdtool.io.tables import RESERVED

    out = []
    for f in table.available:
        t = f.type
        if f.name in RESERVED or f.name in out:
            continue
        if (
            pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
        ) and pa.types.is_floating(t.value_type):
            out.append(f.name)
    return out


def _fixed_width(f) -> int | None:
    """The width of a fixed_size_list feature column (None for variable lists: known only from the data)."""
    import pyarrow as pa

    return int(f.type.list_size) if pa.types.is_fixed_size_list(f.type) else None


def kind_of(path: str) -> str:
    """'checkpoint' or 'table' (Parquet, Arrow IPC or a folder of shards), from the file's first bytes, else its
    extension."""
    if path == "-":
        return "table"
    if not os.path.exists(path):
        raise CmkdError(f"{path}: no such file")
    if os.path.isdir(path):
        return "table"  # a folder of shards (the table reader checks it)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PAR1" or head[:6] == b"ARROW1":
        return "table"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return "checkpoint"
    low = path.lower()
    if low.endswith(".safetensors"):
        return "checkpoint"  # read_metadata says what is wrong with it
    if low.endswith((".parquet", ".pq")):
        return "table"
    raise CmkdError(
        f"{path}: neither a safetensors checkpoint nor a feature table (Parquet, Arrow IPC or a folder of shards); "
        "give files written by cmkdtool"
    )


def _result(label: str, source: str, sp) -> dict:
    s = sp.summary()
    row = {
        "input": label,
        "source": source,
        "kind": sp.kind,
        "name": sp.name,
        "split": sp.split,
        "rows": sp.shape[0],
        "cols": sp.shape[1],
        "centered": sp.centered,
        "method": sp.method,
        **s,
    }
    return {k: row[k] for k in KEYS}


def list_layers(path: str, kind: str) -> str:
    if kind == "table":
        from cmkdtool.io.tables import read_tables

        t = read_tables([path])
        cols = t.modality_columns()
        width = max((len(c) for c in cols), default=0)
        lines = [f"{t.name}", "  feature columns (--column), sample shape:"]
        lines += [f"    {c:<{width}}  {list(t.shape(c))}" for c in cols]
        return "\n".join(lines) + "\n"
    import torch

    from cmkdtool.analysis.spectrum import matrix_weights
    from cmkdtool.io.checkpoints import load_model, read_checkpoint

    model = load_model(path)
    tensors, spec, _ = read_checkpoint(path)
    zero = {i["name"]: torch.zeros(2, *[int(s) for s in i["shape"]]) for i in spec["inputs"]}
    with torch.no_grad():
        _, outs = model.forward_layers(zero, model.layer_names())
    mats = matrix_weights(tensors)
    width = max(len(n) for n in [*outs, *mats])
    lines = [f"{path}", "  layers (features; --layer with --data), output width:"]
    lines += [f"    {n:<{width}}  {outs[n].shape[1]}" for n in model.layer_names()]
    lines.append("  weight matrices (--layer without --data), shape (out, in):")
    lines += [f"    {n:<{width}}  {list(s)}" for n, s in mats.items()]
    return "\n".join(lines) + "\n"


def _read_data(data: list[str], inputs: list[str], kinds: list[str]):
    """The --data tables, joined, with the input columns of every checkpoint (read once, also from stdin)."""
    from cmkdtool.io.checkpoints import read_metadata
    from cmkdtool.io.tables import read_tables

    needs = {
        p: [i["name"] for i in read_metadata(p)[0]["inputs"]]
        for p, k in zip(inputs, kinds, strict=True)
        if k == "checkpoint"
    }
    columns = list(dict.fromkeys(c for cols in needs.values() for c in cols))
    try:
        return read_tables(data, columns=columns)
    except CmkdError as e:
        if "no column" not in str(e):
            raise
        reads = "; ".join(f"{p} reads {', '.join(cols)}" for p, cols in needs.items())
        raise CmkdError(f"{e} ({reads})") from e


def _layer_names(path: str) -> list[str]:
    """Feature layer names of a checkpoint's model (for hints); empty when it cannot be built."""
    try:
        from cmkdtool.io.checkpoints import load_model

        return load_model(path).layer_names()
    except CmkdError:
        return []
