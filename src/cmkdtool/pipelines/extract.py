"""``cmkdtool extract`` as library calls: samples through an extractor into a feature table, or arrays already
computed into one.

    cmkdtool extract image|audio|video|text SRC -o OUT [...]   run_extract_table(KIND, SRC, extractor, OUT, ...)
    cmkdtool extract array SRC -o OUT [...]                    run_extract_array(SRC, ...).write(OUT)

``run_extract_table`` writes OUT as it goes (resumable parts in ``OUT.partial/``: a killed run continues with
``resume=True``) and returns what it wrote; the extractor (``extract.image.ImageExtractor``, ...; see
``extract.runner``) is built by the caller. Tables record the command line given as ``command=`` (default: this
process's); give the CLI's to get the same bytes as the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cmkdtool.errors import CmkdError, CmkdUsageError

TEXT_EXTS = (".txt", ".md")
KINDS = ("image", "audio", "video", "text")


def _kind_files(kind: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The file extensions of a kind's samples, of a clip's frames, and the progress bar's unit."""
    from cmkdtool.extract.image import IMAGE_EXTS

    if kind == "image":
        return IMAGE_EXTS, (), "img"
    if kind == "audio":
        from cmkdtool.extract.audio import AUDIO_EXTS

        return AUDIO_EXTS, (), "clip"
    if kind == "video":
        from cmkdtool.extract.video import VIDEO_EXTS

        return VIDEO_EXTS, IMAGE_EXTS, "clip"
    if kind == "text":
        return TEXT_EXTS, (), "text"
    raise CmkdUsageError(f"extract kind '{kind}' has no default file types; give exts=")


def default_workers(n_items: int) -> int:
    """Decoding is a few % of a CNN's CPU time: on 2 cores a worker only competes with the model's threads
    (benchmarks/extract.py: 0 workers 19.4 img/s, 1 worker 17.2 img/s); with more cores (or a GPU) it pays."""
    cores = os.cpu_count() or 1
    return 0 if n_items < 64 or cores <= 2 else min(8, cores - 1)


def read_text_source(path: str, path_column: str = "path"):
    """Texts to extract: a .txt file (one sample per line, ids line-000001...), a folder of class subfolders of
    .txt/.md files, or a manifest with a 'text' (or ``path_column``) column."""
    from pathlib import Path

    from cmkdtool.extract.sources import Item, Source, read_source
    from cmkdtool.extract.text import read_texts

    if Path(path).suffix.lower() == ".txt" and Path(path).is_file():
        texts = read_texts(path)
        items = [Item(i, text=t) for i, t in zip(texts.ids, texts.texts, strict=True)]
        return Source(items, None, None, {"source": path, "layout": "lines"})
    return read_source(path, TEXT_EXTS, path_column=path_column, text_column="text")


def _split_rule(split_ratio, split_seed) -> tuple[list[float], int]:
    """``options.split_rule`` with the fractions as floats: ``[1, 0, 0]`` is recorded as the CLI's ``1,0,0``."""
    from cmkdtool.options import split_rule

    ratio, seed = split_rule(split_ratio, split_seed)
    return [float(r) for r in ratio], seed


def _check_not_a_sample(output: str, source) -> None:
    out = os.path.realpath(output)
    for item in source.items:
        if item.path is not None and os.path.realpath(item.path) == out:
            raise CmkdUsageError(f"output {output} is also an input ({item.id}); write to another file")


@dataclass
class ExtractRun:
    """What ``run_extract_table`` wrote: ``rows`` in ``output`` (``written`` now, ``skipped`` already there),
    feature ``column`` of per-sample ``shape``, the unreadable samples (``errors``: id, path, error) and the
    table's metadata."""

    output: str
    column: str
    rows: int
    shape: list[int]
    written: int
    skipped: int
    seconds: float
    errors: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Samples written per second (NaN when nothing took time)."""
        return self.written / self.seconds if self.seconds > 0 else float("nan")


def run_extract_table(
    kind: str,
    source,
    extractor,
    output: str,
    *,
    name: str | None = None,
    path_column: str = "path",
    split_ratio=None,
    split_seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    resume: bool = False,
    chunk_rows: int = 1024,
    on_error: str = "skip",
    quiet: bool = False,
    exts: tuple[str, ...] | None = None,
    clip_exts: tuple[str, ...] | None = None,
    unit: str | None = None,
    command: str | None = None,
) -> ExtractRun:
    """``cmkdtool extract KIND``: extract every sample of ``source`` (a folder, a manifest, for texts a .txt file;
    or an ``extract.sources.Source``) with ``extractor`` and write the table ``output``, feature column ``name``
    (default: ``kind``). Samples without a split get one by hashing their id (``split_ratio``, ``split_seed``).
    ``exts``/``clip_exts``/``unit`` default to the kind's; ``workers`` to what pays on this machine. Unreadable
    samples are skipped and listed (``on_error='skip'``) or stop the run (``'fail'``)."""
    from cmkdtool.extract.runner import check_on_error, error_record, run_extract
    from cmkdtool.extract.sources import assign_splits, read_source
    from cmkdtool.extract.writer import ExtractWriter
    from cmkdtool.io.provenance import provenance

    check_on_error(on_error)
    column = name or kind
    if isinstance(source, str | os.PathLike):
        if kind == "text" and exts is None:
            source = read_text_source(str(source), path_column)
        else:
            if exts is None:
                exts, kind_clip_exts, _ = _kind_files(kind)
                clip_exts = kind_clip_exts if clip_exts is None else clip_exts
            source = read_source(str(source), exts, clip_exts=clip_exts or (), path_column=path_column)
    if unit is None:
        unit = _kind_files(kind)[2] if kind in KINDS else "file"
    _check_not_a_sample(output, source)
    ratio, seed = _split_rule(split_ratio, split_seed)
    assign_splits(source.items, ratio, seed)
    settings = extractor.settings()
    writer = ExtractWriter(
        output,
        column,
        settings,
        resume=resume,
        task=source.task,
        class_names=source.class_names,
        split_rule=[ratio, seed],
        chunk_rows=chunk_rows,
    )
    result = run_extract(
        source,
        extractor,
        writer,
        batch_size=batch_size,
        workers=default_workers(len(source.items)) if workers is None else workers,
        device=device,
        precision=precision,
        on_error=on_error,
        quiet=quiet,
        unit=unit,
    )
    meta = {
        **provenance(command),
        "class_names": source.class_names,
        "extract": {
            "kind": kind,
            "column": column,
            "settings": settings,
            "task": source.task,
            "source": source.description,
            "split_ratio": ratio,
            "split_seed": seed,
            "samples": len(source.items),
            "errors": error_record(result.errors),
        },
    }
    if source.class_names is None:
        del meta["class_names"]
    if writer.shape is None and result.errors:
        first = result.errors[0]
        raise CmkdError(
            f"{output}: no sample could be extracted, nothing written; {len(result.errors)} failed, the first: "
            f"{first['path']}: {first['error']}"
        )
    rows = writer.finish(meta)
    return ExtractRun(
        output=output,
        column=column,
        rows=rows,
        shape=list(writer.shape),
        written=result.written,
        skipped=result.skipped,
        seconds=result.seconds,
        errors=result.errors,
        meta=meta,
    )


@dataclass
class ArrayTable:
    """A feature table of arrays already computed (``run_extract_array``); ``write`` writes it."""

    table: object  # pyarrow.Table
    column: str
    rows: int
    shape: list[int]
    meta: dict

    def write(self, output: str) -> None:
        """Write the table to ``output`` (Parquet; '-' an Arrow stream)."""
        from cmkdtool.io.tables import write_table

        write_table(self.table, output)


def run_extract_array(
    source: str,
    *,
    key: str | None = None,
    meta: str | None = None,
    name: str | None = None,
    split_ratio=None,
    split_seed: int = 0,
    command: str | None = None,
) -> ArrayTable:
    """``cmkdtool extract array``: the arrays of ``source`` (.npy, .npz, .csv/.tsv, .safetensors; ``key`` picks
    one) with their ids, labels and splits (from the file or the sidecar ``meta``) as a table with the feature
    column ``name`` (default: 'array'). Rows without a split get one by hashing their id."""
    from cmkdtool.extract.arrays import read_array_source
    from cmkdtool.io.provenance import provenance
    from cmkdtool.io.tables import build_table, hash_split

    src = read_array_source(source, key, meta)
    ratio, seed = _split_rule(split_ratio, split_seed)
    split = src.split if src.split is not None else list(hash_split(src.ids, ratio, seed))
    column = name or "array"
    task = "multiclass" if src.label is not None else ("multilabel" if src.labels is not None else None)
    info = {"kind": "array", "column": column, "settings": src.config, "task": task}
    if src.split is None:
        info.update(split_ratio=ratio, split_seed=seed)
    table_meta = {**provenance(command), "extract": info}
    if src.class_names is not None:
        table_meta["class_names"] = src.class_names
    table = build_table(src.ids, {column: src.values}, label=src.label, labels=src.labels, split=split, meta=table_meta)
    return ArrayTable(table, column, src.num_rows, list(src.sample_shape), table_meta)
