"""``cmkdtool spectrum``: singular value spectra of weights and features, the dimensional-collapse diagnostic."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from cmkdtool.cli.common import DeviceOpt, QuietOpt, check_output, command_line, csv_text, note, split_rule
from cmkdtool.errors import CmkdError, CmkdUsageError

FORMATS = ("table", "json", "csv")
SPLITS = ("train", "val", "test", "all")
NUMBERS = ("effective_rank", "rankme", "rank90", "rank99", "rank_tol", "sigma_max")
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
)


def _kind_of(path: str) -> str:
    """'checkpoint' or 'table', from the file's first bytes, else its extension."""
    if path == "-":
        return "table"
    if not os.path.exists(path):
        raise CmkdError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CmkdError(f"{path}: is a folder; give a .safetensors checkpoint or a Parquet feature table")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PAR1":
        return "table"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return "checkpoint"
    low = path.lower()
    if low.endswith(".safetensors"):
        return "checkpoint"  # read_metadata says what is wrong with it
    if low.endswith((".parquet", ".pq")):
        return "table"
    raise CmkdError(
        f"{path}: neither a safetensors checkpoint nor a Parquet feature table; give files written by cmkdtool"
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
        **s,
    }
    return {k: row[k] for k in KEYS}


def _render(results: list[dict], sigmas: list, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv":
        return csv_text(results, list(KEYS))
    from cmkdtool.analysis.spectrum import sparkline

    header = ["input", "n", *NUMBERS, "spectrum (log sigma)"]
    rows = []
    for r, sv in zip(results, sigmas, strict=True):
        rows.append(
            [
                r["input"],
                str(r["n_values"]),
                f"{r['effective_rank']:.2f}",
                f"{r['rankme']:.2f}",
                str(r["rank90"]),
                str(r["rank99"]),
                str(r["rank_tol"]),
                f"{r['sigma_max']:.4g}",
                sparkline(sv),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, len(header) - 1}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)]) + "\n"


def _write_parquet(path: str, results: list[dict], sigmas: list) -> None:
    import numpy as np
    import pyarrow as pa

    from cmkdtool import __version__
    from cmkdtool.io.tables import META_KEY, write_table

    labels = [r["input"] for r in results]
    counts = [len(s) for s in sigmas]
    meta = {"tool": "cmkdtool", "version": __version__, "command": command_line(), "spectra": results}
    schema = pa.schema(
        [
            pa.field("input", pa.string(), nullable=False),
            pa.field("index", pa.int32(), nullable=False),
            pa.field("sigma", pa.float64(), nullable=False),
        ],
        metadata={META_KEY: json.dumps(meta).encode()},
    )
    table = pa.Table.from_arrays(
        [
            pa.array(np.repeat(np.asarray(labels, dtype=object), counts).tolist(), pa.string()),
            pa.array(np.concatenate([np.arange(1, c + 1) for c in counts] or [np.zeros(0)]).astype(np.int32)),
            pa.array(np.concatenate(sigmas or [np.zeros(0)]).astype(np.float64)),
        ],
        schema=schema,
    )
    write_table(table, path)


def _plot(path: str, results: list[dict], sigmas: list) -> None:
    """Log singular value against its 1-based index, one line per input (CIBA Fig. 3 / Fig. 5)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cmkdtool.io.atomic import atomic_path

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for r, sv in zip(results, sigmas, strict=True):
        y = np.where(sv > 0, sv, np.nan)  # zeros have no logarithm: the line stops there
        if np.isfinite(y).any():
            ax.plot(np.arange(1, len(sv) + 1), y, marker="." if len(sv) <= 64 else None, label=r["input"])
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    ax.set_xlabel("singular value index (descending)")
    ax.set_ylabel("singular value σ (log scale)")
    ax.set_title("Singular value spectrum")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _list_layers(path: str, kind: str) -> str:
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


def spectrum(
    inputs: Annotated[
        list[str], typer.Argument(help="Checkpoints (.safetensors) and/or feature tables (Parquet; '-' for a stream).")
    ],
    layer: Annotated[
        str | None,
        typer.Option(
            help="Checkpoints with --data: the layer whose features to analyse [default: embedding]. Without "
            "--data: one weight, by parameter (encoders.xb.0.weight) or module name (encoders.xb.0) [default: "
            "every weight matrix]. See --list-layers."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", help="Feature table(s) to run checkpoints on (joined on id); repeat for several tables."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Rows of the features: train, val, test or all.")] = "test",
    column: Annotated[
        list[str] | None,
        typer.Option("--column", help="Table inputs: modality column to analyse; repeat [default: every one]."),
    ] = None,
    list_layers: Annotated[
        bool, typer.Option("--list-layers", help="Print the layers and weight matrices of each checkpoint, and exit.")
    ] = False,
    plot: Annotated[
        str | None, typer.Option(help="Also plot log sigma against index, one line per input, to this PNG.")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Also write every sigma to this Parquet (input, index, sigma)."),
    ] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table (for people), json or csv.")] = "table",
    split_ratio: Annotated[
        str | None,
        typer.Option(
            help="train,val,test fractions for tables without a 'split' column [default: the checkpoint's, "
            "else 0.8,0.1,0.1]."
        ),
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Seed of the id-hash split [default: the checkpoint's, else 0].")
    ] = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Singular value spectra of weights and features: the dimensional-collapse diagnostic (CIBA Fig. 3, 5).

    A checkpoint alone: every weight matrix as stored (out, in), uncentred. A checkpoint with --data: the
    features of --layer (default embedding) over the --split rows, centred (N x F). A table: each modality
    column over the --split rows, centred. One row per spectrum on stdout.

    Values are singular values sigma (not sigma^2), descending. effective_rank = exp(entropy of
    p = sigma / sum sigma) (Roy & Vetterli 2007); rankme = the same with p + 1e-7 (RankMe, Garrido et al.
    2023); rank90/rank99 = fewest values whose sigma^2 reach 90%/99% of the total sigma^2; rank_tol = number of
    sigma > sigma_max * max(rows, cols) * 1.19e-7 (numpy matrix_rank's rule with the float32 epsilon). A
    collapse shows as a cliff in the sparkline and in --plot.
    """
    if format not in FORMATS:
        raise CmkdUsageError(f"unknown --format '{format}'; choose one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise CmkdUsageError(f"unknown --split '{split}'; choose one of {', '.join(SPLITS)}")
    data = list(data or [])
    columns = list(column or [])
    sources = [*inputs, *data]
    for out in (plot, output):
        if out is not None:
            check_output(out, *sources)
    if plot and output and os.path.realpath(plot) == os.path.realpath(output):
        raise CmkdUsageError("--plot and --output name the same file; give two file names")
    if sum(1 for p in sources if p == "-") > 1:
        raise CmkdUsageError("'-' (stdin) can be given only once among the inputs and --data")

    kinds = [_kind_of(p) for p in inputs]
    if list_layers:
        sys.stdout.write("".join(_list_layers(p, k) for p, k in zip(inputs, kinds, strict=True)))
        return
    if data and "checkpoint" not in kinds:
        raise CmkdUsageError("--data runs checkpoints on a table, but no input is a checkpoint")
    if columns and "table" not in kinds:
        raise CmkdUsageError("--column applies to table inputs, but no input is a feature table")

    from cmkdtool.analysis import spectrum as lib

    results: list[dict] = []
    sigmas: list = []

    def add(label: str, source: str, sp) -> None:
        results.append(_result(label, source, sp))
        sigmas.append(sp.sigma)

    shared = None  # the --data tables, read once for every checkpoint
    dev = None
    for path, kind in zip(inputs, kinds, strict=True):
        if kind == "table":
            from cmkdtool.io.tables import read_tables

            table = read_tables([path], columns=columns or None)
            cols = columns or table.modality_columns()
            if not cols:
                raise CmkdError(f"{table.name}: no feature column (a list of floats) to analyse")
            ratio, sseed = split_rule(split_ratio, split_seed)
            for c in cols:
                add(f"{table.name}:{c}[{split}]", path, lib.column_spectrum(table, c, split, ratio, sseed))
            continue
        from cmkdtool.io.checkpoints import read_checkpoint, read_metadata

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
                add(f"{path}:{sp.name}", path, sp)
            continue

        from cmkdtool.data.tensors import check_model_inputs, load_tensor_data
        from cmkdtool.engine.device import resolve_device
        from cmkdtool.io.checkpoints import load_model
        from cmkdtool.io.tables import read_tables

        spec, train = read_metadata(path)
        name = layer or "embedding"
        if dev is None:
            dev = resolve_device(device)
        model = load_model(path, dev)
        if name not in model.layer_names():
            raise CmkdError(f"{path}: unknown layer '{name}'; layers of this model: {', '.join(model.layer_names())}")
        wanted = [i["name"] for i in spec["inputs"]]
        if shared is None:
            shared = _read_data(data, inputs, kinds)
            for n in shared.notes:
                note(n, quiet)
        check_model_inputs(shared, spec, path)
        ratio, sseed = split_rule(split_ratio, split_seed, train)
        tdata = load_tensor_data(shared, wanted, dev, need_labels=False, split_ratio=ratio, split_seed=sseed)
        add(f"{path}:{name}[{split}]", path, lib.feature_spectrum(model, tdata, name, split))

    if output:
        _write_parquet(output, results, sigmas)
        note(f"wrote {output} ({sum(len(s) for s in sigmas)} singular values of {len(results)} spectra)", quiet)
    if plot:
        _plot(plot, results, sigmas)
        note(f"wrote {plot}", quiet)
    sys.stdout.write(_render(results, sigmas, format))


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
