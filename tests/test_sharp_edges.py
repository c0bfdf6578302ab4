"""Sharp edges found when the project was tried as a new user would: each mistake gets the same one-line
answer on every command, progress bars only for a person, stdout only for data."""

from __future__ import annotations

import sys

import pytest
import torch
from typer.testing import CliRunner

from cmkdtool.cli.app import app


def invoke(*args, input: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def one_line(res, code: int) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == code, (res.exit_code, res.stderr, res.exception)
    assert len(lines) == 1 and lines[0].startswith("cmkdtool: error:"), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(mfh_table, tmp_path_factory):
    d = tmp_path_factory.mktemp("edges")
    res = invoke(
        "pretrain", mfh_table, "-i", "xa", "--arch", "linear", "--epochs", "2", "-q", "-o", d / "t.safetensors"
    )
    assert res.exit_code == 0, res.stderr
    return d / "t.safetensors"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_an_error_even_when_no_model_runs(mfh_table, trained):
    for args in (["spectrum", mfh_table], ["spectrum", trained], ["spectrum", trained, "--data", mfh_table]):
        line = one_line(invoke(*args, "--device", "cuda"), 1)
        assert "cuda" in line.lower()


def test_stdin_twice_is_a_usage_error_everywhere(trained):
    for args in (
        ["pretrain", "-", "-", "-i", "xa", "-o", "o.safetensors"],
        ["eval", trained, "-", "-"],
        ["spectrum", "-", "-"],
    ):
        assert "only once" in one_line(invoke(*args, input=b""), 2)


@pytest.mark.parametrize("topk", ["0", "-1", "1,0", ""])
def test_eval_topk_must_be_positive_and_is_named(mfh_table, trained, topk):
    assert "--topk" in one_line(invoke("eval", trained, mfh_table, "--topk", topk), 2)


def test_help_lists_commands_in_pipeline_order_with_whole_summaries():
    out = invoke("--help").stdout
    order = ["synth", "extract", "table", "pretrain", "rank-salience", "fit-bottleneck", "distill", "eval", "spectrum"]
    listed = [ln.split()[0] for ln in out.split("Commands:")[1].splitlines() if ln.startswith("  ") and ln[2] != " "]
    assert listed == order
    assert "(Eq.\n" not in out and not out.rstrip().endswith("(Eq.")
    assert "(App. B.2, Eq. 27)" in invoke("synth", "--help").stdout


def test_mask_seed_help_names_evals_default():
    out = " ".join(invoke("eval", "--help").stdout.split())
    assert "0 for eval" in out


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from cmkdtool.engine.distributed import DistContext
    from cmkdtool.engine.trainer import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not _progress(False, DistContext())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _progress(False, DistContext()) and not _progress(True, DistContext())
    assert not _progress(False, DistContext(rank=1, world_size=2))


def test_torch_hub_download_message_goes_to_stderr(monkeypatch, capsys):
    from cmkdtool.extract import backbones

    class Models:
        @staticmethod
        def get_model(name, weights=None, progress=True):
            print('Downloading: "https://download.pytorch.org/x.pth" to /cache/x.pth')  # what torch hub prints
            return "model"

    monkeypatch.setattr(backbones, "_torchvision_models", lambda: Models)
    monkeypatch.setattr(backbones, "weights_file", lambda w: "/cache/x.pth")
    assert backbones._pretrained("resnet18", object(), quiet=False) == "model"
    out = capsys.readouterr()
    assert out.out == "" and "Downloading" in out.err
    backbones._pretrained("resnet18", object(), quiet=True)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
