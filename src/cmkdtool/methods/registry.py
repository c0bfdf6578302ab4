"""The one registry of distillation methods.

A method registers once, with its hyperparameter dataclass::

    @register("kd", KDParams, "Hinton knowledge distillation on logits")
    class KD(Distiller): ...

The dataclass (fields built with ``cmkdtool.options.opt``) is the single source of the method's CLI options
(``cmkdtool distill kd --help``), their defaults, and what the student checkpoint records.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from cmkdtool.errors import CmkdUsageError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type
    params: type
    summary: str


_REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, params: type, summary: str):
    def deco(cls):
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodInfo(name, cls, params, summary)
        cls.name = name
        return cls

    return deco


def _load_all() -> None:
    import cmkdtool.methods as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if not m.name.startswith("_"):
            importlib.import_module(f"cmkdtool.methods.{m.name}")


def methods() -> dict[str, MethodInfo]:
    """Every registered method by name (imports the method modules on first use)."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> MethodInfo:
    all_ = methods()
    if name not in all_:
        raise CmkdUsageError(f"unknown method '{name}'; available: {', '.join(all_)}")
    return all_[name]
