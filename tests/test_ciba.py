"""CIBA: bottleneck losses and models, fit-bottleneck (one H and the sweep), distill ciba, Corollary 1.1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.data.synth import synth_orthogonal
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.inference import predict
from cmkdtool.engine.method import Batch
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.checkpoints import load_bottleneck, load_model, read_checkpoint, save_checkpoint
from cmkdtool.io.tables import build_table, read_tables, write_table
from cmkdtool.losses.bottleneck import cross_generation, gaussian_kl, reparameterize, vq_losses
from cmkdtool.methods import registry
from cmkdtool.methods.bottleneck import evaluate, feature_data
from cmkdtool.methods.ciba import subdim_loss
from cmkdtool.nn.bottleneck import build_bottleneck
from cmkdtool.nn.criteria import FeatureCriterion
from cmkdtool.nn.specs import BottleneckOptions, ModelOptions
from cmkdtool.pipelines.bottleneck import choose_dim, fit_bottleneck
from cmkdtool.pipelines.train import distill, pretrain

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def fails(*args, code=1):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.stderr


def _spec(kind="dvib", in_dim=6, out_dim=5, dim=3, **extra):
    base = {"role": "bottleneck", "kind": kind, "in_dim": in_dim, "out_dim": out_dim, "dim": dim, "hidden": [8]}
    base.update({"tokens": 2, "d_model": 4, "heads": 2} if kind == "attention" else {})
    base.update({"codebook_size": 4, "groups": 1, "beta": 0.25} if kind == "vqvae" else {})
    return {**base, **extra}


# ---------------------------------------------------------------- losses


def test_gaussian_kl_hand_values_and_closed_form():
    # mean 1, logvar 0: 1/2 per dim; mean 0, var 2: -1/2 (1 + ln 2 - 2) = 1/2 (1 - ln 2)
    m = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    lv = torch.tensor([[0.0, math.log(2.0)]], dtype=torch.float64)
    assert gaussian_kl(m, lv).item() == pytest.approx(0.5 + 0.5 * (1 - math.log(2.0)), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    m, lv = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(m, (0.5 * lv).exp())
    p = torch.distributions.Normal(torch.zeros_like(m), torch.ones_like(m))
    ref = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert gaussian_kl(m, lv).item() == pytest.approx(ref.item(), rel=1e-12)
    assert gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2)).item() == 0.0


def test_cross_generation_and_vq_hand_values():
    z_hat = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    assert cross_generation(z_hat, z).item() == pytest.approx((5 + 25) / 2, rel=1e-12)
    codebook, commit = vq_losses(z_hat, z, beta=0.25)
    assert codebook.item() == pytest.approx(15.0, rel=1e-12) and commit.item() == pytest.approx(3.75, rel=1e-12)


def test_reparameterisation_gradients_flow_to_mean_logvar_and_the_encoder():
    m = torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    lv = torch.tensor([[0.2, -0.4]], dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([[1.5, -0.7]], dtype=torch.float64)
    reparameterize(m, lv, eps).sum().backward()
    torch.testing.assert_close(m.grad, torch.ones_like(m))
    torch.testing.assert_close(lv.grad, 0.5 * (0.5 * lv.detach()).exp() * eps)

    torch.manual_seed(0)
    bn = build_bottleneck(_spec())
    t, s = torch.randn(16, 6), torch.randn(16, 5)
    bn.losses(t, s, sample=True)["recon"].backward()  # the reconstruction alone reaches both heads
    w = bn.stats.weight.grad
    assert w[:3].abs().sum() > 0 and w[3:].abs().sum() > 0  # rows 0..H-1: mean, H..2H-1: log-variance
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bn.trunk.parameters())
    bn.zero_grad()
    bn.losses(t, s, sample=False)["recon"].backward()  # the mean path: no gradient to the variance
    assert bn.stats.weight.grad[3:].abs().sum() == 0


def test_vq_quantizes_to_the_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    bn = build_bottleneck(_spec("vqvae", dim=2, groups=1))
    with torch.no_grad():
        bn.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0], [0.0, 3.0]]))
    q, idx = bn.quantize(torch.tensor([[0.9, 1.2], [-1.5, 0.1], [0.1, 2.0]]))
    assert idx.flatten().tolist() == [1, 2, 3]
    torch.testing.assert_close(q, bn.codebook.weight[[1, 2, 3]].detach())
    t, s = torch.randn(8, 6), torch.randn(8, 5)
    terms = bn.losses(t, s)
    terms["recon"].backward(retain_graph=True)
    assert bn.encoder[0].weight.grad.abs().sum() > 0  # straight-through: the encoder learns from the decoder
    assert bn.codebook.weight.grad is None or bn.codebook.weight.grad.abs().sum() == 0
    bn.zero_grad()
    terms["codebook"].backward(retain_graph=True)
    assert bn.codebook.weight.grad.abs().sum() > 0 and bn.encoder[0].weight.grad is None
    bn.zero_grad()
    terms["commit"].backward()
    assert bn.encoder[0].weight.grad.abs().sum() > 0 and bn.codebook.weight.grad is None


def test_groups_quantize_each_part_of_h():
    bn = build_bottleneck(_spec("vqvae", dim=4, groups=2))
    assert bn.codebook.weight.shape == (4, 2)
    code = bn.code(torch.randn(5, 6))
    assert code.shape == (5, 4)
    parts = code.reshape(10, 2)
    assert all(any(torch.equal(p, c) for c in bn.codebook.weight) for p in parts)


def test_attention_bottleneck_runs_and_trains_its_attention():
    torch.manual_seed(0)
    bn = build_bottleneck(_spec("attention"))
    terms = bn.losses(torch.randn(4, 6), torch.randn(4, 5))
    assert set(terms) == {"recon", "kl"} and bn(torch.randn(4, 6)).shape == (4, 5)
    (terms["recon"] + terms["kl"]).backward()
    assert bn.trunk[-1].attn.in_proj_weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("extra", "kind", "match"),
    [
        ({"groups": 2}, "vqvae", "must divide"),
        ({"heads": 3}, "attention", "multiple of --heads"),
        ({"kind": "nosuch"}, "dvib", "unknown bottleneck kind"),
        ({"dim": 0}, "dvib", "at least 1"),
    ],
)
def test_bad_bottleneck_specs_are_refused(extra, kind, match):
    spec = _spec(kind, dim=3)
    spec.update(extra)
    with pytest.raises((CmkdError, CmkdUsageError), match=match):
        build_bottleneck(spec)


def test_choose_dim_picks_where_the_spectrum_stops_changing():
    tiny = 1e-9
    spectra = {
        1: np.array([10.0, tiny, tiny, tiny]),
        2: np.array([10.0, 5.0, tiny, tiny]),
        4: np.array([10.0, 5.0, 3.0, 2.0]),
        8: np.array([10.0, 5.1, 3.0, 2.05]),
    }
    chosen, worst = choose_dim(spectra, tol=0.1)
    assert chosen == 4 and worst[8] == 0.0 and worst[4] < 0.01 and worst[2] > 0.5
    assert choose_dim(spectra, tol=10.0)[0] == 1  # a loose tolerance accepts the smallest H


def test_ciba_distillation_term_is_algorithm_2s_squared_distance_without_a_half():
    # z = [[1, 2, 9], [0, 0, -9]], h' = [[0, 0], [3, 4]], H = 2: rows 1 + 4 = 5 and 9 + 16 = 25, batch mean 15
    # (Algorithm 2, l_i = ||h'_i - z_i[0:H]||^2; distill feature's Eq. 1 form would give 7.5); the third column
    # is outside H and ignored
    z = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, -9.0]])
    code = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert subdim_loss(FeatureCriterion("mse"), z, code).item() == 15.0
    assert FeatureCriterion("mse")(z[:, :2], code).item() == 7.5  # the shared loss keeps Eq. 1's 1/2
    assert subdim_loss(FeatureCriterion("l1"), z, code).item() == 5.0  # (3 + 7) / 2: other bases unscaled
    assert registry.get("ciba").params().base == "mse"


# ---------------------------------------------------------------- fitting and distilling on data


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    """synth orthogonal (16 channels, 4 shared, 4 classes) with an MLP teacher on xa and baseline on xb."""
    d = tmp_path_factory.mktemp("ciba")
    sd = synth_orthogonal(dim=16, general=4, num_classes=4, n_train=600, n_val=200, n_test=400, seed=0)
    path = d / "gap.parquet"
    write_table(
        build_table(sd.ids, {"xa": sd.xa, "xb": sd.xb}, label=sd.label, split=sd.split,
                    meta={"class_names": sd.class_names}),
        path,
    )  # fmt: skip
    common = ["--hidden", "32", "--epochs", "30", "--lr", "0.003", "-q"]
    run("pretrain", path, "-i", "xa", *common, "-o", d / "teacher.safetensors")
    run("pretrain", path, "-i", "xb", *common, "--role", "student", "-o", d / "baseline.safetensors")
    return d, path


def _features(d, path):
    table = read_tables([str(path)])
    data = load_tensor_data(table, ["xa", "xb"])
    teacher, base = load_model(d / "teacher.safetensors"), load_model(d / "baseline.safetensors")
    idx = torch.arange(len(data))
    _, zt = predict(teacher, data, idx, embeddings=True)
    _, zs = predict(base, data, idx, embeddings=True)
    return feature_data(zt, zs, data.split, data.ids, "gap"), data


@pytest.mark.parametrize("kind", ["dvib", "attention", "vqvae"])
def test_fit_bottleneck_learns_to_generate_student_features(gap, kind):
    d, path = gap
    fdata, _ = _features(d, path)
    cfg = TrainConfig(epochs=25, batch_size=64, lr=3e-3)
    opts = BottleneckOptions(kind=kind, hidden=[32], codebook_size=64, groups=2 if kind == "vqvae" else 1)
    bn, result = fit_bottleneck(fdata, 4, opts, cfg, quiet=True)
    val = fdata.index("val")
    m = evaluate(bn, fdata, val, {"kl": opts.kl_weight})
    assert m["r2"] > 0.1, m  # the teacher's features explain part of the student's (the shared channels)
    assert result.best_metrics["val/loss"] < result.history[0]["val/loss"]
    assert bn.code(fdata.inputs["teacher"][:5]).shape == (5, 4)


def test_distill_ciba_loss_touches_only_the_first_h_dimensions(gap, tmp_path):
    d, path = gap
    fdata, data = _features(d, path)
    records = {"teacher": {"layer": "embedding"}, "student": {"layer": "encoders.xb.0"}}
    bn, _ = fit_bottleneck(fdata, 3, BottleneckOptions(hidden=[16]), TrainConfig(epochs=3), quiet=True, records=records)
    bpath = tmp_path / "bn.safetensors"
    save_checkpoint(bpath, bn.state_dict(), bn.spec, {})
    info = registry.get("ciba")
    teacher = load_model(d / "teacher.safetensors")
    student = load_model(d / "baseline.safetensors")
    method = info.cls(student, teacher, info.params(bottleneck=str(bpath), task_weight=0.0), "multiclass")
    assert method.student_layer == "encoders.xb.0"  # the bottleneck's student layer (pre-activation) by default
    method.setup(data)
    idx = data.index("train")[:32]
    terms = method.training_step(Batch({k: v[idx] for k, v in data.inputs.items()}, data.target[idx], idx))
    assert set(terms) == {"feat"}
    with torch.no_grad():  # Algorithm 2's value: the squared distance of the first H dims per row, batch mean
        z = student.forward_layers({"xb": data.inputs["xb"][idx]}, ["encoders.xb.0"])[1]["encoders.xb.0"]
        h = bn.code(predict(teacher, data, idx, embeddings=True)[1])
    assert terms["feat"].item() == pytest.approx((z[:, :3] - h).square().sum(1).mean().item(), rel=1e-5)
    terms["feat"].backward()
    grad = student.encoders["xb"][0].weight.grad  # rows = output dims of the distilled layer
    assert grad[:3].abs().sum() > 0 and grad[3:].abs().sum() == 0
    code = method.teacher_outputs(Batch({}, None, idx))["code"]
    _, zt = predict(teacher, data, idx, embeddings=True)
    torch.testing.assert_close(code, bn.code(zt))  # h' = the encoder mean of the frozen teacher's feature
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in [*teacher.parameters(), *method.bottleneck.parameters()])


def test_fit_bottleneck_sweep_and_distill_ciba_cli(gap):
    d, path = gap
    out = d / "bn.safetensors"
    res = run("fit-bottleneck", d / "teacher.safetensors", d / "baseline.safetensors", path, "--dims", "1,4,16",
              "--epochs", "15", "--hidden", "32", "--save-all", "--plot", d / "sweep.png", "-q", "-o", out)  # fmt: skip
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["H", "recon", "r2"]
    assert sum("<-" in line for line in lines) == 1
    tensors, spec, train = read_checkpoint(out)
    assert spec["role"] == "bottleneck" and spec["kind"] == "dvib"
    assert spec["teacher"]["layer"] == "embedding" and len(spec["teacher"]["sha256"]) == 64
    assert spec["student"]["inputs"] == ["xb"]
    sweep = {r["H"]: r for r in train["sweep"]}
    assert set(sweep) == {1, 4, 16} and spec["dim"] == next(h for h, r in sweep.items() if r["chosen"])
    assert sweep[16]["recon"] < sweep[1]["recon"]  # a wider bottleneck reconstructs better
    assert sweep[16]["rankme"] > sweep[1]["rankme"]
    for h in (1, 4, 16):
        assert load_bottleneck(d / f"bn.h{h}.safetensors").dim == h
    assert (d / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    common = ["--hidden", "32", "--epochs", "30", "--lr", "0.003", "-q"]
    run("distill", "ciba", path, "-t", d / "teacher.safetensors", "--bottleneck", d / "bn.h4.safetensors", "-i",
        "xb", *common, "-o", d / "ciba.safetensors")  # fmt: skip
    hist = [json.loads(x) for x in open(f"{d / 'ciba.safetensors'}.history.jsonl")]
    assert {"train/feat", "train/ce"} <= hist[0].keys() and hist[-1]["train/feat"] < 0.5 * hist[0]["train/feat"]
    ev = json.loads(run("eval", d / "ciba.safetensors", path, "--split", "test", "--format", "json").stdout)
    assert ev["accuracy"] > 0.45  # 4 classes: chance is 0.25
    ciba, base = read_checkpoint(d / "ciba.safetensors"), read_checkpoint(d / "baseline.safetensors")
    assert not torch.equal(ciba[0]["encoders.xb.0.weight"], base[0]["encoders.xb.0.weight"])
    assert ciba[2]["method"] == "ciba" and ciba[2]["params"]["bottleneck"].endswith("bn.h4.safetensors")


def test_ciba_and_bottleneck_errors(gap, tmp_path):
    d, path = gap
    t, b, bn = d / "teacher.safetensors", d / "baseline.safetensors", tmp_path / "bn.safetensors"
    run("fit-bottleneck", t, b, path, "--dim", "2", "--epochs", "2", "-q", "-o", bn)
    err = fails("distill", "ciba", path, "-t", t, "-i", "xb", "-o", tmp_path / "s.safetensors", code=2)
    assert "needs --bottleneck" in err
    err = fails("distill", "ciba", path, "-t", t, "--bottleneck", t, "-i", "xb", "-o", tmp_path / "s.safetensors")
    assert "not a bottleneck" in err and "fit-bottleneck" in err
    err = fails("eval", bn, path)
    assert "a bottleneck checkpoint" in err and "distill ciba" in err
    err = fails("distill", "ciba", path, "-t", t, "--bottleneck", bn, "-i", "xb", "--hidden", "1", "-o",
                tmp_path / "s.safetensors")  # fmt: skip
    assert "fewer than the bottleneck's H = 2" in err
    err = fails("distill", "ciba", path, "-t", b, "--bottleneck", bn, "-i", "xb", "-o", tmp_path / "s.safetensors")
    assert "fitted on another teacher" in err and err.count("\n") == 1  # one line
    assert "give --dim H or --dims" in fails("fit-bottleneck", t, b, path, "--dim", "2", "--dims", "2,4", "-o", bn,
                                             code=2)  # fmt: skip
    assert "--groups 3 must divide" in fails("fit-bottleneck", t, b, path, "--kind", "vqvae", "--groups", "3",
                                             "--dim", "4", "-o", tmp_path / "x.safetensors", code=2)  # fmt: skip
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("loss", ["ce", "clip", "margin"])
def test_distill_feature_with_batch_losses_learns(gap, loss, tmp_path):
    d, path = gap
    out = tmp_path / f"{loss}.safetensors"
    run("distill", "feature", path, "-t", d / "teacher.safetensors", "-i", "xb", "--loss", loss, "--hidden", "32",
        "--epochs", "20", "--lr", "0.003", "-q", "-o", out)  # fmt: skip
    hist = [json.loads(x) for x in open(f"{out}.history.jsonl")]
    assert hist[-1]["train/feat"] < hist[0]["train/feat"]
    assert max(h["val/accuracy"] for h in hist) > 0.45


def test_corollary_1_1_final_mse_loss_is_the_teacher_specific_energy(tmp_path):
    """CIBA Corollary 1.1: L_FD(inf) = 1/2 ||W' (0; S')||_F^2 (per sample here: our loss averages the rows)."""
    dg, dim = 4, 12
    sd = synth_orthogonal(dim=dim, general=dg, n_train=200, n_val=50, n_test=50, seed=3)
    table = read_tables([str(_write(tmp_path / "o.parquet", sd))])
    linear = ModelOptions(arch="mlp", hidden=[dim], activation="identity")
    teacher, _ = pretrain(load_tensor_data(table, ["xa"]), model=linear,
                          config=TrainConfig(epochs=60, batch_size=None, lr=0.01), quiet=True)  # fmt: skip
    data = load_tensor_data(table, ["xa", "xb"])
    info = registry.get("feature")
    cfg = TrainConfig(epochs=600, batch_size=None, lr=0.02, select="last")
    params = info.params(loss="mse", task_weight=0.0)
    student, result = distill(info, params, data, teacher, ["xb"], model=linear, config=cfg, quiet=True)
    train = data.index("train")
    x = teacher.norm["xa"](data.inputs["xa"][train]).double()
    w = teacher.encoders["xa"][0].weight.detach().double()
    predicted = 0.5 * (x[:, dg:] @ w[:, dg:].T).square().sum(1).mean().item()
    measured = result.history[-1]["train/feat"]
    assert measured == pytest.approx(predicted, rel=0.03)
    sv = np.linalg.svd(student.encoders["xb"][0].weight.detach().double().numpy(), compute_uv=False)
    rank = int((sv > 1e-3 * sv[0]).sum())
    assert rank == min(np.linalg.matrix_rank(w.numpy(), tol=1e-3 * np.linalg.norm(w.numpy(), 2)), dg)  # Theorem 1


def _write(path, sd):
    write_table(build_table(sd.ids, {"xa": sd.xa, "xb": sd.xb}, label=sd.label, split=sd.split,
                            meta={"class_names": sd.class_names}), path)  # fmt: skip
    return path


def test_ciba_example_runs(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "EPOCHS": "8", "DIMS": "2,8",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    res = subprocess.run(["bash", str(root / "examples" / "ciba.sh")], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    words = [line.split() for line in res.stdout.splitlines()]
    acc = {w[0]: float(w[-1]) for w in words if w[1:2] == ["accuracy"]}
    assert set(acc) == {"teacher", "baseline", "mse", "ciba"} and min(acc.values()) > 0.35  # chance: 0.25
    assert sum("<-" in line for line in res.stdout.splitlines()) == 1  # the chosen H
    spectra = json.loads(pq.read_schema(tmp_path / "spectrum.parquet").metadata[b"cmkdtool"])["spectra"]
    assert len(spectra) == 3
    for png in ("spectrum.png", "bottleneck-sweep.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
