"""The library runs the pipelines the CLI runs: the same call gives the same files, byte for byte."""

from __future__ import annotations

import shlex

from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.engine.config import TrainConfig
from cmkdtool.methods.registry import get
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.pipelines import run_distill, run_eval, run_pretrain, run_rank_salience


def _cli(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr
    return shlex.join(["cmkdtool", *map(str, args)])


def test_library_writes_the_files_the_cli_writes(mfh_table, tmp_path):
    common = ["--arch", "linear", "--epochs", "4", "--lr", "0.01", "--seed", "3", "--device", "cpu", "-q"]
    teacher = tmp_path / "teacher.safetensors"
    line = _cli("pretrain", mfh_table, "-i", "xa", *common, "-o", teacher)
    lib_teacher = tmp_path / "lib-teacher.safetensors"
    cfg = TrainConfig(epochs=4, lr=0.01, seed=3)
    trained = run_pretrain(
        [str(mfh_table)], ["xa"], model=ModelOptions(arch="linear"), config=cfg, device="cpu", quiet=True, command=line
    )
    trained.save(str(lib_teacher))
    assert lib_teacher.read_bytes() == teacher.read_bytes()  # the record names the command, not the output
    history = (tmp_path / "teacher.safetensors.history.jsonl").read_bytes()
    assert (tmp_path / "lib-teacher.safetensors.history.jsonl").read_bytes() == history

    kd_cli = tmp_path / "kd.safetensors"
    line = _cli("distill", "kd", mfh_table, "-t", teacher, "-i", "xb", "--weighting", "mfh", *common, "-o", kd_cli)
    kd = get("kd")
    run = run_distill(kd, [str(mfh_table)], str(teacher), ["xb"], params=kd.params(weighting="mfh"),
                      model=ModelOptions(arch="linear"), config=cfg, device="cpu", quiet=True,
                      command=line)  # fmt: skip
    kd_lib = tmp_path / "kd-lib.safetensors"
    run.save(str(kd_lib))
    assert kd_lib.read_bytes() == kd_cli.read_bytes()
    ev = run_eval(str(kd_lib), [str(mfh_table)], device="cpu")
    assert ev.metrics["accuracy"] > 0.55 and ev.metrics["split"] == "test"


def test_rank_salience_reports_the_joint_training_quality(mfh_table, tmp_path):
    cfg = TrainConfig(epochs=30, optimizer="sgd", lr=0.01, batch_size=None, select="last")
    run = run_rank_salience([str(mfh_table)], "xa", "xb", model=ModelOptions(arch="linear"), config=cfg,
                            repeats=2, device="cpu", quiet=True)  # fmt: skip
    q = run.quality
    assert {"accuracy", "accuracy_b", "dist", "train_dist", "val_rows", "val_majority"} <= set(q)
    assert 0.5 < q["accuracy"] <= 1 and q["dist"] >= 0 and q["val_rows"] == 200
    assert run.meta["joint_training"]["quality"] == q and run.meta["tool"] == "cmkdtool"
    out = tmp_path / "sal.parquet"
    run.write(str(out))
    assert out.exists()
