"""Salience tables (``rank-salience`` writes them, ``--mask`` reads them): Parquet with one row per channel of
each ranked layer: input, layer, channel (int32), salience in [0, 1] (float32), rank (int32, 1 = most salient),
distance (float64, the raw mean distance), and the run's record in the schema metadata (``cmkdtool``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmkdtool.errors import CmkdError
from cmkdtool.io.tables import META_KEY, write_table


@dataclass
class Salience:
    """A salience table: one row per channel of one or more (input, layer)s."""

    path: str
    input: np.ndarray
    layer: np.ndarray
    channel: np.ndarray
    salience: np.ndarray
    rank: np.ndarray
    meta: dict

    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.layer.tolist()))

    def rows(self, layer: str) -> np.ndarray:
        import numpy as np

        return np.nonzero(self.layer == layer)[0]


def read_salience(path: str) -> Salience:
    """Read a salience table written by ``cmkdtool rank-salience`` (or any Parquet with its columns)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise CmkdError(f"{path}: no such file; give a salience table written by cmkdtool rank-salience")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise CmkdError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from e
    need = ("channel", "salience", "rank")
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise CmkdError(
            f"{path}: not a salience table (no column {missing[0]!r}); give the output of cmkdtool rank-salience"
        )
    raw = (table.schema.metadata or {}).get(b"cmkdtool", b"{}")
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = {}
    n = table.num_rows
    default_layer = str(meta.get("layer") or "")
    col = table.column_names
    layer = np.asarray(table["layer"].to_pylist() if "layer" in col else [default_layer] * n, dtype=object)
    inp = np.asarray(table["input"].to_pylist() if "input" in col else [""] * n, dtype=object)
    sal = np.asarray(table["salience"].to_numpy(zero_copy_only=False), dtype=np.float64)
    if not np.isfinite(sal).all():
        raise CmkdError(f"{path}: the salience column holds NaN or inf; re-run rank-salience")
    return Salience(
        path=str(path),
        input=inp,
        layer=layer,
        channel=np.asarray(table["channel"].to_numpy(zero_copy_only=False), dtype=np.int64),
        salience=sal,
        rank=np.asarray(table["rank"].to_numpy(zero_copy_only=False), dtype=np.int64),
        meta=meta,
    )


def write_salience(path: str, results: list, meta: dict) -> None:
    """One row per channel of each ranked layer: input, layer, channel, salience in [0, 1], rank (1 = most
    salient) and the raw distance (``SalienceResult``s); ``meta`` goes to the schema metadata (``cmkdtool``)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field("input", pa.string(), nullable=False),
            pa.field("layer", pa.string(), nullable=False),
            pa.field("channel", pa.int32(), nullable=False),
            pa.field("salience", pa.float32(), nullable=False),
            pa.field("rank", pa.int32(), nullable=False),
            pa.field("distance", pa.float64(), nullable=False),
        ],
        metadata={META_KEY: json.dumps(meta).encode()},
    )
    cols = [
        pa.array([r.input for r in results for _ in r.raw], pa.string()),
        pa.array([r.layer for r in results for _ in r.raw], pa.string()),
        pa.array(np.concatenate([np.arange(len(r.raw)) for r in results]).astype(np.int32)),
        pa.array(np.concatenate([r.salience for r in results]).astype(np.float32)),
        pa.array(np.concatenate([r.rank for r in results]).astype(np.int32)),
        pa.array(np.concatenate([r.raw for r in results]).astype(np.float64)),
    ]
    write_table(pa.Table.from_arrays(cols, schema=schema), path)


__all__ = ["Salience", "read_salience", "write_salience"]
