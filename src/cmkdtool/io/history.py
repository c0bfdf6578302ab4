"""Per-epoch training history, written as JSON lines next to a command's output (``<out>.history.jsonl``)."""

from __future__ import annotations

import json
import os

from cmkdtool.io.atomic import atomic_write_text


def history_path(output: str | os.PathLike) -> str:
    return f"{output}.history.jsonl"


def write_history(output: str | os.PathLike, rows: list[dict]) -> str:
    path = history_path(output)
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def read_history(output: str | os.PathLike) -> list[dict]:
    with open(history_path(output)) as f:
        return [json.loads(line) for line in f if line.strip()]
