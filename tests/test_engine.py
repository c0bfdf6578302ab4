"""The training core's extension points: parameter groups, a method's own optimizer, schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.loop import Method, fit, lr_factor, task_loss
from cmkdtool.io.tables import FeatureTable, build_table


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
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, inputs):
        return self.lin(inputs["x"])

    def embed(self, inputs):
        return inputs["x"]


class TwoGroups(Method):
    """A student (lr x1), a frozen-rate side module (lr x0), and an adversary stepped by its own optimizer."""

    def __init__(self):
        super().__init__()
        self.student = Student()
        self.side = nn.Linear(4, 4)
        self.adversary = nn.Linear(2, 1)
        self.adv_opt = torch.optim.SGD(self.adversary.parameters(), lr=0.1)
        self.steps: list[int] = []

    def param_groups(self):
        return [{"params": list(self.student.parameters())}, {"params": list(self.side.parameters()), "lr_scale": 0.0}]

    def own_optimizer_parameters(self):
        return list(self.adversary.parameters())

    def training_step(self, batch):
        logits = self.student(batch.inputs)
        side = self.side(batch.inputs["x"]).pow(2).mean()
        return {"ce": task_loss(logits, batch.target, "multiclass"), "side": side}

    def after_step(self, batch, terms, step):
        self.steps.append(step)
        assert not any(t.requires_grad for t in terms.values())
        self.adv_opt.zero_grad()
        loss = self.adversary(self.student(batch.inputs).detach()).pow(2).mean()
        loss.backward()
        self.adv_opt.step()


def test_param_groups_lr_scale_and_own_optimizer(data):
    m = TwoGroups()
    side0 = {k: v.clone() for k, v in m.side.state_dict().items()}
    adv0 = {k: v.clone() for k, v in m.adversary.state_dict().items()}
    stu0 = {k: v.clone() for k, v in m.student.state_dict().items()}
    fit(m, data, TrainConfig(epochs=3, batch_size=16, lr=0.05, select="last"), quiet=True)
    assert m.steps == list(range(12))  # 64 train rows / 16 = 4 steps x 3 epochs, numbered globally
    assert all(torch.equal(side0[k], v) for k, v in m.side.state_dict().items())  # lr_scale 0: untouched
    assert not all(torch.equal(adv0[k], v) for k, v in m.adversary.state_dict().items())  # its own optimizer
    assert not all(torch.equal(stu0[k], v) for k, v in m.student.state_dict().items())
    assert {id(p) for p in m.trainable_parameters()}.isdisjoint({id(p) for p in m.adversary.parameters()})


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
