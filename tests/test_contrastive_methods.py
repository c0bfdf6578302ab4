"""distill crd | crcd | ccl | gmc | nce end to end: options and defaults in --help, learning on MFH data, the
training-only modules (heads, memory banks, composition) left out of the saved student, a bit-identical --resume
with the memory banks as method state, the one-line usage errors, and the registry."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from cli_helpers import history, run, tensors
from cli_helpers import refused as _refused
from typer.testing import CliRunner

from cmkdtool.io.checkpoints import read_metadata
from cmkdtool.io.tables import build_table, write_table

runner = CliRunner()
METHODS = ("ccl", "crcd", "crd", "gmc", "nce")
SMALL = ["--arch", "mlp", "--hidden", "8", "--epochs", "15", "--lr", "0.01", "-q"]
# the memory-bank methods on a CPU: few negatives (the defaults are 16384 and 500); CRCD's relation scores are
# batch^2 x (1 + K) x feat_dim floats per side, so it also gets narrow heads and smaller batches
CHEAP = {"crd": ["--nce-k", "32"], "crcd": ["--nce-k", "16", "--feat-dim", "16", "--batch-size", "32"]}
RELATIONAL = {  # RepDistiller's frame, shared by all five
    "--student-layer": "embedding",
    "--teacher-layer": "embedding",
    "--task-weight": "1.0",
    "--kd-weight": "0.0",
    "--kd-temperature": "4.0",
}
MEMORY = {"--feat-dim": "128", "--nce-m": "0.5", "--mode": "exact"}
OWN = {
    "crd": {**MEMORY, "--crd-weight": "0.8", "--nce-k": "16384", "--nce-t": "0.07", "--negatives": "sample"},
    "crcd": {**MEMORY, "--crcd-weight": "0.8", "--nce-k": "500", "--nce-t": "0.05"},
    "ccl": {
        "--temperature": "0.5",
        "--nce-weight": "1.0",
        "--jsd-weight": "1.0",
        "--jsd": "sym-kl",
        "--projector": "auto",
    },
    "gmc": {"--gmc-weight": "1.0", "--temperature": "0.3", "--common-dim": "60", "--latent-dim": "60"},
    "nce": {"--nce-weight": "1.0", "--positives": "instance", "--temperature": "0.07", "--feat-dim": "128"},
}
CHOICES = {
    "crd": {"--mode": "exact|relax", "--negatives": "sample|shared"},
    "crcd": {"--mode": "exact|relax"},
    "ccl": {"--jsd": "sym-kl|js", "--projector": "auto|linear|none"},
    "gmc": {},
    "nce": {"--positives": "instance|class"},
}
TERM = {"crd": "crd", "crcd": "crcd", "ccl": "nce_vm", "gmc": "gmc", "nce": "nce"}
CCL_TERMS = {"nce_vm", "nce_va", "nce_ma", "nce_vm_m", "jsd", "jsd_m", "ce", "ce_m"}
# attribute names of the methods' training-only modules (GMC's shared ``head`` is an Embed: ``head.linear.*``,
# never the student's classifier ``head.<i>.*``)
TRAINING_ONLY = ("memory", "embed", "composition", "head.linear", "process", "projector", "sampler")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(mfh_table, tmp_path_factory):
    """A small mlp teacher on xa (16-d embedding; the students below have 8-d ones: widths differ)."""
    path = tmp_path_factory.mktemp("contrast") / "teacher.safetensors"
    run("pretrain", mfh_table, "-i", "xa", "--arch", "mlp", "--hidden", "16", "--epochs", "40", "--lr", "0.01", "-q",
        "-o", path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def plain_student(mfh_table, tmp_path_factory):
    """The tensors of a pretrained student of the distilled students' architecture (mlp, 8 hidden, on xa)."""
    path = tmp_path_factory.mktemp("plain") / "student.safetensors"
    run("pretrain", mfh_table, "-i", "xa", "--arch", "mlp", "--hidden", "8", "--epochs", "1", "-q", "-o", path)
    return tensors(path)


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    """A tiny multi-label table (3 classes from the signs of xa's first channels) and a 1-epoch teacher on it."""
    rng = np.random.default_rng(0)
    n = 60
    xa = rng.normal(size=(n, 6)).astype(np.float32)
    labels = [np.flatnonzero(r).tolist() for r in xa[:, :3] > 0]
    split = np.where(np.arange(n) < 40, "train", "val")
    d = tmp_path_factory.mktemp("ml")
    write_table(build_table([f"r{i}" for i in range(n)], {"xa": xa}, labels=labels, split=split), d / "ml.parquet")
    run("pretrain", d / "ml.parquet", "-i", "xa", "--arch", "mlp", "--hidden", "8", "--epochs", "1", "-q",
        "-o", d / "t.safetensors")  # fmt: skip
    return d / "ml.parquet", d / "t.safetensors"


def _help(method):
    out = " ".join(run("distill", method, "--help").stdout.split())
    return re.sub(r"(\w)- (\w)", r"\1-\2", out)  # the 80-column help may break a value after a hyphen


def _default(out, flag):
    """The ``[default: ...]`` of ``flag``'s own entry in the options list (its metavar follows it)."""
    m = re.search(r"(?<![\w-])" + re.escape(flag) + r" <([^>]+)> (?:(?!\[default:).)*\[default: ([^\]]+)\]", out)
    assert m, f"{flag} has no entry with a default"
    return m.group(1), m.group(2)


@pytest.mark.parametrize("method", METHODS)
def test_help_lists_the_options_with_their_defaults(method):
    out = _help(method)
    for flag, default in {**RELATIONAL, **OWN[method]}.items():
        assert _default(out, flag)[1] == default, flag
    for flag, allowed in CHOICES[method].items():
        assert _default(out, flag)[0] == allowed, flag
    # every field of the method's dataclass is an option with the dataclass's default (and nothing was left out
    # of the lists above)
    from cmkdtool.methods.registry import get

    fields = dataclasses.fields(get(method).params)
    assert {"--" + f.name.replace("_", "-") for f in fields} == set(RELATIONAL) | set(OWN[method])
    for f in fields:
        assert _default(out, "--" + f.name.replace("_", "-"))[1] == str(f.default), f.name
    assert f"docs/methods.md#{method}" in out


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("crd", CHEAP["crd"]),
        ("crd", [*CHEAP["crd"], "--negatives", "shared"]),
        ("crd", [*CHEAP["crd"], "--mode", "relax"]),
        ("crcd", CHEAP["crcd"]),
        ("ccl", []),
        ("ccl", ["--jsd", "js"]),
        ("gmc", []),
        ("nce", []),
        ("nce", ["--positives", "class"]),
    ],
)
def test_contrastive_methods_learn(mfh_table, teacher, plain_student, tmp_path, method, extra):
    """On xa (the teacher's modality) an 8-d student clearly beats chance (0.5) and the contrastive term falls;
    the saved student is the student only: the same tensors as a pretrained one of its architecture."""
    out = tmp_path / f"{method}.safetensors"
    run("distill", method, mfh_table, "-t", teacher, "-i", "xa", *SMALL, *extra, "-o", out)
    hist = history(out)
    terms = CCL_TERMS if method == "ccl" else {TERM[method], "ce"}
    assert {k for k in hist[0] if k.startswith("train/")} == {f"train/{t}" for t in terms | {"loss"}}
    term = f"train/{TERM[method]}"
    assert all(math.isfinite(r[term]) for r in hist)
    assert hist[-1][term] < 0.9 * hist[0][term]
    assert max(r["val/accuracy"] for r in hist) > 0.7
    if method == "ccl":  # the composition's NCE with the teacher falls too
        assert hist[-1]["train/nce_ma"] < hist[0]["train/nce_ma"]
        assert hist[-1]["train/ce_m"] < hist[0]["train/ce_m"]
    # training-only modules are not deployed
    saved = tensors(out)
    assert not [k for k in saved if k.startswith(TRAINING_ONLY)], list(saved)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in plain_student.items()}
    train = read_metadata(out)[1]
    assert train["method"] == method
    assert train["params"]["student_layer"] == "embedding"


def test_shared_and_sampled_negatives_start_at_the_same_order(mfh_table, teacher, tmp_path):
    """The two estimators of CRD's objective: finite, positive first-epoch losses of the same order."""
    first = {}
    for negatives in ("sample", "shared"):
        out = tmp_path / f"{negatives}.safetensors"
        run("distill", "crd", mfh_table, "-t", teacher, "-i", "xa", *SMALL[:-3], "--epochs", "1", "-q",
            *CHEAP["crd"], "--negatives", negatives, "-o", out)  # fmt: skip
        first[negatives] = history(out)[0]["train/crd"]
    assert all(math.isfinite(v) and v > 0 for v in first.values()), first
    assert 0.5 < first["sample"] / first["shared"] < 2, first


@pytest.mark.parametrize(
    ("method", "extra"),
    [("crd", []), ("crd", ["--negatives", "shared", "--mode", "relax"]), ("crcd", [])],
)
def test_resume_is_bit_identical_with_the_memory_banks(mfh_table, teacher, tmp_path, resume_check, method, extra):
    """Interrupted after epoch 2 of 4, the run resumes from its training state (memory banks and Z included) to
    the uninterrupted run's weights, history and final training state."""
    args = ["distill", method, mfh_table, "-t", teacher, "-i", "xa", "--arch", "mlp", "--hidden", "8",
            "--epochs", "4", "--lr", "0.01", "--dropout", "0.3", *CHEAP[method], *extra, "-q"]  # fmt: skip
    full, part = tmp_path / "full" / "s.safetensors", tmp_path / "part" / "s.safetensors"
    full.parent.mkdir()
    part.parent.mkdir()
    run(*args, "-o", full)
    saved, _ = resume_check.interrupt(args, part, 2)
    banks = {k for k in saved if "memory_student" in k or "memory_teacher" in k}
    assert banks == {"model.memory.memory_student", "model.memory.memory_teacher"}
    assert "model.memory.z" in saved and bool((saved["model.memory.z"] > 0).all())  # Z was set at the first step
    final, _ = resume_check.resume_and_compare(args, full, part, 4)
    assert not torch.equal(final["model.memory.memory_student"], saved["model.memory.memory_student"])  # moved


@pytest.mark.parametrize(
    ("method", "extra", "fix"),
    [
        ("crd", ["--nce-k", "8", "--mode", "relax"], "--mode exact"),
        ("crcd", ["--nce-k", "8", "--mode", "relax"], "--mode exact"),
        ("ccl", [], "multiclass"),
        ("nce", ["--positives", "class"], "--positives instance"),
    ],
)
def test_class_aware_options_refuse_a_multilabel_table(multilabel, tmp_path, method, extra, fix):
    table, teacher = multilabel
    out = tmp_path / "x.safetensors"
    line = _refused("distill", method, table, "-t", teacher, "-i", "xa", "--hidden", "8", "--epochs", "1", *extra,
                    "-o", out)  # fmt: skip
    assert "multilabel" in line and fix in line, line
    assert not out.exists() and not (tmp_path / "x.safetensors.state.safetensors").exists()


@pytest.mark.parametrize(
    ("method", "extra"),
    [("crd", ["--nce-k", "8"]), ("crcd", ["--nce-k", "8", "--feat-dim", "8"]), ("gmc", []), ("nce", [])],
)
def test_instance_level_methods_run_on_a_multilabel_table(multilabel, tmp_path, method, extra):
    """Exact positives and in-batch/instance negatives need no single labels."""
    table, teacher = multilabel
    out = tmp_path / "x.safetensors"
    run("distill", method, table, "-t", teacher, "-i", "xa", "--hidden", "8", "--epochs", "2", "-q", *extra, "-o", out)
    hist = history(out)
    assert math.isfinite(hist[-1][f"train/{TERM[method]}"]) and "val/map" in hist[-1]


@pytest.mark.parametrize(
    ("method", "option", "value", "message"),
    [
        ("crd", "--nce-m", "1.0", "--nce-m must be in [0, 1)"),
        ("crd", "--nce-m", "-0.1", "--nce-m must be in [0, 1)"),
        ("crd", "--nce-k", "0", "--nce-k must be >= 1"),
        ("crd", "--nce-t", "0", "--nce-t must be > 0"),
        ("crd", "--feat-dim", "0", "--feat-dim must be >= 1"),
        ("crd", "--crd-weight", "-1", "--crd-weight must be >= 0"),
        ("crd", "--nce-t", "nan", "--nce-t"),
        ("crd", "--negatives", "all", "--negatives"),
        ("crd", "--mode", "soft", "--mode"),
        ("crcd", "--nce-k", "0", "--nce-k must be >= 1"),
        ("crcd", "--nce-m", "1", "--nce-m must be in [0, 1)"),
        ("ccl", "--temperature", "0", "--temperature must be > 0"),
        ("ccl", "--jsd", "kl", "--jsd"),
        ("gmc", "--common-dim", "0", "--common-dim must be >= 1"),
        ("gmc", "--latent-dim", "0", "--latent-dim must be >= 1"),
        ("nce", "--temperature", "-1", "--temperature must be > 0"),
        ("nce", "--positives", "batch", "--positives"),
    ],
)
def test_out_of_range_options_are_refused(tmp_path, method, option, value, message):
    """Checked before any data is read: the table and teacher need not exist."""
    out = tmp_path / "x.safetensors"
    line = _refused("distill", method, tmp_path / "none.parquet", "-t", tmp_path / "none.safetensors", "-i", "xa",
                    option, value, "-o", out)  # fmt: skip
    assert message in line, line
    assert not out.exists()


def test_library_reaches_the_methods_and_losses(mfh_table, teacher):
    import cmkdtool.losses as losses
    from cmkdtool.engine.config import TrainConfig
    from cmkdtool.losses import contrastive
    from cmkdtool.methods.registry import get, methods
    from cmkdtool.nn.contrast import ContrastMemory, Embed, NegativeSampler
    from cmkdtool.nn.specs import ModelOptions
    from cmkdtool.pipelines.train import run_distill

    registered = methods()
    assert set(METHODS) <= set(registered)
    for name in METHODS:
        info = get(name)
        assert info.name == name and info.cls.name == name and info.summary
        assert dataclasses.is_dataclass(info.params()) and info.params().task_weight == 1.0
    assert get("crd").params().nce_k == 16384 and get("crcd").params().nce_k == 500
    for name in contrastive.__all__:
        assert getattr(losses, name) is getattr(contrastive, name)
    # a library run with a params object, its memory banks sized by the table and left out of the student
    params = get("crd").params(nce_k=16, feat_dim=8, negatives="shared")
    trained = run_distill("crd", [str(mfh_table)], str(teacher), ["xa"], params=params,
                          model=ModelOptions(hidden=[8]), config=TrainConfig(epochs=2, lr=0.01), device="cpu",
                          quiet=True)  # fmt: skip
    assert {"train/crd", "train/ce"} <= set(trained.fit.history[-1])
    assert not any(k.startswith(TRAINING_ONLY) for k in trained.model.state_dict())
    # the stateful parts compose as the method uses them
    memory = ContrastMemory(10, 4, 8, momentum=0.5)
    sampler = NegativeSampler(torch.arange(8), 10, torch.tensor([0, 1] * 5))
    index = torch.tensor([0, 1, 2])
    neg = sampler.negatives(index, 5)
    assert neg.shape == (3, 5) and bool((neg < 8).all())
    assert bool((sampler.label_of[neg] != sampler.label_of[index].unsqueeze(1)).all())  # other classes only
    v = Embed(3, 4)(torch.randn(3, 3))
    scores = contrastive.crd_scores(v, memory.memory_teacher, torch.cat([index[:, None], neg], 1), 0.07)
    out_s, out_t = memory.normalise(scores, scores)
    assert math.isfinite(float(contrastive.crd_nce(out_s, memory.n_data).detach()))
