"""The streaming, resumable writer behind ``cmkdtool extract``.

Rows arrive in batches. Every ``chunk_rows`` rows they are written as one small Parquet file (atomically) in
the folder ``<output>.partial/``, next to a ``state.json`` that records what is being extracted. When the run
ends, the parts are streamed, in order, into the output (one Parquet file, zstd, row groups of at most
``ROW_GROUP_SIZE`` rows, written to a temporary file and renamed into place) and the folder is removed.

An interrupted run (Ctrl-C, a crash, a killed job) leaves the finished parts behind. ``--resume`` reads the
ids they hold (and, when the output already exists, the ids in it: new files added to a folder are appended)
and skips them; the same column and extractor settings are required. Without ``--resume`` a leftover
``<output>.partial/`` is an error rather than silently discarded work.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (registers pa.compute)
import pyarrow.parquet as pq

from cmkdtool.errors import CmkdError
from cmkdtool.io.atomic import atomic_path, atomic_write_text
from cmkdtool.io.tables import META_KEY, ROW_GROUP_SIZE, feature_field


def partial_dir(output: str) -> Path:
    return Path(f"{output}.partial")


STATE_KEYS = ("column", "settings", "task", "class_names", "split_rule")


def _differences(old: dict, new: dict) -> list[str]:
    """Names of the state entries (and of the settings inside them) that differ."""
    out = []
    for key in STATE_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"settings.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out


class ExtractWriter:
    """Collect extracted rows in resumable parts; ``finish`` writes the table.

    ``state`` (JSON-able: the column, the extractor ``settings``, the label ``task``, the ``class_names`` and the
    ``split_rule``) describes the extraction; a resumed run must have the same, so that old and new rows mean the
    same labels, splits and features. The feature shape is fixed by the first rows. Nothing is written to disk
    before the first part.
    """

    def __init__(
        self,
        output: str,
        column: str,
        settings: dict,
        *,
        resume: bool,
        task: str | None,
        class_names: list[str] | None = None,
        split_rule: list | None = None,
        chunk_rows: int = 1024,
    ) -> None:
        self.output = output
        self.column = column
        self.task = task
        self.state = {
            "column": column,
            "settings": settings,
            "task": task,
            "class_names": class_names,
            "split_rule": split_rule,
        }
        self.chunk_rows = max(1, int(chunk_rows))
        self.folder = partial_dir(output)
        self.shape: list[int] | None = None
        self.done_ids: set[str] = set()
        self.kept_ids: set[str] = set()  # ids of the existing output kept by --resume
        self.parts: list[Path] = []
        self.kept_output = False
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        if self.folder.exists():
            if not resume:
                raise CmkdError(
                    f"{self.folder}: left by an interrupted extract; pass --resume to continue it, or delete the "
                    "folder to start again"
                )
            self._resume_parts()
        if resume and Path(output).is_file():
            self._resume_output()

    # ---- resuming ---------------------------------------------------------------------------------------
    def _check_state(self, old: dict, where: str, fix: str) -> None:
        diff = _differences(old, self.state)
        if diff:
            raise CmkdError(f"{where} was extracted with other settings ({', '.join(diff)} differ); {fix}")

    def _resume_parts(self) -> None:
        try:
            old = json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise CmkdError(f"{self.folder}: not a cmkdtool extract in progress; delete the folder") from e
        self._check_state(old, str(self.folder), f"rerun with the same options to resume, or delete {self.folder}")
        self.shape = old.get("shape")
        for part in sorted(self.folder.glob("part-*.parquet")):
            try:
                ids = pq.read_table(part, columns=["id"]).column("id").to_pylist()
            except (pa.ArrowInvalid, OSError, KeyError) as e:
                raise CmkdError(
                    f"{part}: not a readable part of this extract; delete {self.folder} to start again"
                ) from e
            self.done_ids.update(ids)
            self.parts.append(part)

    def _resume_output(self) -> None:
        from cmkdtool.io.tables import _meta_of

        try:
            schema = pq.read_schema(self.output)
            table_ids = pq.read_table(self.output, columns=["id"]).column("id").to_pylist()
            field = schema.field(self.column)
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise CmkdError(f"{self.output}: cannot resume into it (not a table of this extract); remove it") from e
        meta = _meta_of(schema.empty_table())
        old = meta.get("extract", {})
        old_state = {
            "column": old.get("column"),
            "settings": old.get("settings"),
            "task": old.get("task"),
            "class_names": meta.get("class_names"),
            "split_rule": [old.get("split_ratio"), old.get("split_seed")],
        }
        self._check_state(
            old_state, self.output, "rerun with the same options to add samples to it, or write to a new output"
        )
        shape = json.loads(field.metadata[b"shape"]) if field.metadata and b"shape" in field.metadata else None
        if self.shape is not None and shape is not None and list(shape) != list(self.shape):
            raise CmkdError(f"{self.output} and {self.folder} hold features of different shapes; delete {self.folder}")
        self.shape = shape if shape is not None else [field.type.list_size]
        self.kept_ids = set(table_ids)
        self.done_ids.update(table_ids)
        self.kept_output = True

    # ---- writing ----------------------------------------------------------------------------------------
    def schema(self) -> pa.Schema:
        fields = [pa.field("id", pa.string(), nullable=False)]
        if self.task == "multiclass":
            fields.append(pa.field("label", pa.int64(), nullable=False))
        elif self.task == "multilabel":
            fields.append(pa.field("labels", pa.list_(pa.int64()), nullable=False))
        fields.append(pa.field("split", pa.string(), nullable=False))
        fields.append(feature_field(self.column, self.shape))
        return pa.schema(fields)

    def add(self, items: list, values: np.ndarray) -> None:
        """Rows for ``items`` (sources.Item) with features ``values`` of shape (len(items), *sample_shape)."""
        if not items:
            return
        values = np.ascontiguousarray(values, dtype=np.float32)
        shape = [int(s) for s in values.shape[1:]]
        if self.shape is None:
            self.shape = shape
        elif shape != list(self.shape):
            raise CmkdError(
                f"features of {items[0].where} have shape {shape}, earlier ones {list(self.shape)}; every sample "
                "of a column needs the same shape"
            )
        n = len(items)
        cols: list[pa.Array] = [pa.array([it.id for it in items], pa.string())]
        if self.task == "multiclass":
            cols.append(pa.array([it.label for it in items], pa.int64()))
        elif self.task == "multilabel":
            cols.append(pa.array([it.labels for it in items], pa.list_(pa.int64())))
        cols.append(pa.array([it.split for it in items], pa.string()))
        flat = values.reshape(n, -1)
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]))
        self._pending.append(pa.RecordBatch.from_arrays(cols, schema=self.schema()))
        self._pending_rows += n
        self.done_ids.update(it.id for it in items)
        if self._pending_rows >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "state.json", json.dumps({**self.state, "shape": self.shape}, sort_keys=True))
        index = 1 + max((int(p.stem.split("-")[1]) for p in self.parts), default=-1)
        part = self.folder / f"part-{index:06d}.parquet"
        with atomic_path(part) as tmp:
            pq.write_table(pa.Table.from_batches(self._pending), tmp, compression="zstd")
        self.parts.append(part)
        self._pending, self._pending_rows = [], 0

    def _tables(self, columns: list[str]) -> Iterator[pa.Table]:
        """The kept output (streamed by batches), then the parts without ids the kept output already has (a
        run killed after its rename and before removing its parts leaves both)."""
        if self.kept_output:
            for batch in pq.ParquetFile(self.output).iter_batches(ROW_GROUP_SIZE, columns=columns):
                yield pa.Table.from_batches([batch])
        kept = pa.array(sorted(self.kept_ids), pa.string())
        for part in self.parts:
            t = pq.read_table(part, columns=columns)
            if len(kept):
                t = t.filter(pa.compute.invert(pa.compute.is_in(t.column("id"), value_set=kept)))
            yield t

    def finish(self, meta: dict) -> int:
        """Write the output table from the parts (and the kept output when resuming); returns its row count."""
        self.flush()
        if self.shape is None:
            raise CmkdError(f"{self.output}: no sample could be extracted, nothing written")
        schema = self.schema().with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
        plain = self.schema()
        rows = 0
        with atomic_path(self.output) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            buffer: list[pa.Table] = []
            buffered = 0
            for t in self._tables(plain.names):
                buffer.append(t.cast(plain))
                buffered += t.num_rows
                if buffered >= ROW_GROUP_SIZE:
                    w.write_table(pa.concat_tables(buffer), ROW_GROUP_SIZE)
                    rows += buffered
                    buffer, buffered = [], 0
            if buffer:
                w.write_table(pa.concat_tables(buffer), ROW_GROUP_SIZE)
                rows += buffered
        shutil.rmtree(self.folder, ignore_errors=True)
        return rows

    def abandon(self) -> None:
        """Keep the finished parts for ``--resume`` (pending rows are written first); with none, leave nothing."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - keep what is already on disk
            pass
        if not self.parts:
            shutil.rmtree(self.folder, ignore_errors=True)
