"""Data placements (scale spec B2, B3, B6): device, host and stream, and the auto choice with its note."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.data.placement import StreamData, parse_size
from cmkdtool.engine.distributed import DistContext
from cmkdtool.io.tables import build_table
from cmkdtool.pipelines.open import open_tables

D = 16


def _table(path, n, *, group=500, val_every=10, seed=0, d=D):
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=(d, 3)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    split = np.where(np.arange(n) % val_every == 0, "val", "train").astype(object)
    t = build_table([f"r{i}" for i in range(n)], {"x": x, "z": x[:, :4] * 2}, label=(x @ w).argmax(1), split=split)
    pq.write_table(t, path, row_group_size=group)
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("placement") / "t.parquet", 6000)


def _run(*args, env=None, monkeypatch=None):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_parse_size():
    assert parse_size("256MB") == 256_000_000 and parse_size("2GiB") == 2 * 2**30 and parse_size("1000") == 1000
    with pytest.raises(Exception, match="give a size"):
        parse_size("lots")


def test_device_and_host_give_bit_identical_weights(tmp_path, table):
    """B3: the host placement draws the same batches as device; on the CPU the weights are bit-identical (a
    pretrain and a cached-teacher KD run, which also checks the train-rows-only teacher cache)."""
    common = ["--arch", "mlp", "--hidden", "8", "--epochs", "2", "--device", "cpu", "-q"]
    out = {}
    for p in ("device", "host"):
        o = tmp_path / f"t_{p}.safetensors"
        assert _run("pretrain", table, "-i", "x", *common, "--data-placement", p, "-o", o).exit_code == 0
        k = tmp_path / f"kd_{p}.safetensors"
        res = _run("distill", "kd", table, "-t", tmp_path / "t_device.safetensors", "-i", "z", *common,
                   "--data-placement", p, "-o", k)  # fmt: skip
        assert res.exit_code == 0, res.stderr
        out[p] = (load_file(o), load_file(k))
        with safe_open(str(k), "pt") as f:
            assert f'"placement": "{p}"' in f.metadata()["cmkdtool.train"]
    for a, b in zip(out["device"], out["host"], strict=True):
        assert all(np.array_equal(a[n], b[n]) for n in a)


def _stream(table, **kw):
    opened = open_tables([str(table)], ["x"], "cpu", placement="stream", **kw)
    assert isinstance(opened.data, StreamData) and opened.data.placement == "stream"
    return opened.data


def test_stream_sees_every_train_row_once_per_epoch(table):
    data = _stream(table, shuffle_buffer=3)
    train = data.index("train")
    src = data.train_batches(train, 64, None)
    gen = torch.Generator().manual_seed(0)
    x = pq.read_table(table).column("x").combine_chunks().flatten().to_numpy().reshape(-1, D)
    orders = []
    for _ in range(2):
        batches = list(src.epoch(gen))
        assert len(batches) == src.steps_per_epoch
        idx = torch.cat([b.index for b in batches])
        assert sorted(idx.tolist()) == train.tolist()  # every train row exactly once, no val row
        b = batches[5]
        assert np.array_equal(b.inputs["x"].numpy(), x[b.index.numpy()])  # features travel with their row
        assert torch.equal(b.target, data.target[b.index])
        orders.append(idx)
    assert not torch.equal(orders[0], orders[1])  # another permutation each epoch
    first = torch.Generator().manual_seed(0)
    again = torch.cat([b.index for b in src.epoch(first)])
    assert torch.equal(again, orders[0])  # the order follows the trainer's generator (resume repeats it)


def test_stream_under_two_ranks_splits_rows_and_keeps_steps_equal(table):
    """B6 at the unit level: disjoint parts, together every train row once, the same number of steps, and
    Batch.share = local rows x W / global rows."""
    data = _stream(table, shuffle_buffer=2)
    train = data.index("train")
    parts, steps, shares = [], [], []
    for r in range(2):
        src = data.train_batches(train, 100, DistContext(rank=r, world_size=2))
        batches = list(src.epoch(torch.Generator().manual_seed(3)))
        parts.append(torch.cat([b.index for b in batches]))
        steps.append(len(batches))
        shares.append([(len(b.index), b.share) for b in batches])
    assert steps[0] == steps[1] == src.steps_per_epoch
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    assert sorted(parts[0].tolist() + parts[1].tolist()) == train.tolist()
    for (n0, s0), (n1, s1) in zip(*shares, strict=True):
        assert s0 == pytest.approx(n0 * 2 / (n0 + n1)) and s1 == pytest.approx(n1 * 2 / (n0 + n1))


def test_stream_of_fewer_row_groups_than_processes_interleaves_rows(tmp_path):
    """One row group (a small table) under 2 ranks: whole row groups cannot be shared out, so each rank reads it and
    keeps every other train row: disjoint parts, every train row once, equal steps, no empty batch (an empty
    batch gives a NaN loss)."""
    data = _stream(_table(tmp_path / "one.parquet", 700, group=700), shuffle_buffer=2)
    train = data.index("train")
    parts, steps = [], []
    for r in range(2):
        batches = list(data.train_batches(train, 64, DistContext(rank=r, world_size=2)).epoch(
            torch.Generator().manual_seed(5)))  # fmt: skip
        assert min(len(b.index) for b in batches) >= 2
        parts.append(torch.cat([b.index for b in batches]).tolist())
        steps.append(len(batches))
    assert steps[0] == steps[1]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == train.tolist()
    assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_shuffle_quality_note_for_rows_grouped_by_class(tmp_path, capsys):
    """B7: rows sorted by class put one or two classes in each row group; a buffer of 2 row groups then holds a
    fraction of the classes, and a note names a --shuffle-buffer that would hold 90 % of them. A shuffled table
    of the same rows gets no note."""
    from cmkdtool.data.placement import shuffle_quality

    n, classes = 1200, 6
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), n // classes)
    x = rng.normal(size=(n, 4)).astype(np.float32) + y[:, None]
    for name, order in (("sorted", np.arange(n)), ("shuffled", rng.permutation(n))):
        t = build_table([f"r{i}" for i in order], {"x": x[order]}, label=y[order])
        pq.write_table(t, tmp_path / f"{name}.parquet", row_group_size=100)
    note = shuffle_quality(_stream(tmp_path / "sorted.parquet", shuffle_buffer=2))
    assert note is not None and "a buffer of 2 row groups holds" in note and "of the 6 classes" in note
    need = int(note.split("--shuffle-buffer ")[1].split()[0])
    assert 2 < need <= 12
    assert shuffle_quality(_stream(tmp_path / "sorted.parquet", shuffle_buffer=need)) is None
    assert shuffle_quality(_stream(tmp_path / "shuffled.parquet", shuffle_buffer=2)) is None
    open_tables([str(tmp_path / "sorted.parquet")], ["x"], "cpu", placement="stream", shuffle_buffer=2, quiet=False)
    assert "rows grouped by class?" in capsys.readouterr().err


def test_stream_learns_within_two_points_of_device(tmp_path):
    path = _table(tmp_path / "learn.parquet", 20000, group=1000, seed=1)
    acc = {}
    for p in ("device", "stream"):
        o = tmp_path / f"{p}.safetensors"
        res = _run("pretrain", path, "-i", "x", "--arch", "linear", "--epochs", "3", "--lr", "0.01", "--device", "cpu",
                   "--batch-size", "128", "--data-placement", p, "--shuffle-buffer", "4", "-q", "-o", o)  # fmt: skip
        assert res.exit_code == 0, res.stderr
        import json

        with safe_open(str(o), "pt") as f:
            acc[p] = json.loads(f.metadata()["cmkdtool.train"])["best_metrics"]["val/accuracy"]
    assert acc["device"] > 0.85 and abs(acc["device"] - acc["stream"]) <= 0.02, acc


def test_stream_distills_with_a_streamed_teacher_cache(tmp_path, table):
    t = tmp_path / "t.safetensors"
    assert _run("pretrain", table, "-i", "x", "--arch", "linear", "--epochs", "3", "--device", "cpu", "-q",
                "-o", t).exit_code == 0  # fmt: skip
    res = _run("distill", "kd", table, "-t", t, "-i", "z", "--arch", "linear", "--epochs", "3", "--device", "cpu",
               "--data-placement", "stream", "-q", "-o", tmp_path / "s.safetensors")  # fmt: skip
    assert res.exit_code == 0, res.stderr


def test_auto_chooses_by_budget_and_says_why(tmp_path, table, monkeypatch):
    out = tmp_path / "a.safetensors"
    monkeypatch.setenv("CMKDTOOL_MEMORY_BUDGET", "100kB")
    res = _run("pretrain", table, "-i", "x", "--arch", "linear", "--epochs", "1", "--device", "cpu", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "note: " in res.stderr and "do not fit in 100 kB" in res.stderr and "streaming row groups" in res.stderr
    with safe_open(str(out), "pt") as f:
        assert '"placement": "stream"' in f.metadata()["cmkdtool.train"]
    res = _run("pretrain", table, "-i", "x", "--arch", "linear", "--epochs", "1", "--device", "cpu", "-q", "-o", out)
    assert res.exit_code == 0 and res.stderr == ""
    monkeypatch.setenv("CMKDTOOL_MEMORY_BUDGET", "1GB")
    res = _run("pretrain", table, "-i", "x", "--arch", "linear", "--epochs", "1", "--device", "cpu", "-o", out)
    assert res.exit_code == 0 and "streaming" not in res.stderr
    with safe_open(str(out), "pt") as f:
        assert '"placement": "device"' in f.metadata()["cmkdtool.train"]


def test_stdin_cannot_stream(table):
    res = CliRunner().invoke(app, ["pretrain", "-", "-i", "x", "--data-placement", "stream", "-o", "x.safetensors"],
                             input=b"")  # fmt: skip
    assert res.exit_code == 2 and "cannot be streamed" in res.stderr and "write it to a file" in res.stderr


_PEAK = """import runpy, sys, threading, time
peak = [0]


def watch():  # anonymous memory, sampled: file-backed library pages (in ru_maxrss) vary by tens of MB per run
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        time.sleep(0.01)


threading.Thread(target=watch, daemon=True).start()
sys.argv = ["cmkdtool", *sys.argv[1:]]
try:
    runpy.run_module("cmkdtool", run_name="__main__")
finally:
    print("PEAK", peak[0], file=sys.stderr)
"""


def _peak(path, out, budget, placement="auto"):
    env = {"CMKDTOOL_MEMORY_BUDGET": budget, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _PEAK, "pretrain", str(path), "-i", "x", "--arch", "linear", "--epochs", "1",
         "--batch-size", "512", "--device", "cpu", "--data-placement", placement, "-o", str(out)],
        capture_output=True, text=True, timeout=200, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return int(res.stderr.split("PEAK")[-1].split()[0]), res.stderr


def test_streamed_pretrain_does_not_hold_the_features(tmp_path):
    """B2 at a CI size: 120k and 360k x 256 tables (123 and 369 MB of features, 8192-row groups) under a 32 MB
    budget stream (auto says so), and the peak anonymous memory grows by far less than the extra rows' features
    (what grows is the small columns held per row: ids, split, labels, indices, about 190-250 bytes a row against
    1024 bytes of features: holding the features would grow it by 246 MB or more); the in-memory placement on the
    larger table needs more than twice the stream's memory."""
    feat = {n: n * 256 * 4 for n in (120_000, 360_000)}
    tiny = _table(tmp_path / "tiny.parquet", 1000, group=8192, val_every=50, d=256)
    base, _ = _peak(tiny, tmp_path / "tiny.safetensors", "32MB")
    peak = {}
    for n in feat:
        big = _table(tmp_path / f"big{n}.parquet", n, group=8192, val_every=50, d=256)
        peak[n], err = _peak(big, tmp_path / "big.safetensors", "32MB")
        assert "streaming row groups" in err
    device, _ = _peak(tmp_path / "big360000.parquet", tmp_path / "dev.safetensors", "32MB", "device")
    grown = peak[360_000] - peak[120_000]
    assert grown < 0.4 * (feat[360_000] - feat[120_000]), (grown / 1e6, peak, base)
    assert peak[360_000] - base < 0.5 * (device - base), (peak, device, base)
