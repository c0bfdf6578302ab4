"""Cross-modal KD baselines on examples/av_digits: every distill method against no KD, over seeds.

The data, the extraction and the shared training settings are those of ``examples/av_digits/run.sh``:

  data       ``examples/av_digits/make_data.py WORK/pcN/data --per-class N --seed DATA_SEED`` (sklearn's 8x8
             digits, PCA-degraded and noisy, paired within each class with a digit name spoken by espeak-ng); built
             once and reused from the work folder (``--work``), like every table below
  extract    ``cmkdtool extract image --raw --mode gray`` ([1, 8, 8] pixels) and ``cmkdtool extract audio --features
             mfcc --sample-rate 16000 --duration 1.0 --pool mean+std`` (80 numbers); both split by a hash of the id,
             80/10/10, so the split is the same for every seed and method
  teacher    one audio teacher per seed: ``pretrain --input audio --arch mlp --epochs 60 --seed s`` (mlp defaults:
             hidden 256, AdamW lr 1e-3, batch 64, best epoch on val)
  students   ``--input image --arch cnn2d --epochs 30 --seed s`` and every other option at its default (channels
             32,64, hidden 256, AdamW lr 1e-3, batch 64, constant rate, best epoch on val accuracy): the no-KD
             baseline is ``pretrain --role student``, every other row ``distill METHOD`` taught by seed s's teacher,
             with the method's own defaults (from its paper or reference code: ``cmkdtool distill METHOD --help``)
  eval       ``eval --split test --gallery train``: test accuracy, and cross-modal retrieval R@1 / R@5 as in AMID
             Table 2 (each test image is a query against the train gallery, ranked by cosine similarity of the
             student's own embedding, the input of its head; a hit when one of the k nearest shares the class)

Each (method, seed) is trained and evaluated through the library (``cmkdtool.pipelines.run_pretrain`` /
``run_distill`` / ``run_eval``, what the commands run), ``--jobs`` worker processes at a time with ``--threads``
torch threads each, on the CPU. The markdown table (stdout) gives mean ± std over the seeds (sample std, ddof 1),
the paired accuracy difference to the no-KD baseline of the same seed, and the mean seconds per run; progress
goes to stderr. Needs the espeak-ng program and scikit-learn (it installs neither; it says what is missing).

    python benchmarks/baselines.py                           # 5 seeds, every method
    python benchmarks/baselines.py --seeds 3 --nce-k 50      # the measured run: 74 min on 2 busy cores
    python benchmarks/baselines.py --quick                   # smoke run: 1 seed, 3 epochs, 30 pairs per digit
    python benchmarks/baselines.py --methods none,kd,crd --seeds 3 --json out/baselines.json

On a CPU crd (16384 negatives per sample) and crcd (B^2 relations x (1 + nce_k)) take minutes per epoch and
dominate: on 2 cores shared with other jobs one crd run took 18 to 50 min, one crcd run with ``--nce-k 50`` 15 to
20 min (at its default 500 one epoch took 110 s with the cores to itself: about 1 h a run), every other run 10 to
60 s. ``--reuse`` keeps the runs that finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from datetime import date
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "av_digits"
METHODS = ("kd", "feature", "crd", "ccl", "gmc", "crcd", "nce", "rkd", "pkt", "sp", "dask")
BASELINE = "none"  # the no-KD image baseline (pretrain --role student)
# examples/av_digits/run.sh
EPOCHS, TEACHER_EPOCHS, PER_CLASS = 30, 60, 150
STUDENT_ARCH, TEACHER_ARCH = "cnn2d", "mlp"
SLOW = ("crd", "crcd")  # minutes per run on a CPU; the others take seconds
QUICK = {"seeds": 1, "epochs": 3, "teacher_epochs": 10, "per_class": 30}
# what each method's defaults are (from `cmkdtool distill METHOD --help` / docs/methods.md), for the notes
DEFAULTS = {
    "kd": "Hinton weighting: 0.1 CE + 0.9 T^2 KL, T = 4 (mdistiller)",
    "feature": "MSE between the embeddings, feature weight 1, task weight 1, projector only if widths differ",
    "crd": "CRD weight 0.8, feat dim 128, nce_k 16384, T 0.07, momentum 0.5, exact positives (RepDistiller)",
    "ccl": "class-aware NCE T 0.5 (CCL's audio-teacher script), NCE and JSD (sym-KL) weights 1 (CCL)",
    "gmc": "NT-Xent tau 0.3, common and latent dim 60 (GMC supervised MOSI/MOSEI)",
    "crcd": "CRCD weight 0.8, feat dim 128, nce_k 500, T 0.05, momentum 0.5 (Lechatelia/CRCD)",
    "nce": "instance InfoNCE, T 0.07, feat dim 128 (CMC/CRD)",
    "rkd": "RKD weight 1, w_d 25, w_a 50 (RepDistiller)",
    "pkt": "PKT weight 30000 (RepDistiller)",
    "sp": "SP weight 3000 (RepDistiller)",
    "dask": "DASK weight 1: RKD (25, 50) + element-mean MSE, each weight 1 (TMM-MMH)",
}


def fail(message: str) -> None:
    print(f"baselines.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def check_dependencies() -> None:
    """Say what is missing and how to install it (never install anything), then exit with status 1."""
    problems = []
    if shutil.which("espeak-ng") is None:
        problems.append(
            "the espeak-ng program is missing (the system package espeak-ng on Debian/Ubuntu and in Homebrew)"
        )
    missing = [p for m, p in (("sklearn", "scikit-learn"), ("soundfile", "soundfile"), ("PIL", "pillow"))
               if importlib.util.find_spec(m) is None]  # fmt: skip
    if missing:
        problems.append(f"Python package(s) {', '.join(missing)} missing from {sys.prefix} (make venv adds them)")
    if problems:
        fail("; and ".join(problems))


def run_command(cmd: list[str], what: str) -> None:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        fail(f"{what} failed (exit status {done.returncode}): {' '.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    print(f"{what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def prepare_tables(folder: Path, per_class: int, data_seed: int) -> tuple[Path, Path]:
    """The data set and its two feature tables in ``folder``, built once (as run.sh does) and then reused."""
    data, image, audio = folder / "data", folder / "image.parquet", folder / "audio.parquet"
    if not (data / "manifest.csv").is_file():
        make = [sys.executable, str(EXAMPLE / "make_data.py"), str(data), "--per-class", str(per_class),
                "--seed", str(data_seed), "--force", "-q"]  # fmt: skip
        run_command(make, f"make_data.py ({per_class} pairs per digit)")
    else:
        print(f"reusing {data}", file=sys.stderr)
    cli = [sys.executable, "-m", "cmkdtool", "extract"]
    extract = {
        image: ["image", str(data / "image"), "--raw", "--mode", "gray"],
        audio: ["audio", str(data / "audio"), "--features", "mfcc", "--sample-rate", "16000", "--duration", "1.0",
                "--pool", "mean+std"],
    }  # fmt: skip
    for table, args in extract.items():
        if table.is_file():
            print(f"reusing {table}", file=sys.stderr)
            continue
        partial = table.with_name(f"partial-{table.name}")
        partial.unlink(missing_ok=True)
        run_command([*cli, *args, "-o", str(partial), "--quiet"], f"extract {args[0]}")
        os.replace(partial, table)
    return image, audio


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _metrics(checkpoint: Path, tables: list[Path]) -> dict:
    from cmkdtool.pipelines import run_eval

    ev = run_eval(str(checkpoint), [str(t) for t in tables], split="test", topk=(1, 5), retrieval=True,
                  gallery="train", device="cpu", quiet=True)  # fmt: skip
    m = ev.metrics
    return {"accuracy": m["accuracy"], "r@1": m["r@1"], "r@5": m["r@5"], "queries": int(len(ev.rows)),
            "gallery": int(ev.data.count("train"))}  # fmt: skip


def record_path(job: dict, name: str) -> Path:
    return Path(job["folder"]) / f"seed{job['seed']}" / f"{name}.json"


def reused(job: dict, name: str) -> dict | None:
    """With --reuse, the record of an earlier run of the same model with the same settings (else None)."""
    path = record_path(job, name)
    if not job["reuse"] or not path.is_file() or not path.with_suffix(".safetensors").is_file():
        return None
    rec = json.loads(path.read_text())
    return rec if rec.get("settings") == job["settings"].get(name) and "error" not in rec else None


def keep(job: dict, name: str, rec: dict) -> dict:
    rec["settings"] = job["settings"].get(name)
    if "error" not in rec:
        record_path(job, name).write_text(json.dumps(rec, indent=1))
    return rec


def train_teacher(job: dict) -> dict:
    """Seed s's audio teacher (pretrain --input audio --arch mlp --epochs 60 --seed s) and its test metrics."""
    if (rec := reused(job, "teacher")) is not None:
        return {**rec, "reused": True}
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines import run_pretrain

    t0 = time.perf_counter()
    out = Path(job["folder"]) / f"seed{job['seed']}" / "teacher.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        config = TrainConfig(epochs=job["teacher_epochs"], seed=job["seed"])
        run_pretrain([job["audio"]], ["audio"], model=ModelOptions(arch=TEACHER_ARCH), config=config, device="cpu",
                     quiet=True).save(str(out))  # fmt: skip
        rec = _metrics(out, [Path(job["audio"])])
    except Exception:
        rec = {"error": traceback.format_exc()}
    rec = {"method": "teacher", "seed": job["seed"], "checkpoint": str(out), **rec,
           "secs": time.perf_counter() - t0}  # fmt: skip
    return keep(job, "teacher", rec)


def train_student(job: dict) -> dict:
    """One image student: the no-KD baseline or ``distill METHOD`` with the method's defaults, and its metrics."""
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.methods.registry import get
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines import run_distill, run_pretrain

    method, seed = job["method"], job["seed"]
    if (method == BASELINE or job["teacher_reused"]) and (rec := reused(job, method)) is not None:
        return {**rec, "reused": True}
    t0 = time.perf_counter()
    out = Path(job["folder"]) / f"seed{seed}" / f"{method}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    model = ModelOptions(arch=STUDENT_ARCH)
    config = TrainConfig(epochs=job["epochs"], seed=seed)
    try:
        if method == BASELINE:
            trained = run_pretrain([job["image"]], ["image"], model=model, config=config, role="student",
                                   device="cpu", quiet=True)  # fmt: skip
        else:
            info = get(method)
            params = info.params()
            if method == "crcd" and job["nce_k"] is not None:
                params = dataclasses.replace(params, nce_k=job["nce_k"])
            trained = run_distill(info, [job["audio"], job["image"]], job["teacher"], ["image"], params=params,
                                  model=model, config=config, device="cpu", quiet=True)  # fmt: skip
        trained.save(str(out))
        rec = _metrics(out, [Path(job["image"])])
        rec["best_epoch"] = trained.fit.best_epoch
        losses = [v for k, v in trained.fit.final_metrics.items() if k.startswith("train/")]
        rec["finite"] = bool(np.all(np.isfinite(losses)))
    except Exception:
        rec = {"error": traceback.format_exc()}
    return keep(job, method, {"method": method, "seed": seed, **rec, "secs": time.perf_counter() - t0})


def pct(values: list[float]) -> str:
    v = np.asarray(values, dtype=float) * 100
    if len(v) == 0:
        return "failed"
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def signed(values: list[float]) -> str:
    v = np.asarray(values, dtype=float) * 100
    if len(v) == 0:
        return "n/a"
    mean = np.round(v.mean(), 2) + 0.0  # no "-0.00"
    if len(v) == 1:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ± {v.std(ddof=1):.2f}"


def print_table(teachers: list[dict], students: list[dict], methods: list[str]) -> None:
    ok = [r for r in students if "error" not in r]
    base = {r["seed"]: r["accuracy"] for r in ok if r["method"] == BASELINE}
    print("| model | test accuracy (%) | accuracy - no KD (paired) | R@1 (%) | R@5 (%) | seeds | s/run |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    good_t = [r for r in teachers if "error" not in r]
    if good_t:
        print(f"| audio teacher (reference: audio queries, audio gallery) | {pct([r['accuracy'] for r in good_t])} "
              f"| | {pct([r['r@1'] for r in good_t])} | {pct([r['r@5'] for r in good_t])} | {len(good_t)} "
              f"| {np.mean([r['secs'] for r in good_t]):.1f} |")  # fmt: skip
    for method in methods:
        rs = [r for r in ok if r["method"] == method]
        name = "no KD (image baseline)" if method == BASELINE else f"`distill {method}`"
        diff = "" if method == BASELINE else signed([r["accuracy"] - base[r["seed"]] for r in rs if r["seed"] in base])
        secs = f"{np.mean([r['secs'] for r in rs]):.1f}" if rs else ""
        print(f"| {name} | {pct([r['accuracy'] for r in rs])} | {diff} | {pct([r['r@1'] for r in rs])} "
              f"| {pct([r['r@5'] for r in rs])} | {len(rs)} | {secs} |")  # fmt: skip
    print()


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """The options every reproduction script shares: worker processes, threads, reuse and the JSON record."""
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    ap.add_argument("--reuse", action="store_true", help="reuse the models (and their metrics) of an earlier run in "
                    "the work folder with the same settings, e.g. after an interruption")  # fmt: skip
    ap.add_argument("--json", default=None, help="also write every run's record to this JSON file")


def finish(recs: list[dict], name, json_path: str | None, record=None) -> None:
    """List failed runs and non-finite losses (``name(rec)`` says which run), write ``record`` (default
    ``recs``) to ``json_path`` and exit with 1 if a run failed."""
    failed = [r for r in recs if "error" in r]
    for r in failed:
        print(f"- FAILED: {name(r)}: {r['error'].strip().splitlines()[-1]}")
    for r in recs:
        if "error" not in r and not r.get("finite", True):
            print(f"- non-finite training loss: {name(r)}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(recs if record is None else record, indent=1, default=str))
    sys.stdout.flush()
    sys.exit(1 if failed else 0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Methods: none (the no-KD baseline), " + ", ".join(METHODS) + ". See the module docstring.",
    )
    ap.add_argument("--work", default="out/baselines", help="work folder, reused between runs (default out/baselines)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 5; --quick: 1)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of none," + ",".join(METHODS)
                    + " (default all)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=None, help=f"student epochs (default {EPOCHS}, run.sh's; --quick: 3)")
    ap.add_argument("--teacher-epochs", type=int, default=None,
                    help=f"audio teacher epochs (default {TEACHER_EPOCHS}, run.sh's; --quick: 10)")  # fmt: skip
    ap.add_argument("--per-class", type=int, default=None,
                    help=f"pairs per digit (default {PER_CLASS}, run.sh's; at most 174; --quick: 30)")  # fmt: skip
    ap.add_argument("--data-seed", type=int, default=0, help="make_data.py --seed (default 0, run.sh's)")
    ap.add_argument("--nce-k", type=int, default=None,
                    help="override crcd's --nce-k (default: its own, 500); noted in the output")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 epochs, 10 teacher epochs, 30 pairs "
                    "per digit (explicit options still win)")  # fmt: skip
    add_run_options(ap)
    args = ap.parse_args()

    def pick(value, name, default):
        return value if value is not None else (QUICK[name] if args.quick else default)

    seeds = pick(args.seeds, "seeds", 5)
    epochs = pick(args.epochs, "epochs", EPOCHS)
    teacher_epochs = pick(args.teacher_epochs, "teacher_epochs", TEACHER_EPOCHS)
    per_class = pick(args.per_class, "per_class", PER_CLASS)
    methods = [BASELINE, *METHODS] if args.methods is None else [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in (BASELINE, *METHODS)]
    if unknown or not methods:
        ap.error(f"--methods: a comma-separated subset of {BASELINE},{','.join(METHODS)} (got {args.methods!r})")
    if BASELINE in methods:
        methods = [BASELINE] + [m for m in methods if m != BASELINE]
    if min(seeds, epochs, teacher_epochs, args.jobs, args.threads) < 1:
        ap.error("--seeds, --epochs, --teacher-epochs, --jobs and --threads must be at least 1")
    if not 1 <= per_class <= 174:
        ap.error("--per-class must lie within 1..174 (the digits set has at least 174 images per class)")
    if args.nce_k is not None and args.nce_k < 1:
        ap.error("--nce-k must be at least 1")
    check_dependencies()

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    folder = Path(args.work) / f"pc{per_class}-data{args.data_seed}"
    folder.mkdir(parents=True, exist_ok=True)
    image, audio = prepare_tables(folder, per_class, args.data_seed)
    models = folder / f"e{epochs}-t{teacher_epochs}"
    # what a reused record must match (the folder already names the data, the epochs and the teacher epochs)
    settings = {m: {"cmkdtool": version("cmkdtool")} for m in ["teacher", *methods]}
    if "crcd" in settings:
        settings["crcd"]["nce_k"] = args.nce_k
    common = {"folder": str(models), "image": str(image), "audio": str(audio), "epochs": epochs,
              "teacher_epochs": teacher_epochs, "nce_k": args.nce_k, "reuse": args.reuse,
              "settings": settings}  # fmt: skip
    kd_methods = [m for m in methods if m != BASELINE]
    pool = get_context("spawn").Pool(args.jobs, initializer=_init_worker, initargs=(args.threads,))
    try:
        teachers = []
        if kd_methods:
            for rec in pool.imap_unordered(train_teacher, [{**common, "seed": s} for s in range(seeds)]):
                teachers.append(rec)
                status = f"FAILED\n{rec['error']}" if "error" in rec else f"accuracy {rec['accuracy']:.4f}"
                print(f"teacher seed {rec['seed']}: {status} ({rec['secs']:.1f} s{', reused' * rec.get('reused', 0)})",
                      file=sys.stderr)  # fmt: skip
        teacher_of = {r["seed"]: r for r in teachers if "error" not in r}
        jobs = [{**common, "method": m, "seed": s, "teacher": teacher_of[s]["checkpoint"] if s in teacher_of else None,
                 "teacher_reused": teacher_of.get(s, {}).get("reused", False)}
                for m in methods for s in range(seeds) if m == BASELINE or s in teacher_of]  # fmt: skip
        # the slowest methods first (crd's 16384 negatives per sample, crcd's B^2 relations), so that the workers
        # end together
        jobs.sort(key=lambda j: (SLOW.index(j["method"]) if j["method"] in SLOW else len(SLOW), j["seed"]))
        students = []
        for n, rec in enumerate(pool.imap_unordered(train_student, jobs), 1):
            students.append(rec)
            if "error" in rec:
                status = f"FAILED\n{rec['error']}"
            else:
                status = f"accuracy {rec['accuracy']:.4f}, R@1 {rec['r@1']:.4f}, R@5 {rec['r@5']:.4f}" + (
                    "" if rec["finite"] else ", non-finite loss"
                )
            print(f"[{n}/{len(jobs)}] {rec['method']} seed {rec['seed']}: {status} ({rec['secs']:.1f} s"
                  f"{', reused' * rec.get('reused', 0)}, "
                  f"{time.perf_counter() - t0:.0f} s elapsed)", file=sys.stderr)  # fmt: skip
    finally:
        pool.close()
        pool.join()
    wall = time.perf_counter() - t0
    students.sort(key=lambda r: (r["seed"], methods.index(r["method"])))
    teachers.sort(key=lambda r: r["seed"])

    import torch

    ref = next((r for r in students + teachers if "queries" in r), {})
    cpu = platform.processor() or platform.machine()
    print(f"## Cross-modal KD baselines on examples/av_digits (image student, audio teacher){' [--quick]' * args.quick}"
          "\n")  # fmt: skip
    print(f"cmkdtool {version('cmkdtool')}, torch {torch.__version__}, {os.cpu_count()} cores ({cpu}), {args.jobs} "
          f"worker(s) x {args.threads} torch thread(s), CPU, fp32, {date.today()}, load {load0:.2f} at start, "
          f"{wall:.0f} s wall\n")  # fmt: skip
    print(f"- data: `make_data.py --per-class {per_class} --seed {args.data_seed}` ({10 * per_class} pairs), "
          f"extracted as `examples/av_digits/run.sh` does (image pixels [1, 8, 8]; audio MFCC mean+std, 80 numbers); "
          f"id-hash split 80/10/10, the same for every seed: {ref.get('gallery', '?')} train rows (the retrieval "
          f"gallery), {ref.get('queries', '?')} test rows (the queries)")  # fmt: skip
    print(f"- teacher: one per seed, `pretrain --input audio --arch {TEACHER_ARCH} --epochs {teacher_epochs} --seed s`")
    print(f"- every image row (same for all): `--input image --arch {STUDENT_ARCH} --epochs {epochs} --seed s`, other "
          "options at their defaults (channels 32,64, hidden 256, AdamW lr 1e-3, batch 64, constant rate, best "
          "epoch on val accuracy): the shared settings of `examples/av_digits/run.sh`; no KD = `pretrain --role "
          "student`, the others `distill METHOD` with the method's own defaults (no tuning)")  # fmt: skip
    n_reused = sum(bool(r.get("reused")) for r in teachers + students)
    if n_reused:
        print(f"- --reuse: {n_reused} of {len(teachers) + len(students)} models (and metrics) came from an earlier run")
    print(f"- seeds 0-{seeds - 1}; mean ± std (sample std) over seeds; 'accuracy - no KD' is the paired difference "
          "(points) to the baseline of the same seed; s/run: mean seconds to train and evaluate one model")  # fmt: skip
    print("- retrieval (AMID Table 2's protocol, `cmkdtool eval --gallery train`): every test row is a query against "
          "the train rows, ranked by cosine similarity of the model's own embedding (the input of its head: image "
          "against image for the students, audio against audio for the teacher); R@k = share of queries with a "
          "same-class item among the k nearest. Chance: accuracy 10 %; R@1 about 10 %, R@5 about 41 %\n")  # fmt: skip
    print_table(teachers, students, methods)
    notes = [f"`{m}`: {DEFAULTS[m]}" for m in methods if m in DEFAULTS]
    if "kd" in methods:
        notes.append("`kd` runs with its own defaults (Hinton weighting); run.sh's student uses `--weighting mfh "
                     "--rho 0.5` (MFH Eq. 1, T = 1)")  # fmt: skip
    if args.nce_k is not None and "crcd" in methods:
        notes.append(f"`crcd` ran with `--nce-k {args.nce_k}` instead of its default 500 (this script's --nce-k: "
                     "memory and time grow linearly with K, 1 GiB per side at 500 with batch 64)")  # fmt: skip
    print("Method defaults: " + "; ".join(notes) + ".\n")
    finish(teachers + students, lambda r: f"{r['method']} seed {r['seed']}", args.json,
           {"teachers": teachers, "students": students})  # fmt: skip


if __name__ == "__main__":
    main()
