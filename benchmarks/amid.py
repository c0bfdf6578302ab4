"""AMID (Chen et al., CVPR 2023) on a CPU: its Table 4 (the shortcut), Table 5 / supp. Table 2 (ablations) and
Figs. 4-5, with ``cmkdtool distill amid`` (an online full-modality teacher trained with the student).

Two data sets, each row trained with seeds 0 .. N-1 (``--seeds``, default 5) and the same shared settings:

  mfh  ``synth mfh`` (``cmkdtool.pipelines.run_synth_mfh(seed=s)``: one table per seed, the generator's defaults:
       d = 20 decisive dims, gamma 0.5, randn hyperplane, 50 + 50 columns, 200 / 200 / 1000 rows, binary); target
       ``xb`` (sees 10 of the 20 decisive dims), auxiliary ``xa`` (sees all 20). Every model ``--arch mlp --hidden
       64 --epochs 60`` (the engine's other defaults: AdamW lr 1e-3, batch 64, constant rate, best epoch on val
       accuracy), so that 40 AMID epochs follow the paper's 20 warm-up epochs
  av   ``examples/av_digits`` as ``benchmarks/baselines.py`` builds it (its ``prepare_tables``, its work folder
       ``out/baselines/pcN-dataD``, reused when the tables are there): target ``image`` [1, 8, 8], auxiliary
       ``audio`` (MFCC mean+std, 80 numbers); students ``--arch cnn2d --epochs 30`` (channels 32,64, hidden 256,
       AdamW lr 1e-3, batch 64, constant rate, best epoch on val accuracy): baselines.py's shared settings; with
       ``--adv-start 20`` that leaves 10 AMID epochs. The teacher alone is ``--arch mlp`` on both columns (cnn2d
       cannot read the 80-number audio vector; the engine has one arch per model)

Rows (``--rows``, comma list; default all):

  none        student alone: ``pretrain -i TARGET --role student``
  teacher     teacher alone: ``pretrain -i AUX -i TARGET`` (a late-fusion model on both modalities)
  mi-s        L_MI_s: ``distill amid --aux AUX --ablate mi-a,adv``
  mi-sa       L_MI_s + L_MI_a: ``--ablate adv`` (also supp. Table 2's "w/o L_adv": the same configuration)
  amid        AMID: the paper's defaults (tau 0.5, a1 4, a2 1.6, a3 1, adv-start 20, beta 0.9, lambda 0,1)
  nce         AMID with L_nce: ``--mi-loss ccl``
  fixed, no-warmup, no-d2, no-dynamic, no-jsd, no-mi-s, no-mi-a: ``--ablate fixed|warmup|d2|dynamic|jsd|mi-s|mi-a``

Every model is trained through the library (``run_pretrain`` / ``run_distill`` with ``AMIDParams``), evaluated
with ``run_eval`` on the test split (av: also cross-modal-paper retrieval R@1 / R@5, test queries against the train
gallery, as baselines.py), ``--jobs`` worker processes with ``--threads`` torch threads each. The online teacher's
accuracy is the history's ``val/teacher_accuracy`` (g(M) on the val split; eval does not compute a test accuracy
of the online teacher): at the student's best (kept) epoch and at the last epoch. Markdown tables to stdout (mean
± std over seeds, sample std), progress to stderr; Figs. 4 and 5 as PNGs (``--plots``, default docs/img) with
their curves as CSV in the work folder.

    python benchmarks/amid.py                                # both data sets, 5 seeds, every row
    python benchmarks/amid.py --quick                        # smoke run: 1 seed, few epochs, adv-start 3
    python benchmarks/amid.py --datasets av --rows none,amid --seeds 3 --reuse
"""

from __future__ import annotations

import argparse
import csv
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from baselines import add_run_options, finish  # noqa: E402  (the reproduction scripts' shared run options)

# row: (label, kind, ablate, mi_loss); kind: pretrain-student, pretrain-teacher or amid
ROWS = {
    "none": ("student alone (no KD)", "student", [], "amid"),
    "teacher": ("teacher alone (fusion, pretrain)", "teacher", [], "amid"),
    "mi-s": ("L_MI_s (`--ablate mi-a,adv`)", "amid", ["mi-a", "adv"], "amid"),
    "mi-sa": ("L_MI_s + L_MI_a (`--ablate adv`)", "amid", ["adv"], "amid"),
    "amid": ("AMID (defaults)", "amid", [], "amid"),
    "nce": ("AMID with L_nce (`--mi-loss ccl`)", "amid", [], "ccl"),
    "fixed": ("fixed teacher (`--ablate fixed`)", "amid", ["fixed"], "amid"),
    "no-warmup": ("w/o warm-up (`--ablate warmup`)", "amid", ["warmup"], "amid"),
    "no-d2": ("w/o D2 (`--ablate d2`)", "amid", ["d2"], "amid"),
    "no-dynamic": ("w/o dynamic weights (`--ablate dynamic`)", "amid", ["dynamic"], "amid"),
    "no-jsd": ("w/o L_jsd (`--ablate jsd`)", "amid", ["jsd"], "amid"),
    "no-mi-s": ("w/o L_MI_s (`--ablate mi-s`)", "amid", ["mi-s"], "amid"),
    "no-mi-a": ("w/o L_MI_a (`--ablate mi-a`)", "amid", ["mi-a"], "amid"),
}
TABLE4 = ("none", "teacher", "mi-s", "mi-sa", "amid", "nce")
TABLE5 = ("amid", "fixed", "no-warmup", "no-d2", "no-dynamic", "no-jsd", "no-mi-s", "no-mi-a", "mi-sa")
T5_LABEL = {"mi-sa": "w/o L_adv (`--ablate adv`; = the L_MI_s + L_MI_a runs)"}
# the paper's UCF51 top-1 (%): Table 4 student / teacher, Table 5 and supp. Table 2 student
PAPER = {
    "none": (66.7, None),
    "teacher": (None, 74.3),
    "mi-s": (69.8, 71.2),
    "mi-sa": (72.7, 76.0),
    "amid": (73.8, 75.7),
    "nce": (72.3, 74.3),
    "fixed": (66.0, None),
    "no-warmup": (65.8, None),
    "no-d2": (72.8, None),
    "no-dynamic": (72.7, None),
    "no-jsd": (70.4, None),
    "no-mi-s": (68.9, None),
    "no-mi-a": (70.3, None),
}
PAPER_T5 = {**{k: v[0] for k, v in PAPER.items()}, "mi-sa": 72.8}  # supp. Table 2's "w/o L_adv"
CURVES = ("val/accuracy", "val/teacher_accuracy", "train/cos_class", "train/cos_sample", "train/lam1")
TERMS = ("ce_s", "ce_m", "jsd", "mi_s", "mi_a", "adv", "disc_loss")
MFH = {"target": "xb", "aux": "xa", "epochs": 60, "hidden": [64]}
QUICK = {"seeds": 1, "mfh_epochs": 8, "epochs": 6, "adv_start": 3}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def record_path(job: dict) -> Path:
    return Path(job["folder"]) / f"seed{job['seed']}" / f"{job['row']}.json"


def train(job: dict) -> dict:
    """One (data set, row, seed): train, save the checkpoint and its history, evaluate on test."""
    path = record_path(job)
    if job["reuse"] and path.is_file() and path.with_suffix(".safetensors").is_file():
        rec = json.loads(path.read_text())
        if rec.get("settings") == job["settings"] and "error" not in rec:
            return {**rec, "reused": True}
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.engine.state import load_state, prefixed
    from cmkdtool.methods.amid import AMIDParams
    from cmkdtool.methods.registry import get
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines import run_distill, run_eval, run_pretrain

    t0 = time.perf_counter()
    row, seed = job["row"], job["seed"]
    _, kind, ablate, mi_loss = ROWS[row]
    out = path.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    # the training state (written at the last epoch for --resume) holds the last epoch's student: evaluated too
    state = path.with_suffix(".state.safetensors")
    state.unlink(missing_ok=True)
    config = TrainConfig(epochs=job["epochs"], seed=seed)
    tables, target, aux = job["tables"], job["target"], job["aux"]
    common = {"config": config, "device": "cpu", "quiet": True, "state_file": str(state)}
    try:
        if kind == "student":
            model = ModelOptions(**job["student_model"])
            trained = run_pretrain(tables, [target], model=model, role="student", **common)
        elif kind == "teacher":
            model = ModelOptions(**job["teacher_model"])
            trained = run_pretrain(tables, [target, aux], model=model, **common)
        else:
            params = AMIDParams(aux=[aux], ablate=list(ablate), mi_loss=mi_loss, adv_start=job["adv_start"])
            trained = run_distill(get("amid"), tables, None, [target], params=params,
                                  model=ModelOptions(**job["student_model"]), **common)  # fmt: skip
        trained.save(str(out))
        tensors, header = load_state(str(state))
        if header["epoch"] != job["epochs"]:
            raise RuntimeError(f"{state}: saved after epoch {header['epoch']}, not the last")
        last = prefixed(prefixed(tensors, "model."), "student.")
        trained.model.load_state_dict(last)  # strict: every key of the student
        last_out = out.with_name(f"{row}.last.safetensors")
        trained.save(str(last_out))
        state.unlink()
        eval_tables = tables if kind == "teacher" else job["target_tables"]
        retrieval = job["retrieval"]

        def evaluate(checkpoint: Path) -> dict:
            ev = run_eval(str(checkpoint), eval_tables, split="test", topk=(1, 5) if retrieval else (1,),
                          retrieval=retrieval, gallery="train", device="cpu", quiet=True)  # fmt: skip
            return {**ev.metrics, "rows": int(len(ev.rows))}

        m, m_last = evaluate(out), evaluate(last_out)
        hist = trained.fit.history
        rec = {
            "accuracy": m["accuracy"],
            "accuracy_last": m_last["accuracy"],
            "best_epoch": trained.fit.best_epoch,
            "epochs": len(hist),
            "curves": {k: [h.get(k) for h in hist] for k in CURVES if any(k in h for h in hist)},
            "terms": {k: hist[-1][f"train/{k}"] for k in TERMS if f"train/{k}" in hist[-1]},
            "finite": bool(np.all(np.isfinite([v for k, v in hist[-1].items() if k.startswith("train/")]))),
            "test_rows": m["rows"],
        }
        if retrieval:
            rec.update({"r@1": m["r@1"], "r@5": m["r@5"], "r@1_last": m_last["r@1"], "r@5_last": m_last["r@5"]})
    except Exception:
        rec = {"error": traceback.format_exc()}
    rec = {"dataset": job["dataset"], "row": row, "seed": seed, **rec, "secs": time.perf_counter() - t0,
           "settings": job["settings"]}  # fmt: skip
    if "error" not in rec:
        path.write_text(json.dumps(rec))
    return rec


# ---- summaries -------------------------------------------------------------------------------------------------


def at(rec: dict, key: str, epoch: int | None = None) -> float | None:
    """The history's ``key`` at ``epoch`` (1-based; None: the last epoch)."""
    values = rec.get("curves", {}).get(key)
    if not values:
        return None
    v = values[(epoch or len(values)) - 1]
    return None if v is None else float(v)


def pct(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float) * 100
    if len(v) == 0:
        return ""
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def signed(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float) * 100
    if len(v) == 0:
        return ""
    if len(v) == 1:
        return f"{v[0]:+.1f}"
    return f"{v.mean():+.1f} ± {v.std(ddof=1):.1f}"


def paper(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def by_seed(recs: list[dict], row: str) -> dict[int, dict]:
    return {r["seed"]: r for r in recs if r["row"] == row and "error" not in r}


def amid_mean(rec: dict, key: str, adv_start: int) -> float | None:
    """The mean of the history's ``key`` over the epochs with the AMID terms on (after the warm-up)."""
    values = rec.get("curves", {}).get(key)
    start = 0 if rec["row"] == "no-warmup" else adv_start
    if not values or len(values) <= start:
        return None
    return float(np.mean(values[start:]))


def in_phase(r: dict, adv_start: int) -> bool:
    """Whether the kept (best) epoch is one with the AMID terms on."""
    return r["row"] == "no-warmup" or r["best_epoch"] > adv_start


def paired(rs: list[dict], ref: dict[int, dict], key: str) -> str:
    return signed([r[key] - ref[r["seed"]][key] for r in rs if r["seed"] in ref])


def print_table4(recs: list[dict], rows: list[str], adv_start: int) -> None:
    base = by_seed(recs, "none")
    print("| row | student test acc., kept epoch (%) | - no KD (paired) | student test acc., last epoch (%) | "
          "- no KD, last (paired) | online teacher val acc., kept epoch (%) | online teacher val acc., last epoch "
          "(%) | online teacher val acc., mean over the AMID epochs (%) | kept epoch in AMID phase | paper UCF51 "
          "student / teacher | s/run |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in [r for r in TABLE4 if r in rows]:
        rs = list(by_seed(recs, row).values())
        p_s, p_t = PAPER[row]
        secs = f"{np.mean([r['secs'] for r in rs]):.1f}" if rs else ""
        ref = f"{paper(p_s) or '-'} / {paper(p_t) or '-'}"
        if row == "teacher":
            print(f"| {ROWS[row][0]}: its test acc. kept / last epoch {pct([r['accuracy'] for r in rs])} / "
                  f"{pct([r['accuracy_last'] for r in rs])} | | | | | "
                  f"{pct([at(r, 'val/accuracy', r['best_epoch']) for r in rs])} | "
                  f"{pct([at(r, 'val/accuracy') for r in rs])} | | | {ref} | {secs} |")  # fmt: skip
            continue
        d, d_last = ("", "") if row == "none" else (paired(rs, base, "accuracy"), paired(rs, base, "accuracy_last"))
        t_best = pct([at(r, "val/teacher_accuracy", r["best_epoch"]) for r in rs])
        t_last = pct([at(r, "val/teacher_accuracy") for r in rs])
        t_mean = pct([amid_mean(r, "val/teacher_accuracy", adv_start) for r in rs])
        phase = "" if row == "none" else f"{sum(in_phase(r, adv_start) for r in rs)}/{len(rs)}"
        print(f"| {ROWS[row][0]} | {pct([r['accuracy'] for r in rs])} | {d} | "
              f"{pct([r['accuracy_last'] for r in rs])} | {d_last} | {t_best} | {t_last} | {t_mean} | {phase} | "
              f"{ref} | {secs} |")  # fmt: skip
    print()
    mi_s, mi_sa, teacher = by_seed(recs, "mi-s"), by_seed(recs, "mi-sa"), by_seed(recs, "teacher")
    if mi_s and mi_sa:
        pairs = [(mi_s[s], mi_sa[s]) for s in mi_s if s in mi_sa]
        key = "val/teacher_accuracy"
        kept = signed([at(a, key, a["best_epoch"]) - at(b, key, b["best_epoch"]) for a, b in pairs])
        last = signed([at(a, key) - at(b, key) for a, b in pairs])
        mean = signed([amid_mean(a, key, adv_start) - amid_mean(b, key, adv_start) for a, b in pairs])
        print(f"- the shortcut (paper: teacher 71.2 with L_MI_s alone against 76.0 with both MI terms, -4.8): online "
              f"teacher val acc. of L_MI_s minus L_MI_s + L_MI_a, paired: {kept} at the kept epoch, {last} at the "
              f"last epoch, {mean} averaged over the AMID epochs ({len(pairs)} seeds)")  # fmt: skip
    amid = by_seed(recs, "amid")
    if amid and teacher:
        pairs = [(amid[s], teacher[s]) for s in amid if s in teacher]
        last = signed([at(a, "val/teacher_accuracy") - at(b, "val/accuracy") for a, b in pairs])
        print(f"- online teacher (AMID) minus teacher alone, val acc. at the last epoch, paired: {last} (paper: 75.7 "
              "- 74.3 = +1.4)")  # fmt: skip
    print()


def print_table5(recs: list[dict], rows: list[str], adv_start: int) -> None:
    base, amid = by_seed(recs, "none"), by_seed(recs, "amid")
    print("| row | student test acc., kept epoch (%) | - AMID (paired) | - no KD (paired) | student test acc., last "
          "epoch (%) | - AMID, last (paired) | online teacher val acc., kept / last epoch (%) | kept epoch in AMID "
          "phase | paper UCF51 student | s/run |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in [r for r in TABLE5 if r in rows]:
        rs = list(by_seed(recs, row).values())
        label = T5_LABEL.get(row, ROWS[row][0])
        d_amid, d_last = (
            ("", "") if row == "amid" else (paired(rs, amid, "accuracy"), paired(rs, amid, "accuracy_last"))
        )
        teacher = (f"{pct([at(r, 'val/teacher_accuracy', r['best_epoch']) for r in rs])} / "
                   f"{pct([at(r, 'val/teacher_accuracy') for r in rs])}")  # fmt: skip
        secs = f"{np.mean([r['secs'] for r in rs]):.1f}" if rs else ""
        print(f"| {label} | {pct([r['accuracy'] for r in rs])} | {d_amid} | {paired(rs, base, 'accuracy')} | "
              f"{pct([r['accuracy_last'] for r in rs])} | {d_last} | {teacher} | "
              f"{sum(in_phase(r, adv_start) for r in rs)}/{len(rs)} | {paper(PAPER_T5[row])} | {secs} |")  # fmt: skip
    print()


def print_retrieval(recs: list[dict], rows: list[str]) -> None:
    print("| row | test acc. (%) | R@1 (%) | R@5 (%) | last epoch: test acc. / R@1 / R@5 (%) | seeds |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in [r for r in ROWS if r in rows]:
        rs = [r for r in by_seed(recs, row).values() if "r@1" in r]
        if rs:
            label = ROWS[row][0] + (" (image + audio queries and gallery)" if row == "teacher" else "")
            print(f"| {label} | {pct([r['accuracy'] for r in rs])} | {pct([r['r@1'] for r in rs])} | "
                  f"{pct([r['r@5'] for r in rs])} | {pct([r['accuracy_last'] for r in rs])} / "
                  f"{pct([r['r@1_last'] for r in rs])} / {pct([r['r@5_last'] for r in rs])} | {len(rs)} |")  # fmt: skip
    print()


def print_terms(recs: list[dict]) -> None:
    rs = list(by_seed(recs, "amid").values())
    if not rs:
        return
    terms = {k: np.mean([r["terms"][k] for r in rs if k in r["terms"]]) for k in TERMS}
    weights = {"mi_s": 4.0, "mi_a": 1.6, "adv": 1.0}
    shown = ", ".join(f"{k} {v:.3g}" + (f" (x {weights[k]:g} = {weights[k] * v:.3g})" if k in weights else "")
                      for k, v in terms.items() if np.isfinite(v))  # fmt: skip
    print(f"- AMID's loss terms at the last epoch (train means, mean over seeds): {shown}")


def mean_curve(recs: list[dict], row: str, fn) -> tuple[np.ndarray, np.ndarray] | None:
    rs = list(by_seed(recs, row).values())
    if not rs:
        return None
    arr = np.array([fn(r) for r in rs], dtype=float)
    return arr.mean(0), (arr.std(0, ddof=1) if len(rs) > 1 else np.zeros(arr.shape[1]))


def gap(r: dict) -> list[float]:
    return [t - s for t, s in zip(r["curves"]["val/teacher_accuracy"], r["curves"]["val/accuracy"], strict=True)]


def cos_class(r: dict) -> list[float]:
    return r["curves"]["train/cos_class"]


FIGS = {
    "gap": ("Fig. 4: online teacher - student val accuracy (points)", gap, 100.0, ("amid", "mi-sa", "mi-s")),
    "cos": ("Fig. 5: train/cos_class (c2: mean cos(M_i, S_j), same class)", cos_class, 1.0,
            ("amid", "no-d2", "mi-sa", "mi-s")),
}  # fmt: skip
CURVE_LABEL = {"amid": "AMID", "mi-sa": "L_MI_s + L_MI_a (w/o L_adv)", "mi-s": "L_MI_s", "no-d2": "w/o D2"}


def figures(all_recs: dict[str, list[dict]], names: dict[str, str], adv_start: dict[str, int], plots: Path,
            work: Path) -> list[str]:  # fmt: skip
    """Figs. 4 and 5 (mean ± std over seeds per epoch), one panel per data set; CSVs of the curves in ``work``."""
    written = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        log("matplotlib is missing: the curves go to CSV only")
    for fig_name, (title, fn, scale, rows) in FIGS.items():
        csv_path = work / f"amid_{fig_name}.csv"
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["dataset", "row", "epoch", "mean", "std", "seeds"])
            for ds, recs in all_recs.items():
                for row in rows:
                    c = mean_curve(recs, row, fn)
                    if c is not None:
                        n = len(by_seed(recs, row))
                        for e, (m, s) in enumerate(zip(*c, strict=True), 1):
                            w.writerow([ds, row, e, f"{m * scale:.6g}", f"{s * scale:.6g}", n])
        written.append(str(csv_path))
        if plt is None:
            continue
        fig, axes = plt.subplots(1, len(all_recs), figsize=(5.5 * len(all_recs), 3.8), squeeze=False)
        for ax, (ds, recs) in zip(axes[0], all_recs.items(), strict=True):
            for row in rows:
                c = mean_curve(recs, row, fn)
                if c is None:
                    continue
                m, s = c[0] * scale, c[1] * scale
                x = np.arange(1, len(m) + 1)
                n = len(by_seed(recs, row))
                ax.plot(x, m, label=f"{CURVE_LABEL[row]} ({n} seeds)")
                ax.fill_between(x, m - s, m + s, alpha=0.15)
            ax.axvline(adv_start[ds] + 0.5, color="grey", ls=":", lw=1)
            ax.set_title(names[ds], fontsize=9)
            ax.set_xlabel("epoch (dotted: end of the warm-up)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        axes[0][0].set_ylabel("points" if fig_name == "gap" else "cosine")
        fig.suptitle(title + ", mean ± std over seeds", fontsize=10)
        fig.tight_layout()
        png = plots / f"amid_{fig_name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110)
        plt.close(fig)
        written.append(str(png))
    return written


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Rows: " + ", ".join(ROWS))
    ap.add_argument("--datasets", default="mfh,av", help="comma list of mfh, av (default both)")
    ap.add_argument("--rows", default=None, help="comma list of rows (default all; see the module docstring)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 5; --quick: 1)")
    ap.add_argument("--epochs", type=int, default=None, help="av epochs (default baselines.py's 30; --quick: 6)")
    ap.add_argument("--mfh-epochs", type=int, default=None, help="synth mfh epochs (default 60; --quick: 8)")
    ap.add_argument("--adv-start", type=int, default=None,
                    help="AMID warm-up epochs (default the paper's 20; --quick: 3)")  # fmt: skip
    ap.add_argument("--per-class", type=int, default=None, help="av pairs per digit (default baselines.py's 150)")
    ap.add_argument("--data-seed", type=int, default=0, help="av make_data.py --seed (default 0)")
    ap.add_argument("--data-work", default="out/baselines",
                    help="baselines.py's work folder, where the av tables are (default out/baselines)")  # fmt: skip
    ap.add_argument("--work", default="out/amid", help="work folder for the models (default out/amid)")
    ap.add_argument("--plots", default=None, help="folder of the PNGs (default docs/img; --quick: WORK/img)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 8 (mfh) / 6 (av) epochs, adv-start 3")
    add_run_options(ap)
    args = ap.parse_args()

    try:  # av_digits: baselines.py's data preparation and shared settings
        from baselines import EPOCHS, PER_CLASS, STUDENT_ARCH, prepare_tables
    except ImportError as e:
        if "av" in args.datasets.split(","):
            ap.error(f"--datasets av needs benchmarks/baselines.py (its prepare_tables): {e}")
        EPOCHS, PER_CLASS, STUDENT_ARCH, prepare_tables = 30, 150, "cnn2d", None

    def pick(value, name, default):
        return value if value is not None else (QUICK[name] if args.quick and name in QUICK else default)

    seeds = pick(args.seeds, "seeds", 5)
    epochs = pick(args.epochs, "epochs", EPOCHS)
    mfh_epochs = pick(args.mfh_epochs, "mfh_epochs", MFH["epochs"])
    adv_start = pick(args.adv_start, "adv_start", 20)
    per_class = args.per_class or PER_CLASS
    datasets = [d for d in args.datasets.split(",") if d]
    rows = list(ROWS) if args.rows is None else [r for r in args.rows.split(",") if r]
    if not datasets or any(d not in ("mfh", "av") for d in datasets):
        ap.error(f"--datasets: a comma list of mfh, av (got {args.datasets!r})")
    if not rows or any(r not in ROWS for r in rows):
        ap.error(f"--rows: a comma list of {', '.join(ROWS)} (got {args.rows!r})")
    rows = [r for r in ROWS if r in rows]
    if min(seeds, epochs, mfh_epochs, args.jobs, args.threads) < 1 or adv_start < 0:
        ap.error("--seeds, --epochs, --mfh-epochs, --jobs and --threads must be at least 1, --adv-start at least 0")
    for ds, e in (("av", epochs), ("mfh", mfh_epochs)):
        if ds in datasets and adv_start >= e:
            log(f"warning: {ds}: --adv-start {adv_start} >= {e} epochs: no AMID epoch after the warm-up")

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    work = Path(args.work)
    plots = Path(args.plots) if args.plots else (work / "img" if args.quick else ROOT / "docs" / "img")
    cm = version("cmkdtool")
    jobs, names, adv = [], {}, {}
    if "mfh" in datasets:
        from cmkdtool.pipelines.synth import run_synth_mfh

        folder = work / f"mfh-e{mfh_epochs}-a{adv_start}"
        model = {"arch": "mlp", "hidden": MFH["hidden"]}
        for s in range(seeds):
            table = work / "mfh-data" / f"seed{s}.parquet"
            if not table.is_file():
                table.parent.mkdir(parents=True, exist_ok=True)
                partial = table.with_name(f"partial-{table.name}")
                run_synth_mfh(seed=s).write(str(partial))
                os.replace(partial, table)
            for row in rows:
                settings = {"cmkdtool": cm, "last": 1, "epochs": mfh_epochs, "adv_start": adv_start, "model": model}
                jobs.append({"dataset": "mfh", "row": row, "seed": s, "folder": str(folder), "tables": [str(table)],
                             "target_tables": [str(table)], "target": MFH["target"], "aux": MFH["aux"],
                             "epochs": mfh_epochs, "adv_start": adv_start, "student_model": model,
                             "teacher_model": model, "retrieval": False, "settings": settings,
                             "reuse": args.reuse})  # fmt: skip
        names["mfh"] = f"synth mfh (target xb, aux xa; mlp hidden 64, {mfh_epochs} epochs, warm-up {adv_start})"
        adv["mfh"] = adv_start
    if "av" in datasets:
        data_folder = Path(args.data_work) / f"pc{per_class}-data{args.data_seed}"
        data_folder.mkdir(parents=True, exist_ok=True)
        image, audio = prepare_tables(data_folder, per_class, args.data_seed)
        folder = work / f"av-pc{per_class}-data{args.data_seed}-e{epochs}-a{adv_start}"
        student, teacher = {"arch": STUDENT_ARCH}, {"arch": "mlp"}
        for s in range(seeds):
            for row in rows:
                settings = {"cmkdtool": cm, "last": 1, "epochs": epochs, "adv_start": adv_start, "model": student,
                            "teacher_model": teacher}  # fmt: skip
                jobs.append({"dataset": "av", "row": row, "seed": s, "folder": str(folder),
                             "tables": [str(audio), str(image)], "target_tables": [str(image)], "target": "image",
                             "aux": "audio", "epochs": epochs, "adv_start": adv_start, "student_model": student,
                             "teacher_model": teacher, "retrieval": True, "settings": settings,
                             "reuse": args.reuse})  # fmt: skip
        names["av"] = f"av_digits (target image cnn2d, aux audio; {epochs} epochs, warm-up {adv_start})"
        adv["av"] = adv_start
    # the slow ones first (av's cnn2d), so that the workers end together
    jobs.sort(key=lambda j: (j["dataset"] != "av", j["seed"], rows.index(j["row"])))
    recs = []
    pool = get_context("spawn").Pool(args.jobs, initializer=_init_worker, initargs=(args.threads,))
    try:
        for n, rec in enumerate(pool.imap_unordered(train, jobs), 1):
            recs.append(rec)
            if "error" in rec:
                status = f"FAILED\n{rec['error']}"
            else:
                t_last = at(rec, "val/teacher_accuracy")
                status = (
                    f"test acc. {rec['accuracy']:.4f}, best epoch {rec['best_epoch']}"
                    + (f", teacher val (last) {t_last:.4f}" if t_last is not None else "")
                    + ("" if rec["finite"] else ", NON-FINITE loss")
                )
            log(f"[{n}/{len(jobs)}] {rec['dataset']} {rec['row']} seed {rec['seed']}: {status} ({rec['secs']:.1f} s"
                f"{', reused' * rec.get('reused', 0)}, {time.perf_counter() - t0:.0f} s elapsed)")  # fmt: skip
    finally:
        pool.close()
        pool.join()
    recs.sort(key=lambda r: (r["dataset"], r["seed"], rows.index(r["row"])))
    all_recs = {ds: [r for r in recs if r["dataset"] == ds] for ds in datasets}
    written = figures(all_recs, names, adv, plots, work)
    wall = time.perf_counter() - t0

    import torch

    import cmkdtool

    print(f"## AMID (CVPR 2023) reproduction: Tables 4, 5 and supp. Table 2 on CPU{' [--quick]' * args.quick}\n")
    print(f"cmkdtool {cm} (imported from {Path(cmkdtool.__file__).parent.parent}), torch {torch.__version__}, "
          f"{os.cpu_count()} cores ({cpu_name()}), {args.jobs} worker(s) x {args.threads} torch thread(s), CPU, "
          f"fp32, {date.today()}, load {load0:.2f} at start, {wall:.0f} s wall\n")  # fmt: skip
    print(f"- seeds 0-{seeds - 1} (training seed = s); mean ± std over seeds (sample std); paired differences "
          "against the same seed's run, in points")  # fmt: skip
    print(f"- shared settings for every row of a data set: the engine's defaults (AdamW lr 1e-3, wd 0, batch 64, "
          f"constant rate, the best epoch on the student's val accuracy kept) except the architecture and epochs "
          f"below; AMID's own defaults from the paper (tau 0.5, a1 4, a2 1.6, a3 1, --adv-start {adv_start}, beta "
          "0.9, lambda-init 0,1, Eq. 8 with sums, true JSD, D lr 1e-4), no tuning")  # fmt: skip
    print(
        "- kept epoch = the engine's default selection (best student val accuracy; the checkpoint); last epoch = the "
        "student after the last epoch (from the run's training state, `--state-file`): the same runs, evaluated "
        "twice\n"
        "- online teacher = g(M), M = F([S, A]) on the val split (`val/teacher_accuracy` of the history; eval "
        "computes no test accuracy for it), at the student's kept (best val) epoch and at the last epoch; "
        "'kept epoch in AMID phase' = seeds whose kept epoch has the MI / adversarial terms on (> warm-up)"
    )
    if "mfh" in datasets:
        print(f"- mfh: `run_synth_mfh(seed=s)`, one table per seed (the generator's defaults: 20 decisive dims, "
              f"gamma 0.5, xa sees all 20, xb 10 of them, 50 columns each, randn hyperplane, 200 train / 200 val / "
              f"1000 test rows, binary); target xb, aux xa; every model `--arch mlp --hidden 64 --epochs "
              f"{mfh_epochs}` ({max(mfh_epochs - adv_start, 0)} AMID epochs after the warm-up); teacher alone = "
              "`pretrain -i xa -i xb` with the same options")  # fmt: skip
    if "av" in datasets:
        print(f"- av: examples/av_digits as `benchmarks/baselines.py` prepares it (`{args.data_work}/pc{per_class}-"
              f"data{args.data_seed}`, {10 * per_class} pairs, id-hash split 80/10/10); target image [1, 8, 8], aux "
              f"audio MFCC mean+std (80); students `--arch {STUDENT_ARCH} --epochs {epochs}` (channels 32,64, hidden "
              f"256; {max(epochs - adv_start, 0)} AMID epochs after the warm-up), baselines.py's settings; teacher "
              f"alone = `pretrain -i image -i audio --arch mlp --epochs {epochs}` (hidden 256 per input, late "
              "fusion: cnn2d cannot read the audio vector)")  # fmt: skip
    if args.quick:
        print(f"- --quick: {seeds} seed, {mfh_epochs} / {epochs} epochs, --adv-start {adv_start}: a smoke run")
    n_reused = sum(bool(r.get("reused")) for r in recs)
    if n_reused:
        print(f"- --reuse: {n_reused} of {len(recs)} runs came from an earlier run")
    print()
    for ds in datasets:
        recs_ds = all_recs[ds]
        print(f"### {names[ds]}\n")
        if any(r in rows for r in TABLE4):
            print(f"Table 4 ({ds}):\n")
            print_table4(recs_ds, rows, adv[ds])
        if any(r in rows for r in TABLE5 if r != "amid"):
            print(f"Table 5 / supp. Table 2 ({ds}):\n")
            print_table5(recs_ds, rows, adv[ds])
        if ds == "av":
            print("Retrieval (av, AMID Table 2's protocol: test queries against the train gallery, cosine of the "
                  "model's embedding, hit = same class among the k nearest; chance R@1 about 10 %, R@5 about 41 %):"
                  "\n")  # fmt: skip
            print_retrieval(recs_ds, rows)
        print_terms(recs_ds)
        print()
    if written:
        print("Figures and curves: " + ", ".join(f"`{w}`" for w in written) + "\n")
    finish(recs, lambda r: f"{r['dataset']} {r['row']} seed {r['seed']}", args.json)


if __name__ == "__main__":
    main()
