"""The distill pipeline's seams for the methods to come, each exercised by a small method written here: an
online teacher trained with the student (no --teacher) that reads an extra column which is not a student input,
and a method with two frozen teachers (the second named by a checkpoint option)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.engine.config import TrainConfig
from cmkdtool.errors import CmkdUsageError
from cmkdtool.io.checkpoints import read_checkpoint
from cmkdtool.losses import hinton_kd
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import Distiller, val_metrics
from cmkdtool.methods.registry import MethodInfo
from cmkdtool.nn.models import new_model
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.options import opt
from cmkdtool.pipelines.train import run_distill

CFG = TrainConfig(epochs=60, lr=0.05, batch_size=None, select="last", seed=1)
LINEAR = ModelOptions(arch="linear")


@dataclass
class OnlineParams:
    aux: str = opt("xa", "Column the online teacher reads (not a student input).", column=True)
    kd_weight: float = opt(1.0, "Weight of KD from the online teacher.", ge=0)


class Online(Distiller):
    """A teacher on the aux column, trained jointly on its labels; the student learns CE + KD from it."""

    needs_teacher = False

    def __init__(self, student, params, task, data_columns):
        super().__init__(student, None, params, task)
        self.loss_weights = {"kd": params.kd_weight}
        self.online = None
        self.aux = data_columns["aux"]

    @classmethod
    def from_context(cls, student, params, ctx):
        assert ctx.teachers == {} and ctx.columns == {"aux": "xa"}
        return cls(student, params, ctx.task, ctx.columns)

    def setup(self, data):
        assert self.aux in data.inputs and self.student.input_names == ["xb"]
        torch.manual_seed(0)
        self.online = new_model(data, LINEAR, "teacher", [self.aux]).to(data.device)

    def training_step(self, batch):
        s, t = self.student(batch.inputs), self.online(batch.inputs)
        return {
            "ce": task_loss(s, batch.target, self.task),
            "ce_teacher": task_loss(t, batch.target, self.task),
            "kd": hinton_kd(s, t.detach(), 2.0),
        }

    def validate(self, data, index, precision, batch_size):
        out = val_metrics(self.student, data, index, precision, batch_size)
        out["teacher_accuracy"] = val_metrics(self.online, data, index, precision, batch_size)["accuracy"]
        return out


ONLINE = MethodInfo("online-test", Online, OnlineParams, "an online teacher (test)")


def test_online_teacher_on_an_extra_column_without_a_frozen_teacher(mfh_table, tmp_path):
    trained = run_distill(ONLINE, [str(mfh_table)], None, ["xb"], model=LINEAR, config=CFG, device="cpu", quiet=True)
    rows = trained.fit.history
    assert rows[-1]["val/teacher_accuracy"] > 0.75  # xa holds every decisive feature: the online teacher learns
    assert rows[-1]["train/ce_teacher"] < 0.6 * rows[0]["train/ce_teacher"] and rows[-1]["val/accuracy"] > 0.55
    assert "teacher" not in trained.record and trained.record["params"]["aux"] == "xa"
    out = tmp_path / "s.safetensors"
    trained.save(str(out))
    tensors, spec, _ = read_checkpoint(out)
    assert [i["name"] for i in spec["inputs"]] == ["xb"]  # the deployable student alone
    assert not any(k.startswith("online") for k in tensors)


def test_a_method_with_a_frozen_teacher_still_needs_one(mfh_table):
    from cmkdtool.methods.registry import get

    with pytest.raises(CmkdUsageError, match="needs --teacher"):
        run_distill(get("kd"), [str(mfh_table)], None, ["xb"], device="cpu", quiet=True)


@dataclass
class TwoParams:
    second: str | None = opt(None, "A second frozen teacher checkpoint.", checkpoint=True)


class TwoTeachers(Distiller):
    """KD from the mean of two frozen teachers' logits."""

    def __init__(self, student, teachers, params, task):
        super().__init__(student, teachers["teacher"], params, task, cache_teacher=False)
        self.second = teachers["second"].eval().requires_grad_(False)

    @classmethod
    def from_context(cls, student, params, ctx):
        assert set(ctx.teachers) == {"teacher", "second"}
        return cls(student, ctx.teachers, params, ctx.task)

    def frozen_modules(self):
        return [self.teacher, self.second]

    def training_step(self, batch):
        s = self.student(batch.inputs)
        with torch.no_grad():
            t = 0.5 * (self.teacher(batch.inputs) + self.second(batch.inputs))
        return {"kd": hinton_kd(s, t, 2.0), "ce": task_loss(s, batch.target, self.task)}


TWO = MethodInfo("two-test", TwoTeachers, TwoParams, "two frozen teachers (test)")


def test_two_frozen_teachers(mfh_table, tmp_path):
    paths = []
    for col in ("xa", "xb"):
        p = tmp_path / f"t-{col}.safetensors"
        res = CliRunner().invoke(
            app, ["pretrain", str(mfh_table), "-i", col, "--arch", "linear", "--epochs", "5", "-q", "-o", str(p)]
        )
        assert res.exit_code == 0, res.stderr
        paths.append(str(p))
    trained = run_distill(TWO, [str(mfh_table)], paths[0], ["xb"], params=TwoParams(second=paths[1]), model=LINEAR,
                          config=CFG, device="cpu", quiet=True)  # fmt: skip
    assert trained.record["teacher"]["path"] == paths[0] and trained.record["second"]["path"] == paths[1]
    assert len(trained.record["second"]["sha256"]) == 64
    assert trained.fit.history[-1]["train/kd"] < trained.fit.history[0]["train/kd"]
    assert trained.fit.best_metrics["val/accuracy"] > 0.55  # chance is 0.5


def test_multilabel_kd_through_the_method(tmp_path):
    """distill kd on a multi-label table: the per-class Bernoulli KL to the teacher's sigmoids (T^2-scaled) and
    BCE with the labels are the terms; the student learns the labels and moves towards the teacher."""
    import numpy as np

    from cmkdtool.engine.inference import predict
    from cmkdtool.io.tables import build_table, write_table
    from cmkdtool.methods.registry import get
    from cmkdtool.pipelines.open import open_tables
    from cmkdtool.pipelines.train import run_pretrain

    rng = np.random.default_rng(0)
    n, d, c = 600, 12, 3
    xa = rng.normal(size=(n, d)).astype(np.float32)
    xb = (xa[:, :8] + 0.5 * rng.normal(size=(n, 8))).astype(np.float32)  # the student sees a noisy part
    y = xa @ rng.normal(size=(d, c)) > 0.3
    labels = [np.flatnonzero(r).tolist() for r in y]
    split = np.where(np.arange(n) < 400, "train", np.where(np.arange(n) < 500, "val", "test"))
    path = tmp_path / "ml.parquet"
    write_table(build_table([f"r{i}" for i in range(n)], {"xa": xa, "xb": xb}, labels=labels, split=split), path)
    cfg = TrainConfig(epochs=60, lr=0.01, batch_size=None, select="last")
    teacher = run_pretrain([str(path)], ["xa"], model=LINEAR, config=cfg, device="cpu", quiet=True)
    teacher.save(str(tmp_path / "t.safetensors"))
    kd = get("kd")
    student = run_distill(kd, [str(path)], str(tmp_path / "t.safetensors"), ["xb"], params=kd.params(ce_weight=0.5),
                          model=LINEAR, config=cfg, device="cpu", quiet=True)  # fmt: skip
    rows = student.fit.history
    assert {"train/kd", "train/ce", "val/map"} <= set(rows[-1])
    assert rows[-1]["train/kd"] < 0.5 * rows[0]["train/kd"]
    assert rows[-1]["val/map"] > 0.7
    data = open_tables([str(path)], ["xa", "xb"], "cpu").data
    test = data.index("test")
    t = torch.sigmoid(predict(teacher.model, data, test)[0])
    s = torch.sigmoid(predict(student.model, data, test)[0])
    fresh = run_distill(kd, [str(path)], str(tmp_path / "t.safetensors"), ["xb"], params=kd.params(ce_weight=0.5),
                        model=LINEAR, config=TrainConfig(epochs=1, lr=1e-6, batch_size=None, select="last"),
                        device="cpu", quiet=True)  # fmt: skip
    s0 = torch.sigmoid(predict(fresh.model, data, test)[0])
    assert (s - t).abs().mean() < 0.6 * (s0 - t).abs().mean()  # far closer than an untrained student
