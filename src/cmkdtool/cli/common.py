"""Options and helpers shared by the subcommands. Nothing heavy is imported here."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Annotated

import typer

from cmkdtool.engine.config import parse_batch_size, parse_ints  # noqa: F401  (re-exported for commands)
from cmkdtool.errors import CmkdError, CmkdUsageError

DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        envvar="CMKDTOOL_DEVICE",
        help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N. A device that is missing is an error.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", envvar="CMKDTOOL_SEED", help="Random seed (initialisation, batches).")]
PrecisionOpt = Annotated[
    str,
    typer.Option("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16 (CUDA only)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.")]
SplitRatioOpt = Annotated[
    str,
    typer.Option(
        "--split-ratio",
        help="train,val,test fractions used only when a table has no 'split' column (rows are assigned by "
        "hashing their id with --split-seed, so every command agrees).",
    ),
]
SplitSeedOpt = Annotated[int, typer.Option("--split-seed", help="Seed of the id-hash split (see --split-ratio).")]


def run_params() -> list:
    """--device, --seed, --precision and --quiet, as every training command declares them."""
    from cmkdtool.cli import options as o

    return [
        o.param("device", DeviceOpt, "auto"),
        o.param("seed", SeedOpt, 0),
        o.param("precision", PrecisionOpt, "auto"),
        o.param("quiet", QuietOpt, False),
    ]


def split_params() -> list:
    """--split-ratio and --split-seed with their defaults (commands that read the split from a checkpoint
    declare their own)."""
    from cmkdtool.cli import options as o

    return [o.param("split_ratio", SplitRatioOpt, "0.8,0.1,0.1"), o.param("split_seed", SplitSeedOpt, 0)]


def train_setup(kw: dict):
    """(TrainConfig, device) of a training command: its options, --seed and the resolved --device and
    --precision, checked before any data is read."""
    from cmkdtool.cli import options as o
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.engine.device import resolve_device, resolve_precision

    cfg = o.build(TrainConfig, kw)
    dev = resolve_device(kw["device"])
    cfg.seed, cfg.precision = kw["seed"], resolve_precision(kw["precision"], dev)
    cfg.validate()
    return cfg, dev


def mask_options(kw: dict):
    """The ``MaskOptions`` of a command's keyword values, checked early (before any data is read)."""
    from cmkdtool.cli import options as o
    from cmkdtool.data.masks import MaskOptions

    mask = o.build(MaskOptions, kw)
    if mask.mask:
        mask.validate()
    return mask


def note(msg: str, quiet: bool = False) -> None:
    """A message for the person at the terminal: stderr, never stdout."""
    if not quiet:
        print(msg, file=sys.stderr)


def command_line() -> str:
    return shlex.join(["cmkdtool", *sys.argv[1:]])


def parse_floats(text: str, what: str, n: int | None = None) -> list[float]:
    try:
        vals = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise CmkdUsageError(f"{what} must be comma-separated numbers; got '{text}'") from e
    if n is not None and len(vals) != n:
        raise CmkdUsageError(f"{what} needs {n} comma-separated numbers; got '{text}'")
    return vals


DEFAULT_SPLIT_RATIO = [0.8, 0.1, 0.1]


def split_rule(ratio_text: str | None, seed: int | None, record: dict | None = None) -> tuple[list[float], int]:
    """The id-hash split rule for tables without a 'split' column: what the command line gives, else what a
    checkpoint's training record used (so eval, spectrum and distill agree with training), else the default."""
    record = record or {}
    ratio = (
        parse_floats(ratio_text, "--split-ratio", 3) if ratio_text else record.get("split_ratio", DEFAULT_SPLIT_RATIO)
    )
    return list(ratio), int(seed if seed is not None else record.get("split_seed", 0))


def csv_text(rows: list[dict], fields: list[str]) -> str:
    """Rows as CSV with a header (for --format csv)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def check_output(path: str, *inputs: str, stream_ok: bool = False) -> None:
    """Refuse to overwrite an input with an output, a folder as output, and '-' where no stream is possible."""
    if path == "-":
        if not stream_ok:
            raise CmkdUsageError("this output cannot go to stdout ('-'); give a file name")
        return
    out = os.path.realpath(path)
    for p in inputs:
        if p != "-" and os.path.exists(p) and os.path.realpath(p) == out:
            raise CmkdUsageError(f"output {path} is also an input; write to another file")
    if os.path.isdir(path):
        raise CmkdError(f"{path}: is a folder; give a file name for the output")
    from cmkdtool.io.atomic import check_output_path

    check_output_path(path)


def debug_enabled() -> bool:
    return os.environ.get("CMKDTOOL_DEBUG", "").strip() not in ("", "0", "false", "no")


def guard(func):
    """Wrap a command: CmkdError -> one line on stderr and its exit status (no traceback unless debugging)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CmkdError as e:
            if debug_enabled():
                raise
            print(f"cmkdtool: error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # disk full, permission denied, read-only folder
            if debug_enabled():
                raise
            where = f"{e.filename}: " if e.filename else ""
            print(f"cmkdtool: error: {where}{e.strerror or e}; check the path and free space", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print("cmkdtool: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def finish_training(output: str, model, data, result, meta: dict, quiet: bool) -> None:
    """Write a trained model's checkpoint (with the shared training record) and history; report on stderr."""
    from cmkdtool import __version__
    from cmkdtool.io.checkpoints import save_checkpoint
    from cmkdtool.io.history import write_history

    record = {
        "command": command_line(),
        "version": __version__,
        **meta,
        "rows": {s: data.count(s) for s in ("train", "val", "test")},
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "final_metrics": result.final_metrics,
    }
    save_checkpoint(output, model.state_dict(), model.spec, record)
    write_history(output, result.history)
    key = "val/map" if data.task == "multilabel" else "val/accuracy"
    score = result.best_metrics.get(key)
    summary = (
        f"{key.split('/')[1]} {score:.4f} on val at epoch {result.best_epoch}"
        if score is not None
        else (f"train loss {result.final_metrics.get('train/loss', float('nan')):.4f}, no val split")
    )
    note(f"wrote {output} ({summary}) and {output}.history.jsonl", quiet)
