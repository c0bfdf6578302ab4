"""Library runs for tests/test_ddp.py, the same code with one process (imported by the test) or several (run by
torchrun: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_ddp_worker.py OUT MODE``).

Every run is float64 (``torch.set_default_dtype``) on a small synthetic table whose global batch of 63 rows
splits unevenly over two processes (32 + 31): weights must equal the one-process run to rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine import distributed
from cmkdtool.engine import trainer as trainer_mod
from cmkdtool.engine.batches import IndexBatches
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.method import OptimizerSpec, Step
from cmkdtool.engine.trainer import fit, seed_everything
from cmkdtool.errors import CmkdError
from cmkdtool.losses.task import task_loss
from cmkdtool.methods.registry import methods
from cmkdtool.methods.supervised import Supervised
from cmkdtool.nn.models import new_model
from cmkdtool.nn.specs import ModelOptions

ROWS, CLASSES = 300, 3


def table() -> TensorData:
    g = np.random.default_rng(0)
    y = g.integers(0, CLASSES, ROWS)
    xa = g.normal(size=(ROWS, 6)) + y[:, None] * 0.7
    xb = g.normal(size=(ROWS, 5)) + y[:, None] * 0.9
    split = np.array(["train"] * 240 + ["val"] * 60)
    return TensorData(
        ids=np.array([f"r{i}" for i in range(ROWS)]),
        inputs={c: torch.as_tensor(v, dtype=torch.get_default_dtype()) for c, v in (("xa", xa), ("xb", xb))},
        shapes={"xa": (6,), "xb": (5,)},
        target=torch.as_tensor(y, dtype=torch.long),
        labels=y,
        split=split,
        task="multiclass",
        num_classes=CLASSES,
        class_names=None,
        source="ddp-test",
    )


def float32(fn, *args, **kw):
    """``fn`` with float32 modules and data (methods whose heads meet the float32 teacher cache)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_default_dtype(default)


def config(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 63, "optimizer": "adamw", "lr": 1e-2, "select": "last"}
    return TrainConfig(**{**base, **kw})


def distill(method: str, params, cfg: TrainConfig, **extra) -> dict[str, torch.Tensor]:
    from cmkdtool.pipelines.train import distill as run

    data = table()
    seed_everything(1)
    teacher = new_model(data, ModelOptions(hidden=[12]), "teacher", ["xb"]).eval()
    student, _ = run(methods()[method], params, data, teacher, ["xa"], model=ModelOptions(hidden=[10]), config=cfg,
                     quiet=True, **extra)  # fmt: skip
    return dict(student.state_dict())


class WithCritic(Supervised):
    """Supervised, plus a critic on the detached logits stepped by an own optimizer (gradients averaged by the
    trainer under several processes, weighted by each process's share of the batch)."""

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__(net, task)
        self.critic = nn.Linear(CLASSES, 1)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"critic": OptimizerSpec(list(self.critic.parameters()), "adam", lr=1e-2)}

    def training_step(self, batch) -> Step:
        logits = self.student(batch.inputs)
        return Step({"ce": task_loss(logits, batch.target, self.task)}, {"logits": logits})

    def own_losses(self, batch, step: Step) -> dict:
        return {"critic": (self.critic(step.outputs["logits"].detach()) - 1.0).square().mean()}


def with_critic(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    data = table()
    seed_everything(2)
    method = WithCritic(new_model(data, ModelOptions(hidden=[10]), "student", ["xa"]), data.task)
    result = fit(method, data, cfg, quiet=True)
    return {**result.state_dict, **{f"critic.{k}": v for k, v in method.critic.state_dict().items()}}


def resumed(state: str, interrupt: bool) -> dict[str, torch.Tensor]:
    """Dropout 0.3 (each process's own random stream), 4 epochs; interrupted after epoch 2 and resumed."""
    data = table()
    cfg = config(epochs=4)

    def run(resume: bool, stop_after: int | None):
        seed_everything(3)
        net = new_model(data, ModelOptions(hidden=[10], dropout=0.3), "student", ["xa"])

        def stop(epoch, row):
            if stop_after is not None and epoch == stop_after:
                raise KeyboardInterrupt

        return fit(Supervised(net, data.task), data, cfg, quiet=True, state_file=state, resume=resume,
                   on_epoch_end=stop)  # fmt: skip

    if not interrupt:
        return dict(run(False, None).state_dict)
    try:
        run(False, 2)
    except KeyboardInterrupt:
        pass
    return dict(run(True, None).state_dict)


def unweighted(monkeypatch_share: bool):
    """KD with every process's loss weighted 1 instead of its share of the global batch (the control)."""
    if monkeypatch_share:
        real = IndexBatches.epoch

        def epoch(self, generator):
            for b in real(self, generator):
                b.share = 1.0
                yield b

        IndexBatches.epoch = epoch
    try:
        return distill("kd", methods()["kd"].params(), config())
    finally:
        if monkeypatch_share:
            IndexBatches.epoch = real


def runs(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every library case, by name."""
    feature = methods()["feature"].params
    return {
        "kd": distill("kd", methods()["kd"].params(), config()),
        "kd_unweighted": unweighted(True),
        # --task-weight 0: the head gets no gradient (DDP must cope with unused parameters)
        "feature_no_task": distill("feature", feature(task_weight=0.0, student_layer="encoders.xa.0"), config()),
        # in-batch negatives: every process gathers the whole global batch's rows (nn.gather), learned temperature;
        # the teacher runs each step (its cache is float32, these students float64)
        "feature_clip": distill("feature", feature(loss="clip"), config(), cache_teacher=False),
        "feature_margin": distill("feature", feature(loss="margin"), config(), cache_teacher=False),
        # relations over the batch (pairs, similarity matrices), gathered across processes
        **{m: distill(m, methods()[m].params(), config(), cache_teacher=False) for m in ("rkd", "pkt", "sp", "dask")},
        # embedding heads and in-batch InfoNCE (class positives: the labels gathered too); float32, SGD
        "nce": float32(distill, "nce", methods()["nce"].params(positives="class"), config(optimizer="sgd", lr=0.05)),
        "gmc": float32(distill, "gmc", methods()["gmc"].params(), config(optimizer="sgd", lr=0.05)),
        "critic": with_critic(config(epochs=3)),
        "resume_full": resumed(str(out / "full.state.safetensors"), False),  # rank 0 writes, every rank reads
        "resume_cut": resumed(str(out / "cut.state.safetensors"), True),
    }


class FailOnRank(Supervised):
    def training_step(self, batch):
        if distributed.current().rank == 1 and self.steps == 3:
            raise CmkdError("rank 1 stops here on purpose")
        self.steps += 1
        return super().training_step(batch)


def fail() -> None:
    """Rank 1 raises a CmkdError at its fourth step while rank 0 goes on: both must exit 1 (the guard's lines)."""
    data = table()
    method = FailOnRank(new_model(data, ModelOptions(hidden=[10]), "student", ["xa"]), data.task)
    method.steps = 0
    fit(method, data, config(epochs=50), quiet=True)


def main() -> None:
    import typer

    from cmkdtool.cli.common import guard

    out, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_default_dtype(torch.float64)
    trainer_mod.STATE_INTERVAL_S = 0.0  # a training state after every epoch (the resume case stops after 2)
    if mode == "fail":
        try:
            guard(fail)()
        except typer.Exit as e:
            sys.exit(e.exit_code)
        return
    distributed.setup(torch.device("cpu"))
    rank = distributed.current().rank
    from safetensors.torch import save_file

    for name, tensors in runs(out).items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.rank{rank}.safetensors"))
    distributed.shutdown()


if __name__ == "__main__":
    main()
