"""distill osmd (OS-MD, Wei, Luo, Luo 2023) and the composite model kind: GradNorm's pure functions against a
hand-computed step and torch's Adam (amid-osmd.md section 2.3, O9); the composite model (spec, checkpoint round
trip through load_model alone, layers and widths, embed + head, no masks, the width check); and the command end to
end on the MFH table (xa privileged, xb ordinary): the deployable composite student, phi_o copied from --ordinary,
eval without the privileged column, spectrum's layers, learning, the three --balance modes, GradNorm's weights,
the CTN not collapsing (O7), a bit-identical --resume with the GradNorm state, --freeze-ordinary and the usage
errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from cli_helpers import history, run, tensors
from cli_helpers import refused as _refused
from typer.testing import CliRunner

from cmkdtool.errors import CmkdUsageError
from cmkdtool.io.checkpoints import load_model, read_checkpoint, save_checkpoint
from cmkdtool.losses.gradnorm import adam_update, gradnorm_weight_grad, renormalise
from cmkdtool.nn.composite import CompositeModel, composite_spec
from cmkdtool.nn.models import build_model

runner = CliRunner()
STUDENT = ["-i", "xb", "--arch", "mlp", "--hidden", "16", "--lr", "0.01", "-q"]
AUX_TERMS = ("train/ce", "train/mmd", "train/kl", "train/ctn", "train/alpha", "train/beta")
GRADNORM_EPOCHS = 12


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(privileged_and_ordinary, tmp_path_factory):
    """The privileged teacher (xa, 32 hidden), the ordinary model (xb, 16 hidden) and this module's folder."""
    return {**privileged_and_ordinary, "dir": tmp_path_factory.mktemp("osmd")}


def _distill(mfh_table, ckpts, out, *extra):
    run("distill", "osmd", mfh_table, "-t", ckpts["priv"], "--ordinary", ckpts["ord"], *STUDENT, *extra, "-o", out)
    return out


@pytest.fixture(scope="module")
def gradnorm_student(mfh_table, ckpts):
    """The default run (--balance gradnorm)."""
    return _distill(mfh_table, ckpts, ckpts["dir"] / "gn.safetensors", "--epochs", GRADNORM_EPOCHS)


# ---------------------------------------------------------------- GradNorm's pure functions (O9)


def test_gradnorm_weight_grad_against_a_hand_computed_step():
    w, g, losses, initial, a = (0.1, 0.1), (2.0, 0.5), (1.0, 0.5), (2.0, 0.5), 1.5
    big_g = [w[i] * g[i] for i in range(2)]  # (0.2, 0.05)
    g_bar = sum(big_g) / 2  # 0.125
    rates = [losses[i] / initial[i] for i in range(2)]  # (0.5, 1.0)
    r = [x / (sum(rates) / 2) for x in rates]  # (2/3, 4/3)
    targets = [g_bar * x**a for x in r]  # (0.0680, 0.1925)
    expected = [math.copysign(1.0, big_g[i] - targets[i]) * g[i] for i in range(2)]
    assert expected == [2.0, -0.5]  # the first term's gradient norm is above its target, the second's below
    got = gradnorm_weight_grad(*(torch.tensor(x) for x in (w, g, losses, initial)), a)
    torch.testing.assert_close(got, torch.tensor(expected))
    # a = 0: every target is G_bar, so the sign follows G_i - G_bar alone (the rates no longer matter)
    got0 = gradnorm_weight_grad(*(torch.tensor(x) for x in (w, g, (1.0, 0.01), initial)), 0.0)
    torch.testing.assert_close(got0, torch.tensor([2.0, -0.5]))


def test_adam_update_equals_torch_adam():
    grads = [torch.tensor([0.3, -2.0]), torch.tensor([-0.1, -1.5]), torch.tensor([0.7, 0.2])]
    ref = torch.nn.Parameter(torch.tensor([0.1, 0.1]))
    opt = torch.optim.Adam([ref], lr=0.025)
    w, m, v, step = torch.tensor([0.1, 0.1]), torch.zeros(2), torch.zeros(2), torch.zeros(())
    for g in grads:
        ref.grad = g.clone()
        opt.step()
        adam_update(w, g, m, v, step, 0.025)
        # the bias corrections 1 - b^t are float32 here (step is a float32 tensor), doubles in torch: ~1e-6 apart
        torch.testing.assert_close(w, ref.detach(), rtol=1e-5, atol=1e-7)
    assert float(step) == 3
    torch.testing.assert_close(m, opt.state[ref]["exp_avg"])
    torch.testing.assert_close(v, opt.state[ref]["exp_avg_sq"])


def test_renormalise_clamps_and_sums_to_the_total():
    out = renormalise(torch.tensor([-0.5, 0.3]), 0.2)
    assert bool((out > 0).all())
    assert float(out.sum()) == pytest.approx(0.2, rel=1e-6)
    assert float(out[1] / out[0]) == pytest.approx(0.3 / 1e-6, rel=1e-4)  # the negative weight sits at the floor
    torch.testing.assert_close(renormalise(torch.tensor([0.3, 0.1]), 0.2), torch.tensor([0.15, 0.05]))


# ---------------------------------------------------------------- the composite model


def _spec(ordinary=None, shared=None, **kw):
    column = {"name": "x", "shape": [8]}
    ordinary = ordinary or {"arch": "cnn1d", "channels": [3, 5], "hidden": [], "activation": "relu"}
    shared = shared or {"arch": "mlp", "hidden": [7, 5], "activation": "relu", "dropout": 0.2}
    return composite_spec(column, ordinary, shared, num_classes=3, task="multiclass", class_names=["a", "b", "c"], **kw)


def _randomised(spec, seed=0):
    """A composite model with random weights and random (non-trivial) input standardisation, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(spec)
    assert isinstance(model, CompositeModel)
    for b in ("ordinary", "shared"):
        model.norm[b].mean.copy_(torch.randn(8))
        model.norm[b].std.copy_(torch.rand(8) + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "kw", [{}, {"fuse": "concat4", "bn": True, "head_hidden": [4]}], ids=["average", "concat4-bn-headhidden"]
)
def test_composite_round_trip_layers_and_embedding(tmp_path, kw):
    spec = _spec(**kw)
    assert spec["kind"] == "composite" and spec["inputs"] == [{"name": "x", "shape": [8]}]
    model = _randomised(spec)
    if kw.get("bn"):  # move the BatchNorm statistics off their defaults, so the round trip has to carry them
        model.train()
        with torch.no_grad():
            model({"x": torch.randn(16, 8) * 3 + 1})
        model.eval()
    x = {"x": torch.randn(10, 8)}
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (10, 3)

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model.state_dict(), model.spec, {})
    loaded = load_model(path)  # rebuilt from the file alone
    assert isinstance(loaded, CompositeModel) and not loaded.training
    assert loaded.spec == json.loads(json.dumps(spec))
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)

    names = loaded.layer_names()
    assert names[0] == "input.x" and names[-1] == "logits"
    for prefix in ("encoders.ordinary.", "encoders.shared.", "head."):
        assert any(n.startswith(prefix) for n in names), prefix
    assert {"ctn.t1", "ctn.t2", "ctn.fuse", "embedding"} <= set(names)
    with torch.no_grad():
        out_logits, feats = loaded.forward_layers(x, names)
        assert torch.equal(out_logits, logits)
        for n in names:
            assert feats[n].shape == (10, loaded.layer_width(n)), n
        emb = loaded.embed(x)
        assert torch.equal(loaded.head(emb), logits)
        assert torch.equal(feats["embedding"], emb)
        parts = loaded.parts(x)
    assert torch.equal(feats["ctn.t1"], torch.cat([parts["t1_o"], parts["t1_s"]], 1))
    assert loaded.layer_width("ctn.t1") == 2 * (loaded.embed_dim // 2)  # D = 5: T maps 5 -> 2, per branch
    assert loaded.embed_dim == 5


def test_composite_refuses_masks_and_mismatched_widths():
    model = _randomised(_spec())
    model.set_mask(None)  # no mask: fine
    assert model.maskable_layers() == []
    with pytest.raises(CmkdUsageError, match="mask"):
        model.set_mask({"layer": "embedding", "dim": 5, "removed": [0], "fill": "zero"})
    with pytest.raises(CmkdUsageError, match="--hidden"):
        build_model(_spec(shared={"arch": "mlp", "hidden": [4]}))  # 5 ordinary features, 4 shared
    with pytest.raises(CmkdUsageError, match="linear"):
        build_model(_spec(shared={"arch": "linear", "hidden": []}))


# ---------------------------------------------------------------- the command end to end


def test_student_is_a_composite_that_eval_and_spectrum_read_without_the_privileged_column(
    mfh_table, ckpts, gradnorm_student, tmp_path
):
    weights, spec, record = read_checkpoint(gradnorm_student)
    assert spec["kind"] == "composite" and [i["name"] for i in spec["inputs"]] == ["xb"]
    assert record["method"] == "osmd"
    # only the deployable model: no projector, no hallucination head, no GradNorm state
    assert {k.split(".")[0] for k in weights} == {"norm", "encoders", "ctn", "head"}
    assert {k.split(".")[1] for k in weights if k.startswith("encoders.")} == {"ordinary", "shared"}

    full = json.loads(run("eval", gradnorm_student, mfh_table, "-f", "json").stdout)
    table = pq.read_table(mfh_table)
    only_xb = tmp_path / "only_xb.parquet"
    pq.write_table(table.drop_columns(["xa"]), only_xb)  # same ids, labels and split; no privileged column
    assert "xa" not in pq.read_schema(only_xb).names
    alone = json.loads(run("eval", gradnorm_student, only_xb, "-f", "json").stdout)
    assert full["n"] == alone["n"] == 1000
    assert full == alone

    listing = run("spectrum", gradnorm_student, "--list-layers").stdout
    for name in ("encoders.ordinary.0", "encoders.shared.0", "ctn.t1", "ctn.t2", "ctn.fuse", "embedding"):
        assert name in listing, name


def test_ordinary_encoder_starts_as_a_copy_of_the_ordinary_model(mfh_table, ckpts, tmp_path):
    out = _distill(mfh_table, ckpts, tmp_path / "s.safetensors", "--epochs", "1", "--lr", "1e-12")
    ordinary, student = tensors(ckpts["ord"]), tensors(out)
    copied = {k: k.replace("encoders.xb.", "encoders.ordinary.").replace("norm.xb.", "norm.ordinary.")
              for k in ordinary if k.startswith(("encoders.xb.", "norm.xb."))}  # fmt: skip
    assert copied and set(copied.values()) <= set(student)
    for k, k2 in copied.items():
        torch.testing.assert_close(student[k2], ordinary[k], rtol=0, atol=1e-9, msg=k)
    # the shared encoder is new (not a second copy of phi_o); both see xb standardised with the train split
    assert not torch.allclose(student["encoders.shared.0.weight"], ordinary["encoders.xb.0.weight"], atol=1e-3)
    torch.testing.assert_close(student["norm.shared.mean"], ordinary["norm.xb.mean"])


def test_gradnorm_run_learns_and_keeps_the_weight_sum(gradnorm_student):
    hist = history(gradnorm_student)
    assert len(hist) == GRADNORM_EPOCHS
    for row in hist:
        assert set(AUX_TERMS) <= row.keys()
        assert row["train/alpha"] + row["train/beta"] == pytest.approx(0.2, rel=1e-5)
        assert row["train/alpha"] > 0 and row["train/beta"] > 0
    assert max(r["val/accuracy"] for r in hist) > 0.55  # chance 0.5; xb alone reaches about 0.6
    assert any(r["train/alpha"] != pytest.approx(0.1, abs=1e-3) for r in hist)  # the weights move


def test_ctn_transform_does_not_collapse(mfh_table, gradnorm_student):
    """O7: MSE(T(z_s), T(z_o)) alone is minimised by a constant T; after training T1 still varies over rows."""
    model = load_model(gradnorm_student)
    table = pq.read_table(mfh_table)
    val = np.asarray(table.column("split").to_pylist()) == "val"
    xb = np.asarray(table.column("xb").to_pylist(), dtype=np.float32)[val]
    assert len(xb) == 200
    with torch.no_grad():
        parts = model.parts({"xb": torch.from_numpy(xb)})
    for key in ("t1_o", "t1_s"):
        std = parts[key].std(dim=0)
        assert float(std.mean()) > 1e-3, (key, std)
    assert float(parts["embedding"].std(dim=0).mean()) > 1e-3


@pytest.mark.parametrize("balance", ["fixed", "magnitude"])
def test_fixed_and_magnitude_balance(mfh_table, ckpts, tmp_path, balance):
    extra = ["--jdn-weight", "0.3", "--ctn-weight", "0.05"] if balance == "fixed" else []
    out = _distill(mfh_table, ckpts, tmp_path / "s.safetensors", "--epochs", "3", "--balance", balance, *extra)
    hist = history(out)
    for row in hist:
        assert set(AUX_TERMS) <= row.keys()
        if balance == "fixed":
            assert row["train/alpha"] == pytest.approx(0.3, rel=1e-6)
            assert row["train/beta"] == pytest.approx(0.05, rel=1e-6)
        else:
            assert 0 < row["train/alpha"] <= 1 and 0 < row["train/beta"] <= 1
    if balance == "magnitude":  # w_i = 0.1 sg(L_ce) / sg(L_i), capped at 1: JDN (mmd + kl, ~1-3) gets < 0.1
        assert hist[0]["train/alpha"] < 0.1


def test_resume_is_bit_identical_with_the_gradnorm_state(mfh_table, ckpts, tmp_path, resume_check):
    """Interrupted after epoch 2 of 4, the run resumes from its training state (GradNorm's w, L(0) and Adam
    moments included) to the uninterrupted run's weights, history and final training state."""
    args = ["distill", "osmd", mfh_table, "-t", ckpts["priv"], "--ordinary", ckpts["ord"], *STUDENT,
            "--epochs", "4", "--dropout", "0.3", "--balance", "gradnorm"]  # fmt: skip
    full, part = tmp_path / "full" / "s.safetensors", tmp_path / "part" / "s.safetensors"
    full.parent.mkdir()
    part.parent.mkdir()
    run(*args, "-o", full)
    saved, _ = resume_check.interrupt(args, part, 2)
    state = {"model.w", "model.loss0", "model.adam_m", "model.adam_v", "model.adam_step"}
    assert state <= set(saved), sorted(saved)
    assert float(saved["model.adam_step"]) > 0 and bool((saved["model.loss0"] > 0).all())
    assert float(saved["model.w"].sum()) == pytest.approx(0.2, rel=1e-5)
    final, _ = resume_check.resume_and_compare(args, full, part, 4)
    assert not torch.equal(final["model.adam_m"], saved["model.adam_m"])  # GradNorm went on after the resume


def test_freeze_ordinary_keeps_the_ordinary_encoder(mfh_table, ckpts, tmp_path):
    out = _distill(mfh_table, ckpts, tmp_path / "s.safetensors", "--epochs", "2", "--freeze-ordinary")
    ordinary, student = tensors(ckpts["ord"]), tensors(out)
    keys = [k for k in ordinary if k.startswith(("encoders.xb.", "norm.xb."))]
    assert keys
    for k in keys:
        k2 = k.replace("encoders.xb.", "encoders.ordinary.").replace("norm.xb.", "norm.ordinary.")
        assert torch.equal(student[k2], ordinary[k]), k
    assert not torch.equal(student["encoders.shared.0.weight"], tensors(ckpts["ord"])["encoders.xb.0.weight"])
    assert read_checkpoint(out)[2]["params"]["freeze_ordinary"] is True


def test_freeze_ordinary_keeps_batchnorm_statistics(mfh_table, ckpts, tmp_path):
    bn = tmp_path / "ord_bn.safetensors"
    run("pretrain", mfh_table, "-i", "xb", "--arch", "mlp", "--hidden", "16", "--batch-norm", "--epochs", "2",
        "-q", "-o", bn)  # fmt: skip
    out = tmp_path / "s.safetensors"
    run("distill", "osmd", mfh_table, "-t", ckpts["priv"], "--ordinary", bn, *STUDENT, "--epochs", "1",
        "--freeze-ordinary", "-o", out)  # fmt: skip
    ordinary, student = tensors(bn), tensors(out)
    for k in (k for k in ordinary if k.startswith("encoders.xb.")):
        assert torch.equal(student[k.replace("encoders.xb.", "encoders.ordinary.")], ordinary[k]), k


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("no-ordinary", ["--ordinary"]),
        ("ordinary-on-xa", ["--ordinary", "xa", "xb"]),
        ("two-inputs", ["--input"]),
        ("copy-head-off-embedding", ["--teacher-layer embedding", "--hallucination-head new"]),
        ("linear", ["linear"]),
        ("width-mismatch", ["--hidden"]),
    ],
)
def test_usage_errors(mfh_table, ckpts, tmp_path, case, needles):
    ordinary = ["--ordinary", ckpts["ord"]]
    student = ["-i", "xb", "--arch", "mlp", "--hidden", "16"]
    extra = {
        "no-ordinary": ([], student),
        "ordinary-on-xa": (["--ordinary", ckpts["priv"]], student),
        "two-inputs": (ordinary, [*student, "-i", "xa"]),
        "copy-head-off-embedding": (ordinary, [*student, "--teacher-layer", "head.0"]),
        "linear": (ordinary, ["-i", "xb", "--arch", "linear"]),
        "width-mismatch": (ordinary, ["-i", "xb", "--arch", "mlp", "--hidden", "8"]),
    }[case]
    line = _refused("distill", "osmd", mfh_table, "-t", ckpts["priv"], *extra[0], *extra[1], "--epochs", "1", "-q",
                    "-o", tmp_path / "e.safetensors")  # fmt: skip
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "e.safetensors").exists()


def test_teacher_layer_with_a_new_hallucination_head_runs(mfh_table, ckpts, tmp_path):
    """The fix the copy-head error names works: an intermediate teacher layer (32 wide) with --hallucination-head
    new and a projector from the 16-d shared features."""
    out = _distill(mfh_table, ckpts, tmp_path / "s.safetensors", "--epochs", "1", "--teacher-layer",
                   "encoders.xa.1", "--hallucination-head", "new")  # fmt: skip
    assert set(AUX_TERMS) <= history(out)[0].keys()


@pytest.mark.parametrize(
    ("option", "value", "terms", "fuse"),
    [
        ("--jdn", "none", {"train/ce", "train/ctn"}, "average"),
        ("--jdn", "fkd", {"train/ce", "train/fkd", "train/ctn"}, "average"),
        ("--jdn", "rkd", {"train/ce", "train/rkd", "train/ctn"}, "average"),
        ("--ctn", "none", {"train/ce", "train/mmd", "train/kl"}, "concat"),
        ("--ctn", "ae", {"train/ce", "train/mmd", "train/kl", "train/ctn"}, "concat"),
    ],
)
def test_ablations_of_tables_4_and_5(mfh_table, ckpts, tmp_path, option, value, terms, fuse):
    """Table 4 (the JDN removed or replaced by feature KD / RKD) and Table 5 (the CTN removed, or replaced by an
    autoencoder translation with the encoders' features concatenated)."""
    out = _distill(mfh_table, ckpts, tmp_path / "s.safetensors", "--epochs", "2", option, value)
    hist = history(out)
    for row in hist:
        assert {k for k in row if k.startswith("train/") and k not in ("train/loss", "train/alpha", "train/beta")} == (
            terms
        )
        if value == "none":  # one auxiliary term left: GradNorm has nothing to balance, the weights stay S/2
            assert row["train/alpha"] == pytest.approx(0.1) and row["train/beta"] == pytest.approx(0.1)
    weights, spec, _ = read_checkpoint(out)
    assert spec["ctn"]["fuse"] == fuse
    assert not any(k.startswith("autoencoder") for k in weights)  # training only
