"""Training throughput of ``cmkdtool distill kd`` against the loops a user would write, in one run.

Three ways to train the same student (a 512-256-10 MLP) with the same KD loss, optimizer, batch size, epochs and
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

Loss (cmkdtool's hinton weighting defaults): 0.9 * T^2 * KL(softmax(t/T) || softmax(s/T)) (batchmean, T = 4)
+ 0.1 * CE(s, y). AdamW, lr 1e-3, no weight decay. Throughput is epochs * train rows / seconds, timed from the
loaded data to the trained student (student construction and the teacher pass included in every method; building
the table is not timed). Each method runs ``--repeats`` times, interleaved; the best time counts. The last column
is the average number of cores other processes kept busy during that best run (from /proc/stat): torch's CPU
threads slow down by an order of magnitude when another process competes for the cores, so on a shared machine
use ``--wait-quiet`` and trust only rows where it is near 0.

    python benchmarks/throughput.py                      # 100k x 512, batch 256, 3 epochs, CPU
    python benchmarks/throughput.py --rows 20000         # a quick run
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import platform
import sys
import time
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F
from machine_load import cpu_seconds, others_cores, wait_quiet  # benchmarks/machine_load.py
from torch.utils.data import DataLoader, TensorDataset

from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.trainer import seed_everything
from cmkdtool.io.tables import FeatureTable, build_table
from cmkdtool.methods import registry
from cmkdtool.methods.kd import KDParams
from cmkdtool.nn.models import build_model
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.pipelines.train import build_student, distill

TEMPERATURE, CE_WEIGHT, KD_WEIGHT, LR = 4.0, 0.1, 0.9, 1e-3
VAL_ROWS = 256


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


def run_cmkdtool(data, teacher, args, epoch_times: list[float]) -> float:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=LR, select="last", seed=args.seed)
    sync(data.device)
    t0 = time.perf_counter()
    _, result = distill(
        registry.get("kd"),
        KDParams(),
        data,
        teacher,
        ["x"],
        model=ModelOptions(hidden=[256]),
        config=cfg,
        quiet=True,
        state_file=None,
    )
    sync(data.device)
    epoch_times.append(sum(result.epoch_seconds))  # the epochs alone, as fit times them
    return time.perf_counter() - t0


def run_hand_written(student0, teacher, x, y, args, device) -> float:
    """The loop from the tutorials: a DataLoader over CPU tensors, the teacher run every step, loss.item()."""
    torch.manual_seed(args.seed)
    sync(device)
    t0 = time.perf_counter()
    student = copy.deepcopy(student0).to(device).train()
    teacher.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    log = []
    for _ in range(args.epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            with torch.no_grad():
                t = teacher({"x": xb})
            loss = kd_loss(student({"x": xb}), t, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.append(loss.item())
    sync(device)
    return time.perf_counter() - t0


def run_bare(student0, teacher, x, y, args, device) -> float:
    """Tensors already on the device, randperm slices, teacher logits computed once, no logging."""
    gen = torch.Generator().manual_seed(args.seed)
    sync(device)
    t0 = time.perf_counter()
    student = copy.deepcopy(student0).to(device).train()
    with torch.no_grad():
        tl = torch.cat([teacher({"x": x[i : i + 8192]}) for i in range(0, len(x), 8192)])
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    n, bs = len(x), args.batch_size
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            loss = kd_loss(student({"x": x[idx]}), tl[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows in the table (256 of them are val)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="runs of each method (interleaved); the best counts")
    p.add_argument("--methods", default="cmkdtool,hand-written,bare", help="comma-separated subset to run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
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
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"cmkdtool", "hand-written", "bare"}
    if unknown:
        p.error(f"unknown method(s): {', '.join(sorted(unknown))}")

    x_np, y_np = make_data(args.rows, args.dim, args.classes, args.seed)
    split = np.array(["train"] * (args.rows - VAL_ROWS) + ["val"] * VAL_ROWS)
    ids = [f"r{i}" for i in range(args.rows)]
    table = FeatureTable(build_table(ids, {"x": x_np}, label=y_np, split=split), sources=["<benchmark>"])
    data = load_tensor_data(table, ["x"], device, num_classes=args.classes)
    n_train = data.count("train")

    seed_everything(args.seed + 1)
    spec = ModelOptions(hidden=[256]).spec(data, role="teacher")
    teacher = build_model(spec).to(device).eval().requires_grad_(False)
    # the student cmkdtool builds (same seed, same train-split standardisation), reused by the other two loops
    seed_everything(args.seed)
    student0 = build_student(data, ["x"], ModelOptions(hidden=[256]), None)
    train_idx = data.index("train")
    x_dev, y_dev = data.inputs["x"][train_idx].contiguous(), data.target[train_idx].contiguous()
    x_cpu, y_cpu = x_dev.cpu(), y_dev.cpu()

    # one-time imports are not throughput: the engine's (method registry, tqdm, training state) and torch's first
    # optimizer (it imports torch._dynamo, about 2 s, whichever loop comes first)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    registry.methods()
    importlib.import_module("tqdm.auto")
    importlib.import_module("cmkdtool.engine.state")
    epoch_times: list[float] = []
    runners = {
        "cmkdtool": lambda: run_cmkdtool(data, teacher, args, epoch_times),
        "hand-written": lambda: run_hand_written(student0, teacher, x_cpu, y_cpu, args, device),
        "bare": lambda: run_bare(student0, teacher, x_dev, y_dev, args, device),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    others: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.repeats):
        for m in methods:
            if args.wait_quiet > 0:
                wait_quiet(args.max_others, args.wait_quiet)
            before = cpu_seconds()
            t = runners[m]()
            busy = others_cores(before, cpu_seconds(), t)
            times[m].append(t)
            others[m].append(busy)
            print(
                f"repeat {r + 1}/{args.repeats} {m:>12}: {t:7.2f} s  {args.epochs * n_train / t:9.0f} samples/s  "
                f"(other processes: {busy:.2f} cores)",
                file=sys.stderr,
                flush=True,
            )

    rate = {m: args.epochs * n_train / min(ts) for m, ts in times.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.rows} rows ({n_train} train) x {args.dim} features, {args.classes} classes; student and teacher "
        f"{args.dim}-256-{args.classes} MLPs; batch {args.batch_size}; {args.epochs} epochs; device {device}; "
        f"best of {args.repeats}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, {date.today().isoformat()}, load average (1 min) {load:.2f}\n"
    )
    print("| method | samples/s | ratio vs hand-written | ratio vs bare loop | other processes (cores) |")
    print("|---|---:|---:|---:|---:|")
    for m in methods:
        vs_hand = f"{rate[m] / rate['hand-written']:.2f}x" if "hand-written" in rate else "-"
        vs_bare = f"{rate[m] / rate['bare']:.2f}x" if "bare" in rate else "-"
        busy = others[m][int(np.argmin(times[m]))]
        print(f"| {m} | {rate[m]:,.0f} | {vs_hand} | {vs_bare} | {busy:.2f} |")
    if "cmkdtool" in rate:
        best = int(np.argmin(times["cmkdtool"]))
        loop = epoch_times[best]
        print(
            f"\ncmkdtool's best run: {times['cmkdtool'][best]:.2f} s, of which {loop:.2f} s in the epochs "
            f"({args.epochs * n_train / loop:,.0f} samples/s) and {times['cmkdtool'][best] - loop:.2f} s before them "
            "(student construction with its input statistics, teacher-output cache)"
        )
    if {"cmkdtool", "hand-written", "bare"} <= set(rate):
        ok_hand = rate["cmkdtool"] >= 2.0 * rate["hand-written"]
        ok_bare = rate["cmkdtool"] >= 0.9 * rate["bare"]
        print(
            f"\ntargets: cmkdtool >= 2x hand-written: {'met' if ok_hand else 'MISSED'}; "
            f">= 0.9x bare loop: {'met' if ok_bare else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
