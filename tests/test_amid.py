"""distill amid (Chen et al., CVPR 2023): the losses of losses/amid.py against the hand values of amid-osmd.md
(sections 1.3, 1.9 and 3.9), CCL's NCELoss and its parity fixtures, independent references, gradients and
stability; Eq. 14, the D2 normaliser against a Monte-Carlo estimate, the same-class pairing; the method's gradient
bookkeeping on the engine (discriminators stepped only by their own optimizer, untouched during warm-up); and the
command end to end: learning, the online teacher's accuracy, the dynamic weights, the student-only checkpoint, a
bit-identical --resume, the usage errors and the ablations."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import history, run
from cli_helpers import refused as _refused
from typer.testing import CliRunner

from cmkdtool.data.tensors import load_tensor_data
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.trainer import Trainer, seed_everything
from cmkdtool.io.checkpoints import read_checkpoint
from cmkdtool.io.tables import build_table, read_tables, write_table
from cmkdtool.losses.amid import (
    adversarial_loss,
    discriminator_loss,
    expected_pair_rows,
    lambda_update,
    mi_bound_loss,
    same_class_pairs,
)
from cmkdtool.losses.contrastive import class_nce
from cmkdtool.methods import registry
from cmkdtool.methods.base import DistillContext
from cmkdtool.nn.models import new_model
from cmkdtool.nn.specs import ModelOptions

runner = CliRunner()
SMALL = ["--arch", "mlp", "--hidden", "16", "--lr", "0.01", "-q"]
LAM0 = (0.2689414213699951, 0.7310585786300049)  # softmax(0, 1)
AMID_TERMS = ("train/mi_s", "train/mi_a", "train/adv", "train/disc_loss")
DISC = ("disc1.", "disc2.")


def _det(shape: tuple[int, ...], k: float, s: float = 0.37) -> torch.Tensor:
    """The spec's deterministic inputs (amid-osmd.md, section 3.9): sin(s * arange(prod(shape)) + k)."""
    return torch.sin(s * torch.arange(math.prod(shape), dtype=torch.float64) + k).reshape(shape)


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _long(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------- Eq. 8: hand values, CCL, parity, references

SPEC_M, SPEC_S, SPEC_Y = _det((6, 5), 0), _det((6, 5), 4), _long([0, 1, 1, 2, 0, 1])


def test_eq8_hand_values_and_ccl_nce():
    got_sum = mi_bound_loss(SPEC_M, SPEC_S, SPEC_Y, 0.5, "sum")
    got_mean = mi_bound_loss(SPEC_M, SPEC_S, SPEC_Y, 0.5, "mean")
    assert got_sum.dtype == got_mean.dtype == torch.float64 and got_sum.ndim == got_mean.ndim == 0
    assert got_sum.item() == pytest.approx(9.42243657453963, rel=1e-12)
    assert got_mean.item() == pytest.approx(3.9308349280726844, rel=1e-12)
    assert mi_bound_loss(SPEC_M, SPEC_S, SPEC_Y, 0.5).item() == got_sum.item()  # sum is the default (Eq. 8)
    # mean is CCL's NCELoss; CCL's 1e-10 inside its logs is the only difference
    assert got_mean.item() == pytest.approx(class_nce(SPEC_M, SPEC_S, SPEC_Y, 0.5).item(), rel=1e-8, abs=1e-8)


PARITY_DIR = Path(os.environ.get("CMKDTOOL_PARITY_DIR") or Path(__file__).resolve().parents[2] / "shared" / "parity")


def _ccl_cases() -> list:
    manifest = PARITY_DIR / "manifest.json"
    if not manifest.is_file():
        reason = f"no parity fixtures: {manifest} is missing (set CMKDTOOL_PARITY_DIR to a folder with manifest.json)"
        return [pytest.param(None, None, id="no-fixtures", marks=pytest.mark.skip(reason=reason))]
    cases = [pytest.param(n, e, id=n) for n, e in json.loads(manifest.read_text()).items() if n.startswith("ccl_nce")]
    if not cases:
        return [pytest.param(None, None, id="no-cases", marks=pytest.mark.skip(reason=f"{manifest}: no ccl_nce_*"))]
    return cases


@pytest.mark.parametrize(("name", "entry"), _ccl_cases())
def test_eq8_mean_matches_ccl_parity_fixtures(name, entry):
    """``mean`` on CCL's fixtures. CCL evaluates log(p + 1e-10) and log(1 - p + 1e-10); Eq. 8 here has no
    epsilon, so the two differ by at most the mean of eps/p (positives) and eps/(1-p) (negatives): below 1e-9 at
    T = 1, but about 1e-7 relative at T = 0.1 where some p are ~1e-6. The check is: rel 1e-8 plus that bound, and
    the exact (epsilon-free) CCL formula to 1e-12."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    t = load_file(str(PARITY_DIR / entry["inputs"]))
    f1, f2, labels = t["f1"].double(), t["f2"].double(), t["labels"]
    temp = float(name.split("_T")[-1])
    want = entry["expected"]["loss"]
    got = mi_bound_loss(f1, f2, labels, temp, "mean")
    assert got.dtype == torch.float64 and got.ndim == 0

    p = torch.softmax(F.normalize(f1, dim=1) @ F.normalize(f2, dim=1).T / temp, dim=1)
    pos = (labels[:, None] == labels[None]).double()
    neg = 1 - pos

    def ccl(eps: float) -> float:
        lp, ln = torch.log(p + eps), torch.log(1 - p + eps)
        return -((lp * pos).sum(1) / pos.sum(1) + (ln * neg).sum(1) / neg.sum(1)).mean().item()

    assert ccl(1e-10) == pytest.approx(want, rel=1e-12)  # the reference formula, read right
    assert got.item() == pytest.approx(ccl(0.0), rel=1e-12)
    eps_bound = ((1e-10 / p * pos).sum(1) / pos.sum(1) + (1e-10 / (1 - p) * neg).sum(1) / neg.sum(1)).mean().item()
    assert abs(got.item() - want) <= 1e-8 * abs(want) + eps_bound, (got.item(), want, eps_bound)


def _ref_eq8(m: np.ndarray, s: np.ndarray, y: list[int], tau: float, reduction: str) -> float:
    """Eq. 8 with plain loops: h = softmax over all B candidates of cos/tau; -(1/B) sum_i [sum_P log h + sum_N
    log(1 - h)], each inner sum divided by its size for ``mean`` (an empty N contributes 0)."""
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    b = len(y)
    total = 0.0
    for i in range(b):
        logits = [float(np.dot(m[i], s[u])) / tau for u in range(b)]
        top = max(logits)
        den = sum(math.exp(v - top) for v in logits)
        h = [math.exp(v - top) / den for v in logits]
        pos = [math.log(h[u]) for u in range(b) if y[u] == y[i]]
        neg = [math.log1p(-h[u]) for u in range(b) if y[u] != y[i]]
        if reduction == "mean":
            total += sum(pos) / len(pos) + (sum(neg) / len(neg) if neg else 0.0)
        else:
            total += sum(pos) + sum(neg)
    return -total / b


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize(("seed", "tau", "y"), [(1, 0.5, [0, 1, 2, 3, 1, 0, 0, 2, 1, 1]), (2, 0.2, [2, 2, 0, 1, 2])])
def test_eq8_against_an_independent_loop(seed, tau, y, reduction):
    m, s = _rand(len(y), 7, seed=seed), _rand(len(y), 7, seed=seed + 100)
    got = mi_bound_loss(m, s, _long(y), tau, reduction).item()
    assert got == pytest.approx(_ref_eq8(m.numpy(), s.numpy(), y, tau, reduction), rel=1e-11)
    # float32 inputs give a float32 result close to the float64 one
    got32 = mi_bound_loss(m.float(), s.float(), _long(y), tau, reduction)
    assert got32.dtype == torch.float32 and got32.item() == pytest.approx(got, rel=1e-5)


def test_eq8_one_class_batch_is_finite_and_has_no_negative_term():
    m, s = _rand(5, 4, seed=3), _rand(5, 4, seed=4)
    y = _long([2, 2, 2, 2, 2])
    for reduction in ("sum", "mean"):
        got = mi_bound_loss(m, s, y, 0.5, reduction)
        assert torch.isfinite(got)
        assert got.item() == pytest.approx(_ref_eq8(m.numpy(), s.numpy(), y.tolist(), 0.5, reduction), rel=1e-12)
    # every candidate is positive: sum = -(1/B) sum_i sum_u log h_iu; mean = -(1/B) sum_i mean_u log h_iu
    logh = torch.log_softmax(
        torch.nn.functional.normalize(m, dim=1) @ torch.nn.functional.normalize(s, dim=1).T / 0.5, 1
    )
    assert mi_bound_loss(m, s, y, 0.5, "sum").item() == pytest.approx(-logh.sum(1).mean().item(), rel=1e-12)
    assert mi_bound_loss(m, s, y, 0.5, "mean").item() == pytest.approx(-logh.mean(1).mean().item(), rel=1e-12)


def test_eq8_refuses_a_single_row_and_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        mi_bound_loss(_rand(1, 4, seed=0), _rand(1, 4, seed=1), _long([0]), 0.5)
    with pytest.raises(ValueError, match="reduction"):
        mi_bound_loss(SPEC_M, SPEC_S, SPEC_Y, 0.5, "max")
    with pytest.raises(ValueError, match="batch sizes differ"):
        mi_bound_loss(SPEC_M, SPEC_S[:5], SPEC_Y, 0.5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_eq8_gradcheck(reduction):
    m = _rand(5, 3, seed=5).requires_grad_()
    s = _rand(5, 3, seed=6).requires_grad_()
    y = _long([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda a, c: mi_bound_loss(a, c, y, 0.7, reduction), (m, s))
    # a one-class batch too (the negative term vanishes)
    assert torch.autograd.gradcheck(lambda a, c: mi_bound_loss(a, c, _long([1] * 5), 0.7, reduction), (m, s))


def test_adversarial_and_discriminator_losses_values_and_gradcheck():
    d1s, d2p = _rand(6, seed=7).requires_grad_(), _rand(6, seed=8).requires_grad_()
    d1t, d2t = _rand(6, seed=9).requires_grad_(), _rand(6, seed=10).requires_grad_()
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    lam1, lam2, dn = 0.3, 0.7, 3.5

    def nlog_sig(x):  # -log sigmoid(x)
        return -torch.log(torch.sigmoid(x))

    adv = adversarial_loss(d1s, d2p, w, lam1, lam2, dn)
    want = lam1 * nlog_sig(d1s).mean() + lam2 * (w * nlog_sig(d2p)).sum() / dn
    assert adv.ndim == 0 and adv.item() == pytest.approx(want.item(), rel=1e-12)
    disc = discriminator_loss(d1t, d1s, d2t, d2p, w, lam1, lam2, dn)
    want = lam1 * (nlog_sig(d1t) + nlog_sig(-d1s)).mean() + lam2 * (w * (nlog_sig(d2t) + nlog_sig(-d2p))).sum() / dn
    assert disc.ndim == 0 and disc.item() == pytest.approx(want.item(), rel=1e-12)
    # rows outside V do not reach D2's terms
    g = torch.autograd.grad(disc, d2p)[0]
    assert torch.all(g[w == 0] == 0) and torch.all(g[w == 1] != 0)

    assert torch.autograd.gradcheck(lambda a, b: adversarial_loss(a, b, w, lam1, lam2, dn), (d1s, d2p))
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: discriminator_loss(a, b, c, d, w, lam1, lam2, torch.tensor(dn, dtype=torch.float64)),
        (d1t, d1s, d2t, d2p),
    )
    # lam as 0-d tensors (the method's buffers)
    lt = torch.tensor([lam1, lam2], dtype=torch.float64)
    assert adversarial_loss(d1s, d2p, w, lt[0], lt[1], dn).item() == pytest.approx(adv.item(), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eq8_is_stable_at_a_low_temperature(dtype):
    """tau = 0.01 on nearly identical rows (cosines ~1, h ~ 1/B everywhere, an anchor's exact copy among the
    candidates): finite values and gradients, and the loop reference in float64."""
    y = _long([0, 1, 0, 1, 2, 2])
    base = _rand(1, 8, seed=11)
    near = base + 1e-6 * _rand(6, 8, seed=12)
    for m, s in ((near, near.clone()), (near, base + 1e-6 * _rand(6, 8, seed=13))):
        for reduction in ("sum", "mean"):
            m_, s_ = m.to(dtype).clone().requires_grad_(), s.to(dtype).clone().requires_grad_()
            loss = mi_bound_loss(m_, s_, y, 0.01, reduction)
            gm, gs = torch.autograd.grad(loss, (m_, s_))
            assert torch.isfinite(loss), (reduction, loss)
            assert torch.isfinite(gm).all() and torch.isfinite(gs).all(), reduction
            want = _ref_eq8(m.numpy(), s.numpy(), y.tolist(), 0.01, reduction)
            assert loss.item() == pytest.approx(want, rel=1e-9 if dtype == torch.float64 else 1e-4)


# M_0 equals S_1 (another class) and is orthogonal to S_0; M_1 likewise: each anchor's negative takes almost all of
# the softmax mass, h = 1 - e^(-1/tau) / (1 + e^(-1/tau)). Exact: L = 2 (1/tau + log(1 + e^(-1/tau))) (sum and
# mean agree at B = 2).
DOMINANT_M = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
DOMINANT_S = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("tau", "dtype"),
    [
        (0.5, torch.float64),
        (0.5, torch.float32),
        (0.05, torch.float64),
        (0.05, torch.float32),
        (0.01, torch.float64),
        (0.01, torch.float32),
    ],
)
def test_eq8_is_finite_when_a_negative_dominates(tau, dtype):
    """The spec (1.3) asks for log(1 - h) = logsumexp_{j != u} s_ij - logsumexp_j s_ij, exact. Taken as
    log1mexp(log h) it is -inf once 1 - h is below the precision of s (log h rounds to 0; float64: tau <= ~0.02
    here, float32: tau <= ~0.05): the loss would be inf and its gradient NaN, where the exact value is
    2 (1/tau + log(1 + e^(-1/tau)))."""
    m = DOMINANT_M.to(dtype).requires_grad_()
    s = DOMINANT_S.to(dtype).requires_grad_()
    y = _long([0, 1])
    exact = 2 * (1 / tau + math.log1p(math.exp(-1 / tau)))
    for reduction in ("sum", "mean"):
        loss = mi_bound_loss(m, s, y, tau, reduction)
        gm, gs = torch.autograd.grad(loss, (m, s))
        assert loss.item() == pytest.approx(exact, rel=1e-6), reduction
        assert torch.isfinite(gm).all() and torch.isfinite(gs).all(), reduction


# ---------------------------------------------------------------- Eq. 14, the D2 normaliser, the pairing


def test_eq14_dynamic_weights():
    lam0 = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert lam0.tolist() == pytest.approx([0.268941, 0.731059], abs=1e-6)
    lt, lam = lambda_update(torch.tensor([0.0, 1.0]), 0.8, 0.5, 0.9)
    assert lt.tolist() == pytest.approx([0.02, 0.95], abs=1e-6)
    assert lam.tolist() == pytest.approx([0.28292, 0.71708], abs=1e-5)
    assert lam.sum().item() == pytest.approx(1.0, abs=1e-7)
    # tensors for c1, c2 and float64 running values
    lt64, lam64 = lambda_update(
        torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor(0.8), torch.tensor(0.5), 0.9
    )
    assert lt64.dtype == torch.float64 and lam64.tolist() == pytest.approx([0.2829247143, 0.7170752857], abs=1e-9)
    # beta = 0: lt = 1 - c
    assert lambda_update(torch.tensor([5.0, -3.0]), 0.25, 1.0, 0.0)[0].tolist() == pytest.approx([0.75, 0.0])


def _mc_pair_rows(class_counts: list[int], batch: int, draws: int, seed: int) -> float:
    """Mean number of rows whose class occurs >= 2 times in a batch drawn without replacement."""
    labels = torch.repeat_interleave(torch.arange(len(class_counts)), torch.tensor(class_counts))
    n, k = len(labels), len(class_counts)
    g = torch.Generator().manual_seed(seed)
    total, done = 0.0, 0
    while done < draws:
        m = min(20000, draws - done)
        rows = torch.rand(m, n, generator=g).argsort(1)[:, :batch]
        counts = torch.nn.functional.one_hot(labels[rows], k).sum(1)  # (m, k)
        total += float((counts * (counts >= 2)).sum())
        done += m
    return total / draws


@pytest.mark.parametrize(
    ("class_counts", "batch"),
    [([100, 50, 30, 20], 16), ([3] * 30 + [8] * 10 + [1, 1], 16)],  # few large classes; many small (51-ish) ones
)
def test_expected_pair_rows_against_monte_carlo(class_counts, batch):
    want = _mc_pair_rows(class_counts, batch, 100_000, seed=0)
    got = expected_pair_rows(class_counts, batch)
    assert got == pytest.approx(want, rel=0.01), (got, want)


def test_expected_pair_rows_edges():
    assert expected_pair_rows([3, 4], 100) == pytest.approx(7.0)  # capped at n: every row has a partner
    assert expected_pair_rows([3, 4], 100) == pytest.approx(expected_pair_rows([3, 4], 7))
    assert expected_pair_rows([1, 4], 50) == pytest.approx(4.0)  # the lone row of class 0 never pairs
    assert expected_pair_rows([0, 5, 5], 1) == pytest.approx(0.0)  # one row: no pairs; empty class skipped
    assert expected_pair_rows([10], 4) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        expected_pair_rows([0, 0], 4)


def _check_pairs(labels: torch.Tensor, num_classes: int) -> None:
    partner, weight = same_class_pairs(labels, num_classes)
    b = len(labels)
    assert partner.shape == weight.shape == (b,) and partner.dtype == torch.long
    counts = torch.bincount(labels, minlength=num_classes)
    in_v = counts[labels] >= 2
    assert torch.equal(weight, in_v.float())  # 1 exactly on V
    assert torch.equal(labels[partner], labels)  # same class
    v = torch.nonzero(in_v).flatten()
    assert bool((partner[v] != v).all())  # another row
    assert sorted(partner[v].tolist()) == v.tolist()  # a permutation of V
    outside = torch.nonzero(~in_v).flatten()
    assert torch.equal(partner[outside], outside)


def test_same_class_pairs():
    partner, weight = same_class_pairs(_long([0, 1, 1, 2, 0, 1]), 4)
    assert partner.tolist() == [4, 2, 5, 3, 0, 1]  # next row of the class, cyclically; the lone 2 keeps itself
    assert weight.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    _check_pairs(_long([0, 1, 1, 2, 0, 1]), 4)
    g = torch.Generator().manual_seed(0)
    for b, c in ((16, 51), (16, 3), (64, 10), (2, 2), (7, 1)):
        _check_pairs(torch.randint(0, c, (b,), generator=g), c)
    p, w = same_class_pairs(_long([3, 0, 1]), 5)  # no class twice: V empty
    assert p.tolist() == [0, 1, 2] and w.tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- the method on the engine


@pytest.fixture(scope="module")
def mfh_data(mfh_table):
    return load_tensor_data(read_tables([str(mfh_table)]), ["xa", "xb"], require_train_classes=True)


def _trainer(data, epochs: int = 2, **params) -> Trainer:
    info = registry.get("amid")
    seed_everything(0)
    student = new_model(data, ModelOptions(arch="mlp", hidden=[16]), "student", ["xb"])
    p = info.params(aux=["xa"], adv_start=1, **params)
    method = info.cls.from_context(student, p, DistillContext({}, data.task, True, {"aux": ["xa"]}))
    return Trainer(method, data, TrainConfig(epochs=epochs, lr=0.01, seed=0), quiet=True)


def _disc_state(method) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.named_parameters() if n.startswith(DISC)}


def test_optimizers_split_the_parameters(mfh_data):
    tr = _trainer(mfh_data)
    m = tr.method
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    disc = ids([*m.disc1.parameters(), *m.disc2.parameters()])
    main = ids(p for g in tr.opt.param_groups for p in g["params"])
    own = ids(p for g in tr.own["disc"].param_groups for p in g["params"])
    assert set(tr.own) == {"disc"}
    assert sorted(own) == sorted(disc) and len(set(own)) == len(own)  # exactly D1 + D2
    assert not set(main) & set(disc)
    student = set(ids(m.student.parameters()))
    assert student <= set(main) and not student & set(own)
    assert set(ids(m.fusion.parameters())) <= set(main)
    assert set(ids(m.aux_projector.parameters())) <= set(main) and len(list(m.aux_projector.parameters())) == 2
    assert set(main) | set(own) == set(ids(m.parameters()))  # nothing left untrained


def test_one_amid_step_moves_the_discriminators_only_by_their_own_optimizer(mfh_data, monkeypatch):
    tr = _trainer(mfh_data)
    m, disc_opt = tr.method, tr.own["disc"]
    m.train()
    m.on_epoch_start(2)
    assert m.phase
    batch = next(iter(tr.batches.epoch(tr.gen)))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    d1_before, d2_before = copy.deepcopy(m.disc1), copy.deepcopy(m.disc2)
    seen: dict = {}
    real_own, real_step = m.own_losses, disc_opt.step

    def own_spy(b, step):
        seen["outputs"], seen["terms"] = dict(step.outputs), dict(step.terms)
        seen["at_own"] = {n: p.detach().clone() for n, p in m.named_parameters()}
        return real_own(b, step)

    def step_spy(*a, **k):
        seen["grads"] = {n: p.grad.clone() for n, p in m.named_parameters() if n.startswith(DISC)}
        seen["at_step"] = {n: p.detach().clone() for n, p in m.named_parameters()}
        return real_step(*a, **k)

    monkeypatch.setattr(m, "own_losses", own_spy)
    monkeypatch.setattr(disc_opt, "step", step_spy)
    tr.train_step(batch, 0, {})
    assert {"mi_s", "mi_a", "adv", "ce_s", "ce_m", "jsd"} <= set(seen["terms"])
    after = {n: p.detach().clone() for n, p in m.named_parameters()}
    # the main step moved the student, fusion and projector but not D1, D2
    for n, v in seen["at_own"].items():
        if n.startswith(DISC):
            assert torch.equal(v, before[n]), n
        else:
            assert not torch.equal(v, before[n]), n
    assert all(torch.equal(seen["at_step"][n], before[n]) for n in before if n.startswith(DISC))
    # the own step moved D1, D2 and nothing else
    for n, v in after.items():
        if n.startswith(DISC):
            assert not torch.equal(v, before[n]), n
        else:
            assert torch.equal(v, seen["at_own"][n]), n
    # D's gradients at its step are those of Eq. 13 alone (the adversarial term's were zeroed)
    o = seen["outputs"]
    s, mm, partner, w = o["s"], o["m"], o["partner"], o["weight"]
    assert not s.requires_grad and not mm.requires_grad
    loss = discriminator_loss(
        d1_before(mm), d1_before(s), d2_before(mm), d2_before(s[partner]), w, m.lam[0], m.lam[1], o["d_norm"]
    )
    names = [f"disc1.{n}" for n, _ in d1_before.named_parameters()] + [
        f"disc2.{n}" for n, _ in d2_before.named_parameters()
    ]
    want = torch.autograd.grad(loss, [*d1_before.parameters(), *d2_before.parameters()])
    assert set(seen["grads"]) == set(names)
    for n, g in zip(names, want, strict=True):
        torch.testing.assert_close(seen["grads"][n], g, rtol=1e-5, atol=1e-7)
    assert len(disc_opt.state) == len(names)


def test_warm_up_leaves_the_discriminators_alone(mfh_data):
    tr = _trainer(mfh_data, epochs=2)  # adv_start 1: epoch 1 warm-up, epoch 2 AMID
    m = tr.method
    start = _disc_state(m)
    snaps: list = []

    def on_end(epoch, row):
        snaps.append((_disc_state(m), len(tr.own["disc"].state), m.phase))

    result = tr.fit(on_epoch_end=on_end)
    (d1, n1, phase1), (d2, n2, phase2) = snaps
    assert not phase1 and phase2
    assert all(torch.equal(d1[k], start[k]) for k in start) and n1 == 0
    assert all(not torch.equal(d2[k], start[k]) for k in start) and n2 == len(start)
    h = result.history
    assert not set(AMID_TERMS) & set(h[0])
    assert set(AMID_TERMS) <= set(h[1])


# ---------------------------------------------------------------- the command end to end


@pytest.fixture(scope="module")
def amid_run(mfh_table, tmp_path_factory):
    """12 epochs, 3 of warm-up."""
    out = tmp_path_factory.mktemp("amid") / "s.safetensors"
    run("distill", "amid", mfh_table, "-i", "xb", "--aux", "xa", *SMALL, "--epochs", "12", "--adv-start", "3",
        "-o", out)  # fmt: skip
    return out


def test_amid_learns_with_its_online_teacher(amid_run):
    hist = history(amid_run)
    assert [r["epoch"] for r in hist] == list(range(1, 13))
    assert max(r["val/accuracy"] for r in hist) > 0.55  # chance 0.5; xb is weak
    assert all("val/teacher_accuracy" in r for r in hist)
    assert max(r["val/teacher_accuracy"] for r in hist) > max(r["val/accuracy"] for r in hist) + 0.1
    assert hist[-1]["val/teacher_accuracy"] > hist[-1]["val/accuracy"]  # the teacher sees xa
    assert hist[-1]["train/ce_s"] < hist[0]["train/ce_s"] and hist[-1]["train/ce_m"] < hist[0]["train/ce_m"]
    for r in hist:
        assert {"train/cos_sample", "train/cos_class", "train/lam1", "train/lam2"} <= set(r)
        assert -1 <= r["train/cos_sample"] <= 1 and -1 <= r["train/cos_class"] <= 1
        assert r["train/lam1"] + r["train/lam2"] == pytest.approx(1.0, abs=1e-6)
        assert all(math.isfinite(v) for k, v in r.items() if k.startswith(("train/", "val/")))
        amid_phase = r["epoch"] > 3
        assert all((k in r) == amid_phase for k in AMID_TERMS), r


def test_amid_dynamic_weights_follow_eq14(amid_run):
    """lam = softmax(0, 1) through the warm-up and the first AMID epoch, then Eq. 14 from the logged c1, c2."""
    hist = history(amid_run)
    for r in hist[:4]:
        assert (r["train/lam1"], r["train/lam2"]) == pytest.approx(LAM0, abs=1e-6)
    assert hist[4]["train/lam1"] != pytest.approx(LAM0[0], abs=1e-4)
    lt = torch.tensor([0.0, 1.0])
    for r, nxt in zip(hist[:-1], hist[1:], strict=True):
        if r["epoch"] > 3:
            lt, lam = lambda_update(lt, r["train/cos_sample"], r["train/cos_class"], 0.9)
        else:
            lam = torch.softmax(lt, 0)
        assert (nxt["train/lam1"], nxt["train/lam2"]) == pytest.approx(lam.tolist(), abs=1e-5), nxt["epoch"]


def test_amid_saves_the_student_alone(amid_run, mfh_table, tmp_path):
    plain = tmp_path / "plain.safetensors"
    run("pretrain", mfh_table, "-i", "xb", *SMALL, "--epochs", "1", "-o", plain)
    saved, spec, _ = read_checkpoint(amid_run)
    want, _, _ = read_checkpoint(plain)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert not [k for k in saved if k.startswith(("fusion", "disc", "aux", "lt", "lam", "cos_sums"))]
    assert [i["name"] for i in spec["inputs"]] == ["xb"]


def test_resume_is_bit_identical_with_the_discriminators_and_weights(mfh_table, tmp_path, resume_check):
    """Interrupted after epoch 4 of 5 (AMID from epoch 3, lam already moved), the run resumes to the
    uninterrupted run's weights, history and final training state (disc optimizer, lt, lam included)."""
    args = ["distill", "amid", mfh_table, "-i", "xb", "--aux", "xa", *SMALL, "--dropout", "0.3",
            "--epochs", "5", "--adv-start", "2"]  # fmt: skip
    full, part = tmp_path / "full" / "s.safetensors", tmp_path / "part" / "s.safetensors"
    full.parent.mkdir()
    part.parent.mkdir()
    run(*args, "-o", full)
    saved, _ = resume_check.interrupt(args, part, 4)
    assert any(k.startswith("optim.disc.") for k in saved)
    assert {"model.lt", "model.lam"} <= set(saved)
    assert saved["model.lam"].tolist() != pytest.approx(LAM0, abs=1e-4)  # the dynamics are under way
    final, header = resume_check.resume_and_compare(args, full, part, 5)
    assert "disc" in header["optimizers"]
    assert not torch.equal(final["model.lam"], saved["model.lam"])


# ---------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def multilabel_table(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 40
    xa, xb = rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32)
    labels = [np.flatnonzero(r).tolist() for r in xa[:, :3] > 0]
    split = np.where(np.arange(n) < 30, "train", "val")
    path = tmp_path_factory.mktemp("ml") / "ml.parquet"
    write_table(build_table([f"r{i}" for i in range(n)], {"xa": xa, "xb": xb}, labels=labels, split=split), path)
    return path


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "--aux"),
        (["--aux", "xb"], "--aux xb"),
        (["--aux", "xa,xb"], "--aux xb"),
        (["--aux", "xa", "--ablate", "foo"], "'foo'"),
        (["--aux", "xa", "--lambda-init", "1"], "--lambda-init"),
    ],
)
def test_usage_errors(mfh_table, tmp_path, extra, needle):
    out = tmp_path / "x.safetensors"
    line = _refused("distill", "amid", mfh_table, "-i", "xb", *extra, "--hidden", "8", "--epochs", "1", "-o", out)
    assert needle in line, line
    assert not out.exists() and not Path(f"{out}.state.safetensors").exists()


def test_teacher_is_refused(mfh_table, tmp_path):
    teacher = tmp_path / "t.safetensors"
    run("pretrain", mfh_table, "-i", "xa", "--arch", "mlp", "--hidden", "8", "--epochs", "1", "-q", "-o", teacher)
    out = tmp_path / "x.safetensors"
    line = _refused("distill", "amid", mfh_table, "-t", teacher, "-i", "xb", "--aux", "xa", "--epochs", "1", "-o", out)
    assert "online" in line and "--teacher" in line, line
    assert not out.exists()


def test_multilabel_table_is_refused(multilabel_table, tmp_path):
    out = tmp_path / "x.safetensors"
    line = _refused("distill", "amid", multilabel_table, "-i", "xb", "--aux", "xa", "--hidden", "8", "--epochs",
                    "1", "-o", out)  # fmt: skip
    assert "multilabel" in line and "single-label" in line, line
    assert not out.exists() and not Path(f"{out}.state.safetensors").exists()


# ---------------------------------------------------------------- ablations and variants


def _run_amid(mfh_table, tmp_path, *extra, epochs: int = 6) -> list[dict]:
    """``epochs`` epochs, 2 of warm-up."""
    out = tmp_path / "a.safetensors"
    run("distill", "amid", mfh_table, "-i", "xb", "--aux", "xa", *SMALL, "--epochs", epochs, "--adv-start", "2",
        *extra, "-o", out)  # fmt: skip
    return history(out)


@pytest.mark.parametrize(("ablate", "lam"), [("d2", (1.0, 0.0)), ("dynamic", (0.5, 0.5)), ("d2,dynamic", (1.0, 0.0))])
def test_ablated_weights_stay_constant(mfh_table, tmp_path, ablate, lam):
    hist = _run_amid(mfh_table, tmp_path, "--ablate", ablate, epochs=4)
    for r in hist:
        assert (r["train/lam1"], r["train/lam2"]) == pytest.approx(lam, abs=1e-7), r["epoch"]
    assert all("train/adv" in r and "train/disc_loss" in r for r in hist[2:])


def test_ablate_adv_and_warmup(mfh_table, tmp_path):
    no_adv = _run_amid(mfh_table, tmp_path, "--ablate", "adv", epochs=3)
    assert not any("train/adv" in r or "train/disc_loss" in r for r in no_adv)
    assert all("train/mi_s" in r and "train/mi_a" in r for r in no_adv[2:])
    no_warm = _run_amid(mfh_table, tmp_path, "--ablate", "warmup", epochs=3)
    assert all(set(AMID_TERMS) <= set(r) for r in no_warm)  # from epoch 1
    assert no_warm[1]["train/lam1"] != pytest.approx(LAM0[0], abs=1e-4)  # Eq. 14 from the first epoch


@pytest.mark.parametrize(
    "extra",
    [["--mi-loss", "ccl"], ["--mi-loss", "infonce"], ["--jsd", "sym-kl"], ["--mi-reduction", "mean"]],
    ids=lambda e: "=".join(e),
)
def test_variants_run_and_learn(mfh_table, tmp_path, extra):
    hist = _run_amid(mfh_table, tmp_path, *extra)
    assert all(math.isfinite(v) for r in hist for k, v in r.items() if k.startswith(("train/", "val/")))
    assert set(AMID_TERMS) <= set(hist[-1])
    assert hist[-1]["train/ce_s"] < hist[0]["train/ce_s"] and hist[-1]["train/ce_m"] < hist[0]["train/ce_m"]
    assert max(r["val/teacher_accuracy"] for r in hist) > 0.65  # instance-level InfoNCE peaks lowest (~0.69)
    assert max(r["val/accuracy"] for r in hist) > 0.52
