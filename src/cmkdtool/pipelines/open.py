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


@dataclass
class Placement:
    """What ``plan_placement`` decided: the placement, the ring of a streamed run, the note saying why, and the
    table (small columns only, features left on disk) when it streams."""

    placement: str = "device"
    slots: int = 8
    note: str | None = None
    table: FeatureTable | None = None


def plan_placement(paths: Sequence[str], columns: Sequence[str], device, placement: str = "device",
                   shuffle_buffer: int = 8) -> Placement:  # fmt: skip
    """Decide where the feature ``columns`` of ``paths`` live while training (``data.placement``): ``device``,
    ``host`` or ``stream`` as asked, or for ``auto`` the first that fits the budgets, estimated from the footers
    (``data.placement.choose``). A streamed run gets its table here: the small columns read, the features left on
    disk (tables given together must be aligned by id; ``cmkdtool table join`` aligns them)."""
    from cmkdtool.data import placement as pl
    from cmkdtool.errors import CmkdUsageError
    from cmkdtool.io.tables import TableSource

    if placement not in pl.PLACEMENTS:
        raise CmkdUsageError(f"--data-placement must be one of {', '.join(pl.PLACEMENTS)}, not {placement!r}")
    if placement in ("device", "host"):
        return Placement(placement, shuffle_buffer)
    if any(str(p) == "-" for p in paths):
        if placement == "stream":
            pl.check_stream_input("-")
        return Placement("device", shuffle_buffer)  # stdin is read whole anyway
    for p in paths:
        pl.check_stream_input(p)
    srcs = [TableSource(p) for p in paths]
    sources = {}
    for c in dict.fromkeys(columns):
        owner = next((s for s in srcs if c in s.schema.names), None)
        if owner is None:
            return Placement("device", shuffle_buffer)  # read_tables says what is missing
        sources[c] = owner
    est = pl.estimate(sources, list(sources))
    name = " + ".join(map(str, paths))
    chosen, slots, note = pl.choose(placement, resolve(device), est, shuffle_buffer, name=name)
    if chosen != "stream":  # decided from the footers alone
        return Placement(chosen, slots, note)
    small = read_tables(list(paths), columns=[])
    val = float((small.split_array() == "val").mean()) if "split" in small.column_names else 0.1
    chosen, slots, note = pl.choose(  # the ring's room, less the val rows held in memory
        placement, resolve(device), est, shuffle_buffer, name=name, val_bytes=int(est.features * val)
    )
    if small.notes:
        raise CmkdError(f"{small.notes[0]}; streamed tables must hold the same ids in the same order: align them "
                        f"once with cmkdtool table join {' '.join(map(str, paths))} -o joined.parquet")  # fmt: skip
    ids = small.table.column("id")
    for s in srcs[1:]:
        other = pa_ids(s)
        if not other.equals(ids):
            raise CmkdError(
                f"{s.name}: rows are not in the order of {srcs[0].name}; streamed tables must be aligned by id: "
                f"cmkdtool table join {' '.join(map(str, paths))} -o joined.parquet"
            )
    small.lazy = sources
    return Placement("stream", slots, note, small)


def pa_ids(src):
    import pyarrow as pa

    parts = [p.read(["id"]).column("id") for p in src.parts]
    return pa.chunked_array([c for p in parts for c in p.chunks], type=parts[0].type)


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
    placement: str = "device",
    shuffle_buffer: int = 8,
    quiet: bool = True,
) -> Tables:
    """Read ``columns`` of ``paths`` (or use the already read ``table``) and load them on ``device``.

    ``placement`` (``device``, ``host``, ``stream`` or ``auto``; see ``plan_placement``) says where the feature
    columns live while training; ``data.placement`` is the one used. A note says what ``auto`` chose when it is
    not ``device`` (unless ``quiet``)."""
    ratio, seed = split_rule(split_ratio, split_seed, record)
    cols = list(dict.fromkeys(columns))
    plan = Placement(placement, shuffle_buffer)
    if table is None or placement == "auto":
        if table is None or not table.lazy:
            plan = plan_placement(paths, cols, device, placement, shuffle_buffer)
    if plan.placement == "stream" and table is None:
        table = plan.table
    if table is not None and table.lazy:
        plan.placement = "stream"
    if table is None:
        table = read_tables(list(paths), columns=cols)
    if not quiet and plan.note:
        print(f"note: {plan.note}", file=sys.stderr)
    dev = resolve(device)
    data = load_tensor_data(
        table,
        cols,
        dev if plan.placement == "device" else resolve("cpu"),
        need_labels=need_labels,
        num_classes=num_classes,
        split_ratio=ratio,
        split_seed=seed,
        require_train_classes=require_train_classes,
    )
    if plan.placement == "host":
        from cmkdtool.data.placement import host_data

        data = host_data(data, dev)
    elif plan.placement == "stream":
        from cmkdtool.data.placement import stream_data

        if data.target is not None:
            data.target = data.target.to(dev)
        data = stream_data(data, table.lazy, [c for c in cols if c in table.lazy], dev, plan.slots)
        from cmkdtool.data.placement import shuffle_quality

        poor = shuffle_quality(data)
        if poor and not quiet:
            print(f"note: {poor}", file=sys.stderr)
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
    placement: str = "device",
    shuffle_buffer: int = 8,
    quiet: bool = True,
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
    cols = list(dict.fromkeys([*model_inputs, *columns]))
    note = None
    if table is None and placement != "device":
        plan = plan_placement(tables, cols, dev, placement, shuffle_buffer)
        placement, table, note = plan.placement, plan.table, plan.note
    if table is None:
        table = read_tables(list(tables), columns=cols)
    if not quiet and note:
        print(f"note: {note}", file=sys.stderr)
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
        placement="device" if placement in ("auto", "stream") else placement,
        shuffle_buffer=shuffle_buffer,
    )
    data = opened.data
    if need_labels and data.task is not None and data.task != spec.get("task", data.task):
        raise CmkdError(f"{table.name}: a {data.task} table but {path} is a {spec.get('task')} model")
    applied = apply_mask(model, mask, mask_seed, data, what=path) if mask is not None else None
    notes = list(opened.notes)
    if applied:
        notes.append(f"{path}: masking {len(applied['removed'])} of {applied['dim']} channels of {applied['layer']}")
    return Opened(table, data, opened.split_ratio, opened.split_seed, notes, path, model, spec, record, applied)


__all__ = [
    "Opened", "Placement", "Tables", "open_checkpoint", "open_tables", "plan_placement", "resolve", "show_notes",
    "split_rule",
]  # fmt: skip
