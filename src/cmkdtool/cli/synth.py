"""``cmkdtool synth``: synthetic paired data with a known modality-general ground truth."""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli.common import command_line, guard, note

app = typer.Typer(
    help="Write a synthetic two-modality feature table (columns xa = teacher side, xb = student side, label, "
    "split) whose ground truth (which channels are modality-general) is recorded in the table's metadata.",
    no_args_is_help=True,
)

OutOpt = Annotated[str, typer.Option("--output", "-o", help="Output Parquet file ('-' for an Arrow stream).")]
TrainOpt = Annotated[int, typer.Option("--train", help="Train rows.")]
ValOpt = Annotated[int, typer.Option("--val", help="Validation rows.")]
TestOpt = Annotated[int, typer.Option("--test", help="Test rows.")]
TrainSeedOpt = Annotated[
    int | None, typer.Option("--train-seed", help="Seed of the train draws [default: from --seed].")
]
ValSeedOpt = Annotated[int | None, typer.Option("--val-seed", help="Seed of the val draws [default: from --seed].")]
TestSeedOpt = Annotated[int | None, typer.Option("--test-seed", help="Seed of the test draws [default: from --seed].")]
SeedOpt = Annotated[
    int, typer.Option("--seed", envvar="CMKDTOOL_SEED", help="Data seed: structure (hyperplanes, channels) and draws.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")]


FLAGS = {
    "orthogonalize=False": "--no-orthogonalize",
    "num_classes": "--classes",
    "n_train": "--train",
    "n_val": "--val",
    "n_test": "--test",
    "train_seed": "--train-seed",
    "val_seed": "--val-seed",
    "test_seed": "--test-seed",
    "dim_a": "--dim-a",
    "dim_b": "--dim-b",
    "n_a": "--n-a",
    "n_b": "--n-b",
    "weight_general": "--weight-general",
    "weight_specific_a": "--weight-specific-a",
    "weight_specific_b": "--weight-specific-b",
    "decisive": "--decisive",
    "gamma": "--gamma",
    "overlap": "--overlap",
    "hyperplane": "--hyperplane",
    "positions": "--positions",
    "general": "--general",
    "dim": "--dim",
    "seed": "--seed",
    "orthogonalize": "--orthogonalize",
}


def _generate(func, **kwargs):
    """Run a generator; its option names in error messages become this command's flags."""
    import re

    from cmkdtool.data.synth import SynthConfigError

    try:
        return func(**kwargs)
    except SynthConfigError as e:
        pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(k) for k in FLAGS) + r")(?![\w])")
        raise SynthConfigError(pattern.sub(lambda m: FLAGS[m.group(1)], str(e))) from None


def _write(data, output: str, quiet: bool) -> None:
    from cmkdtool import __version__
    from cmkdtool.io.tables import build_table, write_table

    meta = {
        "tool": "cmkdtool",
        "version": __version__,
        "command": command_line(),
        "seed": data.meta.get("params", {}).get("seed", data.meta.get("seed")),
        "class_names": data.class_names,
        "synth": data.meta,
    }
    table = build_table(data.ids, {"xa": data.xa, "xb": data.xb}, label=data.label, split=data.split, meta=meta)
    write_table(table, output)
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    m = data.meta
    note(
        f"wrote {output}: {len(data.ids)} rows ({counts['train']} train, {counts['val']} val, {counts['test']} "
        f"test), xa {data.xa.shape[1]} channels, xb {data.xb.shape[1]} channels; modality-general channels "
        f"xa {m['general_a']} / xb {m['general_b']}",
        quiet,
    )


@app.command("mfh", no_args_is_help=False)
@guard
def mfh(
    output: OutOpt,
    dim_a: Annotated[int, typer.Option("--dim-a", help="Channels of xa (d1, teacher side).")] = 50,
    dim_b: Annotated[int, typer.Option("--dim-b", help="Channels of xb (d2, student side).")] = 50,
    decisive: Annotated[int, typer.Option("--decisive", help="Dimension d of the decisive vector x*.")] = 20,
    gamma: Annotated[
        float | None,
        typer.Option(
            "--gamma",
            help="Share of modality-general decisive features ('vary alpha' setting, Table 2): xa holds all of x*, "
            "xb holds round(gamma*d) of them [default: 0.5 unless --overlap is given].",
        ),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option("--overlap", help="|J1 ∩ J2| ('vary gamma' setting, Fig. 2); with --n-a/--n-b."),
    ] = None,
    n_a: Annotated[int | None, typer.Option("--n-a", help="|J1|, decisive features in xa [default: d/2].")] = None,
    n_b: Annotated[int | None, typer.Option("--n-b", help="|J2|, decisive features in xb [default: d/2].")] = None,
    hyperplane: Annotated[str, typer.Option("--hyperplane", help="delta: randn (N(0, I)) or ones.")] = "randn",
    positions: Annotated[
        str, typer.Option("--positions", help="Channels holding x*: random (seeded) or first.")
    ] = "random",
    train: TrainOpt = 200,
    val: ValOpt = 200,
    test: TestOpt = 1000,
    seed: SeedOpt = 0,
    train_seed: TrainSeedOpt = None,
    val_seed: ValSeedOpt = None,
    test_seed: TestSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The multimodal Gaussian of the MFH paper (App. B.2, Eq. 27).

    x* ~ N(0, I_d), y = 1(<delta, x*> > 0); xa ~ N(0, I_d1) and xb ~ N(0, I_d2) with their decisive channels
    overwritten by x*_J1 and x*_J2. Defaults follow the paper: 200 train and 1000 test rows (plus 200 val).
    """
    from cmkdtool.data.synth import synth_mfh

    if gamma is None and overlap is None and n_a is None and n_b is None:
        gamma = 0.5
    data = _generate(
        synth_mfh,
        dim_a=dim_a,
        dim_b=dim_b,
        decisive=decisive,
        gamma=gamma,
        overlap=overlap,
        n_a=n_a,
        n_b=n_b,
        hyperplane=hyperplane,
        positions=positions,
        n_train=train,
        n_val=val,
        n_test=test,
        seed=seed,
        train_seed=train_seed,
        val_seed=val_seed,
        test_seed=test_seed,
    )
    _write(data, output, quiet)


@app.command("orthogonal")
@guard
def orthogonal(
    output: OutOpt,
    dim: Annotated[int, typer.Option("--dim", help="Channels D of each modality.")] = 64,
    general: Annotated[
        int, typer.Option("--general", help="Shared modality-general channels D_g (the first D_g).")
    ] = 16,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes (2: one hyperplane; K: argmax).")] = 2,
    weight_general: Annotated[
        float, typer.Option("--weight-general", help="Label weight of the general part G.")
    ] = 1.0,
    weight_specific_a: Annotated[
        float,
        typer.Option("--weight-specific-a", help="Label weight of xa's specific part S' (teacher side)."),
    ] = 1.0,
    weight_specific_b: Annotated[
        float,
        typer.Option("--weight-specific-b", help="Label weight of xb's specific part S (student side)."),
    ] = 1.0,
    orthogonalize: Annotated[
        bool,
        typer.Option("--orthogonalize/--no-orthogonalize", help="Gram-Schmidt per split (App. D.1); off = App. E.6."),
    ] = True,
    train: TrainOpt = 2000,
    val: ValOpt = 500,
    test: TestOpt = 1000,
    seed: SeedOpt = 0,
    train_seed: TrainSeedOpt = None,
    val_seed: ValSeedOpt = None,
    test_seed: TestSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The completely separated data of the CIBA paper (Sec. 3.4, Eq. 4; App. D.1).

    xa = [G; S'] (teacher) and xb = [G; S] (student) share the first D_g channels; G, S, S' are orthogonal
    across the samples of each split. Labels follow a linear rule on the three parts, each weighted.
    """
    from cmkdtool.data.synth import synth_orthogonal

    data = _generate(
        synth_orthogonal,
        dim=dim,
        general=general,
        num_classes=classes,
        weight_general=weight_general,
        weight_specific_a=weight_specific_a,
        weight_specific_b=weight_specific_b,
        orthogonalize=orthogonalize,
        n_train=train,
        n_val=val,
        n_test=test,
        seed=seed,
        train_seed=train_seed,
        val_seed=val_seed,
        test_seed=test_seed,
    )
    _write(data, output, quiet)
