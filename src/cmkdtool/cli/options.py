"""Build typer commands whose options come from dataclasses (engine/config.py, method hyperparameters).

A field's metadata gives its help text; ``cli`` the command-line type when it differs (e.g. "64" or "full"
for a batch size) or None to hide it; ``parse`` turns the typed text into the field's value.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any

import typer

_EMPTY = inspect.Parameter.empty


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


def dataclass_params(dc: type, panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per visible field, with a typer.Option carrying help, flag and default."""
    out = []
    for f in dataclasses.fields(dc):
        ctype = _cli_type(f)
        if ctype is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        if ctype is bool:
            decl = [f"{flag}/--no-{flag[2:]}"]
        else:
            decl = [flag]
        if "parse" in f.metadata and not isinstance(default, str | types.NoneType):
            default = _show(default)
        info = typer.Option(*decl, help=f.metadata.get("help", ""), rich_help_panel=panel)
        out.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[ctype, info]
            )
        )
    return out


def build(dc: type, values: dict) -> Any:
    """An instance of ``dc`` from the command's keyword values (parsing fields that declare ``parse``)."""
    kwargs = {}
    for f in dataclasses.fields(dc):
        if f.name not in values:
            continue
        v = values[f.name]
        if "parse" in f.metadata and isinstance(v, str):
            v = f.metadata["parse"](v)
        kwargs[f.name] = v
    return dc(**kwargs)


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
        return run(kwargs)

    command.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in ordered}
    command.__doc__ = doc
    return command


def param(name: str, annotation: Any, default: Any = _EMPTY) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


__all__ = ["build", "dataclass_params", "make_command", "names", "param"]
