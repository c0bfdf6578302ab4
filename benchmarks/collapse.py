"""Dimensional collapse under cross-modal feature distillation (CIBA, Sec. 3.5 Fig. 3; App. D.1; Theorem 1).

For each number of shared (modality-general) channels D_g:

1. ``synth_orthogonal(dim=64, general=D_g)``: xa = [G; S'] (teacher side), xb = [G; S] (student side), the three
   parts orthogonal over the samples of each split (Gram-Schmidt);
2. pretrain a linear teacher on xa: ``mlp`` with ``hidden [64]`` and ``activation identity`` (a linear feature
   extractor ``encoders.xa.0`` and a linear classifier), as App. D.1's two-layer linear model;
3. distil a student of the same shape on xb with ``distill feature`` (loss mse, embedding -> embedding,
   ``task_weight`` 0 by default: feature distillation only, as in the theorem), full batch, last epoch kept;
4. take the singular values of the student's feature extractor ``encoders.xb.0.weight`` (64 x 64);
5. compare the final distillation loss with Corollary 1.1 (Eq. 6): L_FD(inf) = 1/2 ||W' (O; S')||_F^2.

Theorem 1: rank(W*) <= min(rank(W'), D_g), so the spectrum drops off a cliff after index D_g (0-based: between
sigma[D_g - 1] and sigma[D_g]). The script prints, per D_g (mean over seeds, and the worst seed), sigma[D_g - 1],
sigma[D_g], their ratio (the drop) and the rank at 99% of the energy sum(sigma^2), and draws the Fig. 3-style plot:
log10 singular value against index, one line per D_g (mean of log10 over seeds, min-max band), a dotted
vertical line at each D_g.

Corollary 1.1 per sample (``feature_mse`` averages over the batch, Eq. 1 sums): the prediction is
1/2 mean_i ||W'_{:, D_g:} s'_i||^2 over the train rows, with W' the teacher's ``encoders.xa.0.weight`` and s'_i
the teacher-specific channels of x'_i after the teacher's own standardisation (``teacher.norm['xa']``), i.e. the
teacher's feature of the input with its general channels zeroed, minus its bias. The measured value is the
``train/feat`` of the last full-batch epoch (the loss at the weights before the last step); with
``--task-weight > 0`` the task loss pulls the student away from the FD optimum, so the measured loss sits above
the prediction.

The models standardise their inputs with train-split mean and std and their linear layers have a bias, so the
optimum is the regression on centred data; ``synth orthogonal`` centres each part before orthogonalising it, so the
parts stay orthogonal after centring and the bound holds exactly.

    python benchmarks/collapse.py                        # D_g in 2,4,8,16,32; 3 seeds; out/collapse.png
    python benchmarks/collapse.py --task-weight 1        # FD + task loss (Fig. 3b); adds test accuracy
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cmkdtool.data.synth import synth_orthogonal
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.inference import predict
from cmkdtool.io.tables import FeatureTable, build_table
from cmkdtool.methods import registry
from cmkdtool.methods.feature import FeatureParams
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.pipelines.train import distill, pretrain

try:  # the project's spectrum module; numpy's SVD otherwise
    from cmkdtool.analysis.spectrum import singular_values, summarize
except ImportError:  # pragma: no cover
    singular_values = summarize = None

LAYER = "encoders.xb.0.weight"


def spectrum(w: torch.Tensor) -> tuple[np.ndarray, int]:
    """Singular values (float64, descending) of ``w`` and its rank at 99% energy."""
    if singular_values is not None:
        sv = singular_values(w)
        return sv, int(summarize(sv, tuple(w.shape))["rank99"])
    sv = np.linalg.svd(w.detach().double().cpu().numpy(), compute_uv=False)
    energy = np.cumsum(sv**2)
    return sv, int(np.argmax(energy >= 0.99 * energy[-1] * (1 - 1e-12))) + 1


def cliff_index(sv: np.ndarray) -> list[int]:
    """Per row of ``sv`` (seeds x values), the 1-based index k with the largest drop sigma_k / sigma_(k+1)."""
    ratio = sv[:, :-1] / np.maximum(sv[:, 1:], 1e-300)
    return [int(k) + 1 for k in ratio.argmax(1)]


@torch.no_grad()
def corollary_loss(teacher, data_a, dg: int) -> float:
    """Corollary 1.1 (Eq. 6) per sample: 1/2 mean_i ||W'_{:, D_g:} s'_i||^2 over the train rows.

    s'_i: the teacher-specific channels of the *standardised* teacher input (the model's own ``norm['xa']``,
    train mean and std); W': the teacher's feature extractor ``encoders.xa.0.weight`` (bias excluded: it is
    matched by the student's bias). Computed in float64.
    """
    idx = data_a.index("train")
    x = teacher.norm["xa"](data_a.inputs["xa"][idx].float()).double()
    x[:, :dg] = 0.0  # (O; S')
    w = teacher.state_dict()["encoders.xa.0.weight"].double()
    return float(0.5 * (x @ w.T).square().sum(1).mean())


def accuracy(model, data, split: str) -> float:
    idx = data.index(split)
    logits, _ = predict(model, data, idx)
    return float((logits.argmax(1) == data.target[idx]).float().mean())


def run_one(dg: int, seed: int, args) -> dict:
    sd = synth_orthogonal(
        dim=args.dim, general=dg, num_classes=2, n_train=args.train, n_val=args.val, n_test=args.test, seed=seed
    )
    table = FeatureTable(
        build_table(sd.ids, {"xa": sd.xa, "xb": sd.xb}, label=sd.label, split=sd.split),
        sources=[f"synth-orthogonal-dg{dg}-seed{seed}"],
        meta={"class_names": sd.class_names},
    )
    data_a = load_tensor_data(table, ["xa"])
    data = load_tensor_data(table, ["xa", "xb"])
    linear = ModelOptions(arch="mlp", hidden=[args.dim], activation="identity")
    tcfg = TrainConfig(epochs=args.teacher_epochs, batch_size=None, lr=1e-2, select="last", seed=seed)
    teacher, _ = pretrain(data_a, model=linear, config=tcfg, quiet=True)
    params = FeatureParams(loss="mse", task_weight=args.task_weight, projector="none")
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=None, optimizer=args.optimizer, lr=args.lr, select="last", seed=seed + 1000
    )
    student, result = distill(
        registry.get("feature"), params, data, teacher, ["xb"], model=linear, config=cfg, quiet=True
    )
    sv, rank99 = spectrum(student.state_dict()[LAYER])
    out = {
        "dg": dg,
        "seed": seed,
        "sv": sv.tolist(),
        "rank99": rank99,
        "teacher_rank99": spectrum(teacher.state_dict()["encoders.xa.0.weight"])[1],
        "final_feat_loss": result.history[-1].get("train/feat"),
        "predicted_feat_loss": corollary_loss(teacher, data_a, dg),
        "teacher_acc": accuracy(teacher, data_a, "test"),
    }
    if args.task_weight > 0:
        out["student_acc"] = accuracy(student, data, "test")
    return out


def plot(results: dict[int, list[dict]], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(results)))
    for color, (dg, runs) in zip(colors, results.items(), strict=True):
        logs = np.log10(np.maximum(np.array([r["sv"] for r in runs]), 1e-300))
        idx = np.arange(1, logs.shape[1] + 1)
        ax.plot(idx, logs.mean(0), color=color, lw=1.8, label=f"$D_g$ = {dg}")
        if len(runs) > 1:
            ax.fill_between(idx, logs.min(0), logs.max(0), color=color, alpha=0.2, lw=0)
        ax.axvline(dg, color=color, ls=":", lw=1.2)
    what = "feature distillation (MSE)" + (f" + {args.task_weight:g} x task loss" if args.task_weight > 0 else "")
    ax.set_title(
        f"Student weight spectrum, {what}\n{len(next(iter(results.values())))} seeds; dotted: $D_g$", fontsize=10
    )
    ax.set_xlabel("singular value index (1-based)")
    ax.set_ylabel(r"$\log_{10}\ \sigma_i$ of " + LAYER.replace("_", r"\_"))
    ax.set_xlim(1, args.dim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--general", default="2,4,8,16,32", help="comma-separated D_g values")
    p.add_argument("--dim", type=int, default=64, help="channels D of each modality (and feature width)")
    p.add_argument("--seeds", type=int, default=3, help="repeats (data seeds 0..N-1) aggregated per D_g")
    p.add_argument("--train", type=int, default=2000, help="train rows per data set")
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=200, help="distillation epochs (full batch: one step each)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--teacher-epochs", type=int, default=100)
    p.add_argument("--task-weight", type=float, default=0.0, help="weight of the task loss (0: FD only)")
    p.add_argument("--plot", default="out/collapse.png", help="PNG to write ('' for none)")
    p.add_argument("--json", default="", help="also write every spectrum and number to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    dgs = [int(t) for t in args.general.split(",") if t.strip()]
    if any(not 0 < d < args.dim for d in dgs):
        p.error(f"every D_g must lie in 1..{args.dim - 1}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    rows_needed = 2 * args.dim - min(dgs)
    if min(args.train, args.val, args.test) < rows_needed:
        p.error(f"--train, --val and --test need at least {rows_needed} rows to orthogonalise")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results: dict[int, list[dict]] = {}
    for dg in dgs:
        results[dg] = [run_one(dg, s, args) for s in range(args.seeds)]
        print(f"D_g={dg}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    print(
        f"\nstudent {LAYER} ({args.dim}x{args.dim}); synth orthogonal, dim {args.dim}, {args.train} train rows; "
        f"distill feature mse, task_weight {args.task_weight:g}, {args.optimizer} lr {args.lr:g}, {args.epochs} "
        f"full-batch epochs; {args.seeds} seeds; torch {torch.__version__}\n"
    )
    head = (
        "| D_g | sigma[D_g-1] | sigma[D_g] | sigma[D_g+1] | drop sigma[D_g-1]/sigma[D_g] (mean; worst seed) "
        "| largest drop after index (seeds) | rank99 (seeds) | final FD loss | Cor. 1.1 prediction "
        "| rel. diff (worst) |"
    )
    sep = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if args.task_weight > 0:
        head += " student test acc |"
        sep += "---:|"
    print(head)
    print(sep)
    for dg, runs in results.items():
        sv = np.array([r["sv"] for r in runs])
        drops = sv[:, dg - 1] / np.maximum(sv[:, dg], 1e-300)
        gmean = float(np.exp(np.mean(np.log(drops))))
        cliffs = ",".join(str(c) for c in cliff_index(sv))
        ranks = ",".join(str(r["rank99"]) for r in runs)
        measured = np.array([r["final_feat_loss"] for r in runs])
        predicted = np.array([r["predicted_feat_loss"] for r in runs])
        rel = (measured - predicted) / predicted
        worst = rel[np.abs(rel).argmax()]
        line = (
            f"| {dg} | {sv[:, dg - 1].mean():.3g} | {sv[:, dg].mean():.3g} | {sv[:, dg + 1].mean():.3g} "
            f"| {gmean:.3g}; {drops.min():.3g} | {cliffs} | {ranks} "
            f"| {measured.mean():.5g} | {predicted.mean():.5g} | {rel.mean():+.1e} ({worst:+.1e}) |"
        )
        if args.task_weight > 0:
            accs = [r["student_acc"] for r in runs]
            line += f" {np.mean(accs):.3f} +- {np.std(accs):.3f} |"
        print(line)
    t_acc = [r["teacher_acc"] for runs in results.values() for r in runs]
    t_rank = sorted({r["teacher_rank99"] for runs in results.values() for r in runs})
    print(
        "\n(sigma: 0-based, mean over seeds; drop: geometric mean over seeds; largest drop after index k: "
        "sigma_k / sigma_(k+1) is the largest ratio, 1-based as in the plot; rank99: rank at 99% energy; "
        "final FD loss: train/feat of the last epoch, Cor. 1.1 prediction: 1/2 mean_i ||W'_{:,D_g:} s'_i||^2 on the "
        "train rows, both means over seeds; rel. diff: (final - prediction) / prediction, mean over seeds and the "
        "seed farthest from 0)"
    )
    print(f"teacher: test accuracy {np.mean(t_acc):.3f}, rank99 of encoders.xa.0.weight {t_rank}")
    if args.plot:
        plot(results, Path(args.plot), args)
        print(f"wrote {args.plot}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
        print(f"wrote {args.json}")
    return 0 if all(math.isfinite(r["sv"][0]) for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
