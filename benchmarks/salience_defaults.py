"""rank-salience's joint-training defaults against the generic training defaults (MFH Algorithm 1, Eq. 28).

``cmkdtool rank-salience`` first trains two unimodal networks jointly (Eq. 28: Dist(f1(xa), f2(xb)) + CE + CE) and
then ranks the channels of xa by permutation salience. This script measures how much of the ranking's quality
depends on that training, on MFH-style tables whose truly shared (modality-general decisive) channels are known:

  old   the generic pretrain defaults rank-salience used before, given as flags: ``--arch mlp --hidden 256
        --optimizer adamw --lr 0.001 --batch-size 64 --epochs 100 --select best``
  new   rank-salience's own defaults, no training flags (today: ``--arch linear --optimizer sgd --lr 0.01
        --batch-size full --epochs 300 --select last``)

Tables, per size N (``--rows``) and seed s (0 .. ``--seeds`` - 1):

  synth mfh         ``cmkdtool synth mfh --gamma G --seed s --train N --val V --test 100`` for G in ``--gammas``
                    (V = max(200, N // 10) unless ``--val``): d = 20 decisive dims, xa holds all of them, xb
                    round(G * 20), d1 = d2 = 50.
  independent       ``generate_independent`` below (written from the paper's App. B.2 text, not from cmkdtool's
                    generator): N rows in all, split 0.8 / 0.1 / 0.1 at random, 20 decisive dims of which K are
                    shared (K in ``--shared``) and (20 - K) / 2 belong to each modality alone, d1 = d2 = 50.

Every table carries its shared channels in its metadata (``synth.general_a``), so rank-salience reports the share
of them among its top-|shared| channels (``recovered_shared`` in the output's metadata). Each (table, setting)
runs ``python -m cmkdtool rank-salience TABLE -a xa -b xb -q --top 0 --repeats M --seed s --device cpu`` in a
subprocess with ``--threads`` torch threads, ``--jobs`` at a time. From each run it reads the recovered share,
the joint training's quality (``joint_training.quality`` in the metadata: both networks' val accuracy, the val
majority-class rate, the val and train distances) and whether stderr says "warning: poor joint training".

It prints one markdown row per table group and setting (mean ± std over seeds of the recovered share, mean
quality numbers, the median val/train distance ratio, runs warned), then the groups pooled per family with the
paired difference new - old.

    python benchmarks/salience_defaults.py                          # 200 rows, 5 seeds, M = 20: ~5 min, 2 cores
    python benchmarks/salience_defaults.py --rows 200,1000,5000 --seeds 5 --repeats 100 --json out/sd.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OLD = ["--arch", "mlp", "--hidden", "256", "--optimizer", "adamw", "--lr", "0.001", "--batch-size", "64",
       "--epochs", "100", "--select", "best"]  # fmt: skip
SETTINGS = {"old": OLD, "new": []}
WARNING = "warning: poor joint training"
DECISIVE = 20  # decisive dims of both generators


def generate_independent(
    rows: int,
    dim_a: int,
    dim_b: int,
    shared: int,
    only_a: int,
    only_b: int,
    seed: int,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    with_split: bool = True,
) -> tuple[pa.Table, dict]:
    """Independent MFH-style multimodal Gaussian (Xue et al. 2023, App. B.2, Eq. 27), numpy only.

    Written from the paper's text, not from cmkdtool's ``synth mfh``::

        x* ~ N(0, I_d),  y = 1(<delta, x*> > 0),  delta ~ N(0, I_d)
        xa ~ N(0, I_d1), xa[J1] <- x*[...]       (noise elsewhere)
        xb ~ N(0, I_d2), xb[J2] <- x*[...]

    The d = shared + only_a + only_b decisive dimensions of x* are split into three groups: ``shared``
    (|J1 ∩ J2|, in both modalities: the modality-general decisive channels), ``only_a`` (|J1 \\ J2|, in xa only)
    and ``only_b`` (|J2 \\ J1|, in xb only); each group sits at random channel positions of its modality, the rest
    is N(0, 1) noise.

    Returns a table with columns id (string), label (int64), [split (string)], xa, xb (fixed_size_list<float32>)
    and schema metadata key ``cmkdtool`` (JSON) whose "synth" entry holds general_a / general_b (the shared channels
    of xa / xb), so ``cmkdtool rank-salience`` reports the share of them it recovers; and that "synth" entry.
    With ``with_split`` a ``split`` column assigns the rows at random to train/val/test, ``rows`` in all, with
    fractions 1 - val_frac - test_frac / val_frac / test_frac (0.8 / 0.1 / 0.1, as cmkdtool does for a table
    without one); without it cmkdtool hashes the ids.
    """
    d = shared + only_a + only_b
    if shared + only_a > dim_a or shared + only_b > dim_b:
        raise SystemExit("more decisive channels than a modality has")
    rng = np.random.default_rng(seed)
    delta = rng.standard_normal(d)
    # decisive dims of x*: [0, shared) shared, then only_a, then only_b
    dims_shared = np.arange(shared)
    dims_a = np.arange(shared, shared + only_a)
    dims_b = np.arange(shared + only_a, d)
    pos_a = rng.permutation(dim_a)[: shared + only_a]  # channels of xa holding x*[dims_shared ++ dims_a]
    pos_b = rng.permutation(dim_b)[: shared + only_b]
    general_a, specific_a = pos_a[:shared], pos_a[shared:]
    general_b, specific_b = pos_b[:shared], pos_b[shared:]

    xs = rng.standard_normal((rows, d))
    y = (xs @ delta > 0).astype(np.int64)
    xa = rng.standard_normal((rows, dim_a))
    xb = rng.standard_normal((rows, dim_b))
    xa[:, general_a] = xs[:, dims_shared]
    xa[:, specific_a] = xs[:, dims_a]
    xb[:, general_b] = xs[:, dims_shared]
    xb[:, specific_b] = xs[:, dims_b]

    cols = {
        "id": pa.array([f"g{seed}-{i:06d}" for i in range(rows)], pa.string()),
        "label": pa.array(y, pa.int64()),
    }
    counts = None
    if with_split:
        n_val, n_test = int(round(rows * val_frac)), int(round(rows * test_frac))
        split = np.array(["train"] * (rows - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)
        split = split[rng.permutation(rows)]
        cols["split"] = pa.array(split.tolist(), pa.string())
        counts = {k: int((split == k).sum()) for k in ("train", "val", "test")}
    for name, x, dim in (("xa", xa, dim_a), ("xb", xb, dim_b)):
        flat = pa.array(x.astype(np.float32).reshape(-1), pa.float32())
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, dim)
    union = d
    synth = {
        "generator": "independent-mfh (benchmarks/salience_defaults.py, App. B.2 from the paper's text)",
        "d": d,
        "shared": shared,
        "only_a": only_a,
        "only_b": only_b,
        "gamma": shared / union if union else 0.0,
        "alpha": 1 - (shared + only_b) / union if union else 0.0,
        "beta": 1 - (shared + only_a) / union if union else 0.0,
        "delta": delta.tolist(),
        "general_a": sorted(int(c) for c in general_a),
        "general_b": sorted(int(c) for c in general_b),
        "specific_a": sorted(int(c) for c in specific_a),
        "specific_b": sorted(int(c) for c in specific_b),
        "rows": rows,
        "split_counts": counts,
        "seed": seed,
    }
    meta = {"class_names": ["0", "1"], "synth": synth, "tool": "benchmarks/salience_defaults.py"}
    table = pa.table(cols).replace_schema_metadata({"cmkdtool": json.dumps(meta)})
    return table, synth


def cli_env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env.pop("CMKDTOOL_SEED", None)
    env.pop("CMKDTOOL_DEVICE", None)
    return env


def cmkdtool(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmkdtool", *map(str, args)], capture_output=True, text=True, env=env)


def make_tables(folder: Path, args, env: dict) -> list[dict]:
    """Every table of the benchmark: dicts with group, family, size, seed, path."""
    tables = []
    for n in args.rows:
        val = args.val if args.val is not None else max(200, n // 10)
        for seed in range(args.seeds):
            for gamma in args.gammas:
                path = folder / f"synth_n{n}_g{gamma}_s{seed}.parquet"
                res = cmkdtool(["synth", "mfh", "--gamma", gamma, "--seed", seed, "--train", n, "--val", val,
                                "--test", args.test, "-q", "-o", path], env)  # fmt: skip
                if res.returncode != 0:
                    raise SystemExit(f"cmkdtool synth mfh failed: {res.stderr.strip()}")
                group = f"synth mfh, gamma {gamma} ({n} train, {val} val)"
                tables.append({"group": group, "family": "synth mfh", "size": n, "seed": seed, "path": path})
            for shared in args.shared:
                only = (DECISIVE - shared) // 2
                table, synth = generate_independent(n, 50, 50, shared, only, DECISIVE - shared - only, seed)
                path = folder / f"gen_n{n}_sh{shared}_s{seed}.parquet"
                pq.write_table(table, path)
                c = synth["split_counts"]
                group = f"independent, {shared} of {DECISIVE} shared ({c['train']} train, {c['val']} val)"
                tables.append({"group": group, "family": "independent", "size": n, "seed": seed, "path": path})
    return tables


def run_one(job: tuple[dict, str, int, dict]) -> dict:
    table, setting, repeats, env = job
    out = table["path"].with_name(f"{table['path'].stem}__{setting}.parquet")
    cmd = ["rank-salience", table["path"], "-a", "xa", "-b", "xb", "-q", "--top", 0, "--repeats", repeats,
           "--seed", table["seed"], "--device", "cpu", "-o", out, *SETTINGS[setting]]  # fmt: skip
    t0 = time.perf_counter()
    res = cmkdtool(cmd, env)
    rec = {k: table[k] for k in ("group", "family", "size", "seed")}
    rec.update(setting=setting, secs=time.perf_counter() - t0, rc=res.returncode, warned=WARNING in res.stderr)
    if res.returncode != 0:
        rec["error"] = res.stderr.strip()[-2000:]
        return rec
    meta = json.loads(pq.read_schema(out).metadata[b"cmkdtool"])
    out.unlink()
    rec["recovered"] = meta.get("recovered_shared", {}).get("xa")
    rec["quality"] = meta.get("joint_training", {}).get("quality", {})
    rec["best_epoch"] = meta.get("joint_training", {}).get("best_epoch")
    return rec


def mean_std(values) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():.0f} ± {v.std():.0f}" if len(v) else "-"


def quality_mean(recs: list[dict], key: str) -> str:
    v = [r["quality"][key] for r in recs if key in r.get("quality", {})]
    return f"{np.mean(v):.3f}" if v else "-"


def dist_ratio(recs: list[dict]) -> str:
    v = [r["quality"]["dist"] / r["quality"]["train_dist"] for r in recs
         if r.get("quality", {}).get("train_dist", 0) > 0 and "dist" in r["quality"]]  # fmt: skip
    return f"{np.median(v):.1f}" if v else "-"


def print_groups(recs: list[dict], settings: list[str]) -> None:
    print("| tables | setting | recovered (%) | val acc a | val acc b | val majority | val dist | train dist "
          "| val / train dist (median) | warned | s / run |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    groups = list(dict.fromkeys(r["group"] for r in recs))
    for group in groups:
        for setting in settings:
            rs = [r for r in recs if r["group"] == group and r["setting"] == setting]
            ok = [r for r in rs if r["rc"] == 0 and r.get("recovered") is not None]
            if not rs:
                continue
            failed = f" ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else ""
            cells = [
                mean_std([r["recovered"] for r in ok]) + failed,
                *(quality_mean(ok, k) for k in ("accuracy", "accuracy_b", "val_majority", "dist", "train_dist")),
                dist_ratio(ok),
                f"{sum(r['warned'] for r in ok)} of {len(ok)}",
                f"{np.mean([r['secs'] for r in rs]):.1f}",
            ]
            print(f"| {group} | {setting} | " + " | ".join(cells) + " |")
    print()


def print_pooled(recs: list[dict], settings: list[str]) -> None:
    print("| tables (pooled) | N | runs | " + " | ".join(f"recovered (%), {s}" for s in settings)
          + (" | new - old, paired (points)" if {"old", "new"} <= set(settings) else "")
          + " | " + " | ".join(f"warned, {s}" for s in settings) + " |")  # fmt: skip
    both = {"old", "new"} <= set(settings)
    print("|---|---:|---:|" + "---:|" * (2 * len(settings) + both))
    keys = list(dict.fromkeys((r["family"], r["size"]) for r in recs))
    for family, size in keys:
        rs = [r for r in recs if (r["family"], r["size"]) == (family, size) and r.get("recovered") is not None]
        by = {s: {(r["group"], r["seed"]): r for r in rs if r["setting"] == s} for s in settings}
        cells = [mean_std([r["recovered"] for r in by[s].values()]) for s in settings]
        if both:
            pairs = by["old"].keys() & by["new"].keys()
            cells.append(mean_std([by["new"][k]["recovered"] - by["old"][k]["recovered"] for k in pairs]))
        cells += [f"{sum(r['warned'] for r in by[s].values())} of {len(by[s])}" for s in settings]
        rows = "train rows" if family == "synth mfh" else "rows in all"
        runs = max(len(v) for v in by.values())
        print(f"| {family} | {size} {rows} | {runs} | " + " | ".join(cells) + " |")
    print()


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=ints, default=[200], help="table sizes N, comma-separated (default 200)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per table group (default 5)")
    ap.add_argument("--repeats", type=int, default=20, help="permutations M per channel (default 20; paper 100)")
    ap.add_argument("--gammas", type=floats, default=[0.3, 0.5, 0.7], help="synth mfh --gamma values")
    ap.add_argument("--shared", type=ints, default=[4, 8, 12], help=f"shared of {DECISIVE} decisive dims (independent)")
    ap.add_argument("--val", type=int, default=None, help="synth mfh val rows (default max(200, N // 10))")
    ap.add_argument("--test", type=int, default=100, help="synth mfh test rows (default 100)")
    ap.add_argument("--settings", default="old,new", help="subset of old,new (default both)")
    ap.add_argument("--jobs", type=int, default=2, help="rank-salience runs at a time (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--json", default=None, help="also write every run's record to this JSON file")
    args = ap.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    if not settings or any(s not in SETTINGS for s in settings):
        ap.error(f"--settings: a subset of {','.join(SETTINGS)}")
    if any(s < 0 or s > DECISIVE or (DECISIVE - s) % 2 for s in args.shared):
        ap.error(f"--shared: even numbers from 0 to {DECISIVE}")
    env = cli_env(args.threads)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="salience_defaults_") as tmp:
        tables = make_tables(Path(tmp), args, env)
        jobs = [(t, s, args.repeats, env) for t in tables for s in settings]
        print(f"{len(tables)} tables, {len(jobs)} rank-salience runs", file=sys.stderr)
        recs = []
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            for rec in pool.map(run_one, jobs):
                recs.append(rec)
                status = f"recovered {rec['recovered']:.2f}" if rec["rc"] == 0 else f"FAILED: {rec['error'][-300:]}"
                print(f"{rec['group']} seed {rec['seed']} {rec['setting']}: {status}"
                      f"{' (warned)' if rec['warned'] else ''} ({rec['secs']:.1f} s)", file=sys.stderr)  # fmt: skip
    wall = time.perf_counter() - t0
    cpu = platform.processor() or platform.machine()
    print(f"cmkdtool {version('cmkdtool')}, torch {version('torch')}, {os.cpu_count()} cores ({cpu}), "
          f"{args.threads} torch thread(s) per run, {args.jobs} run(s) at a time, {date.today()}, "
          f"load {load0:.2f} at start, {wall:.0f} s")  # fmt: skip
    print(f"rank-salience -a xa -b xb --repeats {args.repeats} --seed s --device cpu; seeds 0-{args.seeds - 1}")
    print(f"old: {' '.join(OLD)}")
    print("new: no training flags (rank-salience's defaults)")
    print()
    print_groups(recs, settings)
    print_pooled(recs, settings)
    failed = [r for r in recs if r["rc"] != 0]
    if failed:
        print(f"{len(failed)} run(s) failed; first error: {failed[0]['error'][-500:]}", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(recs, indent=1, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
