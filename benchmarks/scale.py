"""Memory and speed of the data placements (issue 16), measured on the command line as a user runs it.

Three measurements, each a ``cmkdtool`` subprocess whose peak RSS (``ru_maxrss`` of the child, the number
``/usr/bin/time -v`` prints) is reported above the same command on a tiny table (the torch import alone is about
500 MB):

1. ``pretrain --epochs 1`` peak memory against the table size for ``--data-placement device``, ``host`` and
   ``stream`` (``CMKDTOOL_MEMORY_BUDGET`` for the stream's ring), plus the load path alone (``read_tables`` +
   ``load_tensor_data``) against its feature bytes (B1).
2. Streamed training throughput against in-memory: train rows per second of ``pretrain --epochs 2`` (wall time less
   the tiny table's), ``stream`` / ``device``.
3. ``cmkdtool spectrum T.parquet --column x`` (a 64-wide column) at 1M and 10M rows: peak RSS above the tiny table.

Tables: ``N x 256`` float32 Gaussian features (a linear rule for the labels), zstd Parquet with 8192-row groups,
split 96 % train / 2 % val / 2 % test, written chunk by chunk (the writer never holds the table). Not a test: prints
a Markdown table; run it on a quiet machine (wall times are noisy on a shared one; memory is not).

    python benchmarks/scale.py --rows 250000,500000,1000000 --spectrum-rows 1000000,10000000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEAK = (
    "import resource, runpy, sys; sys.argv = ['cmkdtool', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('cmkdtool', run_name='__main__')\n"
    "finally:\n    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\n"
)
LOAD = (
    "import resource, sys\nimport torch\nfrom cmkdtool.io.tables import read_tables\n"
    "from cmkdtool.data.tensors import load_tensor_data\n"
    "d = load_tensor_data(read_tables([sys.argv[1]], columns=['x']), ['x'], 'cpu')\n"
    "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\n"
)


def write_table(path: Path, n: int, d: int, seed: int = 0) -> None:
    import pyarrow.parquet as pq

    from cmkdtool.io.tables import build_table

    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=(d, 4)).astype(np.float32)
    writer = None
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = rng.normal(size=(m, d)).astype(np.float32)
        r = np.arange(s, s + m) % 50
        split = np.where(r == 0, "val", np.where(r == 1, "test", "train")).astype(object)
        t = build_table([f"r{i}" for i in range(s, s + m)], {"x": x}, label=(x @ w).argmax(1), split=split)
        writer = writer or pq.ParquetWriter(path, t.schema, compression="zstd")
        writer.write_table(t, row_group_size=8192)
    writer.close()


def run(args: list[str], env: dict | None = None, code: str = PEAK) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed: {args}\n{res.stderr[-2000:]}")
    return int(res.stderr.split("PEAK")[-1].split()[0]), wall, res.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="250000,500000,1000000", help="table sizes (rows of 256 floats)")
    ap.add_argument("--spectrum-rows", default="1000000,10000000", help="spectrum table sizes (rows of 64 floats)")
    ap.add_argument("--budget", default="256MB", help="CMKDTOOL_MEMORY_BUDGET of the stream runs")
    ap.add_argument("--folder", default=None, help="where to write the tables [default: a temporary folder]")
    a = ap.parse_args()
    folder = Path(a.folder or tempfile.mkdtemp(prefix="cmkd-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    mb = 1e6
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"{time.strftime('%Y-%m-%d')}; budget {a.budget}\n")  # fmt: skip
    tiny = folder / "tiny.parquet"
    write_table(tiny, 2000, 256)
    common = ["-i", "x", "--arch", "linear", "--batch-size", "512", "--device", "cpu", "-q"]
    base = {}
    for p in ("device", "host", "stream"):
        env = {"CMKDTOOL_MEMORY_BUDGET": a.budget} if p == "stream" else {}
        base[p] = run(["pretrain", str(tiny), *common, "--epochs", "2", "--data-placement", p,
                       "-o", str(folder / "m.safetensors")], env)  # fmt: skip
    load_base = run([str(tiny)], code=LOAD)[0]
    print("| rows | feature MB | load peak (x features) | device peak MB | host peak MB | stream peak MB | "
          "device rows/s | stream rows/s | stream / device |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in [int(r) for r in a.rows.split(",") if r]:
        path = folder / f"t{n}.parquet"
        if not path.exists():
            write_table(path, n, 256)
        feat = n * 256 * 4
        load = (run([str(path)], code=LOAD)[0] - load_base) / feat
        peaks, speed = {}, {}
        for p in ("device", "host", "stream"):
            env = {"CMKDTOOL_MEMORY_BUDGET": a.budget} if p == "stream" else {}
            peak, wall, _ = run(["pretrain", str(path), *common, "--epochs", "2", "--data-placement", p,
                                 "-o", str(folder / "m.safetensors")], env)  # fmt: skip
            peaks[p] = (peak - base[p][0]) / mb
            speed[p] = 2 * n * 0.96 / max(1e-9, wall - base[p][1])
        print(f"| {n:,} | {feat / mb:.0f} | {load:.2f} | {peaks['device']:.0f} | {peaks['host']:.0f} | "
              f"{peaks['stream']:.0f} | {speed['device']:,.0f} | {speed['stream']:,.0f} | "
              f"{speed['stream'] / speed['device']:.2f} |")  # fmt: skip
    print("\n| spectrum rows | column MB | peak above tiny MB | wall s |")
    print("|---:|---:|---:|---:|")
    tiny64 = folder / "tiny64.parquet"
    write_table(tiny64, 2000, 64)
    sb = run(["spectrum", str(tiny64), "--column", "x", "--split", "all"])
    for n in [int(r) for r in a.spectrum_rows.split(",") if r]:
        path = folder / f"s{n}.parquet"
        if not path.exists():
            write_table(path, n, 64)
        peak, wall, _ = run(["spectrum", str(path), "--column", "x", "--split", "all"])
        print(f"| {n:,} | {n * 64 * 4 / mb:.0f} | {(peak - sb[0]) / mb:.0f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
