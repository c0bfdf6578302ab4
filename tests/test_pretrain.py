"""pretrain and eval end to end: learning happens, reruns are bit-identical, fusion and multi-label work."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.io.checkpoints import load_model, read_checkpoint, read_metadata
from cmkdtool.io.history import read_history

runner = CliRunner()
LINEAR = ["--arch", "linear", "--epochs", "200", "--lr", "0.01", "--quiet"]


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_teacher_reaches_paper_accuracy_on_mfh_table2(tmp_path):
    """MFH Table 2 (gamma 0.5): the regular (logistic-regression) teacher reaches 89.62% test accuracy.

    Over 5 seeds we measured 0.8950 +- 0.0144 (std); the mean of 3 seeds has a standard error of about
    0.0085, so +-0.03 around the paper's value is a 3.5-sigma band that a broken trainer cannot hit by luck
    (chance is 0.5; the student modality alone reaches about 0.65).
    """
    accs = []
    for seed in range(3):
        data = tmp_path / f"d{seed}.parquet"
        run("synth", "mfh", "--gamma", "0.5", "--seed", seed, "-o", data, "-q")
        ckpt = tmp_path / f"t{seed}.safetensors"
        run("pretrain", data, "-i", "xa", *LINEAR, "--seed", seed, "-o", ckpt)
        out = run("eval", ckpt, data, "--format", "json", "--no-retrieval").stdout
        accs.append(json.loads(out)["accuracy"])
    assert abs(np.mean(accs) - 0.8962) < 0.03, accs


def test_student_modality_is_weaker_but_above_chance(mfh_table, tmp_path):
    ckpt = tmp_path / "b.safetensors"
    run("pretrain", mfh_table, "-i", "xb", *LINEAR, "-o", ckpt)
    acc = json.loads(run("eval", ckpt, mfh_table, "--format", "json").stdout)["accuracy"]
    assert 0.55 < acc < 0.80


def test_same_seed_is_bit_identical(mfh_table, tmp_path):
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    args = [mfh_table, "-i", "xa", "--hidden", "16", "--epochs", "5", "--dropout", "0.2", "-q"]
    run("pretrain", *args, "--seed", "3", "-o", a)
    run("pretrain", *args, "--seed", "3", "-o", b)
    run("pretrain", *args, "--seed", "4", "-o", c)
    ta, tb, tc = (read_checkpoint(p)[0] for p in (a, b, c))
    assert ta.keys() == tb.keys()
    assert all(np.array_equal(ta[k].numpy(), tb[k].numpy()) for k in ta)
    assert not all(np.array_equal(ta[k].numpy(), tc[k].numpy()) for k in ta)


def test_checkpoint_metadata_history_and_standardisation(mfh_table, tmp_path):
    ckpt = tmp_path / "t.safetensors"
    run(
        "pretrain",
        mfh_table,
        "-i",
        "xa",
        "--hidden",
        "32,16",
        "--batch-norm",
        "--epochs",
        "4",
        "-q",
        "--schedule",
        "cosine",
        "--warmup-epochs",
        "1",
        "-o",
        ckpt,
    )
    spec, train = read_metadata(ckpt)
    assert spec["inputs"] == [{"name": "xa", "shape": [50]}]
    assert spec["num_classes"] == 2 and spec["task"] == "multiclass" and spec["hidden"] == [32, 16]
    assert train["config"]["schedule"] == "cosine" and train["method"] == "supervised"
    assert train["data"][0]["sha256"] and train["rows"] == {"train": 200, "val": 200, "test": 1000}
    hist = read_history(ckpt)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert {"train/loss", "train/ce", "val/loss", "val/accuracy", "lr"} <= hist[0].keys()
    assert hist[0]["lr"] < hist[1]["lr"] and hist[-1]["lr"] < hist[1]["lr"]  # warm-up, then cosine decay
    # train-split statistics are stored and applied
    tensors = read_checkpoint(ckpt)[0]
    t = pq.read_table(mfh_table)
    is_train = np.asarray(t.column("split").to_pylist()) == "train"
    train_x = np.asarray(t.column("xa").to_pylist(), dtype=np.float32)[is_train]
    assert np.allclose(tensors["norm.xa.mean"].numpy(), train_x.mean(0), atol=1e-5)
    assert np.allclose(tensors["norm.xa.std"].numpy(), train_x.std(0), atol=1e-5)


def test_late_fusion_beats_student_modality(mfh_table, tmp_path):
    fused, single = tmp_path / "f.safetensors", tmp_path / "s.safetensors"
    run("pretrain", mfh_table, "-i", "xa", "-i", "xb", *LINEAR, "-o", fused)
    run("pretrain", mfh_table, "-i", "xb", *LINEAR, "-o", single)
    model = load_model(fused)
    assert model.input_names == ["xa", "xb"]
    acc = {p: json.loads(run("eval", p, mfh_table, "-f", "json").stdout)["accuracy"] for p in (fused, single)}
    assert acc[fused] > acc[single] + 0.1


def test_eval_predictions_and_formats(mfh_table, tmp_path):
    ckpt, preds = tmp_path / "t.safetensors", tmp_path / "p.parquet"
    run("pretrain", mfh_table, "-i", "xa", *LINEAR, "-o", ckpt)
    res = json.loads(run("eval", ckpt, mfh_table, "-f", "json", "--predictions", preds).stdout)
    for key in ("accuracy", "wa", "ua", "f1_macro", "f1_micro", "r@1", "r@5", "confusion"):
        assert key in res
    assert res["n"] == 1000 and res["wa"] == res["accuracy"]
    p = pq.read_table(preds)
    assert p.column_names == ["id", "label", "prediction", "scores"] and p.num_rows == 1000
    label, pred = p.column("label").to_numpy(), p.column("prediction").to_numpy()
    assert (pred == label).mean() == pytest.approx(res["accuracy"])
    assert np.array_equal(np.asarray(p.column("scores").to_pylist()).argmax(1), pred)
    csv = run("eval", ckpt, mfh_table, "-f", "csv", "--split", "val").stdout.splitlines()
    assert len(csv) == 2 and csv[0].startswith("checkpoint,split,n,accuracy")
    table = run("eval", ckpt, mfh_table).stdout
    assert "accuracy" in table and "confusion" in table


def _multilabel_table(path):
    from cmkdtool.io.tables import build_table, write_table

    rng = np.random.default_rng(0)
    n, d, c = 600, 12, 3
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, c))
    y = x @ w > 0.3
    labels = [np.flatnonzero(r).tolist() for r in y]
    split = np.where(np.arange(n) < 400, "train", np.where(np.arange(n) < 500, "val", "test"))
    write_table(build_table([f"r{i}" for i in range(n)], {"x": x}, labels=labels, split=split), path)


def test_multilabel_pretrain_and_eval(tmp_path):
    data, ckpt = tmp_path / "ml.parquet", tmp_path / "ml.safetensors"
    _multilabel_table(data)
    run("pretrain", data, "-i", "x", "--hidden", "32", "--epochs", "60", "--lr", "0.01", "-q", "-o", ckpt)
    spec, _ = read_metadata(ckpt)
    assert spec["task"] == "multilabel" and spec["num_classes"] == 3
    assert "train/bce" in read_history(ckpt)[0]
    res = json.loads(run("eval", ckpt, data, "-f", "json").stdout)
    assert res["map"] > 0.85 and res["f1_micro"] > 0.75


def test_table_without_split_column_uses_id_hash_split(tmp_path):
    from cmkdtool.io.tables import build_table, write_table

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data, ckpt = tmp_path / "ns.parquet", tmp_path / "ns.safetensors"
    write_table(build_table([f"s{i}" for i in range(300)], {"x": x}, label=y), data)
    run("pretrain", data, "-i", "x", *LINEAR, "--split-ratio", "0.6,0.2,0.2", "--split-seed", "5", "-o", ckpt)
    _, train = read_metadata(ckpt)
    assert train["split_ratio"] == [0.6, 0.2, 0.2] and train["split_seed"] == 5
    res = json.loads(run("eval", ckpt, data, "-f", "json").stdout)  # eval reuses the checkpoint's split rule
    assert 40 < res["n"] < 80 and res["accuracy"] > 0.9
