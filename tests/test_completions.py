"""The static completion scripts offer the fixed values of Choice options (e.g. ``--arch``)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["linear", "mlp", "cnn2d", "cnn1d", "resnet18", "gru"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_option_choices(tmp_path):
    from cmkdtool.cli.completions import command_tree

    # (words on the command line, the last one being completed) -> expected COMPREPLY
    cases: list[tuple[list[str], list[str]]] = [
        (["cmkdtool", "pretrain", "--arch", ""], ARCHS),
        (["cmkdtool", "pretrain", "--arch", "c"], ["cnn2d", "cnn1d"]),
        (["cmkdtool", "pretrain", "--arch", "="], ARCHS),  # --arch=<TAB>: bash splits at '='
        (["cmkdtool", "pretrain", "--arch", "=", "res"], ["resnet18"]),
        (["cmkdtool", "pretrain", "--arch", "mlp", "--sched"], ["--schedule"]),
        (["cmkdtool", "pretrain", "--output", ""], []),  # a free value: files (none in the empty cwd)
    ]
    for path, node in command_tree().items():  # every Choice option of every command
        for flags, _help, _valued, choices in node["options"]:
            cases += [(["cmkdtool", *path, flag, ""], choices) for flag in flags if choices]
    assert any(c[0][1:] == ["distill", "feature", "--loss", ""] for c in cases)

    script = f"source {shlex.quote(str(ROOT / 'completions' / 'cmkdtool.bash'))}\n"
    for words, _ in cases:
        script += (
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
            'COMPREPLY=(); _cmkdtool; echo "${COMPREPLY[*]}"\n'
        )
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    got = out.stdout.splitlines()
    assert len(got) == len(cases), out.stderr
    for (words, want), line in zip(cases, got, strict=True):
        assert line.split() == want, f"{' '.join(words)!r}<TAB> offered {line!r}, expected {want}"
