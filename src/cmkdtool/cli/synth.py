"""``cmkdtool synth``: synthetic paired data with a known ground truth (modality-general channels; spoof images)."""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import SummaryGroup, guard, note

app = typer.Typer(
    cls=SummaryGroup,
    help="Write a synthetic multimodal feature table, its ground truth recorded in the table's metadata. mfh and "
    "orthogonal: columns xa = teacher side, xb = student side, label, split (the ground truth: which channels are "
    "modality-general); spoof: face anti-spoofing images rgb, depth, ir with label (1 = bona fide), split and "
    "attack_type.",
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
    "attack_ratio": "--attack-ratio",
    "attack_visibility": "--attack-visibility",
    "size": "--size",
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


def _report(synth, output: str, quiet: bool) -> None:
    """What ``synth`` (a ``pipelines.synth.SynthTable``) wrote to ``output``."""
    data, m, counts = synth.data, synth.data.meta, synth.counts()
    note(
        f"wrote {output}: {len(data.ids)} rows ({counts['train']} train, {counts['val']} val, {counts['test']} "
        f"test), xa {data.xa.shape[1]} channels, xb {data.xb.shape[1]} channels; modality-general channels "
        f"xa {m['general_a']} / xb {m['general_b']}",
        quiet,
    )


A = Annotated


def _command(name: str, run, params: list, doc: str) -> None:
    """Register ``synth NAME`` with options ``params``; ``run`` gets the values as a dict. Without arguments
    the command says that --output is missing (no help page)."""
    app.command(name, no_args_is_help=False)(guard(o.make_command(run, params, doc)))


def _rows_and_seeds(train: int, val: int, test: int) -> list:
    """Row counts (defaults by generator), the data seed, the per-split seeds and --quiet."""
    return [
        o.param("train", TrainOpt, train, ge=1),
        o.param("val", ValOpt, val, ge=0),
        o.param("test", TestOpt, test, ge=0),
        o.param("seed", SeedOpt, 0),
        o.param("train_seed", TrainSeedOpt, None),
        o.param("val_seed", ValSeedOpt, None),
        o.param("test_seed", TestSeedOpt, None),
        o.param("quiet", QuietOpt, False),
    ]


def _seeds(kw: dict) -> dict:
    """The generator's row-count and seed arguments from the command's values."""
    return {
        "n_train": kw["train"],
        "n_val": kw["val"],
        "n_test": kw["test"],
        **{k: kw[k] for k in ("seed", "train_seed", "val_seed", "test_seed")},
    }


MFH_PARAMS = [
    o.param("output", OutOpt),
    o.param("dim_a", A[int, typer.Option("--dim-a", help="Channels of xa (d1, teacher side).")], 50, ge=1),
    o.param("dim_b", A[int, typer.Option("--dim-b", help="Channels of xb (d2, student side).")], 50, ge=1),
    o.param("decisive", A[int, typer.Option("--decisive", help="Dimension d of the decisive vector x*.")], 20, ge=1),
    o.param(
        "gamma",
        A[
            float | None,
            typer.Option(
                "--gamma",
                help="Share of modality-general decisive features ('vary alpha' setting, Table 2): xa holds all of "
                "x*, xb holds round(gamma*d) of them [default: 0.5 unless --overlap is given].",
            ),
        ],
        None,
        ge=0,
        le=1,
    ),
    o.param(
        "overlap",
        A[int | None, typer.Option("--overlap", help="|J1 ∩ J2| ('vary gamma' setting, Fig. 2); with --n-a/--n-b.")],
        None,
        ge=0,
    ),
    o.param(
        "n_a", A[int | None, typer.Option("--n-a", help="|J1|, decisive features in xa [default: d/2].")], None, ge=0
    ),
    o.param(
        "n_b", A[int | None, typer.Option("--n-b", help="|J2|, decisive features in xb [default: d/2].")], None, ge=0
    ),
    o.param("hyperplane", A[str, typer.Option("--hyperplane", help="delta: randn (N(0, I)) or ones.")], "randn"),
    o.param(
        "positions",
        A[str, typer.Option("--positions", help="Channels holding x*: random (seeded) or first.")],
        "random",
    ),
    *_rows_and_seeds(train=200, val=200, test=1000),
]


def _mfh(kw: dict) -> None:
    from cmkdtool.pipelines.synth import run_synth_mfh

    gamma = kw["gamma"]
    if gamma is None and kw["overlap"] is None and kw["n_a"] is None and kw["n_b"] is None:
        gamma = 0.5
    synth = _generate(
        run_synth_mfh,
        dim_a=kw["dim_a"],
        dim_b=kw["dim_b"],
        decisive=kw["decisive"],
        gamma=gamma,
        overlap=kw["overlap"],
        n_a=kw["n_a"],
        n_b=kw["n_b"],
        hyperplane=kw["hyperplane"],
        positions=kw["positions"],
        **_seeds(kw),
    )
    synth.write(kw["output"])
    _report(synth, kw["output"], kw["quiet"])


_command(
    "mfh",
    _mfh,
    MFH_PARAMS,
    """The multimodal Gaussian of the MFH paper (App. B.2, Eq. 27).

    x* ~ N(0, I_d), y = 1(<delta, x*> > 0); xa ~ N(0, I_d1) and xb ~ N(0, I_d2) with their decisive channels
    overwritten by x*_J1 and x*_J2. Defaults follow the paper: 200 train and 1000 test rows (plus 200 val).
    """,
)


ORTHOGONAL_PARAMS = [
    o.param("output", OutOpt),
    o.param("dim", A[int, typer.Option("--dim", help="Channels D of each modality.")], 64, ge=1),
    o.param(
        "general",
        A[int, typer.Option("--general", help="Shared modality-general channels D_g (the first D_g).")],
        16,
        ge=0,
    ),
    o.param(
        "classes",
        A[int, typer.Option("--classes", help="Number of classes (2: one hyperplane; K: argmax).")],
        2,
        ge=2,
    ),
    o.param(
        "weight_general", A[float, typer.Option("--weight-general", help="Label weight of the general part G.")], 1.0
    ),
    o.param(
        "weight_specific_a",
        A[float, typer.Option("--weight-specific-a", help="Label weight of xa's specific part S' (teacher side).")],
        1.0,
    ),
    o.param(
        "weight_specific_b",
        A[float, typer.Option("--weight-specific-b", help="Label weight of xb's specific part S (student side).")],
        1.0,
    ),
    o.param(
        "orthogonalize",
        A[
            bool,
            typer.Option(
                "--orthogonalize/--no-orthogonalize", help="Gram-Schmidt per split (App. D.1); off = App. E.6."
            ),
        ],
        True,
    ),
    *_rows_and_seeds(train=2000, val=500, test=1000),
]


def _orthogonal(kw: dict) -> None:
    from cmkdtool.pipelines.synth import run_synth_orthogonal

    synth = _generate(
        run_synth_orthogonal,
        dim=kw["dim"],
        general=kw["general"],
        num_classes=kw["classes"],
        weight_general=kw["weight_general"],
        weight_specific_a=kw["weight_specific_a"],
        weight_specific_b=kw["weight_specific_b"],
        orthogonalize=kw["orthogonalize"],
        **_seeds(kw),
    )
    synth.write(kw["output"])
    _report(synth, kw["output"], kw["quiet"])


_command(
    "orthogonal",
    _orthogonal,
    ORTHOGONAL_PARAMS,
    """The completely separated data of the CIBA paper (Sec. 3.4, Eq. 4; App. D.1).

    xa = [G; S'] (teacher) and xb = [G; S] (student) share the first D_g channels; G, S, S' are orthogonal
    across the samples of each split. Labels follow a linear rule on the three parts, each weighted.
    """,
)


SPOOF_PARAMS = [
    o.param("output", OutOpt),
    o.param("size", A[int, typer.Option("--size", help="Image height and width H = W in pixels.")], 16, ge=4, le=256),
    o.param(
        "attack_ratio",
        A[float, typer.Option("--attack-ratio", help="Share of attack rows per split (half print, half replay).")],
        0.5,
        ge=0,
        le=1,
    ),
    o.param(
        "attack_visibility",
        A[
            float,
            typer.Option(
                "--attack-visibility",
                help="Strength v of the attacks' recapture artefacts in rgb (print: blur, contrast loss, colour "
                "cast; replay: moire, tint, glow): 0 = rgb carries no label information, 1 = plainly visible.",
            ),
        ],
        0.3,
        ge=0,
        le=1,
    ),
    o.param("ir", A[bool, typer.Option("--ir/--no-ir", help="Also write the near-infrared column ir.")], True),
    *_rows_and_seeds(train=1200, val=400, test=400),
]


def _spoof(kw: dict) -> None:
    from cmkdtool.pipelines.synth import run_synth_spoof

    synth = _generate(
        run_synth_spoof,
        size=kw["size"],
        attack_ratio=kw["attack_ratio"],
        attack_visibility=kw["attack_visibility"],
        ir=kw["ir"],
        **_seeds(kw),
    )
    synth.write(kw["output"])
    data, m = synth.data, synth.data.meta
    counts = synth.counts()
    kinds = {t: int((data.attack_type == t).sum()) for t in ("print", "replay")}
    shapes = ", ".join(f"{name} {shape}" for name, shape in m["shapes"].items())
    note(
        f"wrote {kw['output']}: {len(data.ids)} rows ({counts['train']} train, {counts['val']} val, "
        f"{counts['test']} test), {shapes}; {int((data.label == 1).sum())} bona fide (label 1), "
        f"{kinds['print']} print and {kinds['replay']} replay attacks (label 0); "
        f"attack visibility {m['attack_visibility']}",
        kw["quiet"],
    )


_command(
    "spoof",
    _spoof,
    SPOOF_PARAMS,
    """RGB-D-IR face anti-spoofing images: bona fide faces and print / replay attacks (OS-MD Table 1).

    Bona fide faces (label 1) are shaded 3-D surfaces; attacks (label 0) show another face's picture on a flat
    or slightly bent plane, with recapture artefacts in rgb of strength --attack-visibility. Depth separates the
    classes almost perfectly; rgb alone is harder. Columns rgb [3, H, W], depth [1, H, W], ir [1, H, W], label,
    split, attack_type (bona_fide, print, replay); the model and its constants are in the table metadata.
    """,
)
