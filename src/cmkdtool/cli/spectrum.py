"""``cmkdtool spectrum``: singular value spectra of weights and features, the dimensional-collapse diagnostic."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import DeviceOpt, QuietOpt, check_output, csv_text, note
from cmkdtool.errors import CmkdUsageError
from cmkdtool.options import parse_split_ratio

FORMATS = ("table", "json", "csv")
NUMBERS = ("effective_rank", "rankme", "rank90", "rank99", "rank_tol", "sigma_max")


def _num(v) -> str:
    """Two decimals; '-' for a number a partial (randomized) spectrum cannot give."""
    return "-" if v is None else f"{v:.2f}"


def _render(results: list[dict], sigmas: list, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv":
        from cmkdtool.pipelines.spectrum import KEYS

        return csv_text(results, list(KEYS))
    from cmkdtool.analysis.spectrum import sparkline

    header = ["input", "n", *NUMBERS, "spectrum (log sigma)"]
    rows = []
    for r, sv in zip(results, sigmas, strict=True):
        rows.append(
            [
                r["input"],
                str(r["n_values"]),
                _num(r["effective_rank"]),
                _num(r["rankme"]),
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


A = Annotated

PARAMS = [
    o.param(
        "inputs",
        A[
            list[str],
            typer.Argument(help="Checkpoints (.safetensors) and/or feature tables (Parquet; '-' for a stream)."),
        ],
    ),
    o.param(
        "layer",
        A[
            str | None,
            typer.Option(
                help="Checkpoints with --data: the layer whose features to analyse [default: embedding]. Without "
                "--data: one weight, by parameter (encoders.xb.0.weight) or module name (encoders.xb.0) [default: "
                "every weight matrix]. See --list-layers."
            ),
        ],
        None,
    ),
    o.param(
        "data",
        A[
            list[str] | None,
            typer.Option(
                "--data", help="Feature table(s) to run checkpoints on (joined on id); repeat for several tables."
            ),
        ],
        None,
    ),
    o.param("split", A[str, typer.Option(help="Rows of the features: train, val, test or all.")], "test"),
    o.param(
        "column",
        A[
            list[str] | None,
            typer.Option("--column", help="Table inputs: modality column to analyse; repeat [default: every one]."),
        ],
        None,
    ),
    o.param(
        "list_layers",
        A[
            bool,
            typer.Option("--list-layers", help="Print the layers and weight matrices of each checkpoint, and exit."),
        ],
        False,
    ),
    o.param(
        "plot",
        A[str | None, typer.Option(help="Also plot log sigma against index, one line per input, to this PNG.")],
        None,
    ),
    o.param(
        "output",
        A[
            str | None,
            typer.Option("--output", "-o", help="Also write every sigma to this Parquet (input, index, sigma)."),
        ],
        None,
    ),
    o.param("format", A[str, typer.Option("--format", "-f", help="table (for people), json or csv.")], "table"),
    o.param(
        "split_ratio",
        A[
            str | None,
            typer.Option(
                help="train,val,test fractions for tables without a 'split' column [default: the checkpoint's, "
                "else 0.8,0.1,0.1]."
            ),
        ],
        None,
        check=parse_split_ratio,
    ),
    o.param(
        "split_seed",
        A[int | None, typer.Option(help="Seed of the id-hash split [default: the checkpoint's, else 0].")],
        None,
    ),
    o.param("device", DeviceOpt, "auto"),
    o.param("quiet", QuietOpt, False),
]


def _run(kw: dict) -> None:
    inputs, plot, output, quiet, fmt = kw["inputs"], kw["plot"], kw["output"], kw["quiet"], kw["format"]
    if fmt not in FORMATS:
        raise CmkdUsageError(f"unknown --format '{fmt}'; choose one of {', '.join(FORMATS)}")
    from cmkdtool.pipelines import spectrum as pipe

    data = list(kw["data"] or [])
    sources = [*inputs, *data]
    for out in (plot, output):
        if out is not None:
            check_output(out, *sources)
    if plot and output and os.path.realpath(plot) == os.path.realpath(output):
        raise CmkdUsageError("--plot and --output name the same file; give two file names")
    if sum(1 for p in sources if p == "-") > 1:
        raise CmkdUsageError("'-' (stdin) can be given only once among the inputs and --data")
    if kw["list_layers"]:
        sys.stdout.write("".join(pipe.list_layers(p, pipe.kind_of(p)) for p in inputs))
        return
    spectra = pipe.run_spectrum(
        inputs, layer=kw["layer"], data=data, split=kw["split"], columns=list(kw["column"] or []),
        split_ratio=kw["split_ratio"], split_seed=kw["split_seed"], device=kw["device"],
    )  # fmt: skip
    for n in spectra.notes:
        note(n, quiet)
    if output:
        spectra.write(output)
        note(
            f"wrote {output} ({sum(len(s) for s in spectra.sigmas)} singular values of {len(spectra.results)} spectra)",
            quiet,
        )
    if plot:
        spectra.plot(plot)
        note(f"wrote {plot}", quiet)
    sys.stdout.write(_render(spectra.results, spectra.sigmas, fmt))


spectrum = o.make_command(
    _run,
    PARAMS,
    """Singular value spectra of weights and features: the dimensional-collapse diagnostic (CIBA Fig. 3, 5).

    A checkpoint alone: every weight matrix as stored (out, in), uncentred. A checkpoint with --data: the
    features of --layer (default embedding) over the --split rows, centred (N x F). A table: each modality
    column over the --split rows, centred. One row per spectrum on stdout.

    Values are singular values sigma (not sigma^2), descending. effective_rank = exp(entropy of
    p = sigma / sum sigma) (Roy & Vetterli 2007); rankme = the same with p + 1e-7 (RankMe, Garrido et al.
    2023); rank90/rank99 = fewest values whose sigma^2 reach 90%/99% of the total sigma^2; rank_tol = number of
    sigma > 1.19e-7 * ||X||_F, X as stored before centring (its float32 storage error; it does not grow with
    the rows). A collapse shows as a cliff in the sparkline and in --plot. Table columns and features are
    streamed chunk by chunk (memory O(D^2 + chunk), not O(N D)).
    """,
)
