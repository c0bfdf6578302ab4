"""Image feature extraction throughput of ``cmkdtool extract image`` against the loop a user would write, in one run.

Both turn the same folder of JPEG images (``--images``, ``--size`` pixels, generated: gradients, shapes and noise,
in ``--classes`` class subfolders) into a Parquet table of resnet18 features (the 512-d input of ``fc``, randomly
initialised weights from a safetensors checkpoint: no network, and the features only need to exist), on the CPU,
with the same batch size and number of DataLoader workers:

  baseline   what the torchvision tutorials lead to: a ``Dataset`` over the sorted files that decodes with
             ``torchvision.io.decode_image`` (RGB) and applies ``ResNet18_Weights.IMAGENET1K_V1.transforms()``
             (resize 256, center crop 224, ImageNet mean/std), ``DataLoader(batch_size=B, num_workers=W)``,
             ``resnet18`` with ``fc = Identity`` loaded from the checkpoint, ``eval()`` and
             ``torch.inference_mode()``, features collected as numpy and written at the end with pyarrow
             (id, label, features as a fixed_size_list<float>).
  cmkdtool   ``cmkdtool extract image FOLDER -o TABLE --backbone resnet18 --checkpoint FILE --batch-size B
             --workers W --device cpu --quiet``, run in this process through ``cmkdtool.cli.app.main``: the
             console command minus interpreter start-up and imports (``--subprocess`` also times the console
             command in a fresh interpreter).

Two rates per method, both from the same runs:

  whole run     images / wall time of the call: model build and checkpoint read (cmkdtool also hashes it for the
                table's provenance), file listing, DataLoader worker start, every batch, writing the table.
  steady state  images after the first batch / time from the end of the first batch to the end of the last one:
                decoding, preprocessing, the model and collecting (cmkdtool: streaming to its writer) per batch,
                without the start-up and the final write. cmkdtool's batch ends are read by wrapping
                ``ExtractWriter.add`` (a timestamp after each call; nothing else changes).

Every setting first runs once per method unmeasured (imports, page cache, allocator), then ``--repeats`` times
with the order alternating; the median counts. The two feature matrices are compared (max abs difference, by id)
so both compute the same thing. The last column is the average number of cores other processes kept busy during
the setting's worst counted run (from /proc/stat): torch's CPU threads slow down by an order of magnitude when
another process competes for the cores, so on a shared machine use ``--wait-quiet`` and trust only rows where it
is near 0. Below the table: a warning when any run had more than ``--max-others`` cores of company, the
steady-state ratio of each repeat's two (adjacent) runs, and the CPU time per image of each method (this process
and its DataLoader workers, from ``os.times``), which is less sensitive to such load than the rates: the two should
be close when both do the same work.

    python benchmarks/extract.py                         # 256 images 320x240, batch 32, workers 0 and cores - 1
    python benchmarks/extract.py --images 64 --repeats 1 # a quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from machine_load import cpu_seconds, others_cores, wait_quiet  # benchmarks/machine_load.py
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

METHODS = ("baseline", "cmkdtool")


# ------------------------------------------------------------------------------------------------ data


def make_images(root: Path, n: int, width: int, height: int, classes: int, seed: int) -> list[Path]:
    """``n`` JPEGs (quality 90) in ``root/class_k/``: a colour gradient, a few rectangles and discs, mild noise."""
    from torchvision.io import encode_jpeg

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        label = i % classes
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        for _ in range(rng.integers(3, 8)):
            colour = rng.uniform(0, 255, 3)[:, None, None]
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, min(width, height) / 3)
            if rng.random() < 0.5:
                mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.3, 1.0))
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
            img = np.where(mask, colour, img)
        img = img + rng.normal(0, 6, img.shape)
        pixels = torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(encode_jpeg(pixels, quality=90).numpy().tobytes())
        paths.append(path)
    return paths


def make_checkpoint(path: Path, seed: int) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------------------ baseline


class ImageFiles(Dataset):
    """The Dataset a user writes: decode one file, apply the weights' transforms, return it with its label."""

    def __init__(self, paths: list[str], labels: list[int], transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_image

        return self.transform(decode_image(self.paths[i], mode=ImageReadMode.RGB)), self.labels[i]


def run_baseline(root: Path, checkpoint: Path, output: Path, batch_size: int, workers: int, stamps: list) -> None:
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18()
    model.load_state_dict(load_file(str(checkpoint)))
    model.fc = nn.Identity()
    model.eval()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(p, label) for label, c in enumerate(classes) for p in sorted((root / c).glob("*.jpg"))]
    ids = [p.relative_to(root).with_suffix("").as_posix() for p, _ in files]
    dataset = ImageFiles(
        [str(p) for p, _ in files], [label for _, label in files], ResNet18_Weights.IMAGENET1K_V1.transforms()
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    feats, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            feats.append(model(x).numpy())
            labels.append(y.numpy())
            stamps.append((time.perf_counter(), len(y)))
    f = np.concatenate(feats)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "label": pa.array(np.concatenate(labels), pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), f.shape[1]),
        }
    )
    pq.write_table(table, output)


# ------------------------------------------------------------------------------------------------ cmkdtool


def cmkdtool_argv(root: Path, checkpoint: Path, output: Path, batch_size: int, workers: int) -> list[str]:
    return [
        "extract",
        "image",
        str(root),
        "-o",
        str(output),
        "--backbone",
        "resnet18",
        "--checkpoint",
        str(checkpoint),
        "--batch-size",
        str(batch_size),
        "--workers",
        str(workers),
        "--device",
        "cpu",
        "--quiet",
    ]


def run_cmkdtool(root: Path, checkpoint: Path, output: Path, batch_size: int, workers: int, stamps: list) -> None:
    """The console command in this process; ``ExtractWriter.add`` wrapped to timestamp the end of each batch."""
    from cmkdtool.cli.app import main
    from cmkdtool.extract.writer import ExtractWriter

    add = ExtractWriter.add

    def timed_add(self, items, values):
        add(self, items, values)
        stamps.append((time.perf_counter(), len(items)))

    ExtractWriter.add = timed_add
    try:
        main(cmkdtool_argv(root, checkpoint, output, batch_size, workers))
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"cmkdtool extract image exited with status {e.code}") from None
    finally:
        ExtractWriter.add = add


def run_subprocess(root: Path, checkpoint: Path, output: Path, batch_size: int, workers: int, threads: int) -> float:
    """Wall time of the console command in a fresh interpreter (start-up and imports included)."""
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "cmkdtool", *cmkdtool_argv(root, checkpoint, output, batch_size, workers)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ main


def read_features(path: Path, column: str) -> dict[str, np.ndarray]:
    t = pq.read_table(path, columns=["id", column])
    x = np.asarray(t.column(column).combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
    return dict(zip(t.column("id").to_pylist(), x, strict=True))


def steady_rate(stamps: list[tuple[float, int]]) -> float:
    """Images after the first batch per second from the end of the first batch to the end of the last."""
    if len(stamps) < 2:
        return float("nan")
    return sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(w: int, runners: dict, root: Path, checkpoint: Path, work: Path, args) -> dict:
    """One warm-up run of each method, then ``args.repeats`` runs in alternating order, with ``w`` workers."""
    st: dict = {k: {m: [] for m in METHODS} for k in ("wall", "steady", "first", "tail", "others", "cpu")}
    st.update(workers=w, subprocess=[])
    feats: dict[str, dict[str, np.ndarray]] = {}
    for r in range(-1, args.repeats):  # r = -1: the warm-up run of each method
        for m in METHODS if r % 2 == 0 else METHODS[::-1]:
            out = work / f"{m}.parquet"
            out.unlink(missing_ok=True)
            if args.wait_quiet > 0 and r >= 0:
                wait_quiet(args.max_others, args.wait_quiet)
            stamps: list[tuple[float, int]] = []
            before = cpu_seconds()
            t0 = time.perf_counter()
            runners[m](root, checkpoint, out, args.batch_size, w, stamps)
            t = time.perf_counter() - t0
            after = cpu_seconds()
            if sum(n for _, n in stamps) != args.images:
                raise RuntimeError(f"{m}: {sum(n for _, n in stamps)} images went through, not {args.images}")
            if r < 0:
                feats[m] = read_features(out, "features" if m == "baseline" else "image")
                print(f"workers {w} warm-up {m:>9}: {t:6.2f} s", file=sys.stderr, flush=True)
                continue
            busy = others_cores(before, after, t)
            cpu = (after[1] - before[1]) / args.images if before and after else float("nan")
            for key, value in (
                ("wall", args.images / t),
                ("steady", steady_rate(stamps)),
                ("first", stamps[0][0] - t0),
                ("tail", t0 + t - stamps[-1][0]),
                ("others", busy),
                ("cpu", cpu),
            ):
                st[key][m].append(value)
            print(
                f"workers {w} repeat {r + 1}/{args.repeats} {m:>9}: {t:6.2f} s  {args.images / t:5.1f} img/s whole "
                f"run, {st['steady'][m][-1]:5.1f} img/s steady, first batch after {st['first'][m][-1]:.2f} s, "
                f"{st['tail'][m][-1]:.2f} s after the last, {1e3 * cpu:.0f} CPU ms/img  (other processes: "
                f"{busy:.2f} cores)",
                file=sys.stderr,
                flush=True,
            )
        if args.subprocess and r >= 0:
            out = work / "subprocess.parquet"
            out.unlink(missing_ok=True)
            rate = args.images / run_subprocess(root, checkpoint, out, args.batch_size, w, args.threads)
            st["subprocess"].append(rate)
            print(f"workers {w} repeat {r + 1} subprocess: {rate:5.1f} img/s", file=sys.stderr, flush=True)
    ids = sorted(feats["baseline"])
    if sorted(feats["cmkdtool"]) != ids:
        raise RuntimeError("the two tables hold different ids")
    st["diff"] = float(max(np.abs(feats["baseline"][i] - feats["cmkdtool"][i]).max() for i in ids))
    st["scale"] = float(max(np.abs(feats["baseline"][i]).max() for i in ids))
    return st


def main(argv: list[str] | None = None) -> int:
    default_workers = max(0, min(8, (os.cpu_count() or 1) - 1))  # cmkdtool's default for 64+ files
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="JPEG images to generate")
    p.add_argument("--size", default="320x240", help="image size WxH in pixels")
    p.add_argument("--classes", type=int, default=4, help="class subfolders")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers",
        default=",".join(dict.fromkeys(["0", str(default_workers)])),
        help="comma-separated DataLoader worker counts, one table row each [default: 0 and cmkdtool's default]",
    )
    p.add_argument("--repeats", type=int, default=3, help="measured runs of each method per setting; median counts")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--subprocess",
        action="store_true",
        help="also time the console command in a fresh interpreter (python -m cmkdtool; start-up included)",
    )
    p.add_argument("--dir", default=None, help="work folder (kept) [default: a temporary folder, removed]")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS until other processes use < --max-others cores (shared machines)",
    )
    p.add_argument("--max-others", type=float, default=0.25, help="cores other processes may use (--wait-quiet)")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        workers_list = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--size takes WxH (e.g. 320x240) and --workers integers separated by commas")
    if args.images < 2 * args.batch_size:
        p.error("--images must be at least two batches (the steady-state rate starts after the first batch)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cmkd-extract-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root, checkpoint = work / "images", work / "resnet18.safetensors"
    try:
        t0 = time.perf_counter()
        if root.exists():
            shutil.rmtree(root)
        make_images(root, args.images, width, height, args.classes, args.seed)
        make_checkpoint(checkpoint, args.seed)
        mb = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 2**20
        print(
            f"generated {args.images} JPEGs ({mb:.1f} MiB) and a resnet18 checkpoint in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        runners = {"baseline": run_baseline, "cmkdtool": run_cmkdtool}
        settings = [measure(w, runners, root, checkpoint, work, args) for w in workers_list]

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"\n{args.images} JPEG images {width}x{height} (quality 90, {mb:.1f} MiB) in {args.classes} class "
            f"folders; resnet18 (random init, safetensors checkpoint) to the 512-d input of fc; resize 256, crop 224, "
            f"ImageNet mean/std; batch {args.batch_size}; CPU; median of {args.repeats} runs per method "
            "(interleaved, after one warm-up each)"
        )
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), python {platform.python_version()}, "
            f"{date.today().isoformat()}, load average (1 min) {load:.2f}\n"
        )
        print("| setting | baseline img/s | cmkdtool img/s | ratio cmkdtool/baseline | other processes (cores) |")
        print("|---|---:|---:|---:|---:|")
        for st in settings:
            w = st["workers"]
            busy = max(st["others"]["baseline"] + st["others"]["cmkdtool"])  # the worst run of the setting
            for label, key in (("whole run", "wall"), ("steady state", "steady")):
                b, c = median(st[key]["baseline"]), median(st[key]["cmkdtool"])
                print(f"| {w} worker{'s' if w != 1 else ''}, {label} | {b:.1f} | {c:.1f} | {c / b:.2f}x | {busy:.2f} |")
        print()
        if any(max(st["others"]["baseline"] + st["others"]["cmkdtool"]) > args.max_others for st in settings):
            print(
                f"WARNING: other processes used more than {args.max_others} cores during some runs; those rates are "
                "not comparable (rerun with --wait-quiet SECONDS)\n"
            )
        for st in settings:
            first, tail, cpu = st["first"], st["tail"], st["cpu"]
            pairs = ", ".join(
                f"{c / b:.2f}" for b, c in zip(st["steady"]["baseline"], st["steady"]["cmkdtool"], strict=True)
            )
            sub = st["subprocess"]
            print(
                f"workers {st['workers']}: CPU time per image (this process and its DataLoader workers) "
                f"{1e3 * median(cpu['baseline']):.0f} ms baseline, {1e3 * median(cpu['cmkdtool']):.0f} ms cmkdtool; "
                f"first batch done after {median(first['baseline']):.2f} s and {median(first['cmkdtool']):.2f} s; "
                f"after the last batch {median(tail['baseline']):.2f} s and {median(tail['cmkdtool']):.2f} s; "
                f"steady-state ratio of each repeat's two runs {pairs}; "
                f"features max abs difference {st['diff']:.2e} (largest feature {st['scale']:.2f})"
                + (
                    f"; console command in a fresh interpreter {median(sub):.1f} img/s (start-up included)"
                    if sub
                    else ""
                )
            )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
