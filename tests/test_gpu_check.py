"""benchmarks/gpu_check.sh and the efficiency pieces of benchmarks/throughput.py, as far as a CPU can check them:
the script's syntax, its CPU smoke run (every row present, the CPU rows pass, the CUDA rows skipped, a JSON file
per step), throughput.py's FLOP count against the hand value, its MFU peaks, the busy-fraction interval union,
the compiled bare loop's reset between runs, and its --json output."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = [
    ("synth", "synth mfh", "pass"),
    ("pretrain_fp32", "pretrain fp32", "pass"),
    ("pretrain_bf16", "pretrain bf16", "skipped"),
    ("pretrain_fp16", "pretrain fp16", "skipped"),
    ("pretrain_tf32", "pretrain tf32", "skipped"),
    ("distill_kd", "distill kd", "pass"),
    ("distill_feature", "distill feature", "pass"),
    ("eval", "eval --format json", "pass"),
    ("resume", "--resume (interrupted = full)", "pass"),
    ("torchrun", "torchrun nproc 1 (NCCL)", "skipped"),
    ("compile", "pretrain --compile default", "skipped"),
    ("throughput_fp32", "throughput.py fp32", "pass"),
    ("throughput_bf16", "throughput.py bf16", "skipped"),
]


def test_gpu_check_script_parses():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_gpu_check_cpu_smoke_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "CMKDTOOL_GPU_CHECK_DEVICE": "cpu", "CMKDTOOL_PYTHON": sys.executable}
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in res.stdout  # the same table on stdout and in $OUT
    rows = [line for line in table.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [r.split("|")[2].strip() for r in rows] == [title for _, title, _ in STEPS]
    for row, (step, title, expected) in zip(rows, STEPS, strict=True):
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2] == expected, row
        if expected == "skipped":
            assert cells[4] == "skipped: no CUDA (CPU smoke run)", row
        record = json.loads((tmp_path / "gpu_check" / f"{step}.json").read_text())
        assert record["result"] == expected and record["title"] == title
    for method in ("cmkdtool", "hand-written", "bare"):  # throughput's rows, one per loop
        assert any(f"&nbsp;&nbsp;{method} | pass |" in line for line in table.splitlines()), method
    resume = json.loads((tmp_path / "gpu_check" / "resume.json").read_text())
    assert resume["metrics"]["max_abs_diff_tensors"] <= 1e-6
    summary = json.loads((tmp_path / "gpu_check" / "summary.json").read_text())
    assert summary["failed"] == 0 and len(summary["steps"]) == len(STEPS)
    results = json.loads((tmp_path / "gpu_check" / "throughput_fp32.results.json").read_text())
    assert set(results["methods"]) == {"cmkdtool", "hand-written", "bare"}


@pytest.fixture(scope="module")
def tp():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("throughput")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def small_setup(tp, rows=600, dim=16, classes=3, hidden=8):
    from cmkdtool.data.tensors import load_tensor_data
    from cmkdtool.io.tables import FeatureTable, build_table
    from cmkdtool.nn.models import build_model
    from cmkdtool.nn.specs import ModelOptions

    x, y = tp.make_data(rows, dim, classes, 0)
    split = np.array(["train"] * (rows - 100) + ["val"] * 100)
    table = FeatureTable(build_table([f"r{i}" for i in range(rows)], {"x": x}, label=y, split=split), sources=["t"])
    data = load_tensor_data(table, ["x"], torch.device("cpu"), num_classes=classes)
    torch.manual_seed(1)
    teacher = build_model(ModelOptions(hidden=[hidden]).spec(data, role="teacher")).eval().requires_grad_(False)
    torch.manual_seed(0)
    student = tp.build_student(data, ["x"], ModelOptions(hidden=[hidden]), None)
    idx = data.index("train")
    return student, teacher, data.inputs["x"][idx].contiguous(), data.target[idx].contiguous()


def test_flops_per_step_is_the_hand_count(tp):
    """Forward 2 B sum(in out); backward the weight gradients (2 B in out per layer) and the input gradient of every
    layer but the first (the input needs none): 2 B (2 in_1 h + 3 h c) for a one-hidden-layer MLP, not 6 B weights."""
    student, teacher, x, y = small_setup(tp)
    args = argparse.Namespace(batch_size=64, precision="fp32")
    flops = tp.flops_per_step(student, x, tp.teacher_logits(teacher, x), y, args, torch.device("cpu"))
    assert flops == 2 * 64 * (2 * 16 * 8 + 3 * 8 * 3)


def test_peaks_by_device_name(tp):
    assert tp.peak_for("NVIDIA H100 80GB HBM3", "bf16")["tflops"] == 989
    assert tp.peak_for("NVIDIA H100 80GB HBM3", "fp16")["tflops"] == 989
    assert tp.peak_for("NVIDIA H200", "fp32")["tflops"] == 67
    assert tp.peak_for("NVIDIA H200", "fp32", fp32_matmul="high")["tflops"] == 495
    assert tp.peak_for("NVIDIA H100 PCIe", "tf32")["tflops"] == 378
    assert tp.peak_for("NVIDIA H100 PCIe", "bf16")["tflops"] == 756
    assert tp.peak_for("NVIDIA A100-SXM4-80GB", "bf16") is None  # not in the table: MFU n/a
    assert tp.peak_for("NVIDIA H100 NVL", "bf16") is None


def test_union_of_device_intervals(tp):
    assert tp.union_us([]) == 0
    assert tp.union_us([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4


def test_compiled_bare_loop_starts_each_run_from_the_same_weights(tp):
    student, teacher, x, y = small_setup(tp)
    args = argparse.Namespace(batch_size=64, precision="fp32", seed=0, epochs=1)
    run = tp.CompiledBare(student, teacher, x, y, args, torch.device("cpu"), "default", backend="eager")
    run()
    first = {k: v.clone() for k, v in run.student.state_dict().items()}
    run()
    for k, v in run.student.state_dict().items():
        assert torch.equal(v, first[k]), k
    assert not torch.equal(first["head.0.weight"], student.state_dict()["head.0.weight"])  # it trained


def test_throughput_json_on_the_cpu(tp, tmp_path):
    out = tmp_path / "t.json"
    argv = ["--rows", "900", "--dim", "16", "--hidden", "8", "--classes", "3", "--epochs", "1", "--repeats", "1",
            "--batch-size", "64", "--profile-steps", "2", "--json", str(out)]  # fmt: skip
    assert tp.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["flops_per_step"] == 2 * 64 * (2 * 16 * 8 + 3 * 8 * 3) and rec["peak"] is None
    assert set(rec["methods"]) == {"cmkdtool", "hand-written", "bare"}  # no compiled loops by default on the CPU
    for res in rec["methods"].values():
        assert res["samples_per_s"] > 0 and res["mfu"] is None and res["cpu_us_per_step"] > 0
        assert res["profile"]["profiled_steps"] == 2 and res["profile"]["gpu_busy"] is None
    with pytest.raises(SystemExit):
        tp.main(["--rows", "900", "--methods", "bare-cudagraphs"])  # CUDA graphs: CUDA only
