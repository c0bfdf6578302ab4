"""Option fields shared by the CLI, the data layer and the methods. Torch-free and typer-free.

A hyperparameter is a dataclass field made with :func:`opt`: its metadata holds the help text (with units),
the allowed values (``choices``), the range (``ge``/``gt``/``le``/``lt``; list items with ``item_ge``), and
where the command line spells a value differently from Python, ``cli`` (the type typed) and ``parse``
(text -> value). :func:`check` validates an instance against that metadata, so every dataclass built from a
command line (``cli.options.build``) or by a library user (``TrainConfig.validate``) is checked in one place:
NaN and infinities are refused for every float, out-of-range values name the option and the range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from cmkdtool.errors import CmkdUsageError

_BOUNDS = ("ge", "gt", "le", "lt")


def opt(
    default,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    item_ge: float | None = None,
    **extra,
):
    """A dataclass field carrying its CLI help, allowed values and range (and optional ``cli`` type, ``parse``)."""
    meta: dict[str, Any] = {"help": help, **extra}
    for key, val in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("item_ge", item_ge)):
        if val is not None:
            meta[key] = tuple(val) if key == "choices" else val
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def range_text(meta: dict) -> str:
    """'>= 0', '(0, 1]' ... the range a field's metadata declares ('' when it declares none)."""
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    return ""


def check_value(flag: str, value: Any, meta: dict) -> None:
    """Raise ``CmkdUsageError`` (exit 2, one line naming ``flag``) when ``value`` breaks ``meta``'s rules."""
    if value is None:
        return
    if "check" in meta:  # a parser that raises CmkdUsageError for a malformed value (e.g. --split-ratio)
        meta["check"](value)
    choices = meta.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        raise CmkdUsageError(f"{flag} must be one of {', '.join(choices)}; got '{value}'")
    if isinstance(value, list | tuple):
        lo = meta.get("item_ge")
        for v in value:
            if isinstance(v, float) and not math.isfinite(v):
                raise CmkdUsageError(f"{flag} must hold finite numbers; got {v}")
            if lo is not None and isinstance(v, int | float) and v < lo:
                raise CmkdUsageError(f"{flag} values must be >= {lo:g}; got {v}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise CmkdUsageError(f"{flag} must be a finite number; got {value}")
    bad = (
        ("ge" in meta and value < meta["ge"])
        or ("gt" in meta and value <= meta["gt"])
        or ("le" in meta and value > meta["le"])
        or ("lt" in meta and value >= meta["lt"])
    )
    if bad:
        raise CmkdUsageError(f"{flag} must be {range_text(meta)}; got {value:g}")


def default_rules(name: str) -> dict:
    """Rules that hold for an option by its name alone: seeds are non-negative integers."""
    return {"ge": 0} if name.endswith("seed") else {}


def check(obj: Any) -> None:
    """Validate every field of the dataclass instance ``obj`` against its :func:`opt` metadata."""
    for f in dataclasses.fields(obj):
        check_value(flag_name(f.name), getattr(obj, f.name), f.metadata)


def parse_ints(text: str, what: str) -> list[int]:
    text = (text or "").strip()
    if not text:
        return []
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise CmkdUsageError(f"{what} must be comma-separated integers like 256,128; got '{text}'") from e


def parse_floats(text: str, what: str, n: int | None = None) -> list[float]:
    """Comma-separated finite numbers (exactly ``n`` of them when given)."""
    try:
        vals = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise CmkdUsageError(f"{what} must be comma-separated numbers; got '{text}'") from e
    if any(not math.isfinite(v) for v in vals):
        raise CmkdUsageError(f"{what} must hold finite numbers; got '{text}'")
    if n is not None and len(vals) != n:
        raise CmkdUsageError(f"{what} needs {n} comma-separated numbers; got '{text}'")
    return vals


def parse_split_ratio(text: str, what: str = "--split-ratio") -> list[float]:
    """train,val,test fractions: three finite non-negative numbers, not all zero (a table may be all test)."""
    vals = parse_floats(text, what, 3)
    if any(v < 0 for v in vals) or sum(vals) <= 0:
        raise CmkdUsageError(f"{what} needs three non-negative fractions, not all 0, like 0.8,0.1,0.1; got '{text}'")
    return vals


DEFAULT_SPLIT_RATIO = [0.8, 0.1, 0.1]


def split_rule(
    ratio: str | Sequence[float] | None, seed: int | None, record: dict | None = None
) -> tuple[list[float], int]:
    """The id-hash split rule for tables without a 'split' column: what is given (text like ``0.8,0.1,0.1`` or
    numbers), else what a checkpoint's training record used (so eval, spectrum and distill agree with training),
    else the default."""
    record = record or {}
    if isinstance(ratio, str):
        ratio = parse_split_ratio(ratio)
    ratio = [float(r) for r in ratio] if ratio is not None else list(record.get("split_ratio", DEFAULT_SPLIT_RATIO))
    return ratio, int(seed if seed is not None else record.get("split_seed", 0))


def parse_batch_size(text: str) -> int | None:
    if str(text).strip().lower() == "full":
        return None
    try:
        v = int(text)
    except ValueError as e:
        raise CmkdUsageError(f"--batch-size must be a positive integer or 'full'; got '{text}'") from e
    if v < 1:
        raise CmkdUsageError(f"--batch-size must be a positive integer or 'full'; got '{text}'")
    return v


def ints_field(default: list[int], help: str, flag: str, **rules) -> dataclasses.Field:
    """A comma-separated list of integers on the command line (``--hidden 256,128``)."""
    parse: Callable[[str], list[int]] = lambda t: parse_ints(t, flag)  # noqa: E731
    return opt(default, help, cli=str, parse=parse, **rules)


__all__ = [
    "check",
    "check_value",
    "flag_name",
    "ints_field",
    "opt",
    "parse_batch_size",
    "parse_floats",
    "parse_ints",
    "parse_split_ratio",
    "range_text",
    "split_rule",
]
