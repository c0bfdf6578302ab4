"""Identical inputs and seeds write byte-identical files: the deterministic safetensors writer and checkpoints.

safetensors' own ``save_file`` writes ``__metadata__`` in the order of a randomly seeded Rust HashMap, so its
bytes change from process to process; ``cmkdtool.io.safetensors_io`` writes the format itself.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from cmkdtool.io.safetensors_io import DTYPES, safetensors_bytes, save_safetensors

META = {"cmkdtool.train": "{}", "cmkdtool.format": "f", "zeta": 'é\n\x01"/\\', "alpha": "1", "cmkdtool.model": "m"}


def _sample(dtype: torch.dtype, shape=(2, 3)) -> torch.Tensor:
    x = torch.arange(-3, 3, dtype=torch.float32).reshape(shape)
    if dtype == torch.bool:
        return x > 0
    if dtype.is_complex:
        return torch.complex(x, -x).to(dtype)
    if not dtype.is_floating_point and not dtype.is_signed:
        return (x + 3).to(dtype)
    return x.to(dtype)


def _all_dtypes() -> dict[str, torch.Tensor]:
    return {f"t.{code}": _sample(dt) for dt, code in DTYPES.items()}


def _header(data: bytes) -> tuple[int, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return n, data[8 : 8 + n]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (float8 has no torch.equal on the CPU)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    flat = (a.reshape(-1), b.reshape(-1))
    return flat[0].view(torch.uint8).tolist() == flat[1].view(torch.uint8).tolist()


def test_round_trip_every_dtype_empty_scalar_and_noncontiguous(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        **_all_dtypes(),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "scalar.i": torch.tensor(-7, dtype=torch.int64),
        "empty": torch.zeros(0, 5),
        "empty.bf16": torch.zeros(3, 0, dtype=torch.bfloat16),
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "expanded": torch.ones(1, 3).expand(4, 3),
    }
    assert not tensors["transposed"].is_contiguous() and not tensors["strided"].is_contiguous()
    path = tmp_path / "all.safetensors"
    save_safetensors(path, tensors, META)
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert _same(loaded[name], t.contiguous()), name
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == META
        assert set(f.keys()) == set(tensors)


def test_same_bytes_as_safetensors_up_to_metadata_order():
    tensors = {
        **_all_dtypes(),
        "b.weight": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
        "a.weight": torch.randn(2, generator=torch.Generator().manual_seed(1)),
        "scalar": torch.tensor(1.0),
        "empty": torch.zeros(0),
    }
    # zero or one metadata key leaves safetensors no order to choose: the files must be identical
    for meta in (None, {}, {"only": META["zeta"]}):
        assert safetensors_bytes(tensors, meta) == st_save(tensors, metadata=meta)
    # more keys: the same tensor layout, the same metadata, only the key order may differ
    ours, ref = safetensors_bytes(tensors, META), st_save(tensors, metadata=META)
    assert len(ours) == len(ref)
    (n, head), (n_ref, head_ref) = _header(ours), _header(ref)
    assert n == n_ref and ours[8 + n :] == ref[8 + n :]
    assert json.loads(head) == json.loads(head_ref)


def test_header_layout():
    data = safetensors_bytes({"w": torch.ones(3), "i": torch.ones(1, dtype=torch.int64)}, {"b": "2", "a": "1"})
    n, head = _header(data)
    assert n % 8 == 0 and head == head.rstrip() + b" " * (n - len(head.rstrip()))
    assert head.rstrip() == (
        b'{"__metadata__":{"a":"1","b":"2"},"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},'
        b'"w":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}}'
    )
    assert len(data) == 8 + n + 20


def test_insertion_order_does_not_matter(tmp_path):
    tensors = {"z": torch.ones(2), "a": torch.zeros(3, dtype=torch.float16), "m": torch.arange(4)}
    first = safetensors_bytes(tensors, META)
    assert safetensors_bytes(dict(reversed(tensors.items())), dict(reversed(META.items()))) == first
    assert safetensors_bytes(tensors, dict(sorted(META.items()))) == first
    save_safetensors(tmp_path / "p.safetensors", tensors, META)  # path, str and file object: the same bytes
    save_safetensors(str(tmp_path / "s.safetensors"), tensors, META)
    with open(tmp_path / "f.safetensors", "wb") as f:
        save_safetensors(f, tensors, META)
    for name in ("p", "s", "f"):
        assert (tmp_path / f"{name}.safetensors").read_bytes() == first


@pytest.mark.parametrize(
    "tensors, meta",
    [
        ({"w": torch.ones(2)}, {"k": 1}),
        ({"w": torch.ones(2)}, {1: "v"}),
        ({"__metadata__": torch.ones(2)}, None),
        ({"w": [1.0]}, None),
        ({"w": torch.ones(2).to_sparse()}, None),
    ],
)
def test_bad_input_is_refused(tensors, meta):
    with pytest.raises(ValueError):
        safetensors_bytes(tensors, meta)


_SAVE_IN_A_NEW_PROCESS = textwrap.dedent(
    """
    import sys, torch
    from cmkdtool.io.checkpoints import save_checkpoint
    g = torch.Generator().manual_seed(0)
    state = {"head.weight": torch.randn(3, 4, generator=g), "enc.0.bias": torch.randn(4, generator=g),
             "enc.0.weight": torch.randn(4, 5, generator=g).t(), "steps": torch.tensor(7)}
    spec = {"role": "teacher", "inputs": {"xa": [5]}, "num_classes": 3, "arch": {"kind": "mlp", "hidden": [4]}}
    train = {"method": "supervised", "seed": 0, "data": [{"path": "d.parquet", "sha256": "0" * 64}], "lr": 0.01}
    save_checkpoint(sys.argv[1], state, spec, train)
    """
)


def test_checkpoint_bytes_identical_across_processes(tmp_path):
    """Hash randomisation differs per process: the real trigger of the reordered metadata."""
    seeds = ("1", "2")
    paths = [tmp_path / f"ckpt-{seed}.safetensors" for seed in seeds]
    procs = [  # two processes at once: most of their time is importing torch
        subprocess.Popen(
            [sys.executable, "-c", _SAVE_IN_A_NEW_PROCESS, str(tmp_path / f"ckpt-{seed}.safetensors")],
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in seeds
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    first = paths[0].read_bytes()
    assert paths[1].read_bytes() == first
    with safe_open(str(paths[0]), framework="pt") as f:
        assert len(f.metadata()) == 4  # several keys: the case safetensors' own writer orders at random


def test_pretrain_twice_writes_identical_checkpoints(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cmkdtool.cli.app import app

    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    data = tmp_path / "data.parquet"
    run("synth", "mfh", "--train", 64, "--val", 32, "--test", 32, "--dim-a", 8, "--dim-b", 8, "--decisive", 4,
        "-o", data, "--quiet")  # fmt: skip
    outs = []
    for i in (1, 2):
        out = tmp_path / f"run{i}" / "model.safetensors"
        out.parent.mkdir()
        monkeypatch.chdir(out.parent)  # the recorded command names the output: give both runs the same relative path
        run("pretrain", data, "--input", "xa", "--arch", "mlp", "--hidden", 8, "--epochs", 3, "--batch-size", 16,
            "--seed", 0, "--device", "cpu", "--quiet", "-o", "model.safetensors")  # fmt: skip
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with safe_open(str(outs[0]), framework="pt") as f:
        assert len(f.metadata()) > 1
    # the history and the training state match byte for byte too (no wall-clock times are recorded)
    for suffix in (".history.jsonl", ".state.safetensors"):
        assert Path(f"{outs[0]}{suffix}").read_bytes() == Path(f"{outs[1]}{suffix}").read_bytes(), suffix
    assert len(Path(f"{outs[0]}.history.jsonl").read_text().splitlines()) == 3
