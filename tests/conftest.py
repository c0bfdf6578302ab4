"""Shared fixtures: small synthetic tables written once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("CMKDTOOL_DEVICE", "cpu")


@pytest.fixture(scope="session")
def mfh_table(tmp_path_factory):
    """synth mfh at the paper's Table 2 setting (gamma 0.5, 200 train / 200 val / 1000 test rows)."""
    from cmkdtool.data.synth import synth_mfh
    from cmkdtool.io.tables import build_table, write_table

    d = synth_mfh(gamma=0.5, seed=0)
    path = tmp_path_factory.mktemp("mfh") / "data.parquet"
    write_table(
        build_table(
            d.ids,
            {"xa": d.xa, "xb": d.xb},
            label=d.label,
            split=d.split,
            meta={"class_names": d.class_names, "synth": d.meta},
        ),
        path,
    )
    return path
