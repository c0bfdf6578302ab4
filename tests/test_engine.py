"""The training core's seams, each exercised by a small method written here: parameter groups, own optimizers
(stepped in order, scheduled, resumed bit-identically), a custom backward with live step outputs, epoch hooks
and extra validation metrics, method state, batch sources and the distributed context; and what the loop
itself decides: best-epoch selection, divergence, gradient clipping, schedules (one-cycle against torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine import trainer as trainer_mod
from cmkdtool.engine.batches import IndexBatches
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.distributed import DistContext
from cmkdtool.engine.method import Batch, OptimizerSpec, Step
from cmkdtool.engine.optim import lr_factor
from cmkdtool.engine.state import load_state
from cmkdtool.engine.trainer import fit
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.tables import FeatureTable, build_table
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.base import TaskMethod


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    split = ["train"] * 64 + ["val"] * 32
    return load_tensor_data(
        FeatureTable(build_table([f"r{i}" for i in range(96)], {"x": x}, label=y, split=split)), ["x"]
    )


class Student(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs):
        return self.lin(self.drop(inputs["x"]))

    def embed(self, inputs):
        return inputs["x"]


class Adversarial(TaskMethod):
    """A student (lr x1), a side module at lr x0, and an adversary with its own (scheduled) Adam that learns
    from the student's detached logits after each main step; a running buffer is method state."""

    def __init__(self, schedule_adversary: bool = False, dropout: float = 0.0):
        super().__init__()
        self.student = Student(dropout)
        self.side = nn.Linear(4, 4)
        self.adversary = nn.Linear(2, 1)
        self.register_buffer("running", torch.zeros(2))
        self.schedule_adversary = schedule_adversary
        self.calls: list[str] = []
        self.steps: list[int] = []

    def param_groups(self):
        return [{"params": list(self.student.parameters())}, {"params": list(self.side.parameters()), "lr_scale": 0.0}]

    def optimizers(self):
        return {
            "adversary": OptimizerSpec(
                list(self.adversary.parameters()), "adam", lr=0.05, schedule=self.schedule_adversary
            )
        }

    def training_step(self, batch):
        logits = self.student(batch.inputs)
        side = self.side(batch.inputs["x"]).pow(2).mean()
        fool = self.adversary(logits).mean()  # reaches the student; the adversary's own grads are zeroed later
        terms = {"ce": task_loss(logits, batch.target, "multiclass"), "side": side, "fool": 0.01 * fool}
        return Step(terms, {"logits": logits})

    def own_losses(self, batch, step):
        self.calls.append("own")
        assert step.outputs["logits"].requires_grad  # live outputs of this step
        return {"adversary": self.adversary(step.outputs["logits"].detach()).pow(2).mean()}

    def after_step(self, batch, step, index):
        self.calls.append("after")
        self.steps.append(index)
        self.running.mul_(0.9).add_(0.1 * step.outputs["logits"].detach().mean(0))


def _clone(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_param_groups_and_own_optimizer_order(data):
    m = Adversarial()
    side0, adv0, stu0 = _clone(m.side), _clone(m.adversary), _clone(m.student)
    res = fit(m, data, TrainConfig(epochs=3, batch_size=16, lr=0.05, select="last"), quiet=True)
    assert m.steps == list(range(12))  # 64 train rows / 16 = 4 steps x 3 epochs, numbered globally
    assert m.calls == ["own", "after"] * 12  # own optimizers step before after_step, every step
    assert all(torch.equal(side0[k], v) for k, v in m.side.state_dict().items())  # lr_scale 0: untouched
    assert not all(torch.equal(adv0[k], v) for k, v in m.adversary.state_dict().items())  # its own optimizer
    assert not all(torch.equal(stu0[k], v) for k, v in m.student.state_dict().items())
    assert {id(p) for p in m.trainable_parameters()}.isdisjoint({id(p) for p in m.adversary.parameters()})
    assert "train/adversary_loss" in res.history[0] and "train/fool" in res.history[0]
    assert float(m.running.abs().sum()) > 0


def test_own_optimizer_matches_a_hand_written_step(data):
    """One full-batch step: the adversary's Adam update equals torch's on the loss the method returned."""
    m = Adversarial()
    ref = nn.Linear(2, 1)
    ref.load_state_dict(m.adversary.state_dict())
    student0 = Student()
    student0.load_state_dict(m.student.state_dict())
    fit(m, data, TrainConfig(epochs=1, batch_size=None, lr=0.05, select="last"), quiet=True)
    # the step's logits (before the main step), as the method handed them to its adversary
    x = data.inputs["x"][data.index("train")]
    logits = student0({"x": x}).detach()
    opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    ref(logits).pow(2).mean().backward()
    opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.adversary.state_dict()[k], v)


@pytest.mark.parametrize("schedule_adversary", [False, True])
def test_resume_with_own_optimizer_and_method_state_is_bit_identical(data, tmp_path, monkeypatch, schedule_adversary):
    monkeypatch.setattr(trainer_mod, "STATE_INTERVAL_S", 0.0)  # save after every epoch
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.05, schedule="cosine", select="last")

    def run(state, **kw):
        torch.manual_seed(0)
        m = Adversarial(schedule_adversary, dropout=0.3)  # dropout: the torch RNG state must be restored
        res = fit(m, data, cfg, quiet=True, state_file=str(state), **kw)
        return m, res

    full, full_res = run(tmp_path / "a.state")

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.state", on_epoch_end=stop)
    tensors, header = load_state(str(tmp_path / "b.state"))
    assert header["epoch"] == 2 and set(header["optimizers"]) == {"main", "adversary"}
    assert "model.running" in tensors  # the buffer is saved as method state
    resumed, res = run(tmp_path / "b.state", resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert res.history == full_res.history


class GradNormLike(TaskMethod):
    """Two terms weighted by learnable weights; the method takes over the backward: the weights' gradients come
    from the per-term gradient norms on the live graph (GradNorm's shape), stepped by their own SGD."""

    def __init__(self):
        super().__init__()
        self.student = Student()
        self.w = nn.Parameter(torch.ones(2))
        self.norms: list[torch.Tensor] = []

    def optimizers(self):
        return {"weights": OptimizerSpec([self.w], "sgd", lr=0.1)}

    def training_step(self, batch):
        logits = self.student(batch.inputs)
        return {"ce": task_loss(logits, batch.target, "multiclass"), "l2": logits.pow(2).mean()}

    def backward(self, loss, terms, scale):
        shared = self.student.lin.weight
        weighted = [self.w[i] * terms[k] for i, k in enumerate(("ce", "l2"))]
        norms = torch.stack(
            [torch.autograd.grad(t, shared, retain_graph=True, create_graph=True)[0].norm() for t in weighted]
        )
        self.norms.append(norms.detach())
        (grad_w,) = torch.autograd.grad((norms - norms.mean().detach()).abs().sum(), self.w, retain_graph=True)
        scale(sum(t for t in weighted)).backward()  # the network learns from the weighted sum
        self.w.grad = scale(grad_w)  # the engine unscales before stepping (fp16)

    def own_losses(self, batch, step):
        return {"weights": None}  # step with the gradient set in backward

    def after_step(self, batch, step, index):
        with torch.no_grad():
            self.w.mul_(2 / self.w.sum())  # renormalise, as GradNorm does


def test_custom_backward_sets_grads_and_own_optimizer_steps_them(data):
    m = GradNormLike()
    student0 = _clone(m.student)
    fit(m, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, select="last"), quiet=True)
    assert len(m.norms) == 4 and all(torch.isfinite(n).all() for n in m.norms)
    assert not torch.equal(m.w.detach(), torch.ones(2))  # the weights moved ...
    assert float(m.w.detach().sum()) == pytest.approx(2.0)  # ... and after_step renormalised them
    assert not all(torch.equal(student0[k], v) for k, v in m.student.state_dict().items())
    # the weights are not in the main optimizer
    assert all(p is not m.w for p in m.trainable_parameters())


class Scripted(TaskMethod):
    """Validation metrics follow a script (accuracy per epoch), plus an extra online-teacher metric;
    on_epoch_end records what it is given and a copy of the weights."""

    def __init__(self, accuracies, losses=None, extra=True):
        super().__init__()
        self.student = Student()
        self.acc, self.losses, self.extra = accuracies, losses, extra
        self.ends: list[tuple[int, dict]] = []
        self.weights: dict[int, dict] = {}
        self.epoch = 0

    def training_step(self, batch):
        return {"ce": task_loss(self.student(batch.inputs), batch.target, "multiclass")}

    def validate(self, data, index, precision, batch_size):
        self.epoch += 1
        out = {"loss": self.losses[self.epoch - 1] if self.losses else 1.0, "accuracy": self.acc[self.epoch - 1]}
        if self.extra:
            out["teacher_accuracy"] = 0.5 + 0.01 * self.epoch
        return out

    def on_epoch_end(self, epoch, metrics):
        self.ends.append((epoch, dict(metrics)))
        self.weights[epoch] = _clone(self.student)


def test_best_epoch_selection_ties_broken_by_loss_and_extra_metrics_logged(data):
    m = Scripted([0.5, 0.8, 0.7, 0.8, 0.6], losses=[1.0, 0.9, 0.5, 0.4, 0.1])
    res = fit(m, data, TrainConfig(epochs=5, batch_size=32, lr=0.05), quiet=True)  # select best (the default)
    assert res.best_epoch == 4  # 0.8 at epochs 2 and 4: the lower val loss wins
    assert res.best_metrics["val/accuracy"] == 0.8 and res.best_metrics["val/loss"] == 0.4
    for k, v in res.state_dict.items():
        assert torch.equal(v, m.weights[4][k]), k
    assert [e for e, _ in m.ends] == [1, 2, 3, 4, 5]
    assert m.ends[2][1]["val/teacher_accuracy"] == pytest.approx(0.53)  # on_epoch_end sees the validated row
    assert [r["val/teacher_accuracy"] for r in res.history] == pytest.approx([0.51, 0.52, 0.53, 0.54, 0.55])
    last = fit(Scripted([0.5, 0.8, 0.7]), data, TrainConfig(epochs=3, batch_size=32, select="last"), quiet=True)
    assert last.best_epoch == 3


class Diverging(TaskMethod):
    def __init__(self):
        super().__init__()
        self.student = Student()

    def training_step(self, batch):
        logits = self.student(batch.inputs)
        return {"ce": task_loss(logits, batch.target, "multiclass") * torch.tensor(float("inf"))}


def test_divergence_is_an_error_naming_the_epoch(data):
    with pytest.raises(CmkdError, match=r"diverged at epoch 1 .*lower --lr"):
        fit(Diverging(), data, TrainConfig(epochs=3, batch_size=32), quiet=True)


class Sum(TaskMethod):
    """loss = sum of the student's weights times a constant: a known gradient (the constant)."""

    def __init__(self, c: float):
        super().__init__()
        self.student = Student()
        self.c = c

    def training_step(self, batch):
        return {"s": self.c * sum(p.sum() for p in self.student.parameters())}


@pytest.mark.parametrize("clip", [None, 0.5, 100.0])
def test_clip_grad_scales_the_global_norm(data, clip):
    m = Sum(3.0)
    before = torch.cat([p.detach().flatten().clone() for p in m.student.parameters()])
    cfg = TrainConfig(epochs=1, batch_size=None, optimizer="sgd", momentum=0.0, lr=1.0, clip_grad=clip, select="last")
    fit(m, data, cfg, quiet=True)
    after = torch.cat([p.detach().flatten() for p in m.student.parameters()])
    step = before - after  # = the (clipped) gradient: 3 for each of the 10 parameters
    norm = 3.0 * math.sqrt(10)
    expected = norm if clip is None else min(norm, clip)
    assert float(step.norm()) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(step, step[0].expand_as(step))  # clipping scales, never reshapes


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),  # warm-up of 1 epoch = 2 steps: 1/2, 2/2
        ("step", [0.5, 1.0, 1.0, 1.0, 0.1, 0.1]),  # milestone at epoch 2 (0-based step // steps_per_epoch)
        # 0.5 (1 + cos(pi t)), t = (step - 2) / 4: cos(pi/4) = 0.707107 -> 0.853553, cos(3 pi/4) -> 0.146447
        ("cosine", [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]),
    ],
)
def test_lr_schedules_by_hand(schedule, expected):
    cfg = TrainConfig(epochs=3, warmup_epochs=1, schedule=schedule, milestones=[2], gamma=0.1)
    f = lr_factor(cfg, steps_per_epoch=2)
    assert [round(f(s), 6) for s in range(6)] == pytest.approx(expected)


@pytest.mark.parametrize("warmup", [0, 2])
def test_onecycle_matches_torch(warmup):
    epochs, steps = 10, 7
    cfg = TrainConfig(epochs=epochs, schedule="onecycle", warmup_epochs=warmup, lr=0.3)
    f = lr_factor(cfg, steps)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    pct = warmup / epochs if warmup else 0.3
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.3, total_steps=epochs * steps, pct_start=pct, cycle_momentum=False
    )
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert [0.3 * f(s) for s in range(epochs * steps)] == pytest.approx(lrs, rel=1e-9, abs=1e-15)
    assert f(0) == pytest.approx(1 / 25) and f(epochs * steps - 1) == pytest.approx(1 / 25 / 1e4)


def test_onecycle_trains_through_fit(data):
    m = Scripted([0.5] * 4, extra=False)
    res = fit(m, data, TrainConfig(epochs=4, batch_size=32, schedule="onecycle", lr=0.1), quiet=True)
    lrs = [r["lr"] for r in res.history]
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) > lrs[0] and lrs[-1] < max(lrs)


class Fixed:
    """A batch source that hands out the train rows in order, in halves (no shuffling)."""

    def __init__(self, index):
        self.index, self.rows, self.steps_per_epoch = index, len(index), 2
        self.seen: list[list[int]] = []

    def epoch(self, generator):
        half = self.rows // 2
        for idx in (self.index[:half], self.index[half:]):
            self.seen.append(idx.tolist())
            yield Batch({"x": self._data.inputs["x"][idx]}, self._data.target[idx], idx)


class CountingDist(DistContext):
    def all_reduce_sum(self, tensor):
        object.__setattr__(self, "calls", getattr(self, "calls", 0) + 1)
        return tensor


def test_batch_source_and_distributed_context_are_consulted(data, tmp_path):
    src = Fixed(data.index("train"))
    src._data = data
    dist = CountingDist()  # one process (several: tests/test_ddp.py)
    m = Scripted([0.5] * 2, extra=False)
    fit(m, data, TrainConfig(epochs=2, batch_size=8), quiet=True, batches=src, dist=dist)
    assert src.seen == [list(range(32)), list(range(32, 64))] * 2
    assert dist.calls == 2 * 2  # the epoch's sums (loss and the ce term) reduced once per epoch, not per step
    # the default source: shuffled slices, a lone last row joining the previous batch
    b = IndexBatches(data, data.index("train")[:33], 16)
    sizes = [len(x.index) for x in b.epoch(torch.Generator().manual_seed(0))]
    assert b.steps_per_epoch == 2 and sizes == [16, 17]


def test_state_saves_at_most_every_interval(data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "STATE_INTERVAL_S", 3600.0)
    saved = []
    real = trainer_mod.Trainer.save
    monkeypatch.setattr(trainer_mod.Trainer, "save", lambda self, epoch: (saved.append(epoch), real(self, epoch)))
    fit(Scripted([0.5] * 4, extra=False), data, TrainConfig(epochs=4, batch_size=32), quiet=True,
        state_file=str(tmp_path / "s.state"))  # fmt: skip
    assert saved == [1, 4]


def test_config_rejects_bad_values_in_one_line():
    for kw, flag in [
        ({"lr": float("nan")}, "--lr"),
        ({"lr": 0.0}, "--lr"),
        ({"weight_decay": -1.0}, "--weight-decay"),
        ({"momentum": -1.0}, "--momentum"),
        ({"clip_grad": -1.0}, "--clip-grad"),
        ({"gamma": -1.0}, "--gamma"),
        ({"warmup_epochs": -3}, "--warmup-epochs"),
        ({"epochs": 0}, "--epochs"),
        ({"schedule": "linear"}, "--schedule"),
        ({"milestones": [0]}, "--milestones"),
    ]:
        with pytest.raises(CmkdUsageError, match=flag) as e:
            TrainConfig(**kw).validate()
        assert "\n" not in str(e.value)
    with pytest.raises(CmkdUsageError, match=r"--warmup-epochs \(3\) must be smaller than --epochs \(3\)"):
        TrainConfig(epochs=3, warmup_epochs=3).validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs CUDA")
def test_fp16_with_own_optimizer_on_cuda(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    table = FeatureTable(
        build_table([f"r{i}" for i in range(96)], {"x": x}, label=y, split=["train"] * 64 + ["val"] * 32)
    )
    data = load_tensor_data(table, ["x"], "cuda")
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, precision="fp16", select="last")
    m = Adversarial()
    res = fit(m, data, cfg, quiet=True, state_file=str(tmp_path / "s.state"))
    assert math.isfinite(res.history[-1]["train/loss"])
    tensors, header = load_state(str(tmp_path / "s.state"))
    assert header["scaler"] and header["scaler"]["scale"] > 0


class SetsGrad(TaskMethod):
    """An own optimizer stepped with a gradient the method sets in backward (scaled, as the engine unscales)."""

    def __init__(self, set_grad: bool = True):
        super().__init__()
        self.student = Student()
        self.w = nn.Parameter(torch.ones(2))
        self.set_grad = set_grad

    def optimizers(self):
        return {"weights": OptimizerSpec([self.w], "sgd", lr=0.1)}

    def training_step(self, batch):
        return {"ce": task_loss(self.student(batch.inputs), batch.target, "multiclass")}

    def backward(self, loss, terms, scale):
        scale(loss).backward()
        if self.set_grad:
            self.w.grad = scale(torch.ones(2))

    def own_losses(self, batch, step):
        return {"weights": None}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gradients_set_in_backward_are_unscaled_like_any_other(data, precision):
    m = SetsGrad()
    fit(m, data, TrainConfig(epochs=1, batch_size=None, precision=precision, select="last"), quiet=True)
    assert torch.allclose(m.w.detach(), torch.full((2,), 0.9))  # one SGD step of lr 0.1 on a gradient of 1
    m = SetsGrad(set_grad=False)  # an own optimizer no gradient reached is not stepped (fp16 would refuse it)
    fit(m, data, TrainConfig(epochs=2, batch_size=32, precision=precision, select="last"), quiet=True)
    assert torch.equal(m.w.detach(), torch.ones(2))


def test_own_optimizer_names_are_checked(data):
    class Named(SetsGrad):
        def optimizers(self):
            return {"main": OptimizerSpec([self.w], "sgd", lr=0.1)}

    with pytest.raises(CmkdError, match="'main'"):
        fit(Named(), data, TrainConfig(epochs=1), quiet=True)


class WithFrozen(TaskMethod):
    def __init__(self, frozen_value: float):
        super().__init__()
        self.student = Student()
        self.frozen = nn.Linear(4, 2).requires_grad_(False)
        nn.init.constant_(self.frozen.weight, frozen_value)

    def frozen_modules(self):
        return [self.frozen]

    def training_step(self, batch):
        s = self.student(batch.inputs)
        return {
            "ce": task_loss(s, batch.target, "multiclass"),
            "match": (s - self.frozen(batch.inputs["x"])).pow(2).mean(),
        }


def test_resume_refuses_another_frozen_teacher(data, tmp_path):
    state = str(tmp_path / "s.state")
    torch.manual_seed(0)
    fit(WithFrozen(0.5), data, TrainConfig(epochs=2, batch_size=32), quiet=True, state_file=state)
    torch.manual_seed(0)
    with pytest.raises(CmkdError, match="other settings"):
        fit(WithFrozen(0.7), data, TrainConfig(epochs=2, batch_size=32), quiet=True, state_file=state, resume=True)
    torch.manual_seed(0)
    fit(WithFrozen(0.5), data, TrainConfig(epochs=2, batch_size=32), quiet=True, state_file=state, resume=True)
