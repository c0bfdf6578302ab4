"""``cmkdtool table``: prepare feature tables once for many runs (convert to a fast format, join modalities by id)."""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli.common import QuietOpt, SummaryGroup, guard, note

app = typer.Typer(
    cls=SummaryGroup,
    help="Prepare feature tables once for many runs, out of core (a bounded number of rows in memory): convert "
    "between Parquet and Arrow IPC (memory-mapped, no decode), join tables of several modalities on id.",
    no_args_is_help=True,
)

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Output format: arrow (an uncompressed Arrow IPC file, memory-mapped by readers), parquet (zstd), or "
        "auto (from the output's suffix: .arrow/.ipc/.feather or .parquet; else the other format of the input).",
    ),
]
BatchRowsOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-rows",
        help="Rows per record batch of an Arrow file [default: 8192] or per row group of a Parquet file "
        "[default: 65536]; the unit the stream placement shuffles.",
        min=1,
    ),
]


def _report(written, quiet: bool) -> None:
    for n in written.notes:
        note(n, quiet)
    note(f"wrote {written.path}: {written.rows} rows, {len(written.columns)} columns ({written.format})", quiet)


@app.command("convert", no_args_is_help=True)
@guard
def convert(
    input: Annotated[
        str,
        typer.Argument(
            help="Table to read: a Parquet file, an Arrow IPC file, a folder of shards, or '-' "
            "(an Arrow IPC stream on stdin).",
            show_default=False,
        ),
    ],  # fmt: skip
    output: Annotated[str, typer.Option("--output", "-o", help="Output file.", show_default=False)],
    format: FormatOpt = "auto",
    batch_rows: BatchRowsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Convert a feature table between Parquet and Arrow IPC, one row group at a time.

    An Arrow IPC file (uncompressed) is memory-mapped by every command that reads it: nothing to decode, and the
    pages are shared by processes on one machine; it takes the table's raw size on disk. Columns, types and
    metadata are kept.
    """
    from cmkdtool.pipelines.table import convert_table

    _report(convert_table(input, output, format=format, batch_rows=batch_rows), quiet)


@app.command("join", no_args_is_help=True)
@guard
def join(
    tables: Annotated[
        list[str],
        typer.Argument(
            help="Tables to join (Parquet files, Arrow IPC files or folders of shards); the first sets the row order.",
            show_default=False,
        ),
    ],  # fmt: skip
    output: Annotated[str, typer.Option("--output", "-o", help="Output file.", show_default=False)],
    format: FormatOpt = "auto",
    batch_rows: BatchRowsOpt = None,
    block_rows: Annotated[
        int,
        typer.Option(
            "--block-rows",
            help="Rows joined at a time when the tables are not in the same id order (memory: about this many "
            "rows of every column; each other table is read up to rows / block-rows times).",
            min=1,
        ),
    ] = 65536,
    quiet: QuietOpt = False,
) -> None:
    """Join feature tables on id into one aligned table, out of core.

    The inner join in the first table's row order: its columns, then each other table's columns but id (label,
    labels and split must agree where repeated; a feature column may live in one table only). Tables already in
    the same id order are read once, row group by row group; others block by block (--block-rows). Dropped rows
    are counted on stderr.
    """
    from cmkdtool.pipelines.table import join_tables

    _report(join_tables(tables, output, format=format, batch_rows=batch_rows, block_rows=block_rows), quiet)
