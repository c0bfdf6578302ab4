"""CIBA on real paired data (examples/av_digits): an audio teacher, an image student with a cnn2d trunk.

The question of ``benchmarks/ciba_study.py`` on real media files: does CIBA's sub-dimensional distillation, cut
from a layer above a trunk, beat the student without KD, does MSE feature distillation, and how much of any gain
does a bottleneck fitted without a teacher (the control) already give?

Data and models, as ``examples/av_digits/run.sh`` and ``benchmarks/baselines.py`` make them:

  data       ``examples/av_digits/make_data.py WORK/pcN-dataS/data --per-class N [150] --seed S [0]`` (sklearn's
             8x8 digits, PCA-degraded and noisy, paired within each class with a digit name spoken by espeak-ng),
             extracted to ``image.parquet`` ([1, 8, 8] pixels) and ``audio.parquet`` (MFCC mean+std, 80 numbers),
             split 80/10/10 by a hash of the id; built once and reused (the folder layout of baselines.py, so
             ``--work out/baselines`` reuses its tables). Offline: espeak-ng and scikit-learn's bundled digits.
  teacher    per seed s: ``pretrain --input audio --arch mlp --epochs 60 --seed s`` (hidden 256, AdamW lr 1e-3,
             batch 64, best val epoch)
  students   per seed s: ``--input image --arch cnn2d --epochs 30 --seed s`` (two conv blocks 32, 64, global average
             pooling, one fully connected layer of 256 ReLU units, the head): the trunk is the conv blocks, the
             distilled layer the penultimate one, the fully connected layer (``--layer linear`` [default]: its
             Linear output ``encoders.image.7`` before the ReLU, teacher ``encoders.audio.0``; ``embedding``: the
             ReLU outputs of both, the heads' inputs)

Rows, per seed: ``no KD`` (``pretrain --role student``); ``MSE`` (``distill feature --loss mse`` between the two
layers, task weight 1, feature weight 1); ``CIBA``: DVIB bottlenecks (hidden 256, KL weight 1e-3, 100 epochs,
batch 64, lr 1e-3, best val loss) from the teacher's features to the no-KD student's on the train rows, one per
H in ``--dims`` [1,2,4,...,256], H chosen by ``choose_dim`` (tolerance 0.1 decades) from the decoded spectra on
the val rows, then ``distill ciba`` (base mse, Algorithm 2's ``||z[:H] - h'||^2``, weights 1 and 1);
``control``: a bottleneck of the same H fitted from the no-KD student's features to themselves and ``distill
ciba`` with the no-KD student as the frozen "teacher" (no audio at all). Test accuracy (172 rows: one row is 0.58
points), paired differences to no KD (mean ± sample std over seeds, and how many seeds improve), RankMe of the
centred embedding on the test rows, and the teacher's own test accuracy (on audio) beside the student's, so that
a teacher weaker than its student shows.

    python benchmarks/ciba_av_digits.py --work out/baselines --json out/ciba_av_digits.json   # 5 seeds
    python benchmarks/ciba_av_digits.py --seeds 1 --epochs 2 --per-class 30 --dims 4,16      # smoke

Needs the espeak-ng program and scikit-learn (it installs neither; it says what is missing and stops).
Measured numbers: docs/benchmarks.md, section "CIBA on av_digits".
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import check_dependencies, prepare_tables  # noqa: E402
from ciba_study import accuracy, features, mean_std, paired, spectrum  # noqa: E402

from cmkdtool.data.tensors import load_tensor_data  # noqa: E402
from cmkdtool.engine.config import TrainConfig  # noqa: E402
from cmkdtool.io.checkpoints import save_checkpoint  # noqa: E402
from cmkdtool.io.tables import read_tables  # noqa: E402
from cmkdtool.methods import registry  # noqa: E402
from cmkdtool.methods.bottleneck import feature_data  # noqa: E402
from cmkdtool.nn.specs import BottleneckOptions, ModelOptions  # noqa: E402
from cmkdtool.pipelines.bottleneck import choose_dim, fit_bottleneck, sweep  # noqa: E402
from cmkdtool.pipelines.train import distill, pretrain  # noqa: E402

METHODS = ("no KD", "MSE", "CIBA", "control")
LAYERS = {"linear": ("encoders.audio.0", "encoders.image.7"), "embedding": ("embedding", "embedding")}


def run_seed(seed: int, args, dims: list[int], tables: tuple[Path, Path], workdir: Path) -> dict:
    image, audio = tables
    joined = read_tables([str(audio), str(image)])
    data_a, data_b = load_tensor_data(joined, ["audio"]), load_tensor_data(joined, ["image"])
    data = load_tensor_data(joined, ["audio", "image"])
    t_layer, s_layer = LAYERS[args.layer]
    teacher_model, student_model = ModelOptions(arch="mlp"), ModelOptions(arch="cnn2d")
    assert student_model.hidden == [256] and student_model.channels == [32, 64]  # the layer names below assume it
    tcfg = TrainConfig(epochs=args.teacher_epochs, seed=seed)
    cfg = TrainConfig(epochs=args.epochs, seed=seed)
    bcfg = TrainConfig(epochs=args.bottleneck_epochs, batch_size=64, lr=1e-3, seed=seed + 2)
    options = BottleneckOptions(kl_weight=args.kl_weight)
    ciba, feature = registry.get("ciba"), registry.get("feature")

    def record(student, d) -> dict:
        rankme = spectrum(features(student, d, "embedding", "test"))[1]
        layer = spectrum(features(student, d, s_layer, "test"))[1]
        return {"acc": accuracy(student, d), "rankme": rankme, "rankme_layer": layer}

    def ciba_student(bn, name: str, frozen):
        path = workdir / f"{name}-s{seed}.safetensors"
        save_checkpoint(path, bn.state_dict(), bn.spec, {})
        params = ciba.params(bottleneck=str(path), base="mse", feature_weight=1.0, task_weight=1.0)
        return distill(ciba, params, data, frozen, ["image"], model=student_model, config=cfg, quiet=True)[0]

    t0 = time.perf_counter()
    teacher, _ = pretrain(data_a, model=teacher_model, config=tcfg, quiet=True)
    out: dict = {"seed": seed, "teacher_acc": accuracy(teacher, data_a), "methods": {}, "sweep": {}}
    baseline, _ = pretrain(data_b, model=student_model, role="student", config=cfg, quiet=True)
    out["methods"]["no KD"] = record(baseline, data_b)
    params = feature.params(loss="mse", student_layer=s_layer, teacher_layer=t_layer)
    mse, _ = distill(feature, params, data, teacher, ["image"], model=student_model, config=cfg, quiet=True)
    out["methods"]["MSE"] = record(mse, data)

    zt = torch.from_numpy(features(teacher, data_a, t_layer))
    zs = torch.from_numpy(features(baseline, data_b, s_layer))
    fdata = feature_data(zt, zs, data.split, data.ids, "av_digits")
    records = {"teacher": {"layer": t_layer}, "student": {"layer": s_layer}}
    points = sweep(fdata, dims, options, bcfg, eval_split="val", records=records, quiet=True)
    chosen, change = choose_dim({p.dim: p.spectrum for p in points}, args.tol)
    out["chosen"] = chosen
    for p in points:
        out["sweep"][p.dim] = {
            "r2": float(p.metrics["r2"]),
            "decoded_rankme": float(p.summary["rankme"]),
            "change": float(change[p.dim]),
        }
    best = next(p for p in points if p.dim == chosen)
    out["methods"]["CIBA"] = record(ciba_student(best.bottleneck, f"bn-h{chosen}", teacher), data)

    self_data = feature_data(zs, zs, data.split, data.ids, "av_digits")
    self_records = {"teacher": {"layer": s_layer}, "student": {"layer": s_layer}}
    bn, _ = fit_bottleneck(self_data, chosen, options, bcfg, records=self_records, quiet=True)
    out["methods"]["control"] = record(ciba_student(bn, f"self-h{chosen}", baseline), data)
    out["secs"] = time.perf_counter() - t0
    return out


def report(runs: list[dict], args, dims: list[int]) -> None:
    t_layer, s_layer = LAYERS[args.layer]
    t_acc = [r["teacher_acc"] for r in runs]
    base = [r["methods"]["no KD"]["acc"] for r in runs]
    weaker = sum(t < b for t, b in zip(t_acc, base, strict=True))
    print(
        f"audio teacher (mlp, on audio) test accuracy: {mean_std(t_acc)}; weaker than the no-KD image student in "
        f"{weaker} of {len(runs)} seeds\n"
    )
    chosen = Counter(r["chosen"] for r in runs)
    hs = ", ".join(f"{h}: {n} seeds" for h, n in sorted(chosen.items()))
    print(f"### av_digits, cnn2d image student, distilled {t_layer} -> {s_layer}; H {hs}\n")
    print(
        "| image student | test accuracy | minus no KD (points, paired) | seeds higher | RankMe of embedding "
        "| RankMe of distilled layer |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for m in METHODS:
        xs = [r["methods"][m] for r in runs]
        acc = [x["acc"] for x in xs]
        diff = "— | —" if m == "no KD" else paired(acc, base)
        label = {"CIBA": "CIBA (H by the sweep rule)", "control": "control: bottleneck no-KD -> no-KD, no teacher"}
        ranks = " | ".join(mean_std([x[k] for x in xs], 1) for k in ("rankme", "rankme_layer"))
        print(f"| {label.get(m, m)} | {mean_std(acc)} | {diff} | {ranks} |")
    ciba = [r["methods"]["CIBA"]["acc"] for r in runs]
    ctrl = [r["methods"]["control"]["acc"] for r in runs]
    print(f"| CIBA minus control (what the teacher adds) | | {paired(ciba, ctrl)} | | |\n")
    print("| H | chosen (seeds) | bottleneck r2 (val) | RankMe of decoded z' | spectrum change |")
    print("|---:|---:|---:|---:|---:|")
    for h in dims:
        pts = [r["sweep"][h] for r in runs]
        print(
            f"| {h} | {chosen.get(h, 0)} | {mean_std([x['r2'] for x in pts])} "
            f"| {np.mean([x['decoded_rankme'] for x in pts]):.1f} | {np.mean([x['change'] for x in pts]):.3f} |"
        )
    print(
        "\n(mean ± sample std over seeds; per seed: "
        + "; ".join(
            f"s{r['seed']} teacher {r['teacher_acc']:.3f} "
            + " ".join(f"{m} {r['methods'][m]['acc']:.3f}" for m in METHODS)
            for r in runs
        )
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="repeats (training seeds 0..N-1; one data set)")
    p.add_argument("--work", default="out/ciba_av_digits", help="work folder (the data and tables, reused)")
    p.add_argument("--per-class", type=int, default=150, help="make_data.py --per-class")
    p.add_argument("--data-seed", type=int, default=0, help="make_data.py --seed")
    p.add_argument("--layer", choices=sorted(LAYERS), default="linear", help="distilled layer kind (see above)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every image student")
    p.add_argument("--teacher-epochs", type=int, default=60)
    p.add_argument("--bottleneck-epochs", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--dims", default="", help="bottleneck dimensions H [1,2,4,...,256]")
    p.add_argument("--tol", type=float, default=0.1, help="choose_dim tolerance (decades)")
    p.add_argument("--json", default="", help="also write every number to this JSON file (after every seed)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    dims = sorted({int(t) for t in args.dims.split(",") if t.strip()}) if args.dims else [2**k for k in range(9)]
    if not dims or dims[0] < 1 or dims[-1] > 256:
        p.error("every H must lie in 1..256 (the width of the distilled layer)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    check_dependencies()
    folder = Path(args.work) / f"pc{args.per_class}-data{args.data_seed}"
    folder.mkdir(parents=True, exist_ok=True)
    tables = prepare_tables(folder, args.per_class, args.data_seed)

    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ciba_av_") as tmp:
        for seed in range(args.seeds):
            runs.append(run_seed(seed, args, dims, tables, Path(tmp)))
            r = runs[-1]
            accs = " ".join(f"{m} {r['methods'][m]['acc']:.3f}" for m in METHODS)
            print(
                f"seed {seed}: teacher {r['teacher_acc']:.3f}; {accs} (H={r['chosen']}); "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"args": vars(args), "dims": dims, "runs": runs}, indent=1))
    wall = time.perf_counter() - t0
    print(
        f"\nav_digits: make_data.py --per-class {args.per_class} --seed {args.data_seed}; {args.seeds} seeds; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )
    report(runs, args, dims)
    print(f"\ntotal wall time {wall:.0f} s ({wall / args.seeds:.0f} s per seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
