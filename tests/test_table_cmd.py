"""``cmkdtool table convert`` / ``table join``, Arrow IPC inputs and folders of shards (scale spec B4, B5)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.errors import CmkdError
from cmkdtool.io.tables import build_table, iter_column_chunks, read_tables, write_table
from cmkdtool.pipelines.table import convert_table, join_tables

N = 300


def _run(*args, stdin: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 6)).astype(np.float32)
    img = rng.normal(size=(N, 2, 2)).astype(np.float32)
    label = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    split = np.asarray(["train", "train", "train", "val", "test"] * (N // 5), dtype=object)
    ids = [f"s{i:04d}" for i in range(N)]
    return ids, x, img, label, split


@pytest.fixture(scope="module")
def single(tmp_path_factory, data):
    ids, x, img, label, split = data
    folder = tmp_path_factory.mktemp("single")
    t = build_table(ids, {"x": x, "img": img}, label=label, split=split, meta={"class_names": ["no", "yes"]})
    write_table(t, folder / "t.parquet", row_group_size=64)
    return folder / "t.parquet"


def _shards(folder, data, cuts=(0, 100, 210, N), width=None, dup=False):
    ids, x, img, label, split = data
    folder.mkdir(exist_ok=True)
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        xs = x[a:b] if width is None or k < 2 else np.zeros((b - a, width), np.float32)
        shard_ids = list(ids[a:b])
        if dup and k == 2:
            shard_ids[5] = ids[7]  # an id of the first shard
        t = build_table(shard_ids, {"x": xs, "img": img[a:b]}, label=label[a:b], split=split[a:b],
                        meta={"class_names": ["no", "yes"]})  # fmt: skip
        write_table(t, folder / f"part-{k:03d}.parquet", row_group_size=64)
    return folder


def _same_loaded(a, b, inputs=("x", "img")):
    da, db = (load_tensor_data(read_tables([str(p)], columns=list(inputs)), list(inputs)) for p in (a, b))
    assert da.ids.tolist() == db.ids.tolist() and da.split.tolist() == db.split.tolist()
    assert da.target.tolist() == db.target.tolist() and da.shapes == db.shapes
    for c in inputs:
        assert np.array_equal(da.inputs[c].numpy(), db.inputs[c].numpy())


def test_folder_of_shards_reads_as_the_single_file(tmp_path, data, single):
    folder = _shards(tmp_path / "shards", data)
    (folder / "_SUCCESS").write_text("")  # markers and hidden files are not shards
    _same_loaded(single, folder)
    assert np.array_equal(np.concatenate(list(iter_column_chunks(folder, "x"))), data[1])
    assert read_tables([str(folder)], columns=[]).class_names() == ["no", "yes"]


def test_folder_errors_name_the_files(tmp_path, data):
    dup = _shards(tmp_path / "dup", data, dup=True)
    with pytest.raises(CmkdError, match=r"id 's0007' is in both .*part-000\.parquet and .*part-002\.parquet"):
        read_tables([str(dup)], columns=["x"])
    wide = _shards(tmp_path / "wide", data, width=7)
    with pytest.raises(CmkdError, match=r"part-002\.parquet: column 'x' is .*7.* but .*part-000\.parquet has .*6"):
        read_tables([str(wide)], columns=["x"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CmkdError, match="no table shards"):
        read_tables([str(tmp_path / "empty")])


def test_convert_round_trip_and_ipc_input(tmp_path, single):
    arrow = tmp_path / "t.arrow"
    w = convert_table(str(single), str(arrow))
    assert (w.format, w.rows) == ("arrow", N)
    with open(arrow, "rb") as f:
        assert f.read(6) == b"ARROW1"
    reader = ipc.open_file(pa.memory_map(str(arrow)))
    assert {reader.get_batch(i).num_rows for i in range(reader.num_record_batches - 1)} == {8192} or N <= 8192
    back = tmp_path / "back.parquet"
    assert convert_table(str(arrow), str(back)).format == "parquet"  # auto: the other format
    a, b = pq.read_table(single), pq.read_table(back)
    assert a.equals(b) and a.schema.metadata == b.schema.metadata
    assert b.schema.field("img").metadata == a.schema.field("img").metadata  # shape metadata kept
    _same_loaded(single, arrow)  # B5: an IPC input loads the same tensors
    small = tmp_path / "small.arrow"
    convert_table(str(single), str(small), batch_rows=50)
    r = ipc.open_file(pa.memory_map(str(small)))
    assert [r.get_batch(i).num_rows for i in range(r.num_record_batches)] == [50] * 6


def test_convert_from_stdin_and_cli_errors(tmp_path, single):
    sink = io.BytesIO()
    t = pq.read_table(single)
    with ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    out = tmp_path / "s.arrow"
    res = _run("table", "convert", "-", "-o", out, stdin=sink.getvalue())
    assert res.exit_code == 0, res.stderr
    assert f"wrote {out}: {N} rows" in res.stderr
    assert pa.ipc.open_file(str(out)).read_all().equals(t)
    res = _run("table", "convert", tmp_path / "missing.parquet", "-o", tmp_path / "x.arrow")
    assert res.exit_code == 1 and res.stderr.startswith("cmkdtool: error: ") and res.stderr.count("\n") == 1
    res = _run("table", "convert", single, "-o", single)
    assert res.exit_code == 2 and "is also the input" in res.stderr
    res = _run("table", "convert", single, "-o", tmp_path / "y.arrow", "--format", "csv")
    assert res.exit_code == 2 and "--format" in res.stderr
    assert not list(tmp_path.glob("*.tmp*")) and not (tmp_path / "x.arrow").exists()


def test_training_on_ipc_and_shards_gives_the_parquet_weights(tmp_path, data, single):
    """B4/B5 at the command level: the same weights from the Parquet file, its Arrow IPC copy and 3 shards."""
    arrow = tmp_path / "t.arrow"
    convert_table(str(single), str(arrow))
    folder = _shards(tmp_path / "shards", data)
    weights = []
    for i, src in enumerate((single, arrow, folder)):
        out = tmp_path / f"m{i}.safetensors"
        res = _run("pretrain", src, "-i", "x", "--arch", "linear", "--epochs", "3", "--device", "cpu", "-q", "-o", out)
        assert res.exit_code == 0, res.stderr
        weights.append(load_file(out))
    for w in weights[1:]:
        assert w.keys() == weights[0].keys()
        assert all(np.array_equal(w[k], weights[0][k]) for k in w)


def test_join_aligned_and_unaligned_equal_the_in_memory_join(tmp_path, data):
    ids, x, img, label, split = data
    a = build_table(ids, {"x": x}, label=label, split=split, meta={"class_names": ["no", "yes"]})
    write_table(a, tmp_path / "a.parquet", row_group_size=64)
    b = build_table(ids, {"img": img}, label=label)
    write_table(b, tmp_path / "b.parquet", row_group_size=50)  # aligned, other row groups
    perm = np.random.default_rng(0).permutation(N)[: N - 20]  # shuffled, 20 rows missing
    c = build_table([ids[i] for i in perm], {"img": img[perm]}, label=label[perm])
    write_table(c, tmp_path / "c.parquet", row_group_size=32)
    for other, block, aligned in (("b", 65536, True), ("c", 37, False)):
        out = tmp_path / f"j{other}.parquet"
        w = join_tables([str(tmp_path / "a.parquet"), str(tmp_path / f"{other}.parquet")], str(out), block_rows=block)
        assert any("not aligned" in n for n in w.notes) != aligned
        joined = read_tables([str(out)])
        memory = read_tables([str(tmp_path / "a.parquet"), str(tmp_path / f"{other}.parquet")])
        assert joined.column_names == memory.column_names == ["id", "label", "split", "x", "img"]
        assert joined.table.equals(memory.table.cast(joined.table.schema))
        assert joined.class_names() == ["no", "yes"]
    assert pq.ParquetFile(tmp_path / "jc.parquet").metadata.num_rows == N - 20


def test_join_errors(tmp_path, data):
    ids, x, img, label, split = data
    write_table(build_table(ids, {"x": x}, label=label), tmp_path / "a.parquet")
    write_table(build_table(ids, {"x": x}), tmp_path / "same.parquet")
    write_table(build_table([f"o{i}" for i in range(N)], {"img": img}), tmp_path / "other.parquet")
    write_table(build_table(ids, {"img": img}, label=1 - label), tmp_path / "flip.parquet")
    cases = [
        (["same"], 1, "column 'x' is in both"),
        (["other"], 1, "no id in common"),
        (["flip"], 1, "column 'label' disagrees"),
        ([], 2, "at least two tables"),
    ]
    for others, code, message in cases:
        res = _run("table", "join", tmp_path / "a.parquet", *[tmp_path / f"{o}.parquet" for o in others],
                   "-o", tmp_path / "j.parquet")  # fmt: skip
        assert res.exit_code == code, res.stderr
        assert message in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "j.parquet").exists() and not list(tmp_path.glob("*.tmp*"))
