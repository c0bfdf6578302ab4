"""Bad labels and closed pipes (DESIGN.md, Errors): a table whose labels hold one class, or labels that are
not class indices 0..C-1 (a huge or negative value), gets one error line before any work or allocation; a
reader that closes stdout (``cmkdtool ... | head``) ends the command quietly, as it ends a Unix tool."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.errors import CmkdError

runner = CliRunner()
N = 40
SPLIT = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
HUGE = 10**12


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"CMKDTOOL_DEBUG": None})


def error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cmkdtool: error: "), lines[0]
    return lines[0]


def _x(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def _table(path, *, label=None, labels=None, split=None, meta: dict | None = None):
    """A plain pyarrow table (no cmkdtool metadata unless ``meta``): id, split, xa (4 channels) and a 'label'
    (int64) or 'labels' (list<int64>) column."""
    n = len(label) if label is not None else len(labels)
    x = _x(n)
    cols = {
        "id": [f"r{i}" for i in range(n)],
        "split": SPLIT if split is None else split,
        "xa": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), 4),
    }
    if label is not None:
        cols["label"] = pa.array(label, pa.int64())
    if labels is not None:
        cols["labels"] = pa.array(labels, pa.list_(pa.int64()))
    table = pa.table(cols)
    if meta is not None:
        import json

        table = table.replace_schema_metadata({"cmkdtool": json.dumps(meta)})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    root = tmp_path_factory.mktemp("input_errors")
    two = (_x()[:, 0] > 0).astype(np.int64)
    _table(root / "good.parquet", label=two)
    _table(root / "one.parquet", label=np.zeros(N, np.int64))
    _table(root / "seven.parquet", label=np.full(N, 7))
    one_test = two.copy()
    one_test[32:] = 1  # the test split holds class 1 only
    _table(root / "one_test.parquet", label=one_test)
    _table(root / "ml_one.parquet", labels=[[0]] * N)
    _table(root / "ml_none.parquet", labels=[[]] * N)
    _table(root / "ml_good.parquet", labels=[[i % 2] for i in range(N)])
    huge = np.arange(N) % 3
    huge[5] = HUGE
    _table(root / "huge.parquet", label=huge)
    sparse = np.arange(N) % 3
    sparse[5] = 5000  # 5001 classes implied by 4 distinct labels
    _table(root / "sparse.parquet", label=sparse)
    _table(root / "ml_huge.parquet", labels=[[i % 2] if i != 3 else [0, HUGE] for i in range(N)])
    neg = two.copy()
    neg[4] = -3
    _table(root / "neg.parquet", label=neg)
    _table(root / "ml_neg.parquet", labels=[[i % 2] if i != 4 else [1, -2] for i in range(N)])
    res = invoke(
        "pretrain",
        root / "good.parquet",
        "-i",
        "xa",
        "--arch",
        "linear",
        "--epochs",
        "2",
        "-q",
        "-o",
        root / "t.safetensors",
    )
    assert res.exit_code == 0, res.output
    return root


def pretrain(d, table, out=None):
    out = out or d / "out.safetensors"
    return invoke("pretrain", table, "-i", "xa", "--arch", "linear", "--epochs", "2", "-q", "-o", out)


# ------------------------------------------------------------------------------------------------- one class


@pytest.mark.parametrize("name,cls", [("one", "0"), ("seven", "7")])
def test_one_class_table_cannot_train(d, name, cls):
    table, out = d / f"{name}.parquet", d / f"{name}.safetensors"
    line = error_line(pretrain(d, table, out))
    assert str(table) in line and f"every row has class {cls} in column 'label'" in line
    assert "a classifier needs at least two classes" in line and "check the label column" in line
    assert not out.exists()


def test_one_class_named_by_the_metadata(d, tmp_path):
    table = _table(tmp_path / "named.parquet", label=np.zeros(N, np.int64), meta={"class_names": ["cat"]})
    line = error_line(pretrain(d, table, tmp_path / "o.safetensors"))
    assert "every row has class 0 ('cat')" in line and "at least two classes" in line


@pytest.mark.parametrize(
    "name,words", [("ml_one", "every row has class 0 in column 'labels'"), ("ml_none", "holds no label at all")]
)
def test_multilabel_table_with_fewer_than_two_classes(d, name, words):
    line = error_line(pretrain(d, d / f"{name}.parquet"))
    assert str(d / f"{name}.parquet") in line and words in line and "at least two classes" in line
    assert "a 'label' column of 0 and 1" in line


def test_two_classes_still_train(d, tmp_path):
    for name in ("good", "ml_good"):
        res = pretrain(d, d / f"{name}.parquet", tmp_path / f"{name}.safetensors")
        assert res.exit_code == 0, res.output


def test_one_class_test_split_still_evaluates(d):
    """eval takes the class count from the checkpoint: a test split of one class is fine."""
    res = invoke("eval", d / "t.safetensors", d / "one_test.parquet", "-q", "-f", "json")
    assert res.exit_code == 0, res.output
    assert '"accuracy"' in res.stdout
    res = invoke("eval", d / "t.safetensors", d / "one.parquet", "-q", "-f", "json", "--split", "all")
    assert res.exit_code == 0, res.output


def test_one_class_table_still_gives_a_feature_spectrum(d):
    res = invoke("spectrum", d / "t.safetensors", "--data", d / "one.parquet", "-q")
    assert res.exit_code == 0, res.output
    res = invoke("spectrum", d / "one.parquet", "-q")
    assert res.exit_code == 0, res.output


def test_load_tensor_data_one_class_rule(tmp_path):
    """Only training with a class count taken from the table asks for two classes."""
    from cmkdtool.data.tensors import load_tensor_data
    from cmkdtool.io.tables import read_tables

    table = read_tables([_table(tmp_path / "one.parquet", label=np.zeros(N, np.int64))])
    assert load_tensor_data(table, ["xa"]).num_classes == 1  # not training: allowed
    assert load_tensor_data(table, ["xa"], num_classes=2, require_train_classes=False).num_classes == 2
    with pytest.raises(CmkdError, match="at least two classes"):
        load_tensor_data(table, ["xa"], require_train_classes=True)


# ----------------------------------------------------------------------------- labels that are not indices


@pytest.mark.parametrize("command", ["pretrain", "spectrum"])
def test_huge_label_is_one_line_before_any_allocation(d, command):
    """The class count would be 10**12 + 1 (a 931 GiB array in training). spectrum needs no labels but reads
    those a table has, and is refused the same way (as for a negative label)."""
    table = d / "huge.parquet"
    start = time.perf_counter()
    if command == "pretrain":
        res = pretrain(d, table)
    else:
        res = invoke("spectrum", d / "t.safetensors", "--data", table, "-q")
    line = error_line(res)
    assert time.perf_counter() - start < 60
    assert str(table) in line and "labels must be class indices 0..C-1" in line
    assert f"found label {HUGE} among 4 distinct values in column 'label'" in line
    assert "re-map the labels to 0..C-1" in line


def test_sparse_labels(d):
    line = error_line(pretrain(d, d / "sparse.parquet"))
    assert "found label 5000 among 4 distinct values" in line


def test_huge_multilabel(d):
    line = error_line(pretrain(d, d / "ml_huge.parquet"))
    assert (
        str(d / "ml_huge.parquet") in line and f"found label {HUGE} among 3 distinct values in column 'labels'" in line
    )


def test_huge_label_against_a_checkpoint_is_outside_its_classes(d):
    line = error_line(invoke("eval", d / "t.safetensors", d / "huge.parquet", "-q"))
    assert f"label {HUGE} is outside the checkpoint's 2 classes" in line


@pytest.mark.parametrize("name,value,column", [("neg", -3, "label"), ("ml_neg", -2, "labels")])
@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_negative_labels(d, name, value, column, command):
    table = d / f"{name}.parquet"
    res = pretrain(d, table) if command == "pretrain" else invoke("eval", d / "t.safetensors", table, "-q")
    line = error_line(res)
    assert str(table) in line
    if command == "eval" and name == "ml_neg":  # a multilabel table for a multiclass model: said first
        assert "multilabel" in line or f"negative label {value}" in line
    else:
        assert f"negative label {value} in column '{column}'" in line and "re-map" in line


def test_too_many_classes_implied_by_the_labels(tmp_path):
    """Many distinct labels, but a largest label past the cap: refused before sizing anything by it."""
    from cmkdtool.data.tensors import MAX_DERIVED_CLASSES, load_tensor_data
    from cmkdtool.io.tables import read_tables

    n = 1200
    label = np.arange(n, dtype=np.int64)
    label[-1] = 1000 * (n - 1)  # within 1000 x the distinct count, beyond the cap
    assert label[-1] + 1 > MAX_DERIVED_CLASSES
    split = ["train"] * n
    table = read_tables([_table(tmp_path / "many.parquet", label=label, split=split)])
    with pytest.raises(CmkdError, match=f"would make {label[-1] + 1} classes"):
        load_tensor_data(table, ["xa"], require_train_classes=True)


# ------------------------------------------------------------------------------------------------ pipes


def _sh(command: str, **kw) -> subprocess.CompletedProcess:
    """``command`` in bash with pipefail, cmkdtool being ``$CMKD`` (this Python, -m cmkdtool)."""
    env = {**os.environ, "CMKD": f"{sys.executable} -m cmkdtool", "CMKDTOOL_DEBUG": ""}
    return subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command], capture_output=True, text=True, env=env, timeout=120, **kw
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize(
    "command",
    [
        "$CMKD synth mfh -o - | head -c 100 >/dev/null",
        "$CMKD synth mfh -o - | true",
        "$CMKD synth mfh -o - 2>&1 | head -c 10 >/dev/null",
        "$CMKD --version | true",
        "$CMKD --help | true",
    ],
)
def test_closed_stdout_pipe_ends_quietly(command):
    res = _sh(command)
    assert res.stderr == "", res.stderr
    assert res.returncode in (0, 141), (res.returncode, res.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_closed_pipe_after_eval(d):
    res = _sh(f"$CMKD eval '{d / 't.safetensors'}' '{d / 'good.parquet'}' -q | true")
    assert res.stderr == "" and res.returncode in (0, 141), (res.returncode, res.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_open_pipe_gets_everything(d):
    res = _sh("$CMKD synth mfh -o - -q | wc -c")
    assert res.returncode == 0 and res.stderr == "" and int(res.stdout) > 100_000, res


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["$CMKD --version >/dev/full", "$CMKD synth mfh -o - -q >/dev/full"])
def test_full_disk_on_stdout_is_one_line(command):
    res = _sh(command)
    assert res.returncode == 1, (res.returncode, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmkdtool: error: ") and "No space left" in lines[0], res.stderr
