"""``synth`` and ``extract`` as library calls: the same call gives the same table as the CLI, byte for byte."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.pipelines.extract import run_extract_array, run_extract_table
from cmkdtool.pipelines.synth import run_synth_mfh, run_synth_orthogonal


def _cli(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr
    return shlex.join(["cmkdtool", *map(str, args)])


def test_synth_mfh_library_writes_the_cli_bytes(tmp_path):
    out = tmp_path / "cli.parquet"
    line = _cli("synth", "mfh", "--gamma", "0.3", "--train", "40", "--val", "10", "--test", "20", "--seed", "5",
                "-q", "-o", out)  # fmt: skip
    run = run_synth_mfh(gamma=0.3, n_train=40, n_val=10, n_test=20, seed=5, command=line)
    assert run.counts() == {"train": 40, "val": 10, "test": 20}
    assert run.meta["command"] == line and run.meta["synth"] == run.data.meta
    lib = tmp_path / "lib.parquet"
    run.write(str(lib))
    assert lib.read_bytes() == out.read_bytes()


def test_synth_orthogonal_library_writes_the_cli_bytes(tmp_path):
    out = tmp_path / "cli.parquet"
    line = _cli("synth", "orthogonal", "--dim", "16", "--general", "4", "-q", "-o", out)
    lib = tmp_path / "lib.parquet"
    run_synth_orthogonal(dim=16, general=4, command=line).write(str(lib))
    assert lib.read_bytes() == out.read_bytes()


def test_synth_library_errors_name_the_generator_options():
    with pytest.raises(ValueError, match="general=100"):  # the CLI renames them to its flags (--general)
        run_synth_orthogonal(general=100)


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npz"
    np.savez(path, x=rng.standard_normal((15, 2, 3)).astype(np.float32), label=rng.integers(0, 3, 15))
    return path


def test_extract_array_library_writes_the_cli_bytes(arrays, tmp_path):
    out = tmp_path / "cli.parquet"
    line = _cli("extract", "array", arrays, "-o", out, "--name", "emb", "--split-ratio", "0.5,0.5,0", "-q")
    table = run_extract_array(str(arrays), name="emb", split_ratio=[0.5, 0.5, 0], command=line)
    assert (table.rows, table.column, table.shape) == (15, "emb", [2, 3])
    assert table.meta["extract"]["split_ratio"] == [0.5, 0.5, 0]
    lib = tmp_path / "lib.parquet"
    table.write(str(lib))
    assert lib.read_bytes() == out.read_bytes()
    default = run_extract_array(str(arrays), command=line)  # the CLI's defaults: column 'array', 0.8,0.1,0.1
    assert default.column == "array" and default.meta["extract"]["split_ratio"] == [0.8, 0.1, 0.1]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "img"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    return root


def _raw_pixels():
    from cmkdtool.extract.image import ImageExtractor, ImagePrep

    return ImageExtractor(ImagePrep("rgb", None, None, None, None), None, None)


def test_extract_table_library_writes_the_cli_bytes(images, tmp_path):
    out = tmp_path / "cli.parquet"
    line = _cli("extract", "image", "--raw", images, "-o", out, "--device", "cpu", "-q")
    lib = tmp_path / "lib.parquet"
    run = run_extract_table("image", str(images), _raw_pixels(), str(lib), device="cpu", quiet=True, command=line)
    assert lib.read_bytes() == out.read_bytes()
    assert (run.rows, run.written, run.skipped, run.column, run.shape) == (6, 6, 0, "image", [3, 10, 12])
    assert [e["path"] for e in run.errors] == [str(images / "dog" / "bad.png")]
    assert run.meta["extract"]["errors"]["count"] == 1 and run.rate > 0
    again = run_extract_table("image", str(images), _raw_pixels(), str(lib), resume=True, quiet=True, command=line)
    assert (again.rows, again.written, again.skipped) == (6, 0, 6)


def test_extract_table_library_checks(images, tmp_path):
    with pytest.raises(CmkdUsageError, match="unknown --on-error 'bogus'"):
        run_extract_table("image", str(images), _raw_pixels(), str(tmp_path / "o.parquet"), on_error="bogus")
    with pytest.raises(CmkdUsageError, match="is also an input"):
        run_extract_table("image", str(images), _raw_pixels(), str(images / "cat" / "0.png"), quiet=True)
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"nope")
    with pytest.raises(CmkdError, match="no sample could be extracted, nothing written"):
        run_extract_table("image", str(bad.parent), _raw_pixels(), str(tmp_path / "n.parquet"), quiet=True)
    assert not (tmp_path / "n.parquet").exists()
