"""Training throughput of ``cmkdtool distill kd`` against the loops a user would write, in one run.

Several ways to train the same student (a 512-256-10 MLP) with the same KD loss, optimizer, batch size, epochs and
initial weights, taught by the same frozen teacher (a 512-256-10 MLP, randomly initialised: its outputs only
need to exist for a throughput measurement):

  cmkdtool      the library path ``cmkdtool distill kd`` runs: ``pipelines.train.distill`` on a TensorData
                loaded from an in-memory feature table (teacher outputs cached on the device, index-sliced
                batches, loss values read back once per epoch). The table holds a tiny val split (256 rows) so the
                per-epoch evaluation is negligible; no training-state file is written.
  hand-written  ``DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True)``; each step runs the teacher
                under ``no_grad``, then the student, the loss, backward and an AdamW step, and logs
                ``loss.item()``.
  bare loop     the practical limit: tensors already on the device sliced by a ``randperm``, teacher logits
                computed once, the same loss and optimizer, no logging.
  bare-compile  the bare loop with the student's forward and loss under ``torch.compile`` (default mode; the
                backward is compiled with it, the AdamW step stays eager). Compilation runs before the timed runs
                (reported as ``compile_s``); each timed run resets the weights of the one compiled student.
  bare-cudagraphs  the same with ``mode="reduce-overhead"`` (CUDA graphs; CUDA only).

The compiled rows are in the default set on CUDA only (on the CPU name them in ``--methods``).

Loss (cmkdtool's hinton weighting defaults): 0.9 * T^2 * KL(softmax(t/T) || softmax(s/T)) (batchmean, T = 4)
+ 0.1 * CE(s, y). AdamW, lr 1e-3, no weight decay. Throughput is epochs * train rows / seconds, timed from the
loaded data to the trained student (student construction and the teacher pass included in every method; building
the table is not timed). Each method runs ``--repeats`` times, interleaved; the best time counts. The last column
is the average number of cores other processes kept busy during that best run (from /proc/stat): torch's CPU
threads slow down by an order of magnitude when another process competes for the cores, so on a shared machine
use ``--wait-quiet`` and trust only rows where it is near 0.

With ``--precision bf16|fp16`` every method trains under autocast (fp16 with a GradScaler; the teacher's cached
logits stay fp32); ``tf32`` keeps float32 tensors with TF32 matmuls for the whole process.

Efficiency (a second table on CUDA or with ``--efficiency``; always in ``--json``): FLOPs per step from
``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward pass of the student on a full batch (the
teacher's pass and the optimizer not counted); MFU = FLOPs per sample x samples/s / the device's dense peak
(``PEAK_TFLOPS``, by device name and precision; n/a on other devices); the GPU busy fraction (the union of the CUDA
kernel, memcpy and memset intervals / the wall time of ``--profile-steps`` steps under ``torch.profiler``, after 5
warm-up steps (fewer in short runs), in a separate pass of each method); kernels per step; and the CPU microseconds
per step of this process (``time.process_time`` over the best timed run). The GPU, its driver, clocks and torch's
CUDA version are printed above the tables.

    python benchmarks/throughput.py                      # 100k x 512, batch 256, 3 epochs, CPU
    python benchmarks/throughput.py --rows 20000         # a quick run
    python benchmarks/throughput.py --device cuda --precision bf16 --json out/throughput.json
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F
from machine_load import cpu_seconds, others_cores, wait_quiet  # benchmarks/machine_load.py
from torch.utils.data import DataLoader, TensorDataset

from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.device import autocast
from cmkdtool.engine.trainer import seed_everything
from cmkdtool.io.tables import FeatureTable, build_table
from cmkdtool.methods import registry
from cmkdtool.methods.kd import KDParams
from cmkdtool.nn.models import build_model
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.pipelines.train import build_student, distill

TEMPERATURE, CE_WEIGHT, KD_WEIGHT, LR = 4.0, 0.1, 0.9, 1e-3
VAL_ROWS = 256
METHODS = ("cmkdtool", "hand-written", "bare", "bare-compile", "bare-cudagraphs")
COMPILE_MODES = {"bare-compile": "default", "bare-cudagraphs": "reduce-overhead"}

# Dense peak TFLOPS (no sparsity), NVIDIA's datasheets: the key is matched in the device name (see ``peak_for``).
# "bf16" also serves fp16 (the same tensor-core rate on these parts); "tf32" applies to fp32 runs when torch's
# float32 matmul precision is not "highest" (TF32 allowed), "fp32" otherwise (torch's default).
PEAK_TFLOPS = {
    "H100 SXM": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
}


def peak_for(device_name: str, precision: str, fp32_matmul: str = "highest") -> dict | None:
    """The peak that bounds MFU for a device name ('NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe', 'NVIDIA H200')
    and a precision, as {"device", "kind", "tflops"}; None for other devices (MFU is then n/a)."""
    name = device_name.upper()
    if "H200" in name:
        key = "H200"
    elif "H100" in name and "PCIE" in name:
        key = "H100 PCIe"
    elif "H100" in name and ("SXM" in name or "HBM3" in name):
        key = "H100 SXM"
    else:
        return None
    if precision in ("bf16", "fp16"):
        kind = "bf16"
    else:
        kind = "fp32" if precision == "fp32" and fp32_matmul == "highest" else "tf32"
    return {"device": key, "kind": kind, "tflops": PEAK_TFLOPS[key][kind]}


def make_data(rows: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features and labels from a random linear rule (argmax of ``classes`` random projections)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    w = rng.standard_normal((dim, classes)).astype(np.float32)
    return x, np.argmax(x @ w, axis=1).astype(np.int64)


def kd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    kl = F.kl_div(
        F.log_softmax(s / TEMPERATURE, 1), F.log_softmax(t / TEMPERATURE, 1), log_target=True, reduction="batchmean"
    )
    return KD_WEIGHT * TEMPERATURE**2 * kl + CE_WEIGHT * F.cross_entropy(s, y)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp(precision: str, device: torch.device):
    """The autocast context of the hand-written loops (tf32 is set for the whole process in ``main``)."""
    return autocast("fp32" if precision == "tf32" else precision, device)


def scaler_for(precision: str, device: torch.device):
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler) -> None:
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


class StepHook:
    """Calls ``on_step`` after every training step and stops the run (``Stop``) after ``limit`` steps: the
    profiled passes. ``None`` hooks cost nothing in the timed runs."""

    class Stop(Exception):
        pass

    def __init__(self, on_step=None, limit: int | None = None):
        self.on_step, self.limit, self.count = on_step, limit, 0

    def __call__(self) -> None:
        self.count += 1
        if self.on_step is not None:
            self.on_step()
        if self.limit is not None and self.count >= self.limit:
            raise StepHook.Stop


def run_cmkdtool(data, teacher, args, epoch_times: list[float], hook: StepHook | None = None) -> float:
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=LR, select="last", seed=args.seed, precision=args.precision
    )
    patched = None
    if hook is not None:  # the profiled pass: count the engine's steps (Trainer.train_step) and stop early
        from cmkdtool.engine.trainer import Trainer

        patched = Trainer.train_step

        def train_step(self, *a, **k):
            patched(self, *a, **k)
            hook()

        Trainer.train_step = train_step
    sync(data.device)
    t0 = time.perf_counter()
    try:
        _, result = distill(
            registry.get("kd"),
            KDParams(),
            data,
            teacher,
            ["x"],
            model=ModelOptions(hidden=args.hidden_sizes),
            config=cfg,
            quiet=True,
            state_file=None,
        )
        epoch_times.append(sum(result.epoch_seconds))  # the epochs alone, as fit times them
    except StepHook.Stop:
        pass
    finally:
        if patched is not None:
            Trainer.train_step = patched
    sync(data.device)
    return time.perf_counter() - t0


def run_hand_written(student0, teacher, x, y, args, device, hook: StepHook | None = None) -> float:
    """The loop from the tutorials: a DataLoader over CPU tensors, the teacher run every step, loss.item()."""
    torch.manual_seed(args.seed)
    sync(device)
    t0 = time.perf_counter()
    student = copy.deepcopy(student0).to(device).train()
    teacher.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    scaler = scaler_for(args.precision, device)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    log = []
    try:
        for _ in range(args.epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                with amp(args.precision, device):
                    with torch.no_grad():
                        t = teacher({"x": xb})
                    loss = kd_loss(student({"x": xb}), t, yb)
                opt.zero_grad()
                optimizer_step(loss, opt, scaler)
                log.append(loss.item())
                if hook is not None:
                    hook()
    except StepHook.Stop:
        pass
    sync(device)
    return time.perf_counter() - t0


def teacher_logits(teacher, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([teacher({"x": x[i : i + 8192]}) for i in range(0, len(x), 8192)])


def run_bare(student0, teacher, x, y, args, device, hook: StepHook | None = None) -> float:
    """Tensors already on the device, randperm slices, teacher logits computed once, no logging."""
    gen = torch.Generator().manual_seed(args.seed)
    sync(device)
    t0 = time.perf_counter()
    student = copy.deepcopy(student0).to(device).train()
    tl = teacher_logits(teacher, x)
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    scaler = scaler_for(args.precision, device)
    n, bs = len(x), args.batch_size
    try:
        for _ in range(args.epochs):
            perm = torch.randperm(n, generator=gen).to(device)
            for s in range(0, n, bs):
                idx = perm[s : s + bs]
                with amp(args.precision, device):
                    loss = kd_loss(student({"x": x[idx]}), tl[idx], y[idx])
                opt.zero_grad(set_to_none=True)
                optimizer_step(loss, opt, scaler)
                if hook is not None:
                    hook()
    except StepHook.Stop:
        pass
    sync(device)
    return time.perf_counter() - t0


class CompiledBare:
    """The bare loop with the student's forward and the loss under ``torch.compile`` (``mode``: default or
    reduce-overhead). One student is compiled once, before the timed runs (``compile_s``: the warm-up steps on the
    full and the last batch shape, ``dynamic=False``); every run starts from ``student0``'s weights (copied in
    place, so the compiled code and CUDA graphs stay valid) with a fresh AdamW. The optimizer step is eager."""

    def __init__(self, student0, teacher, x, y, args, device, mode: str, backend: str = "inductor"):
        self.args, self.device, self.teacher, self.x, self.y = args, device, teacher, x, y
        self.student = copy.deepcopy(student0).to(device).train()
        self.init = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        self.cudagraphs = mode == "reduce-overhead"
        student, precision = self.student, args.precision

        def loss_fn(xb, tb, yb):
            with amp(precision, device):
                return kd_loss(student({"x": xb}), tb, yb)

        self.fn = torch.compile(loss_fn, mode=mode, dynamic=False, backend=backend)
        sync(device)
        t0 = time.perf_counter()
        tl = teacher_logits(teacher, x)
        opt, scaler = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0), scaler_for(precision, device)
        n, bs = len(x), args.batch_size
        for size in sorted({min(bs, n), n % bs} - {0}):
            idx = torch.arange(size, device=device)
            for _ in range(3):  # CUDA graph trees record on the second call, replay from the third
                self.step(idx, tl, opt, scaler)
        sync(device)
        self.compile_s = time.perf_counter() - t0

    def step(self, idx, tl, opt, scaler) -> None:
        opt.zero_grad(set_to_none=True)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self.fn(self.x[idx], tl[idx], self.y[idx])
        optimizer_step(loss, opt, scaler)

    def __call__(self, hook: StepHook | None = None) -> float:
        args, device = self.args, self.device
        gen = torch.Generator().manual_seed(args.seed)
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for k, v in self.student.state_dict().items():
                v.copy_(self.init[k])
        tl = teacher_logits(self.teacher, self.x)
        opt = torch.optim.AdamW(self.student.parameters(), lr=LR, weight_decay=0.0)
        scaler = scaler_for(args.precision, device)
        n, bs = len(self.x), args.batch_size
        try:
            for _ in range(args.epochs):
                perm = torch.randperm(n, generator=gen).to(device)
                for s in range(0, n, bs):
                    self.step(perm[s : s + bs], tl, opt, scaler)
                    if hook is not None:
                        hook()
        except StepHook.Stop:
            pass
        sync(device)
        return time.perf_counter() - t0


def flops_per_step(student0, x, tl, y, args, device) -> int:
    """FLOPs of one training step on a full batch: the student's forward and backward with the loss
    (``FlopCounterMode``: matmuls as 2 m n k; the first layer's input gradient is not computed, so a
    linear/MLP student counts 2 B (2 in_1 out_1 + 3 sum_(l>1) in_l out_l), not 6 B x weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    student = copy.deepcopy(student0).to(device).train()
    idx = torch.arange(min(args.batch_size, len(x)), device=device)
    with FlopCounterMode(display=False) as counter:
        with amp(args.precision, device):
            loss = kd_loss(student({"x": x[idx]}), tl[idx], y[idx])
        loss.backward()
    return int(counter.get_total_flops())


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of [start, end) intervals (overlaps counted once)."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarize_profile(events, steps: int) -> dict:
    """GPU busy fraction and kernels per step from ``torch.profiler`` events of ``steps`` profiled steps.

    Wall: from the first ``ProfilerStep`` annotation to the end of the last annotation or device activity.
    Busy: the union of the device intervals (kernels, memcpy, memset) / wall."""
    from torch.autograd import DeviceType

    marks = [e for e in events if e.name.startswith("ProfilerStep")]
    dev = [e for e in events if e.device_type == DeviceType.CUDA]
    if not marks:
        return {"error": "no ProfilerStep events"}
    start = min(e.time_range.start for e in marks)
    end = max([e.time_range.end for e in marks] + [e.time_range.end for e in dev])
    wall = max(end - start, 1e-9)
    kernels = [e for e in dev if not e.name.startswith(("Memcpy", "Memset"))]
    return {
        "profiled_steps": steps,
        "wall_us_per_step": wall / steps,
        "gpu_busy": union_us([(e.time_range.start, e.time_range.end) for e in dev]) / wall if dev else None,
        "kernel_us_per_step": sum(e.time_range.end - e.time_range.start for e in kernels) / steps,
        "kernels_per_step": len(kernels) / steps,
        "device_ops_per_step": len(dev) / steps,
    }


def profile_method(run, device: torch.device, steps: int, warmup: int) -> dict:
    """Run ``run(hook)`` for ``warmup + steps`` steps under ``torch.profiler`` (CPU and CUDA activities), recording
    the last ``steps``."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    summary: dict = {}

    def ready(prof) -> None:  # at the end of the active window, before the profiler drops its events
        summary.update(summarize_profile(prof.events(), steps))

    plan = schedule(wait=0, warmup=warmup, active=steps, repeat=1)
    with warnings.catch_warnings():  # "Profiler clears events at the end of each cycle": read in on_trace_ready
        warnings.filterwarnings("ignore", message=".*Profiler clears events")
        with profile(activities=activities, schedule=plan, on_trace_ready=ready) as prof:
            hook = StepHook(prof.step, warmup + steps)
            run(hook)
    if hook.count < warmup + steps:
        return {"error": f"the run had {hook.count} steps, fewer than {warmup + steps}"}
    return summary or {"error": "the profiler returned no trace"}


def device_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "date": date.today().isoformat(),
        "device": str(device),
    }
    if device.type != "cuda":
        info["device_name"] = platform.processor() or platform.machine()
        return info
    props = torch.cuda.get_device_properties(device)
    info.update(
        device_name=torch.cuda.get_device_name(device),
        capability=".".join(map(str, torch.cuda.get_device_capability(device))),
        memory_gib=round(props.total_memory / 2**30, 1),
        multiprocessors=props.multi_processor_count,
        cuda=torch.version.cuda,
    )
    try:
        v = torch._C._cuda_getDriverVersion()  # e.g. 12080: the CUDA version the driver supports
        info["driver_cuda"] = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:  # noqa: BLE001 - informative only
        pass
    query = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,pstate"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader", "-i", str(device.index or 0)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        fields = [f.strip() for f in out.stdout.strip().splitlines()[0].split(",")]
        keys = ["driver", "clock_sm", "clock_sm_max", "clock_mem", "power_limit", "pstate"]
        info.update(dict(zip(keys, fields, strict=False)))
    except Exception:  # noqa: BLE001 - nvidia-smi missing or failing: the driver version stays unknown
        info["driver"] = "unknown (nvidia-smi failed)"
    return info


def fmt_si(v: float | None, unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {p}{unit}"
    return f"{v:.3g} {unit}".strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows in the table (256 of them are val)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--hidden", default="256", help="hidden sizes of student and teacher MLPs, comma-separated")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "tf32", "bf16", "fp16"],
        help="tf32: float32 with TF32 matmuls for the whole process; tf32, fp16: CUDA only",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of each method (interleaved); the best counts")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of {', '.join(METHODS)} (default: the first three on the CPU, all on CUDA)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="steps per method under torch.profiler for the busy fraction (default 50 on CUDA, 0 = off on the CPU)",
    )
    p.add_argument("--efficiency", action="store_true", help="print the efficiency table on the CPU too")
    p.add_argument("--json", metavar="FILE", help="also write every setting and result as JSON")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS until other processes use < --max-others cores (shared machines)",
    )
    p.add_argument("--max-others", type=float, default=0.25, help="cores other processes may use (--wait-quiet)")
    args = p.parse_args(argv)
    if args.rows <= VAL_ROWS:
        p.error(f"--rows must exceed the {VAL_ROWS} val rows")
    try:
        args.hidden_sizes = [int(h) for h in args.hidden.split(",") if h.strip()]
    except ValueError:
        p.error(f"--hidden: comma-separated integers, not {args.hidden!r}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    if args.precision in ("fp16", "tf32") and device.type != "cuda":
        p.error(f"--precision {args.precision} needs --device cuda")
    if args.precision == "tf32":
        torch.set_float32_matmul_precision("high")  # every method; cmkdtool's own tf32 context agrees
    if args.methods is None:
        methods = list(METHODS) if device.type == "cuda" else ["cmkdtool", "hand-written", "bare"]
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s): {', '.join(sorted(unknown))}")
    if "bare-cudagraphs" in methods and device.type != "cuda":
        p.error("bare-cudagraphs (CUDA graphs) needs --device cuda")
    profile_steps = args.profile_steps if args.profile_steps is not None else (50 if device.type == "cuda" else 0)

    x_np, y_np = make_data(args.rows, args.dim, args.classes, args.seed)
    split = np.array(["train"] * (args.rows - VAL_ROWS) + ["val"] * VAL_ROWS)
    ids = [f"r{i}" for i in range(args.rows)]
    table = FeatureTable(build_table(ids, {"x": x_np}, label=y_np, split=split), sources=["<benchmark>"])
    data = load_tensor_data(table, ["x"], device, num_classes=args.classes)
    n_train = data.count("train")
    steps_per_run = args.epochs * math.ceil(n_train / args.batch_size)

    seed_everything(args.seed + 1)
    spec = ModelOptions(hidden=args.hidden_sizes).spec(data, role="teacher")
    teacher = build_model(spec).to(device).eval().requires_grad_(False)
    # the student cmkdtool builds (same seed, same train-split standardisation), reused by the other loops
    seed_everything(args.seed)
    student0 = build_student(data, ["x"], ModelOptions(hidden=args.hidden_sizes), None)
    train_idx = data.index("train")
    x_dev, y_dev = data.inputs["x"][train_idx].contiguous(), data.target[train_idx].contiguous()
    x_cpu, y_cpu = x_dev.cpu(), y_dev.cpu()
    matmul_before = torch.get_float32_matmul_precision()

    # one-time imports are not throughput: the engine's (method registry, tqdm, training state) and torch's first
    # optimizer (it imports torch._dynamo, about 2 s, whichever loop comes first)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    registry.methods()
    importlib.import_module("tqdm.auto")
    importlib.import_module("cmkdtool.engine.state")
    results: dict[str, dict] = {m: {} for m in methods}
    epoch_times: list[float] = []
    runners = {
        "cmkdtool": lambda hook=None: run_cmkdtool(data, teacher, args, epoch_times if hook is None else [], hook),
        "hand-written": lambda hook=None: run_hand_written(student0, teacher, x_cpu, y_cpu, args, device, hook),
        "bare": lambda hook=None: run_bare(student0, teacher, x_dev, y_dev, args, device, hook),
    }
    for m in methods:
        if m in COMPILE_MODES:  # compile once, before the timed runs; a failure is reported in its row
            try:
                runner = CompiledBare(student0, teacher, x_dev, y_dev, args, device, COMPILE_MODES[m])
                runners[m] = runner
                results[m]["compile_s"] = runner.compile_s
                print(f"{m}: compiled in {runner.compile_s:.1f} s", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001 - torch.compile failures vary; the other methods still run
                results[m]["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}"
                print(f"{m}: compile failed: {results[m]['error']}", file=sys.stderr, flush=True)
    ok = [m for m in methods if "error" not in results[m]]
    times: dict[str, list[float]] = {m: [] for m in ok}
    others: dict[str, list[float]] = {m: [] for m in ok}
    cpu_s: dict[str, list[float]] = {m: [] for m in ok}
    for r in range(args.repeats):
        for m in list(ok):
            if args.wait_quiet > 0:
                wait_quiet(args.max_others, args.wait_quiet)
            before, cpu0 = cpu_seconds(), time.process_time()
            try:
                t = runners[m]()
            except Exception as e:  # noqa: BLE001 - a failing method keeps its error; the others go on
                results[m]["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}"
                print(f"{m}: failed: {results[m]['error']}", file=sys.stderr, flush=True)
                ok.remove(m)
                continue
            cpu_s[m].append(time.process_time() - cpu0)
            busy = others_cores(before, cpu_seconds(), t)
            times[m].append(t)
            others[m].append(busy)
            print(
                f"repeat {r + 1}/{args.repeats} {m:>12}: {t:7.2f} s  {args.epochs * n_train / t:9.0f} samples/s  "
                f"(other processes: {busy:.2f} cores)",
                file=sys.stderr,
                flush=True,
            )

    # efficiency: FLOPs per step (one counted step), a profiled pass per method
    try:
        flops = flops_per_step(student0, x_dev, teacher_logits(teacher, x_dev), y_dev, args, device)
    except Exception as e:  # noqa: BLE001
        flops = None
        print(f"FlopCounterMode failed: {type(e).__name__}: {e}", file=sys.stderr)
    flops_per_sample = flops / min(args.batch_size, n_train) if flops else None
    warmup = min(5, steps_per_run // 2)
    if profile_steps > 0:
        for m in ok:
            try:
                prof = profile_method(runners[m], device, min(profile_steps, steps_per_run - warmup), warmup)
            except Exception as e:  # noqa: BLE001 - the profiler is informative; its failure is reported
                prof = {"error": f"{type(e).__name__}: {e}"}
            results[m]["profile"] = prof
    info = device_info(device)
    fp32_matmul = torch.get_float32_matmul_precision()
    peak = peak_for(info.get("device_name", ""), args.precision, fp32_matmul) if device.type == "cuda" else None

    rate = {m: args.epochs * n_train / min(ts) for m, ts in times.items() if ts}
    for m in rate:
        best = int(np.argmin(times[m]))
        res = results[m]
        res.update(
            samples_per_s=rate[m],
            seconds=times[m],
            best_s=times[m][best],
            others_cores=others[m][best],
            cpu_us_per_step=cpu_s[m][best] / steps_per_run * 1e6,
        )
        if flops_per_sample:
            res["achieved_tflops"] = rate[m] * flops_per_sample / 1e12
            res["mfu"] = res["achieved_tflops"] / peak["tflops"] if peak else None
        if m == "cmkdtool" and epoch_times:
            res["epochs_s"] = epoch_times[best]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    hidden = "-".join(map(str, args.hidden_sizes))
    print(
        f"\n{args.rows} rows ({n_train} train) x {args.dim} features, {args.classes} classes; student and teacher "
        f"{args.dim}-{hidden}-{args.classes} MLPs; batch {args.batch_size}; {args.epochs} epochs; device {device}; "
        f"best of {args.repeats}" + (f"; precision {args.precision}" if args.precision != "fp32" else "")
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, {date.today().isoformat()}, load average (1 min) {load:.2f}\n"
    )
    if device.type == "cuda":
        print(
            f"GPU {info.get('device_name')} (sm {info.get('capability')}, {info.get('memory_gib')} GiB), driver "
            f"{info.get('driver')} (CUDA {info.get('driver_cuda', '?')}), torch CUDA {info.get('cuda')}, clocks SM "
            f"{info.get('clock_sm', '?')} of {info.get('clock_sm_max', '?')}, memory {info.get('clock_mem', '?')}; "
            f"float32 matmul precision {fp32_matmul}\n"
        )
    print("| method | samples/s | ratio vs hand-written | ratio vs bare loop | other processes (cores) |")
    print("|---|---:|---:|---:|---:|")
    for m in methods:
        if m not in rate:
            print(f"| {m} | failed: {results[m].get('error', '?')} | - | - | - |")
            continue
        vs_hand = f"{rate[m] / rate['hand-written']:.2f}x" if "hand-written" in rate else "-"
        vs_bare = f"{rate[m] / rate['bare']:.2f}x" if "bare" in rate else "-"
        print(f"| {m} | {rate[m]:,.0f} | {vs_hand} | {vs_bare} | {results[m]['others_cores']:.2f} |")
    if "cmkdtool" in rate and epoch_times:
        best = int(np.argmin(times["cmkdtool"]))
        loop = epoch_times[best]
        print(
            f"\ncmkdtool's best run: {times['cmkdtool'][best]:.2f} s, of which {loop:.2f} s in the epochs "
            f"({args.epochs * n_train / loop:,.0f} samples/s) and {times['cmkdtool'][best] - loop:.2f} s before them "
            "(student construction with its input statistics, teacher-output cache)"
        )
    targets = {}
    if {"cmkdtool", "hand-written", "bare"} <= set(rate):
        targets = {
            "cmkdtool >= 2x hand-written": rate["cmkdtool"] >= 2.0 * rate["hand-written"],
            "cmkdtool >= 0.9x bare loop": rate["cmkdtool"] >= 0.9 * rate["bare"],
        }
        print(
            f"\ntargets: cmkdtool >= 2x hand-written: {'met' if targets['cmkdtool >= 2x hand-written'] else 'MISSED'}; "
            f">= 0.9x bare loop: {'met' if targets['cmkdtool >= 0.9x bare loop'] else 'MISSED'}"
        )
    if device.type == "cuda" or args.efficiency:
        peak_txt = f"{peak['device']} dense {peak['kind']} {peak['tflops']:g} TFLOPS" if peak else "n/a (unknown)"
        print(
            f"\nefficiency: {fmt_si(flops, 'FLOP')} per step of {min(args.batch_size, n_train)} (student forward and "
            f"backward, FlopCounterMode); peak for MFU: {peak_txt}"
        )
        print(
            "\n| method | samples/s | TFLOPS | MFU | GPU busy | kernels/step | GPU kernel µs/step | wall µs/step "
            "(profiled) | CPU µs/step | compile s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in methods:
            res = results[m]
            if m not in rate:
                continue
            prof = res.get("profile", {})

            def num(v, f):
                return "n/a" if v is None else f.format(v)

            busy = prof.get("gpu_busy") if device.type == "cuda" else None
            print(
                f"| {m} | {rate[m]:,.0f} | {num(res.get('achieved_tflops'), '{:.4f}')} | "
                f"{num(res.get('mfu'), '{:.3%}')} | {num(busy, '{:.1%}')} | "
                f"{num(prof.get('kernels_per_step') if device.type == 'cuda' else None, '{:.1f}')} | "
                f"{num(prof.get('kernel_us_per_step') if device.type == 'cuda' else None, '{:.1f}')} | "
                f"{num(prof.get('wall_us_per_step'), '{:.1f}')} | {res['cpu_us_per_step']:.1f} | "
                f"{num(res.get('compile_s'), '{:.1f}')} |"
            )
            if "error" in prof:
                print(f"  ({m}: profiler: {prof['error']})")
    if args.json:
        record = {
            "settings": {
                "rows": args.rows,
                "train_rows": n_train,
                "dim": args.dim,
                "classes": args.classes,
                "hidden": args.hidden_sizes,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "precision": args.precision,
                "repeats": args.repeats,
                "seed": args.seed,
                "methods": methods,
                "profile_steps": profile_steps,
                "steps_per_run": steps_per_run,
            },
            "env": {**info, "load_average_1min": load, "float32_matmul_precision": fp32_matmul},
            "float32_matmul_precision_changed": matmul_before != fp32_matmul,
            "flops_per_step": flops,
            "flops_per_sample": flops_per_sample,
            "peak": peak,
            "methods": results,
            "targets": targets,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, default=float)
            f.write("\n")
    return 0 if all("error" not in results[m] for m in methods) else 1


if __name__ == "__main__":
    sys.exit(main())
