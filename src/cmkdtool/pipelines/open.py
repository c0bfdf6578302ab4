"""Open what a run reads: feature tables (joined on id, on the device) and checkpoints with their tables.

``open_checkpoint`` is the one place where "checkpoint + tables + split rule + input check + mask + device"
happens: ``distill`` (its teacher), ``eval``, ``spectrum``, ``fit-bottleneck`` and ``rank-salience`` (given
networks) all open their checkpoints through it, so they agree on the split (the checkpoint's unless given), on
what a missing column or another shape means, and on how a mask is applied.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmkdtool.data.tensors import TensorData, check_model_inputs, load_tensor_data
from cmkdtool.errors import CmkdError
from cmkdtool.io.tables import FeatureTable, read_tables
from cmkdtool.options import split_rule


def show_notes(notes: list[str], quiet: bool) -> None:
    """Notes about what was read (rows dropped by a join, a mask applied) for the person at the terminal."""
    if not quiet:
        for n in notes:
            print(n, file=sys.stderr)


def resolve(device):
    """A torch device from ``auto``/``cpu``/``cuda[:N]`` or a device (a missing device is an error)."""
    import torch

    from cmkdtool.engine.device import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


@dataclass
class Tables:
    """Feature tables read and joined (``table``) and their columns on the device (``data``)."""

    table: FeatureTable
    data: TensorData
    split_ratio: list[float]
    split_seed: int
    notes: list[str] = field(default_factory=list)


def open_tables(
    paths: Sequence[str],
    columns: Sequence[str],
    device="auto",
    *,
    split_ratio=None,
    split_seed: int | None = None,
    record: dict | None = None,
    need_labels: bool = True,
    num_classes: int | None = None,
    require_train_classes: bool = False,
    table: FeatureTable | None = None,
) -> Tables:
    """Read ``columns`` of ``paths`` (or use the already read ``table``) and load them on ``device``."""
    ratio, seed = split_rule(split_ratio, split_seed, record)
    cols = list(dict.fromkeys(columns))
    if table is None:
        table = read_tables(list(paths), columns=cols)
    data = load_tensor_data(
        table,
        cols,
        resolve(device),
        need_labels=need_labels,
        num_classes=num_classes,
        split_ratio=ratio,
        split_seed=seed,
        require_train_classes=require_train_classes,
    )
    return Tables(table, data, ratio, seed, list(table.notes))


@dataclass
class Opened(Tables):
    """A checkpoint's model (on the data's device, its mask applied) with the tables it reads."""

    path: str = ""
    model: object = None
    spec: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    mask: dict | None = None  # the mask this opening added (``MaskOptions``), if any

    @property
    def inputs(self) -> list[str]:
        return [i["name"] for i in self.spec["inputs"]]


def open_checkpoint(
    path: str,
    tables: Sequence[str],
    device="auto",
    *,
    columns: Sequence[str] = (),
    split_ratio=None,
    split_seed: int | None = None,
    mask=None,
    mask_seed: int = 0,
    need_labels: bool = True,
    require_train_classes: bool = False,
    table: FeatureTable | None = None,
) -> Opened:
    """Open checkpoint ``path`` and the ``tables`` it runs on.

    Reads the model's input columns (plus ``columns``) joined on id, checks they exist with the shapes the model
    was trained on, builds the split (``split_ratio``/``split_seed`` if given, else the checkpoint's rule), loads
    the model on ``device`` and applies ``mask`` (``MaskOptions``; a mask stored in the checkpoint always
    applies). With labels, the class count is the checkpoint's (a label outside it is an error) and the table's
    task must be the model's.
    """
    from cmkdtool.data.masks import apply_mask
    from cmkdtool.io.checkpoints import load_model, read_metadata

    spec, record = read_metadata(path)
    dev = resolve(device)
    model = load_model(path, dev)  # first: says what is wrong with a checkpoint that holds no model
    model_inputs = [i["name"] for i in spec["inputs"]]
    if table is None:
        table = read_tables(list(tables), columns=list(dict.fromkeys([*model_inputs, *columns])))
    check_model_inputs(table, spec, path)
    opened = open_tables(
        tables,
        [*model_inputs, *columns],
        dev,
        split_ratio=split_ratio,
        split_seed=split_seed,
        record=record,
        need_labels=need_labels,
        num_classes=int(spec["num_classes"]) if need_labels else None,
        require_train_classes=require_train_classes,
        table=table,
    )
    data = opened.data
    if need_labels and data.task is not None and data.task != spec.get("task", data.task):
        raise CmkdError(f"{table.name}: a {data.task} table but {path} is a {spec.get('task')} model")
    applied = apply_mask(model, mask, mask_seed, data, what=path) if mask is not None else None
    notes = list(opened.notes)
    if applied:
        notes.append(f"{path}: masking {len(applied['removed'])} of {applied['dim']} channels of {applied['layer']}")
    return Opened(table, data, opened.split_ratio, opened.split_seed, notes, path, model, spec, record, applied)


__all__ = ["Opened", "Tables", "open_checkpoint", "open_tables", "resolve", "show_notes", "split_rule"]
