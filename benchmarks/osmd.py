"""OS-MD (Wei, Luo, Luo 2023) on ``cmkdtool synth spoof``: Table 1 (RGB-only, RGB+D, two-stage baselines, OS-MD),
Table 4 (JDN ablation), Table 5 (CTN ablation) and the GradNorm claim, with ACER / APCER / BPCER.

Data, models and settings (every row the same, no tuning):

  data       ``synth spoof --seed s`` (``cmkdtool.pipelines.synth.run_synth_spoof(seed=s)``, one table per seed;
             generator defaults: 16 x 16, attack visibility 0.3, 1200 / 400 / 400 rows, half attacks (print and
             replay), label 1 = bona fide, ``attack_type`` column), written once to the work folder and reused
  models     ``--arch cnn2d --channels 8,16 --hidden 32`` for every encoder (so the composite students' two encoders
             have the ordinary model's width), ``--epochs 30 --select acer --seed s`` (lowest val ACER, the paper's
             practice), the engine's shared optimiser settings otherwise (AdamW lr 1e-3, batch 64, constant rate)
  rgb        ``pretrain -i rgb``: the RGB-only baseline, and the ``--ordinary`` model (phi_o) of every distill row
  rgbd       ``pretrain -i rgb -i depth``: late fusion of two encoders; an upper bound that needs depth at test time
  depth      ``pretrain -i depth``: the privileged teacher (``--teacher``) of every distill row
  mse|pkt|dask|adversarial
             ``distill hallucinate --loss L --stage1-epochs 15`` (half the epochs): the two-stage baselines as the
             OS-MD authors ran them (MERS/MARS feature MSE, "ADDA" = PKT, DASK = RKD + MSE, ADMD least-squares GAN),
             each with its default weight, into the same composite model as OS-MD
  osmd       ``distill osmd`` with its defaults (GradNorm, aux-weight sum 0.2, MMD 5 kernels, CTN average fusion)
  jdn-none|jdn-fkd|jdn-rkd      ``distill osmd --jdn none|fkd|rkd`` (Table 4)
  ctn-none|ctn-ae               ``distill osmd --ctn none|ae`` (Table 5)
  magnitude  ``distill osmd --balance magnitude`` (each auxiliary loss held at 0.1 x the task loss every step)
  controls   (not in the paper) where OS-MD's gain comes from: ``rgb-long`` = ``pretrain -i rgb`` with twice the
             epochs (as long as the ordinary model and a distill run together); ``ce-only`` = ``distill osmd --jdn
             none --ctn none`` (the composite student trained with the task loss alone: nothing from the teacher);
             ``frozen`` = ``distill osmd --freeze-ordinary`` (phi_o kept as pretrained, as the two-stage rows keep it)

Every model is evaluated on the test split with ``run_eval(..., pad=PadOptions(pad=True))`` (``eval --pad``):
ACER, APCER (pooled, and per attack type), BPCER at the default threshold 0.5, and ACER again with
``--pad-threshold val-eer`` (the val split's EER threshold). The GradNorm check reads the full OS-MD runs'
histories (``train/ce, mmd, kl, ctn, alpha, beta``): alpha (mmd + kl) / (beta ctn) and (alpha (mmd + kl) + beta
ctn) / ce at the first epoch and over the last epochs (``--last``), per seed, then the mean over seeds. alpha and
beta are logged at the end of each epoch and the losses are epoch means, so these ratios use each epoch's final
weights.

Each (row, seed) is trained through the library (``run_pretrain`` / ``run_distill`` with the methods' params
dataclasses), ``--jobs`` worker processes with ``--threads`` torch threads each, on the CPU. Markdown to stdout
(mean ± std over seeds, sample std; rates in %), progress to stderr.

    python benchmarks/osmd.py                          # 5 seeds, every row (about 15 min on 2 cores)
    python benchmarks/osmd.py --quick                  # smoke run: 1 seed, 4 epochs
    python benchmarks/osmd.py --seeds 3 --jobs 1 --reuse --json out/osmd.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import date
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import add_run_options, finish  # noqa: E402  (the reproduction scripts' shared run options)

EPOCHS, CHANNELS, HIDDEN, LAST = 30, (8, 16), (32,), 5
QUICK = {"seeds": 1, "epochs": 4, "last": 2}
PRETRAIN = {"rgb": ["rgb"], "rgbd": ["rgb", "depth"], "depth": ["depth"], "rgb-long": ["rgb"]}
LONG = {"rgb-long": 2}  # epochs x this: the RGB-only model trained as long as ordinary + distill together
HALLUCINATE = ("mse", "pkt", "dask", "adversarial")
# row: (label, method, params beyond `ordinary` (and the hallucinate stage-1 epochs))
DISTILL = {
    "mse": ("MERS/MARS: `distill hallucinate --loss mse` (weight 50)", "hallucinate", {"loss": "mse"}),
    "pkt": ("ADDA (= PKT): `distill hallucinate --loss pkt` (weight 40000)", "hallucinate", {"loss": "pkt"}),
    "dask": ("DASK: `distill hallucinate --loss dask` (weight 1)", "hallucinate", {"loss": "dask"}),
    "adversarial": ("ADMD: `distill hallucinate --loss adversarial`", "hallucinate", {"loss": "adversarial"}),
    "osmd": ("OS-MD: `distill osmd` (GradNorm)", "osmd", {}),
    "jdn-none": ("-JDN: `--jdn none`", "osmd", {"jdn": "none"}),
    "jdn-fkd": ("-JDN +FKD: `--jdn fkd`", "osmd", {"jdn": "fkd"}),
    "jdn-rkd": ("-JDN +RKD: `--jdn rkd`", "osmd", {"jdn": "rkd"}),
    "ctn-none": ("-CTN: `--ctn none`", "osmd", {"ctn": "none"}),
    "ctn-ae": ("-CTN +AE: `--ctn ae`", "osmd", {"ctn": "ae"}),
    "magnitude": ("OS-MD `--balance magnitude`", "osmd", {"balance": "magnitude"}),
    "ce-only": (
        "control: `distill osmd --jdn none --ctn none` (no privileged term)",
        "osmd",
        {"jdn": "none", "ctn": "none"},
    ),
    "frozen": ("control: OS-MD `--freeze-ordinary`", "osmd", {"freeze_ordinary": True}),
}
LABELS = {
    "rgb": "RGB only: `pretrain -i rgb` (the `--ordinary` model)",
    "rgbd": "RGB+D: `pretrain -i rgb -i depth` (depth at test time)",
    "depth": "depth teacher: `pretrain -i depth` (depth at test time)",
    "rgb-long": "control: RGB only, `pretrain -i rgb` with twice the epochs",
    **{k: v[0] for k, v in DISTILL.items()},
}
ROWS = (*PRETRAIN, *DISTILL)
TABLE1 = ("rgb", "rgbd", "depth", *HALLUCINATE, "osmd", "magnitude")
TABLE4 = ("osmd", "jdn-none", "jdn-fkd", "jdn-rkd")
TABLE5 = ("osmd", "ctn-none", "ctn-ae")
CONTROLS = ("rgb", "rgb-long", "osmd", "ce-only", "frozen")
# the paper's ACER (%) on CASIA-SURF (Tables 1, 4, 5); ADMD and the depth-only teacher are not in the paper
PAPER = {"rgb": 10.32, "rgbd": 5.53, "mse": 8.95, "pkt": 9.83, "dask": 8.08, "osmd": 6.75, "jdn-none": 44.76,
         "jdn-fkd": 8.14, "jdn-rkd": 7.65, "ctn-none": 9.16, "ctn-ae": 8.67}  # fmt: skip
GRADNORM_ROWS = ("osmd", "magnitude")


def fail(message: str) -> None:
    print(f"osmd.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def prepare_table(folder: Path, seed: int) -> Path:
    """Seed ``seed``'s ``synth spoof`` table (the generator's defaults), written once and then reused."""
    from cmkdtool.pipelines.synth import run_synth_spoof

    path = folder / f"seed{seed}" / "spoof.parquet"
    if path.is_file():
        print(f"reusing {path}", file=sys.stderr)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"partial-{path.name}")
    run_synth_spoof(seed=seed, command=f"cmkdtool synth spoof --seed {seed} -o {path}").write(str(partial))
    os.replace(partial, path)
    print(f"wrote {path}", file=sys.stderr)
    return path


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pad_metrics(checkpoint: Path, table: Path) -> dict:
    from cmkdtool.analysis.pad import PadOptions
    from cmkdtool.pipelines import run_eval

    out = {}
    for key, threshold in (("", 0.5), ("eer_", "val-eer")):
        ev = run_eval(str(checkpoint), [str(table)], split="test", topk=(1,), retrieval=False, device="cpu",
                      quiet=True, pad=PadOptions(pad=True, pad_threshold=threshold))  # fmt: skip
        m = ev.metrics
        names = ("acer", "apcer", "bpcer", "apcer[print]", "apcer[replay]", "accuracy", "pad_threshold")
        out.update({f"{key}{k}": (None if m.get(k) is None else float(m[k])) for k in names})
    return out


def _curve(history: list[dict]) -> list[dict]:
    """The per-epoch losses and weights that the GradNorm check reads (train/* keys of an osmd history)."""
    keys = ("ce", "mmd", "kl", "ctn", "fkd", "rkd", "alpha", "beta")
    return [{k: float(h[f"train/{k}"]) for k in keys if f"train/{k}" in h} | {"epoch": h["epoch"]} for h in history]


def record_path(job: dict) -> Path:
    return Path(job["folder"]) / f"seed{job['seed']}" / f"{job['row']}.json"


def reused(job: dict) -> dict | None:
    """With --reuse, the record of an earlier run of the same model with the same settings (else None)."""
    path = record_path(job)
    if not job["reuse"] or not path.is_file() or not path.with_suffix(".safetensors").is_file():
        return None
    rec = json.loads(path.read_text())
    return rec if rec.get("settings") == job["settings"] and "error" not in rec else None


def train(job: dict) -> dict:
    """One (row, seed): train the model through the library, save it, evaluate it with the PAD metrics."""
    row, seed = job["row"], job["seed"]
    if (row in PRETRAIN or job["deps_reused"]) and (rec := reused(job)) is not None:
        return {**rec, "reused": True}
    import dataclasses

    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.methods.registry import get
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines import run_distill, run_pretrain

    t0 = time.perf_counter()
    out = record_path(job).with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = ModelOptions(arch="cnn2d", channels=list(CHANNELS), hidden=list(HIDDEN))
    config = TrainConfig(epochs=job["epochs"] * LONG.get(row, 1), seed=seed, select="acer")
    table = job["table"]
    try:
        if row in PRETRAIN:
            trained = run_pretrain([table], PRETRAIN[row], model=model, config=config, device="cpu", quiet=True)
        else:
            _, method, extra = DISTILL[row]
            info = get(method)
            params = dataclasses.replace(info.params(), ordinary=job["ordinary"], **extra)
            if method == "hallucinate":
                params = dataclasses.replace(params, stage1_epochs=job["stage1"])
            trained = run_distill(info, [table], job["teacher"], ["rgb"], params=params, model=model, config=config,
                                  device="cpu", quiet=True)  # fmt: skip
        trained.save(str(out))
        rec = _pad_metrics(out, Path(table))
        rec["best_epoch"] = trained.fit.best_epoch
        rec["val_acer"] = trained.fit.best_metrics.get("val/acer")
        losses = [v for k, v in trained.fit.final_metrics.items() if k.startswith("train/")]
        rec["finite"] = bool(np.all(np.isfinite(losses)))
        if method_of(row) == "osmd":
            rec["curve"] = _curve(trained.fit.history)
    except Exception:
        rec = {"error": traceback.format_exc()}
    rec = {"row": row, "seed": seed, "checkpoint": str(out), **rec, "secs": time.perf_counter() - t0,
           "settings": job["settings"]}  # fmt: skip
    if "error" not in rec:
        record_path(job).write_text(json.dumps(rec, indent=1))
    return rec


def method_of(row: str) -> str:
    return "pretrain" if row in PRETRAIN else DISTILL[row][1]


# ---- reporting ---------------------------------------------------------------------------------------------------


def stat(values, scale: float = 100.0, digits: int = 2, sign: bool = False) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float) * scale
    if len(v) == 0:
        return "n/a"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} ± {v.std(ddof=1):.{digits}f}"


def print_table(title: str, rows: tuple[str, ...], recs: list[dict], ref: str = "rgb") -> None:
    ok = [r for r in recs if "error" not in r]
    base = {r["seed"]: r["acer"] for r in ok if r["row"] == ref}
    print(f"### {title}\n")
    print(f"| model | test ACER (%) | APCER (%) | BPCER (%) | APCER print / replay (%) | ACER - {ref} (paired) "
          "| ACER at val-EER thr. (%) | paper ACER (%) | best epoch | seeds | s/run |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        rs = [r for r in ok if r["row"] == row]
        diff = "" if row == ref else stat([r["acer"] - base[r["seed"]] for r in rs if r["seed"] in base], sign=True)
        types = f"{stat([r['apcer[print]'] for r in rs])} / {stat([r['apcer[replay]'] for r in rs])}"
        paper = f"{PAPER[row]:.2f}" if row in PAPER else "-"
        best = f"{np.mean([r['best_epoch'] for r in rs]):.1f}" if rs else ""
        secs = f"{np.mean([r['secs'] for r in rs]):.1f}" if rs else ""
        print(f"| {LABELS[row]} | {stat([r['acer'] for r in rs])} | {stat([r['apcer'] for r in rs])} "
              f"| {stat([r['bpcer'] for r in rs])} | {types} | {diff} | {stat([r['eer_acer'] for r in rs])} "
              f"| {paper} | {best} | {len(rs)} | {secs} |")  # fmt: skip
    print()


def ordering(recs: list[dict], rows: list[str]) -> None:
    """The paper's ordering, RGB+D < OS-MD < each two-stage baseline < RGB-only in test ACER, as paired
    differences per seed."""
    ok = [r for r in recs if "error" not in r]
    acer = {(r["row"], r["seed"]): r["acer"] for r in ok}
    claims = [("rgbd", "osmd"), *[("osmd", b) for b in HALLUCINATE], *[(b, "rgb") for b in HALLUCINATE],
              ("osmd", "rgb"), ("depth", "osmd")]  # fmt: skip
    claims = [(a, b) for a, b in claims if a in rows and b in rows]
    if not claims:
        return
    print("### The paper's ordering (lower ACER first), paired per seed\n")
    print("| claim | ACER(a) - ACER(b), points (paired) | seeds where a < b | a = b |")
    print("|---|---:|---:|---:|")
    for a, b in claims:
        seeds = sorted({s for (r, s) in acer if r == a} & {s for (r, s) in acer if r == b})
        d = [acer[(a, s)] - acer[(b, s)] for s in seeds]
        print(f"| {a} < {b} | {stat(d, sign=True)} | {sum(x < 0 for x in d)} / {len(d)} "
              f"| {sum(x == 0 for x in d)} |")  # fmt: skip
    print()


def gradnorm_check(recs: list[dict], rows: list[str], last: int) -> None:
    ok = [r for r in recs if "error" not in r and r["row"] in GRADNORM_ROWS and r["row"] in rows and "curve" in r]
    if not ok:
        return
    print(f"### GradNorm check: weighted auxiliary losses (first epoch; mean of the last {last} epochs)\n")
    print("| run | epochs | alpha | beta | alpha (mmd + kl) | beta ctn | alpha (mmd + kl) / (beta ctn) "
          "| (alpha (mmd + kl) + beta ctn) / ce | ce | seeds |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in GRADNORM_ROWS:
        rs = [r for r in ok if r["row"] == row]
        if not rs:
            continue
        for which in ("first", "last"):
            per_seed = []
            for r in rs:
                curve = r["curve"][:1] if which == "first" else r["curve"][-last:]
                c = {k: np.array([e[k] for e in curve]) for k in ("ce", "mmd", "kl", "ctn", "alpha", "beta")}
                jdn, ctn = c["alpha"] * (c["mmd"] + c["kl"]), c["beta"] * c["ctn"]
                per_seed.append({"alpha": c["alpha"].mean(), "beta": c["beta"].mean(), "jdn": jdn.mean(),
                                 "ctn": ctn.mean(), "ratio": (jdn / ctn).mean(), "aux": ((jdn + ctn) / c["ce"]).mean(),
                                 "ce": c["ce"].mean()})  # fmt: skip
            n = len(rs[0]["curve"])
            span = "1" if which == "first" else f"{max(1, n - last + 1)}-{n}"

            def col(key, digits=4, per_seed=per_seed):
                return stat([p[key] for p in per_seed], scale=1.0, digits=digits)

            print(f"| {LABELS[row]} | {span} | {col('alpha')} | {col('beta')} | {col('jdn')} | {col('ctn')} "
                  f"| {col('ratio', 3)} | {col('aux', 4)} | {col('ce', 3)} | {len(rs)} |")  # fmt: skip
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Rows: " + ", ".join(ROWS) + ".")
    ap.add_argument("--work", default="out/osmd", help="work folder, reused between runs (default out/osmd)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 5; --quick: 1)")
    ap.add_argument("--rows", default=None, help="comma-separated subset of " + ",".join(ROWS) + " (default all; "
                    "the distill rows need rgb and depth, which are added)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=None, help=f"epochs of every model (default {EPOCHS}; --quick: 4); "
                    "hallucinate's stage 1 is half of them")  # fmt: skip
    ap.add_argument("--last", type=int, default=None, help=f"GradNorm check: last epochs averaged (default {LAST})")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 4 epochs (explicit options still win)")
    add_run_options(ap)
    args = ap.parse_args()

    def pick(value, name, default):
        return value if value is not None else (QUICK[name] if args.quick else default)

    seeds, epochs, last = pick(args.seeds, "seeds", 5), pick(args.epochs, "epochs", EPOCHS), pick(args.last, "last",
                                                                                                  LAST)  # fmt: skip
    rows = list(ROWS) if args.rows is None else [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        ap.error(f"--rows: a comma-separated subset of {','.join(ROWS)} (got {args.rows!r})")
    if any(r in DISTILL for r in rows):
        rows = list(dict.fromkeys(["rgb", "depth", *rows]))
    rows = [r for r in ROWS if r in rows]
    if min(seeds, args.jobs, args.threads, last) < 1:
        ap.error("--seeds, --jobs, --threads and --last must be at least 1")
    if epochs < 2:
        ap.error("--epochs must be at least 2 (hallucinate needs a stage 2)")
    stage1 = epochs // 2

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    data = Path(args.work) / "spoof-s16-v0.3"
    tables = {s: prepare_table(data, s) for s in range(seeds)}
    models = data / f"e{epochs}"
    base = {"cmkdtool": version("cmkdtool"), "epochs": epochs, "arch": "cnn2d", "channels": list(CHANNELS),
            "hidden": list(HIDDEN), "select": "acer"}  # fmt: skip
    settings = {r: {**base, "row": r, **({"stage1": stage1} if r in HALLUCINATE else {}),
                    **({"epochs": epochs * LONG[r]} if r in LONG else {})} for r in rows}  # fmt: skip
    common = {"folder": str(models), "epochs": epochs, "stage1": stage1, "reuse": args.reuse}
    pool = get_context("spawn").Pool(args.jobs, initializer=_init_worker, initargs=(args.threads,))
    recs: list[dict] = []

    def progress(n: int, total: int, rec: dict) -> None:
        if "error" in rec:
            status = f"FAILED\n{rec['error']}"
        else:
            status = (f"test ACER {rec['acer']:.4f} (APCER {rec['apcer']:.4f}, BPCER {rec['bpcer']:.4f}), "
                      f"best epoch {rec['best_epoch']}" + ("" if rec["finite"] else ", non-finite loss"))  # fmt: skip
        print(f"[{n}/{total}] {rec['row']} seed {rec['seed']}: {status} ({rec['secs']:.1f} s"
              f"{', reused' * rec.get('reused', 0)}, {time.perf_counter() - t0:.0f} s elapsed)",
              file=sys.stderr)  # fmt: skip

    try:
        first = [{**common, "row": r, "seed": s, "table": str(tables[s]), "settings": settings[r],
                  "deps_reused": True} for s in range(seeds) for r in rows if r in PRETRAIN]  # fmt: skip
        distill_rows = [r for r in rows if r in DISTILL]
        total = len(first) + seeds * len(distill_rows)
        for rec in pool.imap_unordered(train, first):
            recs.append(rec)
            progress(len(recs), total, rec)
        done = {(r["row"], r["seed"]): r for r in recs if "error" not in r}
        jobs = [{**common, "row": r, "seed": s, "table": str(tables[s]), "settings": settings[r],
                 "ordinary": done[("rgb", s)]["checkpoint"], "teacher": done[("depth", s)]["checkpoint"],
                 "deps_reused": bool(done[("rgb", s)].get("reused") and done[("depth", s)].get("reused"))}
                for s in range(seeds) for r in distill_rows
                if ("rgb", s) in done and ("depth", s) in done]  # fmt: skip
        # the slowest (osmd: three losses and GradNorm's two extra gradients) first, so the workers end together
        jobs.sort(key=lambda j: (DISTILL[j["row"]][1] != "osmd", j["seed"]))
        for rec in pool.imap_unordered(train, jobs):
            recs.append(rec)
            progress(len(recs), total, rec)
    finally:
        pool.close()
        pool.join()
    wall = time.perf_counter() - t0
    recs.sort(key=lambda r: (r["seed"], ROWS.index(r["row"])))

    import torch

    cpu = platform.processor() or platform.machine()
    print(f"## OS-MD on `synth spoof` (RGB student, depth privileged){' [--quick]' * args.quick}\n")
    print(f"cmkdtool {version('cmkdtool')}, torch {torch.__version__}, {os.cpu_count()} cores ({cpu}), {args.jobs} "
          f"worker(s) x {args.threads} torch thread(s), CPU, fp32, {date.today()}, load {load0:.2f} at start, "
          f"{wall:.0f} s wall\n")  # fmt: skip
    print(f"- data: `cmkdtool synth spoof --seed s` for s = 0-{seeds - 1} (one table per seed; defaults: 16 x 16, "
          "attack visibility 0.3, 1200 / 400 / 400 train / val / test rows, half attacks, print and replay); "
          "test: 200 bona fide, 100 print, 100 replay rows")  # fmt: skip
    print(f"- every model (no tuning): `--arch cnn2d --channels {','.join(map(str, CHANNELS))} --hidden "
          f"{','.join(map(str, HIDDEN))} --epochs {epochs} --select acer --seed s`, the engine's optimiser defaults "
          "(AdamW lr 1e-3, weight decay 0, batch 64, constant rate); the epoch kept is the one with the lowest val "
          "ACER (threshold 0.5)")  # fmt: skip
    print("- distill rows: `--teacher depth.safetensors --ordinary rgb.safetensors -i rgb` of the same seed, the "
          f"methods' defaults; `distill hallucinate --stage1-epochs {stage1}` (stage 2: the remaining "
          f"{epochs - stage1} epochs, selection among them)")  # fmt: skip
    print("- metrics: `eval --pad` on the test split: ACER = (APCER + BPCER) / 2, APCER pooled over both attack "
          "types, threshold 0.5 (argmax) unless said; 'ACER at val-EER thr.' uses `--pad-threshold val-eer`; "
          "'paired' = the difference to the same seed's RGB-only model; mean ± std (sample std) over seeds, in % "
          "(points for differences); paper = CASIA-SURF ACER of Tables 1, 4 and 5 (another data set: compare "
          "orderings, not values)")  # fmt: skip
    n_reused = sum(bool(r.get("reused")) for r in recs)
    if n_reused:
        print(f"- --reuse: {n_reused} of {len(recs)} models (and metrics) came from an earlier run")
    print()
    t1 = tuple(r for r in TABLE1 if r in rows)
    if t1:
        print_table("Table 1 analogue (RGB at test time unless said)", t1, recs)
        ordering(recs, rows)
    for title, group in (("Table 4 analogue: JDN ablation", TABLE4), ("Table 5 analogue: CTN ablation", TABLE5)):
        group = tuple(r for r in group if r in rows)
        if len(group) > 1:
            print_table(title, group, recs)
    controls = tuple(r for r in CONTROLS if r in rows)
    if len(controls) > 1:
        print_table("Controls: where does OS-MD's gain come from?", controls, recs)
    gradnorm_check(recs, rows, last)
    finish(recs, lambda r: f"{r['row']} seed {r['seed']}", args.json)


if __name__ == "__main__":
    main()
