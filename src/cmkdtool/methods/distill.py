"""Run a registered distillation method: build the student, freeze the teacher, train on the shared core."""

from __future__ import annotations

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.config import ModelOptions, TrainConfig
from cmkdtool.engine.loop import FitResult, fit, seed_everything
from cmkdtool.errors import CmkdError
from cmkdtool.methods.registry import MethodInfo
from cmkdtool.nn.models import CmkdModel, build_model, new_model


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


def distill(
    info: MethodInfo,
    params,
    data: TensorData,
    teacher: CmkdModel,
    student_inputs: list[str],
    *,
    model: ModelOptions | None = None,
    config: TrainConfig | None = None,
    init: CmkdModel | None = None,
    cache_teacher: bool = True,
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
    on_epoch_end=None,
) -> tuple[CmkdModel, FitResult]:
    """Distil ``teacher`` into a student on ``student_inputs`` with method ``info``; return it and the fit."""
    cfg = config or TrainConfig()
    if int(teacher.spec["num_classes"]) != data.num_classes:
        raise CmkdError(
            f"the teacher has {teacher.spec['num_classes']} classes but the data has {data.num_classes}; "
            "distil on a table with the teacher's classes"
        )
    seed_everything(cfg.seed)
    student = build_student(data, student_inputs, model or ModelOptions(), init)
    method = info.cls(student, teacher.to(data.device), params, data.task, cache_teacher=cache_teacher)
    result = fit(
        method,
        data,
        cfg,
        quiet=quiet,
        desc=f"distill {info.name}",
        state_file=state_file,
        resume=resume,
        on_epoch_end=on_epoch_end,
    )
    student.load_state_dict(result.state_dict)
    return student.eval(), result


__all__ = ["build_student", "distill"]
