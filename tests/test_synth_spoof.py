"""Tests for ``synth spoof`` (cmkdtool.data.synth.synth_spoof): RGB-D-IR face anti-spoofing images, the OS-MD
Table 1 analogue. Layout, labels and attack types, seeding, what each option changes, the depth ground truth
(a face or a plane), separability measured with a linear discriminant, and the command (file, stdout, library)."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.data.synth import SPOOF_MODEL, SpoofData, SynthConfigError, synth_spoof
from cmkdtool.errors import CmkdUsageError
from cmkdtool.io.tables import read_tables
from cmkdtool.pipelines.synth import run_synth_spoof

SMALL = {"n_train": 60, "n_val": 20, "n_test": 40}


def _check_layout(data: SpoofData, size: int, sizes: tuple[int, int, int], ir: bool = True) -> None:
    n = sum(sizes)
    assert data.rgb.shape == (n, 3, size, size) and data.rgb.dtype == np.float32
    assert data.depth.shape == (n, 1, size, size) and data.depth.dtype == np.float32
    if ir:
        assert data.ir is not None and data.ir.shape == (n, 1, size, size) and data.ir.dtype == np.float32
    else:
        assert data.ir is None and set(data.images()) == {"rgb", "depth"}
    for name, image in data.images().items():
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0, name
    assert data.label.shape == (n,) and data.label.dtype == np.int64
    assert data.attack_type.shape == (n,) and set(data.attack_type.tolist()) <= {"bona_fide", "print", "replay"}
    assert data.split.tolist() == ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]
    for name, count in zip(("train", "val", "test"), sizes, strict=True):
        assert data.ids[data.split == name].tolist() == [f"{name}-{i:06d}" for i in range(count)]
    assert data.class_names == ["attack", "bona_fide"] and len(data) == n
    assert json.loads(json.dumps(data.meta)) == data.meta


def _lda_accuracy(x: np.ndarray, y: np.ndarray, split: np.ndarray, ridge: float = 0.1) -> float:
    """Test accuracy of a ridge-regularised Fisher linear discriminant on standardised flattened pixels."""
    x = x.reshape(len(x), -1).astype(np.float64)
    tr, te = split == "train", split == "test"
    mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0) + 1e-6
    z = (x - mu) / sd
    m0, m1 = z[tr & (y == 0)].mean(axis=0), z[tr & (y == 1)].mean(axis=0)
    centred = np.concatenate([z[tr & (y == 0)] - m0, z[tr & (y == 1)] - m1])
    w = np.linalg.solve(centred.T @ centred / len(centred) + ridge * np.eye(z.shape[1]), m1 - m0)
    prior = np.log((y[tr] == 1).mean() / (y[tr] == 0).mean())
    pred = (z[te] @ w - w @ (m0 + m1) / 2 + prior > 0).astype(np.int64)
    return float((pred == y[te]).mean())


@pytest.fixture(scope="module")
def by_visibility() -> dict[float, SpoofData]:
    """The same rows (seed 0, 2000 train / 2000 test) at attack visibility 0, the default 0.3, and 1."""
    return {v: synth_spoof(attack_visibility=v, n_train=2000, n_val=0, n_test=2000) for v in (0.0, 0.3, 1.0)}


# ------------------------------------------------------------------------------------------ layout and labels


def test_defaults_layout_and_meta() -> None:
    data = synth_spoof()
    _check_layout(data, 16, (1200, 400, 400))
    meta = data.meta
    assert meta["generator"] == "spoof" and meta["attack_visibility"] == 0.3
    assert meta["shapes"] == {"rgb": [3, 16, 16], "depth": [1, 16, 16], "ir": [1, 16, 16]}
    assert meta["params"]["attack_ratio"] == 0.5 and meta["params"]["size"] == 16
    assert meta["model"] == SPOOF_MODEL and meta["attack_types"] == ["print", "replay"]
    assert meta["artefacts"]["replay"]["moire_amplitude"] == pytest.approx(0.3 * SPOOF_MODEL["replay_moire"])
    assert meta["counts"]["train"] == {"bona_fide": 600, "print": 300, "replay": 300}


@pytest.mark.parametrize("size", [4, 9, 32])
def test_size_and_no_ir(size: int) -> None:
    _check_layout(synth_spoof(size=size, **SMALL), size, (60, 20, 40))
    _check_layout(synth_spoof(size=size, ir=False, **SMALL), size, (60, 20, 40), ir=False)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.3, 0.5, 0.9, 1.0])
def test_labels_attack_types_and_ratio(ratio: float) -> None:
    data = synth_spoof(attack_ratio=ratio, n_train=101, n_val=10, n_test=0)
    np.testing.assert_array_equal(data.label, (data.attack_type == "bona_fide").astype(np.int64))
    for split, n in (("train", 101), ("val", 10), ("test", 0)):
        kinds = data.attack_type[data.split == split]
        attacks = int(np.floor(ratio * n + 0.5))
        n_print, n_replay = int((kinds == "print").sum()), int((kinds == "replay").sum())
        assert n_print + n_replay == attacks and n_print - n_replay in (0, 1)  # print gets the odd one
        assert data.meta["counts"][split] == {"bona_fide": n - attacks, "print": n_print, "replay": n_replay}
    if 0 < ratio < 1:  # attacks sit at seeded positions, not in a block
        first = data.label[data.split == "train"][:50]
        assert 0 < first.sum() < 50


def test_attack_ratio_only_turns_rows_into_attacks() -> None:
    low, high = synth_spoof(attack_ratio=0.3, **SMALL), synth_spoof(attack_ratio=0.6, **SMALL)
    assert np.all(high.label <= low.label)  # every attack of 0.3 is still an attack at 0.6
    same = (low.label == 1) & (high.label == 1)
    assert same.sum() > 10
    for name in ("rgb", "depth", "ir"):
        np.testing.assert_array_equal(getattr(low, name)[same], getattr(high, name)[same])


def test_visibility_changes_only_the_attacks_rgb(by_visibility) -> None:
    zero, one = by_visibility[0.0], by_visibility[1.0]
    np.testing.assert_array_equal(zero.label, one.label)
    np.testing.assert_array_equal(zero.attack_type, one.attack_type)
    np.testing.assert_array_equal(zero.depth, one.depth)
    np.testing.assert_array_equal(zero.ir, one.ir)
    bona = zero.label == 1
    np.testing.assert_array_equal(zero.rgb[bona], one.rgb[bona])
    changed = np.abs(zero.rgb - one.rgb).reshape(len(zero), -1).max(axis=1) > 0.05
    assert changed[~bona].all()


def test_no_ir_changes_nothing_else() -> None:
    with_ir, without = synth_spoof(**SMALL), synth_spoof(ir=False, **SMALL)
    for name in ("rgb", "depth", "label", "attack_type"):
        np.testing.assert_array_equal(getattr(with_ir, name), getattr(without, name))
    assert "ir" not in without.meta["shapes"]


def test_deterministic_per_seed_and_split_seeds() -> None:
    a, b = synth_spoof(seed=3, **SMALL), synth_spoof(seed=3, **SMALL)
    for name in ("rgb", "depth", "ir", "label", "attack_type", "split", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta == b.meta
    assert not np.array_equal(a.rgb, synth_spoof(seed=4, **SMALL).rgb)
    c = synth_spoof(seed=3, test_seed=99, **SMALL)
    for split in ("train", "val"):
        rows = a.split == split
        np.testing.assert_array_equal(a.rgb[rows], c.rgb[rows])
        np.testing.assert_array_equal(a.depth[rows], c.depth[rows])
    assert not np.array_equal(a.depth[a.split == "test"], c.depth[c.split == "test"])
    assert c.meta["split_seeds"]["test"] == 99


# ------------------------------------------------------------------------------------------ ground truth


def _quadric_residual(depth: np.ndarray) -> np.ndarray:
    """RMS residual of each depth image after the least-squares fit of a quadric a + bx + cy + dx^2 + exy + fy^2."""
    n, _, h, w = depth.shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(h * w, 6)
    z = depth.reshape(n, h * w).T.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, z, rcond=None)
    return np.sqrt(((basis @ coef - z) ** 2).mean(axis=0))


def test_attacks_are_planes_and_faces_are_not() -> None:
    data = synth_spoof(attack_ratio=0.5, n_train=400, n_val=0, n_test=0)
    residual = _quadric_residual(data.depth)
    attack, bona = data.label == 0, data.label == 1
    # a plane (replay) or a slightly bent sheet (print): the quadric explains it up to the sensor noise
    assert residual[attack].max() < 2 * SPOOF_MODEL["depth_noise"]
    assert residual[bona].min() > 4 * SPOOF_MODEL["depth_noise"]
    replay = data.attack_type == "replay"
    spread = data.depth[replay].reshape(replay.sum(), -1)
    assert spread.std(axis=1).max() < 0.1  # a flat screen, tilted at most 0.1 per half grid
    # the live face rises above its contour: its centre is closer (brighter) than the far background corners
    corners = data.depth[bona][:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.all(corners.mean(axis=1) < 0.15)


def test_depth_separates_almost_perfectly_and_rgb_grows_with_visibility(by_visibility) -> None:
    acc = {v: _lda_accuracy(d.rgb, d.label, d.split) for v, d in by_visibility.items()}
    data = by_visibility[0.3]
    depth = _lda_accuracy(data.depth, data.label, data.split)
    ir = _lda_accuracy(data.ir, data.label, data.split)
    assert depth > 0.95 and ir > 0.9
    # rgb: chance without artefacts (2000 test rows: one standard error is 0.011), above chance at the default
    # visibility but clearly below depth, and better with plainly visible artefacts
    assert abs(acc[0.0] - 0.5) < 0.05, acc
    assert 0.55 < acc[0.3] < depth - 0.2, acc
    assert acc[1.0] > acc[0.3] + 0.05 and acc[1.0] > acc[0.0] + 0.15, acc


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"size": 3}, "size"),
        ({"size": 8.0}, "size"),
        ({"attack_ratio": 1.5}, "attack_ratio"),
        ({"attack_ratio": float("nan")}, "attack_ratio"),
        ({"attack_visibility": -0.1}, "attack_visibility"),
        ({"attack_visibility": "high"}, "attack_visibility"),
        ({"ir": "yes"}, "ir"),
        ({"n_train": -1}, "n_train"),
        ({"seed": -1}, "seed"),
    ],
)
def test_errors(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option) as info:
        synth_spoof(**kwargs)
    assert isinstance(info.value, CmkdUsageError) and isinstance(info.value, SynthConfigError)
    assert str(info.value).count("\n") == 0


# ------------------------------------------------------------------------------------------ command


ARGS = ["synth", "spoof", "--size", "8", "--train", "30", "--val", "6", "--test", "10", "--seed", "2"]


def test_command_writes_the_table(tmp_path) -> None:
    out = tmp_path / "spoof.parquet"
    res = CliRunner().invoke(app, [*ARGS, "--attack-visibility", "0.5", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    assert "46 rows (30 train, 6 val, 10 test)" in res.stderr and "rgb [3, 8, 8]" in res.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "label", "split", "attack_type", "rgb", "depth", "ir"]
    meta = json.loads(table.schema.metadata[b"cmkdtool"])
    assert meta["class_names"] == ["attack", "bona_fide"] and meta["seed"] == 2
    assert meta["synth"]["generator"] == "spoof" and meta["synth"]["attack_visibility"] == 0.5
    ft = read_tables([str(out)], columns=["rgb", "depth", "ir"])
    assert ft.shape("rgb") == (3, 8, 8) and ft.shape("depth") == (1, 8, 8) and ft.shape("ir") == (1, 8, 8)
    assert ft.modality_columns() == ["rgb", "depth", "ir"]  # attack_type is not a feature column
    data = synth_spoof(size=8, n_train=30, n_val=6, n_test=10, seed=2, attack_visibility=0.5)
    np.testing.assert_array_equal(ft.array("rgb").reshape(-1, 3, 8, 8), data.rgb)
    np.testing.assert_array_equal(ft.array("depth").reshape(-1, 1, 8, 8), data.depth)
    np.testing.assert_array_equal(ft.label_array(), data.label)
    assert table.column("attack_type").to_pylist() == data.attack_type.tolist()
    assert ft.class_names() == ["attack", "bona_fide"]


def test_command_writes_an_arrow_stream_to_stdout(tmp_path) -> None:
    res = CliRunner().invoke(app, [*ARGS, "--no-ir", "-q", "-o", "-"])
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    table = ipc.open_stream(pa.BufferReader(res.stdout_bytes)).read_all()
    assert table.column_names == ["id", "label", "split", "attack_type", "rgb", "depth"]
    assert table.num_rows == 46
    assert json.loads(table.schema.field("rgb").metadata[b"shape"]) == [3, 8, 8]
    out = tmp_path / "spoof.parquet"
    assert CliRunner().invoke(app, [*ARGS, "--no-ir", "-q", "-o", str(out)]).exit_code == 0
    from_file = pq.read_table(out)
    assert from_file.schema.remove_metadata() == table.schema.remove_metadata()
    for name in table.column_names:
        assert from_file.column(name).equals(table.column(name)), name


def test_library_writes_the_cli_bytes(tmp_path) -> None:
    out = tmp_path / "cli.parquet"
    args = [*ARGS, "--attack-ratio", "0.25", "-q", "-o", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    line = shlex.join(["cmkdtool", *args])
    run = run_synth_spoof(size=8, n_train=30, n_val=6, n_test=10, seed=2, attack_ratio=0.25, command=line)
    assert run.counts() == {"train": 30, "val": 6, "test": 10}
    assert run.meta["command"] == line and run.meta["synth"] == run.data.meta
    lib = tmp_path / "lib.parquet"
    run.write(str(lib))
    assert lib.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--attack-visibility", "1.5"], "--attack-visibility"),
        (["--attack-ratio", "-0.1"], "--attack-ratio"),
        (["--size", "2"], "--size"),
    ],
)
def test_command_usage_errors(args: list[str], flag: str, tmp_path) -> None:
    out = tmp_path / "x.parquet"
    res = CliRunner().invoke(app, ["synth", "spoof", *args, "-o", str(out)])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and flag in lines[0], res.stderr
    assert not out.exists()
