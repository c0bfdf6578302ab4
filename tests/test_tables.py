"""Library-level tests of cmkdtool.io: Parquet feature tables, '-' streams, joins on id, hash splits, atomic
writes and safetensors checkpoints (DESIGN.md, Files)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import torch

from cmkdtool import __version__
from cmkdtool.data.tensors import load_tensor_data, multi_hot
from cmkdtool.errors import CmkdError
from cmkdtool.io.atomic import atomic_path, atomic_write_text, check_output_path
from cmkdtool.io.checkpoints import (
    FORMAT,
    FORMAT_KEY,
    MODEL_KEY,
    TRAIN_KEY,
    VERSION_KEY,
    load_model,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)
from cmkdtool.io.tables import META_KEY, build_table, hash_split, iter_column_chunks, read_tables, write_table

N = 30

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def arrays():
    """Plain numpy contents of a small table with a vector column and a (2, 3)-shaped column."""
    rng = np.random.default_rng(0)
    return {
        "ids": [f"clip-{i:03d}" for i in range(N)],
        "label": rng.integers(0, 3, N).astype(np.int64),
        "split": np.asarray(["train"] * 20 + ["val"] * 5 + ["test"] * 5, dtype=object),
        "xa": rng.normal(size=(N, 5)).astype(np.float32),
        "img": rng.normal(size=(N, 2, 3)).astype(np.float32),
        "meta": {"class_names": ["cat", "dog", "owl"], "seed": 7, "command": "cmkdtool synth mfh -o x.parquet"},
    }


@pytest.fixture
def table(arrays):
    a = arrays
    return build_table(a["ids"], {"xa": a["xa"], "img": a["img"]}, label=a["label"], split=a["split"], meta=a["meta"])


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class FakeStream:
    """Stands in for sys.stdin / sys.stdout: a binary ``.buffer`` and a settable ``isatty``."""

    def __init__(self, data: bytes = b"", tty: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def write(self, text: str) -> int:  # text written by mistake would land here, and fail the byte checks
        return self.buffer.write(text.encode())

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- round trip


def test_feature_table_round_trip(tmp_path, arrays, table):
    path = tmp_path / "t.parquet"
    write_table(table, path)
    ft = read_tables([str(path)])

    assert ft.num_rows == N and ft.sources == [str(path)] and ft.notes == []
    assert ft.ids().tolist() == arrays["ids"]
    lab = ft.label_array()
    assert lab.dtype == np.int64 and lab.tolist() == arrays["label"].tolist()
    assert ft.split_array().tolist() == arrays["split"].tolist()
    assert ft.task() == "multiclass" and ft.modality_columns() == ["xa", "img"]

    xa = ft.array("xa")
    assert xa.dtype == np.float32 and xa.shape == (N, 5)
    np.testing.assert_array_equal(xa, arrays["xa"])
    assert ft.shape("xa") == (5,)

    img = ft.array("img")
    assert img.dtype == np.float32 and img.shape == (N, 6)
    np.testing.assert_array_equal(img, arrays["img"].reshape(N, 6))  # row-major flattening
    assert ft.shape("img") == (2, 3)

    schema = pq.read_schema(path)
    for name, width in (("xa", 5), ("img", 6)):
        t = schema.field(name).type
        assert pa.types.is_fixed_size_list(t) and t.value_type == pa.float32() and t.list_size == width
    assert json.loads(schema.field("img").metadata[b"shape"]) == [2, 3]
    assert not (schema.field("xa").metadata or {}).get(b"shape")  # vectors carry no shape metadata
    assert schema.field("id").type == pa.string() and not schema.field("id").nullable
    assert schema.field("label").type == pa.int64()
    assert json.loads(schema.metadata[META_KEY]) == arrays["meta"]
    assert ft.meta == arrays["meta"] and ft.class_names() == ["cat", "dog", "owl"]


def test_parquet_is_zstd_compressed(tmp_path, table):
    path = tmp_path / "t.parquet"
    write_table(table, path)
    md = pq.ParquetFile(path).metadata
    codecs = {md.row_group(0).column(i).compression for i in range(md.num_columns)}
    assert codecs == {"ZSTD"}


def test_row_groups_of_the_requested_size(tmp_path, arrays):
    n = 200
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    whole = build_table([f"r{i}" for i in range(n)], {"x": x}, label=np.arange(n) % 2)
    # also a table assembled from many small chunks (e.g. streamed in): row groups must not follow the chunks
    chunked = pa.concat_tables([whole.slice(i, 4) for i in range(0, n, 4)])
    assert chunked.column("x").num_chunks == 50
    for name, t in (("whole", whole), ("chunked", chunked)):
        path = tmp_path / f"{name}.parquet"
        write_table(t, path, row_group_size=64)
        md = pq.ParquetFile(path).metadata
        assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [64, 64, 64, 8], name
        back = read_tables([str(path)])
        np.testing.assert_array_equal(back.array("x"), x)
        assert back.ids().tolist() == [f"r{i}" for i in range(n)]


def test_default_row_group_size_follows_the_module_constant(tmp_path, monkeypatch, table):
    import cmkdtool.io.tables as tables_mod

    monkeypatch.setattr(tables_mod, "ROW_GROUP_SIZE", 8)
    path = tmp_path / "t.parquet"
    write_table(table, path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4  # 30 rows: 8 + 8 + 8 + 6


# ---------------------------------------------------------------------------------------------- multi-label


def test_multilabel_round_trip_and_multi_hot(tmp_path):
    labels = [[0, 2], [], [1], [0, 1, 2], [2], [1, 2]] * 3
    x = np.arange(len(labels) * 2, dtype=np.float32).reshape(-1, 2)
    ids = [f"m{i}" for i in range(len(labels))]
    path = tmp_path / "ml.parquet"
    write_table(build_table(ids, {"x": x}, labels=labels, meta={"class_names": ["a", "b", "c"]}), path)

    assert pq.read_schema(path).field("labels").type == pa.list_(pa.int64())
    ft = read_tables([str(path)])
    assert ft.task() == "multilabel" and ft.has_labels()
    got = ft.label_array()
    assert [v.tolist() for v in got] == labels and all(v.dtype == np.int64 for v in got)

    expected = np.zeros((len(labels), 3), np.float32)
    for r, row in enumerate(labels):
        expected[r, row] = 1.0
    np.testing.assert_array_equal(multi_hot(got, 3), expected)
    np.testing.assert_array_equal(multi_hot(np.asarray([[1], [0, 3]], dtype=object), 4), [[0, 1, 0, 0], [1, 0, 0, 1]])

    data = load_tensor_data(ft, ["x"])
    assert data.task == "multilabel" and data.num_classes == 3
    assert data.target.dtype == torch.float32
    np.testing.assert_array_equal(data.target.numpy(), expected)


# ---------------------------------------------------------------------------------------------- '-' streams


def test_stream_round_trip_through_stdout_and_stdin(monkeypatch, table):
    out = FakeStream()
    monkeypatch.setattr(sys, "stdout", out)
    write_table(table, "-", row_group_size=7)
    data = out.buffer.getvalue()
    assert not data.startswith(b"PAR1")  # an Arrow IPC stream, not Parquet
    assert ipc.open_stream(data).read_all().equals(table, check_metadata=True)

    monkeypatch.setattr(sys, "stdin", FakeStream(data))
    ft = read_tables(["-"])
    assert ft.name == "<stdin>" and ft.table.equals(table, check_metadata=True)
    assert ft.shape("img") == (2, 3) and ft.meta["class_names"] == ["cat", "dog", "owl"]

    monkeypatch.setattr(sys, "stdin", FakeStream(data))
    only = read_tables(["-"], columns=["xa"])
    assert only.column_names == ["id", "label", "split", "xa"]


def test_stream_refuses_a_terminal(monkeypatch, table):
    out = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(CmkdError, match="terminal"):
        write_table(table, "-")
    assert out.buffer.getvalue() == b""

    monkeypatch.setattr(sys, "stdin", FakeStream(b"", tty=True))
    with pytest.raises(CmkdError, match="terminal"):
        read_tables(["-"])


@pytest.mark.parametrize("data", [b"PAR1 this is not an arrow stream", b"id,label\nx,1\n"])
def test_stdin_that_is_not_an_arrow_stream(monkeypatch, data):
    monkeypatch.setattr(sys, "stdin", FakeStream(data))
    with pytest.raises(CmkdError, match="<stdin>: not an Arrow IPC stream"):
        read_tables(["-"])


def test_stdin_only_once():
    with pytest.raises(CmkdError, match="only once"):
        read_tables(["-", "-"])


# ---------------------------------------------------------------------------------------------- joins


def _write(path, ids, **cols):
    """A table with the given id order and columns (2-D float arrays become feature columns)."""
    arrays, names = [pa.array(ids, pa.string())], ["id"]
    for name, v in cols.items():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float32).ravel()), v.shape[1]))
        else:
            arrays.append(pa.array(v.tolist()))
        names.append(name)
    pq.write_table(pa.table(arrays, names=names), path)
    return str(path)


def test_join_keeps_first_order_and_counts_dropped_rows(tmp_path):
    ids_a = [f"s{i}" for i in range(10)]  # s0..s9
    xa = np.arange(20, dtype=np.float32).reshape(10, 2)
    a = _write(tmp_path / "a.parquet", ids_a, label=np.arange(10) % 2, xa=xa)
    ids_b = [f"s{i}" for i in (12, 9, 3, 7, 10, 4, 8, 11, 5, 13, 6)]  # s3..s13, shuffled: 4 unmatched
    xb = np.asarray([[int(i[1:]) * 100.0] for i in ids_b], dtype=np.float32)
    b = _write(tmp_path / "b.parquet", ids_b, xb=xb)

    ft = read_tables([a, b], columns=["xa", "xb"])
    assert ft.ids().tolist() == [f"s{i}" for i in range(3, 10)]
    np.testing.assert_array_equal(ft.array("xa"), xa[3:])
    np.testing.assert_array_equal(ft.array("xb")[:, 0], [i * 100.0 for i in range(3, 10)])  # paired by id
    assert ft.label_array().tolist() == [i % 2 for i in range(3, 10)]
    assert len(ft.notes) == 1
    note = ft.notes[0]
    assert "kept 7 rows" in note and "dropped 3 rows" in note and "4 rows of" in note and b in note
    assert ft.name == f"{a} + {b}"

    full = read_tables([a, _write(tmp_path / "c.parquet", list(reversed(ids_a)), xc=xa[::-1])])
    assert full.notes == [] and full.ids().tolist() == ids_a
    np.testing.assert_array_equal(full.array("xc"), xa)


def test_join_label_columns_must_agree(tmp_path):
    ids = [f"s{i}" for i in range(6)]
    x = np.zeros((6, 2), np.float32)
    a = _write(tmp_path / "a.parquet", ids, label=[0, 1, 0, 1, 0, 1], xa=x)
    same = _write(tmp_path / "same.parquet", ids[::-1], label=[1, 0, 1, 0, 1, 0], xb=x)  # same labels by id
    assert read_tables([a, same]).label_array().tolist() == [0, 1, 0, 1, 0, 1]
    other = _write(tmp_path / "other.parquet", ids, label=[0, 1, 0, 1, 1, 1], xb=x)
    with pytest.raises(CmkdError, match=r"other\.parquet: column 'label' disagrees with .*a\.parquet"):
        read_tables([a, other])


def test_join_feature_column_in_both_tables_is_an_error(tmp_path):
    ids = [f"s{i}" for i in range(4)]
    x = np.zeros((4, 2), np.float32)
    a = _write(tmp_path / "a.parquet", ids, xa=x)
    b = _write(tmp_path / "b.parquet", ids, xa=x)
    with pytest.raises(CmkdError, match=r"column 'xa' is in both .*a\.parquet and .*b\.parquet; rename"):
        read_tables([a, b])


def test_join_without_common_ids_is_an_error(tmp_path):
    x = np.zeros((3, 2), np.float32)
    a = _write(tmp_path / "a.parquet", ["a", "b", "c"], xa=x)
    b = _write(tmp_path / "b.parquet", ["d", "e", "f"], xb=x)
    with pytest.raises(CmkdError, match="no id in common"):
        read_tables([a, b])


# ---------------------------------------------------------------------------------------------- plain pyarrow


def test_table_written_by_plain_pyarrow_is_accepted(tmp_path):
    """What docs/formats.md tells users to write: no cmkdtool metadata, list columns, even float64 values."""
    rng = np.random.default_rng(3)
    n, d = 24, 4
    emb = rng.normal(size=(n, d)).astype(np.float32)
    var = rng.normal(size=(n, 3)).astype(np.float32)
    dbl = rng.normal(size=(n, 2))  # float64
    label = np.arange(n) % 3
    user = pa.table(
        {
            "id": [f"utt{i}" for i in range(n)],
            "label": pa.array(label, pa.int64()),
            "emb": pa.array(list(emb), type=pa.list_(pa.float32(), d)),
            "var": pa.array([list(r) for r in var], type=pa.list_(pa.float32())),
            "dbl": pa.array([list(r) for r in dbl], type=pa.list_(pa.float64(), 2)),
        }
    )
    assert user.schema.metadata is None
    path = tmp_path / "user.parquet"
    pq.write_table(user, path)

    ft = read_tables([str(path)])
    assert ft.meta == {} and ft.class_names() is None
    assert ft.modality_columns() == ["emb", "var", "dbl"]
    data = load_tensor_data(ft, ["emb", "var", "dbl"])
    assert data.shapes == {"emb": (d,), "var": (3,), "dbl": (2,)}
    assert all(t.dtype == torch.float32 for t in data.inputs.values())
    np.testing.assert_array_equal(data.inputs["emb"].numpy(), emb)
    np.testing.assert_array_equal(data.inputs["var"].numpy(), var)
    np.testing.assert_allclose(data.inputs["dbl"].numpy(), dbl.astype(np.float32))
    assert data.task == "multiclass" and data.num_classes == 3
    assert data.target.tolist() == label.tolist()
    assert data.split.tolist() == hash_split([f"utt{i}" for i in range(n)]).tolist()  # no split column


def test_variable_length_list_column_errors(tmp_path):
    ragged = pa.table({"id": ["a", "b"], "v": pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32()))})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(CmkdError, match="different lengths"):
        read_tables([str(tmp_path / "ragged.parquet")]).shape("v")

    nulls = pa.table({"id": ["a", "b", "c"], "v": pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32()))})
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    ft = read_tables([str(tmp_path / "nulls.parquet")])
    assert ft.shape("v") == (2,)  # a null row is not a second length
    with pytest.raises(CmkdError, match="1 null rows"):
        ft.array("v")


def test_missing_and_misspelled_columns_name_what_is_there(tmp_path, table):
    path = tmp_path / "t.parquet"
    write_table(table, path)
    with pytest.raises(CmkdError, match=r"no column 'x_a' \(did you mean 'xa'\?\); feature columns here: xa, img"):
        read_tables([str(path)], columns=["x_a"])
    with pytest.raises(CmkdError, match=r"no column 'audio'; feature columns here: xa, img"):
        read_tables([str(path)], columns=["audio"])


def test_bad_shape_metadata_and_label_and_split_types(tmp_path):
    f = pa.field("x", pa.list_(pa.float32(), 6), metadata={b"shape": b"[4, 2]"})
    t = pa.table(
        {"id": ["a", "b"], "label": pa.array([0.0, 1.0]), "split": ["train", "dev"]},
    ).append_column(f, pa.array([[0.0] * 6] * 2, pa.list_(pa.float32(), 6)))
    pq.write_table(t, tmp_path / "bad.parquet")
    ft = read_tables([str(tmp_path / "bad.parquet")])
    with pytest.raises(CmkdError, match=r"shape metadata \[4, 2\] does not match its width 6"):
        ft.shape("x")
    with pytest.raises(CmkdError, match="'label' must be integer"):
        ft.label_array()
    with pytest.raises(CmkdError, match=r"'split' has values \['dev'\]"):
        ft.split_array()


# ---------------------------------------------------------------------------------------------- hash split


def test_hash_split_is_deterministic_order_free_and_seeded():
    ids = np.asarray([f"sample-{i}" for i in range(10_000)], dtype=object)
    a = hash_split(ids, (0.8, 0.1, 0.1), seed=0)
    assert set(a.tolist()) == {"train", "val", "test"}
    np.testing.assert_array_equal(hash_split(list(ids), (0.8, 0.1, 0.1), seed=0), a)
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(hash_split(ids[perm], (0.8, 0.1, 0.1), seed=0), a[perm])
    np.testing.assert_array_equal(hash_split(ids[:50], (0.8, 0.1, 0.1), seed=0), a[:50])  # per-id, not per-set
    np.testing.assert_array_equal(hash_split(ids, (8, 1, 1), seed=0), a)  # ratios are normalised

    frac = {s: float((a == s).mean()) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.02 and abs(frac["val"] - 0.1) < 0.015 and abs(frac["test"] - 0.1) < 0.015
    half = hash_split(ids, (0.5, 0.0, 0.5), seed=0)
    assert "val" not in set(half.tolist()) and abs(float((half == "train").mean()) - 0.5) < 0.03

    b = hash_split(ids, (0.8, 0.1, 0.1), seed=1)
    assert 0.2 < float((a != b).mean()) < 0.5  # independent draws disagree on ~34% of rows
    with pytest.raises(CmkdError, match="split ratio"):
        hash_split(ids, (0.8, 0.2))
    with pytest.raises(CmkdError, match="split ratio"):
        hash_split(ids, (1.0, -0.1, 0.1))


def test_split_array_uses_the_hash_split_when_the_table_has_none(tmp_path):
    ids = [f"r{i}" for i in range(40)]
    path = _write(tmp_path / "t.parquet", ids, x=np.zeros((40, 1)))
    ft = read_tables([path])
    assert ft.split_array((0.5, 0.25, 0.25), seed=3).tolist() == hash_split(ids, (0.5, 0.25, 0.25), 3).tolist()


# ---------------------------------------------------------------------------------------------- atomic writes


def test_failed_table_write_leaves_existing_file_and_no_temp(tmp_path, monkeypatch, table):
    dest = tmp_path / "out.parquet"
    dest.write_bytes(b"precious bytes")
    original = pq.ParquetWriter.write_table
    seen = []

    def write_half_then_fail(self, t, *args, **kwargs):  # pyarrow's write_batch goes through here too
        original(self, t.slice(0, t.num_rows // 2), *args, **kwargs)
        seen.extend(p.name for p in tmp_path.iterdir())
        raise OSError("No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_table(table, dest)
    assert any(n.startswith(".out.parquet.") and n.endswith(".tmp") for n in seen)  # it was writing beside
    assert dest.read_bytes() == b"precious bytes"
    assert _files(tmp_path) == ["out.parquet"]


def test_failed_checkpoint_write_leaves_existing_file_and_no_temp(tmp_path, monkeypatch):
    from cmkdtool.io import safetensors_io

    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old checkpoint")

    def partial(filename, tensors, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00\x00")
        raise KeyboardInterrupt  # an interrupt half-way is cleaned up as well

    monkeypatch.setattr(safetensors_io, "save_safetensors", partial)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(dest, {"w": torch.zeros(2)}, {"arch": "linear"})
    assert dest.read_bytes() == b"old checkpoint"
    assert _files(tmp_path) == ["model.safetensors"]


def test_atomic_write_success_and_permissions(tmp_path):
    new = tmp_path / "sub" / "new.txt"
    atomic_write_text(new, "hello\n")  # creates the folder
    assert new.read_text() == "hello\n" and _files(new.parent) == ["new.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # as open(path, "w") would make it

    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    with atomic_path(kept) as tmp:
        assert tmp.parent == kept.parent and tmp != kept
        tmp.write_text("new")
        assert kept.read_text() == "old"  # untouched until the rename
    assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640


# ---------------------------------------------------------------------------------------------- checkpoints

SPEC = {
    "role": "teacher",
    "arch": "mlp",
    "inputs": [{"name": "img", "shape": [2, 3]}, {"name": "xa", "shape": [4]}],
    "hidden": [8],
    "head_hidden": [5],
    "activation": "gelu",
    "dropout": 0.0,
    "batch_norm": True,
    "num_classes": 3,
    "task": "multiclass",
    "class_names": ["cat", "dog", "owl"],
}


def _trained_model():
    """A model whose every tensor (weights, standardisation and BatchNorm buffers) is off its initial value."""
    from cmkdtool.nn.models import build_model

    torch.manual_seed(0)
    model = build_model(SPEC)
    x = {"img": torch.randn(16, 2, 3) * 3 + 1, "xa": torch.randn(16, 4) - 2}
    for n in model.input_names:
        model.norm[n].fit(x[n].flatten(1))
    model.train()
    model(x)  # moves the BatchNorm running statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), x


def test_checkpoint_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path, monkeypatch):
    model, x = _trained_model()
    with torch.no_grad():
        before = model(x)
    train = {"command": "cmkdtool pretrain t.parquet -i img -i xa", "seed": 3, "best_metrics": {"val/acc": 0.5}}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model.state_dict(), model.spec, train)

    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header, no pickle anywhere
    meta = header["__metadata__"]
    assert set(meta) == {FORMAT_KEY, VERSION_KEY, MODEL_KEY, TRAIN_KEY}
    assert meta[FORMAT_KEY] == FORMAT and meta[VERSION_KEY] == __version__
    assert json.loads(meta[MODEL_KEY]) == SPEC and json.loads(meta[TRAIN_KEY]) == train
    assert read_metadata(path) == (SPEC, train)

    tensors, spec, rec = read_checkpoint(path)
    assert spec == SPEC and rec == train
    state = model.state_dict()
    assert set(tensors) == set(state)
    for k, v in state.items():
        assert torch.equal(tensors[k], v), k

    alone = tmp_path / "elsewhere"
    alone.mkdir()
    (alone / "only.safetensors").write_bytes(raw)
    monkeypatch.chdir(alone)
    loaded = load_model("only.safetensors")
    assert _files(alone) == ["only.safetensors"]
    assert not loaded.training and loaded.spec == SPEC
    with torch.no_grad():
        after = loaded(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_checkpoint_whose_tensors_do_not_match_its_spec(tmp_path):
    model, _ = _trained_model()
    state = model.state_dict()
    wrong_shape = dict(SPEC, inputs=[{"name": "img", "shape": [2, 3]}, {"name": "xa", "shape": [5]}])
    save_checkpoint(tmp_path / "shape.safetensors", state, wrong_shape)
    with pytest.raises(CmkdError, match=r"shape\.safetensors: tensors do not match"):
        load_model(tmp_path / "shape.safetensors")

    missing = {k: v for k, v in state.items() if not k.startswith("head.")}
    save_checkpoint(tmp_path / "missing.safetensors", missing, SPEC)
    with pytest.raises(CmkdError, match=r"missing\.safetensors: tensors do not match .*missing \['head"):
        load_model(tmp_path / "missing.safetensors")

    save_checkpoint(tmp_path / "spec.safetensors", state, {"arch": "mlp", "inputs": [{"shape": [4]}]})
    with pytest.raises(CmkdError, match=r"spec\.safetensors: .*re-create"):
        load_model(tmp_path / "spec.safetensors")


def test_safetensors_without_cmkdtool_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CmkdError, match=r"plain\.safetensors: a safetensors file but not a cmkdtool checkpoint"):
        read_metadata(tmp_path / "plain.safetensors")


def test_unwritable_output_paths_are_one_line_errors(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"x")
    with pytest.raises(CmkdError, match=r"a\.parquet is a file, not a folder"):
        atomic_write_text(tmp_path / "a.parquet" / "sub" / "out.txt", "hi")
    with pytest.raises(CmkdError, match="is a folder; give a file name"):
        atomic_write_text(tmp_path, "hi")
    assert _files(tmp_path) == ["a.parquet"] and (tmp_path / "a.parquet").read_bytes() == b"x"
    check_output_path(tmp_path / "new" / "deeper" / "out.parquet")  # folders that do not exist yet are fine
    assert _files(tmp_path) == ["a.parquet"]  # and a check creates nothing
    with pytest.raises(CmkdError, match="is a file, not a folder"):
        check_output_path(tmp_path / "a.parquet" / "out.parquet")


def test_atomic_output_follows_symlinks_and_writes_through_devices(tmp_path):
    from cmkdtool.io.atomic import atomic_write_text

    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    atomic_write_text("/dev/null", "discarded")  # must not replace the device with a regular file
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


# ---------------------------------------------------------------------------------------------- chunked reads


def test_iter_column_chunks_yields_file_order_float32_chunks(tmp_path, arrays, table):
    path = tmp_path / "t.parquet"
    write_table(table, path, row_group_size=7)  # 30 rows: groups of 7, 7, 7, 7, 2
    chunks = list(iter_column_chunks(path, "xa", chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 3] * 4 + [2]  # never across a row group
    assert all(c.dtype == np.float32 and c.shape[1] == 5 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), arrays["xa"])
    img = np.concatenate(list(iter_column_chunks(path, "img")))
    np.testing.assert_array_equal(img, arrays["img"].reshape(N, 6))  # flattened row-major, one chunk per group


def test_iter_column_chunks_checks_each_chunk_and_names_the_column(tmp_path):
    x = np.ones((20, 3), np.float32)
    x[13, 1] = np.nan
    path = _write(tmp_path / "nan.parquet", [f"r{i}" for i in range(20)], emb=x)
    it = iter_column_chunks(path, "emb", chunk_rows=8)
    with pytest.raises(CmkdError, match=r"column 'emb' has NaN/inf values .*first at id 'r13'"):
        list(it)
    with pytest.raises(CmkdError, match=r"no column 'emv' \(did you mean 'emb'\?\)"):
        list(iter_column_chunks(path, "emv"))
    with pytest.raises(CmkdError, match="no such file"):
        list(iter_column_chunks(tmp_path / "missing.parquet", "emb"))


def test_read_tables_with_no_columns_reads_only_the_small_columns(tmp_path, table):
    path = tmp_path / "t.parquet"
    write_table(table, path)
    ft = read_tables([str(path)], columns=[])
    assert ft.column_names == ["id", "label", "split"]
    assert {f.name for f in ft.available} >= {"xa", "img"}  # still known, for hints


_LOAD_PEAK = """
import sys
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024
import torch
from cmkdtool.io.tables import read_tables
from cmkdtool.data.tensors import load_tensor_data
base = rss('VmRSS')
data = load_tensor_data(read_tables([sys.argv[1]], columns=['x']), ['x'], 'cpu')
print(rss('VmHWM') - base, rss('VmRSS') - base, data.inputs['x'].numel() * 4)
"""


def test_load_path_peaks_near_one_times_the_feature_bytes(tmp_path):
    """B1: read + load peak at about 1x the feature bytes plus a row group (row group by row group into one array),
    not the 4x of a whole-file read (820 MB here); a 200k x 256 table (205 MB) in 65,536-row groups (67 MB).
    benchmarks/scale.py measures 500k x 256: 1.29x."""
    import subprocess

    n, d = 200_000, 256
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = build_table([f"r{i}" for i in range(n)], {"x": x}, label=np.arange(n) % 3)
    write_table(t, tmp_path / "big.parquet")
    del t, x
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_PEAK, str(tmp_path / "big.parquet")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    peak, held, feature = map(int, out.stdout.split())
    group = 65536 * d * 4
    assert peak <= feature + 2.5 * group, (peak / feature, held / feature)
    assert held <= feature + 1.5 * group, (peak / feature, held / feature)
