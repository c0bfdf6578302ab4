"""CLI conventions: fast help without torch, completion scripts current, examples run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_no_torch_or_pyarrow():
    code = (
        "import sys\nfrom cmkdtool.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'pyarrow', 'numpy', 'safetensors') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "pretrain" in out and "synth" in out and "eval" in out


def test_subcommand_help_imports_no_torch():
    code = (
        "import sys\nfrom cmkdtool.cli.app import main\n"
        "try:\n    main(['pretrain', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "TORCH False" in out and "--input" in out and "--batch-size" in out


def test_extract_help_imports_no_torch():
    code = (
        "import sys\nfrom cmkdtool.cli.app import main\n"
        "for kind in ('image', 'audio', 'video', 'text', 'array'):\n"
        "    try:\n        main(['extract', kind, '--help'])\n    except SystemExit:\n        pass\n"
        "print('HEAVY', [m for m in ('torch', 'pyarrow', 'numpy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "--backbone" in out and "--n-mfcc" in out and "--tfidf" in out and "--meta" in out


def test_completion_scripts_are_current():
    from cmkdtool.cli.completions import render_all

    for name, text in render_all().items():
        path = ROOT / "completions" / name
        assert path.exists() and path.read_text() == text, f"{path} is stale: run `make completions`"


def test_bash_completion_completes_commands_and_options():
    script = ROOT / "completions" / "cmkdtool.bash"
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=(cmkdtool synth o); COMP_CWORD=2; _cmkdtool; "
            "echo ${COMPREPLY[@]}; COMP_WORDS=(cmkdtool pretrain --inp); COMP_CWORD=2; _cmkdtool; echo ${COMPREPLY[@]}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].split()[0] == "orthogonal" and out[1] == "--input"


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "cmkdtool", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cmkdtool ")


def test_quickstart_example_runs(tmp_path):
    import json

    import pyarrow.parquet as pq

    env = {**os.environ, "OUT": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(
        ["bash", str(ROOT / "examples" / "quickstart.sh")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "teacher" in res.stdout and "kd" in res.stdout and "ua" in res.stdout
    teacher = next(line for line in res.stdout.splitlines() if line.startswith("teacher "))
    assert float(teacher.split()[1]) > 0.85  # the xa teacher, MFH Table 2 setting
    for name in ("baseline", "kd"):
        assert 0.55 < json.loads((tmp_path / f"{name}.metrics.json").read_text())["accuracy"] < 0.8
    general = next(line for line in res.stdout.splitlines() if line.startswith("general-teacher "))
    assert 0.6 < float(general.split()[-1]) < 0.85  # 10 of 50 channels kept: below the full teacher, above chance
    assert "recovered" in res.stdout and "general-kd" in res.stdout
    spectra = json.loads(pq.read_schema(tmp_path / "spectrum.parquet").metadata[b"cmkdtool"])["spectra"]
    ranks = {Path(s["input"].split(":")[0]).stem: s["rank_tol"] for s in spectra}
    assert ranks == {"ortho-baseline": 32, "ortho-feature": 8}  # collapse to D_g = 8 (CIBA Theorem 1)
    assert (tmp_path / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_av_digits_example_runs(tmp_path):
    """examples/av_digits on a small set: real PNG and WAV files -> extract -> pretrain -> distill kd -> eval."""
    import json
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("the espeak-ng program is not on PATH (a system package)")
    pytest.importorskip("sklearn", reason="scikit-learn is missing (the project's 'examples' extra)")
    env = {
        **os.environ,
        "PER_CLASS": "24",
        "EPOCHS": "15",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    script = ROOT / "examples" / "av_digits" / "run.sh"
    res = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line[:26].strip(): line.split() for line in res.stdout.splitlines() if "(" in line or "teacher" in line}
    assert {"audio teacher", "image baseline (no KD)", "image student (KD)"} <= set(rows)
    assert len(list((tmp_path / "data" / "audio").rglob("*.wav"))) == 240
    teacher = json.loads((tmp_path / "teacher.json").read_text())["accuracy"]
    baseline = json.loads((tmp_path / "baseline.json").read_text())["accuracy"]
    assert teacher > 0.5 and baseline > 0.2  # 10 classes: chance is 0.1
    from cmkdtool.io.checkpoints import read_metadata

    spec, record = read_metadata(tmp_path / "student.safetensors")
    assert record["method"] == "kd" and spec["arch"] == "cnn2d" and spec["inputs"][0]["shape"] == [1, 8, 8]
