"""Streaming spectrum (issue 16, specs/scale.md section 4): the one-pass accumulator against numpy's SVD, merging,
per-chunk NaN checks, the N-independent rank tolerance, the randomized spectrum, and the memory of
``cmkdtool spectrum`` on a large table column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cmkdtool.analysis.spectrum import (
    EPS32,
    SpectrumAccumulator,
    column_spectrum,
    feature_spectrum,
    feed_of,
    randomized_singular_values,
    singular_values,
    stream_spectrum,
    summarize,
)
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.errors import CmkdError
from cmkdtool.io.tables import build_table, read_tables, write_table
from cmkdtool.nn.models import build_model


def _matrix(n: int, d: int, top: float, bottom: float, mean: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``mean + G diag(s) Q^T`` (s geometric from ``top`` to ``bottom``) and numpy's centred SVD of them."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = mean + (rng.standard_normal((n, d)) * np.geomspace(top, bottom, d)) @ q.T
    return x, np.linalg.svd(x - x.mean(axis=0), compute_uv=False)


def _chunks(x, rows: int = 8192):
    return (x[i : i + rows] for i in range(0, len(x), rows))


# ----------------------------------------------------------------------------------------------- accuracy


def test_c1_tsqr_matches_numpy_svd_with_a_large_mean_and_six_decades():
    # mean 1e3, sigma over 6 decades, 8192-row chunks (C1): relative 1e-9 on every value, the smallest included
    x, ref = _matrix(6 * 8192 + 1234, 32, 1.0, 1e-6, 1e3)
    sv = singular_values(_chunks(x), center=True)
    assert sv.shape == (32,) and np.all(np.diff(sv) <= 0)
    np.testing.assert_allclose(sv, ref, rtol=1e-9, atol=0)
    # the same matrix given whole (tall, forced through the chunked path) and as a list of float32 torch chunks
    np.testing.assert_allclose(singular_values(x, center=True, chunk_rows=8192), ref, rtol=1e-9, atol=0)
    x32 = x[:20000].astype(np.float32)
    ref32 = np.linalg.svd(x32 - x32.astype(np.float64).mean(axis=0), compute_uv=False)
    got = singular_values([torch.from_numpy(c) for c in _chunks(x32, 3000)], center=True)
    np.testing.assert_allclose(got, ref32, rtol=1e-9, atol=0)


def test_c1_gram_is_accurate_down_to_1e_5_of_sigma_max():
    x, ref = _matrix(5 * 8192, 32, 1.0, 1e-6, 1e3, seed=1)
    sv = singular_values(_chunks(x), center=True, method="gram")
    resolved = ref >= 1e-5 * ref[0]
    assert 10 < resolved.sum() < 32
    np.testing.assert_allclose(sv[resolved], ref[resolved], rtol=1e-6, atol=0)
    # below the floor the Gram form is wrong (the TSQR form is not): the documented limit is real
    assert np.max(np.abs(sv[~resolved] / ref[~resolved] - 1)) > 1e-6


def test_uncentred_stream_equals_the_svd_of_the_matrix():
    x, _ = _matrix(3000, 12, 2.0, 1e-3, 5.0, seed=2)
    ref = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(singular_values(_chunks(x, 700), center=False), ref, rtol=1e-11)
    # Gram: relative error ~eps64 (sigma_max / sigma_i)^2 = 2e-8 for the smallest here
    np.testing.assert_allclose(singular_values(_chunks(x, 700), center=False, method="gram"), ref, rtol=1e-7)


def test_fewer_rows_than_columns_and_tiny_chunks():
    # 5 rows of 9 columns in chunks of 1, 2 and 2 rows: 5 values, the centred rank is 4 (the mean is gone)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 9)) + 7.0
    for center in (False, True):
        ref = np.linalg.svd(x - x.mean(axis=0) if center else x, compute_uv=False)
        got = singular_values([x[:1], x[1:3], x[3:]], center=center)
        assert got.shape == (5,)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert singular_values([x[:1], x[1:3], x[3:]], center=True)[-1] < 1e-12


# -------------------------------------------------------------------------------------------------- merging


@pytest.mark.parametrize("method", ["tsqr", "gram"])
def test_merge_equals_one_pass(method):
    x, ref = _matrix(10_000, 16, 3.0, 1e-3, -40.0, seed=4)
    whole = SpectrumAccumulator(method=method)
    for c in _chunks(x, 1000):
        whole.add(c)
    # three "processes" with different row counts (and so different shifts), merged through their plain state
    parts = [SpectrumAccumulator(method=method, name=f"rank {r}") for r in range(3)]
    for i, c in enumerate(_chunks(x, 1000)):
        parts[0 if i < 2 else 1 if i < 7 else 2].add(c)
    merged = SpectrumAccumulator(method=method)
    for p in parts:
        merged.merge(SpectrumAccumulator.from_state(p.state(), method=method))
    assert merged.shape == whole.shape == (10_000, 16)
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.singular_values(), whole.singular_values(), rtol=1e-10)
    np.testing.assert_allclose(merged.singular_values(), ref, rtol=1e-10)
    # merging an empty accumulator changes nothing; merging into an empty one copies
    assert np.array_equal(merged.merge(SpectrumAccumulator(method=method)).singular_values(), merged.singular_values())
    np.testing.assert_allclose(SpectrumAccumulator(method=method).merge(whole).singular_values(), ref, rtol=1e-10)


def test_merge_refuses_other_kinds_and_widths():
    a = SpectrumAccumulator().add(np.ones((3, 2)))
    with pytest.raises(CmkdError, match="cannot merge a gram accumulator"):
        a.merge(SpectrumAccumulator(method="gram"))
    with pytest.raises(CmkdError, match="has 3 columns, the rows before it 2"):
        a.merge(SpectrumAccumulator().add(np.ones((3, 3))))
    with pytest.raises(CmkdError, match="unknown spectrum method 'svd'"):
        SpectrumAccumulator(method="svd")


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method", ["tsqr", "gram"])
def test_nan_in_a_later_chunk_names_the_matrix_chunk_and_row(method):
    x = np.ones((25, 3), dtype=np.float32)
    x[17, 1] = np.nan
    x[18, 0] = np.inf
    acc = SpectrumAccumulator(method=method, name="t.parquet: column 'xa'")
    with pytest.raises(CmkdError) as e:
        for c in _chunks(x, 10):
            acc.add(c)
    assert str(e.value) == (
        "t.parquet: column 'xa', chunk 2 (rows 11-20) has 2 NaN/inf values, the first in row 18; "
        "the singular values are undefined"
    )
    assert acc.n == 10  # the first chunk was taken, the bad one was not


def test_column_spectrum_nan_in_a_later_row_group(tmp_path):
    x = np.random.default_rng(5).standard_normal((300, 4)).astype(np.float32)
    x[250, 2] = np.nan
    path = tmp_path / "t.parquet"
    write_table(build_table([f"r{i}" for i in range(300)], {"xa": x}, split=["test"] * 300), path, row_group_size=100)
    with pytest.raises(CmkdError, match=r"t\.parquet: column 'xa', chunk \d+ \(rows .*\) has 1 NaN/inf values"):
        column_spectrum(read_tables([path]), "xa", "test")


# ------------------------------------------------------------------------------------------------- tolerance


def test_c5_rank_tol_does_not_depend_on_the_number_of_rows():
    # the singular values of a full-rank 10M x 64 Gaussian: sqrt(10M) times those of a unit-variance sample
    g = np.random.default_rng(6).standard_normal((100_000, 64))
    sv = singular_values(g, center=True) * np.sqrt(10_000_000 / 100_000)
    s = summarize(sv, (10_000_000, 64))
    assert s["rank_tol"] == 64  # the old rule sigma_max * 1e7 * eps32 = 1.19 sigma_max gave 0
    assert s["tol"] == pytest.approx(EPS32 * np.sqrt(np.sum(sv**2)), rel=1e-12)
    assert s["tol_rule"] == "eps32 * ||X||_F"
    # the same spectrum summarised as a 1000-row matrix: the same tolerance
    assert summarize(sv, (1000, 64))["tol"] == s["tol"]


def test_rank_tol_separates_float32_storage_noise_from_signal():
    # a rank-5 matrix with means ~100 stored in float32: its other values are rounding noise, and the noise is
    # relative to the stored values (mean included), so it stays below eps32 ||X||_F (Weyl) only with the mean
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((20_000, 5)) @ rng.standard_normal((5, 40)) + 100.0).astype(np.float32)
    sp = stream_spectrum("x", feed_of(lambda: _chunks(x, 4096)), "column", "all")
    x64 = x.astype(np.float64)
    assert sp.mean_energy == pytest.approx(20_000 * np.sum(x64.mean(axis=0) ** 2), rel=1e-12)
    s = sp.summary()
    assert s["tol"] == pytest.approx(EPS32 * np.linalg.norm(x64), rel=1e-9)
    assert s["rank_tol"] == 5
    assert sp.sigma[5] < s["tol"] < 1e-3 * sp.sigma[4]
    # with the centred norm alone the noise (~eps32 * 100 * sqrt(N)) would count as 35 more directions
    assert summarize(sp.sigma, sp.shape)["rank_tol"] > 5


# ----------------------------------------------------------------------------------------------- randomized


def test_randomized_spectrum_matches_the_top_values_and_bounds_the_rest():
    x, ref = _matrix(4000, 200, 1.0, 1e-8, 3.0, seed=8)  # decays by 0.91 per index
    calls = []

    def chunks():
        calls.append(1)
        return _chunks(x, 512)

    sv, energy, shape, mean = randomized_singular_values(feed_of(chunks), 30, niter=4)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    assert shape == (4000, 200) and len(calls) == 5  # one pass for the mean and energy, then one per iteration
    assert energy == pytest.approx(np.sum(ref**2), rel=1e-12)  # exact, from the same pass
    assert np.all(sv <= ref[:30] * (1 + 1e-12))  # Ritz values are lower bounds
    np.testing.assert_allclose(sv[:20], ref[:20], rtol=1e-6)
    s = summarize(sv, shape, energy=energy)
    full = summarize(ref, shape)
    assert (s["rank90"], s["rank99"]) == (full["rank90"], full["rank99"])  # both within k = 30
    assert s["rank_tol"] == ">= 30" and full["rank_tol"] > 30
    assert s["effective_rank"] is None and s["rankme"] is None and "unavailable" in s["note"]
    assert s["tol"] == pytest.approx(full["tol"], rel=1e-10)
    # k too small for 99% of the energy: "> k"
    small = summarize(sv[:5], shape, energy=energy)
    assert small["rank99"] == "> 5" and small["n_values"] == 5


def test_stream_spectrum_switches_to_randomized_above_the_column_limit():
    x, ref = _matrix(2000, 40, 1.0, 1e-3, 0.0, seed=9)
    feed = feed_of(lambda: _chunks(x, 300))
    exact = stream_spectrum("m", feed, "column", "all", cols=40, max_exact_cols=64)
    assert exact.method == "tsqr" and exact.energy is None
    np.testing.assert_allclose(exact.sigma, ref, rtol=1e-10)
    rand = stream_spectrum("m", feed, "column", "all", cols=40, max_exact_cols=32, rank=10)
    assert rand.method == "randomized" and rand.shape == (2000, 40) and len(rand.sigma) == 10
    np.testing.assert_allclose(rand.sigma, ref[:10], rtol=1e-4)
    assert rand.summary()["effective_rank"] is None


# ------------------------------------------------------------------------------------------------- sources


def test_column_spectrum_streams_row_groups_in_file_order(tmp_path):
    # three row groups, splits interleaved: the test rows of a hash split, centred, as numpy sees them
    rng = np.random.default_rng(10)
    n = 1000
    x = (rng.standard_normal((n, 6)) * [5, 4, 3, 2, 1, 0.5] + 50).astype(np.float32)
    path = tmp_path / "t.parquet"
    ids = [f"s{i}" for i in range(n)]
    write_table(build_table(ids, {"xa": x}), path, row_group_size=333)
    table = read_tables([path])
    split = table.split_array((0.5, 0.2, 0.3), 3)
    rows = x[split == "test"].astype(np.float64)
    ref = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False)
    sp = column_spectrum(table, "xa", "test", (0.5, 0.2, 0.3), 3)
    assert sp.shape == (len(rows), 6) and sp.method == "tsqr"
    np.testing.assert_allclose(sp.sigma, ref, rtol=1e-10)
    # only the id column in memory, the rows from a chunk source (as the command does for a file)
    meta = read_tables([path], columns=[])
    assert meta.column_names == ["id"]
    pf = pq.ParquetFile(path)

    def chunks():
        for b in pf.iter_batches(batch_size=100, columns=["xa"]):
            yield b.column(0).flatten().to_numpy().reshape(-1, 6)

    sp2 = column_spectrum(meta, "xa", "test", (0.5, 0.2, 0.3), 3, chunks=chunks, cols=6)
    np.testing.assert_allclose(sp2.sigma, ref, rtol=1e-10)


def test_feature_spectrum_streams_layer_outputs(tmp_path, monkeypatch):
    # a linear 3 -> 16 embedding: rank 3, the same values as numpy's SVD of all the outputs at once
    spec = {
        "arch": "mlp",
        "inputs": [{"name": "x", "shape": [3]}],
        "hidden": [16],
        "activation": "identity",
        "num_classes": 2,
        "task": "multiclass",
    }
    torch.manual_seed(0)
    model = build_model(spec).eval()
    n = 1000
    path = tmp_path / "t.parquet"
    rng = np.random.default_rng(11)
    write_table(build_table([f"r{i}" for i in range(n)], {"x": rng.standard_normal((n, 3)) + 2}), path)
    data = load_tensor_data(read_tables([path]), ["x"], need_labels=False)
    sp = feature_spectrum(model, data, "embedding", "all", batch_size=128)
    with torch.no_grad():
        emb = model.embed({"x": data.inputs["x"]}).double().numpy()
    np.testing.assert_allclose(sp.sigma, np.linalg.svd(emb - emb.mean(0), compute_uv=False), rtol=1e-5, atol=1e-5)
    assert sp.shape == (n, 16) and summarize(sp.sigma, sp.shape)["rank_tol"] == 3
    # C4: the outputs reach the accumulator one batch at a time, never as one N x F matrix
    seen = []
    add = SpectrumAccumulator.add
    monkeypatch.setattr(SpectrumAccumulator, "add", lambda self, c: (seen.append(tuple(c.shape)), add(self, c))[1])
    assert feature_spectrum(model, data, "embedding", "all", batch_size=128).shape == (n, 16)
    assert seen == [(128, 16)] * 7 + [(n - 7 * 128, 16)]
    monkeypatch.undo()
    gram = feature_spectrum(model, data, "embedding", "all", batch_size=128, method="gram")
    np.testing.assert_allclose(gram.sigma[:3], sp.sigma[:3], rtol=1e-8)
    rand = feature_spectrum(model, data, "embedding", "all", batch_size=128, max_exact_cols=8, rank=4)
    assert rand.method == "randomized"
    np.testing.assert_allclose(rand.sigma[:3], sp.sigma[:3], rtol=1e-6)


# -------------------------------------------------------------------------------------------------- memory


def _peak_rss_mb(args: list[str], cwd: Path) -> tuple[float, str]:
    """Peak anonymous resident memory (``RssAnon``, MB) of ``python -m cmkdtool ARGS``, sampled from /proc every
    10 ms while it runs, and its stdout. Anonymous memory is what the process allocates (arrays, Arrow buffers,
    allocator caches); the file-backed pages of torch's shared libraries, which ``VmHWM`` also counts, vary by
    tens of MB from run to run (measured: VmHWM 625-711 MB for the same command, RssAnon the same to 1 MB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmkdtool", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0.0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.01)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    return peak, out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) to read a peak RSS")
def test_c2_a_large_column_is_streamed_in_bounded_memory(tmp_path):
    """C2: a 1M x 64 float32 column (256 MB) peaks at most 100 MB above a tiny table's run, and gives the
    in-memory result."""
    n, d = 1_000_000, 64
    rng = np.random.default_rng(12)
    big = tmp_path / "big.parquet"
    with pq.ParquetWriter(
        big, pa.schema([("id", pa.string()), ("split", pa.string()), ("xa", pa.list_(pa.float32(), d))])
    ) as w:
        for start in range(0, n, 131072):
            k = min(131072, n - start)
            x = (rng.standard_normal((k, d), dtype=np.float32) * np.geomspace(1, 1e-3, d, dtype=np.float32)) + 10
            ids = pa.array([f"r{i}" for i in range(start, start + k)])
            split = pa.array(np.where(np.arange(start, start + k) % 10 < 8, "train", "test"))
            col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
            w.write_table(pa.table({"id": ids, "split": split, "xa": col}), row_group_size=65536)
    tiny = tmp_path / "tiny.parquet"
    write_table(pq.read_table(big).slice(0, 1000), tiny)
    args = ["spectrum", "--column", "xa", "--split", "train", "-f", "json", "-q"]
    base = _peak_rss_mb([*args, str(tiny), "-o", "tiny-sv.parquet"], tmp_path)[0]
    peak, out = _peak_rss_mb([*args, str(big), "-o", "big-sv.parquet"], tmp_path)
    assert peak - base <= 100, f"peak {peak:.0f} MB, baseline {base:.0f} MB: {peak - base:.0f} MB above"
    got = json.loads(out)[0]
    assert (got["rows"], got["cols"], got["method"], got["rank_tol"]) == (800_000, d, "tsqr", d)
    sigma = pq.read_table(tmp_path / "big-sv.parquet").column("sigma").to_numpy()
    # the in-memory result, independently: numpy's SVD of the whole centred train block in float64
    table = pq.read_table(big, columns=["split", "xa"])
    rows = np.asarray(table.column("split").to_numpy(zero_copy_only=False)) == "train"
    x = table.column("xa").combine_chunks().flatten().to_numpy().reshape(n, d)[rows]
    del table
    ref = np.linalg.svd(x - x.mean(axis=0, dtype=np.float64), compute_uv=False)
    np.testing.assert_allclose(sigma, ref, rtol=1e-9, atol=0)


def test_spectrum_of_an_arrow_file_and_a_folder_of_shards_equals_the_parquet_file(tmp_path):
    """`cmkdtool spectrum TABLE` reads any table input the other commands read: an Arrow IPC file (table convert)
    and a folder of Parquet shards give the Parquet file's numbers."""
    from cmkdtool.pipelines.table import convert_table

    rng = np.random.default_rng(4)
    n = 900
    x = (rng.standard_normal((n, 5)) * [4, 3, 2, 1, 0.5]).astype(np.float32)
    ids = [f"r{i}" for i in range(n)]
    write_table(build_table(ids, {"xa": x}), tmp_path / "t.parquet", row_group_size=200)
    convert_table(str(tmp_path / "t.parquet"), str(tmp_path / "t.arrow"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for k, (a, b) in enumerate(((0, 300), (300, 650), (650, n))):
        write_table(build_table(ids[a:b], {"xa": x[a:b]}), shards / f"part-{k}.parquet")

    def sigma(path) -> list[float]:
        done = subprocess.run([sys.executable, "-m", "cmkdtool", "spectrum", str(path), "--format", "json", "-q"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [r["sigma_max"] for r in json.loads(done.stdout)]

    ref = sigma(tmp_path / "t.parquet")
    assert ref and sigma(tmp_path / "t.arrow") == pytest.approx(ref, rel=1e-9)
    assert sigma(shards) == pytest.approx(ref, rel=1e-9)
