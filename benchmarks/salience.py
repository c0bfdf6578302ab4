"""Speed of ``rank-salience`` (MFH Algorithm 1, steps 2-8) against the plain per-channel loop, in one run.

Both rank the d input channels of the same network (a d-128-2 MLP, ReLU, randomly initialised: the timing does
not depend on training) against the same target outputs, with the same M permutations per channel:

  plain loop   what a user writes from Algorithm 1: for m in range(M): for i in range(d): permute column i of a
               copy of X with ``torch.randperm(n, generator=g)``, run the whole network, take the MSE to the
               target. One full forward per (channel, repeat).
  cmkdtool     ``cmkdtool.analysis.salience.rank_network``: the first layer's output is computed once and each
               permutation adds its rank-one change; blocks of (channel, repeat) pairs run the rest together.

Both draw the permutations from one generator seeded alike, in the same order, so the salience must agree to
float tolerance; the script checks it and prints the largest difference. The plain loop is timed on the first
``--plain-repeats`` repeats (each repeat costs the same) and scaled to M; pass ``--plain-repeats M`` for the full
loop. Times are the best of ``--runs``.

    python benchmarks/salience.py                 # d = 512, n = 10000, M = 10 (the issue's setting)
    python benchmarks/salience.py --rows 2000     # a quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date

import numpy as np
import torch
from torch import nn


def plain_loop(model: nn.Module, x: torch.Tensor, target: torch.Tensor, repeats: int, seed: int) -> np.ndarray:
    """Algorithm 1 steps 2-8 as written: one full forward per channel per repeat."""
    n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    scores = np.zeros((repeats, d))
    with torch.no_grad():
        for m in range(repeats):
            for i in range(d):
                perm = torch.randperm(n, generator=g)
                xp = x.clone()
                xp[:, i] = x[perm, i]
                scores[m, i] = nn.functional.mse_loss(model({"x": xp}), target).item()
    return scores.mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=512, help="channels d (default 512)")
    ap.add_argument("--rows", type=int, default=10000, help="rows n (default 10000)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden width (default 128)")
    ap.add_argument("--repeats", type=int, default=10, help="M permutations per channel (default 10)")
    ap.add_argument("--plain-repeats", type=int, default=2, help="repeats of the plain loop actually timed")
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each; the best counts (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from cmkdtool.analysis.salience import rank_network
    from cmkdtool.nn.models import build_model

    torch.manual_seed(args.seed)
    d, n = args.dim, args.rows
    spec = {
        "arch": "mlp",
        "inputs": [{"name": "x", "shape": [d]}],
        "hidden": [args.hidden],
        "num_classes": 2,
        "task": "multiclass",
        "role": "teacher",
    }
    net = build_model(spec).eval()
    other = build_model(spec).eval()  # stands in for f2(X^b): only its outputs matter
    x = torch.randn(n, d)
    with torch.no_grad():
        target = other({"x": x})

    class Data:  # what rank_network reads of a TensorData
        inputs = {"x": x}
        device = x.device

    rows = torch.arange(n)
    fast_times, plain_times = [], []
    plain_m = min(args.plain_repeats, args.repeats)
    for _ in range(args.runs):
        t0 = time.perf_counter()
        res = rank_network(net, other, Data(), rows, repeats=args.repeats, seed=args.seed)
        fast_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = plain_loop(net, x, target, plain_m, args.seed)
        plain_times.append((time.perf_counter() - t0) * args.repeats / plain_m)
    # the same permutations: cmkdtool's first plain_m repeats must equal the plain loop's
    part = rank_network(net, other, Data(), rows, repeats=plain_m, seed=args.seed).raw
    diff = float(np.abs(part - ref).max())
    rel = diff / float(np.abs(ref).max())
    fast, plain = min(fast_times), min(plain_times)

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, {date.today()}, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"d = {d}, n = {n}, M = {args.repeats}, MLP {d}-{args.hidden}-2; plain loop timed on {plain_m} of "
          f"{args.repeats} repeats and scaled")  # fmt: skip
    print()
    print("| method | time (s) | permutations / s | speed-up |")
    print("|---|---:|---:|---:|")
    perms = d * args.repeats
    print(f"| plain per-channel loop | {plain:.2f} | {perms / plain:,.0f} | 1.00x |")
    print(f"| cmkdtool rank-salience | {fast:.2f} | {perms / fast:,.0f} | {plain / fast:.1f}x |")
    print()
    print(f"same salience: max |difference| {diff:.2e} (relative {rel:.1e}) over {plain_m} repeats x {d} channels; "
          f"top-10 channels equal: {bool(np.array_equal(np.argsort(-part)[:10], np.argsort(-ref)[:10]))}")  # fmt: skip
    if rel > 1e-4:
        print("MISMATCH: the two salience vectors differ beyond float tolerance", file=sys.stderr)
        sys.exit(1)
    del res


if __name__ == "__main__":
    main()
