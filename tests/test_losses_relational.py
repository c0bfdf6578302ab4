"""Relational losses (RKD, PKT, SP, NST): hand-derived values, independent references, gradients, and parity
with the numbers HobbitLong/RepDistiller returns (the fixtures in shared/parity)."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkdtool.losses.kd import hinton_kd
from cmkdtool.losses.relational import nst, pkt, rkd, rkd_angle, rkd_distance, sp

SQRT2, SQRT10 = math.sqrt(2.0), math.sqrt(10.0)
VECTOR_LOSSES = [rkd_distance, rkd_angle, rkd, pkt, sp]
ALL_LOSSES = [*VECTOR_LOSSES, nst]


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _inputs_for(fn, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Small inputs of the right kind: (B, D) vectors with different student / teacher sizes, or maps for nst."""
    if fn is nst:
        return _rand(3, 2, 3, 3, seed=seed, dtype=dtype), _rand(3, 4, 3, 3, seed=seed + 1, dtype=dtype)
    return _rand(4, 3, seed=seed, dtype=dtype), _rand(4, 5, seed=seed + 1, dtype=dtype)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- independent references (plain Python loops)


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def _ref_rkd_distance(s: np.ndarray, t: np.ndarray, eps: float = 1e-12) -> float:
    """Distances from explicit coordinate differences (not the Gram expansion), floored at sqrt(eps)."""
    b = len(s)

    def normalised(e):
        d = [[0.0] * b for _ in range(b)]
        for i in range(b):
            for j in range(b):
                if i != j:
                    d[i][j] = math.sqrt(max(sum((x - y) ** 2 for x, y in zip(e[i], e[j], strict=True)), eps))
        mu = sum(map(sum, d)) / (b * (b - 1))
        return [[v / mu for v in row] for row in d]

    ds, dt = normalised(s), normalised(t)
    return sum(_huber(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2


def _ref_rkd_angle(s: np.ndarray, t: np.ndarray) -> float:
    b = len(s)

    def cosine(e, i, j, k):
        v = [x - y for x, y in zip(e[j], e[i], strict=True)]
        w = [x - y for x, y in zip(e[k], e[i], strict=True)]
        nv = max(math.sqrt(sum(x * x for x in v)), 1e-12)
        nw = max(math.sqrt(sum(x * x for x in w)), 1e-12)
        return sum(x * y for x, y in zip(v, w, strict=True)) / (nv * nw)

    total = sum(_huber(cosine(s, i, j, k) - cosine(t, i, j, k)) for i in range(b) for j in range(b) for k in range(b))
    return total / b**3


def _ref_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def probabilities(e):
        u = [[x / (math.sqrt(sum(y * y for y in row)) + eps) for x in row] for row in e]
        c = [[(sum(x * y for x, y in zip(ui, uj, strict=True)) + 1.0) / 2.0 for uj in u] for ui in u]
        return [[v / sum(row) for v in row] for row in c]

    ps, pt = probabilities(s), probabilities(t)
    b = len(s)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b**2


def _ref_sp(s: np.ndarray, t: np.ndarray) -> float:
    def gram(e):
        g = [[sum(x * y for x, y in zip(ei, ej, strict=True)) for ej in e] for ei in e]
        return [[v / max(math.sqrt(sum(w * w for w in row)), 1e-12) for v in row] for row in g]

    gs, gt = gram(s), gram(t)
    b = len(s)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def _ref_nst(s: np.ndarray, t: np.ndarray) -> float:
    """s, t: (B, C, H, W) of the same spatial size; per sample and channel pair, explicit dot products."""

    def unit_channels(x):
        out = []
        for sample in x:
            chans = []
            for ch in sample:
                v = ch.ravel().tolist()
                n = max(math.sqrt(sum(a * a for a in v)), 1e-12)
                chans.append([a / n for a in v])
            out.append(chans)
        return out

    fs, ft = unit_channels(s), unit_channels(t)

    def kernel_mean(a, b):
        vals = [sum(x * y for x, y in zip(u, v, strict=True)) ** 2 for n in range(len(a)) for u in a[n] for v in b[n]]
        return sum(vals) / len(vals)

    return kernel_mean(ft, ft) + kernel_mean(fs, fs) - 2.0 * kernel_mean(fs, ft)


@pytest.mark.parametrize(
    ("fn", "ref"),
    [(rkd_distance, _ref_rkd_distance), (rkd_angle, _ref_rkd_angle), (pkt, _ref_pkt), (sp, _ref_sp)],
    ids=lambda x: getattr(x, "__name__", ""),
)
@pytest.mark.parametrize("seed", [0, 1])
def test_vector_losses_match_independent_loop_reference(fn, ref, seed):
    s, t = _rand(7, 4, seed=10 + seed), _rand(7, 6, seed=20 + seed, scale=5.0)
    assert fn(s, t).item() == pytest.approx(ref(s.numpy(), t.numpy()), rel=1e-10)


def test_rkd_reference_exercises_both_huber_branches():
    # Rows 0 and 1 coincide in the student but not in the teacher: |psi_s - psi_t| > 1 there (linear branch).
    s = torch.cat([torch.zeros(2, 3, dtype=torch.float64), _rand(4, 3, seed=30)])
    t = _rand(6, 5, seed=31)
    assert rkd_distance(s, t).item() == pytest.approx(_ref_rkd_distance(s.numpy(), t.numpy()), rel=1e-10)
    assert rkd_angle(s, t).item() == pytest.approx(_ref_rkd_angle(s.numpy(), t.numpy()), rel=1e-10)


def test_nst_matches_independent_loop_reference():
    s, t = _rand(3, 2, 3, 4, seed=32), _rand(3, 5, 3, 4, seed=33)
    assert nst(s, t).item() == pytest.approx(_ref_nst(s.numpy(), t.numpy()), rel=1e-10)


# ---------------------------------------------------------------- RKD: hand-derived values

# Student: right isosceles triangle e0 = (0,0), e1 = (1,0), e2 = (0,1). Teacher: collinear (0,0), (1,0), (2,0).
RKD_S = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
RKD_T = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
# Distance term.
#   student: d01 = d02 = 1, d12 = sqrt2; mean over the 6 off-diagonal entries mu = (2 + sqrt2)/3
#            psi01 = psi02 = 3/(2 + sqrt2) = 3 - 3 sqrt2/2,   psi12 = 3 sqrt2/(2 + sqrt2) = 3 sqrt2 - 3
#   teacher: d01 = 1, d02 = 2, d12 = 1;  mu = 4/3  ->  psi = 3/4, 3/2, 3/4
#   x01 = 9/4 - 3 sqrt2/2 (~0.129), x02 = 3/2 - 3 sqrt2/2 (~-0.621), x12 = 3 sqrt2 - 15/4 (~0.493): all |x| < 1
#   x01^2 + x02^2 + x12^2 = (153/16 - 27 sqrt2/4) + (27/4 - 9 sqrt2/2) + (513/16 - 45 sqrt2/2) = 387/8 - 135 sqrt2/4
#   each pair appears twice among the 9 entries (diagonal 0): loss_d = 2 * 1/2 * (387/8 - 135 sqrt2/4) / 9
HAND_RKD_D = 43 / 8 - 15 * SQRT2 / 4  # ~0.0717
# Angle term: a_ijk = cos of the angle at e_i between e_j and e_k; for B = 3 only (i, j, k) with j, k the two
# other points and j != k differ between the sides, each anchor i twice ((j, k) and (k, j)):
#   anchor 0: student (1,0).(0,1) -> 0;          teacher (1,0),(2,0) -> 1;   x = -1: huber = 1/2 (both branches)
#   anchor 1: student (-1,0),(-1,1) -> 1/sqrt2;  teacher (-1,0),(1,0) -> -1; x = 1 + 1/sqrt2: huber = 1/2 + 1/sqrt2
#   anchor 2: student (0,-1),(1,-1) -> 1/sqrt2;  teacher (-2,0),(-1,0) -> 1;  x = 1/sqrt2 - 1: 1/2 (1 - 1/sqrt2)^2
#             = 3/4 - 1/sqrt2
#   sum over anchors = 1/2 + 1/2 + 1/sqrt2 + 3/4 - 1/sqrt2 = 7/4; loss_a = 2 * 7/4 / 27
HAND_RKD_A = 7 / 54


def test_rkd_distance_hand_value():
    explicit = [9 / 4 - 3 * SQRT2 / 2, 3 / 2 - 3 * SQRT2 / 2, 3 * SQRT2 - 15 / 4]
    assert 2 * sum(0.5 * x * x for x in explicit) / 9 == pytest.approx(HAND_RKD_D, rel=1e-12)
    assert rkd_distance(_t(RKD_S), _t(RKD_T)).item() == pytest.approx(HAND_RKD_D, rel=1e-12)


def test_rkd_angle_hand_value():
    assert rkd_angle(_t(RKD_S), _t(RKD_T)).item() == pytest.approx(HAND_RKD_A, rel=1e-12)


def test_rkd_hand_value_with_default_and_given_weights():
    s, t = _t(RKD_S), _t(RKD_T)
    assert rkd(s, t).item() == pytest.approx(25 * HAND_RKD_D + 50 * HAND_RKD_A, rel=1e-12)
    assert rkd(s, t, w_d=1.0, w_a=2.0).item() == pytest.approx(HAND_RKD_D + 2 * HAND_RKD_A, rel=1e-12)


def test_rkd_distance_hand_value_coinciding_rows_and_linear_branch():
    # Student rows 0 and 1 coincide: |e0|^2 + |e1|^2 - 2<e0,e1> = 0 is floored at eps = 1e-12, so d01 = delta =
    # 1e-6 (> 0: it counts in the mean); d02 = d12 = 1. mu_s = (2 delta + 4)/6.
    #   psi_s: 01 -> 3 delta/(2 + delta), 02 and 12 -> 3/(2 + delta)
    # Teacher (0,0), (1,0), (1/2,0): d01 = 1, d02 = d12 = 1/2, mu_t = 2/3 -> psi_t = 3/2, 3/4, 3/4
    #   x01 = 3 delta/(2 + delta) - 3/2 (~ -1.5): linear branch, huber = 1 - 3 delta/(2 + delta)
    #   x02 = x12 = 3/(2 + delta) - 3/4 (~ 0.75): huber = 1/2 x^2
    # loss = 2 * [(1 - 3 delta/(2 + delta)) + 2 * 1/2 x02^2] / 9  (-> 25/72 as delta -> 0)
    delta = 1e-6
    x02 = 3 / (2 + delta) - 3 / 4
    expected = 2 * ((1 - 3 * delta / (2 + delta)) + x02**2) / 9
    s = _t([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    t = _t([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    assert rkd_distance(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(25 / 72, rel=1e-5)


def test_rkd_coinciding_rows_give_a_finite_gradient():
    s = _t([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]).requires_grad_(True)
    rkd(s, _rand(3, 4, seed=34)).backward()
    assert torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- PKT, SP, NST: hand-derived values

# PKT. Student (1,0), (0,1); teacher (1,0), (1,0). With u = 1/(1 + eps) (the +eps normalisation):
#   student cosines [[u^2, 0], [0, u^2]] -> c = [[(1+u^2)/2, 1/2], [1/2, (1+u^2)/2]], row sum (2+u^2)/2
#           -> p_s diagonal a = (1+u^2)/(2+u^2), off-diagonal b = 1/(2+u^2)
#   teacher cosines all u^2 -> c all equal -> p_t = 1/2 everywhere
#   loss = (1/4) sum_ij 1/2 log((1/2+eps)/(p_s_ij+eps)) = (1/4) [log((1/2+eps)/(a+eps)) + log((1/2+eps)/(b+eps))]
#   eps = 0: a = 2/3, b = 1/3 -> (1/4) [log(3/4) + log(3/2)] = (1/4) log(9/8)
PKT_S = [[1.0, 0.0], [0.0, 1.0]]
PKT_T = [[1.0, 0.0], [1.0, 0.0]]


def test_pkt_hand_value_with_the_reference_eps():
    eps = 1e-7
    u2 = (1 / (1 + eps)) ** 2
    a, b = (1 + u2) / (2 + u2), 1 / (2 + u2)
    expected = (math.log((0.5 + eps) / (a + eps)) + math.log((0.5 + eps) / (b + eps))) / 4
    assert pkt(_t(PKT_S), _t(PKT_T)).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(math.log(9 / 8) / 4, rel=1e-5)


def test_pkt_hand_value_without_eps_is_scale_free():
    # eps = 0: the rows' lengths do not matter at all.
    s, t = _t([[5.0, 0.0], [0.0, 0.5]]), _t([[2.0, 0.0], [3.0, 0.0]])
    assert pkt(s, t, eps=0.0).item() == pytest.approx(math.log(9 / 8) / 4, rel=1e-12)


# SP. Student (1,0), (0,1) -> G_s = I (rows already unit). Teacher (3,0,0), (1,0,0) -> G_t = [[9,3],[3,1]];
#   row norms sqrt90 = 3 sqrt10 and sqrt10 -> both rows become (3, 1)/sqrt10 (no longer symmetric)
#   G_t - G_s = [[3/sqrt10 - 1, 1/sqrt10], [3/sqrt10, 1/sqrt10 - 1]]
#   squares: (9/10 - 6/sqrt10 + 1) + 1/10 + 9/10 + (1/10 - 2/sqrt10 + 1) = 4 - 8/sqrt10; / B^2 = 4
HAND_SP = 1 - 2 / SQRT10  # ~0.3675


def test_sp_hand_value_with_different_feature_sizes():
    s, t = _t([[1.0, 0.0], [0.0, 1.0]]), _t([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    explicit = ((3 / SQRT10 - 1) ** 2 + (1 / SQRT10) ** 2 + (3 / SQRT10) ** 2 + (1 / SQRT10 - 1) ** 2) / 4
    assert explicit == pytest.approx(HAND_SP, rel=1e-12)
    assert sp(s, t).item() == pytest.approx(HAND_SP, rel=1e-12)


# NST. Maps (B=2, C, H=1, W=2); student 2 channels, teacher 1 channel. Unit spatial vectors:
#   sample 0: student (3,0) -> (1,0), (0,2) -> (0,1); teacher (5,5) -> (1,1)/sqrt2
#             K_tt: 1 entry = 1;  K_ss: [[1,0],[0,1]]^2 -> sum 2;  K_st: (1/sqrt2)^2 twice -> sum 1
#   sample 1: student (1,0) -> (1,0), (4,0) -> (1,0); teacher (2,0) -> (1,0)
#             K_tt: 1;  K_ss: all 1 -> sum 4;  K_st: 1 twice -> sum 2
#   means over B x C x C': K_tt = 2/2 = 1, K_ss = 6/8 = 3/4, K_st = 3/4 -> loss = 1 + 3/4 - 3/2 = 1/4
#   (= the mean of the per-sample MMDs 1/2 and 0)
NST_S = [[[[3.0, 0.0]], [[0.0, 2.0]]], [[[1.0, 0.0]], [[4.0, 0.0]]]]
NST_T = [[[[5.0, 5.0]]], [[[2.0, 0.0]]]]


def test_nst_hand_value_with_different_channel_counts():
    assert nst(_t(NST_S), _t(NST_T)).item() == pytest.approx(0.25, rel=1e-12)


# ---------------------------------------------------------------- NST spatial sizes


def _block_mean(x: torch.Tensor, fh: int, fw: int) -> np.ndarray:
    """Average non-overlapping fh x fw blocks with numpy reshapes (independent of torch's pooling)."""
    a = x.numpy()
    b, c, h, w = a.shape
    return a.reshape(b, c, h // fh, fh, w // fw, fw).mean(axis=(3, 5))


def test_nst_pools_the_larger_student_map_to_the_teacher_size():
    s, t = _rand(2, 3, 4, 4, seed=40), _rand(2, 2, 2, 2, seed=41)
    assert nst(s, t).item() == pytest.approx(_ref_nst(_block_mean(s, 2, 2), t.numpy()), rel=1e-10)


def test_nst_pools_the_larger_teacher_map_to_the_student_size():
    s, t = _rand(2, 3, 2, 2, seed=42), _rand(2, 2, 6, 6, seed=43)
    assert nst(s, t).item() == pytest.approx(_ref_nst(s.numpy(), _block_mean(t, 3, 3)), rel=1e-10)


def test_nst_non_square_maps_are_pooled_to_the_smaller_height_and_width():
    # The reference compares heights only and pools to (H, H); here (4, 3) and (2, 6) both go to (2, 3).
    s, t = _rand(2, 3, 4, 3, seed=44), _rand(2, 2, 2, 6, seed=45)
    expected = _ref_nst(_block_mean(s, 2, 1), _block_mean(t, 1, 2))
    assert nst(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_nst_refuses_vectors_and_names_feature_maps():
    with pytest.raises(ValueError, match=r"feature maps.*student shape \(8, 16\).*cnn2d"):
        nst(torch.zeros(8, 16), torch.zeros(8, 16))
    with pytest.raises(ValueError, match=r"feature maps.*teacher shape \(8, 3, 16\)"):
        nst(torch.zeros(8, 3, 4, 4), torch.zeros(8, 3, 16))


# ---------------------------------------------------------------- values the spec records (section 3.9)


def _det(shape: tuple[int, ...], k: float, s: float = 0.37) -> torch.Tensor:
    """The spec's deterministic inputs: sin(s * arange(prod(shape)) + k).reshape(shape), float64."""
    return torch.sin(s * torch.arange(math.prod(shape), dtype=torch.float64) + k).reshape(shape)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rkd", 11.419969834327551),
        ("pkt", 0.16109276895892394),
        ("sp", 0.2714876438621007),
        ("nst", 0.5718748203026967),
        ("kd", 0.40257564859162875),
    ],
)
def test_spec_reference_values(name, expected):
    # shared/specs/amid-osmd.md, 3.9: RepDistiller's numbers on fs = det((6,5),0), ft = det((6,7),1) etc.
    fs, ft = _det((6, 5), 0), _det((6, 7), 1)
    got = {
        "rkd": lambda: rkd(fs, ft, 25.0, 50.0),
        "pkt": lambda: pkt(fs, ft),
        "sp": lambda: sp(fs, ft),
        "nst": lambda: nst(_det((2, 3, 4, 4), 0.2), _det((2, 3, 4, 4), 0.9)),
        "kd": lambda: hinton_kd(_det((6, 4), 0.5), 3 * _det((6, 4), 2), 4.0),
    }[name]()
    assert got.item() == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_zero_when_student_equals_teacher(fn):
    s, _ = _inputs_for(fn, seed=50)
    assert fn(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert fn(s, _inputs_for(fn, seed=51)[0]).item() > 1e-6


def test_rkd_is_invariant_to_scaling_rotating_and_translating_either_side():
    s, t = _rand(6, 2, seed=52), _rand(6, 3, seed=53)
    c, sn = math.cos(0.7), math.sin(0.7)
    rot = _t([[c, -sn], [sn, c]])
    moved = 3.5 * s @ rot + _t([[4.0, -2.0]])
    for fn in (rkd_distance, rkd_angle):
        assert fn(moved, t).item() == pytest.approx(fn(s, t).item(), rel=1e-9)
        assert fn(s, 0.25 * t - 1.0).item() == pytest.approx(fn(s, t).item(), rel=1e-9)


def test_rkd_angle_is_zero_for_two_rows():
    # With B = 2 every non-degenerate triple is (i, j, j): cosine 1 on both sides (up to rounding).
    assert rkd_angle(_rand(2, 3, seed=54), _rand(2, 4, seed=55)).item() == pytest.approx(0.0, abs=1e-15)


def test_pkt_is_invariant_to_row_scaling_up_to_eps():
    s, t = _rand(5, 4, seed=56), _rand(5, 3, seed=57)
    scales = _t([[0.5], [2.0], [3.0], [1.0], [7.0]])
    assert pkt(s * scales, t, eps=0.0).item() == pytest.approx(pkt(s, t, eps=0.0).item(), rel=1e-10)
    assert pkt(s * scales, t).item() == pytest.approx(pkt(s, t).item(), rel=1e-5)


def test_sp_is_invariant_to_a_global_scale_but_not_to_row_scaling():
    s, t = _rand(5, 4, seed=58), _rand(5, 6, seed=59)
    assert sp(4.0 * s, t).item() == pytest.approx(sp(s, t).item(), rel=1e-10)
    rows = _t([[0.5], [2.0], [3.0], [1.0], [7.0]])
    assert sp(s * rows, t).item() != pytest.approx(sp(s, t).item(), rel=1e-3)


def test_nst_is_invariant_to_positive_channel_scaling():
    s, t = _rand(2, 3, 3, 3, seed=60), _rand(2, 2, 3, 3, seed=61)
    scales = _t([0.5, 4.0, 9.0]).reshape(1, 3, 1, 1)
    assert nst(s * scales, t).item() == pytest.approx(nst(s, t).item(), rel=1e-10)


def test_sp_and_nst_flatten_like_the_reference():
    # SP flattens every non-batch dimension: maps and their flattened vectors give the same value.
    s, t = _rand(3, 2, 3, 3, seed=62), _rand(3, 4, 2, 2, seed=63)
    assert sp(s, t).item() == pytest.approx(sp(s.flatten(1), t.flatten(1)).item(), rel=1e-12)
    assert rkd(s, t).item() == pytest.approx(rkd(s.flatten(1), t.flatten(1)).item(), rel=1e-12)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_gradcheck_wrt_student_and_teacher(fn):
    s, t = _inputs_for(fn, seed=70)
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: fn(a, t.detach()), (s,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda b: fn(s.detach(), b), (t,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_frozen_teacher_needs_no_gradient(fn):
    s, t = _inputs_for(fn, seed=72, dtype=torch.float32)
    s.requires_grad_(True)
    out = fn(s, t)
    assert out.requires_grad and out.ndim == 0
    out.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_teacher_is_not_detached(fn):
    # The reference detaches RKD's teacher side and NST's K_tt; here detaching is the method's decision.
    s, t = _inputs_for(fn, seed=74)
    t.requires_grad_(True)
    fn(s, t).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_pkt_gradient_at_an_all_zero_row_is_finite():
    s = torch.cat([torch.zeros(1, 3, dtype=torch.float64), _rand(3, 3, seed=76)]).requires_grad_(True)
    pkt(s, _rand(4, 2, seed=77)).backward()
    assert torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_bf16_inputs_give_float32_result(fn):
    s, t = _inputs_for(fn, seed=80, dtype=torch.bfloat16)
    out = fn(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(s.float(), t.float()), rtol=0, atol=0)


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_under_bf16_autocast_result_is_float32_and_matches_float32(fn):
    s, t = _inputs_for(fn, seed=82, dtype=torch.float32)
    s = s.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(s, t)
    assert out.dtype == torch.float32
    # The matrix products ran in float32, not bf16.
    torch.testing.assert_close(out, fn(s.detach().float(), t), rtol=1e-6, atol=1e-7)
    out.backward()
    assert torch.isfinite(s.grad.float()).all() and s.grad.float().abs().sum() > 0


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_float64_stays_float64(fn):
    assert fn(*_inputs_for(fn, seed=84)).dtype == torch.float64


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", VECTOR_LOSSES, ids=lambda f: f.__name__)
def test_batch_mismatch_names_both_shapes_and_the_fix(fn):
    with pytest.raises(ValueError, match=r"student features \(8, 16\) and teacher features \(6, 32\).*same rows"):
        fn(torch.zeros(8, 16), torch.zeros(6, 32))


def test_nst_batch_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"student maps \(2, 3, 4, 4\) and teacher maps \(3, 3, 4, 4\)"):
        nst(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))


@pytest.mark.parametrize("fn", VECTOR_LOSSES, ids=lambda f: f.__name__)
def test_vectors_need_a_batch_and_feature_dimension(fn):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fn(torch.zeros(4), torch.zeros(4, 2))


@pytest.mark.parametrize("fn", ALL_LOSSES, ids=lambda f: f.__name__)
def test_empty_batch_is_rejected(fn):
    shape = (0, 2, 3, 3) if fn is nst else (0, 3)
    with pytest.raises(ValueError, match="empty batch"):
        fn(torch.zeros(shape), torch.zeros(shape))


@pytest.mark.parametrize("fn", [rkd_distance, rkd], ids=lambda f: f.__name__)
def test_rkd_distance_needs_two_rows(fn):
    with pytest.raises(ValueError, match="at least 2 rows.*drop_last"):
        fn(torch.ones(1, 3), torch.ones(1, 3))


def test_bad_eps_and_weights_are_rejected():
    s = _rand(3, 2, seed=90)
    for eps in (0.0, -1e-12, float("nan")):
        with pytest.raises(ValueError, match="eps must be"):
            rkd_distance(s, s, eps=eps)
    for eps in (-1e-7, float("inf")):
        with pytest.raises(ValueError, match="eps must be"):
            pkt(s, s, eps=eps)
    for kwargs in ({"w_d": -1.0}, {"w_a": float("nan")}):
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            rkd(s, s, **kwargs)


# ---------------------------------------------------------------- parity with the reference implementation

# The fixtures name the reference class in `call`; the same runner serves any case that calls it, so a folder
# of the same layout with other seeds, batch sizes and hyperparameters is checked the same way.
# Each runner gets the call's tensors (in the call's order: student, teacher) and its keyword arguments with
# the reference constructor's defaults, and returns {name in `expected`: value}.


def _run_rkd(x: list[torch.Tensor], kw: dict) -> dict[str, torch.Tensor]:
    s, t = x
    return {
        "loss": rkd(s, t, w_d=float(kw.get("w_d", 25)), w_a=float(kw.get("w_a", 50))),
        "distance_term": rkd_distance(s, t),
        "angle_term": rkd_angle(s, t),
    }


def _run_kd(x: list[torch.Tensor], kw: dict) -> dict[str, torch.Tensor]:
    # DistillKL: kl_div(log_softmax(s/T), softmax(t/T), size_average=False) * T^2 / B = hinton_kd.
    if "T" not in kw:
        raise AssertionError("DistillKL has no default temperature; the case's call or params must give T")
    return {"loss": hinton_kd(x[0], x[1], float(kw["T"]))}


PARITY_RUNNERS = {
    "RKDLoss": _run_rkd,
    "PKT": lambda x, kw: {"loss": pkt(x[0], x[1])},
    "Similarity": lambda x, kw: {"loss": sp(x[0], x[1])},
    "NSTLoss": lambda x, kw: {"loss": nst(x[0], x[1])},
    "DistillKL": _run_kd,
}
PARITY_RTOL = 1e-9


def _parity_dir() -> Path:
    env = os.environ.get("CMKDTOOL_PARITY_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "parity"


def _constructor(call: str) -> str | None:
    m = re.match(r"\s*([A-Za-z_]\w*)\s*\(", call)
    return m.group(1) if m else None


def _parity_params() -> list:
    folder = _parity_dir()
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        reason = f"no parity fixtures: {manifest} is missing (set CMKDTOOL_PARITY_DIR to a folder with manifest.json)"
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=reason), id="no-parity-manifest")]
    cases = json.loads(manifest.read_text())
    params = [
        pytest.param(name, case, id=name)
        for name, case in cases.items()
        if "RepDistiller" in case.get("reference", "") and _constructor(case.get("call", "")) in PARITY_RUNNERS
    ]
    if not params:
        reason = f"{manifest} has no RepDistiller RKD/PKT/SP/NST/KD case"
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=reason), id="no-relational-cases")]
    return params


def _parse_call(call: str) -> tuple[str, dict, list[str]]:
    """'RKDLoss(w_d=25, w_a=50)(student_features, teacher_features)' -> ('RKDLoss', {'w_d': 25, ...}, [names])."""
    expr = ast.parse(call.strip(), mode="eval").body
    assert isinstance(expr, ast.Call), f"call {call!r} is not a call expression"
    names = []
    for arg in expr.args:
        assert isinstance(arg, ast.Name), f"call {call!r}: positional arguments must name input tensors"
        names.append(arg.id)
    node = expr.func
    while not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        assert isinstance(node, (ast.Attribute, ast.Call)), f"call {call!r}: no constructor found"
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}, names


@pytest.mark.parametrize(("name", "case"), _parity_params())
def test_parity_with_repdistiller(name, case):
    from safetensors.torch import load_file

    folder = _parity_dir()
    constructor, kwargs, arg_names = _parse_call(case["call"])
    kwargs.update(case.get("params", {}))
    tensors = {
        k: v.to(torch.float64) if v.is_floating_point() else v for k, v in load_file(folder / case["inputs"]).items()
    }
    missing = [a for a in arg_names if a not in tensors]
    assert not missing, f"{name}: inputs {missing} of {case['call']!r} not in {case['inputs']} ({sorted(tensors)})"
    inputs = [tensors[a].clone().requires_grad_(True) for a in arg_names]

    got = PARITY_RUNNERS[constructor](inputs, kwargs)
    unknown = set(case["expected"]) - set(got)
    assert not unknown, f"{name}: expected values {sorted(unknown)} have no counterpart here"
    for key, want in case["expected"].items():
        value = got[key].item()
        assert abs(value - want) <= PARITY_RTOL * abs(want), (
            f"{name}.{key}: {value!r} vs reference {want!r} (relative error {abs(value - want) / abs(want):.3g})"
        )

    # Gradients stored as grad_<who> (e.g. grad_student) are d loss / d the input named <who>_...
    grads = {k: v for k, v in tensors.items() if k.startswith("grad_")}
    for key, want in grads.items():
        who = key.removeprefix("grad_")
        matches = [i for i, a in enumerate(arg_names) if a == who or a.startswith(who + "_")]
        assert len(matches) == 1, f"{name}: {key} matches none or several of the inputs {arg_names}"
        (grad,) = torch.autograd.grad(got["loss"], inputs[matches[0]], retain_graph=True)
        scale = want.abs().max().item()
        err = (grad - want).abs().max().item()
        assert err <= PARITY_RTOL * scale, f"{name}.{key}: max abs error {err:.3g} vs max |grad| {scale:.3g}"
