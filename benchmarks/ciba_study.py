"""CIBA on synthetic data: accuracy with a trunk below the distilled layer, a no-teacher control, and the
bottleneck-dimension sweep (Sec. 5.1.1-5.1.2, Fig. 5a-c).

Setting (every number is an option; defaults in brackets)
---------------------------------------------------------
Per seed s, two tables from ``synth_orthogonal`` with the same ``seed=s`` (so the same label rule and the same
val and test rows; ``dim`` [32] channels per modality, ``general`` D_g [16] shared, ``classes`` [4]):

* the *teacher table*: ``teacher-train`` [5000] train rows drawn with ``train_seed = 10000 + s``;
* the *student table*: ``train`` [200] train rows (the default stream of ``seed``), ``val`` [500], ``test`` [2000].

xa = [G; S'] (teacher modality), xb = [G; S] (student modality), G, S', S orthogonal (completely separated).
The label is ``argmax_c  w_g <u_c, g>/sqrt(D_g) + w_a <v_c, s'>/sqrt(D_s) + w_b <w_c, s>/sqrt(D_s)`` with
``weights`` w_g, w_a, w_b [2,1,1]: the general part decides most, the teacher modality has its own decisive part
S' that the student can never see (the modality gap), and the student modality has its own decisive part S that
the teacher never sees.

The teacher is an MLP with one hidden layer of ``hidden`` [64] ReLU units on xa, trained on the large teacher table
(AdamW lr ``lr`` [1e-3], ``teacher-epochs`` [50], batch 128): it knows the decisive directions of G far better than
a student can learn them from the small student table, so there is something worth transferring, but its features
also carry S', which the student cannot predict from xb (Theorem 1).

Students and cases
------------------
Two student architectures on xb (AdamW lr ``lr``, ``epochs`` [200], batch ``batch-size`` [32], the epoch with the
best val accuracy kept):

* ``trunk``: an MLP with ``trunk-layers`` [2] hidden layers of ``hidden`` ReLU units; the distilled layer is the
  last hidden layer, so a trunk (the first layer) lies below it. This is where the paper cuts its H dimensions:
  RAVDESS a 1024-unit layer above three conv layers, VGG-Sound after ResNet pooling.
* ``flat`` ("no trunk"): the one-hidden-layer MLP, distilled at its only layer, a linear map of the raw input (the
  setting of the earlier study): the sub-dimensional loss then pins H rows of that map and nothing below them.

and two kinds of distilled layer (``--cases`` [trunk-linear,trunk-embedding,flat-linear]):

* ``linear``: the output of the distilled layer's Linear, before its ReLU (student ``encoders.xb.2`` for the trunk,
  ``encoders.xb.0`` flat; teacher ``encoders.xa.0``): h' is a real-valued Gaussian code and can be matched there;
* ``embedding``: the ReLU output (the head's input) of student and teacher, which cannot take h''s negative values.

Per seed and architecture, ``no KD`` is the student trained with the labels alone (``pretrain``). Per case:

1. ``MSE``: ``distill feature --loss mse`` between the case's layers (task weight 1, feature weight 1; Eq. 1's
   ``1/2 ||s - t||^2`` per row, batch mean);
2. Algorithm 1: a DVIB bottleneck (``fit_bottleneck`` via ``sweep``: encoder hidden 256, KL weight ``kl-weight``
   [1e-3], ``bottleneck-epochs`` [100], batch 64, lr 1e-3, the epoch with the lowest val loss) from the teacher's
   features to the no-KD student's features on the student table's train rows, one per H in ``dims``
   [1,2,4,...,hidden], with its decoded-output spectrum on the val rows (Fig. 5b);
3. the H ``choose_dim`` picks from the decoded spectra (tolerance ``tol`` [0.1] decades): the sweep rule, no test
   label used; ``CIBA`` is ``distill ciba`` (base mse, Algorithm 2's ``||z[:H] - h'||^2`` per row, feature weight
   ``ciba-weight`` [1; 0.5 gives Eq. 1's 1/2 form, the scale distill ciba had before issue 17], task weight 1)
   with that H's bottleneck (``--all-dims``: a CIBA student for every H, for the sweep plot);
4. ``control`` (no teacher): a bottleneck of the same H and options fitted from the no-KD student's features at the
   distilled layer to themselves, and ``distill ciba`` with the no-KD student as the frozen "teacher": the same
   loss, the same H, the same kind of target code, but no information from xa. What it gains over no KD is
   regularisation; CIBA minus control (paired) is what the teacher adds.

Rows report the test accuracy, its paired difference to the no-KD student of the same architecture and seed (mean
± sample std over seeds, and in how many seeds it is higher), and RankMe (``cmkdtool.analysis.spectrum.summarize``)
of the centred ``embedding`` and of the distilled layer on the test rows. The trunk cases also show the one-layer
no-KD student (what the trunk itself changes). A reference row (``--reference``; not a method, it uses labels
the student does not have) trains the trunk student on xb of the teacher table with the teacher's settings.

Diagnostics of the sweep table: ``probe h'`` is the test accuracy of a linear probe (least squares on one-hot
labels, ridge 1, standardised inputs) of the teacher-side code h' fitted on the student table's train rows: how
much label information the bottleneck passes on; ``probe z[:H]`` is the same probe on the first H dimensions of
the CIBA student's distilled layer (the dimensions that received h').

Measured numbers and their reading: docs/benchmarks.md, section "CIBA on synthetic data".

    python benchmarks/ciba_study.py --json out/ciba_study.json    # 10 seeds, 3 cases; ~2 min a seed on 1 thread
    python benchmarks/ciba_study.py --seeds 2 --cases trunk-linear --dims 1,4,16,64   # quick
    python benchmarks/ciba_study.py --cases flat-linear --all-dims --ciba-weight 0.5 \\
        --plot-spectrum docs/img/ciba_spectrum.png --plot-sweep docs/img/ciba_sweep.png   # Fig. 5a-c as measured
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cmkdtool.analysis.spectrum import layer_features, singular_values, summarize
from cmkdtool.data.synth import synth_orthogonal
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.inference import predict
from cmkdtool.io.checkpoints import save_checkpoint
from cmkdtool.io.tables import FeatureTable, build_table
from cmkdtool.methods import registry
from cmkdtool.methods.bottleneck import feature_data
from cmkdtool.nn.specs import BottleneckOptions, ModelOptions
from cmkdtool.pipelines.bottleneck import choose_dim, fit_bottleneck, sweep
from cmkdtool.pipelines.train import distill, pretrain

METHODS = ("no KD", "MSE", "CIBA", "control")


def table_of(sd, name: str) -> FeatureTable:
    return FeatureTable(
        build_table(sd.ids, {"xa": sd.xa, "xb": sd.xb}, label=sd.label, split=sd.split),
        sources=[name],
        meta={"class_names": sd.class_names},
    )


def accuracy(model, data, split: str = "test") -> float:
    idx = data.index(split)
    logits, _ = predict(model, data, idx)
    return float((logits.argmax(1) == data.target[idx]).float().mean())


def features(model, data, layer: str, split: str | None = None) -> np.ndarray:
    rows = np.arange(len(data.ids)) if split is None else data.index(split).cpu().numpy()
    return layer_features(model, data, layer, rows)


def spectrum(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Singular values of the centred rows of ``x`` and their RankMe."""
    sv = singular_values(x, center=True)
    return sv, float(summarize(sv, x.shape)["rankme"])


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int) -> float:
    """Test accuracy of a ridge (1.0) least-squares probe on one-hot labels, standardised inputs, fit on ``train``."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
    z = np.c_[(x - mu) / sd, np.ones(len(x))].astype(np.float64)
    a = z[train]
    coef = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(classes)[y[train]])
    return float(((z[test] @ coef).argmax(1) == y[test]).mean())


CASES = ("trunk-linear", "trunk-embedding", "flat-linear", "flat-embedding")


def case_layers(case: str, trunk_layers: int) -> tuple[str, str]:
    """(teacher layer, student layer) of a case: the distilled layer's Linear output (before its ReLU) or the
    ReLU output (``embedding``); the trunk student's distilled layer is its last hidden layer."""
    arch, kind = case.split("-")
    if kind == "embedding":
        return "embedding", "embedding"
    depth = trunk_layers if arch == "trunk" else 1
    return "encoders.xa.0", f"encoders.xb.{2 * (depth - 1)}"


def run_seed(seed: int, args, dims: list[int], workdir: Path) -> dict:
    wg, wa, wb = args.weights
    common = dict(
        dim=args.dim,
        general=args.general,
        num_classes=args.classes,
        weight_general=wg,
        weight_specific_a=wa,
        weight_specific_b=wb,
        n_val=args.val,
        n_test=args.test,
        seed=seed,
    )
    big = synth_orthogonal(n_train=args.teacher_train, train_seed=10_000 + seed, **common)
    small = synth_orthogonal(n_train=args.train, **common)
    for part in ("val", "test"):  # the two tables share their val and test rows
        assert np.array_equal(big.xa[big.split == part], small.xa[small.split == part])
    models = {
        "flat": ModelOptions(arch="mlp", hidden=[args.hidden]),
        "trunk": ModelOptions(arch="mlp", hidden=[args.hidden] * args.trunk_layers),
    }
    tcfg = TrainConfig(epochs=args.teacher_epochs, batch_size=128, lr=args.lr, seed=seed)
    teacher, _ = pretrain(
        load_tensor_data(table_of(big, "teacher"), ["xa"]), model=models["flat"], config=tcfg, quiet=True
    )
    table = table_of(small, "student")
    data_a, data_b = load_tensor_data(table, ["xa"]), load_tensor_data(table, ["xb"])
    data = load_tensor_data(table, ["xa", "xb"])
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed + 1)
    bcfg = TrainConfig(epochs=args.bottleneck_epochs, batch_size=64, lr=1e-3, seed=seed + 2)
    options = BottleneckOptions(kl_weight=args.kl_weight)
    y = small.label
    train_rows, test_rows = (np.nonzero(small.split == s)[0] for s in ("train", "test"))
    ciba, feature = registry.get("ciba"), registry.get("feature")

    out: dict = {"seed": seed, "teacher_acc": accuracy(teacher, data_a), "baseline": {}, "cases": {}}

    def record(student, d, layer: str, keep_sv: bool = False) -> dict:
        sv, rankme = spectrum(features(student, d, "embedding", "test"))
        rec = {
            "acc": accuracy(student, d),
            "rankme": rankme,
            "rankme_layer": spectrum(features(student, d, layer, "test"))[1],
        }
        return {**rec, "sv": sv.tolist()} if keep_sv else rec

    def ciba_student(bn, name: str, teacher_model, model: ModelOptions):
        path = workdir / f"{name}.safetensors"
        save_checkpoint(path, bn.state_dict(), bn.spec, {})
        params = ciba.params(bottleneck=str(path), base="mse", feature_weight=args.ciba_weight, task_weight=1.0)
        return distill(ciba, params, data, teacher_model, ["xb"], model=model, config=cfg, quiet=True)[0]

    baselines = {}
    for arch in sorted({c.split("-")[0] for c in args.cases} | {"flat"}):
        baselines[arch], _ = pretrain(data_b, model=models[arch], role="student", config=cfg, quiet=True)
        out["baseline"][arch] = record(baselines[arch], data_b, "embedding", keep_sv=True)
    if args.reference:  # not a competitor: the trunk student on xb of the teacher's large table (the headroom)
        data_big_b = load_tensor_data(table_of(big, "teacher"), ["xb"])
        oracle, _ = pretrain(data_big_b, model=models["trunk"], role="student", config=tcfg, quiet=True)
        out["reference"] = record(oracle, data_big_b, "embedding")

    for case in args.cases:
        arch = case.split("-")[0]
        t_layer, s_layer = case_layers(case, args.trunk_layers)
        baseline = baselines[arch]
        res: dict = {"layers": [t_layer, s_layer], "methods": {}, "sweep": {}}
        res["methods"]["no KD"] = record(baseline, data_b, s_layer, keep_sv=True)
        params = feature.params(loss="mse", student_layer=s_layer, teacher_layer=t_layer)
        mse, _ = distill(feature, params, data, teacher, ["xb"], model=models[arch], config=cfg, quiet=True)
        res["methods"]["MSE"] = record(mse, data, s_layer, keep_sv=True)

        # Algorithm 1 on the student table: teacher features -> no-KD student features, one bottleneck per H
        zt = torch.from_numpy(features(teacher, data_a, t_layer))
        zs = torch.from_numpy(features(baseline, data_b, s_layer))
        fdata = feature_data(zt, zs, data.split, data.ids, "student")
        records = {"teacher": {"layer": t_layer}, "student": {"layer": s_layer}}
        points = sweep(fdata, dims, options, bcfg, eval_split="val", records=records, quiet=True)
        chosen, change = choose_dim({p.dim: p.spectrum for p in points}, args.tol)
        res["chosen"] = chosen
        for p in points:
            entry = {
                "decoded_sv": p.spectrum.tolist(),
                "decoded_rankme": float(p.summary["rankme"]),
                "r2": float(p.metrics["r2"]),
                "change": float(change[p.dim]),
            }
            with torch.no_grad():
                entry["probe_code"] = probe(p.bottleneck.code(zt).numpy(), y, train_rows, test_rows, args.classes)
            if args.all_dims or p.dim == chosen:
                student = ciba_student(p.bottleneck, f"bn-{case}-s{seed}-h{p.dim}", teacher, models[arch])
                zc = features(student, data, s_layer)[:, : p.dim]
                entry["probe_student"] = probe(zc, y, train_rows, test_rows, args.classes)
                entry.update(record(student, data, s_layer, keep_sv=True))
            res["sweep"][p.dim] = entry
        res["methods"]["CIBA"] = res["sweep"][chosen]

        # the no-teacher control: the same H and bottleneck options, fitted from the no-KD student to itself
        self_data = feature_data(zs, zs, data.split, data.ids, "student")
        self_records = {"teacher": {"layer": s_layer}, "student": {"layer": s_layer}}
        bn, _ = fit_bottleneck(self_data, chosen, options, bcfg, records=self_records, quiet=True)
        control = ciba_student(bn, f"self-{case}-s{seed}", baseline, models[arch])
        res["methods"]["control"] = record(control, data, s_layer, keep_sv=True)
        out["cases"][case] = res
    return out


def mean_std(values, digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {sd:.{digits}f}"


def paired(values, base) -> str:
    """Mean ± sample std of the paired differences (in points) and in how many seeds ``values`` is higher."""
    d = 100 * (np.asarray(values, dtype=float) - np.asarray(base, dtype=float))
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    ties = int((d == 0).sum())
    return f"{d.mean():+.1f} ± {sd:.1f} | {int((d > 0).sum())}/{len(d)}" + (f" ({ties} tied)" if ties else "")


def log_mean(svs: list[list[float]]) -> np.ndarray:
    return np.log10(np.maximum(np.array(svs), 1e-12)).mean(0)


def plot_spectrum(runs: list[dict], case: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    chosen = Counter(r["cases"][case]["chosen"] for r in runs)
    labels = {
        "no KD": "w/o FD (no KD)",
        "MSE": "MSE",
        "CIBA": "CIBA (H chosen: " + ", ".join(f"{h}" + (f" x{c}" if c > 1 else "") for h, c in chosen.items()) + ")",
        "control": "control (no teacher, same H)",
    }
    for name, color in zip(METHODS, ("tab:gray", "tab:red", "tab:blue", "tab:green"), strict=True):
        logs = log_mean([r["cases"][case]["methods"][name]["sv"] for r in runs])
        rank = np.mean([r["cases"][case]["methods"][name]["rankme"] for r in runs])
        ax.plot(np.arange(1, len(logs) + 1), logs, color=color, lw=1.8, label=f"{labels[name]}; RankMe {rank:.1f}")
    ax.set_xlabel("singular value index")
    ax.set_ylabel(r"$\log_{10}\ \sigma_i$ (centred embedding, test rows)")
    ax.set_title(f"Student feature spectrum ({case}, CIBA Fig. 5a-style), mean over {len(runs)} seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_sweep(runs: list[dict], case: str, dims: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [r["cases"][case]["sweep"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(dims)))
    chosen = Counter(r["cases"][case]["chosen"] for r in runs)
    for color, h in zip(colors, dims, strict=True):
        logs = log_mean([s[h]["decoded_sv"] for s in sweeps])
        mark = f" (chosen x{chosen[h]})" if h in chosen else ""
        ax1.plot(np.arange(1, len(logs) + 1), logs, color=color, lw=1.6, label=f"H = {h}{mark}")
    ax1.set_xlabel("singular value index")
    ax1.set_ylabel(r"$\log_{10}\ \sigma_i$ of the decoded $\hat z'$ (val rows)")
    ax1.set_title(f"(b) bottleneck output spectrum per H ({case})", fontsize=10)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="lower left")

    acc = np.array([[s[h]["acc"] for h in dims] for s in sweeps])
    ax2.errorbar(dims, acc.mean(0), yerr=acc.std(0), color="tab:blue", marker="o", capsize=3, label="CIBA (MSE base)")
    for name, color in (("MSE", "tab:red"), ("no KD", "tab:gray"), ("control", "tab:green")):
        a = np.array([r["cases"][case]["methods"][name]["acc"] for r in runs])
        ax2.axhline(a.mean(), color=color, ls="--", lw=1.4, label=f"{name} {a.mean():.3f}")
        ax2.axhspan(a.mean() - a.std(), a.mean() + a.std(), color=color, alpha=0.08, lw=0)
    ax2.axvline(chosen.most_common(1)[0][0], color="tab:blue", ls=":", lw=1.2)
    ax2.text(
        0.02,
        0.97,
        "dotted: chosen H (" + ", ".join(f"H={h}: {c} seeds" for h, c in sorted(chosen.items())) + ")",
        transform=ax2.transAxes,
        va="top",
        fontsize=8,
        color="tab:blue",
    )
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(dims, [str(h) for h in dims])
    ax2.set_xlabel("bottleneck dimension H")
    ax2.set_ylabel("student test accuracy")
    ax2.set_title(f"(c) accuracy against H, mean ± std over {len(runs)} seeds", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_paired(runs: list[dict], cases: list[str], path: Path, title: str) -> None:
    """Per case, the per-seed accuracy differences to no KD (points) of MSE, CIBA and the control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases), 3.8), sharey=True, squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        ms = [r["cases"][case]["methods"] for r in runs]
        base = np.array([m["no KD"]["acc"] for m in ms])
        for i, (name, color) in enumerate((("MSE", "tab:red"), ("CIBA", "tab:blue"), ("control", "tab:green"))):
            d = 100 * (np.array([m[name]["acc"] for m in ms]) - base)
            ax.scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, color=color, s=14, alpha=0.8)
            ax.errorbar([i + 0.3], [d.mean()], yerr=[d.std(ddof=1) if len(d) > 1 else 0], color="k", marker="_",
                        ms=12, capsize=3)  # fmt: skip
        ax.axhline(0, color="tab:gray", lw=1, ls="--")
        ax.set_xticks([0, 1, 2], ["MSE", "CIBA", "control\n(no teacher)"])
        ax.set_title(case, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("test accuracy minus no KD (points, paired)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_floats(text: str, n: int) -> list[float]:
    values = [float(t) for t in text.split(",") if t.strip()]
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
    return values


def parse_cases(text: str) -> list[str]:
    cases = [t.strip() for t in text.split(",") if t.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        raise argparse.ArgumentTypeError(f"cases are {', '.join(CASES)}; got {text!r}")
    return cases


def report(runs: list[dict], args, dims: list[int]) -> None:
    """The markdown tables: one per case, then the sweep diagnostics."""
    t_acc = [r["teacher_acc"] for r in runs]
    print(f"teacher (xa, teacher table) test accuracy: {mean_std(t_acc)}\n")
    flat = [r["baseline"]["flat"]["acc"] for r in runs]
    for case in args.cases:
        arch = case.split("-")[0]
        cs = [r["cases"][case] for r in runs]
        t_layer, s_layer = cs[0]["layers"]
        chosen = Counter(c["chosen"] for c in cs)
        hs = ", ".join(f"{h}: {n} seeds" for h, n in sorted(chosen.items()))
        name = "trunk, " + f"{args.trunk_layers} hidden layers" if arch == "trunk" else "no trunk, 1 hidden layer"
        print(f"### {case} ({name}; distilled {t_layer} -> {s_layer}; H {hs})\n")
        print(
            "| student (xb) | test accuracy | minus no KD (points, paired) | seeds higher | RankMe of embedding "
            "| RankMe of distilled layer |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        base = [c["methods"]["no KD"]["acc"] for c in cs]

        def row(label: str, xs: list[dict], ref=base, first=cs[0]["methods"]["no KD"]) -> None:
            acc = [x["acc"] for x in xs]
            ranks = " | ".join(mean_std([x[k] for x in xs], 1) for k in ("rankme", "rankme_layer"))
            diff = "— | —" if xs[0] is first else paired(acc, ref)
            print(f"| {label} | {mean_std(acc)} | {diff} | {ranks} |")

        if arch == "trunk" and args.reference and "reference" in runs[0]:
            row(
                f"(reference) trunk student on the teacher table ({args.teacher_train} rows)",
                [r["reference"] for r in runs],
            )
        row("no KD", [c["methods"]["no KD"] for c in cs])
        if arch == "trunk":
            acc = [r["baseline"]["flat"]["acc"] for r in runs]
            print(f"| no KD, one hidden layer (no trunk) | {mean_std(acc)} | {paired(acc, base)} | | |")
        for m in ("MSE", "CIBA", "control"):
            label = {"CIBA": "CIBA (H by the sweep rule)", "control": "control: bottleneck no-KD -> no-KD, no teacher"}
            row(label.get(m, m), [c["methods"][m] for c in cs])
        ciba = [c["methods"]["CIBA"]["acc"] for c in cs]
        ctrl = [c["methods"]["control"]["acc"] for c in cs]
        print(f"| CIBA minus control (what the teacher adds) | | {paired(ciba, ctrl)} | | |")
        if arch == "trunk":  # against the best student without a teacher here, the one without a trunk
            for m in ("CIBA", "control"):
                acc = [c["methods"][m]["acc"] for c in cs]
                print(f"| {m} minus no KD one-layer (no trunk) | | {paired(acc, flat)} | | |")
        print()
    print(
        "(mean ± sample std over seeds; paired: the difference to no KD of the same architecture and seed, in "
        f"points; seeds higher: in how many of {len(runs)} seeds the row beats no KD; one-layer no KD: "
        f"{mean_std(flat)})\n"
    )
    for case in args.cases:
        cs = [r["cases"][case] for r in runs]
        chosen = Counter(c["chosen"] for c in cs)
        base = np.array([c["methods"]["no KD"]["acc"] for c in cs])
        print(f"sweep, {case}:\n")
        print(
            "| H | chosen (seeds) | bottleneck r2 (val) | RankMe of decoded z' | spectrum change | probe h' "
            "| CIBA test accuracy | CIBA - no KD (points) | CIBA RankMe of embedding | probe z[:H] |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for h in dims:
            pts = [c["sweep"][h] for c in cs]
            cells = [f"| {h} | {chosen.get(h, 0)} | {mean_std([x['r2'] for x in pts])}"]
            cells.append(f"{np.mean([x['decoded_rankme'] for x in pts]):.1f}")
            cells.append(f"{np.mean([x['change'] for x in pts]):.3f}")
            cells.append(mean_std([x["probe_code"] for x in pts]))
            trained = [(x, b) for x, b in zip(pts, base, strict=True) if "acc" in x]
            if len(trained) == len(pts):
                gain = 100 * (np.array([x["acc"] for x, _ in trained]) - base)
                cells += [
                    mean_std([x["acc"] for x, _ in trained]),
                    f"{gain.mean():+.1f} ± {gain.std(ddof=1) if len(gain) > 1 else 0:.1f}",
                ]
                cells += [
                    f"{np.mean([x['rankme'] for x, _ in trained]):.1f}",
                    mean_std([x["probe_student"] for x, _ in trained]),
                ]
            else:
                cells += ["" if not trained else f"({len(trained)} seeds)", "", "", ""]
            print(" | ".join(cells) + " |")
        print(
            "\n(spectrum change: choose_dim's largest mean |log10 sigma| distance to a larger H, mean over seeds; "
            "probe: ridge least-squares probe fit on the student table's train rows, test accuracy; CIBA columns "
            "for every H with --all-dims, else empty)\n"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="repeats (data seeds 0..N-1)")
    p.add_argument("--dim", type=int, default=32, help="channels per modality")
    p.add_argument("--general", type=int, default=16, help="shared channels D_g")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument(
        "--weights", type=lambda t: parse_floats(t, 3), default=[2.0, 1.0, 1.0], help="label weights w_g,w_a,w_b"
    )
    p.add_argument("--train", type=int, default=200, help="train rows of the student table")
    p.add_argument("--teacher-train", type=int, default=5000, help="train rows of the teacher's table")
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=64, help="hidden (= feature) width of every layer of every model")
    p.add_argument("--trunk-layers", type=int, default=2, help="hidden layers of the trunk student (>= 2)")
    p.add_argument(
        "--cases",
        type=parse_cases,
        default=["trunk-linear", "trunk-embedding", "flat-linear"],
        help=f"comma-separated, of {', '.join(CASES)} [trunk-linear,trunk-embedding,flat-linear]",
    )
    p.add_argument("--epochs", type=int, default=200, help="epochs of every student")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--teacher-epochs", type=int, default=50)
    p.add_argument("--bottleneck-epochs", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--dims", default="", help="bottleneck dimensions H [1,2,4,... up to --hidden]")
    p.add_argument("--tol", type=float, default=0.1, help="choose_dim tolerance (decades)")
    p.add_argument(
        "--ciba-weight",
        type=float,
        default=1.0,
        help="feature weight of CIBA and the control [1: Algorithm 2's ||z[:H] - h'||^2; 0.5: Eq. 1's 1/2 form]",
    )
    p.add_argument("--all-dims", action="store_true", help="a CIBA student for every H (for --plot-sweep)")
    p.add_argument("--reference", action="store_true", help="the reference row (trunk student on the teacher table)")
    p.add_argument("--plot-spectrum", default="", help="Fig. 5a-style PNG of the first case ('' for none)")
    p.add_argument("--plot-sweep", default="", help="Fig. 5b/5c-style PNG of the first case (needs --all-dims)")
    p.add_argument("--plot-paired", default="", help="PNG of the per-seed paired differences of every case")
    p.add_argument("--json", default="", help="also write every number and spectrum to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--from-json", default="", help="print the tables of a saved --json run (trains nothing)")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for r in saved["runs"]:  # JSON keys are strings
            for c in r["cases"].values():
                c["sweep"] = {int(h): v for h, v in c["sweep"].items()}
        report(saved["runs"], argparse.Namespace(**saved["args"]), saved["dims"])
        return 0
    if args.dims:
        dims = sorted({int(t) for t in args.dims.split(",") if t.strip()})
    else:
        dims = [2**k for k in range(args.hidden.bit_length()) if 2**k <= args.hidden]
    if not dims or dims[0] < 1 or dims[-1] > args.hidden:
        p.error(f"every H must lie in 1..{args.hidden}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if not 0 < args.general < args.dim:
        p.error("--general must lie in 1..dim-1")
    if args.trunk_layers < 2:
        p.error("--trunk-layers must be at least 2 (one layer is the 'flat' case)")
    if args.plot_sweep and not args.all_dims:
        p.error("--plot-sweep needs --all-dims (a CIBA student for every H)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ciba_study_") as tmp:
        for seed in range(args.seeds):
            runs.append(run_seed(seed, args, dims, Path(tmp)))
            r = runs[-1]
            parts = []
            for case, c in r["cases"].items():
                accs = " ".join(f"{m} {c['methods'][m]['acc']:.3f}" for m in METHODS)
                parts.append(f"{case}: {accs} (H={c['chosen']})")
            print(
                f"seed {seed}: teacher {r['teacher_acc']:.3f}; "
                + "; ".join(parts)
                + f"; {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            if args.json:  # after every seed, so that a partial run keeps what it has
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"args": vars(args), "dims": dims, "runs": runs}, indent=1))
    wall = time.perf_counter() - t0

    wg, wa, wb = args.weights
    print(
        f"\nsynth orthogonal: dim {args.dim}, D_g {args.general}, {args.classes} classes, weights w_g {wg:g} "
        f"w_a {wa:g} w_b {wb:g}; teacher table {args.teacher_train} train rows, student table {args.train} train / "
        f"{args.val} val / {args.test} test rows; MLP width {args.hidden}; trunk {args.trunk_layers} hidden layers; "
        f"{args.seeds} seeds; torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )
    report(runs, args, dims)
    if args.plot_spectrum:
        plot_spectrum(runs, args.cases[0], Path(args.plot_spectrum))
        print(f"wrote {args.plot_spectrum}")
    if args.plot_sweep:
        plot_sweep(runs, args.cases[0], dims, Path(args.plot_sweep))
        print(f"wrote {args.plot_sweep}")
    if args.plot_paired:
        title = f"synth orthogonal, {args.train} student rows: paired differences over {len(runs)} seeds"
        plot_paired(runs, args.cases, Path(args.plot_paired), title)
        print(f"wrote {args.plot_paired}")
    if args.json:
        print(f"wrote {args.json}")
    print(f"\ntotal wall time {wall:.0f} s ({wall / args.seeds:.0f} s per seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
