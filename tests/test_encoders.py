"""Encoders for raw-shaped columns: cnn2d, cnn1d, resnet18 and gru (shapes, layers, masks, checkpoints, CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.io.checkpoints import load_model, read_metadata, save_checkpoint
from cmkdtool.io.tables import build_table, write_table
from cmkdtool.nn.models import build_model
from cmkdtool.nn.specs import ModelOptions

runner = CliRunner()

CASES = [
    ("cnn2d", [1, 8, 8]),
    ("cnn2d", [3, 16, 16]),
    ("cnn2d", [8, 8]),  # read as [1, 8, 8]
    ("cnn1d", [2, 20]),
    ("cnn1d", [20]),  # read as [1, 20]
    ("resnet18", [1, 8, 8]),
    ("resnet18", [3, 32, 32]),
    ("gru", [10, 4]),
    ("mlp", [1, 8, 8]),
    ("linear", [6]),
]
WIDTH = {"cnn2d": 16, "cnn1d": 16, "resnet18": 512, "gru": 16}  # trunk features with channels 8,16


# Tiny convolutions gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's waiting threads made
# one training step of these models 100x slower (measured 350 ms against 2 ms).
pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def spec(arch: str, shape, **kw) -> dict:
    out = {
        "role": "student",
        "arch": arch,
        "inputs": [{"name": "x", "shape": list(shape)}],
        "hidden": [] if arch == "linear" else [12],
        "num_classes": 3,
        "task": "multiclass",
        **kw,
    }
    if arch in ("cnn2d", "cnn1d", "gru"):
        out.setdefault("channels", [8, 16])
    return out


@pytest.mark.parametrize(("arch", "shape"), CASES)
def test_forward_shapes_and_layers_agree(arch, shape):
    torch.manual_seed(0)
    model = build_model(spec(arch, shape)).eval()
    x = torch.randn(3, *shape)
    logits, outs = model.forward_layers({"x": x}, model.layer_names())
    assert logits.shape == (3, 3)
    assert torch.equal(logits, model({"x": x.flatten(1)}))  # flat rows, as the data arrive, or shaped samples
    for name in model.layer_names():
        assert outs[name].shape == (3, model.layer_width(name)), name
    if arch in WIDTH:  # the trunk's pooled output feeds the hidden layer
        assert model.encoders["x"][0].__class__.__name__ != "Linear"
        assert model.layer_width(f"encoders.x.{len(model.encoders['x']) - 3}") == WIDTH[arch]
    assert model.embed_dim == (12 if arch != "linear" else 6)
    # a layer's flattened output fed to the rest of the encoder and the head gives the logits (salience does this)
    enc = list(model.encoders["x"])
    some = range(len(enc)) if arch != "resnet18" else (0, 4, 8)  # resnet18 is slow on a CPU: a few layers
    with torch.no_grad():
        for i in some:
            h = outs[f"encoders.x.{i}"]
            for m in enc[i + 1 :]:
                h = m(h)
            assert torch.allclose(model.head(h), logits, atol=1e-5), i


def test_trunk_structure():
    cnn = build_model(spec("cnn2d", [1, 8, 8], batch_norm=True, channels=[4, 4, 4, 4]))
    kinds = [type(m).__name__ for m in cnn.encoders["x"]]
    # 8x8 -> 4x4 -> 2x2 -> 1x1: the fourth block has no pooling left to do
    assert kinds == [*["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] * 3, "Conv2d", "BatchNorm2d", "ReLU",
                     "GlobalAvgPool", "Linear", "BatchNorm1d", "ReLU"]  # fmt: skip
    assert cnn.encoders["x"][0].bias is None  # no conv bias in front of BatchNorm
    strip = build_model(spec("cnn2d", [2, 1, 40], hidden=[]))  # a 1 x 40 map is pooled along its width only
    assert strip.layer_width("encoders.x.2") == 8 * 20 and strip.embed_dim == 16
    res = build_model(spec("resnet18", [5, 8, 8], hidden=[]))
    assert res.encoders["x"][0].in_channels == 5 and res.embed_dim == 512
    gru = build_model(spec("gru", [10, 4], channels=[8, 6], hidden=[]))
    assert [m.hidden_size for m in gru.encoders["x"]] == [8, 6] and gru.embed_dim == 6
    assert gru.layer_width("encoders.x.0") == 10 * 8  # the first GRU passes its whole sequence on


def test_gru_gives_the_final_hidden_state():
    torch.manual_seed(0)
    model = build_model(spec("gru", [10, 4], channels=[5], hidden=[])).eval()
    x = torch.randn(2, 10, 4)
    gru = torch.nn.GRU(4, 5, batch_first=True)
    gru.load_state_dict(model.encoders["x"][0].state_dict())
    _, h = gru(model.normed_input("x", x).view(2, 10, 4))
    _, outs = model.forward_layers({"x": x}, ["embedding"])
    assert torch.allclose(outs["embedding"], h[0], atol=1e-6)


@pytest.mark.parametrize(
    ("arch", "shape", "need"),
    [
        ("cnn2d", [40], "cnn2d needs [C, H, W] samples"),
        ("resnet18", [2, 3, 4, 5], "resnet18 needs [C, H, W]"),
        ("cnn1d", [1, 8, 8], "use --arch cnn2d"),
        ("gru", [1, 8, 8], "gru needs [T, D]"),
    ],
)
def test_arch_that_does_not_fit_the_column_shape(arch, shape, need):
    with pytest.raises(CmkdUsageError) as e:
        build_model(spec(arch, shape))
    msg = str(e.value)
    assert "\n" not in msg and f"column 'x' has shape {shape}" in msg and need in msg and "--arch" in msg


def test_channels_are_validated_and_written_only_where_used():
    with pytest.raises(CmkdUsageError, match="--channels 32,64"):
        build_model(spec("cnn2d", [1, 8, 8], channels=[]))
    with pytest.raises(CmkdUsageError, match="positive"):
        build_model(spec("gru", [10, 4], channels=[8, 0]))

    class Data:
        inputs, shapes = {"x": None}, {"x": (1, 8, 8)}
        num_classes, task, class_names = 3, "multiclass", ["a", "b", "c"]

    o = ModelOptions()
    assert o.channels == [32, 64] and o.hidden == [256]
    assert "channels" not in o.spec(Data, "teacher") and o.spec(Data, "teacher")["hidden"] == [256]
    assert "channels" not in ModelOptions(arch="resnet18").spec(Data, "teacher")
    assert ModelOptions(arch="linear").spec(Data, "teacher")["hidden"] == []
    s = ModelOptions(arch="cnn2d", channels=[4], hidden=[]).spec(Data, "teacher")
    assert s["channels"] == [4] and s["hidden"] == []


def test_mlp_spec_without_new_keys_builds_as_before():
    model = build_model(spec("mlp", [5], hidden=[7], batch_norm=True))
    assert list(model.state_dict()) == [
        "norm.x.mean", "norm.x.std", "encoders.x.0.weight", "encoders.x.0.bias", "encoders.x.1.weight",
        "encoders.x.1.bias", "encoders.x.1.running_mean", "encoders.x.1.running_var",
        "encoders.x.1.num_batches_tracked", "head.0.weight", "head.0.bias",
    ]  # fmt: skip
    assert not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "shape", "kw"),
    [
        ("cnn2d", [3, 8, 8], {"batch_norm": True}),
        ("cnn1d", [2, 20], {"batch_norm": True, "activation": "gelu"}),
        ("resnet18", [1, 8, 8], {}),
        ("gru", [10, 4], {"channels": [6, 5]}),
    ],
)
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, arch, shape, kw):
    torch.manual_seed(0)
    model = build_model(spec(arch, shape, **kw))
    model.norm["x"].mean.normal_()
    model.norm["x"].std.uniform_(0.5, 2)
    x = torch.randn(8, *shape)
    model.train()
    model({"x": x})  # move the BatchNorm running statistics
    model.eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model.state_dict(), model.spec, {"command": "test"})
    loaded = load_model(path)
    assert read_metadata(path)[0]["arch"] == arch
    with torch.no_grad():
        assert torch.equal(loaded({"x": x}), model({"x": x}))


MASKED = [("cnn2d", [1, 8, 8], "encoders.x.0"), ("gru", [10, 4], "encoders.x.0"), ("cnn1d", [2, 20], "embedding")]


@pytest.mark.parametrize(("arch", "shape", "layer"), MASKED)
def test_channel_masks_on_conv_and_sequence_layers(arch, shape, layer):
    torch.manual_seed(0)
    model = build_model(spec(arch, shape)).eval()
    width = model.layer_width(layer)
    assert layer in model.maskable_layers()
    removed = [0, 5, width - 1]
    model.set_mask({"layer": layer, "dim": width, "removed": removed, "fill": "zero"})
    x = torch.randn(4, *shape)
    _, outs = model.forward_layers({"x": x}, [layer])
    assert torch.all(outs[layer][:, removed] == 0) and torch.all(outs[layer][:, 1] != 0)
    with pytest.raises(CmkdError, match=f"has {width}"):
        model.set_mask({"layer": layer, "dim": width + 1, "removed": [0], "fill": "zero"})


# ---- end to end on the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """4 classes of 8x8 images: a bright horizontal bar in rows 2c or 2c+1 on noise; a vector column for a
    teacher (its class mean plus noise); 480/80/160 train/val/test rows."""
    rng = np.random.default_rng(0)
    n = 720
    label = rng.integers(0, 4, n)
    img = rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)
    img[np.arange(n), 0, 2 * label + rng.integers(0, 2, n), :] += 2.0
    vec = (np.eye(4)[label] * 2 + rng.normal(0, 1, (n, 4))).astype(np.float32)
    split = np.array(["train"] * 480 + ["val"] * 80 + ["test"] * 160)
    path = tmp_path_factory.mktemp("img") / "img.parquet"
    write_table(build_table([f"r{i}" for i in range(n)], {"img": img, "vec": vec}, label=label, split=split), path)
    return path


CNN = ["--arch", "cnn2d", "--channels", "8,16", "--hidden", "", "--epochs", "6", "--lr", "0.01", "-q"]


def test_pretrain_cnn2d_learns_a_spatial_pattern(images, tmp_path):
    ckpt = tmp_path / "cnn.safetensors"
    run("pretrain", images, "-i", "img", *CNN, "-o", ckpt)
    spec_, _ = read_metadata(ckpt)
    assert spec_["arch"] == "cnn2d" and spec_["channels"] == [8, 16] and spec_["inputs"][0]["shape"] == [1, 8, 8]
    acc = json.loads(run("eval", ckpt, images, "--format", "json", "--no-retrieval").stdout)["accuracy"]
    assert acc > 0.6, acc  # chance is 0.25 (sd 0.034 on 160 rows)


def test_distill_kd_into_a_cnn2d_student(images, tmp_path):
    teacher, kd, nokd = (tmp_path / f"{n}.safetensors" for n in ("t", "kd", "nokd"))
    run("pretrain", images, "-i", "vec", "--hidden", "16", "--epochs", "5", "--lr", "0.01", "-q", "-o", teacher)
    common = ["distill", "kd", images, "-t", teacher, "-i", "img", *CNN, "--epochs", "3"]
    run(*common, "-o", kd)
    run(*common, "--kd-weight", "0", "--ce-weight", "1", "-o", nokd)
    spec_, train = read_metadata(kd)
    assert spec_["role"] == "student" and spec_["arch"] == "cnn2d" and train["method"] == "kd"
    x = {"img": torch.as_tensor(np.random.default_rng(1).normal(0, 1, (16, 64)), dtype=torch.float32)}
    with torch.no_grad():
        a, b = load_model(kd)(x), load_model(nokd)(x)
    assert not torch.allclose(a, b, atol=1e-3)


def test_cli_reports_a_shape_mismatch_in_one_line(images, tmp_path):
    result = runner.invoke(app, ["pretrain", str(images), "-i", "vec", *CNN, "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2
    assert "column 'vec' has shape [4]; cnn2d needs [C, H, W] samples" in result.output


def test_pretrain_gru_learns_a_sequence_task(tmp_path):
    """2 classes: a pulse on channel 0 in the first or the second half of a 10-step sequence (with noise)."""
    rng = np.random.default_rng(0)
    n = 600
    label = rng.integers(0, 2, n)
    seq = rng.normal(0, 0.5, (n, 10, 2)).astype(np.float32)
    seq[np.arange(n), rng.integers(0, 5, n) + 5 * label, 0] += 3.0
    split = np.array(["train"] * 400 + ["val"] * 50 + ["test"] * 150)
    data = tmp_path / "seq.parquet"
    write_table(build_table([f"s{i}" for i in range(n)], {"seq": seq}, label=label, split=split), data)
    ckpt = tmp_path / "gru.safetensors"
    run("pretrain", data, "-i", "seq", "--arch", "gru", "--channels", "16", "--hidden", "", "--epochs", "8",
        "--lr", "0.01", "-q", "-o", ckpt)  # fmt: skip
    assert read_metadata(ckpt)[0]["channels"] == [16]
    acc = json.loads(run("eval", ckpt, data, "--format", "json", "--no-retrieval").stdout)["accuracy"]
    assert acc > 0.75, acc  # chance is 0.5 (sd 0.04 on 150 rows)


def test_a_lone_last_row_joins_the_previous_batch(tmp_path):
    """9 train rows in batches of 4: without the merge the last batch has one row and BatchNorm fails."""
    rng = np.random.default_rng(0)
    n = 13
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    split = ["train"] * 9 + ["val"] * 4
    path = tmp_path / "t.parquet"
    write_table(build_table([f"r{i}" for i in range(n)], {"img": x}, label=np.arange(n) % 2, split=split), path)
    run("pretrain", path, "-i", "img", "--arch", "resnet18", "--hidden", "", "--batch-size", "4", "--epochs", "1",
        "-o", tmp_path / "m.safetensors", "-q")  # fmt: skip
    from cmkdtool.io.history import read_history

    assert len(read_history(str(tmp_path / "m.safetensors"))) == 1
