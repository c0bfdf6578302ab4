"""rank-salience (MFH Algorithm 1): the distance, the fast permutation path against a plain loop, normalisation,
joint training, and the command end to end (it recovers the truly shared channels of synth mfh)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cmkdtool.analysis import salience as S
from cmkdtool.cli.app import app
from cmkdtool.losses.alignment import logit_distance
from cmkdtool.nn.models import build_model

runner = CliRunner()
ALIGN = ["--arch", "linear", "--optimizer", "sgd", "--lr", "0.01", "--batch-size", "full", "--select", "last"]


def run(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


# ---- the distance (Eq. 28's Dist) ----------------------------------------------------------------------------


def test_logit_distance_hand_values_and_gradient():
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    mse = logit_distance(a, b, "mse")  # (1 + 4 + 1 + 4) / 4
    assert mse.item() == pytest.approx(2.5)
    assert logit_distance(a, b, "l1").item() == pytest.approx((1 + 2 + 1 + 2) / 4)
    mse.backward()
    assert torch.allclose(a.grad, 2 * (a.detach() - b) / 4)  # d/da mean((a-b)^2)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: logit_distance(t, y, "mse"), (x,))
    assert torch.allclose(logit_distance(x, y), torch.nn.functional.mse_loss(x, y))


def test_logit_distance_errors():
    with pytest.raises(ValueError, match="shape"):
        logit_distance(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown distance"):
        logit_distance(torch.zeros(2, 3), torch.zeros(2, 3), "huber")
    with pytest.raises(ValueError, match="empty"):
        logit_distance(torch.zeros(0, 3), torch.zeros(0, 3))


# ---- the fast path equals the plain loop ---------------------------------------------------------------------


class _Data:
    """What rank_network reads of a TensorData."""

    device = torch.device("cpu")

    def __init__(self, **cols):
        self.inputs = cols


def _net(col: str, dim: int, arch: str, hidden: list[int], **extra):
    spec = {"arch": arch, "inputs": [{"name": col, "shape": [dim]}], "hidden": hidden, "num_classes": 3,
            "task": "multiclass", "role": "teacher", **extra}  # fmt: skip
    net = build_model(spec)
    with torch.no_grad():  # non-trivial input statistics, so standardisation is exercised
        net.norm[col].mean.uniform_(-1, 1)
        net.norm[col].std.uniform_(0.5, 2)
    return net.eval()


def _plain(net_p, net_q, x_p, x_q, col_p, col_q, repeats, seed, kind="mse"):
    """Algorithm 1 steps 2-8 as written: one full forward per channel per repeat."""
    n, d = x_p.shape
    g = torch.Generator().manual_seed(seed)
    out = np.zeros((repeats, d))
    with torch.no_grad():
        target = net_q({col_q: x_q})
        for m in range(repeats):
            for i in range(d):
                perm = torch.randperm(n, generator=g)
                xp = x_p.clone()
                xp[:, i] = x_p[perm, i]
                out[m, i] = logit_distance(net_p({col_p: xp}), target, kind).item()
    return out.mean(0)


@pytest.mark.parametrize(
    "arch,hidden,extra,kind",
    [
        ("linear", [], {}, "mse"),
        ("mlp", [16, 8], {}, "mse"),
        ("mlp", [16], {"activation": "gelu", "batch_norm": True}, "l1"),
        ("mlp", [12], {"head_hidden": [6], "activation": "leaky_relu"}, "mse"),
    ],
)
def test_fast_salience_equals_plain_loop(arch, hidden, extra, kind):
    torch.manual_seed(0)
    n = 150
    xa, xb = torch.randn(n, 10) * 2 + 1, torch.randn(n, 7)
    na, nb = _net("xa", 10, arch, hidden, **extra), _net("xb", 7, "mlp", [5])
    if extra.get("batch_norm"):
        with torch.no_grad():
            na.encoders["xa"][1].running_mean.uniform_(-1, 1)
    fast = S.rank_network(
        na, nb, _Data(xa=xa, xb=xb), torch.arange(n), repeats=3, seed=7, distance=kind, block_elements=200
    )  # fmt: skip  (small blocks: many blocks and row chunks)
    ref = _plain(na, nb, xa, xb, "xa", "xb", 3, 7, kind)
    np.testing.assert_allclose(fast.raw, ref, rtol=1e-5, atol=1e-7)
    assert fast.layer == "input.xa" and fast.input == "xa"


def test_layer_salience_equals_plain_loop_on_the_layer_and_generic_path():
    """Channels of a hidden layer: permuting the ReLU output (rank-one path into the next Linear) and the Linear
    output before it (generic path through the ReLU) give the same values, equal to a plain loop on the layer."""
    torch.manual_seed(1)
    n = 120
    xa, xb = torch.randn(n, 9), torch.randn(n, 4)
    na, nb = _net("xa", 9, "mlp", [8, 6]), _net("xb", 4, "linear", [])
    data, rows = _Data(xa=xa, xb=xb), torch.arange(n)
    relu = S.rank_network(na, nb, data, rows, layer="encoders.xa.1", repeats=2, seed=3, block_elements=100)
    lin = S.rank_network(na, nb, data, rows, layer="encoders.xa.0", repeats=2, seed=3, block_elements=100)
    np.testing.assert_allclose(relu.raw, lin.raw, rtol=1e-5)
    # plain loop over the layer's features
    with torch.no_grad():
        h = torch.relu(na.encoders["xa"][0](na.norm["xa"](xa)))
        target = nb({"xb": xb})
        rest = torch.nn.Sequential(*list(na.encoders["xa"])[2:], *na.head)
        g = torch.Generator().manual_seed(3)
        ref = np.zeros((2, 8))
        for m in range(2):
            for i in range(8):
                perm = torch.randperm(n, generator=g)
                hp = h.clone()
                hp[:, i] = h[perm, i]
                ref[m, i] = logit_distance(rest(hp), target).item()
    np.testing.assert_allclose(relu.raw, ref.mean(0), rtol=1e-5)


def test_masked_channel_has_zero_distance_change():
    """A channel the model masks carries nothing: permuting it leaves the outputs unchanged."""
    torch.manual_seed(2)
    n = 80
    xa, xb = torch.randn(n, 6), torch.randn(n, 3)
    na, nb = _net("xa", 6, "mlp", [5]), _net("xb", 3, "linear", [])
    na.set_mask({"layer": "input.xa", "dim": 6, "removed": [1, 4], "fill": "zero", "keep": "general", "ratio": 0.33})
    res = S.rank_network(na, nb, _Data(xa=xa, xb=xb), torch.arange(n), repeats=2, seed=0, how="none")
    with torch.no_grad():
        base = logit_distance(na({"xa": xa}), nb({"xb": xb})).item()
    assert res.raw[1] == pytest.approx(base, rel=1e-6) and res.raw[4] == pytest.approx(base, rel=1e-6)
    assert all(abs(res.raw[i] - base) > 1e-4 for i in (0, 2, 3, 5))  # kept channels do change the outputs
    # a mask on the first Linear's output: the rank-one path must keep those outputs at their fill
    na.set_mask({"layer": "encoders.xa.0", "dim": 5, "removed": [0, 2], "fill": "zero", "keep": "general",
                 "ratio": 0.4})  # fmt: skip
    fast = S.rank_network(na, nb, _Data(xa=xa, xb=xb), torch.arange(n), repeats=2, seed=4)
    np.testing.assert_allclose(fast.raw, _plain(na, nb, xa, xb, "xa", "xb", 2, 4), rtol=1e-5)


def test_normalize_and_ranks():
    raw = np.array([2.0, 4.0, 3.0, 4.0])
    np.testing.assert_allclose(S.normalize(raw, "minmax"), [0.0, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(S.normalize(raw, "max"), [0.5, 1.0, 0.75, 1.0])
    np.testing.assert_allclose(S.normalize(raw, "none"), raw)
    np.testing.assert_allclose(S.normalize(np.ones(3), "minmax"), np.zeros(3))
    assert S.ranks(raw).tolist() == [4, 1, 3, 2]  # the tie (channels 1 and 3) goes to the smaller index


def test_output_layer_and_multi_input_are_refused():
    from cmkdtool.errors import CmkdUsageError

    na, nb = _net("xa", 4, "linear", []), _net("xb", 4, "linear", [])
    data = _Data(xa=torch.randn(10, 4), xb=torch.randn(10, 4))
    with pytest.raises(CmkdUsageError, match="output"):
        S.rank_network(na, nb, data, torch.arange(10), layer="head.0", repeats=1)
    with pytest.raises(CmkdUsageError, match="unknown layer"):
        S.rank_network(na, nb, data, torch.arange(10), layer="encoders.xb.0", repeats=1)


# ---- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ones_table(tmp_path_factory):
    """synth mfh at the Table 2 setting (gamma 0.5) with the authors' code's all-ones hyperplane."""
    path = tmp_path_factory.mktemp("sal") / "d.parquet"
    run("synth", "mfh", "--gamma", "0.5", "--hyperplane", "ones", "--seed", "1", "-o", path, "-q")
    return path


def test_rank_salience_recovers_the_shared_channels(ones_table, tmp_path):
    """Done-when of the issue: >= 90% of the truly shared channels among the top ranks (fast case, M = 20)."""
    out = tmp_path / "s.parquet"
    res = run("rank-salience", ones_table, "-a", "xa", "-b", "xb", "-o", out, *ALIGN, "--epochs", "300",
              "--repeats", "20", "-q")  # fmt: skip
    t = pq.read_table(out)
    assert t.column_names == ["input", "layer", "channel", "salience", "rank", "distance"]
    meta = json.loads(t.schema.metadata[b"cmkdtool"])
    truth = json.loads(pq.read_table(ones_table).schema.metadata[b"cmkdtool"])["synth"]["general_a"]
    rank = dict(zip(t["channel"].to_pylist(), t["rank"].to_pylist(), strict=True))
    found = sum(rank[c] <= len(truth) for c in truth) / len(truth)
    assert found >= 0.9, (found, truth)
    assert meta["recovered_shared"]["xa"] == pytest.approx(found)
    assert meta["repeats"] == 20 and meta["distance"] == "mse" and meta["inputs"] == {"teacher": "xa", "student": "xb"}
    sal = np.asarray(t["salience"].to_pylist())
    assert sal.min() == 0.0 and sal.max() == 1.0  # minmax
    assert sorted(t["rank"].to_pylist()) == list(range(1, 51))
    assert "recovered" in res.stdout and "most salient" in res.stdout


def test_rank_salience_with_given_models_and_both(ones_table, tmp_path):
    ta, tb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run("pretrain", ones_table, "-i", "xa", "--arch", "linear", "--epochs", "30", "-o", ta, "-q")
    run("pretrain", ones_table, "-i", "xb", "--arch", "linear", "--epochs", "30", "-o", tb, "-q")
    out = tmp_path / "s.parquet"
    run("rank-salience", ones_table, "-a", "xa", "-b", "xb", "--teacher-model", ta, "--student-model", tb,
        "--both", "--repeats", "3", "--normalize", "max", "--split", "all", "-o", out, "-q")  # fmt: skip
    t = pq.read_table(out)
    assert t.num_rows == 100
    assert set(zip(t["input"].to_pylist(), t["layer"].to_pylist(), strict=True)) == {
        ("xa", "input.xa"),
        ("xb", "input.xb"),
    }
    meta = json.loads(t.schema.metadata[b"cmkdtool"])
    assert [m["path"] for m in meta["models"]] == [str(ta), str(tb)] and "joint_training" not in meta
    assert meta["rows"] == 1400
    # the same seed gives the same table
    out2 = tmp_path / "s2.parquet"
    run("rank-salience", ones_table, "-a", "xa", "-b", "xb", "--teacher-model", ta, "--student-model", tb,
        "--both", "--repeats", "3", "--normalize", "max", "--split", "all", "-o", out2, "-q")  # fmt: skip
    assert pq.read_table(out2)["distance"].to_pylist() == t["distance"].to_pylist()


def test_joint_training_aligns_the_networks(ones_table):
    """Eq. 28 training lowers the distance between the two networks' outputs and both learn the labels."""
    from cmkdtool.data.tensors import load_tensor_data
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.io.tables import read_tables
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines.train import joint_train

    data = load_tensor_data(read_tables([str(ones_table)]), ["xa", "xb"], torch.device("cpu"))
    cfg = TrainConfig(epochs=60, batch_size=None, optimizer="sgd", lr=0.05, select="last")
    na, nb, result = joint_train(data, "xa", "xb", model=ModelOptions(arch="linear", hidden=[]), config=cfg,
                                   quiet=True)  # fmt: skip
    first, last = result.history[0], result.history[-1]
    assert last["train/dist"] < 0.5 * first["train/dist"] or last["train/dist"] < 0.05
    assert last["train/ce_a"] < first["train/ce_a"] and last["train/ce_b"] < first["train/ce_b"]
    test = data.index("test")
    with torch.no_grad():
        acc_a = (na({"xa": data.inputs["xa"][test]}).argmax(1) == data.target[test]).float().mean().item()
    assert acc_a > 0.75  # chance is 0.5


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--teacher-model", "x.safetensors"], 2, "both --teacher-model and --student-model"),
        (["--repeats", "0"], 2, "--repeats"),
        (["--split", "everything"], 2, "--split"),
        (["--normalize", "rank"], 2, "--normalize"),
        (["--distance", "cos"], 2, "--distance"),
        (["--layer", "head.0", "--epochs", "1"], 2, "output"),
    ],
)
def test_rank_salience_errors(ones_table, tmp_path, args, code, message):
    res = run("rank-salience", ones_table, "-a", "xa", "-b", "xb", "-o", tmp_path / "s.parquet", *args, "-q",
              code=code)  # fmt: skip
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.parquet").exists()


def test_rank_salience_same_column_and_missing_column(ones_table, tmp_path):
    assert "same column" in run("rank-salience", ones_table, "-a", "xa", "-b", "xa", "-o", tmp_path / "s.parquet",
                                code=2).output  # fmt: skip
    res = run("rank-salience", ones_table, "-a", "xa", "-b", "xc", "-o", tmp_path / "s.parquet", code=1)
    assert "xc" in res.output
