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


class ResumeCheck:
    """Interrupt a training command right after its state is saved at chosen epochs, resume it, and compare with
    the uninterrupted run (``resume_check`` fixture): the resume tests of the methods with state of their own."""

    def __init__(self, monkeypatch):
        from cmkdtool.engine import trainer

        self.trainer, self.monkeypatch = trainer, monkeypatch
        monkeypatch.setattr(trainer, "STATE_INTERVAL_S", 0.0)  # a state after every epoch: no reliance on wall time

    def interrupt(self, args, out, stop: int):
        """Run ``args -o out``, stopped (as by Ctrl-C) after the state of epoch ``stop`` is written; return that
        state's (tensors, header)."""
        from typer.testing import CliRunner

        from cmkdtool.cli.app import app
        from cmkdtool.engine.state import load_state

        real_save = self.trainer.Trainer.save

        def save_then_stop(trainer, epoch):
            real_save(trainer, epoch)
            if epoch == stop:
                raise KeyboardInterrupt

        self.monkeypatch.setattr(self.trainer.Trainer, "save", save_then_stop)
        try:
            stopped = CliRunner().invoke(app, [str(a) for a in [*args, "-o", out]])
        finally:
            self.monkeypatch.setattr(self.trainer.Trainer, "save", real_save)
        assert stopped.exit_code == 130 and not os.path.exists(out), stopped.output
        saved, header = load_state(f"{out}.state.safetensors")
        assert header["epoch"] == stop
        return saved, header

    def resume_and_compare(self, args, full, part, epochs: int):
        """Resume ``part`` to the end and check it equals ``full``: checkpoint tensors, history and the final
        training state (every tensor, the epoch). Returns the final states' (tensors, header) of ``part``."""
        import json

        import torch
        from typer.testing import CliRunner

        from cmkdtool.cli.app import app
        from cmkdtool.engine.state import load_state
        from cmkdtool.io.checkpoints import read_checkpoint

        res = CliRunner().invoke(app, [str(a) for a in [*args, "--resume", "-o", part]])
        assert res.exit_code == 0, res.output
        a, b = read_checkpoint(full)[0], read_checkpoint(part)[0]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
        hist = [[json.loads(x) for x in open(f"{p}.history.jsonl")] for p in (full, part)]
        assert hist[0] == hist[1] and [r["epoch"] for r in hist[1]] == list(range(1, epochs + 1))
        (sa, ha), (sb, hb) = load_state(f"{full}.state.safetensors"), load_state(f"{part}.state.safetensors")
        assert sa.keys() == sb.keys() and ha["epoch"] == hb["epoch"] == epochs
        assert ha == hb  # best epoch and metrics, history, optimizers, fingerprint
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
        return sb, hb


@pytest.fixture
def resume_check(monkeypatch):
    return ResumeCheck(monkeypatch)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster (no oversubscription on a busy 2-core machine). Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def privileged_and_ordinary(mfh_table, tmp_path_factory):
    """OS-MD's two pretrained inputs on the mfh table: the privileged teacher (xa, mlp 32 hidden) and the
    ordinary model (xb, mlp 16 hidden), trained once per session."""
    from typer.testing import CliRunner

    from cmkdtool.cli.app import app

    d = tmp_path_factory.mktemp("privileged")
    paths = {"priv": d / "priv.safetensors", "ord": d / "ord.safetensors"}
    for col, hidden, epochs, key in (("xa", "32", "30", "priv"), ("xb", "16", "20", "ord")):
        args = ["pretrain", mfh_table, "-i", col, "--arch", "mlp", "--hidden", hidden, "--epochs", epochs,
                "--lr", "0.01", "-q", "-o", paths[key]]  # fmt: skip
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    return paths
