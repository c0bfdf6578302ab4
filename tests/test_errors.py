"""CLI error contract (DESIGN.md, Errors): bad input gets ONE line on stderr, 'cmkdtool: error: ...', that
names the file, says what is wrong and how to fix it; exit status 1 (usage errors: 2); no traceback unless
--debug or CMKDTOOL_DEBUG=1; a failed command never damages an existing output file."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.errors import CmkdError

runner = CliRunner()  # typer 0.29: result.stdout and result.stderr are separate, result.output is both
N = 40
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00" + bytes(64)


def invoke(*args, env: dict | None = None, input: bytes | None = None, catch: bool = True):
    """Run the app in-process. CMKDTOOL_DEBUG is cleared for the call and restored after it, so that a
    --debug run (which sets it in os.environ) cannot leak into later tests."""
    return runner.invoke(
        app,
        [str(a) for a in args],
        env={"CMKDTOOL_DEBUG": None, **(env or {})},
        input=input,
        catch_exceptions=catch,
    )


def error_line(result, code: int = 1) -> str:
    """The single stderr line of a failed command, after checking the whole error contract."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not crashed
    assert "Traceback" not in result.output
    assert result.stdout == ""  # nothing that a pipe could take for data
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cmkdtool: error: "), lines[0]
    return lines[0]


def _table(path, *, ids=None, x=None, label=None, split=None, col="xa"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32) if x is None else x
    cols = {
        "id": [f"r{i}" for i in range(N)] if ids is None else ids,
        "label": pa.array((x[:, 0] > 0).astype(np.int64) if label is None else label, pa.int64()),
        "split": ["train"] * 24 + ["val"] * 8 + ["test"] * 8 if split is None else split,
        col: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1]),
    }
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A folder of good and bad inputs, and a checkpoint trained on good.parquet (xa: 4 channels, 2 classes)."""
    root = tmp_path_factory.mktemp("errors")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    good = _table(root / "good.parquet", x=x)
    label = (x[:, 0] > 0).astype(np.int64)

    bad = x.copy()
    bad[3, 1] = np.nan
    _table(root / "nan.parquet", x=bad)
    bad = x.copy()
    bad[5, 0] = -np.inf
    _table(root / "inf.parquet", x=bad)
    big = label.copy()
    big[30] = 5  # a test row of class 5
    _table(root / "biglab.parquet", x=x, label=big)
    absent = label.copy()
    absent[:24] = 0  # class 1 only in val and test
    absent[24:] = np.arange(16) % 2
    _table(root / "absent.parquet", x=x, label=absent)
    ids = [f"r{i}" for i in range(N)]
    ids[7] = "r3"
    _table(root / "dup.parquet", x=x, ids=ids)
    _table(root / "wide.parquet", x=rng.normal(size=(N, 6)).astype(np.float32))
    ml = pa.table({"id": [f"r{i}" for i in range(N)], "labels": pa.array([[i % 2] for i in range(N)])})
    pq.write_table(ml.append_column("xa", pa.array(list(x), pa.list_(pa.float32(), 4))), root / "multilabel.parquet")

    raw = good.read_bytes()
    (root / "trunc.parquet").write_bytes(raw[: len(raw) // 2])
    (root / "text.parquet").write_text("id,label,xa\nr0,1,0.5\n")
    (root / "png.parquet").write_bytes(PNG)

    res = invoke("pretrain", good, "-i", "xa", "--arch", "linear", "--epochs", "2", "-q", "-o", root / "t.safetensors")
    assert res.exit_code == 0, res.output
    ck = (root / "t.safetensors").read_bytes()
    (root / "trunc.safetensors").write_bytes(ck[:-10])
    (root / "header.safetensors").write_bytes(ck[:40])
    (root / "text.safetensors").write_text("this is not a checkpoint\n")
    (root / "png.safetensors").write_bytes(PNG)
    shutil.copy(good, root / "table.safetensors")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(root / "plain.safetensors"), metadata={"format": "pt"})
    return root


def pretrain(d, table, *extra, out=None):
    out = out or d / "out.safetensors"
    return invoke("pretrain", table, "-i", "xa", "--arch", "linear", "--epochs", "2", "-q", "-o", out, *extra)


# ---------------------------------------------------------------------------------------------- columns


def test_missing_column(d):
    line = error_line(invoke("pretrain", d / "good.parquet", "-i", "audio", "-q", "-o", d / "o.safetensors"))
    assert str(d / "good.parquet") in line and "no column 'audio'" in line and "feature columns here: xa" in line


def test_misspelled_column_suggests_the_right_name(d):
    line = error_line(invoke("pretrain", d / "good.parquet", "-i", "x_a", "-q", "-o", d / "o.safetensors"))
    assert str(d / "good.parquet") in line and "no column 'x_a'" in line and "did you mean 'xa'?" in line


def test_shape_mismatch_between_checkpoint_and_table(d):
    line = error_line(invoke("eval", d / "t.safetensors", d / "wide.parquet", "-q"))
    assert str(d / "wide.parquet") in line and str(d / "t.safetensors") in line
    assert "shape [6]" in line and "expects [4]" in line


@pytest.mark.parametrize("name,row", [("nan", "r3"), ("inf", "r5")])
@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_nan_and_inf_features(d, name, row, command):
    table = d / f"{name}.parquet"
    res = pretrain(d, table) if command == "pretrain" else invoke("eval", d / "t.safetensors", table, "-q")
    line = error_line(res)
    assert str(table) in line and "column 'xa'" in line and "NaN/inf" in line and f"id '{row}'" in line
    assert "clean or impute" in line


def test_label_outside_the_checkpoint_classes(d):
    line = error_line(invoke("eval", d / "t.safetensors", d / "biglab.parquet", "-q"))
    assert str(d / "biglab.parquet") in line and "label 5" in line and "2 classes" in line


def test_multilabel_table_for_a_multiclass_checkpoint(d):
    line = error_line(invoke("eval", d / "t.safetensors", d / "multilabel.parquet", "-q"))
    assert str(d / "multilabel.parquet") in line and "multilabel" in line and "multiclass" in line


def test_class_absent_from_train(d):
    line = error_line(pretrain(d, d / "absent.parquet"))
    assert str(d / "absent.parquet") in line and "class 1 has no row in the train split" in line
    assert "add training examples" in line


@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_duplicate_ids(d, command):
    table = d / "dup.parquet"
    res = pretrain(d, table) if command == "pretrain" else invoke("eval", d / "t.safetensors", table, "-q")
    line = error_line(res)
    assert str(table) in line and "1 duplicate ids" in line and "'r3'" in line and "must be unique" in line


# ---------------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("name", ["trunc", "text", "png", "missing"])
@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_truncated_or_foreign_parquet(d, name, command):
    table = d / f"{name}.parquet"
    res = pretrain(d, table) if command == "pretrain" else invoke("eval", d / "t.safetensors", table, "-q")
    line = error_line(res)
    assert str(table) in line
    if name == "missing":
        assert "no such file" in line
    else:
        assert "not a readable Parquet file" in line and "give a table written by" in line


@pytest.mark.parametrize("name", ["trunc", "header", "text", "png", "table"])
def test_truncated_or_foreign_safetensors(d, name):
    ck = d / f"{name}.safetensors"
    line = error_line(invoke("eval", ck, d / "good.parquet", "-q"))
    assert str(ck) in line and "not a readable safetensors file" in line and "give a checkpoint" in line


def test_safetensors_that_is_not_a_cmkdtool_checkpoint(d):
    line = error_line(invoke("eval", d / "plain.safetensors", d / "good.parquet", "-q"))
    assert str(d / "plain.safetensors") in line and "not a cmkdtool checkpoint" in line


def test_stdin_that_is_not_an_arrow_stream(d):
    res = invoke("pretrain", "-", "-i", "xa", "-q", "-o", d / "o.safetensors", input=b"id,label\nr0,1\n")
    line = error_line(res)
    assert line.startswith("cmkdtool: error: <stdin>: not an Arrow IPC stream")


# ---------------------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_explicit_device_that_does_not_exist(d, command):
    # a device that is missing here is bad input (1); a name that is no device at all is a usage error (2)
    for device, code, words in (("cuda:7", 1, ["'cuda:7'"]), ("foo", 2, ["unknown device 'foo'", "cpu"])):
        if command == "pretrain":
            res = pretrain(d, d / "good.parquet", "--device", device)
        else:
            res = invoke("eval", d / "t.safetensors", d / "good.parquet", "-q", "--device", device)
        line = error_line(res, code=code)
        assert all(w in line for w in words), line
    assert not (d / "out.safetensors").exists()  # never a silent fallback to the CPU


def test_device_from_the_environment_is_checked_too(d):
    res = invoke(
        "pretrain",
        d / "good.parquet",
        "-i",
        "xa",
        "--arch",
        "linear",
        "--epochs",
        "2",
        "-q",
        "-o",
        d / "env.safetensors",
        env={"CMKDTOOL_DEVICE": "cuda:7"},
    )
    line = error_line(res)
    assert "'cuda:7'" in line and not (d / "env.safetensors").exists()


# ---------------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args,words",
    [
        (["pretrain", "{good}", "-i", "xa", "--batch-size", "0", "-o", "{out}"], ["--batch-size", "'0'"]),
        (["pretrain", "{good}", "-i", "xa", "--split-ratio", "0.8,0.2", "-o", "{out}"], ["--split-ratio"]),
        (["pretrain", "{good}", "-i", "xa", "-o", "{good}"], ["is also an input"]),
        (["pretrain", "{good}", "-i", "xa", "-o", "-"], ["stdout", "give a file name"]),
        (["pretrain", "{good}", "-i", "xa", "--epochs", "0", "-o", "{out}"], ["--epochs"]),
        (["pretrain", "{good}", "-i", "xa", "--optimizer", "adam", "-o", "{out}"], ["adam", "adamw"]),
        (["pretrain", "{good}", "-i", "xa", "--precision", "fp8", "-o", "{out}"], ["fp8", "bf16"]),
        (["synth", "mfh", "--gamma", "0.5", "--overlap", "3", "-o", "{out}"], ["gamma", "overlap"]),
        (["eval", "{ck}", "{good}", "--format", "xml"], ["--format", "xml", "json"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(d, args, words):
    subst = {"{good}": str(d / "good.parquet"), "{out}": str(d / "usage.out"), "{ck}": str(d / "t.safetensors")}
    line = error_line(invoke(*[subst.get(a, a) for a in args]), code=2)
    assert all(w in line for w in words), line
    assert not (d / "usage.out").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["pretrain", "{good}", "-i", "xa", "--epochs", "x", "-o", "{out}"], ["Invalid value for '--epochs'"]),
        (["pretrain", "{good}", "-i", "xa"], ["Missing option '--output'"]),
        (["eval", "{ck}", "{good}", "--no-such-option"], ["No such option"]),
    ],
)
def test_option_parsing_errors_exit_2_without_traceback(d, args, words):
    subst = {"{good}": str(d / "good.parquet"), "{out}": str(d / "usage.out"), "{ck}": str(d / "t.safetensors")}
    res = invoke(*[subst.get(a, a) for a in args])
    assert res.exit_code == 2 and res.stdout == "" and "Traceback" not in res.output
    assert all(w in res.stderr for w in words), res.stderr


# ---------------------------------------------------------------------------------------------- --debug


def test_debug_flag_lets_the_exception_propagate(d):
    with pytest.raises(CmkdError, match=r"nan\.parquet: column 'xa' has 1 NaN/inf"):
        invoke("--debug", "pretrain", d / "nan.parquet", "-i", "xa", "-q", "-o", d / "o.safetensors", catch=False)
    res = invoke("--debug", "eval", d / "t.safetensors", d / "wide.parquet", "-q")
    assert isinstance(res.exception, CmkdError) and "cmkdtool: error:" not in res.stderr
    # and without --debug the same input is one line again (the flag did not stick)
    error_line(invoke("eval", d / "t.safetensors", d / "wide.parquet", "-q"))


@pytest.mark.parametrize("value,raises", [("1", True), ("0", False), ("", False)])
def test_debug_environment_variable(d, value, raises):
    res = invoke("eval", d / "t.safetensors", d / "wide.parquet", "-q", env={"CMKDTOOL_DEBUG": value})
    if raises:
        assert isinstance(res.exception, CmkdError) and "shape [6]" in str(res.exception)
    else:
        assert "shape [6]" in error_line(res)


# ---------------------------------------------------------------------------------------------- outputs


def _tmp_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    "case",
    ["pretrain-nan", "pretrain-misspelled", "pretrain-device", "synth-usage", "eval-predictions"],
)
def test_failed_command_never_damages_an_existing_output(d, tmp_path, case):
    out = tmp_path / ("preds.parquet" if case.startswith("eval") or case.startswith("synth") else "m.safetensors")
    out.write_bytes(b"known bytes")
    args = {
        "pretrain-nan": ["pretrain", d / "nan.parquet", "-i", "xa", "-q", "-o", out],
        "pretrain-misspelled": ["pretrain", d / "good.parquet", "-i", "x_a", "-q", "-o", out],
        "pretrain-device": ["pretrain", d / "good.parquet", "-i", "xa", "--device", "cuda:7", "-q", "-o", out],
        "synth-usage": ["synth", "mfh", "--gamma", "2", "-q", "-o", out],
        "eval-predictions": ["eval", d / "t.safetensors", d / "biglab.parquet", "-q", "--predictions", out],
    }[case]
    res = invoke(*args)
    error_line(res, code=2 if case == "synth-usage" else 1)
    assert out.read_bytes() == b"known bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file, no history file


def test_failure_while_writing_keeps_the_old_checkpoint(d, tmp_path, monkeypatch):
    from cmkdtool.io import safetensors_io

    out = tmp_path / "m.safetensors"
    out.write_bytes(b"known bytes")

    def fail(filename, tensors, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 16)  # half a file
        raise CmkdError(f"{out}: cannot write here (No space left on device); choose another output path")

    monkeypatch.setattr(safetensors_io, "save_safetensors", fail)
    line = error_line(pretrain(d, d / "good.parquet", out=out))
    assert "No space left" in line
    assert out.read_bytes() == b"known bytes" and _tmp_files(tmp_path) == []


def test_output_under_a_file_is_one_line(d, tmp_path):
    line = error_line(pretrain(d, d / "good.parquet", out=d / "good.parquet" / "m.safetensors"))
    assert re.search(r"good\.parquet is a file, not a folder", line)


def test_a_good_run_still_works(d, tmp_path):
    """The error tests above must fail for the right reason: the same command lines succeed on good input."""
    out = tmp_path / "m.safetensors"
    res = pretrain(d, d / "good.parquet", out=out)
    assert res.exit_code == 0 and res.stderr == "" and out.exists()
    res = invoke("eval", out, d / "good.parquet", "-q", "--format", "json", "--predictions", tmp_path / "p.parquet")
    assert res.exit_code == 0 and '"accuracy"' in res.stdout and (tmp_path / "p.parquet").exists()
