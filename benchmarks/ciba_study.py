"""CIBA on synthetic data: a modality gap (Sec. 5.1.1-5.1.2, Fig. 5a) and the bottleneck-dimension sweep (Fig. 5b/5c).

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

Why this is a fair question: the teacher (an MLP with one hidden layer of ``hidden`` [64] ReLU units on xa,
trained on the large teacher table) knows the decisive directions of G far better than a student can learn them
from the small student table, so there is something worth transferring; but its features also carry S', which
the student cannot predict from xb (Theorem 1: MSE pulls the student's features towards the G part of the
teacher's, a collapse), while the student needs its own S as well.

Per seed, on the student table (same MLP shape for every student; AdamW lr ``lr`` [1e-3], ``epochs`` [200],
batch ``batch-size`` [32], the epoch with the best val accuracy kept):

1. ``no KD``: the student trained on xb with the labels alone (``pretrain``);
2. ``MSE``: ``distill feature --loss mse`` (task weight 1, feature weight 1, the paper's equal weights);
3. for every H in ``dims`` [1,2,4,...,hidden]: a DVIB bottleneck (``fit_bottleneck`` via ``sweep``: encoder
   hidden 256, KL weight ``kl-weight`` [1e-3], ``bottleneck-epochs`` [100], batch 64, lr 1e-3, the epoch with the
   lowest val loss) from the teacher's features to the no-KD student's features on the student table's train
   rows (Algorithm 1), its decoded-output spectrum on the val rows (Fig. 5b), and a ``distill ciba`` student
   (base mse, feature weight 1, task weight 1: h' into the first H dimensions, Algorithm 2);
4. the H ``choose_dim`` picks from the decoded spectra (tolerance ``tol`` [0.1] decades), which gives the
   ``CIBA`` row of the first table: no test label is used to pick it.

A reference row (not a method: it uses labels the student does not have) trains the student's MLP on xb of the
teacher table, with the teacher's settings: how much better a student could be, i.e. the room any transfer has.

The distilled layer (``layer`` [linear]) is the output of the first linear layer (``encoders.xa.0`` ->
``encoders.xb.0``, before the ReLU; the paper's App. D.2 takes RAVDESS features "after the first linear layer"):
h' is a real-valued Gaussian code, and a post-ReLU feature cannot take its negative values (``--layer embedding``
distils the ReLU output instead, for both MSE and CIBA). The effective rank and the Fig. 5a spectrum are of the
centred ``embedding`` (the ReLU output, input of the head) on the test rows; ``rankme`` is RankMe
(``cmkdtool.analysis.spectrum.summarize``).

Diagnostics of the sweep table: ``probe h'`` is the test accuracy of a linear probe (least squares on one-hot
labels, ridge 1, standardised inputs) of the teacher-side code h' fitted on the student table's train rows: how
much label information the bottleneck passes on; ``probe z[:H]`` is the same probe on the first H dimensions of
the CIBA student's distilled layer (the dimensions that received h').

Measured numbers and their reading: docs/benchmarks.md, section "CIBA on synthetic data".

    python benchmarks/ciba_study.py                    # 10 seeds; about 5 min on 1 CPU thread
    python benchmarks/ciba_study.py --seeds 2 --dims 1,4,16,64 --plot-spectrum '' --plot-sweep ''   # quick
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
from cmkdtool.pipelines.bottleneck import choose_dim, sweep
from cmkdtool.pipelines.train import distill, pretrain

METHODS = ("no KD", "MSE", "CIBA")


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
    model = ModelOptions(arch="mlp", hidden=[args.hidden])
    t_layer, s_layer = ("encoders.xa.0", "encoders.xb.0") if args.layer == "linear" else ("embedding", "embedding")

    tcfg = TrainConfig(epochs=args.teacher_epochs, batch_size=128, lr=args.lr, seed=seed)
    teacher, _ = pretrain(load_tensor_data(table_of(big, "teacher"), ["xa"]), model=model, config=tcfg, quiet=True)
    table = table_of(small, "student")
    data_a, data_b = load_tensor_data(table, ["xa"]), load_tensor_data(table, ["xb"])
    data = load_tensor_data(table, ["xa", "xb"])
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed + 1)
    y = small.label
    train_rows, test_rows = (np.nonzero(small.split == s)[0] for s in ("train", "test"))

    out: dict = {"seed": seed, "teacher_acc": accuracy(teacher, data_a), "methods": {}, "sweep": {}}

    def record(student, d) -> dict:
        sv, rankme = spectrum(features(student, d, "embedding", "test"))
        layer_rank = spectrum(features(student, d, s_layer, "test"))[1]
        return {"acc": accuracy(student, d), "rankme": rankme, "rankme_layer": layer_rank, "sv": sv.tolist()}

    baseline, _ = pretrain(data_b, model=model, role="student", config=cfg, quiet=True)
    out["methods"]["no KD"] = record(baseline, data_b)
    feature = registry.get("feature")
    mse_params = feature.params(loss="mse", student_layer=s_layer, teacher_layer=t_layer)
    mse, _ = distill(feature, mse_params, data, teacher, ["xb"], model=model, config=cfg, quiet=True)
    out["methods"]["MSE"] = record(mse, data)
    # reference, not a competitor: the student's modality trained on the teacher's large table (the headroom)
    data_big_b = load_tensor_data(table_of(big, "teacher"), ["xb"])
    oracle, _ = pretrain(data_big_b, model=model, role="student", config=tcfg, quiet=True)
    out["oracle"] = record(oracle, data_big_b)

    # Algorithm 1 on the student table: teacher features -> no-KD student features, one bottleneck per H
    zt = torch.from_numpy(features(teacher, data_a, t_layer))
    zs = torch.from_numpy(features(baseline, data_b, s_layer))
    fdata = feature_data(zt, zs, data.split, data.ids, "student")
    bcfg = TrainConfig(epochs=args.bottleneck_epochs, batch_size=64, lr=1e-3, seed=seed + 2)
    records = {"teacher": {"layer": t_layer}, "student": {"layer": s_layer}}
    options = BottleneckOptions(kl_weight=args.kl_weight)
    points = sweep(fdata, dims, options, bcfg, eval_split="val", records=records, quiet=True)
    chosen, change = choose_dim({p.dim: p.spectrum for p in points}, args.tol)
    out["chosen"] = chosen
    ciba = registry.get("ciba")
    for p in points:
        path = workdir / f"bn-s{seed}-h{p.dim}.safetensors"
        save_checkpoint(path, p.bottleneck.state_dict(), p.bottleneck.spec, {})
        params = ciba.params(bottleneck=str(path), base="mse", feature_weight=1.0, task_weight=1.0)
        student, _ = distill(ciba, params, data, teacher, ["xb"], model=model, config=cfg, quiet=True)
        with torch.no_grad():
            code = p.bottleneck.code(zt).numpy()
        zc = features(student, data, s_layer)[:, : p.dim]
        out["sweep"][p.dim] = {
            "decoded_sv": p.spectrum.tolist(),
            "decoded_rankme": float(p.summary["rankme"]),
            "r2": float(p.metrics["r2"]),
            "change": float(change[p.dim]),
            "probe_code": probe(code, y, train_rows, test_rows, args.classes),
            "probe_student": probe(zc, y, train_rows, test_rows, args.classes),
            **record(student, data),
        }
    out["methods"]["CIBA"] = out["sweep"][chosen]
    return out


def mean_std(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std():.3f}"


def log_mean(svs: list[list[float]]) -> np.ndarray:
    return np.log10(np.maximum(np.array(svs), 1e-12)).mean(0)


def plot_spectrum(runs: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    chosen = Counter(r["chosen"] for r in runs)
    labels = {
        "no KD": "w/o FD (no KD)",
        "MSE": "MSE",
        "CIBA": "CIBA (H chosen: " + ", ".join(f"{h}" + (f" x{c}" if c > 1 else "") for h, c in chosen.items()) + ")",
    }
    for name, color in zip(METHODS, ("tab:gray", "tab:red", "tab:blue"), strict=True):
        logs = log_mean([r["methods"][name]["sv"] for r in runs])
        rank = np.mean([r["methods"][name]["rankme"] for r in runs])
        ax.plot(np.arange(1, len(logs) + 1), logs, color=color, lw=1.8, label=f"{labels[name]}; RankMe {rank:.1f}")
    ax.set_xlabel("singular value index")
    ax.set_ylabel(r"$\log_{10}\ \sigma_i$ (centred embedding, test rows)")
    ax.set_title(f"Student feature spectrum (CIBA Fig. 5a-style), mean over {len(runs)} seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_sweep(runs: list[dict], dims: list[int], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(dims)))
    chosen = Counter(r["chosen"] for r in runs)
    for color, h in zip(colors, dims, strict=True):
        logs = log_mean([r["sweep"][h]["decoded_sv"] for r in runs])
        mark = f" (chosen x{chosen[h]})" if h in chosen else ""
        ax1.plot(np.arange(1, len(logs) + 1), logs, color=color, lw=1.6, label=f"H = {h}{mark}")
    ax1.set_xlabel("singular value index")
    ax1.set_ylabel(r"$\log_{10}\ \sigma_i$ of the decoded $\hat z'$ (val rows)")
    ax1.set_title("(b) bottleneck output spectrum per H", fontsize=10)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="lower left")

    acc = np.array([[r["sweep"][h]["acc"] for h in dims] for r in runs])
    ax2.errorbar(dims, acc.mean(0), yerr=acc.std(0), color="tab:blue", marker="o", capsize=3, label="CIBA (MSE base)")
    for name, color in (("MSE", "tab:red"), ("no KD", "tab:gray")):
        a = np.array([r["methods"][name]["acc"] for r in runs])
        ax2.axhline(a.mean(), color=color, ls="--", lw=1.4, label=f"{name} {a.mean():.3f}")
        ax2.axhspan(a.mean() - a.std(), a.mean() + a.std(), color=color, alpha=0.08, lw=0)
    top = chosen.most_common(1)[0][0]
    ax2.axvline(top, color="tab:blue", ls=":", lw=1.2)
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


def parse_floats(text: str, n: int) -> list[float]:
    values = [float(t) for t in text.split(",") if t.strip()]
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
    return values


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
    p.add_argument("--hidden", type=int, default=64, help="hidden (= feature) width of every model")
    p.add_argument("--epochs", type=int, default=200, help="epochs of every student")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--teacher-epochs", type=int, default=50)
    p.add_argument("--bottleneck-epochs", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--dims", default="", help="bottleneck dimensions H [1,2,4,... up to --hidden]")
    p.add_argument("--tol", type=float, default=0.1, help="choose_dim tolerance (decades)")
    p.add_argument("--layer", choices=["linear", "embedding"], default="linear", help="distilled layer (see above)")
    p.add_argument("--plot-spectrum", default="out/ciba_spectrum.png", help="Fig. 5a-style PNG ('' for none)")
    p.add_argument("--plot-sweep", default="out/ciba_sweep.png", help="Fig. 5b/5c-style PNG ('' for none)")
    p.add_argument("--json", default="", help="also write every number and spectrum to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
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
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ciba_study_") as tmp:
        for seed in range(args.seeds):
            runs.append(run_seed(seed, args, dims, Path(tmp)))
            r = runs[-1]
            accs = ", ".join(f"{m} {r['methods'][m]['acc']:.3f}" for m in METHODS)
            print(
                f"seed {seed}: teacher {r['teacher_acc']:.3f}; {accs} (H={r['chosen']}); "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - t0

    wg, wa, wb = args.weights
    print(
        f"\nsynth orthogonal: dim {args.dim}, D_g {args.general}, {args.classes} classes, weights w_g {wg:g} "
        f"w_a {wa:g} w_b {wb:g}; teacher table {args.teacher_train} train rows, student table {args.train} train / "
        f"{args.val} val / {args.test} test rows; MLP hidden {args.hidden}; distilled layer {args.layer}; "
        f"{args.seeds} seeds; torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )
    t_acc = [r["teacher_acc"] for r in runs]
    chosen = Counter(r["chosen"] for r in runs)
    print(f"teacher (xa, teacher table) test accuracy: {mean_std(t_acc)}\n")
    print("| student (xb) | test accuracy | minus no KD (paired) | RankMe of embedding | RankMe of distilled layer |")
    print("|---|---:|---:|---:|---:|")
    base = np.array([r["methods"]["no KD"]["acc"] for r in runs])

    def row(label: str, xs: list[dict]) -> None:
        gain = np.array([x["acc"] for x in xs]) - base
        cells = [mean_std([x["acc"] for x in xs]), f"{gain.mean():+.3f} ± {gain.std():.3f}"]
        cells += [mean_std([x[k] for x in xs]) for k in ("rankme", "rankme_layer")]
        print(f"| {label} | " + " | ".join(cells) + " |")

    row(f"(reference) xb trained on the teacher table ({args.teacher_train} rows)", [r["oracle"] for r in runs])
    for name in METHODS:
        label = name
        if name == "CIBA":
            label = "CIBA, H from choose_dim (" + ", ".join(f"{h}: {c} seeds" for h, c in sorted(chosen.items())) + ")"
        row(label, [r["methods"][name] for r in runs])
    most = args.hidden if args.layer == "embedding" else min(args.hidden, args.dim)
    print(f"\n(mean ± std over seeds; RankMe of the embedding out of {args.hidden}, of the distilled layer {most})\n")
    print(
        "| H | chosen (seeds) | bottleneck r2 (val) | RankMe of decoded z' | spectrum change | probe h' "
        "| CIBA test accuracy | CIBA - no KD | CIBA RankMe of embedding | probe z[:H] |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for h in dims:
        pts = [r["sweep"][h] for r in runs]
        gain = np.array([x["acc"] for x in pts]) - base
        print(
            f"| {h} | {chosen.get(h, 0)} | {mean_std([x['r2'] for x in pts])} "
            f"| {np.mean([x['decoded_rankme'] for x in pts]):.1f} | {np.mean([x['change'] for x in pts]):.3f} "
            f"| {mean_std([x['probe_code'] for x in pts])} | {mean_std([x['acc'] for x in pts])} "
            f"| {gain.mean():+.3f} ± {gain.std():.3f} | {np.mean([x['rankme'] for x in pts]):.1f} "
            f"| {mean_std([x['probe_student'] for x in pts])} |"
        )
    probe_note = (
        "(spectrum change: choose_dim's largest mean |log10 sigma| distance to a larger H, mean over seeds; "
        "probe: ridge least-squares probe fit on the student table's train rows, test accuracy)"
    )
    print(f"\n{probe_note}")
    if args.plot_spectrum:
        plot_spectrum(runs, Path(args.plot_spectrum), args)
        print(f"wrote {args.plot_spectrum}")
    if args.plot_sweep:
        plot_sweep(runs, dims, Path(args.plot_sweep), args)
        print(f"wrote {args.plot_sweep}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "dims": dims, "runs": runs}, indent=1))
        print(f"wrote {args.json}")
    print(f"\ntotal wall time {wall:.0f} s ({wall / args.seeds:.0f} s per seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
