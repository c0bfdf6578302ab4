"""Channel masks from a salience table (MFH modality-general / -specific / random teachers).

removed_channels picks the right channels; ChannelMask nullifies input channels on the raw input (zero or the
raw train mean) and hidden channels on the layer's output (zero or its train mean); the mask travels in the
checkpoint spec and buffers, so load_model, eval and distill apply it with no flag; a second mask is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.data.masks import MaskOptions, fit_mask_fill, mask_spec, removed_channels
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.checkpoints import load_model, read_checkpoint, read_metadata, save_checkpoint
from cmkdtool.io.salience import read_salience
from cmkdtool.io.tables import read_tables
from cmkdtool.nn.models import build_model, new_model
from cmkdtool.nn.specs import ModelOptions
from cmkdtool.pipelines.train import pretrain

runner = CliRunner()
TEACHER = ["--arch", "linear", "--epochs", "20", "--lr", "0.01", "-q"]
STUDENT = ["--arch", "linear", "--epochs", "8", "--lr", "0.01", "--select", "last", "-q"]
KD_ONLY = ["--ce-weight", "0", "--kd-weight", "1"]
D = 50  # channels of xa in synth mfh


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def fails(code: int, *args) -> str:
    """Run a command that must fail with ``code``; return its one-line error message."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmkdtool: error: "), result.stderr
    return lines[0]


def write_salience(path, rank, layer="input.xa", inp="xa", channels=None) -> None:
    """A salience table with the given ranks (rank 1 = most salient) of channels 0..len(rank)-1."""
    rank = np.asarray(rank, dtype=np.int32)
    ch = np.arange(len(rank), dtype=np.int32) if channels is None else np.asarray(channels, dtype=np.int32)
    sal = (1.0 - (rank - 1) / max(len(rank) - 1, 1)).astype(np.float32)
    table = pa.table(
        {
            "input": pa.array([inp] * len(rank), pa.string()),
            "layer": pa.array([layer] * len(rank), pa.string()),
            "channel": pa.array(ch, pa.int32()),
            "salience": pa.array(sal, pa.float32()),
            "rank": pa.array(rank, pa.int32()),
            "distance": pa.array(sal.astype(np.float64), pa.float64()),
        }
    )
    pq.write_table(table, path)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# a fixed ranking of the 50 xa channels: RANK[c] is the rank of channel c
RANK = np.random.default_rng(123).permutation(D) + 1
BY_SALIENCE = np.argsort(RANK)  # channels, most salient first (ranks are distinct)
GENERAL_HALF = sorted(int(c) for c in BY_SALIENCE[D // 2 :])  # the 25 least salient


def raw_columns(path, col="xa"):
    t = pq.read_table(path)
    x = np.asarray(t.column(col).to_pylist(), dtype=np.float32)
    return x, np.asarray(t.column("label").to_numpy()), np.asarray(t.column("split").to_pylist()), t


def linear_logits(tensors, x):
    """A linear-arch model's logits computed by hand (numpy, float64) from its checkpoint tensors."""
    mean, std = tensors["norm.xa.mean"].double().numpy(), tensors["norm.xa.std"].double().numpy()
    w, b = tensors["head.0.weight"].double().numpy(), tensors["head.0.bias"].double().numpy()
    return ((x.astype(np.float64) - mean) / std) @ w.T + b


def unmasked_copy(src, dst) -> None:
    """The same weights as checkpoint ``src`` with no channel mask (tensors and spec)."""
    tensors, spec, train = read_checkpoint(src)
    save_checkpoint(
        dst,
        {k: v for k, v in tensors.items() if not k.startswith("channel_mask.")},
        {k: v for k, v in spec.items() if k != "mask"},
        train,
    )


def test_salience_rows_selects_one_layer(tmp_path):
    path = tmp_path / "s.parquet"
    write_salience(path, RANK)
    sal = read_salience(str(path))
    assert sal.layers() == ["input.xa"] and sal.channel.tolist() == list(range(D))
    # regression: rows() used numpy imported only under TYPE_CHECKING (NameError on every --mask; fixed in 250ebfc)
    assert sal.rows("input.xa").tolist() == list(range(D)) and sal.rows("input.xb").tolist() == []


# ---- 1. the channel choice ---------------------------------------------------------------------------------------


def test_removed_channels_general_specific_ties_and_limits():
    ch = np.arange(6)
    rank = np.array([3, 1, 6, 2, 5, 4])  # most salient first: 1, 3, 0, 5, 4, 2
    assert removed_channels(ch, rank, "general", 0.5, 0) == [2, 4, 5]
    assert removed_channels(ch, rank, "specific", 0.5, 0) == [0, 1, 3]
    assert removed_channels(ch, rank, "general", 0.34, 0) == [2, 4]  # round(2.04) = 2
    assert removed_channels(ch, rank, "specific", 0.15, 0) == [1]  # round(0.9) = 1
    assert removed_channels(ch, rank, "general", 0.0, 0) == []
    assert removed_channels(ch, rank, "specific", 0.0, 0) == []
    assert removed_channels(ch, rank, "random", 0.0, 0) == []
    # ties broken by channel index: order 1, 2 (rank 1), then 0, 3 (rank 2)
    tied_ch, tied_rank = np.arange(4), np.array([2, 1, 1, 2])
    assert removed_channels(tied_ch, tied_rank, "general", 0.25, 0) == [3]
    assert removed_channels(tied_ch, tied_rank, "specific", 0.25, 0) == [1]
    assert removed_channels(tied_ch, tied_rank, "specific", 0.75, 0) == [0, 1, 2]
    # channels listed out of order in the table: the ranking goes with the channel, not the row
    assert removed_channels(np.array([3, 0, 2, 1]), np.array([1, 4, 2, 3]), "general", 0.5, 0) == [0, 1]
    assert removed_channels(np.array([3, 0, 2, 1]), np.array([1, 4, 2, 3]), "specific", 0.5, 0) == [2, 3]
    # the 50-channel ranking used below
    assert removed_channels(np.arange(D), RANK, "general", 0.5, 0) == GENERAL_HALF
    assert removed_channels(np.arange(D), RANK, "specific", 0.5, 0) == sorted(int(c) for c in BY_SALIENCE[:25])
    # a ratio that would nullify every channel is refused; the largest that leaves one channel is fine
    assert removed_channels(np.arange(4), np.arange(1, 5), "general", 0.8, 0) == [1, 2, 3]
    for ratio in (0.9, 0.99):
        with pytest.raises(CmkdUsageError, match="would nullify all 4 channels"):
            removed_channels(np.arange(4), np.arange(1, 5), "general", ratio, 0)


def test_removed_channels_random_is_seeded():
    ch, rank = np.arange(D), RANK
    a = removed_channels(ch, rank, "random", 0.3, 7)
    assert a == removed_channels(ch, rank, "random", 0.3, 7)
    assert len(a) == 15 and len(set(a)) == 15 and a == sorted(a) and set(a) <= set(range(D))
    assert a == sorted(int(c) for c in np.random.default_rng(7).choice(ch, size=15, replace=False))
    assert removed_channels(ch, np.arange(1, D + 1), "random", 0.3, 7) == a  # the ranking plays no part
    order = np.random.default_rng(3).permutation(D)
    assert removed_channels(ch[order], rank[order], "random", 0.3, 7) == a  # nor the table's row order
    others = [removed_channels(ch, rank, "random", 0.3, s) for s in (0, 1, 2, 8)]
    assert all(o != a for o in others) and len({tuple(o) for o in others}) == 4


def test_mask_spec_picks_the_layer_and_records_the_seed(tmp_path):
    spec = {"arch": "linear", "inputs": [{"name": "xa", "shape": [D]}, {"name": "xb", "shape": [D]}], "num_classes": 2}
    model = build_model(spec)
    two = tmp_path / "two.parquet"  # a --both table ranks xa and xb; input.xa alone is not enough to choose
    t = pa.concat_tables(
        [
            pa.table(
                {
                    "input": [n] * D,
                    "layer": [f"input.{n}"] * D,
                    "channel": pa.array(np.arange(D), pa.int32()),
                    "salience": pa.array(np.linspace(1, 0, D), pa.float32()),
                    "rank": pa.array(r, pa.int32()),
                    "distance": pa.array(np.zeros(D), pa.float64()),
                }
            )
            for n, r in (("xa", RANK), ("xb", np.arange(D, 0, -1)))
        ]
    )
    pq.write_table(t, two)
    with pytest.raises(CmkdUsageError, match="--mask-layer"):
        mask_spec(MaskOptions(mask=str(two)), model, 0)
    got = mask_spec(MaskOptions(mask=str(two), mask_layer="input.xb", keep="general", ratio=0.2), model, 5)
    assert got["removed"] == list(range(10)) and got["layer"] == "input.xb" and got["dim"] == D
    assert got["seed"] is None and got["keep"] == "general" and got["fill"] == "zero" and got["ratio"] == 0.2
    assert got["salience"] == {"path": str(two), "sha256": sha256(two)}
    rnd = mask_spec(MaskOptions(mask=str(two), mask_layer="input.xa", keep="random", ratio=0.2), model, 5)
    assert rnd["seed"] == 5 and rnd["removed"] == removed_channels(np.arange(D), RANK, "random", 0.2, 5)
    own = mask_spec(MaskOptions(mask=str(two), mask_layer="input.xa", keep="random", mask_seed=9), model, 5)
    assert own["seed"] == 9 and own["removed"] == removed_channels(np.arange(D), RANK, "random", 0.5, 9)


# ---- 2. input masks in the model ----------------------------------------------------------------------------------


def _input_model():
    torch.manual_seed(0)
    spec = {"arch": "mlp", "inputs": [{"name": "xa", "shape": [6]}], "hidden": [5], "num_classes": 3}
    model = build_model(spec).eval()
    model.norm["xa"].mean.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0]))
    model.norm["xa"].std.copy_(torch.tensor([2.0, 0.5, 1.0, 3.0, 1.5, 1.0]))
    return model


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_input_mask_acts_on_the_raw_input(fill):
    plain = _input_model()
    model = copy.deepcopy(plain)
    removed = [1, 4]
    model.set_mask({"layer": "input.xa", "dim": 6, "removed": removed, "fill": fill, "keep": "general", "ratio": 0.3})
    fit_mask_fill(model, None)  # an input mask needs no data: the raw train mean is the standardisation mean
    assert model.spec["mask"]["removed"] == removed and "mask" not in plain.spec
    assert model.state_dict()["channel_mask.keep"].tolist() == [True, False, True, True, False, True]
    mean = plain.norm["xa"].mean
    assert torch.equal(model.channel_mask.fill, mean if fill == "mean" else torch.zeros(6))

    x = torch.randn(32, 6) * 3 + 1
    x_null = x.clone()
    x_null[:, removed] = mean[removed] if fill == "mean" else 0.0
    torch.testing.assert_close(model({"xa": x}), plain({"xa": x_null}), rtol=0, atol=0)
    assert not torch.allclose(model({"xa": x}), plain({"xa": x}))
    # the removed channels reach the network as raw 0 (standardised -mean/std) or as the mean (standardised 0)
    _, feats = model.forward_layers({"xa": x}, ["input.xa"])
    want = -mean[removed] / plain.norm["xa"].std[removed] if fill == "zero" else torch.zeros(2)
    torch.testing.assert_close(feats["input.xa"][:, removed], want.expand(32, 2))

    xg = x.clone().requires_grad_(True)
    model({"xa": xg}).square().sum().backward()
    assert torch.equal(xg.grad[:, removed], torch.zeros(32, 2))
    assert (xg.grad[:, [0, 2, 3, 5]].abs().sum(0) > 0).all()

    model.set_mask(None)  # removing the mask restores the plain model
    assert model.channel_mask is None and "mask" not in model.spec
    assert not any(k.startswith("channel_mask.") for k in model.state_dict())
    torch.testing.assert_close(model({"xa": x}), plain({"xa": x}), rtol=0, atol=0)


def test_linear_model_logits_cannot_be_masked_under_another_name():
    spec = {"arch": "linear", "inputs": [{"name": "xa", "shape": [6]}], "hidden": [], "num_classes": 2,
            "task": "multiclass", "role": "teacher"}  # fmt: skip
    from cmkdtool.nn.models import build_model

    with pytest.raises(CmkdError, match="logits"):
        build_model(spec).set_mask({"layer": "head.0", "dim": 2, "removed": [0], "fill": "zero"})


def test_load_model_rejects_a_mask_with_out_of_range_channels(tmp_path):
    model = _input_model()
    state = dict(model.state_dict())
    state["channel_mask.keep"], state["channel_mask.fill"] = torch.ones(6, dtype=torch.bool), torch.zeros(6)
    mask = {"layer": "input.xa", "dim": 6, "removed": [1, 9], "fill": "zero", "keep": "general", "ratio": 0.3}
    save_checkpoint(tmp_path / "bad.safetensors", state, {**model.spec, "mask": mask}, {})
    with pytest.raises(CmkdError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


# ---- 3. hidden-layer masks with a mean fill -----------------------------------------------------------------------


def _hidden_out(model, x):
    """Output of encoders.xa.1 (ReLU after the first Linear), computed by hand, unmasked."""
    lin = model.encoders["xa"][0]
    return torch.relu(((x - model.norm["xa"].mean) / model.norm["xa"].std) @ lin.weight.T + lin.bias)


def test_hidden_mask_mean_fill_is_the_train_mean_of_the_unmasked_output(mfh_table):
    data = load_tensor_data(read_tables([str(mfh_table)]), ["xa"], require_train_classes=True)
    torch.manual_seed(0)
    model = new_model(data, ModelOptions(arch="mlp", hidden=[8]), "teacher").eval()
    x_train = data.inputs["xa"][data.index("train")]
    with torch.no_grad():
        h_train = _hidden_out(model, x_train)
    removed = [0, 3, 5]
    model.set_mask({"layer": "encoders.xa.1", "dim": 8, "removed": removed, "fill": "mean", "keep": "x", "ratio": 0})
    assert model.channel_mask.running  # a hidden mean fill follows the moving activations in training
    assert torch.equal(model.channel_mask.fill, torch.zeros(8))
    fit_mask_fill(model, data)
    torch.testing.assert_close(model.channel_mask.fill, h_train.mean(0), rtol=1e-5, atol=1e-6)
    assert model.channel_mask.fill[removed].abs().min() > 0  # a real mean, not the zero it started at

    x = {"xa": data.inputs["xa"][data.index("test")][:64]}
    with torch.no_grad():
        logits, feats = model.forward_layers(x, ["encoders.xa.1", "embedding"])
        h = _hidden_out(model, x["xa"])
        h_masked = h.clone()
        h_masked[:, removed] = model.channel_mask.fill[removed]
        torch.testing.assert_close(feats["encoders.xa.1"], h_masked)
        torch.testing.assert_close(feats["embedding"], h_masked)
        torch.testing.assert_close(logits, model.head(h_masked))
        torch.testing.assert_close(model(x), logits)
        assert not torch.allclose(feats["encoders.xa.1"][:, removed], h[:, removed])


def test_pretrain_with_hidden_mean_mask_stores_the_final_train_mean(mfh_table, tmp_path):
    data = load_tensor_data(read_tables([str(mfh_table)]), ["xa"], require_train_classes=True)
    sal = tmp_path / "hidden.parquet"
    write_salience(sal, [3, 1, 8, 2, 7, 4, 6, 5], layer="encoders.xa.1")  # least salient: 2, 4, 6, 7
    mask = MaskOptions(mask=str(sal), keep="general", ratio=0.5, fill="mean")
    net, result = pretrain(
        data, model=ModelOptions(arch="mlp", hidden=[8]), config=TrainConfig(epochs=3, lr=0.01), mask=mask, quiet=True
    )
    assert net.spec["mask"]["removed"] == [2, 4, 6, 7] and net.spec["mask"]["layer"] == "encoders.xa.1"
    with torch.no_grad():
        h_train = _hidden_out(net, data.inputs["xa"][data.index("train")])
    torch.testing.assert_close(net.channel_mask.fill, h_train.mean(0), rtol=1e-5, atol=1e-6)
    # the fill survives a checkpoint round trip, and load_model masks with it
    ckpt = tmp_path / "h.safetensors"
    save_checkpoint(ckpt, net.state_dict(), net.spec, {})
    back = load_model(ckpt)
    assert back.spec["mask"] == net.spec["mask"]
    torch.testing.assert_close(back.channel_mask.fill, net.channel_mask.fill, rtol=0, atol=0)
    x = {"xa": data.inputs["xa"][:100]}
    with torch.no_grad():
        _, feats = back.forward_layers(x, ["encoders.xa.1"])
        fill = net.channel_mask.fill[[2, 4, 6, 7]]
        torch.testing.assert_close(feats["encoders.xa.1"][:, [2, 4, 6, 7]], fill.expand(100, 4))
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)


# ---- 4, 5. a masked teacher end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked(mfh_table, tmp_path_factory):
    """A general-0.5 masked linear teacher on xa, an unmasked copy of its weights, and KD students of both."""
    d = tmp_path_factory.mktemp("masks")
    write_salience(d / "sal.parquet", RANK)
    ckpt = d / "masked.safetensors"
    run("pretrain", mfh_table, "-i", "xa", *TEACHER, "--mask", d / "sal.parquet", "--keep", "general",
        "--ratio", "0.5", "-o", ckpt)  # fmt: skip
    unmasked_copy(ckpt, d / "plain.safetensors")
    for teacher, out in (("masked", "s_masked"), ("plain", "s_plain")):
        run("distill", "kd", mfh_table, "-t", d / f"{teacher}.safetensors", "-i", "xb", *STUDENT, *KD_ONLY,
            "-o", d / f"{out}.safetensors")  # fmt: skip
    return d


def test_pretrain_mask_is_stored_and_load_model_applies_it(mfh_table, masked):
    ckpt = masked / "masked.safetensors"
    spec, train = read_metadata(ckpt)
    assert spec["mask"] == {
        "layer": "input.xa",
        "dim": D,
        "removed": GENERAL_HALF,
        "fill": "zero",
        "keep": "general",
        "ratio": 0.5,
        "seed": None,
        "salience": {"path": str(masked / "sal.parquet"), "sha256": sha256(masked / "sal.parquet")},
    }
    tensors = read_checkpoint(ckpt)[0]
    keep = tensors["channel_mask.keep"].numpy()
    assert keep.dtype == np.bool_ and sorted(np.flatnonzero(~keep).tolist()) == GENERAL_HALF
    assert torch.equal(tensors["channel_mask.fill"], torch.zeros(D))

    x, _, _, _ = raw_columns(mfh_table)
    x_null = x.copy()
    x_null[:, GENERAL_HALF] = 0.0
    model = load_model(ckpt)
    assert model.spec["mask"] == spec["mask"] and model.channel_mask is not None
    with torch.no_grad():
        got = model({"xa": torch.from_numpy(x)}).double().numpy()
        plain = load_model(masked / "plain.safetensors")
        assert plain.channel_mask is None
        equiv = plain({"xa": torch.from_numpy(x_null)}).double().numpy()
    np.testing.assert_allclose(got, linear_logits(tensors, x_null), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, equiv, rtol=1e-5, atol=1e-5)
    assert np.abs(got - linear_logits(tensors, x)).max() > 0.1  # the mask changes the logits


def test_eval_applies_the_stored_mask(mfh_table, masked, tmp_path):
    preds = tmp_path / "p.parquet"
    res = json.loads(
        run("eval", masked / "masked.safetensors", mfh_table, "-f", "json", "--no-retrieval",
            "--predictions", preds).stdout
    )  # fmt: skip
    assert res["mask"] == "general 0.5 of input.xa"
    x, label, split, table = raw_columns(mfh_table)
    test = split == "test"
    x_null = x[test].copy()
    x_null[:, GENERAL_HALF] = 0.0
    with torch.no_grad():
        logits = load_model(masked / "plain.safetensors")({"xa": torch.from_numpy(x_null)}).numpy()
    assert res["n"] == test.sum() == 1000
    assert res["accuracy"] == pytest.approx(float((logits.argmax(1) == label[test]).mean()), abs=1e-12)
    p = pq.read_table(preds)
    ids = np.asarray(table.column("id").to_pylist())[test]
    assert p.column("id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(np.asarray(p.column("scores").to_pylist()), logits, rtol=1e-5, atol=1e-5)
    # without the mask the same weights predict differently
    plain = json.loads(run("eval", masked / "plain.safetensors", mfh_table, "-f", "json", "--no-retrieval").stdout)
    assert "mask" not in plain


def test_distill_uses_the_teachers_stored_mask(masked):
    spec = read_metadata(masked / "masked.safetensors")[0]
    _, train = read_metadata(masked / "s_masked.safetensors")
    assert train["teacher"]["mask"] == spec["mask"] and train["teacher"]["path"] == str(masked / "masked.safetensors")
    assert read_metadata(masked / "s_plain.safetensors")[1]["teacher"]["mask"] is None
    s_masked = read_checkpoint(masked / "s_masked.safetensors")[0]
    s_plain = read_checkpoint(masked / "s_plain.safetensors")[0]
    assert all("mask" not in k for k in s_masked)  # the student carries no mask
    assert s_masked.keys() == s_plain.keys()
    diff = (s_masked["head.0.weight"] - s_plain["head.0.weight"]).abs().max().item()
    assert diff > 1e-3, "a masked and an unmasked teacher taught the same student"


def test_distill_mask_flag_masks_an_unmasked_teacher(mfh_table, masked, tmp_path):
    out = tmp_path / "s.safetensors"
    run("distill", "kd", mfh_table, "-t", masked / "plain.safetensors", "-i", "xb", *STUDENT, *KD_ONLY,
        "--mask", masked / "sal.parquet", "--keep", "general", "--ratio", "0.5", "-o", out)  # fmt: skip
    spec = read_metadata(masked / "masked.safetensors")[0]
    assert read_metadata(out)[1]["teacher"]["mask"] == spec["mask"]
    assert "mask" not in read_metadata(masked / "plain.safetensors")[0]  # the teacher file is left alone
    # the same weights and the same mask, given on the command line or stored: the same student
    a, b = read_checkpoint(out)[0], read_checkpoint(masked / "s_masked.safetensors")[0]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_eval_mask_flag_is_for_one_run_and_refused_on_a_masked_checkpoint(mfh_table, masked):
    sal = masked / "sal.parquet"
    stored = json.loads(run("eval", masked / "masked.safetensors", mfh_table, "-f", "json", "--no-retrieval").stdout)
    flagged = json.loads(
        run("eval", masked / "plain.safetensors", mfh_table, "-f", "json", "--no-retrieval", "--mask", sal,
            "--keep", "general", "--ratio", "0.5", "-q").stdout
    )  # fmt: skip
    assert flagged["mask"] == stored["mask"] and flagged["accuracy"] == stored["accuracy"]
    assert "mask" not in read_metadata(masked / "plain.safetensors")[0]
    msg = fails(2, "eval", masked / "masked.safetensors", mfh_table, "--mask", sal, "--keep", "specific")
    assert "already carries a mask (general, ratio 0.5 on input.xa)" in msg
    msg = fails(2, "distill", "kd", mfh_table, "-t", masked / "masked.safetensors", "-i", "xb", *STUDENT,
                "--mask", sal, "-o", masked / "never.safetensors")  # fmt: skip
    assert "already carries a mask" in msg and not (masked / "never.safetensors").exists()


# ---- 6. errors ----------------------------------------------------------------------------------------------------


def _pretrain_args(mfh_table, out):
    return ["pretrain", mfh_table, "-i", "xa", *TEACHER, "-o", out]


def test_mask_option_and_table_errors(mfh_table, tmp_path):
    out = tmp_path / "t.safetensors"
    base = _pretrain_args(mfh_table, out)
    good = tmp_path / "sal.parquet"
    write_salience(good, RANK)
    assert "--ratio must be in [0, 1); got 1" in fails(2, *base, "--mask", good, "--ratio", "1.0")
    assert "--ratio must be in [0, 1); got -0.1" in fails(2, *base, "--mask", good, "--ratio", "-0.1")
    msg = fails(2, *base, "--mask", good, "--keep", "bogus")
    assert "'--keep'" in msg and "'bogus' is not one of 'general', 'specific', 'random'" in msg
    msg = fails(2, *base, "--mask", good, "--fill", "median")
    assert "'--fill'" in msg and "'median' is not one of 'zero', 'mean'" in msg
    msg = fails(1, *base, "--mask", mfh_table)  # a feature table, not a salience table
    assert f"{mfh_table}: not a salience table (no column 'channel')" in msg and "rank-salience" in msg
    assert f"{tmp_path / 'missing.parquet'}: no such file" in fails(1, *base, "--mask", tmp_path / "missing.parquet")
    nan = tmp_path / "nan.parquet"
    pq.write_table(
        pa.table({"channel": pa.array(np.arange(D), pa.int32()), "salience": [float("nan")] * D, "rank": RANK}), nan
    )
    assert "the salience column holds NaN or inf" in fails(1, *base, "--mask", nan)
    # distill checks the same options (before it reads the teacher)
    msg = fails(2, "distill", "kd", mfh_table, "-t", tmp_path / "none.safetensors", "-i", "xb", "-o", out,
                "--mask", good, "--keep", "bogus")  # fmt: skip
    assert "'--keep'" in msg and "'bogus' is not one of 'general', 'specific', 'random'" in msg
    assert not out.exists()


def test_mask_errors_that_need_the_model(mfh_table, tmp_path):
    out = tmp_path / "t.safetensors"
    base = _pretrain_args(mfh_table, out)
    short = tmp_path / "short.parquet"
    write_salience(short, np.arange(1, 11))  # 10 channels for a 50-channel input
    msg = fails(1, *base, "--mask", short)
    assert "ranks 10 channels but layer 'input.xa' of the model has 50" in msg
    good = tmp_path / "sal.parquet"
    write_salience(good, RANK)
    assert "--ratio 0.995 would nullify all 50 channels" in fails(2, *base, "--mask", good, "--ratio", "0.995")
    assert "cannot mask layer 'logits'" in fails(2, *base, "--mask", good, "--mask-layer", "logits")
    assert not out.exists()


# ---- 7. the real rank-salience output -----------------------------------------------------------------------------


def test_rank_salience_output_masks_pretrain(mfh_table, tmp_path):
    sal, ckpt = tmp_path / "s.parquet", tmp_path / "t.safetensors"
    run("rank-salience", mfh_table, "-a", "xa", "-b", "xb", "-o", sal, "--arch", "linear", "--epochs", "50",
        "--batch-size", "full", "--optimizer", "sgd", "--lr", "0.01", "--repeats", "3", "-q")  # fmt: skip
    t = pq.read_table(sal)
    assert t.num_rows == D and set(t.column("layer").to_pylist()) == {"input.xa"}
    channel, rank = t.column("channel").to_numpy(), t.column("rank").to_numpy()
    assert sorted(channel.tolist()) == list(range(D)) and sorted(rank.tolist()) == list(range(1, D + 1))
    most = sorted(int(c) for c in channel[np.argsort(rank)][:15])
    run("pretrain", mfh_table, "-i", "xa", *TEACHER, "--mask", sal, "--keep", "specific", "--ratio", "0.3", "-o", ckpt)
    mask = read_metadata(ckpt)[0]["mask"]
    assert mask["removed"] == most and mask["keep"] == "specific" and mask["layer"] == "input.xa"
    assert mask["salience"]["sha256"] == sha256(sal)
    x, _, _, _ = raw_columns(mfh_table)
    x_null = x.copy()
    x_null[:, most] = 0.0
    tensors = read_checkpoint(ckpt)[0]
    with torch.no_grad():
        got = load_model(ckpt)({"xa": torch.from_numpy(x)}).double().numpy()
    np.testing.assert_allclose(got, linear_logits(tensors, x_null), rtol=1e-4, atol=1e-4)
