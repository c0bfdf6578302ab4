"""Build typer commands whose options come from dataclasses (engine/config.py, nn/specs.py, method
hyperparameters) or from ``param`` declarations: one style for every command.

A field's metadata (``cmkdtool.options.opt``) gives its help text, its allowed values (``choices``: listed in
``--help``, offered by completion, checked by click) and range (``ge``/``gt``/``le``/``lt``); ``cli`` the
command-line type when it differs (e.g. "64" or "full" for a batch size) or None to hide it; ``parse`` turns the
typed text into the field's value. ``param(..., ge=0)`` declares the same rules for a command's own options.
Every value is checked before the command runs (``make_command``): NaN, infinities and out-of-range values are
a one-line usage error naming the option (exit 2).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any

import typer

from cmkdtool.options import check, check_value, default_rules, flag_name

_EMPTY = inspect.Parameter.empty
_RULE_KEYS = ("ge", "gt", "le", "lt", "item_ge", "check")


class Param(inspect.Parameter):
    """A keyword parameter of a command with the value rules (``ge``, ``gt``, ...) its option declares."""

    __slots__ = ("rules",)

    def __init__(self, *args, rules: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rules = dict(rules or {})


def _cli_type(f: dataclasses.Field) -> Any:
    if "cli" in f.metadata:
        return f.metadata["cli"]
    t = f.type
    if isinstance(t, str):
        t = eval(t, {"__builtins__": __builtins__, "list": list})  # postponed annotations: simple builtins only
    return t


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def dataclass_params(dc: type, panel: str | None = None, defaults: dict | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per visible field, with a typer.Option carrying help, flag and default (the field's,
    or this command's own from ``defaults``)."""
    out = []
    defaults = defaults or {}
    for f in dataclasses.fields(dc):
        ctype = _cli_type(f)
        if ctype is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = defaults.get(f.name, default)
        flag = "--" + f.name.replace("_", "-")
        if ctype is bool:
            decl = [f"{flag}/--no-{flag[2:]}"]
        else:
            decl = [flag]
        if "show" in f.metadata:  # how the command line spells the value
            default = f.metadata["show"](default)
        elif "parse" in f.metadata and not isinstance(default, str | types.NoneType):
            default = _show(default)
        if f.metadata.get("choices") and ctype is str:  # listed in --help and completion, checked by click
            ctype = enum.Enum(f"{dc.__name__}_{f.name}", {c: c for c in f.metadata["choices"]}, type=str)
            default = ctype(default)
        info = typer.Option(*decl, help=f.metadata.get("help", ""), rich_help_panel=panel)
        rules = {k: f.metadata[k] for k in _RULE_KEYS if k in f.metadata and "parse" not in f.metadata}
        out.append(
            Param(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[ctype, info],
                rules=rules,
            )
        )
    return out


def build(dc: type, values: dict) -> Any:
    """An instance of ``dc`` from the command's keyword values (parsing fields that declare ``parse``)."""
    kwargs = {}
    for f in dataclasses.fields(dc):
        if f.name not in values or _cli_type(f) is None:  # hidden fields are set by the command itself
            continue
        v = values[f.name]
        if "parse" in f.metadata and isinstance(v, str):
            v = f.metadata["parse"](v)
        kwargs[f.name] = v
    obj = dc(**kwargs)
    check(obj)
    return obj


def names(dc: type) -> set[str]:
    return {f.name for f in dataclasses.fields(dc) if _cli_type(f) is not None}


def make_command(run: Callable[[dict], None], params: list[inspect.Parameter], doc: str) -> Callable:
    """A function with the given signature (for typer) that passes its keyword values to ``run``."""
    seen: dict[str, inspect.Parameter] = {}
    for p in params:
        if p.name in seen:
            raise RuntimeError(f"option {p.name} defined twice")
        seen[p.name] = p
    ordered = sorted(seen.values(), key=lambda p: p.default is not _EMPTY)

    def command(**kwargs):
        kwargs = {k: v.value if isinstance(v, enum.Enum) else v for k, v in kwargs.items()}
        for p in ordered:
            check_value(flag_name(p.name), kwargs.get(p.name), getattr(p, "rules", None) or default_rules(p.name))
        return run(kwargs)

    command.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in ordered}
    command.__doc__ = doc
    return command


def param(name: str, annotation: Any, default: Any = _EMPTY, **rules) -> Param:
    """A keyword parameter (``annotation``: ``Annotated[type, typer.Option(...)]``) with value rules
    (``ge``, ``gt``, ``le``, ``lt``, ``item_ge``), checked before the command runs."""
    unknown = set(rules) - set(_RULE_KEYS)
    if unknown:
        raise TypeError(f"unknown rules {sorted(unknown)}")
    return Param(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation, rules=rules)


__all__ = ["build", "dataclass_params", "make_command", "names", "param"]
