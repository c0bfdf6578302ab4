"""Reproduce the synthetic results of the MFH paper (Xue et al., ICLR 2023) with the cmkdtool commands.

Every number comes from the same commands a user runs (``synth mfh``, ``pretrain``, ``rank-salience``,
``pretrain --mask``, ``distill kd``, ``eval``), invoked in-process (typer's CliRunner, to skip the interpreter start
per command) by two worker processes with one torch thread each.

Settings follow App. B.2 and the authors' code (github.com/zihuixue/MFH, ``gauss/``): logistic-regression teacher
and student (``--arch linear``), 200 train and 1000 test rows (no val rows: the last epoch is kept), full-batch SGD,
lr 0.1, 1000 epochs; KD is MFH Eq. 1 with rho = 0.5 (``distill kd --weighting mfh``, T = 1); 10 seeds.

* Table 2: 10 teacher-only decisive dims and ``xs2`` shared ones (gamma = xs2 / (10 + xs2)), d1 = d2 = 50, the
  all-ones hyperplane of the authors' ``main_modify_gamma.py``. The modality-general teacher is Algorithm 1:
  ``rank-salience`` (Eq. 28 joint training: SGD lr 0.01, momentum 0.9, 1000 full-batch epochs; M = 100
  permutations on the train rows; min-max normalisation), then ``pretrain --mask --keep general --ratio r`` with
  r = 1 - xs2 / 50 (keeps as many channels as are truly shared). Also reported: the fraction of the truly shared
  channels among the top xs2 salience ranks.
* Fig. 2 ("vary gamma"): d = 20, |J1| = |J2| = 10, overlap 0..10 step 2, d1 = 25, d2 = 50, N(0, I) hyperplane.
* Fig. 3 ("vary alpha"): the student sees 10 decisive dims, all shared; the teacher 10 + xs1, xs1 = 0..40 step 10;
  d1 = d2 = 50, N(0, I) hyperplane.

    python benchmarks/mfh_reproduction.py                    # everything, 10 seeds (about 15 min on 2 cores)
    python benchmarks/mfh_reproduction.py --only table2 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

TRAIN = ["--arch", "linear", "--optimizer", "sgd", "--momentum", "0", "--lr", "0.1", "--batch-size", "full",
         "--epochs", "1000", "--select", "last", "--device", "cpu", "-q"]  # fmt: skip
ALIGN = ["--arch", "linear", "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.01", "--batch-size", "full",
         "--epochs", "1000", "--select", "last", "--device", "cpu", "--repeats", "100", "-q", "--top", "0"]  # fmt: skip
KD = ["--weighting", "mfh", "--rho", "0.5"]
PAPER_TABLE2 = {  # gamma: teacher, MG teacher, no-KD, regular KD, MG KD (the figures)
    0.33: (89.41, 68.42, 61.98, 62.16, 64.50),
    0.50: (89.62, 73.41, 67.64, 67.86, 70.25),
    0.66: (89.82, 77.98, 73.48, 73.60, 75.43),
    0.75: (89.70, 79.41, 76.46, 76.53, 77.70),
}
XS2 = {0.33: 5, 0.50: 10, 0.66: 20, 0.75: 30}


def cli(*args) -> str:
    from typer.testing import CliRunner

    from cmkdtool.cli.app import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exit_code != 0:
        raise RuntimeError(f"cmkdtool {' '.join(map(str, args))}: {res.output.strip()}")
    return res.stdout


def accuracy(ckpt: Path, data: Path) -> float:
    return json.loads(cli("eval", ckpt, data, "--format", "json", "--no-retrieval", "--device", "cpu", "-q"))[
        "accuracy"
    ]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def table2_job(job: tuple[float, int]) -> dict:
    gamma, seed = job
    xs2 = XS2[gamma]
    d = 10 + xs2
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        data = t / "d.parquet"
        cli("synth", "mfh", "--decisive", d, "--gamma", f"{xs2 / d:.6f}", "--hyperplane", "ones", "--val", 0,
            "--seed", seed, "-o", data, "-q")  # fmt: skip
        cli("pretrain", data, "-i", "xa", *TRAIN, "--seed", seed, "-o", t / "teacher.safetensors")
        cli("rank-salience", data, "-a", "xa", "-b", "xb", *ALIGN, "--seed", seed, "-o", t / "sal.parquet")
        sal_meta = json.loads(pq.read_schema(t / "sal.parquet").metadata[b"cmkdtool"])
        ratio = 1 - xs2 / 50
        cli("pretrain", data, "-i", "xa", *TRAIN, "--seed", seed, "--mask", t / "sal.parquet", "--keep", "general",
            "--ratio", ratio, "-o", t / "general.safetensors")  # fmt: skip
        cli("pretrain", data, "-i", "xb", *TRAIN, "--seed", seed, "--role", "student", "-o", t / "nokd.safetensors")
        for name, teacher in (("kd", "teacher"), ("gkd", "general")):
            cli("distill", "kd", data, "-t", t / f"{teacher}.safetensors", "-i", "xb", *KD, *TRAIN, "--seed", seed,
                "-o", t / f"{name}.safetensors")  # fmt: skip
        names = ("teacher", "general", "nokd", "kd", "gkd")
        accs = {n: accuracy(t / f"{n}.safetensors", data) for n in names}
    return {"gamma": gamma, "seed": seed, **accs, "recovered": sal_meta["recovered_shared"]["xa"]}


def kd_job(job: tuple[str, int, int]) -> dict:
    """One point of Fig. 2 (setting 'gamma': overlap K) or Fig. 3 (setting 'alpha': xs1)."""
    setting, value, seed = job
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        data = t / "d.parquet"
        if setting == "gamma":
            synth = ["--decisive", 20, "--n-a", 10, "--n-b", 10, "--overlap", value, "--dim-a", 25, "--dim-b", 50]
        else:
            d = value + 10
            synth = ["--decisive", d, "--gamma", f"{10 / d:.6f}"]
        cli("synth", "mfh", *synth, "--val", 0, "--seed", seed, "-o", data, "-q")
        cli("pretrain", data, "-i", "xa", *TRAIN, "--seed", seed, "-o", t / "teacher.safetensors")
        cli("pretrain", data, "-i", "xb", *TRAIN, "--seed", seed, "--role", "student", "-o", t / "nokd.safetensors")
        cli("distill", "kd", data, "-t", t / "teacher.safetensors", "-i", "xb", *KD, *TRAIN, "--seed", seed,
            "-o", t / "kd.safetensors")  # fmt: skip
        accs = {n: accuracy(t / f"{n}.safetensors", data) for n in ("teacher", "nokd", "kd")}
        meta = json.loads(pq.read_schema(data).metadata[b"cmkdtool"])
    return {"setting": setting, "value": value, "seed": seed, "gamma": meta["synth"]["gamma"],
            "alpha": meta["synth"]["alpha"], **accs}  # fmt: skip


def pct(values) -> str:
    v = np.asarray(values) * 100
    return f"{v.mean():.2f} ± {v.std():.2f}"


def print_table2(rows: list[dict]) -> None:
    print("### Table 2 (synthetic Gaussian): test accuracy (%), mean ± std over seeds; paper in brackets\n")
    print("| gamma | regular teacher | modality-general teacher | no-KD student | regular-KD student | "
          "modality-general-KD student | MG-KD - regular KD | shared channels recovered |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for gamma, paper in PAPER_TABLE2.items():
        rs = [r for r in rows if r["gamma"] == gamma]
        if not rs:
            continue
        cells = [f"{pct([r[k] for r in rs])} ({p:.2f})" for k, p in
                 zip(("teacher", "general", "nokd", "kd", "gkd"), paper, strict=True)]  # fmt: skip
        gain = pct([r["gkd"] - r["kd"] for r in rs])
        rec = f"{np.mean([r['recovered'] for r in rs]) * 100:.0f}%"
        print(f"| {gamma:.2f} (xs2 = {XS2[gamma]}) | " + " | ".join(cells) + f" | {gain} ({paper[4] - paper[3]:+.2f}) "
              f"| {rec} |")  # fmt: skip
    print()


def print_sweep(rows: list[dict], setting: str) -> None:
    key = "gamma" if setting == "gamma" else "alpha"
    title = "Fig. 2 (vary gamma)" if setting == "gamma" else "Fig. 3 (vary alpha)"
    print(f"### {title}: test accuracy (%), mean ± std over seeds\n")
    print(f"| {key} | teacher | no-KD student | KD student | KD gain over no-KD |")
    print("|---|---|---|---|---|")
    for value in sorted({r["value"] for r in rows if r["setting"] == setting}):
        rs = [r for r in rows if r["setting"] == setting and r["value"] == value]
        print(f"| {rs[0][key]:.2f} | {pct([r['teacher'] for r in rs])} | {pct([r['nokd'] for r in rs])} | "
              f"{pct([r['kd'] for r in rs])} | {pct([r['kd'] - r['nokd'] for r in rs])} |")  # fmt: skip
    print()


def plot_sweep(rows: list[dict], setting: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "gamma" if setting == "gamma" else "alpha"
    values = sorted({r["value"] for r in rows if r["setting"] == setting})
    xs, mean, std = [], [], []
    for value in values:
        rs = [r for r in rows if r["setting"] == setting and r["value"] == value]
        gain = np.asarray([r["kd"] - r["nokd"] for r in rs]) * 100
        xs.append(rs[0][key])
        mean.append(gain.mean())
        std.append(gain.std())
    xs, mean, std = map(np.asarray, (xs, mean, std))
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.plot(xs, mean, "o-", color="tab:blue", label="KD student - no-KD student")
    ax.fill_between(xs, mean - std, mean + std, color="tab:blue", alpha=0.2, label="± 1 std over seeds")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel(f"{key} ({'shared' if key == 'gamma' else 'teacher-only'} share of decisive features)")
    ax.set_ylabel("accuracy gain (points)")
    ax.set_title(f"MFH {'Fig. 2: vary gamma' if key == 'gamma' else 'Fig. 3: vary alpha'} (cmkdtool)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds per setting (default 10, as the paper)")
    ap.add_argument("--only", choices=("table2", "fig2", "fig3"), action="append", help="run only these parts")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--plots", default="docs/img", help="folder for mfh_fig2.png and mfh_fig3.png")
    ap.add_argument("--json", default=None, help="also write every per-seed result to this JSON file")
    args = ap.parse_args()
    parts = args.only or ["table2", "fig2", "fig3"]
    seeds = range(args.seeds)
    t0 = time.perf_counter()
    out: dict[str, list[dict]] = {}
    with get_context("spawn").Pool(args.workers, initializer=_init_worker) as pool:
        if "table2" in parts:
            out["table2"] = pool.map(table2_job, [(g, s) for g in PAPER_TABLE2 for s in seeds])
        sweep = [("gamma", k, s) for k in (0, 2, 4, 6, 8, 10) for s in seeds] if "fig2" in parts else []
        sweep += [("alpha", x, s) for x in (0, 10, 20, 30, 40) for s in seeds] if "fig3" in parts else []
        if sweep:
            out["sweep"] = pool.map(kd_job, sweep)
    import torch

    print(f"cmkdtool MFH reproduction: {args.seeds} seeds, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{time.perf_counter() - t0:.0f} s\n")  # fmt: skip
    if "table2" in out:
        print_table2(out["table2"])
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    for setting, part, name in (("gamma", "fig2", "mfh_fig2.png"), ("alpha", "fig3", "mfh_fig3.png")):
        if part in parts:
            print_sweep(out["sweep"], setting)
            plot_sweep(out["sweep"], setting, Path(args.plots) / name)
            print(f"plot: {Path(args.plots) / name}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
