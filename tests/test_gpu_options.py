"""The GPU path's options, as far as a CPU can check them: TF32 precision, --compile, the device each process
takes under torchrun, and one line (not a traceback) for an out-of-memory error. benchmarks/gpu_check.sh runs
them on a GPU."""

from __future__ import annotations

import pytest
import torch
import typer

from cmkdtool.engine import distributed
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.device import autocast, resolve_precision
from cmkdtool.errors import CmkdError, CmkdUsageError


def test_tf32_is_float32_with_tf32_matmuls_and_needs_cuda():
    with pytest.raises(CmkdUsageError, match="--precision tf32 needs a CUDA device"):
        resolve_precision("tf32", torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"
    with autocast("tf32", torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32
        y = torch.ones(2, 3) @ torch.ones(3, 2)
    assert y.dtype == torch.float32  # no casts: float32 tensors, TF32 arithmetic on CUDA tensor cores
    assert torch.get_float32_matmul_precision() == "highest"  # restored after the step
    TrainConfig(precision="tf32").validate()


def test_each_process_takes_its_local_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.device_for_rank(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(CmkdUsageError, match="every process would use that GPU; give --device cuda"):
        distributed.device_for_rank(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CmkdError, match="needs cuda:1 but 1 CUDA device"):
        distributed.device_for_rank(torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: the GPU given, or cuda:LOCAL_RANK
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.device_for_rank(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda", 0)
    monkeypatch.delenv("RANK")  # no launcher
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda")


def test_out_of_memory_is_one_line_with_the_fix(capsys):
    from cmkdtool.cli.common import guard

    def runs_out():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")

    with pytest.raises(typer.Exit) as e:
        guard(runs_out)()
    assert e.value.exit_code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("cmkdtool: error: out of device memory; lower --batch-size")
    assert "--data-placement host or stream" in err[0]

    def other():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError keeps its traceback (a bug)
        guard(other)()


def _tiny():
    import numpy as np

    from cmkdtool.data.tensors import TensorData

    g = np.random.default_rng(0)
    y = g.integers(0, 2, 128)
    x = (g.normal(size=(128, 4)) + y[:, None]).astype(np.float32)
    return TensorData(
        ids=np.arange(128).astype(str), inputs={"x": torch.as_tensor(x)}, shapes={"x": (4,)},
        target=torch.as_tensor(y), labels=y, split=np.array(["train"] * 96 + ["val"] * 32), task="multiclass",
        num_classes=2, class_names=None, source="tiny",
    )  # fmt: skip


def _pretrain(cfg: TrainConfig):
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines.train import pretrain

    return pretrain(_tiny(), model=ModelOptions(hidden=[8]), config=cfg, quiet=True)


def test_compile_wraps_the_training_step(monkeypatch):
    seen = []

    def fake_compile(module, mode=None, dynamic=None):
        seen.append((type(module).__name__, mode))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    _pretrain(TrainConfig(epochs=1, batch_size=32, compile="reduce-overhead"))
    assert seen == [("_Step", "reduce-overhead")]
    seen.clear()
    _pretrain(TrainConfig(epochs=1, batch_size=32))
    assert seen == []  # off by default


def test_compiled_training_follows_eager_training(monkeypatch):
    """The step traced by torch.compile (dynamo + AOT autograd; the aot_eager backend stands in for inductor,
    whose C++ code generation costs minutes on this CPU) reaches the eager run's weights."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode=None, dynamic=None: real(module, backend="aot_eager"))
    cfg = dict(epochs=2, batch_size=40, optimizer="sgd", lr=0.1, select="last")  # 96 rows: batches 40, 56
    eager, _ = _pretrain(TrainConfig(**cfg))
    compiled, fit = _pretrain(TrainConfig(**cfg, compile="default"))
    for k, v in eager.state_dict().items():
        assert torch.allclose(compiled.state_dict()[k], v, atol=1e-6), k
    assert fit.history[-1]["train/loss"] < fit.history[0]["train/loss"]
