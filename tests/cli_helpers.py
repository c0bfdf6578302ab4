"""Helpers the command-line test modules share: run a command in-process (it must succeed), read a history or a
checkpoint's tensors, and check a usage error's one line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.io.checkpoints import read_checkpoint

runner = CliRunner()


def run(*args):
    """``cmkdtool ARGS`` in this process; fails the test unless it exits 0."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def history(path) -> list[dict]:
    """The rows of ``PATH.history.jsonl``."""
    return [json.loads(x) for x in open(f"{path}.history.jsonl")]


def tensors(path):
    """A checkpoint's tensors by name."""
    return read_checkpoint(path)[0]


def refused(*args) -> str:
    """``cmkdtool ARGS`` must be a usage error (status 2) of one line ``cmkdtool: error: ...``; returns it."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmkdtool: error: "), res.stderr
    return lines[0]
