"""Training throughput of ``cmkdtool distill crd`` (per-sample and shared negatives) against ``distill kd``, in one run.

Three methods train the same student (a 512-256-10 MLP, same initial weights) with the same optimizer (AdamW, lr
1e-3, no weight decay), batch size, epochs and train rows, taught by the same frozen teacher (a 512-256-10 MLP,
randomly initialised: its outputs only need to exist for a throughput measurement), each through
``cmkdtool.pipelines.train.distill`` on a TensorData loaded from an in-memory feature table (the library path of
``cmkdtool distill``; a 256-row val split, so evaluation is negligible; no training-state file):

  kd          ``distill kd`` with its defaults: 0.9 * T^2 * KL + 0.1 * CE (T = 4), teacher logits cached.
  crd-shared  ``distill crd --negatives shared --nce-k K``: one draw of K train rows per batch, scored against
              every anchor with one (B, d) x (d, K) matrix product per memory bank.
  crd-sample  ``distill crd --negatives sample --nce-k K``: RepDistiller's estimator, K negatives of other classes
              per sample, B x (1 + K) scores per bank: ``losses.crd_scores`` gathers the B x (1 + K) bank rows and
              takes batched dot products (the reference), or, when the bank has at most (1 + K) d rows (here:
              100k <= 4097 x 128), scores the whole bank with one (B, d) x (d, N) product and picks the entries.

Both CRD rows use CRD's paper setting in RepDistiller's frame: CE + 0.8 * CRD (``-r 1 -a 0 -b 0.8``: no KD term),
projection heads and memory banks of width 128 (``--feat_dim``), T = 0.07, momentum 0.5, exact positives, the
student's and the teacher's ``embedding`` layer (the 256-wide hidden layer); K = 4096 (``--nce-k``) by default.
The batch size is 256 for every row (``distill crd`` itself defaults to RepDistiller's 64).

Throughput is epochs * train rows / seconds, timed from the loaded data to the trained student (student
construction, the teacher's cached outputs, and CRD's memory banks and sampler included; building the table and
one-time imports are not); the rate of the epochs alone follows in its own column, then the CPU time of this
process per 1000 samples (all its threads; at ``--threads 1`` the work itself, which other processes' load
disturbs far less than wall time). Each method runs ``--repeats`` times, interleaved; the best time counts
(``--sample-repeats N`` runs the slow ``crd-sample`` row only in the last N repeats; ``--sample-steps N`` trains it
for the first N steps of each epoch only, through ``fit`` with a batch source that stops early, and counts the
samples those steps saw). The last column is the average number of cores other processes kept busy during that
best run (from /proc/stat, as in ``throughput.py``): trust only rows where it is near 0, and use ``--wait-quiet`` on
a shared machine.

``--profile`` times the pieces of one CRD step instead (student forward/backward, embedding heads, index draw,
bank gathers, score products, exp/Z/NCE, memory update, optimizer), per negative mode, with the backward pass
split into stages (see ``crd_step``), next to the engine's own step (``Trainer.train_step``) on the same method.

    python benchmarks/contrastive.py                        # 100k x 512, batch 256, K 4096, 1 epoch, CPU
    python benchmarks/contrastive.py --rows 20000 --repeats 1   # a quick run
    python benchmarks/contrastive.py --profile              # where one CRD step's time goes
    python benchmarks/contrastive.py --threads 1 --sample-repeats 1 --wait-quiet 60   # on a shared machine
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import platform
import sys
import time
from datetime import date

import numpy as np
import torch
from machine_load import cpu_seconds, others_cores, wait_quiet  # benchmarks/machine_load.py
from throughput import VAL_ROWS, make_data, sync  # benchmarks/throughput.py

from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.batches import IndexBatches
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.method import Batch
from cmkdtool.engine.trainer import Trainer, fit, seed_everything
from cmkdtool.io.tables import FeatureTable, build_table
from cmkdtool.losses.contrastive import crd_nce, crd_scores, crd_scores_shared
from cmkdtool.losses.task import task_loss
from cmkdtool.methods import registry
from cmkdtool.methods.base import DistillContext
from cmkdtool.methods.crd import CRDParams
from cmkdtool.methods.kd import KDParams
from cmkdtool.nn.inference import LazyRows
from cmkdtool.nn.models import build_model
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.pipelines.train import build_student, distill

LR = 1e-3
METHODS = ("kd", "crd-shared", "crd-sample")


def crd_params(args, negatives: str) -> CRDParams:
    """CRD's paper setting in RepDistiller's frame (CE + 0.8 * CRD, no KD, feat_dim 128, T 0.07)."""
    return CRDParams(
        nce_k=args.nce_k,
        negatives=negatives,
        feat_dim=128,
        nce_t=0.07,
        crd_weight=0.8,
        task_weight=1.0,
        kd_weight=0.0,
    )


def method_of(name: str, args):
    """(registered method, params) of a row."""
    if name == "kd":
        return registry.get("kd"), KDParams()
    return registry.get("crd"), crd_params(args, name.split("-", 1)[1])


def config(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=LR, select="last", seed=args.seed)


class FirstSteps:
    """The first ``steps`` batches of every epoch of ``source`` (a ``BatchSource`` for ``fit``): ``--sample-steps``."""

    def __init__(self, source: IndexBatches, steps: int):
        self.source = source
        self.steps_per_epoch = min(steps, source.steps_per_epoch)
        self.rows = self.steps_per_epoch * source.batch_size

    def epoch(self, generator: torch.Generator):
        return itertools.islice(self.source.epoch(generator), self.steps_per_epoch)


def run_distill(name: str, data, teacher, args, steps: int = 0) -> tuple[float, float, int]:
    """(seconds, seconds in the epochs, samples trained) of one run of ``name``.

    ``steps`` 0: ``pipelines.train.distill``, every epoch over all train rows. Otherwise the same pieces in the same
    order (seed, ``build_student``, the method from its context, ``fit``), with ``fit`` handed a batch source that
    stops each epoch after ``steps`` batches (``distill`` has no such option).
    """
    info, params = method_of(name, args)
    cfg = config(args)
    sync(data.device)
    t0 = time.perf_counter()
    if not steps:
        _, result = distill(
            info,
            params,
            data,
            teacher,
            ["x"],
            model=ModelOptions(hidden=[256]),
            config=cfg,
            quiet=True,
            state_file=None,
        )
        samples = args.epochs * data.count("train")
    else:
        seed_everything(cfg.seed)
        student = build_student(data, ["x"], ModelOptions(hidden=[256]), None)
        method = info.cls.from_context(student, params, DistillContext({"teacher": teacher}, data.task))
        batches = FirstSteps(IndexBatches(data, data.index("train"), cfg.batch_size), steps)
        result = fit(method, data, cfg, quiet=True, desc=f"distill {info.name}", batches=batches)
        samples = args.epochs * batches.rows
    sync(data.device)
    return time.perf_counter() - t0, sum(result.epoch_seconds), samples  # the epochs alone, as fit times them


# ---- --profile: where one CRD step's time goes ---------------------------------------------------------------

PIECES = (
    ("batch", "batch rows and the teacher's cached outputs (index gathers)"),
    ("student_fwd", "student forward (forward_layers: logits and embedding)"),
    ("heads_fwd", "embedding heads forward (2 x Linear 256->128 + L2 norm)"),
    ("draw", "index draw (positives, negatives on the device)"),
    ("gather", "bank gathers: rows of the positives and negatives (dense path: the scores out of the product)"),
    ("matmul", "score products: (B,d)x(d,K) (shared); bmm over the rows, or (B,d)x(d,N) on the dense path"),
    ("nce", "exp(./T), Z, NCE of both anchors, CE, weighted sum"),
    ("score_bwd", "backward of the scores (NCE, exp, product) to the embeddings"),
    ("heads_bwd", "backward of the embedding heads"),
    ("student_bwd", "student backward (CE + the gradient from the student head)"),
    ("update", "memory update (momentum, normalise, index_copy_, both banks)"),
    ("optim", "zero_grad, AdamW step, schedule step"),
)


class Timer:
    """Wall and CPU time (this process, all threads) per named piece of each step, syncing the device at each mark;
    a piece marked twice in a step (once per bank) counts the sum."""

    def __init__(self, device: torch.device):
        self.device, self.steps, self.t, self.c = device, [], 0.0, 0.0

    def start(self) -> None:
        self.steps.append({})
        sync(self.device)
        self.t, self.c = time.perf_counter(), time.process_time()

    def mark(self, name: str) -> None:
        sync(self.device)
        now, cpu = time.perf_counter(), time.process_time()
        wall0, cpu0 = self.steps[-1].get(name, (0.0, 0.0))
        self.steps[-1][name] = (wall0 + now - self.t, cpu0 + cpu - self.c)
        self.t, self.c = now, cpu

    def medians(self) -> dict[str, float]:
        """Median ms per piece over the steps: ``name`` (wall) and ``cpu_name``."""
        out = {}
        for name in self.steps[0] if self.steps else ():
            out[name] = 1e3 * float(np.median([st[name][0] for st in self.steps]))
            out[f"cpu_{name}"] = 1e3 * float(np.median([st[name][1] for st in self.steps]))
        return out


def dense_path(memory: torch.Tensor, contrast_idx: torch.Tensor) -> bool:
    """Whether ``crd_scores`` scores the whole bank with one product (its rule: N <= (1 + K) d) instead of
    gathering the B x (1 + K) rows."""
    return memory.shape[0] <= contrast_idx.shape[1] * memory.shape[1]


def sample_scores(a: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, mark) -> torch.Tensor:
    """``crd_scores`` before ``.div_(T).exp_()``, with ``mark`` between the gather and the product."""
    if dense_path(memory, idx):
        prod = a @ memory.T  # (B, N)
        mark("matmul")
        out = prod.gather(1, idx)
        mark("gather")
        return out
    rows = memory[idx]  # (B, 1 + K, d)
    mark("gather")
    out = torch.bmm(rows, a.unsqueeze(2)).squeeze(2)
    mark("matmul")
    return out


def shared_scores(a: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, mark) -> torch.Tensor:
    """``crd_scores_shared`` before ``.div_(T).exp_()``, with ``mark`` between the gathers and the products."""
    rows_p, rows_n = memory[pos], memory[neg]
    mark("gather")
    out = torch.cat([(rows_p * a).sum(1, keepdim=True), a @ rows_n.T], dim=1)
    mark("matmul")
    return out


def crd_step(method, opt, sched, batch: Batch, timer: Timer | None) -> torch.Tensor:
    """One training step of ``method`` (a CRD instance), as the engine runs it, cut into timed pieces.

    The arithmetic is the method's: ``sampler`` draws, ``crd_nce``, ``memory.normalise``/``update`` (after the
    backward pass, as ``after_step`` does it); the scores are ``crd_scores``/``crd_scores_shared`` written out
    (``sample_scores``, ``shared_scores``; ``check_scores`` compares them) so that the gathers and the products can
    be timed apart. The backward pass runs in three stages through detached copies of the embeddings and of the
    student's layer (scores -> embeddings, heads -> the student's layer, then the student with the CE), which gives
    every parameter the gradient of the one-pass backward.
    """
    p, mem, sampler = method.params, method.memory, method.sampler
    mark = timer.mark if timer is not None else (lambda name: None)
    if timer is not None:
        timer.start()
    x, y = batch.inputs["x"], batch.target
    t_feat = method.teacher_outputs(batch)[p.teacher_layer]
    mark("batch")
    logits, feats = method.student.forward_layers({"x": x}, [p.student_layer])
    s_feat = feats[p.student_layer]
    mark("student_fwd")
    f = s_feat.detach().requires_grad_()
    v_s, v_t = method.embed_student(f), method.embed_teacher(t_feat)
    a_s, a_t = v_s.detach().requires_grad_(), v_t.detach().requires_grad_()
    mark("heads_fwd")
    pos = sampler.positive(batch.index, relax=p.mode == "relax")
    if p.negatives == "shared":
        neg = sampler.shared(p.nce_k)
        mark("draw")
        dot_s = shared_scores(a_s, mem.memory_teacher, pos, neg, mark)
        dot_t = shared_scores(a_t, mem.memory_student, pos, neg, mark)
    else:
        idx = torch.cat([pos.unsqueeze(1), sampler.negatives(batch.index, p.nce_k)], dim=1)
        mark("draw")
        dot_s = sample_scores(a_s, mem.memory_teacher, idx, mark)
        dot_t = sample_scores(a_t, mem.memory_student, idx, mark)
    out_s, out_t = mem.normalise(dot_s.div_(p.nce_t).exp_(), dot_t.div_(p.nce_t).exp_())
    crd = crd_nce(out_s, mem.n_data) + crd_nce(out_t, mem.n_data)
    ce = task_loss(logits, y, method.task)
    w = method.loss_weights
    loss = w["crd"] * crd + w["ce"] * ce
    mark("nce")
    opt.zero_grad(set_to_none=True)
    (w["crd"] * crd).backward()
    mark("score_bwd")
    torch.autograd.backward([v_s, v_t], [a_s.grad, a_t.grad])
    mark("heads_bwd")
    torch.autograd.backward([w["ce"] * ce, s_feat], [None, f.grad])
    mark("student_bwd")
    mem.update(batch.index, v_s.detach(), v_t.detach())
    mark("update")
    opt.step()
    sched.step()
    mark("optim")
    return loss.detach()


def check_scores(method, batch: Batch) -> float:
    """Largest relative difference between the written-out scores of ``crd_step`` and the library's functions."""
    p, mem, sampler = method.params, method.memory, method.sampler

    def skip(name: str) -> None:
        pass

    with torch.no_grad():
        _, feats = method.student.forward_layers(batch.inputs, [p.student_layer])
        a = method.embed_student(feats[p.student_layer])
        pos = sampler.positive(batch.index)
        if p.negatives == "shared":
            neg = sampler.shared(p.nce_k)
            ref = crd_scores_shared(a, mem.memory_teacher, pos, neg, p.nce_t)
            mine = shared_scores(a, mem.memory_teacher, pos, neg, skip)
        else:
            idx = torch.cat([pos.unsqueeze(1), sampler.negatives(batch.index, p.nce_k)], dim=1)
            ref = crd_scores(a, mem.memory_teacher, idx, p.nce_t)
            mine = sample_scores(a, mem.memory_teacher, idx, skip)
        mine = mine.div_(p.nce_t).exp_()
        return float(((mine - ref).abs() / ref.abs()).max())


def profile_mode(name: str, data, teacher, args) -> dict[str, float]:
    """Median milliseconds (wall and CPU) per piece of a step of ``name`` (a CRD row, or ``kd``: whole steps
    only), over ``--profile-steps`` steps after 3 warm-up steps; ``step`` is the median of the engine's own step
    (``Trainer.train_step``), run alternately with the staged ones on the same method and optimizer."""
    device = data.device
    info, params = method_of(name, args)
    cfg = config(args)
    seed_everything(cfg.seed)
    student = build_student(data, ["x"], ModelOptions(hidden=[256]), None)
    method = info.cls.from_context(student, params, DistillContext({"teacher": teacher}, data.task))
    trainer = Trainer(method, data, cfg, quiet=True)  # sets the method up, builds the optimizer and schedule
    method.train()
    opt, sched = trainer.opt, trainer.schedulers["main"]
    train = data.index("train")
    gen = torch.Generator().manual_seed(args.seed)
    perm = train[torch.randperm(len(train), generator=gen).to(train.device)]
    bs, steps = args.batch_size, args.profile_steps
    n_batches = len(perm) // bs

    def batch(s: int) -> Batch:
        idx = perm[(s % n_batches) * bs : (s % n_batches + 1) * bs]
        return Batch(LazyRows(data.inputs, idx), data.target[idx], idx)

    out: dict[str, float] = {"check": check_scores(method, batch(0))} if name != "kd" else {}
    timer, times, cpus, sums = Timer(device), [], [], {}
    for s in range(3 + steps):  # a staged step, then the engine's step on the next batch: both see the same load
        if name != "kd":
            crd_step(method, opt, sched, batch(2 * s), timer if s >= 3 else None)
        b = batch(2 * s + 1)
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(b, 2 * s + 1, sums)
        sync(device)
        if s >= 3:
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    out.update(timer.medians())
    out["step"], out["cpu_step"] = 1e3 * float(np.median(times)), 1e3 * float(np.median(cpus))
    if name == "crd-sample":
        idx = method.contrast_index(batch(0), params.nce_k)
        out["dense"] = float(dense_path(method.memory.memory_teacher, idx))
    return out


def run_profile(data, teacher, args) -> None:
    rows = [m for m in args.methods if m != "kd"]
    res = {}
    for m in ["kd", *rows]:
        if args.wait_quiet > 0:
            wait_quiet(args.max_others, args.wait_quiet)
        before = cpu_seconds()
        t0 = time.perf_counter()
        res[m] = profile_mode(m, data, teacher, args)
        res[m]["others"] = others_cores(before, cpu_seconds(), time.perf_counter() - t0)
        print(f"profiled {m} (other processes: {res[m]['others']:.2f} cores)", file=sys.stderr, flush=True)
    d, k, b = 128, args.nce_k, args.batch_size
    print(
        f"\none step, batch {b}, K = {k}, feat_dim {d}: median ms over {args.profile_steps} steps after 3 warm-up "
        f"steps; {data.count('train')} train rows; device {data.device}"
    )
    print(header(args))
    print("| piece | " + " | ".join(f"{m} ms | CPU ms | share" for m in rows) + " |")
    print("|---|" + "---:|---:|---:|" * len(rows))
    total = {m: sum(res[m][p] for p, _ in PIECES) for m in rows}
    for key, what in PIECES:
        cells = [f"{res[m][key]:.2f} | {res[m]['cpu_' + key]:.2f} | {100 * res[m][key] / total[m]:.0f}%" for m in rows]
        print(f"| {what} | " + " | ".join(cells) + " |")
    sums = [f"{total[m]:.2f} | {sum(res[m]['cpu_' + p] for p, _ in PIECES):.2f} | 100%" for m in rows]
    print("| **sum of the pieces** | " + " | ".join(sums) + " |")
    steps = [f"{res[m]['step']:.2f} | {res[m]['cpu_step']:.2f} | " for m in rows]
    print("| the engine's step, unstaged | " + " | ".join(steps) + " |")
    print(
        f"\nkd's whole step (the engine's, for reference): {res['kd']['step']:.2f} ms, "
        f"CPU {res['kd']['cpu_step']:.2f} ms"
    )
    print("other processes (cores) during each profile: " + ", ".join(f"{m} {res[m]['others']:.2f}" for m in res))
    print(
        "written-out scores against crd_scores / crd_scores_shared, largest relative difference: "
        + ", ".join(f"{m} {res[m]['check']:.1e}" for m in rows)
    )
    rows_bytes = b * (k + 1) * d * 4 * 2
    print(
        f"sample mode, the reference's way: B x (K+1) x feat_dim x 4 bytes x 2 banks = {b} x {k + 1} x {d} x 4 x 2 = "
        f"{rows_bytes / 2**20:,.0f} MiB of bank rows gathered per step (shared: (B + K) x {d} x 4 x 2 = "
        f"{(b + k) * d * 8 / 2**20:.1f} MiB)"
    )
    if "crd-sample" in res:
        dense = res["crd-sample"]["dense"]
        print(
            f"crd_scores took the {'dense' if dense else 'gather'} path here (dense when N <= (1+K) d: "
            f"{len(data)} <= {(k + 1) * d}); the dense path computes a (B, N) score matrix per bank, "
            f"{b} x {len(data)} x 4 bytes = {b * len(data) * 4 / 2**20:,.0f} MiB, and 2 B N d FLOP per bank "
            f"forward and as much backward: 8 B N d = {8 * b * len(data) * d / 1e9:.1f} GFLOP per step, against "
            f"8 B (K+1) d = {8 * b * (k + 1) * d / 1e9:.2f} GFLOP for the gathered rows or for shared negatives"
        )


def ratio(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x"


def header(args) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, {date.today().isoformat()}, load average (1 min) {load:.2f}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows in the table (256 of them are val)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256, help="for every row (distill crd's own default is 64)")
    p.add_argument("--nce-k", type=int, default=4096, help="CRD negatives K per step (distill crd --nce-k)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="runs of each method (interleaved); the best counts")
    p.add_argument(
        "--sample-repeats",
        type=int,
        default=0,
        help="at most this many runs of crd-sample, in the last repeats (0: --repeats)",
    )
    p.add_argument(
        "--sample-steps",
        type=int,
        default=0,
        help="crd-sample trains only the first N steps of each epoch (0: whole epochs); its rate counts those",
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset to run")
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
    p.add_argument("--profile", action="store_true", help="time the pieces of one CRD step instead")
    p.add_argument("--profile-steps", type=int, default=20, help="timed steps per mode (--profile)")
    args = p.parse_args(argv)
    if args.rows <= VAL_ROWS:
        p.error(f"--rows must exceed the {VAL_ROWS} val rows")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s): {', '.join(sorted(unknown))}")
    args.methods = methods

    x_np, y_np = make_data(args.rows, args.dim, args.classes, args.seed)
    split = np.array(["train"] * (args.rows - VAL_ROWS) + ["val"] * VAL_ROWS)
    ids = [f"r{i}" for i in range(args.rows)]
    table = FeatureTable(build_table(ids, {"x": x_np}, label=y_np, split=split), sources=["<benchmark>"])
    data = load_tensor_data(table, ["x"], device, num_classes=args.classes)
    n_train = data.count("train")

    seed_everything(args.seed + 1)
    spec = ModelOptions(hidden=[256]).spec(data, role="teacher")
    teacher = build_model(spec).to(device).eval().requires_grad_(False)

    # one-time imports are not throughput (the first torch optimizer imports torch._dynamo, about 2 s)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    registry.methods()
    importlib.import_module("tqdm.auto")
    importlib.import_module("cmkdtool.engine.state")
    if args.profile:
        run_profile(data, teacher, args)
        return 0

    runs: dict[str, list[tuple[float, float, int, float, float]]] = {m: [] for m in methods}
    for r in range(args.repeats):
        for m in methods:
            if m == "crd-sample" and 0 < args.sample_repeats < args.repeats - r:
                continue  # capped: its runs come in the last repeats, after the others' first ones
            if args.wait_quiet > 0:
                wait_quiet(args.max_others, args.wait_quiet)
            before = cpu_seconds()
            t, loop, samples = run_distill(m, data, teacher, args, args.sample_steps if m == "crd-sample" else 0)
            after = cpu_seconds()
            busy = others_cores(before, after, t)
            cpu = after[1] - before[1] if before is not None and after is not None else float("nan")
            runs[m].append((t, loop, samples, cpu, busy))
            print(
                f"repeat {r + 1}/{args.repeats} {m:>10}: {t:7.2f} s  {samples / t:9.0f} samples/s  "
                f"(epochs alone {loop:.2f} s, {samples} samples; CPU {cpu:.2f} s; other processes: {busy:.2f} cores)",
                file=sys.stderr,
                flush=True,
            )

    best = {m: min(rs, key=lambda run: run[0] / run[2]) for m, rs in runs.items()}
    rate = {m: b[2] / b[0] for m, b in best.items()}
    loop = {m: b[2] / b[1] for m, b in best.items()}
    cpu = {m: 1e3 * min(run[3] / run[2] for run in rs) for m, rs in runs.items()}  # CPU ms per sample, the least
    counts = ", ".join(f"{m} {len(runs[m])}" for m in methods)
    print(
        f"\n{args.rows} rows ({n_train} train) x {args.dim} features, {args.classes} classes; student and teacher "
        f"{args.dim}-256-{args.classes} MLPs; batch {args.batch_size} for every row; {args.epochs} epoch(s); "
        f"device {device}; best of interleaved runs ({counts})"
    )
    if args.sample_steps and "crd-sample" in methods:
        print(
            f"crd-sample: the first {min(args.sample_steps, n_train // args.batch_size)} steps of each epoch "
            "(--sample-steps; fit with a batch source that stops early), its rate over the samples those steps saw"
        )
    print(
        f"kd: 0.9 * T^2 * KL + 0.1 * CE (T = 4). crd: CE + 0.8 * CRD (no KD), K = {args.nce_k}, feat_dim 128, "
        "T = 0.07, momentum 0.5, exact positives, embedding layers. AdamW lr 1e-3 for all."
    )
    print(header(args))
    print(
        "| method | samples/s | ratio vs kd | epochs alone, samples/s | ratio vs kd (epochs) "
        "| CPU ms per 1k samples | ratio vs kd (CPU) | other processes (cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        vs = ratio(rate[m] / rate["kd"]) if "kd" in rate else "-"
        vs_loop = ratio(loop[m] / loop["kd"]) if "kd" in loop else "-"
        vs_cpu = ratio(cpu["kd"] / cpu[m]) if "kd" in cpu else "-"
        print(
            f"| {m} | {rate[m]:,.0f} | {vs} | {loop[m]:,.0f} | {vs_loop} | {1e3 * cpu[m]:,.1f} | {vs_cpu} "
            f"| {best[m][4]:.2f} |"
        )
    print()
    for m in methods:
        t, ep = best[m][:2]
        print(f"{m}'s best run: {t:.2f} s, of which {ep:.2f} s in the epochs and {t - ep:.2f} s before them")
    print(
        "\nCPU ms per 1k samples: CPU time of this process (all its threads), the least of the runs; load disturbs it "
        "less than wall time (at --threads 1 it is the work itself); ratio vs kd (CPU) = kd's CPU time / the row's"
    )
    if {"kd", "crd-shared"} <= set(rate):
        ok = rate["crd-shared"] >= 0.5 * rate["kd"]
        print(f"\ntarget: crd-shared >= 0.5x kd: {'met' if ok else 'MISSED'} ({rate['crd-shared'] / rate['kd']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
