"""spectrum: summary numbers against hand-computed values and numpy, sources, sparkline, and the command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import typer
from typer.testing import CliRunner

from cmkdtool.analysis.spectrum import (
    SPARK_CHARS,
    column_spectrum,
    feature_spectrum,
    singular_values,
    sparkline,
    summarize,
    weight_spectra,
)
from cmkdtool.cli import spectrum as spectrum_cmd
from cmkdtool.cli.app import app as main_app
from cmkdtool.cli.common import guard
from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.errors import CmkdError
from cmkdtool.io.checkpoints import load_model, read_checkpoint
from cmkdtool.io.tables import build_table, hash_split, read_tables, write_table
from cmkdtool.nn.models import build_model

EPS32 = float(np.finfo(np.float32).eps)
runner = CliRunner()

# a local app until cli/app.py registers the command (the same wiring as the real one)
app = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
app.command("spectrum", no_args_is_help=True)(guard(spectrum_cmd.spectrum))


@app.callback()
def _root() -> None:
    pass


def spectrum(*args, code: int = 0):
    result = runner.invoke(app, ["spectrum", *[str(a) for a in args]])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


# ------------------------------------------------------------------------------------------ summary numbers


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_rank_k_product_has_exactly_k_values_above_tolerance(k, dtype):
    rng = np.random.default_rng(k)
    m, n = 40, 25
    x = (rng.standard_normal((m, k)) @ rng.standard_normal((k, n))).astype(dtype)
    sv = singular_values(x)
    assert sv.dtype == np.float64 and sv.shape == (n,)
    assert np.all(np.diff(sv) <= 0)  # descending
    np.testing.assert_allclose(sv, np.linalg.svd(x.astype(np.float64), compute_uv=False), rtol=1e-12, atol=1e-12)
    s = summarize(sv, x.shape)
    # the float32 storage bound of X (Weyl): eps32 * ||X||_F, whatever the shape
    assert s["tol"] == pytest.approx(EPS32 * np.linalg.norm(x.astype(np.float64)), rel=1e-12)
    assert s["tol_rule"] == "eps32 * ||X||_F"
    assert s["rank_tol"] == k
    assert s["rank_tol"] == np.linalg.matrix_rank(x.astype(np.float64), tol=s["tol"])
    assert s["n_values"] == n and s["sigma_max"] == pytest.approx(sv[0])


def test_diagonal_summary_by_hand():
    # sigma = 4, 2, 1, 1, 0 in a 5 x 6 matrix
    x = np.zeros((5, 6))
    x[np.arange(5), np.arange(5)] = [1, 4, 0, 2, 1]  # unsorted on purpose
    s = summarize(singular_values(x), x.shape)
    # p = 1/2, 1/4, 1/8, 1/8, 0: H = 1/2 ln 2 + 1/4 ln 4 + 2 * 1/8 ln 8 = 7/4 ln 2
    assert s["effective_rank"] == pytest.approx(2**1.75, rel=1e-12)
    # RankMe adds 1e-7 to every p: the zero value then adds -1e-7 ln 1e-7 = 1.61e-6 nats, the others
    # change H by -1e-7 (ln p + 1) each: 1e-7 (ln 2 + ln 4 + 2 ln 8 - 4) = 1e-7 (11 ln 2 - 4) = +2.238e-7 nats
    assert s["rankme"] == pytest.approx(2**1.75 * math.exp(1.6118e-6 + 0.2238e-6), rel=1e-9)
    assert s["rankme"] != pytest.approx(s["effective_rank"], rel=1e-7)  # the epsilon is really applied
    # energies 16, 4, 1, 1, 0 of 22: 90% = 19.8 needs 16 + 4; 99% = 21.78 needs 16 + 4 + 1 + 1
    assert (s["rank90"], s["rank99"]) == (2, 4)
    assert s["rank_tol"] == 4 and s["tol"] == pytest.approx(math.sqrt(22) * EPS32)  # energies 16 + 4 + 1 + 1
    assert (s["n_values"], s["sigma_max"]) == (5, 4.0)


def test_energy_exactly_at_the_threshold_counts():
    # 3, 1: energy 9 of 10 is exactly 90%, so one value suffices
    assert summarize(np.array([3.0, 1.0]), (2, 2))["rank90"] == 1
    # energies 0.5, 0.4, 0.1: the float cumulative sum 0.9000000000000001 falls short of 0.9 * 1.0000000000000002
    assert summarize(np.sqrt([0.5, 0.4, 0.1]), (3, 3))["rank90"] == 2
    # identity 10 x 10: every value carries 10%, 9 reach 90%, 10 reach 99%; effective rank 10
    s = summarize(singular_values(np.eye(10)), (10, 10))
    assert (s["rank90"], s["rank99"], s["rank_tol"]) == (9, 10, 10)
    assert s["effective_rank"] == pytest.approx(10.0) and s["rankme"] == pytest.approx(10.0, rel=1e-5)


def test_centering_removes_the_mean_direction():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((50, 1))
    x = 5.0 + t @ np.array([[1.0, -2.0, 0.5]])  # rank 2 (offset + one direction), centred rank 1
    assert summarize(singular_values(x), x.shape)["rank_tol"] == 2
    centred = singular_values(x, center=True)
    np.testing.assert_allclose(centred, np.linalg.svd(x - x.mean(0), compute_uv=False), atol=1e-10)
    assert summarize(centred, x.shape)["rank_tol"] == 1


def test_chunked_qr_matches_direct_svd():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3000, 20)) * np.geomspace(1, 1e-3, 20) + 2.0).astype(np.float32)
    for center in (False, True):
        direct = singular_values(x, center=center)
        chunked = singular_values(x, center=center, chunk_rows=256)
        np.testing.assert_allclose(chunked, direct, rtol=1e-10)


def test_all_zero_and_empty_matrices_give_zero_ranks_without_nan():
    for x in (np.zeros((6, 4)), torch.zeros(3, 5), np.zeros((0, 5))):
        sv = singular_values(x)
        s = summarize(sv, tuple(x.shape))
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in s.values())
        assert {k: s[k] for k in ("effective_rank", "rankme", "rank90", "rank99", "rank_tol", "sigma_max")} == {
            "effective_rank": 0.0,
            "rankme": 0.0,
            "rank90": 0,
            "rank99": 0,
            "rank_tol": 0,
            "sigma_max": 0.0,
        }
        assert sparkline(sv, width=10) == " " * 10


def test_torch_and_nan_inputs():
    x = torch.randn(8, 3, dtype=torch.bfloat16)
    np.testing.assert_allclose(singular_values(x), np.linalg.svd(x.float().numpy(), compute_uv=False), rtol=1e-6)
    with pytest.raises(CmkdError, match="NaN"):
        singular_values(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------- sparkline


def test_sparkline_width_and_characters():
    rng = np.random.default_rng(2)
    for n in (1, 5, 40, 333):
        sv = np.sort(rng.random(n))[::-1]
        line = sparkline(sv, width=40)
        assert len(line) == 40 and set(line) <= set(SPARK_CHARS)
        assert line[0] == "█"  # the largest value is a full block
    assert len(sparkline(np.ones(3), width=7)) == 7


def test_sparkline_shows_a_collapse_as_a_cliff():
    collapsed = np.r_[np.ones(10), np.full(10, 1e-9)]
    assert sparkline(collapsed, width=20) == "█" * 10 + " " * 10
    healthy = np.geomspace(1.0, 0.5, 20)
    assert sparkline(healthy, width=20) == "█" * 20
    gradual = np.geomspace(1.0, 1e-6, 64)
    levels = [SPARK_CHARS.index(c) for c in sparkline(gradual, width=16)]
    assert levels == sorted(levels, reverse=True) and levels[0] == 8 and levels[-1] <= 2


# ------------------------------------------------------------------------------------------------ sources


def test_weight_spectra_picks_matrices_and_resolves_names():
    rng = np.random.default_rng(3)
    tensors = {
        "norm.x.mean": torch.zeros(5),
        "enc.0.weight": torch.as_tensor(rng.standard_normal((8, 5)), dtype=torch.float32),
        "enc.0.bias": torch.zeros(8),
        "enc.1.running_mean": torch.zeros(8),
        "enc.1.num_batches_tracked": torch.tensor(3),
        "conv.weight": torch.as_tensor(rng.standard_normal((4, 2, 3, 3)), dtype=torch.float32),
        "ids": torch.zeros(3, 3, dtype=torch.int64),
    }
    spectra = weight_spectra(tensors)
    assert [(s.name, s.shape, s.kind, s.centered) for s in spectra] == [
        ("enc.0.weight", (8, 5), "weight", False),
        ("conv.weight", (4, 18), "weight", False),
    ]
    np.testing.assert_allclose(spectra[0].sigma, np.linalg.svd(tensors["enc.0.weight"].double().numpy())[1])
    assert [s.name for s in weight_spectra(tensors, "enc.0")] == ["enc.0.weight"]
    assert [s.name for s in weight_spectra(tensors, "conv.weight")] == ["conv.weight"]
    with pytest.raises(CmkdError, match=r"'enc.0.bias' is a 1-D tensor .*enc.0.weight, conv.weight"):
        weight_spectra(tensors, "enc.0.bias")
    with pytest.raises(CmkdError, match=r"no weight 'head'; weight matrices: enc.0.weight, conv.weight"):
        weight_spectra(tensors, "head")


def _linear_feature_model(in_dim: int, width: int):
    spec = {
        "arch": "mlp",
        "inputs": [{"name": "x", "shape": [in_dim]}],
        "hidden": [width],
        "activation": "identity",
        "num_classes": 2,
        "task": "multiclass",
    }
    torch.manual_seed(0)
    return build_model(spec).eval()


def test_feature_spectrum_of_a_linear_layer_has_the_input_rank(tmp_path):
    # identity activation: the 16-wide embedding is a linear map of a 3-D input, so its rank is 3
    model = _linear_feature_model(3, 16)
    rng = np.random.default_rng(4)
    n = 300
    table = read_tables_from(
        build_table(
            [f"r{i}" for i in range(n)], {"x": rng.standard_normal((n, 3))}, split=["test"] * 200 + ["train"] * 100
        ),
        tmp_path,
    )
    data = load_tensor_data(table, ["x"], need_labels=False)
    sp = feature_spectrum(model, data, "embedding", "test", batch_size=64)
    assert (sp.kind, sp.shape, sp.split, sp.centered) == ("feature", (200, 16), "test", True)
    with torch.no_grad():
        emb = model.embed({"x": data.inputs["x"][:200]}).double().numpy()
    np.testing.assert_allclose(sp.sigma, np.linalg.svd(emb - emb.mean(0), compute_uv=False), rtol=1e-5, atol=1e-5)
    assert summarize(sp.sigma, sp.shape)["rank_tol"] == 3
    assert feature_spectrum(model, data, "input.x", "all").shape == (300, 3)
    with pytest.raises(CmkdError, match="unknown layer 'nope'; layers of this model: input.x, encoders.x.0"):
        feature_spectrum(model, data, "nope", "test")
    with pytest.raises(CmkdError, match="no rows in the 'val' split"):
        feature_spectrum(model, data, "embedding", "val")


def test_column_spectrum_is_centred_over_the_split(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 4)) + 3.0
    split = ["train"] * 20 + ["test"] * 40
    table = read_tables_from(build_table([f"r{i}" for i in range(60)], {"a": x}, split=split), tmp_path)
    sp = column_spectrum(table, "a", "test")
    x32 = x.astype(np.float32)[20:].astype(np.float64)
    np.testing.assert_allclose(sp.sigma, np.linalg.svd(x32 - x32.mean(0), compute_uv=False), rtol=1e-10)
    assert sp.shape == (40, 4)


def read_tables_from(table, folder):
    write_table(table, folder / "t.parquet")
    return read_tables([folder / "t.parquet"])


# ------------------------------------------------------------------------------------------------ command


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny table (xa 6-D, xb 5-D; 80 train / 20 val / 40 test) and a checkpoint trained on xb."""
    d = tmp_path_factory.mktemp("spectrum")
    rng = np.random.default_rng(0)
    n = 140
    xa = rng.standard_normal((n, 6)).astype(np.float32)
    xb = rng.standard_normal((n, 5)).astype(np.float32)
    label = (xb[:, 0] + xa[:, 0] > 0).astype(np.int64)
    split = ["train"] * 80 + ["val"] * 20 + ["test"] * 40
    table = d / "data.parquet"
    write_table(build_table([f"s{i:03d}" for i in range(n)], {"xa": xa, "xb": xb}, label=label, split=split), table)
    only_a = d / "only_a.parquet"
    write_table(build_table([f"s{i:03d}" for i in range(n)], {"xa": xa}, label=label, split=split), only_a)
    nosplit = d / "nosplit.parquet"
    write_table(build_table([f"s{i:03d}" for i in range(n)], {"xa": xa, "xb": xb}), nosplit)
    ckpt = d / "student.safetensors"
    # the split ratio and seed are recorded in the checkpoint (the table's split column is what pretrain uses)
    args = ["-i", "xb", "--hidden", "8", "--epochs", "2", "--split-ratio", "0.3,0.2,0.5", "--split-seed", "7"]
    result = runner.invoke(main_app, ["pretrain", str(table), *args, "-q", "-o", str(ckpt)])
    assert result.exit_code == 0, result.output
    return {"dir": d, "table": table, "nosplit": nosplit, "only_a": only_a, "ckpt": ckpt, "xa": xa, "xb": xb}


def test_cli_weight_spectra_table(files):
    ckpt = files["ckpt"]
    out = spectrum(ckpt).stdout.splitlines()
    header = out[0].split()
    assert header[:8] == ["input", "n", "effective_rank", "rankme", "rank90", "rank99", "rank_tol", "sigma_max"]
    assert [line.split()[0] for line in out[1:]] == [f"{ckpt}:encoders.xb.0.weight", f"{ckpt}:head.0.weight"]
    tensors, _, _ = read_checkpoint(ckpt)
    sv = np.linalg.svd(tensors["encoders.xb.0.weight"].double().numpy(), compute_uv=False)
    row = out[1].split()
    assert row[1] == "5" and float(row[7]) == pytest.approx(sv[0], rel=1e-3)
    assert row[8] == sparkline(sv)  # the sparkline of the weight (no blanks: a trained weight has full rank)


def test_cli_json_weights_match_the_library(files):
    ckpt = files["ckpt"]
    rows = json.loads(spectrum(ckpt, "--layer", "head.0", "--format", "json").stdout)
    assert len(rows) == 1 and rows[0]["input"] == f"{ckpt}:head.0.weight"
    tensors, _, _ = read_checkpoint(ckpt)
    expect = summarize(singular_values(tensors["head.0.weight"]), (2, 8))
    assert {k: rows[0][k] for k in expect} == pytest.approx(expect)
    assert (rows[0]["kind"], rows[0]["rows"], rows[0]["cols"], rows[0]["split"]) == ("weight", 2, 8, None)


def test_cli_list_layers(files):
    out = spectrum(files["ckpt"], "--list-layers").stdout
    widths = dict(line.split() for line in out.splitlines() if line.startswith("    ") and "[" not in line)
    assert widths == {
        "input.xb": "5",
        "encoders.xb.0": "8",
        "encoders.xb.1": "8",
        "embedding": "8",
        "head.0": "2",
        "logits": "2",
    }
    assert "encoders.xb.0.weight  [8, 5]" in out and "head.0.weight         [2, 8]" in out


def test_cli_feature_spectrum_of_the_embedding(files):
    ckpt = files["ckpt"]
    rows = json.loads(spectrum(ckpt, "--data", files["table"], "-f", "json").stdout)
    assert len(rows) == 1 and rows[0]["input"] == f"{ckpt}:embedding[test]"
    assert (rows[0]["kind"], rows[0]["rows"], rows[0]["cols"], rows[0]["centered"]) == ("feature", 40, 8, True)
    model = load_model(ckpt)
    with torch.no_grad():
        emb = model.embed({"xb": torch.from_numpy(files["xb"][100:])}).double().numpy()
    sv = np.linalg.svd(emb - emb.mean(0), compute_uv=False)
    assert rows[0]["sigma_max"] == pytest.approx(sv[0], rel=1e-5)
    assert rows[0]["effective_rank"] == pytest.approx(summarize(sv, emb.shape)["effective_rank"], rel=1e-5)
    # another layer and split
    rows = json.loads(
        spectrum(ckpt, "--data", files["table"], "--layer", "input.xb", "--split", "train", "-f", "json").stdout
    )
    assert (rows[0]["input"], rows[0]["rows"], rows[0]["cols"]) == (f"{ckpt}:input.xb[train]", 80, 5)


def test_cli_split_rule_for_tables_without_split_column(files):
    """As eval: the checkpoint's recorded --split-ratio/--split-seed, unless given; tables: 0.8,0.1,0.1 and 0."""
    ckpt, nosplit = files["ckpt"], files["nosplit"]
    ids = [f"s{i:03d}" for i in range(140)]

    def test_rows(*args):
        return json.loads(spectrum(*args, "-f", "json").stdout)[0]["rows"]

    rows = np.nonzero(hash_split(ids, (0.3, 0.2, 0.5), 7) == "test")[0]
    result = json.loads(spectrum(ckpt, "--data", nosplit, "-f", "json").stdout)[0]
    with torch.no_grad():
        emb = load_model(ckpt).embed({"xb": torch.from_numpy(files["xb"][rows])}).double().numpy()
    assert result["rows"] == len(rows)
    assert result["sigma_max"] == pytest.approx(np.linalg.svd(emb - emb.mean(0), compute_uv=False)[0], rel=1e-5)
    given = int((hash_split(ids, (0.1, 0.1, 0.8), 2) == "test").sum())
    assert test_rows(ckpt, "--data", nosplit, "--split-ratio", "0.1,0.1,0.8", "--split-seed", "2") == given
    assert test_rows(nosplit, "--column", "xa") == int((hash_split(ids) == "test").sum())
    assert len({test_rows(ckpt, "--data", nosplit), given, int((hash_split(ids) == "test").sum())}) == 3


def test_command_module_imports_nothing_heavy():
    code = (
        "import sys\nimport cmkdtool.cli.spectrum\n"
        "print([m for m in ('torch', 'numpy', 'pyarrow', 'matplotlib', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_table_input_and_columns(files):
    table = files["table"]
    rows = json.loads(spectrum(table, "-f", "json").stdout)
    assert [r["input"] for r in rows] == [f"{table}:xa[test]", f"{table}:xb[test]"]
    xa = files["xa"][100:].astype(np.float64)
    sv = np.linalg.svd(xa - xa.mean(0), compute_uv=False)
    assert rows[0]["sigma_max"] == pytest.approx(sv[0], rel=1e-10) and rows[0]["rank_tol"] == 6
    rows = json.loads(spectrum(table, "--column", "xb", "--split", "all", "-f", "json").stdout)
    assert [(r["input"], r["rows"]) for r in rows] == [(f"{table}:xb[all]", 140)]


def test_cli_detects_inputs_by_content(files):
    d = files["dir"]
    table, ckpt = d / "features.bin", d / "model.bin"
    table.write_bytes(files["table"].read_bytes())
    ckpt.write_bytes(files["ckpt"].read_bytes())
    rows = json.loads(spectrum(table, ckpt, "--column", "xb", "-f", "json").stdout)
    assert [r["input"] for r in rows] == [f"{table}:xb[test]", f"{ckpt}:encoders.xb.0.weight", f"{ckpt}:head.0.weight"]


def test_cli_csv_format(files):
    lines = spectrum(files["table"], "--format", "csv").stdout.splitlines()
    assert lines[0].startswith("input,source,kind,name,split,rows,cols,centered,n_values,effective_rank")
    assert len(lines) == 3 and lines[1].startswith(f"{files['table']}:xa[test],")


def test_cli_parquet_output_round_trip_and_plot(files):
    out, png = files["dir"] / "spec.parquet", files["dir"] / "spec.png"
    ckpt, table = files["ckpt"], files["table"]
    res = spectrum(ckpt, table, "--data", table, "--column", "xa", "-o", out, "--plot", png, "-f", "json")
    rows = json.loads(res.stdout)
    assert f"wrote {out}" in res.stderr and f"wrote {png}" in res.stderr
    t = pq.read_table(out)
    assert [(f.name, str(f.type)) for f in t.schema] == [("input", "string"), ("index", "int32"), ("sigma", "double")]
    meta = json.loads(t.schema.metadata[b"cmkdtool"])
    assert meta["spectra"] == rows
    assert [r["input"] for r in rows] == [f"{ckpt}:embedding[test]", f"{table}:xa[test]"]
    inputs = t.column("input").to_pylist()
    for r in rows:
        mask = np.array([i == r["input"] for i in inputs])
        sigma = t.column("sigma").to_numpy()[mask]
        assert len(sigma) == r["n_values"] and sigma[0] == pytest.approx(r["sigma_max"], rel=1e-12)
        assert t.column("index").to_numpy()[mask].tolist() == list(range(1, r["n_values"] + 1))
        again = summarize(sigma, (r["rows"], r["cols"]))
        # both inputs here are centred: the tolerance also counts N |mean|^2 (of the stored matrix, not in sigma)
        assert r["centered"] and r["tol"] >= again["tol"] and r["tol_rule"] == again["tol_rule"]
        again = {k: v for k, v in again.items() if k not in ("tol", "rank_tol")}
        assert again == pytest.approx({k: r[k] for k in again})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_unknown_layer_is_one_line_listing_the_valid_ones(files):
    ckpt = files["ckpt"]
    err = spectrum(ckpt, "--data", files["table"], "--layer", "encoders.xb.9", code=1).stderr
    assert err.count("\n") == 1 and err.startswith(f"cmkdtool: error: {ckpt}: unknown layer 'encoders.xb.9'")
    assert "input.xb, encoders.xb.0, encoders.xb.1, embedding, head.0, logits" in err
    err = spectrum(ckpt, "--layer", "embedding", code=1).stderr
    assert err.count("\n") == 1 and "weight matrices: encoders.xb.0.weight, head.0.weight" in err
    assert "give --data TABLE" in err


def test_cli_bad_inputs(files):
    ckpt, d = files["ckpt"], files["dir"]
    err = spectrum(ckpt, "--data", files["only_a"], code=1).stderr
    assert err.count("\n") == 1 and "no column 'xb'" in err and f"{ckpt} reads xb" in err
    other = d / "notes.txt"
    other.write_text("hello world")
    err = spectrum(other, code=1).stderr
    assert "neither a safetensors checkpoint nor a feature table (Parquet, Arrow IPC or a folder of shards)" in err
    assert "unknown --format" in spectrum(ckpt, "--format", "xml", code=2).stderr
    assert "unknown --split" in spectrum(ckpt, "--split", "dev", code=2).stderr
    assert "no input is a checkpoint" in spectrum(files["table"], "--data", files["table"], code=2).stderr
    assert "no input is a feature table" in spectrum(ckpt, "--column", "xa", code=2).stderr
    assert "also an input" in spectrum(ckpt, "-o", ckpt, code=2).stderr
