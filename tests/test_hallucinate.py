"""distill hallucinate: OS-MD's two-stage hallucination baselines (MARS/MERS mse, ADDA pkt, DASK, ADMD adversarial)
on the MFH table (xa privileged, xb ordinary). Stage 1 (epochs 1..S): the shared encoder phi_s imitates the frozen
privileged features; stage 2: phi_s and phi_o fixed, the CTN fusion and head trained on the labels. Tested: the
per-stage history and selection among stage-2 epochs for every loss, what each stage trains (and what it keeps,
BatchNorm statistics and modes included), the default weight per loss, a bit-identical --resume across the stage
boundary with the discriminator's state, the usage errors, and the written composite model read by eval."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from cli_helpers import history, run, tensors
from cli_helpers import refused as _refused
from typer.testing import CliRunner

from cmkdtool.io.checkpoints import load_model, read_checkpoint
from cmkdtool.methods.hallucinate import DEFAULT_WEIGHTS, Hallucinate
from cmkdtool.methods.registry import get

runner = CliRunner()
LOSSES = ("mse", "pkt", "dask", "adversarial")
STUDENT = ["-i", "xb", "--arch", "mlp", "--hidden", "16", "--lr", "0.01", "-q"]
BASE = {"epoch", "lr", "train/loss", "val/accuracy", "val/loss"}


def _ordinary_keys(weights):
    """The --ordinary checkpoint's encoder and standardisation, by the names they take in the composite."""
    return {k: k.replace("encoders.xb.", "encoders.ordinary.").replace("norm.xb.", "norm.ordinary.")
            for k in weights if k.startswith(("encoders.xb.", "norm.xb."))}  # fmt: skip


def _part(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(privileged_and_ordinary, tmp_path_factory):
    """The privileged teacher (xa, 32 hidden), the ordinary model (xb, 16 hidden) and this module's folder."""
    return {**privileged_and_ordinary, "dir": tmp_path_factory.mktemp("hallucinate")}


def _args(mfh_table, ckpts, *extra):
    return ["distill", "hallucinate", mfh_table, "-t", ckpts["priv"], "--ordinary", ckpts["ord"], *STUDENT, *extra]


@pytest.fixture(scope="module", params=LOSSES)
def loss_run(request, mfh_table, ckpts):
    """--epochs 8 --stage1-epochs 4 with each stage-1 loss at its default weight."""
    out = ckpts["dir"] / f"{request.param}.safetensors"
    run(*_args(mfh_table, ckpts, "--epochs", "8", "--stage1-epochs", "4", "--loss", request.param), "-o", out)
    return request.param, out


# ---------------------------------------------------------------- the two stages, per loss


def test_stages_history_and_selection(loss_run):
    loss, out = loss_run
    hist = history(out)
    assert [r["epoch"] for r in hist] == list(range(1, 9))
    stage1, stage2 = hist[:4], hist[4:]
    own = {"train/disc_loss"} if loss == "adversarial" else set()
    for row in stage1:  # imitation only: no CE, the head untrained and not a candidate
        assert set(row) == BASE | {"train/hall"} | own, row
        assert math.isnan(row["val/accuracy"]) and row["val/loss"] == math.inf
        assert math.isfinite(row["train/hall"])
    for row in stage2:  # labels only: no imitation, no discriminator
        assert set(row) == BASE | {"train/ce"}, row
        assert math.isfinite(row["val/accuracy"]) and math.isfinite(row["val/loss"])
    assert stage1[-1]["train/hall"] < stage1[0]["train/hall"]  # the imitation is learned
    if loss == "adversarial":
        assert all(math.isfinite(r["train/disc_loss"]) and r["train/disc_loss"] > 0 for r in stage1)
    # the weighted total is the default weight times the imitation term (stage 1), the CE alone (stage 2)
    for row in stage1:
        assert row["train/loss"] == pytest.approx(DEFAULT_WEIGHTS[loss] * row["train/hall"], rel=1e-5)
    for row in stage2:
        assert row["train/loss"] == pytest.approx(row["train/ce"], rel=1e-6)

    record = read_checkpoint(out)[2]
    assert record["method"] == "hallucinate" and record["params"]["loss"] == loss
    best = max(r["val/accuracy"] for r in stage2)
    assert 5 <= record["best_epoch"] <= 8
    assert hist[record["best_epoch"] - 1]["val/accuracy"] == best
    assert record["best_metrics"]["val/accuracy"] == best
    assert best > 0.55  # chance 0.5; xb alone reaches about 0.6


# ---------------------------------------------------------------- what each stage trains


def test_stage_semantics(mfh_table, ckpts, tmp_path, monkeypatch):
    """Per-epoch snapshots of the composite (BatchNorm and dropout everywhere, --select last): stage 1 moves phi_s
    only, stage 2 moves the CTN and head only; phi_o (weights, BatchNorm statistics, standardisation) stays the
    --ordinary checkpoint's; phi_o is in eval mode throughout, phi_s in stage 2."""
    bn = tmp_path / "ord_bn.safetensors"
    run("pretrain", mfh_table, "-i", "xb", "--arch", "mlp", "--hidden", "16", "--batch-norm", "--epochs", "3",
        "--lr", "0.01", "-q", "-o", bn)  # fmt: skip
    start: dict = {}
    snaps: dict[int, dict] = {}
    modes: dict[int, tuple[bool, bool, bool]] = {}
    orig_start = Hallucinate.on_epoch_start

    def on_epoch_start(self, epoch):
        if epoch == 1:
            start.update(copy.deepcopy(self.student.state_dict()))
        orig_start(self, epoch)
        enc = self.student.encoders
        modes[epoch] = (enc["shared"].training, enc["ordinary"].training, self.student.head.training)

    def on_epoch_end(self, epoch, metrics):
        snaps[epoch] = copy.deepcopy(self.student.state_dict())

    monkeypatch.setattr(Hallucinate, "on_epoch_start", on_epoch_start)
    monkeypatch.setattr(Hallucinate, "on_epoch_end", on_epoch_end)
    out = tmp_path / "s.safetensors"
    run("distill", "hallucinate", mfh_table, "-t", ckpts["priv"], "--ordinary", bn, *STUDENT, "--batch-norm",
        "--dropout", "0.3", "--epochs", "6", "--stage1-epochs", "3", "--select", "last",
        "--hallucination-weight", "7", "-o", out)  # fmt: skip
    assert sorted(snaps) == list(range(1, 7))

    assert modes == {e: (e <= 3, False, True) for e in range(1, 7)}
    shared, trained = "encoders.shared.", ("ctn.", "head.")
    assert any("running_mean" in k for k in _part(start, shared))  # phi_s has BatchNorm statistics to keep
    prev = start
    for e in range(1, 7):
        now = snaps[e]
        moved_shared = not _same(_part(now, shared), _part(prev, shared))
        moved_rest = [not _same(_part(now, p), _part(prev, p)) for p in trained]
        if e <= 3:
            assert moved_shared and not any(moved_rest), e
        else:
            assert not moved_shared and all(moved_rest), e  # BatchNorm statistics of phi_s included
        prev = now

    ordinary, student = tensors(bn), tensors(out)
    names = _ordinary_keys(ordinary)
    assert any("running_var" in k for k in names) and "norm.xb.mean" in names
    for state in (start, *snaps.values(), student):
        for k, k2 in names.items():
            assert torch.equal(state[k2], ordinary[k]), k
    assert _same(student, snaps[6])  # --select last: the end of stage 2
    # phi_s reads xb standardised with the same train split as phi_o
    torch.testing.assert_close(student["norm.shared.mean"], ordinary["norm.xb.mean"])
    hist = history(out)
    for row in hist[:3]:
        assert row["train/loss"] == pytest.approx(7.0 * row["train/hall"], rel=1e-5)
    assert read_checkpoint(out)[2]["best_epoch"] == 6


# ---------------------------------------------------------------- the default weights


@pytest.mark.parametrize("loss", LOSSES)
def test_default_and_given_weights(ckpts, loss):
    info = get("hallucinate")
    assert info.cls is Hallucinate
    teacher, ordinary = load_model(ckpts["priv"]), load_model(ckpts["ord"])
    expected = {"mse": 50.0, "pkt": 40000.0, "dask": 1.0, "adversarial": 1.0}[loss]
    for weight, want in ((None, expected), (3.0, 3.0), (0.0, 0.0)):
        params = info.params(loss=loss, hallucination_weight=weight)
        student = load_model(ckpts["ord"])  # any mlp on xb with 16 features
        method = Hallucinate(student, teacher, ordinary, params, "multiclass")
        assert method.loss_weights == {"hall": want, "ce": 1.0}, weight
        assert (method.disc is not None) == (loss == "adversarial")
        assert method.optimizers().keys() == ({"disc"} if loss == "adversarial" else set())


# ---------------------------------------------------------------- --resume across the stage boundary


@pytest.fixture(scope="module")
def adversarial_full(mfh_table, ckpts):
    out = ckpts["dir"] / "adv_full" / "s.safetensors"
    out.parent.mkdir()
    run(*_resume_args(mfh_table, ckpts), "-o", out)
    return out


def _resume_args(mfh_table, ckpts):
    return _args(mfh_table, ckpts, "--epochs", "5", "--stage1-epochs", "3", "--loss", "adversarial",
                 "--dropout", "0.3", "--disc-lr", "1e-3")  # fmt: skip


@pytest.mark.parametrize("stop", [2, 3], ids=["inside-stage1", "end-of-stage1"])
def test_resume_is_bit_identical_across_the_stages(mfh_table, ckpts, adversarial_full, tmp_path, resume_check, stop):
    """Interrupted after epoch ``stop`` (stage 1) of 5, the run resumes from its training state (the discriminator
    and its Adam state included) into stage 2 and ends with the uninterrupted run's weights, history and state."""
    args = _resume_args(mfh_table, ckpts)
    full, part = adversarial_full, tmp_path / "s.safetensors"
    saved, header = resume_check.interrupt(args, part, stop)
    disc = [k for k in saved if k.startswith("model.disc.")]
    assert disc and any(k.startswith("optim.disc.") for k in saved)
    assert "disc" in header["optimizers"]
    final, final_header = resume_check.resume_and_compare(args, full, part, 5)
    assert final_header["best_epoch"] >= 4
    if stop == 2:  # the discriminator trained on after the resume (epoch 3), then stayed (stage 2)
        assert any(not torch.equal(final[k], saved[k]) for k in disc)


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("case", "needle"),
    [("no-ordinary", "--ordinary"), ("loss-foo", "--loss"), ("stage1-zero", "--stage1-epochs")],
)
def test_usage_errors(mfh_table, ckpts, tmp_path, case, needle):
    out = tmp_path / "e.safetensors"
    base = ["distill", "hallucinate", mfh_table, "-t", ckpts["priv"], *STUDENT, "--epochs", "2", "-o", out]
    extra = {
        "no-ordinary": [],
        "loss-foo": ["--ordinary", ckpts["ord"], "--loss", "foo"],
        "stage1-zero": ["--ordinary", ckpts["ord"], "--stage1-epochs", "0"],
    }[case]
    line = _refused(*base, *extra)
    assert needle in line, line
    assert not out.exists()


def test_epochs_must_exceed_stage1_epochs(mfh_table, ckpts, tmp_path):
    out = tmp_path / "e.safetensors"
    line = _refused(*_args(mfh_table, ckpts, "--epochs", "2", "--stage1-epochs", "2"), "-o", out)
    assert "--stage1-epochs" in line and "--epochs" in line
    assert not out.exists()


# ---------------------------------------------------------------- the written model


def test_written_model_is_a_composite_that_eval_reads(mfh_table, ckpts, tmp_path):
    out = ckpts["dir"] / "mse.safetensors"
    if not out.exists():  # the loss_run fixture of test_stages_history_and_selection[mse] writes it
        run(*_args(mfh_table, ckpts, "--epochs", "8", "--stage1-epochs", "4", "--loss", "mse"), "-o", out)
    weights, spec, record = read_checkpoint(out)
    assert spec["kind"] == "composite" and [i["name"] for i in spec["inputs"]] == ["xb"]
    assert record["method"] == "hallucinate"
    # the deployable model only: no projector, no discriminator
    assert {k.split(".")[0] for k in weights} == {"norm", "encoders", "ctn", "head"}
    ordinary = tensors(ckpts["ord"])
    for k, k2 in _ordinary_keys(ordinary).items():  # phi_o never trained
        assert torch.equal(weights[k2], ordinary[k]), k

    metrics = json.loads(run("eval", out, mfh_table, "-f", "json").stdout)
    assert metrics["split"] == "test" and metrics["n"] == 1000
    # eval's accuracy is the model's own on the test rows, without the privileged column
    table = pq.read_table(mfh_table)
    test = np.asarray(table.column("split").to_pylist()) == "test"
    xb = torch.from_numpy(np.asarray(table.column("xb").to_pylist(), dtype=np.float32)[test])
    y = np.asarray(table.column("label").to_pylist())[test]
    model = load_model(out)
    with torch.no_grad():
        pred = model({"xb": xb}).argmax(1).numpy()
    assert metrics["accuracy"] == pytest.approx(float((pred == y).mean()), abs=1e-9)
    only_xb = tmp_path / "only_xb.parquet"
    pq.write_table(table.drop_columns(["xa"]), only_xb)
    assert json.loads(run("eval", out, only_xb, "-f", "json").stdout)["accuracy"] == metrics["accuracy"]
