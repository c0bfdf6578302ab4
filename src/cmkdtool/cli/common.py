"""Options and helpers shared by the subcommands. Nothing heavy is imported here."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.options import (  # noqa: F401  (re-exported)
    parse_batch_size,
    parse_floats,
    parse_ints,
    parse_split_ratio,
    split_rule,
)

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
    typer.Option(
        "--precision",
        help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, tf32 (float32 with TF32 matmuls; CUDA only), bf16 or "
        "fp16 (CUDA only).",
    ),
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

    return [
        o.param("split_ratio", SplitRatioOpt, "0.8,0.1,0.1", check=parse_split_ratio),
        o.param("split_seed", SplitSeedOpt, 0),
    ]


def train_setup(kw: dict, *, processes: bool = False):
    """(TrainConfig, device) of a training command: its options, --seed and the resolved --device and
    --precision, checked before any data is read.

    Under torchrun (``WORLD_SIZE`` > 1) a command that trains with DDP (``processes=True``: pretrain, distill)
    joins the process group here, takes ``cuda:LOCAL_RANK`` for a CUDA device, and every process but rank 0 goes
    quiet (``kw['quiet']``); any other training command refuses to run as several processes."""
    from cmkdtool.cli import options as o
    from cmkdtool.engine import distributed
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.engine.device import resolve_device, resolve_precision

    cfg = o.build(TrainConfig, kw)
    dev = resolve_device(kw["device"])
    cfg.seed, cfg.precision = kw["seed"], resolve_precision(kw["precision"], dev)
    cfg.validate()
    world = distributed.launched_world_size()
    if distributed.launched():
        if not processes and world > 1:
            raise CmkdUsageError(
                f"launched as {world} processes (WORLD_SIZE), but this command trains in one process; run it "
                "without torchrun (pretrain and distill train with several)"
            )
        dev = distributed.device_for_rank(dev)
        dist = distributed.setup(dev)
        kw["quiet"] = kw["quiet"] or not dist.is_main
    return cfg, dev


def end_processes() -> None:
    """Under torchrun: wait until every process is done (rank 0 has written), then leave the process group
    (an orderly end: gloo can abort at exit when a process leaves a live group); nothing in one process."""
    if "torch" not in sys.modules:
        return
    from cmkdtool.engine.distributed import shutdown

    shutdown()


def is_main_process() -> bool:
    """Whether this process writes outputs (rank 0 under torchrun; always in one process)."""
    from cmkdtool.engine.distributed import current

    return current().is_main


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


def _rank_tag() -> str:
    """' [rank r/W]' in a process of a multi-process run (which process an error line comes from); ''."""
    if "torch" not in sys.modules:  # nothing distributed ran before torch was imported
        return ""
    from cmkdtool.engine.distributed import current

    return current().tag


def _torch_failure(e: Exception) -> str | None:
    """The one-line message for a torch runtime failure a user can act on: the device ran out of memory, or
    (under several processes) a collective failed because another process stopped; None for anything else."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if isinstance(e, torch.OutOfMemoryError):
        return (
            "out of device memory; lower --batch-size or --eval-batch-size, train a smaller model, or keep the "
            "table off the device (--data-placement host or stream)"
        )
    from cmkdtool.engine.distributed import current

    if current().world_size > 1 and isinstance(e, RuntimeError):
        return f"another process failed (see its message above); here: {str(e).splitlines()[0][:200]}"
    return None


def guard(func):
    """Wrap a command: CmkdError -> one line on stderr and its exit status (no traceback unless debugging).
    Under several processes the line names the rank, and a collective that fails because another process
    stopped is one line too (exit 1). (Option values are checked by the command itself:
    ``cli.options.make_command``.)"""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CmkdError as e:
            if debug_enabled():
                raise
            print(f"cmkdtool: error{_rank_tag()}: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except RuntimeError as e:  # torch.OutOfMemoryError and distributed failures are RuntimeErrors
            message = _torch_failure(e)
            if message is None or debug_enabled():
                raise
            print(f"cmkdtool: error{_rank_tag()}: {message}", file=sys.stderr)
            raise typer.Exit(1) from None
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


ABBREVIATIONS = ("Eq.", "Eqs.", "Sec.", "App.", "Fig.", "Tab.", "e.g.", "i.e.", "cf.", "al.", "vs.")


def summary_line(doc: str | None) -> str:
    """The first sentence of a command's help (a period after Eq., Sec., App., e.g. ... does not end it): the
    line shown in the parent's command list, never cut mid-reference."""
    text = " ".join((doc or "").split())
    start = 0
    while True:
        end = text.find(". ", start)
        if end < 0:
            return text.rstrip(".")
        if not text[: end + 1].endswith(ABBREVIATIONS):
            return text[:end]
        start = end + 2


PIPELINE_ORDER = (
    "synth",
    "extract",
    "table",
    "pretrain",
    "rank-salience",
    "fit-bottleneck",
    "distill",
    "eval",
    "spectrum",
)
"""Commands in the order a study runs them (how ``cmkdtool --help`` lists them)."""


class SummaryGroup(typer.core.TyperGroup):
    """A command group whose list shows each command's whole first sentence (``summary_line``)."""

    def format_commands(self, ctx, formatter) -> None:
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not getattr(cmd, "short_help", None):
                cmd.short_help = summary_line(cmd.help)
        super().format_commands(ctx, formatter)


class OneLineGroup(SummaryGroup):
    """The root command group: a command-line mistake that click finds (a missing argument, a value of the wrong
    type, a choice not allowed) is one line on stderr naming the option, exit status 2, like every usage error."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(PIPELINE_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from cmkdtool.io.provenance import set_command

        set_command(list(sys.argv[1:] if args is None else args))  # what every output records as its command
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except KeyboardInterrupt:
            print("cmkdtool: interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:  # click's exceptions (typer may vendor click: matched by name, not by import)
            names = {c.__name__ for c in type(e).__mro__}
            if "Abort" in names:
                print("cmkdtool: interrupted", file=sys.stderr)
                sys.exit(130)
            if "ClickException" not in names:
                raise
            if "NoArgsIsHelpError" in names:  # a bare command shows its help, as click does
                e.show()
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if "UsageError" in names and ctx is not None else ""
            message = " ".join(e.format_message().replace("Value error, ", "").split())
            print(f"cmkdtool: error: {message}{where}", file=sys.stderr)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)
