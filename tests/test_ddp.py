"""Training under torchrun with 2 gloo processes equals training in one process (docs/scaling.md).

Library runs (tests/_ddp_worker.py, float64, a global batch of 63 split 32 + 31): KD with a cached teacher equals
one process to 1e-10, and the same run without the per-process loss weighting does not; feature distillation with
an unused head; a method's own optimizer (gradients averaged: its weights equal on both processes); a resumed
2-process run with dropout equals the uninterrupted one bit for bit. An error on one process ends both with
status 1. The CLI: `pretrain` and `distill kd` under 2 processes match 1 process with SGD, each file is written
once and records the world size. Each launch costs about 12 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CMKDTOOL_DIST_TIMEOUT": "60"}


def launch(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """torchrun with 2 processes; one retry when gloo aborted a process at exit (SIGABRT after the work is done:
    about one launch in 10 on a busy 2-core machine, spec 2.4), never for any other failure."""
    for attempt in (1, 2):
        done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=ENV, timeout=timeout,
                              check=False)  # fmt: skip
        if attempt == 2 or "Signal 6 (SIGABRT)" not in done.stderr:
            return done
    return done


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def library_runs(tmp_path_factory):
    """The worker's cases under 2 processes (files per rank) and in this process (one process)."""
    out = tmp_path_factory.mktemp("ddp")
    done = launch([str(HERE / "_ddp_worker.py"), str(out), "runs"])
    assert done.returncode == 0, done.stderr[-3000:]
    sys.path.insert(0, str(HERE))
    try:
        import _ddp_worker as worker
    finally:
        sys.path.remove(str(HERE))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        one = worker.runs(tmp_path_factory.mktemp("one"))
    finally:
        torch.set_default_dtype(default)
    two = {name: [load(out / f"{name}.rank{r}.safetensors") for r in (0, 1)] for name in one}
    return one, two


def test_kd_under_two_processes_equals_one_process_in_float64(library_runs):
    one, two = library_runs
    assert all(v.dtype == torch.float64 for v in one["kd"].values())
    assert max_diff(two["kd"][0], two["kd"][1]) == 0.0  # the processes hold the same model
    assert max_diff(two["kd"][0], one["kd"]) <= 1e-10
    # the control: without weighting each process's loss by its share of the uneven global batch (32 vs 31 rows)
    # DDP's average is not the global batch's gradient, and the check above would fail
    assert max_diff(one["kd_unweighted"], one["kd"]) == 0.0  # one process: share is 1 anyway
    assert max_diff(two["kd_unweighted"][0], one["kd"]) > 1e-6


def test_an_unused_head_trains_under_two_processes(library_runs):
    one, two = library_runs
    assert max_diff(two["feature_no_task"][0], one["feature_no_task"]) <= 1e-10


@pytest.mark.parametrize("method", ["rkd", "pkt", "sp", "dask"])
def test_batch_relations_are_gathered_across_processes(library_runs, method):
    """Relational losses (distances, angles, similarity matrices over the batch) see the global batch."""
    one, two = library_runs
    assert max_diff(two[method][0], two[method][1]) == 0.0
    assert max_diff(two[method][0], one[method]) <= 1e-10


@pytest.mark.parametrize("method", ["nce", "gmc"])
def test_in_batch_infonce_is_gathered_across_processes(library_runs, method):
    """InfoNCE over the batch (nce with class positives: labels gathered too; gmc), float32 with SGD."""
    one, two = library_runs
    assert next(iter(one[method].values())).dtype == torch.float32
    assert max_diff(two[method][0], two[method][1]) == 0.0
    assert max_diff(two[method][0], one[method]) <= 1e-5


@pytest.mark.parametrize("loss", ["clip", "margin"])
def test_in_batch_negatives_are_gathered_across_processes(library_runs, loss):
    """clip and margin relate every row of the global batch to every other: gathered with gradients, 2 processes
    with their uneven halves (32 + 31) train the one-process model."""
    one, two = library_runs
    assert max_diff(two[f"feature_{loss}"][0], two[f"feature_{loss}"][1]) == 0.0
    assert max_diff(two[f"feature_{loss}"][0], one[f"feature_{loss}"]) <= 1e-10


def test_own_optimizer_gradients_are_averaged(library_runs):
    one, two = library_runs
    assert any(k.startswith("critic.") for k in one["critic"])
    assert max_diff(two["critic"][0], two["critic"][1]) == 0.0
    assert max_diff(two["critic"][0], one["critic"]) <= 1e-10


def test_resume_under_two_processes_equals_an_uninterrupted_run(library_runs):
    _, two = library_runs
    for r in (0, 1):
        assert max_diff(two["resume_cut"][r], two["resume_full"][r]) == 0.0  # dropout streams restored per rank


def test_an_error_on_one_process_ends_both_with_status_1(tmp_path):
    t0 = time.monotonic()
    done = launch([str(HERE / "_ddp_worker.py"), str(tmp_path), "fail"], timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("cmkdtool: error")]
    assert any(line == "cmkdtool: error [rank 1/2]: rank 1 stops here on purpose" for line in lines), done.stderr
    assert any(line.startswith("cmkdtool: error [rank 0/2]: another process failed") for line in lines)
    assert "Traceback" not in "\n".join(x for x in done.stderr.splitlines() if "cmkdtool" in x)
    assert elapsed < 60  # generous on a loaded machine: a hang would run into the 120 s timeout


def _cli(args: list[str], out: Path, processes: int) -> subprocess.CompletedProcess:
    base = ["-m", "cmkdtool", *args, "--device", "cpu", "--optimizer", "sgd", "--lr", "0.05", "-o", str(out)]
    if processes == 1:
        return subprocess.run([sys.executable, *base], capture_output=True, text=True, env=ENV, timeout=180,
                              check=False)  # fmt: skip
    return launch(base)


@pytest.mark.parametrize("command", ["pretrain", "distill"])
def test_cli_under_two_processes_matches_one_and_writes_once(command, mfh_table, tmp_path):
    mfh_table = str(mfh_table)
    common = ["-i", "xa", "--arch", "mlp", "--hidden", "16", "--epochs", "3", "--batch-size", "63"]
    if command == "distill":
        teacher = tmp_path / "teacher.safetensors"
        made = _cli(["pretrain", mfh_table, "-i", "xb", "--arch", "linear", "--epochs", "2"], teacher, 1)
        assert made.returncode == 0, made.stderr
        args = ["distill", "kd", mfh_table, "-t", str(teacher), *common]
    else:
        args = ["pretrain", mfh_table, *common]
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir(), d2.mkdir()
    one = _cli(args, d1 / "m.safetensors", 1)
    two = _cli(args, d2 / "m.safetensors", 2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    assert sum(line.startswith("wrote ") for line in two.stderr.splitlines()) == 1
    assert sorted(p.name for p in d2.iterdir()) == sorted(p.name for p in d1.iterdir()) == [
        "m.safetensors", "m.safetensors.history.jsonl", "m.safetensors.state.safetensors"]  # fmt: skip
    a, b = load(d1 / "m.safetensors"), load(d2 / "m.safetensors")
    assert max_diff(a, b) <= 1e-5
    h1 = [json.loads(x) for x in (d1 / "m.safetensors.history.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (d2 / "m.safetensors.history.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in h2] == pytest.approx([r["train/loss"] for r in h1], rel=1e-5)
    from safetensors import safe_open

    with safe_open(str(d2 / "m.safetensors"), framework="pt") as f:
        record = json.loads(f.metadata()["cmkdtool.train"])
    assert record["world_size"] == 2


def test_batch_coupled_methods_refuse_several_processes(monkeypatch):
    """CRD draws its negatives from the batch: under 2 processes each would see half of it. The trainer refuses
    before joining anything (here with a stand-in context of 2 processes)."""
    from cmkdtool.engine import trainer as trainer_mod
    from cmkdtool.engine.distributed import DistContext
    from cmkdtool.errors import CmkdUsageError

    sys.path.insert(0, str(HERE))
    try:
        import _ddp_worker as worker
    finally:
        sys.path.remove(str(HERE))
    monkeypatch.setattr(trainer_mod, "setup", lambda device: DistContext(rank=0, world_size=2))
    crd = worker.methods()["crd"].params
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the worker's table is float64
    try:
        with pytest.raises(CmkdUsageError, match="crd cannot train under 2 processes: its memory banks and negative"):
            worker.distill("crd", crd(feat_dim=8, nce_k=16), worker.config(epochs=1))
        worker.distill("kd", worker.methods()["kd"].params(), worker.config(epochs=1))  # per-sample: trains
    finally:
        torch.set_default_dtype(default)


def test_one_process_under_torchrun_trains_through_the_ddp_path(mfh_table, tmp_path):
    """torchrun --nproc_per_node 1 joins a process group of one (the path benchmarks/gpu_check.sh runs with
    NCCL): the same weights as a plain run."""
    args = ["pretrain", str(mfh_table), "-i", "xa", "--arch", "mlp", "--hidden", "16", "--epochs", "2"]
    one = _cli(args, tmp_path / "plain.safetensors", 1)
    done = subprocess.run(
        [*TORCHRUN[:-1], "1", "-m", "cmkdtool", *args, "--device", "cpu", "--optimizer", "sgd", "--lr", "0.05",
         "-o", str(tmp_path / "ddp.safetensors")],
        capture_output=True, text=True, env=ENV, timeout=180, check=False,
    )  # fmt: skip
    assert one.returncode == 0 and done.returncode == 0, done.stderr[-3000:]
    assert max_diff(load(tmp_path / "plain.safetensors"), load(tmp_path / "ddp.safetensors")) <= 1e-6
