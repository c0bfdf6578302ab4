"""Training runs: ``pretrain`` (a model on its labels), ``distill`` (a registered method), ``joint_train``
(rank-salience's Eq. 28 alignment). Each seeds, builds the modules, trains on the shared engine and returns the
trained model(s) with the ``FitResult``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.trainer import FitResult, fit, seed_everything
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.methods.alignment import JointAlignment
from cmkdtool.methods.base import DistillContext
from cmkdtool.methods.registry import MethodInfo
from cmkdtool.methods.supervised import Supervised
from cmkdtool.nn.models import CmkdModel, build_model, new_model
from cmkdtool.nn.specs import ModelOptions


def pretrain(
    data: TensorData,
    *,
    model: ModelOptions | None = None,
    role: str = "teacher",
    config: TrainConfig | None = None,
    mask=None,
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
    on_epoch_end=None,
) -> tuple[CmkdModel, FitResult]:
    """Train a unimodal (one input) or late-fusion (several inputs) model on ``data``.

    Inputs are standardised with train-split statistics, stored in the model. ``mask`` (a ``MaskOptions``)
    trains it with those channels nullified; the mask is part of the model.
    Returns (model, FitResult) with the selected (best-on-val or last) weights loaded.
    """
    from cmkdtool.data.masks import apply_mask, fit_mask_fill

    cfg = config or TrainConfig()
    cfg.validate()
    seed_everything(cfg.seed)
    net = new_model(data, model or ModelOptions(), role)
    if mask is not None:
        apply_mask(net, mask, cfg.seed, data)
    result = fit(
        Supervised(net, data.task), data, cfg, quiet=quiet, desc="pretrain", state_file=state_file, resume=resume,
        on_epoch_end=on_epoch_end,
    )  # fmt: skip
    net.load_state_dict(result.state_dict)
    fit_mask_fill(net, data)  # a mean-filled hidden layer: the exact train mean of the final weights
    return net.eval(), result


def build_student(data: TensorData, student_inputs: list[str], model: ModelOptions, init: CmkdModel | None):
    """A new student on ``student_inputs`` (standardised with train statistics), or a copy of ``init``."""
    if init is not None:
        if init.input_names != student_inputs:
            raise CmkdError(f"--init model reads {init.input_names} but --input gives {student_inputs}")
        if int(init.spec["num_classes"]) != data.num_classes:
            raise CmkdError(f"--init model has {init.spec['num_classes']} classes, the data {data.num_classes}")
        student = build_model({**init.spec, "role": "student"})
        student.load_state_dict(init.state_dict())
        return student
    return new_model(data, model, "student", student_inputs)


def method_checkpoints(info: MethodInfo) -> list[str]:
    """Names of the method's options that name extra frozen checkpoints (fields with ``checkpoint=True``)."""
    return [f.name for f in fields(info.params) if f.metadata.get("checkpoint")]


def method_columns(info: MethodInfo) -> list[str]:
    """Names of the method's options that name extra input columns (fields with ``column=True``)."""
    return [f.name for f in fields(info.params) if f.metadata.get("column")]


def distill(
    info: MethodInfo,
    params,
    data: TensorData,
    teacher: CmkdModel | None,
    student_inputs: list[str],
    *,
    model: ModelOptions | None = None,
    config: TrainConfig | None = None,
    init: CmkdModel | None = None,
    teachers: dict[str, CmkdModel] | None = None,
    cache_teacher: bool = True,
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
    on_epoch_end=None,
) -> tuple[CmkdModel, FitResult]:
    """Distil ``teacher`` (and the method's other frozen ``teachers``, by option name) into a student on
    ``student_inputs`` with method ``info``; return the student with the selected weights and the fit."""
    cfg = config or TrainConfig()
    cfg.validate()
    frozen = dict(teachers or {})
    if teacher is not None:
        frozen["teacher"] = teacher
    elif getattr(info.cls, "needs_teacher", True):
        raise CmkdUsageError(f"distill {info.name} needs --teacher TEACHER.safetensors")
    for name, net in frozen.items():
        if int(net.spec["num_classes"]) != data.num_classes:
            raise CmkdError(
                f"the {name} has {net.spec['num_classes']} classes but the data has {data.num_classes}; "
                "distil on a table with the teacher's classes"
            )
    seed_everything(cfg.seed)
    student = build_student(data, student_inputs, model or ModelOptions(), init)
    columns = {n: getattr(params, n) for n in method_columns(info)}
    ctx = DistillContext({k: v.to(data.device) for k, v in frozen.items()}, data.task, cache_teacher, columns)
    method = info.cls.from_context(student, params, ctx)
    result = fit(
        method, data, cfg, quiet=quiet, desc=f"distill {info.name}", state_file=state_file, resume=resume,
        on_epoch_end=on_epoch_end,
    )  # fmt: skip
    student = method.student  # the deployable model: the one built here, or the method's own (a composite)
    student.load_state_dict(result.state_dict)
    return student.eval(), result


def joint_train(data: TensorData, input_a: str, input_b: str, *, model=None, config=None, distance: str = "mse",
                quiet: bool = False, state_file: str | None = None, resume: bool = False):  # fmt: skip
    """MFH Algorithm 1 step 1: two unimodal networks (``model``: ModelOptions) aligned by Eq. 28.

    Returns ``(net_a, net_b, FitResult)``; the selected epoch is the best of network a on the val split
    (``config.select='best'``) or the last.
    """
    from cmkdtool.losses.alignment import DISTANCES

    if distance not in DISTANCES:
        raise CmkdUsageError(f"unknown distance '{distance}'; choose one of {', '.join(DISTANCES)}")
    cfg = config or TrainConfig()
    seed_everything(cfg.seed)
    opts = model or ModelOptions()
    net_a = new_model(data, opts, "teacher", [input_a])
    net_b = new_model(data, opts, "student", [input_b])
    method = JointAlignment(net_a, net_b, distance, data.task)
    result = fit(method, data, cfg, quiet=quiet, desc="align (Eq. 28)", state_file=state_file, resume=resume)
    method.student.load_state_dict(result.state_dict)
    return net_a.eval(), net_b.eval(), result


# ---- whole runs: tables in, a checkpoint to save out ------------------------------------------------------


@dataclass
class Trained:
    """A trained model with its fit and its training record (``cmkdtool.train``); ``save`` writes the checkpoint
    and its history, exactly as the command does."""

    model: CmkdModel
    fit: FitResult
    record: dict
    task: str | None = None

    def save(self, output: str) -> str:
        """Write ``output`` (the checkpoint) and ``output.history.jsonl``; return the history's path."""
        from cmkdtool.io.checkpoints import save_checkpoint
        from cmkdtool.io.history import write_history

        save_checkpoint(output, self.model.state_dict(), self.model.spec, self.record)
        return write_history(output, self.fit.history)

    def summary(self) -> str:
        """'accuracy 0.9120 on val at epoch 42' (or the train loss when there is no val split)."""
        key = "val/map" if self.task == "multilabel" else "val/accuracy"
        score = self.fit.best_metrics.get(key)
        if score is not None:
            return f"{key.split('/')[1]} {score:.4f} on val at epoch {self.fit.best_epoch}"
        return f"train loss {self.fit.final_metrics.get('train/loss', float('nan')):.4f}, no val split"


def training_record(header: dict, meta: dict, data: TensorData, result: FitResult) -> dict:
    """The ``cmkdtool.train`` record: provenance header, the run's settings and inputs, rows per split, metrics."""
    return {
        **header,
        **meta,
        "rows": {s: data.count(s) for s in ("train", "val", "test")},
        "world_size": result.world_size,
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "final_metrics": result.final_metrics,
    }


def run_pretrain(
    tables: Sequence[str],
    inputs: Sequence[str],
    *,
    model: ModelOptions | None = None,
    config: TrainConfig | None = None,
    mask=None,
    role: str = "teacher",
    split_ratio=None,
    split_seed: int = 0,
    device="auto",
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
    command: str | None = None,
) -> Trained:
    """``cmkdtool pretrain``: read ``inputs`` of ``tables`` and train a model on their labels."""
    from cmkdtool.io.provenance import provenance
    from cmkdtool.pipelines.open import open_tables, resolve, show_notes, split_rule

    cfg = config or TrainConfig()
    cfg.validate()
    model = model or ModelOptions()
    ratio, seed = split_rule(split_ratio, split_seed)
    dev = resolve(device)
    opened = open_tables(tables, list(inputs), dev, split_ratio=ratio, split_seed=seed, require_train_classes=True,
                         placement=cfg.data_placement, shuffle_buffer=cfg.shuffle_buffer, quiet=quiet)  # fmt: skip
    show_notes(opened.notes, quiet)
    net, result = pretrain(
        opened.data, model=model, role=role, config=cfg, mask=mask, quiet=quiet, state_file=state_file, resume=resume
    )
    meta = {
        "method": "supervised",
        "config": cfg.record(),
        "device": str(dev),
        "placement": opened.data.placement,
        "split_ratio": ratio,
        "split_seed": seed,
    }
    record = training_record(provenance(command, data=list(tables)), meta, opened.data, result)
    return Trained(net, result, record, opened.data.task)


def run_distill(
    method: str | MethodInfo,
    tables: Sequence[str],
    teacher: str | None,
    inputs: Sequence[str],
    *,
    params=None,
    model: ModelOptions | None = None,
    config: TrainConfig | None = None,
    mask=None,
    init: str | None = None,
    cache_teacher: bool = True,
    split_ratio=None,
    split_seed: int | None = None,
    device="auto",
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
    command: str | None = None,
) -> Trained:
    """``cmkdtool distill METHOD``: open the frozen ``teacher`` (and the method's other checkpoints, named by its
    checkpoint options in ``params``) with ``tables``, and distil it into a student on ``inputs``."""
    from dataclasses import asdict

    from cmkdtool.data.tensors import check_model_inputs
    from cmkdtool.io.checkpoints import load_model, read_metadata
    from cmkdtool.io.provenance import file_record, provenance
    from cmkdtool.methods.registry import get
    from cmkdtool.pipelines.open import open_checkpoint, open_tables, resolve, show_notes

    info = get(method) if isinstance(method, str) else method
    if teacher is None and getattr(info.cls, "needs_teacher", True):
        raise CmkdUsageError(f"distill {info.name} needs --teacher TEACHER.safetensors")
    params = info.params() if params is None else params
    cfg = config or TrainConfig()
    cfg.validate()
    model = model or ModelOptions()
    dev = resolve(device)
    student_inputs = list(dict.fromkeys(inputs))
    extra = [c for n in method_columns(info) for c in _as_list(getattr(params, n))]
    others = {n: getattr(params, n) for n in method_checkpoints(info) if getattr(params, n)}
    specs = {n: read_metadata(p)[0] for n, p in others.items()}
    extra += [i["name"] for spec in specs.values() for i in spec["inputs"]]  # what the other frozen models read
    if teacher is not None:
        opened = open_checkpoint(
            teacher, tables, dev, columns=[*student_inputs, *extra], split_ratio=split_ratio, split_seed=split_seed,
            mask=mask, mask_seed=cfg.seed, require_train_classes=True, placement=cfg.data_placement,
            shuffle_buffer=cfg.shuffle_buffer, quiet=quiet,
        )  # fmt: skip
        data, teacher_net = opened.data, opened.model
    else:
        if mask is not None and mask.mask:
            raise CmkdUsageError("--mask masks the teacher; this run has no --teacher")
        opened = open_tables(tables, [*student_inputs, *extra], dev, split_ratio=split_ratio, split_seed=split_seed,
                             require_train_classes=True, placement=cfg.data_placement,
                             shuffle_buffer=cfg.shuffle_buffer, quiet=quiet)  # fmt: skip
        data, teacher_net = opened.data, None
    show_notes(opened.notes, quiet)
    for n, p in others.items():
        check_model_inputs(opened.table, specs[n], p)
    frozen = {n: load_model(p, dev) for n, p in others.items()}
    init_net = load_model(init, dev) if init else None
    student, result = distill(
        info, params, data, teacher_net, student_inputs, model=model, config=cfg, init=init_net, teachers=frozen,
        cache_teacher=cache_teacher, quiet=quiet, state_file=state_file, resume=resume,
    )  # fmt: skip
    meta = {
        "method": info.name,
        "params": asdict(params),
        "config": cfg.record(),
        "device": str(dev),
        "placement": data.placement,
        "split_ratio": opened.split_ratio,
        "split_seed": opened.split_seed,
    }
    if teacher is not None:
        meta["teacher"] = file_record(
            teacher, inputs=[i["name"] for i in opened.spec["inputs"]], mask=teacher_net.spec.get("mask")
        )
    for n, p in others.items():
        meta[n] = file_record(p)
    meta["init"] = init
    record = training_record(provenance(command, data=list(tables)), meta, data, result)
    return Trained(student, result, record, data.task)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


__all__ = [
    "Trained",
    "build_student",
    "distill",
    "joint_train",
    "method_checkpoints",
    "method_columns",
    "pretrain",
    "run_distill",
    "run_pretrain",
    "training_record",
]
