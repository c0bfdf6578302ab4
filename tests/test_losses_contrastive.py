"""Contrastive losses (CRD, CRCD, CCL, JSD, InfoNCE, GMC) and their stateful parts (projection head, CRD memory,
negative sampler): parity with the reference implementations (the fixtures in shared/parity), the hand values of
amid-osmd.md section 3.9, independent references, gradients, errors and sampler statistics."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmkdtool.losses.contrastive import (
    class_nce,
    crcd_scores,
    crd_nce,
    crd_scores,
    crd_scores_shared,
    gmc_nt_xent,
    info_nce,
    js_divergence,
    sym_kl,
)
from cmkdtool.nn.contrast import ContrastMemory, Embed, NegativeSampler

LOG2 = math.log(2.0)


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _det(shape: tuple[int, ...], k: float, s: float = 0.37) -> torch.Tensor:
    """The spec's deterministic inputs (amid-osmd.md, section 3.9): sin(s * arange(prod(shape)) + k)."""
    return torch.sin(s * torch.arange(math.prod(shape), dtype=torch.float64) + k).reshape(shape)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def _long(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------- independent references (numpy / plain loops)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ref_crd_nce(x: list[list[float]], n_data: int, eps: float = 1e-7) -> float:
    m = (len(x[0]) - 1) / n_data
    total = 0.0
    for row in x:
        total += math.log(row[0] / (row[0] + m + eps))
        total += sum(math.log(m / (v + m + eps)) for v in row[1:])
    return -total / len(x)


def _ref_crd_scores(anchor: np.ndarray, memory: np.ndarray, contrast_idx: np.ndarray, t: float) -> np.ndarray:
    b, k1 = contrast_idx.shape
    out = np.zeros((b, k1))
    for i in range(b):
        for j in range(k1):
            out[i, j] = math.exp(sum(memory[contrast_idx[i, j]] * anchor[i]) / t)
    return out


def _ref_crcd_scores(v: np.ndarray, memory: np.ndarray, index: np.ndarray, ci: np.ndarray, t: float) -> np.ndarray:
    """Row b * B + a: exp(<n(memory[ci[b, k]] - memory[index[a]] + 1e-6), n(v[b] - memory[index[a]] + 1e-6)> / T)."""
    b, k1 = ci.shape
    out = np.zeros((b * b, k1))
    for i in range(b):
        for a in range(b):
            centre = memory[index[a]]
            live = v[i] - centre + 1e-6
            live = live / np.linalg.norm(live)
            for k in range(k1):
                rel = memory[ci[i, k]] - centre + 1e-6
                rel = rel / np.linalg.norm(rel)
                out[i * b + a, k] = math.exp(float(rel @ live) / t)
    return out


def _ref_class_nce(f1: np.ndarray, f2: np.ndarray, labels: list[int], t: float, eps: float = 1e-10) -> float:
    a, b = _np_unit(f1), _np_unit(f2)
    p = _np_softmax((a @ b.T) / t)
    rows = []
    for i in range(len(labels)):
        pos = [-math.log(p[i, j] + eps) for j in range(len(labels)) if labels[j] == labels[i]]
        neg = [-math.log(1 - p[i, j] + eps) for j in range(len(labels)) if labels[j] != labels[i]]
        rows.append(sum(pos) / len(pos) + (sum(neg) / len(neg) if neg else 0.0))
    return sum(rows) / len(rows)


def _ref_sym_kl(lp: np.ndarray, lq: np.ndarray, weight: float, eps: float = 1e-10) -> float:
    p, q = _np_softmax(lp), _np_softmax(lq)
    per_row = [
        sum(
            p[i, c] * math.log(p[i, c] / q[i, c] + eps) + q[i, c] * math.log(q[i, c] / p[i, c] + eps)
            for c in range(p.shape[1])
        )
        for i in range(len(p))
    ]
    return weight * sum(per_row) / len(per_row)


def _ref_js(lp: np.ndarray, lq: np.ndarray) -> float:
    p, q = _np_softmax(lp), _np_softmax(lq)
    r = (p + q) / 2
    per_row = 0.5 * (p * np.log(p / r)).sum(1) + 0.5 * (q * np.log(q / r)).sum(1)
    return float(per_row.mean())


def _ref_info_nce(a: np.ndarray, b: np.ndarray, t: float, symmetric: bool) -> float:
    x, y = _np_unit(a), _np_unit(b)
    s = x @ y.T / t

    def one_way(m: np.ndarray) -> float:
        total = 0.0
        for i in range(len(m)):
            total -= m[i, i] - math.log(sum(math.exp(v) for v in m[i]))
        return total / len(m)

    return 0.5 * (one_way(s) + one_way(s.T)) if symmetric else one_way(s)


def _ref_gmc(joint: np.ndarray, modalities: list[np.ndarray], t: float) -> float:
    n = 2 * len(joint)
    per_row = [0.0] * n
    for m in modalities:
        both = np.concatenate([joint, m])
        for r in range(n):
            i = r % len(joint)
            pos = math.exp(float(joint[i] @ m[i]) / t)
            den = sum(math.exp(float(both[r] @ both[s]) / t) for s in range(n) if s != r)
            per_row[r] -= math.log(pos / den)
    return sum(per_row) / n


# ---------------------------------------------------------------- hand values of amid-osmd.md section 3.9

SPEC_Y = _long([0, 1, 1, 2, 0, 1])


def test_spec_ccl_nce_hand_value():
    got = class_nce(_det((6, 5), 0), _det((6, 5), 4), SPEC_Y, 0.5)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(3.93083492209823, rel=1e-12)


def test_spec_sym_kl_and_true_jsd_hand_values():
    ls, lt = _det((6, 4), 0.5), 3 * _det((6, 4), 2)
    assert sym_kl(ls, lt, weight=0.5).item() == pytest.approx(0.3518297360036162, rel=1e-12)
    assert sym_kl(ls, lt).item() == pytest.approx(0.3518297360036162, rel=1e-12)  # CCL's weight is the default
    assert js_divergence(ls, lt).item() == pytest.approx(0.08198729752996396, rel=1e-12)


def test_spec_gmc_hand_value():
    z1, z2, zj = _unit(_det((6, 4), 2)), _unit(_det((6, 4), 5)), _unit(_det((6, 4), 0))
    assert gmc_nt_xent(zj, [z1, z2], 0.3).item() == pytest.approx(8.870318980774018, rel=1e-12)


def _crd_step(memory: ContrastMemory, v_s, v_t, idx, contrast_idx, temperature: float) -> torch.Tensor:
    """One CRDLoss forward: both anchors scored against the other bank, normalised by Z, NCE summed, then update."""
    x_s = crd_scores(v_s, memory.memory_teacher, contrast_idx, temperature)  # student anchor (out_v1)
    x_t = crd_scores(v_t, memory.memory_student, contrast_idx, temperature)  # teacher anchor (out_v2)
    x_s, x_t = memory.normalise(x_s, x_t)
    loss = crd_nce(x_s, memory.n_data) + crd_nce(x_t, memory.n_data)
    memory.update(idx, v_s, v_t)
    return loss


def test_spec_crd_hand_values():
    w_s, b_s = _det((4, 5), 0.3), 0.1 * _det((4,), 0.1)
    w_t, b_t = _det((4, 7), 0.6), 0.1 * _det((4,), 0.2)
    memory = ContrastMemory(20, 4, n_data=20, momentum=0.5).double()
    memory.memory_student.copy_(_unit(_det((20, 4), 1.5)))  # memory_v1
    memory.memory_teacher.copy_(_unit(_det((20, 4), 2.5)))  # memory_v2
    idx = _long([0, 3, 5, 7, 11, 19])
    contrast_idx = _long(
        [
            [0, 1, 2, 4, 6, 8],
            [3, 2, 9, 10, 12, 13],
            [5, 1, 14, 15, 16, 17],
            [7, 18, 0, 2, 4, 6],
            [11, 12, 13, 1, 9, 8],
            [19, 3, 5, 7, 2, 1],
        ]
    )
    fs, ft = _det((6, 5), 0), _det((6, 7), 1)
    v_t = _unit(ft @ w_t.T + b_t)
    loss1 = _crd_step(memory, _unit(fs @ w_s.T + b_s), v_t, idx, contrast_idx, 0.07)
    z_after_1 = memory.z.clone()
    loss2 = _crd_step(memory, _unit(0.5 * fs @ w_s.T + b_s), v_t, idx, contrast_idx, 0.07)
    # The spec's Z_v1 (1115.174950100481) is 1e-9 (relative) from this computation; a 40-digit mpmath evaluation
    # of the same formula gives 1115.17494899386 and agrees with cmkdtool to 1e-14, so the spec's own run carries
    # ~1e-9 of rounding: compared at 1e-8 (a wrong formula moves these values by far more).
    assert loss1.item() == pytest.approx(8.22207218736103, rel=1e-8)
    assert memory.z[0].item() == pytest.approx(1115.174950100481, rel=1e-8)
    assert memory.z[0].item() == pytest.approx(1115.17494899386, rel=1e-12)
    assert memory.z[1].item() == pytest.approx(224.7541635459156, rel=1e-12)
    assert loss2.item() == pytest.approx(13.361497617640874, rel=1e-8)
    assert torch.equal(memory.z, z_after_1)  # Z frozen after the first call


def test_spec_crcd_hand_value():
    memory_v1, memory_v2 = _unit(_det((10, 4), 1.5)), _unit(_det((10, 4), 2.5))  # student, teacher banks
    v1, v2 = _unit(_det((3, 4), 0)), _unit(_det((3, 4), 1))
    y = _long([0, 4, 7])
    ci = _long([[0, 1, 2, 3], [4, 5, 6, 8], [7, 9, 1, 2]])
    out_v1 = crcd_scores(v1, memory_v2, y, ci, 0.05)
    out_v2 = crcd_scores(v2, memory_v1, y, ci, 0.05)
    assert out_v1.shape == (9, 4) and out_v2.shape == (9, 4)
    out_v1, out_v2 = out_v1 / (out_v1.mean() * 10), out_v2 / (out_v2.mean() * 10)
    loss = crd_nce(out_v1, 10) + crd_nce(out_v2, 10)
    assert loss.item() == pytest.approx(38.87806628863807, rel=1e-12)


# ---------------------------------------------------------------- CRD / CRCD: hand derivations and references


def test_crd_nce_exact_hand_value_without_eps():
    # K = 1, N = 5: m = 1/5. x = (0.2, 0.2): log(0.2 / 0.4) + log(0.2 / 0.4) = -2 log 2 -> loss 2 log 2.
    x = torch.tensor([[0.2, 0.2]], dtype=torch.float64)
    assert crd_nce(x, 5, eps=0.0).item() == pytest.approx(2 * LOG2, rel=1e-15)
    # A second row (0.6, 0.05): log(0.6 / 0.8) + log(0.2 / 0.25); the batch mean of both rows.
    x = torch.tensor([[0.2, 0.2], [0.6, 0.05]], dtype=torch.float64)
    expected = -(2 * math.log(0.5) + math.log(0.75) + math.log(0.8)) / 2
    assert crd_nce(x, 5, eps=0.0).item() == pytest.approx(expected, rel=1e-14)


def test_crd_nce_on_a_2x3_score_matrix_by_hand():
    # K = 2, N = 10: m = 0.2, eps = 1e-7 (RepDistiller's).
    rows = [[0.5, 0.1, 0.2], [0.3, 0.05, 0.4]]
    m, eps = 0.2, 1e-7
    by_hand = (
        -(
            math.log(0.5 / (0.5 + m + eps))
            + math.log(m / (0.1 + m + eps))
            + math.log(m / (0.2 + m + eps))
            + math.log(0.3 / (0.3 + m + eps))
            + math.log(m / (0.05 + m + eps))
            + math.log(m / (0.4 + m + eps))
        )
        / 2
    )
    got = crd_nce(torch.tensor(rows, dtype=torch.float64), 10)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(by_hand, rel=1e-14)
    assert got.item() == pytest.approx(_ref_crd_nce(rows, 10), rel=1e-14)


def test_crd_nce_random_matrix_matches_loop_reference():
    x = _rand(5, 8, seed=1).abs() * 0.1
    assert crd_nce(x, 37).item() == pytest.approx(_ref_crd_nce(x.tolist(), 37), rel=1e-12)


def test_crd_scores_match_loop_reference():
    anchor, memory = _unit(_rand(4, 3, seed=2)), _unit(_rand(9, 3, seed=3))
    ci = torch.randint(0, 9, (4, 5), generator=torch.Generator().manual_seed(4))
    got = crd_scores(anchor, memory, ci, 0.2)
    assert got.shape == (4, 5) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _ref_crd_scores(anchor.numpy(), memory.numpy(), ci.numpy(), 0.2), 1e-13)


def test_crd_scores_shared_equals_crd_scores_with_the_negatives_repeated_per_row():
    anchor, memory = _rand(5, 4, seed=5), _rand(12, 4, seed=6)
    positive, negatives = _long([3, 0, 11, 7, 3]), _long([1, 5, 5, 9, 2, 3])
    shared = crd_scores_shared(anchor, memory, positive, negatives, 0.3)
    ci = torch.cat([positive[:, None], negatives.expand(5, -1)], dim=1)
    assert shared.shape == (5, 7)
    torch.testing.assert_close(shared, crd_scores(anchor, memory, ci, 0.3), rtol=1e-13, atol=0)


def test_crcd_scores_match_loop_reference():
    v, memory = _unit(_rand(3, 4, seed=7)), _unit(_rand(8, 4, seed=8))
    index, ci = _long([2, 5, 0]), _long([[2, 1, 7], [5, 3, 0], [0, 6, 4]])
    got = crcd_scores(v, memory, index, ci, 0.1)
    assert got.shape == (9, 3)
    np.testing.assert_allclose(
        got.numpy(), _ref_crcd_scores(v.numpy(), memory.numpy(), index.numpy(), ci.numpy(), 0.1), rtol=1e-12
    )


# ---------------------------------------------------------------- CCL, JSD, InfoNCE, GMC: independent references


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("labels", [[0, 2, 1, 0, 2, 2, 1], [3, 3, 3, 3, 3, 3, 0]], ids=["3-classes", "one-negative"])
def test_class_nce_matches_loop_reference(t, labels):
    # "one-negative": rows of class 3 have a single other-label column, the last row a single same-label one.
    f1, f2 = _rand(7, 5, seed=10), _rand(7, 5, seed=11)
    got = class_nce(f1, f2, _long(labels), t)
    assert got.item() == pytest.approx(_ref_class_nce(f1.numpy(), f2.numpy(), labels, t), rel=1e-11)


def test_class_nce_one_class_batch_is_the_positive_term_only():
    # The reference divides 0/0 (NaN) on a row without negatives; here that row's negative term is 0.
    f1, f2 = _rand(4, 3, seed=12), _rand(4, 3, seed=13)
    got = class_nce(f1, f2, _long([1, 1, 1, 1]), 0.5)
    assert torch.isfinite(got)
    p = _np_softmax(_np_unit(f1.numpy()) @ _np_unit(f2.numpy()).T / 0.5)
    positive_only = float((-np.log(p + 1e-10)).mean(axis=1).mean())
    assert got.item() == pytest.approx(positive_only, rel=1e-12)


def test_class_nce_is_one_directional():
    f1, f2, y = _rand(5, 4, seed=14), _rand(5, 4, seed=15), _long([0, 1, 0, 1, 1])
    assert class_nce(f1, f2, y, 0.3).item() != pytest.approx(class_nce(f2, f1, y, 0.3).item(), rel=1e-6)


@pytest.mark.parametrize("weight", [0.5, 1.0, 2.5])
def test_sym_kl_matches_loop_reference_and_scales_with_weight(weight):
    lp, lq = _rand(5, 6, seed=20, scale=2.0), _rand(5, 6, seed=21, scale=2.0)
    got = sym_kl(lp, lq, weight=weight)
    assert got.item() == pytest.approx(_ref_sym_kl(lp.numpy(), lq.numpy(), weight), rel=1e-12)
    assert got.item() == pytest.approx(weight * sym_kl(lp, lq, weight=1.0).item(), rel=1e-14)
    assert sym_kl(lp, lq, weight=weight).item() == pytest.approx(sym_kl(lq, lp, weight=weight).item(), rel=1e-12)


def test_js_divergence_matches_numpy_and_is_symmetric():
    lp, lq = _rand(6, 5, seed=22, scale=2.0), _rand(6, 5, seed=23, scale=2.0)
    got = js_divergence(lp, lq)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(_ref_js(lp.numpy(), lq.numpy()), rel=1e-12)
    assert js_divergence(lq, lp).item() == pytest.approx(got.item(), rel=1e-13)
    assert 0 < got.item() < LOG2


def test_js_divergence_zero_for_equal_distributions_and_shift_invariant():
    lp = _rand(4, 5, seed=24, scale=3.0)
    assert js_divergence(lp, lp).item() == pytest.approx(0.0, abs=1e-15)
    assert js_divergence(lp, lp + 7.0).item() == pytest.approx(0.0, abs=1e-14)  # softmax ignores a shift


def test_js_divergence_bounded_by_log2_for_disjoint_supports():
    # softmax([100, 0, 0]) and softmax([0, 100, 0]) are almost disjoint: JS -> log 2, never above, always finite.
    lp = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 500.0]], dtype=torch.float64)
    lq = torch.tensor([[0.0, 100.0, 0.0], [500.0, 0.0, 0.0]], dtype=torch.float64)
    got = js_divergence(lp, lq).item()
    assert math.isfinite(got) and got <= LOG2 + 1e-15
    assert got == pytest.approx(LOG2, rel=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_info_nce_matches_manual_log_softmax_loop(symmetric, t):
    a, b = _rand(5, 4, seed=30), _rand(5, 4, seed=31)
    got = info_nce(a, b, t, symmetric=symmetric)
    assert got.item() == pytest.approx(_ref_info_nce(a.numpy(), b.numpy(), t, symmetric), rel=1e-11)


def test_info_nce_asymmetric_is_one_direction_and_symmetric_averages():
    a, b = _rand(5, 4, seed=32), _rand(5, 4, seed=33)
    ab, ba = info_nce(a, b, 0.2, symmetric=False).item(), info_nce(b, a, 0.2, symmetric=False).item()
    assert ab != pytest.approx(ba, rel=1e-6)
    assert info_nce(a, b, 0.2).item() == pytest.approx(0.5 * (ab + ba), rel=1e-13)


def test_info_nce_hand_value_two_orthogonal_pairs():
    # a = b = I_2: s = I / T, each row -log(e^(1/T) / (e^(1/T) + 1)) = log(1 + e^(-1/T)).
    eye = torch.eye(2, dtype=torch.float64)
    assert info_nce(eye, eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-14)


@pytest.mark.parametrize("t", [0.1, 0.3, 1.0])
def test_gmc_matches_loop_reference(t):
    joint = _unit(_rand(4, 3, seed=40))
    mods = [_unit(_rand(4, 3, seed=41)), _unit(_rand(4, 3, seed=42)), _unit(_rand(4, 3, seed=43))]
    got = gmc_nt_xent(joint, mods, t)
    assert got.item() == pytest.approx(_ref_gmc(joint.numpy(), [m.numpy() for m in mods], t), rel=1e-12)
    # one modality at a time sums to the whole
    parts = sum(gmc_nt_xent(joint, [m], t).item() for m in mods)
    assert got.item() == pytest.approx(parts, rel=1e-13)


def test_float32_inputs_give_float32_results():
    a, b = _rand(4, 3, seed=44, dtype=torch.float32), _rand(4, 3, seed=45, dtype=torch.float32)
    y = _long([0, 1, 0, 1])
    for out in (
        class_nce(a, b, y, 0.5),
        sym_kl(a, b),
        js_divergence(a, b),
        info_nce(a, b, 0.5),
        gmc_nt_xent(_unit(a), [_unit(b)], 0.5),
    ):
        assert out.dtype == torch.float32 and out.ndim == 0 and torch.isfinite(out)


# ---------------------------------------------------------------- gradients (float64 gradcheck)


def _req(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


def test_gradcheck_crd_nce_wrt_positive_scores():
    x = _rand(3, 4, seed=50).abs() * 0.2 + 0.05
    neg = x[:, 1:].clone()
    pos = _req(x[:, :1])
    assert torch.autograd.gradcheck(lambda p: crd_nce(torch.cat([p, neg], 1), 7), (pos,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda s: crd_nce(s, 7), (_req(x),), eps=1e-6, atol=1e-7)


def test_gradcheck_crd_scores_and_shared_wrt_anchor():
    anchor, memory = _req(_unit(_rand(3, 4, seed=51))), _unit(_rand(7, 4, seed=52))
    ci = _long([[0, 1, 2], [3, 4, 5], [6, 0, 1]])
    assert torch.autograd.gradcheck(lambda a: crd_scores(a, memory, ci, 0.5), (anchor,), eps=1e-6, atol=1e-7)
    pos, neg = _long([0, 3, 6]), _long([1, 2, 5])
    assert torch.autograd.gradcheck(
        lambda a: crd_scores_shared(a, memory, pos, neg, 0.5), (anchor,), eps=1e-6, atol=1e-7
    )


def test_gradcheck_crcd_scores_wrt_anchor():
    v, memory = _req(_unit(_rand(3, 4, seed=53))), _unit(_rand(7, 4, seed=54))
    index, ci = _long([0, 3, 6]), _long([[0, 1, 2], [3, 4, 5], [6, 0, 1]])
    assert torch.autograd.gradcheck(lambda a: crcd_scores(a, memory, index, ci, 0.5), (v,), eps=1e-6, atol=1e-7)


def test_gradcheck_class_nce():
    f1, f2, y = _req(_rand(4, 3, seed=55)), _req(_rand(4, 3, seed=56)), _long([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda a, b: class_nce(a, b, y, 0.5), (f1, f2), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", [sym_kl, js_divergence], ids=lambda f: f.__name__)
def test_gradcheck_divergences(fn):
    lp, lq = _req(_rand(3, 4, seed=57)), _req(_rand(3, 4, seed=58))
    assert torch.autograd.gradcheck(fn, (lp, lq), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_info_nce(symmetric):
    a, b = _req(_rand(4, 3, seed=59)), _req(_rand(4, 3, seed=60))
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.4, symmetric), (a, b), eps=1e-6, atol=1e-7)


def test_gradcheck_gmc_nt_xent():
    j, m1, m2 = _req(_rand(3, 4, seed=61)), _req(_rand(3, 4, seed=62)), _req(_rand(3, 4, seed=63))
    assert torch.autograd.gradcheck(
        lambda a, b, c: gmc_nt_xent(_unit(a), [_unit(b), _unit(c)], 0.3), (j, m1, m2), eps=1e-6, atol=1e-7
    )


# ---------------------------------------------------------------- errors


def test_batch_size_mismatch_raises_naming_the_sizes():
    a4, a5 = torch.zeros(4, 3), torch.ones(5, 3)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*5"):
        class_nce(a4, a5, _long([0, 1, 0, 1]), 0.5)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*3"):
        class_nce(a4, a4, _long([0, 1, 0]), 0.5)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*5"):
        sym_kl(a4, a5)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*5"):
        js_divergence(a4, a5)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*5"):
        info_nce(a4, a5, 0.1)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*5"):
        gmc_nt_xent(a4, [a4, a5], 0.1)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*2"):
        crd_scores(a4, a5, torch.zeros(2, 3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*3"):
        crd_scores_shared(a4, a5, _long([0, 1, 2]), _long([1]), 0.1)
    with pytest.raises(ValueError, match=r"batch sizes differ.*4.*3"):
        crcd_scores(a4, a5, _long([0, 1, 2]), torch.zeros(4, 2, dtype=torch.long), 0.1)


def test_empty_batch_raises():
    e = torch.zeros(0, 3)
    for call in (
        lambda: crd_nce(torch.zeros(0, 3), 10),
        lambda: crd_scores(e, torch.ones(4, 3), torch.zeros(0, 2, dtype=torch.long), 0.1),
        lambda: crd_scores_shared(e, torch.ones(4, 3), _long([]), _long([1]), 0.1),
        lambda: crcd_scores(e, torch.ones(4, 3), _long([]), torch.zeros(0, 2, dtype=torch.long), 0.1),
        lambda: class_nce(e, e, _long([]), 0.5),
        lambda: sym_kl(e, e),
        lambda: js_divergence(e, e),
        lambda: info_nce(e, e, 0.1),
        lambda: gmc_nt_xent(e, [e], 0.1),
    ):
        with pytest.raises(ValueError, match="empty batch"):
            call()


def test_crd_nce_needs_a_negative_column_and_n_data():
    with pytest.raises(ValueError, match=r"at least one negative.*\(3, 1\)"):
        crd_nce(torch.ones(3, 1), 10)
    with pytest.raises(ValueError, match="n_data"):
        crd_nce(torch.ones(3, 2), 0)


def test_gmc_needs_a_modality_and_inputs_need_two_dimensions():
    with pytest.raises(ValueError, match="at least one modality"):
        gmc_nt_xent(torch.ones(3, 2), [], 0.1)
    with pytest.raises(ValueError, match="2 dimensions"):
        info_nce(torch.ones(3), torch.ones(3), 0.1)


# ---------------------------------------------------------------- nn/contrast.py: Embed, ContrastMemory


def test_embed_rows_have_unit_norm_and_flatten_the_input():
    torch.manual_seed(0)
    head = Embed(12, 5).double()
    x = _rand(4, 3, 2, 2, seed=70, scale=3.0)
    out = head(x)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-14)
    expected = _unit(x.flatten(1) @ head.linear.weight.T + head.linear.bias)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dim", [3, 12, 48])
def test_contrast_memory_initial_rows(dim):
    torch.manual_seed(1)
    memory = ContrastMemory(200, dim, n_data=200)
    s = 1.0 / math.sqrt(dim / 3)
    for bank in (memory.memory_student, memory.memory_teacher):
        assert bank.shape == (200, dim)
        assert bank.abs().max().item() <= s
        assert bank.abs().max().item() > 0.9 * s  # spread over the whole range, not a narrower one
        assert abs(bank.mean().item()) < 0.1 * s
    assert not torch.equal(memory.memory_student, memory.memory_teacher)
    torch.testing.assert_close(memory.z, torch.tensor([-1.0, -1.0]))
    normed = ContrastMemory(50, dim, n_data=50, normalized=True)
    for bank in (normed.memory_student, normed.memory_teacher):
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(50), rtol=0, atol=1e-6)


def test_contrast_memory_generator_makes_it_reproducible():
    a = ContrastMemory(10, 4, 10, generator=torch.Generator().manual_seed(5))
    b = ContrastMemory(10, 4, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.memory_student, b.memory_student) and torch.equal(a.memory_teacher, b.memory_teacher)


def test_contrast_memory_z_set_once_by_the_first_normalise():
    torch.manual_seed(2)
    memory = ContrastMemory(10, 4, n_data=30).double()
    s1, t1 = _rand(3, 5, seed=71).exp(), _rand(3, 5, seed=72).exp()
    out_s, out_t = memory.normalise(s1, t1)
    z = (s1.mean().item() * 30, t1.mean().item() * 30)
    assert memory.z.tolist() == pytest.approx(list(z), rel=1e-14)
    torch.testing.assert_close(out_s, s1 / z[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(out_t, t1 / z[1], rtol=1e-14, atol=0)
    s2, t2 = 5 * _rand(3, 5, seed=73).exp(), 9 * _rand(3, 5, seed=74).exp()
    out_s, out_t = memory.normalise(s2, t2)
    assert memory.z.tolist() == pytest.approx(list(z), rel=1e-14)  # unchanged by the second call
    torch.testing.assert_close(out_s, s2 / z[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(out_t, t2 / z[1], rtol=1e-14, atol=0)


def test_contrast_memory_update_changes_only_the_given_rows():
    torch.manual_seed(3)
    memory = ContrastMemory(12, 4, n_data=12, momentum=0.3).double()
    before_s, before_t = memory.memory_student.clone(), memory.memory_teacher.clone()
    idx = _long([1, 7, 4])
    v_s, v_t = _unit(_rand(3, 4, seed=75)), _unit(_rand(3, 4, seed=76))
    memory.update(idx, v_s, v_t)
    others = torch.tensor([i not in (1, 4, 7) for i in range(12)])
    for bank, before, v in ((memory.memory_student, before_s, v_s), (memory.memory_teacher, before_t, v_t)):
        assert torch.equal(bank[others], before[others])
        torch.testing.assert_close(bank[idx].norm(dim=1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(bank[idx], _unit(0.3 * before[idx] + 0.7 * v), rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------- nn/contrast.py: NegativeSampler

# 40 table rows, 24 of them train rows; classes 0..3 over all rows, class 2 only outside the train split.
SAMPLER_ROWS = 40
SAMPLER_LABELS = torch.tensor([(3 * i + i // 7) % 4 for i in range(SAMPLER_ROWS)])


def _sampler_split() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(80)
    candidates = torch.tensor([i for i in range(SAMPLER_ROWS) if SAMPLER_LABELS[i] != 2])
    train = candidates[torch.randperm(len(candidates), generator=g)[:24]]
    return train, SAMPLER_LABELS.clone()


def _chi2_bound(df: int, tests: int, p: float = 1e-6) -> float:
    """Laurent-Massart: P(X - df >= 2 sqrt(df x) + 2x) <= exp(-x) for chi-square(df); union bound over the tests."""
    x = math.log(tests / p)
    return df + 2 * math.sqrt(df * x) + 2 * x


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_negative_sampler_class_aware_draws_uniform_other_class_train_rows():
    train, labels = _sampler_split()
    sampler = NegativeSampler(train, SAMPLER_ROWS, labels)
    train_set = set(train.tolist())
    torch.manual_seed(4)
    draws = torch.cat([sampler.negatives(train, 50) for _ in range(200)], dim=1)  # (24, 10000)
    tests = len(train)
    for row, negatives in zip(train.tolist(), draws, strict=True):
        allowed = sorted(r for r in train_set if labels[r] != labels[row])
        counts = np.bincount(negatives.numpy(), minlength=SAMPLER_ROWS)
        assert set(np.flatnonzero(counts)) == set(allowed), f"row {row}: drew {np.flatnonzero(counts)}"
        assert (labels[negatives] != labels[row]).all()
        chi2 = _chi2(counts[allowed])
        assert chi2 < _chi2_bound(len(allowed) - 1, tests), f"row {row}: chi-square {chi2:.1f} over {len(allowed)}"


def test_negative_sampler_without_labels_draws_uniform_other_train_rows():
    train, _ = _sampler_split()
    sampler = NegativeSampler(train, SAMPLER_ROWS)
    torch.manual_seed(5)
    draws = torch.cat([sampler.negatives(train, 50) for _ in range(400)], dim=1)  # (24, 20000)
    for row, negatives in zip(train.tolist(), draws, strict=True):
        allowed = sorted(set(train.tolist()) - {row})
        counts = np.bincount(negatives.numpy(), minlength=SAMPLER_ROWS)
        assert set(np.flatnonzero(counts)) == set(allowed), f"row {row}: drew {np.flatnonzero(counts)}"
        assert _chi2(counts[allowed]) < _chi2_bound(len(allowed) - 1, len(train))


def test_negative_sampler_shared_draws_uniform_train_rows():
    train, labels = _sampler_split()
    sampler = NegativeSampler(train, SAMPLER_ROWS, labels)
    torch.manual_seed(6)
    draws = torch.cat([sampler.shared(500) for _ in range(40)])
    assert draws.shape == (20000,)
    counts = np.bincount(draws.numpy(), minlength=SAMPLER_ROWS)
    assert set(np.flatnonzero(counts)) == set(train.tolist())
    assert _chi2(counts[train.numpy()]) < _chi2_bound(len(train) - 1, 1)


def test_negative_sampler_positives():
    train, labels = _sampler_split()
    sampler = NegativeSampler(train, SAMPLER_ROWS, labels)
    index = train[:10]
    assert torch.equal(sampler.positive(index), index)
    torch.manual_seed(7)
    draws = torch.stack([sampler.positive(index, relax=True) for _ in range(600)], dim=1)  # (10, 600)
    for row, positives in zip(index.tolist(), draws, strict=True):
        allowed = {r for r in train.tolist() if labels[r] == labels[row]}
        counts = np.bincount(positives.numpy(), minlength=SAMPLER_ROWS)
        assert set(np.flatnonzero(counts)) == allowed  # same class, train rows, every one of them (itself included)
        assert _chi2(counts[sorted(allowed)]) < _chi2_bound(len(allowed) - 1, len(index))


def test_negative_sampler_batches_with_repeated_rows_and_any_order():
    train, labels = _sampler_split()
    sampler = NegativeSampler(train, SAMPLER_ROWS, labels)
    torch.manual_seed(8)
    index = torch.cat([train.flip(0), train[:3]])
    neg = sampler.negatives(index, 7)
    assert neg.shape == (len(index), 7) and neg.dtype == torch.long
    assert (labels[neg] != labels[index].unsqueeze(1)).all()
    assert torch.isin(neg, train).all()


# ---------------------------------------------------------------- parity with the reference implementations

PARITY_DIR = Path(os.environ.get("CMKDTOOL_PARITY_DIR") or Path(__file__).resolve().parents[2] / "shared" / "parity")
PARITY_REL = 1e-9
PARITY_KINDS = ("NCELoss", "JSDLoss", "CRDLoss", "super_gmc_loss")


def _kind(call: str) -> str | None:
    for kind in PARITY_KINDS:
        if re.search(rf"\b{kind}\s*\(", call):
            return kind
    return None


def _parity_params() -> list:
    manifest = PARITY_DIR / "manifest.json"
    if not manifest.is_file():
        reason = f"no parity fixtures: {manifest} is missing (set CMKDTOOL_PARITY_DIR to a folder with manifest.json)"
        return [pytest.param(None, None, id="no-fixtures", marks=pytest.mark.skip(reason=reason))]
    entries = json.loads(manifest.read_text())
    chosen = [pytest.param(name, e, id=name) for name, e in entries.items() if _kind(e.get("call", ""))]
    if not chosen:
        reason = f"{manifest} lists no CCL NCELoss/JSDLoss, CRDLoss or GMC case"
        return [pytest.param(None, None, id="no-cases", marks=pytest.mark.skip(reason=reason))]
    return chosen


_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def _option(name: str, call: str, keys: tuple[str, ...], default: float | None = None) -> float:
    """`key=NUM` in the call, else `keyNUM` in the case name (tau0.3, T0.1), else the default."""
    for key in keys:
        m = re.search(rf"\b{re.escape(key)}\s*=\s*{_NUM}", call)
        if m:
            return float(m.group(1))
    for key in keys:
        m = re.search(rf"(?:^|_){re.escape(key)}{_NUM}(?:$|_)", name)
        if m:
            return float(m.group(1))
    if default is None:
        pytest.fail(f"{name}: none of {keys} in the call {call!r} or the case name")
    return default


def _call_args(call: str) -> list[str]:
    """The tensor names of the last '(...)' of 'Cls(options)(a, b, c)'."""
    m = re.search(r"\)\s*\(([^()]*)\)\s*$", call)
    if not m:
        pytest.fail(f"cannot read the inputs of {call!r}")
    return [a.strip() for a in m.group(1).split(",") if a.strip()]


def _run_ccl_nce(name, call, t):
    f1, f2, labels = (t[a] for a in _call_args(call))
    return {"loss": class_nce(f1, f2, labels, _option(name, call, ("temperature", "T")))}


def _run_ccl_jsd(name, call, t):
    p, q = (t[a] for a in _call_args(call))
    return {"loss": sym_kl(p, q, weight=_option(name, call, ("weight",), default=1.0))}  # JSDLoss(weight=1.0)


def _run_gmc(name, call, t):
    m = re.search(r"\[([^\]]*)\]", call)
    assert m, f"{name}: no representation list in {call!r}"
    reps = [r.strip() for r in m.group(1).split(",")]
    joint = "joint" if "joint" in reps else reps[-1]  # GMC puts the joint representation last
    mods = [t[r] for r in reps if r != joint]
    return {"loss": gmc_nt_xent(t[joint], mods, _option(name, call, ("temperature", "tau")))}


def _run_crd(name, call, t):
    temperature = _option(name, call, ("nce_t",))
    momentum = _option(name, call, ("nce_m",), default=0.5)
    n_data = int(_option(name, call, ("n_data",)))
    rows, feat_dim = t["memory_student_before"].shape
    assert t["embed_s.weight"].shape[0] == feat_dim and t["embed_t.weight"].shape[0] == feat_dim
    memory = ContrastMemory(rows, feat_dim, n_data=n_data, momentum=momentum).double()
    memory.memory_student = t["memory_student_before"].clone()
    memory.memory_teacher = t["memory_teacher_before"].clone()
    assert {k: v.dtype for k, v in memory.named_buffers()} == dict.fromkeys(
        ("memory_student", "memory_teacher", "z"), torch.float64
    )
    idx, contrast_idx = t["idx"], t["contrast_idx"]

    def embed(x, who):
        return _unit(x @ t[f"embed_{who}.weight"].T + t[f"embed_{who}.bias"])

    fs, ft = t["student_features"], t["teacher_features"]
    out = {}
    for step, scale in ((1, 1.0), (2, 0.5)):  # step 2 on both features halved
        v_s, v_t = embed(scale * fs, "s"), embed(scale * ft, "t")
        out[f"loss_step{step}"] = _crd_step(memory, v_s, v_t, idx, contrast_idx, temperature)
        if step == 1:
            out["Z_student"], out["Z_teacher"] = memory.z[0].clone(), memory.z[1].clone()
    assert torch.equal(memory.z, torch.stack([out["Z_student"], out["Z_teacher"]])), "Z changed in step 2"
    for bank in ("memory_student", "memory_teacher"):
        if f"{bank}_after" in t:
            want = t[f"{bank}_after"]
            torch.testing.assert_close(getattr(memory, bank), want, rtol=PARITY_REL, atol=1e-12)
    return out


PARITY_RUNNERS = {"NCELoss": _run_ccl_nce, "JSDLoss": _run_ccl_jsd, "CRDLoss": _run_crd, "super_gmc_loss": _run_gmc}


@pytest.mark.parametrize(("name", "entry"), _parity_params())
def test_parity_with_reference(name, entry):
    from safetensors.torch import load_file

    tensors = {
        k: v.to(torch.float64) if v.is_floating_point() else v
        for k, v in load_file(str(PARITY_DIR / entry["inputs"])).items()
    }
    got = PARITY_RUNNERS[_kind(entry["call"])](name, entry["call"], tensors)
    unknown = set(entry["expected"]) - set(got)
    assert not unknown, f"{name}: expected values {sorted(unknown)} have no counterpart in this test"
    for key, want in entry["expected"].items():
        value = got[key]
        assert value.dtype == torch.float64 and value.ndim == 0
        rel = abs(value.item() - want) / abs(want)
        assert rel <= PARITY_REL, f"{name}.{key}: {value.item()!r} vs reference {want!r} (relative error {rel:.3g})"
