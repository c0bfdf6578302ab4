"""``cmkdtool synth`` as library calls: a synthetic multimodal feature table with its ground truth.

    cmkdtool synth mfh -o OUT [...]          run_synth_mfh(...).write(OUT)
    cmkdtool synth orthogonal -o OUT [...]   run_synth_orthogonal(...).write(OUT)
    cmkdtool synth spoof -o OUT [...]        run_synth_spoof(...).write(OUT)

The options are the generators' (``data.synth.synth_mfh`` / ``synth_orthogonal`` / ``synth_spoof``);
``synth_table`` (``spoof_table`` for image sets) makes the table of data generated otherwise. Tables record the
command line given as ``command=`` (default: this process's); give the CLI's to get the same bytes as the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmkdtool.data.synth import SpoofData, SynthData


@dataclass
class SynthTable:
    """Generated ``data`` as a feature table (columns xa, xb, label, split, or for ``synth spoof`` label, split,
    attack_type, rgb, depth, ir; the ground truth in ``meta``)."""

    data: SynthData | SpoofData
    table: object  # pyarrow.Table
    meta: dict

    def write(self, output: str) -> None:
        """Write the table to ``output`` (Parquet; '-' an Arrow stream)."""
        from cmkdtool.io.tables import write_table

        write_table(self.table, output)

    def counts(self) -> dict[str, int]:
        """Rows per split."""
        return {s: int((self.data.split == s).sum()) for s in ("train", "val", "test")}


def synth_table(data: SynthData, *, command: str | None = None) -> SynthTable:
    """The table of ``data``: provenance, the data seed, the class names and the generator's record in its
    metadata."""
    from cmkdtool.io.provenance import provenance
    from cmkdtool.io.tables import build_table

    meta = {
        **provenance(command),
        "seed": data.meta.get("params", {}).get("seed", data.meta.get("seed")),
        "class_names": data.class_names,
        "synth": data.meta,
    }
    table = build_table(data.ids, {"xa": data.xa, "xb": data.xb}, label=data.label, split=data.split, meta=meta)
    return SynthTable(data, table, meta)


def spoof_table(data: SpoofData, *, command: str | None = None) -> SynthTable:
    """The table of a face anti-spoofing image set: image columns ``rgb`` ``[3, H, W]``, ``depth`` ``[1, H, W]`` and
    (when generated) ``ir`` ``[1, H, W]`` with their shapes in the field metadata, ``label`` (1 = bona fide),
    ``split`` and the string column ``attack_type``; metadata as for ``synth_table``."""
    import pyarrow as pa

    from cmkdtool.io.provenance import provenance
    from cmkdtool.io.tables import build_table

    meta = {
        **provenance(command),
        "seed": data.meta.get("params", {}).get("seed"),
        "class_names": data.class_names,
        "synth": data.meta,
    }
    table = build_table(data.ids, data.images(), label=data.label, split=data.split, meta=meta)
    column = pa.array([str(t) for t in data.attack_type], pa.string())
    table = table.add_column(3, pa.field("attack_type", pa.string(), nullable=False), column)
    return SynthTable(data, table, meta)


def run_synth_mfh(*, command: str | None = None, **params) -> SynthTable:
    """``cmkdtool synth mfh``: the MFH paper's multimodal Gaussian (``data.synth.synth_mfh(**params)``)."""
    from cmkdtool.data.synth import synth_mfh

    return synth_table(synth_mfh(**params), command=command)


def run_synth_orthogonal(*, command: str | None = None, **params) -> SynthTable:
    """``cmkdtool synth orthogonal``: the CIBA paper's separated data (``data.synth.synth_orthogonal(**params)``)."""
    from cmkdtool.data.synth import synth_orthogonal

    return synth_table(synth_orthogonal(**params), command=command)


def run_synth_spoof(*, command: str | None = None, **params) -> SynthTable:
    """``cmkdtool synth spoof``: RGB-D(-IR) face anti-spoofing images (``data.synth.synth_spoof(**params)``)."""
    from cmkdtool.data.synth import synth_spoof

    return spoof_table(synth_spoof(**params), command=command)
